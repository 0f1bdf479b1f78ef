//! Shared helpers of the engine tests: the real model, request builders, sinks that record
//! events, and a reference greedy decoder written directly against `Context`.

#![allow(dead_code)]

use orchard_backend::TokenSlot;
use orchard_engine::{
    Engine, EngineConfig, EngineHandle, Event, FinishReason, GenParams, Request, RequestKind, Sink,
    TokenId,
};
use orchard_models::{Batch, Context, ContextOptions, Model};
use orchard_sampler::SamplerConfig;
use orchard_tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub fn models_dir() -> PathBuf {
    std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// SmolLM2 and its tokenizer, loaded once per test binary. Fails (not skips) without it.
pub fn smollm() -> (Arc<Model>, Arc<Tokenizer>) {
    static M: OnceLock<(Arc<Model>, Arc<Tokenizer>)> = OnceLock::new();
    M.get_or_init(|| {
        let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.exists(),
            "model {} is missing: run scripts/fetch-models.sh or set ORCHARD_MODELS",
            path.display()
        );
        let model = Arc::new(Model::load(&path).expect("load model"));
        let tok = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer"));
        (model, tok)
    })
    .clone()
}

pub fn start(cfg: EngineConfig) -> EngineHandle {
    let (m, t) = smollm();
    Engine::start(m, t, cfg).expect("engine starts")
}

pub fn encode(text: &str) -> Vec<TokenId> {
    smollm().1.encode(text, true, true)
}

pub fn greedy_params(max_tokens: usize) -> GenParams {
    GenParams {
        max_tokens: Some(max_tokens),
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        },
        ignore_eos: true,
        ..GenParams::default()
    }
}

pub fn gen_request(id: u64, prompt: Vec<TokenId>, params: GenParams) -> (Request, Rx) {
    let (sink, rx) = channel_sink();
    (
        Request {
            id,
            prompt,
            kind: RequestKind::Generate(params),
            sink,
        },
        rx,
    )
}

pub type Rx = mpsc::Receiver<Event>;

/// A sink that forwards every event to a channel.
pub fn channel_sink() -> (Sink, Rx) {
    let (tx, rx) = mpsc::channel();
    (Box::new(move |e| tx.send(e).is_ok()), rx)
}

/// A sink that records events into a shared vector and reports the client gone once
/// `gone_after_tokens` tokens were seen.
pub fn recording_sink(gone_after_tokens: Option<usize>) -> (Sink, Arc<Mutex<Vec<Event>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let mut n_tokens = 0;
    (
        Box::new(move |e| {
            if matches!(e, Event::Token { .. }) {
                n_tokens += 1;
            }
            l.lock().unwrap().push(e);
            gone_after_tokens.is_none_or(|g| n_tokens < g)
        }),
        log,
    )
}

/// What one request produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub tokens: Vec<TokenId>,
    pub text: String,
    /// top-2 margin (logprob of best minus second best) per token, when asked for.
    pub margins: Vec<f32>,
    pub n_cached: usize,
    pub finish: FinishReason,
    pub stop_text: Option<String>,
    pub events: Vec<Event>,
}

/// Waits for the request's terminal event and summarizes its stream.
pub fn wait(rx: &Rx) -> Outcome {
    let mut o = Outcome {
        tokens: Vec::new(),
        text: String::new(),
        margins: Vec::new(),
        n_cached: 0,
        finish: FinishReason::Cancelled,
        stop_text: None,
        events: Vec::new(),
    };
    loop {
        let e = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("request finished");
        o.events.push(e.clone());
        match e {
            Event::Started { n_cached, .. } => o.n_cached = n_cached,
            Event::Token { id, text, logprobs } => {
                o.tokens.push(id);
                o.text.push_str(&text);
                if let Some(lp) = logprobs {
                    if lp.top.len() >= 2 {
                        o.margins.push(lp.top[0].1 - lp.top[1].1);
                    }
                }
            }
            Event::Done {
                finish, stop_text, ..
            } => {
                o.finish = finish;
                o.stop_text = stop_text;
                return o;
            }
            Event::Error { message } => panic!("request failed: {message}"),
            Event::Embedding(_) => {}
        }
    }
}

/// Greedy decoding straight on a `Context`: the whole prompt in one pass, then one token per
/// pass, `n` tokens.
pub fn context_greedy(prompt: &[TokenId], n: usize) -> Vec<TokenId> {
    let (model, _) = smollm();
    let n_ctx = prompt.len() + n + 16;
    let mut ctx = Context::new(
        model.clone(),
        ContextOptions {
            n_ctx,
            ..Default::default()
        },
    )
    .unwrap();
    let cells: Vec<u32> = (0..n_ctx as u32).collect();
    let tables = [cells.as_slice()];
    let mut out = Vec::new();
    let mut toks = prompt.to_vec();
    let mut start = 0;
    let mut result = Vec::new();
    for _ in 0..n {
        let slots: Vec<TokenSlot> = (start..toks.len())
            .map(|p| TokenSlot {
                seq: 0,
                pos: p as u32,
            })
            .collect();
        let last = (toks.len() - start - 1) as u32;
        ctx.decode(
            &Batch {
                tokens: &toks[start..],
                slots: &slots,
                cells: &tables,
                logits: &[last],
            },
            &mut out,
        )
        .unwrap();
        let id = orchard_sampler::greedy(&out);
        start = toks.len();
        toks.push(id);
        result.push(id);
    }
    result
}

/// Eight short, different prompts (the kernels of this tree are slow: tests keep token counts
/// low).
pub fn prompts() -> Vec<String> {
    [
        "The capital of France is",
        "Autumn leaves are",
        "Three prime numbers are",
        "A CPU cache is",
        "In Spanish, good morning is",
        "On a clear day the sky is",
        "A famous physicist is",
        "A spider has",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A chat-formatted question behind a short system prompt (over 16 tokens: more than one KV
/// page).
pub fn chat(question: &str) -> String {
    format!("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
}

/// The tiny random-weight llama of the parity data (2 layers, n_embd 256, 8192 tokens): output
/// is nonsense but deterministic, and a token costs a fraction of a millisecond.
pub fn tiny() -> (Arc<Model>, Arc<Tokenizer>) {
    static M: OnceLock<(Arc<Model>, Arc<Tokenizer>)> = OnceLock::new();
    M.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/parity/tiny/tiny-llama3.Q4_K_M.gguf");
        let model = Arc::new(Model::load(&path).expect("load tiny model"));
        let tok = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer"));
        (model, tok)
    })
    .clone()
}
