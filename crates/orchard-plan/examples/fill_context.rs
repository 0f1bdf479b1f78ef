//! Runs the real engine the way `serve` would use it (model, tokenizer, samplers, context) and
//! fills the whole context, then prints its peak resident memory (VmHWM) as JSON: the
//! measurement the plan is checked against. With `--check` it first asks the planner and refuses
//! (exit 3, message on stderr) before anything is loaded, which is how the refusal test runs it.

use clap::Parser;
use orchard_backend::TokenSlot;
use orchard_models::{Batch, Context, ContextOptions, Model};
use orchard_plan::{check_or_refuse, PlanError, PlanRequest};
use orchard_sampler::{Sampler, SamplerConfig};
use orchard_tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    ctx: usize,
    /// Tokens per decode call; also the activation rows (the engine does not split ubatches).
    #[arg(long, default_value_t = 512)]
    ubatch: usize,
    #[arg(long, default_value_t = 1)]
    np: usize,
    /// Only start the runtime (rayon pool) and report: the fixed overhead measurement.
    #[arg(long)]
    baseline: bool,
    /// Plan first and refuse (exit 3) when the plan does not fit.
    #[arg(long)]
    check: bool,
    /// KV cache type of K (`-ctk`).
    #[arg(long, default_value = "f16", value_parser = orchard_plan::parse_cache_type)]
    ctk: orchard_core::DType,
    /// KV cache type of V (`-ctv`).
    #[arg(long, default_value = "f16", value_parser = orchard_plan::parse_cache_type)]
    ctv: orchard_core::DType,
}

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a = Args::parse();
    let mut phases: Vec<(&str, u64)> = vec![("start", status_kib("VmRSS:") * 1024)];
    // Start the compute pool the way the first matmul would.
    rayon::scope(|_| {});
    let n_threads = rayon::current_num_threads();
    rayon::broadcast(|_| std::hint::black_box(vec![0u8; 64]));
    phases.push(("threads", status_kib("VmRSS:") * 1024));
    if a.baseline {
        println!(
            "{{\"vm_hwm\": {}, \"threads\": {n_threads}}}",
            status_kib("VmHWM:") * 1024
        );
        return;
    }
    if a.check {
        let req = PlanRequest {
            n_ctx: a.ctx,
            n_batch: a.ubatch,
            n_ubatch: a.ubatch,
            n_parallel: a.np,
            cache_type_k: a.ctk,
            cache_type_v: a.ctv,
            ..PlanRequest::default()
        };
        match check_or_refuse(&a.model, &req) {
            Ok(_) => {}
            Err(PlanError::DoesNotFit { message, .. }) => {
                eprintln!("{message}");
                eprintln!("vm_hwm_at_refusal {}", status_kib("VmHWM:") * 1024);
                std::process::exit(3);
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }

    let model = Arc::new(Model::load(&a.model).expect("model loads"));
    phases.push(("model", status_kib("VmRSS:") * 1024));
    let tok = Tokenizer::from_gguf(&model.file).expect("tokenizer loads");
    phases.push(("tokenizer", status_kib("VmRSS:") * 1024));
    let mut samplers: Vec<Sampler> = (0..a.np)
        .map(|i| {
            Sampler::new(SamplerConfig {
                seed: 1234 + i as u64,
                ..SamplerConfig::default()
            })
            .expect("sampler config")
        })
        .collect();
    let n_vocab = model.hp.n_vocab;
    let opts = ContextOptions {
        n_ctx: a.ctx,
        type_k: a.ctk,
        type_v: a.ctv,
    };
    let mut ctx = Context::new(model.clone(), opts).expect("context");
    phases.push(("context", status_kib("VmRSS:") * 1024));

    // Fill every cell: prompt processing in chunks of -ub with logits for each chunk's last
    // token, then one generated token per sequence into the last cells. Sequences share the
    // cells evenly.
    let per_seq = a.ctx / a.np;
    let tables: Vec<Vec<u32>> = (0..a.np)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_token = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % n_vocab as u64) as u32
    };
    let mut logits = Vec::new();
    for s in 0..a.np {
        let mut pos = 0;
        while pos + 1 < per_seq {
            let n = a.ubatch.min(per_seq - 1 - pos);
            let tokens: Vec<u32> = (0..n).map(|_| next_token()).collect();
            let slots: Vec<TokenSlot> = (0..n)
                .map(|i| TokenSlot {
                    seq: s as u32,
                    pos: (pos + i) as u32,
                })
                .collect();
            let want = [n as u32 - 1];
            ctx.decode(
                &Batch {
                    tokens: &tokens,
                    slots: &slots,
                    cells: &table_refs,
                    logits: &want,
                },
                &mut logits,
            )
            .expect("decode");
            pos += n;
        }
    }
    // One step that decodes a token for every sequence at once (n_outputs = -np).
    let sampled: Vec<u32> = samplers
        .iter_mut()
        .map(|sm| sm.sample(&logits[..n_vocab]))
        .collect();
    let slots: Vec<TokenSlot> = (0..a.np)
        .map(|s| TokenSlot {
            seq: s as u32,
            pos: (per_seq - 1) as u32,
        })
        .collect();
    let want: Vec<u32> = (0..a.np as u32).collect();
    ctx.decode(
        &Batch {
            tokens: &sampled,
            slots: &slots,
            cells: &table_refs,
            logits: &want,
        },
        &mut logits,
    )
    .expect("decode");
    for (s, sm) in samplers.iter_mut().enumerate() {
        sm.sample(&logits[s * n_vocab..(s + 1) * n_vocab]);
    }
    phases.push(("filled", status_kib("VmRSS:") * 1024));
    let piece = tok.token_to_piece(sampled[0], true);
    let phases_json: Vec<String> = phases
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    println!(
        "{{\"vm_hwm\": {}, \"vm_rss\": {}, \"kv_bytes\": {}, \"threads\": {n_threads}, \"piece_len\": {}, \"phases\": {{{}}}}}",
        status_kib("VmHWM:") * 1024,
        status_kib("VmRSS:") * 1024,
        ctx.kv_bytes(),
        piece.len(),
        phases_json.join(", ")
    );
}
