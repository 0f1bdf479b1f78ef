//! K-quant reference quantizers and dot products, checked two ways:
//! - against llama.cpp's `tests/test-quantize-fns.cpp`: its synthetic data, its RMSE measure and
//!   its per-type error bounds for quantize→dequantize and for the quantized dot product;
//! - the dot kernels against the f32 dot of the dequantized operands (1e-4 relative), for rows of
//!   256..4096 elements, on quantized real-valued data and on random-byte blocks, read unaligned.

mod common;

use common::Rng;
use orchard_core::DType;
use orchard_quant::{dequantize_row, quantize_row, traits, traits_for, vec_dot, Tier, QK_K};

const WEIGHT_TYPES: [DType; 5] = [
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

// Bounds of test-quantize-fns.cpp.
const MAX_QUANTIZATION_TOTAL_ERROR: f32 = 0.002;
const MAX_QUANTIZATION_TOTAL_ERROR_2BITS: f32 = 0.0075;
const MAX_QUANTIZATION_TOTAL_ERROR_3BITS: f32 = 0.0040;
const MAX_DOT_PRODUCT_ERROR: f32 = 0.02;
const MAX_DOT_PRODUCT_ERROR_LOWBIT: f32 = 0.04;

/// test-quantize-fns.cpp's `generate_data`: `0.1 + amplitude*cosf(i + offset)`, the sum taken in
/// double (0.1 is a double literal) and rounded to float on store.
fn generate_data(offset: f32, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1f64 + f64::from(amplitude * (i as f32 + offset).cos())) as f32)
        .collect()
}

/// test-quantize-fns.cpp's `array_rmse` (which is really sqrt(Σd²)/n).
fn array_rmse(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y) * f64::from(x - y))
        .sum();
    (sum.sqrt() as f32) / a.len() as f32
}

fn quantize(dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; x.len() / QK_K * dtype.block_bytes()];
    quantize_row(dtype, x, &mut q).unwrap_or_else(|e| panic!("{dtype}: {e}"));
    q
}

fn dequantize(dtype: DType, q: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; q.len() / dtype.block_bytes() * QK_K];
    dequantize_row(dtype, q, &mut y).unwrap_or_else(|e| panic!("{dtype}: {e}"));
    y
}

#[test]
fn kquant_traits_pair_with_q8_k() {
    for dtype in WEIGHT_TYPES {
        let t = traits(dtype).expect("K-quant in the table");
        assert_eq!(t.vec_dot_type, DType::Q8_K, "{dtype}");
        assert!(
            t.to_float.is_some() && t.from_float.is_some() && t.vec_dot.is_some(),
            "{dtype}"
        );
    }
    let t = traits(DType::Q8_K).expect("Q8_K in the table");
    assert!(t.to_float.is_some() && t.from_float.is_some());
}

#[test]
fn quantization_error_within_test_quantize_fns_bounds() {
    let test_size = 32 * 128;
    let data = generate_data(0.0, test_size, 2.0);
    let data2 = generate_data(1.0, test_size, 2.0);
    let mut report = Vec::new();
    for dtype in WEIGHT_TYPES.into_iter().chain([DType::Q8_K]) {
        let q = quantize(dtype, &data);
        let y = dequantize(dtype, &q);
        let err = array_rmse(&data, &y);
        let bound = match dtype {
            DType::Q2_K => MAX_QUANTIZATION_TOTAL_ERROR_2BITS,
            DType::Q3_K => MAX_QUANTIZATION_TOTAL_ERROR_3BITS,
            _ => MAX_QUANTIZATION_TOTAL_ERROR,
        };
        assert!(
            err < bound,
            "{dtype}: total quantization error {err} >= {bound}"
        );
        report.push(format!("{dtype} rmse {err:.6} (< {bound})"));
        // A broken quantizer that wrote nothing would score the data's own RMS instead.
        assert!(err < 0.5 * array_rmse(&data, &vec![0.0; test_size]));

        if dtype == DType::Q8_K {
            continue;
        }
        let act = quantize(DType::Q8_K, &data2);
        let result = vec_dot(dtype, test_size, &q, &act).unwrap();
        let dot_ref: f64 = data
            .iter()
            .zip(&data2)
            .map(|(&a, &b)| f64::from(a * b))
            .sum();
        let err = (result - dot_ref as f32).abs() / test_size as f32;
        let bound = if dtype == DType::Q2_K {
            MAX_DOT_PRODUCT_ERROR_LOWBIT
        } else {
            MAX_DOT_PRODUCT_ERROR
        };
        assert!(err < bound, "{dtype}: dot product error {err} >= {bound}");
        report.push(format!("{dtype} dot err {err:.6} (< {bound})"));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn more_bits_give_less_error_on_gaussian_data() {
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..64 * QK_K).map(|_| rng.normal()).collect();
    let errs: Vec<f32> = [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
    ]
    .iter()
    .map(|&d| {
        array_rmse(&x, &dequantize(d, &quantize(d, &x))) * x.len() as f32 / (x.len() as f32).sqrt()
    })
    .collect();
    eprintln!("relative rmse Q2_K..Q8_K: {errs:?}");
    for w in errs.windows(2) {
        assert!(w[1] < w[0], "error does not shrink with bits: {errs:?}");
    }
    // Rough expectations for N(0,1) data (each extra bit roughly halves the error).
    assert!(
        errs[0] < 0.45 && errs[2] < 0.12 && errs[4] < 0.035 && errs[5] < 0.01,
        "{errs:?}"
    );
}

#[test]
fn all_zero_and_constant_rows_round_trip() {
    for dtype in WEIGHT_TYPES.into_iter().chain([DType::Q8_K]) {
        let zeros = vec![0f32; 2 * QK_K];
        let y = dequantize(dtype, &quantize(dtype, &zeros));
        assert!(y.iter().all(|&v| v == 0.0), "{dtype}: zeros");
        // A constant negative row is representable by every format up to scale rounding.
        let c = vec![-0.75f32; QK_K];
        let y = dequantize(dtype, &quantize(dtype, &c));
        let err = y.iter().map(|&v| (v + 0.75).abs()).fold(0f32, f32::max);
        assert!(err < 0.01, "{dtype}: constant row max error {err}");
    }
}

/// Σ w·a over the dequantized operands, in f64, and Σ|w·a| (the scale of its rounding error).
fn dequant_dot(dtype: DType, w: &[u8], act: &[u8]) -> (f64, f64) {
    let wf = dequantize(dtype, w);
    let af = dequantize(DType::Q8_K, act);
    let mut sum = 0f64;
    let mut abs = 0f64;
    for (&a, &b) in wf.iter().zip(&af) {
        let p = f64::from(a) * f64::from(b);
        sum += p;
        abs += p.abs();
    }
    (sum, abs)
}

/// Copies `bytes` to an odd address so the kernel under test reads unaligned blocks.
fn unaligned(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut v = Vec::with_capacity(bytes.len() + 8);
    let start = if (v.as_ptr() as usize).is_multiple_of(2) {
        1
    } else {
        2
    };
    v.resize(start, 0xAA);
    v.extend_from_slice(bytes);
    (v, start)
}

const ROW_LENGTHS: [usize; 7] = [256, 512, 768, 1024, 2048, 3840, 4096];

#[test]
fn dot_matches_dequantized_f32_dot_on_quantized_data() {
    let mut rng = Rng::new(0xD07);
    let mut worst = vec![0f64; WEIGHT_TYPES.len()];
    for &n in &ROW_LENGTHS {
        for trial in 0..4 {
            // Activations correlated with the weights, so the dot is far from zero and a
            // relative bound on it is meaningful; a bias and varying scales per trial.
            let scale = 10f32.powi(trial - 2);
            let w: Vec<f32> = (0..n).map(|_| rng.normal() * scale + 0.1 * scale).collect();
            let a: Vec<f32> = w.iter().map(|&v| v / scale + 0.5 * rng.normal()).collect();
            let act = quantize(DType::Q8_K, &a);
            let (act_buf, aoff) = unaligned(&act);
            for (k, dtype) in WEIGHT_TYPES.into_iter().enumerate() {
                let q = quantize(dtype, &w);
                let (q_buf, qoff) = unaligned(&q);
                let got = vec_dot(dtype, n, &q_buf[qoff..], &act_buf[aoff..]).unwrap();
                let (want, _) = dequant_dot(dtype, &q, &act);
                let rel = (f64::from(got) - want).abs() / want.abs();
                assert!(
                    rel <= 1e-4,
                    "{dtype} n={n} trial={trial}: dot {got} vs dequantized {want} (rel {rel:e})"
                );
                worst[k] = worst[k].max(rel);
            }
        }
    }
    eprintln!("worst relative error vs dequantized f32 dot (Q2_K..Q6_K): {worst:?}");
}

#[test]
fn dot_matches_dequantized_f32_dot_on_random_blocks() {
    // Random bytes reach every packing pattern (negative Q6_K scales, all Q3_K scale bits, high
    // Q5_K bits) that real quantizer output may not; only the f16 scales are kept modest.
    // The dot of random signs can cancel to near zero, so the bound is relative to Σ|w·a|.
    let mut rng = Rng::new(0x5EED);
    let mut worst = vec![0f64; WEIGHT_TYPES.len()];
    for &n in &ROW_LENGTHS {
        for _ in 0..3 {
            let a: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
            let act = quantize(DType::Q8_K, &a);
            for (k, dtype) in WEIGHT_TYPES.into_iter().enumerate() {
                let mut w = vec![0u8; n / QK_K * dtype.block_bytes()];
                rng.fill_bytes(&mut w);
                for blk in w.chunks_exact_mut(dtype.block_bytes()) {
                    for &at in scale_fields(dtype) {
                        let d = half::f16::from_f32((rng.uniform() - 0.3) * 0.05);
                        blk[at..at + 2].copy_from_slice(&d.to_bits().to_le_bytes());
                    }
                }
                let got = vec_dot(dtype, n, &w, &act).unwrap();
                let (want, abs) = dequant_dot(dtype, &w, &act);
                let rel = (f64::from(got) - want).abs() / abs;
                assert!(
                    rel <= 1e-4,
                    "{dtype} n={n}: dot {got} vs dequantized {want} (err/Σ|wa| {rel:e})"
                );
                worst[k] = worst[k].max(rel);
            }
        }
    }
    eprintln!("worst error/Σ|w·a| on random blocks (Q2_K..Q6_K): {worst:?}");
}

fn scale_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

#[test]
fn dot_uses_q8_k_bsums_for_the_mins() {
    // Q2_K/Q4_K/Q5_K apply their mins through the activation's bsums. Corrupting the bsums must
    // change those dots (and only those), which proves the kernels read them. ggml's x86 Q6_K
    // kernel (which the scalar and SIMD tiers reproduce) also takes its -32 offset through them.
    let mut rng = Rng::new(11);
    let w: Vec<f32> = (0..QK_K).map(|_| rng.normal() + 1.5).collect();
    let a: Vec<f32> = (0..QK_K).map(|_| rng.normal() + 1.0).collect();
    let act = quantize(DType::Q8_K, &a);
    let mut bad = act.clone();
    bad[260] ^= 0x10; // bsums[0] low byte
    for tier in [Tier::Reference, Tier::Scalar, orchard_quant::active_tier()] {
        for dtype in WEIGHT_TYPES {
            let q = quantize(dtype, &w);
            let dot = traits_for(tier, dtype).unwrap().vec_dot.unwrap();
            let good = dot(QK_K, &q, &act);
            let corrupted = dot(QK_K, &q, &bad);
            let uses_mins = matches!(dtype, DType::Q2_K | DType::Q4_K | DType::Q5_K)
                || (dtype == DType::Q6_K && tier != Tier::Reference);
            assert_eq!(
                good != corrupted,
                uses_mins,
                "{tier:?} {dtype}: {good} vs {corrupted}"
            );
        }
    }
}
