//! `orchard run`: generate from a prompt with llama.cpp's flag names, streaming text as it is
//! produced and printing prompt and generation speed at the end.

use crate::session;
use anyhow::{Context, Result};
use orchard_sampler::{Sampler, SamplerConfig};
use orchard_template::{ChatMessage, ChatTemplate};
use orchard_tokenizer::{StreamDecoder, Tokenizer};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'm', long)]
    model: PathBuf,
    #[arg(short = 'p', long)]
    prompt: String,
    /// Tokens to generate (-1: until end of generation or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_hyphen_values = true)]
    n_predict: i64,
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
    /// Context size in tokens (0: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx_size: usize,
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    #[arg(long, default_value_t = 40)]
    top_k: i32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64, allow_hyphen_values = true)]
    repeat_last_n: i32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(short = 's', long, default_value_t = orchard_sampler::DEFAULT_SEED)]
    seed: u64,
    /// Layers to offload to the GPU (the last N; 999 = all, with the output layer).
    #[arg(long = "n-gpu-layers", aliases = ["gpu-layers", "ngl"], default_value_t = 0)]
    n_gpu_layers: usize,
    /// GPU adapter index from `orchard devices`.
    #[arg(long)]
    device: Option<usize>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    cache: session::CacheTypes,
    /// Skip the memory check that refuses a model + context that will not fit.
    #[arg(long)]
    no_fit_check: bool,
    /// Print one JSON object (prompt_ids, completion_ids, text, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<()> {
    if !a.no_fit_check {
        let req = orchard_plan::PlanRequest {
            n_ctx: a.ctx_size,
            n_batch: a.batch_size,
            cache_type_k: a.cache.cache_type_k,
            cache_type_v: a.cache.cache_type_v,
            n_gpu_layers: a.n_gpu_layers,
            ..Default::default()
        };
        orchard_plan::check_or_refuse(&a.model, &req)
            .map_err(|e| anyhow::anyhow!("{e} (--no-fit-check to run anyway)"))?;
    }
    let t_load = Instant::now();
    let offload = session::Offload {
        n_gpu_layers: a.n_gpu_layers,
        device: a.device,
        type_k: a.cache.cache_type_k,
        type_v: a.cache.cache_type_v,
    };
    let (model, tok, mut s) = session::load_offloaded(&a.model, a.ctx_size, a.threads, &offload)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let prompt_text = if a.chat {
        render_chat(&model, &tok, a.system.as_deref(), &a.prompt)?
    } else {
        a.prompt.clone()
    };
    let add_bos = !(a.chat
        && tok
            .bos()
            .and_then(|b| tok.token_text(b))
            .is_some_and(|t| prompt_text.starts_with(t)));
    let prompt_ids = tok.encode(&prompt_text, add_bos, true);
    anyhow::ensure!(!prompt_ids.is_empty(), "the prompt tokenized to no tokens");
    anyhow::ensure!(
        prompt_ids.len() < s.n_ctx(),
        "the prompt is {} tokens, the context only {} (raise -c)",
        prompt_ids.len(),
        s.n_ctx()
    );
    let cfg = SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        seed: a.seed,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(cfg).context("sampling parameters")?;
    for &t in &prompt_ids {
        sampler.accept(t);
    }
    let budget = s.n_ctx() - prompt_ids.len();
    let n_predict = if a.n_predict < 0 {
        budget
    } else {
        (a.n_predict as usize).min(budget)
    };

    let mut logits = Vec::new();
    let t0 = Instant::now();
    s.feed(&prompt_ids, a.batch_size, false, &mut logits)?;
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut out_ids = Vec::new();
    let mut text = String::new();
    let mut dec = StreamDecoder::new(true);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while out_ids.len() < n_predict {
        let id = sampler.sample(&logits);
        sampler.accept(id);
        if tok.is_eog(id) {
            break;
        }
        out_ids.push(id);
        let piece = dec.push(&tok, id);
        if !a.json {
            out.write_all(piece.as_bytes())?;
            out.flush()?;
        }
        text.push_str(&piece);
        if out_ids.len() == n_predict {
            break;
        }
        s.feed(&[id], 1, false, &mut logits)?;
    }
    let rest = dec.flush();
    text.push_str(&rest);
    let gen_ms = t1.elapsed().as_secs_f64() * 1e3;
    let pps = prompt_ids.len() as f64 / (prompt_ms / 1e3);
    let gps = out_ids.len() as f64 / (gen_ms / 1e3);
    if a.json {
        let v = serde_json::json!({
            "prompt_ids": prompt_ids, "completion_ids": out_ids, "text": text,
            "timings": { "load_ms": load_ms, "prompt_ms": prompt_ms, "prompt_tokens_per_s": pps,
                         "gen_ms": gen_ms, "gen_tokens_per_s": gps },
        });
        println!("{v}");
    } else {
        writeln!(out, "{rest}")?;
        eprintln!(
            "\nprompt: {} tokens in {:.1} ms ({:.1} t/s) | generation: {} tokens in {:.1} ms ({:.1} t/s) | load {:.0} ms",
            prompt_ids.len(),
            prompt_ms,
            pps,
            out_ids.len(),
            gen_ms,
            gps,
            load_ms
        );
    }
    Ok(())
}

/// Renders one user turn (and an optional system turn) with the GGUF's chat template, or the
/// architecture's built-in one when the file carries none.
fn render_chat(
    model: &orchard_models::Model,
    tok: &Tokenizer,
    system: Option<&str>,
    user: &str,
) -> Result<String> {
    let md = model.file.metadata();
    let piece = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    let (bos, eos) = (piece(tok.bos()), piece(tok.eos()));
    let template = match md.get_str("tokenizer.chat_template")? {
        Some(src) => ChatTemplate::from_jinja(src, &bos, &eos)
            .context("compiling the GGUF's chat template")?,
        None => {
            let name = orchard_template::default_for_architecture(&model.hp.arch);
            ChatTemplate::builtin(name)
                .with_context(|| format!("no built-in chat template '{name}'"))?
        }
    };
    let mut msgs = Vec::new();
    if let Some(sys) = system {
        msgs.push(ChatMessage::new("system", sys));
    }
    msgs.push(ChatMessage::new("user", user));
    Ok(template.render(&msgs, true)?)
}
