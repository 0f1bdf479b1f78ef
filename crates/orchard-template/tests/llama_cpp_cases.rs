//! llama.cpp's own chat-template test table (tests/test-chat-template.cpp, extracted into
//! fixtures/llama_cpp_cases.json by fixtures/extract_llama_cpp_cases.py): every template must be
//! detected as the built-in format llama.cpp picks and render to its expected text, and its Jinja
//! source must render to llama.cpp's expected Jinja output.

use orchard_template::{ChatMessage, ChatTemplate};
use serde_json::Value;

fn cases() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama_cpp_cases.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable"))
        .expect("fixture is JSON")
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .expect("array of messages")
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn conversation_for(all: &Value, case: &Value) -> Vec<ChatMessage> {
    let mut conv = messages(&all["conversation"]);
    conv.extend(messages(&case["extra_conversation"]));
    conv
}

#[test]
fn builtin_formats_match_llama_cpp_expected_output() {
    let all = cases();
    let list = all["cases"].as_array().unwrap();
    assert!(list.len() >= 30, "fixture has {} cases", list.len());
    let mut failures = Vec::new();
    for case in list {
        let name = case["name"].as_str().unwrap();
        let src = case["template"].as_str().unwrap();
        let Some(detected) = ChatTemplate::detect(src) else {
            failures.push(format!("{name}: not detected"));
            continue;
        };
        let tmpl = ChatTemplate::builtin(detected).expect("detected names are built-ins");
        let out = tmpl.render(&conversation_for(&all, case), true).unwrap();
        let expected = case["expected_builtin"].as_str().unwrap();
        if out != expected {
            failures.push(format!(
                "{name} ({detected}):\n  got      {out:?}\n  expected {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn jinja_rendering_matches_llama_cpp_expected_output() {
    let all = cases();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in all["cases"].as_array().unwrap() {
        if case["supported_with_jinja"] == Value::Bool(false) {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let tmpl = match ChatTemplate::from_jinja(
            case["template"].as_str().unwrap(),
            case["bos_token"].as_str().unwrap(),
            case["eos_token"].as_str().unwrap(),
        ) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        checked += 1;
        match tmpl.render(&conversation_for(&all, case), true) {
            Ok(out) => {
                let expected = case["expected_jinja"].as_str().unwrap();
                if out != expected {
                    failures.push(format!(
                        "{name}:\n  got      {out:?}\n  expected {expected:?}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(checked >= 30, "only {checked} Jinja cases checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
