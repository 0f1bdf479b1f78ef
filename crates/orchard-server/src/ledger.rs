//! The FinOps ledger behind `--ledger`: API keys from the ledger's key store decide who calls
//! (401 for unknown or revoked keys, 429 with `Retry-After` over a budget or rate limit), and every
//! request becomes one row in the usage ledger, committed before the end of its response.
//! Plugs into the server through the [`Auth`] and [`UsageSink`] hooks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchard_ledger as ol;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::auth::{Auth, AuthError, Principal, UsageRecord, UsageReport, UsageSink};
use crate::error::ApiError;
use crate::state::AppState;

/// Ledger flags of `orchard serve` (also read from `ORCHARD_*` environment variables).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LedgerArgs {
    /// Usage ledger: a SQLite file (`orchard-ledger.db`, `sqlite:///var/lib/orchard/ledger.db`)
    /// or `postgres://user@host/db`. Without it no usage is recorded and only `--api-key` applies.
    #[arg(long = "ledger", env = "ORCHARD_LEDGER")]
    pub ledger: Option<String>,
    /// Cost model (TOML, see orchard-ledger's examples/cost-model.toml) that prices each
    /// request's device time; without it rows carry cost 0 and USD budgets never trigger.
    #[arg(long = "cost-config", env = "ORCHARD_COST_CONFIG")]
    pub cost_config: Option<PathBuf>,
    /// This node's name in ledger rows (default: the host name).
    #[arg(long = "node-name", env = "ORCHARD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Admin key(s) that may read `GET /v1/usage` (accounted to the anonymous tenant); repeat or
    /// comma-separate. Keys created with `orchard keys create --admin` are admins too.
    #[arg(long = "admin-key", env = "ORCHARD_ADMIN_KEY", value_delimiter = ',')]
    pub admin_keys: Vec<String>,
}

/// Why the ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LedgerSetupError {
    #[error("opening the ledger {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: ol::LedgerError,
    },
    #[error(transparent)]
    Ledger(#[from] ol::LedgerError),
}

/// Key store, limiter, writer and counters of one server process.
pub struct Ledger {
    store: Arc<dyn ol::LedgerStore>,
    keys: ol::KeyStore,
    limiter: ol::Limiter,
    writer: ol::LedgerWriter,
    cost: Option<ol::CostModel>,
    metrics: ol::UsageMetrics,
    node: String,
    /// Random per process, so request ids never repeat across restarts or nodes.
    boot: String,
    next: AtomicU64,
    /// Whether keys are required: any `--api-key`/`--admin-key`, or any key in the ledger.
    /// Re-read every few seconds while open, so the first `orchard keys create` closes the door
    /// without a restart.
    gate: Mutex<(bool, Instant)>,
    static_keys: bool,
    /// The model name for rows of requests refused before a model was involved.
    model_name: String,
}

const GATE_RECHECK: Duration = Duration::from_secs(2);

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "orchard".to_string())
}

fn boot_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in the time and pid guards against a weak seed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl Ledger {
    /// Opens (and migrates) the ledger, loads the cost model and registers the static keys.
    pub fn open(
        args: &LedgerArgs,
        url: &str,
        api_keys: &[String],
        model_name: String,
    ) -> Result<Ledger, LedgerSetupError> {
        let store = ol::open_ledger(url).map_err(|source| LedgerSetupError::Open {
            url: url.to_string(),
            source,
        })?;
        let cost = match &args.cost_config {
            Some(p) => Some(ol::CostModel::load(p)?),
            None => None,
        };
        let keys = ol::KeyStore::new(store.clone());
        for k in api_keys {
            keys.add_static_key(k, false);
        }
        for k in &args.admin_keys {
            keys.add_static_key(k, true);
        }
        let static_keys = !api_keys.is_empty() || !args.admin_keys.is_empty();
        let has_keys = static_keys || !store.list_keys()?.is_empty();
        let writer = ol::LedgerWriter::spawn(store.clone())?;
        let node = args
            .node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(host_name);
        if cost.is_none() {
            tracing::warn!("--ledger without --cost-config: requests are recorded with cost 0");
        }
        tracing::info!(backend = store.backend(), node = %node, keys_required = has_keys, "usage ledger open");
        Ok(Ledger {
            limiter: ol::Limiter::new(store.clone()),
            store,
            keys,
            writer,
            cost,
            metrics: ol::UsageMetrics::new(),
            node,
            boot: boot_id(),
            next: AtomicU64::new(1),
            gate: Mutex::new((has_keys, Instant::now())),
            static_keys,
            model_name,
        })
    }

    fn new_request_id(&self) -> String {
        format!(
            "{}-{}-{}",
            self.node,
            self.boot,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Whether requests must carry a key.
    fn keys_required(&self) -> bool {
        let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 || self.static_keys {
            return true;
        }
        if g.1.elapsed() >= GATE_RECHECK {
            // A database error keeps the door as it was; the next recheck tries again.
            if let Ok(k) = self.store.list_keys() {
                g.0 = !k.is_empty();
            }
            g.1 = Instant::now();
        }
        g.0
    }

    /// The ledger row for a server record.
    fn row(&self, rec: &UsageRecord) -> ol::UsageRecord {
        let p = &rec.principal;
        let base = p
            .request_id
            .clone()
            .unwrap_or_else(|| self.new_request_id());
        let id = if rec.choice == 0 {
            base
        } else {
            format!("{base}.{}", rec.choice)
        };
        let mut row = ol::UsageRecord::new(
            id,
            p.tenant
                .clone()
                .unwrap_or_else(|| ol::keys::ANONYMOUS_TENANT.to_string()),
            p.key_id.clone(),
        );
        // Arrival time, not the time the row is written.
        row.ts_ms -= rec.total_ms.max(0.0) as i64;
        row.model = if rec.model.is_empty() {
            self.model_name.clone()
        } else {
            rec.model.clone()
        };
        row.endpoint = rec.endpoint.clone();
        row.prompt_tokens = rec.prompt_tokens as u64;
        row.cached_prompt_tokens = rec.cached_tokens as u64;
        row.generated_tokens = rec.completion_tokens as u64;
        row.queue_ms = rec.queue_ms;
        row.prompt_ms = rec.prompt_ms;
        row.generation_ms = rec.gen_ms;
        row.device_ms = rec.device_ms;
        row.status = match rec.status {
            "ok" => ol::RequestStatus::Ok,
            "cancelled" => ol::RequestStatus::Cancelled,
            "rejected" => ol::RequestStatus::Rejected,
            _ => ol::RequestStatus::Error,
        };
        row.http_status = rec.http_status;
        row.node = self.node.clone();
        row.cost_usd = self
            .cost
            .as_ref()
            .map_or(0.0, |c| c.request_cost_usd(rec.device_ms));
        row
    }

    /// `GET /v1/usage?by=tenant|key|model|day&since=..&until=..&format=json|table|csv`.
    fn report(&self, query: &str) -> UsageReport {
        let mut by = ol::GroupBy::Tenant;
        let (mut since, mut until) = (None, None);
        let mut format = "json";
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "by" | "group_by" => {
                    by = ol::GroupBy::parse(&v).ok_or((
                        400,
                        format!("`by` must be tenant, key, model or day, got {v:?}"),
                    ))?
                }
                "since" => {
                    since = Some(ol::time::parse_time(&v).map_err(|e| (400, e.to_string()))?)
                }
                "until" => {
                    until = Some(ol::time::parse_time(&v).map_err(|e| (400, e.to_string()))?)
                }
                "format" => {
                    format = match v.as_str() {
                        "json" => "json",
                        "table" => "table",
                        "csv" => "csv",
                        _ => {
                            return Err((
                                400,
                                format!("`format` must be json, table or csv, got {v:?}"),
                            ))
                        }
                    }
                }
                _ => return Err((400, format!("unknown parameter {k:?}"))),
            }
        }
        let rows = ol::usage_report(self.store.as_ref(), by, since, until)
            .map_err(|e| (500, e.to_string()))?;
        Ok(match format {
            "table" => (
                "text/plain; charset=utf-8",
                ol::report::render_table(by, &rows),
            ),
            "csv" => ("text/csv; charset=utf-8", ol::report::render_csv(by, &rows)),
            _ => ("application/json", ol::report::render_json(by, &rows)),
        })
    }

    /// Commits what is queued; called at shutdown.
    pub fn close(&self) {
        let st = self.writer.close();
        tracing::info!(
            committed = st.committed,
            rejected = st.rejected,
            "usage ledger closed"
        );
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Auth for Ledger {
    fn authenticate(&self, key: Option<&str>, path: &str) -> Result<Principal, AuthError> {
        let Some(secret) = key else {
            if self.keys_required() {
                return Err(AuthError::Unauthorized);
            }
            return Ok(Principal {
                key_id: ol::keys::ANONYMOUS_TENANT.to_string(),
                tenant: Some(ol::keys::ANONYMOUS_TENANT.to_string()),
                request_id: Some(self.new_request_id()),
                ..Principal::default()
            });
        };
        let who = match self.keys.authenticate(secret) {
            Ok(w) => w,
            Err(ol::AuthError::Unavailable { reason }) => {
                tracing::warn!(%reason, "key store unavailable");
                return Err(AuthError::Unavailable(
                    "the API key store is unavailable; try again".to_string(),
                ));
            }
            // Unknown and revoked keys are never accounted: the caller is nobody we know.
            Err(_) => return Err(AuthError::Unauthorized),
        };
        let principal = Principal {
            key_id: who.key_id.to_string(),
            tenant: Some(who.tenant.clone()),
            admin: who.admin,
            request_id: Some(self.new_request_id()),
            ..Principal::default()
        };
        // Reading a report is not metered.
        if path == "/v1/usage" {
            return Ok(principal);
        }
        match self.limiter.check(&who) {
            Ok(()) => Ok(principal),
            Err(limit) => {
                let record = refusal(&principal, path, 429, "rejected");
                Err(AuthError::RateLimited {
                    retry_after_secs: Some(limit.retry_after_secs),
                    code: limit.code(),
                    message: limit.message,
                    record: Some(Box::new(record)),
                })
            }
        }
    }

    fn enabled(&self) -> bool {
        true
    }

    fn may_block(&self) -> bool {
        true
    }
}

/// The record of a request answered with `http_status` before it reached the engine.
pub fn refusal(p: &Principal, path: &str, http_status: u16, status: &'static str) -> UsageRecord {
    UsageRecord {
        request_id: 0,
        choice: 0,
        principal: p.clone(),
        model: String::new(),
        endpoint: endpoint_name(path),
        status,
        http_status,
        prompt_tokens: 0,
        cached_tokens: 0,
        completion_tokens: 0,
        queue_ms: 0.0,
        prompt_ms: 0.0,
        gen_ms: 0.0,
        ttft_ms: 0.0,
        total_ms: 0.0,
        device_ms: 0.0,
    }
}

/// The endpoint as rows name it: the path without `/v1/`.
pub fn endpoint_name(path: &str) -> String {
    let p = path.strip_prefix("/v1").unwrap_or(path);
    p.trim_start_matches('/').to_string()
}

/// Whether a path is a metered inference endpoint (rows are kept for these only).
pub fn is_metered(path: &str) -> bool {
    let p = path.strip_prefix("/v1").unwrap_or(path);
    matches!(
        p,
        "/completion"
            | "/completions"
            | "/chat/completions"
            | "/responses"
            | "/messages"
            | "/embedding"
            | "/embeddings"
    )
}

impl UsageSink for Ledger {
    fn record(&self, rec: &UsageRecord) {
        rec.principal.recorded.set();
        let row = self.row(rec);
        self.limiter.observe(&row);
        self.metrics.observe(&row);
        if let Err(e) = self.writer.record(row) {
            tracing::error!(error = %e, "usage row not recorded");
        }
    }

    fn record_then(&self, rec: &UsageRecord, then: Box<dyn FnOnce() + Send>) {
        rec.principal.recorded.set();
        let row = self.row(rec);
        self.limiter.observe(&row);
        self.metrics.observe(&row);
        let id = row.request_id.clone();
        // `then` sends the response's end: from the writer thread after COMMIT, or here when the
        // writer is already closed (shutdown), so a response never waits forever.
        let then = Arc::new(Mutex::new(Some(then)));
        let then2 = then.clone();
        let cb: ol::CommitCallback = Box::new(move |r| {
            match r {
                Ok(()) => {}
                // The database is unavailable: the response goes out now and the row stays
                // queued in the writer, committed when the database answers again.
                Err(e @ ol::LedgerError::CommitTimeout { .. }) => {
                    tracing::warn!(request_id = %id, error = %e, "usage row still queued: ledger database unavailable")
                }
                Err(e) => tracing::error!(request_id = %id, error = %e, "usage row not committed"),
            }
            run_once(&then2);
        });
        if let Err(e) = self.writer.record_with_callback(row, cb) {
            tracing::error!(error = %e, "usage row not recorded");
            run_once(&then);
        }
    }

    fn render_metrics(&self) -> String {
        self.metrics.render_prometheus()
    }

    fn usage_report(&self, query: &str) -> Option<UsageReport> {
        Some(self.report(query))
    }

    fn close(&self) {
        Ledger::close(self);
    }
}

type Then = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

fn run_once(then: &Then) {
    let f = then.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(f) = f {
        f();
    }
}

/// `GET /v1/usage`: the same report as `orchard usage`, for admin keys only.
pub async fn usage_endpoint(
    State(st): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Response {
    if p.request_id.is_none() {
        return ApiError::not_found("no usage ledger: start the server with --ledger")
            .into_response();
    }
    if !p.admin {
        let mut e = ApiError::invalid("reading usage needs an admin key");
        e.status = StatusCode::FORBIDDEN;
        e.kind = "permission_error";
        return e.into_response();
    }
    let sink = st.hooks.usage.clone();
    let q = query.unwrap_or_default();
    let out = tokio::task::spawn_blocking(move || sink.usage_report(&q)).await;
    match out {
        Ok(Some(Ok((ctype, body)))) => ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        Ok(Some(Err((status, msg)))) => {
            let mut e = if status == 400 {
                ApiError::invalid(msg)
            } else {
                ApiError::server(msg)
            };
            e.status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            e.into_response()
        }
        Ok(None) => {
            ApiError::not_found("no usage ledger: start the server with --ledger").into_response()
        }
        Err(e) => ApiError::server(format!("usage report failed: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_endpoints() {
        assert_eq!(
            percent_decode("2026-01-01T00%3A00%3A00Z"),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(endpoint_name("/v1/chat/completions"), "chat/completions");
        assert!(is_metered("/v1/chat/completions"));
        assert!(is_metered("/completion"));
        assert!(!is_metered("/v1/models"));
        assert!(!is_metered("/v1/usage"));
    }
}
