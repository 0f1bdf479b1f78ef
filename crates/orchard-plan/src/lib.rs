//! Memory planning: before anything is allocated, what a model will take in memory with the
//! given flags (`-c -b -ub -np -ngl -ctk -ctv`), per device, and whether that fits in what the
//! machine (cgroup, MemAvailable, `ulimit -v`, GPU adapter) allows. `orchard plan` prints the
//! plan; `serve` and `run` call [`check_or_refuse`] so that a configuration that would swap or be
//! killed is refused with the flag that fixes it.
//!
//! The plan is computed from the GGUF header alone (the file is mapped, no tensor byte is
//! read). Weights are counted as resident memory even though they are mmapped: the forward pass
//! reads every page of every weight each token, so they end up in the resident set (and in a
//! cgroup's charge) like any allocation, and the measured-RSS test would be off by the whole
//! model otherwise.
//!
//! Accuracy: the integration test `tests/measured_rss.rs` runs the real engine
//! (`examples/fill_context.rs`) for both test models at several context sizes and checks the
//! plan's CPU total against the peak resident set (VmHWM) within 10%.

mod available;
mod cli;
mod error;
mod facts;
mod plan;
mod render;

pub use available::{available_memory, AvailableMemory, MemorySource};
pub use cli::{cli_main, normalize_llama_flags, parse_bytes, parse_cache_type, PlanArgs};
pub use error::PlanError;
pub use plan::{
    Device, Fit, FitChoice, ItemKind, MemoryPlan, ModelSummary, PlanItem, PlanRequest, CACHE_TYPES,
    CTX_STEP, DEFAULT_MAX_CTX, ENGINE_SWA_FULL, RUNTIME_OVERHEAD_BYTES,
};
pub use render::refusal_message;

use facts::ModelFacts;
use orchard_models::Model;
use std::path::Path;
use std::sync::Arc;

/// The plan for `model_path` with `req`, against the memory available now (GPU capacity from
/// `req.gpu_memory_bytes`).
pub fn plan(model_path: impl AsRef<Path>, req: &PlanRequest) -> Result<MemoryPlan, PlanError> {
    plan_with(model_path, req, &available_memory(req.gpu_memory_bytes))
}

/// The plan against a given amount of available memory (tests, or a caller that measured it).
pub fn plan_with(
    model_path: impl AsRef<Path>,
    req: &PlanRequest,
    available: &AvailableMemory,
) -> Result<MemoryPlan, PlanError> {
    let facts = Arc::new(ModelFacts::load(model_path.as_ref())?);
    plan::compute(&facts, req, available)
}

/// The plan for a model that is already open (`Model::load` only maps the file), so `serve` can
/// check before building its context without parsing the header twice.
pub fn plan_for_model(
    model: &Model,
    model_path: impl AsRef<Path>,
    req: &PlanRequest,
    available: &AvailableMemory,
) -> Result<MemoryPlan, PlanError> {
    let facts = Arc::new(ModelFacts::from_model(model, model_path.as_ref()));
    plan::compute(&facts, req, available)
}

/// `--fit`: the largest context that fits (and with a GPU, the most layers on it).
pub fn fit_context(
    model_path: impl AsRef<Path>,
    req: &PlanRequest,
) -> Result<FitChoice, PlanError> {
    plan(model_path, req)?.fit_context()
}

/// The plan if it fits, else [`PlanError::DoesNotFit`] with [`refusal_message`]. Call it before
/// creating the context (nothing is allocated by it).
pub fn check_or_refuse(
    model_path: impl AsRef<Path>,
    req: &PlanRequest,
) -> Result<MemoryPlan, PlanError> {
    refuse_unless_fits(plan(model_path, req)?)
}

/// [`check_or_refuse`] for a plan already computed.
pub fn refuse_unless_fits(plan: MemoryPlan) -> Result<MemoryPlan, PlanError> {
    let fit = plan.fits();
    if fit.fits {
        return Ok(plan);
    }
    let (needed_bytes, available_bytes) = match fit.device {
        Device::Cpu => (plan.total_cpu_bytes, plan.available_cpu_bytes),
        Device::Gpu => (plan.total_gpu_bytes, plan.available_gpu_bytes.unwrap_or(0)),
    };
    Err(PlanError::DoesNotFit {
        message: refusal_message(&plan),
        needed_bytes,
        available_bytes,
    })
}
