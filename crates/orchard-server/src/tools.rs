//! OpenAI tool calling for chat completions: checks `tools` / `tool_choice`, decides how the
//! model is told about the tools and how it answers, constrains the answer when a call is
//! required, and turns the generated text into `message.tool_calls` (whole, or as stream deltas).
//!
//! Two formats, after llama.cpp's `common/chat.cpp`:
//! - **Hermes** (the template mentions `<tool_call>`: Qwen 2.5, Hermes 2/3, ...): the GGUF's
//!   Jinja template renders `tools` itself; the model writes
//!   `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks, any text around them
//!   is content. `tool_choice: required` (or a named function) constrains the output to one
//!   such block; `auto` leaves the model free and parses what it wrote.
//! - **Generic** (templates that know nothing of tools, e.g. SmolLM2): llama.cpp's generic
//!   format. A system message lists the tools and asks for JSON; the output is always
//!   constrained to `{"tool_call": {"name", "arguments"}}` (with `parallel_tool_calls`,
//!   `{"tool_calls": [...]}`) or, unless a call is required, `{"response": "..."}`.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::params::{get, schema_from_json, type_name, Obj};
use orchard_grammar::{CharMatcher, JsonValidator, Schema};

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hermes,
    Generic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    Required,
    /// This function must be called.
    Named(String),
}

#[derive(Debug, Clone)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// A request's tools, when tool calling is on (`tool_choice` other than `none`).
#[derive(Debug, Clone)]
pub struct Tools {
    pub format: Format,
    pub choice: ToolChoice,
    pub parallel: bool,
    pub defs: Vec<ToolDef>,
}

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// Generated text split into content and calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<Call>,
}

/// The format a chat template implies.
pub fn format_of(template_source: Option<&str>) -> Format {
    match template_source {
        Some(s) if s.contains(CALL_OPEN) => Format::Hermes,
        _ => Format::Generic,
    }
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no tool may be called.
pub fn parse(o: &Obj, template_source: Option<&str>) -> Result<Option<Tools>, ApiError> {
    let tools = match get(o, "tools") {
        None => return check_choice_without_tools(o),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::param(
                "tools",
                format!("`tools` must be an array, got {}", type_name(v)),
            )
            .with_code("invalid_type"))
        }
    };
    let mut defs = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        let bad = |m: &str| ApiError::param(&field, format!("{field}: {m}"));
        let t = t.as_object().ok_or_else(|| bad("must be an object"))?;
        match t.get("type") {
            Some(Value::String(s)) if s == "function" => {}
            _ => return Err(bad("`type` must be \"function\"")),
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("`function` must be an object"))?;
        let name = match f.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(bad("`function.name` must be a non-empty string")),
        };
        if defs.iter().any(|d: &ToolDef| d.name == name) {
            return Err(bad(&format!("function `{name}` is defined twice")));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err(bad("`function.description` must be a string")),
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => {
                // Refuse now what could not be used to constrain the arguments later.
                schema_from_json(p, &format!("{field}.function.parameters"), 0)?;
                p.clone()
            }
            Some(_) => return Err(bad("`function.parameters` must be an object")),
        };
        defs.push(ToolDef {
            name,
            description,
            parameters,
        });
    }
    let choice = match get(o, "tool_choice") {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            "none" => return Ok(None),
            other => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("unknown tool_choice `{other}` (none, auto, required or a function)"),
                ))
            }
        },
        Some(Value::Object(c)) => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::param(
                        "tool_choice",
                        "`tool_choice` must name a function: {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !defs.iter().any(|d| d.name == name) {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not among `tools`"),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(v) => {
            return Err(ApiError::param(
                "tool_choice",
                format!(
                    "`tool_choice` must be a string or an object, got {}",
                    type_name(v)
                ),
            )
            .with_code("invalid_type"))
        }
    };
    if defs.is_empty() {
        if choice != ToolChoice::Auto {
            return Err(ApiError::param(
                "tool_choice",
                "`tool_choice` requires a call but `tools` is empty",
            ));
        }
        return Ok(None);
    }
    let parallel = match get(o, "parallel_tool_calls") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::param(
                "parallel_tool_calls",
                format!(
                    "`parallel_tool_calls` must be a boolean, got {}",
                    type_name(v)
                ),
            )
            .with_code("invalid_type"))
        }
    };
    if get(o, "grammar").is_some()
        || get(o, "response_format").is_some_and(|r| r.get("type") != Some(&json!("text")))
    {
        return Err(ApiError::invalid(
            "tools cannot be combined with `grammar` or a JSON `response_format`",
        ));
    }
    Ok(Some(Tools {
        format: format_of(template_source),
        choice,
        parallel,
        defs,
    }))
}

fn check_choice_without_tools(o: &Obj) -> Result<Option<Tools>, ApiError> {
    match get(o, "tool_choice") {
        None => Ok(None),
        Some(Value::String(s)) if s == "none" || s == "auto" => Ok(None),
        Some(_) => Err(ApiError::param(
            "tool_choice",
            "`tool_choice` requires a call but no `tools` are given",
        )),
    }
}

impl Tools {
    /// The functions a call may name (all, or the one `tool_choice` names).
    fn callable(&self) -> impl Iterator<Item = &ToolDef> {
        self.defs.iter().filter(move |d| match &self.choice {
            ToolChoice::Named(n) => &d.name == n,
            _ => true,
        })
    }

    /// JSON schema of one call: `{"name": <one of the functions>, "arguments": <its parameters>}`.
    pub fn call_schema(&self) -> Value {
        let alts: Vec<Value> = self
            .callable()
            .map(|d| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": d.name}, "arguments": d.parameters},
                    "required": ["name", "arguments"],
                })
            })
            .collect();
        if alts.len() == 1 {
            alts.into_iter().next().unwrap_or(Value::Null)
        } else {
            json!({ "anyOf": alts })
        }
    }

    fn must_call(&self) -> bool {
        self.choice != ToolChoice::Auto
    }

    /// The JSON schema the whole output must follow (generic format), or that each call block
    /// must follow (Hermes format, only when a call is required).
    pub fn output_schema(&self) -> Option<Value> {
        match self.format {
            Format::Hermes => self.must_call().then(|| self.call_schema()),
            Format::Generic => {
                let (key, calls) = if self.parallel {
                    (
                        "tool_calls",
                        json!({"type": "array", "items": self.call_schema(), "minItems": 1}),
                    )
                } else {
                    ("tool_call", self.call_schema())
                };
                let call = json!({
                    "type": "object", "properties": { key: calls }, "required": [key],
                });
                Some(if self.must_call() {
                    call
                } else {
                    json!({"anyOf": [call, {
                        "type": "object",
                        "properties": {"response": {"type": "string"}},
                        "required": ["response"],
                    }]})
                })
            }
        }
    }

    /// The constraint matcher for the output, if the output is constrained.
    pub fn matcher(&self) -> Result<Option<ToolMatcher>, ApiError> {
        let Some(schema) = self.output_schema() else {
            return Ok(None);
        };
        let schema: Schema = schema_from_json(&schema, "tools", 0)?;
        let v = JsonValidator::new(&schema).map_err(|e| {
            ApiError::param("tools", format!("cannot constrain tool calls: {e}"))
                .with_code("invalid_schema")
        })?;
        Ok(Some(match self.format {
            Format::Generic => ToolMatcher::framed("", v, ""),
            Format::Hermes => ToolMatcher::framed("<tool_call>\n", v, "\n</tool_call>"),
        }))
    }

    /// For the generic format: the system text that describes the tools and the answer format
    /// (llama.cpp's generic format and minja's tool polyfill).
    pub fn system_prompt(&self) -> Option<String> {
        if self.format != Format::Generic {
            return None;
        }
        let list: Vec<Value> = self
            .defs
            .iter()
            .map(|d| {
                let mut f = Map::new();
                f.insert("name".into(), Value::String(d.name.clone()));
                if let Some(desc) = &d.description {
                    f.insert("description".into(), Value::String(desc.clone()));
                }
                f.insert("parameters".into(), d.parameters.clone());
                json!({"type": "function", "function": f})
            })
            .collect();
        let key = if self.parallel {
            "tool_calls"
        } else {
            "tool_call"
        };
        let how = if self.must_call() {
            format!("Respond in JSON format with `{key}` (a request to call tools).")
        } else {
            format!(
                "Respond in JSON format, either with `{key}` (a request to call tools) or with \
                 `response` reply to the user's request."
            )
        };
        Some(format!(
            "You can call any of the following tools to satisfy the user's requests: {}\n\n{how}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        ))
    }
}

/// Generic format: an assistant message's `tool_calls` as the JSON the model is asked to write,
/// so that a conversation's earlier calls read as the model's own answers.
pub fn generic_history_content(tool_calls: &Value, parallel: bool) -> Option<String> {
    let calls: Vec<Value> = tool_calls
        .as_array()?
        .iter()
        .filter_map(|c| {
            let f = c.get("function")?;
            let args = match f.get("arguments") {
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
                }
                Some(v) => v.clone(),
                None => json!({}),
            };
            Some(json!({"name": f.get("name")?, "arguments": args}))
        })
        .collect();
    let v = if parallel || calls.len() > 1 {
        json!({ "tool_calls": calls })
    } else {
        json!({ "tool_call": calls.into_iter().next()? })
    };
    serde_json::to_string(&v).ok()
}

/// A call object `{"name": ..., "arguments": ...}` (arguments as an object or a JSON string).
fn call_of(v: &Value) -> Option<Call> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(a) => serde_json::to_string(a).ok()?,
        None => "{}".to_string(),
    };
    Some(Call { name, arguments })
}

/// Splits a whole generated text into content and calls.
pub fn parse_output(format: Format, text: &str) -> Parsed {
    match format {
        Format::Hermes => {
            let mut s = HermesSplitter::default();
            let mut out = Parsed::default();
            for d in s.push(text).into_iter().chain(s.finish()) {
                match d {
                    Delta::Content(c) => out.content.push_str(&c),
                    Delta::Call(c) => out.calls.push(c),
                }
            }
            out.content = out.content.trim().to_string();
            out
        }
        Format::Generic => parse_generic(text),
    }
}

fn parse_generic(text: &str) -> Parsed {
    let Ok(v) = serde_json::from_str::<Value>(text.trim()) else {
        return Parsed {
            content: text.to_string(),
            calls: Vec::new(),
        };
    };
    if let Some(c) = v.get("tool_call").and_then(call_of) {
        return Parsed {
            content: String::new(),
            calls: vec![c],
        };
    }
    if let Some(a) = v.get("tool_calls").and_then(Value::as_array) {
        let calls: Vec<Call> = a.iter().filter_map(call_of).collect();
        if !calls.is_empty() {
            return Parsed {
                content: String::new(),
                calls,
            };
        }
    }
    if let Some(Value::String(r)) = v.get("response") {
        return Parsed {
            content: r.clone(),
            calls: Vec::new(),
        };
    }
    Parsed {
        content: text.to_string(),
        calls: Vec::new(),
    }
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Content(String),
    Call(Call),
}

/// Streams an answer: content passes through as it comes (held back only while it could be the
/// start of a call), each call is emitted whole once it is complete.
#[derive(Debug)]
pub enum Splitter {
    Hermes(HermesSplitter),
    /// The generic format's answer is one JSON text: parsed at the end.
    Generic(String),
}

impl Splitter {
    pub fn new(format: Format) -> Splitter {
        match format {
            Format::Hermes => Splitter::Hermes(HermesSplitter::default()),
            Format::Generic => Splitter::Generic(String::new()),
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        match self {
            Splitter::Hermes(h) => h.push(text),
            Splitter::Generic(buf) => {
                buf.push_str(text);
                Vec::new()
            }
        }
    }

    pub fn finish(&mut self) -> Vec<Delta> {
        match self {
            Splitter::Hermes(h) => h.finish(),
            Splitter::Generic(buf) => {
                let p = parse_generic(&std::mem::take(buf));
                let mut out = Vec::new();
                if !p.content.is_empty() {
                    out.push(Delta::Content(p.content));
                }
                out.extend(p.calls.into_iter().map(Delta::Call));
                out
            }
        }
    }
}

/// `<tool_call>{json}</tool_call>` blocks inside free text.
#[derive(Debug, Default)]
pub struct HermesSplitter {
    /// Text not yet emitted: a possible start of `<tool_call>`, or a call's body.
    pending: String,
    in_call: bool,
}

impl HermesSplitter {
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.pending.find(CALL_CLOSE) else {
                    break;
                };
                let body = self.pending[..end].to_string();
                self.pending.drain(..end + CALL_CLOSE.len());
                self.in_call = false;
                match serde_json::from_str::<Value>(body.trim())
                    .ok()
                    .as_ref()
                    .and_then(call_of)
                {
                    Some(c) => out.push(Delta::Call(c)),
                    // Not a call after all: show it as the model wrote it.
                    None => out.push(Delta::Content(format!("{CALL_OPEN}{body}{CALL_CLOSE}"))),
                }
                continue;
            }
            if let Some(start) = self.pending.find(CALL_OPEN) {
                let before = self.pending[..start].to_string();
                if !before.is_empty() {
                    out.push(Delta::Content(before));
                }
                self.pending.drain(..start + CALL_OPEN.len());
                self.in_call = true;
                continue;
            }
            // Keep back the longest tail that could begin `<tool_call>`.
            let keep = (1..CALL_OPEN.len())
                .rev()
                .find(|&k| {
                    self.pending.len() >= k
                        && self.pending.is_char_boundary(self.pending.len() - k)
                        && CALL_OPEN.starts_with(&self.pending[self.pending.len() - k..])
                })
                .unwrap_or(0);
            let cut = self.pending.len() - keep;
            if cut > 0 {
                out.push(Delta::Content(self.pending[..cut].to_string()));
                self.pending.drain(..cut);
            }
            break;
        }
        out
    }

    /// The end of the answer: an unterminated call is accepted if its JSON is complete.
    pub fn finish(&mut self) -> Vec<Delta> {
        let rest = std::mem::take(&mut self.pending);
        if self.in_call {
            self.in_call = false;
            if let Some(c) = serde_json::from_str::<Value>(rest.trim())
                .ok()
                .as_ref()
                .and_then(call_of)
            {
                return vec![Delta::Call(c)];
            }
            return vec![Delta::Content(format!("{CALL_OPEN}{rest}"))];
        }
        if rest.is_empty() {
            Vec::new()
        } else {
            vec![Delta::Content(rest)]
        }
    }
}

/// A JSON validator between a fixed prefix and suffix (`<tool_call>\n` ... `\n</tool_call>`).
#[derive(Debug, Clone)]
pub struct ToolMatcher {
    prefix: &'static str,
    suffix: &'static str,
    /// Characters of the prefix matched; of the suffix once the JSON is done.
    at: usize,
    json: JsonValidator,
    in_suffix: bool,
}

impl ToolMatcher {
    fn framed(prefix: &'static str, json: JsonValidator, suffix: &'static str) -> ToolMatcher {
        ToolMatcher {
            prefix,
            suffix,
            at: 0,
            json,
            in_suffix: false,
        }
    }

    fn in_prefix(&self) -> bool {
        self.at < self.prefix.len() && !self.in_suffix
    }
}

impl CharMatcher for ToolMatcher {
    fn feed_char(&mut self, c: char) -> bool {
        if self.in_prefix() {
            if self.prefix[self.at..].starts_with(c) {
                self.at += c.len_utf8();
                if self.at == self.prefix.len() {
                    self.at = usize::MAX;
                }
                return true;
            }
            return false;
        }
        if !self.in_suffix {
            let mut j = self.json.clone();
            if j.feed_char(c) {
                self.json = j;
                return true;
            }
            // The JSON may end here: the suffix begins.
            if !self.json.is_complete() || self.suffix.is_empty() {
                return false;
            }
            self.in_suffix = true;
            self.at = 0;
            // The validator may have taken the suffix's leading whitespace as its own.
            while self.at < self.suffix.len()
                && !self.suffix[self.at..].starts_with(c)
                && self.suffix[self.at..].starts_with(char::is_whitespace)
            {
                self.at += 1;
            }
        }
        if self.suffix[self.at..].starts_with(c) {
            self.at += c.len_utf8();
            return true;
        }
        false
    }

    fn is_complete(&self) -> bool {
        if self.suffix.is_empty() {
            return !self.in_prefix() && self.json.is_complete();
        }
        self.in_suffix && self.at == self.suffix.len()
    }

    fn is_finished(&self) -> bool {
        if self.suffix.is_empty() {
            return !self.in_prefix() && self.json.is_finished();
        }
        self.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> Call {
        Call {
            name: name.into(),
            arguments: args.into(),
        }
    }

    fn obj(v: Value) -> Obj {
        v.as_object().unwrap().clone()
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}])
    }

    /// (case, format, model output, expected content, expected calls)
    #[test]
    fn parser_battery() {
        let cases: Vec<(&str, Format, &str, &str, Vec<Call>)> = vec![
            ("hermes plain text", Format::Hermes, "Hello there.", "Hello there.", vec![]),
            (
                "hermes one call",
                Format::Hermes,
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
                "",
                vec![call("get_weather", r#"{"city":"Paris"}"#)],
            ),
            (
                "hermes text around a call",
                Format::Hermes,
                "Let me check.\n<tool_call>{\"name\":\"now\",\"arguments\":{}}</tool_call>\nDone.",
                "Let me check.\n\nDone.",
                vec![call("now", "{}")],
            ),
            (
                "hermes two calls",
                Format::Hermes,
                "<tool_call>{\"name\":\"now\",\"arguments\":{}}</tool_call><tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}</tool_call>",
                "",
                vec![call("now", "{}"), call("get_weather", r#"{"city":"Rome"}"#)],
            ),
            (
                "hermes arguments given as a string",
                Format::Hermes,
                "<tool_call>{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}</tool_call>",
                "",
                vec![call("get_weather", r#"{"city":"Oslo"}"#)],
            ),
            (
                "hermes unterminated call with complete json",
                Format::Hermes,
                "<tool_call>\n{\"name\":\"now\",\"arguments\":{}}",
                "",
                vec![call("now", "{}")],
            ),
            (
                "hermes broken json stays content",
                Format::Hermes,
                "<tool_call>{\"name\": now}</tool_call>",
                "<tool_call>{\"name\": now}</tool_call>",
                vec![],
            ),
            (
                "hermes unterminated broken call stays content",
                Format::Hermes,
                "<tool_call>{\"name\":",
                "<tool_call>{\"name\":",
                vec![],
            ),
            ("hermes lone angle bracket", Format::Hermes, "a < b and <tool", "a < b and <tool", vec![]),
            (
                "generic call",
                Format::Generic,
                "{\"tool_call\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}",
                "",
                vec![call("get_weather", r#"{"city":"Paris"}"#)],
            ),
            (
                "generic parallel calls",
                Format::Generic,
                "{\"tool_calls\": [{\"name\": \"now\", \"arguments\": {}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lima\"}}]}",
                "",
                vec![call("now", "{}"), call("get_weather", r#"{"city":"Lima"}"#)],
            ),
            (
                "generic response",
                Format::Generic,
                " {\"response\": \"It is sunny.\"} ",
                "It is sunny.",
                vec![],
            ),
            ("generic not json", Format::Generic, "Sunny.", "Sunny.", vec![]),
            (
                "generic other json",
                Format::Generic,
                "{\"answer\": 1}",
                "{\"answer\": 1}",
                vec![],
            ),
            (
                "generic call without a name",
                Format::Generic,
                "{\"tool_call\": {\"arguments\": {}}}",
                "{\"tool_call\": {\"arguments\": {}}}",
                vec![],
            ),
        ];
        for (case, format, text, content, calls) in cases {
            let got = parse_output(format, text);
            assert_eq!(got.content, content, "{case}: content");
            assert_eq!(got.calls, calls, "{case}: calls");
            // Streaming in pieces of every size gives the same answer.
            for size in 1..=7 {
                let mut sp = Splitter::new(format);
                let mut streamed = Parsed::default();
                let chars: Vec<char> = text.chars().collect();
                let mut deltas = Vec::new();
                for piece in chars.chunks(size) {
                    deltas.extend(sp.push(&piece.iter().collect::<String>()));
                }
                deltas.extend(sp.finish());
                for d in deltas {
                    match d {
                        Delta::Content(c) => streamed.content.push_str(&c),
                        Delta::Call(c) => streamed.calls.push(c),
                    }
                }
                let trimmed = if format == Format::Hermes {
                    streamed.content.trim().to_string()
                } else {
                    streamed.content.clone()
                };
                assert_eq!(
                    trimmed, content,
                    "{case}: streamed content, pieces of {size}"
                );
                assert_eq!(
                    streamed.calls, calls,
                    "{case}: streamed calls, pieces of {size}"
                );
            }
        }
    }

    #[test]
    fn hermes_stream_shows_text_before_a_call_at_once() {
        let mut sp = Splitter::new(Format::Hermes);
        assert_eq!(sp.push("Sure"), vec![Delta::Content("Sure".into())]);
        // "<tool" could start a call: held back.
        assert_eq!(sp.push(", <tool"), vec![Delta::Content(", ".into())]);
        assert_eq!(sp.push("_call>{\"name\":\"now\""), vec![]);
        assert_eq!(
            sp.push(",\"arguments\":{}}</tool_call>"),
            vec![Delta::Call(call("now", "{}"))]
        );
        assert_eq!(sp.finish(), vec![]);
    }

    fn tools_of(v: Value, source: Option<&str>) -> Result<Option<Tools>, ApiError> {
        parse(&obj(v), source)
    }

    #[test]
    fn request_checks() {
        let ok = tools_of(json!({"tools": weather()}), None)
            .unwrap()
            .unwrap();
        assert_eq!(ok.format, Format::Generic);
        assert_eq!(ok.choice, ToolChoice::Auto);
        let h = tools_of(
            json!({"tools": weather(), "tool_choice": "required"}),
            Some("{{ '<tool_call>' }}"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.format, Format::Hermes);
        assert_eq!(h.choice, ToolChoice::Required);
        let named = tools_of(
            json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "now"}}}),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(named.choice, ToolChoice::Named("now".into()));
        assert!(
            tools_of(json!({"tools": weather(), "tool_choice": "none"}), None)
                .unwrap()
                .is_none()
        );
        assert!(tools_of(json!({}), None).unwrap().is_none());
        assert!(tools_of(json!({"tools": []}), None).unwrap().is_none());
        for (case, bad) in [
            ("tools not an array", json!({"tools": {}})),
            ("tool not an object", json!({"tools": [1]})),
            ("wrong type", json!({"tools": [{"type": "retrieval"}]})),
            ("no function", json!({"tools": [{"type": "function"}]})),
            (
                "no name",
                json!({"tools": [{"type": "function", "function": {}}]}),
            ),
            (
                "empty name",
                json!({"tools": [{"type": "function", "function": {"name": ""}}]}),
            ),
            (
                "parameters not an object",
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
            ),
            (
                "duplicate",
                json!({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}),
            ),
            (
                "unknown choice",
                json!({"tools": weather(), "tool_choice": "sometimes"}),
            ),
            (
                "choice names an unknown function",
                json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            ),
            (
                "choice object without a name",
                json!({"tools": weather(), "tool_choice": {"type": "function"}}),
            ),
            (
                "choice of wrong type",
                json!({"tools": weather(), "tool_choice": 3}),
            ),
            ("required without tools", json!({"tool_choice": "required"})),
            (
                "required with no tools",
                json!({"tools": [], "tool_choice": "required"}),
            ),
            (
                "parallel not a bool",
                json!({"tools": weather(), "parallel_tool_calls": "yes"}),
            ),
            (
                "with a grammar",
                json!({"tools": weather(), "grammar": "root ::= \"a\""}),
            ),
            (
                "with json output",
                json!({"tools": weather(), "response_format": {"type": "json_object"}}),
            ),
        ] {
            assert!(tools_of(bad, None).is_err(), "{case}");
        }
    }

    fn matcher_accepts(t: &Tools, text: &str) -> bool {
        let mut m = t.matcher().unwrap().unwrap();
        text.chars().all(|c| m.feed_char(c)) && m.is_complete()
    }

    #[test]
    fn constrained_outputs_are_exactly_the_calls_allowed() {
        let hermes = tools_of(
            json!({"tools": weather(), "tool_choice": "required"}),
            Some("<tool_call>"),
        )
        .unwrap()
        .unwrap();
        assert!(matcher_accepts(
            &hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        ));
        assert!(matcher_accepts(
            &hermes,
            "<tool_call>\n{\"name\":\"now\",\"arguments\":{}}\n</tool_call>"
        ));
        // Unknown function, missing required argument, text instead of a call, no closing tag.
        assert!(!matcher_accepts(
            &hermes,
            "<tool_call>\n{\"name\":\"later\",\"arguments\":{}}\n</tool_call>"
        ));
        assert!(!matcher_accepts(
            &hermes,
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{}}\n</tool_call>"
        ));
        assert!(!matcher_accepts(&hermes, "Sunny."));
        assert!(!matcher_accepts(
            &hermes,
            "<tool_call>\n{\"name\":\"now\",\"arguments\":{}}"
        ));
        // Auto leaves a Hermes model free.
        let auto = tools_of(json!({"tools": weather()}), Some("<tool_call>"))
            .unwrap()
            .unwrap();
        assert!(auto.matcher().unwrap().is_none());

        let generic = tools_of(json!({"tools": weather()}), None)
            .unwrap()
            .unwrap();
        assert!(matcher_accepts(
            &generic,
            "{\"tool_call\": {\"name\": \"now\", \"arguments\": {}}}"
        ));
        assert!(matcher_accepts(&generic, "{\"response\": \"Hi\"}"));
        assert!(!matcher_accepts(&generic, "Hi"));
        let named = tools_of(
            json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "now"}}}),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(!matcher_accepts(&named, "{\"response\": \"Hi\"}"));
        assert!(!matcher_accepts(
            &named,
            "{\"tool_call\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"X\"}}}"
        ));
        assert!(matcher_accepts(
            &named,
            "{\"tool_call\": {\"name\": \"now\", \"arguments\": {}}}"
        ));
        let parallel = tools_of(
            json!({"tools": weather(), "tool_choice": "required", "parallel_tool_calls": true}),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(matcher_accepts(
            &parallel,
            "{\"tool_calls\": [{\"name\": \"now\", \"arguments\": {}}, {\"name\": \"now\", \"arguments\": {}}]}"
        ));
        assert!(!matcher_accepts(&parallel, "{\"tool_calls\": []}"));
    }

    #[test]
    fn generic_prompt_and_history() {
        let t = tools_of(json!({"tools": weather()}), None)
            .unwrap()
            .unwrap();
        let p = t.system_prompt().unwrap();
        assert!(p.contains("get_weather") && p.contains("`response`"), "{p}");
        let h = tools_of(json!({"tools": weather()}), Some("<tool_call>"))
            .unwrap()
            .unwrap();
        assert!(h.system_prompt().is_none());
        let hist = generic_history_content(
            &json!([{"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]),
            false,
        )
        .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&hist).unwrap(),
            json!({"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}})
        );
    }
}
