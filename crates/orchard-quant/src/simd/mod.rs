//! SIMD kernels chosen at run time. Each tier's `install` overwrites the scalar table's entries it
//! has faster kernels for; every kernel here must return exactly what its `*_scalar` twin in
//! `lanes.rs` returns (the property tests in `tests/simd_props.rs` demand bit equality).
//!
//! Kernels are `unsafe` `#[target_feature]` functions behind safe wrappers. The wrappers are only
//! reachable through a tier's table, and `traits.rs` builds a table only after `is_available`
//! confirmed the features; that is the invariant every `// SAFETY:` comment in here relies on.

use crate::traits::{Tier, TypeTraits};

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn has_neon() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// Puts `tier`'s kernels into `table` (which starts as the scalar table).
pub(crate) fn install(tier: Tier, table: &mut [TypeTraits]) {
    match tier {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 | Tier::Avx512 => x86::install(tier, table),
        #[cfg(target_arch = "aarch64")]
        Tier::Neon => neon::install(table),
        _ => {}
    }
}
