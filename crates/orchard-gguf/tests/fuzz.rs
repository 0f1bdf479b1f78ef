//! Property test standing in for a fuzzer: random byte flips, 64-bit field overwrites and
//! truncations of a valid file must never panic, and whatever still parses must hand out
//! tensor slices of exactly the advertised size.

use orchard_core::DType;
use orchard_gguf::{describe_value, GgufFile, GgufWriter, Value};
use proptest::prelude::*;

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama".into());
    w.add_metadata("llama.block_count", Value::U32(2));
    w.add_metadata("f", Value::F32(1e-5));
    w.add_metadata("b", Value::Bool(true));
    w.add_metadata(
        "toks",
        Value::Array(vec!["<s>".into(), "ab".into(), "c".into()]),
    );
    w.add_metadata(
        "nested",
        Value::Array(vec![
            Value::Array(vec![Value::I16(-1)]),
            Value::Array(vec![]),
        ]),
    );
    w.add_tensor("a", vec![8, 2], DType::F32, vec![1; 64])
        .unwrap();
    w.add_tensor("q", vec![32], DType::Q4_0, vec![2; 18])
        .unwrap();
    w.add_tensor("k", vec![256], DType::Q4_K, vec![3; 144])
        .unwrap();
    w.to_bytes().unwrap()
}

fn exercise(bytes: Vec<u8>) {
    let Ok(f) = GgufFile::from_bytes(bytes) else {
        return;
    };
    let len = f.file_len();
    for t in f.tensors() {
        let d = f.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes, "{}", t.name);
        assert!(f.data_offset() + t.offset + t.n_bytes <= len);
        assert_eq!(t.offset % f.alignment(), 0);
        assert!(f.tensor(&t.name).is_some());
    }
    for (k, v) in f.metadata().iter() {
        let _ = describe_value(v, 4);
        assert!(std::ptr::eq(f.metadata().get(k).unwrap(), v), "{k}");
    }
    let _ = f.architecture();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn byte_flips_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut b = valid_file();
        for (i, v) in flips {
            let i = i.index(b.len());
            b[i] = v;
        }
        exercise(b);
    }

    #[test]
    fn field_overwrites_never_panic(
        at in any::<prop::sample::Index>(),
        v in prop_oneof![any::<u64>(), Just(u64::MAX), Just(1u64 << 63), Just(1u64 << 32), 0u64..300],
        width in prop_oneof![Just(4usize), Just(8usize)],
    ) {
        let mut b = valid_file();
        let i = at.index(b.len() - width + 1);
        b[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
        exercise(b);
    }

    #[test]
    fn truncations_and_extensions_never_panic(cut in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut b = valid_file();
        let n = cut.index(b.len() + 1);
        b.truncate(n);
        b.extend_from_slice(&extra);
        exercise(b);
    }

    #[test]
    fn random_bytes_after_magic_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = b"GGUF\x03\0\0\0".to_vec();
        b.extend_from_slice(&body);
        exercise(b);
    }
}

#[test]
fn the_fuzzed_file_is_valid_to_begin_with() {
    let f = GgufFile::from_bytes(valid_file()).unwrap();
    assert_eq!(f.tensors().len(), 3);
    assert_eq!(f.metadata().len(), 6);
}
