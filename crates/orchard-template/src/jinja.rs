//! Renders HF-style Jinja chat templates with minijinja, configured the way HF transformers and
//! llama.cpp's own engine run them (trim_blocks, lstrip_blocks, Python-ish methods and `tojson`), plus
//! llama.cpp's input workarounds (developer -> system, merging the system prompt into the first turn
//! for templates that ignore it).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};

use crate::{strftime, ChatMessage, TemplateError};

const TEMPLATE_NAME: &str = "chat_template";

/// Enough for conversations of many thousands of turns, small enough that a template embedded in a
/// hostile GGUF cannot spin forever.
const FUEL: u64 = 10_000_000;

/// Marker content for the capability probe: unlikely to appear in any template.
const SYSTEM_PROBE: &str = "\u{1}ORCHARD_SYSTEM_PROBE\u{1}";

pub(crate) struct JinjaTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
    supports_system_role: bool,
    map_developer_to_system: bool,
}

/// The message `raise_exception()` was called with, carried as the minijinja error's source so that it
/// can be told apart from engine errors.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl JinjaTemplate {
    pub(crate) fn compile(
        source: &str,
        bos: &str,
        eos: &str,
    ) -> Result<JinjaTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(unknown_method);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| {
            strftime::format(&fmt, strftime::now_unix())
        });
        env.add_filter("tojson", tojson_filter);
        env.add_filter("length", length_filter);
        env.add_filter("count", length_filter);
        env.add_filter("string", string_filter);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| TemplateError::Syntax {
                message: describe(&e),
                line: e.line(),
            })?;
        let mut t = JinjaTemplate {
            env,
            source: source.to_string(),
            bos: bos.to_string(),
            eos: eos.to_string(),
            supports_system_role: true,
            map_developer_to_system: !source.contains("<|channel|>"),
        };
        t.supports_system_role = t.probe_system_role();
        Ok(t)
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn bos(&self) -> &str {
        &self.bos
    }

    pub(crate) fn eos(&self) -> &str {
        &self.eos
    }

    /// llama.cpp renders a system + user pair and checks whether the system text is used; templates
    /// that drop it (or refuse system messages) get it merged into the next message instead.
    fn probe_system_role(&self) -> bool {
        let messages = vec![
            message_value(&ChatMessage::new("system", SYSTEM_PROBE)),
            message_value(&ChatMessage::new("user", "User message")),
        ];
        let ctx = Value::from_iter([
            ("messages", Value::from(messages)),
            ("tools", Value::from(Vec::<Value>::new())),
            ("bos_token", Value::from("")),
            ("eos_token", Value::from("")),
            ("add_generation_prompt", Value::from(true)),
        ]);
        match self.env.get_template(TEMPLATE_NAME) {
            Ok(t) => t.render(ctx).is_ok_and(|out| out.contains(SYSTEM_PROBE)),
            Err(_) => false,
        }
    }

    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        let mut msgs: Vec<ChatMessage> = messages.to_vec();
        if self.map_developer_to_system {
            for m in &mut msgs {
                if m.role == "developer" {
                    m.role = "system".to_string();
                }
            }
        }
        if !self.supports_system_role && msgs.first().is_some_and(|m| m.role == "system") {
            let sys = msgs.remove(0);
            if let Some(next) = msgs.first_mut() {
                next.content = format!("{}\n{}", sys.content, next.content);
            }
        }

        let now = strftime::now_unix();
        let mut ctx: Vec<(String, Value)> = vec![
            (
                "messages".into(),
                Value::from(msgs.iter().map(message_value).collect::<Vec<_>>()),
            ),
            ("bos_token".into(), Value::from(self.bos.as_str())),
            ("eos_token".into(), Value::from(self.eos.as_str())),
            ("enable_thinking".into(), Value::from(true)),
            (
                "datetime".into(),
                Value::from(strftime::format("%b %d %Y", now)),
            ),
            (
                "date_string".into(),
                Value::from(strftime::format("%d %b %Y", now)),
            ),
        ];
        // llama.cpp only defines it when true; `is defined` checks in templates see the difference.
        if add_generation_prompt {
            ctx.push(("add_generation_prompt".into(), Value::from(true)));
        }
        for (k, v) in extra {
            let v = Value::from_serialize(v);
            match ctx.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v,
                None => ctx.push((k.clone(), v)),
            }
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| render_error(&e))?;
        tmpl.render(Value::from_iter(ctx))
            .map_err(|e| render_error(&e))
    }
}

/// A message as the template sees it: role and content first, then any extra fields in order.
fn message_value(m: &ChatMessage) -> Value {
    let mut pairs: Vec<(String, Value)> = vec![
        ("role".into(), Value::from(m.role.as_str())),
        ("content".into(), Value::from(m.content.as_str())),
    ];
    for (k, v) in &m.extra {
        if k != "role" && k != "content" {
            pairs.push((k.clone(), Value::from_serialize(v)));
        }
    }
    Value::from_iter(pairs)
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

fn raised_message(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Raised>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}

fn describe(e: &Error) -> String {
    // `{:#}` adds minijinja's source excerpt; keep the message one line and point at the line.
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        let _ = write!(s, ": {d}");
    }
    if let Some(line) = e.line() {
        let _ = write!(s, " (line {line})");
    }
    s
}

fn render_error(e: &Error) -> TemplateError {
    match raised_message(e) {
        Some(message) => TemplateError::Raised { message },
        None => TemplateError::Render {
            message: describe(e),
            line: e.line(),
        },
    }
}

/// HF templates sometimes wrap assistant turns in `{% generation %}` (a transformers extension for
/// masks). Turning the tags into `if true`/`endif` keeps their whitespace-control dashes meaning the
/// same while making them plain Jinja.
fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos + 2]);
        rest = &rest[pos + 2..];
        let ws_ctl = rest
            .strip_prefix('-')
            .or_else(|| rest.strip_prefix('+'))
            .map_or(0, |_| 1);
        out.push_str(&rest[..ws_ctl]);
        rest = &rest[ws_ctl..];
        let trimmed = rest.trim_start();
        let lead = rest.len() - trimmed.len();
        let word_end = trimmed
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(trimmed.len());
        let replacement = match &trimmed[..word_end] {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        if let Some(r) = replacement {
            out.push_str(&rest[..lead]);
            out.push_str(r);
            rest = &trimmed[word_end..];
        }
    }
    out.push_str(rest);
    out
}

/// Python's way of printing values (`None`, `True`, `{'a': 1}`), as Jinja2 does; undefined prints
/// nothing.
fn python_formatter(out: &mut minijinja::Output, state: &State, v: &Value) -> Result<(), Error> {
    match v.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Map | ValueKind::Seq => {
            let mut s = String::new();
            python_repr(&mut s, v, 0)?;
            out.write_str(&s).map_err(Error::from)
        }
        _ => minijinja::escape_formatter(out, state, v),
    }
}

/// `|string` with Python's `str()`: strings unchanged, everything else as printed.
fn string_filter(v: &Value) -> Result<Value, Error> {
    Ok(match v.kind() {
        ValueKind::String => v.clone(),
        ValueKind::Undefined => Value::from(""),
        ValueKind::None | ValueKind::Bool | ValueKind::Map | ValueKind::Seq => {
            let mut s = String::new();
            python_repr(&mut s, v, 0)?;
            Value::from(s)
        }
        _ => Value::from(v.to_string()),
    })
}

/// Python's `repr()` for the value kinds templates print.
fn python_repr(out: &mut String, v: &Value, depth: usize) -> Result<(), Error> {
    if depth > 256 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "value nested too deeply to print",
        ));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => python_str_repr(out, v.as_str().unwrap_or("")),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &item, depth + 1)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &k, depth + 1)?;
                out.push_str(": ");
                python_repr(out, &v.get_item(&k)?, depth + 1)?;
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

fn python_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python string/dict methods via minijinja-contrib, plus llama.cpp's leniency: calling a string or
/// container method on an undefined or none value yields an empty result instead of an error.
fn unknown_method(state: &State, v: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if v.is_undefined() || v.is_none() {
        let empty_list = || Value::from(Vec::<Value>::new());
        return match method {
            "items" | "keys" | "values" | "split" | "splitlines" => Ok(empty_list()),
            "strip" | "lstrip" | "rstrip" | "lower" | "upper" | "title" | "capitalize"
            | "replace" => Ok(Value::from("")),
            "startswith" | "endswith" => Ok(Value::from(false)),
            "get" => Ok(args.get(1).cloned().unwrap_or(Value::from(()))),
            _ => Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("{} has no method named {method}", v.kind()),
            )),
        };
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, v, method, args)
}

/// `length` that, like Jinja2 and llama.cpp, gives 0 for an undefined value (`tools|length` with no
/// tools passed).
fn length_filter(v: &Value) -> Result<usize, Error> {
    if v.is_undefined() {
        return Ok(0);
    }
    minijinja::filters::length(v)
}

/// `tojson` as Python's `json.dumps` (which HF's filter calls and llama.cpp imitates): `", "` and
/// `": "` separators, non-ASCII kept unless `ensure_ascii`, optional `indent`, `separators` and
/// `sort_keys`.
fn tojson_filter(v: Value, args: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = args.get("indent")?;
    let ensure_ascii: Option<bool> = args.get("ensure_ascii")?;
    let sort_keys: Option<bool> = args.get("sort_keys")?;
    let separators: Option<Value> = args.get("separators")?;
    args.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(i) if i.is_none() => None,
        Some(i) => match i.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => i.as_str().map(str::to_string),
        },
    };
    let (mut item_sep, mut key_sep) = (
        if indent.is_some() { "," } else { ", " }.to_string(),
        ": ".to_string(),
    );
    if let Some(seps) = separators.filter(|s| !s.is_none()) {
        let parts: Vec<Value> = seps.try_iter()?.collect();
        if let [a, b] = parts.as_slice() {
            item_sep = a.as_str().unwrap_or(",").to_string();
            key_sep = b.as_str().unwrap_or(":").to_string();
        } else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson separators must be a pair of strings",
            ));
        }
    }
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, &v, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, depth: usize) -> Result<(), Error> {
    if depth > 256 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or(""), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, o, depth, '[', ']', items.len(), |out, i| {
                write_json(out, &items[i], o, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for k in v.try_iter()? {
                let val = v.get_item(&k)?;
                let key = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => {
                        let mut s = String::new();
                        write_json(&mut s, &k, o, depth + 1)?;
                        s.trim_matches('"').to_string()
                    }
                };
                entries.push((key, val));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, o, depth, '{', '}', entries.len(), |out, i| {
                write_json_str(out, &entries[i].0, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, &entries[i].1, o, depth + 1)
            })?;
        }
        _ => write_json_str(out, &v.to_string(), o.ensure_ascii),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    o: &JsonOpts,
    depth: usize,
    open: char,
    close: char,
    n: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if n == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..n {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth + 1));
        }
        item(out, i)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Python's `repr` for numbers: integers as-is, floats always with a '.' or an exponent.
fn write_number(out: &mut String, v: &Value) {
    if v.is_integer() {
        let _ = write!(out, "{v}");
        return;
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else if f == 0.0 || (1e-4..1e16).contains(&f.abs()) {
        let s = format!("{f}");
        out.push_str(&s);
        if !s.contains('.') {
            out.push_str(".0");
        }
    } else {
        // Python: 1e+16, 1.5e-05
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: Value) -> Result<String, TemplateError> {
        let t = JinjaTemplate::compile(src, "<s>", "</s>")?;
        let tmpl = t.env.get_template(TEMPLATE_NAME).unwrap();
        tmpl.render(ctx).map_err(|e| render_error(&e))
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v = Value::from_serialize(serde_json::json!({
            "name": "get_weather",
            "args": {"city": "Zürich", "days": 3, "ratio": 0.5, "whole": 2.0, "tiny": 1.5e-5},
            "tags": [],
            "ok": true,
            "none": null,
            "s": "a\"b\\c\nd\u{1}"
        }));
        let out = render("{{ v|tojson }}", Value::from_iter([("v", v.clone())])).unwrap();
        // serde_json's map orders keys; the separators and escapes are what matter here.
        assert_eq!(
            out,
            r#"{"args": {"city": "Zürich", "days": 3, "ratio": 0.5, "tiny": 1.5e-05, "whole": 2.0}, "name": "get_weather", "none": null, "ok": true, "s": "a\"b\\c\nd\u0001", "tags": []}"#
        );
        let out = render(
            "{{ v.args|tojson(indent=2, ensure_ascii=true) }}",
            Value::from_iter([("v", v.clone())]),
        )
        .unwrap();
        assert_eq!(
            out,
            "{\n  \"city\": \"Z\\u00fcrich\",\n  \"days\": 3,\n  \"ratio\": 0.5,\n  \"tiny\": 1.5e-05,\n  \"whole\": 2.0\n}"
        );
        let out = render(
            "{{ [1, 'x', none]|tojson(separators=(',', ':')) }}",
            Value::from(()),
        )
        .unwrap();
        assert_eq!(out, r#"[1,"x",null]"#);
    }

    #[test]
    fn python_methods_and_printing() {
        let out = render(
            "{{ '  Hi  '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'a,b'.split(',')|length }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}|{{ 'xyx'.replace('x', 'z') }}|{{ none }}|{{ true }}|{{ missing.strip() }}|{{ missing.items()|length }}|{{ missing|length }}",
            Value::from(()),
        )
        .unwrap();
        assert_eq!(out, "Hi|True|2|ABab|zyz|None|True||0|0");
    }

    #[test]
    fn containers_print_like_python() {
        let v = Value::from_serialize(
            serde_json::json!({"a": [1, 2.5, true, null], "b": "it's \"q\"\n"}),
        );
        let ctx = Value::from_iter([("v", v)]);
        let expected = r#"{'a': [1, 2.5, True, None], 'b': 'it\'s "q"\n'}"#;
        assert_eq!(render("{{ v }}", ctx.clone()).unwrap(), expected);
        assert_eq!(render("{{ v|string }}", ctx.clone()).unwrap(), expected);
        assert_eq!(render("{{ v.b[:4] }}", ctx).unwrap(), "it's");
        assert_eq!(
            render("{{ [\"it's\"] }}", Value::from(())).unwrap(),
            r#"["it's"]"#
        );
    }

    #[test]
    fn generation_tags_are_accepted() {
        let src =
            "{% for m in messages %}{%- generation -%} {{ m }} {%- endgeneration %}{% endfor %}";
        let out = render(
            src,
            Value::from_iter([("messages", Value::from(vec!["a", "b"]))]),
        )
        .unwrap();
        assert_eq!(out, "ab");
        assert_eq!(
            rewrite_generation_tags("{% if x %}{%generation%}"),
            "{% if x %}{%if true%}"
        );
    }

    #[test]
    fn raise_exception_and_syntax_errors_become_template_errors() {
        let err = render("{{ raise_exception('no system role') }}", Value::from(())).unwrap_err();
        assert_eq!(
            err,
            TemplateError::Raised {
                message: "no system role".into()
            }
        );
        let err = match JinjaTemplate::compile("line one\n{% if %}", "", "") {
            Err(e) => e,
            Ok(_) => panic!("syntax error accepted"),
        };
        assert!(
            matches!(err, TemplateError::Syntax { line: Some(2), .. }),
            "{err:?}"
        );
        let err = render("{{ 1 + 'a' }}", Value::from(())).unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let err = render(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            Value::from(()),
        )
        .unwrap_err();
        assert!(
            matches!(&err, TemplateError::Render { message, .. } if message.contains("fuel")),
            "{err:?}"
        );
    }
}
