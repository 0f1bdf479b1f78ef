//! A single-sequence session over a `Context` for the one-user commands (`run`, `logits`,
//! `perplexity`, `bench`): cells are simply positions, and the prompt goes in `-b`-sized batches.

use anyhow::{Context as _, Result};
use orchard_backend::TokenSlot;
use orchard_core::DType;
use orchard_models::{Batch, Context, ContextOptions, Model};
use orchard_tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// Loads the model and its tokenizer, with a context of `n_ctx` cells (0 = the model's training
/// context, capped at 4096 as llama.cpp's tools default), everything on the CPU.
pub fn load(
    path: &Path,
    n_ctx: usize,
    n_threads: usize,
) -> Result<(Arc<Model>, Arc<Tokenizer>, Session)> {
    load_offloaded(path, n_ctx, n_threads, &Offload::default())
}

/// Where layers run: `-ngl N` (llama.cpp's meaning: the last N layers, and the output layer
/// when N exceeds the layer count) on the GPU adapter `--device` (default: the first); and how
/// the KV cache is stored (`-ctk`/`-ctv`).
#[derive(Debug, Clone)]
pub struct Offload {
    pub n_gpu_layers: usize,
    pub device: Option<usize>,
    pub type_k: DType,
    pub type_v: DType,
}

impl Default for Offload {
    fn default() -> Self {
        Offload {
            n_gpu_layers: 0,
            device: None,
            type_k: DType::F16,
            type_v: DType::F16,
        }
    }
}

/// `-ctk` / `-ctv` (long forms `--cache-type-k` / `--cache-type-v`), shared by the commands
/// that build a context.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct CacheTypes {
    /// KV cache type of K: f16, q8_0 or q4_0 (attention reads the quantized cache directly).
    #[arg(long = "cache-type-k", alias = "ctk", default_value = "f16", value_parser = orchard_plan::parse_cache_type)]
    pub cache_type_k: DType,
    /// KV cache type of V: f16, q8_0 or q4_0.
    #[arg(long = "cache-type-v", alias = "ctv", default_value = "f16", value_parser = orchard_plan::parse_cache_type)]
    pub cache_type_v: DType,
}

/// [`load`] with some or all layers on a GPU.
pub fn load_offloaded(
    path: &Path,
    n_ctx: usize,
    n_threads: usize,
    offload: &Offload,
) -> Result<(Arc<Model>, Arc<Tokenizer>, Session)> {
    orchard_backend::init_threads(n_threads);
    let model = Arc::new(Model::load(path).with_context(|| format!("loading {}", path.display()))?);
    let tok = Arc::new(Tokenizer::from_gguf(&model.file).context("reading the tokenizer")?);
    let n_ctx = if n_ctx == 0 {
        model.hp.n_ctx_train.min(4096)
    } else {
        n_ctx
    };
    let session = Session::with_offload(model.clone(), n_ctx, offload)?;
    Ok((model, tok, session))
}

pub struct Session {
    pub ctx: Context,
    cells: Vec<u32>,
    /// Tokens already in the KV cache.
    pub n_past: usize,
    slots: Vec<TokenSlot>,
}

impl Session {
    pub fn new(model: Arc<Model>, n_ctx: usize) -> Result<Session> {
        Session::with_offload(model, n_ctx, &Offload::default())
    }

    pub fn with_offload(model: Arc<Model>, n_ctx: usize, offload: &Offload) -> Result<Session> {
        let gpu: Option<(Box<dyn orchard_backend::Backend>, usize)> = if offload.n_gpu_layers > 0 {
            let g = orchard_gpu::GpuBackend::new(offload.device)
                .context("opening the GPU (see `orchard devices`)")?;
            Some((Box::new(g), offload.n_gpu_layers))
        } else {
            None
        };
        let opts = ContextOptions {
            n_ctx,
            type_k: offload.type_k,
            type_v: offload.type_v,
        };
        let ctx = Context::with_offload(model, opts, gpu)?;
        let cells = (0..n_ctx as u32).collect();
        Ok(Session {
            ctx,
            cells,
            n_past: 0,
            slots: Vec::new(),
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.cells.len()
    }

    /// Forgets the KV cache (the cells are overwritten by the next tokens).
    pub fn clear(&mut self) {
        self.n_past = 0;
    }

    /// Decodes `tokens` after what is cached, `n_batch` at a time. With `all_logits`, `out`
    /// receives logits for every token, otherwise for the last one only.
    pub fn feed(
        &mut self,
        tokens: &[u32],
        n_batch: usize,
        all_logits: bool,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let from = if all_logits {
            0
        } else {
            tokens.len().saturating_sub(1)
        };
        self.feed_logits_from(tokens, n_batch, from, out)
    }

    /// Decodes `tokens` and writes logits for the tokens at index `from` onwards into `out`.
    pub fn feed_logits_from(
        &mut self,
        tokens: &[u32],
        n_batch: usize,
        from: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        anyhow::ensure!(
            self.n_past + tokens.len() <= self.n_ctx(),
            "context full: {} cached + {} new tokens exceed -c {}",
            self.n_past,
            tokens.len(),
            self.n_ctx()
        );
        out.clear();
        let mut part = Vec::new();
        let n_batch = n_batch.max(1);
        for (ci, chunk) in tokens.chunks(n_batch).enumerate() {
            let start = ci * n_batch;
            self.slots.clear();
            self.slots.extend((0..chunk.len()).map(|i| TokenSlot {
                seq: 0,
                pos: (self.n_past + i) as u32,
            }));
            let want: Vec<u32> = (0..chunk.len() as u32)
                .filter(|&i| start + i as usize >= from)
                .collect();
            let tables = [self.cells.as_slice()];
            self.ctx.decode(
                &Batch {
                    tokens: chunk,
                    slots: &self.slots,
                    cells: &tables,
                    logits: &want,
                },
                &mut part,
            )?;
            out.extend_from_slice(&part);
            self.n_past += chunk.len();
        }
        Ok(())
    }
}
