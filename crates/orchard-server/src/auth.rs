//! Hooks for who may call the server and where finished requests are accounted: the static
//! `--api-key` list is the built-in [`Auth`]; the FinOps ledger (orchard-ledger's KeyStore,
//! Limiter and LedgerWriter) plugs in through the same two traits.

use std::sync::Arc;

/// Who is calling, as far as the server is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// Stable, non-secret id of the key (metrics label, logs). `"anonymous"` without keys.
    pub key_id: String,
    pub tenant: Option<String>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            key_id: "anonymous".into(),
            tenant: None,
        }
    }
}

/// Why a request was refused by the [`Auth`] hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No key, or a key that is not valid: 401.
    Unauthorized,
    /// A valid key over its limits: 429 with an optional Retry-After.
    RateLimited {
        retry_after_secs: Option<u64>,
        message: String,
    },
    /// A valid key that may not use this endpoint or model: 403.
    Forbidden(String),
}

/// Decides who a request comes from. Called for every non-public endpoint with the presented key
/// (`Authorization: Bearer KEY` or `x-api-key: KEY`), if any.
pub trait Auth: Send + Sync {
    fn authenticate(&self, key: Option<&str>, path: &str) -> Result<Principal, AuthError>;
    /// Whether any key is required at all (false: everyone is `anonymous`).
    fn enabled(&self) -> bool;
}

/// What is reported once per finished generation or embedding request.
#[derive(Clone, Debug)]
pub struct UsageRecord {
    pub request_id: u64,
    pub principal: Principal,
    pub model: String,
    pub endpoint: &'static str,
    /// `ok`, `cancelled` or `error`.
    pub status: &'static str,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub queue_ms: f64,
    pub prompt_ms: f64,
    pub gen_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
}

/// Receives one [`UsageRecord`] per finished request (a ledger writer, a billing queue). Must
/// not block: it runs on the request's task.
pub trait UsageSink: Send + Sync {
    fn record(&self, rec: &UsageRecord);
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
                tenant: None,
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
