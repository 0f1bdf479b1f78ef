//! `orchard tokenize`: text to token ids as JSON, one-shot or as a JSON-lines filter.

use anyhow::{Context, Result};
use orchard_gguf::GgufFile;
use orchard_tokenizer::Tokenizer;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Text to tokenize.
    #[arg(short = 'p', long, required_unless_present = "jsonl")]
    prompt: Option<String>,
    /// Do not add BOS/EOS as the model's vocabulary asks.
    #[arg(long)]
    no_special: bool,
    /// Map special-token text such as `<|im_start|>` to its id.
    #[arg(long)]
    parse_special: bool,
    /// Read `{"text","add_special","parse_special"}` lines on stdin, write `{"ids":[...]}` lines.
    #[arg(long)]
    jsonl: bool,
}

pub fn main(a: Args) -> Result<()> {
    let f = GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let tok = Tokenizer::from_gguf(&f)?;
    if !a.jsonl {
        let ids = tok.encode(
            a.prompt.as_deref().unwrap_or_default(),
            !a.no_special,
            a.parse_special,
        );
        println!("{}", serde_json::to_string(&ids)?);
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: not JSON", n + 1))?;
        let text = v["text"]
            .as_str()
            .with_context(|| format!("stdin line {}: no string field \"text\"", n + 1))?;
        let add = v["add_special"].as_bool().unwrap_or(true);
        let parse = v["parse_special"].as_bool().unwrap_or(false);
        writeln!(
            out,
            "{}",
            serde_json::json!({ "ids": tok.encode(text, add, parse) })
        )?;
    }
    Ok(())
}
