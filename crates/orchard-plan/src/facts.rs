//! What the plan needs to know about a model, read from the GGUF header through
//! `orchard_models::Model::load` (which maps the file without reading tensor bytes): shapes,
//! per-layer weight bytes and KV widths, and the sizes of the host-side tables built from the
//! metadata. Everything here is a pure function of the file, so a plan can be recomputed for
//! other flags (`--fit`, suggestions) without opening it again.

use crate::PlanError;
use orchard_core::DType;
use orchard_gguf::{Metadata, Value};
use orchard_models::{Model, TensorRef};
use std::path::Path;

/// One repeating layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerFacts {
    pub weight_bytes: u64,
    /// Single-row tensors (norms, biases): the CPU backend keeps an f32 copy of each.
    pub vector_f32_bytes: u64,
    pub k_width: usize,
    pub v_width: usize,
    pub window: Option<usize>,
    /// `n_embd`-wide norm weights: each norm writes its own named `[rows, n_embd]` buffer.
    pub embd_norms: usize,
    /// Widest activation row a matmul of this layer quantizes (bytes, in `vec_dot_type`).
    pub max_act_row_bytes: u64,
    /// Most output rows of a matmul of this layer (the transposed multi-token scratch).
    pub max_out_rows: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct ModelFacts {
    pub file_name: String,
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub layers: Vec<LayerFacts>,
    pub token_embd_bytes: u64,
    /// `output.weight` bytes; equal to `token_embd_bytes` when the head is tied to it.
    pub output_bytes: u64,
    pub output_tied: bool,
    pub output_act_row_bytes: u64,
    pub output_norm_bytes: u64,
    /// Global tensors other than token_embd / output / output_norm (rope_freqs, ...).
    pub other_global_bytes: u64,
    /// f32 copies the CPU backend makes of single-row global tensors.
    pub global_vector_f32_bytes: u64,
    pub weight_bytes: u64,
    pub file_bytes: u64,
    /// Header and metadata at the start of the file (read, hence resident, while parsing).
    pub header_bytes: u64,
    /// Parsed metadata values on the heap.
    pub metadata_heap_bytes: u64,
    /// Tensor info / name tables of the reader and the model.
    pub tables_bytes: u64,
    pub tokenizer_bytes: u64,
    pub tokenizer_desc: String,
}

/// Bytes glibc's malloc hands out for a request of `n` (16-byte aligned chunks with an 8-byte
/// header, 32 at least); zero-sized Rust allocations take nothing.
pub(crate) fn chunk(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// Buckets a hashbrown table holding `n` items has (7/8 load factor, power of two).
pub(crate) fn hash_buckets(n: u64) -> u64 {
    if n == 0 {
        0
    } else if n < 8 {
        if n < 4 {
            4
        } else {
            8
        }
    } else {
        (n * 8 / 7).next_power_of_two()
    }
}

/// `size_of::<Value>()`: every metadata value, array items included, is one of these.
const VALUE_BYTES: u64 = std::mem::size_of::<Value>() as u64;

fn value_heap(v: &Value) -> u64 {
    match v {
        Value::String(s) => chunk(s.len() as u64),
        Value::Array(items) => {
            chunk(items.len() as u64 * VALUE_BYTES) + items.iter().map(value_heap).sum::<u64>()
        }
        _ => 0,
    }
}

/// Heap taken by a parsed metadata section: the entry vector, each key twice (entries and the
/// hash index) and every value's own allocations.
pub(crate) fn metadata_heap(md: &Metadata) -> u64 {
    let n = md.len() as u64;
    let entry = std::mem::size_of::<(String, Value)>() as u64;
    let index_slot = std::mem::size_of::<(String, usize)>() as u64 + 1;
    let mut total = chunk(n * entry) + chunk(hash_buckets(n) * index_slot);
    for (k, v) in md.iter() {
        total += 2 * chunk(k.len() as u64) + value_heap(v);
    }
    total
}

/// Heap of an `orchard_tokenizer::Tokenizer` built from this metadata: one string arena and its
/// hash index, per-token ends / scores / attributes, the detokenizer's piece cache and, for BPE,
/// the merge table and the merge halves it interns. Derived from the tokenizer's structures
/// (crates/orchard-tokenizer/src/{lib,strings,bpe}.rs) and checked by the measured-RSS test.
pub(crate) fn tokenizer_heap(md: &Metadata) -> (u64, String) {
    let Ok(Some(tokens)) = md.get_array("tokenizer.ggml.tokens") else {
        return (0, "no vocabulary in the file".into());
    };
    let n = tokens.len() as u64;
    let text: u64 = tokens
        .iter()
        .map(|t| t.as_str().map_or(0, |s| s.len() as u64))
        .sum();
    let kind = md
        .get_str("tokenizer.ggml.model")
        .ok()
        .flatten()
        .unwrap_or("?")
        .to_string();
    let (n_merges, merge_text) = match md.get_array("tokenizer.ggml.merges") {
        Ok(Some(m)) => (
            m.len() as u64,
            m.iter()
                .map(|t| t.as_str().map_or(0, |s| s.len() as u64))
                .sum::<u64>(),
        ),
        _ => (0, 0),
    };
    // Strings arena: text, an end offset per string, a u32 bucket + control byte per slot.
    // BPE interns merge halves that are not tokens; most are, so only a fraction is added.
    let extra_strings = n_merges / 4;
    let extra_text = merge_text / 8;
    let n_strings = n + extra_strings;
    let arena = text + extra_text + 8 * n_strings + hash_buckets(n_strings) * 5;
    let per_token = 4 + 2; // scores (f32) + attributes (u16)
    let pieces = text + 8 * n; // detokenized piece cache and its end offsets
    let merges = hash_buckets(n_merges) * (8 + 8 + 1);
    let total = arena + per_token * n + pieces + merges;
    let desc = if n_merges > 0 {
        format!("{kind}, {n} tokens, {n_merges} merges")
    } else {
        format!("{kind}, {n} tokens")
    };
    (total, desc)
}

impl ModelFacts {
    pub fn load(path: &Path) -> Result<ModelFacts, PlanError> {
        let model = Model::load(path)?;
        Ok(ModelFacts::from_model(&model, path))
    }

    pub fn from_model(model: &Model, path: &Path) -> ModelFacts {
        let hp = &model.hp;
        let mut layers: Vec<LayerFacts> = (0..hp.n_layer)
            .map(|il| {
                let (k_width, v_width) = model.arch.kv_width(il);
                LayerFacts {
                    weight_bytes: 0,
                    vector_f32_bytes: 0,
                    k_width,
                    v_width,
                    window: model.arch.sliding_window(il),
                    embd_norms: 0,
                    max_act_row_bytes: 0,
                    max_out_rows: 0,
                }
            })
            .collect();
        let mut other_global_bytes = 0;
        let mut global_vector_f32_bytes = 0;
        let mut tables_bytes = 0;
        for (i, w) in model.tensors.iter().enumerate() {
            let r = TensorRef(i as u32);
            let bytes = w.range.len() as u64;
            let n_el: u64 = w.dims.iter().product();
            let is_vector = w.n_rows() == 1;
            tables_bytes +=
                3 * chunk(w.name.len() as u64) + 2 * chunk(8 * w.dims.len() as u64) + 160;
            match model.tensor_layer(r).and_then(|il| layers.get_mut(il)) {
                Some(l) => {
                    l.weight_bytes += bytes;
                    if is_vector {
                        l.vector_f32_bytes += 4 * n_el;
                        if w.name.ends_with("norm.weight") && w.row_len() == hp.n_embd {
                            l.embd_norms += 1;
                        }
                    } else {
                        l.max_act_row_bytes =
                            l.max_act_row_bytes.max(act_row_bytes(w.dtype, w.row_len()));
                        l.max_out_rows = l.max_out_rows.max(w.n_rows() as u64);
                    }
                }
                None => {
                    if is_vector {
                        global_vector_f32_bytes += 4 * n_el;
                    }
                    if r != model.tok_embd && r != model.output && r != model.output_norm {
                        other_global_bytes += bytes;
                    }
                }
            }
        }
        let bytes_of = |r: TensorRef| model.tensor(r).range.len() as u64;
        let out = model.tensor(model.output);
        let md = model.file.metadata();
        let (tokenizer_bytes, tokenizer_desc) = tokenizer_heap(md);
        ModelFacts {
            file_name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            arch: hp.arch.clone(),
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
            n_ff: hp.n_ff,
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim_k: hp.head_dim_k,
            head_dim_v: hp.head_dim_v,
            n_vocab: hp.n_vocab,
            n_ctx_train: hp.n_ctx_train,
            layers,
            token_embd_bytes: bytes_of(model.tok_embd),
            output_bytes: bytes_of(model.output),
            output_tied: model.output == model.tok_embd,
            output_act_row_bytes: act_row_bytes(out.dtype, out.row_len()),
            output_norm_bytes: bytes_of(model.output_norm),
            other_global_bytes,
            global_vector_f32_bytes,
            weight_bytes: model.weight_bytes(),
            file_bytes: model.file.file_len(),
            header_bytes: model.file.data_offset(),
            metadata_heap_bytes: metadata_heap(md),
            tables_bytes,
            tokenizer_bytes,
            tokenizer_desc,
        }
    }

    /// The arch's layer-0 picture of the residual-stream norm buffers (at least the two every
    /// pre-norm block has).
    pub fn embd_norms(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.embd_norms)
            .max()
            .unwrap_or(0)
            .max(2)
    }
}

/// Bytes of one activation row of `cols` values quantized to the `vec_dot_type` of `dtype`
/// (what the CPU backend's matmul writes into its scratch before the dot products).
fn act_row_bytes(dtype: DType, cols: usize) -> u64 {
    orchard_quant::traits(dtype)
        .and_then(|t| t.vec_dot_type.row_bytes(cols as u64))
        .unwrap_or(4 * cols as u64)
}
