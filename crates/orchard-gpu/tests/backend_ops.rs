//! Backend parity in the manner of llama.cpp's test-backend-ops: every op of the compute
//! interface, every weight format the GPU reads, several shapes (ragged ones included), run on
//! the GPU and on `CpuBackend` with the same inputs and compared by normalized mean squared
//! error. Runs on whatever adapter wgpu finds first (Mesa lavapipe in CI, with
//! `WGPU_BACKEND=vulkan`); fails when there is none.

use orchard_backend::{
    AttnBatch, AttnParams, Backend, BackendError, BufId, CpuBackend, GluKind, HostWeight,
    RopeParams, TokenSlot,
};
use orchard_core::DType;
use orchard_gpu::GpuBackend;

mod common;
use common::weight;

/// A small deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

fn gpu() -> GpuBackend {
    GpuBackend::new(None).expect("a GPU adapter (CI: apt-get install mesa-vulkan-drivers)")
}

/// NMSE limit of a product on `g`: `exact` where products run in f32 (lavapipe: only the
/// summation order differs from the CPU), else (cooperative matrices, f16 operands on tensor
/// cores) 5e-7: rounding each operand to f16 alone adds about (2^-11)^2 / 3 = 8e-8 (6e-8 to
/// 7e-8 seen on an H100, run 15), and llama.cpp's test-backend-ops allows MUL_MAT 5e-4.
fn product_tol(g: &GpuBackend, exact: f64) -> f64 {
    if g.coop() {
        exact.max(5e-7)
    } else {
        exact
    }
}

/// NMSE limit of attention on `g`: 5e-9 on a CPU device (lavapipe: same exp and tanh as the CPU
/// up to summation order), 5e-7 on a GPU, whose exp differs from the CPU's by an ulp or so; below
/// 64 queries both round Q and the V accumulator to f16 (as ggml), where one flipped rounding is
/// a 2^-11 relative step (6e-8 to 7e-8 seen on an H100, run 15). llama.cpp's test-backend-ops
/// allows FLASH_ATTN_EXT 5e-4.
/// With exact f16 decode attention off (`set_attn_exact(false)`, the default on real GPUs),
/// decode accumulates in f32 where the CPU rounds to f16: `ATTN_F32_TOL`.
fn attn_tol(g: &GpuBackend) -> f64 {
    if !g.attn_exact() {
        ATTN_F32_TOL
    } else if format!("{:?}", g.adapter().device_type) == "Cpu" {
        5e-9
    } else {
        5e-7
    }
}

/// NMSE limit of f32 decode attention against the CPU's f16-rounded one: rounding Q to f16
/// and the V accumulator to f16 at every cell gives relative errors of a few 2^-11 (NMSE 4e-9
/// to 2.3e-7 over up to 128 cells, 5e-6 to 1.4e-5 on decode rows over 1000 cells, seen on
/// lavapipe), while a misread cell, head or scale gives 1e-3 and more.
const ATTN_F32_TOL: f64 = 1e-5;

/// Asserts that `got` has exactly `want`'s bits, value for value (NaNs included).
fn assert_bit_identical(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: output lengths differ");
    let differ = got
        .iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "{what}: {differ} of {} values differ", got.len());
}

/// Runs `run` with a fusion turned off by `set`, then on, and asserts that the fused run gives
/// the same bits in `saved` fewer dispatches and no device error. Returns the fused values.
fn assert_fusion_saves(
    g: &mut GpuBackend,
    set: fn(&mut GpuBackend, bool),
    saved: u64,
    what: &str,
    mut run: impl FnMut(&mut GpuBackend) -> Vec<f32>,
) -> Vec<f32> {
    let mut runs = Vec::new();
    for on in [false, true] {
        set(g, on);
        let before = g.dispatches();
        let got = run(g);
        let errs = g.take_errors();
        assert!(errs.is_empty(), "{what}: GPU errors: {errs:?}");
        runs.push((got, g.dispatches() - before));
    }
    let (fused, n_fused) = runs.pop().expect("two runs");
    let (plain, n_plain) = runs.pop().expect("two runs");
    assert_eq!(
        n_plain - n_fused,
        saved,
        "{what}: dispatches {n_plain} -> {n_fused}"
    );
    assert_bit_identical(&fused, &plain, what);
    fused
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "output lengths differ");
    assert!(got.iter().all(|v| v.is_finite()), "non-finite GPU output");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += ((g - w) as f64).powi(2);
        den += (w as f64).powi(2);
    }
    num / den.max(1e-30)
}

fn buf(b: &mut dyn Backend, n: usize, w: usize, data: &[f32]) -> BufId {
    let id = b.alloc(n, w);
    b.upload(id, data);
    id
}

fn read(b: &mut dyn Backend, id: BufId) -> Vec<f32> {
    let mut out = Vec::new();
    b.download(id, &mut out);
    out
}

/// One op under test: runs on a backend and returns the output to compare.
type OpFn<'a> = dyn Fn(&mut dyn Backend) -> Vec<f32> + 'a;

/// Runs `f` on a fresh CPU backend and on `g`, returning (gpu, cpu) outputs.
fn both(g: &mut GpuBackend, f: impl Fn(&mut dyn Backend) -> Vec<f32>) -> (Vec<f32>, Vec<f32>) {
    let mut cpu = CpuBackend::new();
    let want = f(&mut cpu);
    let got = f(g);
    let errs = g.take_errors();
    assert!(errs.is_empty(), "GPU errors: {errs:?}");
    (got, want)
}

/// `W · x` for `n` tokens (`xv`: `[n, cols]`) on `g` and on a fresh CPU backend, through
/// `Backend::matmul`: returns (gpu, cpu) outputs, `[n, rows]`.
fn matmul_both(g: &mut GpuBackend, w: &HostWeight, xv: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let (cols, rows) = (w.row_len(), w.n_rows());
    both(g, |b| {
        let wid = b.add_weight(w).unwrap();
        let x = buf(b, n, cols, xv);
        let o = b.alloc(n, rows);
        b.matmul(wid, x, o);
        read(b, o)
    })
}

/// `W · x` in f64 from the dequantized weight, as `[n, rows]`.
fn dequantized_product(w: &HostWeight, x: &[f32], n: usize) -> Vec<f32> {
    let (cols, rows) = (w.row_len(), w.n_rows());
    let mut wf = vec![0.0f32; cols * rows];
    orchard_quant::dequantize_row(w.dtype, w.bytes(), &mut wf).unwrap();
    let mut out = vec![0.0f32; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let s: f64 = (0..cols)
                .map(|c| wf[r * cols + c] as f64 * x[t * cols + c] as f64)
                .sum();
            out[t * rows + r] = s as f32;
        }
    }
    out
}

const MATMUL_TYPES: [DType; 9] = [
    DType::F32,
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

#[test]
fn matmul_every_format_and_shape() {
    let mut g = gpu();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut report = Vec::new();
    for dtype in MATMUL_TYPES {
        let bs = dtype.block_size();
        // (cols, rows): rows not divisible by the 64-row tile; cols of 1..3 K-steps, and for
        // the float types a width that is not a whole 16-element chunk.
        let mut shapes = vec![(bs.max(32) * 2, 67), (bs.max(64) * 3, 130)];
        if bs == 1 {
            shapes.push((40, 33));
            shapes.push((2, 5));
        }
        for (cols, rows) in shapes {
            let wv = rng.vec(cols * rows, 1.0);
            let w = weight("w", dtype, cols, rows, &wv);
            // token counts on the matrix-vector path (1, 3, 8) and the tiled one (13, 70)
            for n in [1usize, 3, 8, 13, 70] {
                let xv = rng.vec(n * cols, 1.0);
                let (got, want) = matmul_both(&mut g, &w, &xv, n);
                let e = nmse(&got, &want);
                // With activations rounded as the CPU quantizes them, only f32 summation
                // order separates the two.
                // Q4_1's dot adds the activation block sum as the CPU stored it (rounded to
                // f16), which the rounded activations reproduce only to ~1e-6.
                let tol = if dtype == DType::Q4_1 { 1e-5 } else { 1e-9 };
                let tol = product_tol(&g, tol);
                assert!(
                    e < tol,
                    "matmul {dtype} cols={cols} rows={rows} n={n}: NMSE {e}"
                );
                // Raw kernels (f32 activations) against the dequantized weights in f64: this
                // checks the weight decoding on its own; against the CPU they differ by the
                // 8-bit activation noise, which the bar (5e-4) bounds.
                g.set_exact_activations(false);
                let (raw, _) = matmul_both(&mut g, &w, &xv, n);
                g.set_exact_activations(true);
                let e_raw = nmse(&raw, &want);
                let e_exact = nmse(&raw, &dequantized_product(&w, &xv, n));
                report.push(format!(
                    "{dtype} {cols}x{rows} n={n}: exact-act vs cpu {e:.2e}; f32-act vs cpu {e_raw:.2e}, vs f64 {e_exact:.2e}"
                ));
                assert!(
                    e_raw < 5e-4,
                    "f32-act matmul {dtype} {cols}x{rows} n={n}: {e_raw}"
                );
                assert!(
                    e_exact < product_tol(&g, 1e-9),
                    "f32-act matmul {dtype} cols={cols} rows={rows} n={n}: NMSE vs f64 {e_exact}"
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn matmul_splits_weights_larger_than_a_binding() {
    // Enough rows that a chunked upload would be exercised on any device whose limit is
    // lowered; on every device it checks the row offsets of a multi-row-block weight.
    let mut g = gpu();
    let mut rng = Rng(7);
    let (cols, rows) = (256, 1000);
    let wv = rng.vec(cols * rows, 1.0);
    let w = weight("big", DType::Q6_K, cols, rows, &wv);
    // 2 tokens (matrix-vector) and 131 (two 128-token tiles of the tiled kernel)
    for n in [2, 131] {
        let xv = rng.vec(n * cols, 1.0);
        let (got, want) = matmul_both(&mut g, &w, &xv, n);
        assert!(nmse(&got, &want) < product_tol(&g, 1e-9));
    }
}

/// The 128x128-tile matmul (used from 64 tiles up, so never by the small shapes above) on
/// every format, with rows and tokens that do not fill the last tile.
#[test]
fn matmul_big_tiles_every_format() {
    let mut g = gpu();
    g.set_min_big_tiles(0);
    let mut rng = Rng(0xb16);
    for dtype in MATMUL_TYPES {
        let cols = dtype.block_size().max(64) * 2;
        let rows = 130;
        let wv = rng.vec(cols * rows, 1.0);
        let w = weight("w", dtype, cols, rows, &wv);
        for n in [13usize, 131] {
            let xv = rng.vec(n * cols, 1.0);
            let (got, want) = matmul_both(&mut g, &w, &xv, n);
            let e = nmse(&got, &want);
            let tol = product_tol(&g, if dtype == DType::Q4_1 { 1e-5 } else { 1e-9 });
            assert!(
                e < tol,
                "big-tile matmul {dtype} {cols}x{rows} n={n}: NMSE {e}"
            );
        }
    }
}

/// The cooperative-matrix matmul (f16 x f16 -> f32 tiles of 128 x 64) on every format, with
/// rows and tokens that do not fill the last tile and K of one to three steps of 32 beyond the
/// first block. lavapipe has no cooperative matrices: there the test checks that the backend
/// says so and that asking for them leaves the portable kernels on; on a device that has them
/// (an NVIDIA GPU) it compares with the CPU. f16 rounding of weights and activations: NMSE
/// bound 1e-5 (the f32 kernels are held to 1e-9).
#[test]
fn matmul_coop_every_format() {
    let mut g = gpu();
    if !g.coop_available() {
        assert!(
            !g.set_coop(true),
            "coop reported on without the device feature"
        );
        eprintln!("no cooperative matrices on this adapter: coop parity not run");
        return;
    }
    assert!(g.set_coop(true));
    let mut rng = Rng(0xc00b);
    for dtype in MATMUL_TYPES {
        let bs = dtype.block_size().max(16);
        for (cols, rows) in [(bs * 2, 130), (bs * 6, 257), (bs, 9)] {
            let cols = if cols % 32 == 16 { cols + 16 } else { cols };
            let wv = rng.vec(cols * rows, 1.0);
            let w = weight("w", dtype, cols, rows, &wv);
            for n in [9usize, 70, 131] {
                let xv = rng.vec(n * cols, 1.0);
                let (got, want) = matmul_both(&mut g, &w, &xv, n);
                let e = nmse(&got, &want);
                assert!(
                    e < 1e-5,
                    "coop matmul {dtype} {cols}x{rows} n={n}: NMSE {e}"
                );
            }
        }
    }
}

/// The integer-dot matrix-vector kernels (K-quant weights x Q8_K activations) with and
/// without `dot4I8Packed` (Metal runs the unpacked twin), on rows that do not fill the last
/// workgroup, a wider row, and a zero activation block (the Q8_K scale-0 case).
#[test]
fn matvec_integer_dot_both_variants() {
    let mut g = gpu();
    let mut rng = Rng(0x5eed);
    for (packed, subgroups) in [(true, true), (false, true), (true, false)] {
        g.set_packed_dot(packed);
        g.set_subgroups(subgroups);
        for dtype in [DType::Q4_K, DType::Q6_K] {
            for (cols, rows) in [(256, 5), (1024, 37), (2304, 3)] {
                let wv = rng.vec(cols * rows, 1.0);
                let w = weight("w", dtype, cols, rows, &wv);
                for n in [1usize, 2, 5] {
                    let mut xv = rng.vec(n * cols, 1.0);
                    xv[..256].iter_mut().for_each(|v| *v = 0.0);
                    let (got, want) = matmul_both(&mut g, &w, &xv, n);
                    let e = nmse(&got, &want);
                    eprintln!("{dtype} packed={packed} {cols}x{rows} n={n}: NMSE {e:.2e}");
                    assert!(
                        e < 1e-11,
                        "{dtype} packed={packed} {cols}x{rows} n={n}: NMSE {e}"
                    );
                }
            }
        }
    }
}

/// The integer-dot kernel's other shapes (rows per group 1-8, row groups smaller than, equal
/// to and larger than a subgroup, each reduction), on rows that do not fill the last group.
#[test]
fn matvec_integer_dot_shapes() {
    let mut g = gpu();
    let mut rng = Rng(0x5a9e);
    for (wg, tpr, nr) in [
        (128, 32, 4),
        (64, 64, 1),
        (128, 32, 2),
        (256, 16, 8),
        (64, 8, 8),
        (64, 4, 4),
        (256, 64, 2),
    ] {
        for subgroups in [true, false] {
            let mut g2 = gpu();
            g2.set_subgroups(subgroups);
            assert!(
                g2.set_q8k_shape(wg, tpr, nr),
                "shape {wg}/{tpr}/{nr} refused"
            );
            for dtype in [DType::Q4_K, DType::Q6_K] {
                let (cols, rows) = (1280, 45);
                let wv = rng.vec(cols * rows, 1.0);
                let w = weight("w", dtype, cols, rows, &wv);
                let xv = rng.vec(2 * cols, 1.0);
                let (got, want) = matmul_both(&mut g2, &w, &xv, 2);
                let e = nmse(&got, &want);
                assert!(
                    e < 1e-11,
                    "{dtype} {wg}/{tpr}/{nr} sg={subgroups}: NMSE {e}"
                );
            }
        }
    }
    assert!(
        !g.set_q8k_shape(64, 4, 8),
        "rows per group above threads per group"
    );
    assert!(!g.set_q8k_shape(96, 32, 4), "workgroup not a power of two");
}

/// RMS norm and GLU fused with the Q8_K quantization of their output (decode, rows of whole
/// 256-value blocks): the output itself and the integer-dot product that reads the fused
/// copy, with fusion on and off.
#[test]
fn fused_norm_and_glu_feed_integer_dots() {
    let mut rng = Rng(0xf05e);
    let (cols, rows) = (512, 40);
    let wv = rng.vec(cols * rows, 1.0);
    let nv = rng.vec(cols, 1.0);
    for fuse in [true, false] {
        let mut g = gpu();
        g.set_fuse_q8k(fuse);
        for dtype in [DType::Q4_K, DType::Q6_K] {
            let w = weight("w", dtype, cols, rows, &wv);
            let nw = weight("norm", DType::F32, cols, 1, &nv);
            for n in [1usize, 3] {
                let xv = rng.vec(n * cols, 2.0);
                let yv = rng.vec(n * cols, 2.0);
                let (got, want) = both(&mut g, |b| {
                    let wid = b.add_weight(&w).unwrap();
                    let nid = b.add_weight(&nw).unwrap();
                    let x = buf(b, n, cols, &xv);
                    let y = buf(b, n, cols, &yv);
                    let h = b.alloc(n, cols);
                    let o1 = b.alloc(n, rows);
                    b.rms_norm(x, Some(nid), 1e-5, h);
                    b.matmul(wid, h, o1);
                    let mut v = read(b, h);
                    v.extend(read(b, o1));
                    let a = b.alloc(n, cols);
                    let o2 = b.alloc(n, rows);
                    b.glu(x, y, GluKind::SwiGlu, a);
                    b.matmul(wid, a, o2);
                    // the GLU output written again (add) must not reuse the stale copy
                    b.add(a, y);
                    let o3 = b.alloc(n, rows);
                    b.matmul(wid, a, o3);
                    v.extend(read(b, a));
                    v.extend(read(b, o2));
                    v.extend(read(b, o3));
                    v
                });
                let e = nmse(&got, &want);
                assert!(e < 1e-11, "{dtype} n={n} fuse={fuse}: NMSE {e}");
            }
        }
    }
}

#[test]
fn unsupported_weight_types_are_refused() {
    let mut g = gpu();
    let mut rng = Rng(3);
    let wv = rng.vec(256 * 4, 1.0);
    let w = weight("q3", DType::Q3_K, 256, 4, &wv);
    assert!(!g.supports_matmul(DType::Q3_K));
    assert!(g.supports_matmul(DType::Q4_K));
    match g.add_weight(&w) {
        Err(BackendError::UnsupportedType { dtype, .. }) => assert_eq!(dtype, DType::Q3_K),
        other => panic!("expected UnsupportedType, got {:?}", other.map(|_| ())),
    }
    let mut bad = weight("short", DType::Q4_0, 64, 4, &rng.vec(256, 1.0));
    bad.range = 0..10;
    assert!(matches!(
        g.add_weight(&bad),
        Err(BackendError::BadWeight { .. })
    ));
}

#[test]
fn norms_and_elementwise_ops() {
    let mut g = gpu();
    let mut rng = Rng(11);
    for (n, width) in [(1usize, 576usize), (5, 640), (70, 100)] {
        let xv = rng.vec(n * width, 3.0);
        let yv = rng.vec(n * width, 1.0);
        let wv = rng.vec(width, 1.0);
        let w = weight("norm", DType::F32, width, 1, &wv);
        let checks: Vec<(&str, Box<OpFn>)> = vec![
            (
                "rms_norm",
                Box::new(|b| {
                    let wid = b.add_weight(&w).unwrap();
                    let x = buf(b, n, width, &xv);
                    let o = b.alloc(1, width);
                    b.rms_norm(x, Some(wid), 1e-6, o);
                    read(b, o)
                }),
            ),
            (
                "rms_norm_plain",
                Box::new(|b| {
                    let x = buf(b, n, width, &xv);
                    let o = b.alloc(n, width);
                    b.rms_norm(x, None, 1e-5, o);
                    read(b, o)
                }),
            ),
            (
                "add",
                Box::new(|b| {
                    let x = buf(b, n, width, &xv);
                    let y = buf(b, n, width, &yv);
                    b.add(x, y);
                    read(b, x)
                }),
            ),
            (
                "add_bias",
                Box::new(|b| {
                    let wid = b.add_weight(&w).unwrap();
                    let x = buf(b, n, width, &xv);
                    b.add_bias(x, wid);
                    read(b, x)
                }),
            ),
            (
                "scale",
                Box::new(|b| {
                    let x = buf(b, n, width, &xv);
                    b.scale(x, 0.125);
                    read(b, x)
                }),
            ),
            (
                "softcap",
                Box::new(|b| {
                    let x = buf(b, n, width, &xv);
                    b.softcap(x, 2.5);
                    read(b, x)
                }),
            ),
            (
                "swiglu",
                Box::new(|b| {
                    let x = buf(b, n, width, &xv);
                    let y = buf(b, n, width, &yv);
                    let o = b.alloc(n, width);
                    b.glu(x, y, GluKind::SwiGlu, o);
                    read(b, o)
                }),
            ),
            (
                "geglu",
                Box::new(|b| {
                    let x = buf(b, n, width, &xv);
                    let y = buf(b, n, width, &yv);
                    let o = b.alloc(n, width);
                    b.glu(x, y, GluKind::GeGlu, o);
                    read(b, o)
                }),
            ),
            (
                "copy_rows",
                Box::new(|b| {
                    let x = buf(b, n, width, &xv);
                    let o = b.alloc(1, width);
                    let rows: Vec<u32> = (0..n as u32).rev().step_by(2).collect();
                    b.copy_rows(x, &rows, o);
                    read(b, o)
                }),
            ),
        ];
        for (name, f) in checks {
            let (got, want) = both(&mut g, f);
            let e = nmse(&got, &want);
            // GeGLU rounds through f16 on both sides; a tanh ulp can flip one rounding.
            let tol = if name == "geglu" { 1e-6 } else { 1e-10 };
            assert!(e < tol, "{name} n={n} width={width}: NMSE {e}");
        }
    }
}

#[test]
fn head_norm_and_rope() {
    let mut g = gpu();
    let mut rng = Rng(5);
    // (head_dim, n_rot, n_heads, neox, freq factors)
    for (hd, n_rot, heads, neox, ff) in [
        (64usize, 64usize, 9usize, false, false),
        (256, 256, 4, true, false),
        (128, 64, 3, true, false),
        (64, 64, 2, false, true),
    ] {
        let n = 7;
        let width = hd * heads;
        let xv = rng.vec(n * width, 2.0);
        let wv = rng.vec(hd, 1.0);
        let w = weight("qn", DType::F32, hd, 1, &wv);
        let ffv: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.25).collect();
        let fw = weight("ff", DType::F32, n_rot / 2, 1, &ffv);
        let tokens: Vec<TokenSlot> = (0..n)
            .map(|i| TokenSlot {
                seq: 0,
                pos: (i * 37 + 3) as u32,
            })
            .collect();
        let p = RopeParams {
            n_rot,
            head_dim: hd,
            freq_base: 10000.0,
            freq_scale: 0.5,
            neox,
        };
        let (got, want) = both(&mut g, |b| {
            let wid = b.add_weight(&w).unwrap();
            let fid = b.add_weight(&fw).unwrap();
            let x = buf(b, n, width, &xv);
            b.head_rms_norm(x, wid, hd, 1e-6);
            b.rope(x, &tokens, &p, ff.then_some(fid));
            // a second rope with the same table exercises the per-step memo
            b.rope(x, &tokens, &p, ff.then_some(fid));
            read(b, x)
        });
        let e = nmse(&got, &want);
        assert!(
            e < 1e-10,
            "head norm + rope hd={hd} n_rot={n_rot}: NMSE {e}"
        );
    }
}

struct AttnCase {
    p: AttnParams,
    /// Steps of (seq, positions) fed one after another.
    steps: Vec<Vec<(u32, std::ops::Range<u32>)>>,
}

fn run_attention(b: &mut dyn Backend, case: &AttnCase, seed: u64) -> Vec<f32> {
    let p = &case.p;
    let n_cells = 256;
    // Paged tables: each sequence's positions live in scattered cells.
    let mut perm: Vec<u32> = (0..n_cells as u32).collect();
    let mut r = Rng(seed ^ 0xabc);
    for i in (1..perm.len()).rev() {
        let j = ((r.f32() * 0.5 + 0.5) * i as f32) as usize % (i + 1);
        perm.swap(i, j);
    }
    let tables: Vec<Vec<u32>> = (0..2)
        .map(|s| perm[s * 128..(s + 1) * 128].to_vec())
        .collect();
    let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
    let (kw, vw) = (p.n_head_kv * p.head_dim_k, p.n_head_kv * p.head_dim_v);
    b.alloc_kv(3, n_cells, kw, vw).unwrap();
    let mut rng = Rng(seed);
    let mut all = Vec::new();
    for step in &case.steps {
        let tokens: Vec<TokenSlot> = step
            .iter()
            .flat_map(|(s, r)| r.clone().map(move |pos| TokenSlot { seq: *s, pos }))
            .collect();
        let n = tokens.len();
        let q = buf(
            b,
            n,
            p.n_head * p.head_dim_k,
            &rng.vec(n * p.n_head * p.head_dim_k, 1.0),
        );
        let k = buf(b, n, kw, &rng.vec(n * kw, 1.0));
        let v = buf(b, n, vw, &rng.vec(n * vw, 1.0));
        let o = b.alloc(n, p.n_head * p.head_dim_v);
        let batch = AttnBatch {
            tokens: &tokens,
            cells: &table_refs,
        };
        b.attention(3, q, k, v, &batch, p, o).unwrap();
        all.extend(read(b, o));
    }
    all
}

fn short_attn_cases() -> Vec<AttnCase> {
    let base = AttnParams {
        n_head: 4,
        n_head_kv: 2,
        head_dim_k: 64,
        head_dim_v: 64,
        scale: 0.125,
        window: None,
        softcap: None,
    };
    vec![
        // prefill of two sequences in one batch (causal), then decode steps
        AttnCase {
            p: base,
            steps: vec![
                vec![(0, 0..70), (1, 0..20)],
                vec![(0, 70..71), (1, 20..21)],
                vec![(1, 21..22)],
            ],
        },
        // sliding window shorter than the context, with soft-capping and wide heads
        AttnCase {
            p: AttnParams {
                n_head: 4,
                n_head_kv: 1,
                head_dim_k: 256,
                head_dim_v: 256,
                scale: 1.0,
                window: Some(16),
                softcap: Some(20.0),
            },
            steps: vec![vec![(0, 0..40)], vec![(0, 40..41)], vec![(0, 41..44)]],
        },
        // long decode over more than one KV tile
        AttnCase {
            p: AttnParams {
                n_head: 3,
                n_head_kv: 3,
                ..base
            },
            steps: vec![vec![(0, 0..100)], vec![(0, 100..101)]],
        },
    ]
}

#[test]
fn attention_decode_and_prefill() {
    let mut g = gpu();
    let cases = short_attn_cases();
    // K and V stored in one dispatch (default) and in two
    for fuse in [true, false] {
        g.set_fuse_q8k(fuse);
        for (i, case) in cases.iter().enumerate() {
            let (got, want) = both(&mut g, |b| run_attention(b, case, 100 + i as u64));
            let e = nmse(&got, &want);
            // Both follow ggml: below 64 queries Q and the V accumulator are rounded to f16.
            eprintln!("attention case {i} fuse={fuse}: NMSE {e:.2e}");
            assert!(e < attn_tol(&g), "attention case {i} fuse={fuse}: NMSE {e}");
        }
    }
}

/// Tiled prefill attention (`ATTN_TILE`, every sequence of the step with 64+ queries): several
/// sequences in one batch with ragged lengths (not multiples of the 32- or 16-query tile),
/// a prompt continued over cached cells, causal and sliding windows, soft-capping, GQA and
/// head dims 64 / 128 / 256; against the CPU, and against the per-token kernel.
#[test]
fn attention_prefill_tiled() {
    let mut g = gpu();
    let cases = [
        AttnCase {
            p: AttnParams {
                n_head: 4,
                n_head_kv: 2,
                head_dim_k: 64,
                head_dim_v: 64,
                scale: 0.125,
                window: None,
                softcap: None,
            },
            steps: vec![
                vec![(0, 0..70), (1, 0..97)],
                vec![(0, 70..71)],
                vec![(1, 97..125)],
            ],
        },
        AttnCase {
            p: AttnParams {
                n_head: 3,
                n_head_kv: 1,
                head_dim_k: 128,
                head_dim_v: 128,
                scale: 0.09,
                window: Some(37),
                softcap: None,
            },
            steps: vec![vec![(1, 0..45)], vec![(1, 45..120), (0, 0..66)]],
        },
        AttnCase {
            p: AttnParams {
                n_head: 2,
                n_head_kv: 2,
                head_dim_k: 256,
                head_dim_v: 256,
                scale: 0.0625,
                window: Some(50),
                softcap: Some(30.0),
            },
            steps: vec![vec![(0, 0..81)]],
        },
    ];
    // 16-query tiles (default), then 32-query tiles where the shared memory holds them
    for shape in [0, 1] {
        g.set_attn_tile_shape(shape);
        for (i, case) in cases.iter().enumerate() {
            g.set_attn_tile(true);
            let (got, want) = both(&mut g, |b| run_attention(b, case, 300 + i as u64));
            let e = nmse(&got, &want);
            g.set_attn_tile(false);
            let old = run_attention(&mut g, case, 300 + i as u64);
            let e_old = nmse(&old, &want);
            eprintln!(
                "tiled attention shape {shape} case {i}: NMSE {e:.2e} (per-token {e_old:.2e})"
            );
            assert!(
                e < attn_tol(&g),
                "tiled attention shape {shape} case {i}: NMSE {e}"
            );
            assert!(
                nmse(&got, &old) < attn_tol(&g),
                "tiled vs per-token, shape {shape} case {i}"
            );
            // The tiled kernel did run: its summation order rounds differently somewhere.
            assert!(
                got != old,
                "shape {shape} case {i}: tiled and per-token bit-identical"
            );
        }
    }
    g.set_attn_tile_shape(0);
    g.set_attn_tile(true);
}

/// Decode attention over long contexts (`ATTN_DECODE`): several sequences of ragged lengths
/// (up to 1000 cells, paged in scattered cells) decoded in one batch, one token each and then
/// three tokens of one sequence, GQA, a sliding window, soft-capping, head dims 64 / 128 / 256;
/// their caches filled by 64-token chunks with the tiled prefill kernel off (the per-token
/// kernel's f32 mode, and its f16 mode for the ragged last chunk). Against the CPU, and bit for
/// bit against the older per-head `ATTENTION` kernel (same operations in the same order).
#[test]
fn attention_decode_long() {
    let mut g = gpu();
    let cases = decode_long_cases();
    let run = run_decode_long;
    g.set_attn_tile(false);
    for (i, (p, lens)) in cases.iter().enumerate() {
        let seed = 700 + i as u64;
        let want = run(&mut CpuBackend::new(), p, lens, seed);
        g.set_attn_decode(0);
        let old = run(&mut g, p, lens, seed);
        for group in [4, 1] {
            g.set_attn_decode(group);
            let got = run(&mut g, p, lens, seed);
            let errs = g.take_errors();
            assert!(errs.is_empty(), "GPU errors: {errs:?}");
            let e = nmse(&got, &want);
            let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
            eprintln!(
                "decode attention case {i} group {group}: NMSE {e:.2e} ({same} of {} values equal to the CPU's)",
                want.len()
            );
            assert!(e < attn_tol(&g), "decode attention case {i}: NMSE {e}");
            assert_bit_identical(
                &got,
                &old,
                &format!("case {i} group {group}: against ATTENTION"),
            );
        }
    }
    g.set_attn_tile(true);
    g.set_attn_decode(4);
}

/// Decode attention in f32 (`set_attn_exact(false)`, the default on real GPUs) on lavapipe:
/// steps of fewer than 64 queries per sequence take `ATTN_DECODE`'s f32 mode (per-tile max and
/// sum reductions, V accumulated in f32), against the CPU's f16-rounded attention by NMSE
/// (`ATTN_F32_TOL`); bit for bit against the older per-head `ATTENTION` kernel in its f32 mode;
/// and different from the exact mode (the f32 mode did run). The long cases as
/// `attention_decode_long` (several sequences, up to 1000 cells, GQA, window, soft-capping,
/// head dims 64 / 128 / 256), then the short ones of `attention_decode_and_prefill`.
#[test]
fn attention_decode_f32() {
    let mut g = gpu();
    g.set_attn_tile(false);
    // Unsplit here (bit for bit against `ATTENTION`); `attention_decode_split` covers the split.
    g.set_attn_split(0);
    for (i, (p, lens)) in decode_long_cases().iter().enumerate() {
        let seed = 700 + i as u64;
        let want = run_decode_long(&mut CpuBackend::new(), p, lens, seed);
        g.set_attn_exact(true);
        g.set_attn_decode(4);
        let exact = run_decode_long(&mut g, p, lens, seed);
        g.set_attn_exact(false);
        g.set_attn_decode(0);
        let old = run_decode_long(&mut g, p, lens, seed);
        for group in [4, 1] {
            g.set_attn_decode(group);
            let got = run_decode_long(&mut g, p, lens, seed);
            let errs = g.take_errors();
            assert!(errs.is_empty(), "GPU errors: {errs:?}");
            let e = nmse(&got, &want);
            let e_exact = nmse(&exact, &want);
            // The decode steps alone (one token per sequence, then three of one), without the
            // 64-cell fill chunks (f32 in both backends).
            let tail = (lens.len() + 3) * p.n_head * p.head_dim_v;
            let at = want.len() - tail;
            let e_dec = nmse(&got[at..], &want[at..]);
            eprintln!(
                "f32 decode attention case {i} group {group}: NMSE {e:.2e}, decode steps {e_dec:.2e} (exact mode {e_exact:.2e})"
            );
            assert!(e < ATTN_F32_TOL, "f32 decode attention case {i}: NMSE {e}");
            // Up to 1000 cells, the CPU's f16 accumulator drifts (5e-6 to 1.4e-5 seen on
            // lavapipe): 1e-4 here, still far below a misread cell or head (1e-3 and more).
            assert!(
                e_dec < 1e-4,
                "f32 decode attention case {i}: decode NMSE {e_dec}"
            );
            assert!(got != exact, "case {i}: f32 and exact modes bit-identical");
            assert_bit_identical(
                &got,
                &old,
                &format!("case {i} group {group}: against ATTENTION"),
            );
        }
    }
    g.set_attn_tile(true);
    g.set_attn_decode(4);
    for (i, case) in short_attn_cases().iter().enumerate() {
        let (got, want) = both(&mut g, |b| run_attention(b, case, 100 + i as u64));
        let e = nmse(&got, &want);
        eprintln!("f32 attention short case {i}: NMSE {e:.2e}");
        assert!(e < ATTN_F32_TOL, "f32 attention short case {i}: NMSE {e}");
    }
    g.set_attn_split(1024);
    g.set_attn_exact(true);
}

/// Split decode attention (flash-decoding, f32 mode): tokens whose range spans several 64-cell
/// tiles are attended by several workgroups writing partials, merged by `ATTN_COMBINE`.
/// Contexts of 65, 300, 1000 and 4100 cells decoded in one batch (ragged, scattered cells),
/// then three tokens of one sequence; GQA 4:1 and 3:1, soft-capping, a sliding window, head
/// dims 64 / 128 / 256; against the CPU by NMSE and against the unsplit kernel (f32 sums in
/// another order), with items of one tile (default target) and of several (a target of 16
/// workgroups); the split path ran (`attn_splits`).
#[test]
fn attention_decode_split() {
    let mut g = gpu();
    g.set_attn_tile(false);
    g.set_attn_exact(false);
    let cases = [
        (
            AttnParams {
                n_head: 8,
                n_head_kv: 2,
                head_dim_k: 128,
                head_dim_v: 128,
                scale: 0.088,
                window: None,
                softcap: Some(30.0),
            },
            vec![65usize, 4100, 300, 1000],
        ),
        (
            AttnParams {
                n_head: 9,
                n_head_kv: 3,
                head_dim_k: 64,
                head_dim_v: 64,
                scale: 0.125,
                window: None,
                softcap: None,
            },
            vec![1000, 65, 4100, 300],
        ),
        (
            AttnParams {
                n_head: 4,
                n_head_kv: 1,
                head_dim_k: 256,
                head_dim_v: 256,
                scale: 0.0625,
                window: Some(700),
                softcap: None,
            },
            vec![4100, 300, 65, 1000],
        ),
    ];
    for (i, (p, lens)) in cases.iter().enumerate() {
        let seed = 900 + i as u64;
        let want = run_decode_long(&mut CpuBackend::new(), p, lens, seed);
        g.set_attn_split(0);
        let before = g.attn_splits();
        let unsplit = run_decode_long(&mut g, p, lens, seed);
        assert_eq!(
            g.attn_splits(),
            before,
            "case {i}: split with splitting off"
        );
        let tail = (lens.len() + 3) * p.n_head * p.head_dim_v;
        let at = want.len() - tail;
        for target in [1024, 16] {
            g.set_attn_split(target);
            let before = g.attn_splits();
            let got = run_decode_long(&mut g, p, lens, seed);
            let errs = g.take_errors();
            assert!(errs.is_empty(), "GPU errors: {errs:?}");
            // The two decode steps (the fill chunks span one tile each: unsplit).
            assert_eq!(
                g.attn_splits() - before,
                2,
                "case {i}: split path not taken"
            );
            let e = nmse(&got, &want);
            let e_dec = nmse(&got[at..], &want[at..]);
            let e_uns = nmse(&got[at..], &unsplit[at..]);
            eprintln!(
                "split decode attention case {i} target {target}: NMSE {e:.2e}, decode steps {e_dec:.2e}, vs unsplit {e_uns:.2e}"
            );
            assert!(
                e < ATTN_F32_TOL,
                "split decode attention case {i}: NMSE {e}"
            );
            assert!(
                e_dec < 1e-4,
                "split decode attention case {i}: decode NMSE {e_dec}"
            );
            assert!(e_uns < 1e-9, "case {i}: split vs unsplit NMSE {e_uns}");
            assert_bit_identical(
                &got[..at],
                &unsplit[..at],
                &format!("case {i}: fill chunks"),
            );
        }
    }
    g.set_attn_split(1024);
    g.set_attn_tile(true);
    g.set_attn_exact(true);
}

fn decode_long_cases() -> Vec<(AttnParams, Vec<usize>)> {
    vec![
        (
            AttnParams {
                n_head: 9,
                n_head_kv: 3,
                head_dim_k: 64,
                head_dim_v: 64,
                scale: 0.125,
                window: None,
                softcap: None,
            },
            vec![300usize, 1000, 77],
        ),
        (
            AttnParams {
                n_head: 8,
                n_head_kv: 2,
                head_dim_k: 128,
                head_dim_v: 128,
                scale: 0.088,
                window: None,
                softcap: Some(30.0),
            },
            vec![1000, 300],
        ),
        (
            AttnParams {
                n_head: 4,
                n_head_kv: 2,
                head_dim_k: 256,
                head_dim_v: 256,
                scale: 0.0625,
                window: Some(200),
                softcap: None,
            },
            vec![300, 1000, 5],
        ),
    ]
}

fn run_decode_long(b: &mut dyn Backend, p: &AttnParams, lens: &[usize], seed: u64) -> Vec<f32> {
    run_decode_then(b, p, lens, seed, None)
}

/// `run_decode_long`, each step's attention output also multiplied by `product` (whose
/// columns are the output's width), the product's rows following the step's output.
fn run_decode_then(
    b: &mut dyn Backend,
    p: &AttnParams,
    lens: &[usize],
    seed: u64,
    product: Option<&HostWeight>,
) -> Vec<f32> {
    let wid = product.map(|w| b.add_weight(w).unwrap());
    let n_cells: usize = lens.iter().sum::<usize>() + 8;
    let mut perm: Vec<u32> = (0..n_cells as u32).collect();
    let mut r = Rng(seed ^ 0x5eed);
    for i in (1..perm.len()).rev() {
        let j = ((r.f32() * 0.5 + 0.5) * i as f32) as usize % (i + 1);
        perm.swap(i, j);
    }
    // The decode sequences' tables, then one fill sequence per 64-cell chunk of them.
    let mut tables: Vec<Vec<u32>> = Vec::new();
    let mut at = 0;
    for &len in lens {
        tables.push(perm[at..at + len].to_vec());
        at += len;
    }
    for s in 0..lens.len() {
        for c in tables[s].clone().chunks(64) {
            tables.push(c.to_vec());
        }
    }
    let refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
    let (kw, vw) = (p.n_head_kv * p.head_dim_k, p.n_head_kv * p.head_dim_v);
    b.alloc_kv(0, n_cells, kw, vw).unwrap();
    let fill: Vec<TokenSlot> = (lens.len()..tables.len())
        .flat_map(|s| (0..tables[s].len() as u32).map(move |pos| TokenSlot { seq: s as u32, pos }))
        .collect();
    let last = lens.iter().position(|&l| l >= 3).unwrap();
    let steps: Vec<Vec<TokenSlot>> = vec![
        fill,
        (0..lens.len())
            .map(|s| TokenSlot {
                seq: s as u32,
                pos: lens[s] as u32 - 1,
            })
            .collect(),
        (lens[last] as u32 - 3..lens[last] as u32)
            .map(|pos| TokenSlot {
                seq: last as u32,
                pos,
            })
            .collect(),
    ];
    let mut rng = Rng(seed);
    let mut all = Vec::new();
    for tokens in &steps {
        let n = tokens.len();
        let q = buf(
            b,
            n,
            p.n_head * p.head_dim_k,
            &rng.vec(n * p.n_head * p.head_dim_k, 1.0),
        );
        let k = buf(b, n, kw, &rng.vec(n * kw, 1.0));
        let v = buf(b, n, vw, &rng.vec(n * vw, 1.0));
        let o = b.alloc(n, p.n_head * p.head_dim_v);
        let batch = AttnBatch {
            tokens,
            cells: &refs,
        };
        b.attention(0, q, k, v, &batch, p, o).unwrap();
        all.extend(read(b, o));
        if let (Some(wid), Some(w)) = (wid, product) {
            let po = b.alloc(n, w.dims[1] as usize);
            b.matmul(wid, o, po);
            all.extend(read(b, po));
        }
    }
    all
}

#[test]
fn decode_attention_writes_the_products_q8k_input() {
    let mut g = gpu();
    g.set_attn_tile(false);
    let mut rng = Rng(0xa77e);
    // (params, fusion expected unsplit, fusion expected split)
    let cases = [
        (decode_long_cases()[1].0, true, true),
        (decode_long_cases()[0].0, false, false),
        (
            AttnParams {
                n_head: 4,
                n_head_kv: 1,
                head_dim_k: 256,
                head_dim_v: 256,
                scale: 0.0625,
                window: Some(700),
                softcap: None,
            },
            true,
            true,
        ),
        (
            AttnParams {
                n_head: 6,
                n_head_kv: 2,
                head_dim_k: 128,
                head_dim_v: 128,
                scale: 0.088,
                window: None,
                softcap: None,
            },
            false,
            true,
        ),
    ];
    let lens = [300usize, 1000, 77];
    for (i, (p, unsplit_fuses, split_fuses)) in cases.iter().enumerate() {
        let width = p.n_head * p.head_dim_v;
        let dtype = if width % 256 == 0 {
            DType::Q4_K
        } else {
            DType::Q8_0
        };
        let w = weight("wo", dtype, width, 40, &rng.vec(width * 40, 1.0));
        for exact in [true, false] {
            g.set_attn_exact(exact);
            for split in [0u32, 16] {
                if exact && split > 0 {
                    continue; // the split path is f32 only
                }
                g.set_attn_split(split);
                let fuses = if split > 0 {
                    *split_fuses
                } else {
                    *unsplit_fuses
                };
                // Two decode steps (the fill step is too long for the integer-dot path).
                let saved = if fuses { 2 } else { 0 };
                assert_fusion_saves(
                    &mut g,
                    GpuBackend::set_attn_q8k,
                    saved,
                    &format!("case {i} exact {exact} split {split}: the fused Q8_K copy"),
                    |g| run_decode_then(g, p, &lens, 77 + i as u64, Some(&w)),
                );
            }
        }
    }
    g.set_attn_q8k(true);
    g.set_attn_split(1024);
    g.set_attn_tile(true);
    g.set_attn_exact(true);
}

#[test]
fn attention_errors_match_the_cpu() {
    let mut g = gpu();
    let p = AttnParams {
        n_head: 2,
        n_head_kv: 2,
        head_dim_k: 8,
        head_dim_v: 8,
        scale: 1.0,
        window: None,
        softcap: None,
    };
    let q = g.alloc(1, 16);
    let o = g.alloc(1, 16);
    let tokens = [TokenSlot { seq: 0, pos: 5 }];
    let short = [0u32, 1, 2];
    let tables: [&[u32]; 1] = [&short];
    let batch = AttnBatch {
        tokens: &tokens,
        cells: &tables,
    };
    assert!(matches!(
        g.attention(0, q, q, q, &batch, &p, o),
        Err(BackendError::NoKvCache { layer: 0 })
    ));
    g.alloc_kv(0, 4, 16, 16).unwrap();
    assert!(matches!(
        g.attention(0, q, q, q, &batch, &p, o),
        Err(BackendError::MissingCell { seq: 0, pos: 5 })
    ));
    let far = [0u32, 1, 2, 3, 4, 9];
    let tables: [&[u32]; 1] = [&far];
    let batch = AttnBatch {
        tokens: &tokens,
        cells: &tables,
    };
    assert!(matches!(
        g.attention(0, q, q, q, &batch, &p, o),
        Err(BackendError::CellOutOfRange {
            cell: 9,
            n_cells: 4
        })
    ));
    assert_eq!(g.kv_bytes(), 4 * 32 * 2);
}

#[test]
fn one_submission_per_step() {
    let mut g = gpu();
    let mut rng = Rng(1);
    // F32 weights: with a quantized format the activations are rounded to its levels before
    // each product, and over 20 chained products one level rounded the other way on a GPU
    // (another summation order) grew to NMSE 7e-4 on an H100 (run 15); this test is about
    // submissions, the formats have their own.
    let w = weight("w", DType::F32, 64, 64, &rng.vec(64 * 64, 1.0));
    let xv = rng.vec(64, 1.0);
    // 60 ops chained through one buffer (each reads what the previous wrote), then a download.
    let run = |b: &mut dyn Backend| {
        let wid = b.add_weight(&w).unwrap();
        let x = buf(b, 1, 64, &xv);
        let o = b.alloc(1, 64);
        b.sync();
        for _ in 0..20 {
            b.matmul(wid, x, o);
            b.add(x, o);
            b.scale(x, 0.2);
        }
        read(b, x)
    };
    // No part submissions (the default sends one every 40 dispatches): the step is one.
    g.set_flush_every(0);
    let before = g.submissions();
    let got = run(&mut g);
    assert_eq!(
        g.submissions() - before,
        2,
        "setup, then 60 ops and a download in one"
    );
    let want = run(&mut CpuBackend::new());
    let e = nmse(&got, &want);
    assert!(e < 1e-9, "chained ops: NMSE {e}");
    // Part submissions every 7 dispatches (the device starts while the host encodes): the
    // same result.
    g.set_flush_every(7);
    let before = g.submissions();
    let parts = run(&mut g);
    assert!(g.submissions() - before > 5, "part submissions were made");
    assert_eq!(parts, got, "part submissions change nothing");
}

#[test]
fn adapters_are_listed() {
    let list = orchard_gpu::list_adapters();
    assert!(!list.is_empty());
    assert_eq!(list[0].index, 0);
    let g = gpu();
    assert_eq!(g.adapter().name, list[0].name);
    assert!(g.name().contains(&list[0].name));
}

/// Residual adds folded into the RMS norm after them (`ADD_NORM`, with the Q8_K copy when the
/// rows are whole 256-value blocks and the step is a decode step): the residual, the norm and
/// the integer-dot product of the norm match the CPU, for ragged widths (576, 100) and prompt
/// sizes too, and the fused run makes fewer dispatches.
#[test]
fn residual_add_folds_into_the_norm() {
    let mut rng = Rng(0xadd);
    for (cols, rows) in [(512usize, 40usize), (4352, 8), (576, 24), (100, 8)] {
        let wv = rng.vec(cols * rows, 1.0);
        let nv = rng.vec(cols, 1.0);
        let dtype = if cols.is_multiple_of(256) {
            DType::Q4_K
        } else {
            DType::Q8_0
        };
        let dtype = if cols.is_multiple_of(32) {
            dtype
        } else {
            DType::F32
        };
        let w = weight("w", dtype, cols, rows, &wv);
        let nw = weight("norm", DType::F32, cols, 1, &nv);
        for n in [1usize, 3, 12] {
            let xv = rng.vec(n * cols, 2.0);
            let yv = rng.vec(n * cols, 2.0);
            let zv = rng.vec(n * cols, 2.0);
            let run = |b: &mut dyn Backend| {
                let wid = b.add_weight(&w).unwrap();
                let nid = b.add_weight(&nw).unwrap();
                let x = buf(b, n, cols, &xv);
                let y = buf(b, n, cols, &yv);
                let z = buf(b, n, cols, &zv);
                let h = b.alloc(n, cols);
                let o = b.alloc(n, rows);
                b.sync();
                // two layers' worth: add, norm, product, add, norm (no weight), product
                b.add(x, y);
                b.rms_norm(x, Some(nid), 1e-5, h);
                b.matmul(wid, h, o);
                let mut v = read(b, o);
                b.add(x, z);
                b.rms_norm(x, None, 1e-6, h);
                b.matmul(wid, h, o);
                v.extend(read(b, h));
                v.extend(read(b, o));
                v.extend(read(b, x));
                v
            };
            let want = run(&mut CpuBackend::new());
            let mut counts = Vec::new();
            let mut outs = Vec::new();
            for fuse in [true, false] {
                let mut g = gpu();
                g.set_fuse_q8k(fuse);
                // the decode variant (ADD_NORM_Q8K) is off by default; test it too
                g.set_fuse_add_norm_q8k(true);
                let before = g.dispatches();
                let got = run(&mut g);
                counts.push(g.dispatches() - before);
                let errs = g.take_errors();
                assert!(errs.is_empty(), "GPU errors: {errs:?}");
                let e = nmse(&got, &want);
                // n = 12: the product runs on tensor cores where the device has them
                let tol = product_tol(&g, 1e-10);
                assert!(e < tol, "{cols}x{rows} n={n} fuse={fuse}: NMSE {e}");
                outs.push(got);
            }
            assert_eq!(outs[0], outs[1], "{cols} n={n}: fusion changes nothing");
            assert!(
                counts[0] + 2 <= counts[1],
                "{cols} n={n}: adds folded ({counts:?} dispatches)"
            );
        }
    }
}

/// The prompt form of the fused GLU (`GLU_F16`) writes the f16 copy that cm2 products read:
/// bit for bit what the separate pass makes of its output (`ACT_Q8K_WIDE` where the products
/// read Q8_K-rounded inputs, `ACT_QUANT`'s f16 mode where they read plain f16, the default),
/// for a block of zeros, rows of several blocks, SwiGLU and GeGLU, in one fewer dispatch each,
/// with the same f32 output.
#[test]
fn prompt_glu_writes_the_f16_product_input() {
    let mut rng = Rng(0xf16);
    for q8k in [true, false] {
        for cols in [768usize, 4096] {
            let n = 12;
            let mut gv = rng.vec(n * cols, 4.0);
            // row 1's first block is zero: its copy is zero
            gv[cols..cols + 256].iter_mut().for_each(|v| *v = 0.0);
            let uv = rng.vec(n * cols, 2.0);
            let run = |g: &mut GpuBackend| {
                let gate = buf(g, n, cols, &gv);
                let up = buf(g, n, cols, &uv);
                let mut v = Vec::new();
                for kind in [GluKind::SwiGlu, GluKind::GeGlu] {
                    let a = g.alloc(n, cols);
                    g.glu(gate, up, kind, a);
                    v.extend(g.prompt_f16_input(a));
                    v.extend(read(g, a));
                }
                v
            };
            let mut g = gpu();
            g.set_cm2_q8k_inputs(q8k);
            let what = format!("f16 copies, {cols} wide, Q8_K-rounded {q8k}");
            let got = assert_fusion_saves(&mut g, |g, on| g.set_fuse_f16(on, on), 2, &what, run);
            assert!(
                got[cols..cols + 256].iter().all(|&v| v == 0.0),
                "{what}: zero block"
            );
            assert!(got[..256].iter().any(|&v| v != 0.0), "{what}: copy written");
            let out = &got[n * cols..2 * n * cols];
            if !q8k {
                assert_f16_of(&got[..n * cols], out, &what);
                continue;
            }
            // the copy is the GLU's output rounded: within a Q8_K step (1/127 of its block's
            // extreme) plus f16 rounding
            for (b, (c, o)) in got[..n * cols].chunks(256).zip(out.chunks(256)).enumerate() {
                let amax = o.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in c.iter().zip(o) {
                    assert!(
                        (x - y).abs() <= amax / 254.0 * 1.01 + y.abs() / 1024.0,
                        "{what}: block {b}: {x} for {y}"
                    );
                }
            }
        }
    }
}

/// `copy` is `out` rounded to f16, value for value.
fn assert_f16_of(copy: &[f32], out: &[f32], what: &str) {
    assert_eq!(copy.len(), out.len(), "{what}: lengths");
    for (i, (c, o)) in copy.iter().zip(out).enumerate() {
        assert_eq!(
            c.to_bits(),
            half::f16::from_f32(*o).to_f32().to_bits(),
            "{what}: value {i}: {c} for {o}"
        );
    }
}

/// A prompt's residual add + norm (`ADD_NORM_F16`) writes the plain f16 copy cm2 products
/// read: bit for bit what the separate pass makes of the norm's output, in one fewer
/// dispatch, with the same f32 outputs (norm and residual); rows the kernel takes in one pass
/// (up to 4096 values, from registers) and in two.
#[test]
fn prompt_add_norm_writes_the_f16_product_input() {
    let mut rng = Rng(0xadd);
    for cols in [768usize, 4096, 5120] {
        let n = 12;
        let xv = rng.vec(n * cols, 2.0);
        let yv = rng.vec(n * cols, 2.0);
        let nv = rng.vec(cols, 1.0);
        let nw = weight("norm", DType::F32, cols, 1, &nv);
        let run = |g: &mut GpuBackend| {
            let nid = g.add_weight(&nw).unwrap();
            let x = buf(g, n, cols, &xv);
            let y = buf(g, n, cols, &yv);
            let h = g.alloc(n, cols);
            g.add(x, y);
            g.rms_norm(x, Some(nid), 1e-5, h);
            let mut v = g.prompt_f16_input(h);
            v.extend(read(g, h));
            v.extend(read(g, x));
            v
        };
        let mut g = gpu();
        let what = format!("add + norm f16 copy, {cols} wide");
        let got = assert_fusion_saves(&mut g, |g, on| g.set_fuse_f16(on, on), 1, &what, run);
        assert_f16_of(&got[..n * cols], &got[n * cols..2 * n * cols], &what);
        let want: Vec<f32> = xv.iter().zip(&yv).map(|(a, b)| a + b).collect();
        assert_eq!(&got[2 * n * cols..], &want[..], "{what}: residual");
    }
}

/// RoPE of Q and K folded into attention's KV store (`ROPE_KV`): the attention output and the
/// rotated Q and K buffers match the CPU for plain and NeoX rotation, partial rotation and
/// grouped heads, over several steps, with two fewer dispatches per step.
#[test]
fn rope_folds_into_the_kv_store() {
    // (n_head, n_head_kv, head_dim, n_rot, neox)
    for (i, (nh, nkv, hd, n_rot, neox)) in [
        (4usize, 2usize, 64usize, 64usize, false),
        (4, 2, 64, 64, true),
        (3, 1, 128, 64, true),
        (2, 2, 32, 16, false),
    ]
    .into_iter()
    .enumerate()
    {
        let p = AttnParams {
            n_head: nh,
            n_head_kv: nkv,
            head_dim_k: hd,
            head_dim_v: hd,
            scale: 0.125,
            window: None,
            softcap: None,
        };
        let rp = RopeParams {
            n_rot,
            head_dim: hd,
            freq_base: 10000.0,
            freq_scale: 1.0,
            neox,
        };
        let steps: Vec<std::ops::Range<u32>> = vec![0..9, 9..10, 10..11, 11..14];
        let run = |b: &mut dyn Backend| {
            let table: Vec<u32> = (0..64).rev().collect();
            let tables = [table.as_slice()];
            b.alloc_kv(0, 64, nkv * hd, nkv * hd).unwrap();
            let mut rng = Rng(77 + i as u64);
            let mut all = Vec::new();
            for r in &steps {
                let tokens: Vec<TokenSlot> =
                    r.clone().map(|pos| TokenSlot { seq: 0, pos }).collect();
                let n = tokens.len();
                let q = buf(b, n, nh * hd, &rng.vec(n * nh * hd, 1.0));
                let k = buf(b, n, nkv * hd, &rng.vec(n * nkv * hd, 1.0));
                let v = buf(b, n, nkv * hd, &rng.vec(n * nkv * hd, 1.0));
                let o = b.alloc(n, nh * hd);
                b.rope(q, &tokens, &rp, None);
                b.rope(k, &tokens, &rp, None);
                let batch = AttnBatch {
                    tokens: &tokens,
                    cells: &tables,
                };
                b.attention(0, q, k, v, &batch, &p, o).unwrap();
                all.extend(read(b, o));
                all.extend(read(b, q));
                all.extend(read(b, k));
            }
            all
        };
        let want = run(&mut CpuBackend::new());
        let mut counts = Vec::new();
        let mut outs = Vec::new();
        let mut tol = 0.0;
        for fuse in [true, false] {
            let mut g = gpu();
            tol = attn_tol(&g);
            g.set_fuse_q8k(fuse);
            // Q and K are read back below: keep the RoPEs out of the attention kernel.
            g.set_attn_rope(false);
            let before = g.dispatches();
            let got = run(&mut g);
            counts.push(g.dispatches() - before);
            let errs = g.take_errors();
            assert!(errs.is_empty(), "GPU errors: {errs:?}");
            outs.push(got);
        }
        // the fused RoPE and store against the separate ones on the same device (same
        // attention kernel), then both against the CPU
        let e = nmse(&outs[0], &outs[1]);
        assert!(e < 1e-12, "case {i}: fused vs separate NMSE {e}");
        for (fuse, got) in [true, false].iter().zip(&outs) {
            let e = nmse(got, &want);
            assert!(e < tol, "case {i} fuse={fuse}: NMSE {e}");
        }
        // fused: one dispatch for both RoPEs and the store; unfused: two RoPEs and one or two
        // stores
        assert!(
            counts[0] + 2 * steps.len() as u64 <= counts[1],
            "case {i}: RoPEs folded ({counts:?} dispatches)"
        );
    }
}

/// Decode steps of two sequences after a prefill, with the RoPEs of Q and K (`rope_cases`'
/// case `i`) recorded before each attention; returns every step's attention output.
fn run_rope_decode(b: &mut dyn Backend, i: usize) -> Vec<f32> {
    let (nh, nkv, hd, n_rot, neox) = ROPE_CASES[i];
    let p = AttnParams {
        n_head: nh,
        n_head_kv: nkv,
        head_dim_k: hd,
        head_dim_v: hd,
        scale: 0.125,
        window: None,
        softcap: None,
    };
    let rp = RopeParams {
        n_rot,
        head_dim: hd,
        freq_base: 10000.0,
        freq_scale: 1.0,
        neox,
    };
    let t0: Vec<u32> = (0..160).rev().collect();
    let t1: Vec<u32> = (160..200).collect();
    let tables = [t0.as_slice(), t1.as_slice()];
    b.alloc_kv(0, 200, nkv * hd, nkv * hd).unwrap();
    let slot = |seq: u32, pos: u32| TokenSlot { seq, pos };
    let steps: Vec<Vec<TokenSlot>> = vec![
        (0..100).map(|pos| slot(0, pos)).collect(),
        vec![slot(0, 100)],
        vec![slot(0, 101), slot(1, 0)],
        (1..4).map(|pos| slot(1, pos)).collect(),
        vec![slot(1, 4), slot(0, 102)],
    ];
    let mut rng = Rng(0x709e + i as u64);
    let mut all = Vec::new();
    for tokens in &steps {
        let n = tokens.len();
        let q = buf(b, n, nh * hd, &rng.vec(n * nh * hd, 1.0));
        let k = buf(b, n, nkv * hd, &rng.vec(n * nkv * hd, 1.0));
        let v = buf(b, n, nkv * hd, &rng.vec(n * nkv * hd, 1.0));
        let o = b.alloc(n, nh * hd);
        b.rope(q, tokens, &rp, None);
        b.rope(k, tokens, &rp, None);
        let batch = AttnBatch {
            tokens,
            cells: &tables,
        };
        b.attention(0, q, k, v, &batch, &p, o).unwrap();
        all.extend(read(b, o));
    }
    all
}

/// (n_head, n_head_kv, head_dim, n_rot, neox)
const ROPE_CASES: [(usize, usize, usize, usize, bool); 5] = [
    (4, 2, 64, 64, false),
    (4, 2, 64, 64, true),
    (3, 1, 128, 64, true),
    (2, 2, 32, 16, false),
    (8, 2, 128, 128, false),
];

#[test]
fn rope_folds_into_decode_attention() {
    let mut g = gpu();
    let tol = attn_tol(&g);
    for i in 0..ROPE_CASES.len() {
        let want = run_rope_decode(&mut CpuBackend::new(), i);
        for (exact, split) in [(true, 0u32), (false, 0), (false, 16)] {
            g.set_attn_exact(exact);
            g.set_attn_split(split);
            let what = format!("case {i} exact {exact} split {split}");
            // Three steps without two tokens of one sequence: their `RopeKv` dispatch gone.
            let folded = assert_fusion_saves(
                &mut g,
                GpuBackend::set_attn_rope,
                3,
                &format!("{what}: folded RoPE"),
                |g| {
                    let splits = g.attn_splits();
                    let got = run_rope_decode(g, i);
                    assert_eq!(
                        g.attn_splits() > splits,
                        split > 0,
                        "{what}: split path taken or not"
                    );
                    got
                },
            );
            let e = nmse(&folded, &want);
            let limit = if exact { tol } else { ATTN_F32_TOL };
            assert!(e < limit, "{what}: NMSE against the CPU {e}");
        }
    }
    g.set_attn_split(1024);
    g.set_attn_exact(true);
}

#[test]
fn reading_a_buffer_whose_rope_was_folded_is_reported() {
    let mut g = gpu();
    let p = AttnParams {
        n_head: 2,
        n_head_kv: 1,
        head_dim_k: 64,
        head_dim_v: 64,
        scale: 0.125,
        window: None,
        softcap: None,
    };
    let rp = RopeParams {
        n_rot: 64,
        head_dim: 64,
        freq_base: 10000.0,
        freq_scale: 1.0,
        neox: false,
    };
    let table: Vec<u32> = (0..8).collect();
    let tables = [table.as_slice()];
    g.alloc_kv(0, 8, 64, 64).unwrap();
    let tokens = [TokenSlot { seq: 0, pos: 0 }];
    let mut rng = Rng(5);
    let q = buf(&mut g, 1, 128, &rng.vec(128, 1.0));
    let k = buf(&mut g, 1, 64, &rng.vec(64, 1.0));
    let v = buf(&mut g, 1, 64, &rng.vec(64, 1.0));
    let o = g.alloc(1, 128);
    g.rope(q, &tokens, &rp, None);
    g.rope(k, &tokens, &rp, None);
    let batch = AttnBatch {
        tokens: &tokens,
        cells: &tables,
    };
    g.attention(0, q, k, v, &batch, &p, o).unwrap();
    read(&mut g, o);
    assert!(g.take_errors().is_empty());
    read(&mut g, q);
    let errs = g.take_errors();
    assert!(
        errs.iter().any(|e| e.contains("RoPE was folded")),
        "no error for the unrotated Q: {errs:?}"
    );
    // written again: readable
    g.upload(q, &rng.vec(128, 1.0));
    read(&mut g, q);
    assert!(g.take_errors().is_empty());
}

/// Integer-dot products of one input recorded back to back (Q/K/V, gate/up) run as one
/// dispatch over two or three matrices (`source_q8k_multi`): outputs match the CPU for
/// matrices of different row counts (ragged last groups) and every reduction, a product of
/// another format or input starts a new dispatch, and the merged run makes fewer dispatches.
#[test]
fn products_of_one_input_share_a_dispatch() {
    let mut rng = Rng(0x9c7);
    let cols = 512;
    // (dtype, rows) of the products taken in order from one input
    let groups: [&[(DType, usize)]; 3] = [
        &[(DType::Q4_K, 72), (DType::Q4_K, 24), (DType::Q4_K, 20)],
        &[
            (DType::Q4_K, 64),
            (DType::Q4_K, 8),
            (DType::Q6_K, 8),
            (DType::Q6_K, 36),
        ],
        &[(DType::Q6_K, 40), (DType::Q6_K, 40)],
    ];
    // One backend per (configuration, fusion), reused over groups and token counts: a fresh
    // one for each of the 36 runs exhausted the NVIDIA driver (no adapter found after ~20
    // backends in one process, H100, run 15).
    let mut pool: Vec<Option<GpuBackend>> = (0..6).map(|_| None).collect();
    for (gi, list) in groups.iter().enumerate() {
        let ws: Vec<HostWeight> = list
            .iter()
            .enumerate()
            .map(|(i, &(dt, rows))| {
                weight(&format!("w{i}"), dt, cols, rows, &rng.vec(cols * rows, 1.0))
            })
            .collect();
        for n in [1usize, 3] {
            let xv = rng.vec(n * cols, 2.0);
            let run = |b: &mut dyn Backend| {
                let ids: Vec<_> = ws.iter().map(|w| b.add_weight(w).unwrap()).collect();
                let x = buf(b, n, cols, &xv);
                let outs: Vec<BufId> = list.iter().map(|&(_, r)| b.alloc(n, r)).collect();
                b.sync();
                for (id, &o) in ids.iter().zip(&outs) {
                    b.matmul(*id, x, o);
                }
                let mut v = Vec::new();
                for &o in &outs {
                    v.extend(read(b, o));
                }
                v
            };
            let want = run(&mut CpuBackend::new());
            // per-matrix shapes with subgroup reductions, the shared-memory tree, and a row
            // group of 8 threads (one subgroup on lavapipe: `subgroupAdd` alone)
            let configs = [(true, None), (false, None), (true, Some((64, 8, 4)))];
            for (ci, (subgroups, shape)) in configs.into_iter().enumerate() {
                let mut counts = Vec::new();
                for (fi, fuse) in [true, false].into_iter().enumerate() {
                    let g = pool[ci * 2 + fi].get_or_insert_with(|| {
                        let mut g = gpu();
                        g.set_fuse_q8k(fuse);
                        g.set_subgroups(subgroups);
                        if let Some((wg, tpr, nr)) = shape {
                            assert!(g.set_q8k_shape(wg, tpr, nr));
                        }
                        g
                    });
                    let before = g.dispatches();
                    let got = run(g);
                    counts.push(g.dispatches() - before);
                    let errs = g.take_errors();
                    assert!(errs.is_empty(), "GPU errors: {errs:?}");
                    let e = nmse(&got, &want);
                    assert!(e < 1e-11, "group {gi} n={n} fuse={fuse}: NMSE {e}");
                }
                // one dispatch per run of same-format products (at most three) instead of one each
                let runs = if gi == 1 { 2 } else { 1 };
                assert_eq!(
                    counts[1] - counts[0],
                    (list.len() - runs) as u64,
                    "group {gi} n={n}: merged ({counts:?} dispatches)"
                );
            }
        }
    }
}

/// A residual add of an integer-dot product's output folded into that product
/// (`MatVecQ8KAdd`: the output written and added into the residual by the same thread): the
/// product, the residual and the norm read after it match the CPU and the separate add bit
/// for bit, for both K-quant formats, ragged row groups and every reduction.
#[test]
fn residual_add_folds_into_the_product() {
    let mut rng = Rng(0xacc);
    for (dtype, cols, rows) in [(DType::Q4_K, 512usize, 256usize), (DType::Q6_K, 256, 40)] {
        let w = weight("w", dtype, cols, rows, &rng.vec(cols * rows, 1.0));
        let nw = weight("norm", DType::F32, rows, 1, &rng.vec(rows, 1.0));
        for n in [1usize, 3] {
            let hv = rng.vec(n * cols, 2.0);
            let xv = rng.vec(n * rows, 2.0);
            let run = |b: &mut dyn Backend| {
                let wid = b.add_weight(&w).unwrap();
                let nid = b.add_weight(&nw).unwrap();
                let h = buf(b, n, cols, &hv);
                let x = buf(b, n, rows, &xv);
                let o = b.alloc(n, rows);
                let nx = b.alloc(n, rows);
                b.sync();
                // two layers' worth of `x += W h; norm(x)`
                let mut v = Vec::new();
                for _ in 0..2 {
                    b.matmul(wid, h, o);
                    b.add(x, o);
                    b.rms_norm(x, Some(nid), 1e-5, nx);
                    v.extend(read(b, o));
                    v.extend(read(b, x));
                    v.extend(read(b, nx));
                }
                v
            };
            let want = run(&mut CpuBackend::new());
            for (subgroups, shape) in [(true, None), (false, None), (true, Some((64, 8, 4)))] {
                let mut counts = Vec::new();
                let mut outs = Vec::new();
                for fuse in [true, false] {
                    let mut g = gpu();
                    g.set_fuse_q8k(fuse);
                    g.set_subgroups(subgroups);
                    if let Some((wg, tpr, nr)) = shape {
                        assert!(g.set_q8k_shape(wg, tpr, nr));
                    }
                    let before = g.dispatches();
                    let got = run(&mut g);
                    counts.push(g.dispatches() - before);
                    let errs = g.take_errors();
                    assert!(errs.is_empty(), "GPU errors: {errs:?}");
                    let e = nmse(&got, &want);
                    assert!(e < 1e-11, "{dtype} n={n} fuse={fuse}: NMSE {e}");
                    outs.push(got);
                }
                assert_eq!(outs[0], outs[1], "{dtype} n={n}: the fold changes nothing");
                assert!(
                    counts[0] + 2 <= counts[1],
                    "{dtype} n={n}: adds folded ({counts:?} dispatches)"
                );
            }
        }
    }
}
