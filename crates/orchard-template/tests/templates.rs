//! Real HF chat templates (copies of llama.cpp's models/templates/*.jinja in fixtures/templates)
//! rendered for a simple conversation, several checked against hand-written expected prompts.

use orchard_template::{ChatMessage, ChatTemplate, TemplateError};

fn load(name: &str, bos: &str, eos: &str) -> ChatTemplate {
    let path = format!(
        "{}/tests/fixtures/templates/{name}.jinja",
        env!("CARGO_MANIFEST_DIR")
    );
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    ChatTemplate::from_jinja(&src, bos, eos).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are a helpful assistant"),
        ChatMessage::new("user", "Hello"),
        ChatMessage::new("assistant", "Hi there"),
        ChatMessage::new("user", "Who are you"),
    ]
}

fn fixed_date() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("date_string".into(), "26 Jul 2024".into());
    m
}

#[test]
fn qwen25_renders_chatml_with_its_default_system_prompt() {
    let t = load("Qwen-Qwen2.5-7B-Instruct", "", "<|im_end|>");
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n\
         <|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&conversation()[1..2], true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen25_describes_tools_passed_as_extra_context() {
    let t = load("Qwen-Qwen2.5-7B-Instruct", "", "<|im_end|>");
    let mut extra = serde_json::Map::new();
    extra.insert(
        "tools".into(),
        serde_json::json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]),
    );
    let out = t.render_with(&conversation(), true, &extra).unwrap();
    assert!(
        out.starts_with("<|im_start|>system\nYou are a helpful assistant\n\n# Tools\n"),
        "{out}"
    );
    assert!(out.contains("<tools>\n{\""), "{out}");
    assert!(out.contains("\"name\": \"get_weather\""), "{out}");
    assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
}

#[test]
fn qwen3_thinking_switch() {
    let t = load("Qwen-Qwen3-0.6B", "", "<|im_end|>");
    let on = t.render(&conversation(), true).unwrap();
    assert!(
        on.ends_with("<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n"),
        "{on:?}"
    );
    let mut extra = serde_json::Map::new();
    extra.insert("enable_thinking".into(), false.into());
    let off = t.render_with(&conversation(), true, &extra).unwrap();
    assert!(
        off.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{off:?}"
    );
}

#[test]
fn llama31_header_with_date() {
    let t = load(
        "meta-llama-Llama-3.1-8B-Instruct",
        "<|begin_of_text|>",
        "<|eot_id|>",
    );
    assert_eq!(
        t.render_with(&conversation(), true, &fixed_date()).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         You are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
         Hello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n\
         Hi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
         Who are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // Without an override the date comes from the clock, in the same format.
    let out = t.render(&conversation(), true).unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("Today Date: "))
        .expect("date line");
    let date = &line["Today Date: ".len()..];
    let parts: Vec<&str> = date.split(' ').collect();
    assert_eq!(parts.len(), 3, "{date}");
    assert!(
        parts[0].len() == 2 && parts[0].chars().all(|c| c.is_ascii_digit()),
        "{date}"
    );
    assert!(parts[2].parse::<u32>().is_ok_and(|y| y >= 2024), "{date}");
}

#[test]
fn gemma2_gets_the_system_prompt_merged_like_llama_cpp() {
    // The template raises on a system message; llama.cpp notices that it ignores the system role and
    // prepends the system text to the first user message with a newline.
    let t = load("google-gemma-2-2b-it", "<bos>", "<eos>");
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<bos><start_of_turn>user\nYou are a helpful assistant\nHello<end_of_turn>\n\
         <start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n\
         <start_of_turn>model\n"
    );
    // Its own role check still fires, as an error carrying the template's message.
    let err = t
        .render(
            &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
            true,
        )
        .unwrap_err();
    assert_eq!(
        err,
        TemplateError::Raised {
            message: "Conversation roles must alternate user/assistant/user/assistant/...".into()
        }
    );
}

#[test]
fn mistral_nemo_puts_the_system_prompt_in_the_last_user_turn() {
    let t = load("mistralai-Mistral-Nemo-Instruct-2407", "<s>", "</s>");
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<s>[INST]Hello[/INST]Hi there</s>[INST]You are a helpful assistant\n\nWho are you[/INST]"
    );
}

#[test]
fn phi35_matches_the_builtin_phi3_format() {
    let t = load("microsoft-Phi-3.5-mini-instruct", "<s>", "<|endoftext|>");
    let expected = "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n\
                    <|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n";
    assert_eq!(t.render(&conversation(), true).unwrap(), expected);
    assert_eq!(
        ChatTemplate::builtin("phi3")
            .unwrap()
            .render(&conversation(), true)
            .unwrap(),
        expected
    );
    // Without the generation prompt this template ends with EOS.
    assert!(t
        .render(&conversation(), false)
        .unwrap()
        .ends_with("Who are you<|end|>\n<|endoftext|>"));
}

#[test]
fn other_real_templates_render_and_end_with_the_assistant_header() {
    for (name, bos, suffix) in [
        (
            "meta-llama-Llama-3.2-3B-Instruct",
            "<|begin_of_text|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            "HuggingFaceTB-SmolLM3-3B",
            "",
            "Who are you<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
            "<｜begin▁of▁sentence｜>",
            "<｜User｜>Who are you<｜Assistant｜><think>\n",
        ),
        (
            "Mistral-Small-3.2-24B-Instruct-2506",
            "<s>",
            "[INST]Who are you[/INST]",
        ),
        (
            "openai-gpt-oss-120b",
            "<|startoftext|>",
            "<|start|>user<|message|>Who are you<|end|><|start|>assistant",
        ),
    ] {
        let t = load(name, bos, "</s>");
        let out = t
            .render_with(&conversation(), true, &fixed_date())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.ends_with(suffix), "{name}: {out:?}");
        assert!(out.contains("Hello"), "{name}: {out:?}");
    }
}
