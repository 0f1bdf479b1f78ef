//! Element types of GGUF tensors with ggml's numeric ids, block sizes and bytes per block.
//! Layout facts follow ggml (`ggml/src/ggml.c`, `type_traits` table, llama.cpp 0.3.36 vendor tree).

use std::fmt;

/// A tensor element type, numbered as in ggml's `enum ggml_type` (the number stored in GGUF).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl DType {
    /// Every type this build knows, for tables and exhaustive tests.
    pub const ALL: [DType; 32] = [
        DType::F32,
        DType::F16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
        DType::IQ2_XXS,
        DType::IQ2_XS,
        DType::IQ3_XXS,
        DType::IQ1_S,
        DType::IQ4_NL,
        DType::IQ3_S,
        DType::IQ2_S,
        DType::IQ4_XS,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F64,
        DType::IQ1_M,
        DType::BF16,
        DType::TQ1_0,
        DType::TQ2_0,
        DType::MXFP4,
    ];

    /// ggml's id for this type, as stored in a GGUF tensor info.
    pub const fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q8_1 => 9,
            DType::Q2_K => 10,
            DType::Q3_K => 11,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::Q8_K => 15,
            DType::IQ2_XXS => 16,
            DType::IQ2_XS => 17,
            DType::IQ3_XXS => 18,
            DType::IQ1_S => 19,
            DType::IQ4_NL => 20,
            DType::IQ3_S => 21,
            DType::IQ2_S => 22,
            DType::IQ4_XS => 23,
            DType::I8 => 24,
            DType::I16 => 25,
            DType::I32 => 26,
            DType::I64 => 27,
            DType::F64 => 28,
            DType::IQ1_M => 29,
            DType::BF16 => 30,
            DType::TQ1_0 => 34,
            DType::TQ2_0 => 35,
            DType::MXFP4 => 39,
        }
    }

    /// The type with ggml id `id`, or `None` for ids this build does not know (including the
    /// removed ids 4, 5 and 31..33).
    pub fn from_ggml_id(id: u32) -> Option<DType> {
        DType::ALL.iter().copied().find(|t| t.ggml_id() == id)
    }

    /// Elements per block (1 for plain scalar types).
    pub const fn block_size(self) -> usize {
        match self {
            DType::F32
            | DType::F16
            | DType::BF16
            | DType::I8
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::F64 => 1,
            DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::Q8_1
            | DType::IQ4_NL
            | DType::MXFP4 => 32,
            DType::Q2_K
            | DType::Q3_K
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::Q8_K
            | DType::IQ2_XXS
            | DType::IQ2_XS
            | DType::IQ3_XXS
            | DType::IQ1_S
            | DType::IQ3_S
            | DType::IQ2_S
            | DType::IQ4_XS
            | DType::IQ1_M
            | DType::TQ1_0
            | DType::TQ2_0 => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
            DType::BF16 => 2,
            DType::I8 => 1,
            DType::I16 => 2,
            DType::I32 => 4,
            DType::I64 => 8,
            DType::F64 => 8,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q8_1 => 36,
            DType::Q2_K => 84,
            DType::Q3_K => 110,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
            DType::Q8_K => 292,
            DType::IQ2_XXS => 66,
            DType::IQ2_XS => 74,
            DType::IQ3_XXS => 98,
            DType::IQ1_S => 50,
            DType::IQ4_NL => 18,
            DType::IQ3_S => 110,
            DType::IQ2_S => 82,
            DType::IQ4_XS => 136,
            DType::IQ1_M => 56,
            DType::TQ1_0 => 54,
            DType::TQ2_0 => 66,
            DType::MXFP4 => 17,
        }
    }

    /// ggml's name for the type (`q4_K`, `f16`, ...), as llama.cpp prints it.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q8_0 => "q8_0",
            DType::Q8_1 => "q8_1",
            DType::Q2_K => "q2_K",
            DType::Q3_K => "q3_K",
            DType::Q4_K => "q4_K",
            DType::Q5_K => "q5_K",
            DType::Q6_K => "q6_K",
            DType::Q8_K => "q8_K",
            DType::IQ2_XXS => "iq2_xxs",
            DType::IQ2_XS => "iq2_xs",
            DType::IQ3_XXS => "iq3_xxs",
            DType::IQ1_S => "iq1_s",
            DType::IQ4_NL => "iq4_nl",
            DType::IQ3_S => "iq3_s",
            DType::IQ2_S => "iq2_s",
            DType::IQ4_XS => "iq4_xs",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::F64 => "f64",
            DType::IQ1_M => "iq1_m",
            DType::BF16 => "bf16",
            DType::TQ1_0 => "tq1_0",
            DType::TQ2_0 => "tq2_0",
            DType::MXFP4 => "mxfp4",
        }
    }

    /// Parses ggml's name, case-insensitively (`Q4_K`, `q4_k`, `f16`).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Bytes taken by a row of `n_elements`, or `None` when the row is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.block_bytes() as u64)
    }

    /// Whether the type is a block-quantized format (as opposed to a plain float or int type).
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in DType::ALL {
            assert_eq!(DType::from_ggml_id(t.ggml_id()), Some(t));
            assert_eq!(DType::from_name(t.name()), Some(t));
        }
        assert_eq!(DType::from_ggml_id(4), None);
        assert_eq!(DType::from_ggml_id(31), None);
        assert_eq!(DType::from_ggml_id(u32::MAX), None);
    }

    #[test]
    fn row_bytes_checks_whole_blocks() {
        assert_eq!(DType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(DType::Q4_K.row_bytes(576), None);
        assert_eq!(DType::Q8_0.row_bytes(576), Some(18 * 34));
        assert_eq!(DType::F32.row_bytes(u64::MAX), None);
    }
}
