//! The `orchard` command line: one binary for every job, with llama.cpp's flag names where a
//! llama.cpp tool does the same job. Errors become one clear line and a non-zero exit.

mod cmd;
mod session;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orchard",
    version,
    about = "Private LLM inference: GGUF models on CPU and GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a GGUF file's metadata and tensor table (like gguf-dump).
    Inspect(cmd::inspect::Args),
    /// Tokenize text and print the ids as JSON.
    Tokenize(cmd::tokenize::Args),
    /// Decode text or ids as one batch and print the top logits at every position.
    Logits(cmd::logits::Args),
    /// Generate text from a prompt, streaming it to stdout.
    Run(cmd::run::Args),
    /// Perplexity of a text file, computed as llama-perplexity does.
    Perplexity(cmd::perplexity::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCHARD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::main(a),
        Command::Tokenize(a) => cmd::tokenize::main(a),
        Command::Logits(a) => cmd::logits::main(a),
        Command::Run(a) => cmd::run::main(a),
        Command::Perplexity(a) => cmd::perplexity::main(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
