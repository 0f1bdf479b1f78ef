//! The storage interface behind the ledger and key store, with one implementation per database:
//! SQLite for a single node (the default) and PostgreSQL for a fleet sharing one ledger.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};
use crate::policy::{Budget, RateLimits};
use crate::record::UsageRecord;

mod postgres;
mod sqlite;

pub use self::postgres::PostgresStore;
pub use self::sqlite::{SqliteStore, SqliteSync};

/// What a usage report groups rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Tenant,
    Key,
    Model,
    /// UTC calendar day of the request's arrival, rendered `YYYY-MM-DD`.
    Day,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s.to_ascii_lowercase().as_str() {
            "tenant" => Some(GroupBy::Tenant),
            "key" | "key_id" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "day" | "date" => Some(GroupBy::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Tenant => "tenant",
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

/// One line of a usage report. `requests` counts every row (rejected ones included); `rejected`
/// says how many of them were refused by a budget or rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub group: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub generated_tokens: u64,
    pub device_ms: f64,
    pub cost_usd: f64,
    pub rejected: u64,
}

/// Ledger-wide sums over a time window, from which measured throughput is estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PhaseTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    pub device_ms: f64,
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
}

/// Whose spending a budget query sums.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpendScope {
    Key(String),
    Tenant(String),
}

/// A stored API key. The secret itself is never stored, only its argon2 PHC string.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant: String,
    pub secret_hash: String,
    pub label: String,
    pub admin: bool,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub budget: Option<Budget>,
    pub limits: Option<RateLimits>,
}

/// A stored tenant with its own (tenant-wide) budget and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub name: String,
    pub created_ms: i64,
    pub budget: Option<Budget>,
    pub limits: Option<RateLimits>,
}

/// Persistence used by [`crate::LedgerWriter`], [`crate::KeyStore`], [`crate::Limiter`] and the
/// reports. Calls block on the database; the hot path reaches them only through the writer thread
/// and caches.
pub trait LedgerStore: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// Highest migration applied.
    fn schema_version(&self) -> Result<i64>;
    /// Applies pending migrations; returns how many ran (0 when up to date).
    fn migrate(&self) -> Result<usize>;
    /// Inserts rows in one transaction, skipping request ids already present; returns how many
    /// rows were new.
    fn insert_batch(&self, rows: &[UsageRecord]) -> Result<usize>;
    fn get_record(&self, request_id: &str) -> Result<Option<UsageRecord>>;
    /// How many rows carry this request id (0 or 1 while the unique constraint holds).
    fn count_request(&self, request_id: &str) -> Result<u64>;
    fn count_records(&self) -> Result<u64>;
    /// Aggregates rows with `since <= ts_ms < until` (either bound optional), ordered by group.
    fn usage_report(
        &self,
        group_by: GroupBy,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<UsageRow>>;
    /// Sums for throughput estimation over `since <= ts_ms < until`.
    fn phase_totals(&self, since_ms: Option<i64>, until_ms: Option<i64>) -> Result<PhaseTotals>;
    /// Sum of `cost_usd` for the scope over rows with `ts_ms >= since_ms`.
    fn spent_since(&self, scope: &SpendScope, since_ms: i64) -> Result<f64>;
    /// Database-level consistency check; an empty list means healthy.
    fn integrity_check(&self) -> Result<Vec<String>>;

    /// Creates the tenant if missing; never changes an existing one.
    fn ensure_tenant(&self, name: &str, now_ms: i64) -> Result<()>;
    fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>>;
    fn list_tenants(&self) -> Result<Vec<TenantRecord>>;
    /// Sets a tenant's budget and limits (creating the tenant if missing).
    fn set_tenant_policy(
        &self,
        name: &str,
        budget: Option<Budget>,
        limits: Option<RateLimits>,
        now_ms: i64,
    ) -> Result<()>;
    /// Inserts a new key; fails if the id exists.
    fn insert_key(&self, key: &KeyRecord) -> Result<()>;
    fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>>;
    fn list_keys(&self) -> Result<Vec<KeyRecord>>;
    /// Marks a key revoked; `false` if no such key (revoking twice keeps the first time).
    fn revoke_key(&self, key_id: &str, now_ms: i64) -> Result<bool>;
}

/// Opens (creating if needed) and migrates a ledger by URL:
/// `sqlite:///abs/path.db`, `sqlite://relative.db`, a bare path, or `postgres://user@host/db`.
/// SQLite takes `?synchronous=full|normal` (default full); PostgreSQL takes `?schema=NAME` to keep
/// the ledger's tables in their own schema.
pub fn open_ledger(url: &str) -> Result<Arc<dyn LedgerStore>> {
    let bad = |reason: &str| LedgerError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::open(url)?));
    }
    let (rest, query) = match url.strip_prefix("sqlite://") {
        Some(rest) => match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        },
        None if url.contains("://") => {
            return Err(bad("unknown scheme (use sqlite:// or postgres://)"))
        }
        None => (url, None),
    };
    if rest.is_empty() {
        return Err(bad("empty path"));
    }
    let mut sync = SqliteSync::Full;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("synchronous", v)) => {
                sync = match v.to_ascii_lowercase().as_str() {
                    "full" => SqliteSync::Full,
                    "normal" => SqliteSync::Normal,
                    _ => return Err(bad("synchronous must be full or normal")),
                }
            }
            _ => {
                return Err(bad(
                    "unknown query parameter (only synchronous=full|normal)",
                ))
            }
        }
    }
    Ok(Arc::new(SqliteStore::open_with(rest, sync)?))
}
