//! GGUF metadata values (all 13 wire types, arrays possibly nested) and the lenient numeric
//! accessors that let callers ignore which integer width a converter happened to pick.

use std::fmt::Write as _;

/// One metadata value. Arrays are homogeneous on disk; nested arrays are allowed.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

/// GGUF wire ids of the value types (`enum gguf_type`).
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Name of a wire type id, for error messages about unknown or mismatched types.
pub(crate) fn type_id_name(id: u32) -> &'static str {
    match id {
        type_id::U8 => "u8",
        type_id::I8 => "i8",
        type_id::U16 => "u16",
        type_id::I16 => "i16",
        type_id::U32 => "u32",
        type_id::I32 => "i32",
        type_id::F32 => "f32",
        type_id::BOOL => "bool",
        type_id::STRING => "string",
        type_id::ARRAY => "array",
        type_id::U64 => "u64",
        type_id::I64 => "i64",
        type_id::F64 => "f64",
        _ => "unknown",
    }
}

impl Value {
    /// The GGUF name of this value's type (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        type_id_name(self.type_id())
    }

    /// The GGUF wire id of this value's type.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => type_id::U8,
            Value::I8(_) => type_id::I8,
            Value::U16(_) => type_id::U16,
            Value::I16(_) => type_id::I16,
            Value::U32(_) => type_id::U32,
            Value::I32(_) => type_id::I32,
            Value::U64(_) => type_id::U64,
            Value::I64(_) => type_id::I64,
            Value::F32(_) => type_id::F32,
            Value::F64(_) => type_id::F64,
            Value::Bool(_) => type_id::BOOL,
            Value::String(_) => type_id::STRING,
            Value::Array(_) => type_id::ARRAY,
        }
    }

    /// A description of the type that includes the element type of arrays (`array<string>`),
    /// for error messages.
    pub fn type_description(&self) -> String {
        match self {
            Value::Array(items) => match items.first() {
                Some(first) => format!("array<{}>", first.type_description()),
                None => "array<>".to_string(),
            },
            other => other.type_name().to_string(),
        }
    }

    /// Any integer variant as i128, which holds every GGUF integer exactly.
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Whether this is one of the integer variants.
    pub fn is_integer(&self) -> bool {
        self.as_i128().is_some()
    }

    /// Any integer variant whose value is non-negative and fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer variant whose value fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// Any integer variant whose value fits in u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i128().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer variant whose value fits in i32.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_i128().and_then(|v| i32::try_from(v).ok())
    }

    /// `F32` or `F64` (integers are not silently turned into floats).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// `F32`, or `F64` narrowed to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::$v(x)
            }
        })*
    };
}

value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, f32 => F32, f64 => F64, bool => Bool, String => String, Vec<Value> => Array);

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}

/// Strings longer than this many characters are cut when described.
const MAX_DESCRIBED_STRING_CHARS: usize = 200;

/// A compact one-line rendering of a value: strings quoted and escaped (very long ones cut),
/// arrays as `[n items: a, b, c, ...]` showing at most `max_array_items` items at each level.
pub fn describe_value(value: &Value, max_array_items: usize) -> String {
    let mut out = String::new();
    describe_into(&mut out, value, max_array_items);
    out
}

fn describe_into(out: &mut String, value: &Value, max_items: usize) {
    // Writing to a String cannot fail, so the fmt::Results below are ignored on purpose.
    match value {
        Value::U8(v) => _ = write!(out, "{v}"),
        Value::I8(v) => _ = write!(out, "{v}"),
        Value::U16(v) => _ = write!(out, "{v}"),
        Value::I16(v) => _ = write!(out, "{v}"),
        Value::U32(v) => _ = write!(out, "{v}"),
        Value::I32(v) => _ = write!(out, "{v}"),
        Value::U64(v) => _ = write!(out, "{v}"),
        Value::I64(v) => _ = write!(out, "{v}"),
        Value::F32(v) => _ = write!(out, "{v}"),
        Value::F64(v) => _ = write!(out, "{v}"),
        Value::Bool(v) => _ = write!(out, "{v}"),
        Value::String(s) => {
            let n_chars = s.chars().count();
            if n_chars > MAX_DESCRIBED_STRING_CHARS {
                let cut: String = s.chars().take(MAX_DESCRIBED_STRING_CHARS).collect();
                _ = write!(out, "{cut:?}... ({n_chars} chars)");
            } else {
                _ = write!(out, "{s:?}");
            }
        }
        Value::Array(items) => {
            let noun = if items.len() == 1 { "item" } else { "items" };
            _ = write!(out, "[{} {noun}", items.len());
            if !items.is_empty() && max_items > 0 {
                out.push_str(": ");
                for (i, item) in items.iter().take(max_items).enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    describe_into(out, item, max_items);
                }
                if items.len() > max_items {
                    out.push_str(", ...");
                }
            } else if !items.is_empty() {
                out.push_str(": ...");
            }
            out.push(']');
        }
    }
}
