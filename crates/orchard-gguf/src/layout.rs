//! Shape rules shared by the reader and the writer, so that whatever the writer accepts the
//! reader accepts too.

use orchard_core::DType;

use crate::{GgufError, MAX_DIMS, MAX_TENSOR_NAME_LEN};

/// Checks a tensor's name and shape against ggml's rules and returns its size in bytes.
pub(crate) fn tensor_n_bytes(name: &str, dims: &[u64], dtype: DType) -> Result<u64, GgufError> {
    if name.len() > MAX_TENSOR_NAME_LEN {
        return Err(GgufError::TensorNameTooLong {
            name: name.to_string(),
            len: name.len(),
            max: MAX_TENSOR_NAME_LEN,
        });
    }
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(GgufError::InvalidDimCount {
            name: name.to_string(),
            n_dims: dims.len() as u64,
            max: MAX_DIMS,
        });
    }
    if let Some(index) = dims.iter().position(|&d| d == 0) {
        return Err(GgufError::ZeroDim {
            name: name.to_string(),
            index,
        });
    }
    let overflow = || GgufError::ShapeOverflow {
        name: name.to_string(),
        dims: dims.to_vec(),
    };
    // ggml stores element counts as int64_t, so the product must stay below i64::MAX.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(overflow)?;
    let row_len = dims[0];
    let block_size = dtype.block_size() as u64;
    if !row_len.is_multiple_of(block_size) {
        return Err(GgufError::NotWholeBlocks {
            name: name.to_string(),
            row_len,
            dtype,
            block_size,
        });
    }
    let rows = n_elements / row_len;
    dtype
        .row_bytes(row_len)
        .and_then(|rb| rb.checked_mul(rows))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(overflow)
}

/// `x` rounded up to a multiple of `align` (a power of two), or None on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Validates a `general.alignment` value: it must be a u32 that is a non-zero power of two.
pub(crate) fn alignment_from_value(v: &crate::Value) -> Result<u64, GgufError> {
    let crate::Value::U32(a) = *v else {
        return Err(GgufError::WrongType {
            key: crate::ALIGNMENT_KEY.to_string(),
            expected: "u32",
            found: v.type_description(),
        });
    };
    let a = u64::from(a);
    if !a.is_power_of_two() {
        return Err(GgufError::BadAlignment { alignment: a });
    }
    Ok(a)
}
