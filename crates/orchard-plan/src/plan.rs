//! The plan itself: from a model's facts and the user's flags, every allocation the engine makes
//! (weights, KV cache, activations, matmul scratch, logits, per-sequence sampler state, tokenizer,
//! metadata, runtime), per device, compared with the memory available; and the searches built on
//! it (largest context that fits, most layers on the GPU, which flag fixes a plan that does not).

use crate::available::AvailableMemory;
use crate::facts::ModelFacts;
use crate::PlanError;
use orchard_core::DType;
use std::sync::Arc;

/// Resident memory of the process before it loads anything: executable and shared-library pages,
/// the Rust/glibc runtime, thread stacks and per-thread malloc arenas of the compute pool.
/// Measured as the VmHWM of `examples/fill_context.rs --baseline` (which starts the rayon pool
/// and returns) on x86_64 Linux with 2 threads: 3.2 MiB; rounded up to cover a larger binary
/// (the `orchard` CLI links an HTTP stack) and more threads. `tests/measured_rss.rs` checks it
/// covers that baseline and that the whole plan is within 10% of the measured peak.
pub const RUNTIME_OVERHEAD_BYTES: u64 = 8 << 20;

/// Whether sliding-window layers get a cache of the whole context. The CPU backend allocates
/// `n_ctx` cells for every layer and masks the window at attention time, so this is `true`;
/// when the engine keeps only the window (llama.cpp's default, `--swa-full` off) flip it.
pub const ENGINE_SWA_FULL: bool = true;

/// Context size used when the request says 0: the model's training context, at most this (as the
/// `orchard` commands and llama.cpp's tools default).
pub const DEFAULT_MAX_CTX: usize = 4096;

/// KV cache types llama.cpp accepts for `-ctk` / `-ctv`.
pub const CACHE_TYPES: [DType; 9] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::IQ4_NL,
    DType::Q5_0,
    DType::Q5_1,
];

/// Granularity of context sizes the searches propose (llama.cpp pads the KV cache to 256 cells).
pub const CTX_STEP: usize = 256;

/// What the user asked for: llama.cpp's flags that change memory use.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// `-c`: KV cells shared by all sequences; 0 = the model's training context, at most
    /// [`DEFAULT_MAX_CTX`].
    pub n_ctx: usize,
    /// `-b`: tokens submitted per decode call.
    pub n_batch: usize,
    /// `-ub`: tokens per forward pass; activation buffers have this many rows.
    pub n_ubatch: usize,
    /// `-np`: sequences decoded together (one sampler and one logits row each).
    pub n_parallel: usize,
    /// `-ngl`: the last N repeating layers run on the GPU, and the output layer when N > n_layer.
    pub n_gpu_layers: usize,
    pub cache_type_k: DType,
    pub cache_type_v: DType,
    /// The GPU adapter's memory; `None` when there is no GPU or its size is unknown (then the
    /// GPU column is shown but not checked).
    pub gpu_memory_bytes: Option<u64>,
    /// Sliding-window layers cache the whole context instead of their window
    /// (default [`ENGINE_SWA_FULL`], what the engine does today).
    pub swa_full: bool,
}

impl Default for PlanRequest {
    fn default() -> Self {
        PlanRequest {
            n_ctx: 0,
            n_batch: 2048,
            n_ubatch: 512,
            n_parallel: 1,
            n_gpu_layers: 0,
            cache_type_k: DType::F16,
            cache_type_v: DType::F16,
            gpu_memory_bytes: None,
            swa_full: ENGINE_SWA_FULL,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Cpu,
    Gpu,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "CPU",
            Device::Gpu => "GPU",
        })
    }
}

/// What an item is, which decides the flag that shrinks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ItemKind {
    Weights,
    KvCache,
    /// Activations, matmul scratch, logits: sized by `-ub` / `-b` / `-np`.
    Compute,
    /// Per-sequence state (samplers): sized by `-np`.
    Sequences,
    /// Tokenizer, metadata, tables, runtime: fixed for a model.
    Fixed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    pub name: String,
    pub kind: ItemKind,
    pub device: Device,
    pub bytes: u64,
    /// How the number was obtained (shapes and types), for the table.
    pub detail: String,
}

/// A memory plan: every item, the totals per device and what is available.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub items: Vec<PlanItem>,
    pub total_cpu_bytes: u64,
    pub total_gpu_bytes: u64,
    pub available: AvailableMemory,
    pub available_cpu_bytes: u64,
    pub available_gpu_bytes: Option<u64>,
    /// The request with `n_ctx` resolved.
    pub request: PlanRequest,
    /// KV bytes one more token of context costs (all layers, both devices).
    pub kv_bytes_per_token: u64,
    pub model: ModelSummary,
    pub(crate) facts: Arc<ModelFacts>,
}

/// The model as the table's header shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    pub file_name: String,
    pub arch: String,
    pub n_layer: usize,
    pub n_ctx_train: usize,
    pub n_vocab: usize,
    pub weight_bytes: u64,
    pub file_bytes: u64,
}

/// Whether a plan fits, and if not what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    pub fits: bool,
    /// Available minus needed on the tightest device (negative when it does not fit).
    pub headroom_bytes: i64,
    /// The device that overflows (or the tightest one when everything fits).
    pub device: Device,
    /// The largest item on that device.
    pub biggest_item: PlanItem,
    /// The flag change that would make it fit (empty when it fits), e.g. `reduce -c to 8192`.
    pub suggestion: String,
}

/// The outcome of `--fit`.
#[derive(Debug, Clone)]
pub struct FitChoice {
    pub n_ctx: usize,
    pub n_gpu_layers: usize,
    pub plan: MemoryPlan,
}

fn check_cache_type(flag: &'static str, t: DType, facts: &ModelFacts) -> Result<(), PlanError> {
    let bad = |reason: String| PlanError::BadCacheType {
        flag,
        name: t.name().into(),
        reason,
    };
    if !CACHE_TYPES.contains(&t) {
        return Err(bad(format!(
            "not a KV cache type (allowed: {})",
            CACHE_TYPES.map(|t| t.name()).join(", ")
        )));
    }
    for hd in [facts.head_dim_k, facts.head_dim_v] {
        if hd % t.block_size() != 0 {
            return Err(bad(format!(
                "head size {hd} is not a multiple of its block size {}",
                t.block_size()
            )));
        }
    }
    Ok(())
}

fn row(t: DType, width: usize) -> u64 {
    // Checked by check_cache_type: every head is whole blocks.
    t.row_bytes(width as u64).unwrap_or(u64::MAX / 1024)
}

/// KV cells a layer holds for a request.
fn layer_cells(window: Option<usize>, req: &PlanRequest) -> usize {
    match window {
        Some(w) if !req.swa_full => {
            // llama.cpp's SWA cache: the window of every sequence plus one ubatch, padded.
            let want = (w * req.n_parallel + req.n_ubatch).div_ceil(CTX_STEP) * CTX_STEP;
            want.min(req.n_ctx)
        }
        _ => req.n_ctx,
    }
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

pub(crate) fn compute(
    facts: &Arc<ModelFacts>,
    req: &PlanRequest,
    avail: &AvailableMemory,
) -> Result<MemoryPlan, PlanError> {
    let f = facts.as_ref();
    let mut req = req.clone();
    if req.n_ctx == 0 {
        req.n_ctx = f.n_ctx_train.clamp(1, DEFAULT_MAX_CTX);
    }
    for (flag, v) in [
        ("-b", req.n_batch),
        ("-ub", req.n_ubatch),
        ("-np", req.n_parallel),
    ] {
        if v == 0 {
            return Err(PlanError::BadRequest {
                flag,
                reason: "must be at least 1".into(),
            });
        }
    }
    check_cache_type("-ctk", req.cache_type_k, f)?;
    check_cache_type("-ctv", req.cache_type_v, f)?;
    // The request's GPU figure wins over the measured one (planning for another card).
    let gpu_avail = req.gpu_memory_bytes.or(avail.gpu_bytes);
    req.gpu_memory_bytes = gpu_avail;

    let n_layer = f.n_layer;
    let n_gpu = req.n_gpu_layers.min(n_layer);
    let first_gpu = n_layer - n_gpu;
    let output_gpu = req.n_gpu_layers > n_layer;
    let out_dev = if output_gpu { Device::Gpu } else { Device::Cpu };
    let rows = req.n_batch.min(req.n_ubatch).min(req.n_ctx).max(1) as u64;
    let n_out = req.n_parallel.min(req.n_batch) as u64;
    let (e, ff, vocab) = (f.n_embd as u64, f.n_ff as u64, f.n_vocab as u64);
    let mut items: Vec<PlanItem> = Vec::new();
    let mut push = |name: String, kind, device, bytes: u64, detail: String| {
        if bytes > 0 {
            items.push(PlanItem {
                name,
                kind,
                device,
                bytes,
                detail,
            });
        }
    };
    let dev_layers = |d: Device| match d {
        Device::Cpu => 0..first_gpu,
        Device::Gpu => first_gpu..n_layer,
    };

    // Weights.
    for d in [Device::Cpu, Device::Gpu] {
        let range = dev_layers(d);
        let n = range.len();
        let mut bytes: u64 = f.layers[range].iter().map(|l| l.weight_bytes).sum();
        let mut what = format!("{n} layers");
        if d == Device::Cpu {
            bytes += f.token_embd_bytes + f.other_global_bytes + f.output_norm_bytes;
            what += " + token_embd";
            if !output_gpu && !f.output_tied {
                bytes += f.output_bytes;
                what += " + output";
            }
        } else if output_gpu {
            bytes += f.output_bytes + f.output_norm_bytes;
            what += if f.output_tied {
                " + output (a copy of the tied token_embd)"
            } else {
                " + output"
            };
        }
        if n > 0 || d == Device::Cpu || output_gpu {
            let detail = if d == Device::Cpu {
                "mmapped; resident once the forward pass has read every page".into()
            } else {
                "uploaded copies".into()
            };
            push(
                format!("weights: {what}"),
                ItemKind::Weights,
                d,
                bytes,
                detail,
            );
        }
    }

    // KV cache.
    let (tk, tv) = (req.cache_type_k, req.cache_type_v);
    let mut kv_per_token = 0;
    for d in [Device::Cpu, Device::Gpu] {
        let range = dev_layers(d);
        let n = range.len();
        let mut bytes = 0u64;
        let mut windowed = 0usize;
        for l in &f.layers[range] {
            let per_cell = row(tk, l.k_width) + row(tv, l.v_width);
            let cells = layer_cells(l.window, &req);
            if cells < req.n_ctx {
                windowed += 1;
            } else {
                kv_per_token += per_cell;
            }
            bytes = bytes.saturating_add(per_cell.saturating_mul(cells as u64));
        }
        let mut detail = format!(
            "{n} layers x {} cells x (K {} + V {}) x {} KV heads x {}",
            req.n_ctx,
            tk.name(),
            tv.name(),
            f.n_head_kv,
            f.head_dim_k
        );
        if windowed > 0 {
            detail += &format!("; {windowed} sliding-window layers hold only their window");
        }
        push(
            format!(
                "KV cache: -c {}, K {} + V {}",
                req.n_ctx,
                tk.name(),
                tv.name()
            ),
            ItemKind::KvCache,
            d,
            bytes,
            detail,
        );
    }

    // Activations and matmul scratch of each backend that runs layers or the output head.
    let q_w = (f.n_head * f.head_dim_k) as u64;
    let k_w = (f.n_head_kv * f.head_dim_k) as u64;
    let v_w = (f.n_head_kv * f.head_dim_v) as u64;
    let a_w = (f.n_head * f.head_dim_v) as u64;
    // x, the norms' outputs, attn_out and ffn_out are n_embd wide; gate, up and act are n_ff.
    let embd_bufs = 1 + f.embd_norms() as u64 + 2;
    let layer_row_floats = embd_bufs * e + q_w + k_w + v_w + a_w + 3 * ff;
    for d in [Device::Cpu, Device::Gpu] {
        let layers = &f.layers[dev_layers(d)];
        let runs_output = d == out_dev;
        if layers.is_empty() && !runs_output {
            continue;
        }
        let mut act = 0u64;
        let mut tr = 0u64;
        let mut acts = 0u64;
        if !layers.is_empty() {
            acts += rows * layer_row_floats * 4;
            act = rows
                * layers
                    .iter()
                    .map(|l| l.max_act_row_bytes)
                    .max()
                    .unwrap_or(0);
            if rows > 1 {
                tr = rows * layers.iter().map(|l| l.max_out_rows).max().unwrap_or(0) * 4;
            }
        }
        if runs_output {
            acts += n_out * 2 * e * 4; // out_rows, out_norm
            act = act.max(n_out * f.output_act_row_bytes);
            if n_out > 1 {
                tr = tr.max(n_out * vocab * 4);
            }
        }
        push(
            "activations".into(),
            ItemKind::Compute,
            d,
            acts,
            format!(
                "{} named buffers of [{rows}, width] f32 (-ub), output rows [{n_out}, {e}]",
                embd_bufs + 7
            ),
        );
        push(
            "matmul scratch".into(),
            ItemKind::Compute,
            d,
            act + tr,
            "quantized activations + transposed multi-token output".into(),
        );
        if runs_output {
            push(
                "logits".into(),
                ItemKind::Compute,
                d,
                n_out * vocab * 4,
                format!("[{n_out}, {vocab}] f32"),
            );
        }
        if d == Device::Cpu && !layers.is_empty() {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            push(
                "attention scores".into(),
                ItemKind::Compute,
                d,
                threads * req.n_ctx as u64 * 4,
                format!("{threads} threads x {} f32", req.n_ctx),
            );
        }
    }
    push(
        "host staging".into(),
        ItemKind::Compute,
        Device::Cpu,
        (rows * e + e + 2 * n_out * vocab) * 4,
        format!("embedding rows [{rows}, {e}] + 2 logits copies [{n_out}, {vocab}] f32 (per ubatch, per batch)"),
    );
    push(
        format!("samplers: -np {}", req.n_parallel),
        ItemKind::Sequences,
        Device::Cpu,
        req.n_parallel as u64 * vocab * 16,
        format!(
            "{} x {vocab} candidates (12 B) + logit row (4 B)",
            req.n_parallel
        ),
    );
    push(
        "tokenizer".into(),
        ItemKind::Fixed,
        Device::Cpu,
        f.tokenizer_bytes,
        f.tokenizer_desc.clone(),
    );
    push(
        "GGUF metadata".into(),
        ItemKind::Fixed,
        Device::Cpu,
        f.header_bytes + f.metadata_heap_bytes,
        format!(
            "header {} (mmapped) + parsed values {}",
            human(f.header_bytes),
            human(f.metadata_heap_bytes)
        ),
    );
    let cpu_vectors: u64 = f.layers[..first_gpu]
        .iter()
        .map(|l| l.vector_f32_bytes)
        .sum::<u64>()
        + f.global_vector_f32_bytes;
    push(
        "model tables".into(),
        ItemKind::Fixed,
        Device::Cpu,
        f.tables_bytes + cpu_vectors,
        "tensor infos, f32 copies of norm weights".into(),
    );
    push(
        "runtime".into(),
        ItemKind::Fixed,
        Device::Cpu,
        RUNTIME_OVERHEAD_BYTES,
        "binary, libraries, thread stacks (measured once)".into(),
    );

    let total = |d: Device| -> u64 {
        items
            .iter()
            .filter(|i| i.device == d)
            .fold(0u64, |a, i| a.saturating_add(i.bytes))
    };
    let (total_cpu_bytes, total_gpu_bytes) = (total(Device::Cpu), total(Device::Gpu));
    Ok(MemoryPlan {
        total_cpu_bytes,
        total_gpu_bytes,
        available_cpu_bytes: avail.cpu_bytes,
        available_gpu_bytes: gpu_avail,
        available: AvailableMemory {
            gpu_bytes: gpu_avail,
            ..avail.clone()
        },
        kv_bytes_per_token: kv_per_token,
        model: ModelSummary {
            file_name: f.file_name.clone(),
            arch: f.arch.clone(),
            n_layer: f.n_layer,
            n_ctx_train: f.n_ctx_train,
            n_vocab: f.n_vocab,
            weight_bytes: f.weight_bytes,
            file_bytes: f.file_bytes,
        },
        items,
        request: req,
        facts: facts.clone(),
    })
}

impl MemoryPlan {
    /// The same model and available memory with other flags.
    pub fn replan(&self, req: &PlanRequest) -> Result<MemoryPlan, PlanError> {
        compute(&self.facts, req, &self.available)
    }

    /// The sum of the items of `kind` (both devices).
    pub fn bytes_of(&self, kind: ItemKind) -> u64 {
        self.items
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.bytes)
            .sum()
    }

    /// The item named `name` on `device`, if any.
    pub fn item(&self, name_prefix: &str, device: Device) -> Option<&PlanItem> {
        self.items
            .iter()
            .find(|i| i.device == device && i.name.starts_with(name_prefix))
    }

    fn device_headroom(&self, d: Device) -> Option<i64> {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        match d {
            Device::Cpu => Some(clamp(self.available_cpu_bytes) - clamp(self.total_cpu_bytes)),
            Device::Gpu if self.total_gpu_bytes == 0 => None,
            Device::Gpu => self
                .available_gpu_bytes
                .map(|a| clamp(a) - clamp(self.total_gpu_bytes)),
        }
    }

    fn ok(&self) -> bool {
        [Device::Cpu, Device::Gpu]
            .iter()
            .all(|&d| self.device_headroom(d).is_none_or(|h| h >= 0))
    }

    fn biggest_on(&self, d: Device) -> PlanItem {
        self.items
            .iter()
            .filter(|i| i.device == d)
            .max_by_key(|i| i.bytes)
            .cloned()
            .unwrap_or_else(|| PlanItem {
                name: "nothing".into(),
                kind: ItemKind::Fixed,
                device: d,
                bytes: 0,
                detail: String::new(),
            })
    }

    /// Whether the plan fits, with the headroom and, when it does not, the change that fixes it.
    pub fn fits(&self) -> Fit {
        let cpu = self.device_headroom(Device::Cpu).unwrap_or(i64::MAX);
        let gpu = self.device_headroom(Device::Gpu);
        let device = match gpu {
            Some(g) if g < cpu => Device::Gpu,
            _ => Device::Cpu,
        };
        let headroom_bytes = cpu.min(gpu.unwrap_or(i64::MAX));
        let fits = self.ok();
        let biggest_item = self.biggest_on(device);
        let suggestion = if fits {
            String::new()
        } else {
            self.suggest(device, &biggest_item)
        };
        Fit {
            fits,
            headroom_bytes,
            device,
            biggest_item,
            suggestion,
        }
    }

    fn fits_with(&self, req: &PlanRequest) -> bool {
        self.replan(req).is_ok_and(|p| p.ok())
    }

    /// The largest `n_ctx` (a multiple of [`CTX_STEP`] unless smaller than one step) in
    /// `1..=limit` that fits with the other flags of `req`.
    fn max_ctx(&self, req: &PlanRequest, limit: usize) -> Option<usize> {
        let with = |c: usize| PlanRequest {
            n_ctx: c,
            ..req.clone()
        };
        if limit == 0 {
            return None;
        }
        let step = CTX_STEP.min(limit);
        if !self.fits_with(&with(step)) {
            return None;
        }
        // Invariant: lo * step fits; hi * step does not or is past the limit.
        let (mut lo, mut hi) = (1usize, limit / step + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.fits_with(&with(mid * step)) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo * step)
    }

    /// The most layers (up to `n_layer + 1`, the output layer included) that fit on the GPU.
    fn max_ngl(&self, req: &PlanRequest) -> Option<usize> {
        (0..=self.model.n_layer + 1).rev().find(|&n| {
            self.fits_with(&PlanRequest {
                n_gpu_layers: n,
                ..req.clone()
            })
        })
    }

    /// Flag changes that each make the plan fit, the biggest item's own flag first, at most
    /// three, joined with "or".
    fn suggest(&self, device: Device, biggest: &PlanItem) -> String {
        let req = &self.request;
        let mut fixes: Vec<(ItemKind, String)> = Vec::new();
        if device == Device::Gpu && req.n_gpu_layers > 0 {
            if let Some(n) = self.max_ngl(req).filter(|&n| n < req.n_gpu_layers) {
                fixes.push((ItemKind::Weights, format!("lower -ngl to {n}")));
            }
        }
        if let Some(c) = self.max_ctx(req, req.n_ctx - 1) {
            fixes.push((ItemKind::KvCache, format!("reduce -c to {c}")));
        }
        let bytes_per_value = |t: DType| t.block_bytes() as f64 / t.block_size() as f64;
        for t in [DType::Q8_0, DType::Q4_0] {
            let narrower = bytes_per_value(t) < bytes_per_value(req.cache_type_k)
                || bytes_per_value(t) < bytes_per_value(req.cache_type_v);
            let r = PlanRequest {
                cache_type_k: t,
                cache_type_v: t,
                ..req.clone()
            };
            if narrower && self.fits_with(&r) {
                fixes.push((
                    ItemKind::KvCache,
                    format!("use -ctk {0} -ctv {0}", t.name()),
                ));
                break;
            }
        }
        if device == Device::Cpu && self.available_gpu_bytes.is_some() {
            if let Some(n) = self.max_ngl(req).filter(|&n| n > req.n_gpu_layers) {
                fixes.push((ItemKind::Weights, format!("raise -ngl to {n}")));
            }
        }
        let mut ub = req.n_ubatch.min(req.n_batch);
        while ub > 1 {
            ub /= 2;
            let r = PlanRequest {
                n_ubatch: ub,
                ..req.clone()
            };
            if self.fits_with(&r) {
                fixes.push((ItemKind::Compute, format!("reduce -ub to {ub}")));
                break;
            }
        }
        let fewer = (1..req.n_parallel).rev().find(|&n| {
            self.fits_with(&PlanRequest {
                n_parallel: n,
                ..req.clone()
            })
        });
        if let Some(n) = fewer {
            fixes.push((ItemKind::Sequences, format!("reduce -np to {n}")));
        }
        // Stable sort: the biggest item's own fixes first, the rest in the order above.
        fixes.sort_by_key(|(k, _)| *k != biggest.kind);
        let mut out: Vec<String> = fixes.into_iter().map(|(_, s)| s).take(3).collect();
        if out.is_empty() {
            out.push(if biggest.kind == ItemKind::Weights {
                format!(
                    "use a smaller quantization of the model (its weights alone take {})",
                    human(biggest.bytes)
                )
            } else {
                format!(
                    "free {} of memory or raise the limit",
                    human(self.fits_headroom().unsigned_abs())
                )
            });
        }
        out.join(" or ")
    }

    fn fits_headroom(&self) -> i64 {
        let cpu = self.device_headroom(Device::Cpu).unwrap_or(i64::MAX);
        cpu.min(self.device_headroom(Device::Gpu).unwrap_or(i64::MAX))
    }

    /// `--fit`: with a GPU, the most layers that fit at the requested context; then the largest
    /// context (up to the model's training context) that fits with those layers.
    pub fn fit_context(&self) -> Result<FitChoice, PlanError> {
        let req = &self.request;
        let cap = self.model.n_ctx_train.max(1);
        let mut r = req.clone();
        // Without a known GPU capacity every layer would "fit" there: leave -ngl as asked.
        if self.available_gpu_bytes.is_some() {
            let at = PlanRequest {
                n_ctx: req.n_ctx.min(cap),
                ..req.clone()
            };
            r.n_gpu_layers = self.max_ngl(&at).unwrap_or(0);
        }
        match self.max_ctx(&r, cap) {
            Some(n_ctx) => {
                r.n_ctx = n_ctx;
                let plan = self.replan(&r)?;
                Ok(FitChoice {
                    n_ctx,
                    n_gpu_layers: r.n_gpu_layers,
                    plan,
                })
            }
            None => {
                let smallest = self.replan(&PlanRequest {
                    n_ctx: CTX_STEP.min(cap),
                    ..r
                })?;
                Err(PlanError::DoesNotFit {
                    message: crate::refusal_message(&smallest),
                    needed_bytes: smallest.total_cpu_bytes,
                    available_bytes: smallest.available_cpu_bytes,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::LayerFacts;

    const MIB: u64 = 1 << 20;

    /// A llama-shaped model without a file: 4 layers of 100 MiB, 2 KV heads of 64.
    fn facts(window: Option<usize>) -> Arc<ModelFacts> {
        facts_with(window, 100 * MIB)
    }

    fn facts_with(window: Option<usize>, layer_bytes: u64) -> Arc<ModelFacts> {
        let layer = LayerFacts {
            weight_bytes: layer_bytes,
            vector_f32_bytes: 2 * 4 * 256,
            k_width: 128,
            v_width: 128,
            window,
            embd_norms: 2,
            max_act_row_bytes: 34 * 1024 / 32,
            max_out_rows: 1024,
        };
        let mut layers = vec![layer; 4];
        layers[3].window = None;
        Arc::new(ModelFacts {
            file_name: "toy.gguf".into(),
            arch: "llama".into(),
            n_layer: 4,
            n_embd: 256,
            n_ff: 1024,
            n_head: 4,
            n_head_kv: 2,
            head_dim_k: 64,
            head_dim_v: 64,
            n_vocab: 1000,
            n_ctx_train: 65536,
            layers,
            token_embd_bytes: 10 * MIB,
            output_bytes: 10 * MIB,
            output_tied: true,
            output_act_row_bytes: 272,
            output_norm_bytes: 1024,
            other_global_bytes: 0,
            global_vector_f32_bytes: 1024,
            weight_bytes: 4 * layer_bytes + 10 * MIB + 1024,
            file_bytes: 411 * MIB,
            header_bytes: 4096,
            metadata_heap_bytes: 1000,
            tables_bytes: 1000,
            tokenizer_bytes: 0,
            tokenizer_desc: String::new(),
        })
    }

    fn req(n_ctx: usize) -> PlanRequest {
        PlanRequest {
            n_ctx,
            ..PlanRequest::default()
        }
    }

    fn big() -> AvailableMemory {
        AvailableMemory::fixed(1 << 50, None)
    }

    fn kv(p: &MemoryPlan, d: Device) -> u64 {
        p.item("KV cache", d).map_or(0, |i| i.bytes)
    }

    #[test]
    fn kv_cache_bytes_per_type() {
        let f = facts(None);
        let plan = |t: DType| {
            compute(
                &f,
                &PlanRequest {
                    cache_type_k: t,
                    cache_type_v: t,
                    ..req(8192)
                },
                &big(),
            )
            .unwrap()
        };
        // 4 layers x 8192 cells x 2 (K, V) x 128 values
        let f16 = kv(&plan(DType::F16), Device::Cpu);
        assert_eq!(f16, 4 * 8192 * 2 * 128 * 2);
        assert_eq!(kv(&plan(DType::Q8_0), Device::Cpu) * 64, f16 * 34);
        assert_eq!(kv(&plan(DType::Q4_0), Device::Cpu) * 64, f16 * 18);
        assert_eq!(plan(DType::F16).kv_bytes_per_token, 4 * 2 * 128 * 2);
    }

    #[test]
    fn sliding_window_layers_hold_their_window_unless_swa_full() {
        let f = facts(Some(1024));
        let full = compute(
            &f,
            &PlanRequest {
                swa_full: true,
                ..req(32768)
            },
            &big(),
        )
        .unwrap();
        assert_eq!(kv(&full, Device::Cpu), 4 * 32768 * 512);
        let win = compute(
            &f,
            &PlanRequest {
                swa_full: false,
                n_parallel: 2,
                ..req(32768)
            },
            &big(),
        )
        .unwrap();
        // three windowed layers keep pad256(1024 * 2 + 512) = 2560 cells, one keeps 32768
        assert_eq!(kv(&win, Device::Cpu), (3 * 2560 + 32768) * 512);
        assert_eq!(win.kv_bytes_per_token, 512);
        // a context smaller than the window: every layer holds the context
        let small = compute(
            &f,
            &PlanRequest {
                swa_full: false,
                ..req(1024)
            },
            &big(),
        )
        .unwrap();
        assert_eq!(kv(&small, Device::Cpu), 4 * 1024 * 512);
    }

    #[test]
    fn gpu_layers_move_weights_kv_and_the_output_as_llama_cpp_does() {
        let f = facts(None);
        let p = |ngl| {
            compute(
                &f,
                &PlanRequest {
                    n_gpu_layers: ngl,
                    ..req(1024)
                },
                &big(),
            )
            .unwrap()
        };
        let w = |p: &MemoryPlan, d| p.item("weights", d).map_or(0, |i| i.bytes);
        let cpu0 = p(0);
        assert_eq!(cpu0.total_gpu_bytes, 0);
        assert_eq!(w(&cpu0, Device::Cpu), 410 * MIB + 1024);
        // the last 3 layers on the GPU; token_embd (tied head) and layer 0 on the CPU
        let p3 = p(3);
        assert_eq!(w(&p3, Device::Gpu), 300 * MIB);
        assert_eq!(w(&p3, Device::Cpu), 110 * MIB + 1024);
        assert_eq!(kv(&p3, Device::Gpu), 3 * kv(&cpu0, Device::Cpu) / 4);
        assert!(p3.item("logits", Device::Cpu).is_some());
        // every layer and the output: the GPU gets a copy of the tied head, the CPU keeps
        // token_embd for the embedding lookup
        let p5 = p(5);
        assert_eq!(w(&p5, Device::Gpu), 410 * MIB + 1024);
        assert_eq!(w(&p5, Device::Cpu), 10 * MIB + 1024);
        assert!(p5.item("logits", Device::Gpu).is_some());
        assert!(p5.item("activations", Device::Cpu).is_none());
        assert_eq!(kv(&p5, Device::Cpu), 0);
        assert_eq!(p(99).items, p5.items);
    }

    #[test]
    fn kv_overflow_suggests_a_context_that_fits_and_a_narrower_cache() {
        let f = facts_with(None, MIB);
        let base = compute(&f, &req(1024), &big()).unwrap();
        // room for the fixed part plus 20000 tokens of f16 KV
        let fixed = base.total_cpu_bytes - kv(&base, Device::Cpu);
        let avail = AvailableMemory::fixed(fixed + 20000 * base.kv_bytes_per_token, None);
        let p = compute(&f, &req(32768), &avail).unwrap();
        let fit = p.fits();
        assert!(!fit.fits);
        assert_eq!(fit.biggest_item.kind, ItemKind::KvCache);
        assert!(fit.headroom_bytes < 0);
        // the largest multiple of 256 that fits: a little under 20000, as the per-thread
        // attention scores grow with the context too
        let c = (1..=128)
            .map(|k| k * 256)
            .filter(|&c| p.replan(&req(c)).unwrap().fits().fits)
            .max()
            .unwrap();
        assert!((19000..20000).contains(&c), "{c}");
        assert_eq!(
            fit.suggestion,
            format!("reduce -c to {c} or use -ctk q8_0 -ctv q8_0"),
            "{}",
            p.render_table()
        );
        let msg = crate::refusal_message(&p);
        let reduce = format!("reduce -c to {c}");
        for want in ["not enough memory", "KV cache", &reduce, "given"] {
            assert!(msg.contains(want), "{msg}");
        }
        // --fit: the largest context, whatever was asked
        let choice = p.fit_context().unwrap();
        assert_eq!((choice.n_ctx, choice.n_gpu_layers), (c, 0));
        assert!(choice.plan.fits().fits);
        // plenty of memory: capped at the training context
        let roomy = compute(&f, &req(1024), &big()).unwrap();
        assert_eq!(roomy.fit_context().unwrap().n_ctx, 65536);
    }

    #[test]
    fn weights_that_cannot_fit_name_the_weights_and_fit_reports_it() {
        let f = facts(None);
        let p = compute(&f, &req(1024), &AvailableMemory::fixed(300 * MIB, None)).unwrap();
        let fit = p.fits();
        assert_eq!(fit.biggest_item.kind, ItemKind::Weights);
        assert!(
            fit.suggestion.contains("smaller quantization"),
            "{}",
            fit.suggestion
        );
        assert!(matches!(p.fit_context(), Err(PlanError::DoesNotFit { .. })));
        // with a GPU, more layers is the fix
        let g = compute(
            &f,
            &req(1024),
            &AvailableMemory::fixed(300 * MIB, Some(1 << 40)),
        )
        .unwrap();
        assert!(
            g.fits().suggestion.starts_with("raise -ngl to 5"),
            "{}",
            g.fits().suggestion
        );
    }

    #[test]
    fn gpu_overflow_lowers_ngl_and_fit_picks_the_most_layers() {
        let f = facts(None);
        // the GPU holds two layers with their KV and buffers, not three
        let avail = AvailableMemory::fixed(1 << 40, Some(250 * MIB));
        let p = compute(
            &f,
            &PlanRequest {
                n_gpu_layers: 99,
                ..req(4096)
            },
            &avail,
        )
        .unwrap();
        let fit = p.fits();
        assert!(!fit.fits);
        assert_eq!(fit.device, Device::Gpu);
        assert!(
            fit.suggestion.starts_with("lower -ngl to 2"),
            "{}",
            fit.suggestion
        );
        let choice = p.fit_context().unwrap();
        assert_eq!(choice.n_gpu_layers, 2);
        assert!(choice.plan.fits().fits);
        assert!(choice.n_ctx >= 4096);
    }

    #[test]
    fn gpu_capacity_from_the_request_wins_and_unknown_capacity_keeps_ngl() {
        let f = facts(None);
        let r = PlanRequest {
            n_gpu_layers: 2,
            gpu_memory_bytes: Some(5),
            ..req(1024)
        };
        let p = compute(&f, &r, &AvailableMemory::fixed(1 << 50, Some(1 << 40))).unwrap();
        assert_eq!(p.available_gpu_bytes, Some(5));
        assert!(!p.fits().fits);
        assert_eq!(p.replan(&p.request).unwrap().available_gpu_bytes, Some(5));
        // GPU size unknown: the GPU column is shown, not checked, and --fit leaves -ngl alone
        let unknown = PlanRequest {
            gpu_memory_bytes: None,
            ..r
        };
        let p = compute(&f, &unknown, &big()).unwrap();
        assert!(p.total_gpu_bytes > 0 && p.fits().fits);
        assert_eq!(p.fit_context().unwrap().n_gpu_layers, 2);
    }

    #[test]
    fn bad_requests_are_errors() {
        let f = facts(None);
        let e = compute(
            &f,
            &PlanRequest {
                n_ubatch: 0,
                ..req(16)
            },
            &big(),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::BadRequest { flag: "-ub", .. }));
        let e = compute(
            &f,
            &PlanRequest {
                cache_type_k: DType::Q4_K,
                ..req(16)
            },
            &big(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a KV cache type"), "{e}");
        let mut odd = (*f).clone();
        odd.head_dim_v = 80;
        let e = compute(
            &Arc::new(odd),
            &PlanRequest {
                cache_type_v: DType::Q8_0,
                ..req(16)
            },
            &big(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("head size 80"), "{e}");
        // -c 0: the training context, at most 4096
        assert_eq!(compute(&f, &req(0), &big()).unwrap().request.n_ctx, 4096);
    }
}
