//! Vocabulary shared by every Orchard crate: element types (ggml's numbering), token and sequence
//! ids. Kept tiny so that every other crate can depend on it without pulling anything in.

mod dtype;

pub use dtype::DType;
pub use half::{bf16, f16};

/// A token id as it appears in the GGUF vocabulary.
pub type TokenId = u32;

/// Identifies one sequence (one request's conversation) inside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u32);
