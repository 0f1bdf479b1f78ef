//! The public API: built-in names and detection, the architecture fallback, the Jinja features HF
//! templates rely on, and errors that surface as `TemplateError` instead of panics.

use orchard_template::{default_for_architecture, ChatMessage, ChatTemplate, TemplateError};

fn conv() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "  Be kind.  "),
        ChatMessage::new("user", " Hi "),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye"),
    ]
}

fn builtin(name: &str, add_ass: bool) -> String {
    ChatTemplate::builtin(name)
        .unwrap_or_else(|| panic!("no builtin {name}"))
        .render(&conv(), add_ass)
        .unwrap()
}

#[test]
fn builtin_names_round_trip_and_detect_as_themselves() {
    let names: Vec<&str> = ChatTemplate::builtin_names().collect();
    for required in [
        "chatml",
        "gemma",
        "llama3",
        "llama2",
        "mistral-v7",
        "phi3",
        "zephyr",
        "deepseek",
    ] {
        assert!(names.contains(&required), "{required} missing");
    }
    for name in names {
        let t = ChatTemplate::builtin(name).unwrap();
        assert_eq!(t.name(), name);
        assert_eq!(ChatTemplate::detect(name), Some(name));
        assert!(t.source().is_none());
    }
    assert!(ChatTemplate::builtin("no-such-format").is_none());
}

#[test]
fn gemma_merges_the_trimmed_system_prompt_into_the_first_user_turn() {
    assert_eq!(
        builtin("gemma", true),
        "<start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    assert!(builtin("gemma", false).ends_with("Bye<end_of_turn>\n"));
}

#[test]
fn other_builtins_match_hand_written_prompts() {
    assert_eq!(
        builtin("chatml", true),
        "<|im_start|>system\n  Be kind.  <|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        builtin("llama3", true),
        "<|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // llama2 opens the first turn itself and never adds a generation prompt.
    assert_eq!(
        builtin("llama2", true),
        "[INST]   Be kind.  \n Hi  [/INST]Hello!</s>[INST] Bye [/INST]"
    );
    assert_eq!(
        builtin("llama2-sys-strip", true),
        "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]"
    );
    assert_eq!(
        builtin("mistral-v7", true),
        "[SYSTEM_PROMPT]   Be kind.  [/SYSTEM_PROMPT][INST]  Hi [/INST] Hello!</s>[INST] Bye[/INST]"
    );
    assert_eq!(
        builtin("phi3", true),
        "<|system|>\n  Be kind.  <|end|>\n<|user|>\n Hi <|end|>\n<|assistant|>\nHello!<|end|>\n\
         <|user|>\nBye<|end|>\n<|assistant|>\n"
    );
    assert_eq!(
        builtin("zephyr", true),
        "<|system|>\n  Be kind.  <|endoftext|>\n<|user|>\n Hi <|endoftext|>\n\
         <|assistant|>\nHello!<|endoftext|>\n<|user|>\nBye<|endoftext|>\n<|assistant|>\n"
    );
    assert_eq!(
        builtin("deepseek", true),
        "  Be kind.  ### Instruction:\n Hi \n### Response:\nHello!\n<|EOT|>\n### Instruction:\nBye\n\
         ### Response:\n"
    );
}

#[test]
fn detection_uses_template_markers() {
    assert_eq!(
        ChatTemplate::detect("{{ '<|im_start|>' + m.role }}"),
        Some("chatml")
    );
    assert_eq!(
        ChatTemplate::detect("{{ '<start_of_turn>' + role }}"),
        Some("gemma")
    );
    assert_eq!(
        ChatTemplate::detect("<|start_header_id|>{{ r }}<|end_header_id|>"),
        Some("llama3")
    );
    assert_eq!(
        ChatTemplate::detect("[SYSTEM_PROMPT] [INST] x"),
        Some("mistral-v7")
    );
    assert_eq!(ChatTemplate::detect("{{ messages }}"), None);
}

#[test]
fn architecture_fallback() {
    assert_eq!(default_for_architecture("gemma3"), "gemma");
    assert_eq!(default_for_architecture("gemma2"), "gemma");
    assert_eq!(default_for_architecture("llama"), "chatml");
    assert_eq!(default_for_architecture("qwen2"), "chatml");
    assert_eq!(default_for_architecture(""), "chatml");
    for arch in ["gemma3", "llama", "qwen3"] {
        assert!(ChatTemplate::builtin(default_for_architecture(arch)).is_some());
    }
}

#[test]
fn hf_template_features_work() {
    let src = r#"{%- set ns = namespace(n=0) -%}
{%- for m in messages -%}
  {%- set ns.n = ns.n + 1 -%}
  {{- m.role.upper() }}:{{ m.content.strip() }}{% if m.content.startswith(' ') %}*{% endif %}
  {%- if not loop.last %} | {% endif -%}
{%- endfor -%}
{%- if tools %} TOOLS{% endif -%}
{%- for d in documents %}DOC{% endfor -%}
 [{{ ns.n }} {{ documents|length }} {{ 'a-b'.split('-')|join('+') }} {{ 'x'.endswith('x') }} {{ 'A'.lower() }} {{ 'aXa'.replace('X', 'y') }}]
{{- bos_token ~ eos_token ~ (messages|tojson|length > 10)|string -}}
{%- if add_generation_prompt %}>{% endif %}"#;
    let t = ChatTemplate::from_jinja(src, "<s>", "</s>").unwrap();
    assert_eq!(t.name(), "jinja");
    assert_eq!(t.source(), Some(src));
    assert_eq!((t.bos_token(), t.eos_token()), ("<s>", "</s>"));
    let msgs = [
        ChatMessage::new("system", "  S "),
        ChatMessage::new("user", "U"),
    ];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "SYSTEM:S* | USER:U[2 0 a+b True a aya]<s></s>True>"
    );
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "SYSTEM:S* | USER:U[2 0 a+b True a aya]<s></s>True"
    );
}

#[test]
fn extra_message_fields_and_developer_role_reach_the_template() {
    let src = "{% for m in messages %}{{ m.role }}={{ m.content }}\
               {% if m.tool_calls %}{% for c in m.tool_calls %}[{{ c.function.name }}({{ c.function.arguments|tojson }})]{% endfor %}{% endif %};{% endfor %}";
    let t = ChatTemplate::from_jinja(src, "", "").unwrap();
    let mut call: ChatMessage = serde_json::from_value(serde_json::json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    }))
    .unwrap();
    assert_eq!(call.extra.len(), 1);
    assert_eq!(call.content, "");
    call.content = "ok".into();
    let out = t
        .render(&[ChatMessage::new("developer", "rules"), call], false)
        .unwrap();
    assert_eq!(out, "system=rules;assistant=ok[f({\"x\": 1})];");
}

#[test]
fn template_errors_never_panic() {
    let syntax =
        ChatTemplate::from_jinja("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
    assert!(matches!(syntax, TemplateError::Syntax { .. }), "{syntax:?}");
    assert!(syntax.to_string().contains("does not compile"), "{syntax}");

    let unclosed = ChatTemplate::from_jinja("{% if x %}never closed", "", "").unwrap_err();
    assert!(
        matches!(unclosed, TemplateError::Syntax { .. }),
        "{unclosed:?}"
    );

    let raising = ChatTemplate::from_jinja(
        "{% if messages|length == 0 %}{{ raise_exception('need at least one message') }}{% endif %}ok",
        "",
        "",
    )
    .unwrap();
    assert_eq!(raising.render(&conv(), true).unwrap(), "ok");
    let err = raising.render(&[], true).unwrap_err();
    assert_eq!(
        err,
        TemplateError::Raised {
            message: "need at least one message".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "chat template raised an exception: need at least one message"
    );

    let bad_op = ChatTemplate::from_jinja("{{ messages[0].content + 1 }}", "", "").unwrap();
    assert!(matches!(
        bad_op.render(&conv(), true),
        Err(TemplateError::Render { .. })
    ));
}
