//! The server's fit check under a real memory limit: `orchard-server` started with `ulimit -v`
//! (RLIMIT_AS) and a context that cannot fit must refuse with the plan's message and a non-zero
//! exit before it binds or loads anything; with `--no-fit-check` the same command dies
//! allocating; a context that fits starts and loads under the same limit.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: u64 = 768 << 20;

fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "model missing: {} (set ORCHARD_MODELS)",
        p.display()
    );
    p
}

/// `orchard-server ARGS` under `ulimit -v LIMIT` (exec keeps the limit for the server itself).
fn under_limit(args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", LIMIT / 1024))
        .arg(env!("CARGO_BIN_EXE_orchard-server"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("LLAMA_ARG_CTX_SIZE")
        .env_remove("LLAMA_ARG_MODEL");
    c
}

/// Runs to the end (killed after `secs`) and returns its exit status, stderr and its own peak
/// resident set (`wait4`'s rusage of this child alone, so tests running beside it do not count).
// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(mut c: Command, secs: u64) -> (std::process::ExitStatus, String, u64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let t0 = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's wait is never called on it);
        // wait4 only writes `status` and `ru`.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4 failed");
        if r == pid {
            break;
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = reader.join().expect("stderr reader");
    (
        std::process::ExitStatus::from_raw(status),
        err,
        ru.ru_maxrss as u64 * 1024,
    )
}

#[test]
fn serve_refuses_a_context_that_cannot_fit_before_allocating() {
    let gemma = model("gemma-3-270m-q4_k_m.gguf");
    let gemma = gemma.to_str().unwrap();
    // 65536 cells of gemma-3-270m's f16 KV cache are 1.2 GB on their own.
    let args = ["-m", gemma, "-c", "65536"];
    let (status, err, hwm) = run_measured(under_limit(&args), 60);
    assert!(!status.success(), "started under {LIMIT} B: {err}");
    assert_eq!(status.code(), Some(1), "{err}");
    for want in [
        "not enough memory",
        "RLIMIT_AS (ulimit -v)",
        "768.00 MiB is available",
        "The biggest item is KV cache: -c 65536",
        "reduce -c to ",
        "use -ctk q4_0 -ctv q4_0",
        "--no-fit-check",
    ] {
        assert!(err.contains(want), "missing '{want}' in: {err}");
    }
    assert!(!err.contains("listening"), "bound before refusing: {err}");
    // Nothing was allocated: the peak is the runtime plus the parsed header, far below the
    // 235 MiB of weights or the KV cache.
    assert!(hwm < 96 << 20, "peak at refusal {hwm} B");

    // Without the check the same command starts, and dies when the cache is allocated.
    let mut no_check = args.to_vec();
    no_check.push("--no-fit-check");
    let (status, err, _) = run_measured(under_limit(&no_check), 120);
    assert!(!status.success(), "ran without the check: {err}");
    assert!(err.contains("memory allocation"), "{err}");
}

#[test]
fn serve_starts_under_the_limit_when_the_plan_fits() {
    let smol = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut child = under_limit(&["-m", smol.to_str().unwrap(), "-c", "256", "-ctk", "q8_0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let done = line.contains("model loaded") || line.contains("failed");
            let _ = tx.send(line);
            if done {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut loaded = false;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("model loaded") {
            loaded = true;
            break;
        }
        if line.contains("failed") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(loaded, "did not load under {LIMIT} B:\n{log}");
}
