//! Helpers shared by the GPU integration tests.

use orchard_backend::HostWeight;
use orchard_core::DType;
use std::sync::Arc;

/// A `rows` x `cols` weight of `dtype` quantized from `values` (row-major) by the reference
/// quantizers; one row is a vector.
pub fn weight(name: &str, dtype: DType, cols: usize, rows: usize, values: &[f32]) -> HostWeight {
    let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
    let mut bytes = vec![0u8; row_bytes * rows];
    for r in 0..rows {
        orchard_quant::quantize_row(
            dtype,
            &values[r * cols..(r + 1) * cols],
            &mut bytes[r * row_bytes..(r + 1) * row_bytes],
        )
        .unwrap();
    }
    let len = bytes.len();
    HostWeight {
        name: name.into(),
        dtype,
        dims: if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        },
        source: Arc::new(bytes),
        range: 0..len,
    }
}
