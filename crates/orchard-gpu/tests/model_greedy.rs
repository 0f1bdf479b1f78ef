//! Whole-model parity: greedy generation with layers offloaded to the GPU (all of them with the
//! output head, `-ngl 999`, and a partial `-ngl`) must produce the same tokens as the CPU
//! wherever the CPU's choice is not a near-tie.
//! Models come from `ORCHARD_MODELS` (default `<workspace>/models`); a missing model fails.

use orchard_backend::TokenSlot;
use orchard_gpu::GpuBackend;
use orchard_models::{Batch, Context, ContextOptions, Model};
use std::path::PathBuf;
use std::sync::Arc;

fn models_dir() -> PathBuf {
    std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn load(name: &str) -> Arc<Model> {
    let path = models_dir().join(name);
    assert!(
        path.exists(),
        "model {} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}

/// Feeds `prompt` as one batch, then one token at a time: the model's own greedy choice, or,
/// when `forced` is given, those tokens (teacher forcing, so that both backends see the same
/// sequence). Returns the chosen tokens and each step's logits.
fn greedy(
    ctx: &mut Context,
    prompt: &[u32],
    n: usize,
    forced: Option<&[u32]>,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let cells: Vec<u32> = (0..ctx.n_cells() as u32).collect();
    let tables = [cells.as_slice()];
    let mut out = Vec::new();
    let mut logits = Vec::new();
    let mut generated = Vec::new();
    let mut tokens = prompt.to_vec();
    let mut pos = 0u32;
    for step in 0..n {
        let slots: Vec<TokenSlot> = (0..tokens.len() as u32)
            .map(|i| TokenSlot {
                seq: 0,
                pos: pos + i,
            })
            .collect();
        let last = [tokens.len() as u32 - 1];
        ctx.decode(
            &Batch {
                tokens: &tokens,
                slots: &slots,
                cells: &tables,
                logits: &last,
            },
            &mut out,
        )
        .unwrap();
        logits.push(out.clone());
        pos += tokens.len() as u32;
        let next = argmax(&out);
        generated.push(next);
        tokens = vec![forced.map_or(next, |f| f[step])];
    }
    (generated, logits)
}

/// Top-1 minus top-2 logit.
fn margin(v: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in v {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// The GPU must pick the CPU's greedy token at every step where the CPU's choice is not a
/// near-tie (top-2 margin above `MARGIN`), and its logits must stay close to the CPU's.
/// Every op agrees with the CPU to f32 rounding on identical inputs (tests/model_ops_dual.rs),
/// but rounding differences flip a few 8-bit activation levels, which the following layers
/// amplify, so whole-model logits differ by ~0.1 and a near-tie can go either way; a
/// free-running comparison (`free_run`) then diverges after the first flip. Measured on
/// lavapipe (teacher-forced, 16 steps): Gemma 3 16/16 equal at -ngl 999 and 10, SmolLM2 15/16
/// at both (one near-tie); mean logit differences 0.1-0.18. With the integer-dot K-quant
/// matrix-vector kernels (whose integer sums equal the CPU's), at -ngl 999: 15/16 for both,
/// mean differences 0.20 (Gemma 3) and 0.18 (SmolLM2), and free-running output still diverges
/// after the first near-tie: the remaining differences come from float summation order (block
/// sums, norms, attention), which differs between the CPU's SIMD tiers themselves.
const MARGIN: f32 = 0.25;
const N_GEN: usize = 16;

fn check(model_file: &str, prompt: &[u32], partial_ngl: usize, free_run: bool) {
    check_with(model_file, prompt, &[999, partial_ngl], free_run, None);
}

/// `check` at the given `-ngl` values, with the GPU's exact f16 decode attention forced on or
/// off where `attn_exact` says (else the adapter's default: on for lavapipe).
fn check_with(
    model_file: &str,
    prompt: &[u32],
    ngls: &[usize],
    free_run: bool,
    attn_exact: Option<bool>,
) {
    let new_gpu = || {
        let mut gpu = GpuBackend::new(None).expect("a GPU adapter");
        if let Some(on) = attn_exact {
            gpu.set_attn_exact(on);
        }
        gpu
    };
    let model = load(model_file);
    let opts = ContextOptions {
        n_ctx: 128,
        ..Default::default()
    };
    let mut cpu = Context::new(model.clone(), opts.clone()).unwrap();
    let (want, want_logits) = greedy(&mut cpu, prompt, N_GEN, None);
    for &ngl in ngls {
        let gpu = new_gpu();
        let mut ctx =
            Context::with_offload(model.clone(), opts.clone(), Some((Box::new(gpu), ngl))).unwrap();
        assert_eq!(ctx.backend_names().len(), 2);
        let (got, got_logits) = greedy(&mut ctx, prompt, N_GEN, Some(&want));
        let mut max_diff = 0.0f32;
        let mut sum_diff = 0.0f64;
        let mut n_diff = 0usize;
        let mut same = 0;
        for (step, (g, c)) in got_logits.iter().zip(&want_logits).enumerate() {
            for (a, b) in g.iter().zip(c) {
                max_diff = max_diff.max((a - b).abs());
                sum_diff += (a - b).abs() as f64;
                n_diff += 1;
            }
            same += usize::from(got[step] == want[step]);
            let m = margin(c);
            assert!(
                got[step] == want[step] || m <= MARGIN,
                "{model_file} ngl={ngl} step {step}: GPU picked {} over the CPU's {} (CPU margin {m})",
                got[step],
                want[step]
            );
        }
        let mean_diff = sum_diff / n_diff as f64;
        eprintln!(
            "{model_file} ngl={ngl} attn_exact={attn_exact:?}: {same}/{N_GEN} greedy tokens equal; logits max diff {max_diff:.3}, mean {mean_diff:.4}"
        );
        // The CPU quantizes activations to 8 bits before every matmul (as ggml does) and the
        // GPU does not, so logits differ by that noise accumulated over the layers (measured:
        // mean 0.1-0.2, max 0.7-1.7 over 16 steps of every vocabulary entry); a misread weight or a broken
        // kernel gives differences of whole units.
        assert!(
            mean_diff < 0.3,
            "{model_file} ngl={ngl}: mean logit diff {mean_diff}"
        );
        assert!(
            max_diff < 2.5,
            "{model_file} ngl={ngl}: max logit diff {max_diff}"
        );
        if free_run {
            let gpu = new_gpu();
            let mut ctx =
                Context::with_offload(model.clone(), opts.clone(), Some((Box::new(gpu), ngl)))
                    .unwrap();
            let (free, _) = greedy(&mut ctx, prompt, N_GEN, None);
            assert_eq!(
                free, want,
                "{model_file} ngl={ngl}: free-running greedy tokens differ"
            );
        }
    }
}

#[test]
fn smollm2_greedy_matches_cpu() {
    // "The capital of France is" style prompt taken from the parity corpus.
    let prompt = [
        2089, 23362, 288, 11494, 436, 3318, 15195, 37099, 43, 284, 2221, 198,
    ];
    check("SmolLM2-135M-Instruct.Q4_1.gguf", &prompt, 10, false);
}

/// Decode attention accumulated in f32 (`set_attn_exact(false)`, the default on real GPUs)
/// instead of the CPU's f16 rounding: the same greedy tokens wherever the CPU's choice is not
/// a near-tie, and logits as close to the CPU's as the exact mode's.
#[test]
fn smollm2_greedy_f32_attention_matches_cpu() {
    let prompt = [
        2089, 23362, 288, 11494, 436, 3318, 15195, 37099, 43, 284, 2221, 198,
    ];
    check_with(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        &prompt,
        &[999],
        false,
        Some(false),
    );
}

/// A 72-token prompt: 64 or more queries in one step take the tiled prefill attention
/// (`ATTN_TILE`) on the GPU and the CPU's f32 attention path.
#[test]
fn smollm2_long_prompt_greedy_matches_cpu() {
    let base = [
        2089u32, 23362, 288, 11494, 436, 3318, 15195, 37099, 43, 284, 2221, 198,
    ];
    let prompt: Vec<u32> = base.iter().copied().cycle().take(72).collect();
    check("SmolLM2-135M-Instruct.Q4_1.gguf", &prompt, 10, false);
}

#[test]
fn gemma3_greedy_matches_cpu() {
    let prompt = [
        2, 2267, 25417, 531, 12441, 691, 4949, 24347, 75194, 236793, 532, 3016,
    ];
    check("gemma-3-270m-q4_k_m.gguf", &prompt, 10, false);
}
