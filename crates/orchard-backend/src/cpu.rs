//! The CPU implementation of `Backend`: weights are borrowed from the mmap, activations are
//! quantized to each weight type's `vec_dot_type` before a matmul (as ggml does, which is what
//! makes our logits agree with llama.cpp's), and the KV cache is f16 (other `-ctk`/`-ctv`
//! types: `attention_quant.rs`).

use crate::ops::{gelu_tanh_f16_rounded, rms_scale, rope_apply, rope_cache};
use crate::*;
use crate::{pool, vec_math};
use half::f16;
use orchard_quant::{traits, TypeTraits, GROUP_ROWS, PANEL_ROWS, PANEL_TOKENS};

struct Buf {
    data: Vec<f32>,
    n_tokens: usize,
    width: usize,
}

struct CpuWeight {
    host: HostWeight,
    traits: &'static TypeTraits,
    /// Dequantized copy of vectors (norm weights, biases, rope factors): small and read often.
    vector: Option<Vec<f32>>,
    /// Q4_K matrices in the repacked order: the rows block-interleaved in groups of four
    /// (`orchard_quant::interleave_rows`), which decode reads as one stream with four rows'
    /// work per activation load, as llama.cpp reads its repacked copy. The file's pages of
    /// such a weight are released once copied; every path reads this copy.
    groups: Option<memmap2::MmapMut>,
}

struct LayerKv {
    k: Vec<f16>,
    v: Vec<f16>,
    k_width: usize,
    v_width: usize,
    n_cells: usize,
    /// The cache when K or V is not f16 (`k` and `v` are then empty).
    quant: Option<crate::attention_quant::QuantKv>,
}

/// The CPU backend. Parallelism comes from the global pool in `pool.rs` (sized by `-t`).
pub struct CpuBackend {
    weights: Vec<CpuWeight>,
    bufs: Vec<Buf>,
    kv: Vec<Option<LayerKv>>,
    /// Activations quantized for the current matmul, reused across calls.
    act_scratch: Vec<u8>,
    /// The current matmul's `DotOrder::Panel` tokens packed for the panel kernel, in groups of
    /// up to `PANEL_TOKENS` (`panel_groups`: first token and count of each), reused.
    panel_acts: Vec<f32>,
    panel_groups: Vec<(usize, usize)>,
    /// Sequence of each activation row (`Backend::set_row_sequences`).
    row_seqs: Vec<u32>,
    /// Per-token dot order of the current matmul, reused across calls.
    orders: Vec<DotOrder>,
    /// The size from which `add_weight` makes the block-interleaved copy of repacked-order
    /// Q4_K matrices (`CpuWeight::groups`), `None` for never; `ORCHARD_NO_REPACK=1` turns it
    /// off, as llama.cpp's `--no-repack`.
    repack: Option<usize>,
}

/// Which of ggml's float orders a (weight row, token) dot product follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DotOrder {
    /// The type's own `vec_dot` (also `vec_dot_4act`, which gives the same bits).
    Plain,
    /// Repacked Q4_K GEMM order: tokens in groups of four.
    Gemm,
    /// Repacked Q4_K GEMV order: single tokens and a group's leftovers.
    Gemv,
    /// Tiled Q6_K order: batches of at least `TILED_MIN_BATCH` tokens.
    Tiled,
    /// The outer-product order of the type's `PanelKernel` (F16 on AVX-512): one FMA chain per
    /// result, for sequences with at least `PANEL_MIN_TOKENS` tokens in the step.
    Panel,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The quantized cache of `layer`, for tests that reach into it.
    #[cfg(test)]
    pub(crate) fn quant_kv_mut(
        &mut self,
        layer: usize,
    ) -> Option<&mut crate::attention_quant::QuantKv> {
        self.kv.get_mut(layer)?.as_mut()?.quant.as_mut()
    }

    pub fn new() -> CpuBackend {
        CpuBackend {
            weights: Vec::new(),
            bufs: Vec::new(),
            kv: Vec::new(),
            act_scratch: Vec::new(),
            panel_acts: Vec::new(),
            panel_groups: Vec::new(),
            row_seqs: Vec::new(),
            orders: Vec::new(),
            repack: std::env::var("ORCHARD_NO_REPACK")
                .map_or(true, |v| v.is_empty() || v == "0")
                .then_some(REPACK_MIN_BYTES),
        }
    }

    /// Whether weights added from now on get the repacked Q4_K copy (see `CpuWeight::groups`).
    pub fn set_repack(&mut self, on: bool) {
        self.repack = on.then_some(REPACK_MIN_BYTES);
    }

    fn vector(&self, w: WeightId) -> &[f32] {
        self.weights[w.0 as usize]
            .vector
            .as_deref()
            .expect("vector weight used as a vector")
    }

    /// Runs `f(x, out)` with `x` borrowed and `out` mutable, both buffers of this backend.
    fn with_pair<R>(
        &mut self,
        x: BufId,
        out: BufId,
        f: impl FnOnce(&Self, &Buf, &mut Buf) -> R,
    ) -> R {
        assert_ne!(x, out, "an op's input and output must be distinct buffers");
        let mut o = std::mem::replace(
            &mut self.bufs[out.0 as usize],
            Buf {
                data: Vec::new(),
                n_tokens: 0,
                width: 0,
            },
        );
        let r = f(self, &self.bufs[x.0 as usize], &mut o);
        self.bufs[out.0 as usize] = o;
        r
    }
}

/// `out[i]` for the rows of `groups` (a repacked weight from one group's start, rows `w_row`
/// bytes each, `out.len()` a multiple of `GROUP_ROWS`), one group's stream at a time.
fn group_dots(
    k: orchard_quant::VecDotGroupFn,
    cols: usize,
    groups: &[u8],
    w_row: usize,
    act: &[u8],
    out: &mut [f32],
) {
    let g_bytes = GROUP_ROWS * w_row;
    for (group, o4) in groups
        .chunks_exact(g_bytes)
        .zip(out.chunks_exact_mut(GROUP_ROWS))
    {
        o4.copy_from_slice(&k(cols, group, act));
    }
}

/// The smallest matrix `add_weight` repacks. Releasing the file's pages only shrinks the
/// resident set where they are not mapped again for a neighbouring tensor: with the file in
/// 2 MiB folios, touching any byte of a folio maps all of it, so a small tensor's copy was
/// pure overhead (Gemma 3 270M: +13 MB peak, above llama.cpp's) while an 8B model's tensors
/// (tens of MB) give back nearly all their pages.
const REPACK_MIN_BYTES: usize = 8 << 20;

thread_local! {
    /// Each pool thread's scratch for weight rows unpacked for a tile kernel (grown once, then
    /// reused by every matmul).
    static UNPACKED_ROWS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// The same for four activation rows in a tile kernel's own layout.
    static UNPACKED_ACTS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// A task's weight rows taken out of a repacked weight's groups, in row order.
    static TASK_ROWS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// The same for a task's weight rows packed as panels (`PanelKernel`).
    static PANEL_ROWS_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Fewest tokens of one sequence in a step for which a type's `PanelKernel` takes its products
/// (its float order then differs from single-token decode): the batch size from which the
/// attention is tiled too (`FA_TILE_Q`), so that a sequence's passes under 64 tokens keep
/// giving the same bits however they are batched.
const PANEL_MIN_TOKENS: usize = FA_TILE_Q;

/// Rotated dimensions whose RoPE angles fit on the stack (heads up to 512).
const ROPE_STACK: usize = 512;

/// Rows per parallel task of the gated activations.
const GLU_ROWS_PER_TASK: usize = 16;

/// Token rows per parallel task of a prompt's light per-row work (activation quantization,
/// RoPE): one row per task spent more on handing out 512 tasks than on the rows.
const SMALL_ROWS_PER_TASK: usize = 8;

/// Rows per parallel task of a prompt's RMS norms.
const NORM_ROWS_PER_TASK: usize = 16;

/// Fewest tokens of one float order in a step for which the 16-row block kernels pack
/// their rows.
const PACK_MIN_TOKENS: usize = 8;

/// Rows per parallel task in a matmul: enough work per task to amortise scheduling.
const MATMUL_ROWS_PER_TASK: usize = 16;

/// Most rows per task for a tile kernel that converts its activation rows itself (once per
/// task and group of four tokens, so more rows per task amortise it: F16 at 16 rows spent 13 %
/// of prompt time converting).
const MATMUL_ROWS_PER_ACT_TASK: usize = 64;

/// Rows per task of a prompt matmul: `MATMUL_ROWS_PER_TASK`, or for tiles that convert their
/// activations up to `MATMUL_ROWS_PER_ACT_TASK` rows, in a task count that is a multiple of
/// the thread count (a multiple of 4 rows, so that tiles stay whole). Where a size from 16 up
/// splits the rows into equal tasks, the largest such: SmolLM2's 576 rows at 2 threads go as
/// 12 x 48 rather than 9 x 60 + 36, after which one thread waited for the other.
fn rows_per_task(rows: usize, tile: Option<orchard_quant::TileKernel>, threads: usize) -> usize {
    if tile.is_none_or(|t| t.unpack_act.is_none()) {
        return MATMUL_ROWS_PER_TASK;
    }
    let threads = threads.max(1);
    let even = (4..=MATMUL_ROWS_PER_ACT_TASK / 4)
        .rev()
        .map(|q| 4 * q)
        .find(|&p| rows.is_multiple_of(p) && (rows / p).is_multiple_of(threads));
    if let Some(p) = even {
        return p;
    }
    let rounds = rows.div_ceil(MATMUL_ROWS_PER_ACT_TASK * threads).max(1);
    rows.div_ceil(rounds * threads)
        .next_multiple_of(4)
        .clamp(4, MATMUL_ROWS_PER_ACT_TASK)
}

/// The float order of each token's dot products in a matmul of `n_tokens` rows against a
/// weight of this type and row count, decided per sequence (runs of equal `seqs` entries) from
/// that sequence's own row count, as llama.cpp decides it for a batch holding that sequence
/// alone. `seqs` that do not describe these rows count as one sequence.
fn dot_orders(
    dtype: DType,
    rows: usize,
    panel: bool,
    seqs: &[u32],
    n_tokens: usize,
    out: &mut Vec<DotOrder>,
) {
    use crate::ggml_order::{uses_repack_order, uses_tiled_order};
    out.clear();
    let runs: Box<dyn Iterator<Item = std::ops::Range<usize>>> = if seqs.len() == n_tokens {
        Box::new(crate::runs_by(seqs, |&s| s))
    } else {
        Box::new(std::iter::once(0..n_tokens))
    };
    for run in runs {
        let len = run.len();
        let grouped = len - len % 4;
        out.extend((0..len).map(|i| {
            if uses_repack_order(dtype, rows) {
                if i < grouped {
                    DotOrder::Gemm
                } else {
                    DotOrder::Gemv
                }
            } else if uses_tiled_order(dtype, rows, len) {
                DotOrder::Tiled
            } else if panel && len >= PANEL_MIN_TOKENS {
                DotOrder::Panel
            } else {
                DotOrder::Plain
            }
        }));
    }
}

/// `silu(gate) * up` per row as ggml's `ggml_vec_swiglu_f32` computes it (rows are
/// independent; its vector/tail split restarts at each row).
fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
    vec_math::swiglu_f32(out, gate, up)
}

/// ggml's `GGML_FA_TILE_Q`: the batch size from which its CPU flash attention is tiled.
const FA_TILE_Q: usize = 64;

/// Head sizes whose per-query attention state fits on the stack.
const MAX_HEAD_DIM: usize = 256;

/// One KV head's view of a layer's cache.
struct HeadKv<'a> {
    kv: &'a LayerKv,
    kvh: usize,
    dk: usize,
    dv: usize,
}

impl HeadKv<'_> {
    fn k(&self, cell: u32) -> &[f16] {
        &self.kv.k[cell as usize * self.kv.k_width + self.kvh * self.dk..][..self.dk]
    }
    fn v(&self, cell: u32) -> &[f16] {
        &self.kv.v[cell as usize * self.kv.v_width + self.kvh * self.dv..][..self.dv]
    }
}

/// `AttnParams::scale` and soft-capping applied to a raw Q·K as ggml applies them (shared by
/// the f16 and the quantized-cache attention).
#[inline]
pub(crate) fn score(s: f32, p: &AttnParams) -> f32 {
    match p.softcap {
        Some(cap) => cap * (s * (p.scale / cap)).tanh(),
        None => s * p.scale,
    }
}

/// Attention of a block of queries of one head as ggml's tiled CPU flash attention computes it
/// (batches of at least `FA_TILE_Q` queries): f32 Q, KV in tiles of `FA_TILE_KV` cells with a
/// running max per tile, scores and V sums as sequential FMA chains, the tile's exp sum folded
/// in f64. The loops run across tile columns so that they vectorize without changing any
/// element's order of operations.
fn attend_block_f32(
    queries: &[(&[f32], TokenSlot)],
    cells: &[&[u32]],
    h: &HeadKv<'_>,
    p: &AttnParams,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA (checked just above), the only feature the function enables.
        unsafe { attend_block_f32_fma(queries, cells, h, p, out) };
        return;
    }
    attend_block_f32_body(queries, cells, h, p, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn attend_block_f32_fma(
    queries: &[(&[f32], TokenSlot)],
    cells: &[&[u32]],
    h: &HeadKv<'_>,
    p: &AttnParams,
    out: &mut [f32],
) {
    attend_block_f32_body(queries, cells, h, p, out)
}

/// ggml's `GGML_FA_TILE_KV`.
const FA_TILE_KV: usize = 64;

#[inline(always)]
fn attend_block_f32_body(
    queries: &[(&[f32], TokenSlot)],
    cells: &[&[u32]],
    h: &HeadKv<'_>,
    p: &AttnParams,
    out: &mut [f32],
) {
    const T: usize = FA_TILE_KV;
    let (dk, dv) = (h.dk, h.dv);
    let (scale, softcap) = match p.softcap {
        Some(cap) => (p.scale / cap, Some(cap)),
        None => (p.scale, None),
    };
    let span = |tok: &TokenSlot| {
        let hi = tok.pos as usize;
        (p.window.map_or(0, |w| (hi + 1).saturating_sub(w)), hi)
    };
    let n_tiles = queries
        .iter()
        .map(|(_, t)| t.pos as usize / T + 1)
        .max()
        .unwrap_or(0);
    let nq = queries.len();
    let mut m = vec![f32::NEG_INFINITY; nq];
    let mut s = vec![0.0f32; nq];
    out.iter_mut().for_each(|v| *v = 0.0);
    let mut k_t = vec![0.0f32; dk * T]; // [dk][T]: transposed so the score loop runs across cells
    let mut v_t = vec![0.0f32; T * dv]; // [T][dv]
                                        // Scores and weights of up to four queries handled together ([query][T]).
    let mut kq = [0.0f32; 4 * T];
    let mut w = [0.0f32; 4 * T];
    let mut k_row = vec![0.0f32; dk];
    let sees = |tok: &TokenSlot, t0: usize| {
        let (lo, hi) = span(tok);
        t0 <= hi && t0 + T > lo
    };
    for tile in 0..n_tiles {
        let t0 = tile * T;
        let mut loaded: Option<u32> = None;
        let mut qi = 0;
        while qi < nq {
            let (_, tok) = &queries[qi];
            if !sees(tok, t0) {
                qi += 1;
                continue;
            }
            // Four queries of one sequence that all see this tile share every load of K and
            // V; each element's chain of operations is the one it gets alone.
            let g = if qi + 4 <= nq
                && queries[qi + 1..qi + 4]
                    .iter()
                    .all(|(_, t)| t.seq == tok.seq && sees(t, t0))
            {
                4
            } else {
                1
            };
            let seq_cells = cells[tok.seq as usize];
            if loaded != Some(tok.seq) {
                let hi = span(tok).1;
                // Cells past what this sequence holds are masked for every query of it.
                for tk in 0..T {
                    match seq_cells.get(t0 + tk) {
                        Some(&c) if t0 + tk <= hi.max(t0) + T => {
                            vec_math::f16_to_f32(&mut k_row[..dk], h.k(c));
                            for (d, &kv) in k_row[..dk].iter().enumerate() {
                                k_t[d * T + tk] = kv;
                            }
                            vec_math::f16_to_f32(&mut v_t[tk * dv..(tk + 1) * dv], h.v(c));
                        }
                        _ => {}
                    }
                }
                loaded = Some(tok.seq);
            }
            kq[..g * T].iter_mut().for_each(|v| *v = 0.0);
            if g == 4 {
                let q4 = std::array::from_fn(|i| &queries[qi + i].0[..dk]);
                vec_math::gemv_acc4(&mut kq, T, q4, &k_t, dk, T);
            } else {
                vec_math::gemv_acc(&mut kq[..T], &queries[qi].0[..dk], &k_t, dk, T);
            }
            // Per query: mask, scale, running max and exp sum; `ranges[i]` is the span of
            // cells whose V it adds (None: the whole tile is masked for it).
            let mut ranges = [None; 4];
            for (i, range) in ranges[..g].iter_mut().enumerate() {
                let q = qi + i;
                let (lo, hi) = span(&queries[q].1);
                let kq = &mut kq[i * T..(i + 1) * T];
                // Cells [a, b) of the tile are in this query's span (`sees` made it non-empty).
                let a = lo.max(t0) - t0;
                let b = (hi + 1).min(t0 + T) - t0;
                kq[..a].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
                kq[b..].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
                match softcap {
                    Some(cap) => kq[a..b]
                        .iter_mut()
                        .for_each(|v| *v = (*v * scale).tanh() * cap),
                    None => kq[a..b].iter_mut().for_each(|v| *v *= scale),
                }
                // The maximum is the same in any order; 16 lanes let it vectorize.
                let mut lanes = [f32::NEG_INFINITY; 16];
                let chunks = kq[a..b].chunks_exact(16);
                let rest = chunks.remainder();
                for c in chunks {
                    for (l, &x) in lanes.iter_mut().zip(c) {
                        *l = l.max(x);
                    }
                }
                let tile_max = lanes
                    .iter()
                    .chain(rest)
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                if tile_max == f32::NEG_INFINITY {
                    continue;
                }
                let o = &mut out[q * dv..(q + 1) * dv];
                let m_new = m[q].max(tile_max);
                if m_new > m[q] {
                    let ms = (m[q] - m_new).exp();
                    o.iter_mut().for_each(|v| *v *= ms);
                    s[q] *= ms;
                }
                m[q] = m_new;
                // ggml_vec_soft_max_f32: exp per lane, one f32 partial sum per vector, in f64.
                let sum = vec_math::soft_max_f32(&mut w[i * T..(i + 1) * T], kq, m_new);
                s[q] = (s[q] as f64 + sum) as f32;
                // Cells outside [lo, hi] (w == 0) are skipped: ggml's fma(0, v, acc) leaves
                // acc unchanged (up to the sign of a zero, which skipping keeps).
                *range = Some((a, b));
            }
            if g == 4 && ranges.iter().all(|r| r.is_some() && *r == ranges[0]) {
                let (a, b) = ranges[0].expect("checked just above");
                let w4 = std::array::from_fn(|i| &w[i * T + a..i * T + b]);
                let o = &mut out[qi * dv..(qi + 4) * dv];
                vec_math::gemv_acc4(o, dv, w4, &v_t[a * dv..b * dv], b - a, dv);
            } else {
                for (i, range) in ranges[..g].iter().enumerate() {
                    if let Some((a, b)) = *range {
                        let q = qi + i;
                        vec_math::gemv_acc(
                            &mut out[q * dv..(q + 1) * dv],
                            &w[i * T + a..i * T + b],
                            &v_t[a * dv..b * dv],
                            b - a,
                            dv,
                        );
                    }
                }
            }
            qi += g;
        }
    }
    for (qi, o) in out.chunks_exact_mut(dv).enumerate() {
        let inv = if s[qi] == 0.0 { 0.0 } else { 1.0 / s[qi] };
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Attention of one query head as ggml's per-query flash attention computes it: Q rounded to
/// f16, an online softmax, V accumulated in f16, multiply-adds fused where ggml's build fuses them.
fn attend_f16_acc(q: &[f32], cells: &[u32], h: &HeadKv<'_>, p: &AttnParams, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA (checked just above), the only feature the function enables.
        unsafe { attend_f16_acc_fma(q, cells, h, p, out) };
        return;
    }
    attend_f16_acc_body(q, cells, h, p, out)
}

/// `attend_f16_acc_body` compiled with FMA so that `mul_add` is one instruction, not a libm call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn attend_f16_acc_fma(
    q: &[f32],
    cells: &[u32],
    h: &HeadKv<'_>,
    p: &AttnParams,
    out: &mut [f32],
) {
    attend_f16_acc_body(q, cells, h, p, out)
}

#[inline(always)]
fn attend_f16_acc_body(q: &[f32], cells: &[u32], h: &HeadKv<'_>, p: &AttnParams, out: &mut [f32]) {
    // Head sizes up to MAX_HEAD_DIM live on the stack: no allocation per (token, head).
    let mut q_buf = [0.0f32; MAX_HEAD_DIM];
    let mut acc_buf = [f16::ZERO; MAX_HEAD_DIM];
    let (mut q_heap, mut acc_heap);
    let (q16, acc): (&mut [f32], &mut [f16]) = if q.len() <= MAX_HEAD_DIM && h.dv <= MAX_HEAD_DIM {
        (&mut q_buf[..q.len()], &mut acc_buf[..h.dv])
    } else {
        q_heap = vec![0.0f32; q.len()];
        acc_heap = vec![f16::ZERO; h.dv];
        (&mut q_heap[..], &mut acc_heap[..])
    };
    vec_math::round_through_f16(q16, q);
    let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
    for &c in cells {
        let s = score(vec_math::dot_f16(h.k(c), q16), p);
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > max {
            ms = (max - s).exp();
            max = s;
            vec_math::scale_f16(acc, ms);
        } else {
            vs = (s - max).exp();
        }
        vec_math::mad_f16(acc, h.v(c), vs);
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    out.iter_mut()
        .zip(acc.iter())
        .for_each(|(o, a)| *o = a.to_f32() * inv);
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn supports_matmul(&self, dtype: DType) -> bool {
        traits(dtype).is_some_and(|t| t.vec_dot.is_some())
    }

    fn add_weight(&mut self, w: &HostWeight) -> Result<WeightId, BackendError> {
        let t = traits(w.dtype)
            .filter(|t| t.to_float.is_some())
            .ok_or_else(|| BackendError::UnsupportedType {
                name: w.name.clone(),
                dtype: w.dtype,
                backend: self.name(),
            })?;
        let n: u64 = w.dims.iter().product();
        let want = w.dtype.row_bytes(w.dims.first().copied().unwrap_or(0));
        let bad = || BackendError::BadWeight {
            name: w.name.clone(),
            dtype: w.dtype,
            dims: w.dims.clone(),
            len: w.range.len(),
        };
        let row = want.ok_or_else(bad)?;
        if row.checked_mul(n / w.dims[0].max(1)) != Some(w.range.len() as u64)
            || w.range.end > w.source.bytes().len()
        {
            return Err(bad());
        }
        let vector = if w.n_rows() == 1 {
            let mut v = vec![0.0; n as usize];
            (t.to_float.expect("checked above"))(w.bytes(), &mut v);
            Some(v)
        } else {
            None
        };
        let repack = t.vec_dot_interleaved_group.is_some()
            && self.repack.is_some_and(|min| w.range.len() >= min)
            && vector.is_none()
            && crate::ggml_order::uses_repack_order(w.dtype, w.n_rows());
        let groups = repack.then(|| {
            let bytes = w.bytes();
            let group = GROUP_ROWS * row as usize;
            // Anonymous memory advised into 2 MiB pages: an 8B model's copy is 3.4 GB, which
            // in 4 KiB pages is ~850k first-touch faults at load and as many TLB entries for
            // decode to walk.
            let mut copy = memmap2::MmapMut::map_anon(bytes.len()).ok()?;
            #[cfg(target_os = "linux")]
            let _ = copy.advise(memmap2::Advice::HugePage);
            // Whole groups per task; the copy is written by the pool threads in parallel.
            pool::par_chunks_mut(&mut copy, 64 * group, |ci, dst| {
                let src = &bytes[ci * 64 * group..ci * 64 * group + dst.len()];
                for (s, d) in src.chunks_exact(group).zip(dst.chunks_exact_mut(group)) {
                    orchard_quant::interleave_rows(s, w.dtype.block_bytes(), d);
                }
            });
            w.source.release(w.range.clone());
            Some(copy)
        });
        let groups = groups.flatten();
        self.weights.push(CpuWeight {
            host: w.clone(),
            traits: t,
            vector,
            groups,
        });
        Ok(WeightId(self.weights.len() as u32 - 1))
    }

    fn alloc_kv(
        &mut self,
        layer: usize,
        n_cells: usize,
        k_width: usize,
        v_width: usize,
    ) -> Result<(), BackendError> {
        if self.kv.len() <= layer {
            self.kv.resize_with(layer + 1, || None);
        }
        self.kv[layer] = Some(LayerKv {
            k: vec![f16::ZERO; n_cells * k_width],
            v: vec![f16::ZERO; n_cells * v_width],
            k_width,
            v_width,
            n_cells,
            quant: None,
        });
        Ok(())
    }

    fn alloc_kv_typed(&mut self, layer: usize, l: &KvLayout) -> Result<(), BackendError> {
        if l.type_k == DType::F16 && l.type_v == DType::F16 {
            return self.alloc_kv(layer, l.n_cells, l.k_width, l.v_width);
        }
        use crate::attention_quant::{KvRows, QuantKv};
        let name = self.name();
        let quant = QuantKv::new(
            KvRows::new(l.type_k, l.n_cells, l.k_width, l.head_dim_k, &name)?,
            KvRows::new(l.type_v, l.n_cells, l.v_width, l.head_dim_v, &name)?,
            l.n_cells,
            l.head_dim_k,
            l.head_dim_v,
            l.k_rope_pairs,
        );
        if self.kv.len() <= layer {
            self.kv.resize_with(layer + 1, || None);
        }
        self.kv[layer] = Some(LayerKv {
            k: Vec::new(),
            v: Vec::new(),
            k_width: l.k_width,
            v_width: l.v_width,
            n_cells: l.n_cells,
            quant: Some(quant),
        });
        Ok(())
    }

    fn kv_bytes(&self) -> usize {
        self.kv
            .iter()
            .flatten()
            .map(|l| (l.k.len() + l.v.len()) * 2 + l.quant.as_ref().map_or(0, |q| q.bytes()))
            .sum()
    }

    fn alloc(&mut self, n_tokens: usize, width: usize) -> BufId {
        self.bufs.push(Buf {
            data: vec![0.0; n_tokens * width],
            n_tokens,
            width,
        });
        BufId(self.bufs.len() as u32 - 1)
    }

    fn set_rows(&mut self, buf: BufId, n_tokens: usize) {
        let b = &mut self.bufs[buf.0 as usize];
        b.n_tokens = n_tokens;
        b.data.resize(n_tokens * b.width, 0.0);
    }

    fn upload(&mut self, buf: BufId, data: &[f32]) {
        let b = &mut self.bufs[buf.0 as usize];
        assert_eq!(data.len(), b.data.len(), "upload size mismatch");
        b.data.copy_from_slice(data);
    }

    fn download(&mut self, buf: BufId, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(&self.bufs[buf.0 as usize].data);
    }

    fn copy_rows(&mut self, src: BufId, rows: &[u32], dst: BufId) {
        self.set_rows(dst, rows.len());
        self.with_pair(src, dst, |_, s, d| {
            assert_eq!(s.width, d.width);
            for (i, &r) in rows.iter().enumerate() {
                let r = r as usize;
                d.data[i * d.width..(i + 1) * d.width]
                    .copy_from_slice(&s.data[r * s.width..(r + 1) * s.width]);
            }
        });
    }

    fn rms_norm(&mut self, x: BufId, w: Option<WeightId>, eps: f32, out: BufId) {
        let n = self.bufs[x.0 as usize].n_tokens;
        self.set_rows(out, n);
        self.with_pair(x, out, |me, x, o| {
            let wv = w.map(|w| me.vector(w));
            let (xw, ow) = (x.width, o.width);
            let norm_rows = |r0: usize, oc: &mut [f32]| {
                for (i, or) in oc.chunks_exact_mut(ow).enumerate() {
                    let xr = &x.data[(r0 + i) * xw..(r0 + i + 1) * xw];
                    let s = rms_scale(xr, eps);
                    match wv {
                        Some(wv) => or
                            .iter_mut()
                            .zip(xr)
                            .zip(wv)
                            .for_each(|((o, &x), &w)| *o = (x * s) * w),
                        None => or.iter_mut().zip(xr).for_each(|(o, &x)| *o = x * s),
                    }
                }
            };
            // Rows are independent: a prompt's rows in parallel (serial, this was ~1 % of
            // prompt time with the other thread waiting).
            let rows = &mut o.data[..n * ow];
            if n > NORM_ROWS_PER_TASK {
                pool::par_chunks_mut(rows, ow * NORM_ROWS_PER_TASK, |ci, oc| {
                    norm_rows(ci * NORM_ROWS_PER_TASK, oc)
                });
            } else {
                norm_rows(0, rows);
            }
        });
    }

    fn head_rms_norm(&mut self, x: BufId, w: WeightId, head_dim: usize, eps: f32) {
        let wv = self.weights[w.0 as usize]
            .vector
            .clone()
            .expect("head norm weight is a vector");
        let b = &mut self.bufs[x.0 as usize];
        let norm_heads = |_: usize, rows: &mut [f32]| {
            for head in rows.chunks_exact_mut(head_dim) {
                let s = rms_scale(head, eps);
                head.iter_mut()
                    .zip(&wv)
                    .for_each(|(v, &w)| *v = (*v * s) * w);
            }
        };
        let row_w = b.width.max(1);
        if b.n_tokens > NORM_ROWS_PER_TASK
            && row_w.is_multiple_of(head_dim)
            && b.data.len() == b.n_tokens * row_w
        {
            pool::par_chunks_mut(&mut b.data, row_w * NORM_ROWS_PER_TASK, norm_heads);
        } else {
            norm_heads(0, &mut b.data);
        }
    }

    fn matmul(&mut self, w: WeightId, x: BufId, out: BufId) {
        let cw = &self.weights[w.0 as usize];
        let (cols, rows) = (cw.host.row_len(), cw.host.n_rows());
        let t = cw.traits;
        let n_tokens = self.bufs[x.0 as usize].n_tokens;
        assert_eq!(
            self.bufs[x.0 as usize].width, cols,
            "matmul {}: input width",
            cw.host.name
        );
        let vdt = t.vec_dot_type;
        let act_row = vdt.row_bytes(cols as u64).expect("validated weight shape") as usize;
        let vdt_from = traits(vdt)
            .and_then(|v| v.from_float)
            .expect("activation type quantizes");
        let plain = t.vec_dot.expect("matmul on a type without a dot kernel");
        // orchard-quant's SIMD kernels for ggml's repacked/tiled orders when it has them
        // (bit-identical to the scalar ones in ggml_order.rs, which remain the fallback).
        let gemm = t
            .vec_dot_interleaved_gemm
            .unwrap_or(crate::ggml_order::vec_dot_q4_k_q8_k_gemm_order);
        let gemv = t
            .vec_dot_interleaved
            .unwrap_or(crate::ggml_order::vec_dot_q4_k_q8_k_gemv_order);
        let tiled = t
            .vec_dot_tiled
            .unwrap_or(crate::ggml_order::vec_dot_q6_k_q8_k_tiled_order);
        let panel = t.vec_dot_panel;
        let dot_of = |o: DotOrder| match o {
            DotOrder::Plain => plain,
            DotOrder::Gemm => gemm,
            DotOrder::Gemv => gemv,
            DotOrder::Tiled => tiled,
            DotOrder::Panel => panel.map_or(plain, |k| k.dot_one),
        };
        let mut orders = std::mem::take(&mut self.orders);
        dot_orders(
            t.dtype,
            rows,
            panel.is_some(),
            &self.row_seqs,
            n_tokens,
            &mut orders,
        );
        // Four-activation kernels per order (the repacked GEMV order only ever runs on a
        // sequence's last `len % 4` rows, so it needs none); the 4 x 4 tile for the plain order.
        let dot4_of = |o: DotOrder| match o {
            DotOrder::Plain => t.vec_dot_4act,
            DotOrder::Gemm => t.vec_dot_interleaved_gemm_4act,
            DotOrder::Tiled => t.vec_dot_tiled_4act,
            DotOrder::Gemv | DotOrder::Panel => None,
        };
        let tile4 = t.vec_dot_tile;
        let rows_gemm = t.vec_dot_interleaved_gemm_rows;
        let rows_tiled = t.vec_dot_tiled_rows;

        let mut act = std::mem::take(&mut self.act_scratch);
        act.resize(act_row * n_tokens, 0);
        let xb = &self.bufs[x.0 as usize].data;
        pool::par_chunks_mut(&mut act, act_row * SMALL_ROWS_PER_TASK, |ci, rows| {
            for (i, a) in rows.chunks_exact_mut(act_row).enumerate() {
                let tk = ci * SMALL_ROWS_PER_TASK + i;
                vdt_from(&xb[tk * cols..(tk + 1) * cols], a);
            }
        });

        // The panel order's tokens, packed once for every task: consecutive runs of them in
        // groups of up to PANEL_TOKENS.
        let mut groups = std::mem::take(&mut self.panel_groups);
        let mut panel_acts = std::mem::take(&mut self.panel_acts);
        groups.clear();
        if let Some(k) = panel.filter(|_| orders.contains(&DotOrder::Panel)) {
            let mut tk = 0;
            while tk < n_tokens {
                let run = orders[tk..]
                    .iter()
                    .take_while(|&&o| o == DotOrder::Panel)
                    .count();
                for g in (0..run).step_by(PANEL_TOKENS) {
                    groups.push((tk + g, PANEL_TOKENS.min(run - g)));
                }
                tk += run.max(1);
            }
            let g_len = PANEL_TOKENS * cols;
            panel_acts.resize(groups.len() * g_len, 0.0);
            pool::par_chunks_mut(&mut panel_acts, g_len, |g, dst| {
                let (t0, nt) = groups[g];
                (k.pack_acts)(cols, &act[t0 * act_row..], act_row, nt, dst);
            });
        }
        let plain_tokens = orders.iter().filter(|&&o| o == DotOrder::Plain).count();

        self.set_rows(out, n_tokens);
        let mut o = std::mem::take(&mut self.bufs[out.0 as usize].data);
        let wbytes = self.weights[w.0 as usize].host.bytes();
        let repacked = self.weights[w.0 as usize].groups.as_deref();
        let group_kernel = t.vec_dot_interleaved_group;
        let w_row = t.dtype.row_bytes(cols as u64).expect("validated") as usize;
        if n_tokens == 1 {
            let dot = dot_of(orders[0]);
            // One contiguous run of rows per thread (as ggml splits a matrix-vector product
            // when it has few chunks): each thread streams its part of the weight sequentially,
            // which the hardware prefetchers follow. 16-row tasks handed out dynamically made
            // two threads slower than one on this bandwidth-bound step (SmolLM2 tg128 at 2
            // threads: 99 t/s with 16-row tasks, 198 with one run per thread).
            let per_task = rows.div_ceil(pool::global().threads());
            // A type's run kernel, where it has one, takes the thread's whole run at once.
            let rows_kernel = t.vec_dot_rows.filter(|_| orders[0] == DotOrder::Plain);
            // A repacked weight: each thread takes whole groups and reads them as one stream.
            if let (Some(g), Some(k), DotOrder::Gemv) = (repacked, group_kernel, orders[0]) {
                let per_task = per_task.next_multiple_of(GROUP_ROWS);
                pool::par_chunks_mut(&mut o, per_task, |ci, chunk| {
                    group_dots(k, cols, &g[ci * per_task * w_row..], w_row, &act, chunk);
                });
            } else {
                pool::par_chunks_mut(&mut o, per_task, |ci, chunk| {
                    let r0 = ci * per_task;
                    if let Some(k) = rows_kernel {
                        k(
                            cols,
                            &wbytes[r0 * w_row..(r0 + chunk.len()) * w_row],
                            w_row,
                            &act,
                            chunk,
                        );
                        return;
                    }
                    for (i, v) in chunk.iter_mut().enumerate() {
                        let r = r0 + i;
                        *v = dot(cols, &wbytes[r * w_row..(r + 1) * w_row], &act);
                    }
                });
            }
        } else {
            // Each task owns a block of weight rows (output columns) and dots it with every
            // token, so a weight row is read from memory once per step; four tokens share each
            // unpacked weight block where the order allows. Results go straight to their
            // token-major places (a separate transpose pass was ~6 % of prompt time).
            let act_of = |tk: usize| &act[tk * act_row..(tk + 1) * act_row];
            let per_task = rows_per_task(rows, tile4, pool::global().threads());
            pool::par_column_blocks(&mut o, rows, per_task, |ci, mut out_cols| {
                let r0 = ci * per_task;
                let n_rows = per_task.min(rows - r0);
                // A repacked weight's task rows are taken out of its groups once per task.
                let mut from_groups = TASK_ROWS.take();
                // (Not needed when every token takes the groups directly.)
                let whole_groups =
                    r0.is_multiple_of(GROUP_ROWS) && n_rows.is_multiple_of(GROUP_ROWS);
                let group_kernel = group_kernel.filter(|_| whole_groups);
                let rows_needed =
                    group_kernel.is_none() || orders.iter().any(|&o| o != DotOrder::Gemv);
                let task_bytes: &[u8] = match repacked {
                    Some(_) if !rows_needed => &[],
                    Some(g) => {
                        let need = n_rows * w_row;
                        if from_groups.len() < need {
                            from_groups.resize(need, 0);
                        }
                        let g_bytes = GROUP_ROWS * w_row;
                        for (i, dst) in from_groups[..need].chunks_exact_mut(w_row).enumerate() {
                            let r = r0 + i;
                            let at = r / GROUP_ROWS * g_bytes;
                            orchard_quant::deinterleave_row(
                                &g[at..at + g_bytes],
                                t.dtype.block_bytes(),
                                r % GROUP_ROWS,
                                dst,
                            );
                        }
                        &from_groups[..need]
                    }
                    None => &wbytes[r0 * w_row..(r0 + n_rows) * w_row],
                };
                let w_of = |i: usize| &task_bytes[i * w_row..(i + 1) * w_row];
                // The task's weight rows in the tile kernel's layout, unpacked once for all
                // tokens into this thread's reusable scratch (grown only: shrinking and
                // regrowing between matrices of different widths zero-filled tens of KiB).
                let tile = tile4.filter(|_| n_rows >= 4 && plain_tokens >= 4);
                let mut unpacked = UNPACKED_ROWS.take();
                let mut act_rows = UNPACKED_ACTS.take();
                let u_row = tile.map_or(0, |t| (t.unpacked_row_bytes)(cols));
                let u_end = u_row * if tile.is_some() { n_rows } else { 0 };
                if let Some(t) = tile {
                    if unpacked.len() < u_end {
                        unpacked.resize(u_end, 0);
                    }
                    for (i, u) in unpacked[..u_end].chunks_exact_mut(u_row).enumerate() {
                        (t.unpack)(cols, w_of(i), u);
                    }
                }
                // Q4_K's rows for the repacked GEMM order, Q6_K's for the tiled one, packed
                // together after the tile rows (a type has at most one such kernel). Packing
                // is scalar, so only for steps with enough tokens in that order to repay it
                // (a few sequences decoding together keep the per-token kernels).
                let (block, block_order) = match (rows_gemm, rows_tiled) {
                    (Some(k), _) => (Some(k), DotOrder::Gemm),
                    (None, Some(k)) => (Some(k), DotOrder::Tiled),
                    _ => (None, DotOrder::Plain),
                };
                let block = block.filter(|k| {
                    n_rows <= k.rows.min(MATMUL_ROWS_PER_TASK)
                        && orders.iter().filter(|&&o| o == block_order).count() >= PACK_MIN_TOKENS
                });
                if let Some(k) = block {
                    let need = u_end + (k.packed_bytes)(cols);
                    if unpacked.len() < need {
                        unpacked.resize(need, 0);
                    }
                    let mut refs: [&[u8]; MATMUL_ROWS_PER_TASK] = [&[]; MATMUL_ROWS_PER_TASK];
                    for (i, r) in refs.iter_mut().enumerate().take(n_rows) {
                        *r = w_of(i);
                    }
                    (k.pack)(cols, &refs[..n_rows], &mut unpacked[u_end..need]);
                }
                // The panel order's tokens: the task's rows packed as panels of PANEL_ROWS, then
                // every group against every panel (the group, 8 rows of k, stays in L1).
                if let Some(k) = panel.filter(|_| !groups.is_empty()) {
                    let p_len = PANEL_ROWS * cols;
                    let n_panels = n_rows.div_ceil(PANEL_ROWS);
                    let mut panels = PANEL_ROWS_SCRATCH.take();
                    if panels.len() < n_panels * p_len {
                        panels.resize(n_panels * p_len, 0.0);
                    }
                    let task_rows = task_bytes;
                    for (p, dst) in panels.chunks_exact_mut(p_len).take(n_panels).enumerate() {
                        let rp = PANEL_ROWS.min(n_rows - p * PANEL_ROWS);
                        (k.pack_rows)(cols, &task_rows[p * PANEL_ROWS * w_row..], w_row, rp, dst);
                    }
                    let g_len = PANEL_TOKENS * cols;
                    let mut res = [[0f32; PANEL_ROWS]; PANEL_TOKENS];
                    for (g, &(t0, nt)) in groups.iter().enumerate() {
                        let acts = &panel_acts[g * g_len..(g + 1) * g_len];
                        for (p, pnl) in panels.chunks_exact(p_len).take(n_panels).enumerate() {
                            (k.dot)(cols, pnl, acts, &mut res[..nt]);
                            let (i0, rp) =
                                (p * PANEL_ROWS, PANEL_ROWS.min(n_rows - p * PANEL_ROWS));
                            for (t, r) in res[..nt].iter().enumerate() {
                                let dst = &mut out_cols.row_mut(t0 + t)[i0..i0 + rp];
                                // A whole panel's 16 as a fixed-size copy (two register moves;
                                // with the length unknown it went through `memmove`, 2.5 %).
                                match <&mut [f32; PANEL_ROWS]>::try_from(&mut *dst) {
                                    Ok(d) => *d = *r,
                                    Err(_) => dst.copy_from_slice(&r[..rp]),
                                }
                            }
                        }
                    }
                    PANEL_ROWS_SCRATCH.set(panels);
                }
                // Tokens outermost: a group of four activation rows stays in L1 while every
                // weight row of the task (also L1-resident) passes over it. With rows outermost
                // each weight row swept all activations from L2 and the kernel waited on those
                // loads.
                let u_of = |i: usize| &unpacked[i * u_row..(i + 1) * u_row];
                let mut tk = 0;
                while tk < n_tokens {
                    let order = orders[tk];
                    if order == DotOrder::Panel {
                        tk += 1;
                        continue;
                    }
                    // GEMV-order tokens of a repacked weight read its groups directly (tasks
                    // hold whole groups: 16 rows of a row count that is a multiple of 8).
                    if let (Some(g), Some(k), DotOrder::Gemv) = (repacked, group_kernel, order) {
                        let dst = out_cols.row_mut(tk);
                        group_dots(k, cols, &g[r0 * w_row..], w_row, act_of(tk), dst);
                        tk += 1;
                        continue;
                    }
                    if let Some(k) = block.filter(|_| order == block_order) {
                        let four =
                            tk + 4 <= n_tokens && orders[tk..tk + 4].iter().all(|&o| o == order);
                        if let Some(dot4) = k.dot4.filter(|_| four) {
                            let acts = [act_of(tk), act_of(tk + 1), act_of(tk + 2), act_of(tk + 3)];
                            let v = dot4(cols, &unpacked[u_end..], acts);
                            for (c, vt) in v.iter().enumerate() {
                                out_cols.row_mut(tk + c).copy_from_slice(&vt[..n_rows]);
                            }
                            tk += 4;
                        } else {
                            (k.dot)(cols, &unpacked[u_end..], act_of(tk), out_cols.row_mut(tk));
                            tk += 1;
                        }
                        continue;
                    }
                    let four = tk + 4 <= n_tokens && orders[tk..tk + 4].iter().all(|&o| o == order);
                    if let Some(d4) = dot4_of(order).filter(|_| four) {
                        let acts = [act_of(tk), act_of(tk + 1), act_of(tk + 2), act_of(tk + 3)];
                        let mut i = 0;
                        if let Some(tile) = tile.filter(|_| order == DotOrder::Plain) {
                            // The four activation rows in the tile's layout where it has one,
                            // converted once here for all the task's rows.
                            let acts = match tile.unpack_act {
                                Some(ua) => {
                                    let a_row = (ua.row_bytes)(cols);
                                    if act_rows.len() < 4 * a_row {
                                        act_rows.resize(4 * a_row, 0);
                                    }
                                    for (c, dst) in
                                        act_rows.chunks_exact_mut(a_row).take(4).enumerate()
                                    {
                                        (ua.unpack)(cols, acts[c], dst);
                                    }
                                    std::array::from_fn(|c| &act_rows[c * a_row..(c + 1) * a_row])
                                }
                                None => acts,
                            };
                            if let Some(dot8) = tile.dot8 {
                                while i + 8 <= n_rows {
                                    let v = dot8(cols, std::array::from_fn(|j| u_of(i + j)), acts);
                                    for (c, tok) in (tk..tk + 4).enumerate() {
                                        let dst = &mut out_cols.row_mut(tok)[i..i + 8];
                                        for (d, vr) in dst.iter_mut().zip(&v) {
                                            *d = vr[c];
                                        }
                                    }
                                    i += 8;
                                }
                            }
                            while i + 4 <= n_rows {
                                let v = (tile.dot)(
                                    cols,
                                    [u_of(i), u_of(i + 1), u_of(i + 2), u_of(i + 3)],
                                    acts,
                                );
                                // v is [row][token]; each token's output row gets four rows.
                                for (c, tok) in (tk..tk + 4).enumerate() {
                                    let dst = &mut out_cols.row_mut(tok)[i..i + 4];
                                    for (d, vr) in dst.iter_mut().zip(&v) {
                                        *d = vr[c];
                                    }
                                }
                                i += 4;
                            }
                        }
                        while i < n_rows {
                            let v = d4(cols, w_of(i), acts);
                            for (c, &x) in v.iter().enumerate() {
                                out_cols.row_mut(tk + c)[i] = x;
                            }
                            i += 1;
                        }
                        tk += 4;
                    } else {
                        let dot = dot_of(orders[tk]);
                        let dst = out_cols.row_mut(tk);
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d = dot(cols, w_of(i), act_of(tk));
                        }
                        tk += 1;
                    }
                }
                UNPACKED_ROWS.set(unpacked);
                UNPACKED_ACTS.set(act_rows);
                TASK_ROWS.set(from_groups);
            });
        }
        self.bufs[out.0 as usize].data = o;
        self.act_scratch = act;
        self.orders = orders;
        self.panel_acts = panel_acts;
        self.panel_groups = groups;
    }

    fn set_row_sequences(&mut self, seqs: &[u32]) {
        self.row_seqs.clear();
        self.row_seqs.extend_from_slice(seqs);
    }

    fn add_bias(&mut self, x: BufId, b: WeightId) {
        let bv = self.weights[b.0 as usize]
            .vector
            .clone()
            .expect("bias is a vector");
        let xb = &mut self.bufs[x.0 as usize];
        for row in xb.data.chunks_exact_mut(xb.width) {
            row.iter_mut().zip(&bv).for_each(|(v, &b)| *v += b);
        }
    }

    fn add(&mut self, x: BufId, y: BufId) {
        self.with_pair(y, x, |_, y, x| {
            assert_eq!(x.data.len(), y.data.len());
            let add = |start: usize, chunk: &mut [f32]| {
                let ys = &y.data[start..start + chunk.len()];
                chunk.iter_mut().zip(ys).for_each(|(a, &b)| *a += b);
            };
            // Prompts: split across the pool (run alone, the residual adds were ~1 % of a
            // SmolLM2 prompt at 2 threads while the other thread waited); decode: inline.
            let per_task = x.width.max(1) * NORM_ROWS_PER_TASK;
            if x.data.len() > per_task {
                pool::par_chunks_mut(&mut x.data, per_task, |ci, c| add(ci * per_task, c));
            } else {
                add(0, &mut x.data);
            }
        });
    }

    fn scale(&mut self, x: BufId, s: f32) {
        self.bufs[x.0 as usize]
            .data
            .iter_mut()
            .for_each(|v| *v *= s);
    }

    fn softcap(&mut self, x: BufId, cap: f32) {
        self.bufs[x.0 as usize]
            .data
            .iter_mut()
            .for_each(|v| *v = (*v / cap).tanh() * cap);
    }

    fn rope(
        &mut self,
        x: BufId,
        tokens: &[TokenSlot],
        p: &RopeParams,
        freq_factors: Option<WeightId>,
    ) {
        let ff = freq_factors.map(|w| self.vector(w).to_vec());
        let b = &mut self.bufs[x.0 as usize];
        let width = b.width;
        pool::par_chunks_mut(&mut b.data, width * SMALL_ROWS_PER_TASK, |ci, rows| {
            // The angles of this position, on the stack for every head size in use (no
            // allocation per token in the decode loop).
            let mut stack = [0.0f32; ROPE_STACK];
            let mut heap = Vec::new();
            let cache = if p.n_rot <= ROPE_STACK {
                &mut stack[..p.n_rot]
            } else {
                heap.resize(p.n_rot, 0.0);
                &mut heap[..]
            };
            for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                let tok = &tokens[ci * SMALL_ROWS_PER_TASK + i];
                rope_cache(tok.pos as f32, p, ff.as_deref(), cache);
                for head in row.chunks_exact_mut(p.head_dim) {
                    rope_apply(head, cache, p.n_rot, p.neox);
                }
            }
        });
    }

    fn glu(&mut self, gate: BufId, up: BufId, kind: GluKind, out: BufId) {
        let n = self.bufs[gate.0 as usize].n_tokens;
        self.set_rows(out, n);
        let mut o = std::mem::take(&mut self.bufs[out.0 as usize].data);
        let g = &self.bufs[gate.0 as usize].data;
        let u = &self.bufs[up.0 as usize].data;
        let w = self.bufs[gate.0 as usize].width.max(1);
        // Rows in parallel (elementwise, so the split cannot change a result); run serially
        // this was ~3 % of Gemma's prompt time with the other thread idle.
        let apply = |ci: usize, oc: &mut [f32]| {
            let at = ci * w * GLU_ROWS_PER_TASK;
            let (g, u) = (&g[at..at + oc.len()], &u[at..at + oc.len()]);
            match kind {
                GluKind::SwiGlu => {
                    for ((o, g), u) in oc.chunks_mut(w).zip(g.chunks(w)).zip(u.chunks(w)) {
                        swiglu(o, g, u);
                    }
                }
                GluKind::GeGlu => oc
                    .iter_mut()
                    .zip(g)
                    .zip(u)
                    // ggml writes a plain +0 below -10 rather than 0 * up (which may be -0).
                    .for_each(|((o, &g), &u)| {
                        *o = if g <= -10.0 {
                            0.0
                        } else {
                            gelu_tanh_f16_rounded(g) * u
                        }
                    }),
            }
        };
        if n > GLU_ROWS_PER_TASK {
            pool::par_chunks_mut(&mut o, w * GLU_ROWS_PER_TASK, apply);
        } else {
            // Decode steps: too little work to be worth waking the pool.
            apply(0, &mut o);
        }
        self.bufs[out.0 as usize].data = o;
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
        let n_tokens = batch.tokens.len();
        let kv = self
            .kv
            .get_mut(layer)
            .and_then(|l| l.as_mut())
            .ok_or(BackendError::NoKvCache { layer })?;
        if let Some(qkv) = kv.quant.as_mut() {
            let mut o = std::mem::take(&mut self.bufs[out.0 as usize].data);
            let r = crate::attention_quant::attention(
                qkv,
                &self.bufs[q.0 as usize].data,
                &self.bufs[k.0 as usize].data,
                &self.bufs[v.0 as usize].data,
                batch,
                p,
                &mut o,
            );
            let ob = &mut self.bufs[out.0 as usize];
            ob.data = o;
            ob.n_tokens = n_tokens;
            return r;
        }
        let (kw, vw) = (kv.k_width, kv.v_width);
        debug_assert_eq!(kw, p.n_head_kv * p.head_dim_k);
        // 1. store this step's K and V (f16) in their cells
        let kb = &self.bufs[k.0 as usize].data;
        let vb = &self.bufs[v.0 as usize].data;
        for (t, tok) in batch.tokens.iter().enumerate() {
            let c = batch.cell_of(tok, kv.n_cells)?;
            vec_math::f32_to_f16(&mut kv.k[c * kw..(c + 1) * kw], &kb[t * kw..(t + 1) * kw]);
            vec_math::f32_to_f16(&mut kv.v[c * vw..(c + 1) * vw], &vb[t * vw..(t + 1) * vw]);
        }
        // 2. attend: one task per (token, head)
        let mut o = std::mem::take(&mut self.bufs[out.0 as usize].data);
        let kv = self.kv[layer].as_ref().expect("allocated above");
        let qb = &self.bufs[q.0 as usize].data;
        let qw = p.n_head * p.head_dim_k;
        let group = p.n_head / p.n_head_kv;
        o.resize(n_tokens * p.n_head * p.head_dim_v, 0.0);
        // llama.cpp's CPU flash attention takes a tiled all-f32 path for batches of at least
        // FA_TILE_Q queries and a per-query path with Q rounded to f16 and an f16 V accumulator
        // below that; we follow the same split so that logits agree at every batch size. The
        // split is made per sequence (runs of tokens of one sequence), from that sequence's own
        // query count, so that a sequence's results do not depend on what else is batched.
        let (dv, row_w) = (p.head_dim_v, p.n_head * p.head_dim_v);
        let mut tiled = vec![false; n_tokens];
        let mut units: Vec<(usize, usize, usize)> = Vec::new(); // (head, first, end) query blocks
        for run in crate::runs_by(batch.tokens, |t| t.seq) {
            if run.len() >= FA_TILE_Q {
                tiled[run.clone()].iter_mut().for_each(|t| *t = true);
                for h in 0..p.n_head {
                    for t0 in run.clone().step_by(FA_TILE_Q) {
                        units.push((h, t0, (t0 + FA_TILE_Q).min(run.end)));
                    }
                }
            }
        }
        // Longest first (a block's cost grows with its last position), so that the last task
        // handed out is a short one and no thread waits long for another at the end.
        units.sort_by_key(|&(h, t0, t1)| (std::cmp::Reverse(batch.tokens[t1 - 1].pos), t0, h));
        if !units.is_empty() {
            // One task per (head, block of FA_TILE_Q queries), as ggml tiles it: each KV tile is
            // converted to f32 once per block instead of once per query.
            // Each task sizes its own block (allocated and zeroed in parallel, not up front).
            let mut blocks: Vec<Vec<f32>> = vec![Vec::new(); units.len()];
            pool::par_chunks_mut(&mut blocks, 1, |u, local| {
                let (h, t0, t1) = units[u];
                local[0].resize((t1 - t0) * dv, 0.0);
                let head = HeadKv {
                    kv,
                    kvh: h / group,
                    dk: p.head_dim_k,
                    dv,
                };
                let queries: Vec<(&[f32], TokenSlot)> = (t0..t1)
                    .map(|t| {
                        (
                            &qb[t * qw + h * p.head_dim_k..t * qw + (h + 1) * p.head_dim_k],
                            batch.tokens[t],
                        )
                    })
                    .collect();
                attend_block_f32(&queries, batch.cells, &head, p, &mut local[0]);
            });
            for (&(h, t0, _), local) in units.iter().zip(&blocks) {
                for (i, row) in local.chunks_exact(dv).enumerate() {
                    let t = t0 + i;
                    o[t * row_w + h * dv..t * row_w + (h + 1) * dv].copy_from_slice(row);
                }
            }
        }
        if tiled.iter().any(|&t| !t) {
            pool::par_chunks_mut(&mut o, dv, |i, oh| {
                let (t, h) = (i / p.n_head, i % p.n_head);
                if tiled[t] {
                    return;
                }
                let tok = batch.tokens[t];
                let cells = batch.cells[tok.seq as usize];
                let hi = tok.pos as usize;
                let lo = p.window.map_or(0, |w| (hi + 1).saturating_sub(w));
                let q_row = &qb[t * qw + h * p.head_dim_k..t * qw + (h + 1) * p.head_dim_k];
                let head = HeadKv {
                    kv,
                    kvh: h / group,
                    dk: p.head_dim_k,
                    dv,
                };
                attend_f16_acc(q_row, &cells[lo..=hi], &head, p, oh);
            });
        }
        let ob = &mut self.bufs[out.0 as usize];
        ob.data = o;
        ob.n_tokens = n_tokens;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Deterministic values in [-1, 1).
    fn values(seed: u32, n: usize) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b);
                ((h >> 8) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn f16_weight(rows: usize, cols: usize) -> HostWeight {
        let bytes: Vec<u8> = values(7, rows * cols)
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let len = bytes.len();
        HostWeight {
            name: "w".into(),
            dtype: DType::F16,
            dims: vec![cols as u64, rows as u64],
            source: Arc::new(bytes),
            range: 0..len,
        }
    }

    /// `x` (token-major, `seqs[t]` the sequence of token t) through the F16 weight `w`.
    fn matmul(b: &mut CpuBackend, w: WeightId, rows: usize, x: &[f32], seqs: &[u32]) -> Vec<f32> {
        let n = seqs.len();
        let (bx, bo) = (b.alloc(n, x.len() / n), b.alloc(n, rows));
        b.upload(bx, x);
        b.set_row_sequences(seqs);
        b.matmul(w, bx, bo);
        let mut out = Vec::new();
        b.download(bo, &mut out);
        out
    }

    /// A byte source that records what it is told to release.
    struct Recording(Vec<u8>, std::sync::Mutex<Vec<std::ops::Range<usize>>>);
    impl ByteSource for Recording {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn release(&self, range: std::ops::Range<usize>) {
            self.1.lock().unwrap().push(range);
        }
    }

    /// A repacked-order Q4_K matrix (rows a multiple of 8) gets the block-interleaved copy and
    /// releases its source; decode, a few sequences and a prompt give the bits of the same
    /// weight used in place, and a matrix with other row counts keeps its source.
    #[test]
    fn repacked_q4_k_copy_gives_the_same_bits_and_releases_the_source() {
        let (rows, cols) = (24, 512);
        let q = orchard_quant::traits(DType::Q4_K).unwrap();
        let mut bytes = vec![0u8; 7]; // the tensor does not start the source
        for r in 0..rows {
            let mut row = vec![0u8; DType::Q4_K.row_bytes(cols as u64).unwrap() as usize];
            (q.from_float_ref.unwrap())(&values(r as u32 + 1, cols), &mut row);
            bytes.extend_from_slice(&row);
        }
        let len = bytes.len();
        let src = Arc::new(Recording(bytes, Default::default()));
        let weight = HostWeight {
            name: "w".into(),
            dtype: DType::Q4_K,
            dims: vec![cols as u64, rows as u64],
            source: src.clone(),
            range: 7..len,
        };
        let mut plain = CpuBackend::new();
        plain.set_repack(false);
        let wp = plain.add_weight(&weight).unwrap();
        assert!(src.1.lock().unwrap().is_empty(), "no copy, no release");
        let mut packed = CpuBackend::new();
        packed.repack = Some(0); // this small matrix too
        let wr = packed.add_weight(&weight).unwrap();
        let grouped = packed.weights[wr.0 as usize].groups.is_some();
        assert_eq!(
            grouped,
            cfg!(target_arch = "x86_64"),
            "repacked where the order is"
        );
        if grouped {
            assert_eq!(*src.1.lock().unwrap(), vec![7..len]);
        }
        for seqs in [
            vec![0],
            vec![0, 1, 2],
            vec![0; 9],
            (0..70).map(|t| t / 30).collect(),
        ] {
            let x = values(99, seqs.len() * cols);
            let a = matmul(&mut plain, wp, rows, &x, &seqs);
            let b = matmul(&mut packed, wr, rows, &x, &seqs);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{} tokens", seqs.len());
        }
        // Below the size threshold: used in place.
        let mut default = CpuBackend::new();
        default.set_repack(true);
        let id = default.add_weight(&weight).unwrap();
        assert!(default.weights[id.0 as usize].groups.is_none());
        // 12 rows: not the repacked order's (rows % 8), so used in place.
        let w12 = HostWeight {
            dims: vec![cols as u64, 12],
            range: 7..7 + 12 * (len - 7) / rows,
            ..weight
        };
        let before = src.1.lock().unwrap().len();
        let id = packed.add_weight(&w12).unwrap();
        assert!(packed.weights[id.0 as usize].groups.is_none());
        assert_eq!(src.1.lock().unwrap().len(), before);
    }

    /// F16 products decide their order per sequence: a long sequence (the panel order where
    /// the CPU has it) and short ones (the per-token order) give the same bits alone and batched
    /// together, ragged panels and token groups included, and both orders agree closely with
    /// an f64 sum.
    #[test]
    fn f16_matmul_orders_are_per_sequence_and_agree() {
        let (rows, cols) = (40, 70);
        let mut b = CpuBackend::new();
        let w = b.add_weight(&f16_weight(rows, cols)).unwrap();
        let long = PANEL_MIN_TOKENS + 5;
        let x = values(3, (long + 3) * cols);
        let seqs: Vec<u32> = (0..long + 3)
            .map(|t| u32::from(t >= long) + u32::from(t > long))
            .collect();
        let together = matmul(&mut b, w, rows, &x, &seqs);
        let alone_long = matmul(&mut b, w, rows, &x[..long * cols], &seqs[..long]);
        assert_eq!(
            together[..long * rows]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            alone_long.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        for t in long..long + 3 {
            let one = matmul(&mut b, w, rows, &x[t * cols..(t + 1) * cols], &[9]);
            assert_eq!(
                together[t * rows..(t + 1) * rows]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "token {t}"
            );
        }
        let wv = values(7, rows * cols);
        let round = |v: f32| f64::from(f16::from_f32(v).to_f32());
        for t in 0..long + 3 {
            for r in 0..rows {
                let (mut sum, mut abs) = (0f64, 0f64);
                for k in 0..cols {
                    let p = round(wv[r * cols + k]) * round(x[t * cols + k]);
                    sum += p;
                    abs += p.abs();
                }
                let got = f64::from(together[t * rows + r]);
                assert!(
                    (got - sum).abs() <= 1e-6 * abs,
                    "token {t} row {r}: {got} vs {sum}"
                );
            }
        }
    }
}
