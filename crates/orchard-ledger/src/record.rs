//! The one-row-per-request usage record, the unit the ledger stores and every report aggregates.

use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};

/// How a request ended. Every request gets a row, so failed, cancelled and rate-limited ones are
/// visible in reports (and a rejection never counts as spend unless it carries a cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Ok,
    Error,
    Cancelled,
    Rejected,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Ok => "ok",
            RequestStatus::Error => "error",
            RequestStatus::Cancelled => "cancelled",
            RequestStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ok" => Ok(RequestStatus::Ok),
            "error" => Ok(RequestStatus::Error),
            "cancelled" => Ok(RequestStatus::Cancelled),
            "rejected" => Ok(RequestStatus::Rejected),
            other => Err(LedgerError::CorruptValue {
                column: "status",
                value: other.to_owned(),
            }),
        }
    }
}

/// One request as the ledger records it. Times are milliseconds; `ts_ms` is Unix ms (UTC) of the
/// request's arrival. `device_ms` is the device time attributed to this request (its share of every
/// batched engine step it took part in, see [`crate::cost::split_step_time`]), which is what cost is
/// charged on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Unique per request across the fleet; the idempotence key (a retried insert is a no-op).
    pub request_id: String,
    pub ts_ms: i64,
    pub tenant: String,
    pub key_id: String,
    pub model: String,
    pub endpoint: String,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub queue_ms: f64,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    pub device_ms: f64,
    pub status: RequestStatus,
    pub http_status: u16,
    pub node: String,
    pub cost_usd: f64,
}

impl UsageRecord {
    /// A record with every counter zero, for callers that fill fields as a request progresses.
    pub fn new(
        request_id: impl Into<String>,
        tenant: impl Into<String>,
        key_id: impl Into<String>,
    ) -> Self {
        UsageRecord {
            request_id: request_id.into(),
            ts_ms: crate::time::now_ms(),
            tenant: tenant.into(),
            key_id: key_id.into(),
            model: String::new(),
            endpoint: String::new(),
            prompt_tokens: 0,
            cached_prompt_tokens: 0,
            generated_tokens: 0,
            queue_ms: 0.0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            device_ms: 0.0,
            status: RequestStatus::Ok,
            http_status: 200,
            node: String::new(),
            cost_usd: 0.0,
        }
    }

    /// Prompt plus generated tokens: what tokens-per-minute limits count.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.generated_tokens)
    }

    /// Makes the record storable everywhere: PostgreSQL rejects NUL bytes in text and both stores
    /// keep integers as signed 64-bit, and a non-finite float would poison every sum it enters.
    pub(crate) fn sanitized(&self) -> UsageRecord {
        fn clean(s: &str) -> String {
            if s.contains('\0') {
                s.replace('\0', "\u{FFFD}")
            } else {
                s.to_owned()
            }
        }
        fn finite(x: f64) -> f64 {
            if x.is_finite() {
                x
            } else {
                0.0
            }
        }
        UsageRecord {
            request_id: clean(&self.request_id),
            ts_ms: self.ts_ms,
            tenant: clean(&self.tenant),
            key_id: clean(&self.key_id),
            model: clean(&self.model),
            endpoint: clean(&self.endpoint),
            prompt_tokens: self.prompt_tokens.min(i64::MAX as u64),
            cached_prompt_tokens: self.cached_prompt_tokens.min(i64::MAX as u64),
            generated_tokens: self.generated_tokens.min(i64::MAX as u64),
            queue_ms: finite(self.queue_ms),
            prompt_ms: finite(self.prompt_ms),
            generation_ms: finite(self.generation_ms),
            device_ms: finite(self.device_ms),
            status: self.status,
            http_status: self.http_status,
            node: clean(&self.node),
            cost_usd: finite(self.cost_usd),
        }
    }
}
