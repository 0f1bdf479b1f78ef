//! Reading request bodies into engine parameters, with a 400 naming the field for every wrong
//! type or out-of-range value. Bodies are walked as `serde_json::Value` rather than derived
//! structs so that each error can say exactly which field is wrong and why.

use orchard_core::TokenId;
use orchard_grammar::Schema;
use orchard_sampler::SamplerConfig;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Most choices one request may ask for (`n`).
pub const MAX_N: usize = 16;
/// Most stop strings.
pub const MAX_STOP: usize = 16;
/// Most alternatives per token in logprobs.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// `n_probs` on llama-server's own endpoint may ask for more.
pub const MAX_N_PROBS: usize = 100;

pub type Obj = Map<String, Value>;

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn wrong_type(field: &str, want: &str, got: &Value) -> ApiError {
    ApiError::param(
        field,
        format!("`{field}` must be {want}, got {}", type_name(got)),
    )
    .with_code("invalid_type")
}

/// Looks a field up; JSON `null` reads as absent.
pub fn get<'a>(o: &'a Obj, field: &str) -> Option<&'a Value> {
    o.get(field).filter(|v| !v.is_null())
}

pub fn opt_f32(o: &Obj, field: &str) -> Result<Option<f32>, ApiError> {
    match get(o, field) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| wrong_type(field, "a number", v)),
    }
}

pub fn opt_i64(o: &Obj, field: &str) -> Result<Option<i64>, ApiError> {
    match get(o, field) {
        None => Ok(None),
        Some(v) => {
            if let Some(i) = v.as_i64() {
                return Ok(Some(i));
            }
            // 8.0 is an integer to most clients.
            match v.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                Some(_) => Err(
                    ApiError::param(field, format!("`{field}` must be an integer"))
                        .with_code("invalid_type"),
                ),
                None => Err(wrong_type(field, "an integer", v)),
            }
        }
    }
}

pub fn opt_bool(o: &Obj, field: &str) -> Result<Option<bool>, ApiError> {
    match get(o, field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(field, "a boolean", v)),
    }
}

pub fn opt_str<'a>(o: &'a Obj, field: &str) -> Result<Option<&'a str>, ApiError> {
    match get(o, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(field, "a string", v)),
    }
}

fn range_f32(field: &str, v: f32, lo: f32, hi: f32) -> Result<f32, ApiError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(ApiError::param(
            field,
            format!("`{field}` must be between {lo} and {hi}, got {v}"),
        )
        .with_code("invalid_value"))
    }
}

/// Server-wide defaults a request starts from.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub temp: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: Option<u64>,
    /// `-n`: -1 unlimited.
    pub n_predict: i64,
    pub cache_prompt: bool,
}

/// Everything a generation request asks for, before prompts are tokenized.
#[derive(Debug)]
pub struct GenRequest {
    pub sampler: SamplerConfig,
    /// What the request asked for, else the server's `-n` (`None`: until the context is full).
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities per token (0 = off).
    pub n_probs: usize,
    pub logprobs: bool,
    pub schema: Option<Schema>,
    /// GBNF text (already checked to parse).
    pub grammar: Option<String>,
    pub cache_prompt: bool,
    pub post_sampling_probs: bool,
    pub return_tokens: bool,
    pub timings_per_token: bool,
    pub return_progress: bool,
    pub verbose: bool,
    pub response_fields: Vec<String>,
    /// Raw (string-keyed) logit biases, resolved against the tokenizer by the caller.
    pub logit_bias_text: Vec<(String, f32)>,
}

/// Which flavour of API the body follows; they differ in field names and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    OaiCompletion,
    /// llama-server's `/completion`
    Llama,
    /// Anthropic's `/v1/messages` (translated to a chat body before parsing)
    Anthropic,
    /// OpenAI's `/v1/responses` (translated to a chat body before parsing)
    Responses,
}

pub fn parse_gen(o: &Obj, api: Api, d: &Defaults) -> Result<GenRequest, ApiError> {
    let mut s = SamplerConfig {
        temperature: d.temp,
        top_k: d.top_k,
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        seed: d.seed.unwrap_or(orchard_sampler::DEFAULT_SEED),
        ..SamplerConfig::default()
    };
    if let Some(t) = opt_f32(o, "temperature")? {
        s.temperature = range_f32("temperature", t, 0.0, 10.0)?;
    }
    if let Some(k) = opt_i64(o, "top_k")? {
        if !(-1..=1_000_000).contains(&k) {
            return Err(ApiError::param(
                "top_k",
                format!("`top_k` must be >= -1, got {k}"),
            ));
        }
        s.top_k = k as i32;
    }
    if let Some(p) = opt_f32(o, "top_p")? {
        s.top_p = range_f32("top_p", p, 0.0, 1.0)?;
    }
    if let Some(p) = opt_f32(o, "min_p")? {
        s.min_p = range_f32("min_p", p, 0.0, 1.0)?;
    }
    if let Some(p) = opt_f32(o, "typical_p")? {
        s.typical_p = range_f32("typical_p", p, 0.0, 1.0)?;
    }
    if let Some(p) = opt_f32(o, "repeat_penalty")? {
        if !(p > 0.0 && p <= 100.0) {
            return Err(ApiError::param(
                "repeat_penalty",
                format!("`repeat_penalty` must be > 0 and <= 100, got {p}"),
            ));
        }
        s.repeat_penalty = p;
    }
    if let Some(n) = opt_i64(o, "repeat_last_n")? {
        if !(-1..=1_000_000).contains(&n) {
            return Err(ApiError::param(
                "repeat_last_n",
                "`repeat_last_n` must be >= -1",
            ));
        }
        s.repeat_last_n = n as i32;
    }
    if let Some(p) = opt_f32(o, "frequency_penalty")? {
        s.frequency_penalty = range_f32("frequency_penalty", p, -2.0, 2.0)?;
    }
    if let Some(p) = opt_f32(o, "presence_penalty")? {
        s.presence_penalty = range_f32("presence_penalty", p, -2.0, 2.0)?;
    }
    if let Some(seed) = opt_i64(o, "seed")? {
        if seed < -1 {
            return Err(ApiError::param(
                "seed",
                "`seed` must be >= 0 (or -1 for random)",
            ));
        }
        if seed >= 0 {
            s.seed = seed as u64;
        } else {
            s.seed = orchard_sampler::DEFAULT_SEED;
        }
    }

    // Token budget: the field names differ by API; -1 means "until the context is full".
    let fields: &[&str] = match api {
        Api::Chat | Api::Anthropic | Api::Responses => {
            &["max_completion_tokens", "max_tokens", "n_predict"]
        }
        Api::OaiCompletion => &["max_tokens", "n_predict"],
        Api::Llama => &["n_predict", "max_tokens"],
    };
    let mut asked: Option<i64> = None;
    for f in fields {
        if let Some(v) = opt_i64(o, f)? {
            if v == -1 {
                asked = Some(-1);
            } else if !(1..=1 << 24).contains(&v) {
                return Err(ApiError::param(
                    f,
                    format!("`{f}` must be at least 1 (or -1 for no limit), got {v}"),
                ));
            } else {
                asked = Some(v);
            }
            break;
        }
    }
    // As in llama-server, `-n` is only the default: a request's own budget replaces it.
    let server_default = (d.n_predict > 0).then_some(d.n_predict as usize);
    let max_tokens = match asked {
        Some(v) if v > 0 => Some(v as usize),
        Some(_) => None,
        None => server_default,
    };

    let stop = match get(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => {
            if s.is_empty() {
                Vec::new()
            } else {
                vec![s.clone()]
            }
        }
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::param(
                    "stop",
                    format!("at most {MAX_STOP} stop sequences are allowed"),
                ));
            }
            let mut out = Vec::new();
            for x in a {
                match x {
                    Value::String(s) if !s.is_empty() => out.push(s.clone()),
                    Value::String(_) => {}
                    other => {
                        return Err(wrong_type("stop", "a string or an array of strings", other))
                    }
                }
            }
            out
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };

    let n = match opt_i64(o, "n")? {
        None => 1,
        Some(v) if (1..=MAX_N as i64).contains(&v) => v as usize,
        Some(v) => {
            return Err(ApiError::param(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {v}"),
            ))
        }
    };
    let stream = opt_bool(o, "stream")?.unwrap_or(false);
    let include_usage = match get(o, "stream_options") {
        None => api == Api::Chat,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")?.unwrap_or(api == Api::Chat),
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };

    // Log-probabilities.
    let (logprobs, n_probs) = match api {
        Api::Chat | Api::Anthropic | Api::Responses => {
            let on = opt_bool(o, "logprobs")?.unwrap_or(false);
            let top = opt_i64(o, "top_logprobs")?;
            if let Some(t) = top {
                if !(0..=MAX_TOP_LOGPROBS as i64).contains(&t) {
                    return Err(ApiError::param(
                        "top_logprobs",
                        format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
                    ));
                }
                if !on {
                    return Err(ApiError::param(
                        "top_logprobs",
                        "`top_logprobs` needs `logprobs: true`",
                    ));
                }
            }
            (
                on,
                if on {
                    top.unwrap_or(0).max(1) as usize
                } else {
                    0
                },
            )
        }
        Api::OaiCompletion => match get(o, "logprobs") {
            None | Some(Value::Bool(false)) => (false, 0),
            Some(Value::Bool(true)) => (true, 1),
            Some(v) => match v.as_i64() {
                Some(t) if (0..=MAX_TOP_LOGPROBS as i64).contains(&t) => (true, t.max(1) as usize),
                Some(_) => {
                    return Err(ApiError::param(
                        "logprobs",
                        format!("`logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
                    ))
                }
                None => return Err(wrong_type("logprobs", "an integer", v)),
            },
        },
        Api::Llama => match opt_i64(o, "n_probs")? {
            None | Some(0) => (false, 0),
            Some(t) if (1..=MAX_N_PROBS as i64).contains(&t) => (true, t as usize),
            Some(_) => {
                return Err(ApiError::param(
                    "n_probs",
                    format!("`n_probs` must be between 0 and {MAX_N_PROBS}"),
                ))
            }
        },
    };

    let schema = parse_response_format(o)?;

    // logit_bias: OpenAI's {"token id": bias}, or llama-server's [[token or text, bias|false]].
    let mut logit_bias_text = Vec::new();
    match get(o, "logit_bias") {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let b = bias_value(v)?;
                match k.parse::<TokenId>() {
                    Ok(id) => s.logit_bias.push((id, b)),
                    Err(_) => logit_bias_text.push((k.clone(), b)),
                }
            }
        }
        Some(Value::Array(a)) => {
            for item in a {
                let Some(pair) = item.as_array().filter(|p| p.len() == 2) else {
                    return Err(ApiError::param(
                        "logit_bias",
                        "`logit_bias` entries must be [token, bias] pairs",
                    ));
                };
                let b = bias_value(&pair[1])?;
                match &pair[0] {
                    Value::String(t) => logit_bias_text.push((t.clone(), b)),
                    v => match v.as_u64() {
                        Some(id) if id <= u32::MAX as u64 => s.logit_bias.push((id as TokenId, b)),
                        _ => {
                            return Err(ApiError::param(
                                "logit_bias",
                                "`logit_bias` tokens must be ids or strings",
                            ))
                        }
                    },
                }
            }
        }
        Some(v) => return Err(wrong_type("logit_bias", "an object", v)),
    }

    if let Err(e) = s.validate() {
        return Err(ApiError::invalid(e.to_string()).with_code("invalid_value"));
    }
    let response_fields = match get(o, "response_fields") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong_type("response_fields", "an array of strings", x))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(wrong_type("response_fields", "an array of strings", v)),
    };
    let grammar = match get(o, "grammar") {
        None => None,
        Some(Value::String(g)) if g.trim().is_empty() => None,
        Some(Value::String(g)) => {
            // Checked here so that a bad grammar is a 400 before anything is queued.
            orchard_grammar::Grammar::parse(g).map_err(|e| {
                ApiError::param("grammar", e.to_string()).with_code("invalid_grammar")
            })?;
            Some(g.clone())
        }
        Some(v) => return Err(wrong_type("grammar", "a string", v)),
    };
    if grammar.is_some() && schema.is_some() {
        return Err(ApiError::param(
            "grammar",
            "`grammar` and a JSON `response_format` cannot be combined",
        ));
    }
    Ok(GenRequest {
        sampler: s,
        max_tokens,
        stop,
        ignore_eos: opt_bool(o, "ignore_eos")?.unwrap_or(false),
        n,
        stream,
        include_usage,
        n_probs,
        logprobs,
        schema,
        grammar,
        cache_prompt: opt_bool(o, "cache_prompt")?.unwrap_or(d.cache_prompt),
        post_sampling_probs: opt_bool(o, "post_sampling_probs")?.unwrap_or(false),
        return_tokens: opt_bool(o, "return_tokens")?.unwrap_or(false),
        timings_per_token: opt_bool(o, "timings_per_token")?.unwrap_or(false),
        return_progress: opt_bool(o, "return_progress")?.unwrap_or(false),
        verbose: opt_bool(o, "verbose")?.unwrap_or(false),
        response_fields,
        logit_bias_text,
    })
}

fn bias_value(v: &Value) -> Result<f32, ApiError> {
    match v {
        // llama-server: `false` bans the token.
        Value::Bool(false) => Ok(f32::NEG_INFINITY),
        v => match v.as_f64() {
            Some(b) if (-100.0..=100.0).contains(&b) => Ok(b as f32),
            Some(b) => Err(ApiError::param(
                "logit_bias",
                format!("logit bias must be between -100 and 100, got {b}"),
            )),
            None => Err(wrong_type("logit_bias", "numbers", v)),
        },
    }
}

/// `response_format` (OpenAI) or `json_schema` (llama-server) into a schema to constrain to.
pub fn parse_response_format(o: &Obj) -> Result<Option<Schema>, ApiError> {
    if let Some(js) = get(o, "json_schema") {
        return Ok(Some(schema_from_json(js, "json_schema", 0)?));
    }
    let Some(rf) = get(o, "response_format") else {
        return Ok(None);
    };
    let Value::Object(rf) = rf else {
        return Err(wrong_type("response_format", "an object", rf));
    };
    match opt_str(rf, "type")? {
        None | Some("text") => Ok(None),
        // Like llama.cpp's JSON grammar, plain `json_object` means a top-level object.
        Some("json_object") => match get(rf, "schema") {
            None => Ok(Some(Schema::Object {
                properties: Vec::new(),
                required: Vec::new(),
                additional: Some(Box::new(Schema::Any)),
            })),
            Some(s) => Ok(Some(schema_from_json(s, "response_format.schema", 0)?)),
        },
        Some("json_schema") => {
            let Some(Value::Object(js)) = get(rf, "json_schema") else {
                // Some clients put the schema right under response_format.
                return match get(rf, "schema") {
                    Some(s) => Ok(Some(schema_from_json(s, "response_format.schema", 0)?)),
                    None => Err(ApiError::param(
                        "response_format",
                        "`response_format.json_schema` must be an object with a `schema`",
                    )),
                };
            };
            match get(js, "schema") {
                Some(s) => Ok(Some(schema_from_json(
                    s,
                    "response_format.json_schema.schema",
                    0,
                )?)),
                None => Ok(Some(Schema::Any)),
            }
        }
        Some(other) => Err(ApiError::param(
            "response_format",
            format!("unsupported response_format type `{other}` (text, json_object, json_schema)"),
        )),
    }
}

fn schema_err(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::param(param, msg).with_code("invalid_schema")
}

/// Converts a JSON schema into the grammar crate's subset.
pub fn schema_from_json(v: &Value, param: &str, depth: usize) -> Result<Schema, ApiError> {
    if depth > orchard_grammar::MAX_DEPTH {
        return Err(schema_err(param, "schema nests too deeply"));
    }
    let o = match v {
        Value::Bool(true) => return Ok(Schema::Any),
        Value::Object(o) => o,
        other => {
            return Err(schema_err(
                param,
                format!("a JSON schema must be an object, got {}", type_name(other)),
            ))
        }
    };
    let sub = |v: &Value| schema_from_json(v, param, depth + 1);
    if let Some(c) = o.get("const") {
        return Ok(Schema::Literal(vec![c.to_string()]));
    }
    if let Some(e) = o.get("enum") {
        let Value::Array(a) = e else {
            return Err(schema_err(param, "`enum` must be an array"));
        };
        if a.is_empty() {
            return Err(schema_err(param, "`enum` must not be empty"));
        }
        return Ok(Schema::Literal(a.iter().map(|x| x.to_string()).collect()));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = o.get(key) {
            let Value::Array(a) = alts else {
                return Err(schema_err(param, format!("`{key}` must be an array")));
            };
            if a.is_empty() {
                return Err(schema_err(param, format!("`{key}` must not be empty")));
            }
            return Ok(Schema::AnyOf(a.iter().map(sub).collect::<Result<_, _>>()?));
        }
    }
    if let Some(all) = o.get("allOf") {
        // Only the common single-element form (used to attach descriptions) is understood.
        if let Value::Array(a) = all {
            if a.len() == 1 {
                return sub(&a[0]);
            }
        }
        return Err(schema_err(
            param,
            "`allOf` with several schemas is not supported",
        ));
    }
    let types: Vec<&str> = match o.get("type") {
        None => {
            if o.contains_key("properties") {
                vec!["object"]
            } else if o.contains_key("items") || o.contains_key("prefixItems") {
                vec!["array"]
            } else {
                return Ok(Schema::Any);
            }
        }
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => {
            let mut out = Vec::new();
            for t in ts {
                match t.as_str() {
                    Some(s) => out.push(s),
                    None => return Err(schema_err(param, "`type` entries must be strings")),
                }
            }
            if out.is_empty() {
                return Err(schema_err(param, "`type` must not be empty"));
            }
            out
        }
        Some(other) => {
            return Err(schema_err(
                param,
                format!("`type` must be a string, got {}", type_name(other)),
            ))
        }
    };
    let usize_field = |k: &str| -> Result<Option<usize>, ApiError> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| schema_err(param, format!("`{k}` must be a non-negative integer"))),
        }
    };
    let mut alts = Vec::new();
    for t in types {
        let s = match t {
            "null" => Schema::Null,
            "boolean" => Schema::Boolean,
            "integer" => Schema::Integer,
            "number" => Schema::Number,
            "string" => Schema::String {
                min_len: usize_field("minLength")?.unwrap_or(0),
                max_len: usize_field("maxLength")?,
            },
            "array" => {
                let mut prefix = Vec::new();
                let mut items = Some(Box::new(Schema::Any));
                if let Some(Value::Array(p)) = o.get("prefixItems") {
                    prefix = p.iter().map(sub).collect::<Result<_, _>>()?;
                    items = None;
                }
                match o.get("items") {
                    None => {}
                    Some(Value::Array(p)) => {
                        prefix = p.iter().map(sub).collect::<Result<_, _>>()?;
                        items = None;
                    }
                    Some(Value::Bool(false)) => items = None,
                    Some(i) => items = Some(Box::new(sub(i)?)),
                }
                Schema::Array {
                    prefix,
                    items,
                    min_items: usize_field("minItems")?.unwrap_or(0),
                    max_items: usize_field("maxItems")?,
                }
            }
            "object" => {
                let mut properties = Vec::new();
                match o.get("properties") {
                    None => {}
                    Some(Value::Object(p)) => {
                        for (k, v) in p {
                            properties.push((k.clone(), sub(v)?));
                        }
                    }
                    Some(_) => return Err(schema_err(param, "`properties` must be an object")),
                }
                let required = match o.get("required") {
                    None => Vec::new(),
                    Some(Value::Array(r)) => r
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| schema_err(param, "`required` must list strings"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(schema_err(param, "`required` must be an array")),
                };
                let additional = match o.get("additionalProperties") {
                    None if properties.is_empty() => Some(Box::new(Schema::Any)),
                    None | Some(Value::Bool(false)) => None,
                    Some(Value::Bool(true)) => Some(Box::new(Schema::Any)),
                    Some(s) => Some(Box::new(sub(s)?)),
                };
                Schema::Object {
                    properties,
                    required,
                    additional,
                }
            }
            other => return Err(schema_err(param, format!("unknown schema type `{other}`"))),
        };
        alts.push(s);
    }
    Ok(if alts.len() == 1 {
        alts.pop().unwrap_or(Schema::Any)
    } else {
        Schema::AnyOf(alts)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d() -> Defaults {
        Defaults {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            seed: None,
            n_predict: -1,
            cache_prompt: true,
        }
    }

    fn parse(v: Value, api: Api) -> Result<GenRequest, ApiError> {
        parse_gen(v.as_object().unwrap(), api, &d())
    }

    #[test]
    fn bad_values_name_their_field() {
        for (body, field) in [
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"temperature": -1}), "temperature"),
            (json!({"top_p": 2}), "top_p"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"n": 0}), "n"),
            (json!({"stop": 5}), "stop"),
            (json!({"seed": "x"}), "seed"),
            (json!({"frequency_penalty": 3}), "frequency_penalty"),
            (json!({"logit_bias": {"5": "x"}}), "logit_bias"),
        ] {
            let e = parse(body.clone(), Api::Chat).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn token_budget_defaults_to_the_server_setting() {
        let mut dd = d();
        dd.n_predict = 64;
        let r = parse_gen(
            json!({"n_predict": 8}).as_object().unwrap(),
            Api::Llama,
            &dd,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(8));
        let r = parse_gen(
            json!({"n_predict": 100}).as_object().unwrap(),
            Api::Llama,
            &dd,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(100));
        let r = parse_gen(json!({}).as_object().unwrap(), Api::Llama, &dd).unwrap();
        assert_eq!(r.max_tokens, Some(64));
        let r = parse_gen(
            json!({"n_predict": -1}).as_object().unwrap(),
            Api::Llama,
            &dd,
        )
        .unwrap();
        assert_eq!(r.max_tokens, None);
        let r = parse(
            json!({"max_completion_tokens": 5, "max_tokens": 9}),
            Api::Chat,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(5));
        let r = parse(json!({}), Api::Chat).unwrap();
        assert_eq!(r.max_tokens, None);
    }

    #[test]
    fn schemas_convert_and_bad_ones_are_refused() {
        let s = schema_from_json(
            &json!({"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "required": ["a"]}),
            "x",
            0,
        )
        .unwrap();
        assert!(matches!(s, Schema::Object { .. }));
        for bad in [
            json!(123),
            json!({"type": 123}),
            json!({"type": "hiccup"}),
            json!({"enum": []}),
        ] {
            assert!(schema_from_json(&bad, "x", 0).is_err(), "{bad}");
        }
        assert_eq!(
            schema_from_json(&json!({"const": "42"}), "x", 0).unwrap(),
            Schema::Literal(vec!["\"42\"".into()])
        );
        let rf = json!({"response_format": {"type": "sound"}});
        assert!(parse_response_format(rf.as_object().unwrap()).is_err());
    }
}
