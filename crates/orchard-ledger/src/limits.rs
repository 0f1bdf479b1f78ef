//! Budgets and rate limits, enforced in memory on the hot path. Spend per budget period comes from
//! the ledger once (and again every refresh interval, so a fleet sees other nodes' spend) and is
//! kept current by `observe`; per-minute request and token limits are token buckets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::keys::AuthedKey;
use crate::policy::{Budget, Period, RateLimits};
use crate::record::UsageRecord;
use crate::store::{LedgerStore, SpendScope};
use crate::time::now_ms;

/// Whether a key's own limit or its tenant's was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    Key,
    Tenant,
}

/// Which limit refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimitKind {
    Budget {
        scope: LimitScope,
        period: Period,
        limit_usd: f64,
        spent_usd: f64,
    },
    RequestsPerMinute {
        scope: LimitScope,
        limit: u32,
    },
    TokensPerMinute {
        scope: LimitScope,
        limit: u64,
    },
}

/// A refusal: the server answers 429 with `Retry-After: retry_after_secs` and `message` as the
/// OpenAI-style error message.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct LimitExceeded {
    pub kind: LimitKind,
    pub retry_after_secs: u64,
    pub message: String,
}

impl LimitExceeded {
    /// OpenAI's error `code` for this refusal.
    pub fn code(&self) -> &'static str {
        match self.kind {
            LimitKind::Budget { .. } => "insufficient_quota",
            _ => "rate_limit_exceeded",
        }
    }
}

/// Limiter knobs.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// How long a period's spend read from the ledger is trusted before re-reading it; only other
    /// nodes' spend needs this (this node's is added by `observe`). `None`: read once per period.
    pub spend_refresh: Option<Duration>,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            spend_refresh: Some(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Spend {
    period_start: i64,
    spent: f64,
    read_at: i64,
}

/// A per-minute bucket: holds up to `capacity`, refills `capacity` per 60 s; tokens can go into
/// debt because a request's size is known only after it ran.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    level: f64,
    at_ms: i64,
}

impl Bucket {
    fn new(capacity: f64, now: i64) -> Self {
        Bucket {
            capacity,
            level: capacity,
            at_ms: now,
        }
    }

    fn refill(&mut self, capacity: f64, now: i64) {
        // A changed limit applies at once, without granting a fresh full bucket.
        self.capacity = capacity;
        let dt = (now - self.at_ms).max(0) as f64;
        self.level = (self.level + dt * capacity / 60_000.0).min(capacity);
        self.at_ms = now.max(self.at_ms);
    }

    /// Seconds until the level reaches `need`.
    fn wait_secs(&self, need: f64) -> u64 {
        if self.capacity <= 0.0 {
            return 60;
        }
        let ms = (need - self.level).max(0.0) * 60_000.0 / self.capacity;
        ((ms / 1000.0).ceil() as u64).max(1)
    }
}

#[derive(Default)]
struct State {
    spend: HashMap<SpendScope, Spend>,
    requests: HashMap<SpendScope, Bucket>,
    tokens: HashMap<SpendScope, Bucket>,
}

/// Enforces budgets and rate limits. Share behind an `Arc`. `check` takes a short lock and touches
/// the database only when a budget's spend is not yet known for the period (or is due a refresh).
pub struct Limiter {
    store: Arc<dyn LedgerStore>,
    config: LimiterConfig,
    state: Mutex<State>,
}

fn scope_of(s: &SpendScope) -> LimitScope {
    match s {
        SpendScope::Key(_) => LimitScope::Key,
        SpendScope::Tenant(_) => LimitScope::Tenant,
    }
}

fn describe(s: &SpendScope) -> String {
    match s {
        SpendScope::Key(k) => format!("API key {k}"),
        SpendScope::Tenant(t) => format!("tenant {t:?}"),
    }
}

impl Limiter {
    pub fn new(store: Arc<dyn LedgerStore>) -> Self {
        Self::with_config(store, LimiterConfig::default())
    }

    pub fn with_config(store: Arc<dyn LedgerStore>, config: LimiterConfig) -> Self {
        Limiter {
            store,
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May this key start a request now? Consumes one request from the per-minute allowance when
    /// it may. A database error while reading spend fails open (the request is allowed): refusing
    /// service on a ledger hiccup is worse than a briefly unenforced budget. Use
    /// [`check_strict`](Self::check_strict) to see such errors.
    pub fn check(&self, key: &AuthedKey) -> std::result::Result<(), LimitExceeded> {
        match self.check_strict(key, now_ms()) {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }

    /// [`check`](Self::check) at an explicit time, surfacing database errors.
    pub fn check_strict(
        &self,
        key: &AuthedKey,
        now: i64,
    ) -> Result<std::result::Result<(), LimitExceeded>> {
        let key_scope = SpendScope::Key(key.key_id.as_str().to_owned());
        let tenant_scope = SpendScope::Tenant(key.tenant.clone());
        let budgets: Vec<(SpendScope, Budget)> = [
            (key_scope.clone(), key.budget),
            (tenant_scope.clone(), key.tenant_budget),
        ]
        .into_iter()
        .filter_map(|(s, b)| Some((s, b?)))
        .collect();
        for (scope, budget) in &budgets {
            let spent = self.spent(scope, budget.period, now)?;
            if spent >= budget.usd {
                let (_, end) = budget.period.bounds(now);
                return Ok(Err(LimitExceeded {
                    kind: LimitKind::Budget {
                        scope: scope_of(scope),
                        period: budget.period,
                        limit_usd: budget.usd,
                        spent_usd: spent,
                    },
                    retry_after_secs: (((end - now).max(0) as f64) / 1000.0).ceil().max(1.0) as u64,
                    message: format!(
                        "{} has used ${spent:.4} of its ${:.2} {} budget; it resets at the start of the next {} (UTC)",
                        describe(scope),
                        budget.usd,
                        match budget.period {
                            Period::Day => "daily",
                            Period::Week => "weekly",
                            Period::Month => "monthly",
                        },
                        budget.period.as_str()
                    ),
                }));
            }
        }
        let limits: Vec<(SpendScope, RateLimits)> =
            [(key_scope, key.limits), (tenant_scope, key.tenant_limits)]
                .into_iter()
                .filter_map(|(s, l)| Some((s, l?)))
                .collect();
        if limits.is_empty() {
            return Ok(Ok(()));
        }
        let mut st = self.lock();
        // Check every bucket before consuming any, so a refusal costs the caller nothing.
        for (scope, l) in &limits {
            if let Some(tpm) = l.tokens_per_minute {
                let b = st
                    .tokens
                    .entry(scope.clone())
                    .or_insert_with(|| Bucket::new(tpm as f64, now));
                b.refill(tpm as f64, now);
                if b.level <= 0.0 {
                    return Ok(Err(LimitExceeded {
                        kind: LimitKind::TokensPerMinute {
                            scope: scope_of(scope),
                            limit: tpm,
                        },
                        retry_after_secs: b.wait_secs(f64::MIN_POSITIVE),
                        message: format!(
                            "{} is over its limit of {tpm} tokens per minute",
                            describe(scope)
                        ),
                    }));
                }
            }
            if let Some(rpm) = l.requests_per_minute {
                let b = st
                    .requests
                    .entry(scope.clone())
                    .or_insert_with(|| Bucket::new(f64::from(rpm), now));
                b.refill(f64::from(rpm), now);
                if b.level < 1.0 {
                    return Ok(Err(LimitExceeded {
                        kind: LimitKind::RequestsPerMinute {
                            scope: scope_of(scope),
                            limit: rpm,
                        },
                        retry_after_secs: b.wait_secs(1.0),
                        message: format!(
                            "{} is over its limit of {rpm} requests per minute",
                            describe(scope)
                        ),
                    }));
                }
            }
        }
        for (scope, l) in &limits {
            if l.requests_per_minute.is_some() {
                if let Some(b) = st.requests.get_mut(scope) {
                    b.level -= 1.0;
                }
            }
        }
        Ok(Ok(()))
    }

    /// The period's spend for a scope, from cache or (outside the lock) from the ledger.
    fn spent(&self, scope: &SpendScope, period: Period, now: i64) -> Result<f64> {
        let (start, _) = period.bounds(now);
        let refresh_ms = self
            .config
            .spend_refresh
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        if let Some(s) = self.lock().spend.get(scope) {
            let fresh = refresh_ms.is_none_or(|r| now - s.read_at < r);
            if s.period_start == start && fresh {
                return Ok(s.spent);
            }
        }
        let spent = self.store.spent_since(scope, start)?;
        self.lock().spend.insert(
            scope.clone(),
            Spend {
                period_start: start,
                spent,
                read_at: now,
            },
        );
        Ok(spent)
    }

    /// Accounts a finished request: adds its cost to cached spend and its tokens to the per-minute
    /// token buckets. Call it alongside [`crate::LedgerWriter::record`].
    pub fn observe(&self, row: &UsageRecord) {
        self.observe_at(row, now_ms());
    }

    pub fn observe_at(&self, row: &UsageRecord, now: i64) {
        let mut st = self.lock();
        for scope in [
            SpendScope::Key(row.key_id.clone()),
            SpendScope::Tenant(row.tenant.clone()),
        ] {
            if let Some(s) = st.spend.get_mut(&scope) {
                if row.ts_ms >= s.period_start && row.cost_usd.is_finite() {
                    s.spent += row.cost_usd;
                }
            }
            if let Some(b) = st.tokens.get_mut(&scope) {
                let cap = b.capacity;
                b.refill(cap, now);
                b.level -= row.total_tokens() as f64;
            }
        }
    }

    /// Forgets cached spend so the next check re-reads the ledger (e.g. after a budget change).
    pub fn invalidate(&self) {
        self.lock().spend.clear();
    }
}
