//! The per-type kernel tables, after ggml's `type_traits` / `type_traits_cpu`: which activation
//! format a weight type is dotted against, and the row kernels. Callers on the hot path look the
//! entry up once per matrix, then call the function pointers directly.
//!
//! There is one table per [`Tier`]. `traits()` returns the fastest table this CPU supports, picked
//! once (feature detection, then a `OnceLock`); `ORCHARD_FORCE_SCALAR=1` picks the portable scalar
//! table instead, and `ORCHARD_FORCE_SCALAR=ref` ggml's generic reference kernels. Every table
//! except the reference one computes ggml-cpu's x86 results bit for bit (see `lanes.rs`), so the
//! choice changes speed, not numbers; the exceptions are the F16 dot on the AVX2 tier, which
//! reproduces ggml's AVX2 build (as llama.cpp would compute it on that CPU), and the F16
//! `PanelKernel` (AVX-512), an order of its own that callers choose explicitly.

use crate::*;
use orchard_core::DType;
use std::sync::OnceLock;

/// `to_float(src_bytes, dst)`.
pub type ToFloatFn = fn(&[u8], &mut [f32]);
/// `from_float(src, dst_bytes)`.
pub type FromFloatFn = fn(&[f32], &mut [u8]);
/// `vec_dot(n, weight_row, act_row)`.
pub type VecDotFn = fn(usize, &[u8], &[u8]) -> f32;
/// `vec_dot_x4(n, [four weight rows], act_row)`: four dots sharing one activation row.
pub type VecDotX4Fn = fn(usize, [&[u8]; 4], &[u8]) -> [f32; 4];
/// `vec_dot_rows(n, rows, row_bytes, act_row, out)`: `out.len()` consecutive weight rows
/// (`row_bytes` apart) against one activation row; `out[i]` bit-identical to `vec_dot` of row i.
pub type VecDotRowsFn = fn(usize, &[u8], usize, &[u8], &mut [f32]);
/// `dot(n, group, act_row)`: four weight rows stored block-interleaved (`Q4K_GROUP_ROWS` rows:
/// block 0 of each row, then block 1 of each, ...) against one activation row, `out[row]`.
pub type VecDotGroupFn = fn(usize, &[u8], &[u8]) -> [f32; 4];
/// `vec_dot_4act(n, weight_row, [four activation rows])`: four dots sharing one weight row.
pub type VecDot4ActFn = fn(usize, &[u8], [&[u8]; 4]) -> [f32; 4];
/// `dot(n, [four unpacked weight rows], [four activation rows])`: the 4 x 4 dots of a
/// register tile, `out[row][act]`.
pub type VecDotTileFn = fn(usize, [&[u8]; 4], [&[u8]; 4]) -> [[f32; 4]; 4];
/// `unpack(n, weight_row, out)`: a weight row in a tile kernel's working layout.
pub type UnpackRowFn = fn(usize, &[u8], &mut [u8]);

/// A matmul kernel over a block of `rows` weight rows, packed together once per task
/// (`packed_bytes(n)` bytes for the block), dotted with one activation row at a time:
/// `dot(n, packed, act, out)` writes one result per row (`out.len()` of them, at most `rows`).
#[derive(Clone, Copy)]
pub struct RowBlockKernel {
    pub rows: usize,
    pub packed_bytes: fn(usize) -> usize,
    pub pack: fn(usize, &[&[u8]], &mut [u8]),
    pub dot: fn(usize, &[u8], &[u8], &mut [f32]),
    /// The same for four activation rows at once, `out[act][row]` (16 rows).
    pub dot4: Option<RowBlockDot4Fn>,
}

/// `dot4(n, packed, [four activation rows])` of a [`RowBlockKernel`] of 16 rows.
pub type RowBlockDot4Fn = fn(usize, &[u8], [&[u8]; 4]) -> [[f32; 16]; 4];

/// A register-tile matmul kernel for prompts: weight rows are unpacked once per task into a
/// kernel-private layout (`unpacked_row_bytes(n)` bytes per row), then dotted 4 rows x 4
/// activation rows at a time; each result is bit-identical to `vec_dot` of that pair.
#[derive(Clone, Copy)]
pub struct TileKernel {
    pub unpacked_row_bytes: fn(usize) -> usize,
    pub unpack: UnpackRowFn,
    pub dot: VecDotTileFn,
    /// The same with 8 unpacked weight rows (where the kernel has registers for it: the
    /// activation-side work of a block is then shared by twice the rows).
    pub dot8: Option<VecDotTile8Fn>,
    /// Where `dot`/`dot8` take activation rows in a layout of their own too (F16: widened to
    /// f32, so that no tile converts them again), how to convert one row; the caller converts
    /// each row once per task. `None`: they take `vec_dot_type` rows as they are.
    pub unpack_act: Option<ActUnpack>,
}

/// An activation row's conversion for a [`TileKernel`]: `row_bytes(n)` bytes per row.
#[derive(Clone, Copy)]
pub struct ActUnpack {
    pub row_bytes: fn(usize) -> usize,
    pub unpack: UnpackRowFn,
}

/// Weight rows a [`PanelKernel`] panel holds (one 512-bit register of f32 per element index).
pub const PANEL_ROWS: usize = 16;
/// Activation rows a [`PanelKernel`] call takes at most.
pub const PANEL_TOKENS: usize = 8;

/// `dot(n, panel, acts, out)` of a [`PanelKernel`].
pub type PanelDotFn = fn(usize, &[f32], &[f32], &mut [[f32; PANEL_ROWS]]);

/// An outer-product matmul kernel for long prompts: [`PANEL_ROWS`] weight rows are packed once
/// per task as f32 with the rows interleaved (`[k][16]`), up to [`PANEL_TOKENS`] activation
/// rows once per matmul as f32 rows (`[8][n]`), and each call multiplies one panel by one
/// group, one register of 16 rows per token (each token's element broadcast), so that no
/// result needs a horizontal sum. Its float order is its own: each result is one FMA chain
/// over k in order from 0.0 (`dot_one`), not `vec_dot`'s, so callers use it only where they
/// decide the order per sequence (see orchard-backend's `DotOrder::Panel`).
#[derive(Clone, Copy)]
pub struct PanelKernel {
    /// `pack_rows(n, first_row, row_bytes, rows, out)`: `rows` (at most 16) consecutive weight
    /// rows `row_bytes` apart into `n * 16` f32, missing rows as zeros.
    pub pack_rows: fn(usize, &[u8], usize, usize, &mut [f32]),
    /// `pack_acts(n, first_row, row_bytes, rows, out)`: at most 8 consecutive activation rows
    /// of `vec_dot_type` as `8 * n` f32 (row by row), missing rows as zeros.
    pub pack_acts: fn(usize, &[u8], usize, usize, &mut [f32]),
    /// `dot(n, panel, acts, out)`: `out.len()` (at most 8) tokens of a packed group against a
    /// packed panel, `out[token][row]`.
    pub dot: PanelDotFn,
    /// One (weight row, activation row) pair in the same order, unpacked.
    pub dot_one: VecDotFn,
}

/// `dot8(n, [eight unpacked weight rows], [four activation rows])`, `out[row][act]`.
pub type VecDotTile8Fn = fn(usize, [&[u8]; 8], [&[u8]; 4]) -> [[f32; 4]; 8];

/// Row kernels of one type. Lengths are checked by the callers (see `crate::dequantize_row`);
/// the kernels themselves process whole blocks only and never read past their slices (a short
/// slice just ends the dot early).
#[derive(Clone, Copy)]
pub struct TypeTraits {
    pub dtype: DType,
    /// The format activations are quantized to before a dot product with this type.
    pub vec_dot_type: DType,
    /// `to_float(src_bytes, dst)`: dequantize `dst.len()` elements.
    pub to_float: Option<ToFloatFn>,
    /// ggml-cpu's `from_float`: how a row of activations is quantized to this type before a dot
    /// product (for Q8_0/Q8_1 on x86 this is not the reference quantizer: `127 / amax` and
    /// round-half-even). Use it for activations, never for weights.
    pub from_float: Option<FromFloatFn>,
    /// ggml's `from_float_ref`: the reference quantizer (what `llama-quantize` writes).
    pub from_float_ref: Option<FromFloatFn>,
    /// `vec_dot(n, weight_row, act_row)` with `act_row` in `vec_dot_type`.
    pub vec_dot: Option<VecDotFn>,
    /// Four weight rows against one activation row; each result is bit-identical to `vec_dot`
    /// of that row. Faster than four `vec_dot` calls (independent accumulator chains, shared
    /// activation loads) while the rows are cache-resident; reading four rows side by side from
    /// memory is slower than one after another on some machines.
    pub vec_dot_x4: Option<VecDotX4Fn>,
    /// A run of consecutive weight rows against one activation row (matrix-vector products),
    /// each result bit-identical to `vec_dot`: for kernels that gain from converting the
    /// activation row once per run or from keeping two rows in flight.
    pub vec_dot_rows: Option<VecDotRowsFn>,
    /// One weight row against four activation rows (prompt processing: the weight row is
    /// unpacked once for four tokens); each result bit-identical to `vec_dot` of that pair.
    pub vec_dot_4act: Option<VecDot4ActFn>,
    /// Four weight rows against four activation rows, each of the 16 results bit-identical to
    /// `vec_dot` of that pair: loads of both operands are shared across the tile, which is what
    /// prompt processing needs once the operands sit in L1.
    pub vec_dot_tile: Option<TileKernel>,
    /// What llama.cpp's CPU backend computes for this type on x86 (AVX2 and up) after it has
    /// repacked the weight into 8-row interleaved blocks, which it does for every Q4_K matrix
    /// whose row count is a multiple of 8 (`ggml_repack_get_optimal_repack_type`); `None` where
    /// it does not repack the type. Its sums are ordered differently from `vec_dot`'s, and
    /// differently again for batch rows that go through its gemm: in a matmul over `m`
    /// activation rows, rows `i < m - m % 4` must use `vec_dot_interleaved_gemm` and the others
    /// (including every single-token decode) `vec_dot_interleaved`. Our weights keep their
    /// layout; only the order of the sums is reproduced.
    pub vec_dot_interleaved: Option<VecDotFn>,
    /// See `vec_dot_interleaved`.
    pub vec_dot_interleaved_gemm: Option<VecDotFn>,
    /// `vec_dot_interleaved` of four rows stored block-interleaved ([`interleave_rows`]), each
    /// result bit-identical to it: decode reads such a group as one stream.
    pub vec_dot_interleaved_group: Option<VecDotGroupFn>,
    /// `vec_dot_interleaved_gemm` for one weight row and four activation rows, each result
    /// bit-identical to it.
    pub vec_dot_interleaved_gemm_4act: Option<VecDot4ActFn>,
    /// `vec_dot_interleaved_gemm` for a block of weight rows (packed together once) against
    /// one activation row, each result bit-identical to it.
    pub vec_dot_interleaved_gemm_rows: Option<RowBlockKernel>,
    /// What llama.cpp's x86 build computes for this (not repacked) type in its tiled K-quant
    /// matmul (`ggml-cpu/tiled/`), which it runs for batches of at least 8 activation rows:
    /// Q6_K only (see `vec_dot_q6_k_q8_k_tiled_scalar`).
    pub vec_dot_tiled: Option<VecDotFn>,
    /// `vec_dot_tiled` for one weight row and four activation rows, each result bit-identical
    /// to it.
    pub vec_dot_tiled_4act: Option<VecDot4ActFn>,
    /// `vec_dot_tiled` for a block of weight rows packed together, each result bit-identical
    /// to it.
    pub vec_dot_tiled_rows: Option<RowBlockKernel>,
    /// The outer-product prompt kernel (F16 on AVX-512), with an order of its own.
    pub vec_dot_panel: Option<PanelKernel>,
}

/// A family of kernels, from the portable reference to the widest SIMD this build supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tier {
    /// ggml's generic C kernels (`*_ref`): the reference quantizers and the generic dots. Not
    /// what llama.cpp computes on x86; kept for cross-checks against ggml's C.
    Reference,
    /// Portable scalar code computing ggml-cpu's x86 results bit for bit (`*_scalar`).
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F/BW/DQ/VL and VNNI (plus the AVX2 tier's features).
    Avx512,
    /// aarch64 with NEON.
    Neon,
}

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; 5] = [
        Tier::Reference,
        Tier::Scalar,
        Tier::Avx2,
        Tier::Avx512,
        Tier::Neon,
    ];

    /// Whether this CPU can run the tier's kernels.
    pub fn is_available(self) -> bool {
        match self {
            Tier::Reference | Tier::Scalar => true,
            Tier::Avx2 => crate::simd::has_avx2(),
            Tier::Avx512 => crate::simd::has_avx512(),
            Tier::Neon => crate::simd::has_neon(),
        }
    }

    /// The fastest tier this CPU supports.
    pub fn best() -> Tier {
        [Tier::Avx512, Tier::Avx2, Tier::Neon]
            .into_iter()
            .find(|t| t.is_available())
            .unwrap_or(Tier::Scalar)
    }
}

/// The tier `traits()` uses: `ORCHARD_FORCE_SCALAR` (`1`/`true`/`scalar` for [`Tier::Scalar`],
/// `ref` for [`Tier::Reference`]) or else the best one available. Read once per process.
pub fn active_tier() -> Tier {
    static ACTIVE: OnceLock<Tier> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        match std::env::var("ORCHARD_FORCE_SCALAR")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            Some("ref" | "reference") => Tier::Reference,
            Some("" | "0" | "false") | None => Tier::best(),
            Some(_) => Tier::Scalar,
        }
    })
}

/// The kernel table entry for `dtype` in the active tier, or `None` for types without CPU
/// kernels.
pub fn traits(dtype: DType) -> Option<&'static TypeTraits> {
    traits_for(active_tier(), dtype)
}

/// The entry for `dtype` in a given tier's table; `None` when the type has no kernels or the
/// tier cannot run on this CPU.
pub fn traits_for(tier: Tier, dtype: DType) -> Option<&'static TypeTraits> {
    table(tier)?.iter().find(|t| t.dtype == dtype)
}

fn table(tier: Tier) -> Option<&'static [TypeTraits]> {
    static TABLES: [OnceLock<Option<Vec<TypeTraits>>>; 5] = [const { OnceLock::new() }; 5];
    let slot = Tier::ALL.iter().position(|&t| t == tier)?;
    TABLES[slot]
        .get_or_init(|| tier.is_available().then(|| build(tier)))
        .as_deref()
}

macro_rules! entry {
    ($dt:ident, $vdt:ident, $to:expr, $from:expr, $from_ref:expr, $dot:expr, $dot4:expr) => {
        TypeTraits {
            dtype: DType::$dt,
            vec_dot_type: DType::$vdt,
            to_float: $to,
            from_float: $from,
            from_float_ref: $from_ref,
            vec_dot: $dot,
            vec_dot_x4: $dot4,
            vec_dot_rows: None,
            vec_dot_4act: None,
            vec_dot_tile: None,
            vec_dot_interleaved: None,
            vec_dot_interleaved_gemm: None,
            vec_dot_interleaved_group: None,
            vec_dot_interleaved_gemm_4act: None,
            vec_dot_interleaved_gemm_rows: None,
            vec_dot_tiled_4act: None,
            vec_dot_tiled_rows: None,
            vec_dot_tiled: None,
            vec_dot_panel: None,
        }
    };
}

/// Four single-row dots, for tiers without a dedicated multi-row kernel.
macro_rules! x4_of {
    ($dot:path) => {{
        fn x4(n: usize, w: [&[u8]; 4], act: &[u8]) -> [f32; 4] {
            w.map(|w| $dot(n, w, act))
        }
        x4 as VecDotX4Fn
    }};
}

/// Four single-row dots sharing a weight row, for tiers without a dedicated kernel.
macro_rules! x4a_of {
    ($dot:path) => {{
        fn x4a(n: usize, w: &[u8], act: [&[u8]; 4]) -> [f32; 4] {
            act.map(|a| $dot(n, w, a))
        }
        x4a as VecDot4ActFn
    }};
}

/// The reference table: ggml's generic kernels throughout.
fn reference_table() -> Vec<TypeTraits> {
    let mut t = vec![
        entry!(
            F32,
            F32,
            Some(dequantize_row_f32_ref),
            Some(quantize_row_f32_ref),
            Some(quantize_row_f32_ref),
            Some(vec_dot_f32_ref),
            Some(x4_of!(vec_dot_f32_ref))
        ),
        entry!(
            F16,
            F16,
            Some(dequantize_row_f16_ref),
            Some(quantize_row_f16_ref),
            Some(quantize_row_f16_ref),
            Some(vec_dot_f16_ref),
            Some(x4_of!(vec_dot_f16_ref))
        ),
        entry!(
            BF16,
            BF16,
            Some(dequantize_row_bf16_ref),
            Some(quantize_row_bf16_ref),
            Some(quantize_row_bf16_ref),
            Some(vec_dot_bf16_ref),
            Some(x4_of!(vec_dot_bf16_ref))
        ),
        entry!(
            Q4_0,
            Q8_0,
            Some(dequantize_row_q4_0_ref),
            Some(quantize_row_q4_0_ref),
            Some(quantize_row_q4_0_ref),
            Some(vec_dot_q4_0_q8_0_ref),
            Some(x4_of!(vec_dot_q4_0_q8_0_ref))
        ),
        entry!(
            Q4_1,
            Q8_1,
            Some(dequantize_row_q4_1_ref),
            Some(quantize_row_q4_1_ref),
            Some(quantize_row_q4_1_ref),
            Some(vec_dot_q4_1_q8_1_ref),
            Some(x4_of!(vec_dot_q4_1_q8_1_ref))
        ),
        entry!(
            Q5_0,
            Q8_0,
            Some(dequantize_row_q5_0_ref),
            Some(quantize_row_q5_0_ref),
            Some(quantize_row_q5_0_ref),
            Some(vec_dot_q5_0_q8_0_ref),
            Some(x4_of!(vec_dot_q5_0_q8_0_ref))
        ),
        entry!(
            Q5_1,
            Q8_1,
            Some(dequantize_row_q5_1_ref),
            Some(quantize_row_q5_1_ref),
            Some(quantize_row_q5_1_ref),
            Some(vec_dot_q5_1_q8_1_ref),
            Some(x4_of!(vec_dot_q5_1_q8_1_ref))
        ),
        entry!(
            Q8_0,
            Q8_0,
            Some(dequantize_row_q8_0_ref),
            Some(quantize_row_q8_0_ref),
            Some(quantize_row_q8_0_ref),
            Some(vec_dot_q8_0_q8_0_ref),
            Some(x4_of!(vec_dot_q8_0_q8_0_ref))
        ),
        entry!(
            Q8_1,
            Q8_1,
            Some(dequantize_row_q8_1_ref),
            Some(quantize_row_q8_1_ref),
            Some(quantize_row_q8_1_ref),
            None,
            None
        ),
        entry!(
            Q2_K,
            Q8_K,
            Some(dequantize_row_q2_k_ref),
            Some(quantize_row_q2_k_ref),
            Some(quantize_row_q2_k_ref),
            Some(vec_dot_q2_k_q8_k_ref),
            Some(x4_of!(vec_dot_q2_k_q8_k_ref))
        ),
        entry!(
            Q3_K,
            Q8_K,
            Some(dequantize_row_q3_k_ref),
            Some(quantize_row_q3_k_ref),
            Some(quantize_row_q3_k_ref),
            Some(vec_dot_q3_k_q8_k_ref),
            Some(x4_of!(vec_dot_q3_k_q8_k_ref))
        ),
        entry!(
            Q4_K,
            Q8_K,
            Some(dequantize_row_q4_k_ref),
            Some(quantize_row_q4_k_ref),
            Some(quantize_row_q4_k_ref),
            Some(vec_dot_q4_k_q8_k_ref),
            Some(x4_of!(vec_dot_q4_k_q8_k_ref))
        ),
        entry!(
            Q5_K,
            Q8_K,
            Some(dequantize_row_q5_k_ref),
            Some(quantize_row_q5_k_ref),
            Some(quantize_row_q5_k_ref),
            Some(vec_dot_q5_k_q8_k_ref),
            Some(x4_of!(vec_dot_q5_k_q8_k_ref))
        ),
        entry!(
            Q6_K,
            Q8_K,
            Some(dequantize_row_q6_k_ref),
            Some(quantize_row_q6_k_ref),
            Some(quantize_row_q6_k_ref),
            Some(vec_dot_q6_k_q8_k_ref),
            Some(x4_of!(vec_dot_q6_k_q8_k_ref))
        ),
        entry!(
            Q8_K,
            Q8_K,
            Some(dequantize_row_q8_k_ref),
            Some(quantize_row_q8_k_ref),
            Some(quantize_row_q8_k_ref),
            None,
            None
        ),
    ];
    for e in t.iter_mut() {
        e.vec_dot_4act = match e.dtype {
            DType::F32 => Some(x4a_of!(vec_dot_f32_ref)),
            DType::F16 => Some(x4a_of!(vec_dot_f16_ref)),
            DType::BF16 => Some(x4a_of!(vec_dot_bf16_ref)),
            DType::Q4_0 => Some(x4a_of!(vec_dot_q4_0_q8_0_ref)),
            DType::Q4_1 => Some(x4a_of!(vec_dot_q4_1_q8_1_ref)),
            DType::Q5_0 => Some(x4a_of!(vec_dot_q5_0_q8_0_ref)),
            DType::Q5_1 => Some(x4a_of!(vec_dot_q5_1_q8_1_ref)),
            DType::Q8_0 => Some(x4a_of!(vec_dot_q8_0_q8_0_ref)),
            DType::Q2_K => Some(x4a_of!(vec_dot_q2_k_q8_k_ref)),
            DType::Q3_K => Some(x4a_of!(vec_dot_q3_k_q8_k_ref)),
            DType::Q4_K => Some(x4a_of!(vec_dot_q4_k_q8_k_ref)),
            DType::Q5_K => Some(x4a_of!(vec_dot_q5_k_q8_k_ref)),
            DType::Q6_K => Some(x4a_of!(vec_dot_q6_k_q8_k_ref)),
            _ => None,
        };
    }
    t
}

/// The portable scalar table: ggml-cpu's x86 arithmetic where it differs from the reference
/// (activation quantizers, dot lane order), the reference kernels where it does not.
fn scalar_table() -> Vec<TypeTraits> {
    let mut t = reference_table();
    for e in t.iter_mut() {
        let (from, dot, dot4): (Option<FromFloatFn>, Option<VecDotFn>, Option<VecDotX4Fn>) =
            match e.dtype {
                DType::F16 => (
                    Some(quantize_row_f16_scalar),
                    Some(vec_dot_f16_scalar),
                    Some(x4_of!(vec_dot_f16_scalar)),
                ),
                DType::Q4_0 => (
                    e.from_float,
                    Some(vec_dot_q4_0_q8_0_scalar),
                    Some(x4_of!(vec_dot_q4_0_q8_0_scalar)),
                ),
                DType::Q4_1 => (
                    e.from_float,
                    Some(vec_dot_q4_1_q8_1_scalar),
                    Some(x4_of!(vec_dot_q4_1_q8_1_scalar)),
                ),
                DType::Q5_0 => (
                    e.from_float,
                    Some(vec_dot_q5_0_q8_0_scalar),
                    Some(x4_of!(vec_dot_q5_0_q8_0_scalar)),
                ),
                DType::Q5_1 => (
                    e.from_float,
                    Some(vec_dot_q5_1_q8_1_scalar),
                    Some(x4_of!(vec_dot_q5_1_q8_1_scalar)),
                ),
                DType::Q8_0 => (
                    Some(quantize_row_q8_0_scalar),
                    Some(vec_dot_q8_0_q8_0_scalar),
                    Some(x4_of!(vec_dot_q8_0_q8_0_scalar)),
                ),
                DType::Q8_1 => (Some(quantize_row_q8_1_scalar), None, None),
                DType::Q4_K => (
                    e.from_float,
                    Some(vec_dot_q4_k_q8_k_scalar),
                    Some(x4_of!(vec_dot_q4_k_q8_k_scalar)),
                ),
                DType::Q5_K => (
                    e.from_float,
                    Some(vec_dot_q5_k_q8_k_scalar),
                    Some(x4_of!(vec_dot_q5_k_q8_k_scalar)),
                ),
                DType::Q6_K => (
                    e.from_float,
                    Some(vec_dot_q6_k_q8_k_scalar),
                    Some(x4_of!(vec_dot_q6_k_q8_k_scalar)),
                ),
                _ => (e.from_float, e.vec_dot, e.vec_dot_x4),
            };
        e.from_float = from;
        e.vec_dot = dot;
        e.vec_dot_x4 = dot4;
        e.vec_dot_4act = match e.dtype {
            DType::F16 => Some(x4a_of!(vec_dot_f16_scalar)),
            DType::Q4_0 => Some(x4a_of!(vec_dot_q4_0_q8_0_scalar)),
            DType::Q4_1 => Some(x4a_of!(vec_dot_q4_1_q8_1_scalar)),
            DType::Q5_0 => Some(x4a_of!(vec_dot_q5_0_q8_0_scalar)),
            DType::Q5_1 => Some(x4a_of!(vec_dot_q5_1_q8_1_scalar)),
            DType::Q8_0 => Some(x4a_of!(vec_dot_q8_0_q8_0_scalar)),
            DType::Q4_K => Some(x4a_of!(vec_dot_q4_k_q8_k_scalar)),
            DType::Q5_K => Some(x4a_of!(vec_dot_q5_k_q8_k_scalar)),
            DType::Q6_K => Some(x4a_of!(vec_dot_q6_k_q8_k_scalar)),
            _ => e.vec_dot_4act,
        };
        if e.dtype == DType::Q4_K {
            e.vec_dot_interleaved = Some(vec_dot_q4_k_q8_k_interleaved_scalar);
            e.vec_dot_interleaved_gemm = Some(vec_dot_q4_k_q8_k_interleaved_gemm_scalar);
            e.vec_dot_interleaved_group = Some(vec_dot_q4_k_q8_k_interleaved_group_scalar);
        }
        if e.dtype == DType::Q6_K {
            e.vec_dot_tiled = Some(vec_dot_q6_k_q8_k_tiled_scalar);
        }
    }
    t
}

fn build(tier: Tier) -> Vec<TypeTraits> {
    match tier {
        Tier::Reference => reference_table(),
        Tier::Scalar => scalar_table(),
        _ => {
            let mut t = scalar_table();
            crate::simd::install(tier, &mut t);
            t
        }
    }
}

/// Dispatches a dot through the active table (the plain-named entry points use this).
#[inline]
pub(crate) fn dispatch_dot(dtype: DType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match traits(dtype).and_then(|t| t.vec_dot) {
        Some(dot) => dot(n, w, act),
        None => 0.0,
    }
}

/// Dispatches an activation quantizer through the active table.
#[inline]
pub(crate) fn dispatch_from_float(dtype: DType, src: &[f32], dst: &mut [u8]) {
    if let Some(q) = traits(dtype).and_then(|t| t.from_float) {
        q(src, dst)
    }
}
