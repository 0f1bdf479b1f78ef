//! Command-line flags, `LLAMA_ARG_*` environment variables and the TOML config file, resolved into
//! one [`Settings`] with llama-server's precedence: flags, then environment, then file, then defaults.

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

/// Flags accepted by `orchard-server` / `orchard serve`, named as llama-server names them. Every
/// value is optional so that the config file can fill what neither a flag nor the environment set.
#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "orchard-server",
    about = "OpenAI-compatible inference server (llama-server compatible flags)"
)]
pub struct ServerArgs {
    /// GGUF model file.
    #[arg(short = 'm', long = "model", env = "LLAMA_ARG_MODEL")]
    pub model: Option<PathBuf>,
    /// Total context size in tokens, shared by all parallel sequences (0 = the model's training context).
    #[arg(short = 'c', long = "ctx-size", env = "LLAMA_ARG_CTX_SIZE")]
    pub ctx_size: Option<usize>,
    /// Number of parallel sequences (slots); `-np`.
    #[arg(long = "parallel", env = "LLAMA_ARG_N_PARALLEL")]
    pub parallel: Option<usize>,
    /// Logical batch size: the most prompt tokens one step takes in.
    #[arg(short = 'b', long = "batch-size", env = "LLAMA_ARG_BATCH")]
    pub batch_size: Option<usize>,
    /// Physical batch size; `-ub`.
    #[arg(long = "ubatch-size", env = "LLAMA_ARG_UBATCH")]
    pub ubatch_size: Option<usize>,
    /// Worker threads (the CPU backend sizes its own pool; accepted for compatibility).
    #[arg(
        short = 't',
        long = "threads",
        env = "LLAMA_ARG_THREADS",
        allow_hyphen_values = true
    )]
    pub threads: Option<i64>,
    /// `-ngl`: layers to run on the GPU (the last N repeating layers, then the output layer;
    /// `all` or `999`: everything; `auto`: everything if a GPU opens, else the CPU).
    #[arg(
        long = "gpu-layers",
        alias = "n-gpu-layers",
        env = "LLAMA_ARG_N_GPU_LAYERS",
        allow_negative_numbers = true
    )]
    pub gpu_layers: Option<String>,
    /// Default number of tokens to predict (-1 = until the context is full).
    #[arg(
        short = 'n',
        long = "n-predict",
        alias = "predict",
        env = "LLAMA_ARG_N_PREDICT",
        allow_hyphen_values = true
    )]
    pub n_predict: Option<i64>,
    /// Address(es) to listen on; a comma-separated list binds several.
    #[arg(long = "host", env = "LLAMA_ARG_HOST")]
    pub host: Option<String>,
    #[arg(long = "port", env = "LLAMA_ARG_PORT")]
    pub port: Option<u16>,
    /// API key; repeat for several. Requests must send it as `Authorization: Bearer` or `x-api-key`.
    #[arg(long = "api-key", env = "LLAMA_API_KEY", value_delimiter = ',')]
    pub api_key: Vec<String>,
    /// File with one API key per line.
    #[arg(long = "api-key-file", env = "LLAMA_ARG_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Serve Prometheus metrics on /metrics.
    #[arg(long = "metrics", env = "LLAMA_ARG_ENDPOINT_METRICS")]
    pub metrics: bool,
    /// FinOps usage ledger, cost model, node name and admin keys (`--ledger`, ...).
    #[command(flatten)]
    pub ledger: crate::ledger::LedgerArgs,
    /// Model name(s) reported by /v1/models and accepted in requests (comma-separated).
    #[arg(short = 'a', long = "alias", env = "LLAMA_ARG_ALIAS")]
    pub alias: Option<String>,
    /// Thinking in chat templates that support it: on, off or auto (the template's default).
    #[arg(long = "reasoning", env = "LLAMA_ARG_REASONING")]
    pub reasoning: Option<String>,
    /// Enable GET /cors-proxy?url=http://... for the web UI's tool servers (forwards only the
    /// `x-llama-server-proxy-header-*` headers; off by default).
    #[arg(long = "ui-mcp-proxy", env = "LLAMA_ARG_UI_MCP_PROXY")]
    pub ui_mcp_proxy: bool,
    /// Unload the model after this many seconds without requests; the next request reloads it.
    #[arg(
        long = "sleep-idle-seconds",
        env = "LLAMA_ARG_SLEEP_IDLE_SECONDS",
        allow_hyphen_values = true
    )]
    pub sleep_idle_seconds: Option<i64>,
    /// Tags reported by /v1/models (comma-separated).
    #[arg(long = "tags", env = "LLAMA_ARG_TAGS")]
    pub tags: Option<String>,
    /// Read/write timeout in seconds; `-to`.
    #[arg(long = "timeout", env = "LLAMA_ARG_TIMEOUT")]
    pub timeout: Option<u64>,
    /// Use the Jinja chat template (the default).
    #[arg(long = "jinja", env = "LLAMA_ARG_JINJA", overrides_with = "no_jinja")]
    pub jinja: bool,
    /// Use the built-in chat formats only.
    #[arg(long = "no-jinja", overrides_with = "jinja")]
    pub no_jinja: bool,
    /// A built-in template name (chatml, llama3, gemma, ...) or a Jinja template string.
    #[arg(long = "chat-template", env = "LLAMA_ARG_CHAT_TEMPLATE")]
    pub chat_template: Option<String>,
    #[arg(long = "chat-template-file", env = "LLAMA_ARG_CHAT_TEMPLATE_FILE")]
    pub chat_template_file: Option<PathBuf>,
    /// Expose /slots (the default).
    #[arg(
        long = "slots",
        env = "LLAMA_ARG_ENDPOINT_SLOTS",
        overrides_with = "no_slots"
    )]
    pub slots: bool,
    #[arg(long = "no-slots", overrides_with = "slots")]
    pub no_slots: bool,
    /// Default sampling temperature.
    #[arg(long = "temp", alias = "temperature", env = "LLAMA_ARG_TEMPERATURE")]
    pub temp: Option<f32>,
    /// Default sampling seed (-1 = random).
    #[arg(short = 's', long = "seed", allow_hyphen_values = true)]
    pub seed: Option<i64>,
    #[arg(long = "top-k", env = "LLAMA_ARG_TOP_K")]
    pub top_k: Option<i32>,
    #[arg(long = "top-p", env = "LLAMA_ARG_TOP_P")]
    pub top_p: Option<f32>,
    #[arg(long = "min-p", env = "LLAMA_ARG_MIN_P")]
    pub min_p: Option<f32>,
    #[arg(long = "repeat-penalty", env = "LLAMA_ARG_REPEAT_PENALTY")]
    pub repeat_penalty: Option<f32>,
    /// One KV pool shared by all sequences; `-kvu`. Orchard's KV cache is always one pool.
    #[arg(
        long = "kv-unified",
        env = "LLAMA_ARG_KV_UNIFIED",
        overrides_with = "no_kv_unified"
    )]
    pub kv_unified: bool,
    #[arg(long = "no-kv-unified", overrides_with = "kv_unified")]
    pub no_kv_unified: bool,
    /// Drop the oldest tokens when a sequence fills its context instead of stopping.
    #[arg(
        long = "context-shift",
        env = "LLAMA_ARG_CONTEXT_SHIFT",
        overrides_with = "no_context_shift"
    )]
    pub context_shift: bool,
    #[arg(long = "no-context-shift", overrides_with = "context_shift")]
    pub no_context_shift: bool,
    /// Minimum chunk size for KV reuse by shifting (accepted; prefix reuse is always on).
    #[arg(long = "cache-reuse", env = "LLAMA_ARG_CACHE_REUSE")]
    pub cache_reuse: Option<usize>,
    /// Disable prompt caching across requests.
    #[arg(long = "no-cache-prompt")]
    pub no_cache_prompt: bool,
    /// Requests allowed to wait for a free sequence before new ones get 503.
    #[arg(long = "max-queue", env = "ORCHARD_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Largest request body in bytes (413 above it).
    #[arg(long = "max-body-bytes", env = "ORCHARD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Disable the web UI (Orchard ships none; `/` answers a small index either way).
    #[arg(long = "no-webui", alias = "no-ui")]
    pub no_webui: bool,
    /// Log every request body and include `__verbose` in responses.
    #[arg(short = 'v', long = "verbose", alias = "log-verbose")]
    pub verbose: bool,
    /// Also serve /v1/embeddings (always on; accepted for compatibility).
    #[arg(long = "embedding", alias = "embeddings")]
    pub embedding: bool,
    /// Pooling for embeddings: mean (default) or last.
    #[arg(long = "pooling", env = "LLAMA_ARG_POOLING")]
    pub pooling: Option<String>,
    /// Answer 404 for a `model` that is neither an alias nor the model file's name (llama-server
    /// accepts any name; so does Orchard without this flag).
    #[arg(long = "strict-model", env = "ORCHARD_STRICT_MODEL")]
    pub strict_model: bool,
    /// KV cache type of K: f16 (default), q8_0 or q4_0; `-ctk`.
    #[arg(long = "cache-type-k", env = "LLAMA_ARG_CACHE_TYPE_K")]
    pub cache_type_k: Option<String>,
    /// KV cache type of V: f16 (default), q8_0 or q4_0; `-ctv`.
    #[arg(long = "cache-type-v", env = "LLAMA_ARG_CACHE_TYPE_V")]
    pub cache_type_v: Option<String>,
    /// Start even when the memory plan says the model and context do not fit.
    #[arg(long = "no-fit-check")]
    pub no_fit_check: bool,
    /// `-dev`: the GPU adapter for `-ngl`, as `orchard devices` numbers them (`0`), or a
    /// llama.cpp device name ending in that number (`Vulkan0`); `none`: no GPU.
    #[arg(long = "device")]
    pub device: Option<String>,
    /// TOML file with any of the settings above (keys are the long flag names, `-` or `_`).
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
}

/// llama-server's multi-character short flags, which clap cannot express: rewritten before parsing.
const SHORT_ALIASES: &[(&str, &str)] = &[
    ("-np", "--parallel"),
    ("-ngl", "--gpu-layers"),
    ("-dev", "--device"),
    ("-ub", "--ubatch-size"),
    ("-kvu", "--kv-unified"),
    ("-to", "--timeout"),
    ("-cb", "--cont-batching"),
    ("-nocb", "--no-cont-batching"),
    ("-ctk", "--cache-type-k"),
    ("-ctv", "--cache-type-v"),
];

/// llama-server flags Orchard accepts without acting on them, with whether each takes a value.
/// The peer test suite passes several of them; failing to start over them helps nobody.
const IGNORED_FLAGS: &[(&str, bool)] = &[
    ("--reasoning-format", true),
    ("--reasoning-budget", true),
    ("--slot-save-path", true),
    ("--cache-ram", true),
    ("-cram", true),
    ("--no-cache-idle-slots", false),
    ("--cont-batching", false),
    ("--no-cont-batching", false),
    ("--offline", false),
    ("-fa", true),
    ("--flash-attn", true),
    ("--swa-full", false),
    ("--no-mmap", false),
    ("--mlock", false),
    ("--threads-http", true),
    ("--prio", true),
    ("--log-disable", false),
    ("--log-file", true),
    ("--log-colors", true),
    ("--no-warmup", false),
    ("--warmup", false),
    ("--cors-origins", true),
    ("--media-path", true),
    ("--no-mmproj", false),
    ("--backend_sampling", false),
    ("--backend-sampling", false),
    ("--no-models-autoload", false),
    ("--grp-attn-n", true),
    ("--grp-attn-w", true),
    ("--spec-type", true),
    ("--spec-draft-n-max", true),
    ("--spec-draft-n-min", true),
    ("--keep", true),
    ("--props", false),
    ("--fit", true),
    ("-fit", true),
];

impl ServerArgs {
    /// Parses argv as llama-server would, logging each accepted-but-ignored flag.
    pub fn parse_llama_style<I, S>(argv: I) -> Result<ServerArgs, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (argv, ignored) = rewrite_argv(argv.into_iter().map(Into::into).collect());
        for flag in ignored {
            tracing::info!(flag = %flag, "flag accepted for llama-server compatibility and ignored");
        }
        ServerArgs::try_parse_from(argv)
    }
}

/// Maps llama-server's multi-character short flags to long ones and drops ignored flags (with their
/// values). Returns the new argv and the dropped flags.
pub fn rewrite_argv(argv: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::with_capacity(argv.len());
    let mut ignored = Vec::new();
    let mut it = argv.into_iter().peekable();
    if let Some(prog) = it.next() {
        out.push(prog);
    }
    while let Some(arg) = it.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with('-') => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if let Some((_, long)) = SHORT_ALIASES.iter().find(|(s, _)| *s == name) {
            match inline_value {
                Some(v) => out.push(format!("{long}={v}")),
                None => out.push((*long).to_string()),
            }
            continue;
        }
        if let Some(&(_, takes_value)) = IGNORED_FLAGS.iter().find(|(f, _)| *f == name) {
            ignored.push(name);
            if takes_value && inline_value.is_none() {
                it.next();
            }
            continue;
        }
        out.push(arg);
    }
    // A rewritten alias may itself be an ignored flag (`-cb`).
    let mut final_out = Vec::with_capacity(out.len());
    for a in out {
        if IGNORED_FLAGS.iter().any(|(f, v)| *f == a && !*v) {
            ignored.push(a);
        } else {
            final_out.push(a);
        }
    }
    (final_out, ignored)
}

/// The TOML config file: every key optional, named like the long flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    #[serde(alias = "model_path")]
    model: Option<PathBuf>,
    #[serde(alias = "ctx_size")]
    ctx_size: Option<usize>,
    parallel: Option<usize>,
    #[serde(alias = "batch_size")]
    batch_size: Option<usize>,
    #[serde(alias = "ubatch_size")]
    ubatch_size: Option<usize>,
    threads: Option<i64>,
    #[serde(alias = "gpu_layers", alias = "n-gpu-layers", alias = "n_gpu_layers")]
    gpu_layers: Option<String>,
    device: Option<String>,
    #[serde(alias = "n_predict")]
    n_predict: Option<i64>,
    host: Option<String>,
    port: Option<u16>,
    #[serde(alias = "api_key", alias = "api-keys", alias = "api_keys")]
    api_key: Option<Vec<String>>,
    #[serde(alias = "api_key_file")]
    api_key_file: Option<PathBuf>,
    metrics: Option<bool>,
    alias: Option<String>,
    timeout: Option<u64>,
    jinja: Option<bool>,
    #[serde(alias = "chat_template")]
    chat_template: Option<String>,
    #[serde(alias = "chat_template_file")]
    chat_template_file: Option<PathBuf>,
    slots: Option<bool>,
    #[serde(alias = "temperature")]
    temp: Option<f32>,
    seed: Option<i64>,
    #[serde(alias = "top_k")]
    top_k: Option<i32>,
    #[serde(alias = "top_p")]
    top_p: Option<f32>,
    #[serde(alias = "min_p")]
    min_p: Option<f32>,
    #[serde(alias = "repeat_penalty")]
    repeat_penalty: Option<f32>,
    #[serde(alias = "kv_unified")]
    kv_unified: Option<bool>,
    #[serde(alias = "context_shift")]
    context_shift: Option<bool>,
    /// Accepted for llama-server configs; prefix reuse is always on.
    #[serde(alias = "cache_reuse")]
    #[allow(dead_code)]
    cache_reuse: Option<usize>,
    #[serde(alias = "cache_prompt")]
    cache_prompt: Option<bool>,
    #[serde(alias = "max_queue")]
    max_queue: Option<usize>,
    #[serde(alias = "max_body_bytes")]
    max_body_bytes: Option<usize>,
    webui: Option<bool>,
    verbose: Option<bool>,
    pooling: Option<String>,
    #[serde(alias = "strict_model")]
    strict_model: Option<bool>,
    #[serde(alias = "cache_type_k")]
    cache_type_k: Option<String>,
    #[serde(alias = "cache_type_v")]
    cache_type_v: Option<String>,
    #[serde(alias = "no_fit_check")]
    no_fit_check: Option<bool>,
}

/// Everything the server needs, after flags, environment, config file and defaults were merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: PathBuf,
    /// 0 means the model's training context.
    pub ctx_size: usize,
    pub parallel: usize,
    pub batch_size: usize,
    pub ubatch_size: usize,
    pub n_predict: i64,
    pub hosts: Vec<String>,
    pub port: u16,
    pub api_keys: Vec<String>,
    pub metrics: bool,
    pub aliases: Vec<String>,
    pub tags: Vec<String>,
    pub cors_proxy: bool,
    /// `--sleep-idle-seconds` (0: never sleep).
    pub sleep_idle_secs: u64,
    /// Vertex AI prediction mode (`AIP_MODE=PREDICTION`): the predict route, if enabled.
    pub gcp_predict_route: Option<String>,
    /// `AIP_HEALTH_ROUTE`: an extra health route in prediction mode.
    pub gcp_health_route: Option<String>,
    /// `--reasoning off`: templates are told `enable_thinking = false` and the reply starts
    /// after an empty thinking block.
    pub reasoning_off: bool,
    pub timeout_secs: u64,
    pub jinja: bool,
    pub chat_template: Option<String>,
    pub chat_template_file: Option<PathBuf>,
    pub slots: bool,
    pub temp: f32,
    /// `None` = a fresh random seed per request.
    pub seed: Option<u64>,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub context_shift: bool,
    pub cache_prompt: bool,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub webui: bool,
    pub verbose: bool,
    pub pooling_last: bool,
    pub strict_model: bool,
    /// `-t`: CPU threads (None or <= 0: all cores).
    pub threads: Option<i64>,
    pub kv_unified: bool,
    /// `-ctk` / `-ctv`: KV cache storage types.
    pub cache_type_k: orchard_core::DType,
    pub cache_type_v: orchard_core::DType,
    /// Refuse to start when the memory plan does not fit (off with `--no-fit-check`).
    pub fit_check: bool,
    /// `-ngl`: layers on the GPU (0: CPU only).
    pub n_gpu_layers: usize,
    /// `-ngl auto`: fall back to the CPU when no GPU opens instead of refusing to start.
    pub gpu_optional: bool,
    /// `-dev`: GPU adapter index (None: the first).
    pub device: Option<usize>,
}

/// `-ngl` as llama-server takes it: a layer count, `all`, or `auto`. Returns the count and
/// whether the GPU is optional (`auto`).
fn parse_gpu_layers(v: Option<&str>) -> Result<(usize, bool), SettingsError> {
    match v.map(str::trim) {
        None => Ok((0, false)),
        Some("auto") => Ok((ALL_LAYERS, true)),
        Some("all") => Ok((ALL_LAYERS, false)),
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n < 0 => Ok((ALL_LAYERS, false)),
            Ok(n) => Ok((n as usize, false)),
            Err(_) => Err(SettingsError::Invalid {
                flag: "--gpu-layers",
                message: format!("`{n}` (a number of layers, `all` or `auto`)"),
            }),
        },
    }
}

/// Layers meaning "all of them and the output layer".
const ALL_LAYERS: usize = 999;

/// `-dev`: `none`, an adapter index, or a name ending in one (llama.cpp's `Vulkan0`).
fn parse_device(v: Option<&str>) -> Result<Option<Option<usize>>, SettingsError> {
    let Some(v) = v.map(str::trim) else {
        return Ok(Some(None));
    };
    if v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let digits = v.trim_start_matches(|c: char| !c.is_ascii_digit());
    digits
        .parse::<usize>()
        .ok()
        .filter(|_| !digits.is_empty())
        .map(|i| Some(Some(i)))
        .ok_or_else(|| SettingsError::Invalid {
            flag: "--device",
            message: format!("`{v}` (an adapter number from `orchard devices`, or `none`)"),
        })
}

/// Why the settings could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error("no model given: pass -m/--model, LLAMA_ARG_MODEL or `model` in the config file")]
    NoModel,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid value for {flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

fn bool_pair(on: bool, off: bool) -> Option<bool> {
    if off {
        Some(false)
    } else if on {
        Some(true)
    } else {
        None
    }
}

impl ServerArgs {
    /// Merges the config file (if any) under the flags and environment, then applies defaults.
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<ConfigFile>(&text).map_err(|e| SettingsError::Config {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => ConfigFile::default(),
        };
        let model = self
            .model
            .clone()
            .or(file.model)
            .ok_or(SettingsError::NoModel)?;
        let mut api_keys: Vec<String> = if self.api_key.is_empty() {
            file.api_key.unwrap_or_default()
        } else {
            self.api_key.clone()
        };
        if let Some(path) = self.api_key_file.clone().or(file.api_key_file) {
            let text = std::fs::read_to_string(&path).map_err(|source| SettingsError::Read {
                path: path.clone(),
                source,
            })?;
            api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        api_keys.retain(|k| !k.is_empty());
        let hosts: Vec<String> = self
            .host
            .clone()
            .or(file.host)
            .unwrap_or_else(|| "127.0.0.1".to_string())
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        let aliases: Vec<String> = self
            .alias
            .clone()
            .or(file.alias)
            .map(|a| {
                a.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let parallel = self.parallel.or(file.parallel).unwrap_or(1);
        if parallel == 0 {
            return Err(SettingsError::Invalid {
                flag: "--parallel",
                message: "must be at least 1".into(),
            });
        }
        let batch_size = self.batch_size.or(file.batch_size).unwrap_or(2048).max(1);
        let ubatch_size = self
            .ubatch_size
            .or(file.ubatch_size)
            .unwrap_or(512)
            .clamp(1, batch_size);
        let seed = match self.seed.or(file.seed) {
            None | Some(-1) => None,
            Some(s) if s < 0 => {
                return Err(SettingsError::Invalid {
                    flag: "--seed",
                    message: format!("{s} (use -1 for random)"),
                })
            }
            Some(s) => Some(s as u64),
        };
        let gcp = std::env::var("AIP_MODE").is_ok_and(|m| m == "PREDICTION");
        let gcp_port = if gcp {
            std::env::var("AIP_HTTP_PORT")
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
        } else {
            None
        };
        let pooling = self.pooling.clone().or(file.pooling);
        let pooling_last = match pooling.as_deref() {
            None | Some("mean") | Some("none") | Some("cls") => false,
            Some("last") => true,
            Some(other) => {
                return Err(SettingsError::Invalid {
                    flag: "--pooling",
                    message: format!("unknown pooling `{other}` (mean or last)"),
                })
            }
        };
        let cache_type = |flag: &'static str, v: Option<String>| match v {
            None => Ok(orchard_core::DType::F16),
            Some(name) => orchard_plan::parse_cache_type(&name)
                .map_err(|message| SettingsError::Invalid { flag, message }),
        };
        let cache_type_k = cache_type(
            "--cache-type-k",
            self.cache_type_k.clone().or(file.cache_type_k),
        )?;
        let cache_type_v = cache_type(
            "--cache-type-v",
            self.cache_type_v.clone().or(file.cache_type_v),
        )?;
        let (mut n_gpu_layers, gpu_optional) =
            parse_gpu_layers(self.gpu_layers.as_deref().or(file.gpu_layers.as_deref()))?;
        let device = match parse_device(self.device.as_deref().or(file.device.as_deref()))? {
            Some(d) => d,
            None => {
                n_gpu_layers = 0; // `-dev none`
                None
            }
        };
        Ok(Settings {
            model,
            ctx_size: self.ctx_size.or(file.ctx_size).unwrap_or(4096),
            parallel,
            batch_size,
            ubatch_size,
            n_predict: self.n_predict.or(file.n_predict).unwrap_or(-1),
            hosts,
            // Vertex AI tells the container which port to serve on.
            port: match gcp_port {
                Some(p) => p,
                None => self.port.or(file.port).unwrap_or(8080),
            },
            api_keys,
            metrics: self.metrics || file.metrics.unwrap_or(false),
            aliases,
            tags: self
                .tags
                .as_deref()
                .map(|t| {
                    t.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            cors_proxy: self.ui_mcp_proxy,
            sleep_idle_secs: self.sleep_idle_seconds.unwrap_or(0).max(0) as u64,
            gcp_predict_route: gcp
                .then(|| std::env::var("AIP_PREDICT_ROUTE").unwrap_or_else(|_| "/predict".into())),
            gcp_health_route: if gcp {
                std::env::var("AIP_HEALTH_ROUTE")
                    .ok()
                    .filter(|r| r.starts_with('/'))
            } else {
                None
            },
            reasoning_off: match self.reasoning.as_deref() {
                None | Some("auto") | Some("on") => false,
                Some("off") => true,
                Some(other) => {
                    return Err(SettingsError::Invalid {
                        flag: "--reasoning",
                        message: format!("`{other}` (on, off or auto)"),
                    })
                }
            },
            timeout_secs: self.timeout.or(file.timeout).unwrap_or(600),
            jinja: bool_pair(self.jinja, self.no_jinja)
                .or(file.jinja)
                .unwrap_or(true),
            chat_template: self.chat_template.clone().or(file.chat_template),
            chat_template_file: self.chat_template_file.clone().or(file.chat_template_file),
            slots: bool_pair(self.slots, self.no_slots)
                .or(file.slots)
                .unwrap_or(true),
            temp: self.temp.or(file.temp).unwrap_or(0.8),
            seed,
            top_k: self.top_k.or(file.top_k).unwrap_or(40),
            top_p: self.top_p.or(file.top_p).unwrap_or(0.95),
            min_p: self.min_p.or(file.min_p).unwrap_or(0.05),
            repeat_penalty: self.repeat_penalty.or(file.repeat_penalty).unwrap_or(1.0),
            context_shift: bool_pair(self.context_shift, self.no_context_shift)
                .or(file.context_shift)
                .unwrap_or(false),
            cache_prompt: !self.no_cache_prompt && file.cache_prompt.unwrap_or(true),
            max_queue: self.max_queue.or(file.max_queue).unwrap_or(256),
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(16 << 20),
            webui: !self.no_webui && file.webui.unwrap_or(true),
            verbose: self.verbose || file.verbose.unwrap_or(false),
            pooling_last,
            strict_model: self.strict_model || file.strict_model.unwrap_or(false),
            threads: self.threads.or(file.threads),
            kv_unified: bool_pair(self.kv_unified, self.no_kv_unified)
                .or(file.kv_unified)
                .unwrap_or(false),
            cache_type_k,
            cache_type_v,
            fit_check: !(self.no_fit_check || file.no_fit_check.unwrap_or(false)),
            n_gpu_layers,
            gpu_optional,
            device,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServerArgs {
        let mut v = vec!["orchard-server".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        ServerArgs::parse_llama_style(v).unwrap()
    }

    #[test]
    fn multi_char_short_flags_map_to_long_ones() {
        let a = parse(&[
            "-m", "x.gguf", "-np", "4", "-ngl", "99", "-ub", "64", "-kvu", "-to", "5",
        ]);
        assert_eq!(a.parallel, Some(4));
        assert_eq!(a.gpu_layers.as_deref(), Some("99"));
        assert_eq!(a.ubatch_size, Some(64));
        assert!(a.kv_unified);
        assert_eq!(a.timeout, Some(5));
    }

    #[test]
    fn ignored_flags_swallow_their_values() {
        let a = parse(&[
            "-m",
            "x.gguf",
            "--reasoning-format",
            "none",
            "--cache-ram",
            "0",
            "--offline",
            "-c",
            "256",
        ]);
        assert_eq!(a.ctx_size, Some(256));
    }

    #[test]
    fn cache_types_are_parsed_not_ignored() {
        let s = parse(&[
            "-m",
            "x",
            "-ctk",
            "q8_0",
            "--cache-type-v=q4_0",
            "--no-fit-check",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.cache_type_k, orchard_core::DType::Q8_0);
        assert_eq!(s.cache_type_v, orchard_core::DType::Q4_0);
        assert!(!s.fit_check);
        let s = parse(&["-m", "x"]).resolve().unwrap();
        assert_eq!(s.cache_type_k, orchard_core::DType::F16);
        assert!(s.fit_check);
        let e = parse(&["-m", "x", "-ctv", "q4_K"]).resolve().unwrap_err();
        assert!(e.to_string().contains("--cache-type-v"), "{e}");
    }

    #[test]
    fn gpu_layers_and_device_are_parsed() {
        let s = |a: &[&str]| parse(a).resolve();
        let r = s(&["-m", "x", "-ngl", "12", "-dev", "Vulkan1"]).unwrap();
        assert_eq!(
            (r.n_gpu_layers, r.gpu_optional, r.device),
            (12, false, Some(1))
        );
        let r = s(&["-m", "x", "-ngl", "all"]).unwrap();
        assert_eq!(
            (r.n_gpu_layers, r.gpu_optional, r.device),
            (999, false, None)
        );
        let r = s(&["-m", "x", "-ngl", "auto", "--device", "0"]).unwrap();
        assert_eq!(
            (r.n_gpu_layers, r.gpu_optional, r.device),
            (999, true, Some(0))
        );
        let r = s(&["-m", "x", "-ngl", "-1"]).unwrap();
        assert_eq!(r.n_gpu_layers, 999);
        let r = s(&["-m", "x", "-ngl", "99", "-dev", "none"]).unwrap();
        assert_eq!(r.n_gpu_layers, 0);
        assert_eq!(s(&["-m", "x"]).unwrap().n_gpu_layers, 0);
        let e = s(&["-m", "x", "-ngl", "many"]).unwrap_err();
        assert!(e.to_string().contains("--gpu-layers"), "{e}");
        let e = s(&["-m", "x", "-dev", "gpu"]).unwrap_err();
        assert!(e.to_string().contains("--device"), "{e}");
    }

    #[test]
    fn paired_booleans_last_one_wins() {
        let a = parse(&["-m", "x", "--jinja", "--no-jinja"]);
        assert!(!a.resolve().unwrap().jinja);
        let a = parse(&["-m", "x", "--no-slots"]);
        assert!(!a.resolve().unwrap().slots);
        let a = parse(&["-m", "x"]);
        let s = a.resolve().unwrap();
        assert!(s.slots && s.jinja);
    }

    #[test]
    fn flags_win_over_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "model = \"m.gguf\"\nctx-size = 1024\nparallel = 3\napi-key = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let a = parse(&["--config", path.to_str().unwrap(), "-c", "2048"]);
        let s = a.resolve().unwrap();
        assert_eq!(s.ctx_size, 2048);
        assert_eq!(s.parallel, 3);
        assert_eq!(s.api_keys, vec!["a", "b"]);
        assert_eq!(s.model, PathBuf::from("m.gguf"));
    }

    #[test]
    fn config_file_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "model = \"m\"\nctx-sise = 1\n").unwrap();
        let a = parse(&["--config", path.to_str().unwrap()]);
        assert!(matches!(a.resolve(), Err(SettingsError::Config { .. })));
    }

    #[test]
    fn hosts_and_aliases_split_on_commas() {
        let a = parse(&["-m", "x", "--host", "127.0.0.1,::1", "-a", "b,a"]);
        let s = a.resolve().unwrap();
        assert_eq!(s.hosts, vec!["127.0.0.1", "::1"]);
        assert_eq!(s.aliases, vec!["b", "a"]);
    }

    #[test]
    fn seed_minus_one_means_random() {
        assert_eq!(
            parse(&["-m", "x", "--seed", "-1"]).resolve().unwrap().seed,
            None
        );
        assert_eq!(
            parse(&["-m", "x", "-s", "42"]).resolve().unwrap().seed,
            Some(42)
        );
    }
}
