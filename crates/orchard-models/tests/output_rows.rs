//! Rows that need no logits skip the last layer's feed-forward block (`Step::keep_out_rows`,
//! as llama.cpp's graphs do with `inp_out_ids`). The logits of the rows asked for, in the order
//! asked, equal those of a batch that asks for every row up to the float order of the last
//! layer's matmuls (which depends on their row count); the next row's are far from them.

mod common;
use common::*;
use orchard_backend::TokenSlot;
use orchard_models::{Batch, Context, ContextOptions, Model};
use std::sync::Arc;

/// Decodes `ids` as one sequence, asking for the logits of `rows` only.
fn logits_of(model: &Arc<Model>, ids: &[u32], rows: &[u32]) -> Vec<Vec<f32>> {
    let mut ctx = Context::new(
        model.clone(),
        ContextOptions {
            n_ctx: ids.len().max(16),
            ..Default::default()
        },
    )
    .unwrap();
    let slots: Vec<TokenSlot> = (0..ids.len())
        .map(|p| TokenSlot {
            seq: 0,
            pos: p as u32,
        })
        .collect();
    let cells: Vec<u32> = (0..ctx.n_cells() as u32).collect();
    let tables = [cells.as_slice()];
    let mut out = Vec::new();
    ctx.decode(
        &Batch {
            tokens: ids,
            slots: &slots,
            cells: &tables,
            logits: rows,
        },
        &mut out,
    )
    .unwrap();
    out.chunks(model.hp.n_vocab).map(|c| c.to_vec()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn check(model_file: &str) {
    let model = load(models_dir().join(model_file));
    let vocab = model.hp.n_vocab as u32;
    let ids: Vec<u32> = (0..40u32)
        .map(|i| (i.wrapping_mul(7919) + 11) % (vocab - 10) + 5)
        .collect();
    let all = logits_of(&model, &ids, &(0..40).collect::<Vec<u32>>());
    let rows = [39u32, 17, 0];
    let some = logits_of(&model, &ids, &rows);
    assert_eq!(some.len(), rows.len());
    for (k, &r) in rows.iter().enumerate() {
        let want = &all[r as usize];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(want, &some[k]);
        assert!(
            diff <= 1e-3 * scale,
            "{model_file}: row {r}: max |diff| {diff} against max |logit| {scale}"
        );
        let next = &all[(r as usize + 1) % ids.len()];
        assert!(
            max_abs_diff(want, next) > 100.0 * diff.max(1e-4),
            "{model_file}: rows {r} and {} too alike to tell a wrong row",
            (r + 1) % 40
        );
    }
}

#[test]
fn smollm2_asked_rows_match_a_batch_that_computes_every_row() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_asked_rows_match_a_batch_that_computes_every_row() {
    check("gemma-3-270m-q4_k_m.gguf");
}
