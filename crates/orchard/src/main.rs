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
    /// Prompt and generation speed in llama-bench's layout (md or json).
    Bench(cmd::bench::Args),
    /// Memory plan of a model + context: fits or not, and why (`--fit` finds the largest context).
    Plan(orchard_plan::PlanArgs),
    /// List the GPU adapters `-ngl` / `--device` can use.
    Devices,
    /// Serve the OpenAI-compatible API (llama-server's flags; see `orchard serve --help`).
    Serve,
    /// Requantize a GGUF to another type or mix (Q8_0, Q4_K_M, F16, ...).
    Quantize(cmd::quantize::Args),
    /// API keys and tenants of the usage ledger: create, list, revoke.
    Keys(cmd::ledger::KeysArgs),
    /// Usage report from the ledger by tenant, key, model or day (same as GET /v1/usage).
    Usage(cmd::ledger::UsageArgs),
    /// FinOps reports: `orchard finops tco` (owned cost per 1M tokens vs cloud, break-even).
    Finops(cmd::ledger::FinopsArgs),
}

/// `orchard serve ...`: llama-server's command line (its multi-letter short flags included) goes
/// to the server crate's own parser, so `orchard serve` and `orchard-server` accept the same flags.
fn serve(args: &[String]) -> i32 {
    let argv = std::iter::once("orchard serve".to_string()).chain(args.iter().cloned());
    let args = match orchard_server::ServerArgs::parse_llama_style(argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(orchard_server::serve(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCHARD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init()
        .ok();
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("serve") {
        std::process::exit(serve(&argv[2..]));
    }
    // llama.cpp spells some flags with one dash and several letters (-ngl, -np, -ub, -ctk).
    let cli = Cli::parse_from(orchard_plan::normalize_llama_flags(argv));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCHARD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init()
        .ok();
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::main(a),
        Command::Tokenize(a) => cmd::tokenize::main(a),
        Command::Logits(a) => cmd::logits::main(a),
        Command::Run(a) => cmd::run::main(a),
        Command::Perplexity(a) => cmd::perplexity::main(a),
        Command::Bench(a) => cmd::bench::main(a),
        Command::Quantize(a) => cmd::quantize::main(a),
        Command::Plan(a) => orchard_plan::cli_main(a),
        Command::Keys(a) => cmd::ledger::keys(a),
        Command::Usage(a) => cmd::ledger::usage(a),
        Command::Finops(a) => cmd::ledger::finops(a),
        Command::Serve => unreachable!("handled before clap"),
        Command::Devices => {
            let list = orchard_gpu::list_adapters();
            if list.is_empty() {
                println!("no GPU adapter found (Vulkan on Linux needs a driver, e.g. mesa-vulkan-drivers)");
            }
            for d in list {
                println!(
                    "{:>2}  {:<40} {:<8} {:<10} {}",
                    d.index, d.name, d.backend, d.device_type, d.driver
                );
            }
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
