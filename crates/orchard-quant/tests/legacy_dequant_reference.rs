//! Dequantization of the legacy block formats and float types must match the `gguf` package's
//! numpy dequantizers bit for bit: on every such tensor of both real models, and on random blocks
//! of every format. No ulp allowance is needed (or granted): numpy evaluates `d * q` and
//! `d * q + m` as separate float32 operations in ggml's order, and `d * q` (an f16 times an
//! integer of at most 8 bits) is exact in f32 anyway, so only the `+ m` rounds, identically.

mod common;

use common::{assert_bits_equal, model_path, read_f32, run_python, Rng, ScratchDir};
use orchard_core::DType;
use orchard_gguf::GgufFile;
use orchard_quant::{dequantize_row, dequantize_row_f16};
use std::collections::BTreeSet;
use std::fmt::Write as _;

const SCRIPT: &str = "dequant_reference.py";

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

/// Name the Python script uses for a type (gguf's enum spelling).
fn py_name(dtype: DType) -> String {
    dtype.name().to_uppercase()
}

fn check_model(file: &str, must_cover: &[DType]) {
    let path = model_path(file);
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let selected: Vec<_> = gguf
        .tensors()
        .iter()
        .filter(|t| LEGACY.contains(&t.dtype))
        .collect();
    let covered: BTreeSet<&str> = selected.iter().map(|t| t.dtype.name()).collect();
    for dtype in must_cover {
        assert!(
            covered.contains(dtype.name()),
            "{file}: no {dtype} tensor found"
        );
    }

    let scratch = ScratchDir::new("model");
    let mut jobs = String::new();
    for (i, t) in selected.iter().enumerate() {
        let offset = gguf.data_offset() + t.offset;
        let out = scratch.join(&format!("{i}.f32"));
        writeln!(
            jobs,
            "{}\t{}\t{offset}\t{}\t{}",
            py_name(t.dtype),
            path.display(),
            t.n_bytes,
            out.display()
        )
        .unwrap();
    }
    let job_file = scratch.join("jobs.tsv");
    std::fs::write(&job_file, jobs).unwrap();
    run_python(SCRIPT, &["dequant", job_file.to_str().unwrap()]);

    let mut n_values = 0usize;
    for (i, t) in selected.iter().enumerate() {
        let n = usize::try_from(t.n_elements()).unwrap();
        let mut ours = vec![0f32; n];
        dequantize_row(t.dtype, gguf.tensor_data(t), &mut ours)
            .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        let ref_path = scratch.join(&format!("{i}.f32"));
        let reference = read_f32(&ref_path);
        // Free disk as we go: the reference of gemma's embedding alone is 670 MB.
        let _ = std::fs::remove_file(&ref_path);
        assert_bits_equal(
            &format!("{file} {} ({})", t.name, t.dtype),
            &ours,
            &reference,
        );
        n_values += n;
    }
    eprintln!(
        "{file}: {} tensors ({covered:?}), {n_values} values bit-identical to gguf.quants",
        selected.len()
    );
}

#[test]
fn smollm2_tensors_match_gguf_reference() {
    check_model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        &[DType::Q4_1, DType::Q8_0, DType::F32],
    );
}

#[test]
fn gemma3_tensors_match_gguf_reference() {
    check_model(
        "gemma-3-270m-q4_k_m.gguf",
        &[DType::Q5_0, DType::Q8_0, DType::F32],
    );
}

/// Byte offsets of the f16 scale fields (`d`, and `m` or `s`) inside one block.
fn scale_offsets(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q8_1 => &[0, 2],
        _ => &[],
    }
}

/// Random raw data of `dtype`: every bit pattern is fair game except NaN halves/bf16s and
/// non-finite block scales. NaN is left out because numpy widens f16 NaNs without setting the
/// quiet bit while ggml (and we) set it; `f16_nan_widens_to_quiet_nan` covers our side.
fn random_raw(rng: &mut Rng, dtype: DType, n_blocks: usize) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut raw = vec![0u8; n_blocks * bb];
    rng.fill_bytes(&mut raw);
    match dtype {
        DType::F16 => {
            for h in raw.chunks_exact_mut(2) {
                let v = u16::from_le_bytes([h[0], h[1]]);
                if v & 0x7C00 == 0x7C00 && v & 0x03FF != 0 {
                    h.copy_from_slice(&(v & !0x4000).to_le_bytes());
                }
            }
        }
        DType::BF16 => {
            for h in raw.chunks_exact_mut(2) {
                let v = u16::from_le_bytes([h[0], h[1]]);
                if v & 0x7F80 == 0x7F80 && v & 0x007F != 0 {
                    h.copy_from_slice(&(v & !0x4000).to_le_bytes());
                }
            }
        }
        _ => {
            for block in raw.chunks_exact_mut(bb) {
                for &at in scale_offsets(dtype) {
                    let v = u16::from_le_bytes([block[at], block[at + 1]]);
                    // Clearing the top exponent bit turns inf/NaN into an ordinary finite value.
                    let v = if v & 0x7C00 == 0x7C00 { v & !0x4000 } else { v };
                    block[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    raw
}

#[test]
fn random_blocks_of_every_format_match_gguf_reference() {
    let mut rng = Rng::new(0x5EED_1E6A);
    let scratch = ScratchDir::new("random");
    let mut jobs = String::new();
    let mut cases = Vec::new();
    for (i, &dtype) in LEGACY.iter().enumerate() {
        // Float types have 1-element "blocks"; give them as many values as the quant formats.
        let n_values = 32 * 4096;
        let n_blocks = n_values / dtype.block_size();
        let raw = random_raw(&mut rng, dtype, n_blocks);
        let src = scratch.join(&format!("{i}.bin"));
        let out = scratch.join(&format!("{i}.f32"));
        std::fs::write(&src, &raw).unwrap();
        writeln!(
            jobs,
            "{}\t{}\t0\t{}\t{}",
            py_name(dtype),
            src.display(),
            raw.len(),
            out.display()
        )
        .unwrap();
        cases.push((dtype, raw, n_values, out));
    }
    let job_file = scratch.join("jobs.tsv");
    std::fs::write(&job_file, jobs).unwrap();
    run_python(SCRIPT, &["dequant", job_file.to_str().unwrap()]);

    for (dtype, raw, n_values, out) in cases {
        let mut ours = vec![0f32; n_values];
        dequantize_row(dtype, &raw, &mut ours).unwrap();
        assert_bits_equal(&format!("random {dtype}"), &ours, &read_f32(&out));
    }
}

#[test]
fn unaligned_input_dequantizes_the_same() {
    let mut rng = Rng::new(7);
    for dtype in LEGACY {
        let raw = random_raw(&mut rng, dtype, 64);
        let n = 64 * dtype.block_size();
        let mut shifted = vec![0u8; raw.len() + 1];
        shifted[1..].copy_from_slice(&raw);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        dequantize_row(dtype, &raw, &mut a).unwrap();
        dequantize_row(dtype, &shifted[1..], &mut b).unwrap();
        assert_bits_equal(&format!("unaligned {dtype}"), &b, &a);
    }
}

#[test]
fn f16_nan_widens_to_quiet_nan() {
    // ggml widens with an f32 multiply, which quiets a signalling NaN and keeps its payload.
    let mut out = [0f32; 2];
    dequantize_row_f16(&[0x01, 0x7C, 0x00, 0xFE], &mut out);
    assert_eq!(out[0].to_bits(), 0x7FC0_2000);
    assert_eq!(out[1].to_bits(), 0xFFC0_0000);
}
