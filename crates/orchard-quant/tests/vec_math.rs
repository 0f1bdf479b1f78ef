//! Tests of orchard-backend's `vec_math.rs`, compiled here through `#[path]` so they run with the
//! kernels they build on (this crate's tier detection) before the backend wires the module in:
//! its own unit tests, plus an ignored bit-for-bit cross-check against ggml-cpu's `vec.cpp` and
//! `simd-gemm.h` built by `scripts/vec_math_c_crosscheck.sh`.

mod common;
#[path = "../../orchard-backend/src/vec_math.rs"]
#[allow(dead_code)]
mod vec_math;

use common::{read_f32, write_f32, Rng, ScratchDir};
use half::f16;
use std::process::Command;
use vec_math::VecPath;

fn inputs(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let x = (0..n)
        .map(|i| match i % 9 {
            0 => rng.normal() * 60.0,
            1 => -90.0 - rng.uniform() * 30.0,
            2 => 85.0 + rng.uniform() * 10.0,
            _ => rng.normal() * 3.0,
        })
        .collect();
    let g = (0..n).map(|_| rng.normal()).collect();
    (x, g)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn read_f16(path: &std::path::Path) -> Vec<u16> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn check(harness: &str, paths: &[VecPath], n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (x, g) = inputs(n, &mut rng);
    let dir = ScratchDir::new("vec-math-c");
    write_f32(&dir.join("x.f32"), &x);
    write_f32(&dir.join("g.f32"), &g);
    let out = Command::new(harness)
        .arg(dir.path())
        .arg(n.to_string())
        .output()
        .expect("run harness");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max = vec_math::max_f32(&x);
    for &p in paths {
        let mut y = vec![0f32; n];
        vec_math::silu_f32_with(p, &mut y, &x);
        assert_eq!(
            bits(&y),
            bits(&read_f32(&dir.join("c_silu.f32"))),
            "{p:?} silu n={n}"
        );
        vec_math::swiglu_f32_with(p, &mut y, &x, &g);
        assert_eq!(
            bits(&y),
            bits(&read_f32(&dir.join("c_swiglu.f32"))),
            "{p:?} swiglu n={n}"
        );
        let sum = vec_math::soft_max_f32_with(p, &mut y, &x, max);
        assert_eq!(
            bits(&y),
            bits(&read_f32(&dir.join("c_softmax.f32"))),
            "{p:?} softmax n={n}"
        );
        let c_sum = f64::from_le_bytes(
            std::fs::read(dir.join("c_softmax_sum.f64")).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        assert_eq!(sum.to_bits(), c_sum.to_bits(), "{p:?} softmax sum n={n}");
    }
    // Element-wise kernels: identical in both builds.
    let h: Vec<f16> = g.iter().map(|&v| f16::from_f32(v / 64.0)).collect();
    let k: Vec<f16> = x.iter().map(|&v| f16::from_f32(v / 64.0)).collect();
    let mut m = h.clone();
    vec_math::mad_f16(&mut m, &k, 0.7);
    let m: Vec<u16> = m.iter().map(|v| v.to_bits()).collect();
    assert_eq!(m, read_f16(&dir.join("c_mad_f16.bin")), "mad_f16 n={n}");
    let mut s = h.clone();
    vec_math::scale_f16(&mut s, 0.7);
    let s: Vec<u16> = s.iter().map(|v| v.to_bits()).collect();
    assert_eq!(s, read_f16(&dir.join("c_scale_f16.bin")), "scale_f16 n={n}");
    let (gm, gk, gn) = (3, 8, n / 8);
    if gn > 0 && n >= gm * gk {
        let mut c = vec![0.5f32; gm * gn];
        vec_math::simd_gemm(&mut c, &x, &g, gm, gk, gn);
        assert_eq!(
            bits(&c),
            bits(&read_f32(&dir.join("c_gemm.f32"))),
            "gemm n={n}"
        );
    }
}

fn run(var: &str, paths: &[VecPath]) {
    let harness =
        std::env::var(var).unwrap_or_else(|_| panic!("{var} must name a built vec_math_c_ref"));
    let sizes = [1013, 64, 70, 16, 7, 200, 4096 + 9];
    for (i, n) in sizes.into_iter().enumerate() {
        check(&harness, paths, n, 0xABC + i as u64);
    }
    eprintln!("{var}: {paths:?} bit-identical to ggml-cpu at sizes {sizes:?}");
}

#[test]
#[ignore = "needs a llama.cpp tree and g++ on x86-64: run scripts/vec_math_c_crosscheck.sh"]
fn vec_math_matches_ggml_cpu_bit_for_bit() {
    let mut native = vec![VecPath::Scalar];
    if orchard_quant::Tier::Avx512.is_available() {
        native.push(VecPath::Avx512);
    }
    run("VEC_MATH_C_HARNESS", &native);
    run("VEC_MATH_C_HARNESS_AVX2", &[VecPath::Avx2]);
}
