//! Reference quantizers of the legacy formats and float types: round trips stay within the error
//! bounds of llama.cpp's tests/test-quantize-fns.cpp (and tighter per-element bounds derived from
//! each format), and the bytes match the `gguf` package's numpy quantizers exactly.

mod common;
#[path = "common/legacy_data.rs"]
mod legacy_data;

use common::{run_python, write_f32, Rng, ScratchDir};
use legacy_data::{edge_blocks, generate_data, varied_blocks};
use orchard_core::{f16, DType};
use orchard_quant::{dequantize_row, quantize_row};
use std::fmt::Write as _;

const LEGACY: [DType; 9] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q8_1,
];

/// test-quantize-fns.cpp's `MAX_QUANTIZATION_TOTAL_ERROR`.
const MAX_QUANTIZATION_TOTAL_ERROR: f32 = 0.002;

fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; x.len() / dtype.block_size() * dtype.block_bytes()];
    quantize_row(dtype, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(dtype, &q, &mut y).unwrap();
    y
}

/// test-quantize-fns.cpp's `array_rmse`, which divides the root of the squared sum by n (so it is
/// not quite an RMSE, but it is what the bound was tuned for).
fn array_rmse(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    (sum.sqrt() as f32) / a.len() as f32
}

#[test]
fn total_quantization_error_within_llama_cpp_bound() {
    let data = generate_data(0.0, 32 * 128);
    for dtype in LEGACY {
        let err = array_rmse(&data, &round_trip(dtype, &data));
        eprintln!("{dtype:>5} absolute quantization error: {err:.6}");
        assert!(err < MAX_QUANTIZATION_TOTAL_ERROR, "{dtype}: {err}");
    }
}

/// Largest error a format may make on one block, from its construction: half a step for
/// rounding (a whole step for Q4_0/Q5_0, whose extreme maps to -8/-16 so a value of equal
/// magnitude and opposite sign is clamped to +7/+15), plus the f16 rounding of the scale times
/// the largest level, plus the f16 rounding of the minimum. The f16 roundings are measured, not
/// assumed relative: tiny scales land in f16's subnormal range.
fn block_error_bound(dtype: DType, x: &[f32]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    let max = x.iter().copied().fold(-f32::MAX, f32::max);
    let f16_err = |v: f32| (f16::from_f32(v).to_f32() - v).abs();
    let (step, rounding, levels, offset) = match dtype {
        DType::F32 => return 0.0,
        DType::F16 => return (amax * 2f32.powi(-11)).max(2f32.powi(-25)),
        DType::BF16 => return amax * 2f32.powi(-8),
        DType::Q4_0 => (amax / 8.0, 1.0, 8.0, 0.0),
        DType::Q5_0 => (amax / 16.0, 1.0, 16.0, 0.0),
        DType::Q8_0 | DType::Q8_1 => (amax / 127.0, 0.5, 127.0, 0.0),
        DType::Q4_1 => ((max - min) / 15.0, 0.5, 15.0, f16_err(min)),
        DType::Q5_1 => ((max - min) / 31.0, 0.5, 31.0, f16_err(min)),
        other => panic!("not a legacy type: {other}"),
    };
    (step * rounding + levels * f16_err(step) + offset) * (1.0 + 1e-5)
}

#[test]
fn every_element_within_its_block_bound() {
    let mut rng = Rng::new(42);
    let mut x = varied_blocks(&mut rng, 2048);
    x.extend(generate_data(0.0, 32 * 128));
    for dtype in LEGACY {
        let y = round_trip(dtype, &x);
        let mut worst = 0f32;
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let bound = block_error_bound(dtype, xb);
            for (i, (&a, &b)) in xb.iter().zip(yb).enumerate() {
                let err = (a - b).abs();
                assert!(
                    err <= bound,
                    "{dtype}: element {i} of block {xb:?}: {a} -> {b}, bound {bound}"
                );
                if bound > 0.0 {
                    worst = worst.max(err / bound);
                }
            }
        }
        eprintln!("{dtype:>5}: worst error {worst:.3} of bound");
    }
}

#[test]
fn zero_and_constant_blocks_round_trip_sensibly() {
    for dtype in LEGACY {
        let zeros = vec![0f32; 64];
        assert!(
            round_trip(dtype, &zeros).iter().all(|&v| v == 0.0),
            "{dtype}: zeros"
        );
        // A constant block has range zero: the Q*_1 formats store it entirely in `m`.
        // 127 * 2^-8 makes every format's scale exact in f16, so the round trip is lossless.
        let c = 127.0 * 2f32.powi(-8);
        let y = round_trip(dtype, &[c; 32]);
        assert!(
            y.iter().all(|&v| v == c),
            "{dtype}: constant block became {y:?}"
        );
    }
}

#[test]
fn bytes_match_gguf_python_quantizers() {
    let mut rng = Rng::new(0xBEEF);
    let mut x = edge_blocks();
    x.extend(varied_blocks(&mut rng, 4096));
    x.extend(generate_data(0.0, 32 * 128));
    // gguf has quantizers for all of these except Q8_1, where the script uses our own numpy
    // emulation of ggml's C (labelled there); F32 is a plain copy on both sides.
    let scratch = ScratchDir::new("quantize");
    let src = scratch.join("x.f32");
    write_f32(&src, &x);
    let mut jobs = String::new();
    for (i, dtype) in LEGACY.iter().enumerate() {
        let out = scratch.join(&format!("{i}.bin"));
        writeln!(
            jobs,
            "{}\t{}\t{}",
            dtype.name().to_uppercase(),
            src.display(),
            out.display()
        )
        .unwrap();
    }
    let job_file = scratch.join("jobs.tsv");
    std::fs::write(&job_file, jobs).unwrap();
    run_python(
        "dequant_reference.py",
        &["quantize", job_file.to_str().unwrap()],
    );

    for (i, &dtype) in LEGACY.iter().enumerate() {
        let reference = std::fs::read(scratch.join(&format!("{i}.bin"))).unwrap();
        let mut ours = vec![0u8; x.len() / dtype.block_size() * dtype.block_bytes()];
        quantize_row(dtype, &x, &mut ours).unwrap();
        assert_eq!(ours.len(), reference.len(), "{dtype}: length");
        let bb = dtype.block_bytes();
        let bad: Vec<usize> = ours
            .chunks(bb)
            .zip(reference.chunks(bb))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(k, _)| k)
            .collect();
        assert!(
            bad.is_empty(),
            "{dtype}: {} of {} blocks differ; first {}: ours {:02x?} ref {:02x?}",
            bad.len(),
            ours.len() / bb,
            bad[0],
            &ours[bad[0] * bb..(bad[0] + 1) * bb],
            &reference[bad[0] * bb..(bad[0] + 1) * bb]
        );
    }
}

#[test]
fn float_types_follow_ggml_rounding_and_nan_rules() {
    let mut out = [0u8; 8];
    // ggml's FP32_TO_FP16 canonicalises NaN to 0x7E00 (numpy and `half` keep the payload).
    quantize_row(
        DType::F16,
        &[
            f32::from_bits(0x7FC1_2345),
            f32::from_bits(0xFF80_0001),
            65520.0,
            -0.0,
        ],
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [0x00, 0x7E, 0x00, 0xFE, 0x00, 0x7C, 0x00, 0x80]);
    // bf16 keeps the top payload bits and forces the quiet bit.
    quantize_row(
        DType::BF16,
        &[
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFA1_FFFF),
            1.0,
            f32::MAX,
        ],
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [0xC0, 0x7F, 0xE1, 0xFF, 0x80, 0x3F, 0x80, 0x7F]);
}
