//! Input data for the SIMD and x86 cross-check tests: weight rows of random bytes with sane scale
//! fields (so every quant bit pattern, including Q8_0's -128, is exercised while results stay
//! finite), raw activation blocks built the same way, and activation floats with rounding ties
//! and wide scale changes. Included with `#[path]` by those test files.

#![allow(dead_code)]

use super::common::Rng;
use orchard_core::DType;

/// Weight types with SIMD dots, with the activation type ggml pairs them with.
pub const DOT_TYPES: [(DType, DType); 11] = [
    (DType::Q4_0, DType::Q8_0),
    (DType::Q4_1, DType::Q8_1),
    (DType::Q5_0, DType::Q8_0),
    (DType::Q5_1, DType::Q8_1),
    (DType::Q8_0, DType::Q8_0),
    (DType::Q2_K, DType::Q8_K),
    (DType::Q3_K, DType::Q8_K),
    (DType::Q4_K, DType::Q8_K),
    (DType::Q5_K, DType::Q8_K),
    (DType::Q6_K, DType::Q8_K),
    (DType::F16, DType::F16),
];

#[derive(Clone, Copy)]
enum Field {
    F16,
    F32,
    /// The 16 little-endian i16 `bsums` of Q8_K.
    Bsums,
}

/// Byte offsets of the float fields of one block, which must hold sane values.
fn fields(dtype: DType) -> &'static [(usize, Field)] {
    use Field::*;
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[(0, F16)],
        DType::Q4_1 | DType::Q5_1 | DType::Q8_1 | DType::Q4_K | DType::Q5_K => {
            &[(0, F16), (2, F16)]
        }
        DType::Q2_K => &[(80, F16), (82, F16)],
        DType::Q3_K => &[(108, F16)],
        DType::Q6_K => &[(208, F16)],
        DType::Q8_K => &[(0, F32), (260, Bsums)],
        _ => &[],
    }
}

/// A scale of random sign and magnitude between 1e-4 and about 3.
fn scale(rng: &mut Rng) -> f32 {
    let m = 10f32.powf(rng.uniform() * 4.5 - 4.0);
    if rng.below(2) == 0 {
        m
    } else {
        -m
    }
}

/// `n_blocks` blocks of `dtype` with random quant bytes and sane scale fields.
pub fn random_blocks(dtype: DType, n_elems: usize, rng: &mut Rng) -> Vec<u8> {
    if dtype == DType::F16 {
        return (0..n_elems)
            .flat_map(|_| half::f16::from_f32(rng.normal() * 2.0).to_le_bytes())
            .collect();
    }
    let bb = dtype.block_bytes();
    let mut out = vec![0u8; n_elems / dtype.block_size() * bb];
    rng.fill_bytes(&mut out);
    for block in out.chunks_exact_mut(bb) {
        for &(at, field) in fields(dtype) {
            match field {
                Field::F16 => block[at..at + 2]
                    .copy_from_slice(&half::f16::from_f32(scale(rng)).to_le_bytes()),
                Field::F32 => block[at..at + 4].copy_from_slice(&scale(rng).to_le_bytes()),
                Field::Bsums => {
                    // Usually consistent with the quants, sometimes arbitrary: the kernels must
                    // use the stored sums either way.
                    let consistent = rng.below(4) != 0;
                    for g in 0..16 {
                        let s: i32 = if consistent {
                            block[4 + 16 * g..4 + 16 * g + 16]
                                .iter()
                                .map(|&b| i32::from(b as i8))
                                .sum()
                        } else {
                            rng.below(65536) as i32 - 32768
                        };
                        block[at + 2 * g..at + 2 * g + 2]
                            .copy_from_slice(&(s as i16).to_le_bytes());
                    }
                }
            }
        }
    }
    out
}

/// Activation floats: normal data whose scale jumps between 32-element blocks, with some blocks
/// of exact rounding ties, zeros, and single outliers.
pub fn activations(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    while x.len() < n {
        let kind = rng.below(10);
        let s = 10f32.powf(rng.uniform() * 6.0 - 3.0);
        for i in 0..32 {
            x.push(match kind {
                // amax 127 gives id = 1 exactly: k + 0.5 are rounding ties.
                0 => {
                    if i == 0 {
                        127.0
                    } else {
                        (i as f32 - 16.0) + 0.5
                    }
                }
                1 => 0.0,
                2 => {
                    if i == 7 {
                        s * 50.0
                    } else {
                        rng.normal() * s
                    }
                }
                _ => rng.normal() * s,
            });
        }
    }
    x.truncate(n);
    x
}
