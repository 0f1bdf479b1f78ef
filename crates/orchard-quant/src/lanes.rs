//! Portable scalar kernels that compute exactly what ggml-cpu's x86 SIMD code computes (the
//! build llama.cpp makes with `GGML_NATIVE=ON` on an AVX-512 machine): the activation quantizers
//! of `arch/x86/quants.c` and every dot product with the same per-lane grouping, the same FMAs
//! and the same horizontal-sum order. They exist for three reasons: they define the arithmetic
//! the SIMD kernels must reproduce (property tests demand bit equality), they are the table that
//! `ORCHARD_FORCE_SCALAR=1` selects (so the scalar path gives the very same logits), and they
//! run on machines without the instruction sets.
//!
//! Integer parts are exact, so only which products land in which of the eight 32-bit lanes
//! matters: ggml multiplies 32 bytes at a time and lane `i` sums bytes `4i..4i+4` of each
//! 32-byte run. Float parts use `f32::mul_add` wherever ggml uses an FMA (including the scalar
//! `summs` of Q4_1/Q5_1, which gcc contracts at -O3 -march=native).

use crate::kquants::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use half::f16;

const QK: usize = 32;

/// ggml's `hsum_float_8`: the upper four lanes onto the lower four, then lanes two apart, then
/// the remaining pair.
#[inline]
pub(crate) fn hsum_float_8(v: &[f32; 8]) -> f32 {
    let r = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The tail of `hsum_float_8` for a 4-lane vector (ggml's reduction of `acc_m`).
#[inline]
pub(crate) fn hsum_float_4(r: &[f32; 4]) -> f32 {
    (r[0] + r[2]) + (r[1] + r[3])
}

/// gcc's `_mm512_reduce_add_ps`: halves folded 16 -> 8 -> 4, then lanes two apart, then the pair.
#[inline]
pub(crate) fn reduce_add_16(v: &[f32; 16]) -> f32 {
    let t3: [f32; 8] = std::array::from_fn(|k| v[8 + k] + v[k]);
    let t6: [f32; 4] = std::array::from_fn(|k| t3[4 + k] + t3[k]);
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// F16C's `vcvtps2ph` with round-to-nearest-even (ggml-cpu's `GGML_CPU_FP32_TO_FP16` on x86):
/// like `half`, except that a NaN keeps the top ten bits of its payload and is made quiet.
#[inline]
pub(crate) fn fp16_hw(x: f32) -> f16 {
    if x.is_nan() {
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        return f16::from_bits(sign | 0x7E00 | ((b >> 13) & 0x3FF) as u16);
    }
    f16::from_f32(x)
}

/// `maxps(a, b)`: `a` when `a > b`, otherwise `b` (so a NaN in `a` yields `b`).
#[inline]
fn maxps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `cvtps2dq`: round to nearest even; NaN and out-of-range values become `i32::MIN`.
#[inline]
fn cvtps_epi32(v: f32) -> i32 {
    let r = v.round_ties_even();
    if (-2147483648.0..2147483648.0).contains(&r) {
        r as i32
    } else {
        i32::MIN
    }
}

/// Scale, quants and the pre-saturation integer sum of one block, as ggml's AVX `quantize_row_q8_0`
/// / `_q8_1` compute them: `id = 127 / amax` (not `1 / d`), round half to even, saturate to i8.
#[inline]
fn q8_block_x86(x: &[f32]) -> (f32, [i8; 32], i32) {
    // The lane-wise max over the four 8-float loads, then the same fold as hsum_float_8.
    let mut m = [0f32; 8];
    for (l, v) in m.iter_mut().enumerate() {
        let mut acc = x[l].abs();
        for r in 1..4 {
            acc = maxps(acc, x[8 * r + l].abs());
        }
        *v = acc;
    }
    let m4: [f32; 4] = std::array::from_fn(|k| maxps(m[4 + k], m[k]));
    let m2 = [maxps(m4[0], m4[2]), maxps(m4[1], m4[3])];
    let amax = maxps(m2[0], m2[1]);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let i = cvtps_epi32(v * id);
        sum = sum.wrapping_add(i);
        *q = i.clamp(-128, 127) as i8;
    }
    (d, qs, sum)
}

/// ggml-cpu's x86 `quantize_row_q8_0` (what llama.cpp quantizes activations with).
pub fn quantize_row_q8_0_scalar(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(BlockQ8_0::BYTES))
    {
        let (d, qs, _) = q8_block_x86(x);
        out.copy_from_slice(&BlockQ8_0 { d: fp16_hw(d), qs }.to_bytes());
    }
}

/// ggml-cpu's x86 `quantize_row_q8_1`: as Q8_0, plus `s = d * sum(q)` from the integer sum.
pub fn quantize_row_q8_1_scalar(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(BlockQ8_1::BYTES))
    {
        let (d, qs, sum) = q8_block_x86(x);
        let s = fp16_hw(d * sum as f32);
        out.copy_from_slice(
            &BlockQ8_1 {
                d: fp16_hw(d),
                s,
                qs,
            }
            .to_bytes(),
        );
    }
}

/// ggml-cpu's `fp32_to_fp16` row conversion (the F16 `from_float`), with F16C's NaN rule.
pub fn quantize_row_f16_scalar(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&fp16_hw(*x).to_le_bytes());
    }
}

/// One byte product as `sign_epi8` then an unsigned-by-signed multiply computes it: `|x|` as an
/// unsigned byte times `y` carrying `x`'s sign, where negating -128 wraps back to -128.
#[inline]
fn sign_mul(x: i8, y: i8) -> i32 {
    let sy = match x {
        0 => 0,
        x if x < 0 => y.wrapping_neg(),
        _ => y,
    };
    i32::from(x.unsigned_abs()) * i32::from(sy)
}

/// Lane sums of two signed 32-byte runs (`mul_sum_i8_pairs_float`'s integer part).
#[inline]
fn lanes_signed(x: &[i8; 32], y: &[i8; 32]) -> [i32; 8] {
    std::array::from_fn(|i| (4 * i..4 * i + 4).map(|j| sign_mul(x[j], y[j])).sum())
}

/// Lane sums of unsigned weights against signed activations (`mul_sum_us8_pairs_float`).
#[inline]
fn lanes_unsigned(x: &[u8; 32], y: &[i8; 32]) -> [i32; 8] {
    std::array::from_fn(|i| {
        (4 * i..4 * i + 4)
            .map(|j| i32::from(x[j]) * i32::from(y[j]))
            .sum()
    })
}

#[inline]
fn fma_lanes(acc: &mut [f32; 8], d: f32, s: &[i32; 8]) {
    for (a, &v) in acc.iter_mut().zip(s) {
        *a = d.mul_add(v as f32, *a);
    }
}

/// Low nibbles then high nibbles (`bytes_from_nibbles_32`).
#[inline]
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|j| if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 })
}

#[inline]
fn high_bits(qh: [u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    std::array::from_fn(|j| ((qh >> j) & 1) as u8)
}

fn pairs<'a, const W: usize, const A: usize>(
    n: usize,
    w: &'a [u8],
    act: &'a [u8],
    qk: usize,
) -> impl Iterator<Item = (&'a [u8; W], &'a [u8; A])> {
    let wb = w.chunks_exact(W).filter_map(|c| c.try_into().ok());
    let ab = act.chunks_exact(A).filter_map(|c| c.try_into().ok());
    wb.zip(ab).take(n / qk)
}

pub fn vec_dot_q4_0_q8_0_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in pairs::<{ BlockQ4_0::BYTES }, { BlockQ8_0::BYTES }>(n, w, act, QK) {
        let (x, y) = (BlockQ4_0::from_bytes(x), BlockQ8_0::from_bytes(y));
        let q = nibbles(&x.qs).map(|v| v as i8 - 8);
        fma_lanes(
            &mut acc,
            x.d.to_f32() * y.d.to_f32(),
            &lanes_signed(&q, &y.qs),
        );
    }
    hsum_float_8(&acc)
}

pub fn vec_dot_q4_1_q8_1_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (x, y) in pairs::<{ BlockQ4_1::BYTES }, { BlockQ8_1::BYTES }>(n, w, act, QK) {
        let (x, y) = (BlockQ4_1::from_bytes(x), BlockQ8_1::from_bytes(y));
        summs = x.m.to_f32().mul_add(y.s.to_f32(), summs);
        let s = lanes_unsigned(&nibbles(&x.qs), &y.qs);
        fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &s);
    }
    hsum_float_8(&acc) + summs
}

pub fn vec_dot_q5_0_q8_0_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in pairs::<{ BlockQ5_0::BYTES }, { BlockQ8_0::BYTES }>(n, w, act, QK) {
        let (x, y) = (BlockQ5_0::from_bytes(x), BlockQ8_0::from_bytes(y));
        let (lo, hi) = (nibbles(&x.qs), high_bits(x.qh));
        let q: [i8; 32] = std::array::from_fn(|j| (lo[j] | hi[j] << 4) as i8 - 16);
        fma_lanes(
            &mut acc,
            x.d.to_f32() * y.d.to_f32(),
            &lanes_signed(&q, &y.qs),
        );
    }
    hsum_float_8(&acc)
}

pub fn vec_dot_q5_1_q8_1_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (x, y) in pairs::<{ BlockQ5_1::BYTES }, { BlockQ8_1::BYTES }>(n, w, act, QK) {
        let (x, y) = (BlockQ5_1::from_bytes(x), BlockQ8_1::from_bytes(y));
        summs = x.m.to_f32().mul_add(y.s.to_f32(), summs);
        let (lo, hi) = (nibbles(&x.qs), high_bits(x.qh));
        let q: [u8; 32] = std::array::from_fn(|j| lo[j] | hi[j] << 4);
        fma_lanes(
            &mut acc,
            x.d.to_f32() * y.d.to_f32(),
            &lanes_unsigned(&q, &y.qs),
        );
    }
    hsum_float_8(&acc) + summs
}

pub fn vec_dot_q8_0_q8_0_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in pairs::<{ BlockQ8_0::BYTES }, { BlockQ8_0::BYTES }>(n, w, act, QK) {
        let (x, y) = (BlockQ8_0::from_bytes(x), BlockQ8_0::from_bytes(y));
        fma_lanes(
            &mut acc,
            x.d.to_f32() * y.d.to_f32(),
            &lanes_signed(&x.qs, &y.qs),
        );
    }
    hsum_float_8(&acc)
}

// ---------------------------------------------------------------------------------------------
// K-quants

/// Scales (first 8) and mins (last 8) of a Q4_K/Q5_K block, unpacked as ggml's `utmp` words.
#[inline]
fn k4_scales_mins(packed: &[u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let mut u = [word(0), word(1), word(2), 0];
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(u) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The four `acc_m` lanes of one Q4_K/Q5_K block: lane k pairs the mins of sub-blocks 2k and
/// 2k+1 with the activation sums of their 32 elements (summed in i16 as `hadd_epi16` does).
#[inline]
fn k4_min_lanes(mins: &[u8], bsums: &[i16; 16]) -> [i32; 4] {
    std::array::from_fn(|k| {
        let s = |g: usize| i32::from(bsums[2 * g].wrapping_add(bsums[2 * g + 1]));
        i32::from(mins[2 * k]) * s(2 * k) + i32::from(mins[2 * k + 1]) * s(2 * k + 1)
    })
}

/// Integer lanes of a Q4_K/Q5_K block: `q` holds the 256 unsigned levels in element order; lane
/// i collects elements 4i..4i+4 of every 32-element sub-block, each times its sub-block scale.
#[inline]
fn k4_lanes(q: &[u8; QK_K], y: &[i8; QK_K], scales: &[u8]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for (sb, (q32, y32)) in q.chunks_exact(32).zip(y.chunks_exact(32)).enumerate() {
        let sc = i32::from(scales[sb]);
        for (i, l) in lanes.iter_mut().enumerate() {
            let p: i32 = (4 * i..4 * i + 4)
                .map(|j| i32::from(q32[j]) * i32::from(y32[j]))
                .sum();
            *l = l.wrapping_add(sc * p);
        }
    }
    lanes
}

fn k_pairs<'a, const W: usize>(
    n: usize,
    w: &'a [u8],
    act: &'a [u8],
) -> impl Iterator<Item = (&'a [u8; W], BlockQ8K)> {
    pairs::<W, { BlockQ8K::SIZE }>(n, w, act, QK_K).map(|(x, y)| (x, BlockQ8K::from_bytes(y)))
}

/// Unsigned 4-bit levels of a Q4_K block in element order (sub-block pairs share 32 bytes).
#[inline]
fn q4k_levels(qs: &[u8; QK_K / 2]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (b32, q64) in qs.chunks_exact(32).zip(q.chunks_exact_mut(64)) {
        for (l, &v) in b32.iter().enumerate() {
            q64[l] = v & 0xF;
            q64[l + 32] = v >> 4;
        }
    }
    q
}

pub fn vec_dot_q4_k_q8_k_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let (mut acc, mut acc_m) = ([0f32; 8], [0f32; 4]);
    for (x, y) in k_pairs::<{ BlockQ4K::SIZE }>(n, w, act) {
        let x = BlockQ4K::from_bytes(x);
        let d = y.d * x.d.to_f32();
        let dmin = -y.d * x.dmin.to_f32();
        let sm = k4_scales_mins(&x.scales);
        for (a, p) in acc_m.iter_mut().zip(k4_min_lanes(&sm[8..], &y.bsums)) {
            *a = dmin.mul_add(p as f32, *a);
        }
        fma_lanes(&mut acc, d, &k4_lanes(&q4k_levels(&x.qs), &y.qs, &sm[..8]));
    }
    hsum_float_8(&acc) + hsum_float_4(&acc_m)
}

/// Unlike Q4_K, ggml's AVX2 Q5_K kernel reduces the min products to one integer per block and
/// accumulates `dmin * that` in a scalar (an FMA after gcc's contraction).
pub fn vec_dot_q5_k_q8_k_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (x, y) in k_pairs::<{ BlockQ5K::SIZE }>(n, w, act) {
        let x = BlockQ5K::from_bytes(x);
        let d = y.d * x.d.to_f32();
        let dmin = -y.d * x.dmin.to_f32();
        let sm = k4_scales_mins(&x.scales);
        let m = k4_min_lanes(&sm[8..], &y.bsums);
        let mi = m[0]
            .wrapping_add(m[1])
            .wrapping_add(m[2].wrapping_add(m[3]));
        summs = dmin.mul_add(mi as f32, summs);
        let mut q = q4k_levels(&x.qs);
        // Bit `sb` of qh[l] is the fifth bit of element 32*sb + l.
        for (sb, q32) in q.chunks_exact_mut(32).enumerate() {
            for (l, v) in q32.iter_mut().enumerate() {
                *v |= ((x.qh[l] >> sb) & 1) << 4;
            }
        }
        fma_lanes(&mut acc, d, &k4_lanes(&q, &y.qs, &sm[..8]));
    }
    hsum_float_8(&acc) + summs
}

/// Q4_K as ggml-cpu computes it after repacking weights into 8-row interleaved blocks, which
/// llama.cpp does on x86 with AVX2 for every Q4_K matrix whose row count is a multiple of 8.
/// Single activation rows (and the last `n % 4` rows of a batch) go through
/// `ggml_gemv_q4_K_8x8_q8_K`: per block, the whole integer dot and the whole min correction as
/// two i32, each scaled into its own f32 FMA chain, the chains subtracted at the end.
pub fn vec_dot_q4_k_q8_k_interleaved_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    q4k_interleaved(n, w, act, false)
}

/// The other half of [`vec_dot_q4_k_q8_k_interleaved_scalar`]: batch rows in groups of four go
/// through `ggml_gemm_q4_K_8x8_q8_K`, which feeds its FMA chains once per pair of sub-blocks
/// rather than once per block. (Its 4x8-interleaved activation quantizer can flip the sign of a
/// block's scale and quants where ±amax tie; the products, and so the results, are the same.)
pub fn vec_dot_q4_k_q8_k_interleaved_gemm_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    q4k_interleaved(n, w, act, true)
}

/// Rows per block-interleaved group (`interleave_rows`, `vec_dot_interleaved_group`).
pub const GROUP_ROWS: usize = 4;

/// Writes `GROUP_ROWS` rows of `blocks` blocks of `block_bytes` each, block-interleaved: block
/// 0 of every row, then block 1 of every row, and so on (one stream for a four-row kernel).
/// `rows` holds the rows back to back; `out` takes `GROUP_ROWS * blocks * block_bytes` bytes.
pub fn interleave_rows(rows: &[u8], block_bytes: usize, out: &mut [u8]) {
    let row = rows.len() / GROUP_ROWS;
    for (i, dst) in out.chunks_exact_mut(GROUP_ROWS * block_bytes).enumerate() {
        for (r, d) in dst.chunks_exact_mut(block_bytes).enumerate() {
            d.copy_from_slice(&rows[r * row + i * block_bytes..r * row + (i + 1) * block_bytes]);
        }
    }
}

/// The inverse of [`interleave_rows`] for one row: row `r` of a group into `out`.
pub fn deinterleave_row(group: &[u8], block_bytes: usize, r: usize, out: &mut [u8]) {
    for (i, d) in out.chunks_exact_mut(block_bytes).enumerate() {
        let at = (i * GROUP_ROWS + r) * block_bytes;
        d.copy_from_slice(&group[at..at + block_bytes]);
    }
}

/// [`vec_dot_q4_k_q8_k_interleaved_scalar`] of the four rows of a block-interleaved group.
pub fn vec_dot_q4_k_q8_k_interleaved_group_scalar(n: usize, group: &[u8], act: &[u8]) -> [f32; 4] {
    let row = (n / QK_K) * BlockQ4K::SIZE;
    let mut buf = vec![0u8; row];
    std::array::from_fn(|r| {
        if group.len() < GROUP_ROWS * row {
            return 0.0;
        }
        deinterleave_row(&group[..GROUP_ROWS * row], BlockQ4K::SIZE, r, &mut buf);
        q4k_interleaved(n, &buf, act, false)
    })
}

fn q4k_interleaved(n: usize, w: &[u8], act: &[u8], per_pair: bool) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in k_pairs::<{ BlockQ4K::SIZE }>(n, w, act) {
        let x = BlockQ4K::from_bytes(x);
        let sm = k4_scales_mins(&x.scales);
        let q = q4k_levels(&x.qs);
        let (d, dmin) = (x.d.to_f32() * y.d, x.dmin.to_f32() * y.d);
        // Per sub-block pair p: the scaled integer dot and the min correction.
        let pairs: [(i32, i32); 4] = std::array::from_fn(|p| {
            let mut isum = 0i32;
            for sb in [2 * p, 2 * p + 1] {
                let dot: i32 = (32 * sb..32 * sb + 32)
                    .map(|j| i32::from(q[j]) * i32::from(y.qs[j]))
                    .sum();
                isum = isum.wrapping_add(i32::from(sm[sb]) * dot);
            }
            let pair = |g: usize| i32::from(y.bsums[2 * g].wrapping_add(y.bsums[2 * g + 1]));
            let imin =
                i32::from(sm[8 + 2 * p]) * pair(2 * p) + i32::from(sm[9 + 2 * p]) * pair(2 * p + 1);
            (isum, imin)
        });
        if per_pair {
            for (isum, imin) in pairs {
                acc = (isum as f32).mul_add(d, acc);
                acc_min = (imin as f32).mul_add(dmin, acc_min);
            }
        } else {
            let isum = pairs.iter().fold(0i32, |a, p| a.wrapping_add(p.0));
            let imin = pairs.iter().fold(0i32, |a, p| a.wrapping_add(p.1));
            acc = (isum as f32).mul_add(d, acc);
            acc_min = (imin as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// Unsigned 6-bit levels (0..63, the -32 not applied) of a Q6_K block in element order.
#[inline]
fn q6k_levels(x: &BlockQ6K) -> [u8; QK_K] {
    let mut a = [0u8; QK_K];
    for ((ql, qh), a128) in
        x.ql.chunks_exact(64)
            .zip(x.qh.chunks_exact(32))
            .zip(a.chunks_exact_mut(128))
    {
        for l in 0..32 {
            let h = qh[l];
            a128[l] = (ql[l] & 0xF) | (h & 3) << 4;
            a128[l + 32] = (ql[l + 32] & 0xF) | ((h >> 2) & 3) << 4;
            a128[l + 64] = (ql[l] >> 4) | ((h >> 4) & 3) << 4;
            a128[l + 96] = (ql[l + 32] >> 4) | ((h >> 6) & 3) << 4;
        }
    }
    a
}

pub fn vec_dot_q6_k_q8_k_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in k_pairs::<{ BlockQ6K::SIZE }>(n, w, act) {
        let x = BlockQ6K::from_bytes(x);
        fma_lanes(&mut acc, y.d * x.d.to_f32(), &q6k_lanes(&x, &y));
    }
    hsum_float_8(&acc)
}

/// Q6_K as llama.cpp's x86 build computes it in its tiled K-quant matmul (`ggml-cpu/tiled/`),
/// which it uses for Q6_K weights against batches of at least 8 activation rows: per block the
/// exact integer dot (offset and scales applied) times the weight's `d`, then one FMA with the
/// activation's `d` (gcc contracts the kernel's add of the product).
pub fn vec_dot_q6_k_q8_k_tiled_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in k_pairs::<{ BlockQ6K::SIZE }>(n, w, act) {
        let x = BlockQ6K::from_bytes(x);
        let s1 = q6k_lanes(&x, &y)
            .iter()
            .fold(0i32, |a, &v| a.wrapping_add(v));
        acc = (s1 as f32 * x.d.to_f32()).mul_add(y.d, acc);
    }
    acc
}

/// The eight integer lanes of one Q6_K block as ggml's AVX2 kernel forms them.
fn q6k_lanes(x: &BlockQ6K, y: &BlockQ8K) -> [i32; 8] {
    {
        let q = q6k_levels(x);
        // Lane i: elements 4i..4i+4 of each 32-run, each 16 with its own scale, minus 32 times
        // the scaled activation sums of sub-blocks 2i and 2i+1 (ggml's `q8sclsub`).
        let mut lanes = [0i32; 8];
        for (r, (q32, y32)) in q.chunks_exact(32).zip(y.qs.chunks_exact(32)).enumerate() {
            for (i, l) in lanes.iter_mut().enumerate() {
                let sc = i32::from(x.scales[2 * r + i / 4]);
                let p: i32 = (4 * i..4 * i + 4)
                    .map(|j| i32::from(q32[j]) * i32::from(y32[j]))
                    .sum();
                *l = l.wrapping_add(sc * p);
            }
        }
        for (i, l) in lanes.iter_mut().enumerate() {
            let m = i32::from(y.bsums[2 * i]) * i32::from(x.scales[2 * i])
                + i32::from(y.bsums[2 * i + 1]) * i32::from(x.scales[2 * i + 1]);
            *l = l.wrapping_sub(m.wrapping_shl(5));
        }
        lanes
    }
}

// ---------------------------------------------------------------------------------------------
// F16

/// The F16 dot as our AVX-512 build computes it: one 16-lane FMA chain over runs of 16
/// (ggml's AVX-512 build keeps four chains over runs of 64; one chain is what lets the prompt
/// tile stream its operands, and the results differ from ggml's only in rounding), reduced as
/// gcc's `_mm512_reduce_add_ps`, then the tail added in f64.
pub fn vec_dot_f16_scalar(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(act.len() / 2);
    let at = |b: &[u8], i: usize| f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32();
    let np = n - n % 16;
    let mut sum = [0f32; 16];
    for i in (0..np).step_by(16) {
        for (l, v) in sum.iter_mut().enumerate() {
            *v = at(w, i + l).mul_add(at(act, i + l), *v);
        }
    }
    let mut sumf = f64::from(reduce_add_16(&sum));
    for k in np..n {
        sumf += f64::from(at(w, k) * at(act, k));
    }
    sumf as f32
}

/// The F16 order of the outer-product prompt kernel (`PanelKernel`): one FMA chain over the
/// elements in order, from 0.0. Not ggml's order (llama.cpp's F16 prompts sum 16 lanes, then
/// reduce them); the results differ from `vec_dot_f16_scalar`'s only in rounding.
pub fn vec_dot_f16_sequential(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(act.len() / 2);
    let at = |b: &[u8], i: usize| f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32();
    (0..n).fold(0f32, |s, k| at(w, k).mul_add(at(act, k), s))
}

/// Rows of `first` (`row_bytes` apart, at most `lanes`) that hold `n` F16 elements inside it:
/// the rows a panel packing reads (the others are packed as zeros).
pub(crate) fn panel_rows(
    n: usize,
    first: &[u8],
    row_bytes: usize,
    rows: usize,
    lanes: usize,
) -> usize {
    (0..rows.min(lanes))
        .take_while(|&r| r * row_bytes + 2 * n <= first.len())
        .count()
}

/// Element `k` of row `r` (`row_bytes` apart from `first`) as f32, zero for rows past `rows`.
fn panel_elem(first: &[u8], row_bytes: usize, rows: usize, r: usize, k: usize) -> f32 {
    if r < rows {
        let at = r * row_bytes + 2 * k;
        f16::from_le_bytes([first[at], first[at + 1]]).to_f32()
    } else {
        0.0
    }
}

/// The weight-panel layout of `PanelKernel::pack_rows` (`[k][L]`, L = 16, missing rows zero),
/// element by element: the definition the SIMD packing is tested against.
pub fn panel_pack_f16_scalar<const L: usize>(
    n: usize,
    first: &[u8],
    row_bytes: usize,
    rows: usize,
    out: &mut [f32],
) {
    let n = n.min(out.len() / L);
    let rows = panel_rows(n, first, row_bytes, rows, L);
    for k in 0..n {
        for r in 0..L {
            out[L * k + r] = panel_elem(first, row_bytes, rows, r, k);
        }
    }
}

/// The activation layout of `PanelKernel::pack_acts` (8 rows of `n` f32, missing rows zero),
/// element by element.
pub fn panel_acts_f16_scalar(
    n: usize,
    first: &[u8],
    row_bytes: usize,
    rows: usize,
    out: &mut [f32],
) {
    let n = n.min(out.len() / 8);
    let rows = panel_rows(n, first, row_bytes, rows, 8);
    for r in 0..8 {
        for k in 0..n {
            out[r * n + k] = panel_elem(first, row_bytes, rows, r, k);
        }
    }
}

/// ggml_vec_dot_f16 as the AVX2 build computes it: four 8-lane accumulators over runs of 32,
/// reduced with two `hadd_ps`.
pub fn vec_dot_f16_scalar_avx2(n: usize, w: &[u8], act: &[u8]) -> f32 {
    f16_dot_lanes::<8>(n, w, act, |v: &[f32; 8]| {
        let t0 = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
        (t0[0] + t0[1]) + (t0[2] + t0[3])
    })
}

fn f16_dot_lanes<const L: usize>(
    n: usize,
    w: &[u8],
    act: &[u8],
    reduce: impl Fn(&[f32; L]) -> f32,
) -> f32 {
    let n = n.min(w.len() / 2).min(act.len() / 2);
    let at = |b: &[u8], i: usize| f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32();
    let step = 4 * L;
    let np = n - n % step;
    let mut sum = [[0f32; L]; 4];
    for i in (0..np).step_by(step) {
        for (j, s) in sum.iter_mut().enumerate() {
            for (l, v) in s.iter_mut().enumerate() {
                let k = i + j * L + l;
                *v = at(w, k).mul_add(at(act, k), *v);
            }
        }
    }
    let folded: [f32; L] =
        std::array::from_fn(|l| (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]));
    let mut sumf = f64::from(reduce(&folded));
    for k in np..n {
        sumf += f64::from(at(w, k) * at(act, k));
    }
    sumf as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsum_order_is_ggmls() {
        // Values chosen so that any other pairing rounds differently.
        let v = [1.0e8, 1.0, -1.0e8, 3.0, 0.5, 7.0, 0.25, -3.0];
        let r = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
        assert_eq!(hsum_float_8(&v), (r[0] + r[2]) + (r[1] + r[3]));
        assert_ne!(hsum_float_8(&v), v.iter().sum::<f32>());
    }

    #[test]
    fn x86_q8_rounds_half_to_even_with_127_over_amax() {
        // amax 127 makes id exactly 1, so 2.5 -> 2 and 3.5 -> 4 (roundf would give 3 and 4).
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        let (d, q, sum) = q8_block_x86(&x);
        assert_eq!(d, 1.0);
        assert_eq!(&q[..4], &[127, 2, 4, -2]);
        assert_eq!(sum, 131);
    }

    #[test]
    fn sign_trick_wraps_minus_128() {
        assert_eq!(sign_mul(-128, -128), -16384);
        assert_eq!(sign_mul(-3, 5), -15);
        assert_eq!(sign_mul(0, -128), 0);
        assert_eq!(sign_mul(127, -128), -16256);
    }

    #[test]
    fn nan_input_saturates_like_cvtps2dq() {
        let mut x = [1f32; 32];
        x[5] = f32::NAN;
        let (_, q, _) = q8_block_x86(&x);
        assert_eq!(q[5], -128);
        assert_eq!(fp16_hw(f32::from_bits(0x7fa0_0000)).to_bits(), 0x7F00);
    }
}
