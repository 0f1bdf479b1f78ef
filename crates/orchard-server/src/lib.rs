//! `orchard serve`: an OpenAI-compatible HTTP server over the Orchard engine, drop-in for
//! llama-server (same flags, endpoints, error types and `llamacpp:*` metrics).
//!
//! The model loads in a background task while `/health` answers 503; requests become engine
//! [`orchard_engine::Request`]s whose sink feeds a channel that the HTTP response (JSON or SSE)
//! drains. A client that goes away drops that channel, the sink returns `false`, and the engine
//! frees the sequence within one step. Non-streaming responses send their headers once the
//! request has a slot and then a whitespace byte every 250 ms (valid JSON padding) so that a
//! vanished client is noticed while it waits, as it is for streams.
//!
//! Context split: the engine keeps one unified KV pool. Without `--kv-unified`, each sequence is
//! limited to `n_ctx / n_parallel` tokens as in llama-server (prompt and generation); with it, a
//! sequence may use the whole pool.

mod anthropic;
mod args;
mod auth;
mod conn;
mod error;
mod generate;
pub mod ledger;
mod metrics;
mod params;
mod responses;
mod routes;
mod state;
mod tools;

pub use args::{rewrite_argv, ServerArgs, Settings, SettingsError};
pub use auth::{
    Auth, AuthError, Hooks, NoUsageSink, Principal, StaticKeys, UsageRecord, UsageSink,
};
pub use error::ApiError;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use orchard_engine::{Engine, EngineConfig};
use orchard_template::ChatTemplate;
use orchard_tokenizer::Tokenizer;
use state::{AppState, Loaded};

/// A bound, not yet running server (tests read its addresses before running it).
pub struct Server {
    state: Arc<AppState>,
    listeners: Vec<tokio::net::TcpListener>,
}

impl Server {
    /// Resolves the settings, binds every `--host` address and starts loading the model in the
    /// background. Runs the default hooks: the `--api-key` list and no usage sink, or with
    /// `--ledger` the usage ledger's keys, limits and recorder.
    pub async fn bind(args: ServerArgs) -> anyhow::Result<Server> {
        let settings = args.resolve()?;
        let hooks = match &args.ledger.ledger {
            Some(url) => {
                let model_name = settings
                    .aliases
                    .iter()
                    .min()
                    .cloned()
                    .or_else(|| {
                        settings
                            .model
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                    })
                    .unwrap_or_default();
                let (args2, url, keys) =
                    (args.ledger.clone(), url.clone(), settings.api_keys.clone());
                // Opening may migrate a database over the network: off the async workers.
                let l = tokio::task::spawn_blocking(move || {
                    ledger::Ledger::open(&args2, &url, &keys, model_name)
                })
                .await??;
                let l = Arc::new(l);
                Hooks {
                    auth: l.clone(),
                    usage: l,
                }
            }
            None => Hooks {
                auth: Arc::new(StaticKeys::new(settings.api_keys.clone())),
                usage: Arc::new(NoUsageSink),
            },
        };
        Server::bind_with(args, hooks).await
    }

    /// [`Server::bind`] with custom auth and usage hooks (the FinOps ledger).
    pub async fn bind_with(args: ServerArgs, hooks: Hooks) -> anyhow::Result<Server> {
        let settings = args.resolve()?;
        if settings.fit_check {
            fit_check(&settings)?;
        }
        if let Some(t) = settings.threads {
            if t > 0 {
                orchard_backend::init_threads(t as usize);
            }
        }
        let kv_unified = settings.kv_unified;
        let mut listeners = Vec::new();
        for host in &settings.hosts {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let addr = if h.contains(':') {
                format!("[{h}]:{}", settings.port)
            } else {
                format!("{h}:{}", settings.port)
            };
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "listening");
            listeners.push(l);
        }
        let state = Arc::new(AppState::new(settings, kv_unified, hooks));
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            match load(&st) {
                Ok(l) => {
                    tracing::info!(
                        model = %l.public_name,
                        n_ctx = l.info.n_ctx,
                        n_parallel = l.info.n_parallel,
                        n_ctx_seq = l.n_ctx_seq,
                        template = l.template.name(),
                        secs = t0.elapsed().as_secs_f64(),
                        "model loaded"
                    );
                    st.install(l);
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "model failed to load");
                    *st.load_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("{e:#}"));
                }
            }
        });
        if state.settings.sleep_idle_secs > 0 {
            let idle = std::time::Duration::from_secs(state.settings.sleep_idle_secs);
            let st = state.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let s2 = st.clone();
                    let _ = tokio::task::spawn_blocking(move || s2.maybe_sleep(idle)).await;
                }
            });
        }
        Ok(Server { state, listeners })
    }

    /// The bound addresses (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Whether the model is loaded (or failed to: `Err`).
    pub fn ready(&self) -> Result<bool, String> {
        if let Some(e) = self
            .state
            .load_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(e);
        }
        Ok(self.state.current().is_some() || self.state.is_sleeping())
    }

    /// Serves until `shutdown` resolves, then stops the engine.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = routes::router(self.state.clone());
        let timeout = std::time::Duration::from_secs(self.state.settings.timeout_secs.max(1));
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        for l in self.listeners {
            let app = app.clone();
            let mut rx = stop_tx.subscribe();
            tasks.push(tokio::spawn(async move {
                loop {
                    let (sock, _) = tokio::select! {
                        r = l.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        _ = rx.recv() => break,
                    };
                    tokio::spawn(conn::serve(sock, app.clone(), timeout));
                }
            }));
        }
        shutdown.await;
        tracing::info!("shutting down");
        if let Some(l) = self.state.current() {
            // Ends running streams with a cancellation so graceful shutdown does not wait on them.
            let engine = l.engine.clone();
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        }
        let _ = stop_tx.send(());
        for t in tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        let usage = self.state.hooks.usage.clone();
        let _ = tokio::task::spawn_blocking(move || usage.close()).await;
        Ok(())
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Binds, loads and serves until SIGINT/SIGTERM: what `orchard serve` and `orchard-server` run.
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    Server::bind(args).await?.run().await
}

/// Sets up `tracing` output for the binaries (RUST_LOG overrides; `-v` means debug).
pub fn init_logging(verbose: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if verbose { "debug" } else { "info" })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Plans memory from the GGUF header (nothing is allocated: the file is only mapped) and
/// refuses to start when the model and context will not fit, before binding or loading.
/// A model that cannot be read is left to the background load to report, as before.
fn fit_check(s: &Settings) -> anyhow::Result<()> {
    let model = match orchard_models::Model::load(&s.model) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let req = orchard_plan::PlanRequest {
        // `-c 0` means the whole training context here (llama-server), not the plan's default.
        n_ctx: if s.ctx_size == 0 {
            model.hp.n_ctx_train
        } else {
            s.ctx_size
        },
        n_batch: s.batch_size,
        n_ubatch: s.ubatch_size,
        n_parallel: s.parallel,
        cache_type_k: s.cache_type_k,
        cache_type_v: s.cache_type_v,
        n_gpu_layers: s.n_gpu_layers,
        ..Default::default()
    };
    let available = orchard_plan::available_memory(None);
    let plan = orchard_plan::plan_for_model(&model, &s.model, &req, &available)?;
    orchard_plan::refuse_unless_fits(plan)?;
    Ok(())
}

/// The GPU backend for `-ngl`, with its layer count; `None` for the CPU only. A GPU that will
/// not open is an error unless `-ngl auto` made it optional.
fn open_gpu(s: &Settings) -> anyhow::Result<Option<(Box<dyn orchard_backend::Backend>, usize)>> {
    if s.n_gpu_layers == 0 {
        return Ok(None);
    }
    match orchard_gpu::GpuBackend::new(s.device) {
        Ok(g) => {
            tracing::info!(
                n_gpu_layers = s.n_gpu_layers,
                adapter = %orchard_backend::Backend::name(&g),
                "offloading layers to the GPU"
            );
            Ok(Some((Box::new(g), s.n_gpu_layers)))
        }
        Err(e) if s.gpu_optional => {
            tracing::warn!(error = %e, "no GPU opened for -ngl auto: running on the CPU");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context("opening the GPU for -ngl (`orchard devices` lists the adapters)")),
    }
}

pub(crate) fn load(st: &AppState) -> anyhow::Result<Loaded> {
    let s = &st.settings;
    let model = Arc::new(
        orchard_models::Model::load(&s.model)
            .with_context(|| format!("loading {}", s.model.display()))?,
    );
    let tokenizer = Arc::new(Tokenizer::from_gguf(&model.file).context("reading the tokenizer")?);
    let n_ctx = if s.ctx_size == 0 {
        model.hp.n_ctx_train
    } else {
        s.ctx_size
    };
    let template = pick_template(st, &model, &tokenizer)?;
    let cfg = EngineConfig {
        n_ctx,
        n_parallel: s.parallel,
        n_batch: s.batch_size,
        n_ubatch: s.ubatch_size,
        max_queue: s.max_queue,
        context_shift: s.context_shift,
        cache_prompt: s.cache_prompt,
        model_path: Some(s.model.clone()),
        type_k: s.cache_type_k,
        type_v: s.cache_type_v,
        ..EngineConfig::default()
    };
    let gpu = open_gpu(s)?;
    let engine = Engine::start_offloaded(model.clone(), tokenizer.clone(), cfg, gpu)
        .context("starting the engine")?;
    let info = engine.model_info();
    let file_name = s
        .model
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = Path::new(&file_name)
        .file_stem()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut aliases = s.aliases.clone();
    let public_name = if aliases.is_empty() {
        file_name.clone()
    } else {
        // llama-server reports the alphabetically first alias as the id.
        aliases.sort();
        aliases[0].clone()
    };
    let mut accepted_names = aliases;
    accepted_names.extend([
        file_name,
        stem,
        s.model.display().to_string(),
        info.name.clone(),
    ]);
    let n_ctx_seq = if st.kv_unified {
        info.n_ctx
    } else {
        (n_ctx / s.parallel.max(1)).max(1)
    };
    let text_of = |id: Option<u32>| {
        id.map(|i| String::from_utf8_lossy(&tokenizer.token_to_piece(i, true)).into_owned())
            .unwrap_or_default()
    };
    Ok(Loaded {
        bos_text: text_of(tokenizer.bos()),
        eos_text: text_of(tokenizer.eos()),
        engine,
        tokenizer,
        template,
        info,
        model_path: s.model.clone(),
        accepted_names,
        public_name,
        n_ctx_seq,
        strict_names: s.strict_model,
        reasoning_off: s.reasoning_off,
    })
}

/// `--chat-template NAME|JINJA`, `--chat-template-file`, the GGUF's template, then the
/// architecture's built-in default. `--no-jinja` maps a Jinja source to llama.cpp's matching
/// built-in format when one is recognised.
fn pick_template(
    st: &AppState,
    model: &orchard_models::Model,
    tok: &Tokenizer,
) -> anyhow::Result<ChatTemplate> {
    let s = &st.settings;
    let text = |id: Option<u32>| {
        id.map(|i| String::from_utf8_lossy(&tok.token_to_piece(i, true)).into_owned())
            .unwrap_or_default()
    };
    let (bos, eos) = (text(tok.bos()), text(tok.eos()));
    let from_source = |src: &str| -> anyhow::Result<ChatTemplate> {
        if !s.jinja {
            if let Some(name) = ChatTemplate::detect(src) {
                if let Some(t) = ChatTemplate::builtin(name) {
                    return Ok(t);
                }
            }
        }
        ChatTemplate::from_jinja(src, &bos, &eos).context("compiling the chat template")
    };
    if let Some(path) = &s.chat_template_file {
        let src =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return ChatTemplate::from_jinja(&src, &bos, &eos).context("compiling the chat template");
    }
    if let Some(t) = &s.chat_template {
        if let Some(b) = ChatTemplate::builtin(t) {
            return Ok(b);
        }
        return from_source(t);
    }
    if let Ok(Some(src)) = model.file.metadata().get_str("tokenizer.chat_template") {
        return from_source(src);
    }
    let arch = model.file.architecture().unwrap_or("llama");
    let name = orchard_template::default_for_architecture(arch);
    ChatTemplate::builtin(name).ok_or_else(|| anyhow::anyhow!("no built-in chat template {name}"))
}
