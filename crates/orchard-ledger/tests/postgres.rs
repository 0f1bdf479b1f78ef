//! The store suite against a real PostgreSQL server named by ORCHARD_TEST_POSTGRES_URL
//! (scripts/start-test-postgres.sh starts one and prints the URL). Ignored by default so a plain
//! `cargo test` never reports them as passed without a server; run them with `--ignored` (or
//! `--include-ignored`), and then a missing URL is a failure, not a skip.

mod common;

use std::sync::Arc;

use orchard_ledger::{open_ledger, LedgerStore};

const NEEDS: &str = "needs PostgreSQL: export ORCHARD_TEST_POSTGRES_URL=$(crates/orchard-ledger/scripts/start-test-postgres.sh)";

fn base_url() -> String {
    match std::env::var("ORCHARD_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!("PostgreSQL tests were asked to run but did not: ORCHARD_TEST_POSTGRES_URL is unset. {NEEDS}"),
    }
}

/// A URL whose tables live in a schema of their own, emptied first, so tests neither see each
/// other's rows nor leftovers of an earlier run.
fn url_for(test: &str) -> String {
    let base = base_url();
    let schema = format!("orchard_test_{test}");
    let mut c = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={schema}")
}

fn fresh(test: &str) -> Arc<dyn LedgerStore> {
    let s = open_ledger(&url_for(test)).unwrap();
    assert_eq!(s.backend(), "postgres");
    s
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_rows_from_threads() {
    common::rows_from_threads(fresh("rows"));
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_idempotent_inserts() {
    common::idempotent_inserts(fresh("idem"));
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_keys_and_auth() {
    common::keys_and_auth(fresh("keys"));
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_throughput_from_ledger() {
    common::throughput_from_ledger(fresh("throughput"));
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_budgets_and_limits() {
    common::budgets_and_limits(fresh("budgets"));
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_migrations_from_empty_and_idempotent() {
    common::migrations(&url_for("migrations"));
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_durability_after_sigkill() {
    common::durability_after_sigkill(&url_for("durability"), "pg");
}

#[test]
#[ignore = "needs ORCHARD_TEST_POSTGRES_URL; run with --ignored"]
fn pg_two_nodes_share_one_ledger() {
    // Two stores (two "nodes") open the same ledger concurrently: migrations serialise, inserts
    // from both land once each, and each sees the other's rows.
    let url = url_for("fleet");
    let handles: Vec<_> = (0..2)
        .map(|n| {
            let url = url.clone();
            std::thread::spawn(move || {
                let s = open_ledger(&url).unwrap();
                let rows: Vec<_> = (0..300)
                    .map(|i| {
                        // Ids overlap between nodes for i < 100: a retried request landing twice.
                        let id = if i < 100 {
                            format!("shared-{i}")
                        } else {
                            format!("n{n}-{i}")
                        };
                        common::row(&id, "fleet", "k", "m", orchard_ledger::time::now_ms())
                    })
                    .collect();
                rows.chunks(64)
                    .map(|c| s.insert_batch(c).unwrap())
                    .sum::<usize>()
            })
        })
        .collect();
    let inserted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(inserted, 100 + 2 * 200);
    let s = open_ledger(&url).unwrap();
    assert_eq!(s.count_records().unwrap(), 500);
    assert!(s.integrity_check().unwrap().is_empty());
}
