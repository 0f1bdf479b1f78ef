//! x86-64 kernels: AVX2+FMA+F16C, and AVX-512 (with VNNI) where it helps.

use crate::traits::{Tier, TypeTraits};

pub(super) fn install(_tier: Tier, _table: &mut [TypeTraits]) {}
