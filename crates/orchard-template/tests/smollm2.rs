//! SmolLM2-135M-Instruct's real embedded template (a copy of the GGUF's `tokenizer.chat_template` in
//! fixtures/) renders to ChatML with its default system prompt when the conversation has none.

use orchard_template::{ChatMessage, ChatTemplate};

const SOURCE: &str = include_str!("fixtures/smollm2-135m-instruct.jinja");
const DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn template() -> ChatTemplate {
    ChatTemplate::from_jinja(SOURCE, "<|im_start|>", "<|im_end|>").unwrap()
}

#[test]
fn default_system_prompt_is_added_when_missing() {
    let out = template()
        .render(&[ChatMessage::new("user", "Hello")], true)
        .unwrap();
    assert_eq!(
        out,
        format!("{DEFAULT_SYSTEM}<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    );
}

#[test]
fn explicit_system_prompt_replaces_the_default() {
    let conv = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Name a colour."),
    ];
    let out = template().render(&conv, true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // Without the generation prompt the text simply ends after the last turn.
    let out = template().render(&conv, false).unwrap();
    assert!(out.ends_with("Name a colour.<|im_end|>\n"), "{out:?}");

    // With a system message present the Jinja output is exactly llama.cpp's built-in ChatML.
    assert_eq!(ChatTemplate::detect(SOURCE), Some("chatml"));
    let chatml = ChatTemplate::builtin("chatml").unwrap();
    assert_eq!(
        chatml.render(&conv, true).unwrap(),
        template().render(&conv, true).unwrap()
    );
}

#[test]
fn fixture_is_the_template_embedded_in_the_model() {
    // The fixture must be byte-identical to the GGUF's metadata string, which GGUF stores verbatim.
    let dir = std::env::var("ORCHARD_MODELS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../models").to_string());
    let path = std::path::Path::new(&dir).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut head = Vec::new();
    use std::io::Read;
    std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("model {} is required: {e}", path.display()))
        .take(32 << 20)
        .read_to_end(&mut head)
        .unwrap();
    // The string is preceded by its u64 length, as GGUF encodes strings.
    let mut needle = (SOURCE.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(SOURCE.as_bytes());
    assert!(
        head.windows(needle.len()).any(|w| w == needle.as_slice()),
        "fixture differs from the template in {}",
        path.display()
    );
}
