//! A running instance of a model: the backends that execute its layers (the CPU, and with
//! `-ngl` a GPU for the last layers and the output head), the weights uploaded to each, scratch
//! buffers and the KV cache. `decode` runs one step over a batch of tokens from any number of
//! sequences.

use crate::layers::{Scratch, Step};
use crate::{Model, ModelError};
use orchard_backend::{AttnBatch, Backend, BufId, CpuBackend, KvLayout, TokenSlot, WeightId};
use orchard_core::{DType, TokenId};
use std::sync::Arc;

/// How a context is built.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// KV cells (tokens of context) shared by all sequences.
    pub n_ctx: usize,
    /// Storage type of the K cache (`-ctk`): f16, or a block type attention reads directly.
    pub type_k: DType,
    /// Storage type of the V cache (`-ctv`).
    pub type_v: DType,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            n_ctx: 4096,
            type_k: DType::F16,
            type_v: DType::F16,
        }
    }
}

/// One step's input. `slots[i]` places `tokens[i]`; `cells[seq][pos]` is the KV cell of position
/// `pos` of sequence `seq` (the caller owns cell allocation); `logits` lists the indices of the
/// tokens whose next-token logits are wanted, in the order they are returned.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: &'a [TokenId],
    pub slots: &'a [TokenSlot],
    pub cells: &'a [&'a [u32]],
    pub logits: &'a [u32],
}

struct BackendSlot {
    b: Box<dyn Backend>,
    weights: Vec<Option<WeightId>>,
    scratch: Scratch,
    /// The residual stream on this backend, `[n_tokens, n_embd]`.
    x: BufId,
}

pub struct Context {
    model: Arc<Model>,
    slots: Vec<BackendSlot>,
    /// Which slot runs each layer.
    layer_slot: Vec<usize>,
    /// Which slot runs the output norm and head.
    output_slot: usize,
    n_cells: usize,
    host: Vec<f32>,
    /// Sequence of each row of the current step (see `Backend::set_row_sequences`).
    row_seqs: Vec<u32>,
}

impl Context {
    /// A context that runs everything on the CPU.
    pub fn new(model: Arc<Model>, opts: ContextOptions) -> Result<Context, ModelError> {
        Context::with_offload(model, opts, None)
    }

    /// A context that runs the last `n_gpu_layers` layers (and, when that covers every layer,
    /// the output head too, as llama.cpp's `-ngl` does) on `gpu`, the rest on the CPU.
    pub fn with_offload(
        model: Arc<Model>,
        opts: ContextOptions,
        gpu: Option<(Box<dyn Backend>, usize)>,
    ) -> Result<Context, ModelError> {
        let n_layer = model.hp.n_layer;
        let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
        let mut first_gpu_layer = n_layer;
        let mut output_slot = 0;
        if let Some((g, ngl)) = gpu {
            if ngl > 0 {
                backends.push(g);
                first_gpu_layer = n_layer.saturating_sub(ngl);
                if ngl > n_layer {
                    output_slot = 1;
                }
            }
        }
        let layer_slot: Vec<usize> = (0..n_layer)
            .map(|il| usize::from(il >= first_gpu_layer))
            .collect();
        let n_cells = opts.n_ctx.max(1);
        let mut slots = Vec::new();
        for (si, mut b) in backends.into_iter().enumerate() {
            let mut weights = vec![None; model.tensors.len()];
            for (ti, w) in model.tensors.iter().enumerate() {
                let r = crate::TensorRef(ti as u32);
                let runs_layers = layer_slot.contains(&si);
                let used_here = match model.tensor_layer(r) {
                    Some(il) => layer_slot.get(il) == Some(&si),
                    // Global tensors: the CPU keeps them all (token_embd: the embedding lookup is
                    // a row gather on the host); another backend gets the output head where it
                    // runs it, and the small shared ones (rope_freqs) where it runs layers.
                    None if si == 0 => true,
                    None if r == model.output || r == model.output_norm => si == output_slot,
                    None => runs_layers && r != model.tok_embd,
                };
                if used_here {
                    weights[ti] = Some(b.add_weight(w)?);
                }
            }
            for il in (0..n_layer).filter(|&il| layer_slot[il] == si) {
                let (k_width, v_width) = model.arch.kv_width(il);
                let layout = KvLayout {
                    n_cells,
                    k_width,
                    v_width,
                    head_dim_k: model.hp.head_dim_k,
                    head_dim_v: model.hp.head_dim_v,
                    type_k: opts.type_k,
                    type_v: opts.type_v,
                    k_rope_pairs: model.arch.k_rope_pairs(il),
                };
                b.alloc_kv_typed(il, &layout).map_err(|e| match e {
                    orchard_backend::BackendError::UnsupportedKvType { .. } => ModelError::KvType {
                        source: e,
                        hint: if si > 0 {
                            "use -ctk f16 -ctv f16 with -ngl, or keep these layers on the CPU"
                        } else {
                            "use -ctk/-ctv f16, q8_0 or q4_0"
                        },
                    },
                    e => e.into(),
                })?;
            }
            let x = b.alloc(1, model.hp.n_embd);
            slots.push(BackendSlot {
                b,
                weights,
                scratch: Scratch::default(),
                x,
            });
        }
        Ok(Context {
            model,
            slots,
            layer_slot,
            output_slot,
            n_cells,
            host: Vec::new(),
            row_seqs: Vec::new(),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// KV cells available (the `-c` context size).
    pub fn n_cells(&self) -> usize {
        self.n_cells
    }

    /// Bytes of KV cache across backends.
    pub fn kv_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.b.kv_bytes()).sum()
    }

    /// Names of the backends in use, CPU first.
    pub fn backend_names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.b.name()).collect()
    }

    /// Runs one step and writes `batch.logits.len() * n_vocab` logits into `out`.
    pub fn decode(&mut self, batch: &Batch<'_>, out: &mut Vec<f32>) -> Result<(), ModelError> {
        self.forward(batch, out, false)
    }

    /// Runs one step and writes the final-norm hidden state (`n_embd` per requested token)
    /// into `out` instead of logits (embeddings endpoint).
    pub fn decode_hidden(
        &mut self,
        batch: &Batch<'_>,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.forward(batch, out, true)
    }

    fn check_batch(&self, batch: &Batch<'_>) -> Result<(), ModelError> {
        let n = batch.tokens.len();
        let bad = |m: String| Err(ModelError::BadBatch(m));
        if n == 0 {
            return bad("empty batch".into());
        }
        if batch.slots.len() != n {
            return bad(format!("{} tokens but {} slots", n, batch.slots.len()));
        }
        let n_vocab = self.model.hp.n_vocab;
        if let Some(t) = batch.tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return bad(format!(
                "token id {t} is outside the vocabulary of {n_vocab}"
            ));
        }
        for s in batch.slots {
            let cells = batch.cells.get(s.seq as usize).ok_or_else(|| {
                ModelError::BadBatch(format!("sequence {} has no cell table", s.seq))
            })?;
            match cells.get(s.pos as usize) {
                Some(&c) if (c as usize) < self.n_cells => {}
                Some(&c) => {
                    return bad(format!(
                        "cell {c} is outside the cache of {} cells",
                        self.n_cells
                    ))
                }
                None => {
                    return bad(format!(
                        "position {} of sequence {} has no cell",
                        s.pos, s.seq
                    ))
                }
            }
        }
        if let Some(&i) = batch.logits.iter().find(|&&i| i as usize >= n) {
            return bad(format!("logits requested for token {i} of a batch of {n}"));
        }
        Ok(())
    }

    fn forward(
        &mut self,
        batch: &Batch<'_>,
        out: &mut Vec<f32>,
        hidden: bool,
    ) -> Result<(), ModelError> {
        self.check_batch(batch)?;
        let model = self.model.clone();
        let hp = &model.hp;
        let n = batch.tokens.len();

        // Embedding lookup on the host: dequantize the rows of token_embd.
        let emb = model.tensor(model.tok_embd);
        let row_bytes = emb
            .dtype
            .row_bytes(hp.n_embd as u64)
            .expect("validated at load") as usize;
        let bytes = emb.bytes();
        self.host.resize(n * hp.n_embd, 0.0);
        // A prompt's rows on scoped threads, EMBD_ROWS or more each: one thread took ~1.1 ms
        // for 512 rows of 4096 (Q4_K), all of it before the first layer could start on a GPU
        // (an 8B prompt on an H200: pp512 +4 %). Not the CPU kernels' pool: its workers would
        // spin for milliseconds afterwards beside the thread encoding the GPU's step.
        const EMBD_ROWS: usize = 32;
        let (dtype, n_embd, scale) = (emb.dtype, hp.n_embd, model.arch.embed_scale());
        let failed = std::sync::Mutex::new(None);
        let lookup = |first: usize, rows: &mut [f32]| {
            for (j, row) in rows.chunks_mut(n_embd).enumerate() {
                let t = batch.tokens[first + j] as usize;
                let src = &bytes[t * row_bytes..(t + 1) * row_bytes];
                if let Err(e) = orchard_quant::dequantize_row(dtype, src, row) {
                    if let Ok(mut f) = failed.lock() {
                        *f = Some(e.to_string());
                    }
                    return;
                }
                if let Some(s) = scale {
                    row.iter_mut().for_each(|v| *v *= s);
                }
            }
        };
        // Asked once: on Linux the answer reads the cgroup's CPU quota from files.
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let per = if n < 2 * EMBD_ROWS {
            n.max(1)
        } else {
            let threads = *THREADS
                .get_or_init(|| std::thread::available_parallelism().map_or(1, |t| t.get().min(8)));
            EMBD_ROWS.max(n.div_ceil(threads))
        };
        let lookup = &lookup;
        // Chunks whose thread the OS would not give, done here afterwards.
        let mut unspawned = Vec::new();
        std::thread::scope(|sc| {
            let mut chunks = self.host.chunks_mut(per * n_embd).enumerate();
            let first = chunks.next();
            for (i, rows) in chunks {
                let spawned =
                    std::thread::Builder::new().spawn_scoped(sc, move || lookup(i * per, rows));
                if spawned.is_err() {
                    unspawned.push(i);
                }
            }
            if let Some((_, rows)) = first {
                lookup(0, rows);
            }
        });
        for i in unspawned {
            let rows = self.host.chunks_mut(per * n_embd).nth(i);
            if let Some(rows) = rows {
                lookup(i * per, rows);
            }
        }
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(ModelError::BadBatch(e));
        }

        let attn = AttnBatch {
            tokens: batch.slots,
            cells: batch.cells,
        };
        self.row_seqs.clear();
        self.row_seqs.extend(batch.slots.iter().map(|t| t.seq));
        for s in &mut self.slots {
            s.b.set_row_sequences(&self.row_seqs);
        }
        // Rows that need no logits skip the last layer's feed-forward block (`keep_out_rows`),
        // where the output head runs on the same backend (else the whole stream moves there).
        let n_out = batch.logits.len();
        let narrow_last =
            n_out > 0 && n_out < n && self.layer_slot.last().copied() == Some(self.output_slot);
        let mut kept: Option<BufId> = None;
        let mut cur_slot = self.layer_slot.first().copied().unwrap_or(0);
        {
            let s = &mut self.slots[cur_slot];
            s.b.set_rows(s.x, n);
            s.b.upload(s.x, &self.host);
        }
        for il in 0..hp.n_layer {
            let want = self.layer_slot[il];
            if want != cur_slot {
                self.move_residual(cur_slot, want, n);
                cur_slot = want;
            }
            let narrow = narrow_last && il + 1 == hp.n_layer;
            let s = &mut self.slots[cur_slot];
            let mut step = Step {
                b: s.b.as_mut(),
                weights: &s.weights,
                scratch: &mut s.scratch,
                n_tokens: n,
                tokens: batch.slots,
                attn,
                x: s.x,
                out_rows: narrow.then_some(batch.logits),
            };
            model.arch.layer(&mut step, il)?;
            if narrow && step.out_rows.is_none() {
                kept = Some(step.x);
            }
        }
        if self.output_slot != cur_slot {
            self.move_residual(cur_slot, self.output_slot, n);
            cur_slot = self.output_slot;
        }

        // Output: pick the rows that need logits (unless the last layer kept them), final
        // norm, head.
        let s = &mut self.slots[cur_slot];
        let mut step = Step {
            b: s.b.as_mut(),
            weights: &s.weights,
            scratch: &mut s.scratch,
            n_tokens: n_out,
            tokens: batch.slots,
            attn,
            x: s.x,
            out_rows: None,
        };
        if n_out == 0 {
            out.clear();
            step.b.sync();
            return Ok(());
        }
        self.row_seqs.clear();
        self.row_seqs
            .extend(batch.logits.iter().map(|&i| batch.slots[i as usize].seq));
        step.b.set_row_sequences(&self.row_seqs);
        let sel = match kept {
            Some(x) => x,
            None => {
                let sel = step.buf("out_rows", hp.n_embd);
                step.b.copy_rows(step.x, batch.logits, sel);
                sel
            }
        };
        let normed = step.norm(sel, model.output_norm, hp.rms_eps, "out_norm", hp.n_embd);
        if hidden {
            step.b.download(normed, out);
            return Ok(());
        }
        let logits = step.linear(model.output, None, normed, "logits", hp.n_vocab);
        if let Some(cap) = model.arch.final_logit_softcap() {
            step.b.softcap(logits, cap);
        }
        step.b.download(logits, out);
        Ok(())
    }

    /// Moves the residual stream between backends (the one transfer at an offload boundary).
    fn move_residual(&mut self, from: usize, to: usize, n: usize) {
        let x = self.slots[from].x;
        self.slots[from].b.download(x, &mut self.host);
        let s = &mut self.slots[to];
        s.b.set_rows(s.x, n);
        s.b.upload(s.x, &self.host);
    }
}
