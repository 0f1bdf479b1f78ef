//! Decode-kernel speed on one core: a K-quant matrix 4096 wide (an 8B model's width) dotted with
//! one Q8_K activation row, row by row through each order's kernel, in GB/s of weights: once on a
//! matrix that stays in L2 (the kernel's compute bound) and once streamed from a 256 MiB matrix
//! (the decode case). `cargo run --release -p orchard-quant --example kdecode`.

use orchard_core::DType;
use orchard_quant::{traits_for, Tier};
use std::hint::black_box;
use std::time::Instant;

const N: usize = 4096;

extern "C" {
    fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
}

/// A zeroed buffer of `len` bytes in 2 MiB pages where the kernel grants them (as the model
/// mmap is advised), so that the streamed matrix is read as decode reads weights.
fn huge_buffer(len: usize) -> (Vec<u8>, usize) {
    const HUGE: usize = 2 << 20;
    let mut v = Vec::<u8>::with_capacity(len + HUGE);
    let off = v.as_ptr().align_offset(HUGE);
    // SAFETY: the range lies inside the allocation (capacity len + 2 MiB), untouched so far;
    // MADV_HUGEPAGE (14) only changes how its pages are backed.
    unsafe { madvise(v.as_mut_ptr().add(off) as *mut _, len - len % HUGE, 14) };
    v.resize(off + len, 0);
    (v, off)
}

fn weights(dtype: DType, rows: usize) -> Vec<u8> {
    let t = traits_for(Tier::Reference, dtype).unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut out = Vec::new();
    let mut row = vec![0u8; N / dtype.block_size() * dtype.block_bytes()];
    for _ in 0..rows.min(64) {
        let x: Vec<f32> = (0..N)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        (t.from_float_ref.unwrap())(&x, &mut row);
        out.extend_from_slice(&row);
    }
    if rows <= 64 {
        out.truncate(rows * row.len());
        return out;
    }
    // Streamed matrices: the 64 rows repeated, in huge pages; returned without the leading
    // alignment padding by copying into place at offset 0 of a fresh huge buffer's tail.
    let (mut big, off) = huge_buffer(rows * row.len());
    for dst in big[off..].chunks_mut(out.len()) {
        let n = dst.len();
        dst.copy_from_slice(&out[..n]);
    }
    big.drain(..off);
    big
}

fn activations(dtype: DType) -> Vec<u8> {
    let act = traits_for(Tier::Reference, dtype).unwrap().vec_dot_type;
    let x: Vec<f32> = (0..N)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut q = vec![0u8; N / act.block_size() * act.block_bytes()];
    (traits_for(Tier::Scalar, act).unwrap().from_float.unwrap())(&x, &mut q);
    q
}

fn time(label: &str, bytes: usize, reps: usize, mut f: impl FnMut()) {
    f();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{label:<40} {:6.1} GB/s", bytes as f64 / best / 1e9);
}

fn main() {
    let tier = Tier::ALL.into_iter().rfind(|t| t.is_available()).unwrap();
    println!("tier {tier:?}");
    for dtype in [DType::Q4_K, DType::Q6_K] {
        let t = traits_for(tier, dtype).unwrap();
        let act = activations(dtype);
        let rb = N / dtype.block_size() * dtype.block_bytes();
        for (what, rows, reps) in [
            ("L1", 8usize, 20000usize),
            ("L2", 64, 2000),
            ("stream", (256 << 20) / rb, 5),
        ] {
            let w = weights(dtype, rows);
            let mut out = vec![0f32; rows];
            let mut kernels: Vec<(&str, orchard_quant::VecDotFn)> =
                vec![("vec_dot", t.vec_dot.unwrap())];
            if let Some(k) = t.vec_dot_interleaved {
                kernels.push(("gemv order", k));
            }
            for (name, k) in kernels {
                time(&format!("{dtype} {what} {name}"), w.len(), reps, || {
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = k(N, &w[r * rb..(r + 1) * rb], &act);
                    }
                    black_box(&out);
                });
            }
            if let Some(k) = t.vec_dot_interleaved_group {
                // The same rows block-interleaved in groups of four: one stream.
                let mut g = if rows > 64 {
                    let (mut b, off) = huge_buffer(w.len());
                    b.drain(..off);
                    b
                } else {
                    vec![0u8; w.len()]
                };
                for (src, dst) in w.chunks_exact(4 * rb).zip(g.chunks_exact_mut(4 * rb)) {
                    orchard_quant::interleave_rows(src, dtype.block_bytes(), dst);
                }
                time(
                    &format!("{dtype} {what} gemv order groups"),
                    w.len(),
                    reps,
                    || {
                        for (gi, o) in out.chunks_exact_mut(4).enumerate() {
                            o.copy_from_slice(&k(N, &g[gi * 4 * rb..(gi + 1) * 4 * rb], &act));
                        }
                        black_box(&out);
                    },
                );
            }
            if let Some(k) = t.vec_dot_rows {
                time(
                    &format!("{dtype} {what} vec_dot rows"),
                    w.len(),
                    reps,
                    || {
                        k(N, &w, rb, &act, &mut out);
                        black_box(&out);
                    },
                );
            }
        }
    }
}
