//! `orchard bench`: prompt-processing and generation speed in llama-bench's table layout (and its
//! JSON schema with `-o json`), plus load time and peak resident memory.

use crate::session::Session;
use anyhow::{Context, Result};
use orchard_core::DType;
use orchard_models::Model;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model file(s); repeat -m to bench several.
    #[arg(short = 'm', long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Prompt length of the pp test (0 to skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens of the tg test (0 to skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    repetitions: usize,
    /// Output: md (llama-bench's table) or json (llama-bench's schema).
    #[arg(short = 'o', long = "output", default_value = "md")]
    output: String,
    /// Layers to offload to the GPU (999 = all).
    #[arg(long = "n-gpu-layers", aliases = ["gpu-layers", "ngl"], default_value_t = 0)]
    n_gpu_layers: usize,
    /// GPU adapter index from `orchard devices`.
    #[arg(long)]
    device: Option<usize>,
    /// Batch size for prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    #[command(flatten)]
    cache: crate::session::CacheTypes,
}

struct Row {
    model: PathBuf,
    model_type: String,
    size_bytes: u64,
    n_params: u64,
    n_prompt: usize,
    n_gen: usize,
    samples_ts: Vec<f64>,
    load_ms: f64,
}

pub fn main(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.output == "md" || a.output == "json",
        "-o must be md or json"
    );
    anyhow::ensure!(a.repetitions > 0, "-r must be at least 1");
    orchard_backend::init_threads(a.threads);
    let threads = if a.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        a.threads
    };
    let mut rows = Vec::new();
    for path in &a.models {
        let t0 = Instant::now();
        let model =
            Arc::new(Model::load(path).with_context(|| format!("loading {}", path.display()))?);
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let n_params: u64 = model
            .tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum();
        let model_type = format!(
            "{} {} {}",
            model.hp.arch,
            human_params(n_params),
            dominant_type(&model)
        );
        let n_vocab = model.hp.n_vocab as u32;
        // Deterministic pseudo-random tokens, as llama-bench feeds random ids.
        let tokens: Vec<u32> = (0..a.n_prompt.max(1) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab)
            .collect();
        let n_ctx = a.n_prompt + a.n_gen + 1;
        let offload = crate::session::Offload {
            n_gpu_layers: a.n_gpu_layers,
            device: a.device,
            type_k: a.cache.cache_type_k,
            type_v: a.cache.cache_type_v,
        };
        let mut s = Session::with_offload(model.clone(), n_ctx, &offload)?;
        let mut logits = Vec::new();
        for (n_prompt, n_gen) in [(a.n_prompt, 0), (0, a.n_gen)] {
            if n_prompt + n_gen == 0 {
                continue;
            }
            // One warm-up run, then the measured repetitions.
            let mut samples = Vec::new();
            for rep in 0..=a.repetitions {
                s.clear();
                let t = Instant::now();
                if n_prompt > 0 {
                    s.feed(&tokens[..n_prompt], a.batch_size, false, &mut logits)?;
                } else {
                    let mut tok = tokens[0];
                    for _ in 0..n_gen {
                        s.feed(&[tok], 1, false, &mut logits)?;
                        tok = orchard_sampler::greedy(&logits);
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                if rep > 0 {
                    samples.push((n_prompt + n_gen) as f64 / secs);
                }
            }
            rows.push(Row {
                model: path.clone(),
                model_type: model_type.clone(),
                size_bytes: model.weight_bytes(),
                n_params,
                n_prompt,
                n_gen,
                samples_ts: samples,
                load_ms,
            });
        }
    }
    let peak_rss = peak_rss_bytes();
    if a.output == "json" {
        let arr: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let (avg, sd) = mean_sd(&r.samples_ts);
                serde_json::json!({
                    "build_commit": env!("CARGO_PKG_VERSION"), "model_filename": r.model.display().to_string(),
                    "model_type": r.model_type, "model_size": r.size_bytes, "model_n_params": r.n_params,
                    "n_batch": a.batch_size, "n_threads": threads, "n_prompt": r.n_prompt, "n_gen": r.n_gen,
                    "backends": if a.n_gpu_layers > 0 { "Vulkan/Metal (wgpu)" } else { "CPU" }, "n_gpu_layers": a.n_gpu_layers,
                    "type_k": a.cache.cache_type_k.name(), "type_v": a.cache.cache_type_v.name(), "avg_ts": avg, "stddev_ts": sd, "samples_ts": r.samples_ts,
                    "avg_ns": (r.n_prompt + r.n_gen) as f64 / avg * 1e9, "load_ms": r.load_ms,
                    "peak_rss_bytes": peak_rss,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr)?);
        return Ok(());
    }
    // llama-bench adds the type_k / type_v columns when they are not the default.
    let kv_cols = (a.cache.cache_type_k, a.cache.cache_type_v) != (DType::F16, DType::F16);
    let (kv_head, kv_rule) = if kv_cols {
        (" type_k | type_v |", " -----: | -----: |")
    } else {
        ("", "")
    };
    println!("| model                          |       size |     params | backend    | threads |{kv_head}            test |                  t/s |");
    println!("| ------------------------------ | ---------: | ---------: | ---------- | ------: |{kv_rule} --------------: | -------------------: |");
    for r in &rows {
        let (avg, sd) = mean_sd(&r.samples_ts);
        let test = if r.n_prompt > 0 {
            format!("pp{}", r.n_prompt)
        } else {
            format!("tg{}", r.n_gen)
        };
        let kv = if kv_cols {
            format!(
                " {:>6} | {:>6} |",
                a.cache.cache_type_k.name(),
                a.cache.cache_type_v.name()
            )
        } else {
            String::new()
        };
        println!(
            "| {:<30} | {:>6.2} MiB | {:>10} | {:<10} | {:>7} |{kv} {:>15} | {:>20} |",
            r.model_type,
            r.size_bytes as f64 / (1 << 20) as f64,
            human_params(r.n_params),
            "CPU",
            threads,
            test,
            format!("{avg:.2} ± {sd:.2}")
        );
    }
    let mut load: Vec<String> = rows
        .iter()
        .map(|r| format!("{}: {:.0} ms", r.model.display(), r.load_ms))
        .collect();
    load.dedup();
    println!(
        "\nload: {} | peak resident memory: {:.1} MiB",
        load.join(", "),
        peak_rss as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}

/// The type holding the most weight bytes (what llama-bench prints as the model's quant).
fn dominant_type(model: &Model) -> String {
    let mut by: std::collections::HashMap<orchard_core::DType, u64> = Default::default();
    for t in &model.tensors {
        *by.entry(t.dtype).or_default() += t.range.len() as u64;
    }
    by.into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(t, _)| t.name().to_uppercase())
        .unwrap_or_default()
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
