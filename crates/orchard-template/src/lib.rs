//! Chat templates: Jinja templates from the GGUF rendered with minijinja, and built-in fallbacks
//!
//! A [`ChatTemplate`] is either a compiled Jinja template (the GGUF's `tokenizer.chat_template`, run as
//! llama.cpp's Jinja path runs it) or one of llama.cpp's hard-coded formats from src/llama-chat.cpp
//! (`ChatTemplate::builtin("gemma")`), which produce byte-identical output to llama.cpp's non-Jinja
//! path. Rendering returns the prompt text only: stripping a leading BOS that the tokenizer will add
//! again, and keeping special-token text inside user content from being parsed as special tokens, are
//! the caller's job, as in llama.cpp.

mod builtin;
mod jinja;
mod strftime;

use builtin::Builtin;
use jinja::JinjaTemplate;

/// One chat message. `extra` carries any further fields (tool calls, names, ...) that templates may
/// read as `message.<field>`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// OpenAI sends `"content": null` for pure tool-call messages; that reads as empty text.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::Deserialize;
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("chat template does not compile: {message}")]
    Syntax {
        message: String,
        line: Option<usize>,
    },
    #[error("chat template raised an exception: {message}")]
    Raised { message: String },
    #[error("chat template failed to render: {message}")]
    Render {
        message: String,
        line: Option<usize>,
    },
}

enum Kind {
    Builtin(Builtin),
    Jinja(Box<JinjaTemplate>),
}

/// A chat template ready to render conversations.
pub struct ChatTemplate {
    kind: Kind,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template once. `bos_token`/`eos_token` are the vocabulary's token texts,
    /// exposed to the template under those names.
    pub fn from_jinja(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        Ok(ChatTemplate {
            kind: Kind::Jinja(Box::new(JinjaTemplate::compile(
                source, bos_token, eos_token,
            )?)),
        })
    }

    /// One of llama.cpp's named formats (`chatml`, `gemma`, `llama3`, `llama2`, `mistral-v7`, `phi3`,
    /// `zephyr`, `deepseek`, ...; see [`ChatTemplate::builtin_names`]).
    pub fn builtin(name: &str) -> Option<ChatTemplate> {
        Builtin::from_name(name).map(|b| ChatTemplate {
            kind: Kind::Builtin(b),
        })
    }

    /// Every name [`ChatTemplate::builtin`] accepts.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        builtin::ALL.iter().map(|b| b.name())
    }

    /// Which built-in format a Jinja source implements, judged by its markers as llama.cpp's
    /// `llm_chat_detect_template` does. A source that is itself a built-in name maps to that name.
    pub fn detect(source: &str) -> Option<&'static str> {
        Builtin::detect(source).map(|b| b.name())
    }

    /// Renders the conversation; `add_generation_prompt` appends the header that starts the
    /// assistant's reply.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Like [`ChatTemplate::render`], with extra template variables (`tools`, `enable_thinking`,
    /// `chat_template_kwargs`, ...) that override the defaults. Built-in formats ignore them.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        match &self.kind {
            Kind::Builtin(b) => Ok(b.render(messages, add_generation_prompt)),
            Kind::Jinja(j) => j.render(messages, add_generation_prompt, extra),
        }
    }

    /// The built-in format's name, or `"jinja"` for a compiled Jinja template.
    pub fn name(&self) -> &str {
        match &self.kind {
            Kind::Builtin(b) => b.name(),
            Kind::Jinja(_) => "jinja",
        }
    }

    /// The Jinja source, for a Jinja template.
    pub fn source(&self) -> Option<&str> {
        match &self.kind {
            Kind::Builtin(_) => None,
            Kind::Jinja(j) => Some(j.source()),
        }
    }

    /// The BOS text given to [`ChatTemplate::from_jinja`] (empty for built-ins).
    pub fn bos_token(&self) -> &str {
        match &self.kind {
            Kind::Builtin(_) => "",
            Kind::Jinja(j) => j.bos(),
        }
    }

    /// The EOS text given to [`ChatTemplate::from_jinja`] (empty for built-ins).
    pub fn eos_token(&self) -> &str {
        match &self.kind {
            Kind::Builtin(_) => "",
            Kind::Jinja(j) => j.eos(),
        }
    }
}

/// The built-in format to use when a GGUF carries no chat template. llama.cpp itself falls back to
/// ChatML for every architecture; Gemma models are the exception here because they were never trained
/// on ChatML and their GGUFs (Gemma 3 270M among them) often ship without a template.
pub fn default_for_architecture(arch: &str) -> &'static str {
    match arch {
        "gemma" | "gemma2" | "gemma3" | "gemma3n" | "gemma-embedding" => "gemma",
        _ => "chatml",
    }
}
