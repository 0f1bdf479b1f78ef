//! Matmul kernels whose float arithmetic follows the kernel llama.cpp's x86 CPU build picks for
//! a weight, where that differs from the plain `vec_dot`: ggml repacks Q4_K weights with at
//! least 8 rows (a multiple of 8) into 8-column interleaved blocks on AVX2 machines
//! (`ggml/src/ggml-cpu/repack.cpp`, `ggml_gemv/gemm_q4_K_8x8_q8_K`), whose per-column float
//! accumulation is one FMA per super-block for the scales and one for the mins. The integer
//! sums are the same as any other kernel's; only the float order differs, which matters because
//! small models amplify one-ulp differences through int8 activation rounding.

use orchard_core::DType;
use orchard_quant::{get_scale_min_k4, BlockQ4K, BlockQ6K, BlockQ8K};

/// ggml's tiled K-quant matmul (`ggml-cpu/tiled/`) takes batches of at least this many rows.
pub(crate) const TILED_MIN_BATCH: usize = 8;

/// Whether llama.cpp's x86 build runs a batch of `n_tokens` against this (not repacked) weight
/// through its tiled K-quant matmul.
pub(crate) fn uses_tiled_order(dtype: DType, rows: usize, n_tokens: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && n_tokens >= TILED_MIN_BATCH
        && dtype == DType::Q6_K
        && !uses_repack_order(dtype, rows)
}

/// Q6_K weight row · Q8_K activation row in the order of ggml's tiled kernel
/// (`tiled_run_micro_vnni_8x16` with 16-quant sub-blocks and a bias of 32): per super-block an
/// exact integer sum, scaled by the weight's `d`, then by the activation's `d`, then added.
pub(crate) fn vec_dot_q6_k_q8_k_tiled_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA (checked just above), the only feature the function enables.
        return unsafe { dot_q6_k_tiled_fma(n, w, act) };
    }
    dot_q6_k_tiled_body(n, w, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn dot_q6_k_tiled_fma(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_q6_k_tiled_body(n, w, act)
}

#[inline(always)]
fn dot_q6_k_tiled_body(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    let blocks = (n / 256)
        .min(w.len() / BlockQ6K::SIZE)
        .min(act.len() / BlockQ8K::SIZE);
    for b in 0..blocks {
        let x = BlockQ6K::from_bytes(
            w[b * BlockQ6K::SIZE..][..BlockQ6K::SIZE]
                .try_into()
                .expect("sized"),
        );
        let y = BlockQ8K::from_bytes(
            act[b * BlockQ8K::SIZE..][..BlockQ8K::SIZE]
                .try_into()
                .expect("sized"),
        );
        let mut q = [0i32; 256];
        for half in 0..2 {
            let (ql, qh) = (&x.ql[half * 64..], &x.qh[half * 32..]);
            for l in 0..32 {
                let base = half * 128 + l;
                q[base] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32;
                q[base + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32;
                q[base + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32;
                q[base + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32;
            }
        }
        let mut s1 = 0i32;
        for s in 0..16 {
            let raw: i32 = (0..16)
                .map(|i| q[16 * s + i] * y.qs[16 * s + i] as i32)
                .sum();
            s1 += x.scales[s] as i32 * (raw - 32 * y.bsums[s] as i32);
        }
        let r = s1 as f32 * x.d.to_f32();
        // GCC contracts the kernel's `_mm512_add_ps(buf, _mm512_mul_ps(r, d1))` into one FMA.
        acc = r.mul_add(y.d, acc);
    }
    acc
}

/// Whether llama.cpp's x86 build would run this weight through a repacked kernel.
pub(crate) fn uses_repack_order(dtype: DType, rows: usize) -> bool {
    cfg!(target_arch = "x86_64") && dtype == DType::Q4_K && rows.is_multiple_of(8)
}

/// Q4_K weight row · Q8_K activation row in the float order of ggml's repacked GEMV (one FMA
/// per super-block: single rows and the last `n_tokens % 4` rows of a batch).
pub(crate) fn vec_dot_q4_k_q8_k_gemv_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_q4_k(n, w, act, false)
}

/// The same in the order of ggml's repacked GEMM (one FMA per 64-quant pair of sub-blocks), which
/// runs the batch rows in groups of four.
pub(crate) fn vec_dot_q4_k_q8_k_gemm_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_q4_k(n, w, act, true)
}

fn dot_q4_k(n: usize, w: &[u8], act: &[u8], per_pair: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA (checked just above), the only feature the function enables.
        return unsafe { dot_q4_k_fma(n, w, act, per_pair) };
    }
    dot_q4_k_body(n, w, act, per_pair)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn dot_q4_k_fma(n: usize, w: &[u8], act: &[u8], per_pair: bool) -> f32 {
    dot_q4_k_body(n, w, act, per_pair)
}

#[inline(always)]
fn dot_q4_k_body(n: usize, w: &[u8], act: &[u8], per_pair: bool) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    let blocks = (n / 256)
        .min(w.len() / BlockQ4K::SIZE)
        .min(act.len() / BlockQ8K::SIZE);
    for b in 0..blocks {
        let x = BlockQ4K::from_bytes(
            w[b * BlockQ4K::SIZE..][..BlockQ4K::SIZE]
                .try_into()
                .expect("sized"),
        );
        let y = BlockQ8K::from_bytes(
            act[b * BlockQ8K::SIZE..][..BlockQ8K::SIZE]
                .try_into()
                .expect("sized"),
        );
        let (mut isum, mut imin) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &x.scales);
            // Sub-block j: 32 quants, low nibbles of run j/2 for even j, high nibbles for odd j.
            let run = &x.qs[(j / 2) * 32..(j / 2) * 32 + 32];
            let q8 = &y.qs[j * 32..j * 32 + 32];
            let dot: i32 = if j % 2 == 0 {
                run.iter()
                    .zip(q8)
                    .map(|(&q, &a)| (q & 0x0f) as i32 * a as i32)
                    .sum()
            } else {
                run.iter()
                    .zip(q8)
                    .map(|(&q, &a)| (q >> 4) as i32 * a as i32)
                    .sum()
            };
            isum += sc as i32 * dot;
            imin += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            if per_pair && j % 2 == 1 {
                acc = (isum as f32).mul_add(x.d.to_f32() * y.d, acc);
                acc_min = (imin as f32).mul_add(x.dmin.to_f32() * y.d, acc_min);
                (isum, imin) = (0, 0);
            }
        }
        if !per_pair {
            acc = (isum as f32).mul_add(x.d.to_f32() * y.d, acc);
            acc_min = (imin as f32).mul_add(x.dmin.to_f32() * y.d, acc_min);
        }
    }
    acc - acc_min
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiled-order Q6_K kernel computes the same dot product as the reference kernel.
    #[test]
    fn tiled_order_q6_k_matches_reference_dot() {
        let n = 1024;
        let wf: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let xf: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0)
            .collect();
        let mut w = vec![0u8; DType::Q6_K.row_bytes(n as u64).unwrap() as usize];
        let mut a = vec![0u8; DType::Q8_K.row_bytes(n as u64).unwrap() as usize];
        orchard_quant::quantize_row(DType::Q6_K, &wf, &mut w).unwrap();
        orchard_quant::quantize_row(DType::Q8_K, &xf, &mut a).unwrap();
        let reference = orchard_quant::vec_dot(DType::Q6_K, n, &w, &a).unwrap();
        let ours = vec_dot_q6_k_q8_k_tiled_order(n, &w, &a);
        assert!(
            (reference - ours).abs() <= 1e-4 * reference.abs().max(1.0),
            "{reference} vs {ours}"
        );
    }

    /// The repack-order kernel computes the same dot product as the reference kernel (up to
    /// float order), so a swapped nibble or scale would show up here.
    #[test]
    fn repack_order_q4_k_matches_reference_dot() {
        let mut state = 0x1234_5678u32;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        let n = 1024;
        let wf: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let xf: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let mut w = vec![0u8; DType::Q4_K.row_bytes(n as u64).unwrap() as usize];
        let mut a = vec![0u8; DType::Q8_K.row_bytes(n as u64).unwrap() as usize];
        orchard_quant::quantize_row(DType::Q4_K, &wf, &mut w).unwrap();
        orchard_quant::quantize_row(DType::Q8_K, &xf, &mut a).unwrap();
        let reference = orchard_quant::vec_dot(DType::Q4_K, n, &w, &a).unwrap();
        for ours in [
            vec_dot_q4_k_q8_k_gemv_order(n, &w, &a),
            vec_dot_q4_k_q8_k_gemm_order(n, &w, &a),
        ] {
            assert!(
                (reference - ours).abs() <= 1e-4 * reference.abs().max(1.0),
                "{reference} vs {ours}"
            );
        }
    }
}
