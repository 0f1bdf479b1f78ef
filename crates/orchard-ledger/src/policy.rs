//! Budget and rate-limit settings as they are stored on keys and tenants; shared by the key store
//! (which persists them) and the limiter (which enforces them).

use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};
pub use crate::time::Period;

/// A spending cap in USD that resets every calendar `period` (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub usd: f64,
    pub period: Period,
}

impl Budget {
    pub fn new(usd: f64, period: Period) -> Result<Self> {
        if !usd.is_finite() || usd < 0.0 {
            return Err(LedgerError::InvalidInput {
                field: "budget_usd",
                reason: format!("{usd} is not a non-negative amount"),
            });
        }
        Ok(Budget { usd, period })
    }
}

/// Per-minute request and token caps; `None` leaves that dimension unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl RateLimits {
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_minute.is_none()
    }
}

/// Decodes the nullable budget columns shared by the tenants and api_keys tables.
pub(crate) fn budget_from_columns(
    usd: Option<f64>,
    period: Option<String>,
) -> Result<Option<Budget>> {
    match (usd, period) {
        (Some(usd), Some(p)) => match Period::parse(&p) {
            Some(period) => Ok(Some(Budget { usd, period })),
            None => Err(LedgerError::CorruptValue {
                column: "budget_period",
                value: p,
            }),
        },
        _ => Ok(None),
    }
}

pub(crate) fn limits_from_columns(rpm: Option<i64>, tpm: Option<i64>) -> Option<RateLimits> {
    let l = RateLimits {
        requests_per_minute: rpm.and_then(|v| u32::try_from(v).ok()),
        tokens_per_minute: tpm.and_then(|v| u64::try_from(v).ok()),
    };
    (!l.is_unlimited()).then_some(l)
}
