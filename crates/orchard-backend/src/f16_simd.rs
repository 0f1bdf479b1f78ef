//! f16 vector helpers of the attention's per-query path, with AVX2/F16C/FMA versions that give
//! the same bits as the scalar ones: every element is converted, multiplied and rounded on its
//! own (F16C conversions round to nearest-even like `half`), and the dot product keeps ggml's
//! 4 x 16-lane accumulator layout and reduction tree.

use half::f16;

#[cfg(target_arch = "x86_64")]
fn has_avx2_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("fma")
}

/// `sum(k[i] * y[i])` in ggml's `ggml_vec_dot_f16` order on a 16-lane (AVX-512) build: four
/// accumulators of 16 lanes over steps of 64, fused multiply-adds, a fixed reduction tree, and
/// the leftover elements summed in f64.
pub(crate) fn dot_f16_ggml(k: &[f16], y: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_f16c() {
        // SAFETY: AVX2, F16C and FMA were detected just above.
        return unsafe { x86::dot_f16_ggml(k, y) };
    }
    crate::ops::dot_f16_ggml(k, y)
}

/// `acc[i] = f16(v[i] * s + acc[i])` (one rounding of a fused multiply-add, as ggml's
/// `ggml_vec_mad_f16` on an FMA build).
pub(crate) fn mad_f16(acc: &mut [f16], v: &[f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_f16c() {
        // SAFETY: AVX2, F16C and FMA were detected just above.
        return unsafe { x86::mad_f16(acc, v, s) };
    }
    for (a, v) in acc.iter_mut().zip(v) {
        *a = f16::from_f32(v.to_f32().mul_add(s, a.to_f32()));
    }
}

/// `acc[i] = f16(acc[i] * s)`.
pub(crate) fn scale_f16(acc: &mut [f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_f16c() {
        // SAFETY: AVX2, F16C and FMA were detected just above.
        return unsafe { x86::scale_f16(acc, s) };
    }
    for a in acc {
        *a = f16::from_f32(a.to_f32() * s);
    }
}

/// `dst[i] = f16(src[i])`.
pub(crate) fn f32_to_f16(dst: &mut [f16], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_f16c() {
        // SAFETY: AVX2, F16C and FMA were detected just above.
        return unsafe { x86::f32_to_f16(dst, src) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// `dst[i] = f32(f16(src[i]))`: values rounded through f16.
pub(crate) fn round_through_f16(dst: &mut [f32], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_f16c() {
        // SAFETY: AVX2, F16C and FMA were detected just above.
        return unsafe { x86::round_through_f16(dst, src) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;

    #[inline(always)]
    unsafe fn load_ph(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[inline(always)]
    unsafe fn store_ph(p: *mut f16, v: __m256) {
        _mm_storeu_si128(p as *mut __m128i, _mm256_cvtps_ph::<NEAREST>(v))
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    pub(super) unsafe fn dot_f16_ggml(k: &[f16], y: &[f32]) -> f32 {
        let n = k.len().min(y.len());
        let np = n & !63;
        let (kp, yp) = (k.as_ptr(), y.as_ptr());
        // acc[j][h]: accumulator j (of 4) of 16 lanes, half h (lanes 0-7, 8-15).
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        while i < np {
            for (j, a) in acc.iter_mut().enumerate() {
                for (h, ah) in a.iter_mut().enumerate() {
                    let o = i + 16 * j + 8 * h;
                    *ah = _mm256_fmadd_ps(load_ph(kp.add(o)), _mm256_loadu_ps(yp.add(o)), *ah);
                }
            }
            i += 64;
        }
        // r = (acc0 + acc2) + (acc1 + acc3), then lanes 8-15 onto 0-7, 4-7 onto 0-3.
        let r = |h: usize| {
            _mm256_add_ps(
                _mm256_add_ps(acc[0][h], acc[2][h]),
                _mm256_add_ps(acc[1][h], acc[3][h]),
            )
        };
        let t3 = _mm256_add_ps(r(1), r(0));
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let mut t = [0.0f32; 4];
        _mm_storeu_ps(t.as_mut_ptr(), t6);
        let mut sum = ((t[0] + t[2]) + (t[1] + t[3])) as f64;
        for i in np..n {
            sum += (k[i].to_f32() * y[i]) as f64;
        }
        sum as f32
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    pub(super) unsafe fn mad_f16(acc: &mut [f16], v: &[f16], s: f32) {
        let n = acc.len().min(v.len());
        let n8 = n & !7;
        let sv = _mm256_set1_ps(s);
        let (ap, vp) = (acc.as_mut_ptr(), v.as_ptr());
        let mut i = 0;
        while i < n8 {
            let r = _mm256_fmadd_ps(load_ph(vp.add(i)), sv, load_ph(ap.add(i)));
            store_ph(ap.add(i), r);
            i += 8;
        }
        for i in n8..n {
            acc[i] = f16::from_f32(v[i].to_f32().mul_add(s, acc[i].to_f32()));
        }
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    pub(super) unsafe fn scale_f16(acc: &mut [f16], s: f32) {
        let n = acc.len();
        let n8 = n & !7;
        let sv = _mm256_set1_ps(s);
        let ap = acc.as_mut_ptr();
        let mut i = 0;
        while i < n8 {
            store_ph(ap.add(i), _mm256_mul_ps(load_ph(ap.add(i)), sv));
            i += 8;
        }
        for a in &mut acc[n8..] {
            *a = f16::from_f32(a.to_f32() * s);
        }
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    pub(super) unsafe fn f32_to_f16(dst: &mut [f16], src: &[f32]) {
        let n = dst.len().min(src.len());
        let n8 = n & !7;
        let mut i = 0;
        while i < n8 {
            store_ph(
                dst.as_mut_ptr().add(i),
                _mm256_loadu_ps(src.as_ptr().add(i)),
            );
            i += 8;
        }
        for i in n8..n {
            dst[i] = f16::from_f32(src[i]);
        }
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    pub(super) unsafe fn round_through_f16(dst: &mut [f32], src: &[f32]) {
        let n = dst.len().min(src.len());
        let n8 = n & !7;
        let mut i = 0;
        while i < n8 {
            let h = _mm256_cvtps_ph::<NEAREST>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        for i in n8..n {
            dst[i] = f16::from_f32(src[i]).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that exercise rounding: random-ish magnitudes over many binades, plus ties.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let m = (x % 20001) as f32 / 10000.0 - 1.0;
                let e = ((x >> 20) % 12) as i32 - 6;
                if i % 17 == 0 {
                    // exactly halfway between two f16 values near 1
                    1.0 + (2.0f32).powi(-11)
                } else {
                    m * (2.0f32).powi(e)
                }
            })
            .collect()
    }

    fn to_f16(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    #[test]
    fn simd_matches_scalar_bit_for_bit() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 128, 130, 256] {
            let a = values(n, 1 + n as u32);
            let b = values(n, 1000 + n as u32);
            let (ka, kb) = (to_f16(&a), to_f16(&b));
            assert_eq!(
                dot_f16_ggml(&ka, &b).to_bits(),
                crate::ops::dot_f16_ggml(&ka, &b).to_bits(),
                "dot n={n}"
            );
            for s in [0.37f32, -1.5, 1e-3] {
                let mut acc = ka.clone();
                mad_f16(&mut acc, &kb, s);
                let want: Vec<f16> = ka
                    .iter()
                    .zip(&kb)
                    .map(|(a, v)| f16::from_f32(v.to_f32().mul_add(s, a.to_f32())))
                    .collect();
                assert_eq!(acc, want, "mad n={n} s={s}");
                let mut acc = ka.clone();
                scale_f16(&mut acc, s);
                let want: Vec<f16> = ka.iter().map(|a| f16::from_f32(a.to_f32() * s)).collect();
                assert_eq!(acc, want, "scale n={n} s={s}");
            }
            let mut h = vec![f16::ZERO; n];
            f32_to_f16(&mut h, &a);
            assert_eq!(h, ka, "convert n={n}");
            let mut r = vec![0.0f32; n];
            round_through_f16(&mut r, &a);
            let want: Vec<f32> = ka.iter().map(|x| x.to_f32()).collect();
            assert_eq!(r, want, "round n={n}");
        }
    }
}
