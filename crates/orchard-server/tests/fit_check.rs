//! The server's fit check under a real memory limit: `orchard-server` started with `ulimit -v`
//! (RLIMIT_AS) and a context that cannot fit must refuse with the plan's message and a non-zero
//! exit before it binds or loads anything; with `--no-fit-check` the same command dies
//! allocating; a context that fits starts and loads under the same limit.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
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

/// Runs to the end, killing the child if it has not exited after `secs`.
fn run_with_timeout(mut c: Command, secs: u64) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Peak resident set of the largest child reaped so far (KiB on Linux).
fn children_max_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(r, 0);
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn serve_refuses_a_context_that_cannot_fit_before_allocating() {
    let gemma = model("gemma-3-270m-q4_k_m.gguf");
    let gemma = gemma.to_str().unwrap();
    // 65536 cells of gemma-3-270m's f16 KV cache are 1.2 GB on their own.
    let args = ["-m", gemma, "-c", "65536"];
    let out = run_with_timeout(under_limit(&args), 60);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started under {LIMIT} B: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
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
    let hwm = children_max_rss_bytes();
    assert!(hwm < 96 << 20, "peak at refusal {hwm} B");

    // Without the check the same command starts, and dies when the cache is allocated.
    let mut no_check = args.to_vec();
    no_check.push("--no-fit-check");
    let out = run_with_timeout(under_limit(&no_check), 120);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without the check: {err}");
    assert!(err.contains("memory allocation"), "{err}");

    // The quantized cache the message suggests is a quarter of that; still too big at 65536,
    // and the refusal accounts for it (the KV item is smaller than with f16).
    let out = run_with_timeout(
        under_limit(&["-m", gemma, "-c", "65536", "-ctk", "q4_0", "-ctv", "q4_0"]),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not enough memory"), "{err}");
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
