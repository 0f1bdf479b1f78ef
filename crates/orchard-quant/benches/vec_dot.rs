//! Speed of the dot kernels at n = 4096, in bytes of weights per second on one core, for every
//! kernel tier this CPU can run: one row that stays in L1 (compute bound) and a 64 MiB matrix
//! streamed from memory with the single-row and the four-row kernels (the decode case).
//!
//! Time is the benchmark thread's CPU time (on Linux), not wall time: the numbers are per core and
//! stay meaningful on a machine shared with other work, as long as caches are not thrashed.
//!
//! `cargo bench -p orchard-quant --bench vec_dot [-- FILTER]`; set `ORCHARD_BENCH_TIERS=all` to
//! include the scalar tiers (slow).

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use orchard_core::DType;
use orchard_quant::{traits_for, Tier};
use std::time::Duration;

const N: usize = 4096;
const STREAM_BYTES: usize = 64 << 20;

const TYPES: [DType; 11] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::F16,
];

/// Pseudo-random weights through the reference quantizer (realistic scales and levels).
fn weights(dtype: DType, rows: usize) -> Vec<u8> {
    let t = traits_for(Tier::Reference, dtype).unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let x: Vec<f32> = (0..N)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let mut row = vec![0u8; N / dtype.block_size() * dtype.block_bytes()];
    (t.from_float_ref.unwrap())(&x, &mut row);
    row.repeat(rows)
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

fn tiers() -> Vec<Tier> {
    let all = std::env::var("ORCHARD_BENCH_TIERS").is_ok_and(|v| v == "all");
    Tier::ALL
        .into_iter()
        .filter(|t| t.is_available() && (all || !matches!(t, Tier::Reference | Tier::Scalar)))
        .collect()
}

/// Nanoseconds of CPU time consumed by the calling thread.
fn thread_cpu_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: clock_gettime writes one timespec (two i64 on 64-bit Linux) through the
        // pointer, which points at a live, properly laid out local.
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<std::time::Instant> = OnceLock::new();
        T0.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

/// Criterion measurement in thread CPU nanoseconds.
struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, t0: u64) -> u64 {
        thread_cpu_ns() - t0
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        for v in values.iter_mut() {
            *v /= 1e3;
        }
        "µs (cpu)"
    }
    fn scale_throughputs(&self, typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let bytes = match t {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => *b as f64,
            Throughput::Elements(e) => *e as f64,
        };
        let _ = typical;
        for v in values.iter_mut() {
            *v = bytes / *v; // bytes per ns = GB/s
        }
        "GB/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// The bound the streaming dots compete with: reading 64 MiB once, summing it as u64 lanes.
fn read_bandwidth(c: &mut Criterion<CpuTime>) {
    let data = vec![1u64; STREAM_BYTES / 8];
    let mut g = c.benchmark_group("memory");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .throughput(Throughput::Bytes(STREAM_BYTES as u64));
    g.bench_function(BenchmarkId::new("read", "u64-sum"), |b| {
        b.iter(|| {
            let mut acc = [0u64; 8];
            for c in black_box(&data).chunks_exact(8) {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a = a.wrapping_add(*v);
                }
            }
            black_box(acc)
        })
    });
    // The access pattern of the four-row kernels: four rows of a Q4_1 matrix read side by side.
    let row = 2560 / 8;
    g.bench_function(BenchmarkId::new("read", "4-rows-interleaved"), |b| {
        b.iter(|| {
            let mut acc = [0u64; 4];
            for group in black_box(&data).chunks_exact(4 * row) {
                for i in (0..row).step_by(4) {
                    for (r, a) in acc.iter_mut().enumerate() {
                        let c = &group[r * row + i..r * row + i + 4];
                        *a = a.wrapping_add(c[0] ^ c[1] ^ c[2] ^ c[3]);
                    }
                }
            }
            black_box(acc)
        })
    });
    g.bench_function(BenchmarkId::new("read", "2-rows-interleaved"), |b| {
        b.iter(|| {
            let mut acc = [0u64; 2];
            for group in black_box(&data).chunks_exact(2 * row) {
                for i in (0..row).step_by(4) {
                    for (r, a) in acc.iter_mut().enumerate() {
                        let c = &group[r * row + i..r * row + i + 4];
                        *a = a.wrapping_add(c[0] ^ c[1] ^ c[2] ^ c[3]);
                    }
                }
            }
            black_box(acc)
        })
    });
    g.bench_function(BenchmarkId::new("read", "1-row-same-loop"), |b| {
        b.iter(|| {
            let mut acc = [0u64; 1];
            for group in black_box(&data).chunks_exact(row) {
                for i in (0..row).step_by(4) {
                    let c = &group[i..i + 4];
                    acc[0] = acc[0].wrapping_add(c[0] ^ c[1] ^ c[2] ^ c[3]);
                }
            }
            black_box(acc)
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion<CpuTime>) {
    for dtype in TYPES {
        let row_bytes = N / dtype.block_size() * dtype.block_bytes();
        let act = activations(dtype);
        let one = weights(dtype, 1);
        let four = weights(dtype, 4);
        let rows = (STREAM_BYTES / row_bytes) & !3;
        let matrix = weights(dtype, rows);
        let mut g = c.benchmark_group(format!("{dtype}"));
        g.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10);
        for tier in tiers() {
            let t = traits_for(tier, dtype).unwrap();
            let (dot, dot4) = (t.vec_dot.unwrap(), t.vec_dot_x4.unwrap());
            g.throughput(Throughput::Bytes(row_bytes as u64));
            g.bench_function(BenchmarkId::new("l1_row", format!("{tier:?}")), |b| {
                b.iter(|| dot(N, black_box(&one), black_box(&act)))
            });
            g.throughput(Throughput::Bytes(4 * row_bytes as u64));
            g.bench_function(BenchmarkId::new("l1_x4", format!("{tier:?}")), |b| {
                let rows: [&[u8]; 4] =
                    std::array::from_fn(|i| &four[i * row_bytes..(i + 1) * row_bytes]);
                b.iter(|| dot4(N, black_box(rows), black_box(&act)))
            });
            let acts: Vec<Vec<u8>> = (0..4).map(|_| activations(dtype)).collect();
            let dot4a = t.vec_dot_4act.unwrap();
            g.bench_function(BenchmarkId::new("l1_4act", format!("{tier:?}")), |b| {
                let a: [&[u8]; 4] = std::array::from_fn(|i| acts[i].as_slice());
                b.iter(|| dot4a(N, black_box(&one), black_box(a)))
            });
            g.throughput(Throughput::Bytes((rows * row_bytes) as u64));
            g.bench_function(BenchmarkId::new("stream", format!("{tier:?}")), |b| {
                b.iter(|| {
                    let mut s = 0f32;
                    for w in matrix.chunks_exact(row_bytes) {
                        s += dot(N, w, &act);
                    }
                    black_box(s)
                })
            });
            g.bench_function(BenchmarkId::new("stream_x4", format!("{tier:?}")), |b| {
                b.iter(|| {
                    let mut s = 0f32;
                    for w in matrix.chunks_exact(4 * row_bytes) {
                        let rows: [&[u8]; 4] =
                            std::array::from_fn(|i| &w[i * row_bytes..(i + 1) * row_bytes]);
                        s += dot4(N, rows, &act).iter().sum::<f32>();
                    }
                    black_box(s)
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = read_bandwidth, bench
}
criterion_main!(benches);
