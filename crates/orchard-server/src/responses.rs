//! OpenAI's Responses API (`/v1/responses`): the body is translated into a chat body and run on
//! the chat path; answers are response objects or the `response.*` event stream.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::generate::{Choice, Job};
use crate::params::{get, type_name, Obj};

fn content_text(v: &Value) -> Value {
    match v {
        Value::Array(parts) => json!(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n")),
        other => other.clone(),
    }
}

/// Translates a Responses body into a chat-completions body (unknown fields pass through, so
/// llama-server extensions such as `timings_per_token` keep working).
pub fn to_chat(o: &Obj) -> Result<Obj, ApiError> {
    let mut msgs: Vec<Value> = Vec::new();
    if let Some(i) = get(o, "instructions") {
        let Some(t) = i.as_str() else {
            return Err(ApiError::param(
                "instructions",
                "`instructions` must be a string",
            ));
        };
        msgs.push(json!({"role": "system", "content": t}));
    }
    match get(o, "input") {
        Some(Value::String(s)) => msgs.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, m) in items.iter().enumerate() {
                let Some(role) = m.get("role").and_then(Value::as_str) else {
                    return Err(ApiError::param(
                        "input",
                        format!("input[{i}] must be a message with a role"),
                    ));
                };
                let role = if role == "developer" { "system" } else { role };
                msgs.push(json!({"role": role, "content": content_text(m.get("content").unwrap_or(&json!("")))}));
            }
        }
        Some(v) => {
            return Err(ApiError::param(
                "input",
                format!("`input` must be a string or an array, got {}", type_name(v)),
            ))
        }
        None => {
            return Err(ApiError::param("input", "`input` is required").with_code("missing_field"))
        }
    }
    let mut chat: Map<String, Value> = o
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "input"
                    | "instructions"
                    | "max_output_tokens"
                    | "text"
                    | "store"
                    | "previous_response_id"
                    | "reasoning"
                    | "truncation"
                    | "include"
                    | "parallel_tool_calls"
                    | "tools"
                    | "tool_choice"
                    | "metadata"
                    | "user"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    chat.insert("messages".into(), Value::Array(msgs));
    if let Some(m) = get(o, "max_output_tokens") {
        chat.insert("max_tokens".into(), m.clone());
    }
    Ok(chat)
}

fn item(job: &Job, c: &Choice, done: bool) -> Value {
    json!({
        "type": "message",
        "id": msg_id(job),
        "status": if done { "completed" } else { "in_progress" },
        "role": "assistant",
        "content": if done {
            json!([{"type": "output_text", "text": c.text, "annotations": []}])
        } else {
            json!([])
        },
    })
}

pub fn msg_id(job: &Job) -> String {
    format!("msg_{}", job.id.trim_start_matches("resp_"))
}

/// The response object; `done` once the generation finished.
pub fn response(job: &Job, c: &Choice, done: bool) -> Value {
    let incomplete = c.finish == Some(orchard_engine::FinishReason::Length);
    let prompt = c.usage.prompt_tokens.max(c.prompt.len());
    json!({
        "id": job.id,
        "object": "response",
        "created_at": job.created,
        "status": if !done { "in_progress" } else if incomplete { "incomplete" } else { "completed" },
        "incomplete_details": if done && incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "model": job.loaded.public_name,
        "output": if done { json!([item(job, c, true)]) } else { json!([]) },
        "parallel_tool_calls": false,
        "tool_choice": "auto",
        "tools": [],
        "usage": if done {
            json!({
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": c.usage.cached_tokens},
                "output_tokens": c.usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + c.usage.completion_tokens,
            })
        } else {
            Value::Null
        },
    })
}

/// One `response.*` event.
pub fn event(seq: &mut u64, v: Value) -> axum::body::Bytes {
    let mut v = v;
    v["sequence_number"] = json!(*seq);
    *seq += 1;
    let name = v["type"].as_str().unwrap_or("message").to_string();
    axum::body::Bytes::from(format!(
        "event: {name}\ndata: {}\n\n",
        serde_json::to_string(&v).unwrap_or_default()
    ))
}

/// The events that open the stream, once the request has a slot.
pub fn start_events(job: &Job, c: &Choice, seq: &mut u64, out: &mut Vec<axum::body::Bytes>) {
    let r = response(job, c, false);
    out.push(event(
        seq,
        json!({"type": "response.created", "response": r}),
    ));
    out.push(event(
        seq,
        json!({"type": "response.in_progress", "response": r}),
    ));
    out.push(event(seq, json!({"type": "response.output_item.added", "output_index": 0, "item": item(job, c, false)})));
    out.push(event(seq, json!({
        "type": "response.content_part.added", "item_id": msg_id(job), "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []},
    })));
}

/// The events that close the stream.
pub fn end_events(job: &Job, c: &Choice, seq: &mut u64, out: &mut Vec<axum::body::Bytes>) {
    let id = msg_id(job);
    out.push(event(seq, json!({
        "type": "response.output_text.done", "item_id": id, "output_index": 0, "content_index": 0, "text": c.text,
    })));
    out.push(event(seq, json!({
        "type": "response.content_part.done", "item_id": id, "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": c.text, "annotations": []},
    })));
    out.push(event(
        seq,
        json!({"type": "response.output_item.done", "output_index": 0, "item": item(job, c, true)}),
    ));
    out.push(event(seq, json!({
        "type": "response.completed", "response": response(job, c, true), "timings": c.timings_json(),
    })));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_and_instructions_become_messages() {
        let body = json!({
            "instructions": "Be brief.",
            "input": [{"role": "developer", "content": "x"}, {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
            "max_output_tokens": 8,
            "timings_per_token": true,
        });
        let chat = to_chat(body.as_object().unwrap()).unwrap();
        assert_eq!(
            chat["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "system", "content": "x"}, {"role": "user", "content": "Hi"}])
        );
        assert_eq!(chat["max_tokens"], 8);
        assert_eq!(chat["timings_per_token"], true);
        assert!(to_chat(json!({"input": 5}).as_object().unwrap()).is_err());
    }
}
