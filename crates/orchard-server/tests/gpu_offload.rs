//! `-ngl` in the server: with every layer on the GPU (Mesa's lavapipe in CI, set
//! `WGPU_BACKEND=vulkan`), a greedy completion gives exactly the tokens of the same model run
//! through `Context::with_offload` on that GPU, and `-dev none` keeps the CPU.

mod common;

use common::{model_path, TestServer};
use orchard_backend::TokenSlot;
use orchard_models::{Batch, Context, ContextOptions, Model};
use serde_json::json;
use std::sync::Arc;

const PROMPT: &str = "Once upon a time";
const N: usize = 6;

/// Greedy tokens of `prompt_ids` on a context with all layers on the GPU: the prompt as one
/// batch, then one token per step (what the server does for a single request).
fn greedy_on_gpu(prompt_ids: &[u32]) -> Vec<u32> {
    let model = Arc::new(Model::load(model_path()).expect("model"));
    let gpu = orchard_gpu::GpuBackend::new(None).expect("a GPU adapter (lavapipe in CI)");
    let opts = ContextOptions {
        n_ctx: 256,
        ..ContextOptions::default()
    };
    let mut ctx = Context::with_offload(model, opts, Some((Box::new(gpu), 999))).expect("context");
    let cells: Vec<u32> = (0..256).collect();
    let tables = [cells.as_slice()];
    let (mut tokens, mut pos, mut out) = (prompt_ids.to_vec(), 0u32, Vec::new());
    let mut logits = Vec::new();
    for _ in 0..N {
        let slots: Vec<TokenSlot> = (0..tokens.len() as u32)
            .map(|i| TokenSlot {
                seq: 0,
                pos: pos + i,
            })
            .collect();
        let last = [tokens.len() as u32 - 1];
        let batch = Batch {
            tokens: &tokens,
            slots: &slots,
            cells: &tables,
            logits: &last,
        };
        ctx.decode(&batch, &mut logits).expect("decode");
        let next = logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0 as u32;
        pos += tokens.len() as u32;
        out.push(next);
        tokens = vec![next];
    }
    out
}

fn completion_tokens(s: &TestServer) -> (Vec<u32>, Vec<u32>) {
    let r = s.post(
        "/completion",
        &json!({"prompt": PROMPT, "n_predict": N, "temperature": 0, "return_tokens": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .expect("token array")
            .iter()
            .map(|t| t.as_u64().expect("id") as u32)
            .collect()
    };
    let tok = s.post(
        "/tokenize",
        &json!({"content": PROMPT, "add_special": true}),
    );
    (ids(&tok.json()["tokens"]), ids(&v["tokens"]))
}

#[test]
fn all_layers_on_the_gpu_give_the_gpu_contexts_greedy_tokens() {
    let s = TestServer::start(&["-c", "1024", "-np", "1", "-ngl", "999"]);
    let (prompt_ids, served) = completion_tokens(&s);
    drop(s);
    assert_eq!(served.len(), N);
    assert_eq!(served, greedy_on_gpu(&prompt_ids));
}

#[test]
fn device_none_keeps_the_cpu() {
    let s = TestServer::start(&["-c", "1024", "-np", "1", "-ngl", "999", "-dev", "none"]);
    let (_, served) = completion_tokens(&s);
    let cpu = TestServer::start(&["-c", "1024", "-np", "1"]);
    let (_, on_cpu) = completion_tokens(&cpu);
    assert_eq!(served, on_cpu);
}
