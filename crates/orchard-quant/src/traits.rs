//! The per-type kernel table, after ggml's `type_traits` / `type_traits_cpu`: which activation
//! format a weight type is dotted against, and the row kernels. Callers on the hot path look the
//! entry up once per matrix, then call the function pointers directly.

use crate::*;
use orchard_core::DType;

/// `to_float(src_bytes, dst)`.
pub type ToFloatFn = fn(&[u8], &mut [f32]);
/// `from_float(src, dst_bytes)`.
pub type FromFloatFn = fn(&[f32], &mut [u8]);
/// `vec_dot(n, weight_row, act_row)`.
pub type VecDotFn = fn(usize, &[u8], &[u8]) -> f32;

/// Row kernels of one type. Lengths are checked by the callers (see `crate::dequantize_row`);
/// the kernels themselves assume whole blocks and matching slice lengths.
#[derive(Clone, Copy)]
pub struct TypeTraits {
    pub dtype: DType,
    /// The format activations are quantized to before a dot product with this type.
    pub vec_dot_type: DType,
    /// `to_float(src_bytes, dst)`: dequantize `dst.len()` elements.
    pub to_float: Option<ToFloatFn>,
    /// `from_float(src, dst_bytes)`: quantize `src.len()` elements (reference quantizer).
    pub from_float: Option<FromFloatFn>,
    /// `vec_dot(n, weight_row, act_row)` with `act_row` in `vec_dot_type`.
    pub vec_dot: Option<VecDotFn>,
}

/// The kernel table entry for `dtype`, or `None` for types without CPU kernels.
pub fn traits(dtype: DType) -> Option<&'static TypeTraits> {
    TABLE.iter().find(|t| t.dtype == dtype)
}

macro_rules! entry {
    ($dt:ident, $vdt:ident, $to:expr, $from:expr, $dot:expr) => {
        TypeTraits { dtype: DType::$dt, vec_dot_type: DType::$vdt, to_float: $to, from_float: $from, vec_dot: $dot }
    };
}

static TABLE: &[TypeTraits] = &[
    entry!(F32, F32, Some(dequantize_row_f32), Some(quantize_row_f32), Some(vec_dot_f32)),
    entry!(F16, F16, Some(dequantize_row_f16), Some(quantize_row_f16), Some(vec_dot_f16)),
    entry!(BF16, BF16, Some(dequantize_row_bf16), Some(quantize_row_bf16), Some(vec_dot_bf16)),
    entry!(Q4_0, Q8_0, Some(dequantize_row_q4_0), Some(quantize_row_q4_0), Some(vec_dot_q4_0_q8_0)),
    entry!(Q4_1, Q8_1, Some(dequantize_row_q4_1), Some(quantize_row_q4_1), Some(vec_dot_q4_1_q8_1)),
    entry!(Q5_0, Q8_0, Some(dequantize_row_q5_0), Some(quantize_row_q5_0), Some(vec_dot_q5_0_q8_0)),
    entry!(Q5_1, Q8_1, Some(dequantize_row_q5_1), Some(quantize_row_q5_1), Some(vec_dot_q5_1_q8_1)),
    entry!(Q8_0, Q8_0, Some(dequantize_row_q8_0), Some(quantize_row_q8_0), Some(vec_dot_q8_0_q8_0)),
    entry!(Q8_1, Q8_1, Some(dequantize_row_q8_1), Some(quantize_row_q8_1), None),
    entry!(Q2_K, Q8_K, Some(dequantize_row_q2_k), Some(quantize_row_q2_k), Some(vec_dot_q2_k_q8_k)),
    entry!(Q3_K, Q8_K, Some(dequantize_row_q3_k), Some(quantize_row_q3_k), Some(vec_dot_q3_k_q8_k)),
    entry!(Q4_K, Q8_K, Some(dequantize_row_q4_k), Some(quantize_row_q4_k), Some(vec_dot_q4_k_q8_k)),
    entry!(Q5_K, Q8_K, Some(dequantize_row_q5_k), Some(quantize_row_q5_k), Some(vec_dot_q5_k_q8_k)),
    entry!(Q6_K, Q8_K, Some(dequantize_row_q6_k), Some(quantize_row_q6_k), Some(vec_dot_q6_k_q8_k)),
    entry!(Q8_K, Q8_K, Some(dequantize_row_q8_k), Some(quantize_row_q8_k), None),
];
