//! `orchard keys`, `orchard usage` and `orchard finops`: the operator's side of the FinOps
//! ledger that `orchard serve --ledger` writes (API keys, usage reports, total cost of ownership).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use orchard_ledger as ol;

/// Where the ledger lives; every subcommand takes it.
#[derive(Args, Debug, Clone)]
pub struct LedgerFlag {
    /// Usage ledger: a SQLite file or `postgres://user@host/db` (the server's `--ledger`).
    #[arg(
        long = "ledger",
        env = "ORCHARD_LEDGER",
        default_value = "orchard-ledger.db"
    )]
    pub ledger: String,
}

impl LedgerFlag {
    fn open(&self) -> anyhow::Result<Arc<dyn ol::LedgerStore>> {
        ol::open_ledger(&self.ledger).with_context(|| format!("opening the ledger {}", self.ledger))
    }
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    cmd: KeysCmd,
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Create a key for a tenant; prints the secret (shown once) on stdout.
    Create {
        #[command(flatten)]
        ledger: LedgerFlag,
        /// Tenant (team, cost centre) the key's usage is charged to.
        #[arg(long)]
        tenant: String,
        /// Spending cap in USD per period (needs the server's --cost-config to price requests).
        #[arg(long = "budget-usd")]
        budget_usd: Option<f64>,
        /// Budget period: day, week or month (UTC calendar periods).
        #[arg(long, default_value = "month")]
        period: String,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens (prompt + generated) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Free-text label shown by `keys list`.
        #[arg(long, default_value = "")]
        label: String,
        /// May read every tenant's usage through GET /v1/usage.
        #[arg(long)]
        admin: bool,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        ledger: LedgerFlag,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Revoke a key by id (`key_...`); servers refuse it within a minute (at once on restart).
    Revoke {
        #[command(flatten)]
        ledger: LedgerFlag,
        id: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ListFormat {
    Table,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    ledger: LedgerFlag,
    /// Group rows by tenant, key, model or day.
    #[arg(long, default_value = "tenant")]
    by: String,
    /// From this time on: YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][Z] (UTC) or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms).
    #[arg(long)]
    until: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
}

#[derive(Args, Debug)]
pub struct FinopsArgs {
    #[command(subcommand)]
    cmd: FinopsCmd,
}

#[derive(Subcommand, Debug)]
enum FinopsCmd {
    /// Owned cost per 1M tokens, the cloud's for the same work, and the break-even month.
    /// Throughput comes from --prompt-tps/--gen-tps (a benchmark run) or, without them, from
    /// what the ledger measured.
    Tco {
        #[command(flatten)]
        ledger: LedgerFlag,
        /// Cost model (TOML; see crates/orchard-ledger/examples/cost-model.toml).
        #[arg(long = "config", env = "ORCHARD_COST_CONFIG")]
        config: PathBuf,
        /// Prompt tokens per busy second (e.g. `orchard bench`'s pp figure).
        #[arg(long = "prompt-tps")]
        prompt_tps: Option<f64>,
        /// Generated tokens per busy second (e.g. `orchard bench`'s tg figure).
        #[arg(long = "gen-tps")]
        gen_tps: Option<f64>,
        /// Busy fraction of the month (default: measured from the ledger, else the config's).
        #[arg(long)]
        utilisation: Option<f64>,
        /// Ledger window for measured figures.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

fn time_arg(s: &Option<String>) -> anyhow::Result<Option<i64>> {
    s.as_deref()
        .map(|t| ol::time::parse_time(t).map_err(anyhow::Error::from))
        .transpose()
}

pub fn keys(a: KeysArgs) -> anyhow::Result<()> {
    match a.cmd {
        KeysCmd::Create {
            ledger,
            tenant,
            budget_usd,
            period,
            rpm,
            tpm,
            label,
            admin,
        } => {
            let store = ledger.open()?;
            let budget = match budget_usd {
                Some(usd) => {
                    let p = ol::Period::parse(&period)
                        .with_context(|| format!("--period {period:?}: use day, week or month"))?;
                    Some(ol::Budget::new(usd, p)?)
                }
                None => None,
            };
            let limits = ol::RateLimits {
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
            };
            let ks = ol::KeyStore::new(store);
            let (id, secret) = ks.create_key_with(ol::NewKey {
                tenant,
                label,
                admin,
                budget,
                limits: (!limits.is_unlimited()).then_some(limits),
            })?;
            eprintln!("created {id}; the secret below is shown once, store it now");
            println!("{secret}");
            Ok(())
        }
        KeysCmd::List { ledger, format } => {
            let ks = ol::KeyStore::new(ledger.open()?);
            let keys = ks.list_keys()?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&keys)?),
                ListFormat::Table => print!("{}", keys_table(&keys)),
            }
            Ok(())
        }
        KeysCmd::Revoke { ledger, id } => {
            let ks = ol::KeyStore::new(ledger.open()?);
            ks.revoke_key(&id)?;
            eprintln!("revoked {id}");
            Ok(())
        }
    }
}

fn keys_table(keys: &[ol::KeyInfo]) -> String {
    let mut rows = vec![[
        "id", "tenant", "label", "admin", "created", "revoked", "budget", "limits",
    ]
    .map(String::from)];
    for k in keys {
        rows.push([
            k.key_id.to_string(),
            k.tenant.clone(),
            k.label.clone(),
            if k.admin { "yes" } else { "" }.to_string(),
            ol::time::format_rfc3339(k.created_ms),
            k.revoked_ms
                .map(ol::time::format_rfc3339)
                .unwrap_or_default(),
            k.budget
                .map(|b| format!("${:.2}/{}", b.usd, b.period.as_str()))
                .unwrap_or_default(),
            k.limits
                .map(|l| {
                    let mut v = Vec::new();
                    if let Some(r) = l.requests_per_minute {
                        v.push(format!("{r} rpm"));
                    }
                    if let Some(t) = l.tokens_per_minute {
                        v.push(format!("{t} tpm"));
                    }
                    v.join(", ")
                })
                .unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn usage(a: UsageArgs) -> anyhow::Result<()> {
    let store = a.ledger.open()?;
    let Some(by) = ol::GroupBy::parse(&a.by) else {
        bail!("--by {:?}: use tenant, key, model or day", a.by);
    };
    let rows = ol::usage_report(store.as_ref(), by, time_arg(&a.since)?, time_arg(&a.until)?)?;
    let text = match a.format {
        ReportFormat::Table => ol::report::render_table(by, &rows),
        ReportFormat::Csv => ol::report::render_csv(by, &rows),
        ReportFormat::Json => ol::report::render_json(by, &rows) + "\n",
    };
    print!("{text}");
    Ok(())
}

pub fn finops(a: FinopsArgs) -> anyhow::Result<()> {
    let FinopsCmd::Tco {
        ledger,
        config,
        prompt_tps,
        gen_tps,
        utilisation,
        since,
        until,
        format,
    } = a.cmd;
    let mut model = ol::CostModel::load(&config)?;
    if model.power.source == ol::cost::PowerSource::Measured {
        match ol::cost::measure_power_watts(std::time::Duration::from_secs(1)) {
            Some(w) => model = model.with_measured_load_watts(w),
            None => eprintln!(
                "note: power could not be measured here (RAPL unreadable); using the configured load_watts"
            ),
        }
    }
    let measured = match (prompt_tps, gen_tps) {
        (Some(p), Some(g)) => ol::Throughput {
            prompt_tps: p,
            gen_tps: g,
            utilisation: utilisation.unwrap_or(model.operations.utilisation),
        },
        (None, None) => {
            let store = ledger.open()?;
            let mut t =
                ol::measured_throughput(store.as_ref(), time_arg(&since)?, time_arg(&until)?)?;
            if let Some(u) = utilisation {
                t.utilisation = u;
            }
            if t.gen_tps <= 0.0 && t.prompt_tps <= 0.0 {
                bail!(
                    "the ledger {} holds no measured work in that window; give --prompt-tps and --gen-tps from a benchmark",
                    ledger.ledger
                );
            }
            t
        }
        _ => bail!("give both --prompt-tps and --gen-tps, or neither (measure from the ledger)"),
    };
    let report = ol::tco_report(&model, measured);
    match format {
        ListFormat::Table => print!("{}", report.render_table()),
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
