//! Writer round trips (every value type, nested arrays, alignment, v2) and sparse holes: what
//! the writer produces must read back identical through the validating reader.

use orchard_core::DType;
use orchard_gguf::{GgufError, GgufFile, GgufWriter, Value};

fn all_values() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(250)),
        ("t.i8", Value::I8(-7)),
        ("t.u16", Value::U16(65000)),
        ("t.i16", Value::I16(-32000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(-1.5e-6)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("t.bool", Value::Bool(true)),
        ("t.str", Value::String("héllo ▁wörld\n\0".into())),
        ("t.empty_str", Value::String(String::new())),
        (
            "t.arr_i32",
            Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)]),
        ),
        (
            "t.arr_str",
            Value::Array(vec!["a".into(), "".into(), "ccc".into()]),
        ),
        (
            "t.arr_bool",
            Value::Array(vec![Value::Bool(false), Value::Bool(true)]),
        ),
        ("t.arr_empty", Value::Array(vec![])),
        (
            "t.nested",
            Value::Array(vec![
                Value::Array(vec![Value::U8(1), Value::U8(2)]),
                Value::Array(vec![]),
                Value::Array(vec![Value::U8(3)]),
            ]),
        ),
        (
            "t.nested_mixed_inner_types",
            Value::Array(vec![
                Value::Array(vec![Value::F64(0.5)]),
                Value::Array(vec![Value::String("x".into())]),
                Value::Array(vec![Value::Array(vec![Value::I64(-1)])]),
            ]),
        ),
    ]
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama".into());
    for (k, v) in all_values() {
        w.add_metadata(k, v);
    }
    let w1: Vec<f32> = (0..12).map(|i| i as f32 * 0.25).collect();
    w.add_tensor("w1", vec![4, 3], DType::F32, f32_bytes(&w1))
        .unwrap();
    let q: Vec<u8> = (0..2 * 34).map(|i| i as u8).collect();
    w.add_tensor("q", vec![32, 2], DType::Q8_0, q).unwrap();
    w.add_tensor("v", vec![1], DType::F32, f32_bytes(&[7.0]))
        .unwrap();
    w
}

#[test]
fn round_trip_all_value_types_and_tensors() {
    let w = sample_writer();
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    let md = f.metadata();
    assert_eq!(md.len(), all_values().len() + 1);
    // File order is preserved.
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    assert_eq!(keys[0], "general.architecture");
    for ((k, v), (rk, rv)) in all_values().iter().zip(md.iter().skip(1)) {
        assert_eq!((*k, v), (rk, rv));
    }
    assert_eq!(md, w.metadata());

    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w1", "q", "v"]);
    let w1 = f.tensor("w1").unwrap();
    assert_eq!(
        (w1.dims.clone(), w1.dtype, w1.offset, w1.n_bytes),
        (vec![4, 3], DType::F32, 0, 48)
    );
    assert_eq!(
        f.tensor_data(w1),
        f32_bytes(&(0..12).map(|i| i as f32 * 0.25).collect::<Vec<_>>())
    );
    let q = f.tensor("q").unwrap();
    assert_eq!(
        (q.offset, q.n_bytes, q.rows(), q.row_len()),
        (64, 68, 2, 32)
    );
    assert_eq!(
        f.tensor_data(q),
        (0..68).map(|i| i as u8).collect::<Vec<_>>()
    );
    assert_eq!(f.tensor_data(f.tensor("v").unwrap()), 7f32.to_le_bytes());
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.file_len() % 32, 0);

    // The same bytes come out through a file on disk, and reopen via mmap identically.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    w.write_to_path(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.metadata(), f.metadata());
    assert_eq!(g.tensors(), f.tensors());
}

#[test]
fn version_2_and_custom_alignment() {
    let mut w = sample_writer();
    w.set_version(2).unwrap();
    w.set_alignment(256).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!((f.version(), f.alignment()), (2, 256));
    assert_eq!(f.data_offset() % 256, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 256 == 0));
    assert_eq!(
        f.metadata().get_u32("general.alignment").unwrap(),
        Some(256)
    );

    // Adding the key directly works the same way.
    let mut w = sample_writer();
    w.add_metadata("general.alignment", Value::U32(64));
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.tensor("q").unwrap().offset, 64);

    assert!(matches!(
        w.set_version(1),
        Err(GgufError::UnsupportedVersion { version: 1 })
    ));
    assert!(matches!(
        w.set_alignment(24),
        Err(GgufError::BadAlignment { alignment: 24 })
    ));
    w.add_metadata("general.alignment", Value::U32(0));
    assert!(matches!(
        w.to_bytes(),
        Err(GgufError::BadAlignment { alignment: 0 })
    ));
    w.add_metadata("general.alignment", Value::U64(32));
    assert!(matches!(w.to_bytes(), Err(GgufError::WrongType { .. })));
}

#[test]
fn writer_rejects_what_the_reader_would() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("t", vec![4], DType::F32, vec![0; 15])
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::DataLengthMismatch {
                expected: 16,
                got: 15,
                ..
            }
        ),
        "{e:?}"
    );
    let e = w
        .add_tensor("t", vec![33], DType::Q4_0, vec![])
        .unwrap_err();
    assert!(matches!(e, GgufError::NotWholeBlocks { .. }), "{e:?}");
    let e = w
        .add_tensor_hole("t", vec![1, 1, 1, 1, 1], DType::F32)
        .unwrap_err();
    assert!(
        matches!(e, GgufError::InvalidDimCount { n_dims: 5, .. }),
        "{e:?}"
    );
    let e = w.add_tensor_hole("t", vec![2, 0], DType::F32).unwrap_err();
    assert!(matches!(e, GgufError::ZeroDim { index: 1, .. }), "{e:?}");
    let e = w
        .add_tensor_hole("t", vec![u64::MAX, 2], DType::F32)
        .unwrap_err();
    assert!(matches!(e, GgufError::ShapeOverflow { .. }), "{e:?}");
    w.add_tensor("t", vec![4], DType::F32, vec![0; 16]).unwrap();
    let e = w.add_tensor_hole("t", vec![4], DType::F32).unwrap_err();
    assert!(matches!(e, GgufError::DuplicateTensor { .. }), "{e:?}");

    w.add_metadata("mixed", Value::Array(vec![Value::U8(1), Value::I8(1)]));
    let e = w.to_bytes().unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::HeterogeneousArray {
                first: "u8",
                other: "i8",
                ..
            }
        ),
        "{e:?}"
    );
    let mut deep = Value::U8(0);
    for _ in 0..9 {
        deep = Value::Array(vec![deep]);
    }
    w.add_metadata("mixed", deep);
    assert!(matches!(
        w.to_bytes(),
        Err(GgufError::NestingTooDeep { .. })
    ));
    w.add_metadata("mixed", Value::Bool(false));
    w.add_metadata("", Value::Bool(false));
    assert!(matches!(
        w.to_bytes(),
        Err(GgufError::EmptyKey { index: 1 })
    ));
}

#[test]
fn holes_are_zeros_in_memory() {
    let mut w = GgufWriter::new();
    w.add_tensor_hole("h", vec![256, 3], DType::Q4_K).unwrap();
    w.add_tensor("x", vec![2], DType::F32, f32_bytes(&[1.0, 2.0]))
        .unwrap();
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    let h = f.tensor("h").unwrap();
    assert_eq!(h.n_bytes, 3 * 144);
    assert!(f.tensor_data(h).iter().all(|&b| b == 0));
    assert_eq!(
        f.tensor_data(f.tensor("x").unwrap()),
        f32_bytes(&[1.0, 2.0])
    );
}

#[test]
fn sparse_hole_file_is_large_but_parses() {
    const GIB: u64 = 1 << 30;
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "synthetic".into());
    w.add_tensor(
        "small",
        vec![4],
        DType::F32,
        f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
    )
    .unwrap();
    // 8 GiB of f16 weights and 2.25 GiB of q4_K that are never materialised.
    w.add_tensor_hole("big", vec![1 << 16, 1 << 16], DType::F16)
        .unwrap();
    w.add_tensor_hole("big_q", vec![4096, 4 << 20], DType::Q4_K)
        .unwrap();
    w.add_tensor("tail", vec![2], DType::F32, f32_bytes(&[5.0, 6.0]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.gguf");
    w.write_to_path(&path).unwrap();

    let apparent = std::fs::metadata(&path).unwrap().len();
    assert!(apparent > 10 * GIB, "apparent size {apparent}");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.file_len(), apparent);
    let big = f.tensor("big").unwrap();
    assert_eq!(big.n_bytes, 8 * GIB);
    assert_eq!(f.tensor_data(big).len() as u64, 8 * GIB);
    assert_eq!(
        f.tensor("big_q").unwrap().n_bytes,
        4096 / 256 * 144 * (4 << 20)
    );
    assert_eq!(
        f.tensor_data(f.tensor("small").unwrap()),
        f32_bytes(&[1.0, 2.0, 3.0, 4.0])
    );
    // The tensor after the holes was written at its offset, past the skipped ranges.
    assert_eq!(
        f.tensor_data(f.tensor("tail").unwrap()),
        f32_bytes(&[5.0, 6.0])
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::metadata(&path).unwrap().blocks() * 512;
        eprintln!("sparse file: apparent {apparent} bytes, allocated {on_disk} bytes");
    }
}

/// `release` drops the mapping of a tensor's pages (a backend copied it): the bytes read the
/// same afterwards, through the file and through a slice borrowed before the call, and it is a
/// no-op for an image held in memory.
#[test]
fn released_pages_read_back_the_same() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama".into());
    let big: Vec<f32> = (0..3 * 4096).map(|i| (i % 251) as f32).collect();
    w.add_tensor("big", vec![4096, 3], DType::F32, f32_bytes(&big))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.gguf");
    w.write_to_path(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let t = g.tensor("big").unwrap();
    let before = g.tensor_data(t).to_vec();
    let start = (g.data_offset() + t.offset) as usize;
    let borrowed = &g.as_bytes()[start..start + before.len()];
    g.release(start..start + before.len());
    assert_eq!(borrowed, &before[..]);
    assert_eq!(g.tensor_data(t), &before[..]);
    g.release(0..g.as_bytes().len() + 4096); // past the end: clamped
    assert_eq!(g.tensor_data(t), &before[..]);
    let m = GgufFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    m.release(0..m.as_bytes().len());
    assert_eq!(m.tensor_data(m.tensor("big").unwrap()), &before[..]);
}
