//! K-quants: 256-element super-blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the Q8_K activation format.
//!
//! These are the scalar reference kernels. They follow ggml's C code (`ggml-quants.c` for the
//! layouts, dequantization and `quantize_row_*_ref`, `ggml-cpu/quants.c` generic paths for the
//! dots) operation for operation, including the order of float operations and the points where C
//! truncates an `int` into a byte, so their results agree with ggml bit for bit. Float expressions
//! are written unfused (no FMA), as ggml's reference path evaluates them.
//!
//! Kernels take byte slices and process whole blocks only: a trailing partial block, or a
//! destination shorter than the source, is left alone rather than panicking. Length validation
//! belongs to the callers (`crate::dequantize_row` and friends).

use half::f16;

/// Elements in one K-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K/Q5_K (and of the 6-bit scales of Q3_K).
pub const K_SCALE_SIZE: usize = 12;

/// Q2_K: 16 sub-blocks of 16, x = d·sc·q − dmin·m with 4-bit scale and min per sub-block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ2K {
    /// Low nibble: scale, high nibble: min, one byte per sub-block of 16.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// Q3_K: 16 sub-blocks of 16, x = d·(sc−32)·(q−4) with 6-bit signed scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ3K {
    /// High (third) bit of each quant, cleared meaning "subtract 4".
    pub hmask: [u8; QK_K / 8],
    /// Low two bits of each quant.
    pub qs: [u8; QK_K / 4],
    /// 16 scales of 6 bits, packed.
    pub scales: [u8; K_SCALE_SIZE],
    pub d: f16,
}

/// Q4_K: 8 sub-blocks of 32, x = d·sc·q − dmin·m with 6-bit scale and min per sub-block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    /// 8 scales and 8 mins of 6 bits, packed (see [`get_scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// 4-bit quants: byte l of each 32-byte run holds element l (low) and l+32 (high).
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: Q4_K plus a fifth bit per quant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bit of each quant.
    pub qh: [u8; QK_K / 8],
    /// Low four bits, laid out as in Q4_K.
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16, x = d·sc·(q−32) with signed 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    /// Low four bits of each quant.
    pub ql: [u8; QK_K / 2],
    /// High two bits of each quant.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Q8_K: the activation format of the K-quant dots. `bsums` are the sums of the quants in each
/// group of 16, which the dots use to apply the weight mins without touching every element.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

// ---------------------------------------------------------------------------------------------
// Byte (de)serialization. Fields are read with explicit little-endian loads so any alignment of
// the source (an mmap'd tensor at a GGUF offset) is fine.

/// Copies `M` bytes starting at `at`; callers pass constant offsets inside a fixed-size block.
fn take<const M: usize>(b: &[u8], at: usize) -> [u8; M] {
    let mut a = [0u8; M];
    a.copy_from_slice(&b[at..at + M]);
    a
}

fn f16_at(b: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes(take(b, at)))
}

fn as_i8<const M: usize>(a: [u8; M]) -> [i8; M] {
    a.map(|v| v as i8)
}

fn as_u8<const M: usize>(a: [i8; M]) -> [u8; M] {
    a.map(|v| v as u8)
}

macro_rules! block_bytes_impl {
    ($t:ty, $n:expr) => {
        impl $t {
            /// Encoded size in bytes (equal to `size_of::<Self>()`).
            pub const SIZE: usize = $n;
        }
    };
}
block_bytes_impl!(BlockQ2K, 84);
block_bytes_impl!(BlockQ3K, 110);
block_bytes_impl!(BlockQ4K, 144);
block_bytes_impl!(BlockQ5K, 176);
block_bytes_impl!(BlockQ6K, 210);
block_bytes_impl!(BlockQ8K, 292);

impl BlockQ2K {
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            scales: take(b, 0),
            qs: take(b, 16),
            d: f16_at(b, 80),
            dmin: f16_at(b, 82),
        }
    }
    pub fn to_bytes(&self, out: &mut [u8; Self::SIZE]) {
        out[0..16].copy_from_slice(&self.scales);
        out[16..80].copy_from_slice(&self.qs);
        out[80..82].copy_from_slice(&self.d.to_bits().to_le_bytes());
        out[82..84].copy_from_slice(&self.dmin.to_bits().to_le_bytes());
    }
}

impl BlockQ3K {
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            hmask: take(b, 0),
            qs: take(b, 32),
            scales: take(b, 96),
            d: f16_at(b, 108),
        }
    }
    pub fn to_bytes(&self, out: &mut [u8; Self::SIZE]) {
        out[0..32].copy_from_slice(&self.hmask);
        out[32..96].copy_from_slice(&self.qs);
        out[96..108].copy_from_slice(&self.scales);
        out[108..110].copy_from_slice(&self.d.to_bits().to_le_bytes());
    }
}

impl BlockQ4K {
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: take(b, 4),
            qs: take(b, 16),
        }
    }
    pub fn to_bytes(&self, out: &mut [u8; Self::SIZE]) {
        out[0..2].copy_from_slice(&self.d.to_bits().to_le_bytes());
        out[2..4].copy_from_slice(&self.dmin.to_bits().to_le_bytes());
        out[4..16].copy_from_slice(&self.scales);
        out[16..144].copy_from_slice(&self.qs);
    }
}

impl BlockQ5K {
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: take(b, 4),
            qh: take(b, 16),
            qs: take(b, 48),
        }
    }
    pub fn to_bytes(&self, out: &mut [u8; Self::SIZE]) {
        out[0..2].copy_from_slice(&self.d.to_bits().to_le_bytes());
        out[2..4].copy_from_slice(&self.dmin.to_bits().to_le_bytes());
        out[4..16].copy_from_slice(&self.scales);
        out[16..48].copy_from_slice(&self.qh);
        out[48..176].copy_from_slice(&self.qs);
    }
}

impl BlockQ6K {
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            ql: take(b, 0),
            qh: take(b, 128),
            scales: as_i8(take(b, 192)),
            d: f16_at(b, 208),
        }
    }
    pub fn to_bytes(&self, out: &mut [u8; Self::SIZE]) {
        out[0..128].copy_from_slice(&self.ql);
        out[128..192].copy_from_slice(&self.qh);
        out[192..208].copy_from_slice(&as_u8(self.scales));
        out[208..210].copy_from_slice(&self.d.to_bits().to_le_bytes());
    }
}

impl BlockQ8K {
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let mut bsums = [0i16; QK_K / 16];
        for (j, s) in bsums.iter_mut().enumerate() {
            *s = i16::from_le_bytes(take(b, 260 + 2 * j));
        }
        Self {
            d: f32::from_le_bytes(take(b, 0)),
            qs: as_i8(take(b, 4)),
            bsums,
        }
    }
    pub fn to_bytes(&self, out: &mut [u8; Self::SIZE]) {
        out[0..4].copy_from_slice(&self.d.to_le_bytes());
        out[4..260].copy_from_slice(&as_u8(self.qs));
        for (j, s) in self.bsums.iter().enumerate() {
            out[260 + 2 * j..262 + 2 * j].copy_from_slice(&s.to_le_bytes());
        }
    }
}

/// Whole `N`-byte blocks of `src`; a trailing partial block is not yielded.
fn blocks<const N: usize>(src: &[u8]) -> impl Iterator<Item = &[u8; N]> {
    src.chunks_exact(N).filter_map(|c| c.try_into().ok())
}

fn blocks_mut<const N: usize>(dst: &mut [u8]) -> impl Iterator<Item = &mut [u8; N]> {
    dst.chunks_exact_mut(N).filter_map(|c| c.try_into().ok())
}

/// Pairs each whole source block with a 256-float output chunk.
fn dequant_pairs<'a, const N: usize>(
    src: &'a [u8],
    dst: &'a mut [f32],
) -> impl Iterator<Item = (&'a [u8; N], &'a mut [f32])> {
    blocks::<N>(src).zip(dst.chunks_exact_mut(QK_K))
}

fn quant_pairs<'a, const N: usize>(
    src: &'a [f32],
    dst: &'a mut [u8],
) -> impl Iterator<Item = (&'a [f32], &'a mut [u8; N])> {
    src.chunks_exact(QK_K).zip(blocks_mut::<N>(dst))
}

/// ggml's `GGML_FP32_TO_FP16`: round to nearest even like `half`, but every NaN becomes the
/// canonical quiet NaN 0x7E00 (sign kept) rather than carrying its payload.
fn fp16(x: f32) -> f16 {
    if x.is_nan() {
        let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
        return f16::from_bits(sign | 0x7E00);
    }
    f16::from_f32(x)
}

// ---------------------------------------------------------------------------------------------
// Scale packing.

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K: sub-blocks 0..4
/// keep their 6 bits in bytes 0..8 directly, sub-blocks 4..8 split theirs between a nibble of
/// bytes 8..12 and the top two bits of bytes 0..8.
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let j = j & 7;
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d, m)
    }
}

/// All 8 scales and 8 mins of a Q4_K/Q5_K block, unpacked with the word-wise masks the dot
/// kernels use (equivalent to [`get_scale_min_k4`] for every j; a test checks that).
fn unpack_scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let mut u = [
        u32::from_le_bytes(take(q, 0)),
        u32::from_le_bytes(take(q, 4)),
        u32::from_le_bytes(take(q, 8)),
        0,
    ];
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    scales[..4].copy_from_slice(&u[0].to_le_bytes());
    scales[4..].copy_from_slice(&u[1].to_le_bytes());
    mins[..4].copy_from_slice(&u[2].to_le_bytes());
    mins[4..].copy_from_slice(&u[3].to_le_bytes());
    (scales, mins)
}

/// The 16 6-bit scales of a Q3_K block, still biased by +32: low nibbles come from bytes 0..8
/// (sub-blocks 0..8 in the low nibble, 8..16 in the high), the top two bits from bytes 8..12.
fn unpack_scales_q3k(q: &[u8; K_SCALE_SIZE]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes(take(q, 0));
    let a1 = u32::from_le_bytes(take(q, 4));
    let tmp = u32::from_le_bytes(take(q, 8));
    let words = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Quantization helpers (ggml's make_*_quants family).

/// Groups whose largest magnitude is below this quantize to all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, by the magic-number trick ggml uses: adding 1.5·2^23 puts the
/// integer part in the low mantissa bits. Meaningful for |x| < 2^22; outside that (or for NaN) it
/// returns garbage as ggml does, but never panics.
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// Symmetric quantization of `x` to `[-nmax, nmax-1]` (stored biased by +nmax in `l`) with a
/// search over candidate scales that maximizes the weighted projection. Only the paths the
/// reference quantizers use are provided: `rmse_type == 1`, no importance weights.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (&xi, lo) in x.iter().zip(l_out.iter_mut()) {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        *lo = (l + nmax) as i8;
        let w = xi * xi;
        let lf = l as f32;
        sumlx += w * xi * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
            let w = xi * xi;
            let lf = l as f32;
            sumlx += w * xi * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (&xi, lo) in x.iter().zip(l_out.iter_mut()) {
                let l = nearest_int(iscale * xi);
                *lo = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q3_K's sub-block quantizer: symmetric to `[-nmax, nmax-1]` (result biased by +nmax), then
/// coordinate-wise refinement of the levels under x²-weighted error (the `do_rmse` path).
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (&xi, lo) in x.iter().zip(l_out.iter_mut()) {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        *lo = l as i8;
        let w = xi * xi;
        let lf = l as f32;
        sumlx += w * xi * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (&xi, lo) in x.iter().zip(l_out.iter_mut()) {
            let w = xi * xi;
            let li = *lo as f32;
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*lo) {
                    let nl = new_l as f32;
                    slx += w * xi * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *lo = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for lo in l_out.iter_mut() {
        *lo = (i32::from(*lo) + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of the scale search in [`make_qkx2_quants`].
struct Qkx2Search {
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// Asymmetric quantization of `x` to `[0, nmax]` as x ≈ scale·l − min, searching `nstep+1`
/// candidate scales for the least weighted error (absolute or squared). Returns (scale, min).
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    p: &Qkx2Search,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let mut diff = scale * l as f32 + min - x[i];
        diff = if p.use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if p.use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 2-bit levels: byte l of each 32-byte run holds elements l, l+32, l+64, l+96 of a
/// 128-element half, lowest bits first.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for (half, q) in l.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for (i, b) in q.iter_mut().enumerate() {
            *b = half[i] | (half[i + 32] << 2) | (half[i + 64] << 4) | (half[i + 96] << 6);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q2_K

/// Dequantizes Q2_K blocks from `src` into `dst` (256 floats per 84-byte block).
pub fn dequantize_row_q2_k_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in dequant_pairs::<{ BlockQ2K::SIZE }>(src, dst) {
        let blk = BlockQ2K::from_bytes(b);
        let d = blk.d.to_f32();
        let min = blk.dmin.to_f32();
        // Output order: for each 32-byte run of qs, four 2-bit planes, each plane two
        // sub-blocks of 16 with their own scale byte.
        let mut out = y.iter_mut();
        let mut is = 0;
        for q in blk.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for half in q.chunks_exact(16) {
                    let sc = blk.scales[is];
                    is += 1;
                    let dl = d * f32::from(sc & 0xF);
                    let ml = min * f32::from(sc >> 4);
                    for (&qv, o) in half.iter().zip(out.by_ref()) {
                        *o = dl * f32::from((qv >> shift) & 3) - ml;
                    }
                }
            }
        }
    }
}

/// Q2_K dequantization entry point; the scalar reference for now.
pub fn dequantize_row_q2_k(src: &[u8], dst: &mut [f32]) {
    dequantize_row_q2_k_ref(src, dst)
}

/// ggml's `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k_ref(src: &[f32], dst: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    let search = Qkx2Search {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for (x, out) in quant_pairs::<{ BlockQ2K::SIZE }>(src, dst) {
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let mut weights = [0f32; 16];
        let mut mins = [0f32; QK_K / 16];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0f32;
        let mut max_min = 0f32;
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (s, m) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                &mut laux,
                &search,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let mut blk = BlockQ2K {
            scales: [0; 16],
            qs: [0; 64],
            d: f16::ZERO,
            dmin: f16::ZERO,
        };
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &v) in blk.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * v) as u8;
            }
            blk.d = fp16(max_scale / Q4SCALE);
        } else {
            blk.d = fp16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &m) in blk.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * m) << 4) as u8;
            }
            blk.dmin = fp16(max_min / Q4SCALE);
        } else {
            blk.dmin = fp16(0.0);
        }
        for j in 0..QK_K / 16 {
            let d = blk.d.to_f32() * f32::from(blk.scales[j] & 0xF);
            if d == 0.0 {
                continue;
            }
            let dm = blk.dmin.to_f32() * f32::from(blk.scales[j] >> 4);
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3);
                l[16 * j + ii] = q as u8;
            }
        }
        pack_2bit(&l, &mut blk.qs);
        blk.to_bytes(out);
    }
}

/// Q2_K quantization entry point; the scalar reference for now.
pub fn quantize_row_q2_k(src: &[f32], dst: &mut [u8]) {
    quantize_row_q2_k_ref(src, dst)
}

/// Scalar Q2_K × Q8_K dot of `n` elements (ggml's generic kernel).
pub fn vec_dot_q2_k_q8_k_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let nb = n / QK_K;
    let mut sumf = 0f32;
    for (xb, yb) in blocks::<{ BlockQ2K::SIZE }>(w)
        .zip(blocks::<{ BlockQ8K::SIZE }>(act))
        .take(nb)
    {
        let x = BlockQ2K::from_bytes(xb);
        let y = BlockQ8K::from_bytes(yb);
        let sc = &x.scales;
        let mut summs = 0i32;
        for (&bsum, &s) in y.bsums.iter().zip(sc) {
            summs += i32::from(bsum) * i32::from(s >> 4);
        }
        let dall = y.d * x.d.to_f32();
        let dmin = y.d * x.dmin.to_f32();
        let mut isum = 0i32;
        let mut is = 0;
        let mut q8 = y.qs.chunks_exact(32);
        for q2 in x.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                let Some(q8c) = q8.next() else { break };
                for (q2h, q8h) in q2.chunks_exact(16).zip(q8c.chunks_exact(16)) {
                    let d = i32::from(sc[is] & 0xF);
                    is += 1;
                    let mut isuml = 0i32;
                    for (&a, &b) in q2h.iter().zip(q8h) {
                        isuml += i32::from(b) * i32::from((a >> shift) & 3);
                    }
                    isum += d * isuml;
                }
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

crate::legacy::dispatched! {
    fn vec_dot_q2_k_q8_k => dispatch_dot(Q2_K) (n: usize, w: &[u8], act: &[u8]) -> f32;
}

// ---------------------------------------------------------------------------------------------
// Q3_K

/// Dequantizes Q3_K blocks from `src` into `dst` (256 floats per 110-byte block).
pub fn dequantize_row_q3_k_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in dequant_pairs::<{ BlockQ3K::SIZE }>(src, dst) {
        let blk = BlockQ3K::from_bytes(b);
        let d_all = blk.d.to_f32();
        let scales = unpack_scales_q3k(&blk.scales);
        let mut out = y.iter_mut();
        let mut is = 0;
        let mut m = 1u8;
        for q in blk.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for (q16, h16) in q.chunks_exact(16).zip(blk.hmask.chunks_exact(16)) {
                    let dl = d_all * (i32::from(scales[is]) - 32) as f32;
                    is += 1;
                    for ((&qv, &hv), o) in q16.iter().zip(h16).zip(out.by_ref()) {
                        let lo = i32::from((qv >> shift) & 3);
                        let v = lo - if hv & m != 0 { 0 } else { 4 };
                        *o = dl * v as f32;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
    }
}

/// Q3_K dequantization entry point; the scalar reference for now.
pub fn dequantize_row_q3_k(src: &[u8], dst: &mut [f32]) {
    dequantize_row_q3_k_ref(src, dst)
}

/// ggml's `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in quant_pairs::<{ BlockQ3K::SIZE }>(src, dst) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0f32;
        let mut amax = 0f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        let mut blk = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: f16::ZERO,
        };
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                // C stores nearest_int's result into an int8_t before clamping.
                let li = nearest_int(iscale * s) as i8;
                let lb = (li.clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    blk.scales[j] = lb & 0xF;
                } else {
                    blk.scales[j - 8] |= (lb & 0xF) << 4;
                }
                blk.scales[j % 4 + 8] |= (lb >> 4) << (2 * (j / 4));
            }
            blk.d = fp16(1.0 / iscale);
        } else {
            blk.d = fp16(0.0);
        }
        for j in 0..QK_K / 16 {
            let lo = if j < 8 {
                blk.scales[j] & 0xF
            } else {
                blk.scales[j - 8] >> 4
            };
            let hi = (blk.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            let sc = i32::from(lo | (hi << 4)) - 32;
            let d = blk.d.to_f32() * sc as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }
        // High bit of element j goes to bit (j / 32) of hmask[j % 32].
        let mut lu = [0u8; QK_K];
        for (j, (&lv, u)) in l.iter().zip(lu.iter_mut()).enumerate() {
            let mut v = lv as u8;
            if v > 3 {
                blk.hmask[j % 32] |= 1 << (j / 32);
                v -= 4;
            }
            *u = v;
        }
        pack_2bit(&lu, &mut blk.qs);
        blk.to_bytes(out);
    }
}

/// Q3_K quantization entry point; the scalar reference for now.
pub fn quantize_row_q3_k(src: &[f32], dst: &mut [u8]) {
    quantize_row_q3_k_ref(src, dst)
}

/// Scalar Q3_K × Q8_K dot of `n` elements (ggml's generic kernel, including its eight float
/// lane accumulators).
pub fn vec_dot_q3_k_q8_k_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let nb = n / QK_K;
    let mut sums = [0f32; 8];
    for (xb, yb) in blocks::<{ BlockQ3K::SIZE }>(w)
        .zip(blocks::<{ BlockQ8K::SIZE }>(act))
        .take(nb)
    {
        let x = BlockQ3K::from_bytes(xb);
        let y = BlockQ8K::from_bytes(yb);
        let mut aux8 = [0i8; QK_K];
        let mut a = aux8.chunks_exact_mut(32);
        let mut m = 1u8;
        for q3 in x.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                let Some(ac) = a.next() else { break };
                for ((av, &qv), &hv) in ac.iter_mut().zip(q3).zip(&x.hmask) {
                    *av = ((qv >> shift) & 3) as i8 - if hv & m != 0 { 0 } else { 4 };
                }
                m = m.wrapping_shl(1);
            }
        }
        let scales = unpack_scales_q3k(&x.scales);
        let mut aux32 = [0i32; 8];
        for (j, (a16, q16)) in aux8.chunks_exact(16).zip(y.qs.chunks_exact(16)).enumerate() {
            let s = i32::from(scales[j]) - 32;
            for (a8, q8) in a16.chunks_exact(8).zip(q16.chunks_exact(8)) {
                for l in 0..8 {
                    let p = i16::from(q8[l]) * i16::from(a8[l]);
                    aux32[l] += s * i32::from(p);
                }
            }
        }
        let d = x.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

crate::legacy::dispatched! {
    fn vec_dot_q3_k_q8_k => dispatch_dot(Q3_K) (n: usize, w: &[u8], act: &[u8]) -> f32;
}

// ---------------------------------------------------------------------------------------------
// Q4_K and Q5_K share the 6-bit scale/min packing and the reference quantizer's scale search.

/// Per-sub-block weights and qkx2 search of the Q4_K/Q5_K reference quantizers; fills `l` with
/// levels and returns the float scales and mins of the 8 sub-blocks.
fn qk4_5_sub_scales(
    x: &[f32],
    nmax: i32,
    search: &Qkx2Search,
    l: &mut [u8; QK_K],
) -> ([f32; 8], [f32; 8]) {
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            search,
        );
        scales[j] = s;
        mins[j] = m;
    }
    (scales, mins)
}

/// Quantizes the sub-block scales and mins to 6 bits against their maxima, packs them, and
/// requantizes the elements to `[0, nmax]` with the stored values. Returns (d, dmin).
fn qk4_5_pack_scales(
    x: &[f32],
    nmax: i32,
    scales: &[f32; 8],
    mins: &[f32; 8],
    packed: &mut [u8; K_SCALE_SIZE],
    l: &mut [u8; QK_K],
) -> (f16, f16) {
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    *packed = [0; K_SCALE_SIZE];
    for j in 0..8 {
        // C assigns nearest_int's result to a uint8_t before clamping to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = fp16(max_scale / 63.0);
    let dmin = fp16(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, packed);
        let dd = d.to_f32() * f32::from(sc);
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
    (d, dmin)
}

/// Dequantizes Q4_K blocks from `src` into `dst` (256 floats per 144-byte block).
pub fn dequantize_row_q4_k_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in dequant_pairs::<{ BlockQ4K::SIZE }>(src, dst) {
        let blk = BlockQ4K::from_bytes(b);
        let d = blk.d.to_f32();
        let min = blk.dmin.to_f32();
        for (j, (q, y64)) in blk
            .qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = get_scale_min_k4(2 * j, &blk.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &blk.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (lo, hi) = y64.split_at_mut(32);
            for ((&qv, a), b) in q.iter().zip(lo).zip(hi) {
                *a = d1 * f32::from(qv & 0xF) - m1;
                *b = d2 * f32::from(qv >> 4) - m2;
            }
        }
    }
}

/// Q4_K dequantization entry point; the scalar reference for now.
pub fn dequantize_row_q4_k(src: &[u8], dst: &mut [f32]) {
    dequantize_row_q4_k_ref(src, dst)
}

/// ggml's `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k_ref(src: &[f32], dst: &mut [u8]) {
    let search = Qkx2Search {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    for (x, out) in quant_pairs::<{ BlockQ4K::SIZE }>(src, dst) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = qk4_5_sub_scales(x, 15, &search, &mut l);
        let mut blk = BlockQ4K {
            d: f16::ZERO,
            dmin: f16::ZERO,
            scales: [0; 12],
            qs: [0; 128],
        };
        (blk.d, blk.dmin) = qk4_5_pack_scales(x, 15, &scales, &mins, &mut blk.scales, &mut l);
        for (lc, q) in l.chunks_exact(64).zip(blk.qs.chunks_exact_mut(32)) {
            for (i, b) in q.iter_mut().enumerate() {
                *b = lc[i] | (lc[i + 32] << 4);
            }
        }
        blk.to_bytes(out);
    }
}

/// Q4_K quantization entry point; the scalar reference for now.
pub fn quantize_row_q4_k(src: &[f32], dst: &mut [u8]) {
    quantize_row_q4_k_ref(src, dst)
}

/// The integer core shared by the Q4_K and Q5_K dots: `aux8` holds the 256 unsigned levels.
/// Returns the updated eight lane sums and the min correction for this block, as ggml's
/// generic kernels compute them.
fn qk4_5_block_dot(
    aux8: &[i8; QK_K],
    packed: &[u8; K_SCALE_SIZE],
    y: &BlockQ8K,
    aux32: &mut [i32; 8],
) -> i32 {
    let (scales, mins) = unpack_scales_mins_k4(packed);
    let mut sumi = 0i32;
    for j in 0..QK_K / 16 {
        sumi += i32::from(y.bsums[j]) * i32::from(mins[j / 2]);
    }
    for (j, (a32, q32)) in aux8.chunks_exact(32).zip(y.qs.chunks_exact(32)).enumerate() {
        let scale = i32::from(scales[j]);
        for (a8, q8) in a32.chunks_exact(8).zip(q32.chunks_exact(8)) {
            for l in 0..8 {
                let p = i16::from(q8[l]) * i16::from(a8[l]);
                aux32[l] += scale * i32::from(p);
            }
        }
    }
    sumi
}

/// Scalar Q4_K × Q8_K dot of `n` elements (ggml's generic kernel, including its eight float
/// lane accumulators and the separate running min correction).
pub fn vec_dot_q4_k_q8_k_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let nb = n / QK_K;
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (xb, yb) in blocks::<{ BlockQ4K::SIZE }>(w)
        .zip(blocks::<{ BlockQ8K::SIZE }>(act))
        .take(nb)
    {
        let x = BlockQ4K::from_bytes(xb);
        let y = BlockQ8K::from_bytes(yb);
        let mut aux8 = [0i8; QK_K];
        for (q, a) in x.qs.chunks_exact(32).zip(aux8.chunks_exact_mut(64)) {
            let (lo, hi) = a.split_at_mut(32);
            for ((&qv, l), h) in q.iter().zip(lo).zip(hi) {
                *l = (qv & 0xF) as i8;
                *h = (qv >> 4) as i8;
            }
        }
        let mut aux32 = [0i32; 8];
        let sumi = qk4_5_block_dot(&aux8, &x.scales, &y, &mut aux32);
        let d = x.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = x.dmin.to_f32() * y.d;
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

crate::legacy::dispatched! {
    fn vec_dot_q4_k_q8_k => dispatch_dot(Q4_K) (n: usize, w: &[u8], act: &[u8]) -> f32;
}

// ---------------------------------------------------------------------------------------------
// Q5_K

/// Dequantizes Q5_K blocks from `src` into `dst` (256 floats per 176-byte block).
pub fn dequantize_row_q5_k_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in dequant_pairs::<{ BlockQ5K::SIZE }>(src, dst) {
        let blk = BlockQ5K::from_bytes(b);
        let d = blk.d.to_f32();
        let min = blk.dmin.to_f32();
        for (j, (ql, y64)) in blk
            .qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = get_scale_min_k4(2 * j, &blk.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &blk.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let u1 = 1u8 << (2 * j);
            let u2 = 2u8 << (2 * j);
            let (lo, hi) = y64.split_at_mut(32);
            for (((&qv, &hv), a), b) in ql.iter().zip(&blk.qh).zip(lo).zip(hi) {
                let h1 = if hv & u1 != 0 { 16 } else { 0 };
                let h2 = if hv & u2 != 0 { 16 } else { 0 };
                *a = d1 * f32::from((qv & 0xF) + h1) - m1;
                *b = d2 * f32::from((qv >> 4) + h2) - m2;
            }
        }
    }
}

/// Q5_K dequantization entry point; the scalar reference for now.
pub fn dequantize_row_q5_k(src: &[u8], dst: &mut [f32]) {
    dequantize_row_q5_k_ref(src, dst)
}

/// ggml's `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k_ref(src: &[f32], dst: &mut [u8]) {
    let search = Qkx2Search {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    for (x, out) in quant_pairs::<{ BlockQ5K::SIZE }>(src, dst) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = qk4_5_sub_scales(x, 31, &search, &mut l);
        let mut blk = BlockQ5K {
            d: f16::ZERO,
            dmin: f16::ZERO,
            scales: [0; 12],
            qh: [0; 32],
            qs: [0; 128],
        };
        (blk.d, blk.dmin) = qk4_5_pack_scales(x, 31, &scales, &mins, &mut blk.scales, &mut l);
        for (j, (lc, q)) in l
            .chunks_exact(64)
            .zip(blk.qs.chunks_exact_mut(32))
            .enumerate()
        {
            let m1 = 1u8 << (2 * j);
            let m2 = 2u8 << (2 * j);
            for (i, b) in q.iter_mut().enumerate() {
                let mut l1 = lc[i];
                if l1 > 15 {
                    l1 -= 16;
                    blk.qh[i] |= m1;
                }
                let mut l2 = lc[i + 32];
                if l2 > 15 {
                    l2 -= 16;
                    blk.qh[i] |= m2;
                }
                *b = l1 | (l2 << 4);
            }
        }
        blk.to_bytes(out);
    }
}

/// Q5_K quantization entry point; the scalar reference for now.
pub fn quantize_row_q5_k(src: &[f32], dst: &mut [u8]) {
    quantize_row_q5_k_ref(src, dst)
}

/// Scalar Q5_K × Q8_K dot of `n` elements (ggml's generic kernel).
pub fn vec_dot_q5_k_q8_k_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let nb = n / QK_K;
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (xb, yb) in blocks::<{ BlockQ5K::SIZE }>(w)
        .zip(blocks::<{ BlockQ8K::SIZE }>(act))
        .take(nb)
    {
        let x = BlockQ5K::from_bytes(xb);
        let y = BlockQ8K::from_bytes(yb);
        let mut aux8 = [0i8; QK_K];
        for (j, (q, a)) in
            x.qs.chunks_exact(32)
                .zip(aux8.chunks_exact_mut(64))
                .enumerate()
        {
            let m1 = 1u8 << (2 * j);
            let m2 = 2u8 << (2 * j);
            let (lo, hi) = a.split_at_mut(32);
            for (((&qv, &hv), l), h) in q.iter().zip(&x.qh).zip(lo).zip(hi) {
                *l = (qv & 0xF) as i8 + if hv & m1 != 0 { 16 } else { 0 };
                *h = (qv >> 4) as i8 + if hv & m2 != 0 { 16 } else { 0 };
            }
        }
        let mut aux32 = [0i32; 8];
        let sumi = qk4_5_block_dot(&aux8, &x.scales, &y, &mut aux32);
        let d = x.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = x.dmin.to_f32() * y.d;
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

crate::legacy::dispatched! {
    fn vec_dot_q5_k_q8_k => dispatch_dot(Q5_K) (n: usize, w: &[u8], act: &[u8]) -> f32;
}

// ---------------------------------------------------------------------------------------------
// Q6_K

/// The 256 signed 6-bit levels (−32..31) of a Q6_K block, in element order.
fn unpack_q6k(blk: &BlockQ6K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for ((ql, qh), a128) in blk
        .ql
        .chunks_exact(64)
        .zip(blk.qh.chunks_exact(32))
        .zip(a.chunks_exact_mut(128))
    {
        for l in 0..32 {
            let h = qh[l];
            a128[l] = ((ql[l] & 0xF) | (h & 3) << 4) as i8 - 32;
            a128[l + 32] = ((ql[l + 32] & 0xF) | ((h >> 2) & 3) << 4) as i8 - 32;
            a128[l + 64] = ((ql[l] >> 4) | ((h >> 4) & 3) << 4) as i8 - 32;
            a128[l + 96] = ((ql[l + 32] >> 4) | ((h >> 6) & 3) << 4) as i8 - 32;
        }
    }
    a
}

/// Dequantizes Q6_K blocks from `src` into `dst` (256 floats per 210-byte block).
pub fn dequantize_row_q6_k_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in dequant_pairs::<{ BlockQ6K::SIZE }>(src, dst) {
        let blk = BlockQ6K::from_bytes(b);
        let d = blk.d.to_f32();
        let q = unpack_q6k(&blk);
        // Sub-block of 16 `j` has scale `scales[j]`; ggml evaluates d·sc first, then ·q.
        for (j, (q16, y16)) in q.chunks_exact(16).zip(y.chunks_exact_mut(16)).enumerate() {
            let dsc = d * f32::from(blk.scales[j]);
            for (&qv, o) in q16.iter().zip(y16) {
                *o = dsc * f32::from(qv);
            }
        }
    }
}

/// Q6_K dequantization entry point; the scalar reference for now.
pub fn dequantize_row_q6_k(src: &[u8], dst: &mut [f32]) {
    dequantize_row_q6_k_ref(src, dst)
}

/// ggml's `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in quant_pairs::<{ BlockQ6K::SIZE }>(src, dst) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0f32;
        let mut max_abs_scale = 0f32;
        for ib in 0..QK_K / 16 {
            let scale =
                make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        let mut blk = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: f16::ZERO,
        };
        if max_abs_scale < GROUP_MAX_EPS {
            blk.to_bytes(out);
            continue;
        }
        let iscale = -128.0 / max_scale;
        blk.d = fp16(1.0 / iscale);
        for (s, &v) in blk.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * v).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = blk.d.to_f32() * f32::from(blk.scales[j]);
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for ((lc, ql), qh) in l
            .chunks_exact(128)
            .zip(blk.ql.chunks_exact_mut(64))
            .zip(blk.qh.chunks_exact_mut(32))
        {
            for i in 0..32 {
                let [l0, l1, l2, l3] = [lc[i], lc[i + 32], lc[i + 64], lc[i + 96]].map(|v| v as u8);
                ql[i] = (l0 & 0xF) | ((l2 & 0xF) << 4);
                ql[i + 32] = (l1 & 0xF) | ((l3 & 0xF) << 4);
                qh[i] = (l0 >> 4) | ((l1 >> 4) << 2) | ((l2 >> 4) << 4) | ((l3 >> 4) << 6);
            }
        }
        blk.to_bytes(out);
    }
}

/// Q6_K quantization entry point; the scalar reference for now.
pub fn quantize_row_q6_k(src: &[f32], dst: &mut [u8]) {
    quantize_row_q6_k_ref(src, dst)
}

/// Scalar Q6_K × Q8_K dot of `n` elements (ggml's generic kernel).
pub fn vec_dot_q6_k_q8_k_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let nb = n / QK_K;
    let mut sums = [0f32; 8];
    for (xb, yb) in blocks::<{ BlockQ6K::SIZE }>(w)
        .zip(blocks::<{ BlockQ8K::SIZE }>(act))
        .take(nb)
    {
        let x = BlockQ6K::from_bytes(xb);
        let y = BlockQ8K::from_bytes(yb);
        let aux8 = unpack_q6k(&x);
        let mut aux32 = [0i32; 8];
        for (j, (a16, q16)) in aux8.chunks_exact(16).zip(y.qs.chunks_exact(16)).enumerate() {
            let scale = i32::from(x.scales[j]);
            for (a8, q8) in a16.chunks_exact(8).zip(q16.chunks_exact(8)) {
                for l in 0..8 {
                    let p = i16::from(q8[l]) * i16::from(a8[l]);
                    aux32[l] += scale * i32::from(p);
                }
            }
        }
        let d = x.d.to_f32() * y.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

crate::legacy::dispatched! {
    fn vec_dot_q6_k_q8_k => dispatch_dot(Q6_K) (n: usize, w: &[u8], act: &[u8]) -> f32;
}

// ---------------------------------------------------------------------------------------------
// Q8_K

/// Dequantizes Q8_K blocks from `src` into `dst` (256 floats per 292-byte block).
pub fn dequantize_row_q8_k_ref(src: &[u8], dst: &mut [f32]) {
    for (b, y) in dequant_pairs::<{ BlockQ8K::SIZE }>(src, dst) {
        let blk = BlockQ8K::from_bytes(b);
        for (&q, o) in blk.qs.iter().zip(y) {
            *o = blk.d * f32::from(q);
        }
    }
}

/// Q8_K dequantization entry point; the scalar reference for now.
pub fn dequantize_row_q8_k(src: &[u8], dst: &mut [f32]) {
    dequantize_row_q8_k_ref(src, dst)
}

/// ggml's `quantize_row_q8_K_ref`: symmetric to [−127, 127] against the signed extreme, with
/// the per-16 sums the K-quant dots use for the weight mins. An all-zero block also gets zero
/// sums (ggml leaves them unwritten there; zero is their true value).
pub fn quantize_row_q8_k_ref(src: &[f32], dst: &mut [u8]) {
    for (x, out) in quant_pairs::<{ BlockQ8K::SIZE }>(src, dst) {
        let mut blk = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax != 0.0 {
            let iscale = -127.0 / max;
            for (q, &v) in blk.qs.iter_mut().zip(x) {
                *q = nearest_int(iscale * v).min(127) as i8;
            }
            for (s, q16) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
                *s = q16.iter().map(|&q| i32::from(q)).sum::<i32>() as i16;
            }
            blk.d = 1.0 / iscale;
        }
        blk.to_bytes(out);
    }
}

/// Q8_K quantization entry point; the scalar reference for now.
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [u8]) {
    quantize_row_q8_k_ref(src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999), -2);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn word_wise_k4_unpack_matches_get_scale_min_k4() {
        // xorshift over many packings, plus the all-ones extreme
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..4096 {
            let mut q = [0u8; 12];
            for b in q.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = if round == 0 { 0xFF } else { s as u8 };
            }
            let (sc, mn) = unpack_scales_mins_k4(&q);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &q), (sc[j], mn[j]), "j={j} q={q:?}");
            }
        }
    }

    #[test]
    fn q3k_scale_unpack_matches_bytewise_layout() {
        let mut s = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..4096 {
            let mut q = [0u8; 12];
            for b in q.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = s as u8;
            }
            let w = unpack_scales_q3k(&q);
            for (j, &v) in w.iter().enumerate() {
                // The quantizer's own byte-wise view of the packing.
                let lo = if j < 8 { q[j] & 0xF } else { q[j - 8] >> 4 };
                let hi = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
                assert_eq!(v, lo | (hi << 4), "j={j}");
            }
        }
    }

    #[test]
    fn blocks_round_trip_through_bytes() {
        let mut bytes = [0u8; BlockQ8K::SIZE];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let blk = BlockQ8K::from_bytes(&bytes);
        assert_eq!(blk.qs[0], 0x1F_u8 as i8); // byte 4 = 4*7+3
        assert_eq!(blk.bsums[0], i16::from_le_bytes([bytes[260], bytes[261]]));
        let mut back = [0u8; BlockQ8K::SIZE];
        blk.to_bytes(&mut back);
        assert_eq!(bytes, back);

        let mut b4 = [0u8; BlockQ4K::SIZE];
        for (i, b) in b4.iter_mut().enumerate() {
            *b = (i * 13 + 1) as u8;
        }
        let blk = BlockQ4K::from_bytes(&b4);
        assert_eq!(blk.d.to_bits(), u16::from_le_bytes([b4[0], b4[1]]));
        let mut back = [0u8; BlockQ4K::SIZE];
        blk.to_bytes(&mut back);
        assert_eq!(b4, back);
    }

    #[test]
    fn q8k_bsums_are_group_sums() {
        let x: Vec<f32> = (0..QK_K)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1)
            .collect();
        let mut out = vec![0u8; BlockQ8K::SIZE];
        quantize_row_q8_k(&x, &mut out);
        let blk = BlockQ8K::from_bytes(out.as_slice().try_into().unwrap());
        for j in 0..16 {
            let s: i32 = blk.qs[16 * j..16 * j + 16]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            assert_eq!(i32::from(blk.bsums[j]), s);
        }
        // the extreme maps to ∓127
        assert_eq!(blk.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
    }

    #[test]
    fn short_or_ragged_buffers_do_not_panic() {
        let src = vec![0x5Au8; BlockQ4K::SIZE + 7];
        let mut dst = vec![1.0f32; 100];
        dequantize_row_q4_k(&src, &mut dst); // dst shorter than one block: untouched
        assert!(dst.iter().all(|&v| v == 1.0));
        let mut q = vec![0u8; 3];
        quantize_row_q6_k(&[0.5; 256], &mut q);
        assert_eq!(vec_dot_q4_k_q8_k(512, &src, &[0u8; 10]), 0.0);
        assert_eq!(nearest_int(f32::NAN), nearest_int(f32::NAN)); // defined, no panic
        let mut y = vec![0u8; BlockQ3K::SIZE];
        quantize_row_q3_k(&[f32::NAN; 256], &mut y);
        quantize_row_q2_k(&[f32::INFINITY; 256], &mut [0u8; BlockQ2K::SIZE]);
        quantize_row_q4_k(&[f32::NAN; 256], &mut [0u8; BlockQ4K::SIZE]);
        quantize_row_q5_k(&[1e30; 256], &mut [0u8; BlockQ5K::SIZE]);
        quantize_row_q8_k(&[f32::NEG_INFINITY; 256], &mut vec![0u8; BlockQ8K::SIZE]);
    }
}
