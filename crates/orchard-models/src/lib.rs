//! Transformer architectures and the context that runs them.
//!
//! A [`Model`] is what a GGUF file describes: hyper-parameters, host views of the weights
//! (borrowed from the mmap) and the architecture's layer code. A [`Context`] is one running
//! instance: the backends that execute layers, the weights uploaded to them, scratch buffers and
//! the KV cache. Models never own the KV cache; a step borrows it (llama.cpp's model / context /
//! memory split). Each architecture lives in its own file and registers itself in
//! [`ARCHITECTURES`]; shared layer builders live in `layers.rs`.

mod context;
mod error;
mod gemma3;
mod hparams;
mod layers;
mod llama;
mod qwen2;
mod qwen3;
pub mod synth;

pub use context::{Batch, Context, ContextOptions};
pub use error::ModelError;
pub use hparams::HParams;
pub use layers::Step;

use orchard_backend::{ByteSource, HostWeight};
use orchard_gguf::GgufFile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Index of a tensor in [`Model::tensors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorRef(pub u32);

/// The code of one architecture: per-layer forward pass and the shape facts the context needs.
pub trait Architecture: Send + Sync {
    /// Runs layer `il` on the residual stream `s.x` (in place).
    fn layer(&self, s: &mut Step<'_>, il: usize) -> Result<(), ModelError>;
    /// Widths of one KV cache row of layer `il`: (K, V).
    fn kv_width(&self, il: usize) -> (usize, usize);
    /// The channel pairs RoPE rotates in layer `il`'s K (`RopePairs::None` without RoPE).
    fn k_rope_pairs(&self, il: usize) -> orchard_backend::RopePairs;
    /// The attention window of layer `il`, `None` for full attention.
    fn sliding_window(&self, _il: usize) -> Option<usize> {
        None
    }
    /// Multiplier applied to token embeddings (Gemma: sqrt(n_embd)).
    fn embed_scale(&self) -> Option<f32> {
        None
    }
    /// tanh soft-cap of the final logits.
    fn final_logit_softcap(&self) -> Option<f32> {
        None
    }
}

/// A constructor registered for one `general.architecture` value.
pub type ArchLoader = fn(&mut Loader<'_>) -> Result<Box<dyn Architecture>, ModelError>;

/// Every architecture this build runs: adding one is a new file and one line here.
pub const ARCHITECTURES: &[(&str, ArchLoader)] = &[
    ("llama", llama::load),
    ("gemma3", gemma3::load),
    ("qwen2", qwen2::load),
    ("qwen3", qwen3::load),
];

/// A loaded model: hyper-parameters, weights (views into the mmap) and architecture code.
pub struct Model {
    pub hp: HParams,
    pub tensors: Vec<HostWeight>,
    pub tok_embd: TensorRef,
    pub output_norm: TensorRef,
    pub output: TensorRef,
    pub arch: Box<dyn Architecture>,
    pub file: Arc<GgufFile>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("hp", &self.hp)
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

struct GgufBytes(Arc<GgufFile>);
impl ByteSource for GgufBytes {
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn release(&self, range: std::ops::Range<usize>) {
        self.0.release(range);
    }
}

/// Helps an architecture's `load` find its tensors and keys; records which tensors were used so
/// that unknown extra tensors are reported.
pub struct Loader<'a> {
    pub file: &'a GgufFile,
    pub hp: &'a HParams,
    tensors: &'a [HostWeight],
    by_name: HashMap<&'a str, usize>,
    used: Vec<bool>,
}

impl<'a> Loader<'a> {
    /// A required tensor with the given shape (ggml order: `dims[0]` is the row length).
    pub fn tensor(&mut self, name: &str, dims: &[u64]) -> Result<TensorRef, ModelError> {
        self.optional(name, dims)?
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// An optional tensor: `Ok(None)` when absent, an error when present with a wrong shape.
    pub fn optional(&mut self, name: &str, dims: &[u64]) -> Result<Option<TensorRef>, ModelError> {
        let Some(&i) = self.by_name.get(name) else {
            return Ok(None);
        };
        let t = &self.tensors[i];
        let mut found = t.dims.clone();
        while found.len() > dims.len() && found.last() == Some(&1) {
            found.pop();
        }
        if found != dims {
            return Err(ModelError::BadShape {
                name: name.to_string(),
                expected: dims.to_vec(),
                found: t.dims.clone(),
            });
        }
        self.used[i] = true;
        Ok(Some(TensorRef(i as u32)))
    }

    /// A per-layer tensor `blk.{il}.{suffix}`.
    pub fn layer(
        &mut self,
        il: usize,
        suffix: &str,
        dims: &[u64],
    ) -> Result<TensorRef, ModelError> {
        self.tensor(&format!("blk.{il}.{suffix}"), dims)
    }

    pub fn layer_optional(
        &mut self,
        il: usize,
        suffix: &str,
        dims: &[u64],
    ) -> Result<Option<TensorRef>, ModelError> {
        self.optional(&format!("blk.{il}.{suffix}"), dims)
    }
}

impl Model {
    /// Opens a GGUF file and loads the model it holds. Tensor bytes are not touched (mmap).
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let file = Arc::new(GgufFile::open(path.as_ref())?);
        Model::from_gguf(file)
    }

    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        let arch_name = file.architecture()?.to_string();
        let loader_fn = ARCHITECTURES
            .iter()
            .find(|(n, _)| *n == arch_name)
            .map(|(_, f)| *f)
            .ok_or_else(|| ModelError::UnsupportedArchitecture {
                arch: arch_name.clone(),
            })?;
        let hp = HParams::from_gguf(&file, &arch_name)?;
        let source: Arc<dyn ByteSource> = Arc::new(GgufBytes(file.clone()));
        let base = file.data_offset() as usize;
        let tensors: Vec<HostWeight> = file
            .tensors()
            .iter()
            .map(|t| HostWeight {
                name: t.name.clone(),
                dtype: t.dtype,
                dims: t.dims.clone(),
                source: source.clone(),
                range: base + t.offset as usize..base + (t.offset + t.n_bytes) as usize,
            })
            .collect();
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut ld = Loader {
            file: &file,
            hp: &hp,
            tensors: &tensors,
            by_name,
            used: vec![false; tensors.len()],
        };
        let (n_embd, n_vocab) = (hp.n_embd as u64, hp.n_vocab as u64);
        let tok_embd = ld.tensor("token_embd.weight", &[n_embd, n_vocab])?;
        let output_norm = ld.tensor("output_norm.weight", &[n_embd])?;
        let output = ld
            .optional("output.weight", &[n_embd, n_vocab])?
            .unwrap_or(tok_embd);
        let arch = loader_fn(&mut ld)?;
        let unused: Vec<String> = ld
            .used
            .iter()
            .enumerate()
            .filter(|(_, u)| !**u)
            .map(|(i, _)| tensors[i].name.clone())
            .collect();
        if !unused.is_empty() {
            return Err(ModelError::UnknownTensors {
                arch: arch_name,
                names: unused,
            });
        }
        Ok(Model {
            hp,
            tensors,
            tok_embd,
            output_norm,
            output,
            arch,
            file,
        })
    }

    pub fn tensor(&self, r: TensorRef) -> &HostWeight {
        &self.tensors[r.0 as usize]
    }

    /// The layer a tensor belongs to (`blk.N.*`), `None` for global tensors.
    pub fn tensor_layer(&self, r: TensorRef) -> Option<usize> {
        let name = &self.tensor(r).name;
        name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
    }

    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.range.len() as u64).sum()
    }
}
