//! GGUF reader (mmap, borrowed tensor views, every count and offset checked against the file
//! before use) and writer (for tests, synthetic models and quantization output).
//!
//! Format: little-endian `GGUF` magic, version (2 or 3), tensor count, metadata count, the
//! metadata entries, the tensor info table, padding up to the alignment, then tensor data whose
//! offsets are relative to the start of that data section. Validation follows llama.cpp's
//! `ggml/src/gguf.cpp` and adds checks it leaves out (zero dims, overlapping tensors, bounds of
//! every tensor against the file, bool bytes, UTF-8).

mod error;
mod layout;
mod metadata;
mod reader;
mod value;
mod writer;

pub use error::GgufError;
pub use metadata::Metadata;
pub use reader::{GgufFile, TensorInfo};
pub use value::{describe_value, Value};
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata key that overrides the alignment (must be a u32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Longest tensor name ggml accepts (`GGML_MAX_NAME` is 64 including the terminating NUL).
pub const MAX_TENSOR_NAME_LEN: usize = 63;
/// How deep arrays of arrays may nest; llama.cpp allows none, we allow a few but bound the
/// recursion so a crafted file cannot exhaust the stack.
pub const MAX_ARRAY_NESTING: usize = 8;

// Models are shared across worker threads behind an Arc; keep that possible.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<GgufFile>();
};
