//! The key/value section of a GGUF file: kept in file order (for printing and round trips) with a
//! hash index (for lookups), plus typed getters that tell "absent" apart from "wrong type".

use std::collections::HashMap;

use crate::{GgufError, Value};

/// Metadata entries in file order, with O(1) lookup by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_description(),
    }
}

fn out_of_range(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::ValueOutOfRange {
        key: key.to_string(),
        expected,
        value: crate::describe_value(found, 4),
    }
}

/// Converts an integer value with `conv`, telling a non-integer (WrongType) apart from an
/// integer that does not fit (ValueOutOfRange).
fn int_as<T>(
    key: &str,
    expected: &'static str,
    v: &Value,
    conv: impl Fn(&Value) -> Option<T>,
) -> Result<T, GgufError> {
    if !v.is_integer() {
        return Err(wrong_type(key, expected, v));
    }
    conv(v).ok_or_else(|| out_of_range(key, expected, v))
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        Metadata {
            entries: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
        }
    }

    /// Adds an entry; if the key exists its value is replaced in place and the old one returned.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        if let Some(&i) = self.index.get(&key) {
            return self
                .entries
                .get_mut(i)
                .map(|e| std::mem::replace(&mut e.1, value));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        None
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|e| &e.1)
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| wrong_type(key, "string", v)))
            .transpose()
    }

    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get(key)
            .map(|v| int_as(key, "u32", v, Value::as_u32))
            .transpose()
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key)
            .map(|v| int_as(key, "u64", v, Value::as_u64))
            .transpose()
    }

    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.get(key)
            .map(|v| int_as(key, "i64", v, Value::as_i64))
            .transpose()
    }

    pub fn get_i32(&self, key: &str) -> Result<Option<i32>, GgufError> {
        self.get(key)
            .map(|v| int_as(key, "i32", v, Value::as_i32))
            .transpose()
    }

    /// `F32`, or `F64` narrowed to f32.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get(key)
            .map(|v| v.as_f32().ok_or_else(|| wrong_type(key, "f32", v)))
            .transpose()
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| wrong_type(key, "f64", v)))
            .transpose()
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| wrong_type(key, "bool", v)))
            .transpose()
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        self.get(key)
            .map(|v| v.as_array().ok_or_else(|| wrong_type(key, "array", v)))
            .transpose()
    }

    /// Maps every item of an array with `item`; any item it rejects makes the whole value the
    /// wrong type (an out-of-range integer item is reported as such).
    fn get_array_of<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        integer_items: bool,
        item: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = v.as_array().ok_or_else(|| wrong_type(key, expected, v))?;
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            match item(it) {
                Some(x) => out.push(x),
                None if integer_items && it.is_integer() => {
                    return Err(out_of_range(key, expected, it))
                }
                None => return Err(wrong_type(key, expected, v)),
            }
        }
        Ok(Some(out))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.get_array_of(key, "array<string>", false, Value::as_str)
    }

    /// Items may be `F32` or `F64`.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.get_array_of(key, "array<f32>", false, Value::as_f32)
    }

    /// Items may be any integer type whose value fits in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.get_array_of(key, "array<i32>", true, Value::as_i32)
    }

    /// Items may be any integer type whose value fits in u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Option<Vec<u32>>, GgufError> {
        self.get_array_of(key, "array<u32>", true, Value::as_u32)
    }

    fn missing(key: &str) -> GgufError {
        GgufError::MissingKey {
            key: key.to_string(),
        }
    }

    pub fn require_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_u32(key)?.ok_or_else(|| Self::missing(key))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?.ok_or_else(|| Self::missing(key))
    }

    pub fn require_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f32(key)?.ok_or_else(|| Self::missing(key))
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?.ok_or_else(|| Self::missing(key))
    }

    pub fn require_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.get_bool(key)?.ok_or_else(|| Self::missing(key))
    }
}
