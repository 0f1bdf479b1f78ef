//! Parses the two real models the project ships with and checks facts about them that were
//! read independently with the Python `gguf` package (gguf-py), so a parser bug shows up as a
//! mismatch with llama.cpp's own tooling.

use std::path::PathBuf;

use orchard_core::DType;
use orchard_gguf::{GgufFile, Value};

fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "model {p:?} is missing (set ORCHARD_MODELS or run scripts/fetch-models.sh)"
    );
    p
}

/// Every tensor's slice has exactly the size its shape and type imply, and tensors sit at
/// their recorded offsets.
fn check_all_slices(f: &GgufFile) {
    for t in f.tensors() {
        let data = f.tensor_data(t);
        let expect = t.dtype.row_bytes(t.row_len()).unwrap() * t.rows();
        assert_eq!(data.len() as u64, expect, "{}", t.name);
        assert_eq!(t.n_bytes, expect, "{}", t.name);
        let abs = (f.data_offset() + t.offset) as usize;
        assert_eq!(data.as_ptr(), f.as_bytes()[abs..].as_ptr(), "{}", t.name);
        assert!(std::ptr::eq(f.tensor(&t.name).unwrap(), t));
    }
}

#[test]
fn smollm2_parses() {
    let f = GgufFile::open(model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset(), 1_785_664);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.metadata().len(), 33);
    let count = |d: DType| f.tensors().iter().filter(|t| t.dtype == d).count();
    assert_eq!(
        (count(DType::Q4_1), count(DType::F32), count(DType::Q8_0)),
        (210, 61, 1)
    );

    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dtype, emb.dims.clone()),
        (DType::Q8_0, vec![576, 49152])
    );
    assert_eq!(
        (emb.row_len(), emb.rows(), emb.n_elements()),
        (576, 49152, 576 * 49152)
    );
    assert_eq!((emb.offset, emb.n_bytes), (0, 30_081_024));
    let down = f.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        (down.dtype, down.dims.clone()),
        (DType::Q4_1, vec![1536, 576])
    );
    assert_eq!(down.offset + f.data_offset(), 31_868_992);
    let norm = f.tensor("output_norm.weight").unwrap();
    assert_eq!(
        (norm.dtype, norm.dims.clone(), norm.n_bytes),
        (DType::F32, vec![576], 2304)
    );
    assert_eq!(f.tensors().last().unwrap().name, "output_norm.weight");
    assert!(f.tensor("no.such.tensor").is_none());

    let md = f.metadata();
    assert_eq!(md.require_u32("llama.block_count").unwrap(), 30);
    assert_eq!(md.require_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(md.require_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
    let tokens = md.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        md.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap()
            .len(),
        49152
    );
    assert!(
        md.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .unwrap()
            .len()
            > 40_000
    );
    assert!(matches!(md.get("general.languages"), Some(Value::Array(_))));
    check_all_slices(&f);
}

#[test]
fn gemma3_parses() {
    let f = GgufFile::open(model("gemma-3-270m-q4_k_m.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "gemma3");
    assert_eq!(f.data_offset(), 6_525_120);
    assert_eq!(f.tensors().len(), 236);
    assert_eq!(f.metadata().len(), 33);
    let count = |d: DType| f.tensors().iter().filter(|t| t.dtype == d).count();
    assert_eq!(
        [
            DType::F32,
            DType::Q5_0,
            DType::Q4_K,
            DType::Q8_0,
            DType::Q6_K
        ]
        .map(count),
        [109, 81, 27, 10, 9]
    );
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dtype, emb.dims.clone()),
        (DType::Q8_0, vec![640, 262144])
    );
    assert_eq!(
        (emb.offset, emb.n_bytes),
        (6_527_680 - 6_525_120, 178_257_920)
    );
    let k = f.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(
        (k.dtype, k.dims.clone(), k.n_bytes),
        (DType::Q5_0, vec![640, 256], 112_640)
    );
    assert_eq!(f.tensors()[0].name, "output_norm.weight");

    let md = f.metadata();
    assert_eq!(md.require_u32("gemma3.block_count").unwrap(), 18);
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    assert_eq!(
        md.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        262144
    );
    assert_eq!(
        md.get_f32_array("tokenizer.ggml.scores")
            .unwrap()
            .unwrap()
            .len(),
        262144
    );
    check_all_slices(&f);
}
