//! Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`), as llama-server offers
//! it: requests are translated into the equivalent chat-completions body and run through the
//! same path; answers are rendered as Anthropic message objects and event streams.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::params::{get, type_name, Obj};

fn text_of_blocks(v: &Value, field: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(
                        b.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    ),
                    _ => {
                        return Err(ApiError::param(
                            field,
                            format!("`{field}` blocks must be text"),
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        other => Err(ApiError::param(
            field,
            format!(
                "`{field}` must be a string or an array, got {}",
                type_name(other)
            ),
        )),
    }
}

/// An Anthropic image block as an OpenAI image part (which this text-only server then refuses
/// with llama-server's message).
fn image_part(b: &Value) -> Value {
    let src = &b["source"];
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            src["media_type"].as_str().unwrap_or("image/png"),
            src["data"].as_str().unwrap_or("")
        ),
        _ => src["url"].as_str().unwrap_or("").to_string(),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// Translates a Messages API body into a chat-completions body.
pub fn to_chat(o: &Obj) -> Result<Obj, ApiError> {
    let msgs = match o.get("messages") {
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::param(
                "messages",
                format!("`messages` must be an array, got {}", type_name(v)),
            ))
        }
        None => {
            return Err(
                ApiError::param("messages", "`messages` is required").with_code("missing_field")
            )
        }
    };
    let mut out: Vec<Value> = Vec::new();
    if let Some(sys) = get(o, "system") {
        out.push(json!({"role": "system", "content": text_of_blocks(sys, "system")?}));
    }
    for (i, m) in msgs.iter().enumerate() {
        let field = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::param(&field, format!("{field}.role must be a string")))?;
        match m.get("content") {
            Some(Value::String(s)) => out.push(json!({"role": role, "content": s})),
            Some(Value::Array(blocks)) => {
                let mut parts: Vec<Value> = Vec::new();
                let mut tool_calls: Vec<Value> = Vec::new();
                let mut tool_results: Vec<Value> = Vec::new();
                let mut thinking = String::new();
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => parts.push(json!({"type": "text", "text": b.get("text").and_then(Value::as_str).unwrap_or("")})),
                        Some("image") => parts.push(image_part(b)),
                        Some("thinking") => thinking.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or("")),
                        Some("redacted_thinking") => {}
                        Some("tool_use") => tool_calls.push(json!({
                            "id": b.get("id").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {
                                "name": b.get("name").cloned().unwrap_or(Value::Null),
                                "arguments": serde_json::to_string(b.get("input").unwrap_or(&json!({}))).unwrap_or_default(),
                            },
                        })),
                        Some("tool_result") => {
                            let content = match b.get("content") {
                                None | Some(Value::Null) => json!(""),
                                Some(Value::String(s)) => json!(s),
                                Some(Value::Array(inner)) => {
                                    let conv: Vec<Value> = inner
                                        .iter()
                                        .map(|x| match x.get("type").and_then(Value::as_str) {
                                            Some("image") => image_part(x),
                                            _ => json!({"type": "text", "text": x.get("text").and_then(Value::as_str).unwrap_or("")}),
                                        })
                                        .collect();
                                    Value::Array(conv)
                                }
                                Some(other) => json!(other.to_string()),
                            };
                            tool_results.push(json!({
                                "role": "tool",
                                "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                                "content": content,
                            }));
                        }
                        other => {
                            return Err(ApiError::param(
                                &field,
                                format!("unsupported content block type {other:?}"),
                            ))
                        }
                    }
                }
                out.extend(tool_results);
                if !parts.is_empty() || !tool_calls.is_empty() || !thinking.is_empty() {
                    let mut msg = Map::new();
                    msg.insert("role".into(), json!(role));
                    // Plain text stays a string so that every template can render it.
                    let content = if parts.iter().all(|p| p["type"] == "text") {
                        json!(parts
                            .iter()
                            .map(|p| p["text"].as_str().unwrap_or(""))
                            .collect::<Vec<_>>()
                            .join("\n"))
                    } else {
                        Value::Array(parts)
                    };
                    msg.insert("content".into(), content);
                    if !tool_calls.is_empty() {
                        msg.insert("tool_calls".into(), Value::Array(tool_calls));
                    }
                    if !thinking.is_empty() {
                        msg.insert("reasoning_content".into(), json!(thinking));
                    }
                    out.push(Value::Object(msg));
                }
            }
            Some(other) => {
                return Err(ApiError::param(
                    &field,
                    format!(
                        "{field}.content must be a string or an array, got {}",
                        type_name(other)
                    ),
                ))
            }
            None => return Err(ApiError::param(&field, format!("{field} has no content"))),
        }
    }
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(out));
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stream", "stream"),
        ("stop_sequences", "stop"),
        ("model", "model"),
    ] {
        if let Some(v) = get(o, from) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(Value::Array(tools)) = get(o, "tools") {
        let t: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.get("name").cloned().unwrap_or(Value::Null),
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                }})
            })
            .collect();
        chat.insert("tools".into(), Value::Array(t));
    }
    // Anthropic's tool_choice as OpenAI's: auto, any -> required, tool -> that function, none.
    if let Some(tc) = get(o, "tool_choice") {
        let mapped = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => {
                return Err(ApiError::param(
                    "tool_choice",
                    "`tool_choice.type` must be auto, any, tool or none",
                ))
            }
        };
        chat.insert("tool_choice".into(), mapped);
    }
    if let Some(Value::Object(th)) = get(o, "thinking") {
        let on = th.get("type").and_then(Value::as_str) == Some("enabled");
        chat.insert(
            "chat_template_kwargs".into(),
            json!({"enable_thinking": on}),
        );
    }
    Ok(chat)
}

/// Anthropic's `stop_reason` for a finished choice (`tool_use` when it ended in tool calls).
pub fn stop_reason_with(c: &crate::generate::Choice, called: bool) -> &'static str {
    match c.finish {
        Some(orchard_engine::FinishReason::Length) => "max_tokens",
        _ if called => "tool_use",
        _ if c.stop_text.is_some() => "stop_sequence",
        _ => "end_turn",
    }
}

pub fn usage(c: &crate::generate::Choice) -> Value {
    json!({
        "input_tokens": c.usage.prompt_tokens.max(c.prompt.len()),
        "output_tokens": c.usage.completion_tokens,
        "cache_read_input_tokens": c.usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// One server-sent event with Anthropic's `event:` line.
pub fn event(name: &str, v: &Value) -> axum::body::Bytes {
    axum::body::Bytes::from(format!(
        "event: {name}\ndata: {}\n\n",
        serde_json::to_string(v).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_chat_messages() {
        let body = json!({
            "system": [{"type": "text", "text": "Be brief."}],
            "max_tokens": 5,
            "stop_sequences": ["\n"],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}, {"type": "text", "text": "Thanks"}]},
            ],
        });
        let chat = to_chat(body.as_object().unwrap()).unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(m[4], json!({"role": "user", "content": "Thanks"}));
        assert_eq!(chat["stop"], json!(["\n"]));
        assert!(to_chat(json!({"max_tokens": 1}).as_object().unwrap()).is_err());
    }
}
