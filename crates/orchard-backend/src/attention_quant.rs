//! Attention over a KV cache stored in a type other than f16 for K and V both (`-ctk q8_0`,
//! `-ctv q4_0`, ...): the rows stay in their block format and are read as ggml's CPU flash
//! attention reads them (ggml/src/ggml-cpu/ops.cpp, `ggml_compute_forward_flash_attn_ext_f16_one_chunk`,
//! llama.cpp 0.25.3): each query head is converted to K's `vec_dot_type` once and dotted with
//! the quantized K rows by the type's `vec_dot`; V rows are dequantized one at a time and
//! accumulated in f32 (in f16 when V itself is f16), with the same online softmax. ggml takes
//! this per-query path at every batch size for such caches (its tiled path wants f16/f32 K and
//! V of one type), so this module has no tiled variant; it only lets up to four consecutive
//! tokens of a sequence share each K row's dot (`vec_dot_4act`) and each V row's
//! dequantization, every query keeping its own order. The all-f16 cache stays in `cpu.rs`.
//!
//! Like llama.cpp (src/llama-kv-cache.cpp `attn_rot_k`/`attn_rot_v`, src/llama-graph.cpp
//! `build_attn`), a block-quantized K is stored rotated by an orthonormal Walsh-Hadamard
//! transform (Q rotated alike, so Q·K is unchanged) and a block-quantized V too (the output
//! rotated back): the rotation spreads outlier channels over the block, which is what keeps a
//! q4_0 cache usable on small models. `LLAMA_ATTN_ROT_DISABLE=1` turns it off in both.
//!
//! Beyond llama.cpp, a block-quantized K is also *smoothed* before it is rotated and quantized:
//! `k' = (k - mean) / scale` per channel, and queries read it as `q' = q * scale`, so that
//! `q'·k' = q·k - q·mean`. Every score of a query moves by the same `q·mean`, which softmax
//! ignores, so attention is unchanged in exact arithmetic while the quantizer sees a far smaller
//! spread (K of these models carries large per-channel offsets). `mean` and `scale` come from the
//! first batch that stores at least `SMOOTH_MIN_TOKENS` tokens past position 0 and are then fixed
//! for the cache's life: `scale = sqrt(spread of K / RMS of Q)` per channel (SmoothQuant's
//! balance, alpha 0.5), shared by the two channels RoPE rotates together so that it holds at
//! every position. Cells stored before that keep plain K; their scores use the plain query and
//! get `-q·mean` added, so a mix stays exact. Not done with a softcap (not shift-invariant).
//! `ORCHARD_KV_SMOOTH_K=0` turns it off, which gives llama.cpp's figures again. Over 16 chunks of
//! the reference corpus a q4_0 cache (K and V) costs +2.3 % perplexity instead of +6.0 %
//! (SmolLM2) and +2.0 % instead of +11.3 % (Gemma 3); q8_0 stays within 0.2 % either way.

use crate::cpu::score;
use crate::{AttnBatch, AttnParams, BackendError, RopePairs};
use half::f16;
use orchard_core::DType;
use orchard_quant::{traits, TypeTraits};

/// One of K or V of one layer: `n_cells` rows of `width` values in `dtype` blocks.
pub(crate) struct KvRows {
    dtype: DType,
    traits: &'static TypeTraits,
    /// The format a query row is quantized to before `vec_dot` with a K row.
    q_traits: &'static TypeTraits,
    width: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl KvRows {
    /// Storage for `n_cells` rows of `width` values, each head (`head_dim` values) a whole
    /// number of blocks so that a head can be addressed inside a row.
    pub(crate) fn new(
        dtype: DType,
        n_cells: usize,
        width: usize,
        head_dim: usize,
        backend: &str,
    ) -> Result<KvRows, BackendError> {
        let unsupported = |reason: String| BackendError::UnsupportedKvType {
            dtype,
            backend: backend.to_string(),
            reason,
        };
        let t = traits(dtype)
            .filter(|t| t.from_float.is_some() && t.to_float.is_some() && t.vec_dot.is_some())
            .ok_or_else(|| unsupported("no CPU kernels for this type".into()))?;
        let q_traits = traits(t.vec_dot_type)
            .filter(|q| q.from_float.is_some())
            .ok_or_else(|| unsupported(format!("cannot quantize queries to {}", t.vec_dot_type)))?;
        let block = dtype.block_size();
        if head_dim == 0 || !head_dim.is_multiple_of(block) || !width.is_multiple_of(head_dim) {
            return Err(unsupported(format!(
                "the head size {head_dim} is not a multiple of its block size {block}"
            )));
        }
        let row_bytes = dtype
            .row_bytes(width as u64)
            .ok_or_else(|| unsupported(format!("a row of {width} values is not whole blocks")))?
            as usize;
        let len = row_bytes
            .checked_mul(n_cells)
            .ok_or_else(|| unsupported(format!("{n_cells} cells overflow the address space")))?;
        Ok(KvRows {
            dtype,
            traits: t,
            q_traits,
            width,
            row_bytes,
            data: vec![0; len],
        })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Stores one row of f32 values in `cell` as ggml's `set_rows` does (the CPU `from_float`).
    fn store(&mut self, cell: usize, row: &[f32]) {
        let from_float = self.traits.from_float.expect("checked in new");
        from_float(
            &row[..self.width],
            &mut self.data[cell * self.row_bytes..(cell + 1) * self.row_bytes],
        );
    }

    /// The bytes of head `head` (of `head_dim` values) in `cell`.
    fn head(&self, cell: u32, head: usize, head_dim: usize) -> &[u8] {
        let per_head = head_dim / self.dtype.block_size() * self.dtype.block_bytes();
        let start = cell as usize * self.row_bytes + head * per_head;
        &self.data[start..start + per_head]
    }
}

/// A layer's cache when K or V (or both) is not f16.
pub(crate) struct QuantKv {
    k: KvRows,
    v: KvRows,
    n_cells: usize,
    /// Walsh-Hadamard size applied to Q and K (`None`: K is stored as computed).
    rot_k: Option<usize>,
    /// Walsh-Hadamard size applied to V and to the output.
    rot_v: Option<usize>,
    /// Whether K is to be smoothed (a block type, not turned off).
    smooth_k: bool,
    k_rope_pairs: RopePairs,
    /// The smoothing of K, once fixed by a large enough batch.
    k_smooth: Option<KSmooth>,
    /// Per cell: whether its K row was stored smoothed (cells never written count as smoothed).
    k_smoothed: Vec<bool>,
    /// Cells holding plain K (written before `k_smooth` was fixed): while any remain, queries
    /// also go in plain.
    n_plain: usize,
}

/// The per-channel transform of K (one `k.width` row each, before the rotation).
struct KSmooth {
    mean: Vec<f32>,
    scale: Vec<f32>,
}

/// Tokens (past position 0) a batch must store before its K mean is taken as the cache's: a
/// mean of one or two decode tokens would be a poor estimate of the channel offsets.
const SMOOTH_MIN_TOKENS: usize = 8;

impl QuantKv {
    pub(crate) fn new(
        k: KvRows,
        v: KvRows,
        n_cells: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        k_rope_pairs: RopePairs,
    ) -> QuantKv {
        let disabled = std::env::var("LLAMA_ATTN_ROT_DISABLE")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .is_some_and(|v| v != 0);
        let quantized = |t: DType| t.block_size() > 1;
        // llama.cpp: K uses the largest power of two (from 64) dividing the head, V always 64.
        let rot_k =
            (!disabled && quantized(k.dtype) && head_dim_k > 0 && head_dim_k.is_multiple_of(64))
                .then(|| {
                    let mut n = 64;
                    while head_dim_k.is_multiple_of(n * 2) {
                        n *= 2;
                    }
                    n
                });
        let rot_v =
            (!disabled && quantized(v.dtype) && head_dim_v > 0 && head_dim_v.is_multiple_of(64))
                .then_some(64);
        let smooth_off = std::env::var("ORCHARD_KV_SMOOTH_K").is_ok_and(|v| v.trim() == "0");
        QuantKv {
            smooth_k: !smooth_off && quantized(k.dtype),
            k,
            v,
            n_cells,
            rot_k,
            rot_v,
            k_rope_pairs,
            k_smooth: None,
            k_smoothed: vec![true; n_cells],
            n_plain: 0,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// Turns K smoothing on or off before anything is stored (tests; the default comes from
    /// `ORCHARD_KV_SMOOTH_K`).
    #[cfg(test)]
    pub(crate) fn set_smooth_k(&mut self, on: bool) {
        self.smooth_k = on && self.k.dtype.block_size() > 1;
    }
}

/// In-place orthonormal Walsh-Hadamard transform of each `n`-value chunk of `x` (Sylvester
/// order, its own inverse), as ggml's `ggml_compute_forward_fwht`: scale first, then the
/// butterflies from stride 1 up.
fn fwht(x: &mut [f32], n: usize) {
    let scale = 1.0f32 / (n as f32).sqrt();
    for c in x.chunks_exact_mut(n) {
        c.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        while len < n {
            for i in (0..n).step_by(2 * len) {
                for j in i..i + len {
                    let (u, v) = (c[j], c[j + len]);
                    c[j] = u + v;
                    c[j + len] = u - v;
                }
            }
            len <<= 1;
        }
    }
}

/// The cell of a token, checked against the batch's tables and the cache size.
/// Stores this step's K and V rows (`[n, k_width]`, `[n, v_width]`) in their cells and writes
/// attention for every token into `out` (`[n, n_head * head_dim_v]`).
pub(crate) fn attention(
    kv: &mut QuantKv,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: &AttnBatch<'_>,
    p: &AttnParams,
    out: &mut Vec<f32>,
) -> Result<(), BackendError> {
    let n_tokens = batch.tokens.len();
    let (kw, vw) = (kv.k.width, kv.v.width);
    debug_assert_eq!(kw, p.n_head_kv * p.head_dim_k);
    debug_assert_eq!(vw, p.n_head_kv * p.head_dim_v);
    let (mut k_row, mut v_row) = (vec![0.0f32; kw], vec![0.0f32; vw]);
    // Check every cell first: nothing is stored from a batch that is refused.
    let stored: Vec<usize> = batch
        .tokens
        .iter()
        .map(|tok| batch.cell_of(tok, kv.n_cells))
        .collect::<Result<_, _>>()?;
    if kv.smooth_k && kv.k_smooth.is_none() && p.softcap.is_none() {
        kv.k_smooth = k_smoothing(q, k, batch, p, kv.k_rope_pairs);
    }
    for (t, &c) in stored.iter().enumerate() {
        k_row.copy_from_slice(&k[t * kw..(t + 1) * kw]);
        v_row.copy_from_slice(&v[t * vw..(t + 1) * vw]);
        if let Some(sm) = &kv.k_smooth {
            for ((x, m), s) in k_row.iter_mut().zip(&sm.mean).zip(&sm.scale) {
                *x = (*x - m) / s;
            }
        }
        let smoothed = kv.k_smooth.is_some();
        if kv.k_smoothed[c] != smoothed {
            kv.k_smoothed[c] = smoothed;
            if smoothed {
                kv.n_plain -= 1;
            } else {
                kv.n_plain += 1;
            }
        }
        if let Some(n) = kv.rot_k {
            fwht(&mut k_row, n);
        }
        if let Some(n) = kv.rot_v {
            fwht(&mut v_row, n);
        }
        kv.k.store(c, &k_row);
        kv.v.store(c, &v_row);
    }
    // Every cell a token reads must exist too (the f16 path indexes them unchecked as well, but
    // a quantized row is addressed by byte offset, so check once here rather than per dot).
    for tok in batch.tokens {
        let cells = batch
            .cells
            .get(tok.seq as usize)
            .ok_or(BackendError::MissingCell {
                seq: tok.seq,
                pos: tok.pos,
            })?;
        let hi = tok.pos as usize;
        if let Some(&bad) = cells[..=hi].iter().find(|&&c| c as usize >= kv.n_cells) {
            return Err(BackendError::CellOutOfRange {
                cell: bad,
                n_cells: kv.n_cells,
            });
        }
    }
    let (dk, dv) = (p.head_dim_k, p.head_dim_v);
    let qw = p.n_head * dk;
    let group = (p.n_head / p.n_head_kv.max(1)).max(1);
    out.clear();
    out.resize(n_tokens * p.n_head * dv, 0.0);
    let kv = &*kv;
    let (rot_k, rot_v) = (kv.rot_k, kv.rot_v);
    let mixed = kv.k_smooth.is_some() && kv.n_plain > 0;
    // Tasks of up to QUERY_GROUP consecutive tokens of one sequence and one head: they read the
    // same K/V rows, so each row is dequantized (V) and dotted (K, `vec_dot_4act`) once for all.
    let mut units: Vec<(usize, usize, usize)> = Vec::new(); // (head, first token, end)
    for run in crate::runs_by(batch.tokens, |t| t.seq) {
        for t0 in run.clone().step_by(QUERY_GROUP) {
            let t1 = (t0 + QUERY_GROUP).min(run.end);
            units.extend((0..p.n_head).map(|h| (h, t0, t1)));
        }
    }
    let mut blocks: Vec<Vec<f32>> = units
        .iter()
        .map(|&(_, t0, t1)| vec![0.0; (t1 - t0) * dv])
        .collect();
    crate::pool::par_chunks_mut(&mut blocks, 1, |u, local| {
        let (h, t0, t1) = units[u];
        let cells = batch.cells[batch.tokens[t0].seq as usize];
        let n = t1 - t0;
        let kvh = h / group;
        let head = kvh * dk..(kvh + 1) * dk;
        // Queries as the smoothed cells need them (`q * scale`, rotated) and, while plain cells
        // remain, as those need them (rotated only) with the shift that aligns their scores.
        let mut qs = vec![0.0f32; n * dk];
        let mut plain = vec![0.0f32; if mixed { n * dk } else { 0 }];
        let mut shift = [0.0f32; QUERY_GROUP];
        let mut spans = [(0usize, 0usize); QUERY_GROUP];
        for (i, t) in (t0..t1).enumerate() {
            let hi = batch.tokens[t].pos as usize;
            spans[i] = (p.window.map_or(0, |w| (hi + 1).saturating_sub(w)), hi);
            let src = &q[t * qw + h * dk..t * qw + (h + 1) * dk];
            let qi = &mut qs[i * dk..(i + 1) * dk];
            qi.copy_from_slice(src);
            if let Some(sm) = &kv.k_smooth {
                qi.iter_mut()
                    .zip(&sm.scale[head.clone()])
                    .for_each(|(x, s)| *x *= s);
                if mixed {
                    shift[i] = -src
                        .iter()
                        .zip(&sm.mean[head.clone()])
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
                    let pi = &mut plain[i * dk..(i + 1) * dk];
                    pi.copy_from_slice(src);
                    if let Some(nr) = rot_k {
                        fwht(pi, nr);
                    }
                }
            }
            if let Some(nr) = rot_k {
                fwht(qi, nr);
            }
        }
        let q_refs: Vec<&[f32]> = qs.chunks_exact(dk).collect();
        let plain_refs: Vec<&[f32]> = plain.chunks_exact(dk).collect();
        let queries = Queries {
            qs: &q_refs,
            spans: &spans[..n],
            plain: mixed.then_some((&plain_refs[..], &shift[..n])),
        };
        attend_group(&queries, cells, kv, kvh, p, &mut local[0]);
        if let Some(nr) = rot_v {
            for o in local[0].chunks_exact_mut(dv) {
                fwht(o, nr);
            }
        }
    });
    for (&(h, t0, _), local) in units.iter().zip(&blocks) {
        for (i, row) in local.chunks_exact(dv).enumerate() {
            let t = t0 + i;
            let at = (t * p.n_head + h) * dv;
            out[at..at + dv].copy_from_slice(row);
        }
    }
    Ok(())
}

/// Tokens of one sequence attended together by one task (see `attention`).
const QUERY_GROUP: usize = 4;

/// The smoothing of K from one batch (see the module docs), if it has enough tokens past
/// position 0 (the first token is often an attention sink with an atypical K, left out).
fn k_smoothing(
    q: &[f32],
    k: &[f32],
    batch: &AttnBatch<'_>,
    p: &AttnParams,
    pairs: RopePairs,
) -> Option<KSmooth> {
    let (dk, nkv) = (p.head_dim_k, p.n_head_kv.max(1));
    let (kw, qw) = (nkv * dk, p.n_head * dk);
    let group = (p.n_head / nkv).max(1);
    let used: Vec<usize> = (0..batch.tokens.len())
        .filter(|&t| batch.tokens[t].pos > 0)
        .collect();
    if used.len() < SMOOTH_MIN_TOKENS {
        return None;
    }
    let n = used.len() as f64;
    let mut mean = vec![0.0f64; kw];
    for &t in &used {
        mean.iter_mut()
            .zip(&k[t * kw..(t + 1) * kw])
            .for_each(|(a, &x)| *a += f64::from(x));
    }
    mean.iter_mut().for_each(|a| *a /= n);
    // Mean squares per channel: K around its mean, Q (of the heads reading that K head) as is.
    let (mut k_ms, mut q_ms) = (vec![0.0f64; kw], vec![0.0f64; kw]);
    for &t in &used {
        for (i, (&x, m)) in k[t * kw..(t + 1) * kw].iter().zip(&mean).enumerate() {
            k_ms[i] += (f64::from(x) - m).powi(2);
            let (kvh, c) = (i / dk, i % dk);
            for h in kvh * group..(kvh + 1) * group {
                q_ms[i] += f64::from(q[t * qw + h * dk + c]).powi(2);
            }
        }
    }
    let mut scale = vec![1.0f32; kw];
    for i in 0..kw {
        let (kvh, c) = (i / dk, i % dk);
        // A RoPE pair shares its statistics, hence its scale.
        let both = |v: &[f64]| match pairs.partner(c) {
            Some(o) if o < dk => (v[i] + v[kvh * dk + o]) / 2.0,
            _ => v[i],
        };
        let k_rms = (both(&k_ms) / n).sqrt();
        let q_rms = (both(&q_ms) / (n * group as f64)).sqrt();
        if k_rms > 1e-12 && q_rms > 1e-12 {
            let s = (k_rms / q_rms).sqrt() as f32;
            if s.is_finite() && s > 0.0 {
                scale[i] = s;
            }
        }
    }
    Some(KSmooth {
        mean: mean.iter().map(|&m| m as f32).collect(),
        scale,
    })
}

/// The queries of one task: each already in smoothed form (`q * scale` where K is smoothed)
/// and rotated where K is, their visible spans, and while plain cells remain the plain queries
/// with the score shift that aligns those cells with the smoothed ones.
struct Queries<'a> {
    qs: &'a [&'a [f32]],
    spans: &'a [(usize, usize)],
    plain: Option<(&'a [&'a [f32]], &'a [f32])>,
}

/// Query heads `qs` (already rotated where K is) over their `spans` of positions in `cells`,
/// each as ggml's per-query flash attention computes it: the cells in order, an online softmax,
/// V accumulated in f32 (in f16 when V itself is f16). The queries only share the loads.
fn attend_group(
    queries: &Queries<'_>,
    cells: &[u32],
    kv: &QuantKv,
    kvh: usize,
    p: &AttnParams,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA (checked just above), the only feature the function enables.
        unsafe { attend_group_fma(queries, cells, kv, kvh, p, out) };
        return;
    }
    attend_group_body(queries, cells, kv, kvh, p, out)
}

/// `attend_group_body` compiled with FMA so that `mul_add` is one instruction (ggml's
/// `ggml_vec_mad_f32` is an FMA on x86).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn attend_group_fma(
    queries: &Queries<'_>,
    cells: &[u32],
    kv: &QuantKv,
    kvh: usize,
    p: &AttnParams,
    out: &mut [f32],
) {
    attend_group_body(queries, cells, kv, kvh, p, out)
}

#[inline(always)]
fn attend_group_body(
    queries: &Queries<'_>,
    cells: &[u32],
    kv: &QuantKv,
    kvh: usize,
    p: &AttnParams,
    out: &mut [f32],
) {
    let Queries { qs, spans, plain } = *queries;
    let n = qs.len();
    let (dk, dv) = (p.head_dim_k, p.head_dim_v);
    // Q in K's vec_dot type (q8_0 for q8_0/q4_0/q5_0 K), once per query head; the plain
    // queries after the smoothed ones.
    let q_bytes =
        kv.k.q_traits
            .dtype
            .row_bytes(dk as u64)
            .expect("head size checked at allocation") as usize;
    let plain_qs = plain.map_or(&[][..], |(pq, _)| pq);
    let mut q_q = vec![0u8; (n + plain_qs.len()) * q_bytes];
    for (q, dst) in qs.iter().chain(plain_qs).zip(q_q.chunks_exact_mut(q_bytes)) {
        (kv.k.q_traits.from_float.expect("checked at allocation"))(q, dst);
    }
    let q_of = |i: usize| &q_q[i * q_bytes..(i + 1) * q_bytes];
    let plain_of = |i: usize| &q_q[(n + i) * q_bytes..(n + i + 1) * q_bytes];
    let kq_dot = kv.k.traits.vec_dot.expect("checked at allocation");
    let kq_dot4 = kv.k.traits.vec_dot_4act.filter(|_| n == 4);
    let v_to_float = kv.v.traits.to_float.expect("checked at allocation");
    let f16_acc = kv.v.dtype == DType::F16;
    let mut v32 = vec![0.0f32; dv];
    // ggml keeps an f16 accumulator when V is f16 (VKQ16) and an f32 one otherwise (VKQ32).
    let mut acc16 = vec![f16::ZERO; if f16_acc { n * dv } else { 0 }];
    let mut acc32 = vec![0.0f32; if f16_acc { 0 } else { n * dv }];
    let mut sum = [0.0f32; QUERY_GROUP];
    let mut max = [f32::NEG_INFINITY; QUERY_GROUP];
    let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.1).max().unwrap_or(0);
    for (j, &c) in cells.iter().enumerate().take(last + 1).skip(first) {
        let sees = |i: usize| spans[i].0 <= j && j <= spans[i].1;
        let k_head = kv.k.head(c, kvh, dk);
        let mut raw = [0.0f32; QUERY_GROUP];
        // A plain cell (stored before K's smoothing was fixed) takes the plain queries.
        let plain_shift = plain
            .filter(|_| !kv.k_smoothed[c as usize])
            .map(|(_, shift)| shift);
        let q_for = |i: usize| {
            if plain_shift.is_some() {
                plain_of(i)
            } else {
                q_of(i)
            }
        };
        match kq_dot4 {
            Some(dot4) if (0..n).all(sees) => {
                raw = dot4(dk, k_head, std::array::from_fn(q_for));
            }
            _ => {
                for (i, r) in raw.iter_mut().enumerate().take(n) {
                    if sees(i) {
                        *r = kq_dot(dk, k_head, q_for(i));
                    }
                }
            }
        }
        if let Some(shift) = plain_shift {
            raw.iter_mut().zip(shift).for_each(|(r, s)| *r += s);
        }
        v_to_float(kv.v.head(c, kvh, dv), &mut v32);
        for i in (0..n).filter(|&i| sees(i)) {
            let s = score(raw[i], p);
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            let new_max = s > max[i];
            if new_max {
                ms = (max[i] - s).exp();
                max[i] = s;
            } else {
                vs = (s - max[i]).exp();
            }
            if f16_acc {
                let acc = &mut acc16[i * dv..(i + 1) * dv];
                if new_max {
                    acc.iter_mut()
                        .for_each(|a| *a = f16::from_f32(a.to_f32() * ms));
                }
                for (a, &x) in acc.iter_mut().zip(&v32) {
                    *a = f16::from_f32(x.mul_add(vs, a.to_f32()));
                }
            } else {
                let acc = &mut acc32[i * dv..(i + 1) * dv];
                if new_max {
                    acc.iter_mut().for_each(|a| *a *= ms);
                }
                for (a, &x) in acc.iter_mut().zip(&v32) {
                    *a = x.mul_add(vs, *a);
                }
            }
            sum[i] = sum[i].mul_add(ms, vs);
        }
    }
    for (i, o) in out.chunks_exact_mut(dv).enumerate().take(n) {
        let inv = if sum[i] == 0.0 { 0.0 } else { 1.0 / sum[i] };
        if f16_acc {
            o.iter_mut()
                .zip(&acc16[i * dv..(i + 1) * dv])
                .for_each(|(o, a)| *o = a.to_f32() * inv);
        } else {
            o.iter_mut()
                .zip(&acc32[i * dv..(i + 1) * dv])
                .for_each(|(o, &a)| *o = a * inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        AttnBatch, AttnParams, Backend, BackendError, CpuBackend, KvLayout, RopePairs, TokenSlot,
    };
    use orchard_core::DType;

    /// Deterministic values in [-1, 1) (xorshift; no test dependency needed).
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    struct Case {
        n_head: usize,
        n_head_kv: usize,
        d: usize,
        p: AttnParams,
    }

    fn case(window: Option<usize>, softcap: Option<f32>) -> Case {
        let (n_head, n_head_kv, d) = (4, 2, 64);
        Case {
            n_head,
            n_head_kv,
            d,
            p: AttnParams {
                n_head,
                n_head_kv,
                head_dim_k: d,
                head_dim_v: d,
                scale: 1.0 / (d as f32).sqrt(),
                window,
                softcap,
            },
        }
    }

    /// Softmax attention in f64 over the unrounded f32 inputs: what every cache type approximates.
    fn reference(c: &Case, q: &[f32], k: &[f32], v: &[f32], n_tokens: usize) -> Vec<f32> {
        let (d, kw) = (c.d, c.n_head_kv * c.d);
        let mut out = vec![0.0f32; n_tokens * c.n_head * d];
        for t in 0..n_tokens {
            let lo = c.p.window.map_or(0, |w| (t + 1).saturating_sub(w));
            for h in 0..c.n_head {
                let kvh = h / (c.n_head / c.n_head_kv);
                let qh = &q[(t * c.n_head + h) * d..][..d];
                let scores: Vec<f64> = (lo..=t)
                    .map(|j| {
                        let kh = &k[j * kw + kvh * d..][..d];
                        let s: f64 = qh.iter().zip(kh).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let s = s * c.p.scale as f64;
                        match c.p.softcap {
                            Some(cap) => cap as f64 * (s / cap as f64).tanh(),
                            None => s,
                        }
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for (i, j) in (lo..=t).enumerate() {
                    let vh = &v[j * kw + kvh * d..][..d];
                    for (o, &x) in out[(t * c.n_head + h) * d..][..d].iter_mut().zip(vh) {
                        *o += (w[i] / total * x as f64) as f32;
                    }
                }
            }
        }
        out
    }

    /// Runs 70 tokens as one batch (ggml's tiled size for f16), then 2 single-token steps, with
    /// cells in a scrambled order, and returns every output row and the backend's KV bytes.
    fn run(c: &Case, type_k: DType, type_v: DType, n_cells: usize) -> (Vec<f32>, Vec<f32>, usize) {
        let plain_k = |x: &f32, _: usize| 3.0 * x;
        run_with(c, type_k, type_v, n_cells, &plain_k, &[70, 71, 72], None)
    }

    /// `run` with K made by `k_of(random value, channel)`, steps ending at `ends`, and K
    /// smoothing forced on or off (`None`: the default).
    fn run_with(
        c: &Case,
        type_k: DType,
        type_v: DType,
        n_cells: usize,
        k_of: &dyn Fn(&f32, usize) -> f32,
        ends: &[usize],
        smooth: Option<bool>,
    ) -> (Vec<f32>, Vec<f32>, usize) {
        let n_tokens = *ends.last().unwrap();
        let (qw, kw) = (c.n_head * c.d, c.n_head_kv * c.d);
        let q = values(1, n_tokens * qw);
        // K scaled up so that the softmax is far from uniform.
        let k: Vec<f32> = values(2, n_tokens * kw)
            .iter()
            .enumerate()
            .map(|(i, x)| k_of(x, i % kw))
            .collect();
        let v = values(3, n_tokens * kw);
        let cells: Vec<u32> = (0..n_cells as u32)
            .map(|i| (i * 37 + 5) % n_cells as u32)
            .collect();
        let mut b = CpuBackend::new();
        b.alloc_kv_typed(
            3,
            &KvLayout {
                n_cells,
                k_width: kw,
                v_width: kw,
                head_dim_k: c.d,
                head_dim_v: c.d,
                type_k,
                type_v,
                k_rope_pairs: RopePairs::Adjacent { n_rot: c.d },
            },
        )
        .unwrap();
        if let (Some(on), Some(qkv)) = (smooth, b.quant_kv_mut(3)) {
            qkv.set_smooth_k(on);
        }
        let mut got = Vec::new();
        let starts = std::iter::once(0).chain(ends.iter().copied());
        for (t0, t1) in starts.zip(ends.iter().copied()) {
            let n = t1 - t0;
            let bq = b.alloc(n, qw);
            let bk = b.alloc(n, kw);
            let bv = b.alloc(n, kw);
            let bo = b.alloc(n, qw);
            b.upload(bq, &q[t0 * qw..t1 * qw]);
            b.upload(bk, &k[t0 * kw..t1 * kw]);
            b.upload(bv, &v[t0 * kw..t1 * kw]);
            let slots: Vec<TokenSlot> = (t0..t1)
                .map(|p| TokenSlot {
                    seq: 0,
                    pos: p as u32,
                })
                .collect();
            let tables = [cells.as_slice()];
            let batch = AttnBatch {
                tokens: &slots,
                cells: &tables,
            };
            b.attention(3, bq, bk, bv, &batch, &c.p, bo).unwrap();
            let mut o = Vec::new();
            b.download(bo, &mut o);
            got.extend(o);
        }
        (got, reference(c, &q, &k, &v, n_tokens), b.kv_bytes())
    }

    /// RMS of the error over RMS of the reference.
    fn rel_rms(got: &[f32], want: &[f32]) -> f64 {
        assert_eq!(got.len(), want.len());
        let e: f64 = got
            .iter()
            .zip(want)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum();
        let r: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
        (e / r).sqrt()
    }

    #[test]
    fn quantized_kv_attention_is_close_to_f32_attention() {
        let c = case(None, None);
        // Bounds are about twice what these inputs give; a wrong head, cell or block offset
        // gives errors of order 1.
        for (tk, tv, bound) in [
            (DType::F16, DType::F16, 0.005),
            (DType::Q8_0, DType::Q8_0, 0.02),
            (DType::Q4_0, DType::Q4_0, 0.2),
            (DType::Q8_0, DType::F16, 0.02),
            (DType::F16, DType::Q4_0, 0.25),
            (DType::Q4_0, DType::Q8_0, 0.25),
        ] {
            let (got, want, _) = run(&c, tk, tv, 80);
            let err = rel_rms(&got, &want);
            eprintln!("K {tk} V {tv}: relative RMS error {err:.5}");
            assert!(err < bound, "K {tk} V {tv}: relative RMS error {err}");
        }
    }

    /// K with large per-channel offsets (as real models' K has) and a small spread around them.
    fn offset_k(x: &f32, c: usize) -> f32 {
        6.0 * ((c as f32) * 0.7).sin() + 1.5 * x
    }

    #[test]
    fn smoothing_k_keeps_attention_and_cuts_the_q4_0_error_of_an_offset_k() {
        let c = case(None, None);
        let ends = [70, 71, 72];
        let (plain, want, _) = run_with(
            &c,
            DType::Q4_0,
            DType::Q4_0,
            80,
            &offset_k,
            &ends,
            Some(false),
        );
        let (smooth, _, _) = run_with(
            &c,
            DType::Q4_0,
            DType::Q4_0,
            80,
            &offset_k,
            &ends,
            Some(true),
        );
        let (e_plain, e_smooth) = (rel_rms(&plain, &want), rel_rms(&smooth, &want));
        eprintln!(
            "q4_0 K with offsets: relative RMS error {e_plain:.4} plain, {e_smooth:.4} smoothed"
        );
        assert!(e_smooth < 0.5 * e_plain, "{e_smooth} vs {e_plain}");
        let (q8, _, _) = run_with(
            &c,
            DType::Q8_0,
            DType::Q8_0,
            80,
            &offset_k,
            &ends,
            Some(true),
        );
        assert!(
            rel_rms(&q8, &want) < 0.02,
            "q8_0 smoothed: {}",
            rel_rms(&q8, &want)
        );
    }

    #[test]
    fn cells_stored_before_the_smoothing_was_fixed_still_attend_exactly() {
        // Three tokens (too few to fix the smoothing) go in plain, then 67 fix it, then two
        // decode steps read plain and smoothed cells together. A plain cell read with the
        // smoothed query, or without its score shift, is off by q·mean: errors of order 1.
        let c = case(None, None);
        let (mixed, want, _) = run_with(
            &c,
            DType::Q8_0,
            DType::Q8_0,
            80,
            &offset_k,
            &[3, 70, 71, 72],
            Some(true),
        );
        let err = rel_rms(&mixed, &want);
        eprintln!("q8_0, 3 plain cells then smoothed: relative RMS error {err:.5}");
        assert!(err < 0.02, "{err}");
        let (mixed4, _, _) = run_with(
            &c,
            DType::Q4_0,
            DType::Q4_0,
            80,
            &offset_k,
            &[3, 70, 71, 72],
            Some(true),
        );
        let (plain4, _, _) = run_with(
            &c,
            DType::Q4_0,
            DType::Q4_0,
            80,
            &offset_k,
            &[3, 70, 71, 72],
            Some(false),
        );
        let (e_mixed, e_plain) = (rel_rms(&mixed4, &want), rel_rms(&plain4, &want));
        eprintln!("q4_0, 3 plain cells then smoothed: {e_mixed:.4}; never smoothed: {e_plain:.4}");
        assert!(e_mixed < e_plain, "{e_mixed} vs {e_plain}");
    }

    #[test]
    fn smoothing_scales_are_shared_by_rope_pairs_and_need_enough_tokens() {
        let p = AttnParams {
            n_head: 4,
            n_head_kv: 2,
            head_dim_k: 64,
            head_dim_v: 64,
            scale: 0.125,
            window: None,
            softcap: None,
        };
        let n = 12;
        let q = values(11, n * 4 * 64);
        let k: Vec<f32> = values(12, n * 2 * 64)
            .iter()
            .enumerate()
            .map(|(i, x)| offset_k(x, i % 128) * (1.0 + (i % 7) as f32))
            .collect();
        let slots: Vec<TokenSlot> = (0..n as u32).map(|pos| TokenSlot { seq: 0, pos }).collect();
        let table: Vec<u32> = (0..n as u32).collect();
        let tables = [table.as_slice()];
        let batch = AttnBatch {
            tokens: &slots,
            cells: &tables,
        };
        for (pairs, partner) in [
            (RopePairs::Adjacent { n_rot: 64 }, 5usize),
            (RopePairs::Halves { n_rot: 64 }, 36),
            (RopePairs::Halves { n_rot: 32 }, 20),
        ] {
            assert_eq!(pairs.partner(4), Some(partner));
            assert_eq!(pairs.partner(partner), Some(4));
            let sm = super::k_smoothing(&q, &k, &batch, &p, pairs).expect("11 tokens past 0");
            for head in 0..2 {
                let (a, b) = (head * 64 + 4, head * 64 + partner);
                assert_eq!(sm.scale[a], sm.scale[b], "{pairs:?}");
                assert!(sm.scale[a] > 0.0 && sm.scale[a].is_finite());
            }
            // The mean leaves out position 0.
            let m: f32 = (1..n).map(|t| k[t * 128 + 3]).sum::<f32>() / (n - 1) as f32;
            assert!((sm.mean[3] - m).abs() < 1e-4, "{} vs {m}", sm.mean[3]);
        }
        assert_eq!(RopePairs::Halves { n_rot: 32 }.partner(40), None);
        assert_eq!(RopePairs::None.partner(4), None);
        // Seven tokens past position 0 are not enough.
        let few = AttnBatch {
            tokens: &slots[..8],
            cells: &tables,
        };
        assert!(super::k_smoothing(&q, &k, &few, &p, RopePairs::None).is_none());
    }

    #[test]
    fn quantized_kv_attention_masks_windows_and_softcaps_like_f16() {
        let c = case(Some(16), Some(5.0));
        let (f16_out, want, _) = run(&c, DType::F16, DType::F16, 72);
        let (q8_out, _, _) = run(&c, DType::Q8_0, DType::Q8_0, 72);
        assert!(rel_rms(&f16_out, &want) < 0.005);
        let err = rel_rms(&q8_out, &want);
        assert!(err < 0.02, "q8_0 with window and softcap: {err}");
    }

    #[test]
    fn walsh_hadamard_is_orthonormal_and_its_own_inverse() {
        for n in [64, 256] {
            let x = values(7, 2 * n);
            let y = values(8, 2 * n);
            let (mut xr, mut yr) = (x.clone(), y.clone());
            super::fwht(&mut xr, n);
            super::fwht(&mut yr, n);
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum()
            };
            assert!((dot(&x, &y) - dot(&xr, &yr)).abs() < 1e-4, "n = {n}");
            assert!(xr != x);
            super::fwht(&mut xr, n);
            let back = xr
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(back < 1e-5, "n = {n}: {back}");
        }
    }

    #[test]
    fn kv_bytes_follow_the_cache_type() {
        let c = case(None, None);
        let n_cells = 80;
        let row_f16 = c.n_head_kv * c.d * 2;
        for (t, per_row) in [
            (DType::F16, row_f16),
            (DType::Q8_0, row_f16 / 64 * 34),
            (DType::Q4_0, row_f16 / 64 * 18),
        ] {
            let (_, _, bytes) = run(&c, t, t, n_cells);
            assert_eq!(bytes, 2 * n_cells * per_row, "{t}");
        }
    }

    #[test]
    fn a_head_that_is_not_whole_blocks_is_refused() {
        let mut b = CpuBackend::new();
        let layout = KvLayout {
            n_cells: 8,
            k_width: 2 * 40,
            v_width: 2 * 40,
            head_dim_k: 40,
            head_dim_v: 40,
            type_k: DType::Q8_0,
            type_v: DType::F16,
            k_rope_pairs: RopePairs::None,
        };
        let e = b.alloc_kv_typed(0, &layout).unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::UnsupportedKvType {
                    dtype: DType::Q8_0,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("head size 40"), "{e}");
    }

    #[test]
    fn a_cell_outside_the_cache_is_an_error_not_a_panic() {
        let c = case(None, None);
        let kw = c.n_head_kv * c.d;
        let mut b = CpuBackend::new();
        b.alloc_kv_typed(
            0,
            &KvLayout {
                n_cells: 4,
                k_width: kw,
                v_width: kw,
                head_dim_k: c.d,
                head_dim_v: c.d,
                type_k: DType::Q4_0,
                type_v: DType::Q4_0,
                k_rope_pairs: RopePairs::None,
            },
        )
        .unwrap();
        let (bq, bk, bv, bo) = (
            b.alloc(1, c.n_head * c.d),
            b.alloc(1, kw),
            b.alloc(1, kw),
            b.alloc(1, c.n_head * c.d),
        );
        let table = [0u32, 9];
        let tables = [&table[..]];
        let slot = [TokenSlot { seq: 0, pos: 1 }];
        let batch = AttnBatch {
            tokens: &slot,
            cells: &tables,
        };
        let e = b.attention(0, bq, bk, bv, &batch, &c.p, bo).unwrap_err();
        assert!(
            matches!(e, BackendError::CellOutOfRange { cell: 9, .. }),
            "{e}"
        );
        let slot = [TokenSlot { seq: 0, pos: 2 }];
        let batch = AttnBatch {
            tokens: &slot,
            cells: &tables,
        };
        let e = b.attention(0, bq, bk, bv, &batch, &c.p, bo).unwrap_err();
        assert!(matches!(e, BackendError::MissingCell { .. }), "{e}");
    }
}
