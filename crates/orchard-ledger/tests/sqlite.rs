//! The store suite against SQLite, plus SQLite-specific durability (SIGKILL mid-stream) and
//! URL handling.

mod common;

use std::sync::Arc;

use orchard_ledger::{open_ledger, LedgerError, LedgerStore, SqliteStore};

fn fresh() -> (tempfile::TempDir, Arc<dyn LedgerStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_ledger(dir.path().join("ledger.db").to_str().unwrap()).unwrap();
    (dir, store)
}

#[test]
fn rows_from_threads() {
    let (_d, s) = fresh();
    common::rows_from_threads(s);
}

#[test]
fn idempotent_inserts() {
    let (_d, s) = fresh();
    common::idempotent_inserts(s);
}

#[test]
fn keys_and_auth() {
    let (_d, s) = fresh();
    common::keys_and_auth(s);
}

#[test]
fn throughput_from_ledger() {
    let (_d, s) = fresh();
    common::throughput_from_ledger(s);
}

#[test]
fn budgets_and_limits() {
    let (_d, s) = fresh();
    common::budgets_and_limits(s);
}

#[test]
fn migrations_from_empty_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    common::migrations(&format!("sqlite://{}", path.display()));
    // Every table and index the migrations promise exists.
    let c = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = c
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name")
        .unwrap();
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for t in [
        "schema_version",
        "tenants",
        "api_keys",
        "usage_ledger",
        "usage_ledger_ts",
        "usage_ledger_key_ts",
        "usage_ledger_tenant_ts",
    ] {
        assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
    }
    let versions: Vec<i64> = c
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES (99, 0)",
            [],
        )
        .unwrap();
    }
    assert!(matches!(
        SqliteStore::open(&path),
        Err(LedgerError::SchemaTooNew {
            found: 99,
            supported: 2
        })
    ));
}

#[test]
fn durability_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    common::durability_after_sigkill(&url, "sq");
}

#[test]
fn ledger_urls() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("u.db");
    let s = open_ledger(&format!("sqlite://{}?synchronous=normal", p.display())).unwrap();
    assert_eq!(s.backend(), "sqlite");
    for bad in [
        "mysql://x/y",
        "sqlite://",
        "sqlite:///tmp/x.db?synchronous=off",
        "sqlite:///tmp/x.db?foo=1",
    ] {
        assert!(
            matches!(open_ledger(bad), Err(LedgerError::InvalidUrl { .. })),
            "{bad}"
        );
    }
}
