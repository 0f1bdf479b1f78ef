//! Shared helpers of the model tests: locating models and parity files, running a batch.

#![allow(dead_code)]

use orchard_backend::TokenSlot;
use orchard_models::{Batch, Context, ContextOptions, Model};
use std::path::PathBuf;
use std::sync::Arc;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models"))
}

/// llama.cpp's reference files and the models they were computed on.
pub fn parity_dir() -> PathBuf {
    workspace_root().join("testdata/parity")
}

/// llama.cpp's outputs for the arithmetic this process computes. `testdata/parity` holds those
/// of its AVX-512 build, which Orchard's AVX-512 and scalar tiers reproduce; on AVX2-only CPUs
/// the SIMD tier follows ggml's AVX2 build instead (its `expf` and reduction orders), whose
/// logits differ from the AVX-512 build's by up to ~1.1 on these models (llama.cpp against
/// itself), so its outputs are in `testdata/parity-avx2` (see the README there).
pub fn reference_dir() -> PathBuf {
    if orchard_quant::active_tier() == orchard_quant::Tier::Avx2 {
        workspace_root().join("testdata/parity-avx2")
    } else {
        parity_dir()
    }
}

pub fn load(path: PathBuf) -> Arc<Model> {
    assert!(
        path.exists(),
        "model {} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

/// Decodes `ids` as one batch of one sequence and returns logits for every position.
pub fn all_logits(model: &Arc<Model>, ids: &[u32]) -> Vec<Vec<f32>> {
    logits_of(model, ids, &(0..ids.len() as u32).collect::<Vec<u32>>())
}

/// Decodes `ids` as one batch of one sequence, asking for the logits of `rows` (in that order).
pub fn logits_of(model: &Arc<Model>, ids: &[u32], rows: &[u32]) -> Vec<Vec<f32>> {
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

pub struct LogitCase {
    pub ids: Vec<u32>,
    pub top5: Vec<Vec<(u32, f32)>>,
}

pub fn read_logit_cases(path: PathBuf) -> Vec<LogitCase> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let top5 = v["top5"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pos| {
                    pos.as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
                        .collect()
                })
                .collect();
            LogitCase { ids, top5 }
        })
        .collect()
}

/// The parity bar of the issues: top-1 equal wherever the reference top-2 margin exceeds 0.1;
/// each reference top-5 logit within 0.1 of ours, mean difference under 0.02.
/// Returns (max diff, mean diff, top-1 mismatches at confident positions).
pub fn compare_logits(case: &LogitCase, ours: &[Vec<f32>]) -> (f32, f32, usize) {
    let mut max = 0.0f32;
    let mut sum = 0.0f64;
    let mut count = 0usize;
    let mut top1_bad = 0;
    for (p, reference) in case.top5.iter().enumerate() {
        let row = &ours[p];
        for &(id, logit) in reference {
            let d = (row[id as usize] - logit).abs();
            max = max.max(d);
            sum += d as f64;
            count += 1;
        }
        let margin = reference[0].1 - reference[1].1;
        let argmax = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0;
        if margin > 0.1 && argmax as u32 != reference[0].0 {
            top1_bad += 1;
        }
    }
    (max, (sum / count as f64) as f32, top1_bad)
}
