//! The plan as people read it: `orchard plan`'s table and the one-paragraph refusal that `serve`
//! and `run` print instead of starting something that would swap or be killed.

use crate::plan::{human, Device, MemoryPlan};
use std::fmt::Write as _;

impl MemoryPlan {
    /// The plan as a table: one line per item with its exact byte count, then totals, what is
    /// available (and from which bound) and the verdict.
    pub fn render_table(&self) -> String {
        let m = &self.model;
        let r = &self.request;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model: {} ({}, {} layers, n_ctx_train {}, n_vocab {}, {} of weights)",
            m.file_name,
            m.arch,
            m.n_layer,
            m.n_ctx_train,
            m.n_vocab,
            human(m.weight_bytes)
        );
        let _ = writeln!(
            s,
            "flags: -c {} -b {} -ub {} -np {} -ngl {} -ctk {} -ctv {}{}",
            r.n_ctx,
            r.n_batch,
            r.n_ubatch,
            r.n_parallel,
            r.n_gpu_layers,
            r.cache_type_k.name(),
            r.cache_type_v.name(),
            if r.swa_full {
                ""
            } else {
                " (SWA window cache)"
            }
        );
        let name_w = self
            .items
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0)
            .max(24);
        let _ = writeln!(
            s,
            "{:<name_w$}  {:<3}  {:>15}  {:>11}  detail",
            "item", "dev", "bytes", ""
        );
        for d in [Device::Cpu, Device::Gpu] {
            for i in self.items.iter().filter(|i| i.device == d) {
                let _ = writeln!(
                    s,
                    "{:<name_w$}  {:<3}  {:>15}  {:>11}  {}",
                    i.name,
                    i.device,
                    i.bytes,
                    human(i.bytes),
                    i.detail
                );
            }
        }
        let mut total_line =
            |label: &str, dev: Device, bytes: u64, avail: Option<u64>, src: &str| {
                let _ = writeln!(
                    s,
                    "{:<name_w$}  {:<3}  {:>15}  {:>11}",
                    label,
                    dev,
                    bytes,
                    human(bytes)
                );
                match avail {
                    Some(a) => {
                        let _ = writeln!(
                            s,
                            "{:<name_w$}  {:<3}  {:>15}  {:>11}  {}",
                            "available",
                            dev,
                            a,
                            human(a),
                            src
                        );
                    }
                    None => {
                        let _ =
                            writeln!(s, "{:<name_w$}  {:<3}  {:>15}", "available", dev, "unknown");
                    }
                }
            };
        total_line(
            "total",
            Device::Cpu,
            self.total_cpu_bytes,
            Some(self.available_cpu_bytes),
            &self.available.cpu_source,
        );
        if self.total_gpu_bytes > 0 {
            total_line(
                "total",
                Device::Gpu,
                self.total_gpu_bytes,
                self.available_gpu_bytes,
                "adapter memory",
            );
        }
        let _ = writeln!(
            s,
            "KV cache per token of context: {} B",
            self.kv_bytes_per_token
        );
        let fit = self.fits();
        if fit.fits {
            let _ = writeln!(
                s,
                "fits: yes, headroom {} on the {}",
                human(fit.headroom_bytes.max(0) as u64),
                fit.device
            );
        } else {
            let _ = writeln!(
                s,
                "fits: NO, {} short on the {}; biggest item: {} ({}); {}",
                human(fit.headroom_bytes.unsigned_abs()),
                fit.device,
                fit.biggest_item.name,
                human(fit.biggest_item.bytes),
                fit.suggestion
            );
        }
        s
    }
}

/// Why a plan is refused, naming its biggest item and the flag that would fix it; meant to be
/// printed as is by `serve` / `run`.
pub fn refusal_message(plan: &MemoryPlan) -> String {
    let fit = plan.fits();
    let (needed, avail, source) = match fit.device {
        Device::Cpu => (
            plan.total_cpu_bytes,
            plan.available_cpu_bytes,
            plan.available.cpu_source.clone(),
        ),
        Device::Gpu => (
            plan.total_gpu_bytes,
            plan.available_gpu_bytes.unwrap_or(0),
            "GPU adapter memory".to_string(),
        ),
    };
    let fix = if fit.suggestion.is_empty() {
        "it fits now; nothing to change".to_string()
    } else {
        fit.suggestion.clone()
    };
    format!(
        "not enough memory: {} with -c {} needs {} on the {} but {} is available ({}). \
         The biggest item is {} ({}): {}. Run `orchard plan` for the whole plan, or pass \
         --no-fit-check to start anyway.",
        plan.model.file_name,
        plan.request.n_ctx,
        human(needed),
        fit.device,
        human(avail),
        source,
        fit.biggest_item.name,
        human(fit.biggest_item.bytes),
        fix
    )
}
