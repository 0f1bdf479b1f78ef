//! The store test suite, written once against `dyn LedgerStore` and run by tests/sqlite.rs and
//! tests/postgres.rs, so both backends are held to the same behaviour.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchard_ledger::time::{now_ms, parse_time};
use orchard_ledger::*;

pub fn row(id: &str, tenant: &str, key: &str, model: &str, ts_ms: i64) -> UsageRecord {
    let mut r = UsageRecord::new(id, tenant, key);
    r.ts_ms = ts_ms;
    r.model = model.to_owned();
    r.endpoint = "/v1/chat/completions".to_owned();
    r.node = "node-a".to_owned();
    r
}

/// N rows from several threads through the writer: exactly N rows, and each report grouping sums
/// to the totals the threads computed.
pub fn rows_from_threads(store: Arc<dyn LedgerStore>) {
    const THREADS: u64 = 8;
    const PER: u64 = 500;
    let writer = Arc::new(LedgerWriter::spawn(store.clone()).unwrap());
    let base = parse_time("2025-03-10T12:00:00Z").unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let w = Arc::clone(&writer);
            std::thread::spawn(move || {
                let mut expect: HashMap<String, (u64, u64, u64, u64, f64, u64)> = HashMap::new();
                for i in 0..PER {
                    let tenant = format!("team-{}", (t + i) % 2);
                    let mut r = row(
                        &format!("t{t}-r{i}"),
                        &tenant,
                        &format!("key-{}", (t + i) % 3),
                        ["m-a", "m-b"][(i % 2) as usize],
                        base + (i % 3) as i64 * 86_400_000,
                    );
                    r.prompt_tokens = 5 + i % 11;
                    r.cached_prompt_tokens = i % 4;
                    r.generated_tokens = 1 + (t * i) % 17;
                    r.device_ms = 0.5 * (i % 9) as f64;
                    r.cost_usd = r.device_ms * 1e-4;
                    r.status = if i % 10 == 0 {
                        RequestStatus::Rejected
                    } else {
                        RequestStatus::Ok
                    };
                    let e = expect.entry(tenant).or_default();
                    e.0 += 1;
                    e.1 += r.prompt_tokens;
                    e.2 += r.cached_prompt_tokens;
                    e.3 += r.generated_tokens;
                    e.4 += r.cost_usd;
                    e.5 += u64::from(r.status == RequestStatus::Rejected);
                    if i % 2 == 0 {
                        w.record(r).unwrap();
                    } else {
                        w.record_and_wait(r).unwrap().wait().unwrap();
                    }
                }
                expect
            })
        })
        .collect();
    let mut expect: HashMap<String, (u64, u64, u64, u64, f64, u64)> = HashMap::new();
    for h in handles {
        for (k, v) in h.join().unwrap() {
            let e = expect.entry(k).or_default();
            e.0 += v.0;
            e.1 += v.1;
            e.2 += v.2;
            e.3 += v.3;
            e.4 += v.4;
            e.5 += v.5;
        }
    }
    writer.flush().unwrap();
    let stats = writer.close();
    assert_eq!(stats.committed, THREADS * PER, "{stats:?}");
    assert_eq!(stats.pending, 0);
    assert_eq!(store.count_records().unwrap(), THREADS * PER);

    let by_tenant = usage_report(&*store, GroupBy::Tenant, None, None).unwrap();
    assert_eq!(by_tenant.len(), 2);
    for r in &by_tenant {
        let e = expect[&r.group];
        assert_eq!(
            (
                r.requests,
                r.prompt_tokens,
                r.cached_tokens,
                r.generated_tokens,
                r.rejected
            ),
            (e.0, e.1, e.2, e.3, e.5),
            "{}",
            r.group
        );
        assert!(
            (r.cost_usd - e.4).abs() < 1e-9,
            "{} {} vs {}",
            r.group,
            r.cost_usd,
            e.4
        );
    }
    let t = report::total(&by_tenant);
    for g in [GroupBy::Key, GroupBy::Model, GroupBy::Day] {
        let rows = usage_report(&*store, g, None, None).unwrap();
        let tt = report::total(&rows);
        assert_eq!(
            (
                tt.requests,
                tt.prompt_tokens,
                tt.generated_tokens,
                tt.rejected
            ),
            (t.requests, t.prompt_tokens, t.generated_tokens, t.rejected),
            "{g:?}"
        );
        assert!((tt.device_ms - t.device_ms).abs() < 1e-6);
    }
    let days = usage_report(&*store, GroupBy::Day, None, None).unwrap();
    let names: Vec<&str> = days.iter().map(|r| r.group.as_str()).collect();
    assert_eq!(names, ["2025-03-10", "2025-03-11", "2025-03-12"]);
    // The time window is half-open: only the middle day.
    let mid = usage_report(
        &*store,
        GroupBy::Day,
        Some(base + 86_400_000 - 1),
        Some(base + 2 * 86_400_000 - 1),
    )
    .unwrap();
    assert_eq!(mid.len(), 1);
    assert_eq!(mid[0].group, "2025-03-11");
    assert_eq!(mid[0].requests, days[1].requests);

    // Renderers carry the same numbers.
    let csv = report::render_csv(GroupBy::Tenant, &by_tenant);
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.starts_with("tenant,requests,"));
    let json: serde_json::Value =
        serde_json::from_str(&report::render_json(GroupBy::Tenant, &by_tenant)).unwrap();
    assert_eq!(json["total"]["requests"], THREADS * PER);
    assert_eq!(json["data"].as_array().unwrap().len(), 2);
    let table = report::render_table(GroupBy::Tenant, &by_tenant);
    let last = table.lines().last().unwrap();
    assert!(
        last.starts_with("TOTAL") && last.contains(&(THREADS * PER).to_string()),
        "{table}"
    );
}

/// Re-inserting a request id is a no-op, through the store and through the writer.
pub fn idempotent_inserts(store: Arc<dyn LedgerStore>) {
    let ts = now_ms();
    let mut a = row("idem-1", "t", "k", "m", ts);
    a.generated_tokens = 7;
    let b = row("idem-2", "t", "k", "m", ts);
    assert_eq!(store.insert_batch(&[a.clone(), b.clone()]).unwrap(), 2);
    let mut changed = a.clone();
    changed.generated_tokens = 999;
    assert_eq!(store.insert_batch(&[changed.clone(), b]).unwrap(), 0);
    // The first write wins: a retry never rewrites history.
    assert_eq!(store.get_record("idem-1").unwrap().unwrap(), a);
    let w = LedgerWriter::spawn(store.clone()).unwrap();
    w.record_and_wait(changed).unwrap().wait().unwrap();
    // A duplicate inside one batch as well.
    let c = row("idem-3", "t", "k", "m", ts);
    w.record(c.clone()).unwrap();
    w.record(c).unwrap();
    let s = w.close();
    assert_eq!((s.committed, s.duplicates), (1, 2), "{s:?}");
    assert_eq!(store.count_records().unwrap(), 3);
    for id in ["idem-1", "idem-2", "idem-3"] {
        assert_eq!(store.count_request(id).unwrap(), 1);
    }
    // Text the databases could choke on is stored, not lost.
    let mut weird = row("idem-4", "t\0nul", "k", "m,\"quoted\"", ts);
    weird.cost_usd = f64::NAN;
    assert_eq!(store.insert_batch(&[weird]).unwrap(), 1);
    let back = store.get_record("idem-4").unwrap().unwrap();
    assert_eq!(back.tenant, "t\u{FFFD}nul");
    assert_eq!(back.cost_usd, 0.0);
}

/// Keys: create, authenticate, list, revoke; unknown and revoked keys never authenticate as anyone.
pub fn keys_and_auth(store: Arc<dyn LedgerStore>) {
    let ks = KeyStore::new(store.clone());
    let budget = Budget::new(5.0, Period::Month).unwrap();
    let limits = RateLimits {
        requests_per_minute: Some(60),
        tokens_per_minute: None,
    };
    let (id_a, secret_a) = ks.create_key("alpha", Some(budget), Some(limits)).unwrap();
    let (id_b, secret_b) = ks.create_key("beta", None, None).unwrap();
    assert!(secret_a.starts_with("sk-orch-") && secret_a.len() == 8 + 44);
    assert_ne!(id_a, id_b);

    let a = ks.authenticate(&secret_a).unwrap();
    assert_eq!(
        (
            a.key_id.clone(),
            a.tenant.as_str(),
            a.budget,
            a.limits,
            a.is_static
        ),
        (id_a.clone(), "alpha", Some(budget), Some(limits), false)
    );
    // Cached path gives the same answer.
    assert_eq!(ks.authenticate(&secret_a).unwrap(), a);
    assert_eq!(ks.authenticate(&secret_b).unwrap().tenant, "beta");

    // A forged secret: A's public id with B's secret part must not authenticate as anyone.
    let forged = format!("{}{}", &secret_a[..8 + 12], &secret_b[8 + 12..]);
    assert_eq!(ks.authenticate(&forged), Err(AuthError::Unknown));
    assert_eq!(ks.authenticate("sk-orch-nope"), Err(AuthError::Unknown));
    assert_eq!(ks.authenticate(""), Err(AuthError::Unknown));
    let mut wrong = secret_b.clone();
    wrong.pop();
    wrong.push(if secret_b.ends_with('x') { 'y' } else { 'x' });
    assert_eq!(ks.authenticate(&wrong), Err(AuthError::Unknown));

    // Another node (its own cache, no TTL) sees the revocation immediately once its cache expires.
    let other = KeyStore::with_cache_ttl(store.clone(), Duration::ZERO);
    assert_eq!(other.authenticate(&secret_a).unwrap().tenant, "alpha");
    ks.revoke_key(id_a.as_str()).unwrap();
    assert_eq!(
        ks.authenticate(&secret_a),
        Err(AuthError::Revoked {
            key_id: id_a.clone()
        })
    );
    assert_eq!(
        other.authenticate(&secret_a),
        Err(AuthError::Revoked {
            key_id: id_a.clone()
        })
    );
    assert_eq!(ks.authenticate(&secret_b).unwrap().tenant, "beta");
    assert!(matches!(
        ks.revoke_key("key_doesnotexist"),
        Err(LedgerError::UnknownKeyId { .. })
    ));

    let listed = ks.list_keys().unwrap();
    assert_eq!(listed.len(), 2);
    let la = listed.iter().find(|k| k.key_id == id_a).unwrap();
    assert!(la.revoked_ms.is_some());
    assert_eq!(la.budget, Some(budget));
    assert!(la.secret_prefix.starts_with(&secret_a[..20]));
    assert!(
        !format!("{listed:?}").contains(&secret_a[20..]),
        "secret leaked into listing"
    );

    // Plain --api-key values: the anonymous tenant under a stable id.
    let sid = ks.add_static_key("plain-key", true);
    let s = ks.authenticate("plain-key").unwrap();
    assert_eq!(
        (s.tenant.as_str(), &s.key_id, s.is_static, s.admin),
        ("anonymous", &sid, true, true)
    );
    assert!(sid.as_str().starts_with("static-"));

    // Tenant policy reaches authenticated keys.
    ks.set_tenant_policy("beta", Some(Budget::new(1.0, Period::Day).unwrap()), None)
        .unwrap();
    let b = ks.authenticate(&secret_b).unwrap();
    assert_eq!(
        b.tenant_budget,
        Some(Budget::new(1.0, Period::Day).unwrap())
    );
    assert_eq!(store.list_tenants().unwrap().len(), 2);

    // Nothing above wrote usage: failed authentications leave no row for anybody.
    assert_eq!(store.count_records().unwrap(), 0);
}

/// Budgets from the ledger and per-minute limits, at controlled times.
pub fn budgets_and_limits(store: Arc<dyn LedgerStore>) {
    let ks = KeyStore::new(store.clone());
    let (_, secret) = ks
        .create_key("gamma", Some(Budget::new(1.0, Period::Day).unwrap()), None)
        .unwrap();
    let key = ks.authenticate(&secret).unwrap();
    let limiter = Limiter::with_config(
        store.clone(),
        LimiterConfig {
            spend_refresh: None,
        },
    );
    let now = parse_time("2025-06-01T18:00:00Z").unwrap();
    // $0.60 already in the ledger from earlier today (e.g. another process), $5 from yesterday.
    let mut r1 = row("b-1", "gamma", key.key_id.as_str(), "m", now - 3_600_000);
    r1.cost_usd = 0.6;
    let mut old = row("b-0", "gamma", key.key_id.as_str(), "m", now - 86_400_000);
    old.cost_usd = 5.0;
    store.insert_batch(&[r1, old]).unwrap();
    assert_eq!(limiter.check_strict(&key, now).unwrap(), Ok(()));
    let mut r2 = row("b-2", "gamma", key.key_id.as_str(), "m", now);
    r2.cost_usd = 0.45;
    limiter.observe_at(&r2, now);
    let err = limiter.check_strict(&key, now + 1000).unwrap().unwrap_err();
    match err.kind {
        LimitKind::Budget {
            scope,
            period,
            limit_usd,
            spent_usd,
        } => {
            assert_eq!(
                (scope, period, limit_usd),
                (LimitScope::Key, Period::Day, 1.0)
            );
            assert!((spent_usd - 1.05).abs() < 1e-9);
        }
        other => panic!("wrong kind {other:?}"),
    }
    // Six hours minus one second until midnight UTC.
    assert_eq!(err.retry_after_secs, 6 * 3600 - 1);
    assert_eq!(err.code(), "insufficient_quota");
    assert!(err.message.contains("daily budget"), "{}", err.message);
    // Next day the budget is fresh again (spend is re-read for the new period).
    assert_eq!(
        limiter.check_strict(&key, now + 6 * 3_600_000 + 1).unwrap(),
        Ok(())
    );

    // Tenant-wide budget shared by two keys of one tenant.
    ks.set_tenant_policy(
        "delta",
        Some(Budget::new(0.5, Period::Month).unwrap()),
        None,
    )
    .unwrap();
    let (_, s1) = ks.create_key("delta", None, None).unwrap();
    let (_, s2) = ks.create_key("delta", None, None).unwrap();
    let (k1, k2) = (ks.authenticate(&s1).unwrap(), ks.authenticate(&s2).unwrap());
    assert_eq!(limiter.check_strict(&k2, now).unwrap(), Ok(()));
    let mut spend = row("d-1", "delta", k1.key_id.as_str(), "m", now);
    spend.cost_usd = 0.5;
    limiter.observe_at(&spend, now);
    let err = limiter.check_strict(&k2, now).unwrap().unwrap_err();
    assert!(matches!(
        err.kind,
        LimitKind::Budget {
            scope: LimitScope::Tenant,
            period: Period::Month,
            ..
        }
    ));
    assert_eq!(
        err.retry_after_secs,
        (parse_time("2025-07-01").unwrap() - now) as u64 / 1000
    );

    // Requests per minute: 2 allowed, the third waits for a refill (30 s per request at 2/min).
    let rl = RateLimits {
        requests_per_minute: Some(2),
        tokens_per_minute: Some(100),
    };
    let (_, s3) = ks.create_key("epsilon", None, Some(rl)).unwrap();
    let k3 = ks.authenticate(&s3).unwrap();
    assert_eq!(limiter.check_strict(&k3, now).unwrap(), Ok(()));
    assert_eq!(limiter.check_strict(&k3, now).unwrap(), Ok(()));
    let err = limiter.check_strict(&k3, now).unwrap().unwrap_err();
    assert_eq!(
        err.kind,
        LimitKind::RequestsPerMinute {
            scope: LimitScope::Key,
            limit: 2
        }
    );
    assert_eq!(err.retry_after_secs, 30);
    assert_eq!(err.code(), "rate_limit_exceeded");
    assert_eq!(limiter.check_strict(&k3, now + 30_000).unwrap(), Ok(()));
    // Tokens per minute: a 160-token request takes the full bucket to -60 at +30 s; by +60 s it
    // has refilled 50 (100/min) to -10, which takes 6 s more to clear.
    let mut big = row("e-1", "epsilon", k3.key_id.as_str(), "m", now + 30_000);
    big.prompt_tokens = 150;
    big.generated_tokens = 10;
    limiter.observe_at(&big, now + 30_000);
    let err = limiter
        .check_strict(&k3, now + 60_000)
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.kind,
        LimitKind::TokensPerMinute {
            scope: LimitScope::Key,
            limit: 100
        }
    );
    assert_eq!(err.retry_after_secs, 6);
    assert_eq!(limiter.check_strict(&k3, now + 67_000).unwrap(), Ok(()));
    // The refused attempts consumed nothing and the static key is never limited.
    ks.add_static_key("anon", false);
    let anon = ks.authenticate("anon").unwrap();
    for _ in 0..100 {
        assert_eq!(limiter.check_strict(&anon, now).unwrap(), Ok(()));
    }
}

/// Migrations run from empty, are recorded, and re-running them is a no-op.
pub fn migrations(url: &str) {
    let s = open_ledger(url).unwrap();
    assert_eq!(s.schema_version().unwrap(), 2);
    assert_eq!(s.migrate().unwrap(), 0);
    s.insert_batch(&[row("mig-1", "t", "k", "m", now_ms())])
        .unwrap();
    drop(s);
    let again = open_ledger(url).unwrap();
    assert_eq!(again.migrate().unwrap(), 0);
    assert_eq!(again.schema_version().unwrap(), 2);
    assert_eq!(again.count_records().unwrap(), 1);
    assert!(again.integrity_check().unwrap().is_empty());
}

/// SIGKILL a child writing through `record_and_wait` from 16 threads; every id it printed (i.e.
/// whose commit it was told about) must be present exactly once and the database must be sound.
pub fn durability_after_sigkill(url: &str, prefix: &str) {
    // Create the schema first so the child's startup is not what the test measures.
    drop(open_ledger(url).unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchard-ledger-crash-child"))
        .args([url, prefix, "16", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut printed = Vec::new();
    let start = Instant::now();
    let mut line = String::new();
    while printed.len() < 2000 {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited early after {} ids", printed.len());
        assert!(start.elapsed() < Duration::from_secs(50), "child too slow");
        printed.push(line.trim_end().to_owned());
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    // Lines written before the kill are still in the pipe; only complete lines count.
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.ends_with('\n') {
            printed.push(line.trim_end().to_owned());
        }
    }
    let unique: HashSet<&String> = printed.iter().collect();
    assert_eq!(unique.len(), printed.len(), "child printed an id twice");

    // "Restart": open the ledger again.
    let store = open_ledger(url).unwrap();
    assert!(store.integrity_check().unwrap().is_empty());
    for id in &printed {
        assert_eq!(
            store.count_request(id).unwrap(),
            1,
            "{id} lost or duplicated"
        );
    }
    let total = store.count_records().unwrap();
    assert!(total >= printed.len() as u64);
    // A client retrying the completed requests after the restart does not double-count them.
    let w = LedgerWriter::spawn(store.clone()).unwrap();
    for id in printed.iter().take(500) {
        w.record(row(id, "tenant-0", "key-0", "crash-model", now_ms()))
            .unwrap();
    }
    let s = w.close();
    assert_eq!((s.committed, s.duplicates), (0, 500));
    assert_eq!(store.count_records().unwrap(), total);
    eprintln!(
        "durability: {} confirmed ids all present once; {} rows in ledger",
        printed.len(),
        total
    );
}

/// Throughput measured from the ledger, checked by hand: device time 700 ms split 200:500 between
/// prompt and generation -> 0.2 s for 1800 uncached prompt tokens (9000 tok/s) and 0.5 s for 50
/// generated tokens (100 tok/s); 700 ms busy in a 10 s window = 7% utilisation.
pub fn throughput_from_ledger(store: Arc<dyn LedgerStore>) {
    let base = parse_time("2025-01-01").unwrap();
    let mut a = row("tp-1", "t", "k", "m", base);
    (a.prompt_tokens, a.cached_prompt_tokens, a.generated_tokens) = (1000, 200, 40);
    (a.prompt_ms, a.generation_ms, a.device_ms) = (100.0, 400.0, 500.0);
    let mut b = row("tp-2", "t", "k", "m", base + 5_000);
    (b.prompt_tokens, b.generated_tokens) = (1000, 10);
    (b.prompt_ms, b.generation_ms, b.device_ms) = (100.0, 100.0, 200.0);
    let outside = row("tp-3", "t", "k", "m", base + 10_000);
    store.insert_batch(&[a, b, outside]).unwrap();
    let t = measured_throughput(&*store, Some(base), Some(base + 10_000)).unwrap();
    assert!((t.prompt_tps - 9000.0).abs() < 1e-6, "{t:?}");
    assert!((t.gen_tps - 100.0).abs() < 1e-6, "{t:?}");
    assert!((t.utilisation - 0.07).abs() < 1e-12, "{t:?}");
    let totals = store.phase_totals(Some(base), Some(base + 10_000)).unwrap();
    assert_eq!(
        (totals.requests, totals.first_ts_ms, totals.last_ts_ms),
        (2, Some(base), Some(base + 5_000))
    );
    let empty = store.phase_totals(Some(0), Some(1)).unwrap();
    assert_eq!((empty.requests, empty.first_ts_ms), (0, None));
}
