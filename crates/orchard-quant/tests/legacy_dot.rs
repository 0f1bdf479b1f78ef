//! Dot products of the legacy formats and float types against their activation formats: they
//! must equal the dot of the dequantized rows (within 1e-4 relative), and stay within
//! test-quantize-fns.cpp's bounds against the unquantized data.

mod common;
#[path = "common/legacy_data.rs"]
mod legacy_data;

use common::Rng;
use legacy_data::generate_data;
use orchard_core::DType;
use orchard_quant::{dequantize_row, quantize_row, traits, traits_for, vec_dot, vec_dot_f32, Tier};

/// Weight types with a CPU dot product (Q8_1 is activation-only, as in ggml).
const WEIGHTS: [DType; 8] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
];

const MAX_QUANTIZATION_REFERENCE_ERROR: f32 = 0.0001;
const MAX_DOT_PRODUCT_ERROR: f32 = 0.02;

fn quantize(dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; x.len() / dtype.block_size() * dtype.block_bytes()];
    quantize_row(dtype, x, &mut q).unwrap();
    q
}

fn dequantize(dtype: DType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(dtype, q, &mut y).unwrap();
    y
}

fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The exact dot of the dequantized rows, as the kernel should see them. Q8_1 activations carry
/// `s = d * sum(q)` rounded to f16, and ggml's Q4_1/Q5_1 dots apply the weight minimum to that `s`
/// rather than to the dequantized activations; that is part of the format, so the reference does
/// the same: per block, sum((w - m) * a) + m * s.
fn reference_dot(dtype: DType, w: &[u8], act: &[u8], n: usize) -> f64 {
    let act_type = traits(dtype).unwrap().vec_dot_type;
    let dw = dequantize(dtype, w, n);
    let da = dequantize(act_type, act, n);
    if act_type != DType::Q8_1 {
        return dot_f64(&dw, &da);
    }
    let f16_at =
        |b: &[u8], at: usize| orchard_core::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    let (wb, ab) = (dtype.block_bytes(), act_type.block_bytes());
    let mut sum = 0f64;
    for (k, (dw, da)) in dw.chunks(32).zip(da.chunks(32)).enumerate() {
        let m = f16_at(&w[k * wb..], 2); // Q4_1/Q5_1: d at 0, m at 2
        let s = f16_at(&act[k * ab..], 2); // Q8_1: d at 0, s at 2
        let centred: f64 = dw
            .iter()
            .zip(da)
            .map(|(&x, &y)| (x - m) as f64 * y as f64)
            .sum();
        sum += centred + m as f64 * s as f64;
    }
    sum
}

fn check_dot_against_dequantized(dtype: DType, w_f: &[f32], a_f: &[f32], label: &str) -> f64 {
    let n = w_f.len();
    let act_type = traits(dtype).unwrap().vec_dot_type;
    let (w, act) = (quantize(dtype, w_f), quantize(act_type, a_f));
    let ours = vec_dot(dtype, n, &w, &act).unwrap() as f64;
    let reference = reference_dot(dtype, &w, &act, n);
    // Relative to the magnitude of the terms, so rows whose dot cancels to near zero are held
    // to the accuracy the accumulation actually has.
    let dw = dequantize(dtype, &w, n);
    let da = dequantize(act_type, &act, n);
    let scale = reference.abs().max(
        dot_f64(
            &dw.iter().map(|v| v.abs()).collect::<Vec<_>>(),
            &da.iter().map(|v| v.abs()).collect::<Vec<_>>(),
        ) / (n as f64).sqrt(),
    );
    let rel = (ours - reference).abs() / scale;
    assert!(
        rel <= 1e-4,
        "{dtype} {label} n={n}: ours {ours} reference {reference} (rel {rel:e})"
    );
    rel
}

#[test]
fn dot_matches_dot_of_dequantized_rows() {
    let mut rng = Rng::new(1234);
    for dtype in WEIGHTS {
        let mut worst = 0f64;
        for n in [256, 512, 1024, 2048, 4096] {
            let w: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            // Correlated activations: the dot is large and the relative error is meaningful.
            let a: Vec<f32> = w.iter().map(|&x| 0.5 * x + rng.normal()).collect();
            worst = worst.max(check_dot_against_dequantized(dtype, &w, &a, "correlated"));
            // Independent activations with an offset (exercises the Q*_1 minimum terms).
            let a: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0 + 0.7).collect();
            let w: Vec<f32> = w.iter().map(|&x| x * 0.02 - 0.01).collect();
            worst = worst.max(check_dot_against_dequantized(dtype, &w, &a, "independent"));
        }
        eprintln!("{dtype:>5}: worst relative error {worst:.2e}");
    }
}

#[test]
fn q8_1_sum_term_is_what_separates_plain_dequantized_dot() {
    // The plain dequantized dot differs from ggml's Q4_1 x Q8_1 dot only by m * (s - d * sum(q)),
    // which the f16 rounding of s bounds; check the kernel is on the right side of that.
    let mut rng = Rng::new(99);
    let n = 4096;
    let w: Vec<f32> = (0..n).map(|_| rng.normal() - 2.0).collect();
    let a: Vec<f32> = (0..n).map(|_| rng.normal() + 1.0).collect();
    for dtype in [DType::Q4_1, DType::Q5_1] {
        let (wq, aq) = (quantize(dtype, &w), quantize(DType::Q8_1, &a));
        let ours = vec_dot(dtype, n, &wq, &aq).unwrap() as f64;
        let plain = dot_f64(&dequantize(dtype, &wq, n), &dequantize(DType::Q8_1, &aq, n));
        let mut slack = 0f64;
        for (wb, ab) in wq.chunks(dtype.block_bytes()).zip(aq.chunks(36)) {
            let m = orchard_core::f16::from_le_bytes([wb[2], wb[3]]).to_f32() as f64;
            let s = orchard_core::f16::from_le_bytes([ab[2], ab[3]]).to_f32() as f64;
            // s carries up to half an f16 ulp from its own rounding plus d's (relative 2^-11 each).
            slack += (m * s).abs() * 2f64.powi(-10);
        }
        assert!(
            (ours - plain).abs() <= slack + 1e-4 * plain.abs(),
            "{dtype}: ours {ours} plain {plain} slack {slack}"
        );
    }
}

#[test]
fn dot_product_error_within_llama_cpp_bound() {
    let n = 32 * 128;
    let x = generate_data(0.0, n);
    let y = generate_data(1.0, n);
    let exact = dot_f64(&x, &y) as f32;
    for dtype in WEIGHTS {
        let act_type = traits(dtype).unwrap().vec_dot_type;
        let got = vec_dot(dtype, n, &quantize(dtype, &x), &quantize(act_type, &y)).unwrap();
        let err = (got - exact).abs() / n as f32;
        eprintln!("{dtype:>5} dot product error: {err:.6}");
        assert!(err < MAX_DOT_PRODUCT_ERROR, "{dtype}: {err}");
    }
}

#[test]
fn f32_dot_handles_any_length() {
    // test-quantize-fns.cpp's test_vec_dot_f32 lengths, including ones no SIMD width divides.
    for n in [
        1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 63, 67, 127, 129, 193, 255, 1023,
    ] {
        let a = generate_data(0.0, n);
        let b = generate_data(1.0, n);
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let got = vec_dot_f32(n, &bytes(&a), &bytes(&b));
        let reference = dot_f64(&a, &b) as f32;
        let err = (got - reference).abs() / n as f32;
        assert!(
            err < MAX_QUANTIZATION_REFERENCE_ERROR,
            "n={n}: {got} vs {reference}"
        );
        // ggml's scalar path sums the f32 products in f64: the result is that sum rounded once.
        let f64_of_f32_products: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
        assert_eq!(got, f64_of_f32_products as f32, "n={n}");
    }
}

#[test]
fn quantized_dots_apply_scales_in_ggml_order() {
    // Q8_0 x Q8_0 blocks whose scales make the grouping observable: ggml computes
    // sumi * (dx * dy), and (sumi * dx) * dy rounds differently for some scales. dx * dy of two
    // f16 is exact in f32, so sumi needs more than 13 significant bits for sumi * dx to round.
    let qw: Vec<i32> = (0..32).map(|j| 96 + j).collect();
    let qa: Vec<i32> = (0..32).map(|j| 127 - j).collect();
    let sumi: i32 = qw.iter().zip(&qa).map(|(x, y)| x * y).sum();
    let mut found = 0;
    for k in 1..200u16 {
        let dx = orchard_core::f16::from_bits(0x2C01 + k * 2); // odd mantissa: 11 significant bits
        let dy = orchard_core::f16::from_bits(0x3000 + k * 7);
        let expected = sumi as f32 * (dx.to_f32() * dy.to_f32());
        if expected == sumi as f32 * dx.to_f32() * dy.to_f32() {
            continue;
        }
        found += 1;
        let mut w = [0u8; 34];
        let mut a = [0u8; 34];
        w[..2].copy_from_slice(&dx.to_le_bytes());
        a[..2].copy_from_slice(&dy.to_le_bytes());
        for j in 0..32 {
            w[2 + j] = qw[j] as i8 as u8;
            a[2 + j] = qa[j] as i8 as u8;
        }
        // That is the generic kernel's order (the reference tier); ggml's x86 kernels scale
        // eight partial sums instead, which `lanes.rs` and the x86 cross-check cover.
        let dot = traits_for(Tier::Reference, DType::Q8_0)
            .unwrap()
            .vec_dot
            .unwrap();
        assert_eq!(dot(32, &w, &a), expected, "dy {dy}");
    }
    assert!(found > 0, "no scale pair separates the two orders");
}
