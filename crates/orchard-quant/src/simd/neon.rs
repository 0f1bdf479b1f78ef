//! aarch64 NEON kernels for the quant dots. They keep ggml-x86's lane grouping and float order
//! (eight i32 lanes of 4-sums, one FMA per block, `hsum_float_8`), so on real data they return the
//! same bits as the scalar tier; only hostile Q8 bytes of -128 differ, where x86's `sign_epi8`
//! trick wraps and a plain signed multiply does not. The property tests hold NEON to a tolerance.
//!
//! Every kernel clamps its block count to what its slices hold before any load.

// Index loops over sub-blocks mirror ggml's C and keep the lanes obvious.
#![allow(clippy::needless_range_loop)]

use crate::traits::{TypeTraits, VecDotFn, VecDotX4Fn};
use half::f16;
use orchard_core::DType;
use std::arch::aarch64::*;

const QK_K: usize = 256;

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn blocks(n: usize, qk: usize, w: &[u8], wb: usize, act: &[u8], ab: usize) -> usize {
    (n / qk).min(w.len() / wb).min(act.len() / ab)
}

/// Lanes 0..4 and 4..8 of the 4-sums of 32 signed byte products (`x0`,`y0`: elements 0..16).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn lanes8(
    x0: int8x16_t,
    x1: int8x16_t,
    y0: int8x16_t,
    y1: int8x16_t,
) -> (int32x4_t, int32x4_t) {
    let half = |x: int8x16_t, y: int8x16_t| {
        let p0 = vpaddlq_s16(vmull_s8(vget_low_s8(x), vget_low_s8(y)));
        let p1 = vpaddlq_s16(vmull_high_s8(x, y));
        vpaddq_s32(p0, p1)
    };
    (half(x0, y0), half(x1, y1))
}

/// Low then high nibbles of 16 bytes: elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(p);
    (vandq_u8(v, vdupq_n_u8(0xF)), vshrq_n_u8::<4>(v))
}

/// 0x10 where bit j of the little-endian u32 at `p` is set, for elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn high_bits(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    const MASK: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let m = vld1q_u8(MASK.as_ptr());
    let b = |i: usize| vdup_n_u8(*p.add(i));
    let lo = vtstq_u8(vcombine_u8(b(0), b(1)), m);
    let hi = vtstq_u8(vcombine_u8(b(2), b(3)), m);
    let ten = vdupq_n_u8(0x10);
    (vandq_u8(lo, ten), vandq_u8(hi, ten))
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn fma_lanes(acc: &mut (float32x4_t, float32x4_t), d: f32, s: (int32x4_t, int32x4_t)) {
    let dv = vdupq_n_f32(d);
    acc.0 = vfmaq_f32(acc.0, vcvtq_f32_s32(s.0), dv);
    acc.1 = vfmaq_f32(acc.1, vcvtq_f32_s32(s.1), dv);
}

/// `hsum_float_8` of lanes `lo` (0..4) and `hi` (4..8).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn hsum8(acc: (float32x4_t, float32x4_t)) -> f32 {
    let r = vaddq_f32(acc.1, acc.0);
    (vgetq_lane_f32::<0>(r) + vgetq_lane_f32::<2>(r))
        + (vgetq_lane_f32::<1>(r) + vgetq_lane_f32::<3>(r))
}

/// The 32 weight levels of one legacy block, as signed bytes.
#[derive(Clone, Copy)]
enum Legacy {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Legacy {
    fn bytes(self) -> usize {
        match self {
            Legacy::Q4_0 => 18,
            Legacy::Q4_1 => 20,
            Legacy::Q5_0 => 22,
            Legacy::Q5_1 => 24,
            Legacy::Q8_0 => 34,
        }
    }

    /// Whether the block has a minimum (and its activation a Q8_1 `s`).
    fn has_min(self) -> bool {
        matches!(self, Legacy::Q4_1 | Legacy::Q5_1)
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn unpack(kind: Legacy, xb: *const u8) -> (int8x16_t, int8x16_t) {
    match kind {
        Legacy::Q4_0 => {
            let (l, h) = nibbles(xb.add(2));
            let eight = vdupq_n_s8(8);
            (
                vsubq_s8(vreinterpretq_s8_u8(l), eight),
                vsubq_s8(vreinterpretq_s8_u8(h), eight),
            )
        }
        Legacy::Q4_1 => {
            let (l, h) = nibbles(xb.add(4));
            (vreinterpretq_s8_u8(l), vreinterpretq_s8_u8(h))
        }
        Legacy::Q5_0 => {
            let (l, h) = nibbles(xb.add(6));
            let (bl, bh) = high_bits(xb.add(2));
            let sixteen = vdupq_n_s8(16);
            (
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l, bl)), sixteen),
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(h, bh)), sixteen),
            )
        }
        Legacy::Q5_1 => {
            let (l, h) = nibbles(xb.add(8));
            let (bl, bh) = high_bits(xb.add(4));
            (
                vreinterpretq_s8_u8(vorrq_u8(l, bl)),
                vreinterpretq_s8_u8(vorrq_u8(h, bh)),
            )
        }
        Legacy::Q8_0 => (
            vld1q_s8(xb.add(2) as *const i8),
            vld1q_s8(xb.add(18) as *const i8),
        ),
    }
}

#[target_feature(enable = "neon")]
unsafe fn legacy_dot(kind: Legacy, n: usize, w: &[u8], act: &[u8]) -> f32 {
    let (wb, ab) = (kind.bytes(), if kind.has_min() { 36 } else { 34 });
    let nb = blocks(n, 32, w, wb, act, ab);
    let mut acc = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut summs = 0f32;
    for i in 0..nb {
        let (xs, ys) = (&w[i * wb..(i + 1) * wb], &act[i * ab..(i + 1) * ab]);
        let yq = ys.as_ptr().add(ab - 32) as *const i8;
        let (x0, x1) = unpack(kind, xs.as_ptr());
        let s = lanes8(x0, x1, vld1q_s8(yq), vld1q_s8(yq.add(16)));
        if kind.has_min() {
            summs = f16_at(xs, 2).mul_add(f16_at(ys, 2), summs);
        }
        fma_lanes(&mut acc, f16_at(xs, 0) * f16_at(ys, 0), s);
    }
    hsum8(acc) + summs
}

// ---------------------------------------------------------------------------------------------
// K-quants

/// Scales (0..8) and mins (8..16) of a Q4_K/Q5_K block.
fn k4_scales_mins(q: &[u8]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let u = [
        u0 & 0x3f3f_3f3f,
        (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4),
        u1 & 0x3f3f_3f3f,
        ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(u) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn bsums(y: &[u8]) -> [i16; 16] {
    std::array::from_fn(|g| i16::from_le_bytes([y[260 + 2 * g], y[261 + 2 * g]]))
}

/// Per sub-block of 32: the eight lanes of 4-sums of `q` (unsigned levels) against `y`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn sub_lanes(q: uint8x16_t, q_hi: uint8x16_t, y: *const i8) -> (int32x4_t, int32x4_t) {
    lanes8(
        vreinterpretq_s8_u8(q),
        vreinterpretq_s8_u8(q_hi),
        vld1q_s8(y),
        vld1q_s8(y.add(16)),
    )
}

/// The 256 levels of a Q4_K (or Q5_K, with `qh`) block as 8 sub-blocks of two 16-byte halves.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn k4_sub(qs: *const u8, qh: Option<*const u8>, sb: usize) -> (uint8x16_t, uint8x16_t) {
    let p = qs.add(32 * (sb / 2));
    let (a, b) = (vld1q_u8(p), vld1q_u8(p.add(16)));
    let (mut l, mut h) = if sb.is_multiple_of(2) {
        (vandq_u8(a, vdupq_n_u8(0xF)), vandq_u8(b, vdupq_n_u8(0xF)))
    } else {
        (vshrq_n_u8::<4>(a), vshrq_n_u8::<4>(b))
    };
    if let Some(qh) = qh {
        let shift = vdupq_n_s8(-(sb as i8));
        let one = vdupq_n_u8(1);
        let bl = vandq_u8(vshlq_u8(vld1q_u8(qh), shift), one);
        let bh = vandq_u8(vshlq_u8(vld1q_u8(qh.add(16)), shift), one);
        l = vorrq_u8(l, vshlq_n_u8::<4>(bl));
        h = vorrq_u8(h, vshlq_n_u8::<4>(bh));
    }
    (l, h)
}

#[target_feature(enable = "neon")]
unsafe fn k4_dot(n: usize, w: &[u8], act: &[u8], q5: bool) -> f32 {
    let wb = if q5 { 176 } else { 144 };
    let nb = blocks(n, QK_K, w, wb, act, 292);
    let mut acc = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut acc_m = [0f32; 4];
    let mut summs = 0f32;
    for i in 0..nb {
        let (xs, ys) = (&w[i * wb..(i + 1) * wb], &act[i * 292..(i + 1) * 292]);
        let yd = f32::from_le_bytes([ys[0], ys[1], ys[2], ys[3]]);
        let d = yd * f16_at(xs, 0);
        let dmin = -yd * f16_at(xs, 2);
        let sm = k4_scales_mins(&xs[4..16]);
        let bs = bsums(ys);
        let m: [i32; 4] = std::array::from_fn(|k| {
            let pair = |g: usize| i32::from(bs[2 * g].wrapping_add(bs[2 * g + 1]));
            i32::from(sm[8 + 2 * k]) * pair(2 * k) + i32::from(sm[9 + 2 * k]) * pair(2 * k + 1)
        });
        if q5 {
            let mi = m[0]
                .wrapping_add(m[1])
                .wrapping_add(m[2].wrapping_add(m[3]));
            summs = dmin.mul_add(mi as f32, summs);
        } else {
            for (a, v) in acc_m.iter_mut().zip(m) {
                *a = dmin.mul_add(v as f32, *a);
            }
        }
        let (qs, qh) = if q5 {
            (xs.as_ptr().add(48), Some(xs.as_ptr().add(16)))
        } else {
            (xs.as_ptr().add(16), None)
        };
        let y = ys.as_ptr().add(4) as *const i8;
        let mut sumi = (vdupq_n_s32(0), vdupq_n_s32(0));
        for sb in 0..8 {
            let (l, h) = k4_sub(qs, qh, sb);
            let (a, b) = sub_lanes(l, h, y.add(32 * sb));
            let sc = i32::from(sm[sb]);
            sumi.0 = vmlaq_n_s32(sumi.0, a, sc);
            sumi.1 = vmlaq_n_s32(sumi.1, b, sc);
        }
        fma_lanes(&mut acc, d, sumi);
    }
    if q5 {
        hsum8(acc) + summs
    } else {
        hsum8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
    }
}

#[target_feature(enable = "neon")]
unsafe fn q6_k_dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let nb = blocks(n, QK_K, w, 210, act, 292);
    let mut acc = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    for i in 0..nb {
        let (xs, ys) = (&w[i * 210..(i + 1) * 210], &act[i * 292..(i + 1) * 292]);
        let d = f32::from_le_bytes([ys[0], ys[1], ys[2], ys[3]]) * f16_at(xs, 208);
        let sc = |j: usize| i32::from(xs[192 + j] as i8);
        let y = ys.as_ptr().add(4) as *const i8;
        let mut sumi = (vdupq_n_s32(0), vdupq_n_s32(0));
        for j in 0..2 {
            let ql = xs.as_ptr().add(64 * j);
            let qh = xs.as_ptr().add(128 + 32 * j);
            let m15 = vdupq_n_u8(15);
            let three = vdupq_n_u8(3);
            for half in 0..2 {
                let (l0, l1) = (
                    vld1q_u8(ql.add(16 * half)),
                    vld1q_u8(ql.add(32 + 16 * half)),
                );
                let h = vld1q_u8(qh.add(16 * half));
                // Runs 0..4 of this 128-element half, elements 16*half..16*half+16 of each.
                let runs = [
                    vorrq_u8(vandq_u8(l0, m15), vshlq_n_u8::<4>(vandq_u8(h, three))),
                    vorrq_u8(
                        vandq_u8(l1, m15),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(h), three)),
                    ),
                    vorrq_u8(
                        vshrq_n_u8::<4>(l0),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(h), three)),
                    ),
                    vorrq_u8(vshrq_n_u8::<4>(l1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(h))),
                ];
                for (k, q) in runs.into_iter().enumerate() {
                    let r = 4 * j + k;
                    let yv = vld1q_s8(y.add(32 * r + 16 * half));
                    let qv = vreinterpretq_s8_u8(q);
                    let p0 = vpaddlq_s16(vmull_s8(vget_low_s8(qv), vget_low_s8(yv)));
                    let p1 = vpaddlq_s16(vmull_high_s8(qv, yv));
                    // Elements 16*half.. of run r are lanes 4*half..4*half+4, scale 2r+half.
                    let s = vmulq_n_s32(vpaddq_s32(p0, p1), sc(2 * r + half));
                    if half == 0 {
                        sumi.0 = vaddq_s32(sumi.0, s);
                    } else {
                        sumi.1 = vaddq_s32(sumi.1, s);
                    }
                }
            }
        }
        let bs = bsums(ys);
        let sub: [i32; 8] = std::array::from_fn(|l| {
            let m = i32::from(bs[2 * l]) * sc(2 * l) + i32::from(bs[2 * l + 1]) * sc(2 * l + 1);
            m.wrapping_shl(5)
        });
        sumi.0 = vsubq_s32(sumi.0, vld1q_s32(sub.as_ptr()));
        sumi.1 = vsubq_s32(sumi.1, vld1q_s32(sub.as_ptr().add(4)));
        fma_lanes(&mut acc, d, sumi);
    }
    hsum8(acc)
}

macro_rules! wrap {
    ($($name:ident => $body:expr;)*) => {$(
        fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
            // SAFETY: only reachable through the NEON table, built after detecting NEON; the
            // kernels bound their loads by the slices.
            unsafe { $body(n, w, act) }
        }
    )*};
}

wrap! {
    dot_q4_0 => |n, w, a| legacy_dot(Legacy::Q4_0, n, w, a);
    dot_q4_1 => |n, w, a| legacy_dot(Legacy::Q4_1, n, w, a);
    dot_q5_0 => |n, w, a| legacy_dot(Legacy::Q5_0, n, w, a);
    dot_q5_1 => |n, w, a| legacy_dot(Legacy::Q5_1, n, w, a);
    dot_q8_0 => |n, w, a| legacy_dot(Legacy::Q8_0, n, w, a);
    dot_q4_k => |n, w, a| k4_dot(n, w, a, false);
    dot_q5_k => |n, w, a| k4_dot(n, w, a, true);
    dot_q6_k => q6_k_dot;
}

macro_rules! x4a {
    ($dot:ident) => {{
        fn f(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            act.map(|a| $dot(n, w, a))
        }
        f as crate::traits::VecDot4ActFn
    }};
}

macro_rules! x4 {
    ($dot:ident) => {{
        fn f(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
            w.map(|w| $dot(n, w, act))
        }
        f as VecDotX4Fn
    }};
}

pub(super) fn install(table: &mut [TypeTraits]) {
    for e in table.iter_mut() {
        let k: Option<(VecDotFn, VecDotX4Fn)> = match e.dtype {
            DType::Q4_0 => Some((dot_q4_0, x4!(dot_q4_0))),
            DType::Q4_1 => Some((dot_q4_1, x4!(dot_q4_1))),
            DType::Q5_0 => Some((dot_q5_0, x4!(dot_q5_0))),
            DType::Q5_1 => Some((dot_q5_1, x4!(dot_q5_1))),
            DType::Q8_0 => Some((dot_q8_0, x4!(dot_q8_0))),
            DType::Q4_K => Some((dot_q4_k, x4!(dot_q4_k))),
            DType::Q5_K => Some((dot_q5_k, x4!(dot_q5_k))),
            DType::Q6_K => Some((dot_q6_k, x4!(dot_q6_k))),
            _ => None,
        };
        if let Some((d, d4)) = k {
            e.vec_dot = Some(d);
            e.vec_dot_x4 = Some(d4);
        }
        e.vec_dot_4act = match e.dtype {
            DType::Q4_0 => Some(x4a!(dot_q4_0)),
            DType::Q4_1 => Some(x4a!(dot_q4_1)),
            DType::Q5_0 => Some(x4a!(dot_q5_0)),
            DType::Q5_1 => Some(x4a!(dot_q5_1)),
            DType::Q8_0 => Some(x4a!(dot_q8_0)),
            DType::Q4_K => Some(x4a!(dot_q4_k)),
            DType::Q5_K => Some(x4a!(dot_q5_k)),
            DType::Q6_K => Some(x4a!(dot_q6_k)),
            _ => e.vec_dot_4act,
        };
    }
}
