//! The generation endpoints: `/v1/chat/completions`, `/v1/completions` and llama-server's
//! `/completion`. Each turns its body into prompts plus engine parameters, submits one engine
//! request per choice, and renders the events as one JSON answer or as an SSE stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use orchard_core::TokenId;
use orchard_engine::{Event, FinishReason, GenParams, Request, RequestKind, TokenConstraint};
use orchard_grammar::{CharMatcher, GrammarConstraint, JsonConstraint, TextConstraint};
use orchard_sampler::Candidate;
use orchard_template::ChatMessage;
use orchard_tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auth::{Principal, UsageRecord};
use crate::error::ApiError;
use crate::metrics::Finished;
use crate::params::{self, get, opt_bool, parse_gen, Api, GenRequest, Obj};
use crate::state::{AppState, Loaded};

/// llama-server's `system_fingerprint` starts with `b` and the build number.
pub const FINGERPRINT: &str = concat!("b", env!("CARGO_PKG_VERSION"), "-orchard");

/// Gap between whitespace bytes of a non-streaming answer while it is being computed.
const HEARTBEAT: Duration = Duration::from_millis(250);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Adapts the grammar crate's constraints to the engine's hook. The engine stops once nothing
/// more may be generated; until then an end-of-generation token is allowed whenever the text
/// is complete.
struct Hook<M>(TextConstraint<M>);

impl<M: CharMatcher + Send> TokenConstraint for Hook<M> {
    fn allowed(&mut self, tok: &Tokenizer, candidates: &mut Vec<Candidate>) {
        self.0.allowed(tok, candidates)
    }
    fn accept(&mut self, tok: &Tokenizer, id: TokenId) {
        self.0.accept(tok, id)
    }
    fn is_complete(&self) -> bool {
        self.0.is_finished()
    }
}

/// What the sink observes on the engine thread, so metrics and usage are recorded even when
/// the client is gone before the final event.
struct Tracker {
    state: Arc<AppState>,
    principal: Principal,
    endpoint: &'static str,
    request_id: u64,
    choice: usize,
    t0: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    gaps: Vec<f64>,
}

impl Tracker {
    /// Passes an event on to the response. The final event goes out only once its usage record
    /// is durable (`record_then`), so a response that ended is always in the ledger.
    fn deliver(&mut self, ev: Event, tx: &mpsc::UnboundedSender<(usize, Event)>, i: usize) -> bool {
        match self.observe(&ev) {
            None => tx.send((i, ev)).is_ok(),
            Some(rec) => {
                let tx2 = tx.clone();
                self.state.hooks.usage.record_then(
                    &rec,
                    Box::new(move || {
                        let _ = tx2.send((i, ev));
                    }),
                );
                !tx.is_closed()
            }
        }
    }

    /// Returns the usage record when `ev` ends the request.
    fn observe(&mut self, ev: &Event) -> Option<UsageRecord> {
        match ev {
            Event::Token { .. } => {
                let now = Instant::now();
                if self.first.is_none() {
                    self.first = Some(now);
                }
                if let Some(l) = self.last {
                    self.gaps.push(now.duration_since(l).as_secs_f64() * 1e3);
                }
                self.last = Some(now);
                None
            }
            Event::Embedding(_) => {
                if self.first.is_none() {
                    self.first = Some(Instant::now());
                }
                None
            }
            Event::Done {
                finish,
                usage,
                timings,
                ..
            } => {
                let status = if *finish == FinishReason::Cancelled {
                    "cancelled"
                } else {
                    "ok"
                };
                Some(self.finish(
                    status,
                    usage.prompt_tokens,
                    usage.cached_tokens,
                    usage.completion_tokens,
                    timings,
                ))
            }
            Event::Error { message } => {
                tracing::warn!(id = self.request_id, error = %message, "request failed");
                Some(self.finish("error", 0, 0, 0, &Default::default()))
            }
            Event::Started { .. } => None,
        }
    }

    fn finish(
        &mut self,
        status: &'static str,
        prompt: usize,
        cached: usize,
        completion: usize,
        timings: &orchard_engine::Timings,
    ) -> UsageRecord {
        let (queue_ms, prompt_ms, gen_ms) = (timings.queue_ms, timings.prompt_ms, timings.gen_ms);
        let total_ms = self.t0.elapsed().as_secs_f64() * 1e3;
        let ttft = self
            .first
            .map(|f| f.duration_since(self.t0).as_secs_f64() * 1e3);
        self.state.metrics.record(&Finished {
            key_id: self.principal.key_id.clone(),
            status,
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: completion,
            prompt_ms,
            gen_ms,
            ttft_ms: ttft,
            total_ms,
            inter_token_ms: std::mem::take(&mut self.gaps),
        });
        self.state.touch();
        let model = self
            .state
            .facts()
            .map(|f| f.public_name.clone())
            .unwrap_or_default();
        let rec = UsageRecord {
            request_id: self.request_id,
            choice: self.choice,
            principal: self.principal.clone(),
            model,
            endpoint: self.endpoint.to_string(),
            status,
            http_status: 200,
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: completion,
            queue_ms,
            prompt_ms,
            gen_ms,
            ttft_ms: ttft.unwrap_or(0.0),
            total_ms,
            device_ms: timings.device_ms,
        };
        tracing::info!(
            id = self.request_id,
            key_id = %self.principal.key_id,
            endpoint = self.endpoint,
            status,
            prompt_tokens = prompt,
            cached_tokens = cached,
            completion_tokens = completion,
            queue_ms = format!("{queue_ms:.1}"),
            prompt_ms = format!("{prompt_ms:.1}"),
            gen_ms = format!("{gen_ms:.1}"),
            ttft_ms = format!("{:.1}", ttft.unwrap_or(0.0)),
            total_ms = format!("{total_ms:.1}"),
            "request"
        );
        rec
    }
}

/// One submitted engine request and what has come back for it.
#[derive(Default, Clone)]
pub struct Choice {
    pub index: usize,
    pub prompt: Vec<TokenId>,
    pub text: String,
    pub tokens: Vec<TokenId>,
    pub probs: Vec<orchard_engine::TokenLogprobs>,
    pub n_prompt: usize,
    pub n_cached: usize,
    pub slot: Option<usize>,
    pub finish: Option<FinishReason>,
    pub stop_text: Option<String>,
    pub usage: orchard_engine::Usage,
    pub timings: orchard_engine::Timings,
    pub error: Option<String>,
    /// When the request got its slot (for synthesized prompt progress).
    pub started_at: Option<Instant>,
}

impl Choice {
    fn done(&self) -> bool {
        self.finish.is_some() || self.error.is_some()
    }

    /// Applies one event; returns whether it ended the choice.
    fn apply(&mut self, ev: &Event) {
        match ev {
            Event::Started {
                n_prompt,
                n_cached,
                slot,
                ..
            } => {
                self.n_prompt = *n_prompt;
                self.n_cached = *n_cached;
                self.slot = Some(*slot);
                self.started_at = Some(Instant::now());
            }
            Event::Token { id, text, logprobs } => {
                self.text.push_str(text);
                self.tokens.push(*id);
                if let Some(lp) = logprobs {
                    self.probs.push(lp.clone());
                }
            }
            Event::Embedding(_) => {}
            Event::Done {
                finish,
                usage,
                timings,
                stop_text,
            } => {
                self.finish = Some(*finish);
                self.usage = *usage;
                self.timings = *timings;
                self.stop_text = stop_text.clone();
            }
            Event::Error { message } => self.error = Some(message.clone()),
        }
    }

    pub fn oai_finish(&self) -> &'static str {
        match self.finish {
            Some(FinishReason::Length) => "length",
            _ => "stop",
        }
    }

    fn stop_type(&self) -> &'static str {
        match self.finish {
            Some(FinishReason::Stop) if self.stop_text.is_some() => "word",
            Some(FinishReason::Stop) => "eos",
            Some(FinishReason::Length) => "limit",
            _ => "none",
        }
    }

    /// llama-server's `timings` object. The generation rate leaves out the first token, which
    /// comes from the prompt's last forward pass.
    pub fn timings_json(&self) -> Value {
        let t = &self.timings;
        let u = &self.usage;
        let prompt_n = u.prompt_tokens.saturating_sub(u.cached_tokens);
        let pred = u.completion_tokens;
        let rate = |n: usize, ms: f64| {
            if ms > 0.0 && n > 0 {
                1e3 * n as f64 / ms
            } else {
                0.0
            }
        };
        let per = |n: usize, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
        let steps = pred.saturating_sub(1);
        json!({
            "cache_n": u.cached_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": t.prompt_ms,
            "prompt_per_token_ms": per(prompt_n, t.prompt_ms),
            "prompt_per_second": rate(prompt_n, t.prompt_ms),
            "predicted_n": pred,
            "predicted_ms": t.gen_ms,
            "predicted_per_token_ms": per(steps, t.gen_ms),
            "predicted_per_second": rate(steps, t.gen_ms),
        })
    }
}

pub fn usage_json(choices: &[Choice]) -> Value {
    // The prompt is counted once even when several choices share it (OpenAI's `n`).
    let mut prompt = 0;
    let mut cached = 0;
    let mut seen = std::collections::HashSet::new();
    let mut completion = 0;
    for c in choices {
        if seen.insert(c.prompt.clone()) {
            prompt += c.usage.prompt_tokens.max(c.prompt.len());
            cached += c.usage.cached_tokens;
        }
        completion += c.usage.completion_tokens;
    }
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn piece(tok: &Tokenizer, id: TokenId) -> (String, Vec<u8>) {
    let b = tok.token_to_piece(id, false);
    let s = String::from_utf8_lossy(&b).into_owned();
    (s, b)
}

/// `-inf` would serialize as null; llama-server clamps it to the lowest float too.
fn finite(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        f32::MIN
    }
}

fn probs_json(tok: &Tokenizer, lp: &orchard_engine::TokenLogprobs, post: bool) -> Value {
    let (t, b) = piece(tok, lp.id);
    let top: Vec<Value> = lp
        .top
        .iter()
        .filter(|(_, l)| !post || l.exp() > 0.0)
        .map(|(id, l)| {
            let (t, b) = piece(tok, *id);
            if post {
                json!({"id": id, "token": t, "bytes": b, "prob": l.exp()})
            } else {
                json!({"id": id, "token": t, "bytes": b, "logprob": finite(*l)})
            }
        })
        .collect();
    if post {
        json!({"id": lp.id, "token": t, "bytes": b, "prob": lp.logprob.exp(), "top_probs": top})
    } else {
        json!({"id": lp.id, "token": t, "bytes": b, "logprob": finite(lp.logprob), "top_logprobs": top})
    }
}

fn chat_logprobs_json(tok: &Tokenizer, lps: &[orchard_engine::TokenLogprobs]) -> Value {
    json!({ "content": lps.iter().map(|lp| probs_json(tok, lp, false)).collect::<Vec<_>>() })
}

fn oai_completion_logprobs(tok: &Tokenizer, lps: &[orchard_engine::TokenLogprobs]) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    let mut off = 0usize;
    for lp in lps {
        let (t, _) = piece(tok, lp.id);
        offsets.push(off);
        off += t.len();
        tokens.push(t);
        token_logprobs.push(finite(lp.logprob));
        let mut m = Map::new();
        for (id, l) in &lp.top {
            m.insert(piece(tok, *id).0, json!(finite(*l)));
        }
        top.push(Value::Object(m));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

/// Everything shared by the choices of one HTTP request.
pub struct Job {
    pub api: Api,
    pub endpoint: &'static str,
    pub loaded: Arc<Loaded>,
    pub gen: GenRequest,
    pub id: String,
    pub created: u64,
    /// Prompt text shown in llama-format answers and `__verbose`.
    pub prompt_text: Vec<String>,
    pub verbose: bool,
    pub choices: Vec<Choice>,
    /// `-b`: how many prompt tokens one engine step takes in, for progress reports.
    pub n_batch: usize,
    /// Responses API events are numbered.
    pub seq: std::cell::Cell<u64>,
    /// Chat tool calling, when the request allows calls.
    pub tools: Option<crate::tools::Tools>,
    /// Per choice: the streamed answer split into content and calls, and the calls sent.
    pub tool_streams: std::cell::RefCell<Vec<(crate::tools::Splitter, usize)>>,
    /// Anthropic streams: the next content block index and whether a text block is open.
    pub blocks: std::cell::Cell<(usize, bool)>,
}

fn sampler_keep(s: &orchard_sampler::SamplerConfig) -> usize {
    if s.temperature <= 0.0 {
        1
    } else if s.top_k > 0 {
        s.top_k as usize
    } else {
        256
    }
}

/// Submits one engine request per (prompt, n) pair; returns the receiver of all their events.
pub fn submit(
    state: &Arc<AppState>,
    principal: &Principal,
    job: &mut Job,
    prompts: Vec<Vec<TokenId>>,
) -> Result<mpsc::UnboundedReceiver<(usize, Event)>, ApiError> {
    let l = job.loaded.clone();
    let tok = &l.tokenizer;
    // Text logit biases apply to every token of the text.
    let mut sampler = job.gen.sampler.clone();
    for (text, b) in &job.gen.logit_bias_text {
        for id in tok.encode(text, false, false) {
            sampler.logit_bias.push((id, *b));
        }
    }
    let n_ctx_seq = l.n_ctx_seq;
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::param("prompt", "the prompt is empty").with_code("empty_prompt"));
        }
        if p.len() >= n_ctx_seq {
            return Err(ApiError::context_exceeded(p.len(), n_ctx_seq));
        }
        if let Some(&bad) = p.iter().find(|&&t| t as usize >= tok.n_vocab()) {
            return Err(ApiError::param(
                "prompt",
                format!(
                    "token id {bad} is out of the vocabulary ({} tokens)",
                    tok.n_vocab()
                ),
            ));
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut submitted: Vec<u64> = Vec::new();
    let mut index = 0;
    for prompt in prompts.iter() {
        for k in 0..job.gen.n {
            let mut s = sampler.clone();
            if k > 0 && s.seed != orchard_sampler::DEFAULT_SEED {
                // Distinct samples per choice, still reproducible for a fixed seed.
                s.seed = s.seed.wrapping_add(k as u64);
            }
            let tool_matcher = match &job.tools {
                Some(t) => t.matcher()?,
                None => None,
            };
            let constraint: Option<Box<dyn TokenConstraint>> = match &job.gen.schema {
                _ if tool_matcher.is_some() => {
                    let m = tool_matcher.expect("checked");
                    Some(Box::new(Hook(
                        TextConstraint::with_matcher(m).with_keep(sampler_keep(&s)),
                    )))
                }
                None => match &job.gen.grammar {
                    None => None,
                    Some(g) => {
                        let c = GrammarConstraint::from_gbnf(g)
                            .map_err(|e| {
                                ApiError::param("grammar", e.to_string())
                                    .with_code("invalid_grammar")
                            })?
                            .with_keep(sampler_keep(&s));
                        Some(Box::new(Hook(c)))
                    }
                },
                Some(schema) => {
                    let c = JsonConstraint::new(schema)
                        .map_err(|e| {
                            ApiError::param("response_format", e.to_string())
                                .with_code("invalid_schema")
                        })?
                        .with_keep(sampler_keep(&s));
                    Some(Box::new(Hook(c)))
                }
            };
            // Without a unified KV pool a sequence gets llama-server's n_ctx / n_parallel share.
            let room = n_ctx_seq - prompt.len();
            let max_tokens = Some(job.gen.max_tokens.map_or(room, |m| m.min(room)));
            let rid = state.next_id();
            let mut tracker = Tracker {
                state: state.clone(),
                principal: principal.clone(),
                endpoint: job.endpoint,
                request_id: rid,
                choice: index,
                t0: Instant::now(),
                first: None,
                last: None,
                gaps: Vec::new(),
            };
            let txc = tx.clone();
            let i = index;
            let req = Request {
                id: rid,
                prompt: prompt.clone(),
                kind: RequestKind::Generate(GenParams {
                    max_tokens,
                    sampler: s,
                    stop: job.gen.stop.clone(),
                    ignore_eos: job.gen.ignore_eos,
                    n_probs: job.gen.n_probs,
                    constraint,
                    cache_prompt: job.gen.cache_prompt,
                }),
                sink: Box::new(move |ev: Event| tracker.deliver(ev, &txc, i)),
            };
            if let Err(e) = l.engine.submit(req) {
                for id in submitted {
                    l.engine.cancel(id);
                }
                let status = match e {
                    orchard_engine::SubmitError::QueueFull { .. } => "queue_full",
                    _ => "rejected",
                };
                state.metrics.record_rejected(&principal.key_id, status);
                return Err(e.into());
            }
            submitted.push(rid);
            job.choices.push(Choice {
                index,
                prompt: prompt.clone(),
                ..Choice::default()
            });
            index += 1;
        }
    }
    Ok(rx)
}

fn generation_settings(job: &Job) -> Value {
    let s = &job.gen.sampler;
    let seed = if s.seed == orchard_sampler::DEFAULT_SEED {
        json!(orchard_sampler::DEFAULT_SEED)
    } else {
        json!(s.seed)
    };
    json!({
        "n_predict": job.gen.max_tokens.map_or(-1, |m| m as i64),
        "seed": seed,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "typical_p": s.typical_p,
        "repeat_last_n": s.repeat_last_n,
        "repeat_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "stop": job.gen.stop,
        "ignore_eos": job.gen.ignore_eos,
        "n_probs": job.gen.n_probs,
        "stream": job.gen.stream,
        "cache_prompt": job.gen.cache_prompt,
        "post_sampling_probs": job.gen.post_sampling_probs,
        "logit_bias": logit_bias_json(job),
        "adaptive_target": -1.0,
        "adaptive_decay": 0.0,
        "samplers": ["penalties", "top_k", "typ_p", "top_p", "min_p", "temperature"],
    })
}

/// The biases in force, llama-server style: `ignore_eos` bans every end-of-generation token
/// (a `null` bias is -inf).
fn logit_bias_json(job: &Job) -> Value {
    let mut out: Vec<Value> = job
        .gen
        .sampler
        .logit_bias
        .iter()
        .map(|(t, b)| json!({"token": t, "bias": if b.is_finite() { json!(b) } else { Value::Null }}))
        .collect();
    if job.gen.ignore_eos {
        for t in job.loaded.tokenizer.eog_ids() {
            out.push(json!({"token": t, "bias": null}));
        }
    }
    Value::Array(out)
}

fn has_new_line(c: &Choice) -> bool {
    c.text.contains('\n')
}

/// llama-server's `/completion` object for one finished choice.
fn llama_final(job: &Job, c: &Choice, stream: bool) -> Value {
    let tok = &job.loaded.tokenizer;
    let mut v = json!({
        "index": c.index,
        "content": if stream { String::new() } else { c.text.clone() },
        "tokens": if job.gen.return_tokens && !stream { c.tokens.clone() } else { Vec::new() },
        "id_slot": c.slot.map_or(-1, |s| s as i64),
        "stop": true,
        "model": job.loaded.public_name,
        "tokens_predicted": c.usage.completion_tokens,
        "tokens_evaluated": c.usage.prompt_tokens,
        "generation_settings": generation_settings(job),
        "prompt": job.prompt_text.get(c.index / job.gen.n.max(1)).cloned().unwrap_or_default(),
        "has_new_line": has_new_line(c),
        "truncated": false,
        "stop_type": c.stop_type(),
        "stopping_word": c.stop_text.clone().unwrap_or_default(),
        "tokens_cached": c.usage.prompt_tokens + c.usage.completion_tokens,
        "timings": c.timings_json(),
    });
    if !stream && job.gen.n_probs > 0 {
        v["completion_probabilities"] = Value::Array(
            c.probs
                .iter()
                .map(|lp| probs_json(tok, lp, job.gen.post_sampling_probs))
                .collect(),
        );
    }
    if job.gen.response_fields.is_empty() {
        v
    } else {
        // `response_fields` picks paths like `generation_settings/n_predict`.
        let mut out = Map::new();
        for f in &job.gen.response_fields {
            let mut cur = Some(&v);
            for part in f.split('/') {
                cur = cur.and_then(|x| x.get(part));
            }
            if let Some(x) = cur {
                out.insert(f.clone(), x.clone());
            }
        }
        Value::Object(out)
    }
}

fn error_for(c: &Choice) -> Option<ApiError> {
    c.error.as_ref().map(|m| {
        if m.contains("context") {
            ApiError::server(format!("Context size has been exceeded: {m}"))
        } else {
            ApiError::server(m.clone())
        }
    })
}

/// The whole non-streaming answer.
fn final_body(job: &Job) -> Result<Value, ApiError> {
    if let Some(e) = job.choices.iter().find_map(error_for) {
        return Err(e);
    }
    let tok = &job.loaded.tokenizer;
    let model = &job.loaded.public_name;
    let mut body = match job.api {
        Api::Llama => {
            let items: Vec<Value> = job
                .choices
                .iter()
                .map(|c| llama_final(job, c, false))
                .collect();
            if items.len() == 1 {
                items.into_iter().next().unwrap_or(Value::Null)
            } else {
                Value::Array(items)
            }
        }
        Api::OaiCompletion => {
            let choices: Vec<Value> = job
                .choices
                .iter()
                .map(|c| {
                    json!({
                        "text": c.text,
                        "index": c.index,
                        "logprobs": if job.gen.logprobs { oai_completion_logprobs(tok, &c.probs) } else { Value::Null },
                        "finish_reason": c.oai_finish(),
                    })
                })
                .collect();
            json!({
                "id": job.id,
                "object": "text_completion",
                "created": job.created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": choices,
                "usage": usage_json(&job.choices),
                "timings": job.choices.first().map(|c| c.timings_json()).unwrap_or(Value::Null),
            })
        }
        Api::Responses => crate::responses::response(job, &job.choices[0], true),
        Api::Anthropic => {
            let c = &job.choices[0];
            let (content, called) = match &job.tools {
                None => (vec![json!({"type": "text", "text": c.text})], false),
                Some(t) => {
                    let p = crate::tools::parse_output(t.format, &c.text);
                    let mut blocks = Vec::new();
                    if !p.content.is_empty() {
                        blocks.push(json!({"type": "text", "text": p.content}));
                    }
                    for (k, call) in p.calls.iter().enumerate() {
                        blocks.push(anthropic_tool_use(job, k, call));
                    }
                    (blocks, !p.calls.is_empty())
                }
            };
            json!({
                "id": job.id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": crate::anthropic::stop_reason_with(c, called),
                "stop_sequence": c.stop_text,
                "usage": crate::anthropic::usage(c),
            })
        }
        Api::Chat => {
            let choices: Vec<Value> = job
                .choices
                .iter()
                .map(|c| {
                    let (message, finish) = chat_message(job, c);
                    json!({
                        "index": c.index,
                        "message": message,
                        "logprobs": if job.gen.logprobs { chat_logprobs_json(tok, &c.probs) } else { Value::Null },
                        "finish_reason": finish,
                    })
                })
                .collect();
            json!({
                "id": job.id,
                "object": "chat.completion",
                "created": job.created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": choices,
                "usage": usage_json(&job.choices),
                "timings": job.choices.first().map(|c| c.timings_json()).unwrap_or(Value::Null),
            })
        }
    };
    if job.verbose && matches!(job.api, Api::Chat | Api::OaiCompletion) {
        body["__verbose"] = json!({
            "prompt": job.prompt_text.first().cloned().unwrap_or_default(),
            "content": job.choices.first().map(|c| c.text.clone()).unwrap_or_default(),
        });
    }
    Ok(body)
}

/// Serves a non-streaming answer: waits for the first event (so early failures get their own
/// status), then commits 200 and pads with whitespace until the JSON is ready.
pub async fn respond_json(
    mut job: Job,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Response {
    // Up to one second for an early error to still choose the status code.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        if job.choices.iter().all(Choice::done) {
            return match final_body(&job) {
                Ok(v) => axum::Json(v).into_response(),
                Err(e) => e.into_response(),
            };
        }
        if job.choices.iter().any(|c| c.error.is_some()) {
            break;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, ev))) => {
                if let Some(c) = job.choices.get_mut(i) {
                    c.apply(&ev);
                }
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    if let Some(e) = job.choices.iter().find_map(error_for) {
        return e.into_response();
    }
    struct St {
        job: Job,
        rx: mpsc::UnboundedReceiver<(usize, Event)>,
        finished: bool,
    }
    let body = stream::unfold(
        St {
            job,
            rx,
            finished: false,
        },
        |mut st| async move {
            if st.finished {
                return None;
            }
            loop {
                if st.job.choices.iter().all(Choice::done) {
                    st.finished = true;
                    let v = match final_body(&st.job) {
                        Ok(v) => v,
                        Err(e) => e.body(),
                    };
                    let bytes = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
                    return Some((Ok::<Bytes, std::convert::Infallible>(bytes), st));
                }
                match tokio::time::timeout(HEARTBEAT, st.rx.recv()).await {
                    Ok(Some((i, ev))) => {
                        if let Some(c) = st.job.choices.get_mut(i) {
                            c.apply(&ev);
                        }
                    }
                    Ok(None) => {
                        for c in &mut st.job.choices {
                            if !c.done() {
                                c.error = Some("the engine stopped".into());
                            }
                        }
                    }
                    Err(_) => return Some((Ok(Bytes::from_static(b" ")), st)),
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| ApiError::server("response").into_response())
}

fn sse(v: &Value) -> Bytes {
    let mut s = String::with_capacity(256);
    s.push_str("data: ");
    s.push_str(&serde_json::to_string(v).unwrap_or_default());
    s.push_str("\n\n");
    Bytes::from(s)
}

/// `return_progress`: llama-server reports prompt processing batch by batch. The engine reports
/// only the start and the first token, so the batches (`-b` tokens each, as the engine takes a
/// lone prompt) are reported when the first token arrives, with the prompt time spread over them.
fn progress_chunks(job: &Job, i: usize, ev: &Event, out: &mut Vec<Bytes>) {
    if !job.gen.return_progress {
        return;
    }
    let c = &job.choices[i];
    let total = c.n_prompt;
    let cache = c.n_cached;
    let chunk = |processed: usize, prompt_ms: f64| {
        let prompt_n = processed - cache;
        let mut v = json!({
            "prompt_progress": {"total": total, "cache": cache, "processed": processed, "time_ms": prompt_ms},
        });
        if job.gen.timings_per_token {
            v["timings"] = json!({
                "cache_n": cache, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
                "prompt_per_token_ms": if prompt_n > 0 { prompt_ms / prompt_n as f64 } else { 0.0 },
                "prompt_per_second": if prompt_ms > 0.0 { 1e3 * prompt_n as f64 / prompt_ms } else { 0.0 },
                "predicted_n": 0, "predicted_ms": 0.0, "predicted_per_token_ms": 0.0, "predicted_per_second": 0.0,
            });
        }
        match job.api {
            Api::Llama => {
                v["index"] = json!(i);
                v["content"] = json!("");
                v["tokens"] = json!([]);
                v["stop"] = json!(false);
                v["tokens_evaluated"] = json!(processed);
            }
            Api::Responses => {
                v["type"] = json!("response.in_progress");
                v["response"] = crate::responses::response(job, c, false);
            }
            _ => {
                v["id"] = json!(job.id);
                v["object"] = json!("chat.completion.chunk");
                v["created"] = json!(job.created);
                v["model"] = json!(job.loaded.public_name);
                v["choices"] = json!([]);
            }
        }
        sse(&v)
    };
    match ev {
        Event::Started { .. } => out.push(chunk(cache, 0.0)),
        Event::Token { .. } if c.tokens.len() == 1 => {
            let elapsed = c
                .started_at
                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
            let todo = total.saturating_sub(cache);
            let step = job.n_batch.max(1);
            let mut done = 0;
            while done < todo {
                done = (done + step).min(todo);
                out.push(chunk(cache + done, elapsed * done as f64 / todo as f64));
            }
        }
        _ => {}
    }
}

/// The chunks one event turns into for the job's API.
/// A chat choice's `message` and `finish_reason`: with tools, the text split into content and
/// `tool_calls` (`finish_reason: "tool_calls"` when the model called a tool).
fn chat_message(job: &Job, c: &Choice) -> (Value, &'static str) {
    let Some(t) = &job.tools else {
        return (
            json!({"role": "assistant", "content": c.text}),
            c.oai_finish(),
        );
    };
    let p = crate::tools::parse_output(t.format, &c.text);
    if p.calls.is_empty() {
        return (
            json!({"role": "assistant", "content": p.content}),
            c.oai_finish(),
        );
    }
    let calls: Vec<Value> = p
        .calls
        .iter()
        .enumerate()
        .map(|(k, call)| tool_call_json(job, c.index, k, call))
        .collect();
    let content = if p.content.is_empty() {
        Value::Null
    } else {
        Value::String(p.content)
    };
    let finish = match c.oai_finish() {
        "stop" => "tool_calls",
        other => other,
    };
    (
        json!({"role": "assistant", "content": content, "tool_calls": calls}),
        finish,
    )
}

/// An Anthropic `tool_use` content block for call `k` (its arguments as the `input` object).
fn anthropic_tool_use(job: &Job, k: usize, call: &crate::tools::Call) -> Value {
    json!({
        "type": "tool_use",
        "id": format!("toolu_{}_{k}", job.id.rsplit('-').next().unwrap_or("")),
        "name": call.name,
        "input": serde_json::from_str::<Value>(&call.arguments).unwrap_or_else(|_| json!({})),
    })
}

/// Anthropic stream events for content and whole calls: text goes to the open text block (one
/// is started when needed; an empty `Content` just opens it), each call closes it and becomes a
/// `tool_use` block of its own (start, its input JSON in one `input_json_delta`, stop).
fn anthropic_blocks(job: &Job, deltas: Vec<crate::tools::Delta>, out: &mut Vec<Bytes>) {
    use crate::anthropic::event;
    let (mut next, mut open) = job.blocks.get();
    for d in deltas {
        match d {
            crate::tools::Delta::Content(text) => {
                if !open {
                    out.push(event(
                        "content_block_start",
                        &json!({
                            "type": "content_block_start", "index": next,
                            "content_block": {"type": "text", "text": ""},
                        }),
                    ));
                    open = true;
                    next += 1;
                }
                if !text.is_empty() {
                    out.push(event(
                        "content_block_delta",
                        &json!({
                            "type": "content_block_delta", "index": next - 1,
                            "delta": {"type": "text_delta", "text": text},
                        }),
                    ));
                }
            }
            crate::tools::Delta::Call(call) => {
                if open {
                    out.push(event(
                        "content_block_stop",
                        &json!({"type": "content_block_stop", "index": next - 1}),
                    ));
                    open = false;
                }
                let k = {
                    let mut streams = job.tool_streams.borrow_mut();
                    let n = &mut streams[0].1;
                    *n += 1;
                    *n - 1
                };
                let mut block = anthropic_tool_use(job, k, &call);
                let input = std::mem::replace(&mut block["input"], json!({}));
                out.push(event(
                    "content_block_start",
                    &json!({
                        "type": "content_block_start", "index": next, "content_block": block,
                    }),
                ));
                out.push(event(
                    "content_block_delta",
                    &json!({
                        "type": "content_block_delta", "index": next,
                        "delta": {"type": "input_json_delta", "partial_json": input.to_string()},
                    }),
                ));
                out.push(event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": next}),
                ));
                next += 1;
            }
        }
    }
    job.blocks.set((next, open));
}

fn tool_call_json(job: &Job, choice: usize, k: usize, call: &crate::tools::Call) -> Value {
    json!({
        "id": format!("call_{}_{choice}_{k}", job.id.rsplit('-').next().unwrap_or("")),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    })
}

/// Runs `f` on choice `i`'s answer splitter.
fn tool_stream(
    job: &Job,
    i: usize,
    f: impl FnOnce(&mut crate::tools::Splitter) -> Vec<crate::tools::Delta>,
) -> Vec<crate::tools::Delta> {
    let Some(t) = &job.tools else {
        return Vec::new();
    };
    let mut streams = job.tool_streams.borrow_mut();
    while streams.len() <= i {
        streams.push((crate::tools::Splitter::new(t.format), 0));
    }
    f(&mut streams[i].0)
}

/// Chat chunks for streamed content and whole tool calls (one delta per call, `arguments`
/// complete, as OpenAI clients accumulate them).
fn tool_chunks(job: &Job, i: usize, deltas: Vec<crate::tools::Delta>, out: &mut Vec<Bytes>) {
    for d in deltas {
        let delta = match d {
            crate::tools::Delta::Content(text) if text.is_empty() => continue,
            crate::tools::Delta::Content(text) => json!({"content": text}),
            crate::tools::Delta::Call(call) => {
                let k = {
                    let mut streams = job.tool_streams.borrow_mut();
                    let n = &mut streams[i].1;
                    *n += 1;
                    *n - 1
                };
                let mut tc = tool_call_json(job, i, k, &call);
                tc["index"] = json!(k);
                json!({"tool_calls": [tc]})
            }
        };
        out.push(sse(&json!({
            "id": job.id, "object": "chat.completion.chunk", "created": job.created,
            "model": job.loaded.public_name, "system_fingerprint": FINGERPRINT,
            "choices": [{"index": i, "delta": delta, "logprobs": null, "finish_reason": null}],
        })));
    }
}

fn stream_chunks(job: &Job, i: usize, ev: &Event, out: &mut Vec<Bytes>) {
    let tok = &job.loaded.tokenizer;
    let model = &job.loaded.public_name;
    let c = &job.choices[i];
    match (job.api, ev) {
        (Api::Llama, Event::Token { id, text, logprobs }) => {
            let mut v = json!({
                "index": i,
                "content": text,
                "tokens": [id],
                "stop": false,
                "id_slot": c.slot.map_or(-1, |s| s as i64),
                "tokens_predicted": c.tokens.len(),
                "tokens_evaluated": c.n_prompt,
            });
            if let Some(lp) = logprobs {
                v["completion_probabilities"] =
                    json!([probs_json(tok, lp, job.gen.post_sampling_probs)]);
            }
            if job.gen.timings_per_token {
                v["timings"] = c.timings_json();
            }
            out.push(sse(&v));
        }
        (Api::Llama, Event::Done { .. }) => out.push(sse(&llama_final(job, c, true))),
        (Api::OaiCompletion, Event::Token { text, logprobs, .. }) => {
            let lp = match logprobs {
                Some(lp) if job.gen.logprobs => {
                    oai_completion_logprobs(tok, std::slice::from_ref(lp))
                }
                _ => Value::Null,
            };
            out.push(sse(&json!({
                "id": job.id, "object": "text_completion", "created": job.created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"text": text, "index": i, "logprobs": lp, "finish_reason": null}],
            })));
        }
        (Api::OaiCompletion, Event::Done { .. }) => {
            out.push(sse(&json!({
                "id": job.id, "object": "text_completion", "created": job.created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"text": "", "index": i, "logprobs": null, "finish_reason": c.oai_finish()}],
            })));
        }
        (Api::Chat, Event::Started { .. }) => {
            out.push(sse(&json!({
                "id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": i, "delta": {"role": "assistant", "content": null}, "logprobs": null, "finish_reason": null}],
            })));
        }
        (Api::Chat, Event::Token { text, .. }) if job.tools.is_some() => {
            let deltas = tool_stream(job, i, |sp| sp.push(text));
            tool_chunks(job, i, deltas, out);
        }
        (Api::Chat, Event::Token { text, logprobs, .. }) => {
            let lp = match logprobs {
                Some(lp) if job.gen.logprobs => chat_logprobs_json(tok, std::slice::from_ref(lp)),
                _ => Value::Null,
            };
            if text.is_empty() && lp.is_null() {
                return;
            }
            let delta = if text.is_empty() {
                json!({})
            } else {
                json!({"content": text})
            };
            let mut v = json!({
                "id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": null}],
            });
            if job.gen.timings_per_token {
                v["timings"] = c.timings_json();
            }
            out.push(sse(&v));
        }
        (Api::Chat, Event::Done { .. }) => {
            let mut finish = c.oai_finish();
            if job.tools.is_some() {
                let deltas = tool_stream(job, i, |sp| sp.finish());
                tool_chunks(job, i, deltas, out);
                let n_calls = job.tool_streams.borrow().get(i).map_or(0, |t| t.1);
                if n_calls > 0 && finish == "stop" {
                    finish = "tool_calls";
                }
            }
            out.push(sse(&json!({
                "id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish}],
            })));
        }
        (Api::Responses, Event::Started { .. }) => {
            let mut seq = job.seq.get();
            crate::responses::start_events(job, c, &mut seq, out);
            job.seq.set(seq);
        }
        (Api::Responses, Event::Token { text, .. }) if !text.is_empty() => {
            let mut seq = job.seq.get();
            let mut v = json!({
                "type": "response.output_text.delta", "item_id": crate::responses::msg_id(job),
                "output_index": 0, "content_index": 0, "delta": text,
            });
            if job.gen.timings_per_token {
                v["timings"] = c.timings_json();
            }
            out.push(crate::responses::event(&mut seq, v));
            job.seq.set(seq);
        }
        (Api::Responses, Event::Done { .. }) => {
            let mut seq = job.seq.get();
            crate::responses::end_events(job, c, &mut seq, out);
            job.seq.set(seq);
        }
        (Api::Anthropic, Event::Started { .. }) => {
            let mut usage = crate::anthropic::usage(c);
            usage["output_tokens"] = json!(0);
            out.push(crate::anthropic::event("message_start", &json!({
                "type": "message_start",
                "message": {"id": job.id, "type": "message", "role": "assistant", "content": [],
                            "model": model, "stop_reason": null, "stop_sequence": null, "usage": usage},
            })));
            if job.tools.is_none() {
                anthropic_blocks(job, vec![crate::tools::Delta::Content(String::new())], out);
            }
        }
        (Api::Anthropic, Event::Token { text, .. }) if !text.is_empty() => {
            let deltas = match job.tools {
                Some(_) => tool_stream(job, i, |sp| sp.push(text)),
                None => vec![crate::tools::Delta::Content(text.clone())],
            };
            anthropic_blocks(job, deltas, out);
        }
        (Api::Anthropic, Event::Done { .. }) => {
            if job.tools.is_some() {
                let deltas = tool_stream(job, i, |sp| sp.finish());
                anthropic_blocks(job, deltas, out);
            }
            let (next, open) = job.blocks.get();
            if open {
                out.push(crate::anthropic::event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": next - 1}),
                ));
            }
            let called = job.tool_streams.borrow().get(i).is_some_and(|t| t.1 > 0);
            out.push(crate::anthropic::event("message_delta", &json!({
                "type": "message_delta",
                "delta": {"stop_reason": crate::anthropic::stop_reason_with(c, called), "stop_sequence": c.stop_text},
                "usage": {"output_tokens": c.usage.completion_tokens},
            })));
            out.push(crate::anthropic::event(
                "message_stop",
                &json!({"type": "message_stop"}),
            ));
        }
        (_, Event::Error { message }) => {
            let e = if message.contains("context") {
                ApiError::server(format!("Context size has been exceeded: {message}"))
            } else {
                ApiError::server(message.clone())
            };
            out.push(sse(&e.body()));
        }
        _ => {}
    }
}

/// Serves an SSE stream; comment lines keep it alive (and reveal a vanished client) while the
/// request waits for a sequence.
pub async fn respond_sse(job: Job, rx: mpsc::UnboundedReceiver<(usize, Event)>) -> Response {
    struct St {
        job: Job,
        rx: mpsc::UnboundedReceiver<(usize, Event)>,
        finished: bool,
    }
    let body = stream::unfold(
        St {
            job,
            rx,
            finished: false,
        },
        |mut st| async move {
            if st.finished {
                return None;
            }
            let mut out: Vec<Bytes> = Vec::new();
            loop {
                if st.job.choices.iter().all(Choice::done) {
                    st.finished = true;
                    if matches!(st.job.api, Api::Chat | Api::OaiCompletion)
                        && st.job.gen.include_usage
                        && st.job.choices.iter().all(|c| c.error.is_none())
                    {
                        let object = if st.job.api == Api::Chat {
                            "chat.completion.chunk"
                        } else {
                            "text_completion"
                        };
                        out.push(sse(&json!({
                            "id": st.job.id, "object": object, "created": st.job.created,
                            "model": st.job.loaded.public_name, "system_fingerprint": FINGERPRINT,
                            "choices": [],
                            "usage": usage_json(&st.job.choices),
                            "timings": st.job.choices.first().map(|c| c.timings_json()).unwrap_or(Value::Null),
                        })));
                    }
                    if matches!(st.job.api, Api::Chat | Api::OaiCompletion) {
                        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                    }
                    let all: Vec<u8> = out.concat();
                    return Some((Ok::<Bytes, std::convert::Infallible>(Bytes::from(all)), st));
                }
                match tokio::time::timeout(HEARTBEAT * 2, st.rx.recv()).await {
                    Ok(Some((i, ev))) => {
                        if let Some(c) = st.job.choices.get_mut(i) {
                            c.apply(&ev);
                            progress_chunks(&st.job, i, &ev, &mut out);
                            stream_chunks(&st.job, i, &ev, &mut out);
                        }
                        // Send what is ready without waiting for more.
                        while let Ok((i, ev)) = st.rx.try_recv() {
                            if let Some(c) = st.job.choices.get_mut(i) {
                                c.apply(&ev);
                                progress_chunks(&st.job, i, &ev, &mut out);
                                stream_chunks(&st.job, i, &ev, &mut out);
                            }
                        }
                        if !out.is_empty() && !st.job.choices.iter().all(Choice::done) {
                            let all: Vec<u8> = out.concat();
                            return Some((Ok(Bytes::from(all)), st));
                        }
                    }
                    Ok(None) => {
                        for c in &mut st.job.choices {
                            if !c.done() {
                                c.error = Some("the engine stopped".into());
                            }
                        }
                    }
                    Err(_) => {
                        let mut all: Vec<u8> = out.concat();
                        all.extend_from_slice(b": ping\n\n");
                        return Some((Ok(Bytes::from(all)), st));
                    }
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| ApiError::server("response").into_response())
}

/// Tokenizes llama-server's prompt forms: a string, token ids, a mix of both, or
/// `{"prompt_string": ...}`. `first` says whether BOS may be added.
fn tokenize_one(tok: &Tokenizer, v: &Value, add_special: bool) -> Result<Vec<TokenId>, ApiError> {
    match v {
        Value::String(s) => Ok(tok.encode(s, add_special, true)),
        Value::Number(n) => n
            .as_u64()
            .filter(|&x| x <= u32::MAX as u64)
            .map(|x| vec![x as TokenId])
            .ok_or_else(|| ApiError::param("prompt", "token ids must be non-negative integers")),
        Value::Array(a) => {
            let mut out = Vec::new();
            for (i, x) in a.iter().enumerate() {
                match x {
                    Value::String(s) => out.extend(tok.encode(s, add_special && i == 0, true)),
                    Value::Number(_) => out.extend(tokenize_one(tok, x, false)?),
                    _ => {
                        return Err(ApiError::param(
                            "prompt",
                            "a prompt array may hold only strings and token ids",
                        ))
                    }
                }
            }
            Ok(out)
        }
        Value::Object(o) => {
            if o.contains_key("multimodal_data") {
                return Err(
                    ApiError::invalid("multimodal input is not supported by this model")
                        .with_code("unsupported_parameter"),
                );
            }
            match o.get("prompt_string") {
                Some(p @ Value::String(_)) => tokenize_one(tok, p, add_special),
                _ => Err(ApiError::param(
                    "prompt",
                    "a prompt object needs `prompt_string`",
                )),
            }
        }
        other => Err(ApiError::param(
            "prompt",
            format!(
                "`prompt` must be a string or an array, got {}",
                params::type_name(other)
            ),
        )
        .with_code("invalid_type")),
    }
}

/// One or several prompts: an array counts as several unless it holds token ids directly.
fn tokenize_prompts(tok: &Tokenizer, v: &Value) -> Result<Vec<Vec<TokenId>>, ApiError> {
    match v {
        Value::Array(a) if !a.iter().any(Value::is_number) => {
            if a.is_empty() {
                return Err(
                    ApiError::param("prompt", "the prompt is empty").with_code("empty_prompt")
                );
            }
            if a.len() > params::MAX_N * 4 {
                return Err(ApiError::param("prompt", "too many prompts in one request"));
            }
            a.iter().map(|p| tokenize_one(tok, p, true)).collect()
        }
        _ => Ok(vec![tokenize_one(tok, v, true)?]),
    }
}

fn check_model(l: &Loaded, o: &Obj) -> Result<(), ApiError> {
    match get(o, "model") {
        None => Ok(()),
        Some(Value::String(m)) => {
            if l.accepted_names.iter().any(|n| n == m) || !l.strict_model_names() {
                Ok(())
            } else {
                Err(ApiError::model_not_found(m))
            }
        }
        Some(v) => Err(ApiError::param(
            "model",
            format!("`model` must be a string, got {}", params::type_name(v)),
        )
        .with_code("invalid_type")),
    }
}

impl Loaded {
    /// Whether an unknown `model` is refused. llama-server accepts any name; Orchard does too
    /// unless an alias was configured, in which case only the alias and file names are accepted.
    pub fn strict_model_names(&self) -> bool {
        self.strict_names
    }
}

fn new_id(prefix: &str, state: &AppState) -> String {
    // OpenAI's ids: `chatcmpl-...`, `cmpl-...`; Anthropic's `msg_...`; Responses' `resp_...`.
    let sep = if matches!(prefix, "msg" | "resp") {
        '_'
    } else {
        '-'
    };
    format!("{prefix}{sep}{:016x}{:08x}", unix_now(), state.next_id())
}

/// Shared tail of all three endpoints.
pub async fn run(
    state: Arc<AppState>,
    principal: Principal,
    api: Api,
    o: Obj,
) -> Result<Response, ApiError> {
    let l = state.model().await?;
    let o = match api {
        Api::Anthropic => crate::anthropic::to_chat(&o)?,
        Api::Responses => crate::responses::to_chat(&o)?,
        _ => o,
    };
    check_model(&l, &o)?;
    let s = &state.settings;
    let defaults = params::Defaults {
        temp: s.temp,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        seed: s.seed,
        n_predict: s.n_predict,
        cache_prompt: s.cache_prompt,
    };
    let gen = parse_gen(
        &o,
        if matches!(api, Api::Anthropic | Api::Responses) {
            Api::Chat
        } else {
            api
        },
        &defaults,
    )?;
    let tok = l.tokenizer.clone();
    let (prompts, prompt_text): (Vec<Vec<TokenId>>, Vec<String>) = match api {
        Api::Chat | Api::Anthropic | Api::Responses => {
            let toks = chat_prompt_with(
                &l,
                &o,
                api == Api::Anthropic,
                matches!(api, Api::Chat | Api::Anthropic),
            )?;
            let shown = tok.decode(&toks, false);
            (vec![toks], vec![shown])
        }
        Api::OaiCompletion | Api::Llama => {
            let p = get(&o, "prompt")
                .or_else(|| get(&o, "content"))
                .ok_or_else(|| {
                    ApiError::param("prompt", "`prompt` is required").with_code("missing_field")
                })?;
            let prompts = tokenize_prompts(&tok, p)?;
            let texts = prompts.iter().map(|t| tok.decode(t, false)).collect();
            (prompts, texts)
        }
    };
    let verbose = gen.verbose || s.verbose;
    let tools = match api {
        Api::Chat | Api::Anthropic => crate::tools::parse(&o, l.template.source())?,
        _ => None,
    };
    let mut job = Job {
        api,
        endpoint: match api {
            Api::Chat => "chat",
            Api::Anthropic => "messages",
            Api::Responses => "responses",
            Api::OaiCompletion => "completions",
            Api::Llama => "completion",
        },
        loaded: l,
        id: new_id(
            match api {
                Api::Chat => "chatcmpl",
                Api::Anthropic => "msg",
                Api::Responses => "resp",
                _ => "cmpl",
            },
            &state,
        ),
        created: unix_now(),
        prompt_text,
        verbose,
        gen,
        choices: Vec::new(),
        n_batch: s.batch_size,
        seq: std::cell::Cell::new(0),
        tools,
        tool_streams: std::cell::RefCell::new(Vec::new()),
        blocks: std::cell::Cell::new((0, false)),
    };
    let rx = submit(&state, &principal, &mut job, prompts)?;
    Ok(if job.gen.stream {
        respond_sse(job, rx).await
    } else {
        respond_json(job, rx).await
    })
}

/// The chat prompt's tokens: special tokens in the rendered text are parsed, and BOS is added by
/// the tokenizer's rule only, never twice when the template wrote it already.
pub fn chat_prompt(l: &Loaded, o: &Obj, allow_empty: bool) -> Result<Vec<TokenId>, ApiError> {
    chat_prompt_with(l, o, allow_empty, true)
}

/// [`chat_prompt`]; `tool_calls: false` for APIs whose answers carry no tool calls (the
/// Responses API): their tools reach the template, but no tool-call instructions are added.
pub fn chat_prompt_with(
    l: &Loaded,
    o: &Obj,
    allow_empty: bool,
    tool_calls: bool,
) -> Result<Vec<TokenId>, ApiError> {
    let text = render_chat_with(l, o, allow_empty, tool_calls)?;
    let stripped = text
        .strip_prefix(l.bos_text.as_str())
        .filter(|_| !l.bos_text.is_empty());
    Ok(l.tokenizer.encode(stripped.unwrap_or(&text), true, true))
}

/// Checks and renders `messages` with the chat template.
pub fn render_chat(l: &Loaded, o: &Obj, allow_empty: bool) -> Result<String, ApiError> {
    render_chat_with(l, o, allow_empty, true)
}

fn render_chat_with(
    l: &Loaded,
    o: &Obj,
    allow_empty: bool,
    tool_calls: bool,
) -> Result<String, ApiError> {
    let mut msgs = parse_messages(o, allow_empty)?;
    if tool_calls {
        if let Some(t) = crate::tools::parse(o, l.template.source())? {
            generic_tool_messages(&t, &mut msgs);
        }
    }
    let add_gen = opt_bool(o, "add_generation_prompt")?;
    let cont = opt_bool(o, "continue_final_message")?.unwrap_or(false);
    if cont && add_gen == Some(true) {
        return Err(ApiError::invalid(
            "`add_generation_prompt` and `continue_final_message` cannot both be true",
        ));
    }
    let last_is_assistant = msgs.last().is_some_and(|m| m.role == "assistant");
    let mut extra = Map::new();
    if let Some(Value::Object(kw)) = get(o, "chat_template_kwargs") {
        for (k, v) in kw {
            extra.insert(k.clone(), v.clone());
        }
    }
    if let Some(t) = get(o, "tools") {
        extra.insert("tools".into(), t.clone());
    }
    // llama.cpp gives templates today's date as `datetime` ("%b %d %Y"; firefunction uses it).
    if !extra.contains_key("datetime") {
        extra.insert("datetime".into(), Value::String(today_b_d_y()));
    }
    // ... and, for firefunction-style templates, the tools as a JSON string.
    if !extra.contains_key("functions")
        && l.template.source().is_some_and(|s| s.contains("functions"))
    {
        let f = match get(o, "tools") {
            Some(t) => serde_json::to_string(t).unwrap_or_default(),
            None => String::new(),
        };
        extra.insert("functions".into(), Value::String(f));
    }
    if l.reasoning_off && !extra.contains_key("enable_thinking") {
        extra.insert("enable_thinking".into(), Value::Bool(false));
    }
    if last_is_assistant && (cont || add_gen.is_none()) {
        // Prefill: the reply continues the final assistant message.
        let (head, last) = msgs.split_at(msgs.len() - 1);
        let mut text = l
            .template
            .render_with(head, true, &extra)
            .map_err(|e| ApiError::invalid(e.to_string()).with_code("template_error"))?;
        text.push_str(&last[0].content);
        return Ok(text);
    }
    let add_gen = add_gen.unwrap_or(true);
    let mut text = l
        .template
        .render_with(&msgs, add_gen, &extra)
        .map_err(|e| ApiError::invalid(e.to_string()).with_code("template_error"))?;
    if l.reasoning_off && add_gen && extra.get("enable_thinking") == Some(&Value::Bool(false)) {
        close_thinking(l.template.source().unwrap_or(""), &mut text);
    }
    Ok(text)
}

/// Generic tool format (a template that knows no tools): the tools' description goes into the
/// system message, and earlier calls read as the JSON the model is asked to write.
fn generic_tool_messages(t: &crate::tools::Tools, msgs: &mut Vec<ChatMessage>) {
    let Some(sys) = t.system_prompt() else {
        return;
    };
    for m in msgs.iter_mut() {
        if m.role == "assistant" && m.content.is_empty() {
            if let Some(c) = m
                .extra
                .get("tool_calls")
                .and_then(|tc| crate::tools::generic_history_content(tc, t.parallel))
            {
                m.content = c;
            }
        }
    }
    match msgs.first_mut() {
        Some(m) if m.role == "system" => {
            m.content = format!("{}\n\n{sys}", m.content);
        }
        _ => msgs.insert(0, ChatMessage::new("system", sys)),
    }
}

/// Today's UTC date as strftime's "%b %d %Y".
fn today_b_d_y() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil_from_days((unix_now() / 86_400) as i64);
    format!("{} {:02} {}", MONTHS[(m - 1) as usize], d, y)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// With thinking off, templates that do not handle `enable_thinking` themselves get an empty
/// thinking block after the generation prompt, as llama.cpp's chat formats add one.
fn close_thinking(source: &str, text: &mut String) {
    if source.contains("<|START_THINKING|>") {
        if !text.ends_with("<|END_THINKING|>") {
            text.push_str("<|START_THINKING|><|END_THINKING|>");
        }
    } else if source.contains("<think>") && !text.trim_end().ends_with("</think>") {
        if text.ends_with("<think>\n") {
            text.push_str("</think>");
        } else {
            text.push_str("<think>\n</think>");
        }
    }
}

/// OpenAI messages into template messages, refusing malformed ones with a 400.
pub fn parse_messages(o: &Obj, allow_empty: bool) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(v) = o.get("messages") else {
        return Err(
            ApiError::param("messages", "`messages` is required").with_code("missing_field")
        );
    };
    let Value::Array(a) = v else {
        return Err(ApiError::param(
            "messages",
            format!("`messages` must be an array, got {}", params::type_name(v)),
        )
        .with_code("invalid_type"));
    };
    if a.is_empty() && !allow_empty {
        return Err(ApiError::param("messages", "`messages` must not be empty"));
    }
    let mut out = Vec::with_capacity(a.len());
    for (i, m) in a.iter().enumerate() {
        let field = format!("messages[{i}]");
        let Value::Object(m) = m else {
            return Err(
                ApiError::param(&field, format!("{field} must be an object"))
                    .with_code("invalid_type"),
            );
        };
        let role = match m.get("role") {
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            Some(_) => {
                return Err(
                    ApiError::param(&field, format!("{field}.role must be a string"))
                        .with_code("invalid_type"),
                )
            }
            None => {
                return Err(ApiError::param(&field, format!("{field} has no role"))
                    .with_code("missing_field"))
            }
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => {
                if role == "assistant" && m.contains_key("tool_calls") {
                    String::new()
                } else if m.get("content").is_none() && !m.contains_key("tool_calls") {
                    return Err(ApiError::param(&field, format!("{field} has no content"))
                        .with_code("missing_field"));
                } else {
                    String::new()
                }
            }
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for p in parts {
                    match p {
                        Value::Object(po)
                            if po.get("type").and_then(Value::as_str) == Some("text") =>
                        {
                            match po.get("text") {
                                Some(Value::String(t)) => texts.push(t.clone()),
                                _ => {
                                    return Err(ApiError::param(
                                        &field,
                                        "text parts need a string `text`",
                                    ))
                                }
                            }
                        }
                        Value::Object(po)
                            if matches!(
                                po.get("type").and_then(Value::as_str),
                                Some("image_url" | "input_audio")
                            ) =>
                        {
                            // llama-server's status and wording for a model without a projector.
                            return Err(ApiError::server(
                                "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
                            )
                            .with_code("unsupported_content"));
                        }
                        Value::Object(po) => {
                            let t = po.get("type").and_then(Value::as_str).unwrap_or("?");
                            return Err(ApiError::invalid(format!(
                                "content parts of type `{t}` are not supported by this model"
                            ))
                            .with_code("unsupported_content"));
                        }
                        _ => return Err(ApiError::param(&field, "content parts must be objects")),
                    }
                }
                texts.join("\n\n")
            }
            Some(other) => {
                return Err(ApiError::param(
                    &field,
                    format!(
                        "{field}.content must be a string or an array, got {}",
                        params::type_name(other)
                    ),
                )
                .with_code("invalid_type"))
            }
        };
        let mut msg = ChatMessage::new(role, content);
        for (k, v) in m {
            if k != "role" && k != "content" {
                msg.extra.insert(k.clone(), v.clone());
            }
        }
        out.push(msg);
    }
    let n = out.len();
    if n >= 2 && out[n - 1].role == "assistant" && out[n - 2].role == "assistant" {
        return Err(ApiError::param(
            "messages",
            "the conversation cannot end with two assistant messages",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(super::civil_from_days(20_453), (2025, 12, 31));
    }
}
