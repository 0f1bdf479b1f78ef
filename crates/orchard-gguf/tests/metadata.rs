//! Typed metadata getters: absent vs wrong type vs out of range, integer widening, array
//! conversions, and the compact printer used by `orchard inspect`.

use orchard_gguf::{describe_value, GgufError, GgufFile, GgufWriter, Metadata, Value};

fn md() -> Metadata {
    let mut w = GgufWriter::new();
    w.add_metadata("u8", Value::U8(200));
    w.add_metadata("i8neg", Value::I8(-1));
    w.add_metadata("u64big", Value::U64(1 << 40));
    w.add_metadata("i64", Value::I64(-5));
    w.add_metadata("f32", Value::F32(0.25));
    w.add_metadata("f64", Value::F64(1e-6));
    w.add_metadata("s", "text".into());
    w.add_metadata("b", Value::Bool(true));
    w.add_metadata("toks", Value::Array(vec!["a".into(), "b".into()]));
    w.add_metadata("ints", Value::Array(vec![Value::U8(1), Value::U8(255)]));
    w.add_metadata("neg", Value::Array(vec![Value::I32(-1)]));
    w.add_metadata(
        "floats",
        Value::Array(vec![Value::F32(0.5), Value::F32(-2.0)]),
    );
    GgufFile::from_bytes(w.to_bytes().unwrap())
        .unwrap()
        .metadata()
        .clone()
}

#[test]
fn absent_keys_are_none_and_required_keys_are_missing() {
    let m = md();
    assert_eq!(m.get_u32("nope").unwrap(), None);
    assert_eq!(m.get_str("nope").unwrap(), None);
    assert_eq!(m.get_str_array("nope").unwrap(), None);
    assert!(matches!(m.require_u32("nope"), Err(GgufError::MissingKey { key }) if key == "nope"));
    assert!(matches!(
        m.require_str("nope"),
        Err(GgufError::MissingKey { .. })
    ));
    assert!(matches!(
        m.require_f32("nope"),
        Err(GgufError::MissingKey { .. })
    ));
    assert!(matches!(
        m.require_u64("nope"),
        Err(GgufError::MissingKey { .. })
    ));
}

#[test]
fn integers_widen_and_narrow_when_they_fit() {
    let m = md();
    assert_eq!(m.require_u32("u8").unwrap(), 200);
    assert_eq!(m.get_u64("u8").unwrap(), Some(200));
    assert_eq!(m.get_i64("i8neg").unwrap(), Some(-1));
    assert_eq!(m.get_i64("u64big").unwrap(), Some(1 << 40));
    assert_eq!(m.require_u64("u64big").unwrap(), 1 << 40);
    let e = m.get_u32("u64big").unwrap_err();
    assert!(
        matches!(&e, GgufError::ValueOutOfRange { key, expected: "u32", .. } if key == "u64big"),
        "{e:?}"
    );
    assert!(matches!(
        m.get_u64("i64"),
        Err(GgufError::ValueOutOfRange { .. })
    ));
    assert!(matches!(
        m.get_u32("i8neg"),
        Err(GgufError::ValueOutOfRange { .. })
    ));
}

#[test]
fn wrong_types_are_reported() {
    let m = md();
    let e = m.get_u32("s").unwrap_err();
    assert!(
        matches!(&e, GgufError::WrongType { key, expected: "u32", found } if key == "s" && found == "string"),
        "{e:?}"
    );
    assert!(matches!(
        m.get_str("b"),
        Err(GgufError::WrongType {
            expected: "string",
            ..
        })
    ));
    assert!(matches!(m.get_bool("u8"), Err(GgufError::WrongType { .. })));
    // Floats are not integers and vice versa.
    assert!(matches!(m.get_u32("f32"), Err(GgufError::WrongType { .. })));
    assert!(matches!(m.get_f32("u8"), Err(GgufError::WrongType { .. })));
    let e = m.get_str_array("ints").unwrap_err();
    assert!(
        matches!(&e, GgufError::WrongType { found, .. } if found == "array<u8>"),
        "{e:?}"
    );
    assert!(matches!(
        m.get_u32_array("toks"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        m.get_u32_array("neg"),
        Err(GgufError::ValueOutOfRange { .. })
    ));
    assert!(matches!(
        m.get_f32_array("ints"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        m.get_i32_array("s"),
        Err(GgufError::WrongType { .. })
    ));
}

#[test]
fn typed_values_and_arrays() {
    let m = md();
    assert_eq!(m.require_f32("f32").unwrap(), 0.25);
    assert_eq!(m.get_f32("f64").unwrap(), Some(1e-6f64 as f32));
    assert_eq!(m.require_str("s").unwrap(), "text");
    assert_eq!(m.get_bool("b").unwrap(), Some(true));
    assert_eq!(m.get_str_array("toks").unwrap(), Some(vec!["a", "b"]));
    assert_eq!(m.get_u32_array("ints").unwrap(), Some(vec![1, 255]));
    assert_eq!(m.get_i32_array("ints").unwrap(), Some(vec![1, 255]));
    assert_eq!(m.get_i32_array("neg").unwrap(), Some(vec![-1]));
    assert_eq!(m.get_f32_array("floats").unwrap(), Some(vec![0.5, -2.0]));
    assert_eq!(m.len(), 12);
}

#[test]
fn value_helpers() {
    assert_eq!(Value::I16(-3).as_i64(), Some(-3));
    assert_eq!(Value::I16(-3).as_u64(), None);
    assert_eq!(Value::U64(u64::MAX).as_i64(), None);
    assert_eq!(Value::U64(u64::MAX).as_u64(), Some(u64::MAX));
    assert_eq!(Value::F32(1.5).as_f64(), Some(1.5));
    assert_eq!(Value::U8(1).as_f64(), None);
    assert_eq!(Value::Bool(true).as_bool(), Some(true));
    assert_eq!(Value::from("x").as_str(), Some("x"));
    assert_eq!(Value::Array(vec![]).as_array(), Some(&[][..]));
    let names: Vec<&str> = [
        Value::U8(0),
        Value::I8(0),
        Value::U16(0),
        Value::I16(0),
        Value::U32(0),
        Value::I32(0),
        Value::U64(0),
        Value::I64(0),
        Value::F32(0.0),
        Value::F64(0.0),
        Value::Bool(false),
        Value::String(String::new()),
        Value::Array(vec![]),
    ]
    .iter()
    .map(Value::type_name)
    .collect();
    assert_eq!(
        names,
        [
            "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool", "string",
            "array"
        ]
    );
}

#[test]
fn describe_is_compact() {
    let toks = Value::Array(["<s>", "a", "b\n", "c"].map(Value::from).to_vec());
    assert_eq!(
        describe_value(&toks, 3),
        r#"[4 items: "<s>", "a", "b\n", ...]"#
    );
    assert_eq!(
        describe_value(&toks, 4),
        r#"[4 items: "<s>", "a", "b\n", "c"]"#
    );
    assert_eq!(describe_value(&toks, 0), "[4 items: ...]");
    assert_eq!(describe_value(&Value::Array(vec![]), 3), "[0 items]");
    assert_eq!(
        describe_value(&Value::Array(vec![Value::U8(1)]), 3),
        "[1 item: 1]"
    );
    let nested = Value::Array(vec![Value::Array(vec![Value::I32(-1), Value::I32(2)])]);
    assert_eq!(describe_value(&nested, 1), "[1 item: [2 items: -1, ...]]");
    assert_eq!(describe_value(&Value::F32(0.5), 3), "0.5");
    assert_eq!(describe_value(&Value::Bool(true), 3), "true");
    let long = describe_value(&Value::String("x".repeat(1000)), 3);
    assert!(
        long.ends_with("... (1000 chars)") && long.len() < 220,
        "{long}"
    );
}
