//! Input data shared by the legacy-format tests: llama.cpp's synthetic test data, blocks of widely
//! varying scale, and blocks probing the quantizers' edge cases. Included with `#[path]` by the
//! legacy test files only, so the shared `common` module stays format-agnostic.

#![allow(dead_code)]

use super::common::Rng;

/// test-quantize-fns.cpp's `generate_data`: `0.1 + amplitude * cosf(i + offset)`, the sum taken
/// in double as the C promotes it.
pub fn generate_data(offset: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1 + (2.0 * (i as f32 + offset).cos()) as f64) as f32)
        .collect()
}

/// Normal data whose scale changes from block to block by up to six orders of magnitude, so
/// the f16 scales cover a wide range.
pub fn varied_blocks(rng: &mut Rng, n_blocks: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n_blocks * 32);
    for _ in 0..n_blocks {
        let scale = 10f32.powf(rng.uniform() * 6.0 - 3.0);
        let shift = if rng.below(4) == 0 {
            rng.normal() * scale * 3.0
        } else {
            0.0
        };
        x.extend((0..32).map(|_| rng.normal() * scale + shift));
    }
    x
}

/// Blocks that probe the quantizers' edge cases: exact rounding ties, equal extremes of
/// opposite sign, tiny scales that round to zero in f16, and f16 range limits. Non-finite
/// inputs are left out: ggml's float-to-int casts are undefined there.
pub fn edge_blocks() -> Vec<f32> {
    let mut x = Vec::new();
    // Ties for Q8_0/Q8_1: with amax = 127 the scale is 1, so k + 0.5 must round away from 0.
    x.extend((0..32).map(|i| {
        if i == 0 {
            127.0
        } else {
            (i as f32 - 16.0) + 0.5
        }
    }));
    // Opposite-signed extremes, both orders.
    x.extend((0..32).map(|i| match i {
        3 => -4.0,
        9 => 4.0,
        _ => (i as f32) * 0.1 - 1.5,
    }));
    x.extend((0..32).map(|i| match i {
        3 => 4.0,
        9 => -4.0,
        _ => (i as f32) * 0.1 - 1.5,
    }));
    // Scales below f16's subnormal range.
    x.extend((0..32).map(|i| (i as f32 - 15.5) * 1e-9));
    x.extend((0..32).map(|i| (i as f32 - 15.5) * 1e-30));
    // Around f16's largest finite value and its rounding-to-infinity edge.
    x.extend((0..32).map(|i| 65504.0 + i as f32 * 0.5 - 4.0));
    x.extend((0..32).map(|i| if i % 2 == 0 { 65520.0 } else { -70000.0 }));
    // Values exactly halfway between f16 and bf16 neighbours.
    x.extend((0..32).map(|i| 1.0 + (2 * i + 1) as f32 * 2f32.powi(-11)));
    x.extend((0..32).map(|i| 1.0 + (2 * i + 1) as f32 * 2f32.powi(-8)));
    // Levels landing on .5 boundaries for the 4- and 5-bit formats.
    x.extend((0..32).map(|i| (i % 16) as f32 - 8.0 + if i % 3 == 0 { 0.5 } else { 0.0 }));
    x.extend((0..32).map(|i| (i as f32) * 0.5));
    x
}
