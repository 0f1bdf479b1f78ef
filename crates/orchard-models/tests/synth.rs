//! The synthetic-model writer: files load as llama or gemma3 models, follow llama.cpp's Q4_K_M
//! tensor mix, run, and can be written sparse for planning.

use orchard_backend::TokenSlot;
use orchard_core::DType;
use orchard_models::synth::{write_synthetic_llama, SynthArch, SynthSpec};
use orchard_models::{Batch, Context, ContextOptions, Model, ModelError};
use std::sync::Arc;

/// A fresh directory under the system temp dir (this crate has no tempfile dependency).
struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("orchard-synth-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(ftype: &str) -> SynthSpec {
    SynthSpec {
        arch: SynthArch::Llama,
        n_layer: 8,
        n_embd: 256,
        n_ff: 512,
        n_head: 4,
        n_head_kv: 2,
        head_dim: None,
        n_vocab: 1000,
        ftype: ftype.into(),
        seed: 42,
        sparse: false,
        tie_embeddings: false,
        row_pool: None,
    }
}

fn dtype_of(m: &Model, name: &str) -> DType {
    m.tensors.iter().find(|t| t.name == name).unwrap().dtype
}

#[test]
fn q4_k_m_mix_loads_and_runs() {
    let dir = TempDir::new("mix");
    let path = dir.path().join("synth.gguf");
    let summary = write_synthetic_llama(&path, &spec("Q4_K_M")).unwrap();
    let m = Arc::new(Model::load(&path).unwrap());
    assert_eq!(m.hp.n_layer, 8);
    assert_eq!(m.hp.n_vocab, 1000);
    assert_eq!(m.hp.n_head_kv, 2);
    // llama.cpp's use_more_bits for 8 layers: layers 0 and 7, and (i - 1) % 3 == 2 -> 3, 6.
    for il in 0..8 {
        let want = if [0, 3, 6, 7].contains(&il) {
            DType::Q6_K
        } else {
            DType::Q4_K
        };
        assert_eq!(
            dtype_of(&m, &format!("blk.{il}.attn_v.weight")),
            want,
            "layer {il}"
        );
        assert_eq!(
            dtype_of(&m, &format!("blk.{il}.ffn_down.weight")),
            want,
            "layer {il}"
        );
        assert_eq!(
            dtype_of(&m, &format!("blk.{il}.attn_q.weight")),
            DType::Q4_K
        );
        assert_eq!(
            dtype_of(&m, &format!("blk.{il}.attn_norm.weight")),
            DType::F32
        );
    }
    assert_eq!(dtype_of(&m, "output.weight"), DType::Q6_K);
    assert_eq!(dtype_of(&m, "token_embd.weight"), DType::Q4_K);
    assert_eq!(summary.tensor_bytes, m.weight_bytes());
    let expected_params =
        1000 * 256 * 2 + 256 + 8 * (2 * 256 + 2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 512);
    assert_eq!(summary.n_params, expected_params as u64);

    // The model runs and its logits are finite and not constant.
    assert_runs(&m, 1000);
}

#[test]
fn same_seed_same_file_other_seed_other_weights() {
    let dir = TempDir::new("seed");
    let (a, b, c) = (
        dir.path().join("a.gguf"),
        dir.path().join("b.gguf"),
        dir.path().join("c.gguf"),
    );
    let s = SynthSpec {
        n_layer: 2,
        ftype: "Q8_0".into(),
        ..spec("Q8_0")
    };
    write_synthetic_llama(&a, &s).unwrap();
    write_synthetic_llama(&b, &s).unwrap();
    write_synthetic_llama(
        &c,
        &SynthSpec {
            seed: 7,
            ..s.clone()
        },
    )
    .unwrap();
    let (ba, bb, bc) = (
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        std::fs::read(&c).unwrap(),
    );
    assert_eq!(ba, bb);
    assert_eq!(ba.len(), bc.len());
    assert_ne!(ba, bc);
    let m = Model::load(&a).unwrap();
    assert!(m
        .tensors
        .iter()
        .filter(|t| t.n_rows() > 1)
        .all(|t| t.dtype == DType::Q8_0));
}

#[test]
fn sparse_files_describe_without_storing() {
    let dir = TempDir::new("sparse");
    let path = dir.path().join("big.gguf");
    // An 8B-shaped file: 4.6 GB of tensor data, none of it written.
    let s = SynthSpec {
        sparse: true,
        ..SynthSpec::llama_8b("Q4_K_M")
    };
    let summary = write_synthetic_llama(&path, &s).unwrap();
    assert!(
        summary.tensor_bytes > 4_000_000_000,
        "{}",
        summary.tensor_bytes
    );
    let m = Model::load(&path).unwrap();
    assert_eq!(m.hp.n_layer, 32);
    assert_eq!(m.hp.n_ff, 14336);
    assert_eq!(m.weight_bytes(), summary.tensor_bytes);
    assert!(summary
        .types
        .iter()
        .any(|&(t, n)| t == DType::Q6_K && n > 0));
}

#[test]
fn row_pool_repeats_rows() {
    let dir = TempDir::new("pool");
    let path = dir.path().join("pool.gguf");
    let s = SynthSpec {
        row_pool: Some(8),
        ..spec("Q8_0")
    };
    write_synthetic_llama(&path, &s).unwrap();
    let m = Model::load(&path).unwrap();
    let t = m
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.ffn_up.weight")
        .unwrap();
    let row = t.dtype.row_bytes(t.row_len() as u64).unwrap() as usize;
    let b = t.bytes();
    assert_eq!(&b[..row], &b[8 * row..9 * row]);
    assert_ne!(&b[..row], &b[row..2 * row]);
}

#[test]
fn tied_embeddings_take_the_output_type() {
    let dir = TempDir::new("tied");
    let path = dir.path().join("tied.gguf");
    write_synthetic_llama(
        &path,
        &SynthSpec {
            tie_embeddings: true,
            ..spec("Q4_K_M")
        },
    )
    .unwrap();
    let m = Model::load(&path).unwrap();
    assert!(m.tensors.iter().all(|t| t.name != "output.weight"));
    assert_eq!(m.output, m.tok_embd);
    assert_eq!(dtype_of(&m, "token_embd.weight"), DType::Q6_K);
}

#[test]
fn bad_specs_are_errors() {
    let dir = TempDir::new("bad");
    let path = dir.path().join("x.gguf");
    for bad in [
        SynthSpec {
            ftype: "Q9_Z".into(),
            ..spec("Q4_0")
        },
        SynthSpec {
            n_head_kv: 3,
            ..spec("Q4_0")
        },
        SynthSpec {
            n_vocab: 100,
            ..spec("Q4_0")
        },
        SynthSpec {
            n_layer: 0,
            ..spec("Q4_0")
        },
        SynthSpec {
            head_dim: Some(7),
            ..small_gemma3()
        },
    ] {
        assert!(matches!(
            write_synthetic_llama(&path, &bad),
            Err(ModelError::BadHParam { .. })
        ));
    }
}

/// Gemma 3 270M's shape with a small vocabulary, six layers (five sliding, one global) and
/// pooled rows, so that it writes and runs in a debug test.
fn small_gemma3() -> SynthSpec {
    SynthSpec {
        n_layer: 6,
        n_vocab: 1000,
        row_pool: Some(16),
        ..SynthSpec::gemma3_270m("Q4_K_M")
    }
}

#[test]
fn gemma3_loads_with_its_shape_and_runs() {
    let dir = TempDir::new("gemma3");
    let path = dir.path().join("gemma3.gguf");
    let summary = write_synthetic_llama(&path, &small_gemma3()).unwrap();
    let m = Arc::new(Model::load(&path).unwrap());
    assert_eq!(m.hp.arch, "gemma3");
    assert_eq!((m.hp.n_layer, m.hp.n_embd, m.hp.n_ff), (6, 640, 2048));
    assert_eq!((m.hp.n_head, m.hp.n_head_kv), (4, 1));
    assert_eq!((m.hp.head_dim_k, m.hp.head_dim_v), (256, 256));
    assert_eq!(m.hp.rope_freq_base, 1e6);
    assert_eq!(m.hp.rms_eps, 1e-6);
    let windows: Vec<_> = (0..6).map(|il| m.arch.sliding_window(il)).collect();
    assert_eq!(
        windows,
        [Some(512); 5].into_iter().chain([None]).collect::<Vec<_>>()
    );
    assert_eq!(m.output, m.tok_embd);
    assert_eq!(summary.tensor_bytes, m.weight_bytes());
    // 640-wide rows are not whole K-quant blocks: Q4_K -> Q5_0, Q6_K -> Q8_0 as in llama.cpp.
    assert_eq!(dtype_of(&m, "token_embd.weight"), DType::Q8_0);
    assert_eq!(dtype_of(&m, "blk.1.attn_q.weight"), DType::Q5_0);
    // use_more_bits for 6 layers: 2 and 5.
    assert_eq!(dtype_of(&m, "blk.2.attn_v.weight"), DType::Q8_0);
    assert_eq!(dtype_of(&m, "blk.1.attn_v.weight"), DType::Q5_0);
    assert_eq!(dtype_of(&m, "blk.1.attn_output.weight"), DType::Q4_K);
    assert_eq!(dtype_of(&m, "blk.5.ffn_down.weight"), DType::Q6_K);
    assert_eq!(dtype_of(&m, "blk.1.ffn_down.weight"), DType::Q4_K);
    assert_eq!(dtype_of(&m, "blk.0.attn_q_norm.weight"), DType::F32);
    let expected_params = 1000 * 640
        + 640
        + 6 * (4 * 640 + 2 * 256 + 2 * 640 * 1024 + 2 * 640 * 256 + 3 * 640 * 2048);
    assert_eq!(summary.n_params, expected_params as u64);

    assert_runs(&m, 1000);
}

#[test]
fn gemma3_270m_full_shape_has_the_real_quant_mix() {
    let dir = TempDir::new("gemma3-full");
    let path = dir.path().join("gemma3-270m.gguf");
    let s = SynthSpec {
        sparse: true,
        ..SynthSpec::gemma3_270m("Q4_K_M")
    };
    let summary = write_synthetic_llama(&path, &s).unwrap();
    let types: Vec<DType> = summary.types.iter().map(|&(t, _)| t).collect();
    for t in [
        DType::F32,
        DType::Q4_K,
        DType::Q5_0,
        DType::Q6_K,
        DType::Q8_0,
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    assert_eq!(types.len(), 5, "{types:?}");
    // 18 layers of 13 tensors, token_embd and output_norm.
    assert_eq!(
        summary.types.iter().map(|&(_, n)| n).sum::<usize>(),
        18 * 13 + 2
    );
    // About 268M parameters, 170M of them the tied embedding.
    assert!(
        (260_000_000..280_000_000).contains(&summary.n_params),
        "{}",
        summary.n_params
    );
    let m = Model::load(&path).unwrap();
    assert_eq!(m.hp.n_vocab, 262144);
    assert_eq!(m.hp.n_layer, 18);
    assert_eq!(m.arch.sliding_window(5), None);
    assert_eq!(m.arch.sliding_window(6), Some(512));
}

/// The model decodes four tokens on the CPU, and the last one's `n_vocab` logits are finite
/// and not constant.
fn assert_runs(m: &Arc<Model>, n_vocab: usize) {
    let mut ctx = Context::new(
        m.clone(),
        ContextOptions {
            n_ctx: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = [5u32, 300, 999, 42];
    let slots: Vec<TokenSlot> = (0..4).map(|p| TokenSlot { seq: 0, pos: p }).collect();
    let cells: Vec<u32> = (0..16).collect();
    let tables = [cells.as_slice()];
    let mut out = Vec::new();
    ctx.decode(
        &Batch {
            tokens: &ids,
            slots: &slots,
            cells: &tables,
            logits: &[3],
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), n_vocab);
    assert!(out.iter().all(|v| v.is_finite()));
    let (lo, hi) = out
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(hi - lo > 1e-3, "logits are flat: {lo}..{hi}");
}
