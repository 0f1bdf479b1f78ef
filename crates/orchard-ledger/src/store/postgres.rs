//! PostgreSQL ledger: one database shared by a fleet of nodes. Inserts are idempotent on
//! request_id so a node retrying a batch after a lost acknowledgement never double-counts.

use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use postgres::{Client, NoTls};

use super::{GroupBy, KeyRecord, LedgerStore, PhaseTotals, SpendScope, TenantRecord, UsageRow};
use crate::error::{LedgerError, Result};
use crate::policy::{budget_from_columns, limits_from_columns, Budget, RateLimits};
use crate::record::{RequestStatus, UsageRecord};

/// Ordered migrations, as for SQLite: entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        created_ms BIGINT NOT NULL,
        budget_usd DOUBLE PRECISION,
        budget_period TEXT,
        rpm BIGINT,
        tpm BIGINT
    );
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        secret_hash TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT,
        budget_usd DOUBLE PRECISION,
        budget_period TEXT,
        rpm BIGINT,
        tpm BIGINT
    );
    CREATE TABLE usage_ledger (
        request_id TEXT PRIMARY KEY,
        ts_ms BIGINT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        cached_prompt_tokens BIGINT NOT NULL,
        generated_tokens BIGINT NOT NULL,
        queue_ms DOUBLE PRECISION NOT NULL,
        prompt_ms DOUBLE PRECISION NOT NULL,
        generation_ms DOUBLE PRECISION NOT NULL,
        device_ms DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        node TEXT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL
    );",
    "CREATE INDEX usage_ledger_ts ON usage_ledger(ts_ms);
    CREATE INDEX usage_ledger_tenant_ts ON usage_ledger(tenant, ts_ms, cost_usd);
    CREATE INDEX usage_ledger_key_ts ON usage_ledger(key_id, ts_ms, cost_usd);
    CREATE INDEX api_keys_tenant ON api_keys(tenant);",
];

/// Serialises migrations across every node that opens the ledger at once ("orchard" in ASCII).
const MIGRATION_LOCK: i64 = 0x006f_7263_6861_7264;

const RECORD_COLUMNS: &str = "request_id, ts_ms, tenant, key_id, model, endpoint, prompt_tokens, \
    cached_prompt_tokens, generated_tokens, queue_ms, prompt_ms, generation_ms, device_ms, status, \
    http_status, node, cost_usd";

const KEY_COLUMNS: &str = "key_id, tenant, secret_hash, label, admin, created_ms, revoked_ms, \
    budget_usd, budget_period, rpm, tpm";

/// PostgreSQL-backed [`LedgerStore`]. One connection behind a mutex: the writer thread batches, so
/// the ledger needs little concurrency; it reconnects after the server drops the connection.
pub struct PostgresStore {
    config: postgres::Config,
    schema: Option<String>,
    client: Mutex<Option<Client>>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Splits our own `schema=` parameter off the URL, since libpq-style parsing rejects it.
fn split_schema(url: &str) -> Result<(String, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("schema=") {
            Some(s) => {
                let ok = !s.is_empty()
                    && s.len() <= 63
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !s.as_bytes()[0].is_ascii_digit();
                if !ok {
                    return Err(LedgerError::InvalidUrl {
                        url: url.to_owned(),
                        reason: "schema must be lowercase letters, digits and _".to_owned(),
                    });
                }
                schema = Some(s.to_owned());
            }
            None => kept.push(pair),
        }
    }
    let base = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((base, schema))
}

impl PostgresStore {
    /// Connects, creates the `schema=` schema if given, and migrates.
    pub fn open(url: &str) -> Result<Self> {
        let (base, schema) = split_schema(url)?;
        let config = postgres::Config::from_str(&base).map_err(|e| LedgerError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let store = PostgresStore {
            config,
            schema,
            client: Mutex::new(None),
        };
        store.migrate()?;
        Ok(store)
    }

    fn connect(&self) -> Result<Client> {
        let mut c = self.config.connect(NoTls).map_err(LedgerError::pg)?;
        if let Some(s) = &self.schema {
            // Two nodes creating the schema at once can collide on the catalog; the advisory lock
            // makes the second one wait and then find it present.
            let mut tx = c.transaction().map_err(LedgerError::pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .map_err(LedgerError::pg)?;
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))
                .map_err(LedgerError::pg)?;
            tx.commit().map_err(LedgerError::pg)?;
            c.batch_execute(&format!("SET search_path TO {s}"))
                .map_err(LedgerError::pg)?;
        }
        Ok(c)
    }

    /// Runs `f` on a live connection, reconnecting first if the last one was closed and dropping
    /// it if `f` left it closed, so a database restart costs one failed batch, not the process.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T> {
        let mut guard: MutexGuard<'_, Option<Client>> =
            self.client.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect()?);
        }
        let Some(client) = guard.as_mut() else {
            return Err(LedgerError::WriterClosed);
        };
        let out = f(client);
        if client.is_closed() {
            *guard = None;
        }
        out.map_err(LedgerError::pg)
    }
}

fn key_from_row(r: &postgres::Row) -> Result<KeyRecord> {
    Ok(KeyRecord {
        key_id: r.get(0),
        tenant: r.get(1),
        secret_hash: r.get(2),
        label: r.get(3),
        admin: r.get(4),
        created_ms: r.get(5),
        revoked_ms: r.get(6),
        budget: budget_from_columns(r.get(7), r.get(8))?,
        limits: limits_from_columns(r.get(9), r.get(10)),
    })
}

fn tenant_from_row(r: &postgres::Row) -> Result<TenantRecord> {
    Ok(TenantRecord {
        name: r.get(0),
        created_ms: r.get(1),
        budget: budget_from_columns(r.get(2), r.get(3))?,
        limits: limits_from_columns(r.get(4), r.get(5)),
    })
}

fn policy_columns(
    budget: Option<Budget>,
    limits: Option<RateLimits>,
) -> (Option<f64>, Option<&'static str>, Option<i64>, Option<i64>) {
    let l = limits.unwrap_or_default();
    (
        budget.map(|b| b.usd),
        budget.map(|b| b.period.as_str()),
        l.requests_per_minute.map(i64::from),
        l.tokens_per_minute.map(to_i64),
    )
}

impl LedgerStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn schema_version(&self) -> Result<i64> {
        self.with(|c| {
            c.query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
                &[],
            )
            .map(|r| r.get(0))
        })
    }

    fn migrate(&self) -> Result<usize> {
        let supported = MIGRATIONS.len() as i64;
        let (current, applied) = self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
            )?;
            let current: i64 = tx
                .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version", &[])?
                .get(0);
            if current > supported {
                return Ok((current, 0));
            }
            let mut applied = 0;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO schema_version (version, applied_ms) VALUES ($1, $2)",
                    &[&(i as i64 + 1), &crate::time::now_ms()],
                )?;
                applied += 1;
            }
            tx.commit()?;
            Ok((current, applied))
        })?;
        if current > supported {
            return Err(LedgerError::SchemaTooNew {
                found: current,
                supported,
            });
        }
        Ok(applied)
    }

    fn insert_batch(&self, rows: &[UsageRecord]) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        let rows: Vec<UsageRecord> = rows.iter().map(UsageRecord::sanitized).collect();
        // Column arrays + UNNEST make the whole batch one statement and one round trip.
        let col_s = |f: fn(&UsageRecord) -> &str| {
            rows.iter()
                .map(|r| f(r).to_owned())
                .collect::<Vec<String>>()
        };
        let col_i = |f: fn(&UsageRecord) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let col_f = |f: fn(&UsageRecord) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
        let request_id = col_s(|r| &r.request_id);
        let ts = col_i(|r| r.ts_ms);
        let tenant = col_s(|r| &r.tenant);
        let key_id = col_s(|r| &r.key_id);
        let model = col_s(|r| &r.model);
        let endpoint = col_s(|r| &r.endpoint);
        let pt = col_i(|r| to_i64(r.prompt_tokens));
        let ct = col_i(|r| to_i64(r.cached_prompt_tokens));
        let gt = col_i(|r| to_i64(r.generated_tokens));
        let qms = col_f(|r| r.queue_ms);
        let pms = col_f(|r| r.prompt_ms);
        let gms = col_f(|r| r.generation_ms);
        let dms = col_f(|r| r.device_ms);
        let status = col_s(|r| r.status.as_str());
        let http: Vec<i32> = rows.iter().map(|r| i32::from(r.http_status)).collect();
        let node = col_s(|r| &r.node);
        let cost = col_f(|r| r.cost_usd);
        let sql = format!(
            "INSERT INTO usage_ledger ({RECORD_COLUMNS}) SELECT * FROM UNNEST(\
             $1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], \
             $8::bigint[], $9::bigint[], $10::float8[], $11::float8[], $12::float8[], $13::float8[], \
             $14::text[], $15::int[], $16::text[], $17::float8[]) ON CONFLICT (request_id) DO NOTHING"
        );
        let n = self.with(|c| {
            c.execute(
                &sql,
                &[
                    &request_id,
                    &ts,
                    &tenant,
                    &key_id,
                    &model,
                    &endpoint,
                    &pt,
                    &ct,
                    &gt,
                    &qms,
                    &pms,
                    &gms,
                    &dms,
                    &status,
                    &http,
                    &node,
                    &cost,
                ],
            )
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn get_record(&self, request_id: &str) -> Result<Option<UsageRecord>> {
        let row = self.with(|c| {
            c.query_opt(
                &format!("SELECT {RECORD_COLUMNS} FROM usage_ledger WHERE request_id = $1"),
                &[&request_id],
            )
        })?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(UsageRecord {
            request_id: r.get(0),
            ts_ms: r.get(1),
            tenant: r.get(2),
            key_id: r.get(3),
            model: r.get(4),
            endpoint: r.get(5),
            prompt_tokens: to_u64(r.get(6)),
            cached_prompt_tokens: to_u64(r.get(7)),
            generated_tokens: to_u64(r.get(8)),
            queue_ms: r.get(9),
            prompt_ms: r.get(10),
            generation_ms: r.get(11),
            device_ms: r.get(12),
            status: RequestStatus::parse(r.get(13))?,
            http_status: u16::try_from(r.get::<_, i32>(14)).unwrap_or(0),
            node: r.get(15),
            cost_usd: r.get(16),
        }))
    }

    fn count_request(&self, request_id: &str) -> Result<u64> {
        self.with(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM usage_ledger WHERE request_id = $1",
                &[&request_id],
            )
            .map(|r| to_u64(r.get(0)))
        })
    }

    fn count_records(&self) -> Result<u64> {
        self.with(|c| {
            c.query_one("SELECT COUNT(*) FROM usage_ledger", &[])
                .map(|r| to_u64(r.get(0)))
        })
    }

    fn usage_report(
        &self,
        group_by: GroupBy,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<UsageRow>> {
        let expr = match group_by {
            GroupBy::Tenant => "tenant",
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
            GroupBy::Day => "(ts_ms / 86400000)",
        };
        let sql = format!(
            "SELECT {expr} AS g, COUNT(*), SUM(prompt_tokens)::BIGINT, SUM(cached_prompt_tokens)::BIGINT, \
             SUM(generated_tokens)::BIGINT, SUM(device_ms), SUM(cost_usd), \
             SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END)::BIGINT \
             FROM usage_ledger WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY g ORDER BY g"
        );
        let since = since_ms.unwrap_or(i64::MIN);
        let until = until_ms.unwrap_or(i64::MAX);
        let rows = self.with(|c| c.query(&sql, &[&since, &until]))?;
        Ok(rows
            .iter()
            .map(|r| UsageRow {
                group: match group_by {
                    GroupBy::Day => {
                        crate::time::format_day(r.get::<_, i64>(0) * crate::time::MS_PER_DAY)
                    }
                    _ => r.get(0),
                },
                requests: to_u64(r.get(1)),
                prompt_tokens: to_u64(r.get(2)),
                cached_tokens: to_u64(r.get(3)),
                generated_tokens: to_u64(r.get(4)),
                device_ms: r.get(5),
                cost_usd: r.get(6),
                rejected: to_u64(r.get(7)),
            })
            .collect())
    }

    fn phase_totals(&self, since_ms: Option<i64>, until_ms: Option<i64>) -> Result<PhaseTotals> {
        let since = since_ms.unwrap_or(i64::MIN);
        let until = until_ms.unwrap_or(i64::MAX);
        let r = self.with(|c| {
            c.query_one(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0)::BIGINT, \
                 COALESCE(SUM(cached_prompt_tokens), 0)::BIGINT, COALESCE(SUM(generated_tokens), 0)::BIGINT, \
                 COALESCE(SUM(prompt_ms), 0.0)::float8, COALESCE(SUM(generation_ms), 0.0)::float8, \
                 COALESCE(SUM(device_ms), 0.0)::float8, MIN(ts_ms), MAX(ts_ms) \
                 FROM usage_ledger WHERE ts_ms >= $1 AND ts_ms < $2",
                &[&since, &until],
            )
        })?;
        Ok(PhaseTotals {
            requests: to_u64(r.get(0)),
            prompt_tokens: to_u64(r.get(1)),
            cached_prompt_tokens: to_u64(r.get(2)),
            generated_tokens: to_u64(r.get(3)),
            prompt_ms: r.get(4),
            generation_ms: r.get(5),
            device_ms: r.get(6),
            first_ts_ms: r.get(7),
            last_ts_ms: r.get(8),
        })
    }

    fn spent_since(&self, scope: &SpendScope, since_ms: i64) -> Result<f64> {
        let (col, val) = match scope {
            SpendScope::Key(k) => ("key_id", k),
            SpendScope::Tenant(t) => ("tenant", t),
        };
        let sql = format!("SELECT COALESCE(SUM(cost_usd), 0.0)::float8 FROM usage_ledger WHERE {col} = $1 AND ts_ms >= $2");
        self.with(|c| c.query_one(&sql, &[val, &since_ms]).map(|r| r.get(0)))
    }

    fn integrity_check(&self) -> Result<Vec<String>> {
        // PostgreSQL guards its own pages (and amcheck needs superuser), so check what the ledger
        // promises: request ids unique and the schema fully migrated.
        let (dups, version): (i64, i64) = self.with(|c| {
            let d = c.query_one(
                "SELECT COUNT(*) - COUNT(DISTINCT request_id) FROM usage_ledger",
                &[],
            )?;
            let v = c.query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
                &[],
            )?;
            Ok((d.get(0), v.get(0)))
        })?;
        let mut problems = Vec::new();
        if dups != 0 {
            problems.push(format!("{dups} duplicate request ids in usage_ledger"));
        }
        if version != MIGRATIONS.len() as i64 {
            problems.push(format!(
                "schema version {version}, expected {}",
                MIGRATIONS.len()
            ));
        }
        Ok(problems)
    }

    fn ensure_tenant(&self, name: &str, now_ms: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tenants (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &now_ms],
            )
        })?;
        Ok(())
    }

    fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT name, created_ms, budget_usd, budget_period, rpm, tpm FROM tenants WHERE name = $1",
                &[&name],
            )
        })?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        let rows = self.with(|c| {
            c.query(
                "SELECT name, created_ms, budget_usd, budget_period, rpm, tpm FROM tenants ORDER BY name",
                &[],
            )
        })?;
        rows.iter().map(tenant_from_row).collect()
    }

    fn set_tenant_policy(
        &self,
        name: &str,
        budget: Option<Budget>,
        limits: Option<RateLimits>,
        now_ms: i64,
    ) -> Result<()> {
        let (usd, period, rpm, tpm) = policy_columns(budget, limits);
        self.with(|c| {
            c.execute(
                "INSERT INTO tenants (name, created_ms, budget_usd, budget_period, rpm, tpm) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET \
                 budget_usd = EXCLUDED.budget_usd, budget_period = EXCLUDED.budget_period, \
                 rpm = EXCLUDED.rpm, tpm = EXCLUDED.tpm",
                &[&name, &now_ms, &usd, &period, &rpm, &tpm],
            )
        })?;
        Ok(())
    }

    fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        let (usd, period, rpm, tpm) = policy_columns(key.budget, key.limits);
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
                &[
                    &key.key_id,
                    &key.tenant,
                    &key.secret_hash,
                    &key.label,
                    &key.admin,
                    &key.created_ms,
                    &key.revoked_ms,
                    &usd,
                    &period,
                    &rpm,
                    &tpm,
                ],
            )
        })?;
        Ok(())
    }

    fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        let row = self.with(|c| {
            c.query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"),
                &[&key_id],
            )
        })?;
        row.as_ref().map(key_from_row).transpose()
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let rows = self.with(|c| {
            c.query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY tenant, created_ms, key_id"),
                &[],
            )
        })?;
        rows.iter().map(key_from_row).collect()
    }

    fn revoke_key(&self, key_id: &str, now_ms: i64) -> Result<bool> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $2) WHERE key_id = $1",
                &[&key_id, &now_ms],
            )
        })?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::split_schema;

    #[test]
    fn schema_parameter_is_split_off_and_validated() {
        let (u, s) = split_schema("postgres://u@h/db?schema=ledger_1&sslmode=disable").unwrap();
        assert_eq!(u, "postgres://u@h/db?sslmode=disable");
        assert_eq!(s.as_deref(), Some("ledger_1"));
        let (u, s) = split_schema("postgres://u@h/db").unwrap();
        assert_eq!((u.as_str(), s), ("postgres://u@h/db", None));
        assert!(split_schema("postgres://u@h/db?schema=x;drop").is_err());
        assert!(split_schema("postgres://u@h/db?schema=Upper").is_err());
    }
}
