//! `orchard logits`: decode text or ids as ONE batch and print the top logits of every position
//! in the parity files' format, for checking an engine or a quantization against another.

use crate::session;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Text, tokenized with special tokens added and special-token text parsed.
    #[arg(
        short = 'p',
        long,
        conflicts_with = "ids",
        required_unless_present = "ids"
    )]
    prompt: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
}

pub fn main(a: Args) -> Result<()> {
    let (model, tok, _) = session::load(&a.model, 16, a.threads)?;
    let ids = match (a.ids, a.prompt) {
        (Some(ids), _) => ids,
        (None, Some(p)) => tok.encode(&p, true, true),
        (None, None) => unreachable!("clap requires one"),
    };
    anyhow::ensure!(
        !ids.is_empty(),
        "nothing to decode: the prompt tokenized to no tokens"
    );
    let mut s = session::Session::new(model.clone(), ids.len())?;
    let mut logits = Vec::new();
    s.feed(&ids, ids.len(), true, &mut logits)
        .context("decoding")?;
    let n_vocab = model.hp.n_vocab;
    let top: Vec<Vec<(u32, f32)>> = logits
        .chunks(n_vocab)
        .map(|row| top_k(row, a.top_k))
        .collect();
    println!("{}", serde_json::json!({ "ids": ids, "top5": top }));
    Ok(())
}

/// The `k` highest logits, highest first (ties: lower id first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(row.len());
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}
