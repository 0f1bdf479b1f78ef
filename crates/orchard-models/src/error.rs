//! Errors of model loading and execution.

use orchard_gguf::GgufError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Backend(#[from] orchard_backend::BackendError),
    #[error("unsupported architecture '{arch}' (this build runs: {})", crate::ARCHITECTURES.iter().map(|a| a.0).collect::<Vec<_>>().join(", "))]
    UnsupportedArchitecture { arch: String },
    #[error("missing tensor '{name}'")]
    MissingTensor { name: String },
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("architecture '{arch}' does not know tensor(s): {}", names.join(", "))]
    UnknownTensors { arch: String, names: Vec<String> },
    #[error("hyper-parameter {key}: {reason}")]
    BadHParam { key: String, reason: String },
    #[error("{source} ({hint})")]
    KvType {
        source: orchard_backend::BackendError,
        hint: &'static str,
    },
    #[error("batch: {0}")]
    BadBatch(String),
}
