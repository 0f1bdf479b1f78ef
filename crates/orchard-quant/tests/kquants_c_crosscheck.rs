//! Bit-for-bit cross-check of the K-quant reference quantizers and dots against ggml's own C code
//! (`quantize_row_*_ref`, `ggml_vec_dot_*_q8_K_generic`), compiled from a llama.cpp source tree
//! by `scripts/kquants_c_crosscheck.sh`. Ignored by default: it needs that tree and a C compiler,
//! which CI does not have. The numpy comparison covers dequantization in CI; this covers what
//! numpy cannot (gguf-py has no K-quant quantizers or dots).

mod common;

use common::{Rng, ScratchDir};
use orchard_core::DType;
use orchard_quant::{quantize_row, traits_for, Tier, QK_K};
use std::process::Command;

const N_BLOCKS: usize = 512;

/// Weights exercising the quantizers' branches: ordinary, skewed, signed-extreme, outliers,
/// groups below GROUP_MAX_EPS, constant and zero groups, and sub-blocks of wildly different
/// magnitude within one super-block.
fn weights(rng: &mut Rng) -> Vec<f32> {
    let mut w = Vec::with_capacity(N_BLOCKS * QK_K);
    for b in 0..N_BLOCKS {
        let kind = b % 12;
        for i in 0..QK_K {
            let g = rng.normal();
            let v = match kind {
                0 => g,
                1 => 0.1 + 2.0 * ((b * QK_K + i) as f32).cos(),
                2 => g.abs() + 0.2,    // all positive
                3 => -(g.abs()) - 0.2, // all negative
                4 => {
                    if i % 37 == 0 {
                        g * 100.0
                    } else {
                        g
                    }
                } // outliers
                5 => g * 1e-20,        // below GROUP_MAX_EPS
                6 => {
                    if i / 16 % 3 == 0 {
                        0.0
                    } else {
                        g
                    }
                } // zero sub-blocks
                7 => 0.625,            // constant
                8 => g * 10f32.powi((i / 16) as i32 % 7 - 3), // mixed magnitudes
                9 => {
                    if i % 11 == 0 {
                        g
                    } else {
                        0.0
                    }
                } // sparse
                10 => g * 3e4,
                _ => (g * 4.0).round() * 0.25, // exactly representable grid (ties in rounding)
            };
            w.push(v);
        }
    }
    w
}

fn activations(rng: &mut Rng) -> Vec<f32> {
    (0..N_BLOCKS * QK_K)
        .map(|i| {
            let g = rng.normal();
            match (i / QK_K) % 5 {
                0 => g,
                1 => g * 1e-3 + 0.01,
                2 => g.abs() * 50.0,
                3 => 0.0,
                _ => (g * 8.0).round(),
            }
        })
        .collect()
}

fn write_f32(path: &std::path::Path, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

fn quantize(dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; x.len() / QK_K * dtype.block_bytes()];
    quantize_row(dtype, x, &mut q).unwrap();
    q
}

fn first_block_diff(dtype: DType, ours: &[u8], theirs: &[u8]) -> Option<usize> {
    let bs = dtype.block_bytes();
    ours.chunks(bs)
        .zip(theirs.chunks(bs))
        .position(|(a, b)| a != b)
}

#[test]
#[ignore = "needs a llama.cpp tree and a C compiler: run scripts/kquants_c_crosscheck.sh"]
fn quantizers_and_dots_match_ggml_c_bit_for_bit() {
    let harness = std::env::var("KQUANTS_C_HARNESS")
        .expect("KQUANTS_C_HARNESS must name the built kquants_c_ref binary");
    let mut rng = Rng::new(0xC0DE);
    let w = weights(&mut rng);
    let a = activations(&mut rng);
    let dir = ScratchDir::new("kquants-c");
    write_f32(&dir.join("w.f32"), &w);
    write_f32(&dir.join("a.f32"), &a);
    let out = Command::new(&harness)
        .arg(dir.path())
        .output()
        .expect("run harness");
    assert!(
        out.status.success(),
        "harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let act = quantize(DType::Q8_K, &a);
    let c_act = std::fs::read(dir.join("c_q8_K.q")).unwrap();
    // ggml leaves bsums of an all-zero block unwritten (calloc'd zeros here), we write zeros.
    assert_eq!(
        first_block_diff(DType::Q8_K, &act, &c_act),
        None,
        "Q8_K bytes differ"
    );

    let dots = std::fs::read_to_string(dir.join("c_dots.txt")).unwrap();
    let mut n_dots = 0;
    for dtype in [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ] {
        let ours = quantize(dtype, &w);
        let theirs =
            std::fs::read(dir.join(&format!("c_{}.q", dtype.name().replace("_k", "_K")))).unwrap();
        assert_eq!(ours.len(), theirs.len());
        if let Some(b) = first_block_diff(dtype, &ours, &theirs) {
            let bs = dtype.block_bytes();
            panic!(
                "{dtype}: block {b} (kind {}) differs:\nours   {:?}\ntheirs {:?}",
                b % 12,
                &ours[b * bs..(b + 1) * bs],
                &theirs[b * bs..(b + 1) * bs]
            );
        }
        let tag = dtype.name().replace("_k", "_K");
        for line in dots.lines().filter(|l| l.starts_with(&format!("{tag} "))) {
            let mut it = line.split(' ').skip(1);
            let n: usize = it.next().unwrap().parse().unwrap();
            let bits = u32::from_str_radix(it.next().unwrap(), 16).unwrap();
            // The generic C kernels are what the reference tier mirrors.
            let dot = traits_for(Tier::Reference, dtype).unwrap().vec_dot.unwrap();
            let got = dot(
                n,
                &ours[..n / QK_K * dtype.block_bytes()],
                &act[..n / QK_K * 292],
            );
            assert_eq!(
                got.to_bits(),
                bits,
                "{dtype} n={n}: ours {got:e}, ggml {:e}",
                f32::from_bits(bits)
            );
            n_dots += 1;
        }
    }
    assert_eq!(n_dots, 5 * N_BLOCKS);
    eprintln!("identical: {N_BLOCKS} blocks per type quantized, Q8_K activations, {n_dots} dots");
}
