//! The error type of this crate: why a GGUF vocabulary could not become a tokenizer.

/// Why [`crate::Tokenizer::from_gguf`] failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("unsupported tokenizer model {model:?} (supported: \"gpt2\" (BPE), \"llama\" (SentencePiece))")]
    UnsupportedModel { model: String },
    #[error("unsupported BPE pre-tokenizer {pre:?}")]
    UnsupportedPre { pre: String },
    #[error("tokenizer metadata {key:?} should be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error(
        "tokenizer metadata {key:?} has {found} entries but the vocabulary has {needed} tokens"
    )]
    TooShort {
        key: String,
        found: usize,
        needed: usize,
    },
    #[error("the vocabulary has {n} tokens, more than token ids can address")]
    TooManyTokens { n: usize },
    #[error(transparent)]
    Gguf(#[from] orchard_gguf::GgufError),
}
