//! The route table, the auth and CORS layers, body reading, and the endpoints that do not
//! generate text (health, models, props, slots, metrics, tokenize, detokenize, embeddings).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use orchard_core::TokenId;
use orchard_engine::{Event, Pooling, RequestKind};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::auth::{AuthError, Principal};
use crate::error::ApiError;
use crate::generate::{self, render_chat};
use crate::params::{self, opt_bool, Api, Obj};
use crate::state::AppState;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new();
    if let Some(p) = &state.settings.gcp_predict_route {
        r = r.route(p, post(gcp_predict));
    }
    if let Some(p) = &state.settings.gcp_health_route {
        r = r.route(p, get(health));
    }
    let app = r
        .route("/", get(index))
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/models", get(models))
        .route("/v1/models", get(models))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/metrics", get(metrics))
        .route("/v1/usage", get(crate::ledger::usage_endpoint))
        .route("/cors-proxy", get(cors_proxy))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/apply-template", post(apply_template))
        .route("/embedding", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/embeddings", post(embeddings))
        .route("/completion", post(completion_llama))
        .route("/completions", post(completion_llama))
        .route("/v1/completions", post(completion_oai))
        .route("/chat/completions", post(chat))
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions/input_tokens", post(input_tokens))
        .route("/v1/responses/input_tokens", post(responses_input_tokens))
        .route("/responses/input_tokens", post(responses_input_tokens))
        .route("/v1/responses", post(responses))
        .route("/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/chat/completions/input_tokens", post(input_tokens))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), auth_layer))
        .layer(middleware::from_fn(cors_layer))
        .with_state(state.clone());
    // Only prediction mode needs the router from inside a handler; storing it makes a cycle
    // through the state, so the state then lives as long as the process.
    if state.settings.gcp_predict_route.is_some() {
        let _ = state.router.set(app.clone());
    }
    app
}

/// Vertex AI's `@requestFormat` for a route: `/v1/chat/completions` -> `chatCompletions`.
fn gcp_format(path: &str) -> String {
    let s = path.strip_prefix("/v1").unwrap_or(path);
    let s = s.strip_prefix('/').unwrap_or(s);
    let mut out = String::new();
    let mut cap = false;
    for c in s.chars() {
        if matches!(c, '/' | '-' | '_') {
            cap = true;
        } else {
            out.push(if cap { c.to_ascii_uppercase() } else { c });
            cap = false;
        }
    }
    out
}

/// The POST routes a Vertex AI instance may name, llama-server style (`/v1` routes win).
const GCP_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/completion",
    "/tokenize",
    "/detokenize",
    "/apply-template",
];

/// Vertex AI prediction: every instance is run through our own routes (never streamed) and the
/// answers are returned in order as `predictions`.
async fn gcp_predict(
    State(st): St,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    use tower::ServiceExt;
    let o = read_object(&st, body).await?;
    let Some(Value::Array(instances)) = o.get("instances") else {
        return Err(ApiError::invalid(
            "request body must include an array field named instances",
        ));
    };
    if instances.len() > 128 {
        return Err(ApiError::invalid(
            "instances array exceeds maximum size of 128",
        ));
    }
    let app = st
        .router
        .get()
        .cloned()
        .ok_or_else(|| ApiError::server("router not ready"))?;
    let calls = instances.iter().map(|inst| {
        let app = app.clone();
        let headers = headers.clone();
        async move {
            let Some(Value::Object(inst)) = Some(inst) else {
                return ApiError::invalid("each instance must be a JSON object").body();
            };
            let Some(Value::String(format)) = inst.get("@requestFormat") else {
                return ApiError::invalid("each instance must include a string @requestFormat")
                    .body();
            };
            let Some(path) = GCP_ROUTES
                .iter()
                .find(|p| gcp_format(p) == *format || *p == format)
            else {
                return ApiError::invalid(format!(
                    "no handler registered for @requestFormat: {format}"
                ))
                .body();
            };
            let mut payload = inst.clone();
            payload.remove("@requestFormat");
            if payload.contains_key("stream") {
                payload.insert("stream".into(), Value::Bool(false));
            }
            let mut req = axum::http::Request::builder()
                .method(Method::POST)
                .uri(*path);
            for (k, v) in &headers {
                if k == header::AUTHORIZATION || k.as_str() == "x-api-key" {
                    req = req.header(k, v);
                }
            }
            let req = match req.body(Body::from(
                serde_json::to_vec(&Value::Object(payload)).unwrap_or_default(),
            )) {
                Ok(r) => r,
                Err(e) => return ApiError::server(e.to_string()).body(),
            };
            match app.oneshot(req).await {
                Ok(res) => match axum::body::to_bytes(res.into_body(), usize::MAX).await {
                    Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&b).into_owned())
                    }),
                    Err(e) => ApiError::server(e.to_string()).body(),
                },
                Err(e) => ApiError::server(e.to_string()).body(),
            }
        }
    });
    let predictions = futures_util::future::join_all(calls).await;
    Ok(Json(json!({ "predictions": predictions })))
}

/// Paths answered without an API key, as in llama-server.
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/v1/health" | "/")
}

fn presented_key(h: &HeaderMap) -> Option<String> {
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let key = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim();
        if !key.is_empty() {
            return Some(key.to_string());
        }
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn auth_layer(State(st): St, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if req.method() == Method::OPTIONS || is_public(&path) || !st.hooks.auth.enabled() {
        req.extensions_mut().insert(Principal::anonymous());
        return next.run(req).await;
    }
    let key = presented_key(req.headers());
    let decision = if st.hooks.auth.may_block() {
        // A database-backed key store may block (and PostgreSQL's client must not run on an
        // async worker at all).
        let (auth, path) = (st.hooks.auth.clone(), path.clone());
        tokio::task::spawn_blocking(move || auth.authenticate(key.as_deref(), &path))
            .await
            .unwrap_or_else(|e| Err(AuthError::Unavailable(format!("key check failed: {e}"))))
    } else {
        st.hooks.auth.authenticate(key.as_deref(), &path)
    };
    match decision {
        Ok(p) => {
            req.extensions_mut().insert(p.clone());
            let mut res = next.run(req).await;
            if let Some(id) = &p.request_id {
                if let Ok(v) = HeaderValue::from_str(id) {
                    res.headers_mut().insert("x-request-id", v);
                }
                // Refused before the engine saw it (bad body, queue full): still one row.
                if res.status().as_u16() >= 400
                    && !p.recorded.is_set()
                    && crate::ledger::is_metered(&path)
                {
                    st.record_usage(crate::ledger::refusal(
                        &p,
                        &path,
                        res.status().as_u16(),
                        "error",
                    ))
                    .await;
                }
            }
            res
        }
        Err(AuthError::Unavailable(m)) => ApiError::unavailable(m).into_response(),
        Err(AuthError::Unauthorized) => {
            st.metrics.record_rejected("unknown", "unauthorized");
            ApiError::unauthorized().into_response()
        }
        Err(AuthError::Forbidden(m)) => {
            let mut e = ApiError::invalid(m);
            e.status = StatusCode::FORBIDDEN;
            e.kind = "permission_error";
            e.into_response()
        }
        Err(AuthError::RateLimited {
            retry_after_secs,
            message,
            code,
            record,
        }) => {
            let mut request_id = None;
            if let Some(rec) = record {
                st.metrics
                    .record_rejected(&rec.principal.key_id, "rejected");
                request_id = rec.principal.request_id.clone();
                st.record_usage(*rec).await;
            }
            let mut e = ApiError::invalid(message).with_code(code);
            e.status = StatusCode::TOO_MANY_REQUESTS;
            e.kind = "rate_limit_error";
            e.retry_after = retry_after_secs;
            let mut res = e.into_response();
            if let Some(v) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                res.headers_mut().insert("x-request-id", v);
            }
            res
        }
    }
}

/// llama-server's permissive CORS: the request's origin is echoed back, credentials allowed.
async fn cors_layer(req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut res = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(o) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
    }
    res
}

/// Reads the body as a JSON object: 413 past the size limit, 400 for anything not JSON.
pub async fn read_object(st: &AppState, body: Body) -> Result<Obj, ApiError> {
    let limit = st.settings.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(format!("the request body is not valid JSON: {e}"))
            .with_code("invalid_json")
    })?;
    match v {
        Value::Object(o) => Ok(o),
        other => Err(ApiError::invalid(format!(
            "the request body must be a JSON object, got {}",
            params::type_name(&other)
        ))
        .with_code("invalid_type")),
    }
}

async fn fallback(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path())).with_code("not_found")
}

async fn index(State(st): St) -> Response {
    if !st.settings.webui {
        return ApiError::not_found("the web UI is disabled").into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><html><head><title>Orchard</title></head><body><h1>Orchard</h1>\
         <p>OpenAI-compatible API at <code>/v1</code>.</p></body></html>",
    )
        .into_response()
}

async fn health(State(st): St) -> Response {
    if let Some(e) = st
        .load_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        return ApiError::server(format!("model failed to load: {e}")).into_response();
    }
    if st.current().is_none() && !st.is_sleeping() {
        return ApiError::loading().into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

/// The model's descriptive facts (available while it sleeps), 503 before the first load.
fn facts(st: &AppState) -> Result<crate::state::Facts, ApiError> {
    st.facts().cloned().ok_or_else(ApiError::loading)
}

async fn models(State(st): St) -> Result<Json<Value>, ApiError> {
    let l = facts(&st)?;
    let created = st.started_unix;
    let aliases = &st.settings.aliases;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": l.public_name,
            "object": "model",
            "created": created,
            "owned_by": "orchard",
            "aliases": aliases,
            "tags": st.settings.tags,
            "meta": {
                "vocab_type": 2,
                "n_vocab": l.info.n_vocab,
                "n_ctx_train": l.info.n_ctx_train,
                "n_embd": l.info.n_embd,
                "n_params": l.info.n_params,
                "size": l.info.size_bytes,
            },
        }],
        "models": [{"name": l.public_name, "model": l.public_name, "type": "model"}],
    })))
}

fn default_params(st: &AppState) -> Value {
    let s = &st.settings;
    json!({
        "n_predict": s.n_predict,
        "seed": s.seed.unwrap_or(orchard_sampler::DEFAULT_SEED),
        "temperature": s.temp,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "repeat_penalty": s.repeat_penalty,
        "cache_prompt": s.cache_prompt,
    })
}

async fn props(State(st): St) -> Result<Json<Value>, ApiError> {
    let l = facts(&st)?;
    Ok(Json(json!({
        "default_generation_settings": {
            "id": 0,
            "n_ctx": l.n_ctx_seq,
            "params": default_params(&st),
        },
        "total_slots": l.info.n_parallel,
        "model_alias": l.public_name,
        "model_path": l.model_path.display().to_string(),
        "chat_template": l.template,
        "bos_token": l.bos_text,
        "eos_token": l.eos_text,
        "build_info": generate::FINGERPRINT,
        "modalities": {"vision": false, "audio": false},
        "n_ctx_total": l.info.n_ctx,
        "kv_unified": st.kv_unified,
        "is_sleeping": st.is_sleeping(),
    })))
}

async fn slots(State(st): St) -> Result<Json<Value>, ApiError> {
    if !st.settings.slots {
        return Err(ApiError::not_supported(
            "This server does not support slots endpoint. Start it with `--slots`",
        ));
    }
    let l = facts(&st)?;
    let stats = st.stats().ok_or_else(ApiError::loading)?;
    let out: Vec<Value> = stats
        .slots
        .iter()
        .map(|s| {
            let n_decoded = if s.is_processing { s.n_decoded } else { 0 };
            json!({
                "id": s.id,
                "id_task": s.request_id.map_or(-1, |r| r as i64),
                "n_ctx": l.n_ctx_seq,
                "is_processing": s.is_processing,
                "n_ctx_used": s.n_ctx_used,
                "n_prompt_tokens": s.n_prompt,
                "next_token": [{
                    "has_next_token": s.is_processing,
                    "n_remain": -1,
                    "n_decoded": n_decoded,
                }],
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

async fn metrics(State(st): St) -> Result<Response, ApiError> {
    if !st.settings.metrics {
        return Err(ApiError::not_supported(
            "This server does not support metrics endpoint. Start it with `--metrics`",
        ));
    }
    // Scrapes never wake a sleeping model: they see the stats from when it went to sleep.
    let l = facts(&st)?;
    let stats = st.stats();
    let mut text = st.metrics.render(&l.public_name, stats.as_ref());
    text.push_str(&st.hooks.usage.render_metrics());
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            ),
            (
                header::HeaderName::from_static("process-start-time-unix"),
                HeaderValue::from_str(&st.started_unix.to_string())
                    .unwrap_or(HeaderValue::from_static("0")),
            ),
        ],
        text,
    )
        .into_response())
}

/// llama-server's `/cors-proxy` (with `--ui-mcp-proxy`): fetches a plain-http URL for the web
/// UI. Only the headers sent as `x-llama-server-proxy-header-NAME` are forwarded (as `NAME`), so
/// the caller's own credentials and cookies never leave.
async fn cors_proxy(
    State(st): St,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !st.settings.cors_proxy {
        let mut e = ApiError::invalid("the CORS proxy is disabled (start with --ui-mcp-proxy)");
        e.status = StatusCode::FORBIDDEN;
        e.kind = "permission_error";
        return Err(e);
    }
    let url = q
        .get("url")
        .ok_or_else(|| ApiError::param("url", "`url` is required"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ApiError::param("url", "only http:// URLs can be proxied"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n");
    for (k, v) in &headers {
        if let Some(name) = k.as_str().strip_prefix("x-llama-server-proxy-header-") {
            if let Ok(v) = v.to_str() {
                if !name.is_empty() && !v.contains(['\r', '\n']) {
                    req.push_str(&format!("{name}: {v}\r\n"));
                }
            }
        }
    }
    req.push_str("\r\n");
    let fetch = async {
        let mut sock = tokio::net::TcpStream::connect(&addr).await?;
        sock.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        sock.take(16 << 20).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(std::time::Duration::from_secs(30), fetch)
        .await
        .map_err(|_| ApiError::server("the proxied server timed out"))?
        .map_err(|e| ApiError::server(format!("proxy fetch failed: {e}")))?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ApiError::server("malformed upstream response"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut res = (status, buf[split + 4..].to_vec()).into_response();
    if let Ok(v) = HeaderValue::from_str(&ctype) {
        res.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(res)
}

async fn tokenize(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let o = read_object(&st, body).await?;
    let l = st.model().await?;
    let content = match params::get(&o, "content") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(ApiError::param(
                "content",
                format!("`content` must be a string, got {}", params::type_name(v)),
            )
            .with_code("invalid_type"))
        }
        None => {
            return Err(
                ApiError::param("content", "`content` is required").with_code("missing_field")
            )
        }
    };
    let add_special = opt_bool(&o, "add_special")?.unwrap_or(false);
    let parse_special = opt_bool(&o, "parse_special")?.unwrap_or(true);
    let with_pieces = opt_bool(&o, "with_pieces")?.unwrap_or(false);
    let toks = l.tokenizer.encode(&content, add_special, parse_special);
    let tokens: Vec<Value> = if with_pieces {
        toks.iter()
            .map(|&id| {
                let b = l.tokenizer.token_to_piece(id, true);
                let piece = match String::from_utf8(b.clone()) {
                    Ok(s) => json!(s),
                    Err(_) => json!(b),
                };
                json!({"id": id, "piece": piece})
            })
            .collect()
    } else {
        toks.iter().map(|&t| json!(t)).collect()
    };
    Ok(Json(json!({ "tokens": tokens })))
}

async fn detokenize(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let o = read_object(&st, body).await?;
    let l = st.model().await?;
    let ids: Vec<TokenId> = match params::get(&o, "tokens") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&t| (t as usize) < l.tokenizer.n_vocab())
                    .map(|t| t as TokenId)
                    .ok_or_else(|| ApiError::param("tokens", "`tokens` must be valid token ids"))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ApiError::param(
                "tokens",
                format!("`tokens` must be an array, got {}", params::type_name(v)),
            )
            .with_code("invalid_type"))
        }
    };
    Ok(Json(json!({ "content": l.tokenizer.decode(&ids, false) })))
}

async fn input_tokens(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let o = read_object(&st, body).await?;
    let l = st.model().await?;
    let toks = generate::chat_prompt(&l, &o, false)?;
    Ok(Json(json!({ "input_tokens": toks.len() })))
}

/// Token count of an OpenAI Responses API `input` (a string or a list of messages).
async fn responses_input_tokens(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let o = read_object(&st, body).await?;
    let msgs = match params::get(&o, "input") {
        Some(Value::String(s)) => json!([{"role": "user", "content": s}]),
        Some(Value::Array(items)) => Value::Array(
            items
                .iter()
                .map(|m| {
                    let content = match &m["content"] {
                        Value::Array(parts) => json!(parts
                            .iter()
                            .filter_map(|p| p["text"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n")),
                        other => other.clone(),
                    };
                    json!({"role": m["role"].as_str().unwrap_or("user"), "content": content})
                })
                .collect(),
        ),
        Some(v) => {
            return Err(ApiError::param(
                "input",
                format!(
                    "`input` must be a string or an array, got {}",
                    params::type_name(v)
                ),
            ))
        }
        None => {
            return Err(ApiError::param("input", "`input` is required").with_code("missing_field"))
        }
    };
    let mut chat = serde_json::Map::new();
    chat.insert("messages".into(), msgs);
    if let Some(i) = params::get(&o, "instructions") {
        if let (Some(Value::Array(m)), Some(text)) = (chat.get_mut("messages"), i.as_str()) {
            m.insert(0, json!({"role": "system", "content": text}));
        }
    }
    let l = st.model().await?;
    let toks = generate::chat_prompt(&l, &chat, false)?;
    Ok(Json(json!({ "input_tokens": toks.len() })))
}

async fn count_tokens(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let o = read_object(&st, body).await?;
    let l = st.model().await?;
    let chat = crate::anthropic::to_chat(&o)?;
    let toks = generate::chat_prompt_with(&l, &chat, true, false)?;
    Ok(Json(json!({ "input_tokens": toks.len() })))
}

async fn apply_template(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let o = read_object(&st, body).await?;
    let l = st.model().await?;
    Ok(Json(json!({ "prompt": render_chat(&l, &o, false)? })))
}

async fn embeddings(
    State(st): St,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let o = read_object(&st, body).await?;
    let l = st.model().await?;
    let input = params::get(&o, "input")
        .or_else(|| params::get(&o, "content"))
        .ok_or_else(|| {
            ApiError::param("input", "`input` is required").with_code("missing_field")
        })?;
    if let Some(Value::String(m)) = params::get(&o, "model") {
        if l.strict_names && !l.accepted_names.iter().any(|n| n == m) {
            return Err(ApiError::model_not_found(m));
        }
    }
    // The official Python client asks for base64 (little-endian f32) by default.
    let base64 = match params::get(&o, "encoding_format") {
        None => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::param(
                "encoding_format",
                "`encoding_format` must be `float` or `base64`",
            ))
        }
    };
    let tok = &l.tokenizer;
    let inputs: Vec<Vec<TokenId>> = match input {
        Value::String(s) => vec![tok.encode(s, true, true)],
        Value::Array(a) if a.iter().all(Value::is_number) && !a.is_empty() => {
            vec![a
                .iter()
                .filter_map(|x| x.as_u64().map(|t| t as TokenId))
                .collect()]
        }
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(tok.encode(s, true, true)),
                Value::Array(ids) => Ok(ids
                    .iter()
                    .filter_map(|t| t.as_u64().map(|t| t as TokenId))
                    .collect()),
                other => Err(ApiError::param(
                    "input",
                    format!(
                        "`input` items must be strings, got {}",
                        params::type_name(other)
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(ApiError::param(
                "input",
                format!(
                    "`input` must be a string or an array, got {}",
                    params::type_name(other)
                ),
            )
            .with_code("invalid_type"))
        }
    };
    if inputs.is_empty() || inputs.len() > 256 {
        return Err(ApiError::param("input", "`input` must hold 1 to 256 items"));
    }
    for p in &inputs {
        if p.is_empty() {
            return Err(ApiError::param("input", "an input is empty").with_code("empty_prompt"));
        }
        if p.len() > l.n_ctx_seq {
            return Err(ApiError::context_exceeded(p.len(), l.n_ctx_seq));
        }
        if p.iter().any(|&t| t as usize >= tok.n_vocab()) {
            return Err(ApiError::param("input", "token id out of the vocabulary"));
        }
    }
    let pooling = if st.settings.pooling_last {
        Pooling::Last
    } else {
        Pooling::Mean
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut ids = Vec::new();
    for (i, p) in inputs.iter().enumerate() {
        let txc = tx.clone();
        let rid = st.next_id();
        let req = orchard_engine::Request {
            id: rid,
            prompt: p.clone(),
            kind: RequestKind::Embed {
                pooling,
                normalize: true,
            },
            sink: Box::new(move |ev| txc.send((i, ev)).is_ok()),
        };
        if let Err(e) = l.engine.submit(req) {
            for id in ids {
                l.engine.cancel(id);
            }
            st.metrics.record_rejected(&principal.key_id, "rejected");
            return Err(e.into());
        }
        ids.push(rid);
    }
    drop(tx);
    let mut vecs: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
    let mut prompt_tokens = 0;
    let mut device_ms = 0.0;
    let mut left = inputs.len();
    while left > 0 {
        let Some((i, ev)) = rx.recv().await else {
            return Err(ApiError::server("the engine stopped"));
        };
        match ev {
            Event::Embedding(v) => vecs[i] = Some(v),
            Event::Done { usage, timings, .. } => {
                prompt_tokens += usage.prompt_tokens;
                device_ms += timings.device_ms;
                left -= 1;
            }
            Event::Error { message } => return Err(ApiError::server(message)),
            _ => {}
        }
    }
    st.metrics.record(&crate::metrics::Finished {
        key_id: principal.key_id.clone(),
        status: "ok",
        prompt_tokens,
        ..Default::default()
    });
    let mut rec = crate::ledger::refusal(&principal, "/v1/embeddings", 200, "ok");
    rec.model = l.public_name.clone();
    rec.prompt_tokens = prompt_tokens;
    rec.device_ms = device_ms;
    st.record_usage(rec).await;
    let data: Vec<Value> = vecs
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v.unwrap_or_default();
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": l.public_name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}

async fn gen(st: Arc<AppState>, principal: Principal, api: Api, body: Body) -> Response {
    let o = match read_object(&st, body).await {
        Ok(o) => o,
        Err(e) => {
            st.metrics.record_rejected(&principal.key_id, "rejected");
            return e.into_response();
        }
    };
    match generate::run(st.clone(), principal.clone(), api, o).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_client_error() {
                st.metrics.record_rejected(&principal.key_id, "rejected");
            }
            tracing::debug!(error = %e, "request refused");
            e.into_response()
        }
    }
}

async fn completion_llama(
    State(st): St,
    Extension(p): Extension<Principal>,
    body: Body,
) -> Response {
    gen(st, p, Api::Llama, body).await
}

async fn completion_oai(State(st): St, Extension(p): Extension<Principal>, body: Body) -> Response {
    gen(st, p, Api::OaiCompletion, body).await
}

async fn responses(State(st): St, Extension(p): Extension<Principal>, body: Body) -> Response {
    gen(st, p, Api::Responses, body).await
}

async fn messages(State(st): St, Extension(p): Extension<Principal>, body: Body) -> Response {
    gen(st, p, Api::Anthropic, body).await
}

async fn chat(State(st): St, Extension(p): Extension<Principal>, body: Body) -> Response {
    gen(st, p, Api::Chat, body).await
}

/// Standard base64 with padding (RFC 4648), for `encoding_format: base64`.
fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64_encode(raw.as_bytes()), enc);
        }
    }
}
