//! Parses and validates a GGUF file held in an mmap (or, for tests, a byte vector) and hands out
//! tensor data as slices borrowed from it. Every length read from the file is compared with the
//! bytes actually left before anything is allocated or sliced.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use orchard_core::DType;

use crate::layout::{align_up, alignment_from_value, tensor_n_bytes};
use crate::value::type_id;
use crate::{GgufError, Metadata, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_NESTING};

/// Smallest possible encoding of one metadata entry: key length (8), a 1-byte key, value type
/// (4) and a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor info: name length (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Where a tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (ne0), the fastest-varying dimension.
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Relative to the start of the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Product of `dims[1..]` (1 for a vector).
    pub fn rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |a, &d| a.saturating_mul(d))
    }

    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Bytes of one row (`dtype.row_bytes(row_len)`); rows are contiguous.
    pub fn row_bytes(&self) -> u64 {
        self.dtype.row_bytes(self.row_len()).unwrap_or(0)
    }

    /// ggml's `ne`: the dims padded with 1s to four entries.
    pub fn ne(&self) -> [u64; 4] {
        let mut ne = [1u64; 4];
        for (n, &d) in ne.iter_mut().zip(&self.dims) {
            *n = d;
        }
        ne
    }
}

enum Storage {
    Mmap(Mmap),
    Bytes(Vec<u8>),
}

impl Storage {
    fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Bytes(b) => b,
        }
    }
}

/// A parsed, validated GGUF file. Tensor data stays in the mmap and is borrowed on demand.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_len", &self.file_len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps the file read-only and validates it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // mmap rejects empty mappings; an empty file still deserves the "truncated" error.
            return Self::parse(Storage::Bytes(Vec::new()));
        }
        // SAFETY: the mapping is read-only and we only ever read it through bounds-checked slices.
        // Mapping a file is only unsound if another process truncates or rewrites it while
        // mapped; like llama.cpp we accept that model files are not modified while in use.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        // 2 MiB pages where the kernel can give them: a file the page cache does not hold yet is
        // then read into huge folios and mapped with one TLB entry per 2 MiB, which lifts
        // decode that streams every weight per token (SmolLM2 Q4_K_M tg128 at 1 thread, page
        // cache dropped before each run: 105-112 -> 113-115 t/s). Pages cached earlier keep
        // their size; a kernel or file system without this ignores the advice.
        #[cfg(target_os = "linux")]
        let _ = mmap.advise(memmap2::Advice::HugePage);
        Self::parse(Storage::Mmap(mmap))
    }

    /// Parses a file image held in memory (tests, embedded models).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Storage::Bytes(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let parsed = parse_header(storage.as_slice())?;
        let mut by_name = HashMap::with_capacity(parsed.tensors.len());
        for (i, t) in parsed.tensors.iter().enumerate() {
            by_name.insert(t.name.clone(), i);
        }
        Ok(GgufFile {
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_len(&self) -> u64 {
        self.storage.as_slice().len() as u64
    }

    /// Drops this process's mapping of the whole pages inside `range` of the file image (a
    /// tensor a backend has copied into a layout of its own), so they leave the resident set;
    /// reading them again maps them back from the page cache or the file. A no-op for images
    /// held in memory and outside Linux.
    pub fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(target_os = "linux")]
        if let Storage::Mmap(m) = &self.storage {
            const PAGE: usize = 4096;
            let start = range.start.div_ceil(PAGE) * PAGE;
            let end = (range.end.min(m.len()) / PAGE) * PAGE;
            if start < end {
                // SAFETY: the mapping is read-only and shared (`Mmap::map`), so MADV_DONTNEED
                // discards no data: the pages are only unmapped, and any later read, including
                // one through a slice borrowed before this call, faults the same file bytes
                // back in. `start..end` lies inside the mapping.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = range;
    }

    /// The whole file image.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.as_slice()
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The tensor's bytes, borrowed from the file. Bounds were checked when the file was opened;
    /// a `TensorInfo` that does not belong to this file yields an empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let bytes = self.storage.as_slice();
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|start| Some((start, start.checked_add(t.n_bytes)?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range.and_then(|r| bytes.get(r)).unwrap_or(&[])
    }

    /// Data of the tensor called `name`, if there is one.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }

    /// `general.architecture` (`llama`, `gemma3`, ...).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.metadata.require_str("general.architecture")
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
}

/// A forward-only reader over the file image whose every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos(),
                need: n,
                file_len: self.buf.len() as u64,
            });
        }
        // n <= remaining <= usize::MAX, so the cast is lossless.
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, GgufError> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let offset = self.pos();
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { what, offset })
    }

    /// Reads one value of wire type `ty`; `depth` counts enclosing arrays.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            type_id::U8 => Value::U8(self.u8("u8 value")?),
            type_id::I8 => Value::I8(self.u8("i8 value")? as i8),
            type_id::U16 => Value::U16(self.u16("u16 value")?),
            type_id::I16 => Value::I16(self.u16("i16 value")? as i16),
            type_id::U32 => Value::U32(self.u32("u32 value")?),
            type_id::I32 => Value::I32(self.u32("i32 value")? as i32),
            type_id::U64 => Value::U64(self.u64("u64 value")?),
            type_id::I64 => Value::I64(self.u64("i64 value")? as i64),
            type_id::F32 => Value::F32(f32::from_bits(self.u32("f32 value")?)),
            type_id::F64 => Value::F64(f64::from_bits(self.u64("f64 value")?)),
            type_id::BOOL => {
                let offset = self.pos();
                match self.u8("bool value")? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    byte => {
                        return Err(GgufError::InvalidBool {
                            key: key.to_string(),
                            offset,
                            byte,
                        })
                    }
                }
            }
            type_id::STRING => Value::String(self.string("string value")?),
            type_id::ARRAY => self.array_value(key, depth + 1)?,
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id: ty,
                    offset: self.pos().saturating_sub(4),
                })
            }
        })
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Value, GgufError> {
        if depth > MAX_ARRAY_NESTING {
            return Err(GgufError::NestingTooDeep {
                key: key.to_string(),
                max: MAX_ARRAY_NESTING,
            });
        }
        let type_offset = self.pos();
        let elem = self.u32("array element type")?;
        let min_elem_bytes: u64 = match elem {
            type_id::U8 | type_id::I8 | type_id::BOOL => 1,
            type_id::U16 | type_id::I16 => 2,
            type_id::U32 | type_id::I32 | type_id::F32 => 4,
            type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
            type_id::ARRAY => 4 + 8,
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id: elem,
                    offset: type_offset,
                })
            }
        };
        let count_offset = self.pos();
        let count = self.u64("array length")?;
        let max = self.remaining() / min_elem_bytes;
        if count > max {
            return Err(GgufError::ArrayTooLong {
                key: key.to_string(),
                count,
                offset: count_offset,
                max,
            });
        }
        // count <= remaining bytes, so this allocation is bounded by the file size.
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(self.value(elem, key, depth)?);
        }
        Ok(Value::Array(items))
    }
}

fn parse_header(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    let max_kv = c.remaining() / MIN_KV_BYTES;
    if n_kv > max_kv {
        return Err(GgufError::TooManyKv {
            count: n_kv,
            max: max_kv,
        });
    }
    let max_tensors = c.remaining() / MIN_TENSOR_INFO_BYTES;
    if n_tensors > max_tensors {
        return Err(GgufError::TooManyTensors {
            count: n_tensors,
            max: max_tensors,
        });
    }

    let mut metadata = Metadata::with_capacity(n_kv as usize);
    for index in 0..n_kv {
        let key = c.string("metadata key")?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index });
        }
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        let ty = c.u32("metadata value type")?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }

    let alignment = match metadata.get(crate::ALIGNMENT_KEY) {
        Some(v) => alignment_from_value(v)?,
        None => DEFAULT_ALIGNMENT,
    };

    // Re-check now that the metadata has been consumed: the bound is tighter.
    let max_tensors = c.remaining() / MIN_TENSOR_INFO_BYTES;
    if n_tensors > max_tensors {
        return Err(GgufError::TooManyTensors {
            count: n_tensors,
            max: max_tensors,
        });
    }
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut seen: HashSet<String> = HashSet::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        if seen.contains(&name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims as usize > crate::MAX_DIMS {
            return Err(GgufError::InvalidDimCount {
                name,
                n_dims: n_dims.into(),
                max: crate::MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dimension")?);
        }
        let id = c.u32("tensor type")?;
        let dtype = DType::from_ggml_id(id).ok_or_else(|| GgufError::UnknownDType {
            tensor: name.clone(),
            id,
        })?;
        let n_bytes = tensor_n_bytes(&name, &dims, dtype)?;
        let offset = c.u64("tensor offset")?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name,
                offset,
                alignment,
            });
        }
        seen.insert(name.clone());
        tensors.push(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            n_bytes,
        });
    }

    let header_end = c.pos();
    let file_len = buf.len() as u64;
    // header_end <= file_len and alignment <= 2^31, so this cannot overflow.
    let data_offset = align_up(header_end, alignment).unwrap_or(u64::MAX);
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                offset: start.unwrap_or(u64::MAX),
                len: t.n_bytes,
                file_len,
            });
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        // Both ends were bounds-checked above, so the sum fits.
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::TensorOverlap {
                name: b.name.clone(),
                other: a.name.clone(),
            });
        }
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::type_id_name;

    #[test]
    fn cursor_refuses_reads_past_the_end() {
        let mut c = Cursor {
            buf: &[1, 2, 3],
            pos: 0,
        };
        assert!(matches!(
            c.u32("x"),
            Err(GgufError::Truncated {
                need: 4,
                file_len: 3,
                offset: 0,
                ..
            })
        ));
        assert_eq!(c.u16("y").unwrap(), 0x0201);
        assert!(c.take(u64::MAX, "z").is_err());
        assert_eq!(c.u8("w").unwrap(), 3);
    }

    #[test]
    fn type_names_cover_all_ids() {
        for id in 0..=12 {
            assert_ne!(type_id_name(id), "unknown");
        }
        assert_eq!(type_id_name(13), "unknown");
    }
}
