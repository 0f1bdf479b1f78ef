//! Legacy 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1) and the plain float types.
//!
//! Every kernel here is the scalar reference and must agree bit for bit with ggml's C code
//! (`ggml-quants.c` for the formats and reference quantizers, `ggml-cpu/quants.c` and `vec.cpp`
//! for the dot products). Floating-point expressions therefore keep ggml's evaluation order
//! exactly, and nothing is fused into an FMA (ggml-base is built without FMA contraction).
//!
//! `*_ref` are ggml's reference/generic kernels; the plain names at the end are the entry points
//! (activation quantizers and dots dispatch through `crate::traits`, whose x86-exact scalar twins
//! live in `lanes.rs` and SIMD versions in `simd/`).

use half::{bf16, f16};

/// Elements in every legacy block.
const QK: usize = 32;

/// ggml's `GGML_FP32_TO_FP16`: round to nearest even, like `half`, except that every NaN becomes
/// the canonical quiet NaN 0x7E00 (keeping the sign) instead of carrying its payload over.
#[inline]
fn f32_to_f16_ggml(x: f32) -> f16 {
    if x.is_nan() {
        let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
        return f16::from_bits(sign | 0x7E00);
    }
    f16::from_f32(x)
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even on the raw bits, and NaNs are
/// truncated with the quiet bit forced so that truncation can never turn them into infinities.
#[inline]
fn f32_to_bf16_ggml(x: f32) -> bf16 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((bits >> 16) | 64) as u16);
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    bf16::from_bits((rounded >> 16) as u16)
}

#[inline]
fn read_f16(b: [u8; 2]) -> f16 {
    f16::from_le_bytes(b)
}

/// Splits `src` into `N`-byte blocks; a trailing partial block is ignored (callers check
/// lengths, and a short read must never panic in library code).
#[inline]
fn blocks<const N: usize>(src: &[u8]) -> impl Iterator<Item = &[u8; N]> {
    src.chunks_exact(N).filter_map(|c| c.try_into().ok())
}

#[inline]
fn blocks_mut<const N: usize>(dst: &mut [u8]) -> impl Iterator<Item = &mut [u8; N]> {
    dst.chunks_exact_mut(N).filter_map(|c| c.try_into().ok())
}

#[inline]
fn pair_at(b: &[u8], at: usize) -> [u8; 2] {
    [b[at], b[at + 1]]
}

/// Copies `N` bytes starting at `at`; `at + N` is always within the fixed-size block.
#[inline]
fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// 4-bit quants with one scale: `x = d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in the high nibble.
    pub qs: [u8; 16],
}

/// 4-bit quants with scale and minimum: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// 5-bit quants with one scale: `x = d * (q - 16)`; bit 4 of element `j` is bit `j` of `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// Little-endian u32 of high bits (kept as bytes: ggml's struct has no padding here).
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 5-bit quants with scale and minimum: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 8-bit quants with one scale: `x = d * q`. Also the activation format for Q4_0/Q5_0/Q8_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// 8-bit activation quants for Q4_1/Q5_1: `x = d * q`, and `s = d * sum(qs)` rounded to f16,
/// which lets the dot product apply the weight block's minimum without touching the quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; 32],
}

const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(size_of::<BlockQ4_1>() == 20);
const _: () = assert!(size_of::<BlockQ5_0>() == 22);
const _: () = assert!(size_of::<BlockQ5_1>() == 24);
const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

fn i8_array(b: [u8; 32]) -> [i8; 32] {
    b.map(|v| v as i8)
}

fn u8_array(b: [i8; 32]) -> [u8; 32] {
    b.map(|v| v as u8)
}

impl BlockQ4_0 {
    /// Encoded size in bytes (GGUF layout, little-endian).
    pub const BYTES: usize = 18;
    /// Elements per block.
    pub const ELEMS: usize = QK;

    /// Decodes one block from its GGUF bytes (any alignment).
    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        Self {
            d: read_f16(pair_at(b, 0)),
            qs: array_at(b, 2),
        }
    }

    /// Encodes the block in GGUF layout.
    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..].copy_from_slice(&self.qs);
        out
    }
}

impl BlockQ4_1 {
    pub const BYTES: usize = 20;
    pub const ELEMS: usize = QK;

    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        Self {
            d: read_f16(pair_at(b, 0)),
            m: read_f16(pair_at(b, 2)),
            qs: array_at(b, 4),
        }
    }

    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.m.to_le_bytes());
        out[4..].copy_from_slice(&self.qs);
        out
    }
}

impl BlockQ5_0 {
    pub const BYTES: usize = 22;
    pub const ELEMS: usize = QK;

    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        Self {
            d: read_f16(pair_at(b, 0)),
            qh: array_at(b, 2),
            qs: array_at(b, 6),
        }
    }

    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..6].copy_from_slice(&self.qh);
        out[6..].copy_from_slice(&self.qs);
        out
    }
}

impl BlockQ5_1 {
    pub const BYTES: usize = 24;
    pub const ELEMS: usize = QK;

    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        Self {
            d: read_f16(pair_at(b, 0)),
            m: read_f16(pair_at(b, 2)),
            qh: array_at(b, 4),
            qs: array_at(b, 8),
        }
    }

    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.m.to_le_bytes());
        out[4..8].copy_from_slice(&self.qh);
        out[8..].copy_from_slice(&self.qs);
        out
    }
}

impl BlockQ8_0 {
    pub const BYTES: usize = 34;
    pub const ELEMS: usize = QK;

    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        Self {
            d: read_f16(pair_at(b, 0)),
            qs: i8_array(array_at(b, 2)),
        }
    }

    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..].copy_from_slice(&u8_array(self.qs));
        out
    }
}

impl BlockQ8_1 {
    pub const BYTES: usize = 36;
    pub const ELEMS: usize = QK;

    #[inline]
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        Self {
            d: read_f16(pair_at(b, 0)),
            s: read_f16(pair_at(b, 2)),
            qs: i8_array(array_at(b, 4)),
        }
    }

    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.s.to_le_bytes());
        out[4..].copy_from_slice(&u8_array(self.qs));
        out
    }
}

/// The 5th bit of every element of a Q5 block, already shifted to bit 4 (0 or 16).
#[inline]
fn q5_high_bits(qh: [u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    std::array::from_fn(|j| (((qh >> j) & 1) << 4) as u8)
}

/// Low nibbles (elements 0..16) followed by high nibbles (elements 16..32).
#[inline]
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|j| {
        if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Dequantization (ggml's `to_float`)
// ---------------------------------------------------------------------------------------------

/// Plain little-endian f32 copy.
pub fn dequantize_row_f32_ref(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(blocks::<4>(src)) {
        *y = f32::from_le_bytes(*b);
    }
}

/// f16 widening; exact, and NaNs come out quiet with their payload as in ggml.
pub fn dequantize_row_f16_ref(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(blocks::<2>(src)) {
        *y = f16::from_le_bytes(*b).to_f32();
    }
}

/// bf16 widening: the bits shifted into the top half of an f32.
pub fn dequantize_row_bf16_ref(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(blocks::<2>(src)) {
        *y = f32::from_bits((u16::from_le_bytes(*b) as u32) << 16);
    }
}

pub fn dequantize_row_q4_0_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<{ BlockQ4_0::BYTES }>(src).zip(dst.chunks_exact_mut(QK)) {
        let b = BlockQ4_0::from_bytes(b);
        let d = b.d.to_f32();
        for (y, q) in y.iter_mut().zip(nibbles(&b.qs)) {
            *y = (q as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_row_q4_1_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<{ BlockQ4_1::BYTES }>(src).zip(dst.chunks_exact_mut(QK)) {
        let b = BlockQ4_1::from_bytes(b);
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (y, q) in y.iter_mut().zip(nibbles(&b.qs)) {
            *y = q as f32 * d + m;
        }
    }
}

pub fn dequantize_row_q5_0_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<{ BlockQ5_0::BYTES }>(src).zip(dst.chunks_exact_mut(QK)) {
        let b = BlockQ5_0::from_bytes(b);
        let d = b.d.to_f32();
        let hi = q5_high_bits(b.qh);
        for ((y, lo), hi) in y.iter_mut().zip(nibbles(&b.qs)).zip(hi) {
            *y = ((lo | hi) as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_row_q5_1_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<{ BlockQ5_1::BYTES }>(src).zip(dst.chunks_exact_mut(QK)) {
        let b = BlockQ5_1::from_bytes(b);
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        let hi = q5_high_bits(b.qh);
        for ((y, lo), hi) in y.iter_mut().zip(nibbles(&b.qs)).zip(hi) {
            *y = (lo | hi) as f32 * d + m;
        }
    }
}

pub fn dequantize_row_q8_0_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<{ BlockQ8_0::BYTES }>(src).zip(dst.chunks_exact_mut(QK)) {
        let b = BlockQ8_0::from_bytes(b);
        let d = b.d.to_f32();
        for (y, q) in y.iter_mut().zip(b.qs) {
            *y = q as f32 * d;
        }
    }
}

/// ggml has no `to_float` for Q8_1 (it only ever feeds dot products); this decodes it the same
/// way as Q8_0 so tests can see what an activation row holds. `s` plays no part.
pub fn dequantize_row_q8_1_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<{ BlockQ8_1::BYTES }>(src).zip(dst.chunks_exact_mut(QK)) {
        let b = BlockQ8_1::from_bytes(b);
        let d = b.d.to_f32();
        for (y, q) in y.iter_mut().zip(b.qs) {
            *y = q as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reference quantization (ggml's `quantize_row_*_ref` / `from_float_ref`)
// ---------------------------------------------------------------------------------------------

pub fn quantize_row_f32_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(blocks_mut::<4>(dst)) {
        *b = x.to_le_bytes();
    }
}

pub fn quantize_row_f16_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(blocks_mut::<2>(dst)) {
        *b = f32_to_f16_ggml(*x).to_le_bytes();
    }
}

pub fn quantize_row_bf16_ref(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(blocks_mut::<2>(dst)) {
        *b = f32_to_bf16_ggml(*x).to_le_bytes();
    }
}

/// The element of largest magnitude, with its sign; the first one wins ties, as in ggml.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Symmetric 4-bit: the scale maps the signed extreme to -8, so the other side gets 7 levels.
pub fn quantize_row_q4_0_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(blocks_mut::<{ BlockQ4_0::BYTES }>(dst))
    {
        let d = signed_absmax(x) / -8.0;
        let id = inverse_or_zero(d);
        let mut b = BlockQ4_0 {
            d: f32_to_f16_ggml(d),
            qs: [0; 16],
        };
        // `as i8` truncates toward zero like ggml's `(int8_t)` cast. A value as large as the
        // extreme but of opposite sign maps to +8 (16.5 before truncation): the clamp folds it
        // into 15.
        let level = |v: f32| (((v * id + 8.5) as i8) as i32).min(15) as u8;
        for j in 0..16 {
            b.qs[j] = level(x[j]) | (level(x[j + 16]) << 4);
        }
        *out = b.to_bytes();
    }
}

pub fn quantize_row_q4_1_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(blocks_mut::<{ BlockQ4_1::BYTES }>(dst))
    {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        let mut b = BlockQ4_1 {
            d: f32_to_f16_ggml(d),
            m: f32_to_f16_ggml(min),
            qs: [0; 16],
        };
        let level = |v: f32| ((((v - min) * id + 0.5) as i8) as i32).min(15) as u8;
        for j in 0..16 {
            b.qs[j] = level(x[j]) | (level(x[j + 16]) << 4);
        }
        *out = b.to_bytes();
    }
}

pub fn quantize_row_q5_0_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(blocks_mut::<{ BlockQ5_0::BYTES }>(dst))
    {
        let d = signed_absmax(x) / -16.0;
        let id = inverse_or_zero(d);
        let level = |v: f32| (((v * id + 16.5) as i8) as i32).min(31) as u8;
        let mut b = BlockQ5_0 {
            d: f32_to_f16_ggml(d),
            qh: [0; 4],
            qs: [0; 16],
        };
        let mut qh = 0u32;
        for j in 0..16 {
            let (q0, q1) = (level(x[j]), level(x[j + 16]));
            b.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b.qh = qh.to_le_bytes();
        *out = b.to_bytes();
    }
}

pub fn quantize_row_q5_1_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(blocks_mut::<{ BlockQ5_1::BYTES }>(dst))
    {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        // No clamp here, unlike Q4_1: ggml casts straight to uint8_t, and (max - min) * id
        // cannot reach 31.5.
        let level = |v: f32| ((v - min) * id + 0.5) as u8;
        let mut b = BlockQ5_1 {
            d: f32_to_f16_ggml(d),
            m: f32_to_f16_ggml(min),
            qh: [0; 4],
            qs: [0; 16],
        };
        let mut qh = 0u32;
        for j in 0..16 {
            let (q0, q1) = (level(x[j]), level(x[j + 16]));
            b.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b.qh = qh.to_le_bytes();
        *out = b.to_bytes();
    }
}

/// Scale and quants of one 8-bit block: `d = amax / 127`, `q = roundf(x / d)` (half away from
/// zero, which is what `f32::round` does).
#[inline]
fn q8_levels(x: &[f32]) -> (f32, [i8; 32]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    let mut qs = [0i8; 32];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    (d, qs)
}

pub fn quantize_row_q8_0_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(blocks_mut::<{ BlockQ8_0::BYTES }>(dst))
    {
        let (d, qs) = q8_levels(x);
        *out = BlockQ8_0 {
            d: f32_to_f16_ggml(d),
            qs,
        }
        .to_bytes();
    }
}

pub fn quantize_row_q8_1_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(QK)
        .zip(blocks_mut::<{ BlockQ8_1::BYTES }>(dst))
    {
        let (d, qs) = q8_levels(x);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        // `s` is rounded from the f32 product: ggml computes `sum*d` before the f16 cast, so
        // it is not d16 * sum.
        *out = BlockQ8_1 {
            d: f32_to_f16_ggml(d),
            s: f32_to_f16_ggml(sum as f32 * d),
            qs,
        }
        .to_bytes();
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products (ggml's `vec_dot`, generic/scalar paths)
// ---------------------------------------------------------------------------------------------

/// ggml's scalar path: products rounded to f32, summed in f64, the total rounded to f32.
pub fn vec_dot_f32_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (a, b) in blocks::<4>(w).zip(blocks::<4>(act)).take(n) {
        sum += (f32::from_le_bytes(*a) * f32::from_le_bytes(*b)) as f64;
    }
    sum as f32
}

pub fn vec_dot_f16_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (a, b) in blocks::<2>(w).zip(blocks::<2>(act)).take(n) {
        sum += (f16::from_le_bytes(*a).to_f32() * f16::from_le_bytes(*b).to_f32()) as f64;
    }
    sum as f32
}

pub fn vec_dot_bf16_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (a, b) in blocks::<2>(w).zip(blocks::<2>(act)).take(n) {
        sum += (bf16::from_le_bytes(*a).to_f32() * bf16::from_le_bytes(*b).to_f32()) as f64;
    }
    sum as f32
}

/// Integer dot of 32 quants against 32 activation quants.
#[inline]
fn dot_i32(w: &[i32; 32], a: &[i8; 32]) -> i32 {
    w.iter().zip(a).map(|(&w, &a)| w * a as i32).sum()
}

pub fn vec_dot_q4_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    let pairs = blocks::<{ BlockQ4_0::BYTES }>(w).zip(blocks::<{ BlockQ8_0::BYTES }>(act));
    for (bx, by) in pairs.take(n / QK) {
        let (bx, by) = (BlockQ4_0::from_bytes(bx), BlockQ8_0::from_bytes(by));
        let wq = nibbles(&bx.qs).map(|q| q as i32 - 8);
        let sumi = dot_i32(&wq, &by.qs);
        sumf += sumi as f32 * bx.d.to_f32() * by.d.to_f32();
    }
    sumf
}

pub fn vec_dot_q4_1_q8_1_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    let pairs = blocks::<{ BlockQ4_1::BYTES }>(w).zip(blocks::<{ BlockQ8_1::BYTES }>(act));
    for (bx, by) in pairs.take(n / QK) {
        let (bx, by) = (BlockQ4_1::from_bytes(bx), BlockQ8_1::from_bytes(by));
        let wq = nibbles(&bx.qs).map(|q| q as i32);
        let sumi = dot_i32(&wq, &by.qs);
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32 + bx.m.to_f32() * by.s.to_f32();
    }
    sumf
}

pub fn vec_dot_q5_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    let pairs = blocks::<{ BlockQ5_0::BYTES }>(w).zip(blocks::<{ BlockQ8_0::BYTES }>(act));
    for (bx, by) in pairs.take(n / QK) {
        let (bx, by) = (BlockQ5_0::from_bytes(bx), BlockQ8_0::from_bytes(by));
        let hi = q5_high_bits(bx.qh);
        let lo = nibbles(&bx.qs);
        let wq: [i32; 32] = std::array::from_fn(|j| (lo[j] | hi[j]) as i32 - 16);
        let sumi = dot_i32(&wq, &by.qs);
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32;
    }
    sumf
}

pub fn vec_dot_q5_1_q8_1_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    let pairs = blocks::<{ BlockQ5_1::BYTES }>(w).zip(blocks::<{ BlockQ8_1::BYTES }>(act));
    for (bx, by) in pairs.take(n / QK) {
        let (bx, by) = (BlockQ5_1::from_bytes(bx), BlockQ8_1::from_bytes(by));
        let hi = q5_high_bits(bx.qh);
        let lo = nibbles(&bx.qs);
        let wq: [i32; 32] = std::array::from_fn(|j| (lo[j] | hi[j]) as i32);
        let sumi = dot_i32(&wq, &by.qs);
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32 + bx.m.to_f32() * by.s.to_f32();
    }
    sumf
}

pub fn vec_dot_q8_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    let pairs = blocks::<{ BlockQ8_0::BYTES }>(w).zip(blocks::<{ BlockQ8_0::BYTES }>(act));
    for (bx, by) in pairs.take(n / QK) {
        let (bx, by) = (BlockQ8_0::from_bytes(bx), BlockQ8_0::from_bytes(by));
        let wq = bx.qs.map(|q| q as i32);
        let sumi = dot_i32(&wq, &by.qs);
        sumf += sumi as f32 * (bx.d.to_f32() * by.d.to_f32());
    }
    sumf
}

// ---------------------------------------------------------------------------------------------
// Plain-named entry points, as ggml-cpu names them. Dequantizers and weight quantizers are the
// references (ggml-cpu uses those too); activation quantizers and dots go through the active
// kernel table (`crate::traits`), whose x86 arithmetic differs from the references above: ggml's
// AVX `quantize_row_q8_0`/`_q8_1` multiply by `127 / amax` and round half to even, and its SIMD
// dots sum in f32 lanes with FMAs (see `lanes.rs`).
// ---------------------------------------------------------------------------------------------

macro_rules! forward_to_ref {
    ($(fn $name:ident => $reference:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        #[doc = concat!("Entry point; [`", stringify!($reference), "`] (ggml-cpu has no other).")]
        #[inline]
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            $reference($($arg),*)
        }
    )*};
}

forward_to_ref! {
    fn dequantize_row_f32 => dequantize_row_f32_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_f16 => dequantize_row_f16_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_bf16 => dequantize_row_bf16_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_q4_0 => dequantize_row_q4_0_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_q4_1 => dequantize_row_q4_1_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_q5_0 => dequantize_row_q5_0_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_q5_1 => dequantize_row_q5_1_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_q8_0 => dequantize_row_q8_0_ref(src: &[u8], dst: &mut [f32]);
    fn dequantize_row_q8_1 => dequantize_row_q8_1_ref(src: &[u8], dst: &mut [f32]);

    fn quantize_row_f32 => quantize_row_f32_ref(src: &[f32], dst: &mut [u8]);
    fn quantize_row_bf16 => quantize_row_bf16_ref(src: &[f32], dst: &mut [u8]);
    fn quantize_row_q4_0 => quantize_row_q4_0_ref(src: &[f32], dst: &mut [u8]);
    fn quantize_row_q4_1 => quantize_row_q4_1_ref(src: &[f32], dst: &mut [u8]);
    fn quantize_row_q5_0 => quantize_row_q5_0_ref(src: &[f32], dst: &mut [u8]);
    fn quantize_row_q5_1 => quantize_row_q5_1_ref(src: &[f32], dst: &mut [u8]);
}

macro_rules! dispatched {
    ($(fn $name:ident => $how:ident($dt:ident) ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        #[doc = concat!("Entry point through the active kernel table (`traits(DType::", stringify!($dt), ")`).")]
        #[inline]
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            crate::traits::$how(orchard_core::DType::$dt, $($arg),*)
        }
    )*};
}

dispatched! {
    fn quantize_row_f16 => dispatch_from_float(F16) (src: &[f32], dst: &mut [u8]);
    fn quantize_row_q8_0 => dispatch_from_float(Q8_0) (src: &[f32], dst: &mut [u8]);
    fn quantize_row_q8_1 => dispatch_from_float(Q8_1) (src: &[f32], dst: &mut [u8]);

    fn vec_dot_f32 => dispatch_dot(F32) (n: usize, w: &[u8], act: &[u8]) -> f32;
    fn vec_dot_f16 => dispatch_dot(F16) (n: usize, w: &[u8], act: &[u8]) -> f32;
    fn vec_dot_bf16 => dispatch_dot(BF16) (n: usize, w: &[u8], act: &[u8]) -> f32;
    fn vec_dot_q4_0_q8_0 => dispatch_dot(Q4_0) (n: usize, w: &[u8], act: &[u8]) -> f32;
    fn vec_dot_q4_1_q8_1 => dispatch_dot(Q4_1) (n: usize, w: &[u8], act: &[u8]) -> f32;
    fn vec_dot_q5_0_q8_0 => dispatch_dot(Q5_0) (n: usize, w: &[u8], act: &[u8]) -> f32;
    fn vec_dot_q5_1_q8_1 => dispatch_dot(Q5_1) (n: usize, w: &[u8], act: &[u8]) -> f32;
    fn vec_dot_q8_0_q8_0 => dispatch_dot(Q8_0) (n: usize, w: &[u8], act: &[u8]) -> f32;
}

pub(crate) use dispatched;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_ggml_nan_rule() {
        let qnan_payload = f32::from_bits(0x7fc1_2345);
        assert_eq!(f32_to_f16_ggml(qnan_payload).to_bits(), 0x7E00);
        assert_eq!(f32_to_f16_ggml(-qnan_payload).to_bits(), 0xFE00);
        assert_eq!(f32_to_f16_ggml(f32::INFINITY).to_bits(), 0x7C00);
        assert_eq!(f32_to_f16_ggml(65520.0).to_bits(), 0x7C00); // rounds up to inf
        assert_eq!(f32_to_f16_ggml(65519.0).to_bits(), 0x7BFF);
        // Halfway between 1.0 and the next f16 (2^-11 above 1): ties to even keeps 1.0.
        assert_eq!(f32_to_f16_ggml(1.0 + 2f32.powi(-11)).to_bits(), 0x3C00);
        assert_eq!(
            f32_to_f16_ggml(1.0 + 3.0 * 2f32.powi(-11)).to_bits(),
            0x3C02
        );
        // Smallest f16 subnormal is 2^-24; half of it ties to even (zero).
        assert_eq!(f32_to_f16_ggml(2f32.powi(-25)).to_bits(), 0x0000);
        assert_eq!(f32_to_f16_ggml(2f32.powi(-25) * 1.5).to_bits(), 0x0001);
    }

    #[test]
    fn bf16_conversion_matches_ggml() {
        assert_eq!(f32_to_bf16_ggml(1.0).to_bits(), 0x3F80);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even.
        assert_eq!(f32_to_bf16_ggml(1.0 + 2f32.powi(-8)).to_bits(), 0x3F80);
        assert_eq!(
            f32_to_bf16_ggml(1.0 + 3.0 * 2f32.powi(-8)).to_bits(),
            0x3F82
        );
        // A signalling NaN whose payload lives only in the low half must stay NaN.
        assert_eq!(
            f32_to_bf16_ggml(f32::from_bits(0x7f80_0001)).to_bits(),
            0x7FC0
        );
        assert_eq!(
            f32_to_bf16_ggml(f32::from_bits(0xff81_0000)).to_bits(),
            0xFFC1
        );
        // The largest finite f32 rounds to infinity in bf16.
        assert_eq!(f32_to_bf16_ggml(f32::MAX).to_bits(), 0x7F80);
    }

    #[test]
    fn block_bytes_round_trip_at_odd_offsets() {
        let mut raw = [0u8; 1 + BlockQ5_1::BYTES];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        let bytes: &[u8; BlockQ5_1::BYTES] = raw[1..].try_into().unwrap();
        let block = BlockQ5_1::from_bytes(bytes);
        assert_eq!(block.d.to_bits(), u16::from_le_bytes([raw[1], raw[2]]));
        assert_eq!(block.m.to_bits(), u16::from_le_bytes([raw[3], raw[4]]));
        assert_eq!(block.qh, [raw[5], raw[6], raw[7], raw[8]]);
        assert_eq!(&block.to_bytes()[..], &raw[1..]);
    }

    #[test]
    fn short_or_mismatched_buffers_do_not_panic() {
        let mut out = [0f32; 64];
        dequantize_row_q4_0(&[1u8; 20], &mut out);
        quantize_row_q8_1(&[1.0; 40], &mut [0u8; 10]);
        assert_eq!(vec_dot_q8_0_q8_0(64, &[0u8; 34], &[]), 0.0);
    }

    #[test]
    fn q8_1_sum_is_rounded_from_f32_product() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 10.3) * 0.37).collect();
        let mut q = [0u8; BlockQ8_1::BYTES];
        quantize_row_q8_1_ref(&x, &mut q);
        let b = BlockQ8_1::from_bytes(&q);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
        assert_eq!(b.d, f16::from_f32(d));
        assert_eq!(b.s, f16::from_f32(sum as f32 * d));
    }
}
