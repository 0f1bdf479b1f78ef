//! Test helper for the durability tests: records rows from many threads with `record_and_wait` and
//! prints each request id only after its commit is confirmed, until it is killed. The parent test
//! SIGKILLs it mid-stream and checks that every printed id is in the ledger exactly once.
//!
//! Usage: orchard-ledger-crash-child LEDGER_URL ID_PREFIX [THREADS] [MAX_SECONDS]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchard_ledger::{open_ledger, LedgerWriter, RequestStatus, UsageRecord};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: {} LEDGER_URL ID_PREFIX [THREADS] [MAX_SECONDS]",
            args[0]
        );
        std::process::exit(2);
    }
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    // Bounded so a parent that fails to kill us cannot leave us running.
    let max = Duration::from_secs(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(60));
    let store = match open_ledger(&args[1]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open ledger: {e}");
            std::process::exit(1);
        }
    };
    let writer = match LedgerWriter::spawn(store) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("cannot start writer: {e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let writer = Arc::clone(&writer);
            let prefix = args[2].clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while start.elapsed() < max {
                    let mut row = UsageRecord::new(
                        format!("{prefix}-{t}-{i}"),
                        format!("tenant-{}", t % 2),
                        format!("key-{}", t % 3),
                    );
                    row.model = "crash-model".to_owned();
                    row.endpoint = "/v1/chat/completions".to_owned();
                    row.prompt_tokens = 10 + i % 7;
                    row.generated_tokens = 1 + i % 5;
                    row.device_ms = 1.5;
                    row.cost_usd = 0.0001;
                    row.status = RequestStatus::Ok;
                    let id = row.request_id.clone();
                    // Fire-and-forget rows in between: the kill must not corrupt them either.
                    if i % 4 == 3 {
                        if writer.record(row).is_err() {
                            return;
                        }
                    } else {
                        match writer.record_and_wait(row).and_then(|h| h.wait()) {
                            Ok(()) => {
                                let mut out = std::io::stdout().lock();
                                if writeln!(out, "{id}").and_then(|_| out.flush()).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                eprintln!("commit failed for {id}: {e}");
                                return;
                            }
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    writer.close();
}
