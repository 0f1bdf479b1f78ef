//! `GpuBackend`: device setup, the per-step command recorder and the `Backend` ops.

use crate::cm2;
use crate::formats::{format, Format};
use crate::shaders::{self, CoopTile};
use crate::{adapters, describe, device_error, instance, AdapterInfo};
use orchard_backend::{
    rope_cache, AttnBatch, AttnParams, Backend, BackendError, BufId, GluKind, HostWeight,
    RopeParams, TokenSlot, WeightId,
};
use orchard_core::DType;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

/// Process-wide counters of all GPU backends, for benchmarks: where a step's time goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuStats {
    pub dispatches: u64,
    pub submissions: u64,
    /// Nanoseconds spent encoding and submitting command buffers.
    pub encode_ns: u64,
    /// Nanoseconds spent waiting for the device.
    pub wait_ns: u64,
}

static DISPATCHES: AtomicU64 = AtomicU64::new(0);
static SUBMISSIONS: AtomicU64 = AtomicU64::new(0);
static ENCODE_NS: AtomicU64 = AtomicU64::new(0);
static WAIT_NS: AtomicU64 = AtomicU64::new(0);

/// The counters accumulated so far by every `GpuBackend` of this process.
pub fn stats() -> GpuStats {
    GpuStats {
        dispatches: DISPATCHES.load(Ordering::Relaxed),
        submissions: SUBMISSIONS.load(Ordering::Relaxed),
        encode_ns: ENCODE_NS.load(Ordering::Relaxed),
        wait_ns: WAIT_NS.load(Ordering::Relaxed),
    }
}

/// Whether backends opened with profiling write timestamps (see [`set_profiling`]).
static PROFILE_ON: AtomicBool = AtomicBool::new(true);
/// The device-time profile of every profiling `GpuBackend` of this process.
static PROFILE: LazyLock<Mutex<ProfileAcc>> = LazyLock::new(Mutex::default);

/// Pauses (`false`) or resumes timestamp writes of every backend opened with profiling
/// (`ORCHARD_GPU_PROFILE=1` or [`GpuBackend::new_with_profiling`]); on by default, so that
/// benchmarks can leave their timed runs unprofiled.
pub fn set_profiling(on: bool) {
    PROFILE_ON.store(on, Ordering::Relaxed);
}

/// The profile accumulated by every profiling backend of this process since the last call;
/// resets it.
pub fn take_profile() -> GpuProfile {
    PROFILE.lock().map(|mut p| p.take()).unwrap_or_default()
}

/// Device time of one kernel label, from timestamps written before and after each dispatch.
/// wgpu's Vulkan backend writes them at `BOTTOM_OF_PIPE`: a timestamp is taken once all work
/// before it has finished, so busy time runs from the previous dispatch's completion to this
/// one's (its launch and barrier included), and gaps stay near zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileRow {
    /// The kernel and, for products, its weight format, e.g. `MatVecQ8KMulti3(Q4_K)`.
    pub label: String,
    pub dispatches: u64,
    /// Sum over dispatches of (timestamp after - timestamp before), in ns.
    pub busy_ns: u64,
    /// Sum over dispatches of (this start - the previous dispatch's end, same submission), in
    /// ns: barrier and launch cost, attributed to the dispatch that follows.
    pub gap_ns: u64,
}

/// A device-time profile: per kernel label, plus the submissions it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuProfile {
    /// Largest busy time first.
    pub rows: Vec<ProfileRow>,
    /// Profiled submissions (those with at least one dispatch).
    pub submissions: u64,
    /// Sum over submissions of (last dispatch end - first dispatch start), in ns.
    pub span_ns: u64,
    /// Timestamp pairs that went backwards (counted as 0 ns); nonzero means the device's
    /// timestamps cannot be trusted.
    pub backwards: u64,
}

impl GpuProfile {
    pub fn dispatches(&self) -> u64 {
        self.rows.iter().map(|r| r.dispatches).sum()
    }
    pub fn busy_ns(&self) -> u64 {
        self.rows.iter().map(|r| r.busy_ns).sum()
    }
    pub fn gap_ns(&self) -> u64 {
        self.rows.iter().map(|r| r.gap_ns).sum()
    }
}

/// Whether a backend profiles its dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profiling {
    /// Not asked for (`ORCHARD_GPU_PROFILE` unset).
    Off,
    /// Asked for, but the adapter lacks `TIMESTAMP_QUERY` or `TIMESTAMP_QUERY_INSIDE_PASSES`.
    Unsupported,
    On,
}

/// Accumulated profile, by kernel: (dispatches, busy ns, gap ns).
#[derive(Default)]
struct ProfileAcc {
    rows: HashMap<Kernel, [u64; 3]>,
    submissions: u64,
    span_ns: u64,
    backwards: u64,
}

impl ProfileAcc {
    fn merge(&mut self, o: &ProfileAcc) {
        for (k, v) in &o.rows {
            let r = self.rows.entry(*k).or_default();
            for i in 0..3 {
                r[i] += v[i];
            }
        }
        self.submissions += o.submissions;
        self.span_ns += o.span_ns;
        self.backwards += o.backwards;
    }

    /// The profile by label (kernels differing only in shape share one) and a reset.
    fn take(&mut self) -> GpuProfile {
        let acc = std::mem::take(self);
        let mut by_label: HashMap<String, [u64; 3]> = HashMap::new();
        for (k, v) in acc.rows {
            let r = by_label.entry(k.label()).or_default();
            for i in 0..3 {
                r[i] += v[i];
            }
        }
        let mut rows: Vec<ProfileRow> = by_label
            .into_iter()
            .map(|(label, [dispatches, busy_ns, gap_ns])| ProfileRow {
                label,
                dispatches,
                busy_ns,
                gap_ns,
            })
            .collect();
        rows.sort_by(|a, b| b.busy_ns.cmp(&a.busy_ns).then(a.label.cmp(&b.label)));
        GpuProfile {
            rows,
            submissions: acc.submissions,
            span_ns: acc.span_ns,
            backwards: acc.backwards,
        }
    }

    /// Adds one submission's resolved timestamps (start, end per dispatch, in ticks).
    fn add_submission(&mut self, kernels: &[Kernel], ticks: &[u64], period: f64) {
        let ns = |a: u64, b: u64| (b.saturating_sub(a) as f64 * period).round() as u64;
        let mut prev_end: Option<u64> = None;
        for (k, t) in kernels.iter().zip(ticks.chunks_exact(2)) {
            let (start, end) = (t[0], t[1]);
            let r = self.rows.entry(*k).or_default();
            r[0] += 1;
            r[1] += ns(start, end);
            self.backwards += u64::from(end < start);
            if let Some(p) = prev_end {
                r[2] += ns(p, start);
                self.backwards += u64::from(start < p);
            }
            prev_end = Some(end);
        }
        if let (Some(first), Some(last)) = (ticks.first(), ticks.last()) {
            self.submissions += 1;
            self.span_ns += ns(*first, *last);
        }
    }
}

/// Timestamp queries of a profiling backend: query sets of `QUERY_SET_MAX_QUERIES` (two per
/// dispatch), the buffer they resolve into and its mappable copy, grown on demand.
struct Profiler {
    sets: Vec<wgpu::QuerySet>,
    resolve: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// Nanoseconds per timestamp tick.
    period: f64,
    acc: ProfileAcc,
}

/// Bytes of one op's parameter block.
const PARAM_BYTES: usize = 64;
/// Op parameter blocks one submission can hold before it is flushed early.
const PARAM_SLOTS: usize = 4096;
/// Initial words of the per-step table arena (grows on demand).
const AUX_WORDS: usize = 1 << 20;
/// Token counts up to which a matmul runs as matrix-vector products (weights re-read per token
/// from cache) rather than the tiled kernel, whose 64-token tiles would be mostly empty.
const MATVEC_MAX_TOKENS: usize = 8;
/// Threads of a matrix-vector workgroup.
const MATVEC_WG: u32 = 64;
/// Output rows per matrix-vector workgroup (`NR` in the shader).
const MATVEC_ROWS: usize = 4;
/// Below this many rows the one-row-per-workgroup matrix-vector kernel is used.
const MATVEC_MIN_BLOCKED_ROWS: usize = 2048;
/// Below this many 128x128 tiles the 64x64-tile matmul is used (the portable kernels). 64:
/// the 8B shape's 4096-row products at n = 512 (128 tiles on 132 SMs of an H200) run 1.8x
/// faster in 128x128 tiles (run 13: pp512 1162 -> 1524 tok/s), while SmolLM2's (at most 48
/// tiles) stay on 64x64, where they are faster (all on 128x128: 19.4k -> 15.5k tok/s).
const MATMUL_MIN_BIG_TILES: usize = 64;
/// Shape of an integer-dot (K-quant x Q8_K) matrix-vector workgroup: threads, threads per row
/// group, rows per group; a workgroup computes `Q8K_NR * Q8K_WG / Q8K_TPR` rows.
/// `ORCHARD_GPU_Q8K_{WG,TPR,NR}` override them for tuning (see `set_q8k_shape`).
const Q8K_WG: u32 = 128;
const Q8K_TPR: u32 = 32;
const Q8K_NR: u32 = 4;
/// Dispatches recorded before a step is submitted in part, so that the device starts on the
/// first layers while the host encodes the rest (wgpu spends ~2-4 us of CPU per dispatch).
/// 40 rather than 80: 8B decode +2-3 %, SmolLM2's shape +5 % on an H200 (runs 22, 23).
const FLUSH_EVERY_DISPATCHES: usize = 40;
/// Default tile of the cooperative-matrix matmul (the fastest on the 8B shapes of an H200,
/// run 13: 75-86 TFLOP/s on the big products against 55-62 for 128x64x32), and the smallest,
/// used where the device's shared memory cannot hold the default.
const COOP_TILE: CoopTile = CoopTile {
    tm: 128,
    tn: 128,
    bk: 64,
    sgm: 4,
    sgn: 2,
    double: false,
    stage_first: false,
};
const COOP_TILE_MIN: CoopTile = CoopTile {
    tm: 128,
    tn: 64,
    bk: 32,
    sgm: 4,
    sgn: 2,
    double: false,
    stage_first: false,
};
/// Threads of an attention workgroup (one head of one token); also the KV tile length.
const ATTN_WG: u32 = 64;
/// Workgroups split decode attention aims at per step (flash-decoding): an 8B decode token
/// has only 8 (one per KV head) unsplit, an H100 132 SMs; up to this many, every item is one
/// 64-cell tile, beyond it items take several.
const ATTN_SPLIT_TARGET: u32 = 1024;
/// Shapes of the tiled prefill attention (`ATTN_TILE`): (threads, queries, cells per tile), the
/// first whose shared memory the device holds. 16-query tiles first: on an H100 (run 15) one 8B
/// layer's 512-token attention took 0.62-0.64 ms with them against 0.72 with 32-query tiles
/// (twice the workgroups for a causal grid that is short of them; SmolLM2 shape 0.18-0.19 vs
/// 0.20 ms). `ORCHARD_GPU_ATTN_TILE_SHAPE=1` starts at the 32-query shape (38 KiB at head dim 128).
const ATTN_TILES: [(u32, u32, u32); 3] = [(128, 16, 16), (128, 32, 32), (64, 16, 8)];
/// `matmul_cm2.comp`'s tiles: llama.cpp's large one (f16 accumulators) where it alone fills
/// the device (the 8B gate/up products at 512 tokens: 0.475 against 0.54 ms on an H100), else
/// the f32 128 x 128 tile, split-K where it leaves the device short (the 8B q/o products: the
/// large tile split in two 0.12-0.16 ms against 0.11-0.12, bench/gpu/results/run37; K and V at
/// 4096 x 1024 run 0.058-0.066 ms split in four, run36), or the narrow one for prompts of up to
/// 128 tokens where 128 x 128 would give fewer than 64 workgroups.
const CM2_TILE_WIDE: cm2::Tile = cm2::TILES[2];
const CM2_TILE: cm2::Tile = cm2::TILES[1];
const CM2_TILE_NARROW: cm2::Tile = cm2::TILES[0];
/// The smallest width and row count of a product `matmul_cm2.comp` takes. Below 4096 columns it
/// lost to MATMUL_COOP on an H200 (4096 x 1000 before split-K: 0.25 against 0.15 ms; SmolLM2's
/// and Gemma 3 270M's whole prompts 10-15 % slower, bench/gpu/results/run34); split-K fills the
/// device for the 1024-row K and V products of 8B shapes.
const CM2_MIN_COLS: usize = 4096;
const CM2_MIN_ROWS: usize = 1024;
/// Workgroups that fill the device, for the split-K rule: the SM count of an H100 or H200
/// (llama.cpp reads it from the driver; wgpu does not expose it).
const CM2_FILL_GROUPS: usize = 132;
/// 256-value blocks of a row from which a product of over 128 tokens takes the wide tile even
/// where its tiles do not fill the device (split-K then does): the 8B down products (56
/// blocks; 64 tiles, split in two) at 512 tokens on an H200, 0.311-0.321 against 0.389-0.403
/// ms for Q4_K and 0.324 against 0.460-0.485 for Q6_K (run 38; run 37: 0.309 against 0.370
/// and 0.370 against 0.46-0.49); the q/o products (16 blocks) lose with it (0.19 against
/// 0.12-0.13).
const CM2_LONG_K_BLOCKS: usize = 32;
/// Largest head dimension the attention kernel holds in shared memory.
const MAX_HEAD_DIM: usize = 512;

/// A device buffer with an identity that changes whenever the buffer is replaced, so cached bind
/// groups never point at a stale buffer.
#[derive(Clone)]
struct Res {
    buf: wgpu::Buffer,
    id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kernel {
    MatVec(DType),
    MatMul(DType),
    /// `MATMUL_KMAJOR`: the 128x128 tile with k-contiguous shared tiles.
    MatMulK(DType),
    /// `MATMUL_COOP`: tiles on cooperative matrices (f16 x f16 -> f32).
    MatMulCoop(DType, CoopTile),
    /// `matmul_cm2.comp` (VK_NV_cooperative_matrix2, passthrough SPIR-V; see `cm2`).
    MatMulCm2(DType, cm2::Tile),
    /// Variants for float weights whose rows are not whole 16-element chunks (padded on upload).
    MatVecRagged(DType),
    MatMulRagged(DType),
    /// K-quant weights x Q8_K activations with integer dots; (`dot4I8Packed`, reduction,
    /// (workgroup size, threads per row group, rows per group)).
    MatVecQ8K(DType, bool, shaders::Q8kReduce, (u32, u32, u32)),
    /// `MatVecQ8K` over 2 or 3 matrices that read the same activations (last field).
    MatVecQ8KMulti(DType, bool, shaders::Q8kReduce, (u32, u32, u32), u32),
    /// `MatVecQ8K` whose output is also added into a fourth binding (residual add folded in).
    MatVecQ8KAdd(DType, bool, shaders::Q8kReduce, (u32, u32, u32)),
    /// Activations to packed Q8_K for `MatVecQ8K`.
    ActQ8K,
    /// RMS norm and GLU writing a packed Q8_K copy of their output too (decode).
    NormQ8K,
    GluQ8K,
    /// `GLU_F16`: the prompt form, writing the f16 copy `matmul_cm2.comp` reads.
    GluF16,
    Norm,
    NormInplace,
    Elementwise,
    Glu,
    Rope,
    KvStore,
    /// K and V stored in one dispatch.
    KvStore2,
    /// A residual add folded into the RMS norm after it (with the Q8_K copy when `true`).
    AddNorm(bool),
    /// `AddNorm(false)` that also writes the plain f16 copy cm2 products read.
    AddNormF16,
    /// `AddNorm(false)` (`AddNormF16` with `true`) adding the split-K partial products of the
    /// addend itself, in place of the `SplitSum` that would come before it.
    AddNormSplit(bool),
    /// RoPE of Q and K fused with `KvStore2` (and with `true`, with the split-K sums of
    /// the K and V products that would come before it).
    RopeKv(bool),
    Attention,
    /// `ATTN_DECODE` built for its shape and what it folds in.
    AttnDecode(shaders::AttnDecodeKind),
    /// `ATTN_COMBINE`: merges the split decode partials (and writes the Q8_K copy with `true`).
    AttnCombine(bool),
    /// Tiled prefill attention: (threads, queries per tile, cells per tile, largest head dim).
    AttnTile(u32, u32, u32, u32),
    /// `ATTN_COOP`: prefill attention on cooperative matrices, for head dim (64 or 128).
    AttnCoop(u32),
    /// `attn_cm2.comp`: prefill attention on VK_NV_cooperative_matrix2, for head dim.
    AttnCm2(u32),
    ActQuant,
    /// `ACT_Q8K_WIDE`: `ActQuant`'s Q8_K mode, eight values a thread.
    ActQ8KWide,
    /// Adds `MatMulCm2`'s split-K partial products into the output (four values a thread
    /// with `true`).
    SplitSum(bool),
}

impl Kernel {
    /// A short stable name for profiles: the variant and its weight format, without shapes.
    fn label(self) -> String {
        match self {
            Kernel::MatVec(d) => format!("MatVec({d:?})"),
            Kernel::MatMul(d) => format!("MatMul({d:?})"),
            Kernel::MatMulK(d) => format!("MatMulK({d:?})"),
            Kernel::MatMulCoop(d, ..) => format!("MatMulCoop({d:?})"),
            Kernel::MatMulCm2(d, ..) => format!("MatMulCm2({d:?})"),
            Kernel::MatVecRagged(d) => format!("MatVecRagged({d:?})"),
            Kernel::MatMulRagged(d) => format!("MatMulRagged({d:?})"),
            Kernel::MatVecQ8K(d, ..) => format!("MatVecQ8K({d:?})"),
            Kernel::MatVecQ8KMulti(d, .., m) => format!("MatVecQ8KMulti{m}({d:?})"),
            Kernel::MatVecQ8KAdd(d, ..) => format!("MatVecQ8KAdd({d:?})"),
            Kernel::AddNorm(false) => "AddNorm".into(),
            Kernel::AddNorm(true) => "AddNormQ8K".into(),
            Kernel::AddNormF16 => "AddNormF16".into(),
            Kernel::AddNormSplit(false) => "AddNormSplit".into(),
            Kernel::AddNormSplit(true) => "AddNormF16Split".into(),
            Kernel::AttnTile(..) => "AttnTile".into(),
            Kernel::AttnCoop(..) => "AttnCoop".into(),
            Kernel::AttnCm2(..) => "AttnCm2".into(),
            Kernel::ActQ8K => "ActQ8K".into(),
            Kernel::NormQ8K => "NormQ8K".into(),
            Kernel::GluQ8K => "GluQ8K".into(),
            Kernel::GluF16 => "GluF16".into(),
            Kernel::Norm => "Norm".into(),
            Kernel::NormInplace => "NormInplace".into(),
            Kernel::Elementwise => "Elementwise".into(),
            Kernel::Glu => "Glu".into(),
            Kernel::Rope => "Rope".into(),
            Kernel::KvStore => "KvStore".into(),
            Kernel::KvStore2 => "KvStore2".into(),
            Kernel::RopeKv(false) => "RopeKv".into(),
            Kernel::RopeKv(true) => "RopeKvSplit".into(),
            Kernel::Attention => "Attention".into(),
            Kernel::AttnDecode(a) => format!(
                "AttnDecode{}{}{}",
                if a.split { "Split" } else { "" },
                if a.rope { "Rope" } else { "" },
                if a.q8k { "Q8K" } else { "" }
            ),
            Kernel::AttnCombine(false) => "AttnCombine".into(),
            Kernel::AttnCombine(true) => "AttnCombineQ8K".into(),
            Kernel::ActQuant => "ActQuant".into(),
            Kernel::SplitSum(_) => "SplitSum".into(),
            Kernel::ActQ8KWide => "ActQ8KWide".into(),
        }
    }

    /// Storage bindings after the params block: `true` for read-write.
    fn bindings(self) -> &'static [bool] {
        match self {
            Kernel::MatVec(_)
            | Kernel::MatMul(_)
            | Kernel::MatMulK(_)
            | Kernel::MatMulCoop(..)
            | Kernel::MatMulCm2(..)
            | Kernel::MatVecRagged(_)
            | Kernel::MatMulRagged(_)
            | Kernel::MatVecQ8K(..)
            | Kernel::Norm
            | Kernel::Glu => &[false, false, true],
            Kernel::NormInplace | Kernel::Elementwise | Kernel::Rope => &[true, false],
            Kernel::KvStore => &[false, true, false],
            Kernel::KvStore2 => &[false, false, true, true, false],
            Kernel::ActQuant | Kernel::ActQ8K | Kernel::SplitSum(_) | Kernel::ActQ8KWide => {
                &[false, true]
            }
            Kernel::AttnDecode(a) if a.rope && a.q8k => {
                &[false, true, true, false, true, true, false, false]
            }
            Kernel::AttnDecode(a) if a.rope => &[false, true, true, false, true, false, false],
            Kernel::AttnDecode(a) if a.q8k => &[false, false, false, false, true, true],
            Kernel::Attention
            | Kernel::AttnDecode(..)
            | Kernel::AttnTile(..)
            | Kernel::AttnCoop(..) => &[false, false, false, false, true],
            Kernel::AttnCm2(..) => &[false, false, false, false, true, true],
            Kernel::AttnCombine(false) => &[false, false, true],
            Kernel::AttnCombine(true) => &[false, false, true, true],
            Kernel::NormQ8K | Kernel::GluQ8K | Kernel::GluF16 => &[false, false, true, true],
            Kernel::AddNorm(false) => &[true, false, false, true],
            Kernel::AddNorm(true) | Kernel::AddNormF16 => &[true, false, false, true, true],
            Kernel::AddNormSplit(false) => &[true, true, false, true, false],
            Kernel::AddNormSplit(true) => &[true, true, false, true, true, false],
            Kernel::RopeKv(false) => &[true, true, false, true, true, false],
            Kernel::RopeKv(true) => &[true, true, true, true, true, false, false, false],
            Kernel::MatVecQ8KAdd(..) => &[false, false, true, true],
            Kernel::MatVecQ8KMulti(.., 2) => &[false, false, false, true, true],
            Kernel::MatVecQ8KMulti(..) => &[false, false, false, false, true, true, true],
        }
    }
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

enum Cmd {
    Dispatch {
        kernel: Kernel,
        bind: wgpu::BindGroup,
        offset: u32,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_off: u64,
        dst: wgpu::Buffer,
        dst_off: u64,
        size: u64,
    },
}

struct WeightChunk {
    res: Res,
    row0: usize,
    rows: usize,
    scale_off: u32,
}

struct GpuWeight {
    name: String,
    cols: usize,
    rows: usize,
    fmt: Option<Format>,
    chunks: Vec<WeightChunk>,
    /// Vectors (norms, biases, RoPE factors) as f32 on the device and on the host.
    vector: Option<(Res, Vec<f32>)>,
}

struct GpuBuf {
    res: Res,
    cap: usize,
    n_tokens: usize,
    width: usize,
}

struct LayerKv {
    k: Res,
    v: Res,
    k_width: usize,
    v_width: usize,
    n_cells: usize,
}

/// A recorded dispatch that a following op may fold into its own (see `GpuBackend::recent`).
#[derive(Clone)]
enum Fusable {
    /// `x += y` over `elems` values (`ELEMENTWISE` mode 0).
    Add { x: u64, y: Res, elems: usize },
    /// RoPE of buffer `x` with these `ROPE` parameters.
    Rope { x: u64, p: [u32; 8] },
    /// `SPLIT_SUM` of `splits` partial products in `scratch` into all of buffer `out`.
    SplitSum { out: u64, scratch: Res, splits: u32 },
    /// Integer-dot products of one Q8_K input (`xq`, scales at `d_off`), `n` tokens, blocks
    /// of `nblk`, with kernel `k`: (weight, rows, scale word offset, output) per matrix.
    MatVec {
        k: Kernel,
        xq: Res,
        d_off: u32,
        n: u32,
        nblk: u32,
        mats: Vec<(Res, u32, u32, Res)>,
        /// The parameters and grid of the dispatch when it is one matrix's.
        single: Option<([u32; 16], [u32; 3])>,
    },
}

/// The RoPE of Q and K recorded just before an attention: (Q width, head dim, rotated dims,
/// table offset, NeoX).
type RopeQk = (u32, u32, u32, u32, u32);

/// What `store_kv` needs: the step's K and V (`n` rows), the cache buffers and row widths
/// (halves), the token cells' arena offset, the arena, and the RoPE of Q and K to fold in
/// (their buffers and parameters) if it was recorded just before.
struct KvStoreCall<'a> {
    ropes: Option<(&'a Res, &'a Res, RopeQk)>,
    n: usize,
    k: BufId,
    v: BufId,
    kres: &'a Res,
    vres: &'a Res,
    widths: (usize, usize),
    cells_off: u32,
    aux: &'a Res,
}

/// What a RoPE table is computed from: (rotated dims, base bits, scale bits, NeoX, freq
/// factors' weight).
type RopeKey = (usize, u32, u32, bool, Option<u32>);

/// A RoPE table already in this submission's arena: parameters, positions and its word offset.
struct RopeMemo {
    key: RopeKey,
    positions: Vec<u32>,
    offset: u32,
}

/// Host RoPE tables kept across submissions (`ROPE_TABLES_KEPT`).
struct RopeTable {
    key: RopeKey,
    positions: Vec<u32>,
    table: Arc<Vec<f32>>,
}

/// How many computed RoPE tables the host keeps: a step's submissions each need the table
/// again in their own arena (a step of 40-dispatch submissions recomputed it in each: 512
/// tokens of Gemma 3's 256 rotated dims took ~1.1 ms, ~12 times a step, which left the host
/// behind the device); two RoPE bases (Gemma 3's local and global layers) with room to spare.
const ROPE_TABLES_KEPT: usize = 4;

/// The wgpu implementation of [`Backend`].
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: AdapterInfo,
    limits: wgpu::Limits,
    pipelines: HashMap<Kernel, Pipeline>,
    /// Bind groups by kernel and the ids of the params block and up to 8 storage bindings.
    binds: HashMap<(Kernel, [u64; 9]), wgpu::BindGroup>,
    next_id: u64,
    weights: Vec<GpuWeight>,
    bufs: Vec<GpuBuf>,
    kv: Vec<Option<LayerKv>>,
    dummy: Res,
    cmds: Vec<Cmd>,
    params: Vec<u8>,
    params_res: Res,
    param_stride: usize,
    aux: Vec<u32>,
    aux_res: Res,
    aux_cap: usize,
    rope_memo: Vec<RopeMemo>,
    rope_tables: Vec<RopeTable>,
    staging: Option<(wgpu::Buffer, u64)>,
    errors: Arc<Mutex<Vec<String>>>,
    submissions: u64,
    /// Dispatches submitted so far by this backend.
    dispatches: u64,
    /// Writes recorded per device buffer (by `Res::id`), to know when a quantized copy of an
    /// activation is stale.
    versions: HashMap<u64, u64>,
    /// Activations rounded as the CPU quantizes them, per (buffer, activation format).
    act_q: HashMap<(u32, u32), ActQ>,
    exact_activations: bool,
    /// Whether integer-dot kernels use `dot4I8Packed` (off on Metal, where naga emulates it).
    packed_dot: bool,
    /// Runtime checks naga adds to shaders: bounds checks without loop bounding by default;
    /// `ORCHARD_GPU_SHADER_CHECKS` = `all` or `none` to measure their cost.
    shader_checks: wgpu::ShaderRuntimeChecks,
    /// `ORCHARD_GPU_MATMUL=old`: the first 128x128 matmul layout, for comparison.
    old_matmul: bool,
    /// Below this many 128x128 tiles the 64x64-tile matmul is used.
    min_big_tiles: usize,
    /// Recorded dispatches after which the next op first submits what is recorded (0: one
    /// submission per step).
    flush_every: usize,
    /// The device's fixed subgroup size, when subgroup operations are enabled.
    subgroup: Option<u32>,
    /// Whether the device was opened with cooperative matrices (16x16x16 f16 x f16 -> f32 in
    /// subgroups of 32) and f16 shaders, so that `MATMUL_COOP` can run.
    coop_available: bool,
    /// Whether prompt matmuls use `MATMUL_COOP` (`ORCHARD_GPU_COOP=0` turns it off).
    coop: bool,
    /// The tile of `MATMUL_COOP` (`ORCHARD_GPU_COOP_TILE=TMxTNxBK/SGMxSGN[/db|/dbs]`).
    coop_tile: CoopTile,
    /// Whether the device was opened with VK_NV_cooperative_matrix2 (see `cm2`), or why not.
    cm2_state: Result<(), String>,
    /// Whether large Q4_K prompt matmuls use `matmul_cm2.comp` (`ORCHARD_GPU_CM2=0` turns it off).
    cm2: bool,
    /// A fixed tile for it (`ORCHARD_GPU_CM2_TILE=BMxBNxBK[h]`, one of `cm2::TILES`; split-K
    /// still applies); by default chosen per product (`matmul_cm2`).
    cm2_tile: Option<cm2::Tile>,
    /// Whether cm2 products read their inputs rounded through Q8_K (as the CPU backend's
    /// integer products see them; `ORCHARD_GPU_CM2_Q8K=1`) or in plain f16 (the default, as
    /// llama.cpp's Vulkan backend feeds its cm2 products), the copy then written by the
    /// kernels that make the input (norm, attention, GLU) instead of a pass of its own.
    cm2_q8k_inputs: bool,
    /// The wide tile also for long-K products, split-K filling the device
    /// (`CM2_LONG_K_BLOCKS`; `ORCHARD_GPU_CM2_LONG_K=0` turns it off).
    cm2_long_k: bool,
    /// `matmul_cm2`'s split-K partial products (grown to the largest product's).
    cm2_scratch: [Option<Res>; 2],
    /// Which of them the next split product takes: two in turn, so that the K product's
    /// partial sums survive the V product's until `ROPE_KV` adds them (`store_kv`).
    cm2_scratch_next: usize,
    /// (workgroup size, threads per row group, rows per group) of the integer-dot kernels.
    q8k_shape: (u32, u32, u32),
    /// The Q6_K kernel's own shape, when it differs from `q8k_shape`.
    q6k_shape: Option<(u32, u32, u32)>,
    /// Whether the shape is chosen per matrix (`q8k_auto_shape`) rather than fixed.
    q8k_auto: bool,
    /// Whether RMS norms and GLUs of decode steps also write the Q8_K copy of their output
    /// that the integer-dot kernels read (one dispatch instead of two), and K and V go into
    /// the cache in one dispatch; `ORCHARD_GPU_FUSE=0` turns both off.
    fuse_q8k: bool,
    /// Whether the kernels that make a cm2 product's input also write its f16 copy (`GLU_F16`,
    /// `ADD_NORM_F16`, the cm2 attention; `ORCHARD_GPU_FUSE_F16=0` turns it off), and whether
    /// they do so without cm2 too (tests: lavapipe has no cm2). The add + norm and the
    /// attention write plain f16 only: fused forms of the norm with the Q8_K rounding were
    /// slower than `ADD_NORM` plus `ACT_Q8K_WIDE` (34 and 42 against 30 us a dispatch on 8B
    /// prompt rows, H200, run 38).
    fuse_f16: bool,
    fuse_f16_always: bool,
    /// Tiled prefill attention (`ATTN_TILE`) for steps whose sequences all have 64+ queries.
    attn_tile: bool,
    /// First of `ATTN_TILES` tried (`ORCHARD_GPU_ATTN_TILE_SHAPE`, a measurement knob).
    attn_tile_first: usize,
    /// `ATTN_COOP` instead of `ATTN_TILE` where cooperative matrices are available and the
    /// head dims fit it (`ORCHARD_GPU_ATTN_COOP=0` turns it off).
    attn_coop: bool,
    /// `attn_cm2.comp` for prompt attention where the device has VK_NV_cooperative_matrix2
    /// with its reductions and per-element operations, the head dims are equal and built
    /// (`cm2::attention_spirv`) and the step's cells are consecutive; `ORCHARD_GPU_ATTN_CM2=0`
    /// turns it off.
    attn_cm2: bool,
    /// Whether the device has what it needs.
    attn_cm2_available: bool,
    /// Whether the device was opened with f16 in shaders (`ADD_NORM_F16` needs it).
    f16_shaders: bool,
    /// Most query heads per `ATTN_DECODE` workgroup (1 to 4; `ORCHARD_GPU_ATTN_GROUP`), or
    /// 0 for the old per-head `ATTENTION` kernel (`ORCHARD_GPU_ATTN_DECODE=0`).
    attn_group: u32,
    /// Decode attention (sequences with fewer than 64 queries in the step) in the CPU's f16
    /// mode (Q and the V accumulator rounded to f16 cell by cell, as ggml's CPU path), or in
    /// f32 with per-tile reductions. On by default only on CPU adapters (lavapipe, where CI
    /// checks agreement with the CPU); `ORCHARD_GPU_ATTN_EXACT=0/1`, `set_attn_exact`.
    attn_exact: bool,
    /// Split decode attention (flash-decoding, f32 mode): about this many workgroups per
    /// step are aimed at when a token's range spans several 64-cell tiles; 0 turns it off
    /// (`ORCHARD_GPU_ATTN_SPLIT`, `set_attn_split`).
    attn_split: u32,
    /// Decode attention also writes the packed Q8_K copy of its output (the split path's
    /// combine, or the unsplit kernel with four query heads of whole 256-value blocks per
    /// workgroup), so that the output product needs no `ACT_Q8K` dispatch; with `fuse_q8k`.
    /// `ORCHARD_GPU_ATTN_Q8K=0`, `set_attn_q8k`.
    attn_q8k: bool,
    /// Decode attention also rotates Q and the step's K and stores K and V (the RoPEs and the
    /// K/V store folded in, where no sequence has two tokens in the step); with `fuse_q8k`.
    /// `ORCHARD_GPU_ATTN_ROPE=0`, `set_attn_rope`.
    attn_rope: bool,
    /// Buffers whose RoPE was folded into attention, so that they still hold unrotated
    /// values: (id, version then). Reading one before it is written again is reported
    /// through `take_errors` (every model reads Q and K only through attention).
    unrotated: Vec<(u64, u64)>,
    /// The split partials' scratch buffer and its size in floats.
    attn_scratch: Option<(Res, usize)>,
    /// Split decode attention dispatches recorded so far (`attn_splits`).
    attn_split_count: u64,
    /// Fusable dispatches among the last ones recorded, by index in `cmds` (cleared on flush):
    /// a residual add that the next RMS norm takes over, the RoPEs of Q and K that attention's
    /// KV store takes over (`ORCHARD_GPU_FUSE=0` turns this off with the rest).
    recent: Vec<(usize, Fusable)>,
    /// Each of the three round-4 fusions alone, for measurement: `ORCHARD_GPU_FUSE_ADD_NORM`,
    /// `ORCHARD_GPU_FUSE_ROPE_KV`, `ORCHARD_GPU_FUSE_MULTI` = 0 turn one off.
    fuse_add_norm: bool,
    fuse_rope_kv: bool,
    fuse_multi: bool,
    /// Residual adds folded into the integer-dot product whose output they add
    /// (`MatVecQ8KAdd`; `ORCHARD_GPU_FUSE_MATVEC_ADD=0` turns it off), and whether a residual
    /// add may fold into a decode norm's Q8_K variant (`ADD_NORM_Q8K`: off by default, one
    /// workgroup per row made the 8B decode slower on an H200; `ORCHARD_GPU_FUSE_ADD_NORM_Q8K=1`).
    fuse_matvec_add: bool,
    fuse_add_norm_q8k: bool,
    /// Timestamp queries around every dispatch, when asked for and the device has them.
    profiler: Option<Profiler>,
    /// Whether profiling was asked for at `new` (to tell `Off` from `Unsupported`).
    profile_asked: bool,
}

/// `act_q` key bit: the copy is f16, packed two a word.
const ACT_F16: u32 = 16;

/// A buffer's activations after the round trip through the CPU's activation format.
struct ActQ {
    src: (u64, u64),
    res: Res,
    cap: usize,
}

impl GpuBackend {
    /// Opens adapter `adapter_index` of [`crate::list_adapters`] (the first, a discrete GPU when
    /// there is one, by default), profiling when `ORCHARD_GPU_PROFILE=1`.
    pub fn new(adapter_index: Option<usize>) -> Result<GpuBackend, BackendError> {
        let profile = std::env::var("ORCHARD_GPU_PROFILE").as_deref() == Ok("1");
        GpuBackend::new_with_profiling(adapter_index, profile)
    }

    /// As [`GpuBackend::new`], with per-dispatch timestamps (see [`GpuBackend::profiling`])
    /// asked for or not regardless of `ORCHARD_GPU_PROFILE`. Profiling waits for every
    /// submission as it ends, so it slows steps down; off, it costs nothing.
    pub fn new_with_profiling(
        adapter_index: Option<usize>,
        profile: bool,
    ) -> Result<GpuBackend, BackendError> {
        let inst = instance();
        let list = adapters(&inst);
        let idx = adapter_index.unwrap_or(0);
        let adapter = list.get(idx).ok_or_else(|| {
            device_error(format!(
                "no GPU adapter {idx} ({} found; install a Vulkan driver, or set WGPU_BACKEND)",
                list.len()
            ))
        })?;
        let info = describe(idx, adapter);
        let limits = adapter.limits();
        let ainfo = adapter.get_info();
        // Subgroup reductions where the size is fixed (NVIDIA 32, lavapipe 8; AMD and Intel
        // may vary it per pipeline, so they keep the shared-memory tree).
        let subgroup = (adapter.features().contains(wgpu::Features::SUBGROUP)
            && ainfo.subgroup_min_size == ainfo.subgroup_max_size
            && (8..=64).contains(&ainfo.subgroup_min_size))
        .then_some(ainfo.subgroup_min_size);
        // Cooperative matrices (tensor cores on NVIDIA): the one configuration `MATMUL_COOP`
        // is written for, with the 8 subgroups of 32 its tiling assumes.
        let coop_features =
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        let coop_available = subgroup == Some(32)
            && adapter.features().contains(coop_features)
            && limits.max_compute_workgroup_storage_size >= COOP_TILE_MIN.shared_bytes()
            && adapter.cooperative_matrix_properties().iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            });
        let mut required_features = wgpu::Features::empty();
        if subgroup.is_some() {
            required_features |= wgpu::Features::SUBGROUP;
        }
        if coop_available {
            required_features |= coop_features;
        }
        // f16 in WGSL (`ADD_NORM_F16`'s stores) wherever the adapter has it.
        let f16_shaders = adapter.features().contains(wgpu::Features::SHADER_F16);
        if f16_shaders {
            required_features |= wgpu::Features::SHADER_F16;
        }
        // The foreign-kernel diagnostic (`time_foreign_cm2`) passes its parameters as push
        // constants.
        #[cfg(feature = "cm2-spv-override")]
        let limits = if adapter.features().contains(wgpu::Features::IMMEDIATES) {
            required_features |= wgpu::Features::IMMEDIATES;
            wgpu::Limits {
                max_immediate_size: limits.max_immediate_size.min(128),
                ..limits
            }
        } else {
            limits
        };
        let ts_features =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let profiled = profile && adapter.features().contains(ts_features);
        if profiled {
            required_features |= ts_features;
        }
        let mut cm2_state = if !coop_available {
            Err("no cooperative matrices".to_string())
        } else if std::env::var("ORCHARD_GPU_CM2").as_deref() == Ok("0") {
            Err("ORCHARD_GPU_CM2=0".to_string())
        } else if !adapter
            .features()
            .contains(wgpu::Features::PASSTHROUGH_SHADERS)
        {
            Err("no SPIR-V passthrough".to_string())
        } else {
            cm2::supported(adapter)
        };
        let mut desc = wgpu::DeviceDescriptor {
            label: Some("orchard"),
            required_features,
            required_limits: limits.clone(),
            // SAFETY: the experimental feature requested is cooperative matrices, used by one
            // kernel (`MATMUL_COOP`) in uniform control flow with in-bounds shared-memory
            // loads and stores; it is checked against the CPU on the device by `gpu_bench
            // --kernels` and can be turned off with ORCHARD_GPU_COOP=0.
            experimental_features: if coop_available {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let mut opened = None;
        if cm2_state.is_ok() {
            desc.required_features |= wgpu::Features::PASSTHROUGH_SHADERS;
            match cm2::request_device(adapter, &desc) {
                Ok(dq) => opened = Some(dq),
                Err(e) => {
                    tracing::warn!("{}: VK_NV_cooperative_matrix2 not enabled ({e})", info.name);
                    cm2_state = Err(e);
                    desc.required_features
                        .remove(wgpu::Features::PASSTHROUGH_SHADERS);
                }
            }
        }
        let attn_cm2_available = cm2_state.is_ok() && cm2::attention_supported(adapter);
        let (device, queue) = match opened {
            Some(dq) => dq,
            None => pollster::block_on(adapter.request_device(&desc))
                .map_err(|e| device_error(format!("opening {}: {e}", info.name)))?,
        };
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            tracing::error!("GPU error: {e}");
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let param_stride = PARAM_BYTES.max(limits.min_uniform_buffer_offset_alignment as usize);
        let mut me = GpuBackend {
            dummy: Res {
                buf: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("dummy"),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                }),
                id: 0,
            },
            params_res: Res {
                buf: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: (param_stride * PARAM_SLOTS) as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                id: 1,
            },
            aux_res: Res {
                buf: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("aux"),
                    size: (AUX_WORDS * 4) as u64,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                id: 2,
            },
            aux_cap: AUX_WORDS,
            next_id: 3,
            device,
            queue,
            info,
            limits,
            pipelines: HashMap::new(),
            binds: HashMap::new(),
            weights: Vec::new(),
            bufs: Vec::new(),
            kv: Vec::new(),
            cmds: Vec::new(),
            params: Vec::new(),
            param_stride,
            aux: Vec::new(),
            rope_memo: Vec::new(),
            rope_tables: Vec::new(),
            staging: None,
            errors,
            submissions: 0,
            dispatches: 0,
            versions: HashMap::new(),
            act_q: HashMap::new(),
            exact_activations: true,
            packed_dot: true,
            q8k_shape: (Q8K_WG, subgroup.unwrap_or(Q8K_TPR), Q8K_NR),
            fuse_q8k: std::env::var("ORCHARD_GPU_FUSE").as_deref() != Ok("0"),
            fuse_f16: std::env::var("ORCHARD_GPU_FUSE_F16").as_deref() != Ok("0"),
            fuse_f16_always: false,
            attn_tile: std::env::var("ORCHARD_GPU_ATTN_TILE").as_deref() != Ok("0"),
            attn_coop: std::env::var("ORCHARD_GPU_ATTN_COOP").as_deref() != Ok("0"),
            attn_cm2: std::env::var("ORCHARD_GPU_ATTN_CM2").as_deref() != Ok("0"),
            attn_cm2_available,
            f16_shaders,
            attn_tile_first: std::env::var("ORCHARD_GPU_ATTN_TILE_SHAPE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            attn_group: if std::env::var("ORCHARD_GPU_ATTN_DECODE").as_deref() == Ok("0") {
                0
            } else {
                std::env::var("ORCHARD_GPU_ATTN_GROUP")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(4)
            },
            attn_exact: match std::env::var("ORCHARD_GPU_ATTN_EXACT").as_deref() {
                Ok("0") => false,
                Ok("1") => true,
                _ => ainfo.device_type == wgpu::DeviceType::Cpu,
            },
            attn_split: std::env::var("ORCHARD_GPU_ATTN_SPLIT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(ATTN_SPLIT_TARGET),
            attn_q8k: std::env::var("ORCHARD_GPU_ATTN_Q8K").as_deref() != Ok("0"),
            attn_rope: std::env::var("ORCHARD_GPU_ATTN_ROPE").as_deref() != Ok("0"),
            unrotated: Vec::new(),
            attn_scratch: None,
            attn_split_count: 0,
            recent: Vec::new(),
            fuse_add_norm: std::env::var("ORCHARD_GPU_FUSE_ADD_NORM").as_deref() != Ok("0"),
            fuse_rope_kv: std::env::var("ORCHARD_GPU_FUSE_ROPE_KV").as_deref() != Ok("0"),
            fuse_multi: std::env::var("ORCHARD_GPU_FUSE_MULTI").as_deref() != Ok("0"),
            fuse_matvec_add: std::env::var("ORCHARD_GPU_FUSE_MATVEC_ADD").as_deref() != Ok("0"),
            fuse_add_norm_q8k: std::env::var("ORCHARD_GPU_FUSE_ADD_NORM_Q8K").as_deref() == Ok("1"),
            q6k_shape: None,
            q8k_auto: std::env::var("ORCHARD_GPU_Q8K_AUTO").as_deref() != Ok("0"),
            subgroup,
            coop_available,
            coop: coop_available && std::env::var("ORCHARD_GPU_COOP").as_deref() != Ok("0"),
            coop_tile: COOP_TILE_MIN,
            cm2: cm2_state.is_ok(),
            cm2_state,
            cm2_tile: None,
            cm2_long_k: std::env::var("ORCHARD_GPU_CM2_LONG_K").as_deref() != Ok("0"),
            cm2_q8k_inputs: std::env::var("ORCHARD_GPU_CM2_Q8K").as_deref() == Ok("1"),
            cm2_scratch: [None, None],
            cm2_scratch_next: 0,
            shader_checks: wgpu::ShaderRuntimeChecks::checked(),
            flush_every: std::env::var("ORCHARD_GPU_FLUSH_EVERY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(FLUSH_EVERY_DISPATCHES),
            min_big_tiles: std::env::var("ORCHARD_GPU_MIN_BIG_TILES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(MATMUL_MIN_BIG_TILES),
            old_matmul: std::env::var("ORCHARD_GPU_MATMUL").as_deref() == Ok("old"),
            profiler: None,
            profile_asked: profile,
        };
        if profiled {
            me.profiler = Some(Profiler {
                sets: Vec::new(),
                resolve: None,
                period: f64::from(me.queue.get_timestamp_period()),
                acc: ProfileAcc::default(),
            });
        }
        me.shader_checks = match std::env::var("ORCHARD_GPU_SHADER_CHECKS").as_deref() {
            Ok("all") => wgpu::ShaderRuntimeChecks::checked(),
            Ok("none") => wgpu::ShaderRuntimeChecks::unchecked(),
            _ => {
                let mut c = wgpu::ShaderRuntimeChecks::checked();
                c.force_loop_bounding = false;
                c
            }
        };
        me.packed_dot = me.info.backend != "metal";
        if std::env::var("ORCHARD_GPU_PACKED_DOT").as_deref() == Ok("0") {
            me.packed_dot = false;
        }
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        let (wg0, tpr0, nr0) = me.q8k_shape;
        let (wg, tpr, nr) = (
            env("ORCHARD_GPU_Q8K_WG"),
            env("ORCHARD_GPU_Q8K_TPR"),
            env("ORCHARD_GPU_Q8K_NR"),
        );
        if wg.is_some() || tpr.is_some() || nr.is_some() {
            me.set_q8k_shape(wg.unwrap_or(wg0), tpr.unwrap_or(tpr0), nr.unwrap_or(nr0));
        }
        // "WG/TPR/NR" for both formats, then Q6_K's own
        let shape = |k: &str| {
            let v = std::env::var(k).ok()?;
            let n: Vec<u32> = v.split('/').filter_map(|x| x.parse().ok()).collect();
            (n.len() == 3).then(|| (n[0], n[1], n[2]))
        };
        if let Some((wg, tpr, nr)) = shape("ORCHARD_GPU_Q8K_SHAPE") {
            me.set_q8k_shape(wg, tpr, nr);
        }
        if let Some((wg, tpr, nr)) = shape("ORCHARD_GPU_Q6K_SHAPE") {
            me.set_q6k_shape(wg, tpr, nr);
        }
        me.set_coop_tile(COOP_TILE);
        if let Ok(v) = std::env::var("ORCHARD_GPU_COOP_TILE") {
            match v.parse() {
                Ok(t) if me.set_coop_tile(t) => {}
                Ok(t) => tracing::warn!(
                    "ORCHARD_GPU_COOP_TILE={t}: more shared memory than the device has"
                ),
                Err(e) => tracing::warn!("ORCHARD_GPU_COOP_TILE: {e}"),
            }
        }
        if let Ok(v) = std::env::var("ORCHARD_GPU_CM2_TILE") {
            if let Err(e) = me.set_cm2_tile(Some(&v)) {
                tracing::warn!("ORCHARD_GPU_CM2_TILE: {e}");
            }
        }
        me.sync();
        Ok(me)
    }

    /// Whether this backend writes timestamps around its dispatches.
    pub fn profiling(&self) -> Profiling {
        match (&self.profiler, self.profile_asked) {
            (Some(_), _) => Profiling::On,
            (None, true) => Profiling::Unsupported,
            (None, false) => Profiling::Off,
        }
    }

    /// This backend's profile since the last call (also merged into [`take_profile`]'s);
    /// resets it. Empty unless [`GpuBackend::profiling`] is `On`.
    pub fn take_profile(&mut self) -> GpuProfile {
        self.profiler
            .as_mut()
            .map(|p| p.acc.take())
            .unwrap_or_default()
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterInfo {
        &self.info
    }

    /// Device errors reported since the last call (validation or out-of-memory); empty when
    /// all recorded work was valid. Ops cannot return errors mid-step, so callers that care
    /// check here after `download`/`sync`.
    pub fn take_errors(&mut self) -> Vec<String> {
        self.errors
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Whether matmuls first round activations through the format the CPU backend quantizes
    /// them to (Q8_0/Q8_1 per 32, Q8_K per 256, f16) — on by default, so that results agree
    /// with the CPU to f32 rounding. Off, matmuls read f32 activations (a little faster, and
    /// as accurate, but they then differ from the CPU by that quantization noise).
    pub fn set_exact_activations(&mut self, on: bool) {
        self.exact_activations = on;
    }

    /// Whether the integer-dot kernels use WGSL's `dot4I8Packed` (the default except on
    /// Metal) or unpack bytes and use plain integer dots (the variant Metal runs; both are
    /// tested on lavapipe).
    pub fn set_packed_dot(&mut self, on: bool) {
        self.packed_dot = on;
    }

    /// Below how many 128x128 tiles a matmul uses 64x64 tiles instead (64 by default; 0
    /// makes every tiled product use the big tiles, which tests use on small shapes).
    pub fn set_min_big_tiles(&mut self, n: usize) {
        self.min_big_tiles = n;
    }

    /// Shape of the integer-dot (K-quant x Q8_K) matrix-vector kernels: `wg` threads per
    /// workgroup, `tpr` threads per row group, `nr` rows per group (powers of two, `nr` at
    /// most 8, `nr <= tpr <= wg <= 1024`), for both formats, instead of the per-matrix choice
    /// (`set_q8k_auto`). Returns whether the shape was taken (otherwise nothing changes).
    pub fn set_q8k_shape(&mut self, wg: u32, tpr: u32, nr: u32) -> bool {
        let ok = self.q8k_shape_ok(wg, tpr, nr);
        if ok {
            self.q8k_shape = (wg, tpr, nr);
            self.q6k_shape = None;
            self.q8k_auto = false;
        }
        ok
    }

    /// Whether the integer-dot kernels' shape is chosen per matrix (the default; off with
    /// `ORCHARD_GPU_Q8K_AUTO=0`, or once a fixed shape is set).
    pub fn set_q8k_auto(&mut self, on: bool) {
        self.q8k_auto = on;
    }

    pub fn q8k_auto(&self) -> bool {
        self.q8k_auto
    }

    /// The integer-dot shape for a matrix of `rows` rows of `nblk` 256-element blocks, as
    /// measured on an H200 through Vulkan (bench/README.md, round 3): row groups of at least
    /// half the row's units (4 per block; two iterations per thread at most, 32-128 threads),
    /// widened until the grid has 64k threads (small matrices: k/v projections), 4 rows per
    /// group, 2 for Q6_K once the group is 64 threads or more (more live registers per unit).
    fn q8k_auto_shape(dtype: DType, rows: usize, nblk: usize) -> (u32, u32, u32) {
        let units = (nblk * 4) as u32;
        let mut tpr = (units / 2).max(1).next_power_of_two().clamp(32, 128);
        let nr_for = |tpr: u32| {
            if dtype == DType::Q6_K && tpr >= 64 {
                2
            } else {
                4
            }
        };
        while (rows as u32 / nr_for(tpr)) * tpr < 65536 && tpr < 128 {
            tpr *= 2;
        }
        (tpr.max(128), tpr, nr_for(tpr))
    }

    /// As `set_q8k_shape`, for the Q6_K kernel alone.
    pub fn set_q6k_shape(&mut self, wg: u32, tpr: u32, nr: u32) -> bool {
        let ok = self.q8k_shape_ok(wg, tpr, nr);
        if ok {
            self.q6k_shape = Some((wg, tpr, nr));
        }
        ok
    }

    fn q8k_shape_ok(&self, wg: u32, tpr: u32, nr: u32) -> bool {
        [wg, tpr, nr].iter().all(|v| v.is_power_of_two())
            && nr <= 8
            && nr <= tpr
            && tpr <= wg
            && wg <= 1024.min(self.limits.max_compute_invocations_per_workgroup)
            && nr * wg <= 4096
    }

    /// The integer-dot kernels' shape (workgroup size, threads per row group, rows per group).
    pub fn q8k_shape(&self) -> (u32, u32, u32) {
        self.q8k_shape
    }

    /// `ATTN_DECODE`'s (query heads per workgroup, largest head dim, K cells and V cells per
    /// staged sub-tile) for these heads, or `None` for `ATTENTION` (turned off, or an odd V
    /// head dim).
    fn attn_decode_shape(&self, p: &AttnParams) -> Option<(u32, u32, u32, u32)> {
        if self.attn_group == 0 || !p.head_dim_v.is_multiple_of(2) {
            return None;
        }
        let dmax = p.head_dim_k.max(p.head_dim_v).max(64).next_power_of_two() as u32;
        let group = (p.n_head / p.n_head_kv) as u32;
        let hg = [4u32, 3, 2, 1].into_iter().find(|&hg| {
            hg <= self.attn_group
                && group.is_multiple_of(hg)
                && hg * dmax <= 1024
                && 64 * hg <= self.limits.max_compute_invocations_per_workgroup
                && shaders::attn_decode_shared_bytes(hg, dmax)
                    <= self.limits.max_compute_workgroup_storage_size
        })?;
        let words = shaders::attn_decode_stage_words(dmax);
        let cells = |row: u32| (0..=6).rev().map(|e| 1u32 << e).find(|c| c * row <= words);
        let ck = cells(p.head_dim_k as u32 / 2 + 1)?;
        let cv = cells(p.head_dim_v as u32 / 2)?;
        Some((hg, dmax, ck, cv))
    }

    /// The tiled prefill kernel and its blocks (first token, tokens, and the union of their
    /// cell ranges, 4 words each, pushed to the arena): where every run is on the f32 path
    /// with 64 or more queries, the head dims fit and some tile shape (32 queries, else 16)
    /// fits the shared memory. Returns (kernel, blocks, their arena offset).
    fn attn_tile_blocks(
        &mut self,
        p: &AttnParams,
        runs: &[(usize, usize)],
        ranges: &[u32],
        consecutive: bool,
    ) -> Option<(Kernel, u32, u32)> {
        let dmax = p.head_dim_k.max(p.head_dim_v).max(64).next_power_of_two() as u32;
        if !(self.attn_tile
            && dmax <= 256
            && p.head_dim_v.is_multiple_of(2)
            && runs.iter().all(|&(_, len)| len >= 64))
        {
            return None;
        }
        let coop_dim = p.head_dim_k as u32;
        let (kernel, bq) = if self.attn_cm2
            && self.attn_cm2_available
            && consecutive
            && p.head_dim_k == p.head_dim_v
            && cm2::attention_spirv(coop_dim).is_some()
        {
            (Kernel::AttnCm2(coop_dim), cm2::ATTN_QUERIES)
        } else if self.attn_coop
            && self.coop_available
            && p.head_dim_k == p.head_dim_v
            && (coop_dim == 64 || coop_dim == 128)
            && shaders::attn_coop_shared_bytes(coop_dim)
                <= self.limits.max_compute_workgroup_storage_size
        {
            (Kernel::AttnCoop(coop_dim), 32)
        } else {
            let first = self.attn_tile_first.min(ATTN_TILES.len() - 1);
            let (wg, bq, bk) = ATTN_TILES[first..].iter().copied().find(|&(wg, bq, bk)| {
                shaders::attn_tile_shared_bytes(bq, bk, dmax)
                    <= self.limits.max_compute_workgroup_storage_size
                    && wg <= self.limits.max_compute_invocations_per_workgroup
            })?;
            (Kernel::AttnTile(wg, bq, bk, dmax), bq)
        };
        let mut blocks = Vec::new();
        for &(s0, len) in runs {
            for b0 in (s0..s0 + len).step_by(bq as usize) {
                let b1 = (b0 + bq as usize).min(s0 + len);
                let (mut lo, mut hi) = (u32::MAX, 0u32);
                for t in b0..b1 {
                    lo = lo.min(ranges[2 * t]);
                    hi = hi.max(ranges[2 * t] + ranges[2 * t + 1]);
                }
                blocks.push([b0 as u32, (b1 - b0) as u32, lo, hi]);
            }
        }
        // Longest cell ranges first: a causal prompt's last blocks see every cell and set the
        // dispatch's length; started last (in token order) they ran alone at its end.
        blocks.sort_by_key(|b| std::cmp::Reverse(b[3] - b[2]));
        let blocks = blocks.concat();
        Some((kernel, (blocks.len() / 4) as u32, self.push_aux(&blocks)))
    }

    /// Stores the step's K and V rows into the cache: with the RoPEs of Q and K just recorded
    /// as one `RopeKv` dispatch that replaces them, else as one `KvStore2` (or a `KvStore`
    /// each where fusion is off).
    fn store_kv(&mut self, c: KvStoreCall<'_>) {
        let KvStoreCall {
            ropes,
            n,
            k,
            v,
            kres,
            vres,
            widths: (kw, vw),
            cells_off,
            aux,
        } = c;
        if let Some((qr, kr, (q_width, head_dim, n_rot, table, neox))) = ropes {
            // The split-K sums of the K and V products, recorded just before the RoPEs (V's
            // product between them, which reads neither), taken over too.
            let vs = self.res(v);
            let split = match (self.split_sum_at(4, kr.id), self.split_sum_at(2, vs.id)) {
                (Some((ks, kz)), Some((vsc, vz)))
                    if kr.id != vs.id && 8 <= self.limits.max_storage_buffers_per_shader_stage =>
                {
                    Some((ks, kz, vsc, vz))
                }
                _ => None,
            };
            self.drop_tail(2);
            if split.is_some() {
                let len = self.cmds.len();
                self.drop_cmd(len - 1);
                self.drop_cmd(len - 3);
            }
            let vwords = vw / 2;
            let items = n * (q_width as usize / head_dim as usize) * (n_rot as usize / 2)
                + n * (kw / 2)
                + n * vwords;
            let (groups, gx) = self.grid(items, 256);
            let mut pp = [0u32; 16];
            pp[..10].copy_from_slice(&[
                n as u32,
                q_width,
                kw as u32,
                head_dim,
                n_rot,
                table,
                neox,
                gx,
                cells_off,
                vwords as u32,
            ]);
            match split {
                Some((ks, kz, vsc, vz)) => {
                    pp[10] = kz;
                    pp[11] = vz;
                    let binds = [qr, kr, &vs, kres, vres, aux, &ks, &vsc];
                    self.dispatch(Kernel::RopeKv(true), &binds, pp, groups);
                }
                None => self.dispatch(
                    Kernel::RopeKv(false),
                    &[qr, kr, &vs, kres, vres, aux],
                    pp,
                    groups,
                ),
            }
        } else if self.fuse_q8k {
            let (kwords, vwords) = (kw / 2, vw / 2);
            let (groups, gx) = self.grid(n * (kwords + vwords), 256);
            let (ks, vs) = (self.res(k), self.res(v));
            let mut pp = [0u32; 16];
            pp[..5].copy_from_slice(&[n as u32, kwords as u32, cells_off, gx, vwords as u32]);
            self.dispatch(Kernel::KvStore2, &[&ks, &vs, kres, vres, aux], pp, groups);
        } else {
            for (src, dst, width) in [(k, kres, kw), (v, vres, vw)] {
                let words = width / 2;
                let (groups, gx) = self.grid(n * words, 256);
                let s = self.res(src);
                let mut pp = [0u32; 16];
                pp[..4].copy_from_slice(&[n as u32, words as u32, cells_off, gx]);
                self.dispatch(Kernel::KvStore, &[&s, dst, aux], pp, groups);
            }
        }
    }

    /// Split decode attention's work items, 3 words each (token, first cell of its range,
    /// cells), and per token (first item, items), for `cnts` (cells of each token's range)
    /// and `gx` workgroups per item; `None` where no token spans more than one item's tiles
    /// (one unsplit dispatch then). Items take as many 64-cell tiles as keep the grid near
    /// `attn_split` workgroups, at least one.
    fn attn_split_items(&self, cnts: &[u32], gx: u32) -> Option<(Vec<u32>, Vec<u32>)> {
        let tiles: u64 = cnts.iter().map(|&c| c.div_ceil(64) as u64).sum();
        let max_tiles = cnts.iter().map(|&c| c.div_ceil(64)).max()?;
        let per = (gx as u64 * tiles)
            .div_ceil(self.attn_split.max(1) as u64)
            .max(1) as u32;
        if max_tiles <= per {
            return None;
        }
        let mut items = Vec::new();
        let mut lists = Vec::with_capacity(2 * cnts.len());
        for (t, &c) in cnts.iter().enumerate() {
            let first = items.len() / 3;
            let step = per * 64;
            let mut c0 = 0;
            while c0 < c.max(1) {
                items.extend_from_slice(&[t as u32, c0, step.min(c - c0)]);
                c0 += step;
            }
            lists.extend_from_slice(&[first as u32, (items.len() / 3 - first) as u32]);
        }
        if items.len() / 3 > self.limits.max_compute_workgroups_per_dimension as usize {
            return None;
        }
        Some((items, lists))
    }

    /// The split partials' scratch buffer, grown to hold `floats`, or `None` where that
    /// exceeds the device's binding limit.
    fn attn_scratch_for(&mut self, floats: usize) -> Option<Res> {
        if floats * 4 > self.limits.max_storage_buffer_binding_size as usize {
            return None;
        }
        match &self.attn_scratch {
            Some((r, cap)) if *cap >= floats => Some(r.clone()),
            _ => {
                let cap = floats.next_power_of_two();
                let r = self.storage("attn_split", (cap * 4) as u64);
                self.attn_scratch = Some((r.clone(), cap));
                Some(r)
            }
        }
    }

    /// First tile shape the tiled prefill attention tries (0: 16 queries, 1: 32; the next that
    /// fits the device's shared memory is taken), as `ORCHARD_GPU_ATTN_TILE_SHAPE`.
    pub fn set_attn_tile_shape(&mut self, first: usize) {
        self.attn_tile_first = first;
    }

    /// Prefill attention on cooperative matrices on or off (`ORCHARD_GPU_ATTN_COOP=0` turns it
    /// off; it runs only where `coop_available`), for tests and measurement.
    pub fn set_attn_coop(&mut self, on: bool) {
        self.attn_coop = on;
    }

    /// Prompt attention on VK_NV_cooperative_matrix2 on or off (`ORCHARD_GPU_ATTN_CM2=0`
    /// turns it off; it runs only where `attn_cm2_available`), for measurement.
    pub fn set_attn_cm2(&mut self, on: bool) {
        self.attn_cm2 = on;
    }

    /// Whether the device can run the prompt attention kernel on VK_NV_cooperative_matrix2.
    pub fn attn_cm2_available(&self) -> bool {
        self.attn_cm2_available
    }

    /// Tiled prefill attention on or off (`ORCHARD_GPU_ATTN_TILE=0` turns it off), for tests
    /// and measurement.
    pub fn set_attn_tile(&mut self, on: bool) {
        self.attn_tile = on;
    }

    /// The per-token attention kernel (steps the tiled kernel does not take, decode among
    /// them): `ATTN_DECODE` with up to `group` query heads of a KV head per workgroup (1 to 4),
    /// or with 0 the older `ATTENTION` (same results bit for bit; for tests and
    /// measurement, as `ORCHARD_GPU_ATTN_DECODE=0` and `ORCHARD_GPU_ATTN_GROUP`).
    pub fn set_attn_decode(&mut self, group: u32) {
        self.attn_group = group;
    }

    /// Exact f16 decode attention on or off. On, sequences with fewer than 64 queries in a step
    /// are attended as ggml's CPU does (Q rounded to f16, an f16 V accumulator rounded cell by
    /// cell: sequential per cell); off, they accumulate in f32 with per-tile reductions (as
    /// llama.cpp's GPU backends do, which do not reproduce the CPU's f16 rounding either).
    /// Default: on for CPU adapters (lavapipe), off on real GPUs, where the device's `exp`
    /// already breaks bit parity; `ORCHARD_GPU_ATTN_EXACT=0/1` overrides it.
    pub fn set_attn_exact(&mut self, on: bool) {
        self.attn_exact = on;
    }

    /// Split decode attention (f32 mode, flash-decoding) aiming at about `target` workgroups
    /// per step, or off with 0 (for tests and measurement; `ORCHARD_GPU_ATTN_SPLIT`).
    pub fn set_attn_split(&mut self, target: u32) {
        self.attn_split = target;
    }

    /// Whether decode attention writes its output's Q8_K copy itself (see `attn_q8k`; on by
    /// default, a measurement and test knob).
    pub fn set_attn_q8k(&mut self, on: bool) {
        self.attn_q8k = on;
    }

    /// Whether decode attention rotates Q and K and stores K and V itself (see `attn_rope`;
    /// on by default, a measurement and test knob).
    pub fn set_attn_rope(&mut self, on: bool) {
        self.attn_rope = on;
    }

    /// Reports a read of a buffer left unrotated by a folded RoPE (see `unrotated`).
    fn check_unrotated(&mut self, id: u64) {
        if self.unrotated.is_empty() {
            return;
        }
        let versions = &self.versions;
        let now = |i: u64| versions.get(&i).copied().unwrap_or(0);
        self.unrotated.retain(|&(i, v)| now(i) == v);
        if self.unrotated.iter().any(|&(i, _)| i == id) {
            if let Ok(mut e) = self.errors.lock() {
                e.push(format!(
                    "buffer {id} read after its RoPE was folded into attention (it holds the unrotated values)"
                ));
            }
        }
    }

    /// Split decode attention steps recorded so far (each a split dispatch and a combine).
    pub fn attn_splits(&self) -> u64 {
        self.attn_split_count
    }

    /// Whether decode attention runs in the exact f16 mode (see `set_attn_exact`).
    pub fn attn_exact(&self) -> bool {
        self.attn_exact
    }

    /// Whether RMS norms and GLUs of decode steps (up to 8 tokens, rows of whole 256-value
    /// blocks) also write the Q8_K copy of their output that the integer-dot kernels read,
    /// in the same dispatch, and K and V are stored in one dispatch (on by default).
    pub fn set_fuse_q8k(&mut self, on: bool) {
        self.fuse_q8k = on;
    }

    /// Whether cm2 products read their inputs rounded through Q8_K (`ORCHARD_GPU_CM2_Q8K=1`)
    /// or in plain f16 (the default).
    pub fn set_cm2_q8k_inputs(&mut self, on: bool) {
        self.cm2_q8k_inputs = on;
    }

    /// Whether the kernels that make a prompt product's input write the f16 copy cm2 products
    /// read (on by default, where cm2 runs and the rows are 4096 or wider); with `always`, on
    /// every device and width (tests, through `prompt_f16_input`).
    pub fn set_fuse_f16(&mut self, on: bool, always: bool) {
        self.fuse_f16 = on;
        self.fuse_f16_always = always;
    }

    /// The f16 copy of `x` a cm2 prompt product reads (the fused one where the kernel that
    /// wrote `x` made it, else made now), unpacked: for tests of the fused kernels.
    #[doc(hidden)]
    pub fn prompt_f16_input(&mut self, x: BufId) -> Vec<f32> {
        let n = self.buf(x).n_tokens * self.buf(x).width;
        let r = self.matmul_input(x, DType::Q4_K, true);
        let tmp = self.alloc(n / 2, 1);
        let t = self.res(tmp);
        self.push_copy(r.buf.clone(), 0, &t, 0, (n * 2) as u64);
        let mut words = Vec::new();
        self.download(tmp, &mut words);
        words
            .iter()
            .flat_map(|w| {
                let b = w.to_bits();
                [b as u16, (b >> 16) as u16].map(|h| half::f16::from_bits(h).to_f32())
            })
            .collect()
    }

    /// Whether prompt matmuls run on cooperative matrices (`MATMUL_COOP`); returns whether
    /// that is now the case (never where the device lacks them).
    pub fn set_coop(&mut self, on: bool) -> bool {
        self.coop = on && self.coop_available;
        self.coop
    }

    /// Sets `MATMUL_COOP`'s tile (one `coop_source` writes, that fits the device's shared
    /// memory); returns whether it was taken.
    pub fn set_coop_tile(&mut self, t: CoopTile) -> bool {
        let ok = t.valid() && t.shared_bytes() <= self.limits.max_compute_workgroup_storage_size;
        if ok {
            self.coop_tile = t;
        }
        ok
    }

    /// The tile of the cooperative-matrix matmul.
    pub fn coop_tile(&self) -> CoopTile {
        self.coop_tile
    }

    /// Whether prompt matmuls run on cooperative matrices now.
    pub fn coop(&self) -> bool {
        self.coop
    }

    /// Whether large Q4_K prompt matmuls run `matmul_cm2.comp` (VK_NV_cooperative_matrix2);
    /// returns whether they now do (only where the device was opened with it).
    pub fn set_cm2(&mut self, on: bool) -> bool {
        self.cm2 = on && self.cm2_available();
        self.cm2
    }

    /// Whether the device was opened with VK_NV_cooperative_matrix2.
    pub fn cm2_available(&self) -> bool {
        self.cm2_state.is_ok()
    }

    /// Whether the device has VK_NV_cooperative_matrix2 enabled ("on"), or why not.
    pub fn cm2_status(&self) -> String {
        match &self.cm2_state {
            Ok(()) => "on".into(),
            Err(e) => format!("off: {e}"),
        }
    }

    /// Whether large Q4_K prompt matmuls run `matmul_cm2.comp` now.
    pub fn cm2(&self) -> bool {
        self.cm2
    }

    /// Fixes its tile (`BMxBNxBK[h]`, weight rows x tokens x K step, `h` for f16 accumulators:
    /// one that `scripts/build-cm2.sh` compiles), or with `None` lets each product choose. An
    /// unknown tile changes nothing.
    pub fn set_cm2_tile(&mut self, tile: Option<&str>) -> Result<(), String> {
        self.cm2_tile = tile.map(str::parse).transpose()?;
        Ok(())
    }

    /// Whether the device was opened with the cooperative matrices `MATMUL_COOP` needs.
    pub fn coop_available(&self) -> bool {
        self.coop_available
    }

    /// Whether a residual add may fold into the decode RMS norm's Q8_K variant
    /// (`ADD_NORM_Q8K`, off by default: slower than the add plus the parallel `NORM_Q8K` on an
    /// H200, bench/README.md round 4). The plain `ADD_NORM` (prompts, rows not of whole
    /// 256-value blocks) is on with the other fusions.
    pub fn set_fuse_add_norm_q8k(&mut self, on: bool) {
        self.fuse_add_norm_q8k = on;
    }

    /// Whether the integer-dot kernels may reduce with subgroup operations (when the device
    /// has a fixed subgroup size equal to their threads per row); tests turn it off to run
    /// the shared-memory reduction too.
    pub fn set_subgroups(&mut self, on: bool) {
        if !on {
            self.subgroup = None;
        }
    }

    /// After how many recorded dispatches the next op submits the work recorded so far
    /// (default 80; 0 keeps one submission per step). Part submissions let the device run
    /// the first layers of a step while the host encodes the rest.
    pub fn set_flush_every(&mut self, dispatches: usize) {
        self.flush_every = dispatches;
    }

    /// Called at the start of every op (never inside one, whose table words and dispatches
    /// must share a submission): submits what is recorded once it is long enough.
    fn op_start(&mut self) {
        // A fusable last dispatch waits for the next op, which may take it over.
        if self.flush_every != 0 && self.cmds.len() >= self.flush_every && self.tail(0).is_none() {
            self.flush(None);
        }
    }

    /// Command submissions made so far (one per step when nothing overflows the arenas).
    pub fn submissions(&self) -> u64 {
        self.submissions
    }

    /// The fusable dispatch `back` places before the last recorded one (0: the last), if it
    /// is one and nothing was submitted since.
    fn tail(&self, back: usize) -> Option<&Fusable> {
        let idx = self.cmds.len().checked_sub(1 + back)?;
        self.recent
            .iter()
            .rev()
            .find(|(i, _)| *i == idx)
            .map(|(_, f)| f)
    }

    /// Marks the dispatch just recorded as fusable.
    fn mark_fusable(&mut self, f: Fusable) {
        let on = match f {
            Fusable::Add { .. } => self.fuse_add_norm,
            Fusable::Rope { .. } | Fusable::SplitSum { .. } => self.fuse_rope_kv,
            Fusable::MatVec { .. } => self.fuse_multi || self.fuse_matvec_add,
        };
        if !self.fuse_q8k || !on {
            return;
        }
        if let Some(idx) = self.cmds.len().checked_sub(1) {
            if self.recent.len() >= 8 {
                self.recent.remove(0);
            }
            self.recent.push((idx, f));
        }
    }

    /// The scratch buffer and split count of the `SPLIT_SUM` into all of buffer `out`
    /// recorded `back` dispatches ago, where one was (and marked fusable).
    fn split_sum_at(&self, back: usize, out: u64) -> Option<(Res, u32)> {
        match self.tail(back) {
            Some(Fusable::SplitSum {
                out: o,
                scratch,
                splits,
            }) if *o == out => Some((scratch.clone(), *splits)),
            _ => None,
        }
    }

    /// Drops the recorded dispatch at `idx` (taken over by a fused one recorded later, and read
    /// by nothing in between), as `drop_tail` does.
    fn drop_cmd(&mut self, idx: usize) {
        self.cmds.remove(idx);
        self.recent.retain(|(i, _)| *i != idx);
        for (i, _) in &mut self.recent {
            if *i > idx {
                *i -= 1;
            }
        }
    }

    /// Drops the last `n` recorded dispatches (taken over by a fused one). Their parameter
    /// blocks stay unused in the arena; writes they recorded stay counted in `versions`, which
    /// the fused dispatch makes too.
    fn drop_tail(&mut self, n: usize) {
        let keep = self.cmds.len() - n;
        self.cmds.truncate(keep);
        self.recent.retain(|(i, _)| *i < keep);
    }

    /// Compute dispatches submitted so far by this backend (after fusion).
    pub fn dispatches(&self) -> u64 {
        self.dispatches
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn storage(&mut self, label: &str, bytes: u64) -> Res {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Res {
            buf,
            id: self.new_id(),
        }
    }

    fn storage_init(&mut self, label: &str, words: &[u32]) -> Res {
        let res = self.storage(label, (words.len() * 4) as u64);
        self.queue
            .write_buffer(&res.buf, 0, bytemuck::cast_slice(words));
        res
    }

    fn pipeline(&mut self, k: Kernel) -> &Pipeline {
        if !self.pipelines.contains_key(&k) {
            let (body, wg, fmt) = match k {
                Kernel::MatVecQ8K(_, _, _, (wg, _, _))
                | Kernel::MatVecQ8KAdd(_, _, _, (wg, _, _))
                | Kernel::MatVecQ8KMulti(_, _, _, (wg, _, _), _) => (shaders::MATVEC_Q8K, wg, None),
                Kernel::ActQ8K | Kernel::NormQ8K => ("", 256, None),
                Kernel::GluQ8K => (shaders::GLU_Q8K, 256, None),
                Kernel::GluF16 => (shaders::GLU_F16, 256, None),
                Kernel::MatVec(dt) => (shaders::MATVEC, MATVEC_WG, format(dt)),
                Kernel::MatMul(dt) => (shaders::MATMUL, 256, format(dt)),
                Kernel::MatMulK(dt) => (shaders::MATMUL_KMAJOR, 256, format(dt)),
                Kernel::MatMulCoop(dt, t) => ("", t.threads(), format(dt)),
                Kernel::MatMulCm2(dt, _) => ("", cm2::THREADS, format(dt)),
                Kernel::MatVecRagged(dt) => (shaders::MATVEC_RAGGED, MATVEC_WG, format(dt)),
                Kernel::MatMulRagged(dt) => (shaders::MATMUL_RAGGED, 256, format(dt)),
                Kernel::Norm | Kernel::NormInplace => ("", 256, None),
                Kernel::Elementwise => (shaders::ELEMENTWISE, 256, None),
                Kernel::Glu => (shaders::GLU, 256, None),
                Kernel::Rope => (shaders::ROPE, 256, None),
                Kernel::KvStore => (shaders::KV_STORE, 256, None),
                Kernel::KvStore2 => (shaders::KV_STORE2, 256, None),
                Kernel::AddNorm(_) | Kernel::AddNormF16 | Kernel::AddNormSplit(_) => {
                    ("", 256, None)
                }
                Kernel::RopeKv(_) => ("", 256, None),
                Kernel::Attention => (shaders::ATTENTION, ATTN_WG, None),
                Kernel::AttnTile(wg, ..) => ("", wg, None),
                Kernel::AttnCoop(_) => ("", 128, None),
                Kernel::AttnCm2(_) => ("", cm2::ATTN_THREADS, None),
                Kernel::AttnDecode(a) => ("", 64 * a.hg, None),
                Kernel::AttnCombine(q8k) => ("", if q8k { 256 } else { 64 }, None),
                Kernel::ActQuant => (shaders::ACT_QUANT, 256, None),
                Kernel::SplitSum(_) => ("", 256, None),
                Kernel::ActQ8KWide => (shaders::ACT_Q8K_WIDE, 256, None),
            };
            let src = match k {
                Kernel::MatVecQ8K(dt, packed, reduce, (_, tpr, nr))
                | Kernel::MatVecQ8KAdd(dt, packed, reduce, (_, tpr, nr)) => {
                    let probe = std::env::var("ORCHARD_GPU_Q8K_PROBE").is_ok();
                    let unit = match dt {
                        _ if probe => shaders::UNIT_PROBE,
                        DType::Q4_K => shaders::UNIT_Q4_K,
                        DType::Q6_K => shaders::UNIT_Q6_K,
                        _ => unreachable!("no integer-dot unit for {dt}"),
                    };
                    let acc = matches!(k, Kernel::MatVecQ8KAdd(..));
                    shaders::source_q8k(unit, wg, tpr, nr, packed, reduce, acc)
                }
                Kernel::MatVecQ8KMulti(dt, packed, reduce, (_, tpr, nr), m) => {
                    let unit = match dt {
                        DType::Q4_K => shaders::UNIT_Q4_K,
                        DType::Q6_K => shaders::UNIT_Q6_K,
                        _ => unreachable!("no integer-dot unit for {dt}"),
                    };
                    shaders::source_q8k_multi(unit, wg, tpr, nr, packed, reduce, m)
                }
                Kernel::Glu => shaders::glu_source(body, false),
                Kernel::MatMulCoop(_, t) => shaders::coop_source(t, fmt.as_ref()),
                Kernel::MatMulCm2(..) | Kernel::AttnCm2(_) => String::new(),
                Kernel::GluQ8K => shaders::glu_source(body, true),
                Kernel::GluF16 => shaders::glu_source(body, false),
                Kernel::ActQ8K => shaders::act_q8k_source(),
                Kernel::Norm => shaders::norm_source(shaders::NormKind::Plain),
                Kernel::NormInplace => shaders::norm_source(shaders::NormKind::Inplace),
                Kernel::NormQ8K => shaders::norm_source(shaders::NormKind::Q8K),
                Kernel::AddNorm(false) => shaders::norm_source(shaders::NormKind::Add),
                Kernel::AddNorm(true) => shaders::norm_source(shaders::NormKind::AddQ8K),
                Kernel::AddNormF16 => shaders::norm_source(shaders::NormKind::AddF16),
                Kernel::AddNormSplit(f16) => shaders::add_norm_split_source(f16),
                Kernel::SplitSum(quads) => shaders::split_sum_source(quads),
                Kernel::AttnTile(_, bq, bk, dmax) => shaders::attn_tile_source(wg, bq, bk, dmax),
                Kernel::AttnCoop(dmax) => shaders::attn_coop_source(dmax),
                Kernel::AttnDecode(a) => shaders::attn_decode_source(a),
                Kernel::AttnCombine(q8k) => shaders::attn_combine_source(q8k),
                Kernel::RopeKv(split) => shaders::rope_kv_source(split),
                _ => shaders::source(body, wg, fmt.as_ref()),
            };
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(&format!("{k:?}")),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            };
            // SAFETY: naga's loop bounding (a counter and exit test added to every loop, which
            // made the matrix-vector kernels 2-2.5x slower on an H100) is only needed for
            // shaders that may loop forever; every loop in these kernels runs over a range
            // fixed by its parameters with a non-zero constant stride. Bounds checks on
            // buffer accesses stay on unless ORCHARD_GPU_SHADER_CHECKS=none (a measurement
            // knob; indices stay inside their bindings, covered by the parity tests).
            // `MATMUL_COOP` runs without them (run 13: its products 10-17 % faster): its
            // shared-memory indices are bounded by constants, and every storage access is
            // guarded by the row, chunk and token counts of the dispatch (the weight reads are
            // those of `deq` for row < rows and chunk < chunks per row, as in every kernel).
            // `ATTN_TILE` likewise (run 15: 0.65-0.67 ms against 0.72 for one 8B layer's
            // prompt attention): shared-memory indices are bounded by constants; storage reads
            // are the host's block and range words, Q rows below the block's token count, and
            // K/V of cells the host validated (cell 0 past the range); writes are rows < count.
            // `ATTN_COOP` the same (its head dim is the K and V head dim, checked by the host).
            let checks = match k {
                Kernel::MatMulCoop(..) | Kernel::AttnTile(..) | Kernel::AttnCoop(..) => {
                    wgpu::ShaderRuntimeChecks::unchecked()
                }
                _ => self.shader_checks,
            };
            let module = match k {
                Kernel::MatMulCm2(dt, t) => {
                    let words = cm2::spirv(dt, t);
                    // SAFETY: `cm2` is set only on a device `cm2::request_device` opened with
                    // PASSTHROUGH_SHADERS, and `words` is one of the kernel's own modules
                    // (validated by spirv-val when built); its bindings are the params block
                    // and the three storage buffers of `bindings()`, as the layout below. Its
                    // loads are tensor-addressed with the chunk's row, column and token
                    // counts as bounds (clamped on edge tiles), and its scale reads are of rows
                    // below the chunk's row count; checked against the CPU on the card by
                    // `gpu_bench --kernels` (there is no CI device with the extension).
                    unsafe { cm2::module(&self.device, &format!("{k:?}"), words, cm2::THREADS) }
                }
                Kernel::AttnCm2(d) => {
                    let words = cm2::attention_spirv(d).expect("a head dim with a module");
                    // SAFETY: as `MatMulCm2` above (`attn_cm2_available` implies `cm2`); its
                    // bindings are `ATTN_COOP`'s. Q and O are tensor-addressed with the block's
                    // token count as bound, K and V with the block's last cell (clamped), all
                    // inside their bindings as the host validated every cell; the table, range
                    // and block words it reads are the host's. Checked against the CPU on the
                    // card by `gpu_bench --attn`.
                    unsafe {
                        cm2::module(&self.device, &format!("{k:?}"), words, cm2::ATTN_THREADS)
                    }
                }
                // SAFETY: see above.
                _ => unsafe { self.device.create_shader_module_trusted(desc, checks) },
            };
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(PARAM_BYTES as u64),
                },
                count: None,
            }];
            for (i, &rw) in k.bindings().iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: !rw },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: None,
                    entries: &entries,
                });
            let pl = self
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                });
            let pipeline = self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&format!("{k:?}")),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                });
            self.pipelines.insert(k, Pipeline { pipeline, layout });
        }
        &self.pipelines[&k]
    }

    /// Makes room for `n_ops` parameter blocks and `aux_words` table words in the current
    /// submission, flushing first when they would not fit, so that what an op pushes afterwards
    /// is never split from the op across two submissions.
    fn reserve(&mut self, n_ops: usize, aux_words: usize) {
        let params_full =
            self.params.len() + n_ops * self.param_stride > self.param_stride * PARAM_SLOTS;
        let aux_full = self.aux.len() + aux_words > self.aux_cap;
        if params_full || aux_full {
            self.flush(None);
        }
        if aux_words > self.aux_cap {
            let cap = aux_words.next_power_of_two();
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("aux"),
                size: (cap * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            self.aux_res = Res {
                buf,
                id: self.new_id(),
            };
            self.aux_cap = cap;
        }
    }

    /// Appends words to this submission's table arena; returns their word offset.
    fn push_aux(&mut self, words: &[u32]) -> u32 {
        debug_assert!(self.aux.len() + words.len() <= self.aux_cap);
        let off = self.aux.len() as u32;
        self.aux.extend_from_slice(words);
        off
    }

    /// Records one dispatch of `k` over `res` (the storage bindings in order).
    fn dispatch(&mut self, k: Kernel, res: &[&Res], p: [u32; 16], groups: [u32; 3]) {
        if groups.contains(&0) {
            return;
        }
        self.reserve(1, 0);
        let offset = self.params.len() as u32;
        self.params.extend_from_slice(bytemuck::cast_slice(&p));
        self.params.resize(offset as usize + self.param_stride, 0);
        let mut key = [0u64; 9];
        key[0] = self.params_res.id;
        for (i, r) in res.iter().enumerate() {
            key[i + 1] = r.id;
        }
        if !self.binds.contains_key(&(k, key)) {
            if self.binds.len() > 8192 {
                self.binds.clear();
            }
            let params_buf = self.params_res.buf.clone();
            let layout = self.pipeline(k).layout.clone();
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params_buf,
                    offset: 0,
                    size: NonZeroU64::new(PARAM_BYTES as u64),
                }),
            }];
            for (i, r) in res.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: r.buf.as_entire_binding(),
                });
            }
            let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
            self.binds.insert((k, key), bind);
        }
        let bind = self.binds[&(k, key)].clone();
        self.pipeline(k);
        for (r, &rw) in res.iter().zip(k.bindings()) {
            if !rw {
                self.check_unrotated(r.id);
            }
        }
        for (r, &rw) in res.iter().zip(k.bindings()) {
            if rw {
                *self.versions.entry(r.id).or_insert(0) += 1;
            }
        }
        self.cmds.push(Cmd::Dispatch {
            kernel: k,
            bind,
            offset,
            groups,
        });
    }

    fn push_copy(&mut self, src: wgpu::Buffer, src_off: u64, dst: &Res, dst_off: u64, size: u64) {
        *self.versions.entry(dst.id).or_insert(0) += 1;
        self.cmds.push(Cmd::Copy {
            src,
            src_off,
            dst: dst.buf.clone(),
            dst_off,
            size,
        });
    }

    /// One chunk of a Q4_K prompt product on `matmul_cm2.comp`: weight chunk, f16 activations
    /// and output in `res`, parameters `p` as the WGSL matmuls take them, and the chunk's rows,
    /// first row, the output's row stride, K blocks a row and tokens in `dims`. Products of few
    /// tiles split K over more workgroups (llama.cpp's rule: below half the SMs, as many
    /// splits as fill them; below two thirds, three; at most 8, at least one 256-block each),
    /// the partial products going to a scratch buffer that `SPLIT_SUM` adds into the output.
    fn matmul_cm2(
        &mut self,
        dt: DType,
        res: [&Res; 3],
        mut p: [u32; 16],
        dims: (usize, usize, usize, usize, usize),
    ) {
        let (crow, row0, stride, bpr, n) = dims;
        let tiles = |t: cm2::Tile| crow.div_ceil(t.bm as usize) * n.div_ceil(t.bn as usize);
        let t = self.cm2_tile.unwrap_or(
            if n > 128 && tiles(CM2_TILE_WIDE) >= CM2_FILL_GROUPS
                || n > 128 && self.cm2_long_k && bpr >= CM2_LONG_K_BLOCKS
            {
                CM2_TILE_WIDE
            } else if n <= 128 && tiles(CM2_TILE) < 64 {
                CM2_TILE_NARROW
            } else {
                CM2_TILE
            },
        );
        let nt = tiles(t);
        let mut split = if bpr < 8 {
            1
        } else if nt <= CM2_FILL_GROUPS / 2 {
            (CM2_FILL_GROUPS / nt).min(8)
        } else if nt <= CM2_FILL_GROUPS * 2 / 3 {
            3
        } else {
            1
        };
        let per = bpr.div_ceil(split);
        split = bpr.div_ceil(per);
        p[9] = per as u32;
        let groups = [
            crow.div_ceil(t.bm as usize) as u32,
            n.div_ceil(t.bn as usize) as u32,
            split as u32,
        ];
        if split == 1 {
            p[10] = 0;
            self.dispatch(Kernel::MatMulCm2(dt, t), &res, p, groups);
            return;
        }
        let part = n * crow;
        let bytes = (split * part * 4) as u64;
        let slot = self.cm2_scratch_next;
        self.cm2_scratch_next ^= 1;
        let scratch = match &self.cm2_scratch[slot] {
            Some(s) if s.buf.size() >= bytes => s.clone(),
            _ => {
                let s = self.storage("cm2_split", bytes);
                self.cm2_scratch[slot] = Some(s.clone());
                s
            }
        };
        // The partial products: tokens x crow each, from row 0.
        p[3] = crow as u32;
        p[4] = 0;
        p[10] = part as u32;
        self.dispatch(
            Kernel::MatMulCm2(dt, t),
            &[res[0], res[1], &scratch],
            p,
            groups,
        );
        let quads = [crow, stride, row0].iter().all(|v| v.is_multiple_of(4));
        let w = if quads { 4 } else { 1 };
        let (g, gx) = self.grid(part / w, 256);
        let mut q = [0u32; 16];
        q[..6].copy_from_slice(&[
            (part / w) as u32,
            (crow / w) as u32,
            split as u32,
            gx,
            (stride / w) as u32,
            (row0 / w) as u32,
        ]);
        self.dispatch(Kernel::SplitSum(quads), &[&scratch, res[2]], q, g);
        if crow == stride && row0 == 0 {
            // Partial and output indices agree: the consumer (`ROPE_KV`, the add + norm) can
            // add these itself.
            let out = res[2].id;
            let splits = split as u32;
            self.mark_fusable(Fusable::SplitSum {
                out,
                scratch,
                splits,
            });
        }
    }

    /// `x` as a matmul with weights of `dtype` should read it: the buffer itself, or a copy
    /// rounded through the CPU backend's activation format for that weight type.
    /// With `f16`, the values rounded to f16 and packed two a word (what `matmul_cm2.comp`
    /// reads; the rounding is the one `MATMUL_COOP` does as it loads).
    fn matmul_input(&mut self, x: BufId, dtype: DType, f16: bool) -> Res {
        let xr = self.res(x);
        let vdt = orchard_quant::traits(dtype).map(|t| t.vec_dot_type);
        let (mut mode, block) = match vdt {
            Some(DType::Q8_0 | DType::Q8_1) => (0u32, 32usize),
            Some(DType::Q8_K) => (1, 256),
            Some(DType::F16) => (2, 1),
            _ if f16 => (2, 1),
            _ => return xr,
        };
        if !self.exact_activations {
            if !f16 {
                return xr;
            }
            mode = 2;
        }
        if f16 {
            mode = self.f16_mode();
        }
        let n = self.buf(x).n_tokens * self.buf(x).width;
        if !n.is_multiple_of(block) || (f16 && !n.is_multiple_of(256)) {
            assert!(!f16, "f16 activations of {n} values: not whole workgroups");
            return xr;
        }
        let key = (x.0, mode | if f16 { ACT_F16 } else { 0 });
        let src = (xr.id, self.versions.get(&xr.id).copied().unwrap_or(0));
        if let Some(q) = self.act_q.get(&key) {
            if q.src == src && q.cap >= n {
                return q.res.clone();
            }
        }
        let (res, cap) = match self.act_q.remove(&key) {
            Some(q) if q.cap >= n => (q.res, q.cap),
            _ => (self.storage("act_q", (n * 4) as u64), n),
        };
        if mode == 1 {
            // Q8_K: whole 256-value blocks (checked above), eight a workgroup.
            let (groups, gx) = self.grid((n / 256).div_ceil(8), 1);
            let mut p = [0u32; 16];
            p[..5].copy_from_slice(&[n as u32, 0, 0, gx, f16 as u32]);
            self.dispatch(Kernel::ActQ8KWide, &[&xr, &res], p, groups);
        } else {
            let (groups, gx) = self.grid(n, 256);
            let mut p = [0u32; 16];
            p[..5].copy_from_slice(&[n as u32, block as u32, mode, gx, f16 as u32]);
            self.dispatch(Kernel::ActQuant, &[&xr, &res], p, groups);
        }
        self.act_q.insert(
            key,
            ActQ {
                src,
                res: res.clone(),
                cap,
            },
        );
        res
    }

    /// The 128x128-tile kernel for `dt`: the k-major layout unless `ORCHARD_GPU_MATMUL=old`.
    fn matmul_big(&self, dt: DType) -> Kernel {
        if self.old_matmul {
            Kernel::MatMul(dt)
        } else {
            Kernel::MatMulK(dt)
        }
    }

    /// Where a fused kernel writing `x` (about to be `n_tokens` x `width`) should put its
    /// Q8_K copy, when fusion applies: the buffer (and its capacity in words) and the word
    /// offset of the scales. Register it with `q8k_written` after the dispatch.
    fn q8k_fused_target(
        &mut self,
        x: BufId,
        n_tokens: usize,
        width: usize,
    ) -> Option<(Res, usize, u32)> {
        const MODE: u32 = 3;
        if !self.fuse_q8k
            || !self.exact_activations
            || n_tokens > MATVEC_MAX_TOKENS
            || !width.is_multiple_of(256)
        {
            return None;
        }
        let n = n_tokens * width;
        let words = n / 4 + n / 256;
        let (res, cap) = match self.act_q.remove(&(x.0, MODE)) {
            Some(q) if q.cap >= words => (q.res, q.cap),
            _ => (self.storage("act_q8k", (words * 4) as u64), words),
        };
        Some((res, cap, (n / 4) as u32))
    }

    /// How `matmul_input` rounds the f16 copies cm2 products read: 1 through Q8_K, 2 plain.
    fn f16_mode(&self) -> u32 {
        if self.exact_activations && self.cm2_q8k_inputs {
            1
        } else {
            2
        }
    }

    /// Where a kernel writing `x` (about to be `n_tokens` x `width`) should put the f16 copy
    /// `matmul_input` gives cm2 products (rounded as `f16_mode` says; `plain_only` for a kernel
    /// that can only write plain f16), when that fusion applies: the buffer and its capacity
    /// in values. Register it with `f16_written` after.
    fn f16_fused_target(
        &mut self,
        x: BufId,
        n_tokens: usize,
        width: usize,
        plain_only: bool,
    ) -> Option<(Res, usize)> {
        let key = (x.0, self.f16_mode() | ACT_F16);
        let cm2_reads = self.cm2 && width >= CM2_MIN_COLS;
        if !self.fuse_f16
            || (plain_only && self.f16_mode() != 2)
            || n_tokens <= MATVEC_MAX_TOKENS
            || !width.is_multiple_of(256)
            || !(cm2_reads || self.fuse_f16_always)
        {
            return None;
        }
        let n = n_tokens * width;
        Some(match self.act_q.remove(&key) {
            Some(q) if q.cap >= n => (q.res, q.cap),
            _ => (self.storage("act_q", (n * 4) as u64), n),
        })
    }

    /// Records that `res` holds the f16 copy of `x` (rounded as `f16_mode` says) as `x` is now.
    fn f16_written(&mut self, x: BufId, res: Res, cap: usize) {
        let xr = self.res(x);
        let src = (xr.id, self.versions.get(&xr.id).copied().unwrap_or(0));
        let key = (x.0, self.f16_mode() | ACT_F16);
        self.act_q.insert(key, ActQ { src, res, cap });
    }

    /// Records that `res` holds the Q8_K copy of `x` as `x` is now.
    fn q8k_written(&mut self, x: BufId, res: Res, cap: usize) {
        const MODE: u32 = 3;
        let xr = self.res(x);
        let src = (xr.id, self.versions.get(&xr.id).copied().unwrap_or(0));
        self.act_q.insert((x.0, MODE), ActQ { src, res, cap });
    }

    /// `x` quantized to packed Q8_K (int8 words, then one f32 scale per 256 values) for the
    /// integer-dot kernels, cached until `x` is written again. Returns the buffer and the word
    /// offset of the scales.
    fn q8k_input(&mut self, x: BufId) -> (Res, u32) {
        const MODE: u32 = 3;
        let xr = self.res(x);
        let n = self.buf(x).n_tokens * self.buf(x).width;
        debug_assert!(n.is_multiple_of(256));
        let words = n / 4 + n / 256;
        let src = (xr.id, self.versions.get(&xr.id).copied().unwrap_or(0));
        if let Some(q) = self.act_q.get(&(x.0, MODE)) {
            if q.src == src && q.cap >= words {
                return (q.res.clone(), (n / 4) as u32);
            }
        }
        let (res, cap) = match self.act_q.remove(&(x.0, MODE)) {
            Some(q) if q.cap >= words => (q.res, q.cap),
            _ => (self.storage("act_q8k", (words * 4) as u64), words),
        };
        let (groups, gx) = self.grid(n / 256, 1);
        let mut p = [0u32; 16];
        p[..4].copy_from_slice(&[n as u32, 0, 0, gx]);
        self.dispatch(Kernel::ActQ8K, &[&xr, &res], p, groups);
        self.act_q.insert(
            (x.0, MODE),
            ActQ {
                src,
                res: res.clone(),
                cap,
            },
        );
        (res, (n / 4) as u32)
    }

    /// A 1-D launch of `n` work items in workgroups of `wg`, folded into 2-D when it exceeds the
    /// per-dimension limit. Returns (groups, grid x).
    fn grid(&self, n: usize, wg: usize) -> ([u32; 3], u32) {
        let groups = n.div_ceil(wg);
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        if groups <= max {
            ([groups as u32, 1, 1], groups as u32)
        } else {
            let gx = max;
            ([gx as u32, groups.div_ceil(gx) as u32, 1], gx as u32)
        }
    }

    /// Encodes everything recorded into one command buffer and submits it, with an optional
    /// final copy of `(src, bytes)` into the staging buffer.
    fn flush(&mut self, readback: Option<(wgpu::Buffer, u64)>) {
        if self.cmds.is_empty() && readback.is_none() {
            return;
        }
        let t0 = Instant::now();
        let n_dispatch = self
            .cmds
            .iter()
            .filter(|c| matches!(c, Cmd::Dispatch { .. }))
            .count();
        DISPATCHES.fetch_add(n_dispatch as u64, Ordering::Relaxed);
        self.dispatches += n_dispatch as u64;
        let profile =
            n_dispatch > 0 && self.profiler.is_some() && PROFILE_ON.load(Ordering::Relaxed);
        if profile {
            self.profiler_reserve(n_dispatch);
        }
        // Timestamp query sets (two queries per dispatch) and the kernels timed, in order.
        let sets: &[wgpu::QuerySet] = match (&self.profiler, profile) {
            (Some(p), true) => &p.sets,
            _ => &[],
        };
        let mut timed: Vec<Kernel> = Vec::new();
        SUBMISSIONS.fetch_add(1, Ordering::Relaxed);
        if !self.params.is_empty() {
            self.queue
                .write_buffer(&self.params_res.buf, 0, &self.params);
        }
        if !self.aux.is_empty() {
            self.queue
                .write_buffer(&self.aux_res.buf, 0, bytemuck::cast_slice(&self.aux));
        }
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let cmds = std::mem::take(&mut self.cmds);
        let mut i = 0;
        while i < cmds.len() {
            if let Cmd::Copy {
                src,
                src_off,
                dst,
                dst_off,
                size,
            } = &cmds[i]
            {
                enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size);
                i += 1;
                continue;
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            let mut current: Option<Kernel> = None;
            while let Some(Cmd::Dispatch {
                kernel,
                bind,
                offset,
                groups,
            }) = cmds.get(i)
            {
                if current != Some(*kernel) {
                    pass.set_pipeline(&self.pipelines[kernel].pipeline);
                    current = Some(*kernel);
                }
                pass.set_bind_group(0, bind, &[*offset]);
                let q = 2 * timed.len() as u32;
                let set = sets.get((q / wgpu::QUERY_SET_MAX_QUERIES) as usize);
                let q = q % wgpu::QUERY_SET_MAX_QUERIES;
                if let Some(set) = set {
                    pass.write_timestamp(set, q);
                }
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                if let Some(set) = set {
                    pass.write_timestamp(set, q + 1);
                    timed.push(*kernel);
                }
                i += 1;
            }
        }
        let n_queries = 2 * timed.len() as u32;
        if let Some((resolve, readback)) = self.profiler.as_ref().and_then(|p| p.resolve.as_ref()) {
            if n_queries > 0 {
                for (s, set) in sets.iter().enumerate() {
                    let first = s as u32 * wgpu::QUERY_SET_MAX_QUERIES;
                    if first >= n_queries {
                        break;
                    }
                    let n = (n_queries - first).min(wgpu::QUERY_SET_MAX_QUERIES);
                    enc.resolve_query_set(set, 0..n, resolve, u64::from(first) * 8);
                }
                enc.copy_buffer_to_buffer(resolve, 0, readback, 0, u64::from(n_queries) * 8);
            }
        }
        if let Some((src, bytes)) = readback {
            let need = bytes.max(4);
            if self.staging.as_ref().is_none_or(|(_, cap)| *cap < need) {
                let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size: need.next_power_of_two(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.staging = Some((buf, need.next_power_of_two()));
            }
            if bytes > 0 {
                let (st, _) = self.staging.as_ref().expect("created above");
                enc.copy_buffer_to_buffer(&src, 0, st, 0, bytes);
            }
        }
        self.queue.submit([enc.finish()]);
        self.submissions += 1;
        ENCODE_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.params.clear();
        self.aux.clear();
        self.rope_memo.clear();
        self.recent.clear();
        if !timed.is_empty() {
            self.read_profile(&timed);
        }
    }

    /// Makes the profiler's query sets and buffers hold `n_dispatch` dispatches.
    fn profiler_reserve(&mut self, n_dispatch: usize) {
        let Some(p) = self.profiler.as_mut() else {
            return;
        };
        let per_set = wgpu::QUERY_SET_MAX_QUERIES as usize;
        while p.sets.len() * per_set < 2 * n_dispatch {
            p.sets
                .push(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: wgpu::QUERY_SET_MAX_QUERIES,
                }));
        }
        let bytes = (p.sets.len() * per_set * 8) as u64;
        if p.resolve.as_ref().is_none_or(|(r, _)| r.size() < bytes) {
            let buf = |label, usage| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            p.resolve = Some((
                buf(
                    "profile_resolve",
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                ),
                buf(
                    "profile_readback",
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
            ));
        }
    }

    /// Waits for the submission just made and adds its timestamps (start and end of each of
    /// `timed`, in order) to this backend's profile and the process's.
    fn read_profile(&mut self, timed: &[Kernel]) {
        let Some((_, readback)) = self.profiler.as_ref().and_then(|p| p.resolve.clone()) else {
            return;
        };
        let slice = readback.slice(0..timed.len() as u64 * 16);
        let done = Arc::new(Mutex::new(None));
        let d2 = done.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut g) = d2.lock() {
                *g = Some(r);
            }
        });
        self.wait();
        let mut ticks = Vec::with_capacity(2 * timed.len());
        if matches!(done.lock().ok().and_then(|g| g.clone()), Some(Ok(()))) {
            match slice.get_mapped_range() {
                Ok(view) => ticks.extend(view.chunks_exact(8).map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    u64::from_ne_bytes(b)
                })),
                Err(e) => tracing::error!("GPU profile readback: {e}"),
            }
            readback.unmap();
        } else {
            tracing::error!("GPU profile readback: mapping the timestamps failed");
        }
        let Some(p) = self.profiler.as_mut() else {
            return;
        };
        if ticks.len() != 2 * timed.len() {
            return;
        }
        let mut sub = ProfileAcc::default();
        sub.add_submission(timed, &ticks, p.period);
        p.acc.merge(&sub);
        if let Ok(mut g) = PROFILE.lock() {
            g.merge(&sub);
        }
    }

    fn wait(&self) {
        let t0 = Instant::now();
        let r = self.device.poll(wgpu::PollType::wait_indefinitely());
        WAIT_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Err(e) = r {
            tracing::error!("GPU wait failed: {e}");
            if let Ok(mut v) = self.errors.lock() {
                v.push(e.to_string());
            }
        }
    }

    fn buf(&self, b: BufId) -> &GpuBuf {
        &self.bufs[b.0 as usize]
    }

    fn res(&self, b: BufId) -> Res {
        self.bufs[b.0 as usize].res.clone()
    }

    fn vector(&self, w: WeightId) -> Res {
        self.weights[w.0 as usize]
            .vector
            .as_ref()
            .map(|(r, _)| r.clone())
            .expect("vector weight used as a vector")
    }

    fn elementwise(&mut self, x: BufId, y: Option<Res>, mode: u32, width: usize, f: f32) {
        let n = self.buf(x).n_tokens * self.buf(x).width;
        let (groups, gx) = self.grid(n, 256);
        let xr = self.res(x);
        let yr = y.unwrap_or_else(|| self.dummy.clone());
        let mut p = [0u32; 16];
        p[..4].copy_from_slice(&[n as u32, mode, width as u32, gx]);
        p[12] = f.to_bits();
        self.dispatch(Kernel::Elementwise, &[&xr, &yr], p, groups);
    }

    fn check_weight(&self, w: &HostWeight) -> Result<(), BackendError> {
        let bad = || BackendError::BadWeight {
            name: w.name.clone(),
            dtype: w.dtype,
            dims: w.dims.clone(),
            len: w.range.len(),
        };
        let n: u64 = w.dims.iter().product();
        let row = w
            .dtype
            .row_bytes(w.dims.first().copied().unwrap_or(0))
            .ok_or_else(bad)?;
        if w.dims.is_empty()
            || row.checked_mul(n / w.dims[0].max(1)) != Some(w.range.len() as u64)
            || w.range.end > w.source.bytes().len()
        {
            return Err(bad());
        }
        Ok(())
    }

    fn unsupported(&self, w: &HostWeight) -> BackendError {
        BackendError::UnsupportedType {
            name: w.name.clone(),
            dtype: w.dtype,
            backend: self.name(),
        }
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        format!("{}: {}", self.info.backend, self.info.name)
    }

    fn supports_matmul(&self, dtype: DType) -> bool {
        format(dtype).is_some()
    }

    fn add_weight(&mut self, w: &HostWeight) -> Result<WeightId, BackendError> {
        self.check_weight(w)?;
        let (cols, rows) = (w.row_len(), w.n_rows());
        let mut gw = GpuWeight {
            name: w.name.clone(),
            cols,
            rows,
            fmt: None,
            chunks: Vec::new(),
            vector: None,
        };
        if rows == 1 {
            let mut v = vec![0.0f32; cols];
            orchard_quant::dequantize_row(w.dtype, w.bytes(), &mut v)
                .map_err(|_| self.unsupported(w))?;
            let words: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
            let res = self.storage_init(&w.name, &words);
            gw.vector = Some((res, v));
        } else {
            let fmt = format(w.dtype).ok_or_else(|| self.unsupported(w))?;
            let raw_row = w.dtype.row_bytes(cols as u64).expect("checked") as usize;
            let bpr = fmt.padded_cols(cols) / fmt.block;
            // Bytes of one repacked row, scales rounded up, to size the chunks.
            let gpu_row = bpr * fmt.body_words() * 4 + fmt.scale_words(bpr) * 4 + 4;
            let max_bind = self
                .limits
                .max_storage_buffer_binding_size
                .min(self.limits.max_buffer_size) as usize;
            let rows_per_chunk = (max_bind / gpu_row).max(1).min(rows);
            let bytes = w.bytes();
            let mut row0 = 0;
            while row0 < rows {
                let n = rows_per_chunk.min(rows - row0);
                let (words, scale_off) =
                    fmt.repack(&bytes[row0 * raw_row..(row0 + n) * raw_row], cols, n);
                let res = self.storage_init(&w.name, &words);
                gw.chunks.push(WeightChunk {
                    res,
                    row0,
                    rows: n,
                    scale_off,
                });
                row0 += n;
            }
            gw.fmt = Some(fmt);
        }
        self.weights.push(gw);
        Ok(WeightId(self.weights.len() as u32 - 1))
    }

    fn alloc_kv(
        &mut self,
        layer: usize,
        n_cells: usize,
        k_width: usize,
        v_width: usize,
    ) -> Result<(), BackendError> {
        if !k_width.is_multiple_of(2) || !v_width.is_multiple_of(2) {
            return Err(device_error(format!(
                "layer {layer}: odd KV widths {k_width}/{v_width} are not supported on the GPU"
            )));
        }
        let max_bind = self.limits.max_storage_buffer_binding_size as usize;
        if n_cells * k_width.max(v_width) * 2 > max_bind {
            return Err(device_error(format!(
                "layer {layer}: a KV cache of {n_cells} cells exceeds the device's binding limit"
            )));
        }
        if self.kv.len() <= layer {
            self.kv.resize_with(layer + 1, || None);
        }
        let k = self.storage("kv_k", (n_cells * k_width * 2) as u64);
        let v = self.storage("kv_v", (n_cells * v_width * 2) as u64);
        self.kv[layer] = Some(LayerKv {
            k,
            v,
            k_width,
            v_width,
            n_cells,
        });
        Ok(())
    }

    fn kv_bytes(&self) -> usize {
        self.kv
            .iter()
            .flatten()
            .map(|l| l.n_cells * (l.k_width + l.v_width) * 2)
            .sum()
    }

    fn alloc(&mut self, n_tokens: usize, width: usize) -> BufId {
        let cap = (n_tokens * width).max(4);
        let res = self.storage("act", (cap * 4) as u64);
        self.bufs.push(GpuBuf {
            res,
            cap,
            n_tokens,
            width,
        });
        BufId(self.bufs.len() as u32 - 1)
    }

    fn set_rows(&mut self, buf: BufId, n_tokens: usize) {
        let need = n_tokens * self.buf(buf).width;
        if need > self.buf(buf).cap {
            let res = self.storage("act", (need * 4) as u64);
            let b = &mut self.bufs[buf.0 as usize];
            b.res = res;
            b.cap = need;
        }
        self.bufs[buf.0 as usize].n_tokens = n_tokens;
    }

    fn upload(&mut self, buf: BufId, data: &[f32]) {
        self.op_start();
        let b = self.buf(buf);
        assert_eq!(data.len(), b.n_tokens * b.width, "upload size mismatch");
        if data.is_empty() {
            return;
        }
        self.reserve(0, data.len());
        let off = self.push_aux(bytemuck::cast_slice(data));
        let dst = self.res(buf);
        let aux = self.aux_res.buf.clone();
        self.push_copy(aux, off as u64 * 4, &dst, 0, data.len() as u64 * 4);
    }

    fn download(&mut self, buf: BufId, out: &mut Vec<f32>) {
        let n = self.buf(buf).n_tokens * self.buf(buf).width;
        let bytes = (n * 4) as u64;
        let src = self.res(buf);
        self.check_unrotated(src.id);
        self.flush(Some((src.buf, bytes)));
        out.clear();
        if n == 0 {
            self.wait();
            return;
        }
        let (st, _) = self.staging.clone().expect("flush made the staging buffer");
        let slice = st.slice(0..bytes);
        let done = Arc::new(Mutex::new(None));
        let d2 = done.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut g) = d2.lock() {
                *g = Some(r);
            }
        });
        self.wait();
        let ok = matches!(done.lock().ok().and_then(|g| g.clone()), Some(Ok(())));
        if !ok {
            tracing::error!("GPU download of {n} values failed");
            if let Ok(mut v) = self.errors.lock() {
                v.push("download: mapping the staging buffer failed".into());
            }
            out.resize(n, f32::NAN);
            return;
        }
        match slice.get_mapped_range() {
            Ok(view) => out.extend_from_slice(bytemuck::cast_slice(&view)),
            Err(e) => {
                if let Ok(mut v) = self.errors.lock() {
                    v.push(format!("download: {e}"));
                }
                out.resize(n, f32::NAN);
            }
        }
        st.unmap();
    }

    fn copy_rows(&mut self, src: BufId, rows: &[u32], dst: BufId) {
        self.op_start();
        self.set_rows(dst, rows.len());
        let w = self.buf(src).width;
        assert_eq!(w, self.buf(dst).width, "copy_rows width mismatch");
        let (s, d) = (self.res(src).buf, self.res(dst));
        let row_bytes = (w * 4) as u64;
        for (i, &r) in rows.iter().enumerate() {
            self.push_copy(
                s.clone(),
                r as u64 * row_bytes,
                &d,
                i as u64 * row_bytes,
                row_bytes,
            );
        }
    }

    fn rms_norm(&mut self, x: BufId, w: Option<WeightId>, eps: f32, out: BufId) {
        self.op_start();
        let (n, width) = (self.buf(x).n_tokens, self.buf(x).width);
        self.set_rows(out, n);
        let (groups, gx) = self.grid(n, 1);
        let wr = w.map_or_else(|| self.dummy.clone(), |w| self.vector(w));
        let (xr, or) = (self.res(x), self.res(out));
        // The residual add just recorded on x, folded into this norm.
        let q8k_norm = self.fuse_q8k
            && self.exact_activations
            && n <= MATVEC_MAX_TOKENS
            && width.is_multiple_of(256);
        let pending_add = match self.tail(0) {
            Some(Fusable::Add { x: ax, y, elems })
                if *ax == xr.id
                    && *elems == n * width
                    && y.id != or.id
                    && xr.id != or.id
                    && (!q8k_norm || self.fuse_add_norm_q8k) =>
            {
                Some(y.clone())
            }
            _ => None,
        };
        if let Some(yr) = pending_add {
            self.drop_tail(1);
            let mut p = [0u32; 16];
            p[..4].copy_from_slice(&[width as u32, n as u32, w.is_some() as u32, gx]);
            p[12] = eps.to_bits();
            if let Some((q, cap, d_off)) = self.q8k_fused_target(out, n, width) {
                p[4] = d_off;
                self.dispatch(Kernel::AddNorm(true), &[&xr, &yr, &wr, &or, &q], p, groups);
                self.q8k_written(out, q, cap);
                return;
            }
            // The plain f16 copy (the norm's thread layout has no cheap Q8_K rounding: three
            // fused layouts were slower than the separate pass, run 38), and the split-K sum
            // that made the addend, recorded just before the add (a prompt's down product),
            // taken over too: the norm then reads its partial products.
            let f16 = if self.f16_shaders {
                self.f16_fused_target(out, n, width, true)
            } else {
                None
            };
            let split = self.split_sum_at(0, yr.id).filter(|_| yr.id != xr.id);
            let mut binds = vec![&xr, &yr, &wr, &or];
            if let Some((f, _)) = &f16 {
                binds.push(f);
            }
            let kernel = match &split {
                Some((s, splits)) => {
                    self.drop_tail(1);
                    p[5] = *splits;
                    p[6] = (n * width) as u32;
                    binds.push(s);
                    Kernel::AddNormSplit(f16.is_some())
                }
                None if f16.is_some() => Kernel::AddNormF16,
                None => Kernel::AddNorm(false),
            };
            self.dispatch(kernel, &binds, p, groups);
            if let Some((f, cap)) = f16 {
                self.f16_written(out, f, cap);
            }
            return;
        }
        if let Some((q, cap, d_off)) = self.q8k_fused_target(out, n, width) {
            let mut p = [0u32; 16];
            p[..4].copy_from_slice(&[width as u32, d_off, w.is_some() as u32, 0]);
            p[12] = eps.to_bits();
            let groups = [(width / 256) as u32, n as u32, 1];
            self.dispatch(Kernel::NormQ8K, &[&xr, &wr, &or, &q], p, groups);
            self.q8k_written(out, q, cap);
            return;
        }
        let mut p = [0u32; 16];
        p[..4].copy_from_slice(&[width as u32, n as u32, w.is_some() as u32, gx]);
        p[12] = eps.to_bits();
        self.dispatch(Kernel::Norm, &[&xr, &wr, &or], p, groups);
    }

    fn head_rms_norm(&mut self, x: BufId, w: WeightId, head_dim: usize, eps: f32) {
        self.op_start();
        let n_seg = self.buf(x).n_tokens * self.buf(x).width / head_dim;
        let (groups, gx) = self.grid(n_seg, 1);
        let (xr, wr) = (self.res(x), self.vector(w));
        let mut p = [0u32; 16];
        p[..4].copy_from_slice(&[head_dim as u32, n_seg as u32, 1, gx]);
        p[12] = eps.to_bits();
        self.dispatch(Kernel::NormInplace, &[&xr, &wr], p, groups);
    }

    fn matmul(&mut self, w: WeightId, x: BufId, out: BufId) {
        self.op_start();
        let n = self.buf(x).n_tokens;
        let gw = &self.weights[w.0 as usize];
        let (cols, rows) = (gw.cols, gw.rows);
        assert_eq!(self.buf(x).width, cols, "matmul {}: input width", gw.name);
        let fmt = gw.fmt.expect("matmul on a weight uploaded as a matrix");
        let bpr = fmt.padded_cols(cols) / fmt.block;
        let ragged = if fmt.padded_cols(cols) != cols {
            cols as u32
        } else {
            0
        };
        let chunks: Vec<(Res, usize, usize, u32)> = gw
            .chunks
            .iter()
            .map(|c| (c.res.clone(), c.row0, c.rows, c.scale_off))
            .collect();
        self.set_rows(out, n);
        let or = self.res(out);
        if n <= MATVEC_MAX_TOKENS
            && self.exact_activations
            && ragged == 0
            && matches!(fmt.dtype, DType::Q4_K | DType::Q6_K)
        {
            // Integer dots on Q8_K activations: the CPU's own arithmetic, and the fast path.
            let (xq, d_off) = self.q8k_input(x);
            let shape = match (fmt.dtype, self.q6k_shape) {
                _ if self.q8k_auto => Self::q8k_auto_shape(fmt.dtype, rows, bpr),
                (DType::Q6_K, Some(s)) => s,
                _ => self.q8k_shape,
            };
            let (wg, tpr, nr) = shape;
            let reduce = match self.subgroup {
                Some(sg) if tpr == sg => shaders::Q8kReduce::Subgroup(sg),
                Some(sg) if tpr > sg && tpr.is_multiple_of(sg) => {
                    shaders::Q8kReduce::SubgroupShared(sg)
                }
                _ => shaders::Q8kReduce::Shared,
            };
            let k = Kernel::MatVecQ8K(fmt.dtype, self.packed_dot, reduce, shape);
            let rows_per_group = (nr * wg / tpr) as usize;
            if chunks.len() == 1 {
                // One dispatch with the products of the same input recorded just before.
                let (res, _, _, scale_off) = chunks[0].clone();
                let merged = match self.tail(0) {
                    Some(Fusable::MatVec {
                        k: Kernel::MatVecQ8K(dt0, p0, r0, s0),
                        xq: xq0,
                        d_off: d0,
                        n: n0,
                        nblk: b0,
                        mats,
                        ..
                    }) if *dt0 == fmt.dtype
                        && xq0.id == xq.id
                        && *d0 == d_off
                        && *n0 == n as u32
                        && *b0 == bpr as u32
                        && mats.len() < 3
                        && self.fuse_multi
                        && mats.iter().all(|m| m.3.id != or.id) =>
                    {
                        let mut mats = mats.clone();
                        mats.push((res.clone(), rows as u32, scale_off, or.clone()));
                        Some((Kernel::MatVecQ8K(*dt0, *p0, *r0, *s0), mats))
                    }
                    _ => None,
                };
                if let Some((Kernel::MatVecQ8K(dt0, p0, r0, s0), mats)) = merged {
                    self.drop_tail(1);
                    let m = mats.len() as u32;
                    let (wg0, tpr0, nr0) = s0;
                    let rpg = (nr0 * wg0 / tpr0) as usize;
                    let total: usize = mats.iter().map(|m| (m.1 as usize).div_ceil(rpg)).sum();
                    let (mut groups, gx) = self.grid(total, 1);
                    groups[2] = n as u32;
                    let mut p = [0u32; 16];
                    p[1] = bpr as u32;
                    p[6] = d_off;
                    p[7] = gx;
                    for (i, mt) in mats.iter().enumerate() {
                        p[[0, 2, 3][i]] = mt.2;
                        p[8 + i] = mt.1;
                    }
                    let mut res: Vec<&Res> = mats.iter().map(|m| &m.0).collect();
                    res.push(&xq);
                    res.extend(mats.iter().map(|m| &m.3));
                    let km = Kernel::MatVecQ8KMulti(dt0, p0, r0, s0, m);
                    self.dispatch(km, &res, p, groups);
                    let (xq, nblk) = (xq.clone(), bpr as u32);
                    self.mark_fusable(Fusable::MatVec {
                        k: Kernel::MatVecQ8K(dt0, p0, r0, s0),
                        xq,
                        d_off,
                        n: n as u32,
                        nblk,
                        mats,
                        single: None,
                    });
                    return;
                }
                let (mut groups, gx) = self.grid(rows.div_ceil(rows_per_group), 1);
                groups[2] = n as u32;
                let mut p = [0u32; 16];
                p[..8].copy_from_slice(&[
                    rows as u32,
                    bpr as u32,
                    cols as u32,
                    rows as u32,
                    0,
                    scale_off,
                    d_off,
                    gx,
                ]);
                self.dispatch(k, &[&res, &xq, &or], p, groups);
                self.mark_fusable(Fusable::MatVec {
                    k,
                    xq,
                    d_off,
                    n: n as u32,
                    nblk: bpr as u32,
                    mats: vec![(res, rows as u32, scale_off, or)],
                    single: Some((p, groups)),
                });
                return;
            }
            for (res, row0, crow, scale_off) in chunks {
                let (mut groups, gx) = self.grid(crow.div_ceil(rows_per_group), 1);
                groups[2] = n as u32;
                let mut p = [0u32; 16];
                p[..8].copy_from_slice(&[
                    crow as u32,
                    bpr as u32,
                    cols as u32,
                    rows as u32,
                    row0 as u32,
                    scale_off,
                    d_off,
                    gx,
                ]);
                self.dispatch(k, &[&res, &xq, &or], p, groups);
            }
            return;
        }
        let use_cm2 = n > MATVEC_MAX_TOKENS
            && self.cm2
            && ragged == 0
            && cm2::has_format(fmt.dtype)
            && cols >= CM2_MIN_COLS
            && rows >= CM2_MIN_ROWS;
        let xr = self.matmul_input(x, fmt.dtype, use_cm2);
        let cpb = (fmt.block / 16) as u32;
        for (res, row0, crow, scale_off) in chunks {
            let mut p = [0u32; 16];
            p[..4].copy_from_slice(&[crow as u32, bpr as u32, cols as u32, rows as u32]);
            p[8] = n as u32;
            p[9] = bpr as u32 * cpb;
            let dt = fmt.dtype;
            if n <= MATVEC_MAX_TOKENS {
                // Few rows: one row per workgroup keeps more workgroups in flight.
                let (k, per_group) = if ragged != 0 || crow < MATVEC_MIN_BLOCKED_ROWS {
                    (Kernel::MatVecRagged(dt), 1)
                } else {
                    (Kernel::MatVec(dt), MATVEC_ROWS)
                };
                let (mut groups, gx) = self.grid(crow.div_ceil(per_group), 1);
                groups[2] = n as u32;
                p[4..8].copy_from_slice(&[row0 as u32, scale_off, ragged, gx]);
                self.dispatch(k, &[&res, &xr, &or], p, groups);
            } else {
                p[4..8].copy_from_slice(&[row0 as u32, scale_off, 0, 0]);
                if use_cm2 {
                    self.matmul_cm2(dt, [&res, &xr, &or], p, (crow, row0, rows, bpr, n));
                    continue;
                }
                if self.coop && ragged == 0 {
                    let mut t = self.coop_tile;
                    // Few tiles (K and V of the 8B shape: 32 of 128 x 128 on 132 SMs): halve
                    // the token tile for twice the workgroups (run 13: 0.16-0.21 ms against
                    // 0.21-0.25 for 4096 x 1024 at n = 512; at 128 tiles the wide tile wins).
                    let tiles =
                        |t: CoopTile| crow.div_ceil(t.tm as usize) * n.div_ceil(t.tn as usize);
                    while tiles(t) < 64 {
                        match t.narrower() {
                            Some(nt) if nt.tn >= 64 => t = nt,
                            _ => break,
                        }
                    }
                    let groups = [
                        crow.div_ceil(t.tm as usize) as u32,
                        n.div_ceil(t.tn as usize) as u32,
                        1,
                    ];
                    self.dispatch(Kernel::MatMulCoop(dt, t), &[&res, &xr, &or], p, groups);
                    continue;
                }
                // Small products: 64x64 tiles fill the device where 128x128 would not.
                let big_tiles = crow.div_ceil(128) * n.div_ceil(128);
                let (k, tile) = if ragged != 0 || big_tiles < self.min_big_tiles {
                    (Kernel::MatMulRagged(dt), 64)
                } else {
                    (self.matmul_big(dt), 128)
                };
                let groups = [crow.div_ceil(tile) as u32, n.div_ceil(tile) as u32, 1];
                self.dispatch(k, &[&res, &xr, &or], p, groups);
            }
        }
    }

    fn add_bias(&mut self, x: BufId, b: WeightId) {
        self.op_start();
        let width = self.buf(x).width;
        let br = self.vector(b);
        self.elementwise(x, Some(br), 1, width, 0.0);
    }

    fn add(&mut self, x: BufId, y: BufId) {
        self.op_start();
        assert_eq!(
            self.buf(x).n_tokens * self.buf(x).width,
            self.buf(y).n_tokens * self.buf(y).width
        );
        let yr = self.res(y);
        let (xr, elems) = (self.res(x), self.buf(x).n_tokens * self.buf(x).width);
        // The integer-dot product that just wrote y, adding its outputs into x as well.
        let fold = match self.tail(0) {
            Some(Fusable::MatVec {
                k: Kernel::MatVecQ8K(dt, p, r, s),
                xq,
                n,
                mats,
                single: Some((pp, groups)),
                ..
            }) if self.fuse_matvec_add
                && mats.len() == 1
                && mats[0].3.id == yr.id
                && xr.id != yr.id
                && xr.id != xq.id
                && (*n * mats[0].1) as usize == elems =>
            {
                Some((
                    Kernel::MatVecQ8KAdd(*dt, *p, *r, *s),
                    mats[0].0.clone(),
                    xq.clone(),
                    *pp,
                    *groups,
                ))
            }
            _ => None,
        };
        if let Some((k, w, xq, pp, groups)) = fold {
            self.drop_tail(1);
            self.dispatch(k, &[&w, &xq, &yr, &xr], pp, groups);
            return;
        }
        self.elementwise(x, Some(yr.clone()), 0, 0, 0.0);
        let xid = xr.id;
        if xid != yr.id && elems > 0 {
            self.mark_fusable(Fusable::Add {
                x: xid,
                y: yr,
                elems,
            });
        }
    }

    fn scale(&mut self, x: BufId, s: f32) {
        self.op_start();
        self.elementwise(x, None, 2, 0, s);
    }

    fn softcap(&mut self, x: BufId, cap: f32) {
        self.op_start();
        self.elementwise(x, None, 3, 0, cap);
    }

    fn rope(
        &mut self,
        x: BufId,
        tokens: &[TokenSlot],
        p: &RopeParams,
        freq_factors: Option<WeightId>,
    ) {
        self.op_start();
        let (n, width) = (self.buf(x).n_tokens, self.buf(x).width);
        let key = (
            p.n_rot,
            p.freq_base.to_bits(),
            p.freq_scale.to_bits(),
            p.neox,
            freq_factors.map(|w| w.0),
        );
        let positions: Vec<u32> = tokens.iter().map(|t| t.pos).collect();
        self.reserve(1, n * p.n_rot);
        let memo = self
            .rope_memo
            .iter()
            .find(|m| m.key == key && m.positions == positions)
            .map(|m| m.offset);
        let offset = match memo {
            Some(o) => o,
            None => {
                let kept = self
                    .rope_tables
                    .iter()
                    .find(|t| t.key == key && t.positions == positions)
                    .map(|t| t.table.clone());
                let table = match kept {
                    Some(t) => t,
                    None => {
                        let ff = freq_factors.map(|w| {
                            self.weights[w.0 as usize]
                                .vector
                                .as_ref()
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default()
                        });
                        let mut table = vec![0.0f32; n * p.n_rot];
                        let mut cache = vec![0.0f32; p.n_rot];
                        for (t, tok) in tokens.iter().enumerate() {
                            rope_cache(tok.pos as f32, p, ff.as_deref(), &mut cache);
                            table[t * p.n_rot..(t + 1) * p.n_rot].copy_from_slice(&cache);
                        }
                        let table = Arc::new(table);
                        if self.rope_tables.len() >= ROPE_TABLES_KEPT {
                            self.rope_tables.remove(0);
                        }
                        self.rope_tables.push(RopeTable {
                            key,
                            positions: positions.clone(),
                            table: table.clone(),
                        });
                        table
                    }
                };
                let o = self.push_aux(bytemuck::cast_slice(&table));
                self.rope_memo.push(RopeMemo {
                    key,
                    positions,
                    offset: o,
                });
                o
            }
        };
        let total = n * (width / p.head_dim) * (p.n_rot / 2);
        let (groups, gx) = self.grid(total, 256);
        let xr = self.res(x);
        let aux = self.aux_res.clone();
        let mut pp = [0u32; 16];
        pp[..8].copy_from_slice(&[
            n as u32,
            width as u32,
            p.head_dim as u32,
            p.n_rot as u32,
            offset,
            p.neox as u32,
            0,
            gx,
        ]);
        self.dispatch(Kernel::Rope, &[&xr, &aux], pp, groups);
        let mut key = [0u32; 8];
        key.copy_from_slice(&pp[..8]);
        if total > 0 {
            self.mark_fusable(Fusable::Rope { x: xr.id, p: key });
        }
    }

    fn glu(&mut self, gate: BufId, up: BufId, kind: GluKind, out: BufId) {
        self.op_start();
        let n = self.buf(gate).n_tokens;
        let total = n * self.buf(gate).width;
        self.set_rows(out, n);
        let (groups, gx) = self.grid(total, 256);
        let (g, u, o) = (self.res(gate), self.res(up), self.res(out));
        let width = self.buf(gate).width;
        if let Some((q, cap, d_off)) = self.q8k_fused_target(out, n, width) {
            let mut p = [0u32; 16];
            p[..4].copy_from_slice(&[total as u32, (kind == GluKind::GeGlu) as u32, d_off, 0]);
            let groups = [(total / 256) as u32, 1, 1];
            self.dispatch(Kernel::GluQ8K, &[&g, &u, &o, &q], p, groups);
            self.q8k_written(out, q, cap);
            return;
        }
        if let Some((q, cap)) = self.f16_fused_target(out, n, width, false) {
            let (groups, gx) = self.grid((total / 256).div_ceil(8), 1);
            let mut p = [0u32; 16];
            let plain = (self.f16_mode() == 2) as u32;
            p[..4].copy_from_slice(&[total as u32, (kind == GluKind::GeGlu) as u32, plain, gx]);
            self.dispatch(Kernel::GluF16, &[&g, &u, &o, &q], p, groups);
            self.f16_written(out, q, cap);
            return;
        }
        let mut p = [0u32; 16];
        p[..4].copy_from_slice(&[total as u32, (kind == GluKind::GeGlu) as u32, 0, gx]);
        self.dispatch(Kernel::Glu, &[&g, &u, &o], p, groups);
    }

    fn attention(
        &mut self,
        layer: usize,
        q: BufId,
        k: BufId,
        v: BufId,
        batch: &AttnBatch<'_>,
        p: &AttnParams,
        out: BufId,
    ) -> Result<(), BackendError> {
        self.op_start();
        let n = batch.tokens.len();
        let kv = self
            .kv
            .get(layer)
            .and_then(|l| l.as_ref())
            .ok_or(BackendError::NoKvCache { layer })?;
        if p.head_dim_k > MAX_HEAD_DIM
            || p.head_dim_v > MAX_HEAD_DIM
            || !p.head_dim_k.is_multiple_of(2)
        {
            return Err(device_error(format!(
                "head dims {}/{} are not supported by the GPU attention kernel",
                p.head_dim_k, p.head_dim_v
            )));
        }
        let (kres, vres, kw, vw, n_cells) = (
            kv.k.clone(),
            kv.v.clone(),
            kv.k_width,
            kv.v_width,
            kv.n_cells,
        );
        // Validate every cell before recording anything, as the CPU backend does.
        let mut tok_cells = Vec::with_capacity(n);
        let mut seq_len: HashMap<u32, usize> = HashMap::new();
        for tok in batch.tokens {
            let cell = batch.cell_of(tok, n_cells)? as u32;
            tok_cells.push(cell);
            let e = seq_len.entry(tok.seq).or_insert(0);
            *e = (*e).max(tok.pos as usize + 1);
        }
        for (&seq, &len) in &seq_len {
            for &cell in &batch.cells[seq as usize][..len] {
                if cell as usize >= n_cells {
                    return Err(BackendError::CellOutOfRange { cell, n_cells });
                }
            }
        }
        let table_words: usize = seq_len.values().sum();
        // Split decode attention's work items and per-token item lists, where the per-token
        // kernel takes the step (not every run has 64+ queries for the tiled one) in f32.
        let shape = self.attn_decode_shape(p);
        let split = match shape {
            Some((hg, ..))
                if self.attn_split > 0
                    && !self.attn_exact
                    && !(self.attn_tile
                        && orchard_backend::runs_by(batch.tokens, |t| t.seq)
                            .all(|r| r.len() >= 64)) =>
            {
                let cnts: Vec<u32> = batch
                    .tokens
                    .iter()
                    .map(|t| {
                        let hi = t.pos as usize;
                        let lo = p.window.map_or(0, |w| (hi + 1).saturating_sub(w));
                        (hi + 1 - lo) as u32
                    })
                    .collect();
                self.attn_split_items(&cnts, p.n_head as u32 / hg)
            }
            _ => None,
        };
        let split_words = split.as_ref().map_or(0, |(i, l)| i.len() + l.len());
        // Cells, tables, ranges, up to n tiled blocks of 4 words and the split items, reserved
        // together so that no flush falls between them.
        self.reserve(4, n + table_words + 2 * n + 4 * n + split_words + 4);
        let cells_off = self.push_aux(&tok_cells);
        let mut table_off = HashMap::new();
        for (&seq, &len) in &seq_len {
            let o = self.push_aux(&batch.cells[seq as usize][..len]);
            table_off.insert(seq, o);
        }
        let mut ranges = Vec::with_capacity(2 * n);
        // Runs of consecutive tokens of one sequence: (first token, tokens).
        let mut runs = Vec::new();
        // The CPU's per-query f16 path below ggml's flash-attention tile of 64 queries, decided
        // per sequence from its own queries in the step (as the CPU backend does), where exact
        // f16 attention is on; otherwise every run accumulates in f32.
        for run in orchard_backend::runs_by(batch.tokens, |t| t.seq) {
            let f16_flag = if self.attn_exact && run.len() < 64 {
                1u32 << 31
            } else {
                0
            };
            for tok in &batch.tokens[run.clone()] {
                let hi = tok.pos as usize;
                let lo = p.window.map_or(0, |w| (hi + 1).saturating_sub(w));
                ranges.push(table_off[&tok.seq] + lo as u32);
                ranges.push((hi + 1 - lo) as u32 | f16_flag);
            }
            runs.push((run.start, run.len()));
        }
        let ranges_off = self.push_aux(&ranges);
        // Whether every sequence's cells are consecutive, as `attn_cm2.comp` reads them.
        let consecutive = seq_len.iter().all(|(&seq, &len)| {
            batch.cells[seq as usize][..len]
                .windows(2)
                .all(|w| w[1] == w[0].wrapping_add(1))
        });
        let tile = self.attn_tile_blocks(p, &runs, &ranges, consecutive);
        let aux = self.aux_res.clone();
        let (qr, kr) = (self.res(q), self.res(k));
        // The RoPEs of Q and K just recorded (same table), folded into the KV store.
        let ropes = match (self.tail(1), self.tail(0)) {
            (Some(Fusable::Rope { x: xq, p: pq }), Some(Fusable::Rope { x: xk, p: pk }))
                if self.fuse_q8k && *xq == qr.id && *xk == kr.id && qr.id != kr.id =>
            {
                // (n, width, head dim, n_rot, table, neox, _, grid x)
                let same = pq[0] == n as u32
                    && pk[0] == n as u32
                    && pq[2..6] == pk[2..6]
                    && pk[1] as usize == kw
                    && pk[3] % 4 == 0
                    && pk[3] <= pk[2]
                    && pk[2] % 2 == 0;
                same.then(|| (pq[1], pk[2], pk[3], pk[4], pk[5]))
            }
            _ => None,
        };
        // The RoPEs and the K/V store folded into the decode attention kernel itself, where
        // it runs and no sequence has two tokens in the step (a token would read a cell that
        // another workgroup of the same dispatch stores).
        let fold_rope = match (ropes, tile, shape) {
            (Some((q_width, head_dim, ..)), None, Some((hg, ..))) => {
                let extra = 2 + usize::from(hg == 4);
                self.attn_rope
                    && head_dim as usize == p.head_dim_k
                    && q_width as usize == p.n_head * p.head_dim_k
                    && runs.iter().all(|&(_, len)| len == 1)
                    && 5 + extra <= self.limits.max_storage_buffers_per_shader_stage as usize
            }
            _ => false,
        };
        let rope_words = match ropes {
            Some((_, _, n_rot, table, neox)) if fold_rope => {
                self.drop_tail(2);
                Some(self.push_aux(&[n_rot, table, neox, cells_off]))
            }
            _ => None,
        };
        // Q and K as they are now, unrotated once the attention below has read them.
        let unrotated: Vec<(u64, u64)> = match rope_words {
            Some(_) => [qr.id, kr.id]
                .iter()
                .map(|&id| (id, self.versions.get(&id).copied().unwrap_or(0)))
                .collect(),
            None => Vec::new(),
        };
        // K and V go to the cache here, unless the decode kernel below stores them itself.
        if rope_words.is_none() {
            let kv_store = KvStoreCall {
                ropes: ropes.map(|r| (&qr, &kr, r)),
                n,
                k,
                v,
                kres: &kres,
                vres: &vres,
                widths: (kw, vw),
                cells_off,
                aux: &aux,
            };
            self.store_kv(kv_store);
        }
        self.set_rows(out, n);
        let width = p.n_head * p.head_dim_v;
        let (qr, or) = (self.res(q), self.res(out));
        let mut pp = [0u32; 16];
        pp[..12].copy_from_slice(&[
            p.n_head as u32,
            (p.n_head / p.n_head_kv) as u32,
            p.head_dim_k as u32,
            p.head_dim_v as u32,
            (p.n_head * p.head_dim_k) as u32,
            (kw / 2) as u32,
            (vw / 2) as u32,
            (p.n_head * p.head_dim_v) as u32,
            ranges_off,
            tile.map_or(0, |t| t.2),
            0,
            0,
        ]);
        pp[12] = p.scale.to_bits();
        pp[13] = p.softcap.unwrap_or(0.0).to_bits();
        let (kernel, groups) = match (tile, shape) {
            (Some((kernel, n_blocks, _)), _) => (kernel, [p.n_head as u32, n_blocks, 1]),
            (None, Some((hg, dmax, ck, cv))) => {
                pp[9] = ck;
                pp[10] = cv;
                let gx = (p.n_head as u32) / hg;
                let rope = rope_words.is_some();
                if let Some(o) = rope_words {
                    pp[15] = o;
                }
                let (kraw, vraw) = (self.res(k), self.res(v));
                let kind = |split, q8k| {
                    Kernel::AttnDecode(shaders::AttnDecodeKind {
                        hg,
                        dmax,
                        split,
                        q8k,
                        rope,
                    })
                };
                if let Some((items, lists)) = split {
                    let rows = items.len() / 3 * p.n_head * (p.head_dim_v + 2);
                    if let Some(scratch) = self.attn_scratch_for(rows) {
                        pp[11] = self.push_aux(&items);
                        let lists_off = self.push_aux(&lists);
                        let groups = [gx, (items.len() / 3) as u32, 1];
                        let mut binds = vec![&qr, &kres, &vres, &aux, &scratch];
                        if rope {
                            binds.extend([&kraw, &vraw]);
                        }
                        self.dispatch(kind(true, false), &binds, pp, groups);
                        let mut pc = [0u32; 16];
                        pc[..4].copy_from_slice(&[
                            p.n_head as u32,
                            p.head_dim_v as u32,
                            width as u32,
                            lists_off,
                        ]);
                        let q8k = if self.attn_q8k {
                            self.q8k_fused_target(out, n, width)
                        } else {
                            None
                        };
                        if let Some((q, cap, d_off)) = q8k {
                            pc[4] = d_off;
                            let groups = [(width / 256) as u32, n as u32, 1];
                            self.dispatch(
                                Kernel::AttnCombine(true),
                                &[&aux, &scratch, &or, &q],
                                pc,
                                groups,
                            );
                            self.q8k_written(out, q, cap);
                        } else {
                            self.dispatch(
                                Kernel::AttnCombine(false),
                                &[&aux, &scratch, &or],
                                pc,
                                [p.n_head as u32, n as u32, 1],
                            );
                        }
                        self.attn_split_count += 1;
                        self.unrotated.extend(unrotated);
                        return Ok(());
                    }
                }
                // Four heads of whole Q8_K blocks per 256-thread workgroup: the Q8_K copy of
                // the output written by the same dispatch.
                let q8k = if self.attn_q8k
                    && hg == 4
                    && (4 * p.head_dim_v).is_multiple_of(256)
                    && shaders::attn_decode_shared_bytes(hg, dmax) + shaders::Q8K_BLOCK_SHARED_BYTES
                        <= self.limits.max_compute_workgroup_storage_size
                {
                    self.q8k_fused_target(out, n, width)
                } else {
                    None
                };
                let mut binds = vec![&qr, &kres, &vres, &aux, &or];
                if let Some((q, _, d_off)) = &q8k {
                    pp[14] = *d_off;
                    binds.push(q);
                }
                if rope {
                    binds.extend([&kraw, &vraw]);
                }
                self.dispatch(kind(false, q8k.is_some()), &binds, pp, [gx, n as u32, 1]);
                if let Some((q, cap, _)) = q8k {
                    self.q8k_written(out, q, cap);
                }
                self.unrotated.extend(unrotated);
                return Ok(());
            }
            (None, None) => (Kernel::Attention, [p.n_head as u32, n as u32, 1]),
        };
        if let Kernel::AttnCm2(_) = kernel {
            // The plain f16 copy the o product reads, written by the same dispatch.
            let f16 = self.f16_fused_target(out, n, width, true);
            pp[10] = f16.is_some() as u32;
            let f = f16.as_ref().map_or(&self.dummy, |(f, _)| f).clone();
            self.dispatch(kernel, &[&qr, &kres, &vres, &aux, &or, &f], pp, groups);
            if let Some((f, cap)) = f16 {
                self.f16_written(out, f, cap);
            }
            return Ok(());
        }
        self.dispatch(kernel, &[&qr, &kres, &vres, &aux, &or], pp, groups);
        Ok(())
    }

    fn sync(&mut self) {
        self.flush(None);
        self.wait();
    }
}

#[cfg(feature = "cm2-spv-override")]
impl GpuBackend {
    /// DIAGNOSTIC (bench only): the driver's statistics of a cm2 module built as a pipeline:
    /// `words`, or this build's module of `tile` (honouring `ORCHARD_GPU_CM2_SPV_DIR`); with
    /// `foreign`, llama.cpp's interface (three storage buffers, 68 bytes of push constants),
    /// else ours (a uniform buffer, three storage buffers).
    pub fn cm2_pipeline_statistics(
        &self,
        words: Option<Vec<u32>>,
        tile: &str,
        foreign: bool,
    ) -> Result<Vec<(String, String)>, String> {
        let words = match words {
            Some(w) => w,
            None => cm2::spirv(DType::Q4_K, tile.parse()?),
        };
        let (u, st, push) = if foreign { (0, 3, 68) } else { (1, 3, 0) };
        self.spirv_pipeline_statistics(&words, u, st, push)
    }

    /// DIAGNOSTIC (bench only): the driver's statistics of any compute module `words` (entry
    /// point `main`) with `u` uniform buffers, then `st` storage buffers, and `push` bytes of
    /// push constants: the WGSL kernels as naga writes them (`ORCHARD_SPV_DUMP`) included.
    pub fn spirv_pipeline_statistics(
        &self,
        words: &[u32],
        u: u32,
        st: u32,
        push: u32,
    ) -> Result<Vec<(String, String)>, String> {
        #[cfg(not(target_vendor = "apple"))]
        return cm2::pipeline_statistics(&self.device, words, u, st, push);
        #[cfg(target_vendor = "apple")]
        return Err(format!(
            "no Vulkan here ({} words, {u}/{st}/{push})",
            words.len()
        ));
    }

    /// DIAGNOSTIC (bench only): seconds a dispatch of a foreign cm2 module written to
    /// llama.cpp's matmul interface (storage buffers A, B and D at bindings 0-2 of set 0, `imm`
    /// as push constants), timed as `gpu_bench --kernels` times ours: `reps` dispatches in one
    /// submission after 1.5 s of the same. So that one kernel can be run in both programs'
    /// settings and the difference between them placed in the code or around it.
    #[allow(clippy::too_many_arguments)]
    pub fn time_foreign_cm2(
        &mut self,
        words: Vec<u32>,
        a: &[u8],
        b: &[u8],
        d_bytes: u64,
        imm: &[u32],
        groups: [u32; 3],
        reps: usize,
    ) -> Result<f64, String> {
        use wgpu::util::DeviceExt;
        if !self.cm2_available() {
            return Err("no VK_NV_cooperative_matrix2".into());
        }
        if !self.device.features().contains(wgpu::Features::IMMEDIATES) {
            return Err("no push constants".into());
        }
        self.sync();
        let dev = self.device.clone();
        let init = |data: &[u8]| {
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("foreign cm2 input"),
                contents: data,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let (ba, bb) = (init(a), init(b));
        let bd = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("foreign cm2 output"),
            size: d_bytes,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let bgl = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("foreign cm2"),
            entries: &[entry(0, true), entry(1, true), entry(2, false)],
        });
        let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("foreign cm2"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: (imm.len() * 4) as u32,
        });
        // SAFETY: a diagnostic outside the engine's paths, on a device `cm2::request_device`
        // opened; the module is the caller's, run on buffers sized by the caller for it.
        let module = unsafe { cm2::module(&dev, "foreign cm2", words, cm2::THREADS) };
        let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("foreign cm2"),
            layout: Some(&pl),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("foreign cm2"),
            layout: &bgl,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: ba.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: bb.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: bd.as_entire_binding(),
                },
            ],
        });
        let run = |n: usize| {
            let mut enc = dev.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipe);
                pass.set_bind_group(0, &bg, &[]);
                pass.set_immediates(0, bytemuck::cast_slice(imm));
                for _ in 0..n {
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                }
            }
            self.queue.submit([enc.finish()]);
            dev.poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| e.to_string())
        };
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < 1.5 {
            run(20)?;
        }
        let t = Instant::now();
        run(reps)?;
        let s = t.elapsed().as_secs_f64() / reps as f64;
        let errors = self.take_errors();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(s)
    }
}
