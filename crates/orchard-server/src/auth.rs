//! Hooks for who may call the server and where finished requests are accounted: the static
//! `--api-key` list is the built-in [`Auth`]; the FinOps ledger (orchard-ledger's KeyStore,
//! Limiter and LedgerWriter) plugs in through the same two traits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Who is calling, as far as the server is concerned, and (for hooks that account usage) which
/// request this is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// Stable, non-secret id of the key (metrics label, logs). `"anonymous"` without keys.
    pub key_id: String,
    pub tenant: Option<String>,
    /// May read every tenant's usage (`GET /v1/usage`).
    pub admin: bool,
    /// This request's id in the usage ledger, unique across restarts and nodes; sent back as
    /// `X-Request-Id`. `None` when no ledger is configured.
    pub request_id: Option<String>,
    /// Set once a usage record was made for this request, so the server can account requests
    /// that failed before they reached the engine.
    pub recorded: RecordedFlag,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            key_id: "anonymous".into(),
            ..Principal::default()
        }
    }
}

/// A flag shared by every clone of one request's [`Principal`]. It never makes two principals
/// differ: equality compares who is calling, not how far a request got.
#[derive(Clone, Debug, Default)]
pub struct RecordedFlag(Arc<AtomicBool>);

impl RecordedFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl PartialEq for RecordedFlag {
    fn eq(&self, _: &RecordedFlag) -> bool {
        true
    }
}
impl Eq for RecordedFlag {}

/// Why a request was refused by the [`Auth`] hook.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// No key, or a key that is not valid: 401.
    Unauthorized,
    /// A valid key over its limits: 429 with an optional Retry-After. `code` is OpenAI's error
    /// code (`rate_limit_exceeded`, `insufficient_quota`); `record`, when set, is the refusal as
    /// the usage sink should account it, committed before the 429 is sent.
    RateLimited {
        retry_after_secs: Option<u64>,
        message: String,
        code: &'static str,
        record: Option<Box<UsageRecord>>,
    },
    /// A valid key that may not use this endpoint or model: 403.
    Forbidden(String),
    /// The key could not be checked (the key store is unreachable): 503, never a 401.
    Unavailable(String),
}

/// Decides who a request comes from. Called for every non-public endpoint with the presented key
/// (`Authorization: Bearer KEY` or `x-api-key: KEY`), if any.
pub trait Auth: Send + Sync {
    fn authenticate(&self, key: Option<&str>, path: &str) -> Result<Principal, AuthError>;
    /// Whether any key is required at all (false: everyone is `anonymous`).
    fn enabled(&self) -> bool;
    /// Whether `authenticate` may block (a database lookup); the server then calls it on a
    /// blocking thread.
    fn may_block(&self) -> bool {
        false
    }
}

/// What is reported once per finished generation or embedding request (one per choice), and
/// once per request refused before it reached the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    /// The engine's request id (0 when the request never reached the engine).
    pub request_id: u64,
    /// Which choice of the HTTP request (OpenAI's `n`) this is; 0 for the first.
    pub choice: usize,
    pub principal: Principal,
    pub model: String,
    pub endpoint: String,
    /// `ok`, `cancelled`, `error` or `rejected`.
    pub status: &'static str,
    /// The HTTP status the client got (200 for finished generations).
    pub http_status: u16,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub queue_ms: f64,
    pub prompt_ms: f64,
    pub gen_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
    /// The request's share of forward-pass time (each batched step split by its tokens).
    pub device_ms: f64,
}

/// A usage report as `(content type, body)`, or why there is none as `(HTTP status, message)`.
pub type UsageReport = Result<(&'static str, String), (u16, String)>;

/// Receives one [`UsageRecord`] per finished request (a ledger writer, a billing queue). Must
/// not block: it runs on the engine thread or the request's task.
pub trait UsageSink: Send + Sync {
    fn record(&self, rec: &UsageRecord);

    /// Records and calls `then` once the record is durable; the server sends the end of the
    /// response from `then`, so a finished response implies a stored record. `then` may run on
    /// another thread. The default records and calls `then` at once.
    fn record_then(&self, rec: &UsageRecord, then: Box<dyn FnOnce() + Send>) {
        self.record(rec);
        then();
    }

    /// Prometheus text appended to `/metrics` (counters the sink keeps).
    fn render_metrics(&self) -> String {
        String::new()
    }

    /// `GET /v1/usage` with the URL's query string: `(content type, body)`, or `(HTTP status,
    /// message)` on failure; `None` when this sink keeps no reports (404). May block on a
    /// database: the server calls it off the async workers.
    fn usage_report(&self, _query: &str) -> Option<UsageReport> {
        None
    }

    /// Commits whatever is still queued; called once at shutdown.
    fn close(&self) {}
}

/// Drops every record.
pub struct NoUsageSink;
impl UsageSink for NoUsageSink {
    fn record(&self, _rec: &UsageRecord) {}
}

/// The `--api-key` / `--api-key-file` list. Key ids are `key-<n>` in the order given, so
/// metrics never show a secret.
pub struct StaticKeys {
    keys: Vec<String>,
}

impl StaticKeys {
    pub fn new(keys: Vec<String>) -> StaticKeys {
        StaticKeys { keys }
    }
}

/// Compares without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth for StaticKeys {
    fn authenticate(&self, key: Option<&str>, _path: &str) -> Result<Principal, AuthError> {
        if self.keys.is_empty() {
            return Ok(Principal::anonymous());
        }
        let key = key.ok_or(AuthError::Unauthorized)?;
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if ct_eq(k.as_bytes(), key.as_bytes()) {
                found = Some(i);
            }
        }
        match found {
            Some(i) => Ok(Principal {
                key_id: format!("key-{i}"),
                ..Principal::default()
            }),
            None => Err(AuthError::Unauthorized),
        }
    }

    fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// The hooks the server runs with.
#[derive(Clone)]
pub struct Hooks {
    pub auth: Arc<dyn Auth>,
    pub usage: Arc<dyn UsageSink>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_keys_identify_by_index_and_refuse_others() {
        let k = StaticKeys::new(vec!["a".into(), "bb".into()]);
        assert!(k.enabled());
        assert_eq!(k.authenticate(Some("bb"), "/").unwrap().key_id, "key-1");
        assert_eq!(k.authenticate(Some("b"), "/"), Err(AuthError::Unauthorized));
        assert_eq!(k.authenticate(None, "/"), Err(AuthError::Unauthorized));
        let open = StaticKeys::new(vec![]);
        assert_eq!(open.authenticate(None, "/").unwrap().key_id, "anonymous");
    }
}
