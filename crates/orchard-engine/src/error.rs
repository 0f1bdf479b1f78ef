//! Errors of starting the engine and of submitting a request: the two places a caller can be
//! refused. Failures of a running request are reported through its own `Event::Error`.

/// Why [`crate::Engine::start`] (or [`crate::Scheduler::new`]) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("invalid engine configuration: {field} {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("tokenizer has {tokenizer} tokens but the model's vocabulary has {model}")]
    VocabMismatch { tokenizer: usize, model: usize },
    #[error(transparent)]
    Model(#[from] orchard_models::ModelError),
    #[error("could not start the engine thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Why a request was refused before it reached the scheduler. The `Display` text is meant for
/// the end user (the HTTP layer puts it into its error body as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("the server is busy: too many requests are waiting, retry in {retry_after_secs} s")]
    QueueFull { retry_after_secs: u64 },
    #[error("the request has {n_prompt} prompt tokens, which does not fit the context of {n_ctx} tokens")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{0}")]
    InvalidParams(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}
