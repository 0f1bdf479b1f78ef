//! llama.cpp's hard-coded chat formats (src/llama-chat.cpp), written out in Rust so that a model without
//! an embedded Jinja template, or a user asking for a format by name, gets byte-identical prompts to
//! llama.cpp's non-Jinja path.

use crate::ChatMessage;

/// The named formats. `name()` is the string llama.cpp accepts for `--chat-template`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Builtin {
    ChatMl,
    Llama2,
    Llama2Sys,
    Llama2SysBos,
    Llama2SysStrip,
    MistralV1,
    MistralV3,
    MistralV3Tekken,
    MistralV7,
    MistralV7Tekken,
    Phi3,
    Phi4,
    Falcon3,
    Zephyr,
    Monarch,
    Gemma,
    Orion,
    OpenChat,
    Vicuna,
    VicunaOrca,
    Deepseek,
    Deepseek2,
    Deepseek3,
    DeepseekOcr,
    CommandR,
    Llama3,
    ChatGlm3,
    ChatGlm4,
    GlmEdge,
    MiniCpm,
    Exaone3,
    Exaone4,
    ExaoneMoe,
    RwkvWorld,
    Granite3,
    Granite40,
    Granite41,
    GigaChat,
    Megrez,
    Yandex,
    Bailing,
    BailingThink,
    Bailing2,
    Llama4,
    SmolVlm,
    Dots1,
    HunyuanMoe,
    GptOss,
    HunyuanDense,
    HunyuanVl,
    KimiK2,
    SeedOss,
    Grok2,
    PanguEmbed,
    SolarOpen,
}

use Builtin::*;

pub(crate) const ALL: &[Builtin] = &[
    ChatMl,
    Llama2,
    Llama2Sys,
    Llama2SysBos,
    Llama2SysStrip,
    MistralV1,
    MistralV3,
    MistralV3Tekken,
    MistralV7,
    MistralV7Tekken,
    Phi3,
    Phi4,
    Falcon3,
    Zephyr,
    Monarch,
    Gemma,
    Orion,
    OpenChat,
    Vicuna,
    VicunaOrca,
    Deepseek,
    Deepseek2,
    Deepseek3,
    DeepseekOcr,
    CommandR,
    Llama3,
    ChatGlm3,
    ChatGlm4,
    GlmEdge,
    MiniCpm,
    Exaone3,
    Exaone4,
    ExaoneMoe,
    RwkvWorld,
    Granite3,
    Granite40,
    Granite41,
    GigaChat,
    Megrez,
    Yandex,
    Bailing,
    BailingThink,
    Bailing2,
    Llama4,
    SmolVlm,
    Dots1,
    HunyuanMoe,
    GptOss,
    HunyuanDense,
    HunyuanVl,
    KimiK2,
    SeedOss,
    Grok2,
    PanguEmbed,
    SolarOpen,
];

impl Builtin {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChatMl => "chatml",
            Llama2 => "llama2",
            Llama2Sys => "llama2-sys",
            Llama2SysBos => "llama2-sys-bos",
            Llama2SysStrip => "llama2-sys-strip",
            MistralV1 => "mistral-v1",
            MistralV3 => "mistral-v3",
            MistralV3Tekken => "mistral-v3-tekken",
            MistralV7 => "mistral-v7",
            MistralV7Tekken => "mistral-v7-tekken",
            Phi3 => "phi3",
            Phi4 => "phi4",
            Falcon3 => "falcon3",
            Zephyr => "zephyr",
            Monarch => "monarch",
            Gemma => "gemma",
            Orion => "orion",
            OpenChat => "openchat",
            Vicuna => "vicuna",
            VicunaOrca => "vicuna-orca",
            Deepseek => "deepseek",
            Deepseek2 => "deepseek2",
            Deepseek3 => "deepseek3",
            DeepseekOcr => "deepseek-ocr",
            CommandR => "command-r",
            Llama3 => "llama3",
            ChatGlm3 => "chatglm3",
            ChatGlm4 => "chatglm4",
            GlmEdge => "glmedge",
            MiniCpm => "minicpm",
            Exaone3 => "exaone3",
            Exaone4 => "exaone4",
            ExaoneMoe => "exaone-moe",
            RwkvWorld => "rwkv-world",
            Granite3 => "granite",
            Granite40 => "granite-4.0",
            Granite41 => "granite-4.1",
            GigaChat => "gigachat",
            Megrez => "megrez",
            Yandex => "yandex",
            Bailing => "bailing",
            BailingThink => "bailing-think",
            Bailing2 => "bailing2",
            Llama4 => "llama4",
            SmolVlm => "smolvlm",
            // llama.cpp detects this one but has no name for it in its table.
            Dots1 => "dots1",
            HunyuanMoe => "hunyuan-moe",
            GptOss => "gpt-oss",
            HunyuanDense => "hunyuan-dense",
            HunyuanVl => "hunyuan-vl",
            KimiK2 => "kimi-k2",
            SeedOss => "seed_oss",
            Grok2 => "grok-2",
            PanguEmbed => "pangu-embedded",
            SolarOpen => "solar-open",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Builtin> {
        ALL.iter().copied().find(|b| b.name() == name)
    }

    /// Maps a Jinja template source to the format it implements by looking for tell-tale markers, in
    /// the same order as llama.cpp's `llm_chat_detect_template` (the order matters: several formats
    /// share markers).
    pub(crate) fn detect(src: &str) -> Option<Builtin> {
        if let Some(b) = Builtin::from_name(src) {
            return Some(b);
        }
        let has = |s: &str| src.contains(s);
        let b = if has("<|im_start|>") {
            if has("<|im_sep|>") {
                Phi4
            } else if has("<end_of_utterance>") {
                SmolVlm
            } else {
                ChatMl
            }
        } else if src.starts_with("mistral") || has("[INST]") {
            if has("[SYSTEM_PROMPT]") {
                MistralV7
            } else if has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]") {
                if has(" [INST]") {
                    MistralV1
                } else if has("\"[INST]\"") {
                    MistralV3Tekken
                } else {
                    MistralV3
                }
            } else if has("content.strip()") {
                Llama2SysStrip
            } else if has("bos_token + '[INST]") {
                Llama2SysBos
            } else if has("<<SYS>>") {
                Llama2Sys
            } else {
                Llama2
            }
        } else if has("<|assistant|>") && has("<|end|>") {
            Phi3
        } else if has("[gMASK]<sop>") {
            ChatGlm4
        } else if has("<|assistant|>") && has("<|user|>") {
            if has("<|tool_declare|>") {
                ExaoneMoe
            } else if has("</s>") {
                Falcon3
            } else {
                GlmEdge
            }
        } else if has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>") {
            GlmEdge
        } else if has("<|user|>") && has("<|endoftext|>") {
            Zephyr
        } else if has("bos_token + message['role']") {
            Monarch
        } else if has("<start_of_turn>") {
            Gemma
        } else if has("'\\n\\nAssistant: ' + eos_token") {
            Orion
        } else if has("GPT4 Correct ") {
            OpenChat
        } else if has("USER: ") && has("ASSISTANT: ") {
            if has("SYSTEM: ") {
                VicunaOrca
            } else {
                Vicuna
            }
        } else if has("### Instruction:") && has("<|EOT|>") {
            Deepseek
        } else if has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>") {
            CommandR
        } else if has("<|start_header_id|>") && has("<|end_header_id|>") {
            Llama3
        } else if has("[gMASK]sop") {
            ChatGlm3
        } else if has("<用户>") {
            MiniCpm
        } else if has("'Assistant: ' + message['content'] + eos_token") {
            Deepseek2
        } else if has("<｜Assistant｜>") && has("<｜User｜>") && has("<｜end▁of▁sentence｜>") {
            Deepseek3
        } else if has("[|system|]") && has("[|assistant|]") && has("[|endofturn|]") {
            if has("[|tool|]") {
                Exaone4
            } else {
                Exaone3
            }
        } else if has("rwkv-world") || has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}") {
            RwkvWorld
        } else if has("<|start_of_role|>") {
            if has("<tool_call>") || has("<tools>") {
                if has("g4_default_system_message") {
                    Granite40
                } else {
                    Granite41
                }
            } else {
                Granite3
            }
        } else if has(
            "message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]",
        ) {
            GigaChat
        } else if has("<|role_start|>") {
            Megrez
        } else if has(" Ассистент:") {
            Yandex
        } else if has("<role>ASSISTANT</role>") && has("'HUMAN'") {
            Bailing
        } else if has("<role>ASSISTANT</role>") && has("\"HUMAN\"") && has("<think>") {
            BailingThink
        } else if has("<role>ASSISTANT</role>") && has("<role>HUMAN</role>") && has("<|role_end|>") {
            Bailing2
        } else if has("<|header_start|>") && has("<|header_end|>") {
            Llama4
        } else if has("<|endofuserprompt|>") {
            Dots1
        } else if has("<|extra_0|>") && has("<|extra_4|>") {
            HunyuanMoe
        } else if has("<|start|>") && has("<|channel|>") {
            GptOss
        } else if has("<｜hy_Assistant｜>") && has("<｜hy_begin▁of▁sentence｜>") {
            HunyuanVl
        } else if has("<｜hy_Assistant｜>") && has("<｜hy_place▁holder▁no▁3｜>") {
            HunyuanDense
        } else if has("<|im_assistant|>assistant<|im_middle|>") {
            KimiK2
        } else if has("<seed:bos>") {
            SeedOss
        } else if has("'Assistant: '  + message['content'] + '<|separator|>") {
            Grok2
        } else if has("[unused9]系统：[unused10]") {
            PanguEmbed
        } else if has("<|begin|>") && has("<|end|>") && has("<|content|>") {
            SolarOpen
        } else {
            return None;
        };
        Some(b)
    }

    /// Renders `chat` in this format; `add_ass` appends the assistant header for generation.
    pub(crate) fn render(self, chat: &[ChatMessage], add_ass: bool) -> String {
        let mut s = String::new();
        match self {
            ChatMl => {
                for m in chat {
                    push(
                        &mut s,
                        &["<|im_start|>", &m.role, "\n", &m.content, "<|im_end|>\n"],
                    );
                }
                if add_ass {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            MistralV7 | MistralV7Tekken => {
                let sp = if self == MistralV7 { " " } else { "" };
                for m in chat {
                    match m.role.as_str() {
                        "system" => push(
                            &mut s,
                            &["[SYSTEM_PROMPT]", sp, &m.content, "[/SYSTEM_PROMPT]"],
                        ),
                        "user" => push(&mut s, &["[INST]", sp, &m.content, "[/INST]"]),
                        _ => push(&mut s, &[sp, &m.content, "</s>"]),
                    }
                }
            }
            MistralV1 | MistralV3 | MistralV3Tekken => {
                let lead = if self == MistralV1 { " " } else { "" };
                let trail = if self == MistralV3Tekken { "" } else { " " };
                let trim_assistant = self == MistralV3;
                let mut inside_turn = false;
                for m in chat {
                    if !inside_turn {
                        push(&mut s, &[lead, "[INST]", trail]);
                        inside_turn = true;
                    }
                    match m.role.as_str() {
                        "system" => push(&mut s, &[&m.content, "\n\n"]),
                        "user" => push(&mut s, &[&m.content, lead, "[/INST]"]),
                        _ => {
                            let c = if trim_assistant {
                                trim(&m.content)
                            } else {
                                &m.content
                            };
                            push(&mut s, &[trail, c, "</s>"]);
                            inside_turn = false;
                        }
                    }
                }
            }
            Llama2 | Llama2Sys | Llama2SysBos | Llama2SysStrip => {
                let system_supported = self != Llama2;
                let bos_in_history = self == Llama2SysBos;
                let strip = self == Llama2SysStrip;
                // The first turn's BOS comes from the tokenizer, so the prompt starts inside it.
                let mut inside_turn = true;
                s.push_str("[INST] ");
                for m in chat {
                    let content = if strip { trim(&m.content) } else { &m.content };
                    if !inside_turn {
                        inside_turn = true;
                        s.push_str(if bos_in_history {
                            "<s>[INST] "
                        } else {
                            "[INST] "
                        });
                    }
                    match m.role.as_str() {
                        "system" if system_supported => {
                            push(&mut s, &["<<SYS>>\n", content, "\n<</SYS>>\n\n"])
                        }
                        "system" => push(&mut s, &[content, "\n"]),
                        "user" => push(&mut s, &[content, " [/INST]"]),
                        _ => {
                            push(&mut s, &[content, "</s>"]);
                            inside_turn = false;
                        }
                    }
                }
            }
            Phi3 => {
                for m in chat {
                    push(&mut s, &["<|", &m.role, "|>\n", &m.content, "<|end|>\n"]);
                }
                if add_ass {
                    s.push_str("<|assistant|>\n");
                }
            }
            Phi4 => {
                for m in chat {
                    push(
                        &mut s,
                        &[
                            "<|im_start|>",
                            &m.role,
                            "<|im_sep|>",
                            &m.content,
                            "<|im_end|>",
                        ],
                    );
                }
                if add_ass {
                    s.push_str("<|im_start|>assistant<|im_sep|>");
                }
            }
            Falcon3 => {
                for m in chat {
                    push(&mut s, &["<|", &m.role, "|>\n", &m.content, "\n"]);
                }
                if add_ass {
                    s.push_str("<|assistant|>\n");
                }
            }
            Zephyr => {
                for m in chat {
                    push(
                        &mut s,
                        &["<|", &m.role, "|>\n", &m.content, "<|endoftext|>\n"],
                    );
                }
                if add_ass {
                    s.push_str("<|assistant|>\n");
                }
            }
            Monarch => {
                for (i, m) in chat.iter().enumerate() {
                    // The first message's BOS comes from the tokenizer.
                    let bos = if i == 0 { "" } else { "<s>" };
                    push(&mut s, &[bos, &m.role, "\n", &m.content, "</s>\n"]);
                }
                if add_ass {
                    s.push_str("<s>assistant\n");
                }
            }
            Gemma => {
                // Gemma has no system role: the (trimmed) system text is prepended to the next user
                // turn.
                let mut system = String::new();
                for m in chat {
                    if m.role == "system" {
                        system.push_str(trim(&m.content));
                        continue;
                    }
                    let role = if m.role == "assistant" {
                        "model"
                    } else {
                        m.role.as_str()
                    };
                    push(&mut s, &["<start_of_turn>", role, "\n"]);
                    if !system.is_empty() && role != "model" {
                        push(&mut s, &[&system, "\n\n"]);
                        system.clear();
                    }
                    push(&mut s, &[trim(&m.content), "<end_of_turn>\n"]);
                }
                if add_ass {
                    s.push_str("<start_of_turn>model\n");
                }
            }
            Orion => {
                let mut system = String::new();
                for m in chat {
                    match m.role.as_str() {
                        "system" => system.push_str(&m.content),
                        "user" => {
                            s.push_str("Human: ");
                            if !system.is_empty() {
                                push(&mut s, &[&system, "\n\n"]);
                                system.clear();
                            }
                            push(&mut s, &[&m.content, "\n\nAssistant: </s>"]);
                        }
                        _ => push(&mut s, &[&m.content, "</s>"]),
                    }
                }
            }
            OpenChat => {
                for m in chat {
                    if m.role == "system" {
                        push(&mut s, &[&m.content, "<|end_of_turn|>"]);
                    } else {
                        push(
                            &mut s,
                            &[
                                "GPT4 Correct ",
                                &capitalize_first_byte(&m.role),
                                ": ",
                                &m.content,
                                "<|end_of_turn|>",
                            ],
                        );
                    }
                }
                if add_ass {
                    s.push_str("GPT4 Correct Assistant:");
                }
            }
            Vicuna | VicunaOrca => {
                for m in chat {
                    match m.role.as_str() {
                        "system" if self == VicunaOrca => {
                            push(&mut s, &["SYSTEM: ", &m.content, "\n"])
                        }
                        "system" => push(&mut s, &[&m.content, "\n\n"]),
                        "user" => push(&mut s, &["USER: ", &m.content, "\n"]),
                        "assistant" => push(&mut s, &["ASSISTANT: ", &m.content, "</s>\n"]),
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str("ASSISTANT:");
                }
            }
            Deepseek => {
                for m in chat {
                    match m.role.as_str() {
                        "system" => s.push_str(&m.content),
                        "user" => push(&mut s, &["### Instruction:\n", &m.content, "\n"]),
                        "assistant" => {
                            push(&mut s, &["### Response:\n", &m.content, "\n<|EOT|>\n"])
                        }
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str("### Response:\n");
                }
            }
            CommandR => {
                for m in chat {
                    let tag = match m.role.as_str() {
                        "system" => "<|SYSTEM_TOKEN|>",
                        "user" => "<|USER_TOKEN|>",
                        "assistant" => "<|CHATBOT_TOKEN|>",
                        _ => continue,
                    };
                    push(
                        &mut s,
                        &[
                            "<|START_OF_TURN_TOKEN|>",
                            tag,
                            trim(&m.content),
                            "<|END_OF_TURN_TOKEN|>",
                        ],
                    );
                }
                if add_ass {
                    s.push_str("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>");
                }
            }
            Llama3 => {
                for m in chat {
                    push(
                        &mut s,
                        &[
                            "<|start_header_id|>",
                            &m.role,
                            "<|end_header_id|>\n\n",
                            trim(&m.content),
                            "<|eot_id|>",
                        ],
                    );
                }
                if add_ass {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            ChatGlm3 => {
                s.push_str("[gMASK]sop");
                for m in chat {
                    push(&mut s, &["<|", &m.role, "|>\n ", &m.content]);
                }
                if add_ass {
                    s.push_str("<|assistant|>");
                }
            }
            ChatGlm4 => {
                s.push_str("[gMASK]<sop>");
                for m in chat {
                    push(&mut s, &["<|", &m.role, "|>\n", &m.content]);
                }
                if add_ass {
                    s.push_str("<|assistant|>\n");
                }
            }
            GlmEdge => {
                for m in chat {
                    push(&mut s, &["<|", &m.role, "|>\n", &m.content]);
                }
                if add_ass {
                    s.push_str("<|assistant|>");
                }
            }
            MiniCpm => {
                for m in chat {
                    if m.role == "user" {
                        push(&mut s, &["<用户>", trim(&m.content), "<AI>"]);
                    } else {
                        s.push_str(trim(&m.content));
                    }
                }
            }
            Deepseek2 => {
                for m in chat {
                    match m.role.as_str() {
                        "system" => push(&mut s, &[&m.content, "\n\n"]),
                        "user" => push(&mut s, &["User: ", &m.content, "\n\n"]),
                        "assistant" => push(
                            &mut s,
                            &["Assistant: ", &m.content, "<｜end▁of▁sentence｜>"],
                        ),
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str("Assistant:");
                }
            }
            Deepseek3 => {
                for m in chat {
                    match m.role.as_str() {
                        "system" => push(&mut s, &[&m.content, "\n\n"]),
                        "user" => push(&mut s, &["<｜User｜>", &m.content]),
                        "assistant" => push(
                            &mut s,
                            &["<｜Assistant｜>", &m.content, "<｜end▁of▁sentence｜>"],
                        ),
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str("<｜Assistant｜>");
                }
            }
            DeepseekOcr => {
                for m in chat {
                    s.push_str(&m.content);
                }
            }
            Exaone3 | Exaone4 => {
                for m in chat {
                    let c = trim(&m.content);
                    match m.role.as_str() {
                        "system" => push(&mut s, &["[|system|]", c, "[|endofturn|]\n"]),
                        "user" => push(&mut s, &["[|user|]", c, "\n"]),
                        "assistant" => push(&mut s, &["[|assistant|]", c, "[|endofturn|]\n"]),
                        "tool" if self == Exaone4 => {
                            push(&mut s, &["[|tool|]", c, "[|endofturn|]\n"])
                        }
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str("[|assistant|]");
                }
            }
            ExaoneMoe => {
                for m in chat {
                    if matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                        push(
                            &mut s,
                            &["<|", &m.role, "|>\n", trim(&m.content), "<|endofturn|>\n"],
                        );
                    }
                }
                if add_ass {
                    s.push_str("<|assistant|>\n");
                }
            }
            RwkvWorld => {
                for (i, m) in chat.iter().enumerate() {
                    let c = trim(&m.content);
                    match m.role.as_str() {
                        "system" => push(&mut s, &["System: ", c, "\n\n"]),
                        "user" => {
                            push(&mut s, &["User: ", c, "\n\n"]);
                            if i + 1 == chat.len() {
                                s.push_str("Assistant:");
                            }
                        }
                        "assistant" => push(&mut s, &["Assistant: ", c, "\n\n"]),
                        _ => {}
                    }
                }
            }
            Granite3 => {
                for m in chat {
                    push(&mut s, &["<|start_of_role|>", &m.role, "<|end_of_role|>"]);
                    if m.role == "assistant_tool_call" {
                        s.push_str("<|tool_call|>");
                    }
                    push(&mut s, &[&m.content, "<|end_of_text|>\n"]);
                }
                if add_ass {
                    s.push_str("<|start_of_role|>assistant<|end_of_role|>");
                }
            }
            Granite40 | Granite41 => {
                for m in chat {
                    if m.role == "assistant_tool_call" {
                        s.push_str("<|start_of_role|>assistant<|end_of_role|><|tool_call|>");
                    } else {
                        push(&mut s, &["<|start_of_role|>", &m.role, "<|end_of_role|>"]);
                    }
                    push(&mut s, &[&m.content, "<|end_of_text|>\n"]);
                }
                if add_ass {
                    s.push_str("<|start_of_role|>assistant<|end_of_role|>");
                }
            }
            GigaChat => {
                let has_system = chat.first().is_some_and(|m| m.role == "system");
                if has_system {
                    push(&mut s, &["<s>", &chat[0].content, "<|message_sep|>"]);
                } else {
                    s.push_str("<s>");
                }
                for m in chat.iter().skip(usize::from(has_system)) {
                    match m.role.as_str() {
                        "user" => push(
                            &mut s,
                            &[
                                "user<|role_sep|>",
                                &m.content,
                                "<|message_sep|>available functions<|role_sep|>[]<|message_sep|>",
                            ],
                        ),
                        "assistant" => push(
                            &mut s,
                            &["assistant<|role_sep|>", &m.content, "<|message_sep|>"],
                        ),
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str("assistant<|role_sep|>");
                }
            }
            Megrez => {
                for m in chat {
                    push(
                        &mut s,
                        &[
                            "<|role_start|>",
                            &m.role,
                            "<|role_end|>",
                            &m.content,
                            "<|turn_end|>",
                        ],
                    );
                }
                if add_ass {
                    s.push_str("<|role_start|>assistant<|role_end|>");
                }
            }
            Yandex => {
                for m in chat {
                    match m.role.as_str() {
                        "user" => push(&mut s, &[" Пользователь: ", &m.content, "\n\n"]),
                        "assistant" => push(&mut s, &[" Ассистент: ", &m.content, "\n\n"]),
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str(" Ассистент:[SEP]");
                }
            }
            Bailing | BailingThink => {
                for m in chat {
                    push(
                        &mut s,
                        &["<role>", &bailing_role(&m.role), "</role>", &m.content],
                    );
                }
                if add_ass {
                    s.push_str("<role>ASSISTANT</role>");
                    if self == BailingThink {
                        s.push_str("<think>");
                    }
                }
            }
            Bailing2 => {
                if chat.first().is_none_or(|m| m.role != "system") {
                    s.push_str("<role>SYSTEM</role>detailed thinking off<|role_end|>");
                }
                for m in chat {
                    push(
                        &mut s,
                        &[
                            "<role>",
                            &bailing_role(&m.role),
                            "</role>",
                            &m.content,
                            "<|role_end|>",
                        ],
                    );
                }
                if add_ass {
                    s.push_str("<role>ASSISTANT</role>");
                }
            }
            Llama4 => {
                for m in chat {
                    push(
                        &mut s,
                        &[
                            "<|header_start|>",
                            &m.role,
                            "<|header_end|>\n\n",
                            trim(&m.content),
                            "<|eot|>",
                        ],
                    );
                }
                if add_ass {
                    s.push_str("<|header_start|>assistant<|header_end|>\n\n");
                }
            }
            SmolVlm => {
                // <|im_start|> is this model's BOS, emitted once; the rest is not ChatML.
                s.push_str("<|im_start|>");
                for m in chat {
                    match m.role.as_str() {
                        "system" => push(&mut s, &[&m.content, "\n\n"]),
                        "user" => push(&mut s, &["User: ", &m.content, "<end_of_utterance>\n"]),
                        _ => push(&mut s, &["Assistant: ", &m.content, "<end_of_utterance>\n"]),
                    }
                }
                if add_ass {
                    s.push_str("Assistant:");
                }
            }
            Dots1 => {
                for m in chat {
                    match m.role.as_str() {
                        "system" => push(&mut s, &["<|system|>", &m.content, "<|endofsystem|>"]),
                        "user" => push(
                            &mut s,
                            &["<|userprompt|>", &m.content, "<|endofuserprompt|>"],
                        ),
                        _ => push(&mut s, &["<|response|>", &m.content, "<|endofresponse|>"]),
                    }
                }
                if add_ass {
                    s.push_str("<|response|>");
                }
            }
            HunyuanMoe => {
                for m in chat {
                    match m.role.as_str() {
                        "system" => push(&mut s, &["<|startoftext|>", &m.content, "<|extra_4|>"]),
                        "assistant" => push(&mut s, &[&m.content, "<|eos|>"]),
                        _ => push(&mut s, &["<|startoftext|>", &m.content, "<|extra_0|>"]),
                    }
                }
            }
            GptOss => {
                for m in chat {
                    let end = if m.role == "assistant" {
                        "<|return|>"
                    } else {
                        "<|end|>"
                    };
                    push(
                        &mut s,
                        &["<|start|>", &m.role, "<|message|>", &m.content, end],
                    );
                }
                if add_ass {
                    s.push_str("<|start|>assistant");
                }
            }
            HunyuanDense => {
                for (i, m) in chat.iter().enumerate() {
                    if i == 0 && m.role == "system" {
                        push(&mut s, &[&m.content, "<｜hy_place▁holder▁no▁3｜>"]);
                    }
                    match m.role.as_str() {
                        "assistant" => push(
                            &mut s,
                            &[
                                "<｜hy_Assistant｜>",
                                &m.content,
                                "<｜hy_place▁holder▁no▁2｜>",
                            ],
                        ),
                        "user" => {
                            push(&mut s, &["<｜hy_User｜>", &m.content, "<｜hy_Assistant｜>"])
                        }
                        _ => {}
                    }
                }
            }
            HunyuanVl => {
                s.push_str("<｜hy_begin▁of▁sentence｜>");
                for (i, m) in chat.iter().enumerate() {
                    if i == 0 && m.role == "system" {
                        push(&mut s, &[&m.content, "<｜hy_place▁holder▁no▁3｜>"]);
                        continue;
                    }
                    match m.role.as_str() {
                        "user" => push(&mut s, &[&m.content, "<｜hy_User｜>"]),
                        "assistant" => push(&mut s, &[&m.content, "<｜hy_Assistant｜>"]),
                        _ => {}
                    }
                }
            }
            KimiK2 => {
                for m in chat {
                    let header = match m.role.as_str() {
                        "system" => "<|im_system|>system<|im_middle|>",
                        "user" => "<|im_user|>user<|im_middle|>",
                        "assistant" => "<|im_assistant|>assistant<|im_middle|>",
                        "tool" => "<|im_system|>tool<|im_middle|>",
                        _ => "",
                    };
                    push(&mut s, &[header, &m.content, "<|im_end|>"]);
                }
                if add_ass {
                    s.push_str("<|im_assistant|>assistant<|im_middle|>");
                }
            }
            SeedOss => {
                for m in chat {
                    let c = if m.role == "assistant" {
                        trim(&m.content)
                    } else {
                        &m.content
                    };
                    push(&mut s, &["<seed:bos>", &m.role, "\n", c, "<seed:eos>"]);
                }
                if add_ass {
                    s.push_str("<seed:bos>assistant\n");
                }
            }
            Grok2 => {
                for m in chat {
                    match m.role.as_str() {
                        "system" => {
                            push(&mut s, &["System: ", trim(&m.content), "<|separator|>\n\n"])
                        }
                        "user" => push(&mut s, &["Human: ", trim(&m.content), "<|separator|>\n\n"]),
                        "assistant" => {
                            push(&mut s, &["Assistant: ", &m.content, "<|separator|>\n\n"])
                        }
                        _ => {}
                    }
                }
                if add_ass {
                    s.push_str("Assistant:");
                }
            }
            PanguEmbed => {
                for (i, m) in chat.iter().enumerate() {
                    if i == 0 && m.role != "system" {
                        s.push_str("[unused9]系统：[unused10]");
                    }
                    let label = match m.role.as_str() {
                        "system" => "系统：",
                        "user" => "用户：",
                        "assistant" => "助手：",
                        "tool" => "工具：",
                        "function" => "方法：",
                        _ => continue,
                    };
                    push(&mut s, &["[unused9]", label, &m.content, "[unused10]"]);
                }
                if add_ass {
                    s.push_str("[unused9]助手：");
                }
            }
            SolarOpen => {
                for m in chat {
                    push(
                        &mut s,
                        &["<|begin|>", &m.role, "<|content|>", &m.content, "<|end|>"],
                    );
                }
                if add_ass {
                    s.push_str("<|begin|>assistant");
                }
            }
        }
        s
    }
}

fn push(s: &mut String, parts: &[&str]) {
    for p in parts {
        s.push_str(p);
    }
}

/// Trims the bytes C's `isspace` accepts (space, \t, \n, \v, \f, \r) and nothing else, so that
/// non-ASCII whitespace survives exactly as it does in llama.cpp.
pub(crate) fn trim(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r'))
}

/// ASCII-uppercases the first byte only, as llama.cpp's `toupper(role[0])` does.
fn capitalize_first_byte(role: &str) -> String {
    let mut r = role.to_string();
    if let Some(first) = r.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    r
}

/// "user" becomes HUMAN, every other role is ASCII-uppercased.
fn bailing_role(role: &str) -> String {
    if role == "user" {
        "HUMAN".to_string()
    } else {
        role.to_ascii_uppercase()
    }
}
