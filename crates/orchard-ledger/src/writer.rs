//! The background writer that keeps the database off the request hot path: callers hand rows to a
//! channel and return at once; one thread groups them into transactions. Callers that must know a
//! row is durable before finishing a response wait on a commit notification instead of on disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{LedgerError, Result};
use crate::record::UsageRecord;
use crate::store::LedgerStore;

/// Called once with the outcome of a row's commit. Runs on the writer thread: keep it short (send
/// on a channel, complete a oneshot).
pub type CommitCallback = Box<dyn FnOnce(Result<()>) + Send + 'static>;

/// Batching knobs.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most rows in one transaction.
    pub max_batch: usize,
    /// How long a batch of fire-and-forget rows may wait for more rows before committing. A batch
    /// that holds a row somebody waits on commits as soon as the queue is drained (group commit),
    /// so waiting callers never pay this delay.
    pub max_delay: Duration,
    /// Upper bound of the retry back-off while the database is unreachable.
    pub max_backoff: Duration,
    /// Commit attempts made at shutdown before giving up on rows the database will not take.
    pub shutdown_attempts: u32,
    /// How long a row's waiter (a response held until its row is durable) is held through an
    /// outage: after this it is released with [`LedgerError::CommitTimeout`] while the row stays
    /// queued and is committed once the database answers again, so an unreachable database
    /// delays finished responses by at most this much instead of holding them indefinitely.
    pub max_commit_wait: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 256,
            max_delay: Duration::from_millis(5),
            max_backoff: Duration::from_secs(1),
            shutdown_attempts: 3,
            max_commit_wait: Duration::from_secs(5),
        }
    }
}

/// Counters since the writer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Rows newly stored.
    pub committed: u64,
    /// Rows whose request id was already stored (a retry); counted, not stored twice.
    pub duplicates: u64,
    /// Rows the database refused on their own, or that were still unstored when the writer shut
    /// down with the database unreachable.
    pub rejected: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Failed commit attempts (each was retried).
    pub failed_attempts: u64,
    /// Rows handed to the writer and not yet committed or rejected.
    pub pending: u64,
    /// Waiters released with `CommitTimeout` during an outage (their rows stayed queued).
    pub released_waiters: u64,
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    failed_attempts: AtomicU64,
    pending: AtomicU64,
    released_waiters: AtomicU64,
    /// Set by `close`, so a commit stuck retrying through an outage stops after its last attempts.
    closing: AtomicBool,
}

// Nearly every message is a Row, so boxing it would only add an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Row(UsageRecord, Option<CommitCallback>),
    Flush(CommitCallback),
    Shutdown,
}

/// Waits for one row's commit. Dropping it does not cancel the write.
pub struct CommitHandle {
    rx: Receiver<Result<()>>,
}

impl CommitHandle {
    /// Blocks until the row is committed (`Ok`) or the writer gave up on it.
    pub fn wait(self) -> Result<()> {
        self.rx.recv().unwrap_or(Err(LedgerError::WriterClosed))
    }

    /// Like [`wait`](Self::wait) with an upper bound; the row stays queued after a timeout.
    pub fn wait_timeout(self, timeout: Duration) -> Result<()> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(LedgerError::CommitTimeout {
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(LedgerError::WriterClosed),
        }
    }
}

fn handle_pair() -> (CommitCallback, CommitHandle) {
    let (tx, rx) = mpsc::channel();
    let cb: CommitCallback = Box::new(move |r| {
        // The waiter may have given up (dropped the handle); nothing to tell then.
        let _ = tx.send(r);
    });
    (cb, CommitHandle { rx })
}

/// Owns the writer thread. Share it behind an `Arc`; every method takes `&self` and none blocks
/// except [`flush`](Self::flush), [`close`](Self::close) and waiting on a [`CommitHandle`].
pub struct LedgerWriter {
    tx: Sender<Msg>,
    closed: AtomicBool,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LedgerWriter {
    pub fn spawn(store: Arc<dyn LedgerStore>) -> Result<Self> {
        Self::spawn_with(store, WriterConfig::default())
    }

    pub fn spawn_with(store: Arc<dyn LedgerStore>, config: WriterConfig) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let c2 = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("orchard-ledger-writer".to_owned())
            .spawn(move || run(store, config, rx, &c2))
            .map_err(|e| LedgerError::CommitFailed {
                reason: format!("cannot start writer thread: {e}"),
            })?;
        Ok(LedgerWriter {
            tx,
            closed: AtomicBool::new(false),
            counters,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, msg: Msg) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LedgerError::WriterClosed);
        }
        self.tx.send(msg).map_err(|_| LedgerError::WriterClosed)
    }

    /// Queues a row and returns at once (fire and forget).
    pub fn record(&self, row: UsageRecord) -> Result<()> {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        self.send(Msg::Row(row, None)).inspect_err(|_| {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
        })
    }

    /// Queues a row and returns a handle that resolves once the row is committed, so a response
    /// can finish only after its ledger row is durable. Queuing itself never blocks.
    pub fn record_and_wait(&self, row: UsageRecord) -> Result<CommitHandle> {
        let (cb, handle) = handle_pair();
        self.record_with_callback(row, cb)?;
        Ok(handle)
    }

    /// Queues a row; `on_commit` runs on the writer thread after the commit (or failure). Lets an
    /// async server complete its own oneshot without this crate depending on a runtime.
    pub fn record_with_callback(&self, row: UsageRecord, on_commit: CommitCallback) -> Result<()> {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        self.send(Msg::Row(row, Some(on_commit))).inspect_err(|_| {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
        })
    }

    /// Blocks until every row queued before this call is committed or rejected.
    pub fn flush(&self) -> Result<()> {
        let (cb, handle) = handle_pair();
        self.send(Msg::Flush(cb))?;
        handle.wait()
    }

    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            committed: c.committed.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            released_waiters: c.released_waiters.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting rows, commits what is queued and joins the thread. Idempotent.
    pub fn close(&self) -> WriterStats {
        self.counters.closing.store(true, Ordering::Release);
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Shutdown);
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            // A panicking writer thread already lost its batch; the counters say how much.
            let _ = h.join();
        }
        self.stats()
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        self.close();
    }
}

struct Pending {
    rows: Vec<UsageRecord>,
    callbacks: Vec<(usize, CommitCallback)>,
    flushes: Vec<CommitCallback>,
}

impl Pending {
    fn new(cap: usize) -> Self {
        Pending {
            rows: Vec::with_capacity(cap),
            callbacks: Vec::new(),
            flushes: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.flushes.is_empty()
    }

    fn urgent(&self) -> bool {
        !self.callbacks.is_empty() || !self.flushes.is_empty()
    }
}

fn run(store: Arc<dyn LedgerStore>, cfg: WriterConfig, rx: Receiver<Msg>, counters: &Counters) {
    let max_batch = cfg.max_batch.max(1);
    let mut shutting_down = false;
    while !shutting_down {
        let mut batch = Pending::new(max_batch);
        match rx.recv() {
            Ok(msg) => shutting_down |= push(&mut batch, msg),
            Err(_) => break,
        }
        let deadline = Instant::now() + cfg.max_delay;
        while batch.rows.len() < max_batch && !shutting_down {
            // Drain what is already queued; only linger for more when nobody is waiting.
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => {
                    shutting_down = true;
                    break;
                }
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if batch.urgent() || now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            shutting_down = true;
                            break;
                        }
                    }
                }
            };
            shutting_down |= push(&mut batch, msg);
        }
        commit(&*store, &cfg, batch, counters, shutting_down);
    }
    // Rows sent between Shutdown and the channel closing still get their commit attempt.
    let mut rest = Pending::new(max_batch);
    while let Ok(msg) = rx.try_recv() {
        push(&mut rest, msg);
        if rest.rows.len() >= max_batch {
            commit(
                &*store,
                &cfg,
                std::mem::replace(&mut rest, Pending::new(max_batch)),
                counters,
                true,
            );
        }
    }
    if !rest.is_empty() {
        commit(&*store, &cfg, rest, counters, true);
    }
}

/// Adds a message to the batch; returns true on shutdown.
fn push(batch: &mut Pending, msg: Msg) -> bool {
    match msg {
        Msg::Row(row, cb) => {
            if let Some(cb) = cb {
                batch.callbacks.push((batch.rows.len(), cb));
            }
            batch.rows.push(row);
            false
        }
        Msg::Flush(cb) => {
            batch.flushes.push(cb);
            false
        }
        Msg::Shutdown => true,
    }
}

fn commit(
    store: &dyn LedgerStore,
    cfg: &WriterConfig,
    batch: Pending,
    counters: &Counters,
    final_attempts: bool,
) {
    let Pending {
        rows,
        callbacks,
        flushes,
    } = batch;
    let started = Instant::now();
    let mut callbacks: Vec<(usize, Option<CommitCallback>)> =
        callbacks.into_iter().map(|(i, cb)| (i, Some(cb))).collect();
    let mut outcome: Vec<Option<Result<()>>> = (0..rows.len()).map(|_| None).collect();
    // Indices of rows not yet stored or rejected; the happy path never looks at it.
    let mut remaining: Vec<usize> = (0..rows.len()).collect();
    let mut backoff = Duration::from_millis(10);
    let mut attempts = 0u32;
    while !remaining.is_empty() {
        attempts += 1;
        let subset: Vec<UsageRecord>;
        let batch_rows: &[UsageRecord] = if remaining.len() == rows.len() {
            &rows
        } else {
            subset = remaining.iter().map(|&i| rows[i].clone()).collect();
            &subset
        };
        let err = match store.insert_batch(batch_rows) {
            Ok(new) => {
                counters.committed.fetch_add(new as u64, Ordering::Relaxed);
                let dups = batch_rows.len() - new.min(batch_rows.len());
                counters
                    .duplicates
                    .fetch_add(dups as u64, Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
                for &i in &remaining {
                    outcome[i] = Some(Ok(()));
                }
                remaining.clear();
                break;
            }
            Err(e) => e,
        };
        counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let mut last_err = err.to_string();
        if !err.is_transient() {
            // The database works but refuses the batch, so some row in it is bad: store the rows
            // one by one so that one row cannot hold the rest hostage.
            let mut still = Vec::new();
            for &i in &remaining {
                match store.insert_batch(std::slice::from_ref(&rows[i])) {
                    Ok(new) => {
                        counters.committed.fetch_add(new as u64, Ordering::Relaxed);
                        counters
                            .duplicates
                            .fetch_add(1 - new.min(1) as u64, Ordering::Relaxed);
                        outcome[i] = Some(Ok(()));
                    }
                    Err(e) if e.is_transient() => {
                        last_err = e.to_string();
                        still.push(i);
                    }
                    Err(e) => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        outcome[i] = Some(Err(LedgerError::RowRejected {
                            request_id: rows[i].request_id.clone(),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            remaining = still;
            if remaining.is_empty() {
                break;
            }
        }
        if (final_attempts || counters.closing.load(Ordering::Acquire))
            && attempts >= cfg.shutdown_attempts.max(1)
        {
            counters
                .rejected
                .fetch_add(remaining.len() as u64, Ordering::Relaxed);
            let reason = format!("database unavailable at shutdown: {last_err}");
            for &i in &remaining {
                outcome[i] = Some(Err(LedgerError::CommitFailed {
                    reason: reason.clone(),
                }));
            }
            break;
        }
        // Outage (unreachable, locked, disk full): keep the rows and retry; stats().pending
        // shows the backlog meanwhile. Waiters held longer than max_commit_wait are released
        // (their rows stay in this batch and are still committed when the database returns).
        let waited = started.elapsed();
        if waited >= cfg.max_commit_wait {
            let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
            for (i, cb) in callbacks.iter_mut() {
                if let Some(cb) = cb.take() {
                    // Counted before the waiter wakes, so that it sees itself in the stats.
                    counters.released_waiters.fetch_add(1, Ordering::Relaxed);
                    cb(outcome[*i]
                        .take()
                        .unwrap_or(Err(LedgerError::CommitTimeout { waited_ms })));
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(cfg.max_backoff.max(Duration::from_millis(10)));
    }
    counters
        .pending
        .fetch_sub(rows.len() as u64, Ordering::Relaxed);
    for (i, cb) in callbacks {
        if let Some(cb) = cb {
            cb(outcome[i].take().unwrap_or(Err(LedgerError::WriterClosed)));
        }
    }
    for cb in flushes {
        cb(Ok(()));
    }
}
