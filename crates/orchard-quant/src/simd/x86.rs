//! x86-64 kernels. The quant dots follow ggml-cpu's `arch/x86/quants.c` AVX2 code: eight f32
//! lanes, one FMA per block, `hsum_float_8` at the end. Their integer parts are exact, so the
//! AVX-512 tier only swaps the byte multiply-adds for VNNI (`vpdpbusd`/`vpdpwssd`), which gives
//! the same lane sums in fewer instructions; the float arithmetic is identical in both tiers
//! and identical to `lanes.rs`. The F16 dot is the exception: ggml's AVX2 and AVX-512 builds sum
//! in different orders, and each tier reproduces its own build.
//!
//! Every kernel takes byte slices and first clamps its block count to what both slices hold, so
//! the raw-pointer loads below stay in bounds whatever the caller passes.

// Index loops over rows and accumulators mirror ggml's C and keep the lanes obvious.
#![allow(clippy::needless_range_loop)]

use crate::traits::{Tier, TypeTraits, VecDot4ActFn, VecDotFn, VecDotX4Fn};
use orchard_core::DType;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Weight block `xb` as 32 signed levels (Q4_0, Q5_0, Q8_0) or unsigned ones (Q4_1,
/// Q5_1), and the matching multiply.
macro_rules! unpack {
    (q4_0, $xb:expr) => {
        _mm256_sub_epi8(nibbles32($xb.add(2)), _mm256_set1_epi8(8))
    };
    (q5_0, $xb:expr) => {
        _mm256_or_si256(
            nibbles32($xb.add(6)),
            _mm256_andnot_si256(bits32($xb.add(2)), _mm256_set1_epi8(0xF0u8 as i8)),
        )
    };
    (q8_0, $xb:expr) => {
        load256($xb.add(2))
    };
    (q4_1, $xb:expr) => {
        nibbles32($xb.add(4))
    };
    (q5_1, $xb:expr) => {
        _mm256_or_si256(
            nibbles32($xb.add(8)),
            _mm256_and_si256(bits32($xb.add(4)), _mm256_set1_epi8(0x10)),
        )
    };
}

/// Dots of the symmetric formats (`d_x * d_y` per block, signed levels).
macro_rules! dot_sym {
    ($feat:literal, $name:ident, $name4:ident, $name4a:ident, $fmt:tt, $wb:expr) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name4a(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            let nb = act
                .iter()
                .fold((n / 32).min(w.len() / $wb), |m, a| m.min(a.len() / Q8_0));
            let x = w.as_ptr();
            let y = act.map(|a| a.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            for i in 0..nb {
                let xb = x.add(i * $wb);
                prefetch(xb);
                // d_x in all four lanes, converted from a full 64-bit move: a 16-bit insert
                // here compiled to `vpinsrw` merging into an accumulator register, which chained
                // every block on the previous block's last FMA.
                let dx = halves(u64::from(rd16(xb)) * 0x0001_0001_0001_0001);
                // The four activation scales in one conversion; lane r = d_x * d_y(r), the same
                // product the single-row kernel forms.
                let dy = |r: usize| u64::from(rd16(y[r].add(i * Q8_0))) << (16 * r);
                let d4 = _mm_mul_ps(dx, halves(dy(0) | dy(1) | dy(2) | dy(3)));
                // Each lane broadcast by an in-lane shuffle of the doubled vector rather than a
                // lane-crossing permute per row (Gemma 3 pp512 at 1 thread on a Zen 3, four
                // alternating pairs: +0 to +5 %, within this machine's noise; same bits).
                let dd = _mm256_set_m128(d4, d4);
                let ds = [
                    _mm256_shuffle_ps::<0x00>(dd, dd),
                    _mm256_shuffle_ps::<0x55>(dd, dd),
                    _mm256_shuffle_ps::<0xAA>(dd, dd),
                    _mm256_shuffle_ps::<0xFF>(dd, dd),
                ];
                let qx = unpack!($fmt, xb);
                let ax = _mm256_sign_epi8(qx, qx);
                for r in 0..4 {
                    let yb = y[r].add(i * Q8_0);
                    let d = ds[r];
                    let sy = _mm256_sign_epi8(load256(yb.add(2)), qx);
                    let q = _mm256_cvtepi32_ps(dot_us(ax, sy));
                    acc[r] = _mm256_fmadd_ps(d, q, acc[r]);
                }
            }
            [hsum8(acc[0]), hsum8(acc[1]), hsum8(acc[2]), hsum8(acc[3])]
        }

        #[target_feature(enable = $feat)]
        unsafe fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let nb = blocks(n, 32, w, $wb, act, Q8_0);
            let (x, y) = (w.as_ptr(), act.as_ptr());
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let (xb, yb) = (x.add(i * $wb), y.add(i * Q8_0));
                let s = halves(u64::from(rd16(xb)) | u64::from(rd16(yb)) << 16);
                let d = _mm256_broadcastss_ps(_mm_mul_ss(s, _mm_movehdup_ps(s)));
                let q = _mm256_cvtepi32_ps(dot_ss(unpack!($fmt, xb), load256(yb.add(2))));
                acc = _mm256_fmadd_ps(d, q, acc);
            }
            hsum8(acc)
        }

        #[target_feature(enable = $feat)]
        unsafe fn $name4(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
            let nb = blocks4(n, 32, &w, $wb, act, Q8_0);
            let x = w.map(|r| r.as_ptr());
            let y = act.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            for i in 0..nb {
                let yb = y.add(i * Q8_0);
                let dy = f16_at(yb);
                let qy = load256(yb.add(2));
                for r in 0..4 {
                    let xb = x[r].add(i * $wb);
                    // Decode runs four streams through here (`rows_by_quarters`).
                    prefetch(xb);
                    let d = _mm256_set1_ps(f16_at(xb) * dy);
                    let q = _mm256_cvtepi32_ps(dot_ss(unpack!($fmt, xb), qy));
                    acc[r] = _mm256_fmadd_ps(d, q, acc[r]);
                }
            }
            [hsum8(acc[0]), hsum8(acc[1]), hsum8(acc[2]), hsum8(acc[3])]
        }
    };
}

/// Dots of the formats with a minimum (`m * s` summed beside the lanes).
macro_rules! dot_min {
    ($feat:literal, $name:ident, $name4:ident, $name4a:ident, $fmt:tt, $wb:expr) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name4a(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            let nb = act
                .iter()
                .fold((n / 32).min(w.len() / $wb), |m, a| m.min(a.len() / Q8_1));
            let x = w.as_ptr();
            let y = act.map(|a| a.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut summs = _mm_setzero_ps();
            // Lane r of the gathered activation scales: row r's d (first half), s (second).
            let deint = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            for i in 0..nb {
                let xb = x.add(i * $wb);
                prefetch(xb);
                let dmx = halves(u64::from((xb as *const u32).read_unaligned()));
                let (dx, mx) = (_mm_broadcastss_ps(dmx), _mm_movehdup_ps(dmx));
                let mx = _mm_shuffle_ps::<0>(mx, mx);
                let ds = |r: usize| (y[r].add(i * Q8_1) as *const i32).read_unaligned();
                let h = _mm_set_epi32(ds(3), ds(2), ds(1), ds(0));
                let ds8 = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(h), deint);
                let (dy, sy) = (_mm256_castps256_ps128(ds8), _mm256_extractf128_ps::<1>(ds8));
                // Per lane exactly the single-row kernel's `m_x * s_y + summs` and `d_x * d_y`.
                summs = _mm_fmadd_ps(mx, sy, summs);
                let d = _mm256_castps128_ps256(_mm_mul_ps(dx, dy));
                let qx = unpack!($fmt, xb);
                for r in 0..4 {
                    let yb = y[r].add(i * Q8_1);
                    let q = _mm256_cvtepi32_ps(dot_us(qx, load256(yb.add(4))));
                    let dr = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(r as i32));
                    acc[r] = _mm256_fmadd_ps(dr, q, acc[r]);
                }
            }
            [
                hsum8(acc[0]) + lane(summs, 0),
                hsum8(acc[1]) + lane(summs, 1),
                hsum8(acc[2]) + lane(summs, 2),
                hsum8(acc[3]) + lane(summs, 3),
            ]
        }

        #[target_feature(enable = $feat)]
        unsafe fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let nb = blocks(n, 32, w, $wb, act, Q8_1);
            let (x, y) = (w.as_ptr(), act.as_ptr());
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            for i in 0..nb {
                let (xb, yb) = (x.add(i * $wb), y.add(i * Q8_1));
                // [d_x, m_x, d_y, s_y]
                let s = f16_pairs(xb, yb);
                let (dx, mx, dy, sy) = (lane(s, 0), lane(s, 1), lane(s, 2), lane(s, 3));
                summs = mx.mul_add(sy, summs);
                let d = _mm256_set1_ps(dx * dy);
                let q = _mm256_cvtepi32_ps(dot_us(unpack!($fmt, xb), load256(yb.add(4))));
                acc = _mm256_fmadd_ps(d, q, acc);
            }
            hsum8(acc) + summs
        }

        #[target_feature(enable = $feat)]
        unsafe fn $name4(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
            let nb = blocks4(n, 32, &w, $wb, act, Q8_1);
            let x = w.map(|r| r.as_ptr());
            let y = act.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut summs = _mm_setzero_ps();
            // Lane r of these gathers holds row r's d (first) and m (second).
            let deint = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            for i in 0..nb {
                let yb = y.add(i * Q8_1);
                for r in 0..4 {
                    prefetch(x[r].add(i * $wb));
                }
                let dys = f16_pairs(yb, yb);
                let (dy, sy) = (_mm_broadcastss_ps(dys), _mm_movehdup_ps(dys));
                let sy = _mm_shuffle_ps::<0>(sy, sy);
                let qy = load256(yb.add(4));
                let dm = |r: usize| (x[r].add(i * $wb) as *const i32).read_unaligned();
                let h = _mm_set_epi32(dm(3), dm(2), dm(1), dm(0));
                let dm8 = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(h), deint);
                let dx = _mm256_castps256_ps128(dm8);
                let mx = _mm256_extractf128_ps::<1>(dm8);
                summs = _mm_fmadd_ps(mx, sy, summs);
                let d = _mm256_broadcastsi128_si256(_mm_castps_si128(_mm_mul_ps(dx, dy)));
                let d = _mm256_castsi256_ps(d);
                for r in 0..4 {
                    let xb = x[r].add(i * $wb);
                    let q = _mm256_cvtepi32_ps(dot_us(unpack!($fmt, xb), qy));
                    let dr = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(r as i32));
                    acc[r] = _mm256_fmadd_ps(dr, q, acc[r]);
                }
            }
            [
                hsum8(acc[0]) + lane(summs, 0),
                hsum8(acc[1]) + lane(summs, 1),
                hsum8(acc[2]) + lane(summs, 2),
                hsum8(acc[3]) + lane(summs, 3),
            ]
        }
    };
}

macro_rules! dot_k4 {
    ($feat:literal, $name:ident, $name4:ident, $wb:expr, $q5:expr) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let nb = blocks(n, QK_K, w, $wb, act, Q8K);
            let (x, y) = (w.as_ptr(), act.as_ptr());
            let mut acc = _mm256_setzero_ps();
            let mut acc_m = _mm_setzero_ps();
            let mut summs = 0f32;
            for i in 0..nb {
                let (xb, yb) = (x.add(i * $wb), y.add(i * Q8K));
                let yd = (yb as *const f32).read_unaligned();
                let dd = f16_pairs(xb, xb);
                let d = yd * lane(dd, 0);
                let dmin = -yd * lane(dd, 1);
                let ms = _mm256_cvtepu8_epi16(k4_scales_mins(xb.add(4)));
                let prod = k4_min_prod(ms, yb);
                if $q5 {
                    let h = _mm_hadd_epi32(
                        _mm_hadd_epi32(prod, _mm_setzero_si128()),
                        _mm_setzero_si128(),
                    );
                    summs = dmin.mul_add(_mm_cvtsi128_si32(h) as f32, summs);
                } else {
                    acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
                }
                let scales = k4_scales_x2(ms);
                let (qs, hb) = if $q5 {
                    (xb.add(48), Some(load256(xb.add(16))))
                } else {
                    (xb.add(16), None)
                };
                let sumi = k4_sumi(scales, qs, yb.add(4), hb);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            if $q5 {
                hsum8(acc) + summs
            } else {
                hsum8(acc) + hsum4(acc_m)
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn $name4(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
            // The K-quant blocks carry enough work per block that interleaving four
            // rows buys little over running the single-row kernel four times.
            w.map(|w| $name(n, w, act))
        }
    };
}

/// Safe wrappers for the table.
macro_rules! wrap {
    ($($dot:ident => $inner:ident;)*) => {$(
        pub(in crate::simd) fn $dot(n: usize, w: &[u8], act: &[u8]) -> f32 {
            // SAFETY: only reachable through this tier's table, built after feature
            // detection (see the module docs of `simd`); the kernel bounds its loads.
            unsafe { $inner(n, w, act) }
        }
    )*};
}
macro_rules! wrap4 {
    ($($dot:ident => $inner:ident;)*) => {$(
        pub(in crate::simd) fn $dot(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
            // SAFETY: as for the single-row wrappers.
            unsafe { $inner(n, w, act) }
        }
    )*};
}
/// A row-run kernel (`VecDotRowsFn`) from a type's four-row kernel, whose results equal its
/// single-row one's: four rows a quarter of the run apart at a time (rows side by side would be
/// four streams a row apart, which this machine's prefetchers followed at half speed), the
/// leftover rows one by one.
fn rows_by_quarters(
    x4: VecDotX4Fn,
    one: VecDotFn,
    n: usize,
    rows: &[u8],
    row_bytes: usize,
    act: &[u8],
    out: &mut [f32],
) {
    let m = match row_bytes {
        0 => out.len(),
        b => out.len().min(rows.len() / b),
    };
    let row = |r: usize| &rows[r * row_bytes..(r + 1) * row_bytes];
    let q = m / 4;
    for r in 0..q {
        let v = x4(n, [row(r), row(r + q), row(r + 2 * q), row(r + 3 * q)], act);
        for (j, v) in v.into_iter().enumerate() {
            out[r + j * q] = v;
        }
    }
    for r in 4 * q..m {
        out[r] = one(n, row(r), act);
    }
}

macro_rules! wrap4a {
    ($($dot:ident => $inner:ident;)*) => {$(
        pub(in crate::simd) fn $dot(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            // SAFETY: as for the single-row wrappers.
            unsafe { $inner(n, w, act) }
        }
    )*};
}
macro_rules! map4a {
    ($($name:ident => $dot:ident;)*) => {$(
        fn $name(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            act.map(|a| $dot(n, w, a))
        }
    )*};
}
macro_rules! wrapq {
    ($($q:ident => $inner:ident;)*) => {$(
        pub(in crate::simd) fn $q(src: &[f32], dst: &mut [u8]) {
            // SAFETY: as for the dot wrappers; the kernel bounds its loads and stores.
            unsafe { $inner(src, dst) }
        }
    )*};
}

/// Kernels shared by both tiers; expanded inside `avx2` and `avx512`, which each define the
/// integer primitives `dot_us` (unsigned x signed bytes, 4-sums per i32 lane) and `madd_acc`
/// (i16 pairs times i16 scales, added to an i32 accumulator) for their instruction set.
macro_rules! shared_kernels {
    ($feat:literal) => {
        use super::*;
        use crate::kquants::QK_K;

        /// Bytes per block of the formats these kernels read.
        const Q4_0: usize = 18;
        const Q4_1: usize = 20;
        const Q5_0: usize = 22;
        const Q5_1: usize = 24;
        const Q8_0: usize = 34;
        const Q8_1: usize = 36;
        const Q4K: usize = 144;
        const Q5K: usize = 176;
        const Q6K: usize = 210;
        const Q8K: usize = 292;

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn load256(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }

        /// `hsum_float_8`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn hsum8(x: __m256) -> f32 {
            let mut r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
            r = _mm_add_ps(r, _mm_movehl_ps(r, r));
            r = _mm_add_ss(r, _mm_movehdup_ps(r));
            _mm_cvtss_f32(r)
        }

        /// The `(r0 + r2) + (r1 + r3)` tail of `hsum_float_8` on a 4-lane vector.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn hsum4(mut r: __m128) -> f32 {
            r = _mm_add_ps(r, _mm_movehl_ps(r, r));
            r = _mm_add_ss(r, _mm_movehdup_ps(r));
            _mm_cvtss_f32(r)
        }

        /// 32 nibbles: the low ones of 16 bytes, then the high ones (`bytes_from_nibbles_32`).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nibbles32(p: *const u8) -> __m256i {
            let t = _mm_loadu_si128(p as *const __m128i);
            let b = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(t), _mm_srli_epi16::<4>(t));
            _mm256_and_si256(b, _mm256_set1_epi8(0xF))
        }

        /// 32 bits to 32 bytes of 0x00/0xFF (`bytes_from_bits_32`).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bits32(p: *const u8) -> __m256i {
            let x32 = (p as *const i32).read_unaligned();
            let shuf = _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
            let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
            _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
        }

        /// Signed bytes times signed bytes, through the `sign_epi8` trick ggml uses.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dot_ss(x: __m256i, y: __m256i) -> __m256i {
            dot_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
        }

        /// Two f16 at `a` and two at `b` widened: `[a0, a1, b0, b1]`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16_pairs(a: *const u8, b: *const u8) -> __m128 {
            let a = (a as *const u32).read_unaligned();
            let b = (b as *const u32).read_unaligned();
            halves(u64::from(a) | u64::from(b) << 32)
        }

        /// Four f16 packed in a u64, widened. Going through a general register keeps the
        /// conversion off the accumulator's dependency chain (a vector insert would merge into
        /// whatever register the compiler picks, possibly the accumulator).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn halves(bits: u64) -> __m128 {
            _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
        }

        /// How far ahead of the current weight block to prefetch. Weights stream from memory
        /// once per token; the hardware prefetcher alone leaves bandwidth unused.
        const PREFETCH: usize = 1024;

        #[inline]
        fn prefetch(p: *const u8) {
            // SAFETY: a prefetch is only a hint; it never faults, whatever the address, and
            // wrapping_add keeps the pointer arithmetic itself defined.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8) }
        }

        #[inline]
        unsafe fn rd16(p: *const u8) -> u16 {
            (p as *const u16).read_unaligned()
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16_at(p: *const u8) -> f32 {
            // Through a general register and a full-width move: with only the low lane
            // demanded, LLVM turned the plain form into a `vpinsrw` merging into whatever
            // vector register was free, an accumulator included (a false dependency that
            // chained every Q6_K block on the previous block's FMA).
            let bits = i32::from(rd16(p));
            let v: __m128i;
            // SAFETY: a register-to-register move (`vmovd` zeroes the upper lanes); no memory,
            // stack or flags are touched, and AVX is enabled for every caller.
            std::arch::asm!(
                "vmovd {v}, {b:e}",
                b = in(reg) bits,
                v = lateout(xmm_reg) v,
                options(pure, nomem, nostack, preserves_flags)
            );
            _mm_cvtss_f32(_mm_cvtph_ps(v))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn lane(v: __m128, i: usize) -> f32 {
            let mut a = [0f32; 4];
            _mm_storeu_ps(a.as_mut_ptr(), v);
            a[i]
        }

        fn blocks(n: usize, qk: usize, w: &[u8], wb: usize, act: &[u8], ab: usize) -> usize {
            (n / qk).min(w.len() / wb).min(act.len() / ab)
        }

        fn blocks4(n: usize, qk: usize, w: &[&[u8]; 4], wb: usize, act: &[u8], ab: usize) -> usize {
            w.iter()
                .fold((n / qk).min(act.len() / ab), |m, w| m.min(w.len() / wb))
        }

        // -------------------------------------------------------------------------------------
        // Legacy formats against Q8_0 / Q8_1.

        dot_sym!($feat, q4_0_q8_0, q4_0_q8_0_x4, q4_0_q8_0_4a, q4_0, Q4_0);
        dot_sym!($feat, q5_0_q8_0, q5_0_q8_0_x4, q5_0_q8_0_4a, q5_0, Q5_0);
        dot_sym!($feat, q8_0_q8_0, q8_0_q8_0_x4, q8_0_q8_0_4a, q8_0, Q8_0);

        dot_min!($feat, q4_1_q8_1, q4_1_q8_1_x4, q4_1_q8_1_4a, q4_1, Q4_1);
        dot_min!($feat, q5_1_q8_1, q5_1_q8_1_x4, q5_1_q8_1_4a, q5_1, Q5_1);

        // -------------------------------------------------------------------------------------
        // Activation quantizers (ggml-cpu's x86 `quantize_row_q8_0` / `_q8_1`).

        /// One block: the scale, the 32 quants stored at `out`, and the sum of the unsaturated
        /// integers.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q8_block(x: *const f32, out: *mut u8) -> (f32, i32) {
            let v = [
                _mm256_loadu_ps(x),
                _mm256_loadu_ps(x.add(8)),
                _mm256_loadu_ps(x.add(16)),
                _mm256_loadu_ps(x.add(24)),
            ];
            let sign = _mm256_set1_ps(-0.0);
            let mut m = _mm256_andnot_ps(sign, v[0]);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[1]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[2]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[3]));
            let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let mut i = [_mm256_setzero_si256(); 4];
            for k in 0..4 {
                i[k] = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v[k], id)));
            }
            let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let s128 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s64 = _mm_add_epi32(_mm_unpackhi_epi64(s128, s128), s128);
            let sum =
                _mm_cvtsi128_si32(_mm_add_epi32(s64, _mm_shuffle_epi32::<0b10_11_00_01>(s64)));
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(i[0], i[1]),
                _mm256_packs_epi32(i[2], i[3]),
            );
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(out as *mut __m256i, p);
            (d, sum)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn to_f16(x: f32) -> [u8; 2] {
            let h = _mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(x));
            (_mm_cvtsi128_si32(h) as u16).to_le_bytes()
        }

        #[target_feature(enable = $feat)]
        unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
            let nb = (src.len() / 32).min(dst.len() / Q8_0);
            for i in 0..nb {
                let out = dst.as_mut_ptr().add(i * Q8_0);
                let (d, _) = q8_block(src.as_ptr().add(i * 32), out.add(2));
                out.cast::<[u8; 2]>().write_unaligned(to_f16(d));
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
            let nb = (src.len() / 32).min(dst.len() / Q8_1);
            for i in 0..nb {
                let out = dst.as_mut_ptr().add(i * Q8_1);
                let (d, sum) = q8_block(src.as_ptr().add(i * 32), out.add(4));
                out.cast::<[u8; 2]>().write_unaligned(to_f16(d));
                out.add(2)
                    .cast::<[u8; 2]>()
                    .write_unaligned(to_f16(d * sum as f32));
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn quantize_f16(src: &[f32], dst: &mut [u8]) {
            let n = src.len().min(dst.len() / 2);
            let mut i = 0;
            while i + 8 <= n {
                let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm256_loadu_ps(
                    src.as_ptr().add(i),
                ));
                _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, h);
                i += 8;
            }
            for k in i..n {
                dst.as_mut_ptr()
                    .add(2 * k)
                    .cast::<[u8; 2]>()
                    .write_unaligned(to_f16(src[k]));
            }
        }

        // -------------------------------------------------------------------------------------
        // K-quants against Q8_K.

        /// Scales (bytes 0..8) and mins (8..16) of a Q4_K/Q5_K block, as ggml's `utmp` words.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn k4_scales_mins(p: *const u8) -> __m128i {
            const KMASK1: u32 = 0x3f3f_3f3f;
            const KMASK2: u32 = 0x0f0f_0f0f;
            const KMASK3: u32 = 0x0303_0303;
            let u0 = (p as *const u32).read_unaligned();
            let u1 = (p.add(4) as *const u32).read_unaligned();
            let u2 = (p.add(8) as *const u32).read_unaligned();
            let u3 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
            let uaux = u1 & KMASK1;
            let u1 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
            let u2 = uaux;
            let u0 = u0 & KMASK1;
            _mm_set_epi32(u3 as i32, u2 as i32, u1 as i32, u0 as i32)
        }

        /// `get_scale_shuffle_k4(i)`: broadcast i16 element `i` of a 128-bit half.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn k4_shuffle(i: i8) -> __m256i {
            _mm256_set1_epi16(i16::from_le_bytes([2 * i as u8, 2 * i as u8 + 1]))
        }

        /// The `acc_m` lanes of a Q4_K/Q5_K block: mins times the pairwise bsums.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn k4_min_prod(mins_scales: __m256i, yb: *const u8) -> __m128i {
            let q8sums = load256(yb.add(260));
            let q8s = _mm_hadd_epi16(
                _mm256_castsi256_si128(q8sums),
                _mm256_extracti128_si256::<1>(q8sums),
            );
            _mm_madd_epi16(_mm256_extracti128_si256::<1>(mins_scales), q8s)
        }

        /// The eight scales of a Q4_K/Q5_K block (the low half of `ms`, widened to i16) in
        /// both 128-bit halves, for `k4_shuffle`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn k4_scales_x2(ms: __m256i) -> __m256i {
            let sc = _mm256_castsi256_si128(ms);
            _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(sc), sc)
        }

        /// What the repacked orders take from a Q4_K block and its Q8_K block first: `d` and
        /// `dmin` times the activation's scale (the scalar order's f32 products), the scales
        /// and mins widened (`ms`), and the four pair products of the mins (`k4_min_prod`).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn k4_gemv_head(xb: *const u8, yb: *const u8) -> (f32, f32, __m256i, __m128i) {
            let yd = (yb as *const f32).read_unaligned();
            let dd = f16_pairs(xb, xb);
            let ms = _mm256_cvtepu8_epi16(k4_scales_mins(xb.add(4)));
            (lane(dd, 0) * yd, lane(dd, 1) * yd, ms, k4_min_prod(ms, yb))
        }

        /// Integer lanes of the 256 quants of a Q4_K (or, with `hbits`, Q5_K) block.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn k4_sumi(
            scales: __m256i,
            q4: *const u8,
            q8: *const u8,
            hbits: Option<__m256i>,
        ) -> __m256i {
            let m4 = _mm256_set1_epi8(0xF);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 64 {
                let scale_l = _mm256_shuffle_epi8(scales, k4_shuffle(2 * j as i8));
                let scale_h = _mm256_shuffle_epi8(scales, k4_shuffle(2 * j as i8 + 1));
                let q4bits = load256(q4.add(32 * j));
                let mut ql = _mm256_and_si256(q4bits, m4);
                let mut qh = _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits), m4);
                if let Some(hb) = hbits {
                    // Bit 2j (2j+1) of each qh byte is the fifth bit of sub-block 2j (2j+1).
                    let one = _mm256_set1_epi8(1);
                    let lo = _mm256_and_si256(
                        _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * j as i32)),
                        one,
                    );
                    let hi = _mm256_and_si256(
                        _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * j as i32 + 1)),
                        one,
                    );
                    ql = _mm256_or_si256(ql, _mm256_slli_epi16::<4>(lo));
                    qh = _mm256_or_si256(qh, _mm256_slli_epi16::<4>(hi));
                }
                let pl = _mm256_maddubs_epi16(ql, load256(q8.add(64 * j)));
                let ph = _mm256_maddubs_epi16(qh, load256(q8.add(64 * j + 32)));
                sumi = madd_acc(sumi, scale_l, pl);
                sumi = madd_acc(sumi, scale_h, ph);
            }
            sumi
        }

        dot_k4!($feat, q4_k_q8_k, q4_k_q8_k_x4, Q4K, false);
        dot_k4!($feat, q5_k_q8_k, q5_k_q8_k_x4, Q5K, true);

        /// Sum of the eight i32 lanes (exact, wrapping like the vector adds).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn hsum_i32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
        }

        /// Q4_K in the order of llama.cpp's repacked gemm (see `lanes.rs`): per sub-block pair,
        /// one FMA into each of two scalar chains.
        #[target_feature(enable = $feat)]
        unsafe fn q4_k_q8_k_gemm(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let nb = blocks(n, QK_K, w, Q4K, act, Q8K);
            let (x, y) = (w.as_ptr(), act.as_ptr());
            let m4 = _mm256_set1_epi8(0xF);
            let (mut acc, mut acc_min) = (0f32, 0f32);
            for i in 0..nb {
                let (xb, yb) = (x.add(i * Q4K), y.add(i * Q8K));
                let (d, dmin, ms, min_prod) = k4_gemv_head(xb, yb);
                let mut mins = [0i32; 4];
                _mm_storeu_si128(mins.as_mut_ptr() as *mut __m128i, min_prod);
                let scales = k4_scales_x2(ms);
                let mut pairs = [0i32; 4];
                for (j, p) in pairs.iter_mut().enumerate() {
                    let scale_l = _mm256_shuffle_epi8(scales, k4_shuffle(2 * j as i8));
                    let scale_h = _mm256_shuffle_epi8(scales, k4_shuffle(2 * j as i8 + 1));
                    let q4bits = load256(xb.add(16 + 32 * j));
                    let ql = _mm256_and_si256(q4bits, m4);
                    let qh = _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits), m4);
                    let pl = _mm256_maddubs_epi16(ql, load256(yb.add(4 + 64 * j)));
                    let ph = _mm256_maddubs_epi16(qh, load256(yb.add(4 + 64 * j + 32)));
                    let s = madd_acc(madd_acc(_mm256_setzero_si256(), scale_l, pl), scale_h, ph);
                    *p = hsum_i32(s);
                }
                for j in 0..4 {
                    acc = (pairs[j] as f32).mul_add(d, acc);
                    acc_min = (mins[j] as f32).mul_add(dmin, acc_min);
                }
            }
            acc - acc_min
        }

        /// Exact i32 totals of four vectors' lanes, `[sum(v0), sum(v1), sum(v2), sum(v3)]`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn hsum_i32x4(v: [__m256i; 4]) -> __m128i {
            let h = v.map(|x| {
                _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x))
            });
            _mm_hadd_epi32(_mm_hadd_epi32(h[0], h[1]), _mm_hadd_epi32(h[2], h[3]))
        }

        /// Four activation scales (the f32 `d` at the start of each Q8_K block).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q8_k_d4(yb: [*const u8; 4]) -> __m128 {
            let d = yb.map(|p| (p as *const f32).read_unaligned());
            _mm_setr_ps(d[0], d[1], d[2], d[3])
        }

        /// `q4_k_q8_k_gemm` for four activation rows sharing one weight row: the weight's
        /// nibbles and scales are unpacked once, and each activation's two scalar FMA chains
        /// become one lane of two 4-lane chains (the same multiply and FMA per lane).
        #[target_feature(enable = $feat)]
        unsafe fn q4_k_q8_k_gemm_4a(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            let nb = act
                .iter()
                .fold((n / QK_K).min(w.len() / Q4K), |m, a| m.min(a.len() / Q8K));
            let x = w.as_ptr();
            let y = act.map(|a| a.as_ptr());
            let m4 = _mm256_set1_epi8(0xF);
            let (mut acc, mut acc_min) = (_mm_setzero_ps(), _mm_setzero_ps());
            for i in 0..nb {
                let xb = x.add(i * Q4K);
                let yb = y.map(|p| p.add(i * Q8K));
                let yd = q8_k_d4(yb);
                let dd = f16_pairs(xb, xb);
                let d = _mm_mul_ps(_mm_shuffle_ps::<0>(dd, dd), yd);
                let dmin = _mm_mul_ps(_mm_shuffle_ps::<0b01_01_01_01>(dd, dd), yd);
                let ms = _mm256_cvtepu8_epi16(k4_scales_mins(xb.add(4)));
                // mins[t] = the four pair products of activation t; transposed to pairs.
                let mins = yb.map(|p| k4_min_prod(ms, p));
                let m01 = _mm_unpacklo_epi32(mins[0], mins[1]);
                let m23 = _mm_unpacklo_epi32(mins[2], mins[3]);
                let n01 = _mm_unpackhi_epi32(mins[0], mins[1]);
                let n23 = _mm_unpackhi_epi32(mins[2], mins[3]);
                let min_pair = [
                    _mm_unpacklo_epi64(m01, m23),
                    _mm_unpackhi_epi64(m01, m23),
                    _mm_unpacklo_epi64(n01, n23),
                    _mm_unpackhi_epi64(n01, n23),
                ];
                let scales = k4_scales_x2(ms);
                for (j, mp) in min_pair.iter().enumerate() {
                    let scale_l = _mm256_shuffle_epi8(scales, k4_shuffle(2 * j as i8));
                    let scale_h = _mm256_shuffle_epi8(scales, k4_shuffle(2 * j as i8 + 1));
                    let q4bits = load256(xb.add(16 + 32 * j));
                    let ql = _mm256_and_si256(q4bits, m4);
                    let qh = _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits), m4);
                    let sums = yb.map(|p| {
                        let pl = _mm256_maddubs_epi16(ql, load256(p.add(4 + 64 * j)));
                        let ph = _mm256_maddubs_epi16(qh, load256(p.add(4 + 64 * j + 32)));
                        madd_acc(madd_acc(_mm256_setzero_si256(), scale_l, pl), scale_h, ph)
                    });
                    acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum_i32x4(sums)), d, acc);
                    acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(*mp), dmin, acc_min);
                }
            }
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, acc_min));
            out
        }

        /// `q6_k_q8_k_tiled` for four activation rows sharing one weight row: the 6-bit
        /// quants and their scales are unpacked once per block; each activation's scalar
        /// chain is one lane of a 4-lane chain.
        #[target_feature(enable = $feat)]
        unsafe fn q6_k_q8_k_tiled_4a(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            let nb = act
                .iter()
                .fold((n / QK_K).min(w.len() / Q6K), |m, a| m.min(a.len() / Q8K));
            let x = w.as_ptr();
            let y = act.map(|a| a.as_ptr());
            let m3 = _mm256_set1_epi8(3);
            let m15 = _mm256_set1_epi8(15);
            let mut acc = _mm_setzero_ps();
            for i in 0..nb {
                let xb = x.add(i * Q6K);
                let yb = y.map(|p| p.add(i * Q8K));
                let scales = _mm_loadu_si128(xb.add(192) as *const __m128i);
                let scales16 = _mm256_cvtepi8_epi16(scales);
                let mut sumi = yb.map(|p| {
                    _mm256_sub_epi32(
                        _mm256_setzero_si256(),
                        _mm256_slli_epi32::<5>(_mm256_madd_epi16(load256(p.add(260)), scales16)),
                    )
                });
                for j in 0..QK_K / 128 {
                    let b1 = load256(xb.add(64 * j));
                    let b2 = load256(xb.add(64 * j + 32));
                    let bh = load256(xb.add(128 + 32 * j));
                    let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(bh, m3));
                    let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(12)));
                    let h2 = _mm256_and_si256(bh, _mm256_set1_epi8(48));
                    let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(-64)));
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(b1, m15), h0),
                        _mm256_or_si256(_mm256_and_si256(b2, m15), h1),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b1), m15), h2),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b2), m15), h3),
                    ];
                    for (k, qk) in q.iter().enumerate() {
                        let sc =
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, q6_shuffle(4 * j + k)));
                        for t in 0..4 {
                            let q8 = yb[t].add(4 + 128 * j + 32 * k);
                            let p16 = _mm256_maddubs_epi16(*qk, load256(q8));
                            sumi[t] = madd_acc(sumi[t], sc, p16);
                        }
                    }
                }
                let dx = _mm_set1_ps(f16_at(xb.add(208)));
                let r = _mm_mul_ps(_mm_cvtepi32_ps(hsum_i32x4(sumi)), dx);
                acc = _mm_fmadd_ps(r, q8_k_d4(yb), acc);
            }
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), acc);
            out
        }

        /// The `d` and `dmin` lanes of four Q4_K blocks (their first words) times the
        /// activation scale `yd`, as the scalar order's f32 products.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn group_scales(dd: [u32; 4], yd: __m128) -> (__m128, __m128) {
            // [d0, dmin0, d1, dmin1] and [d2, dmin2, d3, dmin3]
            let lo = halves(u64::from(dd[0]) | u64::from(dd[1]) << 32);
            let hi = halves(u64::from(dd[2]) | u64::from(dd[3]) << 32);
            (
                _mm_mul_ps(_mm_shuffle_ps::<0b10_00_10_00>(lo, hi), yd),
                _mm_mul_ps(_mm_shuffle_ps::<0b11_01_11_01>(lo, hi), yd),
            )
        }

        /// `q4_k_q8_k_gemv` of the four rows of a block-interleaved group (`interleave_rows`),
        /// each result bit-identical to it: the activation's pair sums are formed once per block,
        /// the rows' integer dots and min corrections reduced together, and each row's two FMA
        /// chains are one lane of two 4-lane chains. (On 256-bit vectors in both tiers: a
        /// 512-bit form, as the single-row AVX-512 kernel, streamed 18.7-19.6 GB/s on one core
        /// against this one's 20.8-21.1 in the AVX-512 tier.)
        #[target_feature(enable = $feat)]
        unsafe fn q4_k_q8_k_gemv_group(n: usize, group: &[u8], act: &[u8]) -> [f32; 4] {
            let nb = (n / QK_K).min(act.len() / Q8K).min(group.len() / (4 * Q4K));
            let (x, y) = (group.as_ptr(), act.as_ptr());
            let (mut acc, mut acc_min) = (_mm_setzero_ps(), _mm_setzero_ps());
            for i in 0..nb {
                let yb = y.add(i * Q8K);
                let base = x.add(i * 4 * Q4K);
                prefetch(base);
                prefetch(base.add(4 * Q4K / 2));
                let yd = _mm_set1_ps((yb as *const f32).read_unaligned());
                let q8sums = load256(yb.add(260));
                let q8s = _mm_hadd_epi16(
                    _mm256_castsi256_si128(q8sums),
                    _mm256_extracti128_si256::<1>(q8sums),
                );
                let mut sumi = [_mm256_setzero_si256(); 4];
                let mut mins = [_mm_setzero_si128(); 4];
                let mut dd = [0u32; 4];
                for r in 0..4 {
                    let xb = base.add(r * Q4K);
                    dd[r] = (xb as *const u32).read_unaligned();
                    let ms = _mm256_cvtepu8_epi16(k4_scales_mins(xb.add(4)));
                    mins[r] = _mm_madd_epi16(_mm256_extracti128_si256::<1>(ms), q8s);
                    let scales = k4_scales_x2(ms);
                    sumi[r] = k4_sumi(scales, xb.add(16), yb.add(4), None);
                }
                let (d, dmin) = group_scales(dd, yd);
                let isum = hsum_i32x4(sumi);
                let imin = _mm_hadd_epi32(
                    _mm_hadd_epi32(mins[0], mins[1]),
                    _mm_hadd_epi32(mins[2], mins[3]),
                );
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), d, acc);
                acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(imin), dmin, acc_min);
            }
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, acc_min));
            out
        }

        pub(in crate::simd) fn dot_q4_k_gemv_group(n: usize, group: &[u8], act: &[u8]) -> [f32; 4] {
            // SAFETY: as for the other wrappers: reachable only through this tier's table.
            unsafe { q4_k_q8_k_gemv_group(n, group, act) }
        }

        /// `get_scale_shuffle(i)`: bytes 2i (first 8) and 2i+1 (last 8).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6_shuffle(i: usize) -> __m128i {
            let (a, b) = (
                (2 * i) as i64 * 0x0101010101010101,
                (2 * i + 1) as i64 * 0x0101010101010101,
            );
            _mm_set_epi64x(b, a)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q6_k_q8_k(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let nb = blocks(n, QK_K, w, Q6K, act, Q8K);
            let (x, y) = (w.as_ptr(), act.as_ptr());
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let (xb, yb) = (x.add(i * Q6K), y.add(i * Q8K));
                let d = (yb as *const f32).read_unaligned() * f16_at(xb.add(208));
                let sumi = q6_k_sumi(xb, yb);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum8(acc)
        }

        /// Q6_K in the order of llama.cpp's tiled matmul (see `lanes.rs`).
        #[target_feature(enable = $feat)]
        unsafe fn q6_k_q8_k_tiled(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let nb = blocks(n, QK_K, w, Q6K, act, Q8K);
            let (x, y) = (w.as_ptr(), act.as_ptr());
            let mut acc = 0f32;
            for i in 0..nb {
                let (xb, yb) = (x.add(i * Q6K), y.add(i * Q8K));
                let r = hsum_i32(q6_k_sumi(xb, yb)) as f32 * f16_at(xb.add(208));
                acc = r.mul_add((yb as *const f32).read_unaligned(), acc);
            }
            acc
        }

        /// The eight i32 lanes of one Q6_K block, ggml's `q8sclsub` already taken off.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6_k_sumi(xb: *const u8, yb: *const u8) -> __m256i {
            let m3 = _mm256_set1_epi8(3);
            let m15 = _mm256_set1_epi8(15);
            let (mut q4, mut qh, mut q8) = (xb, xb.add(128), yb.add(4));
            let scales = _mm_loadu_si128(xb.add(192) as *const __m128i);
            let scales16 = _mm256_cvtepi8_epi16(scales);
            let q8sclsub =
                _mm256_slli_epi32::<5>(_mm256_madd_epi16(load256(yb.add(260)), scales16));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 128 {
                let b1 = load256(q4);
                let b2 = load256(q4.add(32));
                let bh = load256(qh);
                q4 = q4.add(64);
                qh = qh.add(32);
                let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(bh, m3));
                let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(12)));
                let h2 = _mm256_and_si256(bh, _mm256_set1_epi8(48));
                let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(bh, _mm256_set1_epi8(-64)));
                let q = [
                    _mm256_or_si256(_mm256_and_si256(b1, m15), h0),
                    _mm256_or_si256(_mm256_and_si256(b2, m15), h1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b1), m15), h2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b2), m15), h3),
                ];
                for (k, qk) in q.iter().enumerate() {
                    let p16 = _mm256_maddubs_epi16(*qk, load256(q8));
                    q8 = q8.add(32);
                    let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, q6_shuffle(4 * j + k)));
                    sumi = madd_acc(sumi, sc, p16);
                }
            }
            _mm256_sub_epi32(sumi, q8sclsub)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q6_k_q8_k_x4(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
            w.map(|w| q6_k_q8_k(n, w, act))
        }

        wrap! {
            dot_q4_0 => q4_0_q8_0;
            dot_q4_1 => q4_1_q8_1;
            dot_q5_0 => q5_0_q8_0;
            dot_q5_1 => q5_1_q8_1;
            dot_q8_0 => q8_0_q8_0;
            dot_q4_k => q4_k_q8_k;
            dot_q5_k => q5_k_q8_k;
            dot_q6_k => q6_k_q8_k;
            dot_q4_k_gemm => q4_k_q8_k_gemm;
            dot_q6_k_tiled => q6_k_q8_k_tiled;
        }
        wrap4! {
            dot4_q4_0 => q4_0_q8_0_x4;
            dot4_q4_1 => q4_1_q8_1_x4;
            dot4_q5_0 => q5_0_q8_0_x4;
            dot4_q5_1 => q5_1_q8_1_x4;
            dot4_q8_0 => q8_0_q8_0_x4;
            dot4_q4_k => q4_k_q8_k_x4;
            dot4_q5_k => q5_k_q8_k_x4;
            dot4_q6_k => q6_k_q8_k_x4;
        }
        // K-quant blocks carry enough work that four plain calls lose little.
        map4a! {
            dot4a_q4_k => dot_q4_k;
            dot4a_q5_k => dot_q5_k;
            dot4a_q6_k => dot_q6_k;
        }
        wrap4a! {
            dot4a_q4_k_gemm => q4_k_q8_k_gemm_4a;
            dot4a_q6_k_tiled => q6_k_q8_k_tiled_4a;
            dot4a_q4_0 => q4_0_q8_0_4a;
            dot4a_q4_1 => q4_1_q8_1_4a;
            dot4a_q5_0 => q5_0_q8_0_4a;
            dot4a_q5_1 => q5_1_q8_1_4a;
            dot4a_q8_0 => q8_0_q8_0_4a;
        }
        fn rows_q4_0(n: usize, rows: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
            rows_by_quarters(dot4_q4_0, dot_q4_0, n, rows, row_bytes, act, out)
        }
        fn rows_q5_0(n: usize, rows: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
            rows_by_quarters(dot4_q5_0, dot_q5_0, n, rows, row_bytes, act, out)
        }
        fn rows_q8_0(n: usize, rows: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
            rows_by_quarters(dot4_q8_0, dot_q8_0, n, rows, row_bytes, act, out)
        }
        fn rows_q4_1(n: usize, rows: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
            rows_by_quarters(dot4_q4_1, dot_q4_1, n, rows, row_bytes, act, out)
        }
        fn rows_q5_1(n: usize, rows: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
            rows_by_quarters(dot4_q5_1, dot_q5_1, n, rows, row_bytes, act, out)
        }

        /// This tier's row-run kernels (matrix-vector products), by weight type.
        pub(in crate::simd) fn kernels_rows(dtype: DType) -> Option<crate::traits::VecDotRowsFn> {
            match dtype {
                DType::Q4_0 => Some(rows_q4_0),
                DType::Q5_0 => Some(rows_q5_0),
                DType::Q8_0 => Some(rows_q8_0),
                DType::Q4_1 => Some(rows_q4_1),
                DType::Q5_1 => Some(rows_q5_1),
                _ => None,
            }
        }

        wrapq! {
            from_q8_0 => quantize_q8_0;
            from_q8_1 => quantize_q8_1;
            from_f16 => quantize_f16;
        }

        /// This tier's one-weight-row, four-activation-row kernels.
        pub(in crate::simd) fn kernels_4act(dtype: DType) -> Option<crate::traits::VecDot4ActFn> {
            match dtype {
                DType::Q4_0 => Some(dot4a_q4_0),
                DType::Q4_1 => Some(dot4a_q4_1),
                DType::Q5_0 => Some(dot4a_q5_0),
                DType::Q5_1 => Some(dot4a_q5_1),
                DType::Q8_0 => Some(dot4a_q8_0),
                DType::Q4_K => Some(dot4a_q4_k),
                DType::Q5_K => Some(dot4a_q5_k),
                DType::Q6_K => Some(dot4a_q6_k),
                _ => None,
            }
        }

        /// This tier's quant kernels, by weight type (activation quantizers by their own type).
        pub(in crate::simd) fn quant_kernels(
            dtype: DType,
        ) -> (
            Option<VecDotFn>,
            Option<VecDotX4Fn>,
            Option<crate::FromFloatFn>,
        ) {
            match dtype {
                DType::Q4_0 => (Some(dot_q4_0), Some(dot4_q4_0), None),
                DType::Q4_1 => (Some(dot_q4_1), Some(dot4_q4_1), None),
                DType::Q5_0 => (Some(dot_q5_0), Some(dot4_q5_0), None),
                DType::Q5_1 => (Some(dot_q5_1), Some(dot4_q5_1), None),
                DType::Q8_0 => (Some(dot_q8_0), Some(dot4_q8_0), Some(from_q8_0)),
                DType::Q8_1 => (None, None, Some(from_q8_1)),
                DType::Q4_K => (Some(dot_q4_k), Some(dot4_q4_k), None),
                DType::Q5_K => (Some(dot_q5_k), Some(dot4_q5_k), None),
                DType::Q6_K => (Some(dot_q6_k), Some(dot4_q6_k), None),
                DType::F16 => (None, None, Some(from_f16)),
                _ => (None, None, None),
            }
        }
    };
}

mod avx2 {
    shared_kernels!("avx2,fma,f16c");

    /// Q4_K in the order of llama.cpp's repacked gemv (see `lanes.rs`). The block's integer
    /// dot and min correction are exact i32 sums whatever their order, so the four pairs
    /// accumulate in one vector, reduced once per block (not once per pair).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k_q8_k_gemv(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let nb = blocks(n, QK_K, w, Q4K, act, Q8K);
        let (x, y) = (w.as_ptr(), act.as_ptr());
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for i in 0..nb {
            let (xb, yb) = (x.add(i * Q4K), y.add(i * Q8K));
            prefetch(xb);
            let (d, dmin, ms, mins) = k4_gemv_head(xb, yb);
            let scales = k4_scales_x2(ms);
            let isum = hsum_i32(k4_sumi(scales, xb.add(16), yb.add(4), None));
            let h = _mm_hadd_epi32(mins, mins);
            let imin = _mm_cvtsi128_si32(_mm_hadd_epi32(h, h));
            acc = (isum as f32).mul_add(d, acc);
            acc_min = (imin as f32).mul_add(dmin, acc_min);
        }
        acc - acc_min
    }

    pub(in crate::simd) fn dot_q4_k_gemv(n: usize, w: &[u8], act: &[u8]) -> f32 {
        // SAFETY: as for the shared wrappers: reachable only through this tier's table.
        unsafe { q4_k_q8_k_gemv(n, w, act) }
    }

    /// Unsigned bytes times signed bytes, 4-sums per i32 lane (`maddubs` then `madd` by ones).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_us(ax: __m256i, sy: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    }

    /// `acc + madd(a, b)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

mod avx512 {
    shared_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni");

    /// `q4_k_q8_k_gemv` (the repacked gemv order) on 512-bit vectors: each sub-block pair's 32
    /// nibble bytes are broadcast to both halves and the high half shifted, so one register
    /// holds the pair's 64 levels in the activation's order; the pair's two scales come from
    /// one byte shuffle, and one VNNI step adds the pair into the block's sum. The block's
    /// integer dot and min correction are reduced together; both are exact, so the results
    /// equal the scalar order's bits.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn q4_k_q8_k_gemv(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let nb = blocks(n, QK_K, w, Q4K, act, Q8K);
        let (x, y) = (w.as_ptr(), act.as_ptr());
        let m4 = _mm512_set1_epi8(0xF);
        // Scale 2j of the block in the low 256 bits, scale 2j + 1 in the high ones.
        let ctrl: [__m512i; 4] = std::array::from_fn(|j| {
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(k4_shuffle(2 * j as i8)),
                k4_shuffle(2 * j as i8 + 1),
            )
        });
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for i in 0..nb {
            let (xb, yb) = (x.add(i * Q4K), y.add(i * Q8K));
            prefetch(xb);
            let (d, dmin, ms, mins) = k4_gemv_head(xb, yb);
            let sc = _mm512_broadcast_i32x4(_mm256_castsi256_si128(ms));
            let mut sumi = _mm512_setzero_si512();
            for (j, c) in ctrl.iter().enumerate() {
                let q4 = _mm512_broadcast_i64x4(load256(xb.add(16 + 32 * j)));
                let q = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(q4, 0xFFFF_0000, q4), m4);
                let a = _mm512_loadu_si512(yb.add(4 + 64 * j) as *const _);
                let p16 = _mm512_maddubs_epi16(q, a);
                sumi = _mm512_dpwssd_epi32(sumi, _mm512_shuffle_epi8(sc, *c), p16);
            }
            let s = _mm256_add_epi32(
                _mm512_castsi512_si256(sumi),
                _mm512_extracti64x4_epi64::<1>(sumi),
            );
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            // [isum, imin, isum, imin]
            let h = _mm_hadd_epi32(s, mins);
            let h = _mm_hadd_epi32(h, h);
            acc = (_mm_cvtsi128_si32(h) as f32).mul_add(d, acc);
            acc_min = (_mm_extract_epi32::<1>(h) as f32).mul_add(dmin, acc_min);
        }
        acc - acc_min
    }

    pub(in crate::simd) fn dot_q4_k_gemv(n: usize, w: &[u8], act: &[u8]) -> f32 {
        // SAFETY: as for the shared wrappers: reachable only through this tier's table.
        unsafe { q4_k_q8_k_gemv(n, w, act) }
    }

    /// A weight block of the symmetric formats as unsigned bytes `q + OFFSET` (the stored
    /// levels before the format subtracts its offset; Q8_0's with the sign bit flipped).
    macro_rules! unpack_unsigned {
        (q4_0, $xb:expr) => {
            nibbles32($xb.add(2))
        };
        (q5_0, $xb:expr) => {
            _mm256_or_si256(
                nibbles32($xb.add(6)),
                _mm256_and_si256(bits32($xb.add(2)), _mm256_set1_epi8(0x10)),
            )
        };
        (q8_0, $xb:expr) => {
            _mm256_xor_si256(load256($xb.add(2)), _mm256_set1_epi8(0x80u8 as i8))
        };
    }

    /// Bytes of one block unpacked for the tile kernel: the weight's `d` as f32, then its 32
    /// levels as unsigned bytes `q + 128`.
    const UNPACKED: usize = 36;

    /// Q4_0/Q5_0/Q8_0 weight rows unpacked to [`UNPACKED`] blocks, once per matmul task, so the
    /// tile kernel neither unpacks bits nor converts an f16 scale per row per activation group.
    macro_rules! unpack_row {
        ($name:ident, $fmt:tt, $wb:expr, $offset:expr) => {
            #[target_feature(
                enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"
            )]
            unsafe fn $name(n: usize, row: &[u8], out: &mut [u8]) {
                let nb = (n / 32).min(row.len() / $wb).min(out.len() / UNPACKED);
                let rebias = _mm256_set1_epi8((128 - $offset) as u8 as i8);
                for i in 0..nb {
                    let xb = row.as_ptr().add(i * $wb);
                    let ob = out.as_mut_ptr().add(i * UNPACKED);
                    (ob as *mut f32).write_unaligned(f16_at(xb));
                    let ux = _mm256_add_epi8(unpack_unsigned!($fmt, xb), rebias);
                    _mm256_storeu_si256(ob.add(4) as *mut __m256i, ux);
                }
            }
        };
    }
    unpack_row!(unpack_q4_0, q4_0, Q4_0, 8);
    unpack_row!(unpack_q5_0, q5_0, Q5_0, 16);
    unpack_row!(unpack_q8_0, q8_0, Q8_0, 128);

    /// 4 unpacked weight rows x 4 Q8_0 activation rows, each result bit-identical to the
    /// single-row kernel of the weight's own format: the same integer lanes (exact sums of four
    /// byte products), the same `d_x * d_y` and FMA per lane, the same final `hsum_float_8`.
    ///
    /// The lanes come from one `vpdpbusd` per pair instead of two `vpsignb` and one: the weight
    /// is taken unsigned (`q + 128`) and the accumulator starts at `-128` times the
    /// activation's four-byte sums, computed once per activation block. That equals ggml's
    /// `sign_epi8` lanes except where an activation byte is -128 against a negative weight
    /// (ggml's negation wraps there); ggml's activation quantizer never writes -128, but any
    /// block holding one goes through the `sign_epi8` lanes so the result stays identical.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn q8_unpacked_tile<const R: usize>(
        n: usize,
        w: [&[u8]; R],
        act: [&[u8]; 4],
    ) -> [[f32; 4]; R] {
        let nb = w.iter().fold(
            act.iter().fold(n / 32, |m, a| m.min(a.len() / Q8_0)),
            |m, r| m.min(r.len() / UNPACKED),
        );
        let x = w.map(|r| r.as_ptr());
        let y = act.map(|a| a.as_ptr());
        // Two pairs per 512-bit register: acc[r][h] holds the 8 lanes of (row r, activation
        // 2h) in its low half and of (r, 2h + 1) in its high half.
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let offset = _mm512_set1_epi8(0x80u8 as i8);
        let lo_hi = [
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
        ];
        let pair = |a: __m256i, b: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
        for i in 0..nb {
            let yb = y.map(|p| p.add(i * Q8_0));
            let qy = [
                pair(load256(yb[0].add(2)), load256(yb[1].add(2))),
                pair(load256(yb[2].add(2)), load256(yb[3].add(2))),
            ];
            let min_byte = _mm512_set1_epi8(i8::MIN);
            let exact = (_mm512_cmpeq_epi8_mask(qy[0], min_byte)
                | _mm512_cmpeq_epi8_mask(qy[1], min_byte))
                == 0;
            let start = qy.map(|q| {
                _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, q),
                )
            });
            let dy4 = _mm512_castps128_ps512(halves(
                u64::from(rd16(yb[0]))
                    | u64::from(rd16(yb[1])) << 16
                    | u64::from(rd16(yb[2])) << 32
                    | u64::from(rd16(yb[3])) << 48,
            ));
            let dy = lo_hi.map(|idx| _mm512_permutexvar_ps(idx, dy4));
            for r in 0..R {
                let xb = x[r].add(i * UNPACKED);
                let dx = _mm512_set1_ps((xb as *const f32).read_unaligned());
                let ux = load256(xb.add(4));
                let ux2 = _mm512_broadcast_i64x4(ux);
                for h in 0..2 {
                    let lanes = if exact {
                        _mm512_dpbusd_epi32(start[h], ux2, qy[h])
                    } else {
                        let qx = _mm256_xor_si256(ux, _mm512_castsi512_si256(offset));
                        let ax = _mm256_sign_epi8(qx, qx);
                        let signed =
                            |c: usize| dot_us(ax, _mm256_sign_epi8(load256(yb[c].add(2)), qx));
                        pair(signed(2 * h), signed(2 * h + 1))
                    };
                    // d_x * d_y per lane, the product the single-row kernel forms.
                    let d = _mm512_mul_ps(dx, dy[h]);
                    acc[r][h] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lanes), acc[r][h]);
                }
            }
        }
        let mut out = [[0f32; 4]; R];
        for r in 0..R {
            out[r] = hsum8x4([
                _mm512_castps512_ps256(acc[r][0]),
                _mm512_extractf32x8_ps::<1>(acc[r][0]),
                _mm512_castps512_ps256(acc[r][1]),
                _mm512_extractf32x8_ps::<1>(acc[r][1]),
            ]);
        }
        out
    }

    /// `hsum_float_8` of four accumulators at once: the same additions per accumulator
    /// (high half plus low half, then lanes two apart, then the pair), done lane-wise on the
    /// transposed halves.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn hsum8x4(a: [__m256; 4]) -> [f32; 4] {
        let h = a.map(|v| _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v)));
        // Rows h[k] = [p0, p1, p2, p3] of accumulator k; columns after the transpose.
        let t01 = _mm_unpacklo_ps(h[0], h[1]); // h0p0 h1p0 h0p1 h1p1
        let t23 = _mm_unpacklo_ps(h[2], h[3]);
        let u01 = _mm_unpackhi_ps(h[0], h[1]); // h0p2 h1p2 h0p3 h1p3
        let u23 = _mm_unpackhi_ps(h[2], h[3]);
        let p0 = _mm_movelh_ps(t01, t23);
        let p1 = _mm_movehl_ps(t23, t01);
        let p2 = _mm_movelh_ps(u01, u23);
        let p3 = _mm_movehl_ps(u23, u01);
        let s = _mm_add_ps(_mm_add_ps(p0, p2), _mm_add_ps(p1, p3));
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), s);
        out
    }

    fn tile_unpacked(n: usize, w: [&[u8]; 4], act: [&[u8]; 4]) -> [[f32; 4]; 4] {
        // SAFETY: only reachable through the AVX-512 table, built after feature detection; the
        // kernel bounds its loads by the shortest slice.
        unsafe { q8_unpacked_tile(n, w, act) }
    }

    fn tile_unpacked8(n: usize, w: [&[u8]; 8], act: [&[u8]; 4]) -> [[f32; 4]; 8] {
        // SAFETY: as `tile_unpacked`.
        unsafe { q8_unpacked_tile(n, w, act) }
    }

    macro_rules! wrap_unpack {
        ($($f:ident => $inner:ident;)*) => {$(
            fn $f(n: usize, row: &[u8], out: &mut [u8]) {
                // SAFETY: as `tile_unpacked`; loads and stores bounded by both slices.
                unsafe { $inner(n, row, out) }
            }
        )*};
    }
    wrap_unpack! {
        unpack_row_q4_0 => unpack_q4_0;
        unpack_row_q5_0 => unpack_q5_0;
        unpack_row_q8_0 => unpack_q8_0;
    }

    fn unpacked_row_bytes(n: usize) -> usize {
        n / 32 * UNPACKED
    }

    /// Bytes of one Q4_K block of [`ROW_BLOCK_LANES`] rows packed for `q4_k_gemm_rows`: the rows'
    /// `d` and `dmin` (f32), their 8 sub-block scales (i32 lanes), their mins paired per
    /// sub-block pair (two i16 per lane), then the quants, each run of four consecutive
    /// nibbles of a sub-block stored for all rows side by side (one lane per row).
    const Q4K_PACKED: usize = 64 + 64 + 8 * 64 + 4 * 64 + 8 * 8 * 64;
    /// Rows per packed group of the 16-row block kernels (Q4_K and Q6_K): one 512-bit lane each.
    const ROW_BLOCK_LANES: usize = 16;

    fn q4_k_packed_bytes(n: usize) -> usize {
        n / QK_K * Q4K_PACKED
    }

    /// Packs up to 16 Q4_K rows (missing rows are zero lanes) for `q4_k_gemm_rows`.
    fn q4_k_pack_rows(n: usize, rows: &[&[u8]], out: &mut [u8]) {
        use crate::BlockQ4K;
        let nb = (n / QK_K).min(out.len() / Q4K_PACKED);
        out[..nb * Q4K_PACKED].fill(0);
        for (lane, row) in rows.iter().enumerate().take(ROW_BLOCK_LANES) {
            for b in 0..nb.min(row.len() / Q4K) {
                let x = BlockQ4K::from_bytes(row[b * Q4K..][..Q4K].try_into().expect("sized"));
                let o = &mut out[b * Q4K_PACKED..][..Q4K_PACKED];
                let put = |o: &mut [u8], at: usize, v: [u8; 4]| o[at..at + 4].copy_from_slice(&v);
                put(o, 4 * lane, x.d.to_f32().to_le_bytes());
                put(o, 64 + 4 * lane, x.dmin.to_f32().to_le_bytes());
                let sm: Vec<(u8, u8)> = (0..8)
                    .map(|j| crate::get_scale_min_k4(j, &x.scales))
                    .collect();
                for (sub, &(sc, _)) in sm.iter().enumerate() {
                    put(o, 128 + 64 * sub + 4 * lane, i32::from(sc).to_le_bytes());
                }
                for pair in 0..4 {
                    let (lo, hi) = (i16::from(sm[2 * pair].1), i16::from(sm[2 * pair + 1].1));
                    let v = (lo as u16 as u32) | (hi as u16 as u32) << 16;
                    put(o, 640 + 64 * pair + 4 * lane, v.to_le_bytes());
                }
                for sub in 0..8 {
                    let run = &x.qs[(sub / 2) * 32..(sub / 2) * 32 + 32];
                    for k in 0..8 {
                        let q: [u8; 4] = std::array::from_fn(|e| {
                            let byte = run[4 * k + e];
                            if sub % 2 == 0 {
                                byte & 0xF
                            } else {
                                byte >> 4
                            }
                        });
                        put(o, 896 + 64 * (8 * sub + k) + 4 * lane, q);
                    }
                }
            }
        }
    }

    /// 16 packed Q4_K rows against `T` Q8_K activation rows in the order of ggml's repacked
    /// GEMM (see `q4_k_q8_k_gemm`): each lane is one row, so the per-row
    /// scalar chains (one FMA per sub-block pair for the scales, one for the mins) become
    /// lanes of two 16-lane chains per activation with the same exact integer sums and the same
    /// float steps. Each packed weight vector is loaded once for the `T` activations (one at a
    /// time, the kernel is bound by its loads).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn q4_k_gemm_rows16<const T: usize>(
        n: usize,
        packed: &[u8],
        act: [&[u8]; T],
    ) -> [[f32; 16]; T] {
        let nb = act
            .iter()
            .fold((n / QK_K).min(packed.len() / Q4K_PACKED), |m, a| {
                m.min(a.len() / Q8K)
            });
        let x = packed.as_ptr();
        let y = act.map(|a| a.as_ptr());
        let ld = |p: *const u8| _mm512_loadu_si512(p as *const __m512i);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut acc_min = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let xb = x.add(b * Q4K_PACKED);
            let yb = y.map(|p| p.add(b * Q8K));
            let dx = _mm512_loadu_ps(xb as *const f32);
            let dminx = _mm512_loadu_ps(xb.add(64) as *const f32);
            for pair in 0..4 {
                let mut sums = [[_mm512_setzero_si512(); 2]; T]; // [token][half]
                for half in 0..2 {
                    let sub = 2 * pair + half;
                    let q = xb.add(896 + 64 * 8 * sub);
                    for k in 0..8 {
                        let wv = ld(q.add(64 * k));
                        for t in 0..T {
                            let at = yb[t].add(4 + 32 * sub + 4 * k);
                            let yk = _mm512_set1_epi32((at as *const i32).read_unaligned());
                            sums[t][half] = _mm512_dpbusd_epi32(sums[t][half], wv, yk);
                        }
                    }
                }
                let sc_lo = ld(xb.add(128 + 64 * 2 * pair));
                let sc_hi = ld(xb.add(128 + 64 * (2 * pair + 1)));
                let mins = ld(xb.add(640 + 64 * pair));
                for t in 0..T {
                    let isum = _mm512_add_epi32(
                        _mm512_mullo_epi32(sums[t][0], sc_lo),
                        _mm512_mullo_epi32(sums[t][1], sc_hi),
                    );
                    let bsum = |i: usize| {
                        i32::from((yb[t].add(260 + 2 * i) as *const i16).read_unaligned())
                    };
                    let (s_lo, s_hi) = (
                        bsum(4 * pair) + bsum(4 * pair + 1),
                        bsum(4 * pair + 2) + bsum(4 * pair + 3),
                    );
                    let bs = _mm512_set1_epi32(
                        ((s_lo as u16 as u32) | (s_hi as u16 as u32) << 16) as i32,
                    );
                    let imin = _mm512_madd_epi16(mins, bs);
                    let yd = _mm512_set1_ps((yb[t] as *const f32).read_unaligned());
                    // d_x * d_y and dmin_x * d_y per lane, as the single-row kernel forms them.
                    acc[t] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dx, yd), acc[t]);
                    acc_min[t] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(imin),
                        _mm512_mul_ps(dminx, yd),
                        acc_min[t],
                    );
                }
            }
        }
        let mut out = [[0f32; 16]; T];
        for t in 0..T {
            _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_sub_ps(acc[t], acc_min[t]));
        }
        out
    }

    fn q4_k_gemm_rows_x4(n: usize, packed: &[u8], act: [&[u8]; 4]) -> [[f32; 16]; 4] {
        // SAFETY: as `q4_k_gemm_rows`.
        unsafe { q4_k_gemm_rows16(n, packed, act) }
    }

    fn q4_k_gemm_rows(n: usize, packed: &[u8], act: &[u8], out: &mut [f32]) {
        // SAFETY: only reachable through the AVX-512 table (features detected); loads bounded
        // by the block count both slices hold.
        let [r] = unsafe { q4_k_gemm_rows16(n, packed, [act]) };
        let k = out.len().min(r.len());
        out[..k].copy_from_slice(&r[..k]);
    }

    /// Bytes of one Q6_K block of 16 rows packed for `q6_k_tiled_rows`: the rows' `d` (f32),
    /// their 16 sub-block scales (i32 lanes), then the 6-bit quants as bytes, each run of four
    /// consecutive quants stored for all rows side by side (one lane per row).
    const Q6K_PACKED: usize = 64 + 16 * 64 + 64 * 64;

    fn q6_k_packed_bytes(n: usize) -> usize {
        n / QK_K * Q6K_PACKED
    }

    /// Packs up to 16 Q6_K rows (missing rows are zero lanes) for `q6_k_tiled_rows`.
    fn q6_k_pack_rows(n: usize, rows: &[&[u8]], out: &mut [u8]) {
        use crate::BlockQ6K;
        let nb = (n / QK_K).min(out.len() / Q6K_PACKED);
        out[..nb * Q6K_PACKED].fill(0);
        for (lane, row) in rows.iter().enumerate().take(ROW_BLOCK_LANES) {
            for b in 0..nb.min(row.len() / Q6K) {
                let x = BlockQ6K::from_bytes(row[b * Q6K..][..Q6K].try_into().expect("sized"));
                let o = &mut out[b * Q6K_PACKED..][..Q6K_PACKED];
                o[4 * lane..4 * lane + 4].copy_from_slice(&x.d.to_f32().to_le_bytes());
                for sub in 0..16 {
                    let at = 64 + 64 * sub + 4 * lane;
                    o[at..at + 4].copy_from_slice(&i32::from(x.scales[sub]).to_le_bytes());
                }
                let mut q = [0u8; 256];
                for half in 0..2 {
                    let (ql, qh) = (&x.ql[half * 64..], &x.qh[half * 32..]);
                    for l in 0..32 {
                        let base = half * 128 + l;
                        q[base] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                        q[base + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                        q[base + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        q[base + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
                for k in 0..64 {
                    let at = 64 + 16 * 64 + 64 * k + 4 * lane;
                    o[at..at + 4].copy_from_slice(&q[4 * k..4 * k + 4]);
                }
            }
        }
    }

    /// 16 packed Q6_K rows against `T` Q8_K activation rows in the order of ggml's tiled
    /// matmul (see `q6_k_q8_k_tiled`): per block the exact integer sum of every sub-block's
    /// scale times (raw dot - 32 * activation sum), scaled by the row's `d`, then one FMA with
    /// the activation's `d`; each lane is one row, each packed weight vector loaded once for
    /// the `T` activations.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn q6_k_tiled_rows16<const T: usize>(
        n: usize,
        packed: &[u8],
        act: [&[u8]; T],
    ) -> [[f32; 16]; T] {
        let nb = act
            .iter()
            .fold((n / QK_K).min(packed.len() / Q6K_PACKED), |m, a| {
                m.min(a.len() / Q8K)
            });
        let x = packed.as_ptr();
        let y = act.map(|a| a.as_ptr());
        let ld = |p: *const u8| _mm512_loadu_si512(p as *const __m512i);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let xb = x.add(b * Q6K_PACKED);
            let yb = y.map(|p| p.add(b * Q8K));
            let mut s1 = [_mm512_setzero_si512(); T];
            for sub in 0..16 {
                let q = xb.add(64 + 16 * 64 + 64 * 4 * sub);
                let mut raw = yb.map(|p| {
                    let bsum = i32::from((p.add(260 + 2 * sub) as *const i16).read_unaligned());
                    _mm512_set1_epi32(-32 * bsum)
                });
                for k in 0..4 {
                    let wv = ld(q.add(64 * k));
                    for t in 0..T {
                        let at = yb[t].add(4 + 16 * sub + 4 * k);
                        let yk = _mm512_set1_epi32((at as *const i32).read_unaligned());
                        raw[t] = _mm512_dpbusd_epi32(raw[t], wv, yk);
                    }
                }
                let sc = ld(xb.add(64 + 64 * sub));
                for t in 0..T {
                    s1[t] = _mm512_add_epi32(s1[t], _mm512_mullo_epi32(raw[t], sc));
                }
            }
            let dx = _mm512_loadu_ps(xb as *const f32);
            for t in 0..T {
                let r = _mm512_mul_ps(_mm512_cvtepi32_ps(s1[t]), dx);
                let yd = _mm512_set1_ps((yb[t] as *const f32).read_unaligned());
                acc[t] = _mm512_fmadd_ps(r, yd, acc[t]);
            }
        }
        let mut out = [[0f32; 16]; T];
        for t in 0..T {
            _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
        out
    }

    fn q6_k_tiled_rows_x4(n: usize, packed: &[u8], act: [&[u8]; 4]) -> [[f32; 16]; 4] {
        // SAFETY: as `q6_k_tiled_rows`.
        unsafe { q6_k_tiled_rows16(n, packed, act) }
    }

    fn q6_k_tiled_rows(n: usize, packed: &[u8], act: &[u8], out: &mut [f32]) {
        // SAFETY: only reachable through the AVX-512 table (features detected); loads bounded
        // by the block count both slices hold.
        let [r] = unsafe { q6_k_tiled_rows16(n, packed, [act]) };
        let k = out.len().min(r.len());
        out[..k].copy_from_slice(&r[..k]);
    }

    /// Row-block kernels (16 rows in lanes) for ggml's tiled K-quant order.
    pub(in crate::simd) fn kernels_rows_tiled(
        dtype: DType,
    ) -> Option<crate::traits::RowBlockKernel> {
        (dtype == DType::Q6_K).then_some(crate::traits::RowBlockKernel {
            rows: ROW_BLOCK_LANES,
            packed_bytes: q6_k_packed_bytes,
            pack: q6_k_pack_rows,
            dot: q6_k_tiled_rows,
            dot4: Some(q6_k_tiled_rows_x4),
        })
    }

    /// Row-block kernels (16 rows in lanes) by weight type, for ggml's repacked GEMM order.
    pub(in crate::simd) fn kernels_rows_gemm(
        dtype: DType,
    ) -> Option<crate::traits::RowBlockKernel> {
        (dtype == DType::Q4_K).then_some(crate::traits::RowBlockKernel {
            rows: ROW_BLOCK_LANES,
            packed_bytes: q4_k_packed_bytes,
            pack: q4_k_pack_rows,
            dot: q4_k_gemm_rows,
            dot4: Some(q4_k_gemm_rows_x4),
        })
    }

    /// The 4 x 4 register-tile kernels (VNNI only: the unsigned-weight lanes need `vpdpbusd`'s
    /// unsaturated sums).
    pub(in crate::simd) fn kernels_tile(dtype: DType) -> Option<crate::traits::TileKernel> {
        let unpack: crate::traits::UnpackRowFn = match dtype {
            DType::Q4_0 => unpack_row_q4_0,
            DType::Q5_0 => unpack_row_q5_0,
            DType::Q8_0 => unpack_row_q8_0,
            _ => return None,
        };
        Some(crate::traits::TileKernel {
            unpacked_row_bytes,
            unpack,
            dot: tile_unpacked,
            dot8: Some(tile_unpacked8),
            unpack_act: None,
        })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn dot_us(ax: __m256i, sy: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }
}

// -------------------------------------------------------------------------------------------
// F16 dots: `ggml_vec_dot_f16` with GGML_SIMD. Four accumulators over runs of 4 vectors, folded
// pairwise, reduced, then the tail summed in f64 from f32 products.

/// ggml's AVX2 build: 8-lane accumulators, `hadd_ps` reduction.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_dot_avx2(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(act.len() / 2);
    let np = n - n % 32;
    let (x, y) = (w.as_ptr(), act.as_ptr());
    let mut sum = [_mm256_setzero_ps(); 4];
    for i in (0..np).step_by(32) {
        for (j, s) in sum.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(ld8(x, i + 8 * j), ld8(y, i + 8 * j), *s);
        }
    }
    let s0 = _mm256_add_ps(_mm256_add_ps(sum[0], sum[2]), _mm256_add_ps(sum[1], sum[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps::<1>(s0));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut sumf = f64::from(_mm_cvtss_f32(_mm_hadd_ps(t1, t1)));
    for k in np..n {
        sumf += f64::from(f16_scalar(x, k) * f16_scalar(y, k));
    }
    sumf as f32
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld8(p: *const u8, k: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * k) as *const __m128i))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_scalar(p: *const u8, k: usize) -> f32 {
    let h = (p.add(2 * k) as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// gcc's `_mm512_reduce_add_ps`: 16 -> 8 -> 4 lanes by halves, then lanes two apart, then the
/// pair (Rust's own `_mm512_reduce_add_ps` does not promise an order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn reduce_add_512(v: __m512) -> f32 {
    let t3 = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(v), _mm512_castps512_ps256(v));
    let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
    let t8 = _mm_add_ps(t6, _mm_shuffle_ps::<0b01_00_11_10>(t6, t6));
    _mm_cvtss_f32(_mm_add_ss(t8, _mm_movehdup_ps(t8)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn ld16(p: *const u8, k: usize) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * k) as *const __m256i))
}

/// The end of the AVX-512 F16 order: the chain's 16 lanes reduced as gcc's
/// `_mm512_reduce_add_ps`, then the tail (`np..n`) added in f64.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_fold_512(sum: __m512, x: *const u8, y: *const u8, np: usize, n: usize) -> f32 {
    let mut sumf = f64::from(reduce_add_512(sum));
    for k in np..n {
        sumf += f64::from(f16_scalar(x, k) * f16_scalar(y, k));
    }
    sumf as f32
}

/// The AVX-512 F16 order (`vec_dot_f16_scalar`): one 16-lane FMA chain over the row, not
/// ggml's four interleaved chains, so that the prompt tile (`f16_tile_avx512`) can give each
/// of its 16 pairs one register and stream both operands in order (with four chains per pair
/// it needed four passes over strided quarters and ran at ~60 % of FMA peak). A matrix-vector
/// product is bound by memory bandwidth, not by this chain's latency.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_dot_avx512(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(act.len() / 2);
    let np = n - n % 16;
    let (x, y) = (w.as_ptr(), act.as_ptr());
    let mut sum = _mm512_setzero_ps();
    for k in (0..np).step_by(16) {
        sum = _mm512_fmadd_ps(ld16(x, k), ld16(y, k), sum);
    }
    f16_fold_512(sum, x, y, np, n)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_dot_avx512_x4(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
    let n = w
        .iter()
        .fold(n.min(act.len() / 2), |m, r| m.min(r.len() / 2));
    let np = n - n % 16;
    let x = w.map(|r| r.as_ptr());
    let y = act.as_ptr();
    let mut sum = [_mm512_setzero_ps(); 4];
    for k in (0..np).step_by(16) {
        let ay = ld16(y, k);
        for r in 0..4 {
            sum[r] = _mm512_fmadd_ps(ld16(x[r], k), ay, sum[r]);
        }
    }
    std::array::from_fn(|r| f16_fold_512(sum[r], x[r], y, np, n))
}

/// How far ahead of each row stream `f16_rows_avx512` prefetches, in bytes.
const F16_PREFETCH: usize = 256;

thread_local! {
    /// The activation row of `f16_rows_avx512`, widened to f32 (grown only).
    static F16_ACT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `f16_dot_avx512` over `out.len()` consecutive rows against one activation row, each result
/// bit-identical to it (the activation is widened to f32 once per run, which is exact). Four
/// rows a quarter of the run apart share each activation load, so that four FMA chains and
/// four memory streams are in flight: one 16-lane chain alone waits on the FMA latency for
/// about as long as its row takes to stream (SmolLM2 F16 decode, 1 thread: 66-68 -> 76-82
/// t/s). Four *adjacent* rows side by side ran at half speed on this Zen 4 (as did two):
/// streams a row apart seem to defeat the prefetchers, streams far apart do not.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_rows_avx512(n: usize, rows: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
    let n = n.min(act.len() / 2).min(row_bytes / 2);
    // Empty rows (n = 0) still give one (zero) result each.
    let m = match row_bytes {
        0 => out.len(),
        b => out.len().min(rows.len() / b),
    };
    let np = n - n % 16;
    let y = act.as_ptr();
    F16_ACT.with_borrow_mut(|a32| {
        if a32.len() < np {
            a32.resize(np, 0.0);
        }
        let ya = a32.as_mut_ptr();
        for k in (0..np).step_by(16) {
            _mm512_storeu_ps(ya.add(k), ld16(y, k));
        }
        let ya = ya as *const f32;
        let base = rows.as_ptr();
        let q = m / 4;
        for r in 0..q {
            let x = [0, 1, 2, 3].map(|j| base.add((r + j * q) * row_bytes));
            let mut s = [_mm512_setzero_ps(); 4];
            for k in (0..np).step_by(16) {
                // One line per stream, 256 bytes ahead: +7 % at 1 thread (quiet, alternating:
                // 84.9 -> 90.6 t/s; 512 bytes ahead 88.0, 1 KiB and more slower than none).
                // A prefetch never faults, so running past the row's end is harmless.
                if k % 32 == 0 {
                    for p in x {
                        _mm_prefetch::<_MM_HINT_T0>(
                            p.wrapping_add(2 * k + F16_PREFETCH) as *const i8
                        );
                    }
                }
                let a = _mm512_loadu_ps(ya.add(k));
                for j in 0..4 {
                    s[j] = _mm512_fmadd_ps(ld16(x[j], k), a, s[j]);
                }
            }
            for j in 0..4 {
                out[r + j * q] = f16_fold_512(s[j], x[j], y, np, n);
            }
        }
        for r in 4 * q..m {
            let x0 = base.add(r * row_bytes);
            let mut s0 = _mm512_setzero_ps();
            for k in (0..np).step_by(16) {
                s0 = _mm512_fmadd_ps(ld16(x0, k), _mm512_loadu_ps(ya.add(k)), s0);
            }
            out[r] = f16_fold_512(s0, x0, y, np, n);
        }
    });
}

fn rows_f16_avx512(n: usize, rows: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
    // SAFETY: only reachable through the AVX-512 table (features detected); every load stays
    // within `rows` (row count clamped to whole rows) and `act` (length clamped).
    unsafe { f16_rows_avx512(n, rows, row_bytes, act, out) }
}

/// F16 row widened to f32 (exact): weight rows for `f16_tile_avx512`, and its activation rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_unpack_avx512(n: usize, row: &[u8], out: &mut [u8]) {
    let n = n.min(row.len() / 2).min(out.len() / 4);
    let (x, o) = (row.as_ptr(), out.as_mut_ptr());
    let mut k = 0;
    while k + 16 <= n {
        _mm512_storeu_ps(o.add(4 * k) as *mut f32, ld16(x, k));
        k += 16;
    }
    for k in k..n {
        (o.add(4 * k) as *mut f32).write_unaligned(f16_scalar(x, k));
    }
}

/// 4 widened F16 weight rows x 4 widened F16 activation rows (`ActUnpack`), each result
/// bit-identical to `f16_dot_avx512`: one accumulator per pair (16 in registers), both
/// operands streamed in order, 8 loads per 16 FMAs.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_tile_avx512(n: usize, w: [&[u8]; 4], act: [&[u8]; 4]) -> [[f32; 4]; 4] {
    let n = w
        .iter()
        .fold(act.iter().fold(n, |m, a| m.min(a.len() / 4)), |m, r| {
            m.min(r.len() / 4)
        });
    let np = n - n % 16;
    let x = w.map(|r| r.as_ptr() as *const f32);
    let y = act.map(|a| a.as_ptr() as *const f32);
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    for k in (0..np).step_by(16) {
        let ay = y.map(|p| _mm512_loadu_ps(p.add(k)));
        for r in 0..4 {
            let wx = _mm512_loadu_ps(x[r].add(k));
            for c in 0..4 {
                acc[r][c] = _mm512_fmadd_ps(wx, ay[c], acc[r][c]);
            }
        }
    }
    let mut out = [[0f32; 4]; 4];
    for r in 0..4 {
        for c in 0..4 {
            let mut sumf = f64::from(reduce_add_512(acc[r][c]));
            for k in np..n {
                sumf += f64::from(x[r].add(k).read_unaligned() * y[c].add(k).read_unaligned());
            }
            out[r][c] = sumf as f32;
        }
    }
    out
}

/// 16 x 16 f32 transpose: `r[i]` holds row i's 16 elements; returns `c` with `c[j]` holding
/// element j of every row (unpacks within 128-bit lanes, then 64-bit pairs, then lanes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + m]: lane L holds rows 4g..4g+4 at element 4L + m.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, m) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + m / 2], t[4 * g + 2 + m / 2]);
        if m % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    let mut c = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        let (a, b, cc, d) = (u[m], u[4 + m], u[8 + m], u[12 + m]);
        let v0 = _mm512_shuffle_f32x4::<0x44>(a, b);
        let v1 = _mm512_shuffle_f32x4::<0x44>(cc, d);
        let v2 = _mm512_shuffle_f32x4::<0xEE>(a, b);
        let v3 = _mm512_shuffle_f32x4::<0xEE>(cc, d);
        c[m] = _mm512_shuffle_f32x4::<0x88>(v0, v1);
        c[4 + m] = _mm512_shuffle_f32x4::<0xDD>(v0, v1);
        c[8 + m] = _mm512_shuffle_f32x4::<0x88>(v2, v3);
        c[12 + m] = _mm512_shuffle_f32x4::<0xDD>(v2, v3);
    }
    c
}

/// `rows` F16 rows (`row_bytes` apart) into `[k][16]` f32: 16 elements of every row widened,
/// then transposed in registers.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_pack16(n: usize, first: &[u8], row_bytes: usize, rows: usize, out: &mut [f32]) {
    let n = n.min(out.len() / 16);
    let rows = crate::lanes::panel_rows(n, first, row_bytes, rows, 16);
    let o = out.as_mut_ptr();
    let base = first.as_ptr();
    let mut k = 0;
    while k + 16 <= n {
        let r: [__m512; 16] = std::array::from_fn(|i| {
            if i < rows {
                ld16(base.add(i * row_bytes), k)
            } else {
                _mm512_setzero_ps()
            }
        });
        for (j, c) in transpose16(r).iter().enumerate() {
            _mm512_storeu_ps(o.add(16 * (k + j)), *c);
        }
        k += 16;
    }
    for k in k..n {
        for r in 0..16 {
            let v = if r < rows {
                f16_scalar(base.add(r * row_bytes), k)
            } else {
                0.0
            };
            *o.add(16 * k + r) = v;
        }
    }
}

/// At most 8 F16 rows (`row_bytes` apart) widened to f32 row by row (`[8][n]`), missing rows
/// as zeros: the panel kernel broadcasts each token's element from its own row, so these need
/// no transposition.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_widen8(n: usize, first: &[u8], row_bytes: usize, rows: usize, out: &mut [f32]) {
    let n = n.min(out.len() / 8);
    let rows = crate::lanes::panel_rows(n, first, row_bytes, rows, 8);
    let o = out.as_mut_ptr();
    for r in 0..8 {
        let dst = o.add(r * n);
        if r >= rows {
            std::ptr::write_bytes(dst, 0, n);
            continue;
        }
        let x = first.as_ptr().add(r * row_bytes);
        let mut k = 0;
        while k + 16 <= n {
            _mm512_storeu_ps(dst.add(k), ld16(x, k));
            k += 16;
        }
        for k in k..n {
            *dst.add(k) = f16_scalar(x, k);
        }
    }
}

/// `T` tokens (rows of `acts`, `stride` apart) against a packed panel (`[k][16]`): one
/// register of 16 rows per token, one FMA chain per result over k in order.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn f16_panel_dot<const T: usize>(
    n: usize,
    panel: *const f32,
    acts: *const f32,
    stride: usize,
    out: &mut [[f32; 16]],
) {
    let a: [*const f32; T] = std::array::from_fn(|t| acts.add(t * stride));
    let mut acc = [_mm512_setzero_ps(); T];
    for k in 0..n {
        let w = _mm512_loadu_ps(panel.add(16 * k));
        for (t, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(w, _mm512_set1_ps(*a[t].add(k)), *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(&acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), *acc);
    }
}

fn pack16_f16_avx512(n: usize, first: &[u8], row_bytes: usize, rows: usize, out: &mut [f32]) {
    // SAFETY: only reachable through the AVX-512 table (features detected); `n` is clamped to
    // `out`, and `rows` to the rows whose `n` elements lie inside `first`, the only rows read.
    unsafe { f16_pack16(n, first, row_bytes, rows, out) }
}

fn widen8_f16_avx512(n: usize, first: &[u8], row_bytes: usize, rows: usize, out: &mut [f32]) {
    // SAFETY: only reachable through the AVX-512 table (features detected); `n` is clamped to
    // `out` (8 rows of n), `rows` to the rows whose `n` elements lie inside `first`.
    unsafe { f16_widen8(n, first, row_bytes, rows, out) }
}

fn panel_dot_f16_avx512(n: usize, panel: &[f32], acts: &[f32], out: &mut [[f32; 16]]) {
    // Token rows are `n` apart in `acts`; a shorter panel shortens the dots, not the stride.
    let stride = n;
    let nt = out
        .len()
        .min(8)
        .min(acts.len().checked_div(stride).unwrap_or(8));
    let n = n.min(panel.len() / 16);
    let (p, a) = (panel.as_ptr(), acts.as_ptr());
    let mut t = 0;
    // SAFETY: only reachable through the AVX-512 table; every panel load (16 floats at 16 k,
    // k < n <= panel.len() / 16) stays in `panel`, every token row t < nt lies inside `acts`
    // (nt <= acts.len() / stride, reads at t * stride + k with k < n <= stride), and each
    // call writes `T` rows of `out[t..]` (T <= nt - t).
    unsafe {
        while t < nt {
            let (o, at) = (&mut out[t..], a.add(t * stride));
            t += match nt - t {
                8.. => {
                    f16_panel_dot::<8>(n, p, at, stride, o);
                    8
                }
                4..=7 => {
                    f16_panel_dot::<4>(n, p, at, stride, o);
                    4
                }
                2 | 3 => {
                    f16_panel_dot::<2>(n, p, at, stride, o);
                    2
                }
                _ => {
                    f16_panel_dot::<1>(n, p, at, stride, o);
                    1
                }
            };
        }
    }
}

fn unpack_f16_avx512(n: usize, row: &[u8], out: &mut [u8]) {
    // SAFETY: only reachable through the AVX-512 table (features detected); bounded loads.
    unsafe { f16_unpack_avx512(n, row, out) }
}

fn tile_f16_avx512(n: usize, w: [&[u8]; 4], act: [&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: as `unpack_f16_avx512`.
    unsafe { f16_tile_avx512(n, w, act) }
}

fn dot_f16_avx2(n: usize, w: &[u8], act: &[u8]) -> f32 {
    // SAFETY: only reachable through the AVX2/AVX-512 tables (features detected); bounded loads.
    unsafe { f16_dot_avx2(n, w, act) }
}

fn dot_f16_avx512(n: usize, w: &[u8], act: &[u8]) -> f32 {
    // SAFETY: only reachable through the AVX-512 table (features detected); bounded loads.
    unsafe { f16_dot_avx512(n, w, act) }
}

fn dot4_f16_avx512(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
    // SAFETY: as `dot_f16_avx512`.
    unsafe { f16_dot_avx512_x4(n, w, act) }
}

fn dot4_f16_avx2(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
    w.map(|w| dot_f16_avx2(n, w, act))
}

fn dot4a_f16_avx2(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
    act.map(|a| dot_f16_avx2(n, w, a))
}

fn dot4a_f16_avx512(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
    // The F16 dot is symmetric in its operands, so the four-row kernel serves.
    dot4_f16_avx512(n, act, w)
}

pub(super) fn install(tier: Tier, table: &mut [TypeTraits]) {
    for e in table.iter_mut() {
        if e.dtype == DType::Q4_K {
            let (gemv, gemm): (VecDotFn, VecDotFn) = match tier {
                Tier::Avx512 => (avx512::dot_q4_k_gemv, avx512::dot_q4_k_gemm),
                _ => (avx2::dot_q4_k_gemv, avx2::dot_q4_k_gemm),
            };
            e.vec_dot_interleaved = Some(gemv);
            e.vec_dot_interleaved_gemm = Some(gemm);
            e.vec_dot_interleaved_group = Some(match tier {
                Tier::Avx512 => avx512::dot_q4_k_gemv_group,
                _ => avx2::dot_q4_k_gemv_group,
            });
        }
        if e.dtype == DType::Q4_K {
            e.vec_dot_interleaved_gemm_4act = Some(match tier {
                Tier::Avx512 => avx512::dot4a_q4_k_gemm,
                _ => avx2::dot4a_q4_k_gemm,
            });
        }
        if e.dtype == DType::Q6_K {
            e.vec_dot_tiled = Some(match tier {
                Tier::Avx512 => avx512::dot_q6_k_tiled,
                _ => avx2::dot_q6_k_tiled,
            });
            e.vec_dot_tiled_4act = Some(match tier {
                Tier::Avx512 => avx512::dot4a_q6_k_tiled,
                _ => avx2::dot4a_q6_k_tiled,
            });
        }
        let (dot, dot4, from) = match tier {
            Tier::Avx512 => avx512::quant_kernels(e.dtype),
            _ => avx2::quant_kernels(e.dtype),
        };
        if let Some(d) = dot {
            e.vec_dot = Some(d);
        }
        if let Some(d) = dot4 {
            e.vec_dot_x4 = Some(d);
        }
        if let Some(f) = from {
            e.from_float = Some(f);
        }
        let k4a = match tier {
            Tier::Avx512 => avx512::kernels_4act(e.dtype),
            _ => avx2::kernels_4act(e.dtype),
        };
        let rows = match tier {
            Tier::Avx512 => avx512::kernels_rows(e.dtype),
            _ => avx2::kernels_rows(e.dtype),
        };
        if rows.is_some() {
            e.vec_dot_rows = rows;
        }
        if let Some(k) = k4a {
            e.vec_dot_4act = Some(k);
        }
        if tier == Tier::Avx512 {
            e.vec_dot_tile = avx512::kernels_tile(e.dtype);
            e.vec_dot_interleaved_gemm_rows = avx512::kernels_rows_gemm(e.dtype);
            e.vec_dot_tiled_rows = avx512::kernels_rows_tiled(e.dtype);
        }
        if e.dtype == DType::F16 {
            let (d, d4, d4a): (VecDotFn, VecDotX4Fn, VecDot4ActFn) = match tier {
                Tier::Avx512 => (dot_f16_avx512, dot4_f16_avx512, dot4a_f16_avx512),
                _ => (dot_f16_avx2, dot4_f16_avx2, dot4a_f16_avx2),
            };
            e.vec_dot = Some(d);
            e.vec_dot_x4 = Some(d4);
            e.vec_dot_4act = Some(d4a);
            if tier == Tier::Avx512 {
                e.vec_dot_rows = Some(rows_f16_avx512);
                e.vec_dot_tile = Some(crate::traits::TileKernel {
                    unpacked_row_bytes: |n| 4 * n,
                    unpack: unpack_f16_avx512,
                    dot: tile_f16_avx512,
                    dot8: None,
                    // Activations widened once per task: converting them inside every tile
                    // took a quarter of the tile's issue slots (a `vcvtph2ps` per 4 FMAs).
                    unpack_act: Some(crate::traits::ActUnpack {
                        row_bytes: |n| 4 * n,
                        unpack: unpack_f16_avx512,
                    }),
                });
                e.vec_dot_panel = Some(crate::traits::PanelKernel {
                    pack_rows: pack16_f16_avx512,
                    pack_acts: widen8_f16_avx512,
                    dot: panel_dot_f16_avx512,
                    dot_one: crate::lanes::vec_dot_f16_sequential,
                });
            }
        }
    }
}
