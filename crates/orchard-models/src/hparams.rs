//! Hyper-parameters shared by the llama family, read from `{arch}.*` GGUF keys with llama.cpp's
//! defaults. Architecture-specific keys are read in each architecture's own file.

use crate::ModelError;
use orchard_gguf::GgufFile;

#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width of K and Q (`attention.key_length`, default n_embd / n_head).
    pub head_dim_k: usize,
    /// Per-head width of V (`attention.value_length`).
    pub head_dim_v: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    pub rope_freq_scale: f32,
    /// Rotated dimensions per head (`rope.dimension_count`, default head_dim_k).
    pub n_rot: usize,
}

impl HParams {
    pub fn from_gguf(f: &GgufFile, arch: &str) -> Result<HParams, ModelError> {
        let md = f.metadata();
        let key = |k: &str| format!("{arch}.{k}");
        let req = |k: &str| -> Result<usize, ModelError> { Ok(md.require_u32(&key(k))? as usize) };
        let n_layer = req("block_count")?;
        let n_embd = req("embedding_length")?;
        let n_ff = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = md
            .get_u32(&key("attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        let bad = |k: &str, reason: &str| ModelError::BadHParam {
            key: key(k),
            reason: reason.into(),
        };
        if n_layer == 0 || n_embd == 0 || n_head == 0 {
            return Err(bad(
                "block_count",
                "block_count, embedding_length and head_count must be non-zero",
            ));
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(
                "attention.head_count_kv",
                "must divide attention.head_count",
            ));
        }
        let head_dim_k = md
            .get_u32(&key("attention.key_length"))?
            .map_or(n_embd / n_head, |v| v as usize);
        let head_dim_v = md
            .get_u32(&key("attention.value_length"))?
            .map_or(n_embd / n_head, |v| v as usize);
        let n_rot = md
            .get_u32(&key("rope.dimension_count"))?
            .map_or(head_dim_k, |v| v as usize);
        if head_dim_k == 0 || n_rot > head_dim_k || n_rot % 2 != 0 {
            return Err(bad(
                "rope.dimension_count",
                "must be even and at most the head size",
            ));
        }
        let n_vocab = match md.get_u32(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => md
                .get_array("tokenizer.ggml.tokens")?
                .map(|a| a.len())
                .or_else(|| {
                    f.tensor("token_embd.weight")
                        .and_then(|t| t.dims.get(1).map(|&d| d as usize))
                })
                .ok_or_else(|| {
                    bad(
                        "vocab_size",
                        "no vocabulary size (no tokens array nor token_embd)",
                    )
                })?,
        };
        let rms_eps = md
            .get_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let rope_freq_base = md.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
        let mut rope_freq_scale = 1.0;
        if let Some(factor) = md.get_f32(&key("rope.scaling.factor"))? {
            let kind = md.get_str(&key("rope.scaling.type"))?.unwrap_or("linear");
            match kind {
                "linear" if factor > 0.0 => rope_freq_scale = 1.0 / factor,
                "none" | "linear" => {}
                other => {
                    return Err(bad(
                        "rope.scaling.type",
                        &format!("rope scaling '{other}' is not supported"),
                    ))
                }
            }
        }
        let n_ctx_train = md
            .get_u32(&key("context_length"))?
            .map_or(2048, |v| v as usize);
        Ok(HParams {
            arch: arch.to_string(),
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_vocab,
            n_ctx_train,
            rms_eps,
            rope_freq_base,
            rope_freq_scale,
            n_rot,
        })
    }

    pub fn n_embd_q(&self) -> usize {
        self.n_head * self.head_dim_k
    }
    pub fn n_embd_k_gqa(&self) -> usize {
        self.n_head_kv * self.head_dim_k
    }
    pub fn n_embd_v_gqa(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }
}
