//! Block formats of ggml: the `#[repr(C)]` block layouts, dequantization, reference quantization,
//! and dot products of a weight row against a row of activations quantized to the format ggml
//! pairs it with (`vec_dot_type`).
//!
//! Kernels come in three flavours: `*_ref` are ggml's reference/generic C kernels (what
//! `llama-quantize` writes, and ggml's portable dots); `*_scalar` (`lanes.rs`) are portable
//! scalar kernels computing ggml-cpu's x86 SIMD results bit for bit; `simd/` holds the AVX2,
//! AVX-512 and NEON kernels, which must equal the `*_scalar` ones bit for bit. [`traits`] hands
//! out the fastest table this CPU supports.
//!
//! Byte slices are used at the boundary (rather than `&[BlockQ4_0]`) because tensor data comes
//! straight from an mmap with no alignment guarantee beyond GGUF's; kernels read blocks with
//! unaligned loads.

mod kquants;
mod lanes;
mod legacy;
mod simd;
mod traits;

pub use kquants::*;
pub use lanes::*;
pub use legacy::*;
pub use traits::{
    active_tier, traits, traits_for, ActUnpack, FromFloatFn, PanelKernel, RowBlockKernel, Tier,
    TileKernel, ToFloatFn, TypeTraits, UnpackRowFn, VecDot4ActFn, VecDotFn, VecDotGroupFn,
    VecDotTile8Fn, VecDotTileFn, VecDotX4Fn, PANEL_ROWS, PANEL_TOKENS,
};

use orchard_core::DType;

/// Errors of the row-level entry points.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantError {
    #[error("type {0} is not supported by this operation")]
    Unsupported(DType),
    #[error("row of {n} elements is not a whole number of {dtype} blocks of {block}")]
    RaggedRow {
        dtype: DType,
        n: usize,
        block: usize,
    },
    #[error("{dtype} buffer holds {got} bytes, {want} needed for {n} elements")]
    BadLength {
        dtype: DType,
        n: usize,
        want: usize,
        got: usize,
    },
}

/// Dequantizes `dst.len()` elements of type `dtype` from `src` into f32.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let t = traits(dtype).ok_or(QuantError::Unsupported(dtype))?;
    let to_float = t.to_float.ok_or(QuantError::Unsupported(dtype))?;
    check_len(dtype, dst.len(), src.len())?;
    to_float(src, dst);
    Ok(())
}

/// Quantizes `src` into `dtype` blocks in `dst` (the reference quantizer, as ggml's
/// `quantize_row_*_ref`: use it for weights).
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let t = traits(dtype).ok_or(QuantError::Unsupported(dtype))?;
    let from_float = t.from_float_ref.ok_or(QuantError::Unsupported(dtype))?;
    check_len(dtype, src.len(), dst.len())?;
    from_float(src, dst);
    Ok(())
}

/// Quantizes a row of activations the way ggml-cpu does before a dot product with a weight
/// whose `vec_dot_type` is `dtype` (its `from_float`; on x86 not the reference quantizer).
pub fn quantize_activations(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let t = traits(dtype).ok_or(QuantError::Unsupported(dtype))?;
    let from_float = t.from_float.ok_or(QuantError::Unsupported(dtype))?;
    check_len(dtype, src.len(), dst.len())?;
    from_float(src, dst);
    Ok(())
}

/// Dot product of `n` elements: a weight row of type `dtype` against an activation row already
/// quantized to `traits(dtype).vec_dot_type`.
pub fn vec_dot(dtype: DType, n: usize, w: &[u8], act: &[u8]) -> Result<f32, QuantError> {
    let t = traits(dtype).ok_or(QuantError::Unsupported(dtype))?;
    let dot = t.vec_dot.ok_or(QuantError::Unsupported(dtype))?;
    check_len(dtype, n, w.len())?;
    check_len(t.vec_dot_type, n, act.len())?;
    Ok(dot(n, w, act))
}

fn check_len(dtype: DType, n: usize, got: usize) -> Result<(), QuantError> {
    let block = dtype.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::RaggedRow { dtype, n, block });
    }
    let want = n / block * dtype.block_bytes();
    if want != got {
        return Err(QuantError::BadLength {
            dtype,
            n,
            want,
            got,
        });
    }
    Ok(())
}
