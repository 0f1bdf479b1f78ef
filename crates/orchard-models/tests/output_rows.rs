//! Rows that need no logits skip the last layer's feed-forward block (`Step::keep_out_rows`,
//! as llama.cpp's graphs do with `inp_out_ids`). The logits of the rows asked for, in the order
//! asked, equal those of a batch that asks for every row up to the float order of the last
//! layer's matmuls (which depends on their row count); the next row's are far from them.

mod common;
use common::*;

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
