//! `orchard plan` as a standalone binary: exactly what the `orchard` CLI wires (llama.cpp flag
//! spellings normalized, then [`orchard_plan::cli_main`]). The synthetic-70B test runs it.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "orchard-plan",
    about = "Memory plan of a GGUF model for the given flags"
)]
struct Cli {
    #[command(flatten)]
    plan: orchard_plan::PlanArgs,
}

fn main() {
    let argv = orchard_plan::normalize_llama_flags(std::env::args());
    let cli = Cli::parse_from(argv);
    if let Err(e) = orchard_plan::cli_main(cli.plan) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
