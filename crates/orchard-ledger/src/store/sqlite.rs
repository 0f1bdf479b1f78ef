//! SQLite ledger: the single-node default. WAL mode so reports and key lookups read while the
//! writer thread commits, and `synchronous=FULL` by default so a committed batch survives power
//! loss, not only a process crash (see the crate README for the argument).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{GroupBy, KeyRecord, LedgerStore, PhaseTotals, SpendScope, TenantRecord, UsageRow};
use crate::error::{LedgerError, Result};
use crate::policy::{budget_from_columns, limits_from_columns, Budget, RateLimits};
use crate::record::{RequestStatus, UsageRecord};

/// Ordered migrations; migration `i` brings the schema to version `i + 1`. Never edit a released
/// entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // v1: tenants, keys and the usage ledger.
    "CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        budget_usd REAL,
        budget_period TEXT,
        rpm INTEGER,
        tpm INTEGER
    );
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        secret_hash TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        admin INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER,
        budget_usd REAL,
        budget_period TEXT,
        rpm INTEGER,
        tpm INTEGER
    );
    CREATE TABLE usage_ledger (
        request_id TEXT NOT NULL UNIQUE,
        ts_ms INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        cached_prompt_tokens INTEGER NOT NULL,
        generated_tokens INTEGER NOT NULL,
        queue_ms REAL NOT NULL,
        prompt_ms REAL NOT NULL,
        generation_ms REAL NOT NULL,
        device_ms REAL NOT NULL,
        status TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        node TEXT NOT NULL,
        cost_usd REAL NOT NULL
    );",
    // v2: indexes for time-ranged reports; the per-scope ones cover cost_usd so budget sums
    // read only the index.
    "CREATE INDEX usage_ledger_ts ON usage_ledger(ts_ms);
    CREATE INDEX usage_ledger_tenant_ts ON usage_ledger(tenant, ts_ms, cost_usd);
    CREATE INDEX usage_ledger_key_ts ON usage_ledger(key_id, ts_ms, cost_usd);
    CREATE INDEX api_keys_tenant ON api_keys(tenant);",
];

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    /// fsync the WAL on every commit: committed rows survive power loss and OS crashes.
    Full,
    /// fsync only at checkpoints: committed rows survive a process kill but the last commits may
    /// roll back on power loss.
    Normal,
}

/// SQLite-backed [`LedgerStore`]. Two connections so that reads (reports, key lookups) never wait
/// behind a batch commit of the writer thread, which WAL allows.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

const RECORD_COLUMNS: &str = "request_id, ts_ms, tenant, key_id, model, endpoint, prompt_tokens, \
    cached_prompt_tokens, generated_tokens, queue_ms, prompt_ms, generation_ms, device_ms, status, \
    http_status, node, cost_usd";

const KEY_COLUMNS: &str = "key_id, tenant, secret_hash, label, admin, created_ms, revoked_ms, \
    budget_usd, budget_period, rpm, tpm";

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves the connection itself usable: SQLite rolls back any
    // open transaction when the next one begins.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Opens with `synchronous=FULL`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteSync::Full)
    }

    pub fn open_with(path: impl AsRef<Path>, sync: SqliteSync) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open = |p: &Path| -> Result<Connection> {
            let c = Connection::open(p).map_err(|source| LedgerError::Sqlite {
                path: p.to_path_buf(),
                source,
            })?;
            let sync_str = match sync {
                SqliteSync::Full => "FULL",
                SqliteSync::Normal => "NORMAL",
            };
            c.execute_batch(&format!(
                "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = {sync_str}; PRAGMA foreign_keys = ON;"
            ))
            .map_err(|source| LedgerError::Sqlite {
                path: p.to_path_buf(),
                source,
            })?;
            Ok(c)
        };
        let writer = open(&path)?;
        let store = SqliteStore {
            reader: Mutex::new(open(&path)?),
            writer: Mutex::new(writer),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn read_key(
        row: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<(KeyRecord, Option<f64>, Option<String>)> {
        Ok((
            KeyRecord {
                key_id: row.get(0)?,
                tenant: row.get(1)?,
                secret_hash: row.get(2)?,
                label: row.get(3)?,
                admin: row.get::<_, i64>(4)? != 0,
                created_ms: row.get(5)?,
                revoked_ms: row.get(6)?,
                budget: None,
                limits: limits_from_columns(row.get(9)?, row.get(10)?),
            },
            row.get(7)?,
            row.get(8)?,
        ))
    }

    fn read_tenant(
        row: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<(TenantRecord, Option<f64>, Option<String>)> {
        Ok((
            TenantRecord {
                name: row.get(0)?,
                created_ms: row.get(1)?,
                budget: None,
                limits: limits_from_columns(row.get(4)?, row.get(5)?),
            },
            row.get(2)?,
            row.get(3)?,
        ))
    }
}

fn finish_key(parts: (KeyRecord, Option<f64>, Option<String>)) -> Result<KeyRecord> {
    let (mut k, usd, period) = parts;
    k.budget = budget_from_columns(usd, period)?;
    Ok(k)
}

fn finish_tenant(parts: (TenantRecord, Option<f64>, Option<String>)) -> Result<TenantRecord> {
    let (mut t, usd, period) = parts;
    t.budget = budget_from_columns(usd, period)?;
    Ok(t)
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

impl LedgerStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn schema_version(&self) -> Result<i64> {
        let c = lock(&self.reader);
        c.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    fn migrate(&self) -> Result<usize> {
        let mut c = lock(&self.writer);
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )
        .map_err(|e| self.err(e))?;
        // IMMEDIATE takes the write lock up front so two processes opening a fresh file cannot
        // both decide to run migration 1.
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let current: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let supported = MIGRATIONS.len() as i64;
        if current > supported {
            return Err(LedgerError::SchemaTooNew {
                found: current,
                supported,
            });
        }
        let mut applied = 0;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql).map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
                params![i as i64 + 1, crate::time::now_ms()],
            )
            .map_err(|e| self.err(e))?;
            applied += 1;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(applied)
    }

    fn insert_batch(&self, rows: &[UsageRecord]) -> Result<usize> {
        let mut c = lock(&self.writer);
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let mut inserted = 0;
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO usage_ledger ({RECORD_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
                     ON CONFLICT(request_id) DO NOTHING"
                ))
                .map_err(|e| self.err(e))?;
            for r in rows {
                let r = r.sanitized();
                inserted += stmt
                    .execute(params![
                        r.request_id,
                        r.ts_ms,
                        r.tenant,
                        r.key_id,
                        r.model,
                        r.endpoint,
                        to_i64(r.prompt_tokens),
                        to_i64(r.cached_prompt_tokens),
                        to_i64(r.generated_tokens),
                        r.queue_ms,
                        r.prompt_ms,
                        r.generation_ms,
                        r.device_ms,
                        r.status.as_str(),
                        i64::from(r.http_status),
                        r.node,
                        r.cost_usd,
                    ])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(inserted)
    }

    fn get_record(&self, request_id: &str) -> Result<Option<UsageRecord>> {
        let c = lock(&self.reader);
        let row = c
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM usage_ledger WHERE request_id = ?1"),
                [request_id],
                |r| {
                    Ok((
                        UsageRecord {
                            request_id: r.get(0)?,
                            ts_ms: r.get(1)?,
                            tenant: r.get(2)?,
                            key_id: r.get(3)?,
                            model: r.get(4)?,
                            endpoint: r.get(5)?,
                            prompt_tokens: to_u64(r.get(6)?),
                            cached_prompt_tokens: to_u64(r.get(7)?),
                            generated_tokens: to_u64(r.get(8)?),
                            queue_ms: r.get(9)?,
                            prompt_ms: r.get(10)?,
                            generation_ms: r.get(11)?,
                            device_ms: r.get(12)?,
                            status: RequestStatus::Ok,
                            http_status: u16::try_from(r.get::<_, i64>(14)?).unwrap_or(0),
                            node: r.get(15)?,
                            cost_usd: r.get(16)?,
                        },
                        r.get::<_, String>(13)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match row {
            Some((mut rec, status)) => {
                rec.status = RequestStatus::parse(&status)?;
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    fn count_request(&self, request_id: &str) -> Result<u64> {
        let c = lock(&self.reader);
        c.query_row(
            "SELECT COUNT(*) FROM usage_ledger WHERE request_id = ?1",
            [request_id],
            |r| r.get::<_, i64>(0),
        )
        .map(to_u64)
        .map_err(|e| self.err(e))
    }

    fn count_records(&self) -> Result<u64> {
        let c = lock(&self.reader);
        c.query_row("SELECT COUNT(*) FROM usage_ledger", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(to_u64)
        .map_err(|e| self.err(e))
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
            "SELECT {expr} AS g, COUNT(*), SUM(prompt_tokens), SUM(cached_prompt_tokens), \
             SUM(generated_tokens), SUM(device_ms), SUM(cost_usd), \
             SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END) \
             FROM usage_ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY g ORDER BY g"
        );
        let c = lock(&self.reader);
        let mut stmt = c.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![since_ms.unwrap_or(i64::MIN), until_ms.unwrap_or(i64::MAX)],
                |r| {
                    let group = match group_by {
                        GroupBy::Day => {
                            crate::time::format_day(r.get::<_, i64>(0)? * crate::time::MS_PER_DAY)
                        }
                        _ => r.get(0)?,
                    };
                    Ok(UsageRow {
                        group,
                        requests: to_u64(r.get(1)?),
                        prompt_tokens: to_u64(r.get(2)?),
                        cached_tokens: to_u64(r.get(3)?),
                        generated_tokens: to_u64(r.get(4)?),
                        device_ms: r.get(5)?,
                        cost_usd: r.get(6)?,
                        rejected: to_u64(r.get(7)?),
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    fn phase_totals(&self, since_ms: Option<i64>, until_ms: Option<i64>) -> Result<PhaseTotals> {
        let c = lock(&self.reader);
        c.query_row(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cached_prompt_tokens), 0), \
             COALESCE(SUM(generated_tokens), 0), COALESCE(SUM(prompt_ms), 0.0), \
             COALESCE(SUM(generation_ms), 0.0), COALESCE(SUM(device_ms), 0.0), MIN(ts_ms), MAX(ts_ms) \
             FROM usage_ledger WHERE ts_ms >= ?1 AND ts_ms < ?2",
            params![since_ms.unwrap_or(i64::MIN), until_ms.unwrap_or(i64::MAX)],
            |r| {
                Ok(PhaseTotals {
                    requests: to_u64(r.get(0)?),
                    prompt_tokens: to_u64(r.get(1)?),
                    cached_prompt_tokens: to_u64(r.get(2)?),
                    generated_tokens: to_u64(r.get(3)?),
                    prompt_ms: r.get(4)?,
                    generation_ms: r.get(5)?,
                    device_ms: r.get(6)?,
                    first_ts_ms: r.get(7)?,
                    last_ts_ms: r.get(8)?,
                })
            },
        )
        .map_err(|e| self.err(e))
    }

    fn spent_since(&self, scope: &SpendScope, since_ms: i64) -> Result<f64> {
        let (col, val) = match scope {
            SpendScope::Key(k) => ("key_id", k),
            SpendScope::Tenant(t) => ("tenant", t),
        };
        let c = lock(&self.reader);
        c.query_row(
            &format!("SELECT COALESCE(SUM(cost_usd), 0.0) FROM usage_ledger WHERE {col} = ?1 AND ts_ms >= ?2"),
            params![val, since_ms],
            |r| r.get(0),
        )
        .map_err(|e| self.err(e))
    }

    fn integrity_check(&self) -> Result<Vec<String>> {
        let c = lock(&self.reader);
        let mut stmt = c
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let msgs = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        Ok(msgs.into_iter().filter(|m| m != "ok").collect())
    }

    fn ensure_tenant(&self, name: &str, now_ms: i64) -> Result<()> {
        let c = lock(&self.writer);
        c.execute(
            "INSERT INTO tenants (name, created_ms) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![name, now_ms],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        let c = lock(&self.reader);
        let t = c
            .query_row(
                "SELECT name, created_ms, budget_usd, budget_period, rpm, tpm FROM tenants WHERE name = ?1",
                [name],
                Self::read_tenant,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        t.map(finish_tenant).transpose()
    }

    fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        let c = lock(&self.reader);
        let mut stmt = c
            .prepare("SELECT name, created_ms, budget_usd, budget_period, rpm, tpm FROM tenants ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], Self::read_tenant)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter().map(finish_tenant).collect()
    }

    fn set_tenant_policy(
        &self,
        name: &str,
        budget: Option<Budget>,
        limits: Option<RateLimits>,
        now_ms: i64,
    ) -> Result<()> {
        let (usd, period, rpm, tpm) = policy_columns(budget, limits);
        let c = lock(&self.writer);
        c.execute(
            "INSERT INTO tenants (name, created_ms, budget_usd, budget_period, rpm, tpm) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(name) DO UPDATE SET \
             budget_usd = excluded.budget_usd, budget_period = excluded.budget_period, \
             rpm = excluded.rpm, tpm = excluded.tpm",
            params![name, now_ms, usd, period, rpm, tpm],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        let (usd, period, rpm, tpm) = policy_columns(key.budget, key.limits);
        let c = lock(&self.writer);
        c.execute(
            &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                key.key_id,
                key.tenant,
                key.secret_hash,
                key.label,
                i64::from(key.admin),
                key.created_ms,
                key.revoked_ms,
                usd,
                period,
                rpm,
                tpm
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        let c = lock(&self.reader);
        let k = c
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?1"),
                [key_id],
                Self::read_key,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        k.map(finish_key).transpose()
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let c = lock(&self.reader);
        let mut stmt = c
            .prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY tenant, created_ms, key_id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], Self::read_key)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter().map(finish_key).collect()
    }

    fn revoke_key(&self, key_id: &str, now_ms: i64) -> Result<bool> {
        let c = lock(&self.writer);
        let n = c
            .execute(
                "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE key_id = ?1",
                params![key_id, now_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }
}
