//! `orchard-server`: the server alone, with llama-server's command line, so that tools and test
//! suites written for `llama-server` can start it unchanged.

fn main() -> std::process::ExitCode {
    let args = match orchard_server::ServerArgs::parse_llama_style(std::env::args()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    orchard_server::init_logging(args.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(orchard_server::serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
