//! A KV pool too small for the traffic, on the tiny random-weight llama (fast enough for many
//! requests): preempted sequences give exactly the tokens they give alone, and a deterministic
//! simulation of a busy server (random arrivals, prompt lengths, shared prefixes, sampling
//! settings, stop strings, embeddings, clients that vanish, cancellations), driven step by step
//! through `Scheduler` with no thread so that every run is the same, audits the KV accounting
//! after every step, leaks no page and ends every accepted request with exactly one terminal
//! event, last. Passes stay under 64 tokens, where batching cannot change results (see
//! `engine.rs`).

mod common;
use common::*;
use orchard_engine::{
    Engine, EngineConfig, Event, FinishReason, GenParams, Pooling, Request, RequestKind, Scheduler,
    SubmitError,
};
use orchard_sampler::SamplerConfig;
use std::sync::{Arc, Mutex};

/// splitmix64: a tiny, well-mixed deterministic stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Tracked {
    id: u64,
    max_tokens: Option<usize>,
    embed: bool,
    log: Arc<Mutex<Vec<Event>>>,
}

impl Tracked {
    fn finished(&self) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Done { .. } | Event::Error { .. }))
    }
}

fn tok_encode(text: &str) -> Vec<u32> {
    tiny().1.encode(text, true, true)
}

#[test]
fn preempted_sequences_resume_to_the_same_tokens() {
    let (model, tok) = tiny();
    for cache_prompt in [false, true] {
        // 4 pages of 16 cells; three requests of ~3 pages each cannot run side by side.
        let eng = Engine::start(
            model.clone(),
            tok.clone(),
            EngineConfig {
                n_ctx: 64,
                n_parallel: 3,
                n_batch: 16,
                n_ubatch: 16,
                cache_prompt,
                audit_kv: true,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        let ps: Vec<Vec<u32>> = prompts()[..3].iter().map(|p| tok_encode(p)).collect();
        let n = 36;
        let run = |id: u64, p: &Vec<u32>| {
            let (req, rx) = gen_request(id, p.clone(), greedy_params(n));
            eng.submit(req).unwrap();
            rx
        };
        let solo: Vec<Outcome> = ps
            .iter()
            .enumerate()
            .map(|(i, p)| wait(&run(i as u64, p)))
            .collect();
        assert_eq!(eng.stats().totals.preemptions, 0);
        let rxs: Vec<Rx> = ps
            .iter()
            .enumerate()
            .map(|(i, p)| run(10 + i as u64, p))
            .collect();
        for (i, (a, rx)) in solo.iter().zip(&rxs).enumerate() {
            let b = wait(rx);
            assert_eq!(b.finish, FinishReason::Length);
            assert_eq!(a.tokens.len(), n);
            assert_eq!(
                a.tokens, b.tokens,
                "request {i} (cache_prompt {cache_prompt})"
            );
            assert_eq!(a.text, b.text);
            // A preempted request is resumed silently: one Started, one Done.
            let starts = b
                .events
                .iter()
                .filter(|e| matches!(e, Event::Started { .. }))
                .count();
            assert_eq!(starts, 1);
        }
        let st = eng.stats();
        assert!(st.totals.preemptions > 0, "no preemption happened");
        assert_eq!(st.kv_audit_error, None);
        assert_eq!(st.kv_used_cells, st.kv_cached_cells);
        eng.shutdown();
    }
}

#[test]
fn random_traffic_leaks_no_pages_and_ends_every_request_once() {
    let (model, tok) = tiny();
    let mut sched = Scheduler::new(
        model,
        tok,
        EngineConfig {
            n_ctx: 192,
            n_parallel: 4,
            n_batch: 40,
            n_ubatch: 40,
            max_queue: 6,
            audit_kv: true,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    // Three conversations behind one system prompt: 2-3 pages each, the first shared.
    let bases: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            tok_encode(&format!(
                "<|im_start|>system\nYou are a concise assistant who answers in one line.<|im_end|>\n{}",
                chat(&prompts()[i])
            ))
        })
        .collect();
    assert!(bases.iter().all(|b| b.len() > 32));
    let mut rng = Rng(0x0DD_BA11);
    let n_requests = 120;
    let mut next_id = 0u64;
    let mut tracked: Vec<Tracked> = Vec::new();
    let mut refused = 0;
    let mut cancels = 0;

    for tick in 0.. {
        assert!(tick < 20_000, "the simulation does not drain");
        let arrivals = if next_id < n_requests {
            rng.below(3)
        } else {
            0
        };
        for _ in 0..arrivals {
            let id = next_id;
            next_id += 1;
            let mut prompt = bases[rng.below(3) as usize].clone();
            if rng.chance(30) {
                prompt.truncate(1 + rng.below(prompt.len() as u64) as usize);
            }
            for _ in 0..rng.below(48) {
                prompt.push(300 + rng.below(3000) as u32);
            }
            // 0: the client is gone by the time it is told it started.
            let gone_after = rng.chance(10).then(|| rng.below(3) as usize);
            let (sink, log) = recording_sink(gone_after);
            let embed = rng.chance(15);
            let max_tokens = (!embed).then(|| 1 + rng.below(12) as usize);
            let kind = if embed {
                RequestKind::Embed {
                    pooling: if rng.chance(50) {
                        Pooling::Mean
                    } else {
                        Pooling::Last
                    },
                    normalize: true,
                }
            } else {
                RequestKind::Generate(GenParams {
                    max_tokens,
                    sampler: SamplerConfig {
                        temperature: if rng.chance(50) { 0.0 } else { 0.8 },
                        seed: rng.next() & 0xFFFF,
                        repeat_penalty: if rng.chance(30) { 1.1 } else { 1.0 },
                        ..SamplerConfig::default()
                    },
                    stop: if rng.chance(30) {
                        vec![" the".into(), ".".into()]
                    } else {
                        vec![]
                    },
                    ignore_eos: rng.chance(50),
                    n_probs: if rng.chance(20) { 3 } else { 0 },
                    cache_prompt: rng.chance(90),
                    constraint: None,
                })
            };
            match sched.submit(Request {
                id,
                prompt,
                kind,
                sink,
            }) {
                Ok(()) => tracked.push(Tracked {
                    id,
                    max_tokens,
                    embed,
                    log,
                }),
                Err(SubmitError::QueueFull { .. }) => refused += 1,
                Err(e) => panic!("request {id} refused: {e}"),
            }
        }
        if rng.chance(8) {
            let live: Vec<u64> = tracked
                .iter()
                .filter(|t| !t.finished())
                .map(|t| t.id)
                .collect();
            if !live.is_empty() {
                let id = live[rng.below(live.len() as u64) as usize];
                assert!(sched.cancel(id), "live request {id} not found");
                cancels += 1;
            }
        }
        sched.step();
        if let Err(e) = sched.audit_kv() {
            panic!("tick {tick}: {e}");
        }
        if next_id >= n_requests && sched.is_idle() {
            break;
        }
    }

    let st = sched.stats();
    eprintln!(
        "{} accepted, {refused} refused, {cancels} cancelled by id; totals {:?}",
        tracked.len(),
        st.totals
    );
    for t in &tracked {
        let log = t.log.lock().unwrap();
        let terminal: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Event::Done { .. } | Event::Error { .. }))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(terminal, vec![log.len() - 1], "request {}: {log:?}", t.id);
        if let Some(Event::Error { message }) = log.last() {
            panic!("request {} failed: {message}", t.id);
        }
        let starts = log
            .iter()
            .filter(|e| matches!(e, Event::Started { .. }))
            .count();
        assert!(starts <= 1, "request {} started {starts} times", t.id);
        let n_tokens = log
            .iter()
            .filter(|e| matches!(e, Event::Token { .. }))
            .count();
        let n_embd = log
            .iter()
            .filter(|e| matches!(e, Event::Embedding(_)))
            .count();
        let Some(Event::Done { finish, usage, .. }) = log.last() else {
            unreachable!()
        };
        if *finish != FinishReason::Cancelled {
            assert_eq!(starts, 1, "request {} finished without starting", t.id);
        }
        if t.embed {
            assert_eq!(n_tokens, 0);
            assert_eq!(n_embd, usize::from(*finish == FinishReason::Stop));
        } else {
            assert_eq!(usage.completion_tokens, n_tokens, "request {}", t.id);
            assert!(n_tokens <= t.max_tokens.unwrap());
            if *finish == FinishReason::Length {
                assert_eq!(n_tokens, t.max_tokens.unwrap(), "request {}", t.id);
            }
        }
    }
    assert_eq!(st.busy_slots, 0);
    assert_eq!(st.queue_depth, 0);
    assert_eq!(st.kv_audit_error, None);
    assert_eq!(st.kv_used_cells, st.kv_cached_cells, "pages leaked");
    assert_eq!(st.kv_free_cells + st.kv_used_cells, st.kv_total_cells);
    let t = st.totals;
    assert_eq!(
        (t.requests_ok + t.requests_cancelled) as usize,
        tracked.len(),
        "every accepted request is counted once"
    );
    assert_eq!(t.requests_error, 0);
    // The point of the small pool: these paths must have been exercised.
    assert!(t.preemptions > 0, "no preemption happened");
    assert!(t.cached_prompt_tokens > 0, "the prefix cache was never hit");
    assert!(t.requests_cancelled > 0);
}

/// The engine's half of batch invariance: a prompt is fed in the same chunks (positions and
/// sizes) whatever else runs, a chunk is never cut because others took the step's budget, and
/// every request's tokens are contiguous in each forward pass.
#[test]
fn prompt_chunks_do_not_depend_on_other_traffic() {
    let (model, tok) = tiny();
    let cfg = EngineConfig {
        n_ctx: 512,
        n_parallel: 4,
        n_batch: 24,
        n_ubatch: 16,
        cache_prompt: false,
        audit_kv: true,
        ..EngineConfig::default()
    };
    let probe: Vec<u32> = (0..50).map(|i| 5 + (i * 7) % 200).collect();
    let gen = |id: u64, prompt: Vec<u32>, n: usize| {
        let (sink, _log) = recording_sink(None);
        Request {
            id,
            prompt,
            kind: RequestKind::Generate(GenParams {
                max_tokens: Some(n),
                ignore_eos: true,
                sampler: SamplerConfig {
                    temperature: 0.0,
                    ..SamplerConfig::default()
                },
                ..GenParams::default()
            }),
            sink,
        }
    };
    let runs_of = |passes: &[Vec<orchard_engine::PassRun>], id: u64| -> Vec<(u32, u32)> {
        passes
            .iter()
            .flatten()
            .filter(|r| r.request == id)
            .map(|r| (r.first_pos, r.n_tokens))
            .collect()
    };
    let contiguous = |passes: &[Vec<orchard_engine::PassRun>]| {
        for (k, p) in passes.iter().enumerate() {
            let mut ids: Vec<u64> = p.iter().map(|r| r.request).collect();
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n, "pass {k} splits a request: {p:?}");
            assert!(
                p.iter().map(|r| r.n_tokens).sum::<u32>() <= 16,
                "pass {k}: {p:?}"
            );
        }
    };

    // Alone.
    let mut sched = Scheduler::new(model.clone(), tok.clone(), cfg.clone()).unwrap();
    sched.record_passes(true);
    sched.submit(gen(1, probe.clone(), 4)).unwrap();
    while !sched.is_idle() {
        sched.step();
    }
    let alone = sched.take_passes();
    contiguous(&alone);
    let solo = runs_of(&alone, 1);
    assert_eq!(&solo[..4], &[(0, 16), (16, 16), (32, 16), (48, 2)]);

    // Among two decoding requests and another long prompt that arrives first.
    let mut sched = Scheduler::new(model, tok, cfg).unwrap();
    sched.record_passes(true);
    sched.submit(gen(10, vec![9, 8, 7], 40)).unwrap();
    sched.submit(gen(11, vec![4, 5, 6, 7], 40)).unwrap();
    sched.step();
    sched.step();
    sched
        .submit(gen(12, (0..45).map(|i| 3 + i % 100).collect(), 6))
        .unwrap();
    sched.submit(gen(1, probe, 4)).unwrap();
    while !sched.is_idle() {
        sched.step();
    }
    let busy = sched.take_passes();
    contiguous(&busy);
    assert_eq!(runs_of(&busy, 1), solo, "the probe was fed differently");
    // The others really shared steps with it: the decoders ran during its prompt.
    let first = busy
        .iter()
        .position(|p| p.iter().any(|r| r.request == 1))
        .unwrap();
    assert!(busy[first..]
        .iter()
        .take(4)
        .any(|p| p.iter().any(|r| r.request == 10)));
    assert_eq!(sched.audit_kv(), Ok(()));
}
