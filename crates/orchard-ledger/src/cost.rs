//! The cost model: turns what a node costs to own and run into a price per device-second, per
//! request and per 1M tokens, and compares it with renting cloud GPUs for the same work. All money
//! is USD; a month is 730 hours (365 × 24 / 12).

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};

/// Hours in the average month (8760 / 12).
pub const HOURS_PER_MONTH: f64 = 730.0;

/// The whole cost model as written in TOML (see `examples/cost-model.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostModel {
    pub hardware: Hardware,
    pub power: Power,
    pub electricity: Electricity,
    pub operations: Operations,
    pub cloud: Cloud,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// Purchase price of the node.
    pub price_usd: f64,
    /// Months over which the purchase is written off.
    pub amortisation_months: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    /// Wall power while idle.
    pub idle_watts: f64,
    /// Wall power while serving.
    pub load_watts: f64,
    /// `configured` uses the figures above; `measured` replaces `load_watts` with a RAPL reading
    /// taken under load where the OS exposes one (see [`measure_power_watts`]).
    #[serde(default)]
    pub source: PowerSource,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerSource {
    #[default]
    Configured,
    Measured,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Electricity {
    pub usd_per_kwh: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operations {
    /// Multiplies the power bill for cooling, space and operations (a PUE-like factor, ≥ 1).
    pub overhead_factor: f64,
    /// Fraction of the month the device is busy serving (0 < u ≤ 1); used when no measured
    /// utilisation is supplied.
    pub utilisation: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    /// On-demand price of one cloud GPU for an hour.
    pub usd_per_gpu_hour: f64,
    /// Cloud GPU throughput relative to this node (2.0 = the cloud GPU does the same work in half
    /// the time).
    pub throughput_ratio: f64,
    /// Cloud GPUs rented to stand in for this node.
    #[serde(default = "one")]
    pub gpus: f64,
}

fn one() -> f64 {
    1.0
}

/// Measured serving figures: tokens per busy device-second for prompt processing and generation,
/// and the fraction of wall time the device was busy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub prompt_tps: f64,
    pub gen_tps: f64,
    pub utilisation: f64,
}

impl Throughput {
    /// Estimates throughput from ledger sums over a window of `window_ms` wall time. Utilisation is
    /// attributed device time over the window. Device time is split between prompt processing and
    /// generation in the ratio of the requests' prompt and generation times, which is exact when
    /// requests do not overlap (a single-client benchmark) and an estimate under batching; cached
    /// prompt tokens cost no device time and are left out.
    pub fn estimate(t: &crate::store::PhaseTotals, window_ms: f64) -> Throughput {
        let device_s = t.device_ms / 1000.0;
        let phase_ms = t.prompt_ms + t.generation_ms;
        let (prompt_s, gen_s) = if phase_ms > 0.0 {
            (
                device_s * t.prompt_ms / phase_ms,
                device_s * t.generation_ms / phase_ms,
            )
        } else {
            (0.0, 0.0)
        };
        let rate = |tokens: u64, s: f64| if s > 0.0 { tokens as f64 / s } else { 0.0 };
        Throughput {
            prompt_tps: rate(
                t.prompt_tokens.saturating_sub(t.cached_prompt_tokens),
                prompt_s,
            ),
            gen_tps: rate(t.generated_tokens, gen_s),
            utilisation: if window_ms > 0.0 {
                (t.device_ms / window_ms).min(1.0)
            } else {
                0.0
            },
        }
    }
}

/// The owned node's monthly cost at a given utilisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MonthlyCost {
    pub utilisation: f64,
    pub hardware_usd: f64,
    pub energy_kwh: f64,
    pub energy_usd: f64,
    /// Energy × overhead factor: everything but the hardware write-off.
    pub operating_usd: f64,
    pub total_usd: f64,
    pub busy_seconds: f64,
}

/// Total cost of ownership against cloud rental, for the report `orchard finops tco`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcoReport {
    pub power_source: PowerSource,
    pub load_watts: f64,
    pub throughput: Throughput,
    pub monthly: MonthlyCost,
    pub usd_per_device_second: f64,
    pub owned_usd_per_1m_prompt: f64,
    pub owned_usd_per_1m_generated: f64,
    pub cloud_usd_per_1m_prompt: f64,
    pub cloud_usd_per_1m_generated: f64,
    /// Renting cloud GPUs for the same busy time (scaled by the throughput ratio).
    pub cloud_monthly_usd: f64,
    /// Cloud monthly cost minus the owned node's operating (non-hardware) cost.
    pub monthly_saving_usd: f64,
    /// Hardware price / monthly saving; `None` when owning never pays off.
    pub break_even_months: Option<f64>,
}

fn check(field: &'static str, v: f64, ok: bool, what: &str) -> Result<()> {
    if v.is_finite() && ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidCostModel {
            field,
            reason: format!("{v} {what}"),
        })
    }
}

fn per_million(tps: f64, usd_per_second: f64) -> f64 {
    if tps > 0.0 && tps.is_finite() {
        1e6 / tps * usd_per_second
    } else {
        f64::NAN
    }
}

impl CostModel {
    pub fn from_toml_str(s: &str) -> Result<Self> {
        let m: CostModel = toml::from_str(s).map_err(|e| LedgerError::CostModel {
            path: "<string>".into(),
            reason: e.to_string(),
        })?;
        m.validate()?;
        Ok(m)
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            LedgerError::CostModel { reason, .. } => LedgerError::CostModel {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    pub fn validate(&self) -> Result<()> {
        check(
            "hardware.price_usd",
            self.hardware.price_usd,
            self.hardware.price_usd >= 0.0,
            "must be >= 0",
        )?;
        check(
            "hardware.amortisation_months",
            self.hardware.amortisation_months,
            self.hardware.amortisation_months > 0.0,
            "must be > 0",
        )?;
        check(
            "power.idle_watts",
            self.power.idle_watts,
            self.power.idle_watts >= 0.0,
            "must be >= 0",
        )?;
        check(
            "power.load_watts",
            self.power.load_watts,
            self.power.load_watts >= 0.0,
            "must be >= 0",
        )?;
        check(
            "electricity.usd_per_kwh",
            self.electricity.usd_per_kwh,
            self.electricity.usd_per_kwh >= 0.0,
            "must be >= 0",
        )?;
        check(
            "operations.overhead_factor",
            self.operations.overhead_factor,
            self.operations.overhead_factor >= 1.0,
            "must be >= 1",
        )?;
        check(
            "operations.utilisation",
            self.operations.utilisation,
            self.operations.utilisation > 0.0 && self.operations.utilisation <= 1.0,
            "must be in (0, 1]",
        )?;
        check(
            "cloud.usd_per_gpu_hour",
            self.cloud.usd_per_gpu_hour,
            self.cloud.usd_per_gpu_hour >= 0.0,
            "must be >= 0",
        )?;
        check(
            "cloud.throughput_ratio",
            self.cloud.throughput_ratio,
            self.cloud.throughput_ratio > 0.0,
            "must be > 0",
        )?;
        check(
            "cloud.gpus",
            self.cloud.gpus,
            self.cloud.gpus > 0.0,
            "must be > 0",
        )?;
        Ok(())
    }

    /// Uses a measured load power (e.g. from [`measure_power_watts`] during a benchmark).
    pub fn with_measured_load_watts(mut self, watts: f64) -> Self {
        if watts.is_finite() && watts > 0.0 {
            self.power.load_watts = watts;
            self.power.source = PowerSource::Measured;
        }
        self
    }

    /// Monthly cost at utilisation `u` (clamped into (0, 1]). Power is the time-weighted mix of
    /// load and idle draw.
    pub fn monthly(&self, utilisation: f64) -> MonthlyCost {
        let u = if utilisation.is_finite() {
            utilisation.clamp(1e-6, 1.0)
        } else {
            self.operations.utilisation
        };
        let hardware_usd = self.hardware.price_usd / self.hardware.amortisation_months;
        let avg_watts = u * self.power.load_watts + (1.0 - u) * self.power.idle_watts;
        let energy_kwh = avg_watts * HOURS_PER_MONTH / 1000.0;
        let energy_usd = energy_kwh * self.electricity.usd_per_kwh;
        let operating_usd = energy_usd * self.operations.overhead_factor;
        MonthlyCost {
            utilisation: u,
            hardware_usd,
            energy_kwh,
            energy_usd,
            operating_usd,
            total_usd: hardware_usd + operating_usd,
            busy_seconds: u * HOURS_PER_MONTH * 3600.0,
        }
    }

    /// What one busy device-second costs when all of the month's cost (idle time included) is
    /// recovered from busy time, at the configured utilisation.
    pub fn usd_per_device_second(&self) -> f64 {
        let m = self.monthly(self.operations.utilisation);
        m.total_usd / m.busy_seconds
    }

    /// A request's cost: its attributed device time at [`usd_per_device_second`](Self::usd_per_device_second).
    pub fn request_cost_usd(&self, device_ms: f64) -> f64 {
        if device_ms.is_finite() && device_ms > 0.0 {
            device_ms / 1000.0 * self.usd_per_device_second()
        } else {
            0.0
        }
    }

    /// TCO at measured throughput; the measured utilisation replaces the configured one when it
    /// is a valid fraction.
    pub fn tco(&self, measured: Throughput) -> TcoReport {
        let u = if measured.utilisation.is_finite() && measured.utilisation > 0.0 {
            measured.utilisation.min(1.0)
        } else {
            self.operations.utilisation
        };
        let monthly = self.monthly(u);
        let usd_per_device_second = monthly.total_usd / monthly.busy_seconds;
        let cloud_usd_per_second = self.cloud.usd_per_gpu_hour * self.cloud.gpus / 3600.0;
        let ratio = self.cloud.throughput_ratio;
        let cloud_monthly_usd = monthly.busy_seconds / ratio * cloud_usd_per_second;
        let monthly_saving_usd = cloud_monthly_usd - monthly.operating_usd;
        TcoReport {
            power_source: self.power.source,
            load_watts: self.power.load_watts,
            throughput: Throughput {
                utilisation: u,
                ..measured
            },
            monthly,
            usd_per_device_second,
            owned_usd_per_1m_prompt: per_million(measured.prompt_tps, usd_per_device_second),
            owned_usd_per_1m_generated: per_million(measured.gen_tps, usd_per_device_second),
            cloud_usd_per_1m_prompt: per_million(measured.prompt_tps * ratio, cloud_usd_per_second),
            cloud_usd_per_1m_generated: per_million(measured.gen_tps * ratio, cloud_usd_per_second),
            cloud_monthly_usd,
            monthly_saving_usd,
            break_even_months: (monthly_saving_usd > 0.0)
                .then(|| self.hardware.price_usd / monthly_saving_usd),
        }
    }
}

/// The TCO report's free-function form, as the CLI calls it.
pub fn tco_report(model: &CostModel, measured: Throughput) -> TcoReport {
    model.tco(measured)
}

impl TcoReport {
    /// A two-column table for the terminal.
    pub fn render_table(&self) -> String {
        let money = |v: f64| {
            if v.is_finite() {
                format!("${v:.4}")
            } else {
                "n/a".to_owned()
            }
        };
        let m = &self.monthly;
        let rows: Vec<(String, String)> = vec![
            (
                "utilisation".into(),
                format!("{:.1}%", self.throughput.utilisation * 100.0),
            ),
            (
                "prompt throughput".into(),
                format!("{:.1} tok/s", self.throughput.prompt_tps),
            ),
            (
                "generation throughput".into(),
                format!("{:.1} tok/s", self.throughput.gen_tps),
            ),
            (
                "load power".into(),
                format!(
                    "{:.1} W ({})",
                    self.load_watts,
                    match self.power_source {
                        PowerSource::Configured => "configured",
                        PowerSource::Measured => "measured",
                    }
                ),
            ),
            ("hardware / month".into(), money(m.hardware_usd)),
            (
                "energy / month".into(),
                format!("{} ({:.2} kWh)", money(m.energy_usd), m.energy_kwh),
            ),
            (
                "operating (energy x overhead) / month".into(),
                money(m.operating_usd),
            ),
            ("owned node / month".into(), money(m.total_usd)),
            (
                "cost per busy device-second".into(),
                format!("${:.8}", self.usd_per_device_second),
            ),
            (
                "owned: per 1M prompt tokens".into(),
                money(self.owned_usd_per_1m_prompt),
            ),
            (
                "owned: per 1M generated tokens".into(),
                money(self.owned_usd_per_1m_generated),
            ),
            (
                "cloud: per 1M prompt tokens".into(),
                money(self.cloud_usd_per_1m_prompt),
            ),
            (
                "cloud: per 1M generated tokens".into(),
                money(self.cloud_usd_per_1m_generated),
            ),
            (
                "cloud at same throughput / month".into(),
                money(self.cloud_monthly_usd),
            ),
            (
                "monthly saving vs cloud".into(),
                money(self.monthly_saving_usd),
            ),
            (
                "break-even".into(),
                match self.break_even_months {
                    Some(b) => format!("{b:.1} months"),
                    None => "never (cloud is cheaper to run)".to_owned(),
                },
            ),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<w$}  {v}\n"));
        }
        out
    }
}

/// Splits one engine step's duration among the sequences batched in it, in proportion to the
/// tokens each contributed (a prompt chunk of 500 tokens costs more of the step than one decoded
/// token). With no tokens at all the step is split evenly. Shares always sum to `step_ms`.
pub fn split_step_time<K: Clone>(step_ms: f64, parts: &[(K, u32)]) -> Vec<(K, f64)> {
    if parts.is_empty() {
        return Vec::new();
    }
    let step = if step_ms.is_finite() && step_ms > 0.0 {
        step_ms
    } else {
        0.0
    };
    let total: u64 = parts.iter().map(|(_, n)| u64::from(*n)).sum();
    parts
        .iter()
        .map(|(k, n)| {
            let share = if total == 0 {
                step / parts.len() as f64
            } else {
                step * f64::from(*n) / total as f64
            };
            (k.clone(), share)
        })
        .collect()
}

/// Accumulates each in-flight request's device time across steps; lives on the engine thread, so
/// it needs no lock.
#[derive(Debug, Clone)]
pub struct DeviceTimeAttributor<K> {
    totals: HashMap<K, f64>,
}

impl<K: Eq + Hash + Clone> Default for DeviceTimeAttributor<K> {
    fn default() -> Self {
        DeviceTimeAttributor {
            totals: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> DeviceTimeAttributor<K> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_step(&mut self, step_ms: f64, parts: &[(K, u32)]) {
        for (k, ms) in split_step_time(step_ms, parts) {
            *self.totals.entry(k).or_insert(0.0) += ms;
        }
    }

    pub fn get(&self, key: &K) -> f64 {
        self.totals.get(key).copied().unwrap_or(0.0)
    }

    /// Removes a finished request and returns its device milliseconds.
    pub fn take(&mut self, key: &K) -> f64 {
        self.totals.remove(key).unwrap_or(0.0)
    }
}

/// Average package power over `interval` from Linux RAPL counters
/// (`/sys/class/powercap/intel-rapl:N/energy_uj`), or `None` where they are absent or unreadable
/// (non-Intel/AMD hosts, containers, and unprivileged users on recent kernels). Blocks for
/// `interval`. Measures CPU packages only: add GPU board power separately.
pub fn measure_power_watts(interval: Duration) -> Option<f64> {
    measure_power_watts_in(Path::new("/sys/class/powercap"), interval)
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn measure_power_watts_in(root: &Path, interval: Duration) -> Option<f64> {
    // Top-level zones only ("intel-rapl:0"), since sub-zones ("intel-rapl:0:0") are contained in them.
    let zones: Vec<_> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
        })
        .collect();
    let before: Vec<(u64, u64)> = zones
        .iter()
        .filter_map(|z| {
            Some((
                read_u64(&z.join("energy_uj"))?,
                read_u64(&z.join("max_energy_range_uj")).unwrap_or(u64::MAX),
            ))
        })
        .collect();
    if before.is_empty() || before.len() != zones.len() || interval.is_zero() {
        return None;
    }
    std::thread::sleep(interval);
    let mut joules = 0.0;
    for (z, (e0, max)) in zones.iter().zip(&before) {
        let e1 = read_u64(&z.join("energy_uj"))?;
        // The counter wraps at max_energy_range_uj.
        let d = if e1 >= *e0 { e1 - e0 } else { max - e0 + e1 };
        joules += d as f64 / 1e6;
    }
    Some(joules / interval.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_proportional_and_sums_to_step() {
        let s = split_step_time(30.0, &[("a", 1), ("b", 2), ("c", 0), ("d", 3)]);
        assert_eq!(s, vec![("a", 5.0), ("b", 10.0), ("c", 0.0), ("d", 15.0)]);
        let even = split_step_time(9.0, &[(1u32, 0), (2, 0), (3, 0)]);
        assert_eq!(even, vec![(1, 3.0), (2, 3.0), (3, 3.0)]);
        assert!(split_step_time::<u8>(5.0, &[]).is_empty());
        assert_eq!(split_step_time(f64::NAN, &[(1u8, 3)]), vec![(1, 0.0)]);
        let mut acc = DeviceTimeAttributor::new();
        acc.add_step(10.0, &[("x", 1), ("y", 1)]);
        acc.add_step(4.0, &[("x", 3), ("y", 1)]);
        assert_eq!(acc.take(&"x"), 8.0);
        assert_eq!(acc.get(&"y"), 6.0);
        assert_eq!(acc.take(&"x"), 0.0);
    }

    #[test]
    fn rapl_reader_handles_wrap_and_skips_subzones() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("intel-rapl:0");
        let sub = dir.path().join("intel-rapl:0:0");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(z.join("energy_uj"), "100").unwrap();
        std::fs::write(z.join("max_energy_range_uj"), "1000").unwrap();
        std::fs::write(sub.join("energy_uj"), "not a number").unwrap();
        let zdir = z.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // Wrapped: 100 -> 1000 (900 uJ) then 0 -> 50.
            std::fs::write(zdir.join("energy_uj"), "50").unwrap();
        });
        let w = measure_power_watts_in(dir.path(), Duration::from_millis(200)).unwrap();
        t.join().unwrap();
        let expect = 950e-6 / 0.2;
        assert!((w - expect).abs() < 1e-9, "{w} vs {expect}");
        assert_eq!(
            measure_power_watts_in(&dir.path().join("missing"), Duration::from_millis(1)),
            None
        );
    }

    #[test]
    fn invalid_models_are_refused() {
        let good = include_str!("../examples/cost-model.toml");
        assert!(CostModel::from_toml_str(good).is_ok());
        let bad = good.replace("overhead_factor = 1.3", "overhead_factor = 0.5");
        assert!(matches!(
            CostModel::from_toml_str(&bad),
            Err(LedgerError::InvalidCostModel {
                field: "operations.overhead_factor",
                ..
            })
        ));
        let typo = good.replace("usd_per_kwh", "usd_per_kwhh");
        assert!(matches!(
            CostModel::from_toml_str(&typo),
            Err(LedgerError::CostModel { .. })
        ));
    }
}
