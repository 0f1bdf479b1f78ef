//! Prometheus text for /metrics: llama-server's `llamacpp:*` series (so existing dashboards keep
//! working) and `orchard_*` series labelled by model and API key id, with latency histograms.
//! Hand-written: the format is small and a registry crate would add nothing we need.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use orchard_engine::EngineStats;

/// Upper bounds (seconds) shared by the latency histograms.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        if let Some(i) = BUCKETS.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// A named, documented series read out of each key's counters.
type Series<T> = (&'static str, &'static str, fn(&PerKey) -> T);

#[derive(Clone, Debug, Default)]
struct PerKey {
    prompt_tokens: u64,
    cached_tokens: u64,
    generated_tokens: u64,
    requests: BTreeMap<&'static str, u64>,
    ttft: Histogram,
    itl: Histogram,
    duration: Histogram,
}

#[derive(Debug, Default)]
struct Inner {
    per_key: BTreeMap<String, PerKey>,
    /// Prompt tokens actually computed (cache hits excluded), as llama-server counts them.
    prompt_tokens: u64,
    cached_tokens: u64,
    prompt_secs: f64,
    predicted_tokens: u64,
    predicted_secs: f64,
    n_tokens_max: u64,
    /// Window since the last scrape, for the throughput gauges.
    bucket_prompt_tokens: u64,
    bucket_prompt_secs: f64,
    bucket_predicted_tokens: u64,
    bucket_predicted_secs: f64,
}

/// One finished request, as the metrics see it.
#[derive(Clone, Debug, Default)]
pub struct Finished {
    pub key_id: String,
    pub status: &'static str,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_ms: f64,
    pub gen_ms: f64,
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
    /// Gaps between consecutive tokens, milliseconds.
    pub inter_token_ms: Vec<f64>,
}

/// All counters of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn record(&self, f: &Finished) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let computed = f.prompt_tokens.saturating_sub(f.cached_tokens) as u64;
        g.prompt_tokens += computed;
        g.cached_tokens += f.cached_tokens as u64;
        g.prompt_secs += f.prompt_ms / 1e3;
        g.predicted_tokens += f.completion_tokens as u64;
        g.predicted_secs += f.gen_ms / 1e3;
        g.bucket_prompt_tokens += computed;
        g.bucket_prompt_secs += f.prompt_ms / 1e3;
        g.bucket_predicted_tokens += f.completion_tokens as u64;
        g.bucket_predicted_secs += f.gen_ms / 1e3;
        g.n_tokens_max = g
            .n_tokens_max
            .max((f.prompt_tokens + f.completion_tokens) as u64);
        let k = g.per_key.entry(f.key_id.clone()).or_default();
        k.prompt_tokens += computed;
        k.cached_tokens += f.cached_tokens as u64;
        k.generated_tokens += f.completion_tokens as u64;
        *k.requests.entry(f.status).or_default() += 1;
        if let Some(t) = f.ttft_ms {
            k.ttft.observe(t / 1e3);
        }
        for gap in &f.inter_token_ms {
            k.itl.observe(gap / 1e3);
        }
        k.duration.observe(f.total_ms / 1e3);
    }

    /// Counts a request refused before it reached the engine (bad input, auth, queue full).
    pub fn record_rejected(&self, key_id: &str, status: &'static str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = g.per_key.entry(key_id.to_string()).or_default();
        *k.requests.entry(status).or_default() += 1;
    }

    /// Renders the exposition text and starts a new window for the throughput gauges.
    pub fn render(&self, model: &str, stats: Option<&EngineStats>) -> String {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(8192);
        let steps = stats.map_or(0, |s| s.totals.steps);
        let busy_per_decode = stats.map_or(0.0, |s| {
            let t = &s.totals;
            // Every step decodes one token per running sequence, so generated tokens over steps
            // is the average number of busy sequences per decode call.
            if t.steps == 0 {
                0.0
            } else {
                t.generated_tokens as f64 / t.steps as f64
            }
        });
        let per_sec = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let counters: [(&str, &str, f64); 10] = [
            (
                "prompt_tokens_total",
                "Number of prompt tokens processed, excluding cached tokens",
                g.prompt_tokens as f64,
            ),
            (
                "prompt_tokens_cached_total",
                "Number of prompt tokens reused from the cache",
                g.cached_tokens as f64,
            ),
            (
                "prompt_seconds_total",
                "Total time spent processing prompts",
                g.prompt_secs,
            ),
            (
                "tokens_predicted_total",
                "Number of generation tokens processed",
                g.predicted_tokens as f64,
            ),
            (
                "tokens_predicted_seconds_total",
                "Total time spent generating tokens",
                g.predicted_secs,
            ),
            (
                "n_decode_total",
                "Total number of model forward steps",
                steps as f64,
            ),
            (
                "n_tokens_max",
                "Largest observed sequence length (prompt + generation)",
                g.n_tokens_max as f64,
            ),
            (
                "spec_decode_num_draft_tokens_total",
                "Speculative: Total draft tokens generated",
                0.0,
            ),
            (
                "spec_decode_num_accepted_tokens_total",
                "Speculative: Total draft tokens accepted by the target model",
                0.0,
            ),
            (
                "spec_decode_num_drafts_total",
                "Speculative: Total speculative decoding verification steps",
                0.0,
            ),
        ];
        let kv_used = stats.map_or(0, |s| s.kv_used_cells);
        let kv_total = stats.map_or(0, |s| s.kv_total_cells);
        let gauges: [(&str, &str, f64); 7] = [
            (
                "prompt_tokens_seconds",
                "Average prompt throughput in tokens/s",
                per_sec(g.bucket_prompt_tokens, g.bucket_prompt_secs),
            ),
            (
                "predicted_tokens_seconds",
                "Average generation throughput in tokens/s",
                per_sec(g.bucket_predicted_tokens, g.bucket_predicted_secs),
            ),
            (
                "requests_processing",
                "Number of requests processing",
                stats.map_or(0, |s| s.busy_slots) as f64,
            ),
            (
                "requests_deferred",
                "Number of requests deferred",
                stats.map_or(0, |s| s.queue_depth) as f64,
            ),
            (
                "n_busy_slots_per_decode",
                "Average number of busy slots per model forward step",
                busy_per_decode,
            ),
            (
                "kv_cache_usage_ratio",
                "KV-cache usage. 1 means 100 percent usage",
                if kv_total > 0 {
                    kv_used as f64 / kv_total as f64
                } else {
                    0.0
                },
            ),
            (
                "kv_cache_tokens",
                "KV-cache tokens (cells in use)",
                kv_used as f64,
            ),
        ];
        for (kind, items) in [("counter", &counters[..]), ("gauge", &gauges[..])] {
            for (name, help, v) in items {
                let _ = writeln!(out, "# HELP llamacpp:{name} {help}");
                let _ = writeln!(out, "# TYPE llamacpp:{name} {kind}");
                let _ = writeln!(out, "llamacpp:{name} {v}");
            }
        }
        g.bucket_prompt_tokens = 0;
        g.bucket_prompt_secs = 0.0;
        g.bucket_predicted_tokens = 0;
        g.bucket_predicted_secs = 0.0;

        let m = esc(model);
        let series: [Series<u64>; 3] = [
            (
                "orchard_prompt_tokens_total",
                "Prompt tokens computed (cache hits excluded)",
                |k| k.prompt_tokens,
            ),
            (
                "orchard_cached_prompt_tokens_total",
                "Prompt tokens reused from the prefix cache",
                |k| k.cached_tokens,
            ),
            ("orchard_generated_tokens_total", "Tokens generated", |k| {
                k.generated_tokens
            }),
        ];
        for (name, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (key, k) in &g.per_key {
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{m}\",key_id=\"{}\"}} {}",
                    esc(key),
                    get(k)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP orchard_requests_total Requests by final status (ok, cancelled, error, rejected, unauthorized)"
        );
        let _ = writeln!(out, "# TYPE orchard_requests_total counter");
        for (key, k) in &g.per_key {
            for (status, n) in &k.requests {
                let _ = writeln!(
                    out,
                    "orchard_requests_total{{model=\"{m}\",key_id=\"{}\",status=\"{status}\"}} {n}",
                    esc(key)
                );
            }
        }
        let gauges2: [(&str, &str, usize); 5] = [
            (
                "orchard_queue_depth",
                "Requests waiting for a sequence",
                stats.map_or(0, |s| s.queue_depth),
            ),
            (
                "orchard_busy_sequences",
                "Sequences decoding now",
                stats.map_or(0, |s| s.busy_slots),
            ),
            (
                "orchard_sequences_max",
                "Sequences that may decode at once (-np)",
                stats.map_or(0, |s| s.n_slots),
            ),
            ("orchard_kv_cells_used", "KV cells in use", kv_used),
            ("orchard_kv_cells_total", "KV cells in the pool", kv_total),
        ];
        for (name, help, v) in gauges2 {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{model=\"{m}\"}} {v}");
        }
        let t = stats.map(|s| s.totals).unwrap_or_default();
        let engine: [(&str, &str, f64); 4] = [
            (
                "orchard_engine_steps_total",
                "Scheduler steps that ran the model",
                t.steps as f64,
            ),
            (
                "orchard_engine_step_seconds_total",
                "Wall time of those steps, forward passes included",
                t.step_ms / 1000.0,
            ),
            (
                "orchard_engine_forward_seconds_total",
                "Of the step time, the time in forward passes (the rest is per-step overhead)",
                t.forward_ms / 1000.0,
            ),
            (
                "orchard_engine_sample_seconds_total",
                "Of the step time, sampling and streaming each token to its request",
                t.sample_ms / 1000.0,
            ),
        ];
        for (name, help, v) in engine {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{model=\"{m}\"}} {v}");
        }
        #[allow(clippy::type_complexity)]
        let hists: [(&str, &str, fn(&PerKey) -> &Histogram); 3] = [
            (
                "orchard_time_to_first_token_seconds",
                "Submission to first generated token",
                |k| &k.ttft,
            ),
            (
                "orchard_inter_token_latency_seconds",
                "Gap between consecutive generated tokens",
                |k| &k.itl,
            ),
            (
                "orchard_request_duration_seconds",
                "Whole request, submission to last event",
                |k| &k.duration,
            ),
        ];
        for (name, help, get) in hists {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (key, k) in &g.per_key {
                get(k).render(
                    &mut out,
                    name,
                    &format!("model=\"{m}\",key_id=\"{}\"", esc(key)),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render() {
        let m = Metrics::default();
        m.record(&Finished {
            key_id: "key-0".into(),
            status: "ok",
            prompt_tokens: 10,
            cached_tokens: 4,
            completion_tokens: 5,
            prompt_ms: 20.0,
            gen_ms: 40.0,
            ttft_ms: Some(30.0),
            total_ms: 70.0,
            inter_token_ms: vec![10.0, 10.0, 10.0, 10.0],
        });
        m.record_rejected("key-0", "rejected");
        let t = m.render("smol", None);
        assert!(t.contains("llamacpp:prompt_tokens_total 6\n"));
        assert!(t.contains("llamacpp:prompt_tokens_cached_total 4\n"));
        assert!(t.contains("llamacpp:tokens_predicted_total 5\n"));
        assert!(t.contains("# TYPE llamacpp:requests_processing gauge"));
        assert!(
            t.contains("orchard_requests_total{model=\"smol\",key_id=\"key-0\",status=\"ok\"} 1")
        );
        assert!(t.contains(
            "orchard_inter_token_latency_seconds_bucket{model=\"smol\",key_id=\"key-0\",le=\"0.01\"} 4"
        ));
        assert!(t.contains(
            "orchard_time_to_first_token_seconds_count{model=\"smol\",key_id=\"key-0\"} 1"
        ));
        // The throughput window restarts at each scrape.
        let t2 = m.render("smol", None);
        assert!(t2.contains("llamacpp:prompt_tokens_seconds 0\n"));
    }
}
