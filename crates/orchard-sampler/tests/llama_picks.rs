//! The chain and its random stream against llama.cpp's own sampler: `llama_picks.txt` holds the
//! tokens llama.cpp (0.25.3's libllama, `scripts/llama_picks.c`) picked from 300 synthetic
//! logit rows under three configurations; the same rows through [`Sampler`] must give the same
//! tokens, which holds only if every stage keeps the same candidates in the same order and the
//! dist stage draws the same numbers.

use orchard_sampler::{Sampler, SamplerConfig};

const N_VOCAB: usize = 1000;
const ROWS: usize = 300;

/// The C program's rows: `u / 2^20 - 8`, `u` the top 24 bits of a 64-bit LCG (exact in f32).
fn rows(seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed;
    (0..ROWS)
        .map(|_| {
            (0..N_VOCAB)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / 1048576.0 - 8.0
                })
                .collect()
        })
        .collect()
}

#[test]
fn picks_equal_llama_cpp() {
    // (top_k, typical_p, top_p, min_p, temperature, seed), as in llama_picks.c.
    let cfgs = [
        (40, 1.0, 0.95, 0.05, 0.8, 42),
        (0, 1.0, 1.0, 0.0, 1.2, 123),
        (10, 0.9, 0.8, 0.1, 0.5, 7),
    ];
    let want = include_str!("llama_picks.txt");
    for (c, line) in want.lines().enumerate() {
        let (top_k, typical_p, top_p, min_p, temperature, seed) = cfgs[c];
        let mut s = Sampler::new(SamplerConfig {
            top_k,
            typical_p,
            top_p,
            min_p,
            temperature,
            seed,
            ..SamplerConfig::default()
        })
        .unwrap();
        let want: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(want.len(), ROWS);
        let got: Vec<u32> = rows(c as u64).iter().map(|r| s.sample(r)).collect();
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "configuration {c}: picks differ");
    }
}
