//! Prometheus counters of requests, tokens, device time and cost by tenant and model, kept in
//! memory alongside the ledger so `/metrics` never queries the database. Named `orchard_ledger_*`
//! so they never collide with the server's own per-key `orchard_*` families on one page.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::record::{RequestStatus, UsageRecord};

#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    requests: [u64; 4],
    prompt_tokens: u64,
    cached_prompt_tokens: u64,
    generated_tokens: u64,
    device_ms: f64,
    cost_usd: f64,
}

const STATUSES: [RequestStatus; 4] = [
    RequestStatus::Ok,
    RequestStatus::Error,
    RequestStatus::Cancelled,
    RequestStatus::Rejected,
];

/// Counters since process start (Prometheus computes rates). Feed it every recorded row.
#[derive(Debug, Default)]
pub struct UsageMetrics {
    by: Mutex<BTreeMap<(String, String), Sums>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl UsageMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn observe(&self, row: &UsageRecord) {
        let mut by = self.by.lock().unwrap_or_else(|e| e.into_inner());
        let s = by
            .entry((row.tenant.clone(), row.model.clone()))
            .or_default();
        let i = STATUSES
            .iter()
            .position(|st| *st == row.status)
            .unwrap_or(0);
        s.requests[i] += 1;
        s.prompt_tokens += row.prompt_tokens;
        s.cached_prompt_tokens += row.cached_prompt_tokens;
        s.generated_tokens += row.generated_tokens;
        if row.device_ms.is_finite() {
            s.device_ms += row.device_ms;
        }
        if row.cost_usd.is_finite() {
            s.cost_usd += row.cost_usd;
        }
    }

    /// The counters in Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let by = self.by.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let families: [(&str, &str, Values); 6] = [
            (
                "orchard_ledger_requests_total",
                "Requests recorded in the usage ledger.",
                |s| {
                    STATUSES
                        .iter()
                        .zip(s.requests)
                        .filter(|(_, n)| *n > 0)
                        .map(|(st, n)| (Some(format!("status=\"{}\"", st.as_str())), n.to_string()))
                        .collect()
                },
            ),
            (
                "orchard_ledger_prompt_tokens_total",
                "Prompt tokens, cached ones included.",
                |s| vec![(None, s.prompt_tokens.to_string())],
            ),
            (
                "orchard_ledger_cached_prompt_tokens_total",
                "Prompt tokens served from cache.",
                |s| vec![(None, s.cached_prompt_tokens.to_string())],
            ),
            (
                "orchard_ledger_generated_tokens_total",
                "Generated tokens.",
                |s| vec![(None, s.generated_tokens.to_string())],
            ),
            (
                "orchard_ledger_device_seconds_total",
                "Device time attributed to requests.",
                |s| vec![(None, format!("{}", s.device_ms / 1000.0))],
            ),
            (
                "orchard_ledger_cost_usd_total",
                "Cost charged to requests by the cost model.",
                |s| vec![(None, format!("{}", s.cost_usd))],
            ),
        ];
        let mut out = String::new();
        for (name, help, values) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((tenant, model), s) in &by {
                for (extra, v) in values(s) {
                    let extra = extra.map(|e| format!(",{e}")).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{name}{{tenant=\"{}\",model=\"{}\"{extra}}} {v}",
                        escape(tenant),
                        escape(model)
                    );
                }
            }
        }
        out
    }
}

/// One metric family's samples for a (tenant, model): optional extra label and value.
type Values = fn(&Sums) -> Vec<(Option<String>, String)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_by_tenant_and_model() {
        let m = UsageMetrics::new();
        let mut a = UsageRecord::new("1", "team \"a\"", "k");
        a.model = "m1".into();
        a.prompt_tokens = 10;
        a.generated_tokens = 3;
        a.cost_usd = 0.25;
        a.device_ms = 1500.0;
        m.observe(&a);
        a.request_id = "2".into();
        a.status = RequestStatus::Rejected;
        m.observe(&a);
        let text = m.render_prometheus();
        assert!(
            text.contains(
                "orchard_ledger_requests_total{tenant=\"team \\\"a\\\"\",model=\"m1\",status=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("status=\"rejected\"} 1"), "{text}");
        assert!(
            text.contains(
                "orchard_ledger_prompt_tokens_total{tenant=\"team \\\"a\\\"\",model=\"m1\"} 20"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "orchard_ledger_cost_usd_total{tenant=\"team \\\"a\\\"\",model=\"m1\"} 0.5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "orchard_ledger_device_seconds_total{tenant=\"team \\\"a\\\"\",model=\"m1\"} 3"
            ),
            "{text}"
        );
    }
}
