//! Errors of memory planning: the model could not be read, the request makes no sense, or the
//! plan does not fit (the one error `serve` and `run` show to users before refusing to start).

use orchard_models::ModelError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{flag}: {reason}")]
    BadRequest { flag: &'static str, reason: String },
    #[error("{flag} {name}: {reason}")]
    BadCacheType {
        flag: &'static str,
        name: String,
        reason: String,
    },
    /// The plan needs more memory than is available; `message` is [`crate::refusal_message`].
    #[error("{message}")]
    DoesNotFit {
        message: String,
        needed_bytes: u64,
        available_bytes: u64,
    },
}
