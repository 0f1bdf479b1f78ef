//! The CPU kernels' thread pool: persistent workers that spin between operations.
//!
//! A decode step of a small model is a few hundred operations of tens of microseconds each, so
//! what a pool costs per operation matters as much as the kernels: rayon parks its workers on a
//! futex and wakes them per job (measured at ~25% of decode time on 2 cores). Here the workers
//! spin on an epoch counter while operations keep coming (as ggml's CPU threadpool does) and go
//! to sleep on a condition variable only after `IDLE_BEFORE_SLEEP` without work. The calling
//! thread takes tasks too, so `-t N` means N threads doing work.

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps (the gap between two decode steps on a small
/// model is well under this; a server waiting for requests goes quiet after it).
const IDLE_BEFORE_SLEEP: Duration = Duration::from_millis(5);

/// One job: `n` tasks of `f`, handed to workers by pointer. It lives on the submitting thread's
/// stack; `Pool::run` closes the job and waits for the workers that joined it before returning.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
}

/// `gate` layout: the job's epoch in the high 32 bits, `CLOSED`, and the number of workers
/// inside the job in the low bits. Joining is a compare-and-swap that fails once the epoch moved
/// on or the job is closed, so a worker the OS descheduled never holds up the caller: the
/// caller does the remaining tasks itself and waits only for workers that actually joined.
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

fn epoch_of(gate: u64) -> u64 {
    gate >> 32
}

struct Shared {
    gate: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    /// Next task index to hand out.
    next: AtomicUsize,
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A fixed set of worker threads plus the caller. One job runs at a time; concurrent callers
/// queue on `submit`, and a call made from inside a task runs serially on the calling thread.
pub(crate) struct Pool {
    shared: &'static Shared,
    workers: usize,
    submit: Mutex<()>,
}

thread_local! {
    /// Set while this thread runs tasks of a job (a worker, or a caller inside `run`).
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// A pool where `threads` threads (the caller and `threads - 1` workers) share each job.
    fn new(threads: usize) -> Pool {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            gate: AtomicU64::new(CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let workers = threads.max(1) - 1;
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("orchard-cpu-{i}"))
                .spawn(move || worker(shared))
                .expect("spawning a CPU worker thread");
        }
        Pool {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// Threads that work on a job: the caller and the workers.
    pub(crate) fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0)..f(n)` across the pool and returns when all have finished.
    pub(crate) fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if n == 1 || self.workers == 0 || IN_JOB.with(Cell::get) {
            (0..n).for_each(f);
            return;
        }
        // A poisoned lock only means another caller's task panicked; every job resets the
        // pool's state below, so carry on.
        let _turn = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.shared;
        let job = Job { f, n };
        // Erasing the lifetime is sound because `CloseAndWait` (below) closes the job and waits
        // until no worker is inside it before `job` goes out of scope, panics included.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        s.job.store(ptr, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        let epoch = epoch_of(s.gate.load(Ordering::Relaxed)).wrapping_add(1) & 0xffff_ffff;
        s.gate.store(epoch << 32, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let _wait = CloseAndWait::new(s);
        run_tasks(s, &job);
    }
}

/// Drop guard of `Pool::run`: marks the thread as inside a job while alive; on drop closes the
/// job to new workers and spins until the ones inside have left.
struct CloseAndWait(&'static Shared);

impl CloseAndWait {
    fn new(s: &'static Shared) -> CloseAndWait {
        IN_JOB.with(|c| c.set(true));
        CloseAndWait(s)
    }
}

impl Drop for CloseAndWait {
    fn drop(&mut self) {
        let mut gate = self.0.gate.fetch_or(CLOSED, Ordering::AcqRel) | CLOSED;
        let mut spins = 0u32;
        while gate & JOINED != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                // A joined worker descheduled by the OS mid-task (a busy machine): let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            gate = self.0.gate.load(Ordering::Acquire);
        }
        IN_JOB.with(|c| c.set(false));
    }
}

fn run_tasks(s: &Shared, job: &Job<'_>) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.n {
            break;
        }
        (job.f)(i);
    }
}

fn worker(s: &'static Shared) {
    IN_JOB.with(|c| c.set(true));
    let mut seen = epoch_of(s.gate.load(Ordering::Acquire));
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        let mut gate = loop {
            let g = s.gate.load(Ordering::Acquire);
            if epoch_of(g) != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < IDLE_BEFORE_SLEEP {
                std::thread::yield_now();
                continue;
            }
            // Sleep until the next job. `sleeping` is raised before the gate is re-read under
            // the lock, and `run` moves the gate before it reads `sleeping` (both SeqCst), so
            // either this thread sees the new epoch or `run` sees it sleeping and notifies.
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleeping.fetch_add(1, Ordering::SeqCst);
            while epoch_of(s.gate.load(Ordering::SeqCst)) == seen {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            idle_since = None;
        };
        seen = epoch_of(gate);
        // Join the job unless it is already closed (the caller finished it alone).
        let joined = loop {
            if gate & CLOSED != 0 || epoch_of(gate) != seen {
                break false;
            }
            match s
                .gate
                .compare_exchange_weak(gate, gate + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => gate = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: the caller stored a pointer to a live `Job` before opening this epoch's gate
        // (SeqCst store, synchronized by the AcqRel join above) and keeps it alive until the
        // joined count drops to zero, which cannot happen before this worker's `fetch_sub`.
        let job = unsafe { &*s.job.load(Ordering::Relaxed) };
        // A panicking task must not kill the worker (the caller would wait forever): contain it
        // here; the caller's own tasks surface panics normally.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, job)));
        s.gate.fetch_sub(1, Ordering::Release);
    }
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Sizes the global pool; the first call (or the first use) wins.
pub(crate) fn init(threads: usize) {
    let _ = POOL.get_or_init(|| Pool::new(threads));
}

/// The global pool (all cores unless `init` sized it first).
pub(crate) fn global() -> &'static Pool {
    POOL.get_or_init(|| {
        Pool::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    })
}

/// Runs `f(i, chunk)` for every `chunk_len`-sized chunk of `data` (the last may be shorter)
/// across the global pool.
pub(crate) fn par_chunks_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk_len = chunk_len.max(1);
    let len = data.len();
    let n = len.div_ceil(chunk_len);
    let base = SendPtr(data.as_mut_ptr());
    global().run(n, &|i| {
        let start = i * chunk_len;
        let end = (start + chunk_len).min(len);
        // SAFETY: each task index i is handed out exactly once per job, so the ranges
        // [start, end) are disjoint sub-slices of `data`, which is mutably borrowed for the
        // whole call (run returns only when every task is done).
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, chunk)
    });
}

/// One task's columns `[c0, c1)` of every row of a row-major matrix (see
/// [`par_column_blocks`]).
pub(crate) struct Columns<'a, T> {
    base: SendPtr<T>,
    row_len: usize,
    rows: usize,
    c0: usize,
    c1: usize,
    _data: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> Columns<'_, T> {
    /// Row `r`'s part: `c1 - c0` elements.
    pub(crate) fn row_mut(&mut self, r: usize) -> &mut [T] {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        // SAFETY: `r < rows` and `c1 <= row_len`, so the range lies inside the matrix, and no
        // other task's `Columns` covers these columns (par_column_blocks hands each block out
        // once); `&mut self` keeps two rows of this view from being borrowed at once.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.get().add(r * self.row_len + self.c0),
                self.c1 - self.c0,
            )
        }
    }
}

/// Runs `f(i, columns)` for every block of `block` columns of the row-major matrix `data`
/// (`row_len` columns per row, the last block may be narrower) across the global pool: tasks
/// that own columns write them in every row without a transpose afterwards.
pub(crate) fn par_column_blocks<T: Send>(
    data: &mut [T],
    row_len: usize,
    block: usize,
    f: impl Fn(usize, Columns<'_, T>) + Sync,
) {
    let (row_len, block) = (row_len.max(1), block.max(1));
    let rows = data.len() / row_len;
    let n = row_len.div_ceil(block);
    let base = SendPtr(data.as_mut_ptr());
    global().run(n, &|i| {
        let c0 = i * block;
        f(
            i,
            Columns {
                base,
                row_len,
                rows,
                c0,
                c1: (c0 + block).min(row_len),
                _data: std::marker::PhantomData,
            },
        )
    });
}

/// A raw pointer that tasks may share; only disjoint ranges are ever dereferenced.
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: the pointer is only used to build disjoint sub-slices in `par_chunks_mut` and
// `Columns::row_mut`, whose element type is `Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; shared access never aliases a mutable range.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = Pool::new(3);
        for n in [1usize, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
        }
    }

    #[test]
    fn chunks_are_disjoint_and_cover_the_slice() {
        let mut v = vec![0u32; 1003];
        par_chunks_mut(&mut v, 16, |ci, chunk| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x += (ci * 16 + j) as u32;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    }

    #[test]
    fn column_blocks_are_disjoint_and_cover_the_matrix() {
        for (rows, row_len, block) in [
            (3usize, 10usize, 4usize),
            (5, 16, 16),
            (1, 7, 3),
            (4, 33, 8),
        ] {
            let mut v = vec![0u32; rows * row_len];
            par_column_blocks(&mut v, row_len, block, |ci, mut cols| {
                for r in 0..rows {
                    for (j, x) in cols.row_mut(r).iter_mut().enumerate() {
                        *x += (r * row_len + ci * block + j) as u32 + 1;
                    }
                }
            });
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == i as u32 + 1),
                "{rows}x{row_len}/{block}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "row 2 of 2")]
    fn column_rows_are_bounds_checked() {
        let mut v = vec![0u8; 8];
        par_column_blocks(&mut v, 4, 4, |_, mut cols| {
            cols.row_mut(2);
        });
    }

    #[test]
    fn workers_wake_after_sleeping_and_nested_calls_run_inline() {
        let pool = Pool::new(2);
        let total = AtomicU32::new(0);
        pool.run(4, &|_| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        // Long enough for the worker to go to sleep; the next job must still complete.
        std::thread::sleep(IDLE_BEFORE_SLEEP * 3);
        pool.run(8, &|_| {
            // A nested job runs serially on this thread rather than deadlocking.
            pool.run(2, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 + 16);
    }

    #[test]
    fn concurrent_callers_each_get_their_job_done() {
        let pool = Pool::new(2);
        let total = AtomicU32::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        pool.run(5, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 5);
    }
}
