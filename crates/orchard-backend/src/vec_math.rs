//! Element-wise and reduction kernels of the CPU backend, computing exactly what ggml-cpu's x86
//! code computes (`vec.h`/`vec.cpp`/`simd-gemm.h`): `ggml_v_expf`/`ggml_v_silu` for SiLU, SwiGLU
//! and softmax, the f16 V accumulation of flash attention (`ggml_vec_mad_f16`,
//! `ggml_vec_scale_f16`), and the f32 helpers of its tiled path. Logits of small models move by
//! 0.1 on ulp-level differences, so "close" is not enough here.
//!
//! ggml's AVX-512 and AVX2 builds use different `expf` polynomials and reduction orders; each
//! path here reproduces one of them, chosen from `orchard_quant::active_tier()` so that the whole
//! backend follows one build (checked against llama.cpp's outputs of each: `testdata/parity`,
//! `testdata/parity-avx2`). The scalar path reproduces the AVX-512 build, on any CPU, and is
//! what `ORCHARD_FORCE_SCALAR=1` selects. Tails past the last full vector use libm's `expf`
//! (`f32::exp`), as ggml's do.
//!
//! f16 values are converted with `half`, which matches F16C except for the payload bits of NaNs.

use half::f16;
use std::sync::OnceLock;

/// Which of ggml's builds the kernels reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VecPath {
    /// The AVX-512 build (AVX-512 F/DQ kernels here).
    Avx512,
    /// The AVX2+FMA build.
    Avx2,
    /// Portable code computing the AVX-512 build's results.
    Scalar,
}

/// The path in use: the one matching `orchard_quant::active_tier()`.
pub fn vec_path() -> VecPath {
    static PATH: OnceLock<VecPath> = OnceLock::new();
    *PATH.get_or_init(|| match orchard_quant::active_tier() {
        orchard_quant::Tier::Avx512 => VecPath::Avx512,
        orchard_quant::Tier::Avx2 => VecPath::Avx2,
        _ => VecPath::Scalar,
    })
}

// ---------------------------------------------------------------------------------------------
// Scalar definitions (the AVX-512 build's arithmetic, one lane at a time)

const R: f32 = 12582912.0; // 0x1.8p23
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const C5: u32 = 0x3c07_2010; // 0x1.0e4020p-7
const C4: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
const C3: u32 = 0x3e2a_af33; // 0x1.555e66p-3
const C2: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
const C1: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1

#[inline]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// ggml's AVX-512 `ggml_v_expf` on one lane.
#[inline]
pub fn expf_avx512(x: f32) -> f32 {
    let z = x.mul_add(c(LOG2E), R);
    let n = z - R;
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // vscalefps: j * 2^n, rounded once (n is an integer of magnitude <= 192 here).
    (f64::from(j) * 2f64.powi(n as i32)) as f32
}

/// ggml's AVX2 `ggml_v_expf` on one lane.
#[inline]
pub fn expf_avx2(x: f32) -> f32 {
    let z = x.mul_add(c(LOG2E), R);
    let n = z - R;
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1) * b);
    if n.abs() <= 126.0 {
        return k.mul_add(j, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

#[inline]
fn silu_with(x: f32, expf: fn(f32) -> f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// ggml's scalar `ggml_silu_f32` (the tails of the vector loops): libm's `expf`.
#[inline]
pub fn silu_libm(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `_mm512_reduce_add_ps` as gcc expands it.
#[inline]
fn reduce16(v: &[f32]) -> f32 {
    let t3: [f32; 8] = std::array::from_fn(|k| v[8 + k] + v[k]);
    let t6: [f32; 4] = std::array::from_fn(|k| t3[4 + k] + t3[k]);
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// `hsum_float_8`'s order (ggml's AVX2 softmax reduction).
#[inline]
fn reduce8(v: &[f32]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|k| v[4 + k] + v[k]);
    (r[0] + r[2]) + (r[1] + r[3])
}

/// `GGML_F32x8_REDUCE`'s last steps: lanes 4-7 onto 0-3, then two `hadd_ps`.
#[inline]
fn reduce8_hadd(v: &[f32]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|k| v[k] + v[4 + k]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// Vector width of a path's silu/softmax loops, its `expf` and its horizontal sum.
type Lanes = (usize, fn(f32) -> f32, fn(&[f32]) -> f32);

fn lanes(path: VecPath) -> Lanes {
    match path {
        VecPath::Avx2 => (8, expf_avx2, reduce8),
        _ => (16, expf_avx512, reduce16),
    }
}

fn silu_scalar(path: VecPath, y: &mut [f32], x: &[f32]) {
    let (w, expf, _) = lanes(path);
    let n = y.len().min(x.len());
    let nv = n - n % w;
    for (o, &v) in y[..nv].iter_mut().zip(&x[..nv]) {
        *o = silu_with(v, expf);
    }
    for (o, &v) in y[nv..n].iter_mut().zip(&x[nv..n]) {
        *o = silu_libm(v);
    }
}

fn swiglu_scalar(path: VecPath, y: &mut [f32], x: &[f32], g: &[f32]) {
    let (w, expf, _) = lanes(path);
    let n = y.len().min(x.len()).min(g.len());
    let nv = n - n % w;
    for i in 0..nv {
        y[i] = silu_with(x[i], expf) * g[i];
    }
    for i in nv..n {
        y[i] = silu_libm(x[i]) * g[i];
    }
}

fn soft_max_scalar(path: VecPath, y: &mut [f32], x: &[f32], max: f32) -> f64 {
    let (w, expf, reduce) = lanes(path);
    let n = y.len().min(x.len());
    let nv = n - n % w;
    let mut sum = 0f64;
    for (yc, xc) in y[..nv].chunks_exact_mut(w).zip(x[..nv].chunks_exact(w)) {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = expf(v - max);
        }
        sum += f64::from(reduce(yc));
    }
    for (o, &v) in y[nv..n].iter_mut().zip(&x[nv..n]) {
        let e = (v - max).exp();
        sum += f64::from(e);
        *o = e;
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Public kernels

/// Whether this CPU can run `path`'s SIMD code (the scalar path always can). Only the x86
/// kernels ask (the aarch64 build has no SIMD paths here yet).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn runnable(path: VecPath) -> bool {
    match path {
        VecPath::Avx512 => orchard_quant::Tier::Avx512.is_available(),
        VecPath::Avx2 => orchard_quant::Tier::Avx2.is_available(),
        VecPath::Scalar => true,
    }
}

/// `ggml_vec_silu_f32`: `y = x / (1 + exp(-x))` over `min(y.len(), x.len())` elements.
pub fn silu_f32(y: &mut [f32], x: &[f32]) {
    silu_f32_with(vec_path(), y, x)
}

/// [`silu_f32`] as a given build computes it (scalar code where this CPU lacks the SIMD).
pub fn silu_f32_with(path: VecPath, y: &mut [f32], x: &[f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        VecPath::Avx512 if runnable(path) => {
            // SAFETY: runnable() confirmed AVX-512 F/DQ (part of orchard_quant's AVX-512 tier).
            unsafe { x86::silu_avx512(y, x) }
        }
        #[cfg(target_arch = "x86_64")]
        VecPath::Avx2 if runnable(path) => {
            // SAFETY: runnable() confirmed AVX2 and FMA.
            unsafe { x86::silu_avx2(y, x) }
        }
        p => silu_scalar(p, y, x),
    }
}

/// `ggml_vec_swiglu_f32`: `y = silu(x) * g`.
pub fn swiglu_f32(y: &mut [f32], x: &[f32], g: &[f32]) {
    swiglu_f32_with(vec_path(), y, x, g)
}

/// [`swiglu_f32`] as a given build computes it.
pub fn swiglu_f32_with(path: VecPath, y: &mut [f32], x: &[f32], g: &[f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        VecPath::Avx512 if runnable(path) => {
            // SAFETY: as in `silu_f32_with`.
            unsafe { x86::swiglu_avx512(y, x, g) }
        }
        #[cfg(target_arch = "x86_64")]
        VecPath::Avx2 if runnable(path) => {
            // SAFETY: as in `silu_f32_with`.
            unsafe { x86::swiglu_avx2(y, x, g) }
        }
        p => swiglu_scalar(p, y, x, g),
    }
}

/// `ggml_vec_soft_max_f32`: `y = exp(x - max)`, returning the sum of `y` accumulated in f64
/// (one f32 partial sum per vector, as ggml adds them). Divide by the sum yourself.
pub fn soft_max_f32(y: &mut [f32], x: &[f32], max: f32) -> f64 {
    soft_max_f32_with(vec_path(), y, x, max)
}

/// [`soft_max_f32`] as a given build computes it.
pub fn soft_max_f32_with(path: VecPath, y: &mut [f32], x: &[f32], max: f32) -> f64 {
    match path {
        #[cfg(target_arch = "x86_64")]
        VecPath::Avx512 if runnable(path) => {
            // SAFETY: as in `silu_f32_with`.
            unsafe { x86::soft_max_avx512(y, x, max) }
        }
        #[cfg(target_arch = "x86_64")]
        VecPath::Avx2 if runnable(path) => {
            // SAFETY: as in `silu_f32_with`.
            unsafe { x86::soft_max_avx2(y, x, max) }
        }
        p => soft_max_scalar(p, y, x, max),
    }
}

/// `ggml_vec_max_f32`: the running `max > x ? max : x` from -inf (NaNs are skipped unless last).
pub fn max_f32(x: &[f32]) -> f32 {
    x.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if m > v { m } else { v })
}

/// `ggml_vec_scale_f32`: `y *= v`.
pub fn scale_f32(y: &mut [f32], v: f32) {
    y.iter_mut().for_each(|a| *a *= v);
}

/// `ggml_vec_mad_f32`: `y += x * v`, fused (ggml's vector FMA, and gcc contracts its tail).
pub fn mad_f32(y: &mut [f32], x: &[f32], v: f32) {
    y.iter_mut()
        .zip(x)
        .for_each(|(a, &b)| *a = b.mul_add(v, *a));
}

/// `ggml_vec_scale_f16`: `y = f16(f32(y) * v)`.
pub fn scale_f16(y: &mut [f16], v: f32) {
    match vec_path() {
        #[cfg(target_arch = "x86_64")]
        p @ (VecPath::Avx512 | VecPath::Avx2) if runnable(p) => {
            // SAFETY: both SIMD paths include F16C and AVX2 (checked by runnable()).
            unsafe { x86::scale_f16_f16c(y, v) }
        }
        _ => y
            .iter_mut()
            .for_each(|a| *a = f16::from_f32(a.to_f32() * v)),
    }
}

/// `ggml_vec_mad_f16`: `y = f16(fma(f32(x), v, f32(y)))` (fused in the vector loop, and in the
/// tail after gcc's contraction).
pub fn mad_f16(y: &mut [f16], x: &[f16], v: f32) {
    match vec_path() {
        #[cfg(target_arch = "x86_64")]
        p @ (VecPath::Avx512 | VecPath::Avx2) if runnable(p) => {
            // SAFETY: both SIMD paths include F16C, FMA and AVX2 (checked by runnable()).
            unsafe { x86::mad_f16_f16c(y, x, v) }
        }
        _ => y
            .iter_mut()
            .zip(x)
            .for_each(|(a, b)| *a = f16::from_f32(b.to_f32().mul_add(v, a.to_f32()))),
    }
}

/// `simd_gemm` of `simd-gemm.h`: `C[m x n] += A[m x k] * B[k x n]`, row-major, each element an
/// FMA chain over `k` in order (which is what every tile shape of ggml's kernel computes).
/// Panics if a slice is shorter than its shape.
pub fn simd_gemm(c_out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(
        c_out.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "simd_gemm shapes"
    );
    for i in 0..m {
        let crow = &mut c_out[i * n..(i + 1) * n];
        for kk in 0..k {
            let av = a[i * k + kk];
            for (cv, &bv) in crow.iter_mut().zip(&b[kk * n..(kk + 1) * n]) {
                *cv = av.mul_add(bv, *cv);
            }
        }
    }
}

/// `k · y` for an f16 row `k` (a KV cache row) and f16-valued `y`: `ggml_vec_dot_f16`, the
/// per-query attention score, in the order of the build [`vec_path`] follows.
pub fn dot_f16(k: &[f16], y: &[f32]) -> f32 {
    dot_f16_with(vec_path(), k, y)
}

/// [`dot_f16`] as a given build computes it. The AVX-512 build (and the scalar path): four
/// 16-lane FMA accumulators over 64-element steps, folded 0+2, 1+3, then gcc's
/// `_mm512_reduce_add_ps` tree. The AVX2 build: four 8-lane accumulators over 32-element
/// steps, folded the same way, then `GGML_F32x8_REDUCE`'s halves and two `hadd_ps`. Both add
/// the tail in f64.
pub fn dot_f16_with(path: VecPath, k: &[f16], y: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if runnable(VecPath::Avx2) {
        // SAFETY: the AVX2 tier includes AVX2, FMA and F16C (checked by runnable()).
        return unsafe {
            match path {
                VecPath::Avx2 => x86::dot_f16_avx2_build(k, y),
                _ => x86::dot_f16_f16c(k, y),
            }
        };
    }
    match path {
        VecPath::Avx2 => dot_f16_scalar_avx2_build(k, y),
        _ => dot_f16_scalar(k, y),
    }
}

/// The AVX2 build's `ggml_vec_dot_f16` one lane at a time.
fn dot_f16_scalar_avx2_build(k: &[f16], y: &[f32]) -> f32 {
    dot_f16_lanes::<8>(k, y, reduce8_hadd)
}

/// The AVX-512 build's `ggml_vec_dot_f16` one lane at a time.
fn dot_f16_scalar(k: &[f16], y: &[f32]) -> f32 {
    dot_f16_lanes::<16>(k, y, reduce16)
}

/// `ggml_vec_dot_f16` with `W`-lane vectors: four FMA accumulators over `4 * W`-element steps,
/// folded (0+2)+(1+3), reduced by the build's horizontal sum, then the tail added in f64.
fn dot_f16_lanes<const W: usize>(k: &[f16], y: &[f32], reduce: fn(&[f32]) -> f32) -> f32 {
    let n = k.len().min(y.len());
    let np = n - n % (4 * W);
    let mut acc = [[0.0f32; W]; 4];
    for i in (0..np).step_by(4 * W) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, v) in a.iter_mut().enumerate() {
                let idx = i + W * j + l;
                *v = k[idx].to_f32().mul_add(y[idx], *v);
            }
        }
    }
    let r: [f32; W] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let mut sum = f64::from(reduce(&r));
    for i in np..n {
        sum += f64::from(k[i].to_f32() * y[i]);
    }
    sum as f32
}

/// `dst = f16(src)` (round to nearest even, as F16C and ggml's conversions do).
pub fn f32_to_f16(dst: &mut [f16], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if runnable(VecPath::Avx2) {
        // SAFETY: the AVX2 tier includes F16C (checked by runnable()).
        return unsafe { x86::f32_to_f16_f16c(dst, src) };
    }
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &s)| *d = f16::from_f32(s));
}

/// `dst = f32(src)`.
pub fn f16_to_f32(dst: &mut [f32], src: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if runnable(VecPath::Avx2) {
        // SAFETY: the AVX2 tier includes F16C (checked by runnable()).
        return unsafe { x86::f16_to_f32_f16c(dst, src) };
    }
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
}

/// `dst = f32(f16(src))`: values rounded through f16 (ggml's f16 copy of Q).
pub fn round_through_f16(dst: &mut [f32], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if runnable(VecPath::Avx2) {
        // SAFETY: the AVX2 tier includes F16C (checked by runnable()).
        return unsafe { x86::round_through_f16_f16c(dst, src) };
    }
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &s)| *d = f16::from_f32(s).to_f32());
}

/// `c[j] = fma(a[kk], b[kk * n + j], c[j])` for `kk` in `0..k` in order, for every `j < n`:
/// [`simd_gemm`] with one row (attention's Q·Kᵀ over a tile and its V accumulation), with the
/// accumulators held in registers.
pub fn gemv_acc(c: &mut [f32], a: &[f32], b: &[f32], k: usize, n: usize) {
    assert!(
        c.len() >= n && a.len() >= k && b.len() >= k * n,
        "gemv_acc shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if runnable(VecPath::Avx2) {
        // SAFETY: AVX2 and FMA checked by runnable(); the shapes were checked above.
        return unsafe { x86::gemv_acc_avx2(c, a, b, k, n) };
    }
    simd_gemm(c, a, b, 1, k, n)
}

/// [`gemv_acc`] for four rows at once: `c[i * ldc + j] = fma(a[i][kk], b[kk * n + j], ..)` for
/// `kk` in `0..k` in order, for `i < 4` and `j < n`. Every element gets the chain that
/// `gemv_acc` would give it; each `b` row is loaded once for the four (attention's Q·Kᵀ and V
/// sums for four queries against one KV tile).
pub fn gemv_acc4(c: &mut [f32], ldc: usize, a: [&[f32]; 4], b: &[f32], k: usize, n: usize) {
    assert!(
        ldc >= n && c.len() >= 3 * ldc + n && a.iter().all(|r| r.len() >= k) && b.len() >= k * n,
        "gemv_acc4 shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if runnable(VecPath::Avx512) {
        // SAFETY: AVX-512F and FMA checked by runnable(); the shapes were checked above.
        return unsafe { x86::gemv_acc4_avx512(c, ldc, a, b, k, n) };
    }
    for (i, a) in a.iter().enumerate() {
        gemv_acc(&mut c[i * ldc..i * ldc + n], a, b, k, n);
    }
}

// ---------------------------------------------------------------------------------------------
// x86 kernels

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    macro_rules! ps512 {
        ($b:expr) => {
            _mm512_set1_ps(f32::from_bits($b))
        };
    }

    /// `ggml_v_expf`, AVX-512.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn v_expf512(x: __m512) -> __m512 {
        let r = _mm512_set1_ps(R);
        let z = _mm512_fmadd_ps(x, ps512!(LOG2E), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, ps512!(LN2_LO), _mm512_fnmadd_ps(n, ps512!(LN2_HI), x));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(ps512!(C5), b, ps512!(C4)),
                u,
                _mm512_fmadd_ps(ps512!(C3), b, ps512!(C2)),
            ),
            u,
            _mm512_fmadd_ps(ps512!(C1), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if d == 0 {
            return res;
        }
        let zero = _mm512_setzero_ps();
        let le = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero);
        let alt = _mm512_mask_blend_ps(le, _mm512_set1_ps(f32::INFINITY), zero);
        _mm512_mask_blend_ps(d, res, alt)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn v_silu512(x: __m512) -> __m512 {
        let e = v_expf512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    macro_rules! ps256 {
        ($b:expr) => {
            _mm256_set1_ps(f32::from_bits($b))
        };
    }

    /// `ggml_v_expf`, AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn v_expf256(x: __m256) -> __m256 {
        let r = _mm256_set1_ps(R);
        let z = _mm256_fmadd_ps(x, ps256!(LOG2E), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, ps256!(LN2_LO), _mm256_fnmadd_ps(n, ps256!(LN2_HI), x));
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let cm = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(126.0)));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(ps256!(C5), b, ps256!(C4)),
                u,
                _mm256_fmadd_ps(ps256!(C3), b, ps256!(C2)),
            ),
            u,
            _mm256_mul_ps(ps256!(C1), b),
        );
        if _mm256_movemask_ps(_mm256_castsi256_ps(cm)) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let dm = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(192.0)));
        let c = _mm256_castsi256_ps(cm);
        let d = _mm256_castsi256_ps(dm);
        _mm256_or_ps(
            _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                d,
                _mm256_or_ps(
                    _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                    _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn v_silu256(x: __m256) -> __m256 {
        let e = v_expf256(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn silu_avx512(y: &mut [f32], x: &[f32]) {
        let n = y.len().min(x.len());
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(
                y.as_mut_ptr().add(i),
                v_silu512(_mm512_loadu_ps(x.as_ptr().add(i))),
            );
            i += 16;
        }
        for k in i..n {
            y[k] = silu_libm(x[k]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_avx2(y: &mut [f32], x: &[f32]) {
        let n = y.len().min(x.len());
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(
                y.as_mut_ptr().add(i),
                v_silu256(_mm256_loadu_ps(x.as_ptr().add(i))),
            );
            i += 8;
        }
        for k in i..n {
            y[k] = silu_libm(x[k]);
        }
    }

    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn swiglu_avx512(y: &mut [f32], x: &[f32], g: &[f32]) {
        let n = y.len().min(x.len()).min(g.len());
        let mut i = 0;
        while i + 16 <= n {
            let s = v_silu512(_mm512_loadu_ps(x.as_ptr().add(i)));
            let v = _mm512_mul_ps(s, _mm512_loadu_ps(g.as_ptr().add(i)));
            _mm512_storeu_ps(y.as_mut_ptr().add(i), v);
            i += 16;
        }
        for k in i..n {
            y[k] = silu_libm(x[k]) * g[k];
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu_avx2(y: &mut [f32], x: &[f32], g: &[f32]) {
        let n = y.len().min(x.len()).min(g.len());
        let mut i = 0;
        while i + 8 <= n {
            let s = v_silu256(_mm256_loadu_ps(x.as_ptr().add(i)));
            let v = _mm256_mul_ps(s, _mm256_loadu_ps(g.as_ptr().add(i)));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
            i += 8;
        }
        for k in i..n {
            y[k] = silu_libm(x[k]) * g[k];
        }
    }

    /// gcc's `_mm512_reduce_add_ps` order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn reduce512(v: __m512) -> f32 {
        let t3 = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(v), _mm512_castps512_ps256(v));
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let t8 = _mm_add_ps(t6, _mm_shuffle_ps::<0b01_00_11_10>(t6, t6));
        _mm_cvtss_f32(_mm_add_ss(t8, _mm_movehdup_ps(t8)))
    }

    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn soft_max_avx512(y: &mut [f32], x: &[f32], max: f32) -> f64 {
        let n = y.len().min(x.len());
        let mut i = 0;
        let mut sum = 0f64;
        let m = _mm512_set1_ps(max);
        while i + 16 <= n {
            let v = v_expf512(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), m));
            _mm512_storeu_ps(y.as_mut_ptr().add(i), v);
            sum += f64::from(reduce512(v));
            i += 16;
        }
        for k in i..n {
            let e = (x[k] - max).exp();
            sum += f64::from(e);
            y[k] = e;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn soft_max_avx2(y: &mut [f32], x: &[f32], max: f32) -> f64 {
        let n = y.len().min(x.len());
        let mut i = 0;
        let mut sum = 0f64;
        let m = _mm256_set1_ps(max);
        while i + 8 <= n {
            let v = v_expf256(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), m));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
            let mut r = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
            r = _mm_add_ps(r, _mm_movehl_ps(r, r));
            r = _mm_add_ss(r, _mm_movehdup_ps(r));
            sum += f64::from(_mm_cvtss_f32(r));
            i += 8;
        }
        for k in i..n {
            let e = (x[k] - max).exp();
            sum += f64::from(e);
            y[k] = e;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scale_f16_f16c(y: &mut [f16], v: f32) {
        let n = y.len();
        let p = y.as_mut_ptr() as *mut u8;
        let vv = _mm256_set1_ps(v);
        let mut i = 0;
        while i + 8 <= n {
            let a = _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
            let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(a, vv));
            _mm_storeu_si128(p.add(2 * i) as *mut __m128i, r);
            i += 8;
        }
        for a in &mut y[i..] {
            *a = f16::from_f32(a.to_f32() * v);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mad_f16_f16c(y: &mut [f16], x: &[f16], v: f32) {
        let n = y.len().min(x.len());
        let py = y.as_mut_ptr() as *mut u8;
        let px = x.as_ptr() as *const u8;
        let vv = _mm256_set1_ps(v);
        let mut i = 0;
        while i + 8 <= n {
            let a = _mm256_cvtph_ps(_mm_loadu_si128(py.add(2 * i) as *const __m128i));
            let b = _mm256_cvtph_ps(_mm_loadu_si128(px.add(2 * i) as *const __m128i));
            let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_fmadd_ps(b, vv, a));
            _mm_storeu_si128(py.add(2 * i) as *mut __m128i, r);
            i += 8;
        }
        for k in i..n {
            y[k] = f16::from_f32(x[k].to_f32().mul_add(v, y[k].to_f32()));
        }
    }

    /// Caller: `gemv_acc4` (shapes checked there).
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn gemv_acc4_avx512(
        c: &mut [f32],
        ldc: usize,
        a: [&[f32]; 4],
        b: &[f32],
        k: usize,
        n: usize,
    ) {
        let (cp, bp) = (c.as_mut_ptr(), b.as_ptr());
        let ap = a.map(|r| r.as_ptr());
        let mut j = 0;
        // 4 rows x 64 columns: 16 accumulators, four loads of `b` per 16 FMAs.
        while j + 64 <= n {
            let mut acc: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                std::array::from_fn(|v| _mm512_loadu_ps(cp.add(i * ldc + j + 16 * v)))
            });
            for kk in 0..k {
                let row = bp.add(kk * n + j);
                let bv: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(row.add(16 * v)));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*ap[i].add(kk));
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(x, bv[v], *acc);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(cp.add(i * ldc + j + 16 * v), *acc);
                }
            }
            j += 64;
        }
        while j + 16 <= n {
            let mut acc: [__m512; 4] =
                std::array::from_fn(|i| _mm512_loadu_ps(cp.add(i * ldc + j)));
            for kk in 0..k {
                let bv = _mm512_loadu_ps(bp.add(kk * n + j));
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*ap[i].add(kk)), bv, *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(cp.add(i * ldc + j), *acc);
            }
            j += 16;
        }
        for i in 0..4 {
            for jj in j..n {
                let mut acc = c[i * ldc + jj];
                for kk in 0..k {
                    acc = a[i][kk].mul_add(b[kk * n + jj], acc);
                }
                c[i * ldc + jj] = acc;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemv_acc_avx2(c: &mut [f32], a: &[f32], b: &[f32], k: usize, n: usize) {
        let (cp, bp) = (c.as_mut_ptr(), b.as_ptr());
        let mut j = 0;
        // 64 columns at a time: eight accumulators stay in registers across the k loop.
        while j + 64 <= n {
            let mut acc: [__m256; 8] = std::array::from_fn(|v| _mm256_loadu_ps(cp.add(j + 8 * v)));
            for (kk, &av) in a[..k].iter().enumerate() {
                let x = _mm256_set1_ps(av);
                let row = bp.add(kk * n + j);
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(row.add(8 * v)), *acc);
                }
            }
            for (v, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(cp.add(j + 8 * v), *acc);
            }
            j += 64;
        }
        while j + 8 <= n {
            let mut acc = _mm256_loadu_ps(cp.add(j));
            for (kk, &av) in a[..k].iter().enumerate() {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(av), _mm256_loadu_ps(bp.add(kk * n + j)), acc);
            }
            _mm256_storeu_ps(cp.add(j), acc);
            j += 8;
        }
        for jj in j..n {
            let mut acc = c[jj];
            for (kk, &av) in a[..k].iter().enumerate() {
                acc = av.mul_add(b[kk * n + jj], acc);
            }
            c[jj] = acc;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_f16c(k: &[f16], y: &[f32]) -> f32 {
        let n = k.len().min(y.len());
        let np = n & !63;
        let (kp, yp) = (k.as_ptr() as *const __m128i, y.as_ptr());
        // acc[j][h]: 16-lane accumulator j as two 8-lane halves h (lanes 0-7, 8-15).
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        while i < np {
            for (j, a) in acc.iter_mut().enumerate() {
                for (h, ah) in a.iter_mut().enumerate() {
                    let o = i + 16 * j + 8 * h;
                    let kv = _mm256_cvtph_ps(_mm_loadu_si128(kp.byte_add(2 * o)));
                    *ah = _mm256_fmadd_ps(kv, _mm256_loadu_ps(yp.add(o)), *ah);
                }
            }
            i += 64;
        }
        let r = |h: usize| {
            _mm256_add_ps(
                _mm256_add_ps(acc[0][h], acc[2][h]),
                _mm256_add_ps(acc[1][h], acc[3][h]),
            )
        };
        // reduce16: lanes 8-15 onto 0-7, then 4-7 onto 0-3, then (0+2)+(1+3).
        let t3 = _mm256_add_ps(r(1), r(0));
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let mut t = [0.0f32; 4];
        _mm_storeu_ps(t.as_mut_ptr(), t6);
        let mut sum = f64::from((t[0] + t[2]) + (t[1] + t[3]));
        for i in np..n {
            sum += f64::from(k[i].to_f32() * y[i]);
        }
        sum as f32
    }

    /// `dot_f16_scalar_avx2_build` in AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx2_build(k: &[f16], y: &[f32]) -> f32 {
        let n = k.len().min(y.len());
        let np = n & !31;
        let (kp, yp) = (k.as_ptr() as *const __m128i, y.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                let kv = _mm256_cvtph_ps(_mm_loadu_si128(kp.byte_add(2 * o)));
                *a = _mm256_fmadd_ps(kv, _mm256_loadu_ps(yp.add(o)), *a);
            }
            i += 32;
        }
        let r = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let t0 = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps::<1>(r));
        let t1 = _mm_hadd_ps(t0, t0);
        let mut sum = f64::from(_mm_cvtss_f32(_mm_hadd_ps(t1, t1)));
        for i in np..n {
            sum += f64::from(k[i].to_f32() * y[i]);
        }
        sum as f32
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f32_to_f16_f16c(dst: &mut [f16], src: &[f32]) {
        let n = dst.len().min(src.len());
        let mut i = 0;
        while i + 8 <= n {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            i += 8;
        }
        for k in i..n {
            dst[k] = f16::from_f32(src[k]);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f16_to_f32_f16c(dst: &mut [f32], src: &[f16]) {
        let n = dst.len().min(src.len());
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
            i += 8;
        }
        for k in i..n {
            dst[k] = src[k].to_f32();
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn round_through_f16_f16c(dst: &mut [f32], src: &[f32]) {
        let n = dst.len().min(src.len());
        let mut i = 0;
        while i + 8 <= n {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        for k in i..n {
            dst[k] = f16::from_f32(src[k]).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test inputs spanning expf's whole range, including its overflow and
    /// underflow cut-offs.
    fn inputs(n: usize) -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                match i % 7 {
                    0 => (u - 0.5) * 400.0,
                    1 => (u - 0.5) * 20.0,
                    2 => -88.0 - u * 20.0,
                    3 => 80.0 + u * 10.0,
                    _ => (u - 0.5) * 4.0,
                }
            })
            .collect()
    }

    #[test]
    fn scalar_expf_is_close_to_libm() {
        for x in inputs(20000) {
            let (a, b) = (expf_avx512(x), x.exp());
            if b.is_finite() && b > 1e-37 {
                assert!(
                    ((a - b) / b).abs() < 4e-7,
                    "expf_avx512({x}) = {a}, libm {b}"
                );
            }
            let c = expf_avx2(x);
            if b.is_finite() && b > 1e-37 && x < 88.0 {
                assert!(((c - b) / b).abs() < 4e-7, "expf_avx2({x}) = {c}, libm {b}");
            }
        }
        assert_eq!(expf_avx512(-200.0), 0.0);
        assert_eq!(expf_avx512(200.0), f32::INFINITY);
        assert_eq!(expf_avx2(-200.0), 0.0);
        assert_eq!(expf_avx2(200.0), f32::INFINITY);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_paths_equal_their_scalar_definitions() {
        let x = inputs(1000 + 13);
        let g: Vec<f32> = inputs(1013).iter().map(|v| v * 0.25).collect();
        let max = max_f32(&x);
        if orchard_quant::Tier::Avx512.is_available() {
            for n in [0, 5, 16, 31, 1013] {
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                // SAFETY: AVX-512 F/DQ checked just above.
                unsafe { x86::silu_avx512(&mut a, &x[..n]) };
                silu_scalar(VecPath::Avx512, &mut b, &x[..n]);
                assert_eq!(bits(&a), bits(&b), "silu n={n}");
                // SAFETY: as above.
                unsafe { x86::swiglu_avx512(&mut a, &x[..n], &g[..n]) };
                swiglu_scalar(VecPath::Avx512, &mut b, &x[..n], &g[..n]);
                assert_eq!(bits(&a), bits(&b), "swiglu n={n}");
                // SAFETY: as above.
                let sa = unsafe { x86::soft_max_avx512(&mut a, &x[..n], max) };
                let sb = soft_max_scalar(VecPath::Avx512, &mut b, &x[..n], max);
                assert_eq!(
                    (bits(&a), sa.to_bits()),
                    (bits(&b), sb.to_bits()),
                    "softmax n={n}"
                );
            }
        }
        if orchard_quant::Tier::Avx2.is_available() {
            for n in [0, 5, 8, 31, 1013] {
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                // SAFETY: AVX2 and FMA checked just above.
                unsafe { x86::silu_avx2(&mut a, &x[..n]) };
                silu_scalar(VecPath::Avx2, &mut b, &x[..n]);
                assert_eq!(bits(&a), bits(&b), "silu avx2 n={n}");
                // SAFETY: as above.
                let sa = unsafe { x86::soft_max_avx2(&mut a, &x[..n], max) };
                let sb = soft_max_scalar(VecPath::Avx2, &mut b, &x[..n], max);
                assert_eq!(
                    (bits(&a), sa.to_bits()),
                    (bits(&b), sb.to_bits()),
                    "softmax avx2 n={n}"
                );
                let h: Vec<f16> = x[..n].iter().map(|&v| f16::from_f32(v * 0.01)).collect();
                let (mut ya, mut yb) = (h.clone(), h.clone());
                // SAFETY: as above (F16C is part of the AVX2 tier).
                unsafe { x86::mad_f16_f16c(&mut ya, &h, 0.7) };
                for (o, i) in yb.iter_mut().zip(&h) {
                    *o = f16::from_f32(i.to_f32().mul_add(0.7, o.to_f32()));
                }
                assert_eq!(ya, yb, "mad_f16 n={n}");
            }
        }
    }

    #[test]
    fn f16_helpers_match_their_scalar_definitions() {
        let x = inputs(600);
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 128, 130, 256] {
            let a: Vec<f32> = x[..n].iter().map(|v| v * 0.01).collect();
            let b: Vec<f32> = x[n..2 * n].iter().map(|v| v * 0.3).collect();
            let ka: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
            for (path, scalar) in [
                (VecPath::Avx512, dot_f16_scalar as fn(&[f16], &[f32]) -> f32),
                (VecPath::Avx2, dot_f16_scalar_avx2_build),
            ] {
                assert_eq!(
                    dot_f16_with(path, &ka, &b).to_bits(),
                    scalar(&ka, &b).to_bits(),
                    "dot {path:?} n={n}"
                );
            }
            let mut h = vec![f16::ZERO; n];
            f32_to_f16(&mut h, &a);
            assert_eq!(h, ka, "f32_to_f16 n={n}");
            let mut r = vec![0f32; n];
            round_through_f16(&mut r, &a);
            let want: Vec<f32> = ka.iter().map(|v| v.to_f32()).collect();
            assert_eq!(bits(&r), bits(&want), "round_through_f16 n={n}");
            f16_to_f32(&mut r, &ka);
            assert_eq!(bits(&r), bits(&want), "f16_to_f32 n={n}");
        }
    }

    #[test]
    fn gemv_acc_is_an_fma_chain_per_column() {
        for (k, n) in [(64usize, 64usize), (3, 19), (5, 136), (1, 7), (64, 256)] {
            let a: Vec<f32> = inputs(k).iter().map(|v| v * 0.3).collect();
            let b: Vec<f32> = inputs(k * n + 7)[7..].iter().map(|v| v * 0.1).collect();
            let mut c_out: Vec<f32> = inputs(n + 3)[3..].to_vec();
            let mut want = c_out.clone();
            gemv_acc(&mut c_out, &a, &b, k, n);
            for (j, w) in want.iter_mut().enumerate() {
                for kk in 0..k {
                    *w = a[kk].mul_add(b[kk * n + j], *w);
                }
            }
            assert_eq!(bits(&c_out), bits(&want), "k={k} n={n}");
        }
    }

    #[test]
    fn gemv_acc4_gives_each_row_the_chain_of_gemv_acc() {
        for (k, n, ldc) in [
            (64usize, 64usize, 64usize),
            (3, 19, 19),
            (5, 136, 140),
            (64, 256, 256),
            (7, 80, 96),
        ] {
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|i| inputs(k + i)[i..].iter().map(|v| v * 0.3).collect())
                .collect();
            let b: Vec<f32> = inputs(k * n + 7)[7..].iter().map(|v| v * 0.1).collect();
            let mut c_out: Vec<f32> = inputs(4 * ldc + 3)[3..].to_vec();
            let mut want = c_out.clone();
            gemv_acc4(
                &mut c_out,
                ldc,
                std::array::from_fn(|i| &rows[i][..]),
                &b,
                k,
                n,
            );
            for (i, a) in rows.iter().enumerate() {
                gemv_acc(&mut want[i * ldc..i * ldc + n], a, &b, k, n);
            }
            assert_eq!(bits(&c_out), bits(&want), "k={k} n={n} ldc={ldc}");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn softmax_sums_to_the_returned_total() {
        let x = inputs(300);
        let max = max_f32(&x);
        let mut y = vec![0f32; x.len()];
        let sum = soft_max_f32(&mut y, &x, max);
        let direct: f64 = y.iter().map(|&v| f64::from(v)).sum();
        assert!((sum - direct).abs() <= 1e-6 * sum, "{sum} vs {direct}");
        assert!(y.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!(y.contains(&1.0), "exp(max - max) is exactly 1");
    }

    #[test]
    fn gemm_is_an_fma_chain_per_element() {
        let (m, k, n) = (3, 5, 19);
        let a: Vec<f32> = inputs(m * k);
        let b: Vec<f32> = inputs(k * n).iter().map(|v| v * 0.1).collect();
        let mut c_out = vec![0.5f32; m * n];
        simd_gemm(&mut c_out, &a, &b, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.5f32;
                for kk in 0..k {
                    acc = a[i * k + kk].mul_add(b[kk * n + j], acc);
                }
                assert_eq!(c_out[i * n + j].to_bits(), acc.to_bits());
            }
        }
    }
}
