//! What every handler shares: settings, the loaded model (set once the background load ends),
//! metrics and the auth/usage hooks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use orchard_engine::{EngineHandle, ModelInfo};
use orchard_template::ChatTemplate;
use orchard_tokenizer::Tokenizer;

use crate::args::Settings;
use crate::auth::Hooks;
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

/// Shared by all handlers.
pub struct AppState {
    pub settings: Settings,
    pub kv_unified: bool,
    pub loaded: OnceLock<Arc<Loaded>>,
    pub load_error: Mutex<Option<String>>,
    pub metrics: Metrics,
    pub hooks: Hooks,
    next_id: AtomicU64,
    pub started_unix: u64,
    /// The router itself, for /predict to dispatch instances through (set once built).
    pub router: OnceLock<axum::Router>,
}

impl AppState {
    pub fn new(settings: Settings, kv_unified: bool, hooks: Hooks) -> AppState {
        AppState {
            settings,
            kv_unified,
            loaded: OnceLock::new(),
            load_error: Mutex::new(None),
            metrics: Metrics::default(),
            hooks,
            next_id: AtomicU64::new(1),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            router: OnceLock::new(),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn loaded(&self) -> Option<&Arc<Loaded>> {
        self.loaded.get()
    }
}
