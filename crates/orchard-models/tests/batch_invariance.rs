//! A sequence computes the same bits alone and inside a continuous batch with other sequences:
//! the CPU kernels whose float order depends on the batch size (ggml's grouped Q4_K and tiled
//! Q6_K matmuls, the tiled attention from 64 queries) decide per sequence. This is what lets
//! the server promise that a request's greedy output does not depend on the traffic around it.

mod common;
use common::*;
use orchard_backend::TokenSlot;
use orchard_models::{Batch, Context, ContextOptions};

/// Token ids of a prompt: deterministic, spread over the vocabulary.
fn prompt(n: usize, salt: u32, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(7919).wrapping_add(salt * 104_729) % (vocab - 10)) + 5)
        .collect()
}

/// Runs `seqs` (each a prompt) through one context, first all prompts in one batch (sequence
/// after sequence), then one decode step of every sequence together; returns the logits of
/// each sequence's last prompt token and of its decode step.
fn run(model_file: &str, seqs: &[Vec<u32>]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let model = load(models_dir().join(model_file));
    let per_seq = 256;
    let mut ctx = Context::new(
        model.clone(),
        ContextOptions {
            n_ctx: per_seq * seqs.len(),
            ..Default::default()
        },
    )
    .unwrap();
    let tables: Vec<Vec<u32>> = (0..seqs.len())
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let cells: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
    let mut tokens = Vec::new();
    let mut slots = Vec::new();
    let mut last = Vec::new();
    for (s, p) in seqs.iter().enumerate() {
        for (i, &t) in p.iter().enumerate() {
            tokens.push(t);
            slots.push(TokenSlot {
                seq: s as u32,
                pos: i as u32,
            });
        }
        last.push(tokens.len() as u32 - 1);
    }
    let vocab = model.hp.n_vocab;
    let mut logits = Vec::new();
    ctx.decode(
        &Batch {
            tokens: &tokens,
            slots: &slots,
            cells: &cells,
            logits: &last,
        },
        &mut logits,
    )
    .unwrap();
    let prefill: Vec<Vec<f32>> = logits.chunks(vocab).map(|c| c.to_vec()).collect();
    // The decode token depends on the sequence only (the same alone and batched).
    let next: Vec<u32> = seqs.iter().map(|p| 100 + p.len() as u32).collect();
    let slots: Vec<TokenSlot> = seqs
        .iter()
        .enumerate()
        .map(|(s, p)| TokenSlot {
            seq: s as u32,
            pos: p.len() as u32,
        })
        .collect();
    let all: Vec<u32> = (0..seqs.len() as u32).collect();
    ctx.decode(
        &Batch {
            tokens: &next,
            slots: &slots,
            cells: &cells,
            logits: &all,
        },
        &mut logits,
    )
    .unwrap();
    prefill
        .into_iter()
        .zip(logits.chunks(vocab).map(|c| c.to_vec()))
        .collect()
}

fn check(model_file: &str) {
    let vocab = load(models_dir().join(model_file)).hp.n_vocab as u32;
    // 70 tokens takes the tiled attention and the grouped matmul orders alone; 6 and 13 take
    // the per-query attention and leave ragged groups. Batched together they make 89 rows.
    let seqs = vec![
        prompt(70, 1, vocab),
        prompt(6, 2, vocab),
        prompt(13, 3, vocab),
    ];
    let together = run(model_file, &seqs);
    for (s, p) in seqs.iter().enumerate() {
        let alone = run(model_file, std::slice::from_ref(p));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&alone[0].0) == bits(&together[s].0),
            "{model_file}: sequence {s} prompt logits differ alone vs batched"
        );
        assert!(
            bits(&alone[0].1) == bits(&together[s].1),
            "{model_file}: sequence {s} decode logits differ alone vs batched"
        );
    }
}

#[test]
fn smollm2_sequences_compute_the_same_bits_alone_and_batched() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_sequences_compute_the_same_bits_alone_and_batched() {
    check("gemma-3-270m-q4_k_m.gguf");
}
