//! `llama-bench`-like measurement of a model on the GPU backend (pp512 / tg128 through
//! `Context` with `-ngl`), plus per-kernel micro-benchmarks (matrix-vector bandwidth per weight
//! format, tiled matmul throughput, buffer-copy bandwidth) that say what limits each kernel.
//!
//! usage: gpu_bench [--synth SHAPE=PATH]... [--kernels] [-p 512] [-n 128] [-r 3] [-ngl 999]
//!        [--write-only] [--f32-act] [--shape COLSxROWS] [--q8k-shapes WG/TPR/NR,...]
//!        [--warm-ms MS] [--coop-tiles TMxTNxBK/SGMxSGN[/db|/dbs],...] [--attn] [--decode-attn] [--floor]
//!        [--profile] [--logits] [MODEL...]
//!        (SHAPE: smollm2, gemma3 (270M) or 8b, written as Q4_K_M before the runs; --shape:
//!        the kernel micro-benchmarks' weight, 4096x14336 by default; --profile: after each
//!        model's runs, 16 more decode tokens and one prompt step with per-dispatch
//!        timestamps, printed per kernel)

use orchard_backend::{AttnBatch, AttnParams, Backend, CpuBackend, HostWeight, TokenSlot};
use orchard_core::DType;
use orchard_gpu::{CoopTile, GpuBackend, GpuProfile, Profiling};
use orchard_models::synth::{write_synthetic_llama, SynthSpec};
use orchard_models::{Batch, Context, ContextOptions, Model};
use std::sync::Arc;
use std::time::Instant;

struct Args {
    models: Vec<String>,
    synth: Vec<(String, String)>,
    kernels: bool,
    /// `--attn`: prefill attention (KV store + attention of one 512-token prompt, 8B and
    /// SmolLM2 head shapes), tiled and per-token kernels side by side, checked on the CPU.
    attn: bool,
    /// `--decode-attn`: one decode token's attention at 64 / 512 / 4096 cells, old and new
    /// per-token kernels side by side, checked on the CPU.
    decode_attn: bool,
    /// `--floor`: 300 trivial dispatches in one submission, chained and independent.
    floor: bool,
    write_only: bool,
    /// `--foreign-cm2 FILE`: time a cm2 SPIR-V module written to llama.cpp's Q4_K matmul
    /// interface (its spec constants frozen: a 128 x 256 tile) on `--shape` at 512 tokens
    /// (feature `cm2-spv-override`).
    foreign_cm2: Option<String>,
    /// `--cm2-stats`: the driver's statistics of every cm2 module (ours, each tile, honouring
    /// ORCHARD_GPU_CM2_SPV_DIR; and `--foreign-cm2`'s).
    cm2_stats: bool,
    f32_act: bool,
    /// `--formats q4_K,q6_K`: only these in the kernel micro-benchmarks.
    formats: Option<String>,
    /// `--no-matmul`: matrix-vector products only in the kernel micro-benchmarks.
    no_matmul: bool,
    /// `--no-matvec`: tiled matmuls only in the kernel micro-benchmarks.
    no_matvec: bool,
    /// `--const-x`: a constant activation for the tiled matmul (as runs 1-4 did).
    const_x: bool,
    /// `--shape COLSxROWS`: the micro-benchmarks' weight shape.
    shape: (usize, usize),
    /// `--q8k-shapes WG/TPR/NR,...`: integer-dot matrix-vector shapes timed side by side (in
    /// that order, then again in reverse) on the K-quant formats.
    q8k_shapes: Vec<(u32, u32, u32)>,
    /// `--coop-tiles TMxTNxBK/SGMxSGN[/db|/dbs],...`: cooperative-matrix matmul tiles timed side
    /// by side.
    coop_tiles: Vec<CoopTile>,
    /// `--profile`: per-kernel device time of decode tokens and a prompt step, after the runs.
    profile: bool,
    /// `--logits`: after the pp runs, the prompt's last logits on the GPU against the CPU
    /// backend's (NMSE, top token, top-10 overlap): what the GPU's roundings do to a model.
    logits: bool,
    p: usize,
    n: usize,
    r: usize,
    ngl: usize,
}

fn parse() -> Args {
    let mut a = Args {
        models: Vec::new(),
        synth: Vec::new(),
        kernels: false,
        attn: false,
        logits: false,
        decode_attn: false,
        floor: false,
        write_only: false,
        foreign_cm2: None,
        cm2_stats: false,
        f32_act: false,
        formats: None,
        no_matmul: false,
        no_matvec: false,
        const_x: false,
        shape: (4096, 14336),
        q8k_shapes: Vec::new(),
        coop_tiles: Vec::new(),
        profile: false,
        p: 512,
        n: 128,
        r: 3,
        ngl: 999,
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match s.as_str() {
            "-p" => a.p = num(),
            "-n" => a.n = num(),
            "-r" => a.r = num(),
            "-ngl" => a.ngl = num(),
            "--kernels" => a.kernels = true,
            "--attn" => a.attn = true,
            "--logits" => a.logits = true,
            "--decode-attn" => a.decode_attn = true,
            "--floor" => a.floor = true,
            "--profile" => a.profile = true,
            "--write-only" => a.write_only = true,
            "--foreign-cm2" => a.foreign_cm2 = it.next(),
            "--cm2-stats" => a.cm2_stats = true,
            "--f32-act" => a.f32_act = true,
            "--no-matmul" => a.no_matmul = true,
            "--warm-ms" => WARM_MS.store(num() as u64, std::sync::atomic::Ordering::Relaxed),
            "--no-matvec" => a.no_matvec = true,
            "--const-x" => a.const_x = true,
            "--formats" => a.formats = it.next(),
            "--shape" => {
                let v = it.next().expect("COLSxROWS");
                let (c, r) = v.split_once('x').expect("COLSxROWS");
                a.shape = (c.parse().expect("COLS"), r.parse().expect("ROWS"));
            }
            "--q8k-shapes" => {
                let v = it.next().expect("WG/TPR/NR,...");
                a.q8k_shapes = v
                    .split(',')
                    .map(|t| {
                        let n: Vec<u32> =
                            t.split('/').map(|x| x.parse().expect("a number")).collect();
                        (n[0], n[1], n[2])
                    })
                    .collect();
            }
            "--coop-tiles" => {
                let v = it.next().expect("TMxTNxBK/SGMxSGN[/db|/dbs],...");
                a.coop_tiles = v
                    .split(',')
                    .map(|t| t.parse().unwrap_or_else(|e| panic!("{e}")))
                    .collect();
            }
            "--synth" => {
                let v = it.next().expect("SHAPE=PATH");
                let (shape, path) = v.split_once('=').expect("SHAPE=PATH");
                a.synth.push((shape.to_string(), path.to_string()));
            }
            _ => a.models.push(s),
        }
    }
    a
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

fn bench_model(path: &str, a: &Args) {
    let t = Instant::now();
    let model = Arc::new(Model::load(path).expect("model loads"));
    let mut gpu = if a.profile {
        // Timestamps only in the profile runs at the end; the timed runs stay unprofiled.
        orchard_gpu::set_profiling(false);
        GpuBackend::new_with_profiling(None, true)
    } else {
        GpuBackend::new(None)
    }
    .expect("a GPU");
    gpu.set_exact_activations(!a.f32_act);
    let dev = gpu.adapter().clone();
    let profiling = gpu.profiling();
    let matmul = if gpu.cm2() {
        "cm2+coop"
    } else if gpu.coop() {
        "coop"
    } else {
        "f32"
    };
    let n_ctx = a.p.max(a.n) + 16;
    let mut ctx = Context::with_offload(
        model.clone(),
        ContextOptions {
            n_ctx,
            ..Default::default()
        },
        Some((Box::new(gpu), a.ngl)),
    )
    .expect("context");
    let load_s = t.elapsed().as_secs_f64();
    let cells: Vec<u32> = (0..n_ctx as u32).collect();
    let tables = [cells.as_slice()];
    let n_vocab = model.hp.n_vocab as u32;
    let mut out = Vec::new();
    let mut run = |tokens: &[u32], pos0: u32, out: &mut Vec<f32>| {
        let slots: Vec<TokenSlot> = (0..tokens.len() as u32)
            .map(|i| TokenSlot {
                seq: 0,
                pos: pos0 + i,
            })
            .collect();
        ctx.decode(
            &Batch {
                tokens,
                slots: &slots,
                cells: &tables,
                logits: &[tokens.len() as u32 - 1],
            },
            out,
        )
        .expect("decode");
    };
    let prompt: Vec<u32> = (0..a.p as u32).map(|i| (i * 7919 + 13) % n_vocab).collect();
    // warm-up: pipelines compile on first use, and the card's clocks rise: prompt steps for
    // a second (after one step, the first one or two timed steps on an H200 still ran at a
    // third to half speed in many runs, run 39, while llama-bench's were steady)
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < 1.0 {
        run(&prompt, 0, &mut out);
    }
    run(&[1], 0, &mut out);
    let mut pp = Vec::new();
    for _ in 0..a.r {
        let t = Instant::now();
        run(&prompt, 0, &mut out);
        pp.push(a.p as f64 / t.elapsed().as_secs_f64());
    }
    if a.logits {
        let t = Instant::now();
        let mut cpu = Context::new(
            model.clone(),
            ContextOptions {
                n_ctx,
                ..Default::default()
            },
        )
        .expect("CPU context");
        let slots: Vec<TokenSlot> = (0..prompt.len() as u32)
            .map(|pos| TokenSlot { seq: 0, pos })
            .collect();
        let mut want = Vec::new();
        cpu.decode(
            &Batch {
                tokens: &prompt,
                slots: &slots,
                cells: &tables,
                logits: &[prompt.len() as u32 - 1],
            },
            &mut want,
        )
        .expect("CPU decode");
        let top = |v: &[f32], k: usize| {
            let mut i: Vec<usize> = (0..v.len()).collect();
            i.sort_by(|&x, &y| v[y].total_cmp(&v[x]));
            i.truncate(k);
            i
        };
        let (tg, tw) = (top(&out, 10), top(&want, 10));
        let overlap = tg.iter().filter(|i| tw.contains(i)).count();
        let max_diff = out
            .iter()
            .zip(&want)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!(
            "  logits of token {} vs CPU ({:.1} s): NMSE {:.2e}, max |diff| {max_diff:.4}, top token {} / {}, top-10 overlap {overlap}/10",
            prompt.len() - 1,
            t.elapsed().as_secs_f64(),
            nmse(&out, &want),
            tg[0],
            tw[0]
        );
    }
    if a.r > 1 {
        // each repetition, and the median: one slow repetition (a stall outside the step)
        // moves the mean by thousands of tokens a second on an H200
        let mut s = pp.clone();
        s.sort_by(f64::total_cmp);
        let reps: Vec<String> = pp.iter().map(|v| format!("{v:.0}")).collect();
        eprintln!(
            "  pp reps: {} (median {:.1})",
            reps.join(" "),
            s[s.len() / 2]
        );
    }
    let mut tg = Vec::new();
    let s0 = orchard_gpu::stats();
    for _ in 0..a.r {
        let t = Instant::now();
        let mut tok = 1u32;
        for i in 0..a.n {
            run(&[tok], i as u32, &mut out);
            tok = out
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0 as u32;
        }
        tg.push(a.n as f64 / t.elapsed().as_secs_f64());
    }
    let s1 = orchard_gpu::stats();
    let toks = (a.r * a.n) as f64;
    eprintln!(
        "  tg per token: {:.0} dispatches, {:.2} submissions, encode+submit {:.3} ms, device wait {:.3} ms, wall {:.3} ms",
        (s1.dispatches - s0.dispatches) as f64 / toks,
        (s1.submissions - s0.submissions) as f64 / toks,
        (s1.encode_ns - s0.encode_ns) as f64 / toks / 1e6,
        (s1.wait_ns - s0.wait_ns) as f64 / toks / 1e6,
        1e3 / (tg.iter().sum::<f64>() / tg.len() as f64)
    );
    if a.profile && profiling != Profiling::On {
        println!("profile: {profiling:?} on {}", dev.name);
    } else if a.profile {
        // 16 decode tokens at positions spread over the tg run's, then one prompt step.
        let k = 16;
        orchard_gpu::take_profile();
        let s0 = orchard_gpu::stats();
        orchard_gpu::set_profiling(true);
        for i in 0..k {
            run(&[1 + i as u32], (i * a.n / k) as u32, &mut out);
        }
        orchard_gpu::set_profiling(false);
        let s1 = orchard_gpu::stats();
        let prof = orchard_gpu::take_profile();
        print_profile(
            &format!("tg profile, {k} tokens"),
            &prof,
            k as f64,
            "token",
            (s1.dispatches - s0.dispatches) as f64 / k as f64,
        );
        let s0 = orchard_gpu::stats();
        orchard_gpu::set_profiling(true);
        run(&prompt, 0, &mut out);
        orchard_gpu::set_profiling(false);
        let s1 = orchard_gpu::stats();
        let prof = orchard_gpu::take_profile();
        print_profile(
            &format!("pp profile, one {}-token step", a.p),
            &prof,
            1.0,
            "step",
            (s1.dispatches - s0.dispatches) as f64,
        );
    }
    let (ppm, pps) = mean_sd(&pp);
    let (tgm, tgs) = mean_sd(&tg);
    let gib = model.weight_bytes() as f64 / (1u64 << 30) as f64;
    // Weights streamed per generated token: everything but the embedding table (a row gather).
    let streamed = (model.weight_bytes() - model.tensor(model.tok_embd).range.len() as u64
        + if model.output == model.tok_embd {
            model.tensor(model.tok_embd).range.len() as u64
        } else {
            0
        }) as f64;
    println!(
        "| {}{} | {:.2} GiB | {} | ngl {} | matmul {} | pp{} {:.1} ± {:.1} | tg{} {:.1} ± {:.1} | decode {:.0} GB/s | load {:.1} s |",
        std::path::Path::new(path)
            .file_name()
            .map_or(path.into(), |f| f.to_string_lossy()),
        if a.f32_act { " (f32 act)" } else { "" },
        gib,
        dev.name,
        a.ngl,
        matmul,
        a.p,
        ppm,
        pps,
        a.n,
        tgm,
        tgs,
        streamed * tgm / 1e9,
        load_s
    );
}

/// One row per kernel label, per `unit` (token or step): dispatches, busy and gap time, mean
/// busy time per dispatch and share of the submissions' spans; then the totals.
fn print_profile(title: &str, p: &GpuProfile, per: f64, unit: &str, stats_dispatches: f64) {
    let us = |ns: u64| ns as f64 / 1e3 / per;
    let span = p.span_ns.max(1) as f64;
    println!(
        "{title}: {} submissions, {:.1} dispatches/{unit} ({:.1} by stats()), timestamps backwards: {}",
        p.submissions,
        p.dispatches() as f64 / per,
        stats_dispatches,
        p.backwards
    );
    println!(
        "| kernel | dispatches/{unit} | busy us/{unit} | gap us/{unit} | busy us/dispatch | share |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |label: &str, n: u64, busy: u64, gap: u64| {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} % |",
            n as f64 / per,
            us(busy),
            us(gap),
            busy as f64 / 1e3 / n.max(1) as f64,
            100.0 * (busy + gap) as f64 / span
        );
    };
    for r in &p.rows {
        row(&r.label, r.dispatches, r.busy_ns, r.gap_ns);
    }
    row("total", p.dispatches(), p.busy_ns(), p.gap_ns());
    println!(
        "per {unit}: submission spans {:.1} us ({:.2} submissions), busy {:.1} us + gaps {:.1} us",
        us(p.span_ns),
        p.submissions as f64 / per,
        us(p.busy_ns()),
        us(p.gap_ns())
    );
}

fn quantized(dtype: DType, cols: usize, rows: usize) -> HostWeight {
    let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
    let mut bytes = vec![0u8; row_bytes * rows];
    let mut s = 1u32;
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        for v in row.iter_mut() {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            *v = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        }
        orchard_quant::quantize_row(dtype, &row, &mut bytes[r * row_bytes..][..row_bytes]).unwrap();
    }
    let len = bytes.len();
    HostWeight {
        name: format!("{dtype}"),
        dtype,
        dims: vec![cols as u64, rows as u64],
        source: Arc::new(bytes),
        range: 0..len,
    }
}

/// Milliseconds of warm-up before each timing (`--warm-ms`): the H200 of run 7 ran the same
/// dispatches up to 4x faster after a second or so of load than right after an idle spell.
static WARM_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Set when the device may have idled (weights were just made on the CPU): the next timing
/// warms 1.5 s more.
static WARM_FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Times `reps` repetitions of `f` recorded into one submission.
fn time_ops(g: &mut GpuBackend, reps: usize, mut f: impl FnMut(&mut GpuBackend)) -> f64 {
    // warm-up: pipelines compile and clocks rise
    let ms = WARM_MS.load(std::sync::atomic::Ordering::Relaxed);
    let extra = if ms > 0 && WARM_FIRST.swap(false, std::sync::atomic::Ordering::Relaxed) {
        1500
    } else {
        0
    };
    let warm = std::time::Duration::from_millis(ms + extra);
    let t = Instant::now();
    loop {
        for _ in 0..reps.min(20) {
            f(g);
        }
        g.sync();
        if t.elapsed() >= warm {
            break;
        }
    }
    let t = Instant::now();
    for _ in 0..reps {
        f(g);
    }
    g.sync();
    t.elapsed().as_secs_f64() / reps as f64
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let (num, den) = got
        .iter()
        .zip(want)
        .fold((0.0f64, 0.0f64), |(n, d), (&a, &b)| {
            (n + ((a - b) as f64).powi(2), d + (b as f64).powi(2))
        });
    num / den.max(1e-30)
}

fn bench_kernels(a: &Args) {
    let mut g = GpuBackend::new(None).expect("a GPU");
    println!("device: {:?}", g.adapter());
    println!("VK_NV_cooperative_matrix2: {}", g.cm2_status());
    // buffer copy bandwidth (read + write), the ceiling for a bandwidth-bound kernel
    let n = 64 << 20; // 256 MiB of f32
    let src = g.alloc(1, n);
    let dst = g.alloc(1, n);
    let rows: Vec<u32> = vec![0];
    let s = time_ops(&mut g, 20, |g| g.copy_rows(src, &rows, dst));
    println!(
        "copy 256 MiB: {:.3} ms, {:.0} GB/s (read + write)",
        s * 1e3,
        2.0 * (n * 4) as f64 / s / 1e9
    );
    let (cols, rows_w) = a.shape;
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::F16,
        DType::F32,
    ] {
        if let Some(f) = &a.formats {
            if !f
                .split(',')
                .any(|n| n.eq_ignore_ascii_case(&dtype.to_string()))
            {
                continue;
            }
        }
        let w = quantized(dtype, cols, rows_w);
        let bytes = w.range.len() as f64;
        let wid = g.add_weight(&w).unwrap();
        let xv: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * if i % 97 == 0 { 8.0 } else { 1.0 })
            .collect();
        let x = g.alloc(1, cols);
        g.upload(x, &xv);
        let o = g.alloc(1, rows_w);
        WARM_FIRST.store(true, std::sync::atomic::Ordering::Relaxed);
        let s1 = if a.no_matvec {
            f64::NAN
        } else {
            time_ops(&mut g, 300, |g| g.matmul(wid, x, o))
        };
        // parity of this device's matrix-vector product against the CPU backend
        let mut got = Vec::new();
        g.download(o, &mut got);
        let want = {
            let mut c = CpuBackend::new();
            let cw = c.add_weight(&w).unwrap();
            let cx = c.alloc(1, cols);
            c.upload(cx, &xv);
            let co = c.alloc(1, rows_w);
            c.matmul(cw, cx, co);
            let mut v = Vec::new();
            c.download(co, &mut v);
            v
        };
        if matches!(dtype, DType::Q4_K | DType::Q6_K) && !a.q8k_shapes.is_empty() {
            let keep = (g.q8k_shape(), g.q8k_auto());
            let order: Vec<_> = a
                .q8k_shapes
                .iter()
                .chain(a.q8k_shapes.iter().rev())
                .copied()
                .collect();
            for (wg, tpr, nr) in order {
                if !g.set_q8k_shape(wg, tpr, nr) {
                    println!("q8k {dtype} {wg}/{tpr}/{nr}: shape refused");
                    continue;
                }
                let s = time_ops(&mut g, 300, |g| g.matmul(wid, x, o));
                // parity from a fresh output, so that a shape that skips rows shows
                g.upload(o, &vec![0.0; rows_w]);
                g.matmul(wid, x, o);
                let mut v = Vec::new();
                g.download(o, &mut v);
                println!(
                    "q8k {dtype:>4} {cols}x{rows_w} {wg}/{tpr}/{nr}: {:.4} ms {:.0} GB/s (NMSE vs CPU {:.1e})",
                    s * 1e3,
                    bytes / s / 1e9,
                    nmse(&v, &want)
                );
            }
            g.set_q8k_shape(keep.0 .0, keep.0 .1, keep.0 .2);
            g.set_q8k_auto(keep.1);
        }
        println!(
            "{dtype:>5} {cols}x{rows_w}: matvec {:.3} ms {:.0} GB/s (NMSE vs CPU {:.1e})",
            s1 * 1e3,
            bytes / s1 / 1e9,
            nmse(&got, &want),
        );
        if a.no_matmul {
            continue;
        }
        // Tiled products: n = 512 timed, and n = 77 (not a multiple of any tile) checked
        // against the CPU backend, with each kernel this device has (the portable f32 tiles,
        // then cooperative matrices where available), alternating twice.
        let xb = g.alloc(512, cols);
        let xbv: Vec<f32> = if a.const_x {
            vec![0.25; 512 * cols]
        } else {
            (0..512 * cols)
                .map(|i| xv[i % cols] * (1.0 + (i / cols) as f32 / 512.0))
                .collect()
        };
        g.upload(xb, &xbv);
        let ob = g.alloc(512, rows_w);
        // ORCHARD_BENCH_CHECK_TOKENS: another checked width (over 128 tokens the cm2 products
        // take their wide tile; 300 leaves its second token tile ragged).
        let nc = std::env::var("ORCHARD_BENCH_CHECK_TOKENS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v: &usize| (1..=512).contains(&v))
            .unwrap_or(77);
        let xc = g.alloc(nc, cols);
        g.upload(xc, &xbv[..nc * cols]);
        let oc = g.alloc(nc, rows_w);
        let want_c = {
            let mut c = CpuBackend::new();
            let cw = c.add_weight(&w).unwrap();
            let cx = c.alloc(nc, cols);
            c.upload(cx, &xbv[..nc * cols]);
            let co = c.alloc(nc, rows_w);
            c.matmul(cw, cx, co);
            let mut v = Vec::new();
            c.download(co, &mut v);
            v
        };
        #[derive(Clone, Copy)]
        enum Var {
            F32,
            Coop(CoopTile),
            /// VK_NV_cooperative_matrix2, with its default tile choice or a fixed one.
            Cm2(Option<&'static str>),
        }
        let (coop_default, cm2_default) = (g.coop(), g.cm2());
        let mut variants: Vec<Var> = if !g.coop_available() {
            vec![Var::F32]
        } else if a.coop_tiles.is_empty() {
            vec![Var::F32, Var::Coop(g.coop_tile())]
        } else {
            std::iter::once(Var::F32)
                .chain(a.coop_tiles.iter().map(|&t| Var::Coop(t)))
                .collect()
        };
        if g.cm2_available() && matches!(dtype, DType::Q4_K | DType::Q6_K) {
            variants.push(Var::Cm2(None));
            // ORCHARD_BENCH_CM2_TILES: the fixed tiles timed (default: all compiled).
            let list = std::env::var("ORCHARD_BENCH_CM2_TILES")
                .unwrap_or_else(|_| "128x64x32,128x128x64,128x256x64h".into());
            for t in list.split(',') {
                variants.push(Var::Cm2(Some(t.to_string().leak())));
            }
        }
        // Twice, the second time in reverse, so drift is seen.
        let twice: Vec<Var> = variants
            .iter()
            .chain(variants.iter().rev())
            .copied()
            .collect();
        for var in twice {
            g.set_coop(matches!(var, Var::Coop(_)));
            g.set_cm2(matches!(var, Var::Cm2(_)));
            if let Var::Coop(t) = var {
                if !g.set_coop_tile(t) {
                    println!("coop tile {t} refused");
                    continue;
                }
            }
            if let Var::Cm2(t) = var {
                if let Err(e) = g.set_cm2_tile(t) {
                    println!("{e}");
                    continue;
                }
            }
            let s512 = time_ops(&mut g, 5, |g| g.matmul(wid, xb, ob));
            g.upload(oc, &vec![0.0; nc * rows_w]);
            g.matmul(wid, xc, oc);
            let mut v = Vec::new();
            g.download(oc, &mut v);
            println!(
                "{dtype:>5} {cols}x{rows_w}: matmul {} n=512 {:.3} ms {:.2} TFLOP/s (n={nc} NMSE vs CPU {:.1e})",
                match var {
                    Var::F32 => "f32                   ".to_string(),
                    Var::Coop(t) => format!("coop {t:<17}"),
                    Var::Cm2(None) => "cm2 (default tile)    ".to_string(),
                    Var::Cm2(Some(t)) => format!("cm2 {t:<18}"),
                },
                s512 * 1e3,
                2.0 * (cols * rows_w * 512) as f64 / s512 / 1e12,
                nmse(&v, &want_c)
            );
        }
        g.set_coop(coop_default);
        g.set_cm2(cm2_default);
        g.set_cm2_tile(None).expect("no tile");
    }
}

/// The attention benchmarks' head shapes, 8B's and SmolLM2's: (name, heads, KV heads, head
/// dim, their parameters).
fn bench_heads() -> [(&'static str, usize, usize, usize, AttnParams); 3] {
    // The third: Gemma 3's heads, with a 128-cell sliding window and a softcap (Gemma 2's) so
    // that the masks and the capped scores are checked too.
    [
        ("8b", 32, 8, 128, None, None),
        ("smollm2", 9, 3, 64, None, None),
        ("gemma3-w128-cap", 4, 1, 256, Some(128), Some(50.0)),
    ]
    .map(|(name, nh, nkv, hd, window, softcap)| {
        let p = AttnParams {
            n_head: nh,
            n_head_kv: nkv,
            head_dim_k: hd,
            head_dim_v: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
            softcap,
        };
        (name, nh, nkv, hd, p)
    })
}

/// `len` values in [-1, 1) from a xorshift state (benchmark inputs: reproducible, no crate).
fn xorshift_values(seed: &mut u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Prefill attention of one `n`-token prompt per head shape: the tiled kernel and the
/// per-token one alternately (twice), ms per call (KV store included), and each against the CPU.
fn bench_attn(n: usize) {
    let mut g = GpuBackend::new(None).expect("a GPU");
    println!("device: {:?}", g.adapter());
    // Random inputs, and a ramp: scores rising by about 14 every 64 cells (each query's
    // maximum at its last cell, far above the rest: the softmax's range handling).
    let cases = bench_heads()
        .into_iter()
        .flat_map(|h| [(h, false), (h, true)]);
    for ((name, nh, nkv, hd, p), ramp) in cases {
        let mut seed = 0x1234_5678u64;
        let mut rnd = |len: usize| xorshift_values(&mut seed, len);
        let (mut qv, mut kv, vv) = (rnd(n * nh * hd), rnd(n * nkv * hd), rnd(n * nkv * hd));
        if ramp {
            qv.iter_mut().for_each(|x| *x = 1.0);
            let slope = 14.0 / 64.0 / (hd as f32 * p.scale);
            for (i, x) in kv.iter_mut().enumerate() {
                *x = slope * (i / (nkv * hd)) as f32;
            }
        }
        let name = if ramp {
            format!("{name}-ramp")
        } else {
            name.to_string()
        };
        let table: Vec<u32> = (0..n as u32).collect();
        let tables = [table.as_slice()];
        let tokens: Vec<TokenSlot> = (0..n as u32).map(|pos| TokenSlot { seq: 0, pos }).collect();
        let run = |b: &mut dyn Backend| {
            b.alloc_kv(0, n, nkv * hd, nkv * hd).unwrap();
            let (q, k, v) = (
                b.alloc(n, nh * hd),
                b.alloc(n, nkv * hd),
                b.alloc(n, nkv * hd),
            );
            b.upload(q, &qv);
            b.upload(k, &kv);
            b.upload(v, &vv);
            let o = b.alloc(n, nh * hd);
            (q, k, v, o)
        };
        let batch = AttnBatch {
            tokens: &tokens,
            cells: &tables,
        };
        let mut cpu = CpuBackend::new();
        let (q, k, v, o) = run(&mut cpu);
        cpu.attention(0, q, k, v, &batch, &p, o).unwrap();
        let mut want = Vec::new();
        cpu.download(o, &mut want);
        let (q, k, v, o) = run(&mut g);
        // The kernels: on VK_NV_cooperative_matrix2 and on WGSL cooperative matrices (where
        // the device has them), tiled, per token.
        let mut kinds: Vec<(&str, bool, bool, bool)> = Vec::new();
        if g.attn_cm2_available() {
            kinds.push(("cm2", true, true, true));
        }
        if g.coop_available() {
            kinds.push(("coop", false, true, true));
        }
        kinds.extend([
            ("tiled", false, false, true),
            ("per-token", false, false, false),
        ]);
        for round in 0..2 {
            for &(kind, cm2, coop, tile) in &kinds {
                g.set_attn_cm2(cm2);
                g.set_attn_coop(coop);
                g.set_attn_tile(tile);
                let t = time_ops(&mut g, 20, |g| {
                    g.attention(0, q, k, v, &batch, &p, o).unwrap()
                });
                // Host cost alone: 20 calls recorded (no flush within 40 dispatches), then run.
                let th = Instant::now();
                for _ in 0..20 {
                    g.attention(0, q, k, v, &batch, &p, o).unwrap();
                }
                let host = th.elapsed().as_secs_f64() / 20.0;
                g.sync();
                let mut got = Vec::new();
                g.download(o, &mut got);
                // Where a kernel left non-finite values (rows it did not write keep whatever
                // the buffer held): token, head and dim, for the NMSE that reads NaN.
                let bad: Vec<usize> = (0..got.len()).filter(|&i| !got[i].is_finite()).collect();
                if let Some(&i) = bad.first() {
                    let w = nh * hd;
                    let heads: std::collections::BTreeSet<usize> =
                        bad.iter().map(|i| i % w / hd).collect();
                    println!(
                        "  {} non-finite values, the first at token {} head {} dim {}; heads {heads:?}",
                        bad.len(),
                        i / w,
                        i % w / hd,
                        i % hd,
                    );
                }
                println!(
                    "attn {name} n={n} heads {nh}/{nkv} dim {hd} {} (round {}): {:.3} ms (host encoding {:.3} ms of it), NMSE vs CPU {:.2e}",
                    kind,
                    round + 1,
                    t * 1e3,
                    host * 1e3,
                    nmse(&got, &want)
                );
            }
        }
        g.set_attn_tile(true);
        g.set_attn_coop(true);
        g.set_attn_cm2(true);
        let errs = g.take_errors();
        assert!(errs.is_empty(), "GPU errors: {errs:?}");
    }
}

/// A backend whose dispatches can be timed on the device (timestamps paused until asked for).
fn profiling_gpu() -> GpuBackend {
    orchard_gpu::set_profiling(false);
    let g = GpuBackend::new_with_profiling(None, true).expect("a GPU");
    println!("device: {:?}, timestamps: {:?}", g.adapter(), g.profiling());
    g
}

/// Device time of one call of `f` (timestamps around each dispatch): (span of the submission,
/// busy time of dispatches labelled `label`), in ms; `None` without timestamps.
fn device_ms(
    g: &mut GpuBackend,
    label: &str,
    mut f: impl FnMut(&mut GpuBackend),
) -> Option<(f64, f64)> {
    if g.profiling() != Profiling::On {
        return None;
    }
    g.sync();
    g.take_profile();
    orchard_gpu::set_profiling(true);
    let reps = 10;
    for _ in 0..reps {
        f(g);
        g.sync();
    }
    orchard_gpu::set_profiling(false);
    let p = g.take_profile();
    let busy: u64 = p
        .rows
        .iter()
        .filter(|r| {
            r.label == label
                || (label == "AttnDecode"
                    && ["AttnDecodeSplit", "AttnCombine"].contains(&r.label.as_str()))
        })
        .map(|r| r.busy_ns)
        .sum();
    Some((
        p.span_ns as f64 / 1e6 / reps as f64,
        busy as f64 / 1e6 / reps as f64,
    ))
}

/// `--decode-attn`: one decode token's attention (its KV store, then attention over the
/// sequence's cells) at 64, 512 and 4096 cells, 8B and SmolLM2 head shapes, old per-head
/// `ATTENTION` and `ATTN_DECODE` side by side, each in the exact f16 mode and the f32 mode
/// (`set_attn_exact`), then `ATTN_DECODE` split over the cells (flash-decoding, f32, with its
/// combine kernel's device time included): ms per call in a stream of 50 (wall, host
/// encoding included), the attention dispatch's device time where timestamps exist, NMSE
/// against `CpuBackend`, and whether the two kernels agree bit for bit.
fn bench_decode_attn() {
    let mut g = profiling_gpu();
    for (name, nh, nkv, hd, p) in bench_heads() {
        for ctx in [64usize, 512, 4096] {
            let mut seed = 0x1234_5678u64 ^ ctx as u64;
            let mut rnd = |len: usize| xorshift_values(&mut seed, len);
            // Sequence 0 decodes at position ctx - 1; sequences 1.. (64 cells each, the same
            // cells) fill the cache in one prompt step first.
            let cells: Vec<u32> = (0..ctx as u32).collect();
            let mut tables: Vec<&[u32]> = vec![&cells];
            tables.extend(cells.chunks(64));
            let fill: Vec<TokenSlot> = (1..tables.len() as u32)
                .flat_map(|s| (0..64).map(move |pos| TokenSlot { seq: s, pos }))
                .collect();
            let dec = [TokenSlot {
                seq: 0,
                pos: ctx as u32 - 1,
            }];
            let (fq, fk, fv) = (rnd(ctx * nh * hd), rnd(ctx * nkv * hd), rnd(ctx * nkv * hd));
            let (dq, dk, dv) = (rnd(nh * hd), rnd(nkv * hd), rnd(nkv * hd));
            let fill_batch = AttnBatch {
                tokens: &fill,
                cells: &tables,
            };
            let batch = AttnBatch {
                tokens: &dec,
                cells: &tables,
            };
            let setup = |b: &mut dyn Backend| {
                b.alloc_kv(0, ctx, nkv * hd, nkv * hd).unwrap();
                let (q, k, v, o) = (
                    b.alloc(ctx, nh * hd),
                    b.alloc(ctx, nkv * hd),
                    b.alloc(ctx, nkv * hd),
                    b.alloc(ctx, nh * hd),
                );
                b.upload(q, &fq);
                b.upload(k, &fk);
                b.upload(v, &fv);
                b.attention(0, q, k, v, &fill_batch, &p, o).unwrap();
                let (q, k, v, o) = (
                    b.alloc(1, nh * hd),
                    b.alloc(1, nkv * hd),
                    b.alloc(1, nkv * hd),
                    b.alloc(1, nh * hd),
                );
                b.upload(q, &dq);
                b.upload(k, &dk);
                b.upload(v, &dv);
                (q, k, v, o)
            };
            let mut cpu = CpuBackend::new();
            let (q, k, v, o) = setup(&mut cpu);
            cpu.attention(0, q, k, v, &batch, &p, o).unwrap();
            let mut want = Vec::new();
            cpu.download(o, &mut want);
            let (q, k, v, o) = setup(&mut g);
            // Reference per mode (exact f16, f32): the two kernels agree bit for bit in each.
            let mut first: [Option<Vec<f32>>; 2] = [None, None];
            let exact0 = g.attn_exact();
            for round in 0..2 {
                for (kernel, group, exact, split) in [
                    ("old ATTENTION", 0u32, true, 0u32),
                    ("ATTN_DECODE", 4, true, 0),
                    ("old ATTENTION", 0, false, 0),
                    ("ATTN_DECODE", 4, false, 0),
                    ("ATTN_DEC split", 4, false, 1024),
                ] {
                    g.set_attn_decode(group);
                    g.set_attn_exact(exact);
                    g.set_attn_split(split);
                    let t = time_ops(&mut g, 50, |g| {
                        g.attention(0, q, k, v, &batch, &p, o).unwrap()
                    });
                    let label = if group == 0 {
                        "Attention"
                    } else {
                        "AttnDecode"
                    };
                    let dev = device_ms(&mut g, label, |g| {
                        g.attention(0, q, k, v, &batch, &p, o).unwrap()
                    });
                    let mut got = Vec::new();
                    g.download(o, &mut got);
                    let same = match &first[usize::from(!exact)] {
                        None => {
                            first[usize::from(!exact)] = Some(got.clone());
                            "reference".to_string()
                        }
                        Some(f) => {
                            let d = f
                                .iter()
                                .zip(&got)
                                .filter(|(a, b)| a.to_bits() != b.to_bits())
                                .count();
                            if d == 0 {
                                "bit-identical".into()
                            } else {
                                format!("{d} values differ")
                            }
                        }
                    };
                    println!(
                        "decode attn {name} heads {nh}/{nkv} dim {hd} ctx {ctx:>4} {kernel:<13} {} (round {}): {:.4} ms/call{}, NMSE vs CPU {:.2e}, {same}",
                        if exact { "f16 exact" } else { "f32      " },
                        round + 1,
                        t * 1e3,
                        dev.map_or(String::new(), |(span, busy)| format!(
                            " (device: attention {busy:.4} ms, submission {span:.4} ms)"
                        )),
                        nmse(&got, &want)
                    );
                }
            }
            g.set_attn_decode(4);
            g.set_attn_split(1024);
            g.set_attn_exact(exact0);
            let errs = g.take_errors();
            assert!(errs.is_empty(), "GPU errors: {errs:?}");
        }
    }
}

/// `--floor`: 300 dispatches of a trivial kernel (an in-place scale of 64 values) in one
/// submission, (a) chained through one buffer, (b) each on its own buffer: wall time per
/// dispatch (host recording and encoding included), and with timestamps the device's span of
/// the submission per dispatch (launch + barrier floor) and the mean gap between dispatches.
fn bench_floor() {
    let mut g = profiling_gpu();
    let n = 300;
    g.set_flush_every(10 * n);
    let xs: Vec<_> = (0..n)
        .map(|_| {
            let b = g.alloc(1, 64);
            g.upload(b, &[1.0; 64]);
            b
        })
        .collect();
    for round in 0..2 {
        for (what, chained) in [
            ("dependent (one buffer)", true),
            ("independent (300 buffers)", false),
        ] {
            let f = |g: &mut GpuBackend| {
                for (i, &x) in xs.iter().enumerate() {
                    g.scale(
                        if chained { xs[0] } else { x },
                        if i % 2 == 0 { 2.0 } else { 0.5 },
                    );
                }
            };
            let t = time_ops(&mut g, 1, f);
            // Host side alone: recording the 300 ops (encoding happens at the sync).
            let th = Instant::now();
            f(&mut g);
            let host = th.elapsed().as_secs_f64();
            g.sync();
            let dev = device_ms(&mut g, "Elementwise", f);
            println!(
                "floor {what} (round {}): {:.2} us/dispatch wall (recording {:.2} us of it){}",
                round + 1,
                t * 1e6 / n as f64,
                host * 1e6 / n as f64,
                dev.map_or(String::new(), |(span, busy)| format!(
                    "; device: {:.2} us/dispatch span, {:.2} us busy",
                    span * 1e3 / n as f64,
                    busy * 1e3 / n as f64
                ))
            );
        }
    }
    let errs = g.take_errors();
    assert!(errs.is_empty(), "GPU errors: {errs:?}");
}

/// `--foreign-cm2`: llama.cpp's Q4_K layout (144-byte blocks, header first) of random blocks,
/// random f16 activations, its push constants for one unsplit product, and its 128 x 256 grid.
#[cfg(feature = "cm2-spv-override")]
fn bench_foreign_cm2(a: &Args, path: &str) {
    let (cols, rows) = a.shape;
    let n = 512usize;
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&std::fs::read(path).expect("module"));
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    let blocks = rows * cols / 256;
    let mut wa = vec![0u8; blocks * 144];
    for b in wa.chunks_mut(144) {
        for x in b.iter_mut() {
            *x = next() as u8;
        }
        // d and dmin: small positive halves (2^-8 .. 2^-7)
        for h in 0..2 {
            let bits = 0x1C00u16 | (next() as u16 & 0x3FF);
            b[2 * h..2 * h + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    let xb: Vec<u8> = (0..n * cols)
        .flat_map(|_| {
            let r = next();
            (0x3800u16 | (r as u16 & 0x3FF) | (((r >> 10) & 1) as u16) << 15).to_le_bytes()
        })
        .collect();
    let (m, k) = (rows as u32, cols as u32);
    let imm = [
        m,
        n as u32,
        k,
        k,
        k,
        m,
        m * k,
        n as u32 * k,
        m * n as u32,
        0,
        1,
        k,
        1,
        1,
        1,
        1,
        n as u32,
    ];
    let groups = [m.div_ceil(128), (n as u32).div_ceil(256), 1];
    let mut g = GpuBackend::new(None).expect("GPU");
    match g.time_foreign_cm2(words, &wa, &xb, (rows * n * 4) as u64, &imm, groups, 50) {
        Ok(s) => println!(
            "foreign cm2 {path} {cols}x{rows}: n=512 {:.3} ms {:.2} TFLOP/s",
            s * 1e3,
            2.0 * (cols * rows * n) as f64 / s / 1e12
        ),
        Err(e) => println!("foreign cm2 {path}: {e}"),
    }
}

#[cfg(feature = "cm2-spv-override")]
fn cm2_stats(a: &Args) {
    let g = GpuBackend::new(None).expect("GPU");
    // ORCHARD_BENCH_CM2_TILES: our modules listed (default all; empty for none).
    let tiles = std::env::var("ORCHARD_BENCH_CM2_TILES")
        .unwrap_or_else(|_| "128x128x64,128x256x64h,128x64x32".into());
    let mut list: Vec<(String, Option<Vec<u32>>, bool)> = tiles
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| (t.to_string(), None, false))
        .collect();
    if let Some(p) = &a.foreign_cm2 {
        let w = bytemuck::pod_collect_to_vec(&std::fs::read(p).expect("module"));
        list.push((p.clone(), Some(w), true));
    }
    // ORCHARD_BENCH_SPV_STATS: other modules, `path:uniforms:storage` each, comma-separated
    // (the WGSL kernels as `ORCHARD_SPV_DUMP` writes them: one uniform block, then storage).
    for spec in std::env::var("ORCHARD_BENCH_SPV_STATS")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let f: Vec<&str> = spec.split(':').collect();
        let (path, u, st) = (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
        let w: Vec<u32> = bytemuck::pod_collect_to_vec(&std::fs::read(path).expect("module"));
        match g.spirv_pipeline_statistics(&w, u, st, 0) {
            Ok(stats) => {
                let s: Vec<String> = stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("spv stats {path}: {}", s.join(", "));
            }
            Err(e) => println!("spv stats {path}: {e}"),
        }
    }
    for (name, words, foreign) in list {
        match g.cm2_pipeline_statistics(words, &name, foreign) {
            Ok(stats) => {
                let s: Vec<String> = stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("cm2 stats {name}: {}", s.join(", "));
            }
            Err(e) => println!("cm2 stats {name}: {e}"),
        }
    }
}

fn main() {
    let a = parse();
    if a.cm2_stats {
        #[cfg(feature = "cm2-spv-override")]
        cm2_stats(&a);
        #[cfg(not(feature = "cm2-spv-override"))]
        println!("--cm2-stats: built without feature cm2-spv-override");
        return;
    }
    if let Some(p) = &a.foreign_cm2 {
        #[cfg(feature = "cm2-spv-override")]
        bench_foreign_cm2(&a, p);
        #[cfg(not(feature = "cm2-spv-override"))]
        println!("--foreign-cm2 {p}: built without feature cm2-spv-override");
    }
    if a.kernels {
        bench_kernels(&a);
    }
    if a.attn {
        bench_attn(a.p);
    }
    if a.decode_attn {
        bench_decode_attn();
    }
    if a.floor {
        bench_floor();
    }
    let mut models = a.models.clone();
    for (shape, p) in &a.synth {
        let mut spec = match shape.as_str() {
            "8b" => SynthSpec::llama_8b("Q4_K_M"),
            "smollm2" => SynthSpec::smollm2_135m("Q4_K_M"),
            "gemma3" | "gemma3-270m" => SynthSpec::gemma3_270m("Q4_K_M"),
            other => panic!("unknown shape {other}"),
        };
        // Values do not change speed; 1024 distinct rows per tensor keep writing fast.
        spec.row_pool = Some(1024);
        let t = Instant::now();
        let s = write_synthetic_llama(std::path::Path::new(p), &spec).expect("synthetic model");
        eprintln!(
            "wrote {p}: {:.2} B params, {:.2} GiB in {:.1} s",
            s.n_params as f64 / 1e9,
            s.tensor_bytes as f64 / (1u64 << 30) as f64,
            t.elapsed().as_secs_f64()
        );
        models.push(p.clone());
    }
    if a.write_only {
        return;
    }
    for m in &models {
        bench_model(m, &a);
    }
}
