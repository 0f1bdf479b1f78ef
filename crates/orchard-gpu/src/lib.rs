//! The GPU implementation of `orchard_backend::Backend`, written once in WGSL on wgpu: Vulkan on
//! Linux, Metal on macOS (DX12 on Windows), Mesa's lavapipe in CI.
//!
//! Every op records a dispatch (or a buffer copy) into a per-step list; nothing reaches the
//! device until `download` or `sync`, which encode the step into one command buffer with one
//! submission (or until 80 dispatches are recorded, see below). Op parameters go into a uniform arena bound with dynamic offsets and per-step
//! tables (KV cell lists, RoPE angles, uploads) into a storage arena, both written once per
//! submission, so bind groups are cached across steps. Weights are repacked and uploaded once
//! at `add_weight` (split by rows where larger than the device's storage binding limit); the KV
//! cache of the layers this backend runs lives on the device as f16.
//!
//! Steps longer than 80 dispatches (`GpuBackend::set_flush_every`) are submitted in parts at op boundaries, so the
//! device starts on the first layers while the host encodes the rest.
//!
//! Decode attention (a sequence with fewer than 64 queries in a step) has two modes
//! (`GpuBackend::set_attn_exact`, `ORCHARD_GPU_ATTN_EXACT=0/1`). Exact, the default on CPU
//! adapters (lavapipe), keeps ggml's CPU rounding (Q and an f16 V accumulator rounded cell by
//! cell, sequential per cell), so CI checks agreement with `CpuBackend`; real GPUs default to
//! f32 accumulation with per-tile reductions, as llama.cpp's GPU backends do (they do not
//! reproduce the CPU's f16 rounding either, and a GPU's `exp` breaks bit parity anyway).
//! In f32, a token whose range spans several 64-cell tiles is split over workgroups
//! (flash-decoding: each writes a partial max, sum and unnormalised output, a second kernel
//! merges them; `GpuBackend::set_attn_split`, `ORCHARD_GPU_ATTN_SPLIT`).
//!
//! `ORCHARD_GPU_PROFILE=1` (or `GpuBackend::new_with_profiling`) times every dispatch with
//! timestamp queries, where the device has them inside passes, and accumulates device time per
//! kernel (`take_profile`; `gpu_bench --profile` prints it). It waits for each submission.
//!
//! `unsafe` lives in two places: the opt-in to wgpu's experimental cooperative matrices
//! (`GpuBackend::new`, for the tensor-core prompt matmul), and shader modules, created with
//! `create_shader_module_trusted` (backend.rs) to turn off naga's loop bounding, which cost
//! 2-6x on the matrix kernels; buffer bounds checks stay on except in the cooperative-matrix
//! matmul, whose accesses are all guarded by its dispatch counts (backend.rs says why).

mod backend;
mod cm2;
mod formats;
mod shaders;

pub use backend::{
    set_profiling, stats, take_profile, GpuBackend, GpuProfile, GpuStats, ProfileRow, Profiling,
};
pub use shaders::CoopTile;

use orchard_backend::BackendError;

/// One adapter wgpu can open, as `orchard devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// Position in the list; pass it to [`GpuBackend::new`].
    pub index: usize,
    pub name: String,
    /// `vulkan`, `metal`, `dx12`, `gl`.
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu`, `other`.
    pub device_type: String,
    pub driver: String,
}

/// The APIs tried on this platform unless `WGPU_BACKEND` names others: Metal on macOS, Vulkan
/// elsewhere (DX12 too on Windows). GL is left out: it would list the same device twice.
fn backends() -> wgpu::Backends {
    let default = if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else if cfg!(target_os = "windows") {
        wgpu::Backends::DX12 | wgpu::Backends::VULKAN
    } else {
        wgpu::Backends::VULKAN
    };
    wgpu::Backends::from_env().unwrap_or(default)
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends();
    wgpu::Instance::new(desc)
}

fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut list = pollster::block_on(instance.enumerate_adapters(backends()));
    // Real GPUs first, so that index 0 is the sensible default.
    list.sort_by_key(|a| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    });
    list
}

fn describe(index: usize, a: &wgpu::Adapter) -> AdapterInfo {
    let i = a.get_info();
    AdapterInfo {
        index,
        name: i.name,
        backend: i.backend.to_str().to_string(),
        device_type: match i.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        }
        .to_string(),
        driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
    }
}

/// The adapters available to [`GpuBackend::new`], discrete GPUs first.
pub fn list_adapters() -> Vec<AdapterInfo> {
    let inst = instance();
    adapters(&inst)
        .iter()
        .enumerate()
        .map(|(i, a)| describe(i, a))
        .collect()
}

fn device_error(msg: impl Into<String>) -> BackendError {
    BackendError::Device(msg.into())
}
