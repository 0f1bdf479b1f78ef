//! The inference engine behind `orchard serve`: one scheduler thread that owns the model's
//! [`orchard_models::Context`] (and with it the KV cache) and runs continuous batching over
//! every request the HTTP layer submits. It knows nothing of HTTP, JSON or async runtimes:
//! requests come in through [`EngineHandle::submit`], results leave through each request's own
//! sink closure.
//!
//! Design in short (the crate's README has the long form):
//! - **Continuous batching**: each step carries one decode token for every running sequence
//!   plus chunks of waiting prompts, at most `n_batch` tokens, so a long prompt never stalls
//!   the others; the step runs as `n_ubatch`-sized forward passes.
//! - **One unified KV pool**: `n_ctx` cells shared by all sequences, handed out in pages of
//!   [`PAGE_CELLS`] cells. Unlike llama-server's default split (`n_ctx / n_parallel` per slot),
//!   any one sequence may use the whole context when it is free.
//! - **When the pool runs dry**: the prefix cache is evicted first (least recently used), then
//!   the youngest running sequence is preempted: its KV is dropped and it waits at the head of
//!   the queue to be recomputed, invisibly to its client. The oldest sequence therefore always
//!   progresses, so the engine never deadlocks; a sequence that alone fills the whole context
//!   finishes with [`FinishReason::Length`].
//! - **Prefix reuse**: the computed KV of finished sequences stays in a trie keyed by their
//!   tokens in page-sized stretches (the last one may be partial); a new request reuses the
//!   longest cached prefix down to the token (cells shared read-only by page reference count;
//!   the rest of a partly reused page is written into a fresh page of its own) and recomputes
//!   only the rest.

mod error;
mod kv;
mod scheduler;
mod text;

pub use error::{EngineError, SubmitError};
pub use kv::PAGE as PAGE_CELLS;
pub use orchard_core::TokenId;
pub use scheduler::{PassRun, Scheduler};

use orchard_tokenizer::Tokenizer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// How the engine is sized. `n_ctx` is rounded up to a whole number of pages.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Total KV cells, one unified pool shared by all sequences.
    pub n_ctx: usize,
    /// Most sequences decoding at once (slots).
    pub n_parallel: usize,
    /// Most tokens per scheduler step (prompt chunks plus decode tokens).
    pub n_batch: usize,
    /// Most tokens per forward pass; a step of more tokens runs as several passes.
    pub n_ubatch: usize,
    /// Most requests waiting for a slot before `submit` answers [`SubmitError::QueueFull`].
    pub max_queue: usize,
    /// Accepted for llama-server compatibility; a full context currently always finishes the
    /// sequence with [`FinishReason::Length`] (no shifting yet).
    pub context_shift: bool,
    /// Keeps the KV of finished sequences for prompt-prefix reuse.
    pub cache_prompt: bool,
    /// Shown in [`ModelInfo`] (the engine itself only sees the loaded model).
    pub model_path: Option<std::path::PathBuf>,
    /// Checks the KV page accounting after every step and reports the first inconsistency as
    /// an error event (tests and debugging; costs a pass over all pages per step).
    pub audit_kv: bool,
    /// Storage type of the K cache (`-ctk`).
    pub type_k: orchard_core::DType,
    /// Storage type of the V cache (`-ctv`).
    pub type_v: orchard_core::DType,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_ctx: 4096,
            n_parallel: 4,
            n_batch: 2048,
            n_ubatch: 512,
            max_queue: 64,
            context_shift: false,
            cache_prompt: true,
            model_path: None,
            audit_kv: false,
            type_k: orchard_core::DType::F16,
            type_v: orchard_core::DType::F16,
        }
    }
}

/// Where a request's events go: called on the scheduler thread, returns `false` once the client
/// is gone.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// One request. The sink is called on the scheduler thread for every [`Event`], in order, and
/// exactly one [`Event::Done`] or [`Event::Error`] ends every accepted request. Returning
/// `false` means the client is gone: the engine cancels the sequence and frees its cells before
/// the next step (a final `Done { Cancelled }` is still delivered). The sink must not block.
pub struct Request {
    pub id: u64,
    pub prompt: Vec<TokenId>,
    pub kind: RequestKind,
    pub sink: Sink,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("n_prompt", &self.prompt.len())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub enum RequestKind {
    Generate(GenParams),
    Embed { pooling: Pooling, normalize: bool },
}

/// How an embedding is made from the final-norm hidden states of the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of every prompt position.
    Mean,
    /// The last prompt position.
    Last,
}

pub struct GenParams {
    /// `None`: until end of generation or a full context.
    pub max_tokens: Option<usize>,
    pub sampler: orchard_sampler::SamplerConfig,
    /// Generation stops when the text contains one of these; the stop string is not shown.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// 0: no log-probabilities; else the top `n_probs` per token.
    pub n_probs: usize,
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// Whether this request may reuse a cached prompt prefix.
    pub cache_prompt: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_tokens: None,
            sampler: orchard_sampler::SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            n_probs: 0,
            constraint: None,
            cache_prompt: true,
        }
    }
}

impl std::fmt::Debug for GenParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenParams")
            .field("max_tokens", &self.max_tokens)
            .field("sampler", &self.sampler)
            .field("stop", &self.stop)
            .field("ignore_eos", &self.ignore_eos)
            .field("n_probs", &self.n_probs)
            .field("constraint", &self.constraint.is_some())
            .field("cache_prompt", &self.cache_prompt)
            .finish()
    }
}

/// Constrained decoding (JSON schema, grammar), implemented outside the engine.
pub trait TokenConstraint: Send {
    /// Removes (or sets to -inf) the candidates that would violate the constraint.
    fn allowed(&mut self, tok: &Tokenizer, candidates: &mut Vec<orchard_sampler::Candidate>);
    /// Advances the constraint over the chosen token.
    fn accept(&mut self, tok: &Tokenizer, id: TokenId);
    /// The engine stops with [`FinishReason::Stop`] once this is true.
    fn is_complete(&self) -> bool;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The request got a slot.
    Started {
        n_prompt: usize,
        /// Prompt tokens reused from the prefix cache.
        n_cached: usize,
        slot: usize,
        queue_ms: f64,
    },
    /// A generated token. `text` is the newly completed text that is safe to show: valid UTF-8,
    /// with anything that could still become a stop string held back (it comes with a later
    /// token, or is dropped when the stop string completes).
    Token {
        id: TokenId,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    Embedding(Vec<f32>),
    Done {
        finish: FinishReason,
        usage: Usage,
        timings: Timings,
        /// The stop string that ended the generation, if one did.
        stop_text: Option<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub id: TokenId,
    pub logprob: f32,
    /// Best first.
    pub top: Vec<(TokenId, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// End-of-generation token, stop string or complete constraint.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
    /// The client went away, `cancel` or `shutdown`.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// Milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Submission to getting a slot.
    pub queue_ms: f64,
    /// Getting a slot to the first token (the whole run for embeddings).
    pub prompt_ms: f64,
    /// First token to the end.
    pub gen_ms: f64,
    /// This request's share of forward-pass time: each pass split by its tokens.
    pub device_ms: f64,
    /// Submission to the first token (time to first token).
    pub first_token_ms: f64,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub requests_ok: u64,
    pub requests_cancelled: u64,
    pub requests_error: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub prompt_ms: f64,
    pub gen_ms: f64,
    /// Scheduler steps that ran the model.
    pub steps: u64,
    /// Wall time of those steps: admission, planning, pages, forward passes, sampling and
    /// streaming to the sinks (publishing the stats afterwards is left out).
    pub step_ms: f64,
    /// Of `step_ms`, the time inside the model's forward passes; the rest is the engine's own
    /// per-step overhead.
    pub forward_ms: f64,
    /// Of `step_ms`, sampling and handing each token to its sink (detokenizing, stop strings,
    /// the sink's channel send).
    pub sample_ms: f64,
    /// Sequences pushed back to the queue because the KV pool ran dry.
    pub preemptions: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineStats {
    /// Requests waiting for a slot (including preempted ones).
    pub queue_depth: usize,
    pub busy_slots: usize,
    pub n_slots: usize,
    /// Cells in pages held by anything: running sequences or the prefix cache.
    pub kv_used_cells: usize,
    pub kv_total_cells: usize,
    /// Of `kv_used_cells`, the cells held only by the prefix cache (reclaimable at any time).
    pub kv_cached_cells: usize,
    /// Cells on the free list. `kv_free_cells + kv_used_cells == kv_total_cells`.
    pub kv_free_cells: usize,
    /// With `EngineConfig::audit_kv`: the first KV accounting inconsistency found, if any.
    pub kv_audit_error: Option<String>,
    pub slots: Vec<SlotInfo>,
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlotInfo {
    pub id: usize,
    pub is_processing: bool,
    pub request_id: Option<u64>,
    /// Positions with computed KV.
    pub n_ctx_used: usize,
    pub n_prompt: usize,
    pub n_decoded: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// KV cells of the unified pool (the configured `n_ctx` rounded up to whole pages).
    pub n_ctx: usize,
    pub n_parallel: usize,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_ctx_train: usize,
    pub arch: String,
    pub path: Option<std::path::PathBuf>,
    /// `general.name`, else the file stem, else the architecture.
    pub name: String,
    pub n_params: u64,
    pub size_bytes: u64,
}

/// State shared by the handles and the scheduler.
pub(crate) struct Shared {
    /// Requests accepted by `submit` and not yet given a slot (or dropped).
    pub pending: AtomicUsize,
    /// Slots in use, for the queue limit.
    pub busy: AtomicUsize,
    pub stats: Mutex<EngineStats>,
}

/// Starts the engine thread.
pub struct Engine;

impl Engine {
    /// Builds the context (allocating the KV pool) and starts the scheduler thread.
    pub fn start(
        model: Arc<orchard_models::Model>,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
    ) -> Result<EngineHandle, EngineError> {
        Engine::start_offloaded(model, tokenizer, cfg, None)
    }

    /// [`Engine::start`] with layers offloaded to a GPU backend (`-ngl`: the last `n` layers,
    /// and the output layer when `n` exceeds the layer count).
    pub fn start_offloaded(
        model: Arc<orchard_models::Model>,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
        gpu: Option<(Box<dyn orchard_backend::Backend>, usize)>,
    ) -> Result<EngineHandle, EngineError> {
        let sched = Scheduler::with_offload(model, tokenizer, cfg, gpu)?;
        let shared = sched.shared();
        let info = sched.model_info();
        let limits = sched.limits();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("orchard-engine".into())
            .spawn(move || run_loop(sched, rx))?;
        Ok(EngineHandle {
            inner: Arc::new(HandleInner {
                tx: RwLock::new(Some(tx)),
                shared,
                info,
                limits,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }
}

pub(crate) enum Msg {
    Submit(Request, Instant),
    Cancel(u64),
    Shutdown,
}

fn run_loop(mut sched: Scheduler, rx: mpsc::Receiver<Msg>) {
    loop {
        // Block only when there is nothing to run; otherwise take what arrived and step.
        let mut first = if sched.is_idle() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        } else {
            None
        };
        let mut stop = false;
        loop {
            let m = match first.take() {
                Some(m) => m,
                None => match rx.try_recv() {
                    Ok(m) => m,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        stop = true;
                        break;
                    }
                },
            };
            match m {
                Msg::Submit(r, t) => sched.enqueue_reserved(r, t),
                Msg::Cancel(id) => {
                    sched.cancel(id);
                }
                Msg::Shutdown => stop = true,
            }
        }
        if stop {
            break;
        }
        sched.step();
    }
    // `shutdown` drops the only sender after queueing `Shutdown`, so every submission that
    // succeeded has been taken from the channel above.
    sched.shutdown();
}

struct HandleInner {
    /// `None` once shut down. Submitters send under the read lock, so after `shutdown` takes
    /// the write lock no submission can slip in behind the `Shutdown` message unanswered.
    tx: RwLock<Option<mpsc::Sender<Msg>>>,
    shared: Arc<Shared>,
    info: ModelInfo,
    limits: scheduler::Limits,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A cheap, clonable handle to the running engine.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("model", &self.inner.info.name)
            .finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Queues a request. Never waits for the model: refusals (bad input, full queue, shutdown)
    /// come back at once, everything else through the request's sink.
    pub fn submit(&self, req: Request) -> Result<(), SubmitError> {
        let inner = &self.inner;
        let tx = inner.tx.read().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(SubmitError::ShuttingDown);
        };
        scheduler::validate(&req, &inner.limits)?;
        scheduler::reserve_queue_place(&inner.shared, &inner.limits)?;
        if tx.send(Msg::Submit(req, Instant::now())).is_err() {
            inner.shared.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    /// Cancels a request by id, waiting or running: it ends with `Done { Cancelled }` before the
    /// next step. Unknown ids are ignored. (For clients that disappear before their first
    /// event; otherwise the sink returning `false` does the same.)
    pub fn cancel(&self, id: u64) {
        let tx = self.inner.tx.read().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(Msg::Cancel(id));
        }
    }

    /// A snapshot taken after the last step.
    pub fn stats(&self) -> EngineStats {
        let mut s = self
            .inner
            .shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Requests still in the channel are waiting too.
        s.queue_depth = s
            .queue_depth
            .max(self.inner.shared.pending.load(Ordering::Acquire));
        s
    }

    pub fn model_info(&self) -> ModelInfo {
        self.inner.info.clone()
    }

    /// Ends every waiting and running request with `Done { Cancelled }` and joins the thread.
    /// Later submissions get [`SubmitError::ShuttingDown`]. Idempotent.
    pub fn shutdown(&self) {
        {
            let mut tx = self.inner.tx.write().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = tx.take() {
                let _ = tx.send(Msg::Shutdown);
            }
        }
        let t = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Called from a sink (on the engine thread itself) there is nothing to wait for: the
        // loop ends after the current step.
        if let Some(t) = t.filter(|t| t.thread().id() != std::thread::current().id()) {
            if t.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}
