//! What every handler shares: settings, the loaded model (set once the background load ends),
//! metrics and the auth/usage hooks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime};

use orchard_engine::{EngineHandle, EngineStats, ModelInfo};
use orchard_template::ChatTemplate;
use orchard_tokenizer::Tokenizer;

use crate::args::Settings;
use crate::auth::Hooks;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The model once it is loaded and its engine is running.
pub struct Loaded {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub info: ModelInfo,
    pub model_path: PathBuf,
    /// Names requests may use in `model`: the aliases, the file name and its stem.
    pub accepted_names: Vec<String>,
    /// The name reported by /v1/models and in responses.
    pub public_name: String,
    /// Most tokens one sequence may hold: the whole pool with `--kv-unified`, else llama-server's
    /// `n_ctx / n_parallel` share.
    pub n_ctx_seq: usize,
    pub bos_text: String,
    pub eos_text: String,
    /// `--strict-model`: unknown `model` names get 404.
    pub strict_names: bool,
    /// `--reasoning off`.
    pub reasoning_off: bool,
}

/// What /props and /v1/models report, kept while the model sleeps (unloaded).
#[derive(Clone, Debug)]
pub struct Facts {
    pub public_name: String,
    pub info: ModelInfo,
    pub model_path: PathBuf,
    pub n_ctx_seq: usize,
    pub template: String,
    pub bos_text: String,
    pub eos_text: String,
}

impl Facts {
    fn of(l: &Loaded) -> Facts {
        Facts {
            public_name: l.public_name.clone(),
            info: l.info.clone(),
            model_path: l.model_path.clone(),
            n_ctx_seq: l.n_ctx_seq,
            template: l.template.source().unwrap_or(l.template.name()).to_string(),
            bos_text: l.bos_text.clone(),
            eos_text: l.eos_text.clone(),
        }
    }
}

/// Shared by all handlers.
pub struct AppState {
    pub settings: Settings,
    pub kv_unified: bool,
    loaded: RwLock<Option<Arc<Loaded>>>,
    facts: OnceLock<Facts>,
    pub load_error: Mutex<Option<String>>,
    pub metrics: Metrics,
    pub hooks: Hooks,
    next_id: AtomicU64,
    pub started_unix: u64,
    /// The router itself, for /predict to dispatch instances through (set once built).
    pub router: OnceLock<axum::Router>,
    /// `--sleep-idle-seconds`: the model is unloaded after this long without requests.
    sleeping: AtomicBool,
    last_activity: Mutex<Instant>,
    /// Engine stats at the moment the model went to sleep (what /metrics and /slots show then).
    sleep_stats: Mutex<Option<EngineStats>>,
    /// Serializes wake-ups so that concurrent requests load the model once.
    wake_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(settings: Settings, kv_unified: bool, hooks: Hooks) -> AppState {
        AppState {
            settings,
            kv_unified,
            loaded: RwLock::new(None),
            facts: OnceLock::new(),
            load_error: Mutex::new(None),
            metrics: Metrics::default(),
            hooks,
            next_id: AtomicU64::new(1),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            router: OnceLock::new(),
            sleeping: AtomicBool::new(false),
            last_activity: Mutex::new(Instant::now()),
            sleep_stats: Mutex::new(None),
            wake_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Hands a usage record to the sink and waits until it is durable.
    pub async fn record_usage(&self, rec: crate::auth::UsageRecord) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.hooks.usage.record_then(
            &rec,
            Box::new(move || {
                let _ = tx.send(());
            }),
        );
        let _ = rx.await;
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The running model, if it is loaded and awake (never wakes it).
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn facts(&self) -> Option<&Facts> {
        self.facts.get()
    }

    pub fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Acquire)
    }

    pub fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> std::time::Duration {
        self.last_activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Installs a freshly loaded model.
    pub fn install(&self, l: Loaded) {
        let _ = self.facts.set(Facts::of(&l));
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(l));
        self.sleeping.store(false, Ordering::Release);
        self.touch();
    }

    /// Engine stats now, or as they were when the model went to sleep.
    pub fn stats(&self) -> Option<EngineStats> {
        match self.current() {
            Some(l) => Some(l.engine.stats()),
            None => self
                .sleep_stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Unloads the model if nothing ran for `idle` (and nothing is running or waiting).
    pub fn maybe_sleep(&self, idle: std::time::Duration) {
        let Some(l) = self.current() else { return };
        if self.idle_for() < idle {
            return;
        }
        let st = l.engine.stats();
        if st.busy_slots > 0 || st.queue_depth > 0 {
            self.touch();
            return;
        }
        tracing::info!(
            idle_secs = idle.as_secs_f64(),
            "going to sleep: unloading the model"
        );
        *self.sleep_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
        self.sleeping.store(true, Ordering::Release);
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        l.engine.shutdown();
    }

    /// The model for a request: wakes it (reloading) when it sleeps, 503 while it first loads.
    pub async fn model(self: &Arc<Self>) -> Result<Arc<Loaded>, ApiError> {
        self.touch();
        if let Some(l) = self.current() {
            return Ok(l);
        }
        if !self.is_sleeping() {
            return Err(ApiError::loading());
        }
        let _g = self.wake_lock.lock().await;
        if let Some(l) = self.current() {
            return Ok(l);
        }
        tracing::info!("waking up: reloading the model");
        let st = self.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::load(&st))
            .await
            .map_err(|e| ApiError::server(format!("reload failed: {e}")))?
            .map_err(|e| ApiError::server(format!("reload failed: {e:#}")))?;
        self.install(loaded);
        self.touch();
        self.current().ok_or_else(ApiError::loading)
    }
}
