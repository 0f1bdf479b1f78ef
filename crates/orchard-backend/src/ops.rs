//! Scalar element-wise math shared by the CPU backend and by tests of other backends, written to
//! follow ggml's CPU evaluation order (ggml/src/ggml-cpu/vec.h, ops.cpp) so that logits agree.

use half::f16;

/// ggml's `ggml_silu_f32`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU (tanh form) the way ggml's CPU computes it with `GGML_GELU_FP16`: the input is rounded
/// to f16, looked up in a table of f16 results, and widened back.
#[inline]
pub fn gelu_tanh_f16_rounded(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    gelu_table()[usize::from(f16::from_f32(x).to_bits())].to_f32()
}

/// ggml's `ggml_gelu_f32` of an f16 value, rounded to f16: one entry of its table.
fn gelu_entry(xh: f32) -> f16 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    // `1 + A*x*x` fused as GCC contracts ggml_gelu_f32 (verified bit-exact against llama.cpp).
    let g = 0.5 * xh * (1.0 + (SQRT_2_OVER_PI * xh * (GELU_COEF_A * xh).mul_add(xh, 1.0)).tanh());
    f16::from_f32(g)
}

/// The 65536-entry table (128 KiB) of `gelu_entry` over every f16 bit pattern, built once:
/// a `tanh` per element cost ~9% of Gemma's prompt time.
fn gelu_table() -> &'static [f16] {
    static TABLE: std::sync::OnceLock<Vec<f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| gelu_entry(f16::from_bits(b).to_f32()))
            .collect()
    })
}

/// Fills `cache` (`n_rot` floats: cos, sin interleaved per rotated pair) for position `pos`,
/// as ggml's `ggml_rope_cache_init` with no YaRN extension: theta is advanced by repeated
/// multiplication, which is what makes the rounding agree with ggml.
pub fn rope_cache(
    pos: f32,
    p: &crate::RopeParams,
    freq_factors: Option<&[f32]>,
    cache: &mut [f32],
) {
    let theta_scale = p.freq_base.powf(-2.0 / p.n_rot as f32);
    let mut theta = pos;
    for i0 in (0..p.n_rot).step_by(2) {
        let ff = freq_factors.map_or(1.0, |f| f[i0 / 2]);
        let t = p.freq_scale * (theta / ff);
        cache[i0] = t.cos();
        cache[i0 + 1] = t.sin();
        theta *= theta_scale;
    }
}

/// One rotation, with the multiply-adds fused the way GCC contracts ggml's
/// `x0*cos - x1*sin` / `x0*sin + x1*cos` at -O3 on an FMA machine.
#[inline]
fn rotate(x0: f32, x1: f32, c: f32, s: f32) -> (f32, f32) {
    // Verified bit-exact against llama.cpp's CPU build on its intermediate tensors.
    (x0.mul_add(c, -(x1 * s)), x0.mul_add(s, x1 * c))
}

/// Applies a rope cache to one head in place.
#[inline]
pub(crate) fn rope_apply(head: &mut [f32], cache: &[f32], n_rot: usize, neox: bool) {
    if neox {
        let half = n_rot / 2;
        for i in 0..half {
            let (c, s) = (cache[2 * i], cache[2 * i + 1]);
            let x0 = head[i];
            let x1 = head[i + half];
            (head[i], head[i + half]) = rotate(x0, x1, c, s);
        }
    } else {
        for i in (0..n_rot).step_by(2) {
            let (c, s) = (cache[i], cache[i + 1]);
            let x0 = head[i];
            let x1 = head[i + 1];
            (head[i], head[i + 1]) = rotate(x0, x1, c, s);
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)` with the sum of squares accumulated in f64 as ggml does.
#[inline]
pub(crate) fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RopeParams;

    #[test]
    fn rope_rotates_pairs_and_preserves_norm() {
        let p = RopeParams {
            n_rot: 8,
            head_dim: 8,
            freq_base: 10000.0,
            freq_scale: 1.0,
            neox: false,
        };
        let mut cache = vec![0.0; 8];
        rope_cache(3.0, &p, None, &mut cache);
        let mut h: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let before: f32 = h.iter().map(|v| v * v).sum();
        rope_apply(&mut h, &cache, 8, false);
        let after: f32 = h.iter().map(|v| v * v).sum();
        assert!((before - after).abs() < 1e-3);
        // first pair rotates by exactly pos radians
        let (c, s) = (3.0f32.cos(), 3.0f32.sin());
        assert!((h[0] - (1.0 * c - 2.0 * s)).abs() < 1e-5);
        // position 0 is the identity
        rope_cache(0.0, &p, None, &mut cache);
        let mut h0: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        rope_apply(&mut h0, &cache, 8, true);
        assert_eq!(h0, (1..=8).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn gelu_table_equals_its_formula_on_every_input_in_range() {
        for b in 0..=u16::MAX {
            let x = f16::from_bits(b).to_f32();
            if x.is_nan() || x <= -10.0 || x >= 10.0 {
                continue;
            }
            assert_eq!(
                gelu_tanh_f16_rounded(x).to_bits(),
                gelu_entry(x).to_f32().to_bits(),
                "x = {x}"
            );
        }
    }

    #[test]
    fn gelu_matches_tanh_formula_closely() {
        for x in [-3.0f32, -0.5, 0.0, 0.7, 2.5] {
            let exact = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044715 * x * x)).tanh());
            assert!((gelu_tanh_f16_rounded(x) - exact).abs() < 4e-3 * (1.0 + exact.abs()));
        }
        assert_eq!(gelu_tanh_f16_rounded(-20.0), 0.0);
        assert_eq!(gelu_tanh_f16_rounded(12.0), 12.0);
    }
}
