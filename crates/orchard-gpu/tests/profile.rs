//! The per-dispatch device-time profile (`ORCHARD_GPU_PROFILE=1`): its counts agree with the
//! dispatches the backend submitted, its timestamps run forwards, and a device without
//! timestamp queries inside passes says so instead of reporting anything. Its own test binary,
//! since the process-wide profile and `set_profiling` are shared by every backend in it.

use orchard_backend::{Backend, BufId, GluKind, HostWeight};
use orchard_core::DType;
use orchard_gpu::{GpuBackend, GpuProfile, Profiling};
use std::collections::HashSet;

mod common;
use common::weight;

/// A weight whose every row is the same ramp (values do not matter to the profile).
fn ramp_weight(name: &str, dtype: DType, cols: usize, rows: usize) -> HostWeight {
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| (i % cols % 13) as f32 / 13.0 - 0.5)
        .collect();
    weight(name, dtype, cols, rows, &values)
}

fn buf(b: &mut GpuBackend, n: usize, w: usize) -> BufId {
    let id = b.alloc(n, w);
    let data: Vec<f32> = (0..n * w).map(|i| (i % 7) as f32 / 7.0 - 0.4).collect();
    b.upload(id, &data);
    id
}

/// A decode-like token (norm, Q4_K products, GLU, residual add) and a 16-token F32 product.
fn run_ops(g: &mut GpuBackend) {
    let (d, ff) = (512, 1024);
    let norm = g
        .add_weight(&ramp_weight("norm", DType::F32, d, 1))
        .unwrap();
    let gate = g
        .add_weight(&ramp_weight("gate", DType::Q4_K, d, ff))
        .unwrap();
    let up = g
        .add_weight(&ramp_weight("up", DType::Q4_K, d, ff))
        .unwrap();
    let down = g
        .add_weight(&ramp_weight("down", DType::Q4_K, ff, d))
        .unwrap();
    let wf = g
        .add_weight(&ramp_weight("f32", DType::F32, d, 64))
        .unwrap();
    let x = buf(g, 1, d);
    let (h, a, b, o) = (g.alloc(1, d), g.alloc(1, ff), g.alloc(1, ff), g.alloc(1, d));
    let gl = g.alloc(1, ff);
    g.rms_norm(x, Some(norm), 1e-5, h);
    g.matmul(gate, h, a);
    g.matmul(up, h, b);
    g.glu(a, b, GluKind::SwiGlu, gl);
    g.matmul(down, gl, o);
    g.add(x, o);
    let xs = buf(g, 16, d);
    let os = g.alloc(16, 64);
    g.matmul(wf, xs, os);
    let mut out = Vec::new();
    g.download(x, &mut out);
    assert!(out.iter().all(|v| v.is_finite()));
    g.download(os, &mut out);
    assert!(out.iter().all(|v| v.is_finite()));
}

fn assert_empty(p: &GpuProfile) {
    assert!(p.rows.is_empty(), "{p:?}");
    assert_eq!((p.submissions, p.span_ns), (0, 0), "{p:?}");
}

#[test]
fn profile_matches_dispatches() {
    if std::env::var_os("ORCHARD_GPU_PROFILE").is_none() {
        let g = GpuBackend::new(None).expect("a GPU adapter");
        assert_eq!(g.profiling(), Profiling::Off, "profiling is opt-in");
    }
    let mut g = GpuBackend::new_with_profiling(None, true).expect("a GPU adapter");
    // Several submissions per step, so that spans and gaps are per submission.
    g.set_flush_every(2);
    let d0 = g.dispatches();
    run_ops(&mut g);
    let n = g.dispatches() - d0;
    assert!(n >= 5, "{n} dispatches");
    let p = g.take_profile();
    let global = orchard_gpu::take_profile();
    if g.profiling() == Profiling::Unsupported {
        eprintln!(
            "{}: no TIMESTAMP_QUERY_INSIDE_PASSES, profile unsupported",
            g.adapter().name
        );
        assert_empty(&p);
        assert_empty(&global);
        return;
    }
    assert_eq!(g.profiling(), Profiling::On);
    for r in &p.rows {
        eprintln!(
            "{:<24} {:>3} dispatches, busy {:>9} ns, gap {:>7} ns",
            r.label, r.dispatches, r.busy_ns, r.gap_ns
        );
    }
    eprintln!(
        "{} submissions, span {} ns, busy {} ns, gaps {} ns",
        p.submissions,
        p.span_ns,
        p.busy_ns(),
        p.gap_ns()
    );
    assert_eq!(p.dispatches(), n, "every dispatch timed once");
    let labels: HashSet<&str> = p.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels.len(), p.rows.len(), "one row per kernel label");
    assert!(p
        .rows
        .iter()
        .all(|r| r.dispatches > 0 && !r.label.is_empty()));
    for (kind, format) in [("Norm", ""), ("Glu", ""), ("MatMul", "(F32)")] {
        assert!(
            p.rows
                .iter()
                .any(|r| r.label.starts_with(kind) && r.label.ends_with(format)),
            "{kind}{format} missing"
        );
    }
    assert!(
        p.rows.iter().any(|r| r.label.contains("(Q4_K)")),
        "a Q4_K product"
    );
    assert_eq!(p.backwards, 0, "timestamps went backwards");
    assert!(p.rows.iter().any(|r| r.busy_ns > 0), "no busy time at all");
    assert!(p.submissions >= 2 && p.submissions <= g.submissions());
    // Within a submission the span is the busy time plus the gaps (up to rounding per pair).
    let (sum, span) = (p.busy_ns() + p.gap_ns(), p.span_ns);
    assert!(
        sum.abs_diff(span) <= 2 * n,
        "span {span} vs busy + gaps {sum}"
    );
    assert_eq!(p, global, "one backend: its profile is the process's");
    assert_empty(&g.take_profile());

    // One submission of more dispatches than a query set holds (4096 queries, two each).
    g.set_flush_every(0);
    let x = buf(&mut g, 1, 64);
    let (d1, s1) = (g.dispatches(), g.submissions());
    for _ in 0..2100 {
        g.scale(x, 1.0);
    }
    g.sync();
    let p = g.take_profile();
    assert_eq!(p.dispatches(), g.dispatches() - d1);
    assert_eq!(p.submissions, g.submissions() - s1);
    assert_eq!(p.backwards, 0, "timestamps went backwards");
    let (sum, span) = (p.busy_ns() + p.gap_ns(), p.span_ns);
    assert!(
        sum.abs_diff(span) <= 2 * p.dispatches(),
        "span {span} vs {sum}"
    );
    orchard_gpu::take_profile();

    // Paused: dispatches run, nothing is timed.
    orchard_gpu::set_profiling(false);
    let d1 = g.dispatches();
    run_ops(&mut g);
    orchard_gpu::set_profiling(true);
    assert!(g.dispatches() > d1);
    assert_empty(&g.take_profile());
    assert_empty(&orchard_gpu::take_profile());
    assert!(g.take_errors().is_empty());
}
