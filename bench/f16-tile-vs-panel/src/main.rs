//! The two F16 prompt-kernel shapes in isolation, on L1/L2-resident f32 operands (SmolLM2's
//! 576-wide rows, 48 rows a task, 512 tokens): the 4 x 4 dot-product tile (one 16-lane chain
//! per result, a horizontal sum each) and the outer-product panel (16 rows in one register,
//! each token's element broadcast). Prints GFLOP/s; compare with the core's FMA peak (one
//! 512-bit FMA a cycle on Zen 4: 32 FLOP x clock).
//!
//! `cargo run --release` (AVX-512F and FMA required).

use std::arch::x86_64::*;
use std::hint::black_box;
use std::time::Instant;

#[target_feature(enable = "avx512f,fma")]
unsafe fn tile44(k: usize, w: [*const f32; 4], a: [*const f32; 4]) -> [[f32; 4]; 4] {
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let mut i = 0;
    while i < k {
        let ay = a.map(|p| _mm512_loadu_ps(p.add(i)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let wx = _mm512_loadu_ps(w[r].add(i));
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(wx, ay[c], *acc);
            }
        }
        i += 16;
    }
    acc.map(|row| row.map(|v| _mm512_reduce_add_ps(v)))
}

#[target_feature(enable = "avx512f,fma")]
unsafe fn panel<const T: usize>(k: usize, p: *const f32, a: [*const f32; T]) -> [[f32; 16]; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..k {
        let w = _mm512_loadu_ps(p.add(16 * i));
        for (t, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(w, _mm512_set1_ps(*a[t].add(i)), *acc);
        }
    }
    let mut out = [[0f32; 16]; T];
    for (o, acc) in out.iter_mut().zip(&acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), *acc);
    }
    out
}

fn main() {
    assert!(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"));
    let (k, rows, toks, reps) = (576, 48, 512, 50);
    let w: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.01).collect();
    let a: Vec<f32> = (0..toks * k).map(|i| (i % 5) as f32 * 0.01).collect();
    let flops = 2.0 * (rows * k * toks) as f64;
    let mut sink = 0f32;
    for round in 0..3 {
        let t0 = Instant::now();
        for _ in 0..reps {
            let (w, a) = (black_box(&w), black_box(&a));
            for tg in (0..toks).step_by(4) {
                let ap = [0, 1, 2, 3].map(|c| a[(tg + c) * k..].as_ptr());
                for r in (0..rows).step_by(4) {
                    let wp = [0, 1, 2, 3].map(|j| w[(r + j) * k..].as_ptr());
                    // SAFETY: AVX-512F/FMA checked above; every row holds k elements.
                    let o = black_box(unsafe { tile44(k, wp, ap) });
                    sink += o[0][0];
                }
            }
        }
        let tile = flops * reps as f64 / t0.elapsed().as_secs_f64() / 1e9;
        // The panel layout: `w` read as [rows / 16][k][16] (contents do not matter here).
        let t0 = Instant::now();
        for _ in 0..reps {
            let (w, a) = (black_box(&w), black_box(&a));
            for tg in (0..toks).step_by(8) {
                let ap: [*const f32; 8] = std::array::from_fn(|t| a[(tg + t) * k..].as_ptr());
                for p in 0..rows / 16 {
                    // SAFETY: as above; a panel holds 16 * k elements.
                    let o = black_box(unsafe { panel::<8>(k, w[p * 16 * k..].as_ptr(), ap) });
                    sink += o[0][0];
                }
            }
        }
        let pnl = flops * reps as f64 / t0.elapsed().as_secs_f64() / 1e9;
        println!("round {round}: 4 x 4 tile {tile:.1} GFLOP/s, 16-row panel x 8 tokens {pnl:.1} GFLOP/s");
    }
    black_box(sink);
}
