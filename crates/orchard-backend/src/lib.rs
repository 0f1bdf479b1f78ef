//! The compute interface model code is written against, and its CPU implementation.
//!
//! A model's forward pass is a sequence of calls on `&mut dyn Backend` over opaque handles:
//! activation buffers (`BufId`, row-major `[n_tokens, width]` f32) and weights (`WeightId`) that
//! the backend owns. Handles keep the interface object-safe and let a GPU backend keep everything
//! device-resident and record the calls into one command submission per step, flushed by `sync`
//! or `download`. Layer offload (`-ngl`) runs some layers on one backend and the rest on another,
//! moving the residual stream across with one `download`/`upload` at the boundary.

mod attention_quant;
mod cpu;
mod ggml_order;
mod ops;
mod pool;
pub mod vec_math;

pub use cpu::CpuBackend;
pub use ops::{gelu_tanh_f16_rounded, rope_cache, silu};

use orchard_core::DType;
use std::ops::Range;
use std::sync::Arc;

/// An activation buffer owned by a backend: `n_tokens` rows of `width` f32 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufId(pub u32);

/// A weight tensor uploaded to (or borrowed by) a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightId(pub u32);

/// Something that holds weight bytes for as long as a backend needs them (an mmapped GGUF).
pub trait ByteSource: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// Says that `range` of `bytes()` will not be read again soon (a backend keeps its own
    /// copy), so a mapped file may drop those pages from the resident set. Reading them later
    /// must still work. The default does nothing.
    fn release(&self, range: Range<usize>) {
        let _ = range;
    }
}

impl ByteSource for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A weight as it lies in host memory: `dims[0]` is the row length (ggml's ne0).
#[derive(Clone)]
pub struct HostWeight {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<u64>,
    pub source: Arc<dyn ByteSource>,
    pub range: Range<usize>,
}

impl HostWeight {
    pub fn bytes(&self) -> &[u8] {
        &self.source.bytes()[self.range.clone()]
    }
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
    /// Builds a weight from owned f32 values (tests, synthetic layers).
    pub fn from_f32(name: &str, dims: Vec<u64>, values: &[f32]) -> HostWeight {
        let bytes: Vec<u8> = bytemuck::cast_slice(values).to_vec();
        let len = bytes.len();
        HostWeight {
            name: name.into(),
            dtype: DType::F32,
            dims,
            source: Arc::new(bytes),
            range: 0..len,
        }
    }
}

impl std::fmt::Debug for HostWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostWeight")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("dims", &self.dims)
            .finish()
    }
}

/// Rotary embedding parameters for one layer (ggml's `ggml_rope_ext` arguments that we use).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// Rotated dimensions per head (`rope.dimension_count`), the rest pass through.
    pub n_rot: usize,
    pub head_dim: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// NeoX ordering rotates (x[i], x[i + n_rot/2]); the normal one rotates (x[2i], x[2i+1]).
    pub neox: bool,
}

impl RopeParams {
    /// The channel pairs this RoPE rotates together.
    pub fn pairs(&self) -> RopePairs {
        if self.neox {
            RopePairs::Halves { n_rot: self.n_rot }
        } else {
            RopePairs::Adjacent { n_rot: self.n_rot }
        }
    }
}

/// Which channels of a K head RoPE rotates together: a per-channel transform of cached K (the
/// quantized cache's K smoothing) must treat both channels of a pair alike to hold at every
/// position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RopePairs {
    /// No RoPE, or not known: every channel stands alone.
    #[default]
    None,
    /// (2i, 2i + 1) for 2i < n_rot: the normal order.
    Adjacent { n_rot: usize },
    /// (i, i + n_rot / 2) for i < n_rot / 2: NeoX.
    Halves { n_rot: usize },
}

impl RopePairs {
    /// The partner of channel `c` of a head, if RoPE pairs it.
    pub fn partner(&self, c: usize) -> Option<usize> {
        match *self {
            RopePairs::None => None,
            RopePairs::Adjacent { n_rot } => (c < n_rot / 2 * 2).then_some(c ^ 1),
            RopePairs::Halves { n_rot } => {
                let half = n_rot / 2;
                if c < half {
                    Some(c + half)
                } else if c < 2 * half {
                    Some(c - half)
                } else {
                    None
                }
            }
        }
    }
}

/// Where each token of a step sits: its sequence (index into `AttnBatch::cells`) and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSlot {
    pub seq: u32,
    pub pos: u32,
}

/// The attention view of a step: per token its slot, and per sequence the KV cell holding each
/// position `0..len` (a paged cache flattened into a cell table). A token at position `p`
/// writes its K/V to `cells[seq][p]` and attends to the cells of positions `0..=p`.
#[derive(Debug, Clone, Copy)]
pub struct AttnBatch<'a> {
    pub tokens: &'a [TokenSlot],
    pub cells: &'a [&'a [u32]],
}

impl AttnBatch<'_> {
    /// The KV cell of `tok` (where its K and V are stored), checked against a cache of
    /// `n_cells` cells: a missing entry or a cell past the cache is an error, not a panic.
    pub fn cell_of(&self, tok: &TokenSlot, n_cells: usize) -> Result<usize, BackendError> {
        let cell = *self
            .cells
            .get(tok.seq as usize)
            .and_then(|c| c.get(tok.pos as usize))
            .ok_or(BackendError::MissingCell {
                seq: tok.seq,
                pos: tok.pos,
            })?;
        if cell as usize >= n_cells {
            return Err(BackendError::CellOutOfRange { cell, n_cells });
        }
        Ok(cell as usize)
    }
}

/// Per-layer attention shape and masking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    /// Multiplier applied to Q·K (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Sliding window: a token at `p` sees positions `p - window + 1 ..= p` only.
    pub window: Option<usize>,
    /// tanh soft-capping of the scores (Gemma 2), `None` when unused.
    pub softcap: Option<f32>,
}

/// One layer's KV storage: `n_cells` rows of K (`k_width` values, heads of `head_dim_k`) in
/// `type_k` and of V in `type_v`. Block types need whole blocks per head (a head is read on
/// its own), as in llama.cpp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_cells: usize,
    pub k_width: usize,
    pub v_width: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub type_k: DType,
    pub type_v: DType,
    /// RoPE's channel pairs in K (for a quantized K's smoothing).
    pub k_rope_pairs: RopePairs,
}

/// Gated linear unit flavours of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GluKind {
    /// silu(gate) * up (Llama, Qwen, Mistral)
    SwiGlu,
    /// gelu_tanh(gate) * up (Gemma)
    GeGlu,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("weight {name}: type {dtype} is not supported by the {backend} backend")]
    UnsupportedType {
        name: String,
        dtype: DType,
        backend: String,
    },
    #[error("weight {name}: {len} bytes do not hold a {dtype} tensor of shape {dims:?}")]
    BadWeight {
        name: String,
        dtype: DType,
        dims: Vec<u64>,
        len: usize,
    },
    #[error("KV cache for layer {layer} is not allocated on this backend")]
    NoKvCache { layer: usize },
    #[error("KV cell {cell} is outside the cache of {n_cells} cells")]
    CellOutOfRange { cell: u32, n_cells: usize },
    #[error("token at position {pos} of sequence {seq} has no KV cell")]
    MissingCell { seq: u32, pos: u32 },
    #[error("KV cache type {dtype} is not supported by the {backend} backend: {reason}")]
    UnsupportedKvType {
        dtype: DType,
        backend: String,
        reason: String,
    },
    #[error("{0}")]
    Device(String),
}

/// The operations a model's forward pass needs. Every buffer argument is a handle from this
/// backend's `alloc`; shapes are checked by the implementation where cheap (debug asserts)
/// because the model code computes them from validated hyper-parameters.
pub trait Backend: Send {
    /// A short human-readable name (`cpu`, `vulkan: NVIDIA H100`).
    fn name(&self) -> String;
    /// Whether `matmul` accepts weights of this type.
    fn supports_matmul(&self, dtype: DType) -> bool;
    /// Makes a weight available to this backend (the CPU borrows it; a GPU copies it once).
    fn add_weight(&mut self, w: &HostWeight) -> Result<WeightId, BackendError>;
    /// Allocates KV storage for one layer: `n_cells` rows of K (`k_width`) and V (`v_width`).
    fn alloc_kv(
        &mut self,
        layer: usize,
        n_cells: usize,
        k_width: usize,
        v_width: usize,
    ) -> Result<(), BackendError>;
    /// [`Backend::alloc_kv`] with K and V stored as `kv.type_k` / `kv.type_v` (`-ctk`/`-ctv`).
    /// A backend that stores only f16 keeps this default, which refuses any other type with
    /// [`BackendError::UnsupportedKvType`] rather than ignoring it.
    fn alloc_kv_typed(&mut self, layer: usize, kv: &KvLayout) -> Result<(), BackendError> {
        match [kv.type_k, kv.type_v]
            .into_iter()
            .find(|&t| t != DType::F16)
        {
            None => self.alloc_kv(layer, kv.n_cells, kv.k_width, kv.v_width),
            Some(dtype) => Err(BackendError::UnsupportedKvType {
                dtype,
                backend: self.name(),
                reason: "this backend stores the KV cache as f16 only".into(),
            }),
        }
    }
    /// Bytes of KV storage allocated on this backend.
    fn kv_bytes(&self) -> usize;

    /// A new activation buffer of `n_tokens x width`.
    fn alloc(&mut self, n_tokens: usize, width: usize) -> BufId;
    /// Changes the number of rows of a buffer (contents are unspecified afterwards).
    fn set_rows(&mut self, buf: BufId, n_tokens: usize);
    fn upload(&mut self, buf: BufId, data: &[f32]);
    /// Copies the buffer to host memory; waits for all recorded work first.
    fn download(&mut self, buf: BufId, out: &mut Vec<f32>);
    /// Copies row `row` of `src` into `dst` as its only row (picking the tokens that need logits).
    fn copy_rows(&mut self, src: BufId, rows: &[u32], dst: BufId);

    /// `out = x / rms(x) * w` per row (`w` optional: a plain norm).
    fn rms_norm(&mut self, x: BufId, w: Option<WeightId>, eps: f32, out: BufId);
    /// In place per-head RMS norm over `head_dim`-wide slices (Q/K norms), weight of `head_dim`.
    fn head_rms_norm(&mut self, x: BufId, w: WeightId, head_dim: usize, eps: f32);
    /// `out[t] = W · x[t]` for a `[rows, cols]` weight: out is `[n_tokens, rows]`.
    fn matmul(&mut self, w: WeightId, x: BufId, out: BufId);
    /// `x[t] += b` for a bias vector.
    fn add_bias(&mut self, x: BufId, b: WeightId);
    /// `x += y` elementwise.
    fn add(&mut self, x: BufId, y: BufId);
    /// `x *= s`.
    fn scale(&mut self, x: BufId, s: f32);
    /// `x = cap * tanh(x / cap)`.
    fn softcap(&mut self, x: BufId, cap: f32);
    /// Rotary embedding in place on a `[n_tokens, n_heads * head_dim]` buffer, positions from
    /// `tokens`, optional per-frequency divisors (Llama 3's `rope_freqs`).
    fn rope(
        &mut self,
        x: BufId,
        tokens: &[TokenSlot],
        p: &RopeParams,
        freq_factors: Option<WeightId>,
    );
    /// `out = act(gate) * up`.
    fn glu(&mut self, gate: BufId, up: BufId, kind: GluKind, out: BufId);
    /// Stores this step's K and V into the layer's cache and computes attention for every token.
    /// `q`: `[n, n_head*head_dim_k]`, `k`: `[n, n_head_kv*head_dim_k]`, `v`: `[n, n_head_kv*head_dim_v]`,
    /// `out`: `[n, n_head*head_dim_v]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        layer: usize,
        q: BufId,
        k: BufId,
        v: BufId,
        batch: &AttnBatch<'_>,
        p: &AttnParams,
        out: BufId,
    ) -> Result<(), BackendError>;
    /// The sequence of each row of the activations processed next (until the next call).
    /// Kernels whose float order depends on how many rows a batch has (ggml's grouped and tiled
    /// matmul orders) then decide per sequence, from that sequence's own rows, so that a
    /// sequence computes the same bits alone as inside a larger continuous batch. Matmuls whose
    /// row count differs from `seqs.len()` treat all rows as one sequence.
    fn set_row_sequences(&mut self, _seqs: &[u32]) {}
    /// Waits for recorded work (no-op on the CPU).
    fn sync(&mut self) {}
}

/// Ranges of consecutive `items` with equal `key`, in order (a batch's runs of one sequence:
/// `runs_by(tokens, |t| t.seq)`). Batch-invariant kernels decide their float order per run.
pub fn runs_by<'a, T, K: PartialEq>(
    items: &'a [T],
    key: impl Fn(&T) -> K + 'a,
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        let k = key(items.get(start)?);
        let len = items[start..].iter().take_while(|t| key(t) == k).count();
        start += len;
        Some(start - len..start)
    })
}

/// Sizes the CPU thread pool used by every CPU kernel (`-t`). Call once, before the first op;
/// later calls are ignored (the pool is global). `0` keeps the default (all cores).
pub fn init_threads(n_threads: usize) {
    if n_threads > 0 {
        pool::init(n_threads);
    }
}

#[cfg(test)]
mod runs_tests {
    #[test]
    fn runs_by_splits_consecutive_equal_keys() {
        let seqs = [0u32, 0, 1, 1, 1, 0, 2];
        let r: Vec<_> = super::runs_by(&seqs, |&s| s).collect();
        assert_eq!(r, vec![0..2, 2..5, 5..6, 6..7]);
        assert_eq!(super::runs_by(&[] as &[u32], |&s| s).count(), 0);
    }
}
