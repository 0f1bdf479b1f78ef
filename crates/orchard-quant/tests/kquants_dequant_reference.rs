//! K-quant dequantization must match the `gguf` package's numpy dequantizers bit for bit: on every
//! K-quant tensor of the gemma model and on random blocks of Q2_K..Q6_K and Q8_K.
//!
//! No ulp allowance is granted anywhere: numpy evaluates each element as the same chain of
//! separate float32 operations ggml's C does — Q2_K/Q4_K/Q5_K `(d·sc)·q − (dmin·m)`, Q3_K
//! `(d·(sc−32))·q`, Q6_K `(d·sc)·q`, Q8_K `d·q` — with f16→f32 widening exact on both sides, so
//! any difference is a real bug.

mod common;

use common::{assert_bits_equal, model_path, read_f32, run_python, Rng, ScratchDir};
use orchard_core::DType;
use orchard_gguf::GgufFile;
use orchard_quant::{
    dequantize_row, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K,
};

const SCRIPT: &str = "kquants_dequant_ref.py";
const MODEL: &str = "gemma-3-270m-q4_k_m.gguf";

/// Byte offsets of the f16 scale fields inside each block, which random bytes must not fill
/// with NaN/inf or huge values.
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

/// A finite f16 of modest size: mostly normal values in ±[2^-14, 2^3), with zeros and
/// subnormals mixed in so those widening paths are exercised too.
fn modest_f16(rng: &mut Rng) -> u16 {
    let sign = (rng.below(2) as u16) << 15;
    match rng.below(16) {
        0 => sign,                                                                // ±0
        1 => sign | (1 + rng.below(0x3ff) as u16),                                // subnormal
        _ => sign | ((1 + rng.below(17) as u16) << 10) | rng.below(0x400) as u16, // exp 1..17
    }
}

fn random_blocks(dtype: DType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let size = dtype.block_bytes();
    let mut bytes = vec![0u8; n_blocks * size];
    rng.fill_bytes(&mut bytes);
    for blk in bytes.chunks_exact_mut(size) {
        for &at in f16_fields(dtype) {
            blk[at..at + 2].copy_from_slice(&modest_f16(rng).to_le_bytes());
        }
        if dtype == DType::Q8_K {
            // f32 d: modest magnitude, sometimes zero or negative.
            let d = match rng.below(16) {
                0 => 0.0f32,
                _ => (rng.uniform() * 2.0 - 1.0) * 10f32.powi(rng.below(7) as i32 - 4),
            };
            blk[0..4].copy_from_slice(&d.to_le_bytes());
        }
    }
    bytes
}

fn dequant(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / dtype.block_bytes() * QK_K;
    let mut out = vec![0f32; n];
    dequantize_row(dtype, bytes, &mut out).unwrap_or_else(|e| panic!("{dtype}: {e}"));
    out
}

#[test]
fn block_sizes_match_ggml() {
    for (dtype, size) in [
        (DType::Q2_K, BlockQ2K::SIZE),
        (DType::Q3_K, BlockQ3K::SIZE),
        (DType::Q4_K, BlockQ4K::SIZE),
        (DType::Q5_K, BlockQ5K::SIZE),
        (DType::Q6_K, BlockQ6K::SIZE),
        (DType::Q8_K, BlockQ8K::SIZE),
    ] {
        assert_eq!(dtype.block_bytes(), size, "{dtype}");
        assert_eq!(dtype.block_size(), QK_K, "{dtype}");
    }
}

#[test]
fn dequant_matches_gguf_numpy_on_random_blocks_and_gemma() {
    const KQ: [DType; 6] = [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
    ];
    let scratch = ScratchDir::new("kquants-dequant");

    // Random blocks. Sliced at an odd offset so the kernels read them unaligned.
    let mut rng = Rng::new(0x4B51_5541_4E54);
    let mut random = Vec::new();
    for dtype in KQ {
        let mut padded = vec![0u8; 1];
        padded.extend(random_blocks(dtype, 3000, &mut rng));
        std::fs::write(
            scratch.join(&format!("rand_{0}.{0}.bin", py_name(dtype))),
            &padded[1..],
        )
        .unwrap();
        random.push((dtype, padded));
    }

    // Every K-quant tensor of the model, as raw bytes through orchard-gguf.
    let path = model_path(MODEL);
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let tensors: Vec<_> = gguf
        .tensors()
        .iter()
        .filter(|t| KQ.contains(&t.dtype))
        .collect();
    let n_of = |d: DType| tensors.iter().filter(|t| t.dtype == d).count();
    // The model's K-quant tensors are Q4_K and Q6_K (its token embedding is Q8_0, not ours).
    assert!(
        n_of(DType::Q4_K) > 0 && n_of(DType::Q6_K) > 0,
        "expected Q4_K and Q6_K tensors"
    );
    for (i, t) in tensors.iter().enumerate() {
        std::fs::write(
            scratch.join(&format!("model{i:03}.{}.bin", py_name(t.dtype))),
            gguf.tensor_data(t),
        )
        .unwrap();
    }

    run_python(SCRIPT, &[scratch.path().to_str().expect("utf-8 temp path")]);

    for (dtype, padded) in &random {
        let ours = dequant(*dtype, &padded[1..]);
        let reference = read_f32(&scratch.join(&format!("rand_{}.f32", py_name(*dtype))));
        assert_bits_equal(&format!("random {dtype}"), &ours, &reference);
    }

    let mut n_elements = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        let ours = dequant(t.dtype, gguf.tensor_data(t));
        assert_eq!(ours.len() as u64, t.n_elements(), "{}", t.name);
        let reference = read_f32(&scratch.join(&format!("model{i:03}.f32")));
        assert_bits_equal(&format!("{} ({})", t.name, t.dtype), &ours, &reference);
        n_elements += ours.len();
    }
    eprintln!(
        "bit-exact: {} random blocks per type ({} types), {} gemma tensors ({} Q4_K, {} Q6_K), {} elements",
        3000,
        KQ.len(),
        tensors.len(),
        n_of(DType::Q4_K),
        n_of(DType::Q6_K),
        n_elements
    );
}

/// gguf's spelling of the type name.
fn py_name(dtype: DType) -> String {
    dtype.name().to_uppercase()
}
