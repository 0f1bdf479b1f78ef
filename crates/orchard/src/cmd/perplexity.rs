//! `orchard perplexity`: llama-perplexity's computation (see testdata/parity/README.md): the text
//! is tokenized once, cut into chunks of `-c` tokens, each decoded from an empty cache with its
//! first token replaced by BOS when the vocabulary adds one, and only the second half of each
//! chunk scored.

use crate::session;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The text file.
    #[arg(short = 'f', long)]
    file: PathBuf,
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Chunks to score (-1 = all).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    chunks: i64,
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    cache: session::CacheTypes,
}

pub fn main(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let n_ctx = a.ctx_size;
    anyhow::ensure!(n_ctx >= 4, "-c must be at least 4");
    let offload = session::Offload {
        type_k: a.cache.cache_type_k,
        type_v: a.cache.cache_type_v,
        ..Default::default()
    };
    let (model, tok, mut s) = session::load_offloaded(&a.model, n_ctx, a.threads, &offload)?;
    let tokens = tok.encode(&text, true, false);
    let n_chunk_max = tokens.len() / n_ctx;
    anyhow::ensure!(
        n_chunk_max > 0,
        "{} tokens: need at least {} (2 * -c) for one chunk",
        tokens.len(),
        n_ctx
    );
    let n_chunk = if a.chunks < 0 {
        n_chunk_max
    } else {
        (a.chunks as usize).min(n_chunk_max)
    };
    eprintln!(
        "perplexity: {} tokens, {n_chunk} chunks of {n_ctx}",
        tokens.len()
    );
    let n_vocab = model.hp.n_vocab;
    let first = n_ctx / 2;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut logits = Vec::new();
    let t0 = Instant::now();
    for i in 0..n_chunk {
        let start = i * n_ctx;
        let mut chunk = tokens[start..start + n_ctx].to_vec();
        if tok.add_bos() {
            chunk[0] = tok
                .bos()
                .context("the vocabulary adds BOS but has no BOS token")?;
        }
        s.clear();
        // Only the scored half needs logits (the output head is the costliest matmul).
        s.feed_logits_from(&chunk, a.batch_size, first, &mut logits)?;
        for j in first..n_ctx - 1 {
            let row = &logits[(j - first) * n_vocab..(j - first + 1) * n_vocab];
            let v = -log_softmax(row, tokens[start + j + 1] as usize);
            nll += v;
            nll2 += v * v;
        }
        count += n_ctx - 1 - first;
        eprint!("[{}]{:.4},", i + 1, (nll / count as f64).exp());
    }
    eprintln!();
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let err = if var > 0.0 {
        (var / (count as f64 - 1.0)).sqrt() * ppl
    } else {
        0.0
    };
    eprintln!(
        "{:.2} s, {:.1} tokens/s",
        t0.elapsed().as_secs_f64(),
        (n_chunk * n_ctx) as f64 / t0.elapsed().as_secs_f64()
    );
    println!("Final estimate: PPL = {ppl:.4} +/- {err:.5}");
    Ok(())
}

/// `log(softmax(row)[tok])` with the sum in f64, as llama-perplexity computes it.
fn log_softmax(row: &[f32], tok: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    (row[tok] - max) as f64 - sum.ln()
}
