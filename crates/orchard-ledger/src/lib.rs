//! Orchard's FinOps layer: a durable per-request usage ledger (SQLite or PostgreSQL), API keys
//! grouped into tenants, a cost model that prices device time, budgets and rate limits, and usage
//! and TCO reports.
//!
//! Hot-path shape, as a server uses it:
//! ```no_run
//! # use std::sync::Arc;
//! # use orchard_ledger::*;
//! let store = open_ledger("sqlite:///var/lib/orchard/ledger.db")?;
//! let keys = KeyStore::new(store.clone());
//! let limiter = Limiter::new(store.clone());
//! let writer = LedgerWriter::spawn(store.clone())?;
//! # let secret = "sk-orch-...";
//! let who = keys.authenticate(secret).map_err(|e| e.to_string()).unwrap(); // 401 on Err
//! limiter.check(&who).map_err(|e| e.to_string()).unwrap();                 // 429 on Err
//! let mut row = UsageRecord::new("req-1", who.tenant.clone(), who.key_id.to_string());
//! // ... serve, fill token counts and device_ms, price it with CostModel::request_cost_usd ...
//! limiter.observe(&row);
//! writer.record_and_wait(row)?.wait()?; // the row is durable before the response ends
//! # Ok::<(), LedgerError>(())
//! ```

pub mod cost;
mod error;
pub mod keys;
pub mod limits;
mod metrics;
mod policy;
mod record;
pub mod report;
pub mod store;
pub mod time;
mod writer;

pub use cost::{
    split_step_time, tco_report, CostModel, DeviceTimeAttributor, TcoReport, Throughput,
};
pub use error::{LedgerError, Result};
pub use keys::{AuthError, AuthedKey, KeyId, KeyInfo, KeyStore, NewKey};
pub use limits::{LimitExceeded, LimitKind, LimitScope, Limiter, LimiterConfig};
pub use metrics::UsageMetrics;
pub use policy::{Budget, Period, RateLimits};
pub use record::{RequestStatus, UsageRecord};
pub use report::{measured_throughput, usage_report};
pub use store::{
    open_ledger, GroupBy, LedgerStore, PhaseTotals, PostgresStore, SpendScope, SqliteStore,
    SqliteSync, UsageRow,
};
pub use writer::{CommitCallback, CommitHandle, LedgerWriter, WriterConfig, WriterStats};
