//! Greedy continuations against llama.cpp's (`*/greedy.jsonl` in [`reference_dir`]): the prompt
//! decoded as one batch, then one token at a time by argmax.

mod common;
use common::*;
use orchard_backend::TokenSlot;
use orchard_models::{Batch, Context, ContextOptions};

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
            if v > b.1 {
                (i, v)
            } else {
                b
            }
        })
        .0 as u32
}

fn check(model_file: &str, greedy_file: &str) {
    let model = load(models_dir().join(model_file));
    let text = std::fs::read_to_string(reference_dir().join(greedy_file)).unwrap();
    let (mut full, mut total) = (0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ids = |k: &str| -> Vec<u32> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, want) = (ids("prompt_ids"), ids("completion_ids"));
        let margins: Vec<f64> = v["top2_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let n_ctx = prompt.len() + want.len() + 1;
        let mut ctx = Context::new(
            model.clone(),
            ContextOptions {
                n_ctx,
                ..Default::default()
            },
        )
        .unwrap();
        let cells: Vec<u32> = (0..n_ctx as u32).collect();
        let tables = [cells.as_slice()];
        let mut logits = Vec::new();
        let slots: Vec<TokenSlot> = (0..prompt.len())
            .map(|p| TokenSlot {
                seq: 0,
                pos: p as u32,
            })
            .collect();
        let last = [prompt.len() as u32 - 1];
        ctx.decode(
            &Batch {
                tokens: &prompt,
                slots: &slots,
                cells: &tables,
                logits: &last,
            },
            &mut logits,
        )
        .unwrap();
        let mut got = Vec::new();
        for step in 0..want.len() {
            let t = argmax(&logits);
            got.push(t);
            if step + 1 == want.len() {
                break;
            }
            let slot = [TokenSlot {
                seq: 0,
                pos: (prompt.len() + step) as u32,
            }];
            ctx.decode(
                &Batch {
                    tokens: &[t],
                    slots: &slot,
                    cells: &tables,
                    logits: &[0],
                },
                &mut logits,
            )
            .unwrap();
        }
        // Up to the first step whose reference margin is under 0.1 the tokens must agree.
        let confident = margins.iter().position(|&m| m < 0.1).unwrap_or(want.len());
        assert_eq!(
            got[..confident],
            want[..confident],
            "{}: diverged before the first low-margin step",
            v["prompt"]
        );
        total += 1;
        if got == want {
            full += 1;
        }
        eprintln!(
            "{model_file}: {:?} -> {} tokens, full match {}",
            v["prompt"].as_str().unwrap_or(""),
            want.len(),
            got == want
        );
    }
    assert!(
        full * 10 >= total * 9,
        "{full}/{total} prompts match over the full length (need 9 of 10)"
    );
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    check(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-q4_1/greedy.jsonl",
    );
}

#[test]
fn gemma3_greedy_matches_llama_cpp() {
    check(
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3-270m-q4_k_m/greedy.jsonl",
    );
}
