//! The scheduler: admission, step planning, KV page allocation, the forward passes and
//! everything that happens to a sequence after its logits come back. It is a plain struct
//! driven by [`Scheduler::step`], so tests can run it deterministically without a thread; the
//! engine thread in `lib.rs` only feeds it messages and calls `step` in a loop.

use crate::kv::{pages_of, PagePool, PrefixCache, Reuse, PAGE};
use crate::text::{Pushed, StopText};
use crate::{
    EngineConfig, EngineError, EngineStats, Event, FinishReason, GenParams, ModelInfo, Pooling,
    Request, RequestKind, Shared, Sink, SlotInfo, SubmitError, Timings, TokenConstraint,
    TokenLogprobs, Totals, Usage,
};
use orchard_backend::TokenSlot;
use orchard_core::TokenId;
use orchard_models::{Batch, Context, ContextOptions, Model, ModelError};
use orchard_sampler::{Candidate, Sampler};
use orchard_tokenizer::{StreamDecoder, Tokenizer};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What `submit` checks without asking the scheduler thread.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_parallel: usize,
    pub max_queue: usize,
}

/// Input checks shared by the handle and [`Scheduler::submit`].
pub(crate) fn validate(req: &Request, l: &Limits) -> Result<(), SubmitError> {
    let n = req.prompt.len();
    if n == 0 {
        return Err(SubmitError::EmptyPrompt);
    }
    // A generation needs one free cell after its prompt for the first sampled token's KV.
    let fits = match req.kind {
        RequestKind::Generate(_) => n < l.n_ctx,
        RequestKind::Embed { .. } => n <= l.n_ctx,
    };
    if !fits {
        return Err(SubmitError::PromptTooLong {
            n_prompt: n,
            n_ctx: l.n_ctx,
        });
    }
    if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= l.n_vocab) {
        return Err(SubmitError::InvalidParams(format!(
            "prompt token {t} is outside the vocabulary of {} tokens",
            l.n_vocab
        )));
    }
    if let RequestKind::Generate(g) = &req.kind {
        g.sampler
            .validate()
            .map_err(|e| SubmitError::InvalidParams(e.to_string()))?;
    }
    Ok(())
}

/// Takes a place in the queue: requests not yet holding a slot may number `max_queue` plus the
/// slots that are free right now (those are about to be taken, not waited for).
pub(crate) fn reserve_queue_place(shared: &Shared, l: &Limits) -> Result<(), SubmitError> {
    let busy = shared.busy.load(Ordering::Acquire).min(l.n_parallel);
    let cap = l.max_queue + (l.n_parallel - busy);
    let got = shared
        .pending
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
            (p < cap).then_some(p + 1)
        });
    match got {
        Ok(_) => Ok(()),
        Err(waiting) => Err(SubmitError::QueueFull {
            retry_after_secs: retry_after(shared, waiting, l.n_parallel),
        }),
    }
}

/// Seconds until a place is likely free: the mean request duration so far times the number of
/// request "rounds" ahead, clamped to 1..=60 s.
fn retry_after(shared: &Shared, waiting: usize, n_parallel: usize) -> u64 {
    let t = shared
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .totals;
    let done = t.requests_ok + t.requests_cancelled + t.requests_error;
    if done == 0 {
        return 1;
    }
    let mean_s = (t.prompt_ms + t.gen_ms) / done as f64 / 1000.0;
    let rounds = (waiting / n_parallel.max(1) + 1) as f64;
    (mean_s * rounds).ceil().clamp(1.0, 60.0) as u64
}

struct GenState {
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopText,
    max_tokens: Option<usize>,
    ignore_eos: bool,
    n_probs: usize,
    constraint: Option<Box<dyn TokenConstraint>>,
    n_gen: usize,
}

struct EmbedState {
    pooling: Pooling,
    normalize: bool,
    /// Running sum of hidden rows (Mean) or the last row (Last).
    acc: Vec<f32>,
}

enum Work {
    Gen(Box<GenState>),
    Embed(EmbedState),
}

/// A request that holds (or held, if preempted) a slot.
struct Seq {
    id: u64,
    /// Admission order; larger is younger. Preemption picks the youngest.
    order: u64,
    sink: Sink,
    /// Prompt followed by every sampled token.
    tokens: Vec<TokenId>,
    n_prompt: usize,
    n_cached: usize,
    /// Positions `0..n_computed` have KV in `cells`.
    n_computed: usize,
    /// The distinct pages the cells lie in (one reference held on each).
    pages: Vec<u32>,
    /// Position -> KV cell. Reused prefix cells come from the prefix cache (read only); from
    /// there on the sequence's own pages, a fresh page serving the rest of a partly reused
    /// stretch at the same offsets, so that later stretches are whole pages.
    cells: Vec<u32>,
    work: Work,
    /// Tokens planned for the current step.
    plan: usize,
    t_submit: Instant,
    t_admit: Instant,
    t_first: Option<Instant>,
    device_ms: f64,
}

impl Seq {
    fn n_gen(&self) -> usize {
        match &self.work {
            Work::Gen(g) => g.n_gen,
            Work::Embed(_) => 0,
        }
    }

    fn remaining(&self) -> usize {
        self.tokens.len() - self.n_computed
    }

    /// Extends the cell table to the next multiple of `PAGE` with cells of a fresh page.
    fn push_page(&mut self, page: u32) {
        self.pages.push(page);
        let base = page * PAGE as u32;
        let off = (self.cells.len() % PAGE) as u32;
        self.cells.extend(base + off..base + PAGE as u32);
    }

    /// Takes over cells reused from the prefix cache (the caller holds their pages' references).
    fn adopt(&mut self, reuse: Reuse) {
        self.n_computed = reuse.cells.len();
        self.cells = reuse.cells;
        self.pages = reuse.pages;
    }
}

enum Waiting {
    New(Request, Instant),
    /// Lost its KV to a sequence that was admitted earlier; recomputed when readmitted.
    Preempted(Box<Seq>),
}

impl Waiting {
    fn id(&self) -> u64 {
        match self {
            Waiting::New(r, _) => r.id,
            Waiting::Preempted(s) => s.id,
        }
    }
}

/// How a sequence ends.
enum End {
    Finished(FinishReason, Option<String>),
    Error(String),
}

/// What sampling one token decided.
enum Next {
    Continue,
    Finish(FinishReason, Option<String>),
    Gone,
    Error(String),
}

/// The engine's state machine; see the crate docs for the policy. Not thread-safe by itself:
/// [`crate::Engine::start`] runs one on its own thread.
pub struct Scheduler {
    ctx: Context,
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    cfg: EngineConfig,
    limits: Limits,
    shared: Arc<Shared>,
    pool: PagePool,
    cache: PrefixCache,
    slots: Vec<Option<Seq>>,
    waiting: VecDeque<Waiting>,
    next_order: u64,
    totals: Totals,
    closed: bool,
    audit_error: Option<String>,
    /// Final events, delivered after the stats snapshot so that a client that sees `Done` also
    /// sees its slot and cells released in `stats()`.
    outbox: Vec<(Sink, Event)>,
    // Per-step scratch, reused to keep the steady state free of allocations.
    order: Vec<usize>,
    b_tokens: Vec<TokenId>,
    b_slots: Vec<TokenSlot>,
    b_rows: Vec<u32>,
    /// (slot, output row) for the sequences that sample or pool this step.
    b_out: Vec<(usize, usize)>,
    /// End (exclusive) of each forward pass in `b_tokens`.
    b_ends: Vec<usize>,
    ub_rows: Vec<u32>,
    ub_out: Vec<f32>,
    out: Vec<f32>,
    /// Forward-pass milliseconds charged to each slot this step.
    charge: Vec<f64>,
    /// With [`Scheduler::record_passes`]: per forward pass, the runs of tokens it held.
    pass_log: Option<Vec<Vec<PassRun>>>,
}

/// A run of consecutive tokens of one request inside a forward pass (tests and debugging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassRun {
    pub request: u64,
    pub first_pos: u32,
    pub n_tokens: u32,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("cfg", &self.cfg)
            .field("waiting", &self.waiting.len())
            .field("busy", &self.busy())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Builds the context with the unified KV pool (`n_ctx` rounded up to whole pages).
    pub fn new(
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        cfg: EngineConfig,
    ) -> Result<Scheduler, EngineError> {
        Scheduler::with_offload(model, tok, cfg, None)
    }

    /// [`Scheduler::new`] with the last `n` layers (and the output layer when `n` exceeds the
    /// layer count, llama.cpp's `-ngl`) on `gpu`.
    pub fn with_offload(
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        mut cfg: EngineConfig,
        gpu: Option<(Box<dyn orchard_backend::Backend>, usize)>,
    ) -> Result<Scheduler, EngineError> {
        for (field, v) in [
            ("n_ctx", cfg.n_ctx),
            ("n_parallel", cfg.n_parallel),
            ("n_batch", cfg.n_batch),
            ("n_ubatch", cfg.n_ubatch),
        ] {
            if v == 0 {
                return Err(EngineError::InvalidConfig {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        let n_vocab = model.hp.n_vocab;
        if tok.n_vocab() > n_vocab {
            return Err(EngineError::VocabMismatch {
                tokenizer: tok.n_vocab(),
                model: n_vocab,
            });
        }
        let n_pages = cfg.n_ctx.div_ceil(PAGE);
        cfg.n_ctx = n_pages * PAGE;
        let opts = ContextOptions {
            n_ctx: cfg.n_ctx,
            type_k: cfg.type_k,
            type_v: cfg.type_v,
        };
        let ctx = Context::with_offload(model.clone(), opts, gpu)?;
        let limits = Limits {
            n_ctx: cfg.n_ctx,
            n_vocab,
            n_parallel: cfg.n_parallel,
            max_queue: cfg.max_queue,
        };
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            stats: Mutex::new(EngineStats::default()),
        });
        let mut s = Scheduler {
            ctx,
            model,
            tok,
            limits,
            shared,
            pool: PagePool::new(n_pages),
            cache: PrefixCache::default(),
            slots: (0..cfg.n_parallel).map(|_| None).collect(),
            waiting: VecDeque::new(),
            next_order: 0,
            totals: Totals::default(),
            closed: false,
            audit_error: None,
            outbox: Vec::new(),
            order: Vec::new(),
            b_tokens: Vec::new(),
            b_slots: Vec::new(),
            b_rows: Vec::new(),
            b_out: Vec::new(),
            b_ends: Vec::new(),
            ub_rows: Vec::new(),
            ub_out: Vec::new(),
            out: Vec::new(),
            charge: Vec::new(),
            pass_log: None,
            cfg,
        };
        s.publish();
        Ok(s)
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits.clone()
    }

    /// The effective configuration (`n_ctx` rounded to pages).
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn model_info(&self) -> ModelInfo {
        let hp = &self.model.hp;
        let md = self.model.file.metadata();
        let name = md
            .get_str("general.name")
            .ok()
            .flatten()
            .map(str::to_string)
            .or_else(|| {
                self.cfg
                    .model_path
                    .as_ref()
                    .and_then(|p| p.file_stem())
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| hp.arch.clone());
        ModelInfo {
            n_ctx: self.cfg.n_ctx,
            n_parallel: self.cfg.n_parallel,
            n_vocab: hp.n_vocab,
            n_embd: hp.n_embd,
            n_ctx_train: hp.n_ctx_train,
            arch: hp.arch.clone(),
            path: self.cfg.model_path.clone(),
            name,
            n_params: self
                .model
                .file
                .tensors()
                .iter()
                .map(|t| t.n_elements())
                .sum(),
            size_bytes: self.model.weight_bytes(),
        }
    }

    /// Starts (or stops) recording which tokens each forward pass holds.
    pub fn record_passes(&mut self, on: bool) {
        self.pass_log = on.then(Vec::new);
    }

    /// The passes recorded since the last call: each a list of runs, in batch order.
    pub fn take_passes(&mut self) -> Vec<Vec<PassRun>> {
        self.pass_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Validates and queues a request (the synchronous twin of `EngineHandle::submit`).
    pub fn submit(&mut self, req: Request) -> Result<(), SubmitError> {
        if self.closed {
            return Err(SubmitError::ShuttingDown);
        }
        validate(&req, &self.limits)?;
        reserve_queue_place(&self.shared, &self.limits)?;
        self.enqueue_reserved(req, Instant::now());
        Ok(())
    }

    /// Queues a request that already passed `validate` and holds a queue place.
    pub(crate) fn enqueue_reserved(&mut self, req: Request, t_submit: Instant) {
        if self.closed {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            let mut sink = req.sink;
            self.totals.requests_cancelled += 1;
            emit(&mut sink, cancelled_done(req.prompt.len(), t_submit));
            return;
        }
        self.waiting.push_back(Waiting::New(req, t_submit));
    }

    /// Ends a waiting or running request with `Done { Cancelled }`. Returns whether it was found.
    pub fn cancel(&mut self, id: u64) -> bool {
        let found = if let Some(i) = self.slot_of(id) {
            self.end_slot(i, End::Finished(FinishReason::Cancelled, None));
            true
        } else if let Some(w) = self.waiting.iter().position(|w| w.id() == id) {
            let w = self.waiting.remove(w).expect("index from position");
            self.drop_waiting(w);
            true
        } else {
            false
        };
        if found {
            self.publish();
            self.deliver();
        }
        found
    }

    /// Nothing running and nothing waiting.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.slots.iter().all(Option::is_none)
    }

    /// A snapshot of the current state.
    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats::default();
        self.fill_stats(&mut s);
        s
    }

    /// Checks the KV accounting: every page's reference count equals the number of sequences
    /// and cache nodes holding it, free pages are exactly those with no holder, and every cell
    /// table matches its pages.
    pub fn audit_kv(&self) -> Result<(), String> {
        let mut counts = vec![0u32; self.pool.n_pages()];
        self.cache.count_refs(&mut counts)?;
        for s in self.slots.iter().flatten() {
            for &p in &s.pages {
                counts[p as usize] += 1;
            }
            if s.n_computed > s.cells.len() {
                return Err(format!(
                    "request {}: {} cells, {} computed",
                    s.id,
                    s.cells.len(),
                    s.n_computed
                ));
            }
            let mut distinct = s.cells.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let mut held = s.pages.clone();
            held.sort_unstable();
            if distinct.len() != s.cells.len() || held != pages_of(&distinct) {
                return Err(format!(
                    "request {}: cell table repeats a cell or does not match its pages",
                    s.id
                ));
            }
        }
        for w in &self.waiting {
            if let Waiting::Preempted(s) = w {
                if !s.pages.is_empty() {
                    return Err(format!("preempted request {} still holds pages", s.id));
                }
            }
        }
        self.pool.audit(&counts)
    }

    /// Cancels everything, waiting or running, and refuses later submissions.
    pub fn shutdown(&mut self) {
        self.closed = true;
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                self.end_slot(i, End::Finished(FinishReason::Cancelled, None));
            }
        }
        while let Some(w) = self.waiting.pop_front() {
            self.drop_waiting(w);
        }
        self.publish();
        self.deliver();
    }

    /// One scheduler step: admit waiting requests, plan at most `n_batch` tokens, run them and
    /// hand out the results. Returns whether the model ran.
    pub fn step(&mut self) -> bool {
        let t0 = Instant::now();
        self.admit();
        self.plan();
        self.allocate();
        let ran_gen = self.run(false);
        let ran_embd = self.run(true);
        let ran = ran_gen || ran_embd;
        if ran {
            self.totals.steps += 1;
        }
        if self.cfg.audit_kv && self.audit_error.is_none() {
            if let Err(e) = self.audit_kv() {
                tracing::error!(error = %e, "KV accounting is inconsistent");
                self.audit_error = Some(e);
            }
        }
        if ran {
            // Publishing the stats and delivering final events (a lock and a few sends) are
            // left out so that the figure is current in the stats it is published with.
            self.totals.step_ms += ms(t0, Instant::now());
        }
        self.publish();
        self.deliver();
        ran
    }

    // ---- admission -----------------------------------------------------------------------

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn slot_of(&self, id: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.id == id))
    }

    /// Gives free slots to waiting requests in order (preempted ones first, as they are put at
    /// the front). A request is admitted only when the pool can hold its prompt plus a page per
    /// running sequence (free pages plus what the prefix cache could give back), unless nothing
    /// else is running.
    fn admit(&mut self) {
        while let Some(free) = self.slots.iter().position(Option::is_none) {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            let tokens: &[TokenId] = match &w {
                Waiting::New(r, _) => &r.prompt,
                Waiting::Preempted(s) => &s.tokens,
            };
            let reuse_ok = self.cfg.cache_prompt
                && match &w {
                    Waiting::New(r, _) => match &r.kind {
                        RequestKind::Generate(g) => g.cache_prompt,
                        RequestKind::Embed { .. } => false,
                    },
                    Waiting::Preempted(s) => matches!(s.work, Work::Gen(_)),
                };
            // At least the last token is recomputed: its logits are needed.
            let reused = if reuse_ok {
                self.cache.lookup(&mut self.pool, tokens, tokens.len() - 1)
            } else {
                Reuse::default()
            };
            // Beside the prompt, one page of headroom per running sequence: admitting into a
            // pool that the running sequences are about to fill would only get the newcomer
            // (the youngest) preempted again at once.
            let busy = self.busy();
            let need = tokens.len().div_ceil(PAGE) - reused.cells.len() / PAGE + busy;
            let have = self.pool.n_free() + self.cache.n_evictable(&self.pool);
            if need > have && busy > 0 {
                for &p in &reused.pages {
                    self.pool.release(p);
                }
                self.waiting.push_front(w);
                break;
            }
            match w {
                Waiting::Preempted(mut s) => {
                    s.adopt(reused);
                    s.order = self.next_order;
                    self.next_order += 1;
                    self.slots[free] = Some(*s);
                }
                Waiting::New(r, t_submit) => {
                    self.shared.pending.fetch_sub(1, Ordering::AcqRel);
                    self.start_new(free, r, t_submit, reused);
                }
            }
            self.shared.busy.store(self.busy(), Ordering::Release);
        }
    }

    fn start_new(&mut self, slot: usize, r: Request, t_submit: Instant, reused: Reuse) {
        let now = Instant::now();
        let n_prompt = r.prompt.len();
        let n_cached = reused.cells.len();
        let (work, zero_budget) = match r.kind {
            RequestKind::Generate(g) => match gen_state(g, &r.prompt) {
                Ok(g) => {
                    let zero = g.max_tokens == Some(0);
                    (Work::Gen(Box::new(g)), zero)
                }
                Err(e) => {
                    for &p in &reused.pages {
                        self.pool.release(p);
                    }
                    let mut sink = r.sink;
                    self.totals.requests_error += 1;
                    self.outbox
                        .push((sink_take(&mut sink), Event::Error { message: e }));
                    return;
                }
            },
            RequestKind::Embed { pooling, normalize } => (
                Work::Embed(EmbedState {
                    pooling,
                    normalize,
                    acc: Vec::new(),
                }),
                false,
            ),
        };
        let mut seq = Seq {
            id: r.id,
            order: self.next_order,
            sink: r.sink,
            tokens: r.prompt,
            n_prompt,
            n_cached,
            n_computed: n_cached,
            pages: Vec::with_capacity(n_prompt.div_ceil(PAGE) + 1),
            cells: Vec::new(),
            work,
            plan: 0,
            t_submit,
            t_admit: now,
            t_first: None,
            device_ms: 0.0,
        };
        self.next_order += 1;
        seq.adopt(reused);
        self.totals.prompt_tokens += n_prompt as u64;
        self.totals.cached_prompt_tokens += n_cached as u64;
        let queue_ms = ms(t_submit, now);
        // Published before the client hears of it, so that a client reacting to `Started`
        // sees the slot taken (the queue limit depends on it).
        self.slots[slot] = Some(seq);
        self.shared.busy.store(self.busy(), Ordering::Release);
        let seq = self.slots[slot].as_mut().expect("just placed");
        let alive = emit(
            &mut seq.sink,
            Event::Started {
                n_prompt,
                n_cached,
                slot,
                queue_ms,
            },
        );
        if !alive {
            self.end_slot(slot, End::Finished(FinishReason::Cancelled, None));
        } else if zero_budget {
            self.end_slot(slot, End::Finished(FinishReason::Length, None));
        }
    }

    /// Answers a request that leaves the queue without running.
    fn drop_waiting(&mut self, w: Waiting) {
        self.totals.requests_cancelled += 1;
        match w {
            Waiting::New(r, t_submit) => {
                self.shared.pending.fetch_sub(1, Ordering::AcqRel);
                let mut sink = r.sink;
                let ev = cancelled_done(r.prompt.len(), t_submit);
                self.outbox.push((sink_take(&mut sink), ev));
            }
            Waiting::Preempted(mut s) => {
                let ev = done_event(&s, FinishReason::Cancelled, None);
                self.outbox.push((sink_take(&mut s.sink), ev));
            }
        }
    }

    // ---- planning and pages --------------------------------------------------------------

    /// Most tokens of one prompt fed in one forward pass.
    fn chunk_max(&self) -> usize {
        self.cfg.n_ubatch.min(self.cfg.n_batch)
    }

    /// Decode tokens first (one per running sequence, oldest first), then prompt chunks in age
    /// order with what is left of `n_batch`.
    ///
    /// A prompt is always fed in the chunks it would get alone: `chunk_max` tokens counted from
    /// where its computation started, the last one shorter. A chunk that does not fit in what
    /// is left of the step waits for the next step instead of being cut, so how a sequence is
    /// split into forward passes never depends on what else runs (the CPU kernels choose their
    /// float order from the number of a sequence's tokens in a pass, see `run`). Only when
    /// decode tokens alone leave too little room for any chunk (`n_batch` below
    /// `n_ubatch + n_parallel`) is the oldest prompt cut, so that it still progresses.
    fn plan(&mut self) {
        self.order.clear();
        self.order
            .extend((0..self.slots.len()).filter(|&i| self.slots[i].is_some()));
        let slots = &self.slots;
        self.order
            .sort_by_key(|&i| slots[i].as_ref().map_or(u64::MAX, |s| s.order));
        let chunk_max = self.chunk_max();
        let mut left = self.cfg.n_batch;
        for &i in &self.order {
            let s = self.slots[i].as_mut().expect("active");
            s.plan = 0;
            if s.remaining() == 1 && left > 0 {
                s.plan = 1;
                left -= 1;
            }
        }
        let mut prefilled = false;
        let cramped = self.cfg.n_batch < chunk_max + self.slots.len();
        for &i in &self.order {
            let s = self.slots[i].as_mut().expect("active");
            if s.plan > 0 || s.remaining() == 0 {
                continue;
            }
            while s.plan < s.remaining() {
                let c = (s.remaining() - s.plan).min(chunk_max);
                if c > left {
                    let starved = !prefilled && s.plan == 0 && left > 0;
                    if starved && cramped {
                        s.plan = left;
                        left = 0;
                    }
                    break;
                }
                s.plan += c;
                left -= c;
            }
            prefilled |= s.plan > 0;
        }
    }

    /// Gives every planned sequence the pages its chunk writes to, oldest first, evicting the
    /// prefix cache and then preempting younger sequences when the pool is dry.
    fn allocate(&mut self) {
        for k in 0..self.order.len() {
            let i = self.order[k];
            while let Some(s) = self.slots[i].as_ref() {
                if s.cells.len() >= s.n_computed + s.plan {
                    break;
                }
                if let Some(p) = self.pool.alloc() {
                    self.slots[i].as_mut().expect("checked").push_page(p);
                    continue;
                }
                if self.cache.evict_one(&mut self.pool) {
                    continue;
                }
                let my_order = s.order;
                let victim = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(j, o)| o.as_ref().map(|o| (j, o.order)))
                    .filter(|&(_, o)| o > my_order)
                    .max_by_key(|&(_, o)| o)
                    .map(|(j, _)| j);
                if let Some(j) = victim {
                    self.preempt(j);
                } else if self.busy() > 1 {
                    // The youngest itself waits for the older ones to finish.
                    self.preempt(i);
                } else {
                    // Alone and out of cells: only possible at a full context.
                    self.end_slot(i, End::Finished(FinishReason::Length, None));
                }
            }
        }
    }

    /// Drops a sequence's KV (offering its computed prefix to the prefix cache) and puts it at the
    /// head of the queue to be recomputed.
    fn preempt(&mut self, i: usize) {
        let Some(mut s) = self.slots[i].take() else {
            return;
        };
        tracing::debug!(
            request = s.id,
            tokens = s.tokens.len(),
            "preempted: KV pool is full"
        );
        self.release_pages(&mut s, true);
        s.plan = 0;
        if let Work::Embed(e) = &mut s.work {
            e.acc.clear();
        }
        self.totals.preemptions += 1;
        self.waiting.push_front(Waiting::Preempted(Box::new(s)));
        self.shared.busy.store(self.busy(), Ordering::Release);
    }

    /// Gives up a sequence's pages; with `keep`, its computed prefix goes to the prefix cache.
    fn release_pages(&mut self, s: &mut Seq, keep: bool) {
        if keep && self.cfg.cache_prompt && matches!(s.work, Work::Gen(_)) {
            self.cache
                .insert(&mut self.pool, &s.tokens, &s.cells[..s.n_computed]);
        }
        for p in s.pages.drain(..) {
            self.pool.release(p);
        }
        s.cells.clear();
        s.n_computed = 0;
    }

    // ---- forward passes ------------------------------------------------------------------

    /// Builds and runs this step's batch of generation sequences (or, with `hidden`, of
    /// embedding sequences: they need hidden states instead of logits, so they get their own
    /// pass) and processes the results.
    fn run(&mut self, hidden: bool) -> bool {
        self.b_tokens.clear();
        self.b_slots.clear();
        self.b_rows.clear();
        self.b_out.clear();
        self.b_ends.clear();
        // Forward passes hold whole chunks: a sequence's planned tokens are cut into the
        // chunks it would get alone (`plan`), each chunk stays contiguous inside one pass, and
        // a pass takes chunks in order while they fit in `n_ubatch`.
        let chunk_max = self.chunk_max();
        let mut in_pass = 0;
        for &i in &self.order {
            let Some(s) = self.slots[i].as_ref() else {
                continue;
            };
            if s.plan == 0 || matches!(s.work, Work::Embed(_)) != hidden {
                continue;
            }
            let mut rest = s.plan;
            while rest > 0 {
                let c = rest.min(chunk_max);
                if in_pass > 0 && in_pass + c > self.cfg.n_ubatch {
                    self.b_ends.push(self.b_tokens.len() + s.plan - rest);
                    in_pass = 0;
                }
                in_pass += c;
                rest -= c;
            }
            let end = s.n_computed + s.plan;
            let reaches_end = end == s.tokens.len();
            let pool_all = matches!(&s.work, Work::Embed(e) if e.pooling == Pooling::Mean);
            for pos in s.n_computed..end {
                let row = self.b_tokens.len();
                if pool_all || (reaches_end && pos + 1 == end) {
                    self.b_out.push((i, self.b_rows.len()));
                    self.b_rows.push(row as u32);
                }
                self.b_tokens.push(s.tokens[pos]);
                self.b_slots.push(TokenSlot {
                    seq: i as u32,
                    pos: pos as u32,
                });
            }
        }
        if self.b_tokens.is_empty() {
            return false;
        }
        self.b_ends.push(self.b_tokens.len());
        let res = self.forward(hidden);
        if let Err(e) = res {
            let msg = format!("model step failed: {e}");
            tracing::error!(error = %msg, "forward pass failed");
            for k in 0..self.order.len() {
                let i = self.order[k];
                let hit = self.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.plan > 0 && matches!(s.work, Work::Embed(_)) == hidden);
                if hit {
                    self.end_slot(i, End::Error(msg.clone()));
                }
            }
            return true;
        }
        for k in 0..self.order.len() {
            let i = self.order[k];
            if let Some(s) = self.slots[i].as_mut() {
                if s.plan > 0 && matches!(s.work, Work::Embed(_)) == hidden {
                    s.n_computed += s.plan;
                }
            }
        }
        if hidden {
            self.finish_embeddings();
        } else {
            let t0 = Instant::now();
            self.sample_all();
            self.totals.sample_ms += ms(t0, Instant::now());
        }
        true
    }

    /// Runs the batch in `n_ubatch` pieces, gathering the requested rows into `self.out` and
    /// charging each sequence its tokens' share of each pass.
    fn forward(&mut self, hidden: bool) -> Result<(), ModelError> {
        let tables: Vec<&[u32]> = self
            .slots
            .iter()
            .map(|s| s.as_ref().map_or(&[][..], |s| &s.cells[..]))
            .collect();
        let n = self.b_tokens.len();
        let width = if hidden {
            self.model.hp.n_embd
        } else {
            self.model.hp.n_vocab
        };
        self.out.clear();
        self.charge.clear();
        self.charge.resize(self.slots.len(), 0.0);
        let mut next_row = 0;
        let mut start = 0;
        for k in 0..self.b_ends.len() {
            let end = self.b_ends[k];
            self.ub_rows.clear();
            while next_row < self.b_rows.len() && (self.b_rows[next_row] as usize) < end {
                self.ub_rows.push(self.b_rows[next_row] - start as u32);
                next_row += 1;
            }
            if let Some(log) = self.pass_log.as_mut() {
                let mut runs: Vec<PassRun> = Vec::new();
                for t in &self.b_slots[start..end] {
                    let request = self.slots[t.seq as usize]
                        .as_ref()
                        .map_or(u64::MAX, |s| s.id);
                    match runs.last_mut() {
                        Some(r) if r.request == request && r.first_pos + r.n_tokens == t.pos => {
                            r.n_tokens += 1
                        }
                        _ => runs.push(PassRun {
                            request,
                            first_pos: t.pos,
                            n_tokens: 1,
                        }),
                    }
                }
                log.push(runs);
            }
            let batch = Batch {
                tokens: &self.b_tokens[start..end],
                slots: &self.b_slots[start..end],
                cells: &tables,
                logits: &self.ub_rows,
            };
            let t0 = Instant::now();
            if hidden {
                self.ctx.decode_hidden(&batch, &mut self.ub_out)?;
            } else {
                self.ctx.decode(&batch, &mut self.ub_out)?;
            }
            let pass_ms = ms(t0, Instant::now());
            self.totals.forward_ms += pass_ms;
            let per_token = pass_ms / (end - start) as f64;
            for s in &self.b_slots[start..end] {
                self.charge[s.seq as usize] += per_token;
            }
            if self.ub_out.len() != self.ub_rows.len() * width {
                return Err(ModelError::BadBatch(format!(
                    "{} output values for {} rows of {width}",
                    self.ub_out.len(),
                    self.ub_rows.len()
                )));
            }
            self.out.extend_from_slice(&self.ub_out);
            start = end;
        }
        debug_assert_eq!(start, n);
        drop(tables);
        for (s, &c) in self.slots.iter_mut().zip(&self.charge) {
            if let Some(s) = s {
                s.device_ms += c;
            }
        }
        Ok(())
    }

    fn sample_all(&mut self) {
        let n_vocab = self.model.hp.n_vocab;
        for k in 0..self.b_out.len() {
            let (i, row) = self.b_out[k];
            let Some(seq) = self.slots[i].as_mut() else {
                continue;
            };
            let logits = &self.out[row * n_vocab..(row + 1) * n_vocab];
            let tok = &self.tok;
            let n_ctx = self.cfg.n_ctx;
            let next = catch_unwind(AssertUnwindSafe(|| next_token(seq, tok, logits, n_ctx)))
                .unwrap_or_else(|_| Next::Error("internal error while sampling".into()));
            if !matches!(next, Next::Error(_)) {
                self.totals.generated_tokens += 1;
            }
            match next {
                Next::Continue => {}
                Next::Finish(f, stop) => self.end_slot(i, End::Finished(f, stop)),
                Next::Gone => self.end_slot(i, End::Finished(FinishReason::Cancelled, None)),
                Next::Error(e) => self.end_slot(i, End::Error(e)),
            }
        }
    }

    fn finish_embeddings(&mut self) {
        let n_embd = self.model.hp.n_embd;
        for k in 0..self.b_out.len() {
            let (i, row) = self.b_out[k];
            let Some(seq) = self.slots[i].as_mut() else {
                continue;
            };
            let Work::Embed(e) = &mut seq.work else {
                continue;
            };
            let h = &self.out[row * n_embd..(row + 1) * n_embd];
            match e.pooling {
                Pooling::Mean if !e.acc.is_empty() => {
                    e.acc.iter_mut().zip(h).for_each(|(a, &x)| *a += x)
                }
                _ => {
                    e.acc.clear();
                    e.acc.extend_from_slice(h);
                }
            }
        }
        for k in 0..self.order.len() {
            let i = self.order[k];
            let done = self.slots[i].as_ref().is_some_and(|s| {
                matches!(s.work, Work::Embed(_)) && s.plan > 0 && s.remaining() == 0
            });
            if !done {
                continue;
            }
            let seq = self.slots[i].as_mut().expect("checked");
            let n = seq.n_prompt;
            let Work::Embed(e) = &mut seq.work else {
                continue;
            };
            let mut v = std::mem::take(&mut e.acc);
            if e.pooling == Pooling::Mean {
                let inv = 1.0 / n as f32;
                v.iter_mut().for_each(|x| *x *= inv);
            }
            if e.normalize {
                let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                if norm > 0.0 {
                    let inv = (1.0 / norm) as f32;
                    v.iter_mut().for_each(|x| *x *= inv);
                }
            }
            if emit(&mut seq.sink, Event::Embedding(v)) {
                self.end_slot(i, End::Finished(FinishReason::Stop, None));
            } else {
                self.end_slot(i, End::Finished(FinishReason::Cancelled, None));
            }
        }
    }

    // ---- endings and reporting -----------------------------------------------------------

    /// Frees slot `i` and queues its final event.
    fn end_slot(&mut self, i: usize, end: End) {
        let Some(mut s) = self.slots[i].take() else {
            return;
        };
        let keep = !matches!(end, End::Error(_));
        self.release_pages(&mut s, keep);
        let ev = match end {
            End::Finished(f, stop) => {
                match f {
                    FinishReason::Cancelled => self.totals.requests_cancelled += 1,
                    _ => self.totals.requests_ok += 1,
                }
                let ev = done_event(&s, f, stop);
                if let Event::Done { timings, .. } = &ev {
                    self.totals.prompt_ms += timings.prompt_ms;
                    self.totals.gen_ms += timings.gen_ms;
                }
                ev
            }
            End::Error(message) => {
                self.totals.requests_error += 1;
                Event::Error { message }
            }
        };
        self.outbox.push((sink_take(&mut s.sink), ev));
        self.shared.busy.store(self.busy(), Ordering::Release);
    }

    fn fill_stats(&self, st: &mut EngineStats) {
        let preempted = self
            .waiting
            .iter()
            .filter(|w| matches!(w, Waiting::Preempted(_)))
            .count();
        st.queue_depth = self.shared.pending.load(Ordering::Acquire) + preempted;
        st.n_slots = self.slots.len();
        st.busy_slots = self.busy();
        let total = self.pool.n_pages() * PAGE;
        st.kv_total_cells = total;
        st.kv_free_cells = self.pool.n_free() * PAGE;
        st.kv_used_cells = total - st.kv_free_cells;
        st.kv_cached_cells = self.cache.n_evictable(&self.pool) * PAGE;
        st.kv_audit_error = self.audit_error.clone();
        st.slots.resize_with(self.slots.len(), SlotInfo::default);
        for (id, (info, s)) in st.slots.iter_mut().zip(&self.slots).enumerate() {
            *info = match s {
                Some(s) => SlotInfo {
                    id,
                    is_processing: true,
                    request_id: Some(s.id),
                    n_ctx_used: s.n_computed,
                    n_prompt: s.n_prompt,
                    n_decoded: s.n_gen(),
                },
                None => SlotInfo {
                    id,
                    ..SlotInfo::default()
                },
            };
        }
        st.totals = self.totals;
    }

    fn publish(&mut self) {
        let mut st = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        self.fill_stats(&mut st);
    }

    fn deliver(&mut self) {
        for (mut sink, ev) in self.outbox.drain(..) {
            emit(&mut sink, ev);
        }
    }
}

/// Calls a sink; a panicking sink counts as a client that went away.
fn emit(sink: &mut Sink, ev: Event) -> bool {
    catch_unwind(AssertUnwindSafe(|| sink(ev))).unwrap_or(false)
}

/// Moves a sink out (leaving one that ignores everything).
fn sink_take(sink: &mut Sink) -> Sink {
    std::mem::replace(sink, Box::new(|_| false))
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

fn cancelled_done(n_prompt: usize, t_submit: Instant) -> Event {
    Event::Done {
        finish: FinishReason::Cancelled,
        usage: Usage {
            prompt_tokens: n_prompt,
            cached_tokens: 0,
            completion_tokens: 0,
        },
        timings: Timings {
            queue_ms: ms(t_submit, Instant::now()),
            ..Timings::default()
        },
        stop_text: None,
    }
}

fn done_event(s: &Seq, finish: FinishReason, stop_text: Option<String>) -> Event {
    let now = Instant::now();
    let (prompt_ms, gen_ms, first_token_ms) = match s.t_first {
        Some(t) => (ms(s.t_admit, t), ms(t, now), ms(s.t_submit, t)),
        None => (ms(s.t_admit, now), 0.0, 0.0),
    };
    Event::Done {
        finish,
        usage: Usage {
            prompt_tokens: s.n_prompt,
            cached_tokens: s.n_cached,
            completion_tokens: s.n_gen(),
        },
        timings: Timings {
            queue_ms: ms(s.t_submit, s.t_admit),
            prompt_ms,
            gen_ms,
            device_ms: s.device_ms,
            first_token_ms,
        },
        stop_text,
    }
}

fn gen_state(g: GenParams, prompt: &[TokenId]) -> Result<GenState, String> {
    let mut sampler = Sampler::new(g.sampler).map_err(|e| e.to_string())?;
    // The penalties look at the prompt too, as llama-server's do.
    for &t in prompt {
        sampler.accept(t);
    }
    Ok(GenState {
        sampler,
        decoder: StreamDecoder::new(true),
        stop: StopText::new(g.stop),
        max_tokens: g.max_tokens,
        ignore_eos: g.ignore_eos,
        n_probs: g.n_probs,
        constraint: g.constraint,
        n_gen: 0,
    })
}

/// Samples the next token of `seq` from `logits`, streams it, and decides whether to go on.
fn next_token(seq: &mut Seq, tok: &Tokenizer, logits: &[f32], n_ctx: usize) -> Next {
    let Work::Gen(g) = &mut seq.work else {
        return Next::Error("not a generation".into());
    };
    let (id, logprobs) = match g.constraint.as_mut() {
        Some(c) => {
            let mut filter = |cands: &mut Vec<Candidate>| c.allowed(tok, cands);
            let Some(id) = g.sampler.sample_filtered(logits, &mut filter) else {
                return Next::Error("the output constraint allows no further token".into());
            };
            let lp = (g.n_probs > 0)
                .then(|| logprobs_of(logits, &g.sampler.config().logit_bias, id, g.n_probs));
            (id, lp)
        }
        None if g.n_probs > 0 => {
            let s = g.sampler.sample_with_logprobs(logits, g.n_probs);
            let lp = TokenLogprobs {
                id: s.token,
                logprob: s.logprob,
                top: s.top,
            };
            (s.token, Some(lp))
        }
        None => (g.sampler.sample(logits), None),
    };
    g.sampler.accept(id);
    if let Some(c) = g.constraint.as_mut() {
        c.accept(tok, id);
    }
    g.n_gen += 1;
    seq.tokens.push(id);
    if seq.t_first.is_none() {
        seq.t_first = Some(Instant::now());
    }

    let eog = !g.ignore_eos && tok.is_eog(id);
    let piece = g.decoder.push(tok, id);
    let mut finish = None;
    let mut stop_text = None;
    let mut text = match g.stop.push(&piece) {
        Pushed::Stop { before, stop } => {
            finish = Some(FinishReason::Stop);
            stop_text = Some(stop);
            before
        }
        Pushed::Text(t) => t,
    };
    if finish.is_none() {
        if eog || g.constraint.as_ref().is_some_and(|c| c.is_complete()) {
            finish = Some(FinishReason::Stop);
        } else if g.max_tokens.is_some_and(|m| g.n_gen >= m) || seq.tokens.len() >= n_ctx {
            finish = Some(FinishReason::Length);
        }
        if finish.is_some() {
            // Nothing can complete a stop string any more: show what was held back.
            text.push_str(&g.stop.finish());
            text.push_str(&g.decoder.flush());
        }
    }
    let alive = emit(&mut seq.sink, Event::Token { id, text, logprobs });
    match finish {
        Some(f) => Next::Finish(f, stop_text),
        None if !alive => Next::Gone,
        None => Next::Continue,
    }
}

/// Log-probabilities of the biased raw logits (what `sample_with_logprobs` reports), for the
/// constrained path where the sampler's own helper cannot be used.
fn logprobs_of(logits: &[f32], bias: &[(TokenId, f32)], id: TokenId, n: usize) -> TokenLogprobs {
    let mut row: Vec<f32> = logits
        .iter()
        .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l })
        .collect();
    for &(t, b) in bias {
        if let Some(l) = row.get_mut(t as usize) {
            *l += b;
        }
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = if max == f32::NEG_INFINITY {
        f32::NEG_INFINITY
    } else {
        let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
        (max as f64 + sum.ln()) as f32
    };
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let n = n.min(idx.len());
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if n > 0 && n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
    }
    idx.truncate(n);
    idx.sort_by(cmp);
    TokenLogprobs {
        id,
        logprob: row.get(id as usize).map_or(f32::NEG_INFINITY, |&l| l - lse),
        top: idx.iter().map(|&t| (t, row[t as usize] - lse)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_of_sorts_and_normalizes() {
        let lp = logprobs_of(&[0.0, 2.0, 1.0, f32::NAN], &[(0, 1.5)], 2, 2);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 0]);
        let total: f32 = [1.5f32, 2.0, 1.0].iter().map(|&l| l.exp()).sum();
        assert!((lp.logprob - (1.0 - total.ln())).abs() < 1e-5);
        assert!((lp.top[0].1 - (2.0 - total.ln())).abs() < 1e-5);
    }
}
