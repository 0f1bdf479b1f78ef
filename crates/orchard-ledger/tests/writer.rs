//! The writer's behaviour when the database misbehaves: an outage is ridden out without losing or
//! duplicating rows, and one bad row is isolated instead of blocking the rest.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use orchard_ledger::store::{KeyRecord, TenantRecord};
use orchard_ledger::*;

/// A real SQLite store with switchable faults.
struct Flaky {
    inner: SqliteStore,
    down: AtomicBool,
    poison: Option<String>,
    insert_calls: AtomicUsize,
}

fn outage() -> LedgerError {
    LedgerError::CommitFailed {
        reason: "injected outage".into(),
    }
}

impl LedgerStore for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    fn schema_version(&self) -> Result<i64> {
        if self.down.load(Ordering::SeqCst) {
            return Err(outage());
        }
        self.inner.schema_version()
    }
    fn migrate(&self) -> Result<usize> {
        self.inner.migrate()
    }
    fn insert_batch(&self, rows: &[UsageRecord]) -> Result<usize> {
        self.insert_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(outage());
        }
        if let Some(p) = &self.poison {
            if rows.iter().any(|r| &r.request_id == p) {
                return Err(LedgerError::InvalidInput {
                    field: "row",
                    reason: "poison".into(),
                });
            }
        }
        self.inner.insert_batch(rows)
    }
    fn get_record(&self, id: &str) -> Result<Option<UsageRecord>> {
        self.inner.get_record(id)
    }
    fn count_request(&self, id: &str) -> Result<u64> {
        self.inner.count_request(id)
    }
    fn count_records(&self) -> Result<u64> {
        self.inner.count_records()
    }
    fn usage_report(&self, g: GroupBy, s: Option<i64>, u: Option<i64>) -> Result<Vec<UsageRow>> {
        self.inner.usage_report(g, s, u)
    }
    fn phase_totals(&self, s: Option<i64>, u: Option<i64>) -> Result<PhaseTotals> {
        self.inner.phase_totals(s, u)
    }
    fn spent_since(&self, s: &SpendScope, t: i64) -> Result<f64> {
        self.inner.spent_since(s, t)
    }
    fn integrity_check(&self) -> Result<Vec<String>> {
        self.inner.integrity_check()
    }
    fn ensure_tenant(&self, n: &str, t: i64) -> Result<()> {
        self.inner.ensure_tenant(n, t)
    }
    fn get_tenant(&self, n: &str) -> Result<Option<TenantRecord>> {
        self.inner.get_tenant(n)
    }
    fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.inner.list_tenants()
    }
    fn set_tenant_policy(
        &self,
        n: &str,
        b: Option<Budget>,
        l: Option<RateLimits>,
        t: i64,
    ) -> Result<()> {
        self.inner.set_tenant_policy(n, b, l, t)
    }
    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        self.inner.insert_key(k)
    }
    fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.inner.get_key(id)
    }
    fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        self.inner.list_keys()
    }
    fn revoke_key(&self, id: &str, t: i64) -> Result<bool> {
        self.inner.revoke_key(id, t)
    }
}

fn flaky(dir: &tempfile::TempDir, poison: Option<&str>) -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: SqliteStore::open(dir.path().join("f.db")).unwrap(),
        down: AtomicBool::new(false),
        poison: poison.map(str::to_owned),
        insert_calls: AtomicUsize::new(0),
    })
}

fn row(id: &str) -> UsageRecord {
    UsageRecord::new(id, "t", "k")
}

#[test]
fn outage_is_ridden_out_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(&dir, None);
    store.down.store(true, Ordering::SeqCst);
    let w = LedgerWriter::spawn(store.clone()).unwrap();
    let handles: Vec<_> = (0..50)
        .map(|i| w.record_and_wait(row(&format!("o-{i}"))).unwrap())
        .collect();
    w.record(row("o-fire")).unwrap();
    // While down, the writer keeps retrying and nothing counts as committed.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        store.insert_calls.load(Ordering::SeqCst) >= 2,
        "writer must keep retrying"
    );
    assert_eq!(w.stats().committed, 0);
    assert_eq!(w.stats().pending, 51);
    assert!(w.stats().failed_attempts >= 1);
    store.down.store(false, Ordering::SeqCst);
    for h in handles {
        h.wait_timeout(Duration::from_secs(10)).unwrap();
    }
    w.flush().unwrap();
    let s = w.close();
    assert_eq!((s.committed, s.rejected, s.pending), (51, 0, 0), "{s:?}");
    assert_eq!(store.count_records().unwrap(), 51);
}

/// A writer over a flaky store that is down from the start, retrying every 20 ms at most.
fn writer_during_outage(
    dir: &tempfile::TempDir,
    config: WriterConfig,
) -> (Arc<Flaky>, LedgerWriter) {
    let store = flaky(dir, None);
    store.down.store(true, Ordering::SeqCst);
    let w = LedgerWriter::spawn_with(
        store.clone(),
        WriterConfig {
            max_backoff: Duration::from_millis(20),
            ..config
        },
    )
    .unwrap();
    (store, w)
}

#[test]
fn waiters_are_released_after_max_commit_wait_and_their_rows_still_land() {
    let dir = tempfile::tempdir().unwrap();
    let (store, w) = writer_during_outage(
        &dir,
        WriterConfig {
            max_commit_wait: Duration::from_millis(150),
            ..WriterConfig::default()
        },
    );
    let t0 = std::time::Instant::now();
    let h = w.record_and_wait(row("held")).unwrap();
    // The waiter is released with CommitTimeout, neither at once nor never.
    match h.wait_timeout(Duration::from_secs(10)) {
        Err(LedgerError::CommitTimeout { waited_ms }) => assert!(waited_ms >= 150, "{waited_ms}"),
        other => panic!("expected CommitTimeout, got {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(w.stats().released_waiters, 1);
    assert_eq!(w.stats().pending, 1, "the row stays queued");
    // The database comes back: the row is committed, once.
    store.down.store(false, Ordering::SeqCst);
    w.flush().unwrap();
    let s = w.close();
    assert_eq!((s.committed, s.rejected, s.pending), (1, 0, 0), "{s:?}");
    assert_eq!(store.count_request("held").unwrap(), 1);
}

#[test]
fn poison_row_is_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(&dir, Some("bad"));
    let w = LedgerWriter::spawn_with(
        store.clone(),
        WriterConfig {
            max_delay: Duration::from_millis(200),
            ..WriterConfig::default()
        },
    )
    .unwrap();
    // Queue these fire-and-forget so they share one lingering batch with the bad row.
    for i in 0..10 {
        w.record(row(&format!("good-{i}"))).unwrap();
    }
    let bad = w.record_and_wait(row("bad")).unwrap();
    match bad.wait_timeout(Duration::from_secs(10)) {
        Err(LedgerError::RowRejected { request_id, .. }) => assert_eq!(request_id, "bad"),
        other => panic!("expected RowRejected, got {other:?}"),
    }
    let s = w.close();
    assert_eq!((s.committed, s.rejected), (10, 1), "{s:?}");
    assert_eq!(store.count_records().unwrap(), 10);
    assert_eq!(store.count_request("bad").unwrap(), 0);
}

#[test]
fn close_during_outage_gives_up_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, w) = writer_during_outage(&dir, WriterConfig::default());
    let h = w.record_and_wait(row("lost")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let s = w.close();
    assert_eq!((s.committed, s.rejected, s.pending), (0, 1, 0), "{s:?}");
    assert!(matches!(h.wait(), Err(LedgerError::CommitFailed { .. })));
    assert!(matches!(
        w.record(row("late")),
        Err(LedgerError::WriterClosed)
    ));
}

#[test]
fn shared_types_are_send_and_sync() {
    // The server keeps these in an Arc shared by its async handlers and the engine thread.
    fn assert_shared<T: Send + Sync>() {}
    assert_shared::<LedgerWriter>();
    assert_shared::<KeyStore>();
    assert_shared::<Limiter>();
    assert_shared::<UsageMetrics>();
    assert_shared::<Arc<dyn LedgerStore>>();
    fn assert_send<T: Send>() {}
    assert_send::<CommitHandle>();
}
