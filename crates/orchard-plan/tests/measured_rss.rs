//! The plan against reality: for both test models and several context sizes, a child process
//! (examples/fill_context.rs) loads the model, tokenizer and sampler, fills every KV cell with
//! real forward passes in -ub chunks and reports its peak resident set (VmHWM); the plan's CPU
//! total must be within 10% of it. Also checks the fixed runtime overhead against the child's
//! baseline.
//!
//! Contexts default to 256, 512 and 1024 (a full fill is real compute: about a minute in all on
//! two cores); `ORCHARD_PLAN_TEST_CTX=256,1024,4096` runs others.

mod common;

use orchard_plan::{plan_with, AvailableMemory, PlanRequest, RUNTIME_OVERHEAD_BYTES};
use std::process::Command;

const UBATCH: usize = 512;

fn contexts() -> Vec<usize> {
    match std::env::var("ORCHARD_PLAN_TEST_CTX") {
        Ok(s) => s
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .expect("ORCHARD_PLAN_TEST_CTX: comma-separated sizes")
            })
            .collect(),
        Err(_) => vec![256, 512, 1024],
    }
}

fn check_model(name: &str) {
    let model = common::model(name);
    let exe = common::example("fill_context");
    let mut report = Vec::new();
    for n_ctx in contexts() {
        let out = Command::new(&exe)
            .arg("--model")
            .arg(&model)
            .args(["--ctx", &n_ctx.to_string(), "--ubatch", &UBATCH.to_string()])
            .output()
            .expect("fill_context runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fill_context failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured = common::json_u64(&stdout, "vm_hwm");
        let kv_measured = common::json_u64(&stdout, "kv_bytes");
        let req = PlanRequest {
            n_ctx,
            n_batch: UBATCH,
            n_ubatch: UBATCH,
            ..PlanRequest::default()
        };
        let plan =
            plan_with(&model, &req, &AvailableMemory::fixed(u64::MAX / 4, None)).expect("plan");
        // The KV item is exact: the same bytes the backend reports.
        let kv_planned = plan
            .item("KV cache", orchard_plan::Device::Cpu)
            .unwrap()
            .bytes;
        assert_eq!(kv_planned, kv_measured, "{name} -c {n_ctx}");
        let predicted = plan.total_cpu_bytes;
        let err = predicted as f64 / measured as f64 - 1.0;
        let line = format!(
            "{name} -c {n_ctx}: predicted {predicted} B, measured VmHWM {measured} B, {:+.1}%",
            err * 100.0
        );
        eprintln!("{line}");
        report.push((line, err, plan.render_table()));
    }
    for (line, err, table) in &report {
        assert!(err.abs() <= 0.10, "{line}\n{table}");
    }
}

#[test]
fn plan_is_within_10_percent_of_peak_rss_smollm2() {
    check_model("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn plan_is_within_10_percent_of_peak_rss_gemma3() {
    check_model("gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn runtime_overhead_covers_the_baseline_process() {
    let out = Command::new(common::example("fill_context"))
        .args(["--model", "unused", "--ctx", "1", "--baseline"])
        .output()
        .expect("fill_context runs");
    assert!(out.status.success());
    let hwm = common::json_u64(&String::from_utf8_lossy(&out.stdout), "vm_hwm");
    eprintln!("baseline VmHWM {hwm} B, planned runtime overhead {RUNTIME_OVERHEAD_BYTES} B");
    assert!(hwm > 0 && hwm <= RUNTIME_OVERHEAD_BYTES, "baseline {hwm} B");
}

/// `-ctk/-ctv q8_0` and `q4_0`: the plan's KV item equals the bytes the CPU backend allocated
/// (34 and 18 bytes per 32 values against f16's 64), and the total still tracks the peak.
#[test]
fn quantized_kv_cache_is_planned_exactly_and_shrinks() {
    let model = common::model("gemma-3-270m-q4_k_m.gguf");
    let exe = common::example("fill_context");
    let n_ctx = 512;
    let mut kv = Vec::new();
    for t in ["f16", "q8_0", "q4_0"] {
        let out = Command::new(&exe)
            .arg("--model")
            .arg(&model)
            .args(["--ctx", &n_ctx.to_string(), "--ubatch", "256"])
            .args(["--ctk", t, "--ctv", t])
            .output()
            .expect("fill_context runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fill_context -ctk {t}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured = common::json_u64(&stdout, "vm_hwm");
        let kv_measured = common::json_u64(&stdout, "kv_bytes");
        let dtype = orchard_plan::parse_cache_type(t).unwrap();
        let req = PlanRequest {
            n_ctx,
            n_batch: 256,
            n_ubatch: 256,
            cache_type_k: dtype,
            cache_type_v: dtype,
            ..PlanRequest::default()
        };
        let plan =
            plan_with(&model, &req, &AvailableMemory::fixed(u64::MAX / 4, None)).expect("plan");
        let kv_planned = plan
            .item("KV cache", orchard_plan::Device::Cpu)
            .unwrap()
            .bytes;
        assert_eq!(kv_planned, kv_measured, "-ctk/-ctv {t}");
        let err = plan.total_cpu_bytes as f64 / measured as f64 - 1.0;
        eprintln!(
            "-ctk/-ctv {t}: KV {kv_measured} B, predicted {} B, measured VmHWM {measured} B, {:+.1}%",
            plan.total_cpu_bytes,
            err * 100.0
        );
        assert!(err.abs() <= 0.10, "-ctk/-ctv {t}: {err}");
        kv.push(kv_measured);
    }
    // q8_0 is 34/64 of f16, q4_0 18/64.
    assert_eq!(kv[1] * 64, kv[0] * 34);
    assert_eq!(kv[2] * 64, kv[0] * 18);
}
