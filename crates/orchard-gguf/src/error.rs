//! The one error type of this crate: every way a GGUF file can be malformed, hostile or merely
//! lacking a key, with enough structure (offsets, names, counts) for callers to act on it.

use std::path::PathBuf;

/// Everything that can go wrong while reading, querying or writing a GGUF file.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("I/O error on {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error(
        "unsupported GGUF version {version} (only 2 and 3 are supported; v1 is obsolete, and a huge \
         number usually means a big-endian file)"
    )]
    UnsupportedVersion { version: u32 },
    #[error(
        "truncated file: {what} at offset {offset} needs {need} bytes, file is {file_len} bytes"
    )]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        file_len: u64,
    },
    #[error("header claims {count} tensors but at most {max} fit in the rest of the file")]
    TooManyTensors { count: u64, max: u64 },
    #[error(
        "header claims {count} metadata entries but at most {max} fit in the rest of the file"
    )]
    TooManyKv { count: u64, max: u64 },
    #[error("array {key:?} at offset {offset} claims {count} items but at most {max} fit in the rest of the file")]
    ArrayTooLong {
        key: String,
        count: u64,
        offset: u64,
        max: u64,
    },
    #[error("array {key:?} nests deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata {key:?} at offset {offset} has unknown value type {type_id}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    #[error("metadata {key:?} at offset {offset} has bool byte {byte} (must be 0 or 1)")]
    InvalidBool { key: String, offset: u64, byte: u8 },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str, offset: u64 },
    #[error("metadata entry #{index} has an empty key")]
    EmptyKey { index: u64 },
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },
    #[error("alignment {alignment} is not a power of two")]
    BadAlignment { alignment: u64 },
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata {key:?} should be {expected} but is {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata {key:?} = {value} does not fit in {expected}")]
    ValueOutOfRange {
        key: String,
        expected: &'static str,
        value: String,
    },
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },
    #[error("tensor name {name:?} is {len} bytes, the limit is {max}")]
    TensorNameTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("tensor {name:?} has {n_dims} dimensions, must be 1..={max}")]
    InvalidDimCount {
        name: String,
        n_dims: u64,
        max: usize,
    },
    #[error("tensor {name:?} has a zero in dimension {index}")]
    ZeroDim { name: String, index: usize },
    #[error("tensor {name:?} shape {dims:?} overflows 64-bit element or byte counts")]
    ShapeOverflow { name: String, dims: Vec<u64> },
    #[error("tensor {tensor:?} has unknown ggml type id {id}")]
    UnknownDType { tensor: String, id: u32 },
    #[error("tensor {name:?}: row length {row_len} is not a multiple of {dtype}'s block size {block_size}")]
    NotWholeBlocks {
        name: String,
        row_len: u64,
        dtype: orchard_core::DType,
        block_size: u64,
    },
    #[error("tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {name:?} at absolute offset {offset} with {len} bytes runs past the end of the {file_len}-byte file")]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error("tensor {name:?} overlaps tensor {other:?}")]
    TensorOverlap { name: String, other: String },
    #[error("tensor {name:?}: data is {got} bytes, its shape and type need {expected}")]
    DataLengthMismatch {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("array {key:?} mixes value types {first} and {other}, GGUF arrays are homogeneous")]
    HeterogeneousArray {
        key: String,
        first: &'static str,
        other: &'static str,
    },
    #[error("cannot hold {bytes} bytes in memory")]
    TooLarge { bytes: u64 },
}
