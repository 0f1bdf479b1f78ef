//! Bit-for-bit cross-check of the kernels llama.cpp actually runs on x86 against ggml-cpu's own
//! code: `arch/x86/quants.c` (activation quantizers and SIMD dots) and `vec.cpp` (the F16 dot),
//! compiled by `scripts/x86_c_crosscheck.sh` with `-march=native` (the AVX-512 build on the
//! machines we validate on) and with `-march=x86-64-v3` (ggml's AVX2 build). Every kernel tier
//! this CPU can run must reproduce the build it mirrors: the scalar and AVX-512 tables the native
//! build, the AVX2 table the AVX2 build (except F16 on the first two, which keep one FMA chain
//! where ggml's AVX-512 build keeps four: equal to rounding). Ignored by default: it needs a llama.cpp tree, gcc and an
//! x86-64 CPU, which CI does not have.

mod common;
#[path = "common/simd_data.rs"]
mod simd_data;

use common::Rng;
use orchard_core::DType;
use orchard_quant::{traits_for, Tier};
use simd_data::{activations, random_blocks, DOT_TYPES};
use std::path::Path;
use std::process::Command;

/// Weight types whose dots every tier reproduces bit for bit (F16: see `same_bits` below).
const EXACT: [DType; 9] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::F16,
];

const ACT_TYPES: [DType; 4] = [DType::Q8_0, DType::Q8_1, DType::Q8_K, DType::F16];

fn c_name(dtype: DType) -> String {
    dtype.name().to_ascii_lowercase()
}

fn elems(dtype: DType, n: usize) -> usize {
    n / dtype.block_size() * dtype.block_size()
}

fn row_bytes(dtype: DType, n: usize) -> usize {
    elems(dtype, n) / dtype.block_size() * dtype.block_bytes()
}

fn read_bits(path: &Path) -> Vec<u32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One run of a harness on fresh data; returns the number of values compared.
fn check(harness: &str, tiers: &[Tier], n: usize, rows: usize, seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    let dir = common::ScratchDir::new("x86-c");
    let a = activations(n, &mut rng);
    common::write_f32(&dir.join("a.f32"), &a);
    let mut weights = Vec::new();
    for (w, _) in DOT_TYPES {
        let e = elems(w, n);
        let bytes = random_blocks(w, e * rows, &mut rng);
        std::fs::write(dir.join(&format!("w_{}.bin", c_name(w))), &bytes).unwrap();
        weights.push(bytes);
    }
    let mut raw_acts = Vec::new();
    for act in ACT_TYPES {
        let bytes = random_blocks(act, elems(act, n), &mut rng);
        std::fs::write(dir.join(&format!("ra_{}.bin", c_name(act))), &bytes).unwrap();
        raw_acts.push(bytes);
    }
    let out = Command::new(harness)
        .arg(dir.path())
        .arg(n.to_string())
        .arg(rows.to_string())
        .output()
        .expect("run harness");
    assert!(
        out.status.success(),
        "harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut compared = 0;
    for &tier in tiers {
        // Activation quantizers: identical bytes.
        let mut c_acts = Vec::new();
        for act in ACT_TYPES {
            let theirs = std::fs::read(dir.join(&format!("c_act_{}.bin", c_name(act)))).unwrap();
            let from_float = traits_for(tier, act).unwrap().from_float.unwrap();
            let mut ours = vec![0u8; row_bytes(act, n)];
            from_float(&a[..elems(act, n)], &mut ours);
            let bb = act.block_bytes();
            if let Some(k) = ours
                .chunks(bb)
                .zip(theirs.chunks(bb))
                .position(|(x, y)| x != y)
            {
                panic!(
                    "{tier:?} {act} activations n={n}: block {k} differs: ours {:02x?} C {:02x?}",
                    &ours[k * bb..(k + 1) * bb],
                    &theirs[k * bb..(k + 1) * bb]
                );
            }
            compared += ours.len();
            c_acts.push(theirs);
        }
        // Dots, single-row and four-row kernels, against C's activations and raw blocks.
        for ((w, act), wbytes) in DOT_TYPES.iter().zip(&weights) {
            if !EXACT.contains(w) || elems(*w, n) == 0 {
                continue;
            }
            let t = traits_for(tier, *w).unwrap();
            let (dot, dot4) = (t.vec_dot.unwrap(), t.vec_dot_x4.unwrap());
            let e = elems(*w, n);
            let rb = row_bytes(*w, n);
            let ai = ACT_TYPES.iter().position(|x| x == act).unwrap();
            let theirs = read_bits(&dir.join(&format!("c_dots_{}.bin", c_name(*w))));
            // F16 on the one-chain tiers (d28cb03): ggml's AVX-512 build sums four 16-lane
            // chains, ours one, so the two agree to rounding, not to the bit; the AVX2 tier
            // keeps ggml's AVX2 order and is held to the bit.
            let same_bits = |ours: f32, c: f32| {
                if *w == DType::F16 && tier != Tier::Avx2 {
                    let scale = ours.abs().max(c.abs()).max(1e-30);
                    (ours - c).abs() / scale <= 1e-5
                } else {
                    ours.to_bits() == c.to_bits()
                }
            };
            for (k, act_row) in [&c_acts[ai], &raw_acts[ai]].into_iter().enumerate() {
                let rows_of = |r: usize| &wbytes[r * rb..(r + 1) * rb];
                for r in 0..rows {
                    let ours = dot(e, rows_of(r), act_row);
                    let c = f32::from_bits(theirs[k * rows + r]);
                    assert!(
                        same_bits(ours, c),
                        "{tier:?} {w} n={n} row {r} ({}): ours {ours:e} C {c:e}",
                        ["quantized activations", "raw activation blocks"][k],
                    );
                }
                for r0 in (0..rows - rows % 4).step_by(4) {
                    let four = dot4(e, std::array::from_fn(|i| rows_of(r0 + i)), act_row);
                    for (i, v) in four.iter().enumerate() {
                        assert!(
                            same_bits(*v, f32::from_bits(theirs[k * rows + r0 + i])),
                            "{tier:?} {w} x4 n={n} row {}",
                            r0 + i
                        );
                    }
                }
                compared += rows;
            }
        }
    }
    compared
}

fn run_harness(var: &str, tiers: &[Tier]) {
    let harness =
        std::env::var(var).unwrap_or_else(|_| panic!("{var} must name a built x86_c_ref"));
    let tiers: Vec<Tier> = tiers.iter().copied().filter(|t| t.is_available()).collect();
    let mut total = 0;
    for (i, (n, rows)) in [(4096, 16), (800, 8), (4352, 4), (72, 4)]
        .into_iter()
        .enumerate()
    {
        total += check(&harness, &tiers, n, rows, 0x5EED + i as u64);
    }
    eprintln!(
        "{var}: tiers {tiers:?}: {total} bytes and dots bit-identical to ggml-cpu's C \
         (F16 on the one-chain tiers: within 1e-5 relative)"
    );
}

#[test]
#[ignore = "needs a llama.cpp tree and gcc on x86-64: run scripts/x86_c_crosscheck.sh"]
fn every_tier_matches_ggml_cpu_x86_bit_for_bit() {
    run_harness("X86_C_HARNESS", &[Tier::Scalar, Tier::Avx512]);
    run_harness("X86_C_HARNESS_AVX2", &[Tier::Avx2]);
}

/// One run of the repacked-Q4_K harness: every tier's `vec_dot_interleaved` must equal ggml's
/// gemv (one activation row) and gemm (four rows, quantized 4x8-interleaved) bit for bit.
fn check_repacked(harness: &str, tiers: &[Tier], n: usize, rows: usize, seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    let dir = common::ScratchDir::new("x86-repack");
    let w = random_blocks(DType::Q4_K, n * rows, &mut rng);
    std::fs::write(dir.join("w_q4_k.bin"), &w).unwrap();
    let a = activations(4 * n, &mut rng);
    common::write_f32(&dir.join("a4.f32"), &a);
    let out = Command::new(harness)
        .args([
            dir.path().to_str().unwrap(),
            &n.to_string(),
            &rows.to_string(),
        ])
        .output()
        .expect("run repack harness");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q8 = std::fs::read(dir.join("c_q8k4.bin")).unwrap();
    let (gemv, gemm) = (
        read_bits(&dir.join("c_gemv.bin")),
        read_bits(&dir.join("c_gemm.bin")),
    );
    let (rb, ab) = (row_bytes(DType::Q4_K, n), row_bytes(DType::Q8_K, n));
    let mut compared = 0;
    for &tier in tiers {
        let t = traits_for(tier, DType::Q4_K).unwrap();
        let (gemv_dot, gemm_dot) = (
            t.vec_dot_interleaved.unwrap(),
            t.vec_dot_interleaved_gemm.unwrap(),
        );
        for r in 0..4 {
            let mut ours_q8 = vec![0u8; ab];
            (traits_for(tier, DType::Q8_K).unwrap().from_float.unwrap())(
                &a[r * n..(r + 1) * n],
                &mut ours_q8,
            );
            assert!(
                ours_q8 == q8[r * ab..(r + 1) * ab],
                "{tier:?} Q8_K activations row {r}"
            );
            for row in 0..rows {
                let wr = &w[row * rb..(row + 1) * rb];
                for (what, dot, theirs) in [("gemv", gemv_dot, &gemv), ("gemm", gemm_dot, &gemm)] {
                    let ours = dot(n, wr, &ours_q8);
                    let c = theirs[r * rows + row];
                    assert_eq!(
                        ours.to_bits(),
                        c,
                        "{tier:?} interleaved Q4_K vs {what} n={n} act {r} row {row}: ours {ours:e} C {:e}",
                        f32::from_bits(c)
                    );
                }
                compared += 2;
            }
        }
    }
    compared
}

#[test]
#[ignore = "needs a llama.cpp tree and g++ on x86-64: run scripts/x86_c_crosscheck.sh"]
fn interleaved_q4_k_matches_ggml_repacked_kernels() {
    for (var, tiers) in [
        ("X86_REPACK_HARNESS", &[Tier::Scalar, Tier::Avx512][..]),
        ("X86_REPACK_HARNESS_AVX2", &[Tier::Avx2][..]),
    ] {
        let harness = std::env::var(var)
            .unwrap_or_else(|_| panic!("{var} must name a built x86_repack_c_ref"));
        let tiers: Vec<Tier> = tiers.iter().copied().filter(|t| t.is_available()).collect();
        let mut total = 0;
        for (i, (n, rows)) in [(4096, 16), (256, 8), (2048, 24)].into_iter().enumerate() {
            total += check_repacked(&harness, &tiers, n, rows, 0xAB0 + i as u64);
        }
        eprintln!("{var}: tiers {tiers:?}: {total} interleaved Q4_K dots bit-identical to ggml's repacked gemv/gemm");
    }
}
