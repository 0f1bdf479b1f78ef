//! The one error type every handler returns, rendered in OpenAI's error shape
//! `{"error":{"message","type","param","code"}}` with llama-server's status codes and types.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// An HTTP error answer. `kind` is the OpenAI/llama-server `type` string.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<Box<str>>,
    pub code: Option<&'static str>,
    /// Extra fields inside `error` (llama-server's `n_prompt_tokens`/`n_ctx`).
    pub extra: Option<Box<Map<String, Value>>>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            extra: None,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A bad value for one request field.
    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::invalid(message);
        e.param = Some(param.into());
        e.code = Some("invalid_value");
        e
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Invalid API Key",
        )
        .with_code("invalid_api_key")
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    pub fn model_not_found(model: &str) -> ApiError {
        let mut e = ApiError::not_found(format!("The model `{model}` does not exist"))
            .with_code("model_not_found");
        e.param = Some("model".into());
        e
    }

    pub fn not_supported(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            message,
        )
    }

    pub fn loading() -> ApiError {
        ApiError::unavailable("Loading model").with_code("model_loading")
    }

    pub fn queue_full(retry_after: u64, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::unavailable(message).with_code("queue_full");
        e.retry_after = Some(retry_after.max(1));
        e
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than {limit} bytes"),
        )
        .with_code("body_too_large")
    }

    /// The prompt does not fit one sequence's context (llama-server's `exceed_context_size_error`).
    pub fn context_exceeded(n_prompt: usize, n_ctx: usize) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "exceed_context_size_error",
            format!(
                "the request exceeds the available context size: {n_prompt} prompt tokens, context of {n_ctx} tokens"
            ),
        )
        .with_code("context_length_exceeded");
        let mut extra = Map::new();
        extra.insert("n_prompt_tokens".into(), json!(n_prompt));
        extra.insert("n_ctx".into(), json!(n_ctx));
        e.extra = Some(Box::new(extra));
        e
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Value {
        let mut err = Map::new();
        err.insert("message".into(), json!(self.message));
        err.insert("type".into(), json!(self.kind));
        err.insert("param".into(), json!(self.param));
        err.insert("code".into(), json!(self.code));
        for (k, v) in self.extra.iter().flat_map(|m| m.iter()) {
            err.insert(k.clone(), v.clone());
        }
        json!({ "error": Value::Object(err) })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
        }
        r
    }
}

impl From<orchard_engine::SubmitError> for ApiError {
    fn from(e: orchard_engine::SubmitError) -> ApiError {
        use orchard_engine::SubmitError as S;
        match e {
            S::QueueFull { retry_after_secs } => {
                ApiError::queue_full(retry_after_secs, e.to_string())
            }
            S::PromptTooLong { n_prompt, n_ctx } => ApiError::context_exceeded(n_prompt, n_ctx),
            S::EmptyPrompt => ApiError::param("prompt", e.to_string()).with_code("empty_prompt"),
            S::InvalidParams(m) => ApiError::invalid(m),
            S::ShuttingDown => ApiError::unavailable(e.to_string()).with_code("shutting_down"),
            other => ApiError::server(other.to_string()),
        }
    }
}
