//! Measures what the ledger costs the serving hot path: 100k rows recorded through LedgerWriter
//! (rows/s to durable commit, and the latency of the `record` call itself), then 16 threads using
//! `record_and_wait` like 16 concurrent clients (time from queuing to commit confirmation).
//!
//! cargo run --release -p orchard-ledger --example ledger_overhead [-- LEDGER_URL]
//! Without a URL it runs SQLite twice, synchronous=FULL and =NORMAL, in a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchard_ledger::{open_ledger, LedgerWriter, UsageRecord};

const ROWS: usize = 100_000;
const CLIENTS: usize = 16;
const WAITED_PER_CLIENT: usize = 1_000;

fn row(i: usize, prefix: &str) -> UsageRecord {
    let mut r = UsageRecord::new(
        format!("{prefix}-{i}"),
        format!("tenant-{}", i % 4),
        format!("key-{}", i % 12),
    );
    r.model = "bench-model".into();
    r.endpoint = "/v1/chat/completions".into();
    r.node = "bench".into();
    r.prompt_tokens = 100 + (i % 50) as u64;
    r.generated_tokens = 20 + (i % 30) as u64;
    r.device_ms = 12.5;
    r.cost_usd = 1e-5;
    r
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(url: &str) {
    let store = open_ledger(url).expect("open ledger");
    let writer = Arc::new(LedgerWriter::spawn(store.clone()).expect("writer"));

    // 1. Fire-and-forget: what the request path pays per `record`, and sustained rows/s.
    let rows: Vec<UsageRecord> = (0..ROWS).map(|i| row(i, "ff")).collect();
    let mut lat = Vec::with_capacity(ROWS);
    let t0 = Instant::now();
    for r in rows {
        let s = Instant::now();
        writer.record(r).expect("record");
        lat.push(s.elapsed());
    }
    let queued = t0.elapsed();
    writer.flush().expect("flush");
    let total = t0.elapsed();
    lat.sort();
    let st = writer.stats();
    println!("  record(): {ROWS} rows queued in {:.1} ms; committed in {:.1} ms = {:.0} rows/s, {} batches (avg {:.0} rows)",
        queued.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        ROWS as f64 / total.as_secs_f64(),
        st.batches,
        st.committed as f64 / st.batches.max(1) as f64);
    println!(
        "  record() hot-path latency: p50 {:.2} us, p99 {:.2} us, max {:.1} us",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e6
    );

    // 2. 16 clients each waiting for their row's commit before "finishing the response".
    let t1 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let w = Arc::clone(&writer);
            std::thread::spawn(move || {
                let mut l = Vec::with_capacity(WAITED_PER_CLIENT);
                for i in 0..WAITED_PER_CLIENT {
                    let s = Instant::now();
                    w.record_and_wait(row(c * WAITED_PER_CLIENT + i, "wait"))
                        .expect("record")
                        .wait()
                        .expect("commit");
                    l.push(s.elapsed());
                }
                l
            })
        })
        .collect();
    let mut wl: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client"))
        .collect();
    let el = t1.elapsed();
    wl.sort();
    let before = st.batches;
    let st2 = writer.close();
    println!("  record_and_wait() x {CLIENTS} clients: {} commits in {:.1} ms = {:.0} rows/s, {} batches; commit wait p50 {:.2} ms, p99 {:.2} ms",
        wl.len(),
        el.as_secs_f64() * 1e3,
        wl.len() as f64 / el.as_secs_f64(),
        st2.batches - before,
        pct(&wl, 0.5).as_secs_f64() * 1e3,
        pct(&wl, 0.99).as_secs_f64() * 1e3);
    assert_eq!(
        store.count_records().expect("count"),
        (ROWS + CLIENTS * WAITED_PER_CLIENT) as u64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(url) = args.first() {
        println!("ledger {url}");
        run(url);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for sync in ["full", "normal"] {
        let url = format!(
            "sqlite://{}?synchronous={sync}",
            dir.path().join(format!("bench-{sync}.db")).display()
        );
        println!("sqlite synchronous={sync}");
        run(&url);
    }
}
