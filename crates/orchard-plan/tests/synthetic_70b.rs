//! `orchard plan` on a 70B-shaped Q4_K_M model written as a sparse file (header and tensor infos
//! only; the 42 GB of data is a hole): the printed numbers must match a hand calculation.
//! Llama-3-70B's shape: 80 layers, n_embd 8192, n_ff 28672, 64 heads, 8 KV heads of 128,
//! vocabulary 128256.

mod common;

use orchard_core::DType;
use orchard_gguf::{GgufWriter, Value};
use orchard_plan::{plan_with, AvailableMemory, Device, PlanRequest};
use std::path::Path;
use std::process::Command;

const N_LAYER: u64 = 80;
const E: u64 = 8192;
const FF: u64 = 28672;
const HEADS: u64 = 64;
const KV_HEADS: u64 = 8;
const HEAD_DIM: u64 = 128;
const VOCAB: u64 = 128256;

/// llama.cpp's Q4_K_M rule for attn_v and ffn_down: Q6_K in the first and last eighth of the
/// layers and every third layer in between.
fn more_bits(i: u64, n: u64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn write_70b(path: &Path) {
    let mut w = GgufWriter::new();
    let u32v = |v: u64| Value::U32(v as u32);
    w.add_metadata("general.architecture", Value::String("llama".into()));
    w.add_metadata("general.name", Value::String("synthetic 70B".into()));
    w.add_metadata("llama.block_count", u32v(N_LAYER));
    w.add_metadata("llama.context_length", u32v(131072));
    w.add_metadata("llama.embedding_length", u32v(E));
    w.add_metadata("llama.feed_forward_length", u32v(FF));
    w.add_metadata("llama.attention.head_count", u32v(HEADS));
    w.add_metadata("llama.attention.head_count_kv", u32v(KV_HEADS));
    w.add_metadata("llama.rope.dimension_count", u32v(HEAD_DIM));
    w.add_metadata("llama.rope.freq_base", Value::F32(500000.0));
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    w.add_metadata("llama.vocab_size", u32v(VOCAB));
    w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add_metadata(
        "tokenizer.ggml.tokens",
        Value::Array((0..VOCAB).map(|i| Value::String(format!("t{i}"))).collect()),
    );
    let mut hole = |name: String, dims: &[u64], t: DType| {
        w.add_tensor_hole(name, dims.to_vec(), t).unwrap();
    };
    hole("token_embd.weight".into(), &[E, VOCAB], DType::Q4_K);
    hole("output_norm.weight".into(), &[E], DType::F32);
    hole("output.weight".into(), &[E, VOCAB], DType::Q6_K);
    for i in 0..N_LAYER {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        let vd = if more_bits(i, N_LAYER) {
            DType::Q6_K
        } else {
            DType::Q4_K
        };
        hole(b("attn_norm"), &[E], DType::F32);
        hole(b("ffn_norm"), &[E], DType::F32);
        hole(b("attn_q"), &[E, HEADS * HEAD_DIM], DType::Q4_K);
        hole(b("attn_k"), &[E, KV_HEADS * HEAD_DIM], DType::Q4_K);
        hole(b("attn_v"), &[E, KV_HEADS * HEAD_DIM], vd);
        hole(b("attn_output"), &[HEADS * HEAD_DIM, E], DType::Q4_K);
        hole(b("ffn_gate"), &[E, FF], DType::Q4_K);
        hole(b("ffn_up"), &[E, FF], DType::Q4_K);
        hole(b("ffn_down"), &[FF, E], vd);
    }
    w.write_to_path(path).unwrap();
}

// Hand calculation. Q4_K packs 256 weights in 144 bytes, Q6_K in 210.
const Q4K: f64 = 144.0 / 256.0;
const Q6K: f64 = 210.0 / 256.0;

fn layer_bytes(i: u64) -> u64 {
    let q = (E * HEADS * HEAD_DIM) as f64; // attn_q, attn_output
    let kv = (E * KV_HEADS * HEAD_DIM) as f64; // attn_k, attn_v
    let ffn = (E * FF) as f64; // gate, up, down
    let vd = if more_bits(i, N_LAYER) { Q6K } else { Q4K };
    let norms = 2.0 * 4.0 * E as f64;
    (2.0 * q * Q4K + kv * Q4K + kv * vd + 2.0 * ffn * Q4K + ffn * vd + norms) as u64
}

fn hand_weights() -> u64 {
    let layers: u64 = (0..N_LAYER).map(layer_bytes).sum();
    let embd = (E * VOCAB) as f64;
    layers + (embd * Q4K) as u64 + (embd * Q6K) as u64 + 4 * E
}

/// 80 layers x 8 KV heads x 128 x 2 (K and V) x 32768 cells, at `block_bytes` per
/// `block_size` values.
fn hand_kv(block_bytes: u64, block_size: u64) -> u64 {
    N_LAYER * KV_HEADS * HEAD_DIM * 2 * 32768 / block_size * block_bytes
}

/// The byte count printed for the first item starting with `prefix` on `dev`.
fn printed(out: &str, prefix: &str, dev: &str) -> u64 {
    out.lines()
        .filter(|l| l.starts_with(prefix))
        .find_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let i = t.iter().position(|&w| w == dev)?;
            t.get(i + 1)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no '{prefix}' line on {dev} in:\n{out}"))
}

fn run_plan(file: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::example("plan"))
        .arg("-m")
        .arg(file)
        .args(args)
        .output()
        .expect("plan runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn seventy_b_q4_k_m_plan_matches_hand_calculation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("llama-70b-q4_k_m.gguf");
    write_70b(&file);
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(len > 40_000_000_000, "file is {len} bytes");

    let weights = hand_weights();
    assert_eq!(weights, 42_470_588_416);
    // the seed figure: about 40 GB (39.55 GiB)
    assert!((39e9..44e9).contains(&(weights as f64)));
    let kv_f16 = hand_kv(2, 1);
    assert_eq!(kv_f16, 10 << 30);
    // [512, width] f32 buffers: x, 2 norms, attn_out, ffn_out (n_embd), q, k, v, attn, and
    // gate/up/act (n_ff); plus the two [1, n_embd] output rows
    let acts = 512 * (5 * E + E + 1024 + 1024 + E + 3 * FF) * 4 + 2 * E * 4;

    let (ok, out, err) = run_plan(&file, &["-c", "32768", "--memory", "64GiB"]);
    assert!(ok, "{out}\n{err}");
    eprintln!("{out}");
    assert_eq!(printed(&out, "weights:", "CPU"), weights);
    assert_eq!(printed(&out, "KV cache:", "CPU"), kv_f16);
    assert_eq!(printed(&out, "activations", "CPU"), acts);
    let total = printed(&out, "total", "CPU");
    assert!(
        total > weights + kv_f16 + acts && total < weights + kv_f16 + acts + (200 << 20),
        "total {total}"
    );
    assert!(out.contains("fits: yes"), "{out}");
    assert!(
        out.contains("KV cache per token of context: 327680 B"),
        "{out}"
    );

    // KV cache types: q8_0 is 34/64 of f16, q4_0 18/64
    let (ok, out, _) = run_plan(&file, &["-c", "32768", "-ctk", "q8_0", "-ctv", "q8_0"]);
    assert!(out.contains("KV cache:"), "{ok} {out}");
    assert_eq!(printed(&out, "KV cache:", "CPU"), hand_kv(34, 32));
    let (_, out, _) = run_plan(&file, &["-c", "32768", "--ctk", "q4_0", "--ctv", "q4_0"]);
    assert_eq!(printed(&out, "KV cache:", "CPU"), hand_kv(18, 32));

    // 48 GiB is not enough at f16: refused, naming the biggest item and the fixes
    let (ok, out, err) = run_plan(&file, &["-c", "32768", "--memory", "48GiB"]);
    assert!(!ok, "{out}");
    assert!(out.contains("fits: NO"), "{out}");
    for want in [
        "not enough memory",
        "weights: 80 layers",
        "reduce -c to ",
        "use -ctk q8_0 -ctv q8_0",
        "(--memory)",
    ] {
        assert!(err.contains(want), "missing '{want}' in: {err}");
    }
    // the suggested context does fit, one step more does not
    let suggested: usize = err
        .split("reduce -c to ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("a context in the suggestion");
    let avail = AvailableMemory::fixed(48 << 30, None);
    let at = |c| {
        plan_with(
            &file,
            &PlanRequest {
                n_ctx: c,
                ..PlanRequest::default()
            },
            &avail,
        )
        .unwrap()
        .fits()
        .fits
    };
    assert!(at(suggested) && !at(suggested + 256), "{suggested}");

    // -ngl 40: the last 40 layers (20 of them with Q6_K attn_v/ffn_down) and half the KV
    // cache go to the GPU; 24 GiB is too little for that
    let gpu_weights: u64 = (40..N_LAYER).map(layer_bytes).sum();
    let (ok, out, err) = run_plan(
        &file,
        &[
            "-c",
            "32768",
            "-ngl",
            "40",
            "--gpu-memory",
            "24GiB",
            "--memory",
            "64GiB",
        ],
    );
    assert!(!ok);
    assert_eq!(printed(&out, "weights:", "GPU"), gpu_weights);
    assert_eq!(printed(&out, "weights:", "CPU"), weights - gpu_weights);
    assert_eq!(printed(&out, "KV cache:", "GPU"), kv_f16 / 2);
    assert!(err.contains("lower -ngl to "), "{err}");

    // --fit: the most layers that fit in 24 GiB at -c 32768, then the largest context
    let (ok, out, err) = run_plan(
        &file,
        &[
            "-c",
            "32768",
            "--gpu-memory",
            "24GiB",
            "--memory",
            "64GiB",
            "--fit",
        ],
    );
    assert!(ok, "{out}\n{err}");
    let fit_line = out.lines().next().unwrap();
    let nums: Vec<usize> = fit_line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (n_ctx, ngl) = (nums[0], nums[1]);
    assert!((30..40).contains(&ngl) && n_ctx >= 32768, "{fit_line}");
    let fitted = plan_with(
        &file,
        &PlanRequest {
            n_ctx,
            n_gpu_layers: ngl,
            gpu_memory_bytes: Some(24 << 30),
            ..PlanRequest::default()
        },
        &AvailableMemory::fixed(64 << 30, Some(24 << 30)),
    )
    .unwrap();
    assert!(fitted.fits().fits);
    assert!(fitted.total_gpu_bytes <= 24 << 30);
    assert!(fitted.item("weights", Device::Gpu).is_some());
    assert!(out.contains("fits: yes"), "{out}");
}
