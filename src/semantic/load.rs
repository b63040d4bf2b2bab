//! Loading the model for the engine: resolve it, build the static tier (distilled once from
//! the transformer and cached next to the model), and hand the embedders to whoever needs
//! them. Failures leave semtap running degraded, never down.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::live::SemanticSink;
use super::model::{self, ModelFiles};
use super::static_tier::{distill, DistillOptions, StaticTable};
use super::transformer::{DeviceChoice, TransformerEmbedder};
use super::wordpiece::WordPiece;
use super::TextEmbedder;
use crate::admin::Health;
use crate::config::SemanticConfig;
use crate::metrics::Metrics;

/// The static tier as a [`TextEmbedder`]: our WordPiece and the distilled token table.
pub struct StaticEmbedder {
    tokenizer: WordPiece,
    table: StaticTable,
    max_tokens: usize,
}

impl StaticEmbedder {
    /// Wraps a tokenizer and a table.
    pub fn new(tokenizer: WordPiece, table: StaticTable, max_tokens: usize) -> Self {
        StaticEmbedder {
            tokenizer,
            table,
            max_tokens,
        }
    }
}

thread_local! {
    static IDS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl TextEmbedder for StaticEmbedder {
    fn embed(&self, text: &str) -> Vec<f32> {
        let mut out = vec![0f32; self.table.dim()];
        IDS.with(|ids| {
            let mut ids = ids.borrow_mut();
            ids.clear();
            self.tokenizer.encode(text, self.max_tokens, &mut ids);
            self.table.embed(&ids, &mut out);
        });
        out
    }

    fn dim(&self) -> usize {
        self.table.dim()
    }

    fn tier(&self) -> &'static str {
        "static"
    }
}

/// The transformer as a [`TextEmbedder`] that honours [`TextEmbedder::prefetch`]: prefetched
/// texts are embedded in batches and served from memory until the next prefetch (which
/// replaces them, so memory is bounded by one prefetch).
pub struct PrefetchingTransformer {
    model: TransformerEmbedder,
    ready: parking_lot::Mutex<std::collections::HashMap<String, Vec<f32>>>,
}

impl PrefetchingTransformer {
    /// Wraps a loaded transformer.
    pub fn new(model: TransformerEmbedder) -> Self {
        PrefetchingTransformer {
            model,
            ready: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl TextEmbedder for PrefetchingTransformer {
    fn embed(&self, text: &str) -> Vec<f32> {
        if let Some(v) = self.ready.lock().get(text) {
            return v.clone();
        }
        TextEmbedder::embed(&self.model, text)
    }

    fn dim(&self) -> usize {
        self.model.dim()
    }

    fn tier(&self) -> &'static str {
        "transformer"
    }

    fn prefetch(&self, texts: &[&str]) {
        let mut unique: Vec<&str> = texts.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut ready = std::collections::HashMap::with_capacity(unique.len());
        match self.model.embed(&unique) {
            Ok(vectors) => {
                for (t, v) in unique.iter().zip(vectors) {
                    ready.insert((*t).to_string(), v);
                }
            }
            Err(e) => tracing::warn!(error = %e, "batched embedding failed; embedding one by one"),
        }
        *self.ready.lock() = ready;
    }
}

impl TextEmbedder for TransformerEmbedder {
    fn embed(&self, text: &str) -> Vec<f32> {
        match TransformerEmbedder::embed(self, &[text]) {
            Ok(mut v) if !v.is_empty() => v.swap_remove(0),
            Ok(_) => vec![0.0; self.dim()],
            Err(e) => {
                tracing::warn!(error = %e, "transformer embedding failed");
                vec![0.0; self.dim()]
            }
        }
    }

    fn dim(&self) -> usize {
        TransformerEmbedder::dim(self)
    }

    fn tier(&self) -> &'static str {
        "transformer"
    }
}

/// Errors loading an embedding tier.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error("{0}")]
    Other(String),
}

/// Where the static table for `files` is cached: next to the model if writable, else the
/// state dir, else the user's cache dir.
pub fn table_cache_path(files: &ModelFiles, state_dir: Option<&Path>) -> PathBuf {
    let name = "semtap-static-table.bin";
    let beside = files.dir.join(name);
    let writable = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(files.dir.join(".semtap-write-test"))
        .map(|_| {
            let _ = std::fs::remove_file(files.dir.join(".semtap-write-test"));
        })
        .is_ok();
    if writable {
        return beside;
    }
    if let Some(d) = state_dir {
        return d.join(name);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("semtap").join(name)
}

/// SHA-256 of the model weights, which the table cache is keyed on.
pub fn weights_hash(files: &ModelFiles) -> Result<String, LoadError> {
    Ok(model::sha256_file(&files.weights, false)?)
}

/// Loads the transformer tier.
pub fn transformer(
    files: &ModelFiles,
    device: &str,
    max_tokens: usize,
) -> Result<TransformerEmbedder, LoadError> {
    let device = DeviceChoice::parse(device).map_err(|e| LoadError::Other(e.to_string()))?;
    TransformerEmbedder::load(files, device, max_tokens)
        .map_err(|e| LoadError::Other(e.to_string()))
}

/// Loads the static tier, distilling and caching the table if needed (tens of seconds on a
/// small CPU, once per model). `progress(done, total)` reports distillation.
pub fn static_tier(
    files: &ModelFiles,
    device: &str,
    max_tokens: usize,
    state_dir: Option<&Path>,
    mut progress: impl FnMut(usize, usize),
) -> Result<StaticEmbedder, LoadError> {
    let tokenizer = WordPiece::from_tokenizer_json(&files.tokenizer)
        .map_err(|e| LoadError::Other(format!("tokenizer: {e}")))?;
    let hash = weights_hash(files)?;
    let cache = table_cache_path(files, state_dir);
    if let Ok(Some(table)) = StaticTable::load(&cache, &hash) {
        tracing::info!(path = %cache.display(), "static tier table loaded from cache");
        return Ok(StaticEmbedder::new(tokenizer, table, max_tokens));
    }
    tracing::info!("distilling the static tier table from the transformer (once per model)");
    let encoder = transformer(files, device, max_tokens)?;
    let specials = tokenizer.special_ids();
    let table = distill(
        &encoder,
        tokenizer.vocab_size(),
        &specials,
        tokenizer.cls_id(),
        tokenizer.sep_id(),
        DistillOptions::default(),
        &mut progress,
    )
    .map_err(|e| LoadError::Other(format!("distillation: {e}")))?;
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = table.save(&cache, &hash) {
        tracing::warn!(error = %e, path = %cache.display(), "could not cache the static table");
    }
    Ok(StaticEmbedder::new(tokenizer, table, max_tokens))
}

/// Loads the transformer and starts the live transformer tier on it. A failure leaves the
/// static tier running and says so in health.
fn start_transformer_tier(
    cfg: &SemanticConfig,
    files: &ModelFiles,
    sink: &SemanticSink,
    health: &Health,
) {
    let loaded = transformer(files, &cfg.device, cfg.max_tokens)
        .map(|t| t.with_max_batch(cfg.review.max_batch));
    let t = match loaded {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "live transformer tier unavailable; static tier only");
            health.set(
                "semantic",
                "ok",
                format!("static tier ready; transformer tier unavailable: {e}"),
            );
            return;
        }
    };
    let device = t.device_name();
    let mut review = cfg.review.clone();
    // A GPU has the capacity for every answer; a CPU core manages a few dozen a second.
    review.sample = cfg
        .transformer_sample
        .unwrap_or(if device == "cpu" { 0.02 } else { 1.0 });
    review.baseline_size = cfg.engine.baseline_size;
    review.max_keys = cfg.engine.max_keys;
    review.alpha = cfg.engine.alpha;
    if let Err(e) = sink.start_reviewer(review, Arc::new(t)) {
        tracing::warn!(error = %e, "cannot start the live transformer tier");
    }
}

/// Resolves and loads the static tier on a thread of its own, then switches the live engine
/// onto it. Until then (or if it fails) the engine runs degraded and health says why.
pub fn load_in_background(
    cfg: &SemanticConfig,
    state_dir: Option<PathBuf>,
    sink: Arc<SemanticSink>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) {
    let cfg = cfg.clone();
    health.set("semantic", "degraded", "loading the model");
    metrics.gauge("semtap.semantic.degraded", &[]).set(1.0);
    let spawned = std::thread::Builder::new().name("semtap-model".into()).spawn(move || {
        crate::priority::background_thread();
        let files = match model::resolve(&cfg.model, cfg.model_dir.as_deref()) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "semantic engine degraded: model not found; cheap checks only");
                health.set("semantic", "degraded", format!("model not found: {e}"));
                return;
            }
        };
        match static_tier(&files, &cfg.device, cfg.max_tokens, state_dir.as_deref(), |_, _| {}) {
            Ok(e) => {
                tracing::info!(model = %files.dir.display(), "semantic engine: static tier ready");
                sink.set_embedder(Arc::new(e));
                if cfg.transformer {
                    start_transformer_tier(&cfg, &files, &sink, &health);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "semantic engine degraded: cannot load the model; cheap checks only");
                health.set("semantic", "degraded", format!("cannot load the model: {e}"));
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the model loader");
    }
}
