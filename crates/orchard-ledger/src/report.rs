//! Usage reports (`orchard usage`, `GET /v1/usage`) and their table, CSV and JSON renderings.

use serde::Serialize;

use crate::cost::Throughput;
use crate::error::Result;
use crate::store::{GroupBy, LedgerStore, UsageRow};

/// Aggregates the ledger over `since <= ts < until` (Unix ms, either optional).
pub fn usage_report(
    store: &dyn LedgerStore,
    group_by: GroupBy,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> Result<Vec<UsageRow>> {
    store.usage_report(group_by, since_ms, until_ms)
}

/// Throughput measured by the ledger over `[since, until)`: `orchard finops tco` without a
/// benchmark. The window defaults to the span between the first and last row.
pub fn measured_throughput(
    store: &dyn LedgerStore,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> Result<Throughput> {
    let t = store.phase_totals(since_ms, until_ms)?;
    let start = since_ms.or(t.first_ts_ms).unwrap_or(0);
    let end = until_ms.or(t.last_ts_ms).unwrap_or(start);
    Ok(Throughput::estimate(&t, (end - start) as f64))
}

/// The sum of report rows (the TOTAL line).
pub fn total(rows: &[UsageRow]) -> UsageRow {
    rows.iter().fold(
        UsageRow {
            group: "TOTAL".to_owned(),
            requests: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            generated_tokens: 0,
            device_ms: 0.0,
            cost_usd: 0.0,
            rejected: 0,
        },
        |mut t, r| {
            t.requests += r.requests;
            t.prompt_tokens += r.prompt_tokens;
            t.cached_tokens += r.cached_tokens;
            t.generated_tokens += r.generated_tokens;
            t.device_ms += r.device_ms;
            t.cost_usd += r.cost_usd;
            t.rejected += r.rejected;
            t
        },
    )
}

const HEADERS: [&str; 8] = [
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "generated_tokens",
    "device_s",
    "cost_usd",
    "rejected",
    "",
];

fn cells(r: &UsageRow) -> Vec<String> {
    vec![
        r.group.clone(),
        r.requests.to_string(),
        r.prompt_tokens.to_string(),
        r.cached_tokens.to_string(),
        r.generated_tokens.to_string(),
        format!("{:.3}", r.device_ms / 1000.0),
        format!("{:.6}", r.cost_usd),
        r.rejected.to_string(),
    ]
}

/// An aligned text table with a TOTAL line.
pub fn render_table(group_by: GroupBy, rows: &[UsageRow]) -> String {
    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 2);
    let mut header = vec![group_by.as_str().to_owned()];
    header.extend(HEADERS[..7].iter().map(|s| (*s).to_owned()));
    lines.push(header);
    lines.extend(rows.iter().map(cells));
    lines.push(cells(&total(rows)));
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let n = lines.len();
    for (i, l) in lines.iter().enumerate() {
        if i == n - 1 {
            let rule: usize = widths.iter().sum::<usize>() + 2 * 7;
            out.push_str(&"-".repeat(rule));
            out.push('\n');
        }
        let mut line = String::new();
        for (c, cell) in l.iter().enumerate() {
            if c == 0 {
                line.push_str(&format!("{cell:<w$}", w = widths[0]));
            } else {
                line.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// RFC 4180 CSV with a header line; no TOTAL line, so the file sums cleanly in a spreadsheet.
pub fn render_csv(group_by: GroupBy, rows: &[UsageRow]) -> String {
    let mut out = format!(
        "{},requests,prompt_tokens,cached_tokens,generated_tokens,device_ms,cost_usd,rejected\r\n",
        group_by.as_str()
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\r\n",
            csv_field(&r.group),
            r.requests,
            r.prompt_tokens,
            r.cached_tokens,
            r.generated_tokens,
            r.device_ms,
            r.cost_usd,
            r.rejected
        ));
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    object: &'static str,
    group_by: GroupBy,
    data: &'a [UsageRow],
    total: UsageRow,
}

/// The body of `GET /v1/usage`: `{"object":"usage_report","group_by":..,"data":[..],"total":{..}}`.
pub fn render_json(group_by: GroupBy, rows: &[UsageRow]) -> String {
    let report = JsonReport {
        object: "usage_report",
        group_by,
        data: rows,
        total: total(rows),
    };
    // Serialising plain structs of numbers and strings cannot fail; non-finite floats become null.
    serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".to_owned())
}
