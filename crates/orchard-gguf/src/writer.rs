//! Builds GGUF files: used by tests (including crafted edge cases), synthetic models and the
//! quantizer. Tensors may be "holes" whose bytes are never materialised, so a multi-gigabyte
//! synthetic model costs no disk space when written to a path.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use orchard_core::DType;

use crate::layout::{align_up, alignment_from_value, tensor_n_bytes};
use crate::value::type_id;
use crate::{GgufError, Metadata, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    dtype: DType,
    n_bytes: u64,
    /// None: a hole, zeros in memory and sparse on disk.
    data: Option<Vec<u8>>,
}

/// Collects metadata and tensors, then lays them out as a GGUF file.
pub struct GgufWriter {
    version: u32,
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Where everything goes: the encoded header and each tensor's offset in the data section.
struct Layout {
    header: Vec<u8>,
    data_offset: u64,
    offsets: Vec<u64>,
    total_len: u64,
}

impl GgufWriter {
    /// GGUF version 3, alignment 32.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            metadata: Metadata::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Writes an older version (2 and 3 share the layout); anything else is rejected.
    pub fn set_version(&mut self, version: u32) -> Result<(), GgufError> {
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        self.version = version;
        Ok(())
    }

    /// Sets `general.alignment`, which readers use for the data section and every tensor.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufError> {
        if !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment {
                alignment: alignment.into(),
            });
        }
        self.metadata.insert(ALIGNMENT_KEY, Value::U32(alignment));
        Ok(())
    }

    /// Adds (or replaces, keeping its position) a metadata entry. Values are validated when the
    /// file is produced.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) {
        self.metadata.insert(key, value);
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn check_new_tensor(&self, name: &str, dims: &[u64], dtype: DType) -> Result<u64, GgufError> {
        if self.names.contains(name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_string(),
            });
        }
        tensor_n_bytes(name, dims, dtype)
    }

    /// Adds a tensor; `data` must be exactly `dtype.row_bytes(dims[0]) * rows` bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        dtype: DType,
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let n_bytes = self.check_new_tensor(&name, &dims, dtype)?;
        if data.len() as u64 != n_bytes {
            return Err(GgufError::DataLengthMismatch {
                name,
                expected: n_bytes,
                got: data.len() as u64,
            });
        }
        self.push(name, dims, dtype, n_bytes, Some(data));
        Ok(())
    }

    /// Adds a tensor whose bytes are never written: a sparse hole on disk, zeros in memory.
    pub fn add_tensor_hole(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        dtype: DType,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let n_bytes = self.check_new_tensor(&name, &dims, dtype)?;
        self.push(name, dims, dtype, n_bytes, None);
        Ok(())
    }

    fn push(
        &mut self,
        name: String,
        dims: Vec<u64>,
        dtype: DType,
        n_bytes: u64,
        data: Option<Vec<u8>>,
    ) {
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            dims,
            dtype,
            n_bytes,
            data,
        });
    }

    fn layout(&self) -> Result<Layout, GgufError> {
        let alignment = match self.metadata.get(ALIGNMENT_KEY) {
            Some(v) => alignment_from_value(v)?,
            None => DEFAULT_ALIGNMENT,
        };
        let too_large = || GgufError::TooLarge { bytes: u64::MAX };
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&self.version.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (index, (key, value)) in self.metadata.iter().enumerate() {
            if key.is_empty() {
                return Err(GgufError::EmptyKey {
                    index: index as u64,
                });
            }
            put_str(&mut h, key);
            h.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut h, key, value, 0)?;
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut data_len = 0u64;
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            h.extend_from_slice(&data_len.to_le_bytes());
            offsets.push(data_len);
            data_len = data_len
                .checked_add(t.n_bytes)
                .and_then(|e| align_up(e, alignment))
                .ok_or_else(too_large)?;
        }
        let data_offset = align_up(h.len() as u64, alignment).ok_or_else(too_large)?;
        let total_len = data_offset.checked_add(data_len).ok_or_else(too_large)?;
        Ok(Layout {
            header: h,
            data_offset,
            offsets,
            total_len,
        })
    }

    /// The whole file in memory; holes become zeros.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let l = self.layout()?;
        let too_large = || GgufError::TooLarge { bytes: l.total_len };
        let total = usize::try_from(l.total_len).map_err(|_| too_large())?;
        let mut out = Vec::new();
        out.try_reserve_exact(total).map_err(|_| too_large())?;
        out.extend_from_slice(&l.header);
        for (t, &off) in self.tensors.iter().zip(&l.offsets) {
            // Offsets and sizes all fit in `total`, which fits in usize.
            let start = (l.data_offset + off) as usize;
            out.resize(start, 0);
            match &t.data {
                Some(d) => out.extend_from_slice(d),
                None => out.resize(start + t.n_bytes as usize, 0),
            }
        }
        out.resize(total, 0);
        Ok(out)
    }

    /// Writes the file; holes are skipped with seeks so they stay sparse.
    pub fn write_to_path(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let l = self.layout()?;
        let file = File::create(path).map_err(io)?;
        let mut w = BufWriter::new(file);
        w.write_all(&l.header).map_err(io)?;
        let mut pos = l.header.len() as u64;
        for (t, &off) in self.tensors.iter().zip(&l.offsets) {
            let Some(data) = &t.data else { continue };
            let start = l.data_offset + off;
            if start != pos {
                // Skipped ranges (padding, holes) read back as zeros.
                w.seek(SeekFrom::Start(start)).map_err(io)?;
            }
            w.write_all(data).map_err(io)?;
            pos = start + t.n_bytes;
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.set_len(l.total_len).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a value body (its type id has already been written by the caller).
fn put_value(out: &mut Vec<u8>, key: &str, v: &Value, depth: usize) -> Result<(), GgufError> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            if depth + 1 > crate::MAX_ARRAY_NESTING {
                return Err(GgufError::NestingTooDeep {
                    key: key.to_string(),
                    max: crate::MAX_ARRAY_NESTING,
                });
            }
            // An empty array still needs an element type; u8 is as good as any.
            let elem = items.first().map_or(type_id::U8, Value::type_id);
            if let Some(other) = items.iter().find(|i| i.type_id() != elem) {
                return Err(GgufError::HeterogeneousArray {
                    key: key.to_string(),
                    first: crate::value::type_id_name(elem),
                    other: other.type_name(),
                });
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item, depth + 1)?;
            }
        }
    }
    Ok(())
}
