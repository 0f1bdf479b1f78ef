//! Hand-crafted malformed and hostile files: each must be rejected with the specific error
//! variant that names the problem, without panicking, reading out of bounds or allocating
//! according to a count the file cannot back.

use orchard_gguf::{GgufError, GgufFile};

/// Little-endian byte builder for crafting files field by field.
#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw::default()
            .bytes(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Raw {
        self.bytes(&[v])
    }
    fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A metadata entry with a u32 value.
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info entry.
    fn tensor(self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(type_id).u64(offset)
    }
    /// Zero padding up to `align`, then `n` data bytes.
    fn data(mut self, align: usize, n: usize) -> Raw {
        let padded = self.0.len().div_ceil(align) * align;
        self.0.resize(padded + n, 0);
        self
    }
    fn parse(self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0)
    }
}

const F32: u32 = 0;
const Q4_0: u32 = 2;

#[test]
fn minimal_crafted_file_is_accepted() {
    // Guards the builder itself: the hostile variants below differ from this in one field.
    let f = Raw::header(3, 2, 1)
        .kv_u32("k", 7)
        .tensor("a", &[4, 2], F32, 0)
        .tensor("b", &[32], Q4_0, 32)
        .data(32, 64)
        .parse()
        .unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()).len(), 18);
    assert_eq!(f.metadata().get_u32("k").unwrap(), Some(7));
    assert_eq!(f.data_offset() % 32, 0);
}

#[test]
fn bad_magic() {
    let e = Raw::default()
        .bytes(b"GGML")
        .u32(3)
        .u64(0)
        .u64(0)
        .parse()
        .unwrap_err();
    assert!(
        matches!(e, GgufError::BadMagic { found } if &found == b"GGML"),
        "{e:?}"
    );
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, 0x0300_0000, u32::MAX] {
        let e = Raw::header(version, 0, 0).parse().unwrap_err();
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: v } if v == version),
            "{e:?}"
        );
    }
    assert_eq!(Raw::header(2, 0, 0).parse().unwrap().version(), 2);
}

#[test]
fn truncated_header() {
    let e = Raw::default().parse().unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::Truncated {
                what: "magic",
                offset: 0,
                need: 4,
                file_len: 0
            }
        ),
        "{e:?}"
    );
    let full = Raw::header(3, 0, 0).0;
    for cut in 4..full.len() {
        let e = GgufFile::from_bytes(full[..cut].to_vec()).unwrap_err();
        assert!(
            matches!(e, GgufError::Truncated { file_len, .. } if file_len == cut as u64),
            "{e:?}"
        );
    }
    let e = GgufFile::from_bytes(full[..12].to_vec()).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::Truncated {
                what: "tensor count",
                offset: 8,
                need: 8,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn huge_tensor_count() {
    let e = Raw::header(3, 1 << 60, 0).parse().unwrap_err();
    assert!(
        matches!(e, GgufError::TooManyTensors { count, max: 0 } if count == 1 << 60),
        "{e:?}"
    );
    // A count that fits the raw remaining bytes but not what is left after the metadata.
    let e = Raw::header(3, 2, 1)
        .str("key")
        .u32(8)
        .str(&"x".repeat(100))
        .parse()
        .unwrap_err();
    assert!(
        matches!(e, GgufError::TooManyTensors { count: 2, max: 0 }),
        "{e:?}"
    );
}

#[test]
fn huge_kv_count() {
    let e = Raw::header(3, 0, u64::MAX)
        .kv_u32("a", 1)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::TooManyKv {
                count: u64::MAX,
                max: 1
            }
        ),
        "{e:?}"
    );
}

#[test]
fn string_length_past_eof() {
    let e = Raw::header(3, 0, 1)
        .u64(1 << 40)
        .bytes(&[b'a'; 20])
        .parse()
        .unwrap_err();
    assert!(
        matches!(e, GgufError::Truncated { what: "metadata key", offset: 32, need, file_len: 52 } if need == 1 << 40),
        "{e:?}"
    );
    let e = Raw::header(3, 0, 1)
        .str("k")
        .u32(8)
        .u64(u64::MAX)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::Truncated {
                what: "string value",
                need: u64::MAX,
                ..
            }
        ),
        "{e:?}"
    );
    let e = Raw::header(3, 1, 0)
        .u64(u64::MAX - 3)
        .bytes(&[0; 40])
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::Truncated {
                what: "tensor name",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn array_count_past_eof() {
    // 2^60 u32 items claimed, 8 bytes present: rejected before any allocation.
    let e = Raw::header(3, 0, 1)
        .str("arr")
        .u32(9)
        .u32(4)
        .u64(1 << 60)
        .u64(0)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::ArrayTooLong { key, count, max: 2, .. } if key == "arr" && *count == 1 << 60),
        "{e:?}"
    );
    // Strings need at least their 8-byte length each, so 3 claimed in 16 bytes is too many.
    let e = Raw::header(3, 0, 1)
        .str("s")
        .u32(9)
        .u32(8)
        .u64(3)
        .bytes(&[0; 16])
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::ArrayTooLong {
                count: 3,
                max: 2,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn nested_array_bomb() {
    // Deep: arrays of arrays nested 1000 levels, which would blow a naive recursive parser.
    let mut r = Raw::header(3, 0, 1).str("bomb").u32(9);
    for _ in 0..1000 {
        r = r.u32(9).u64(1);
    }
    let e = r.u32(0).u64(0).parse().unwrap_err();
    assert!(
        matches!(&e, GgufError::NestingTooDeep { key, max: 8 } if key == "bomb"),
        "{e:?}"
    );

    // Wide: an array claiming 2^62 empty inner arrays; each needs at least 12 bytes.
    let e = Raw::header(3, 0, 1)
        .str("wide")
        .u32(9)
        .u32(9)
        .u64(1 << 62)
        .u32(0)
        .u64(0)
        .parse()
        .unwrap_err();
    assert!(matches!(e, GgufError::ArrayTooLong { max: 1, .. }), "{e:?}");

    // Nesting within the limit is fine.
    let mut r = Raw::header(3, 0, 1).str("ok").u32(9);
    for _ in 0..7 {
        r = r.u32(9).u64(1);
    }
    let f = r.u32(4).u64(1).u32(5).parse().unwrap();
    let mut v = f.metadata().get("ok").unwrap();
    for _ in 0..8 {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v.as_u64(), Some(5));
}

#[test]
fn unknown_value_type() {
    let e = Raw::header(3, 0, 1)
        .str("k")
        .u32(13)
        .u32(0)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::UnknownValueType { key, type_id: 13, offset: 33 } if key == "k"),
        "{e:?}"
    );
    let e = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(0xdead)
        .u64(0)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::UnknownValueType {
                type_id: 0xdead,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn invalid_bool_utf8_and_empty_key() {
    let e = Raw::header(3, 0, 1)
        .str("b")
        .u32(7)
        .u8(2)
        .parse()
        .unwrap_err();
    assert!(matches!(e, GgufError::InvalidBool { byte: 2, .. }), "{e:?}");
    let e = Raw::header(3, 0, 1)
        .u64(2)
        .bytes(&[0xff, 0xfe])
        .u32(4)
        .u32(0)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::InvalidUtf8 {
                what: "metadata key",
                offset: 32
            }
        ),
        "{e:?}"
    );
    let e = Raw::header(3, 0, 2)
        .kv_u32("a", 1)
        .kv_u32("", 1)
        .parse()
        .unwrap_err();
    assert!(matches!(e, GgufError::EmptyKey { index: 1 }), "{e:?}");
}

#[test]
fn tensor_offset_past_eof() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], F32, 1 << 20)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { name, len: 32, .. } if name == "t"),
        "{e:?}"
    );
    // An offset so large that data_offset + offset overflows u64.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], F32, u64::MAX - 31)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e:?}");
}

#[test]
fn tensor_size_past_eof() {
    // Offset 0 is fine but 8x8 f32 needs 256 bytes and only 255 are there.
    let r = Raw::header(3, 1, 0)
        .tensor("t", &[8, 8], F32, 0)
        .data(32, 255);
    let file_len = r.0.len() as u64;
    let e = r.parse().unwrap_err();
    assert!(
        matches!(e, GgufError::TensorOutOfBounds { len: 256, file_len: l, .. } if l == file_len),
        "{e:?}"
    );
    Raw::header(3, 1, 0)
        .tensor("t", &[8, 8], F32, 0)
        .data(32, 256)
        .parse()
        .unwrap();
}

#[test]
fn dims_product_overflow() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 32, 1 << 32], F32, 0)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::ShapeOverflow { name, dims } if name == "t" && dims.len() == 2),
        "{e:?}"
    );
    // The element count fits i64 but the byte count does not.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 31, 1 << 31], F32, 0)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(matches!(e, GgufError::ShapeOverflow { .. }), "{e:?}");
}

#[test]
fn too_many_or_no_dims() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1, 1, 1, 1, 1], F32, 0)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::InvalidDimCount {
                n_dims: 5,
                max: 4,
                ..
            }
        ),
        "{e:?}"
    );
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[], F32, 0)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(
        matches!(e, GgufError::InvalidDimCount { n_dims: 0, .. }),
        "{e:?}"
    );
    // n_dims is read before the dims, so a huge count never drives a loop or allocation.
    let e = Raw::header(3, 1, 0)
        .str("t")
        .u32(u32::MAX)
        .bytes(&[0; 64])
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::InvalidDimCount {
                n_dims: 0xffff_ffff,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn zero_dim() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[4, 0, 2], F32, 0)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::ZeroDim { name, index: 1 } if name == "t"),
        "{e:?}"
    );
}

#[test]
fn unknown_dtype() {
    for id in [4, 31, 40, u32::MAX] {
        let e = Raw::header(3, 1, 0)
            .tensor("w", &[32], id, 0)
            .data(32, 64)
            .parse()
            .unwrap_err();
        assert!(
            matches!(&e, GgufError::UnknownDType { tensor, id: i } if tensor == "w" && *i == id),
            "{e:?}"
        );
    }
}

#[test]
fn misaligned_tensor_offset() {
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[4], F32, 16)
        .data(32, 64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::MisalignedTensor {
                offset: 16,
                alignment: 32,
                ..
            }
        ),
        "{e:?}"
    );
    // With general.alignment = 16 the same offset is fine.
    let f = Raw::header(3, 1, 1)
        .kv_u32("general.alignment", 16)
        .tensor("t", &[4], F32, 16)
        .data(16, 64)
        .parse()
        .unwrap();
    assert_eq!((f.alignment(), f.data_offset() % 16), (16, 0));
}

#[test]
fn row_not_whole_blocks() {
    let e = Raw::header(3, 1, 0)
        .tensor("q", &[48, 2], Q4_0, 0)
        .data(32, 64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::NotWholeBlocks {
                row_len: 48,
                block_size: 32,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn duplicate_tensor_name() {
    let e = Raw::header(3, 2, 0)
        .tensor("t", &[8], F32, 0)
        .tensor("t", &[8], F32, 32)
        .data(32, 64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name } if name == "t"),
        "{e:?}"
    );
}

#[test]
fn overlapping_tensors() {
    let e = Raw::header(3, 2, 0)
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[8], F32, 32)
        .data(32, 96)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::TensorOverlap { name, other } if name == "b" && other == "a"),
        "{e:?}"
    );
}

#[test]
fn tensor_name_too_long() {
    let name = "n".repeat(64);
    let e = Raw::header(3, 1, 0)
        .tensor(&name, &[8], F32, 0)
        .data(32, 32)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::TensorNameTooLong {
                len: 64,
                max: 63,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn duplicate_key() {
    let e = Raw::header(3, 0, 2)
        .kv_u32("a.b", 1)
        .kv_u32("a.b", 2)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::DuplicateKey { key } if key == "a.b"),
        "{e:?}"
    );
}

#[test]
fn bad_alignment() {
    for a in [0, 3, 48, 0x8000_0001] {
        let e = Raw::header(3, 0, 1)
            .kv_u32("general.alignment", a)
            .parse()
            .unwrap_err();
        assert!(
            matches!(e, GgufError::BadAlignment { alignment } if alignment == u64::from(a)),
            "{e:?}"
        );
    }
    // llama.cpp insists on u32 for this key; a u64 is a type error, not silently accepted.
    let e = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(10)
        .u64(64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::WrongType { expected: "u32", found, .. } if found == "u64"),
        "{e:?}"
    );
}

#[test]
fn every_prefix_of_a_valid_file_is_rejected_cleanly() {
    let full = Raw::header(3, 2, 2)
        .kv_u32("k", 7)
        .str("arr")
        .u32(9)
        .u32(8)
        .u64(2)
        .str("ab")
        .str("c")
        .tensor("a", &[4, 2], F32, 0)
        .tensor("b", &[32], Q4_0, 32)
        .data(32, 50)
        .0;
    GgufFile::from_bytes(full.clone()).unwrap();
    for cut in 0..full.len() {
        let e = GgufFile::from_bytes(full[..cut].to_vec()).unwrap_err();
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::TooManyTensors { .. }
                    | GgufError::TooManyKv { .. }
                    | GgufError::ArrayTooLong { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "cut {cut}: {e:?}"
        );
    }
}

#[test]
fn errors_display_their_facts() {
    let e = Raw::header(1, 0, 0).parse().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("version 1") && msg.contains("obsolete"),
        "{msg}"
    );
    let e = Raw::header(3, 1, 0)
        .tensor("w", &[32], 4, 0)
        .data(32, 64)
        .parse()
        .unwrap_err();
    assert_eq!(e.to_string(), "tensor \"w\" has unknown ggml type id 4");
}

#[test]
fn open_reports_io_errors_with_the_path() {
    let e = GgufFile::open("/nonexistent/dir/model.gguf").unwrap_err();
    assert!(
        matches!(&e, GgufError::Io { path, .. } if path.ends_with("model.gguf")),
        "{e:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = GgufFile::open(&empty).unwrap_err();
    assert!(
        matches!(e, GgufError::Truncated { what: "magic", .. }),
        "{e:?}"
    );
}

#[test]
fn foreign_tensor_info_gives_an_empty_slice_not_a_panic() {
    let f = Raw::header(3, 1, 0)
        .tensor("t", &[8], F32, 0)
        .data(32, 32)
        .parse()
        .unwrap();
    let mut t = f.tensor("t").unwrap().clone();
    assert_eq!(f.tensor_data(&t).len(), 32);
    t.offset = u64::MAX - 4;
    assert!(f.tensor_data(&t).is_empty());
    t.offset = 0;
    t.n_bytes = 1 << 40;
    assert!(f.tensor_data(&t).is_empty());
}
