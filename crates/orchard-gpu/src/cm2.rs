//! Prompt matmuls on NVIDIA's `VK_NV_cooperative_matrix2` (workgroup-scope cooperative
//! matrices, tensor-addressed loads that decode K-quant blocks as the driver stages them).
//!
//! WGSL reaches tensor cores only through subgroup-scope KHR matrices (`MATMUL_COOP`), where
//! llama.cpp's own KHR path on an H200 runs an 8B prompt at ~6.9k t/s against 10.7k with this
//! extension (bench/gpu/results/run32). So on a device that has it, Q4_K and Q6_K prompt
//! products of 8B size run `src/cm2/matmul_cm2.comp`, and prompt attention runs
//! `src/cm2/attn_cm2.comp` (one pass: WGSL cannot rescale a matrix accumulator, so its
//! `ATTN_COOP` takes two; run 39: 0.06 ms an 8B layer against 0.12): GLSL compiled ahead of time
//! (`scripts/build-cm2.sh`), loaded through wgpu's SPIR-V passthrough, on a device opened
//! through wgpu-hal with the extension and its features enabled. Everything else about the
//! device is wgpu's.

use std::borrow::Cow;

use orchard_core::DType;

/// Invocations of the matmul kernel's workgroup (its `local_size_x`).
pub(crate) const THREADS: u32 = 256;
/// And of the attention kernel's (`attn_cm2.comp`).
pub(crate) const ATTN_THREADS: u32 = 128;
/// Query tokens a workgroup of the attention kernel takes.
pub(crate) const ATTN_QUERIES: u32 = 64;

#[cfg(all(feature = "cm2-spv-override", not(target_vendor = "apple")))]
pub(crate) use vulkan::pipeline_statistics;
#[cfg(not(target_vendor = "apple"))]
pub(crate) use vulkan::{attention_supported, request_device, supported};

/// No Vulkan backend in wgpu on Apple platforms (Metal only): never available there.
#[cfg(target_vendor = "apple")]
pub(crate) fn supported(_adapter: &wgpu::Adapter) -> Result<(), String> {
    Err("no Vulkan backend on this platform".into())
}

#[cfg(target_vendor = "apple")]
pub(crate) fn attention_supported(_adapter: &wgpu::Adapter) -> bool {
    false
}

#[cfg(target_vendor = "apple")]
pub(crate) fn request_device(
    _adapter: &wgpu::Adapter,
    _desc: &wgpu::DeviceDescriptor,
) -> Result<(wgpu::Device, wgpu::Queue), String> {
    Err("no Vulkan backend on this platform".into())
}

#[cfg(not(target_vendor = "apple"))]
mod vulkan {
    use super::THREADS;
    use ash::vk;
    use std::ffi::{c_void, CStr};

    const EXTENSION: &CStr = c"VK_NV_cooperative_matrix2";
    #[cfg(feature = "cm2-spv-override")]
    const STATS_EXTENSION: &CStr = ash::khr::pipeline_executable_properties::NAME;
    /// `VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_FEATURES_NV` (and `_PROPERTIES_`):
    /// extension 594, so 1000000000 + 593 * 1000 (+ 2). ash 0.38 predates the extension.
    const FEATURES_STYPE: i32 = 1_000_593_000;
    const PROPERTIES_STYPE: i32 = 1_000_593_002;

    /// `VkPhysicalDeviceCooperativeMatrix2FeaturesNV`.
    #[repr(C)]
    struct Features {
        s_type: vk::StructureType,
        p_next: *mut c_void,
        workgroup_scope: vk::Bool32,
        flexible_dimensions: vk::Bool32,
        reductions: vk::Bool32,
        conversions: vk::Bool32,
        per_element_operations: vk::Bool32,
        tensor_addressing: vk::Bool32,
        block_loads: vk::Bool32,
    }

    impl Features {
        fn new() -> Features {
            Features {
                s_type: vk::StructureType::from_raw(FEATURES_STYPE),
                p_next: std::ptr::null_mut(),
                workgroup_scope: 0,
                flexible_dimensions: 0,
                reductions: 0,
                conversions: 0,
                per_element_operations: 0,
                tensor_addressing: 0,
                block_loads: 0,
            }
        }

        /// What the kernel's SPIR-V uses (workgroup scope, its tile sizes, tensor addressing
        /// with decode callbacks).
        fn needed(&self) -> bool {
            [
                self.workgroup_scope,
                self.flexible_dimensions,
                self.tensor_addressing,
                self.block_loads,
            ]
            .iter()
            .all(|&f| f == vk::TRUE)
        }

        /// What the attention kernel uses beyond that.
        fn attention(&self) -> bool {
            [
                self.reductions,
                self.per_element_operations,
                self.conversions,
            ]
            .iter()
            .all(|&f| f == vk::TRUE)
        }

        /// The matmul's features, and the attention kernel's where `available` has them.
        fn enable_needed(&mut self, available: &Features) {
            self.workgroup_scope = vk::TRUE;
            self.flexible_dimensions = vk::TRUE;
            self.tensor_addressing = vk::TRUE;
            self.block_loads = vk::TRUE;
            if available.attention() {
                self.reductions = vk::TRUE;
                self.per_element_operations = vk::TRUE;
                self.conversions = vk::TRUE;
            }
        }
    }

    /// `VkPhysicalDeviceCooperativeMatrix2PropertiesNV`.
    #[repr(C)]
    struct Properties {
        s_type: vk::StructureType,
        p_next: *mut c_void,
        workgroup_scope_max_workgroup_size: u32,
        flexible_dimensions_max_dimension: u32,
        workgroup_scope_reserved_shared_memory: u32,
    }

    /// The extension's features `adapter` reports, whether it has `bufferDeviceAddress`, and its
    /// workgroup-scope limits; `Err` where it is not a Vulkan device with the extension.
    fn query(adapter: &wgpu::Adapter) -> Result<(Features, bool, Properties), String> {
        // SAFETY: the hal adapter is only read (extension list, features and properties through
        // the instance's own entry points) while the guard keeps it alive; every structure chained
        // for the queries lives on this stack frame until the call returns, and the chain
        // pointers are cleared before they are returned.
        unsafe {
            let Some(hal) = adapter.as_hal::<wgpu::hal::api::Vulkan>() else {
                return Err("not a Vulkan adapter".into());
            };
            let instance = hal.shared_instance().raw_instance();
            let pd = hal.raw_physical_device();
            let has_extension = instance
                .enumerate_device_extension_properties(pd)
                .unwrap_or_default()
                .iter()
                .any(|e| e.extension_name_as_c_str() == Ok(EXTENSION));
            if !has_extension {
                return Err(format!("no {EXTENSION:?}"));
            }
            if instance.get_physical_device_properties(pd).api_version < vk::API_VERSION_1_2 {
                return Err("Vulkan below 1.2".into());
            }
            let mut cm2 = Features::new();
            let mut bda = vk::PhysicalDeviceBufferDeviceAddressFeatures {
                p_next: (&mut cm2 as *mut Features).cast(),
                ..Default::default()
            };
            let mut f2 = vk::PhysicalDeviceFeatures2 {
                p_next: (&mut bda as *mut vk::PhysicalDeviceBufferDeviceAddressFeatures).cast(),
                ..Default::default()
            };
            instance.get_physical_device_features2(pd, &mut f2);
            let mut props = Properties {
                s_type: vk::StructureType::from_raw(PROPERTIES_STYPE),
                p_next: std::ptr::null_mut(),
                workgroup_scope_max_workgroup_size: 0,
                flexible_dimensions_max_dimension: 0,
                workgroup_scope_reserved_shared_memory: 0,
            };
            let mut p2 = vk::PhysicalDeviceProperties2 {
                p_next: (&mut props as *mut Properties).cast(),
                ..Default::default()
            };
            instance.get_physical_device_properties2(pd, &mut p2);
            cm2.p_next = std::ptr::null_mut();
            props.p_next = std::ptr::null_mut();
            Ok((cm2, bda.buffer_device_address == vk::TRUE, props))
        }
    }

    /// Whether `adapter` is a Vulkan device with the extension and every feature the matmul
    /// kernel uses (and `bufferDeviceAddress`: the decode callback receives a block pointer).
    pub(crate) fn supported(adapter: &wgpu::Adapter) -> Result<(), String> {
        let (cm2, bda, props) = query(adapter)?;
        if !cm2.needed() || !bda {
            return Err("a feature the kernel uses is missing".into());
        }
        if props.workgroup_scope_max_workgroup_size < THREADS
            || props.flexible_dimensions_max_dimension < 256
        {
            return Err(format!(
                "workgroup-scope limits {} invocations, dimension {}",
                props.workgroup_scope_max_workgroup_size, props.flexible_dimensions_max_dimension
            ));
        }
        Ok(())
    }

    /// Whether `adapter` also has what the attention kernel uses beyond the matmul's
    /// features (row reductions, per-element operations, conversions between matrix uses).
    pub(crate) fn attention_supported(adapter: &wgpu::Adapter) -> bool {
        query(adapter).is_ok_and(|(f, ..)| f.attention())
    }

    /// Opens `adapter` as `request_device` would, with the extension, its features and
    /// `bufferDeviceAddress` enabled as well. Call only where [`supported`] said yes.
    pub(crate) fn request_device(
        adapter: &wgpu::Adapter,
        desc: &wgpu::DeviceDescriptor,
    ) -> Result<(wgpu::Device, wgpu::Queue), String> {
        let (available, ..) = query(adapter)?;
        let mut cm2 = Features::new();
        cm2.enable_needed(&available);
        let mut bda = vk::PhysicalDeviceBufferDeviceAddressFeatures {
            buffer_device_address: vk::TRUE,
            ..Default::default()
        };
        // SAFETY: wgpu-hal's documented hook for extra extensions and features: the extension is
        // only added to its list (which it passes on), and the two feature structures are put at
        // the head of the create-info chain, ahead of wgpu's own; neither is one wgpu chains
        // itself (it adds `bufferDeviceAddress` only for ray tracing, not requested here). Both
        // outlive the call. The device returned is made from this adapter, with the features asked.
        // Diagnostic builds chain a third (pipeline executable properties, which wgpu never
        // enables) the same way, only where the adapter lists its extension.
        unsafe {
            let open = {
                let hal = adapter
                    .as_hal::<wgpu::hal::api::Vulkan>()
                    .ok_or("not a Vulkan adapter")?;
                let cm2_ptr: *mut Features = &mut cm2;
                let bda_ptr: *mut vk::PhysicalDeviceBufferDeviceAddressFeatures = &mut bda;
                // Diagnostics: the driver's statistics of a pipeline (`pipeline_statistics`).
                #[cfg(feature = "cm2-spv-override")]
                let stats = hal
                    .shared_instance()
                    .raw_instance()
                    .enumerate_device_extension_properties(hal.raw_physical_device())
                    .unwrap_or_default()
                    .iter()
                    .any(|e| e.extension_name_as_c_str() == Ok(STATS_EXTENSION));
                #[cfg(feature = "cm2-spv-override")]
                let mut pep = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR {
                    pipeline_executable_info: vk::TRUE,
                    ..Default::default()
                };
                #[cfg(feature = "cm2-spv-override")]
                let pep_ptr: *mut vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR =
                    &mut pep;
                let callback = move |args: wgpu::hal::vulkan::CreateDeviceCallbackArgs| {
                    args.extensions.push(EXTENSION);
                    (*bda_ptr).p_next = args.create_info.p_next as *mut c_void;
                    #[cfg(feature = "cm2-spv-override")]
                    if stats {
                        args.extensions.push(STATS_EXTENSION);
                        (*pep_ptr).p_next = args.create_info.p_next as *mut c_void;
                        (*bda_ptr).p_next = pep_ptr.cast();
                    }
                    (*cm2_ptr).p_next = bda_ptr.cast();
                    args.create_info.p_next = cm2_ptr as *const c_void;
                };
                hal.open_with_callback(
                    desc.required_features,
                    &desc.required_limits,
                    &desc.memory_hints,
                    Some(Box::new(callback)),
                )
                .map_err(|e| format!("vkCreateDevice with {EXTENSION:?}: {e}"))?
            };
            adapter
                .create_device_from_hal(open, desc)
                .map_err(|e| e.to_string())
        }
    }

    /// DIAGNOSTIC (feature `cm2-spv-override`): the driver's statistics of `words` built as
    /// a compute pipeline with `uniforms` uniform-buffer bindings, then `storage` storage-buffer
    /// ones, and `push` bytes of push constants (NVIDIA reports its register count: what sets
    /// how many workgroups share an SM). Built beside wgpu's objects on its device and destroyed.
    #[cfg(feature = "cm2-spv-override")]
    pub(crate) fn pipeline_statistics(
        device: &wgpu::Device,
        words: &[u32],
        uniforms: u32,
        storage: u32,
        push: u32,
    ) -> Result<Vec<(String, String)>, String> {
        // SAFETY: every object is made on the device's own handle from well-formed create
        // infos living on this frame, used once and destroyed before returning; the module is
        // the caller's SPIR-V, compiled but never dispatched.
        unsafe {
            let hal = device
                .as_hal::<wgpu::hal::api::Vulkan>()
                .ok_or("not a Vulkan device")?;
            if !hal.enabled_device_extensions().contains(&STATS_EXTENSION) {
                return Err(format!("no {STATS_EXTENSION:?}"));
            }
            let dev = hal.raw_device();
            let sm = dev
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(words), None)
                .map_err(|e| e.to_string())?;
            let bindings: Vec<vk::DescriptorSetLayoutBinding> = (0..uniforms + storage)
                .map(|i| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(i)
                        .descriptor_type(if i < uniforms {
                            vk::DescriptorType::UNIFORM_BUFFER
                        } else {
                            vk::DescriptorType::STORAGE_BUFFER
                        })
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let dsl = dev
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                    None,
                )
                .map_err(|e| e.to_string())?;
            let ranges = [vk::PushConstantRange {
                stage_flags: vk::ShaderStageFlags::COMPUTE,
                offset: 0,
                size: push,
            }];
            let layouts = [dsl];
            let mut pli = vk::PipelineLayoutCreateInfo::default().set_layouts(&layouts);
            if push > 0 {
                pli = pli.push_constant_ranges(&ranges);
            }
            let pl = dev
                .create_pipeline_layout(&pli, None)
                .map_err(|e| e.to_string())?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(sm)
                .name(c"main");
            let ci = vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(pl)
                .flags(vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR);
            let made = dev.create_compute_pipelines(vk::PipelineCache::null(), &[ci], None);
            let out = match made {
                Ok(p) => {
                    let ext = ash::khr::pipeline_executable_properties::Device::new(
                        hal.shared_instance().raw_instance(),
                        dev,
                    );
                    let info = vk::PipelineExecutableInfoKHR::default()
                        .pipeline(p[0])
                        .executable_index(0);
                    let r = ext.get_pipeline_executable_statistics(&info);
                    dev.destroy_pipeline(p[0], None);
                    r.map_err(|e| e.to_string()).map(|stats| {
                        stats
                            .iter()
                            .map(|s| {
                                let v = match s.format {
                                    vk::PipelineExecutableStatisticFormatKHR::BOOL32 => {
                                        (s.value.b32 != 0).to_string()
                                    }
                                    vk::PipelineExecutableStatisticFormatKHR::INT64 => {
                                        s.value.i64.to_string()
                                    }
                                    vk::PipelineExecutableStatisticFormatKHR::UINT64 => {
                                        s.value.u64.to_string()
                                    }
                                    _ => s.value.f64.to_string(),
                                };
                                let name = s.name_as_c_str().map_or_else(
                                    |_| "?".to_string(),
                                    |c| c.to_string_lossy().into_owned(),
                                );
                                (name, v)
                            })
                            .collect()
                    })
                }
                Err((_, e)) => Err(e.to_string()),
            };
            dev.destroy_pipeline_layout(pl, None);
            dev.destroy_descriptor_set_layout(dsl, None);
            dev.destroy_shader_module(sm, None);
            out
        }
    }
}

/// A compiled tile: `bm` weight rows x `bn` tokens, `bk` of K a step, accumulating in f16
/// (`f16_acc`, written with an `h`) or f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub f16_acc: bool,
}

/// The tiles `scripts/build-cm2.sh` compiles: the narrow one and the f32 one the default was
/// before, and the default, llama.cpp's large tile with its f16 accumulators. On an H200 the
/// 8B gate/up product (14336 x 4096, 512 tokens) took 0.49-0.51 ms with 128 x 128 x 64 f32
/// against llama.cpp's 0.306 ms with 128 x 256 x 64 f16 (bench/gpu/results/run36); with f32
/// accumulators the 128 x 256 tile was slower still (0.57 ms: 128 accumulator registers a
/// thread).
pub(crate) const TILES: [Tile; 3] = [
    Tile {
        bm: 128,
        bn: 64,
        bk: 32,
        f16_acc: false,
    },
    Tile {
        bm: 128,
        bn: 128,
        bk: 64,
        f16_acc: false,
    },
    Tile {
        bm: 128,
        bn: 256,
        bk: 64,
        f16_acc: true,
    },
];

impl std::fmt::Display for Tile {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let h = if self.f16_acc { "h" } else { "" };
        write!(f, "{}x{}x{}{h}", self.bm, self.bn, self.bk)
    }
}

impl std::str::FromStr for Tile {
    type Err = String;
    /// `BMxBNxBK[h]`: one of [`TILES`].
    fn from_str(s: &str) -> Result<Tile, String> {
        TILES
            .into_iter()
            .find(|t| t.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = TILES.iter().map(Tile::to_string).collect();
                format!("cm2 tile {s}: not one of {}", names.join(", "))
            })
    }
}

/// Whether the kernel is written for weights of `dt`.
pub(crate) fn has_format(dt: DType) -> bool {
    matches!(dt, DType::Q4_K | DType::Q6_K)
}

/// The SPIR-V words of the kernel for weights of `dt` (one [`has_format`] accepts) and `tile`.
pub(crate) fn spirv(dt: DType, tile: Tile) -> Vec<u32> {
    let bytes: &[u8] = match (dt, tile.bm, tile.bn, tile.bk) {
        (DType::Q6_K, 128, 64, 32) => include_bytes!("cm2/matmul_cm2_q6_K_128x64x32.spv"),
        (DType::Q6_K, 128, 256, 64) => include_bytes!("cm2/matmul_cm2_q6_K_128x256x64h.spv"),
        (DType::Q6_K, ..) => include_bytes!("cm2/matmul_cm2_q6_K_128x128x64.spv"),
        (_, 128, 64, 32) => include_bytes!("cm2/matmul_cm2_q4_K_128x64x32.spv"),
        (_, 128, 256, 64) => include_bytes!("cm2/matmul_cm2_q4_K_128x256x64h.spv"),
        _ => include_bytes!("cm2/matmul_cm2_q4_K_128x128x64.spv"),
    };
    debug_assert!(TILES.contains(&tile) && has_format(dt));
    #[cfg(feature = "cm2-spv-override")]
    if let Some(dir) = std::env::var_os("ORCHARD_GPU_CM2_SPV_DIR") {
        let path = std::path::Path::new(&dir).join(format!("matmul_cm2_{dt}_{tile}.spv"));
        if let Ok(b) = std::fs::read(&path) {
            tracing::warn!("cm2 {dt} {tile}: module from {}", path.display());
            return bytemuck::pod_collect_to_vec(&b);
        }
    }
    // include_bytes! gives no alignment: copy into words.
    bytemuck::pod_collect_to_vec(bytes)
}

/// The SPIR-V words of the prompt attention kernel for head dim `d` (K and V alike), where
/// one is built: 64, 128 and 256 (64 queries a workgroup; 64 cells a step, 32 at 256).
pub(crate) fn attention_spirv(d: u32) -> Option<Vec<u32>> {
    let bytes: &[u8] = match d {
        64 => include_bytes!("cm2/attn_cm2_d64.spv"),
        128 => include_bytes!("cm2/attn_cm2_d128.spv"),
        256 => include_bytes!("cm2/attn_cm2_d256.spv"),
        _ => return None,
    };
    #[cfg(feature = "cm2-spv-override")]
    if let Some(dir) = std::env::var_os("ORCHARD_GPU_CM2_SPV_DIR") {
        let path = std::path::Path::new(&dir).join(format!("attn_cm2_d{d}.spv"));
        if let Ok(b) = std::fs::read(&path) {
            tracing::warn!("cm2 attention d{d}: module from {}", path.display());
            return Some(bytemuck::pod_collect_to_vec(&b));
        }
    }
    Some(bytemuck::pod_collect_to_vec(bytes))
}

/// The passthrough module of `words` (entry point `main`, `threads` invocations).
///
/// # Safety
/// `words` must be one of [`spirv`]'s or [`attention_spirv`]'s modules (`threads` its
/// workgroup size) and the device opened by [`request_device`] with `PASSTHROUGH_SHADERS`:
/// wgpu does not parse or validate passthrough SPIR-V.
pub(crate) unsafe fn module(
    device: &wgpu::Device,
    label: &str,
    words: Vec<u32>,
    threads: u32,
) -> wgpu::ShaderModule {
    let desc = wgpu::ShaderModuleDescriptorPassthrough {
        label: Some(label),
        entry_points: Cow::Owned(vec![wgpu::PassthroughShaderEntryPoint {
            name: Cow::Borrowed("main"),
            workgroup_size: (threads, 1, 1),
        }]),
        spirv: Some(Cow::Owned(words)),
        ..Default::default()
    };
    // SAFETY: the caller's contract above.
    unsafe { device.create_shader_module_passthrough(desc) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_has_a_module_and_parses_back() {
        assert!(has_format(DType::Q4_K) && has_format(DType::Q6_K) && !has_format(DType::Q5_K));
        for dt in [DType::Q4_K, DType::Q6_K] {
            for t in TILES {
                let w = spirv(dt, t);
                assert_eq!(w[0], 0x0723_0203, "SPIR-V magic");
                assert!(w.len() > 100);
                assert_eq!(t.to_string().parse::<Tile>(), Ok(t));
            }
            assert_ne!(spirv(dt, TILES[0]), spirv(dt, TILES[1]));
            assert_ne!(spirv(dt, TILES[1]), spirv(dt, TILES[2]));
        }
        assert_ne!(spirv(DType::Q4_K, TILES[1]), spirv(DType::Q6_K, TILES[1]));
        for d in [64, 128, 256] {
            let w = attention_spirv(d).expect("an attention module");
            assert_eq!(w[0], 0x0723_0203, "SPIR-V magic");
        }
        assert!(attention_spirv(96).is_none());
        assert_eq!("128x256x64h".parse::<Tile>(), Ok(TILES[2]));
        assert!("128x256x64".parse::<Tile>().is_err());
    }
}
