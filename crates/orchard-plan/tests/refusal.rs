//! The fit check under a real memory limit: a child started with `ulimit -v` (RLIMIT_AS) asks
//! for a context that cannot fit; it must refuse with the plan's message and a non-zero exit
//! before loading anything, while the same command without the check dies allocating, and a
//! context that fits passes the check and runs under the same limit.

mod common;

use std::path::Path;
use std::process::{Command, Output};

const LIMIT: u64 = 768 << 20;

fn under_limit(exe: &Path, args: &[&str]) -> Output {
    // `ulimit -v` takes KiB; exec keeps the limit for the example itself.
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", LIMIT / 1024))
        .arg(exe)
        .args(args)
        .output()
        .expect("sh runs")
}

#[test]
fn a_context_that_cannot_fit_is_refused_before_anything_is_allocated() {
    let model = common::model("gemma-3-270m-q4_k_m.gguf");
    let model = model.to_str().unwrap();
    let exe = common::example("fill_context");
    // 65536 cells of gemma-3-270m's KV cache are 1.2 GB on their own.
    let args = ["--model", model, "--ctx", "65536", "--check"];
    let out = under_limit(&exe, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
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
    // Nothing was allocated: the peak is the runtime plus the parsed header, far below the
    // 235 MiB of weights or the KV cache.
    let hwm: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("vm_hwm_at_refusal "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the example reports its peak at refusal");
    assert!(hwm < 96 << 20, "peak at refusal {hwm} B");

    // Without the check the same run dies when the context is allocated.
    let out = under_limit(&exe, &args[..4]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ran without the check under {LIMIT} B"
    );
    assert!(err.contains("memory allocation"), "{err}");
}

#[test]
fn a_context_that_fits_passes_the_check_and_runs_under_the_limit() {
    let model = common::model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = under_limit(
        &common::example("fill_context"),
        &[
            "--model",
            model.to_str().unwrap(),
            "--ctx",
            "128",
            "--ubatch",
            "64",
            "--check",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(common::json_u64(&stdout, "vm_hwm") < LIMIT);
}
