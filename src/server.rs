//! Wires the parts together: metrics, the analysis pipeline, the tap's listeners and the
//! admin server, started in that order and stopped in reverse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::admin::{Admin, AdminState, Health};
use crate::alert::Dispatcher;
use crate::config::Config;
use crate::export::OtlpExporter;
use crate::metrics::{Metrics, MetricsOptions};
use crate::pipeline::capture_file::CaptureFileSink;
use crate::pipeline::{Pipeline, RecordSink};
use crate::semantic::live::{AnalysisSink, SemanticSink};
use crate::tap::{Tap, TapError};

/// Errors starting semtap.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("admin server refused: {0}")]
    AdminExposed(String),
    #[error("admin server cannot bind {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("semantic engine: {source}")]
    Semantic { source: std::io::Error },
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error("webhooks: {0}")]
    Webhook(String),
    #[error("capture file {path}: {source}")]
    CaptureFile {
        path: String,
        source: std::io::Error,
    },
}

/// A running semtap.
pub struct Running {
    pub metrics: Arc<Metrics>,
    /// The semantic engine, when enabled.
    pub semantic: Option<Arc<SemanticSink>>,
    pub pipeline: Arc<Pipeline>,
    pub health: Arc<Health>,
    /// The OTLP exporter, when an endpoint is configured.
    pub otlp: Option<Arc<OtlpExporter>>,
    /// Webhook delivery, when receivers are configured.
    pub webhooks: Option<Arc<Dispatcher>>,
    tap: Option<Tap>,
    admin: Option<Admin>,
    listeners: Vec<crate::tap::BoundListener>,
    grace: Duration,
}

impl Running {
    /// Starts everything `cfg` describes. Ready (per `/readyz`) when this returns.
    pub async fn start(cfg: &Config) -> Result<Running, StartError> {
        Self::start_with_sinks(cfg, Vec::new()).await
    }

    /// Like [`Running::start`], with extra record consumers (tests, the demo).
    pub async fn start_with_sinks(
        cfg: &Config,
        sinks: Vec<Arc<dyn RecordSink>>,
    ) -> Result<Running, StartError> {
        Self::start_full(cfg, sinks, Vec::new()).await
    }

    /// Like [`Running::start`], with extra record and analysis consumers.
    pub async fn start_full(
        cfg: &Config,
        sinks: Vec<Arc<dyn RecordSink>>,
        mut analysis_sinks: Vec<Arc<dyn AnalysisSink>>,
    ) -> Result<Running, StartError> {
        if let Some(problem) = crate::admin::exposure_problem(cfg.admin_listen, &cfg.admin_auth) {
            return Err(StartError::AdminExposed(problem));
        }
        let mut opts = MetricsOptions::from_env();
        opts.max_models = cfg.max_models;
        let metrics = Arc::new(Metrics::new(opts));
        let health = Health::new();
        let pipeline = Pipeline::start(
            cfg.pipeline_queue,
            cfg.limits.decompressed_bytes,
            metrics.clone(),
        );
        for s in sinks {
            pipeline.add_sink(s);
        }
        if let Some(cf) = &cfg.capture_file {
            let sink = CaptureFileSink::start(cf).map_err(|source| StartError::CaptureFile {
                path: cf.path.display().to_string(),
                source,
            })?;
            pipeline.add_sink(sink);
        }
        health.set("pipeline", "ok", "");
        // Spans carry tier-1 verdicts, so with the engine on they are emitted after analysis.
        let otlp = match &cfg.otlp {
            Some(o) => {
                let exporter = OtlpExporter::start(o.clone(), metrics.clone())?;
                if cfg.semantic.enabled {
                    analysis_sinks.push(exporter.clone());
                } else {
                    pipeline.add_sink(exporter.clone());
                }
                health.set("otlp", "ok", "");
                Some(exporter)
            }
            None => None,
        };
        // Webhooks: spooled under <state_dir>/webhooks/<receiver>/ (config validation
        // requires a state dir when webhooks are configured).
        let webhooks = if cfg.webhooks.is_empty() {
            None
        } else {
            let Some(state) = &cfg.state_dir else {
                return Err(StartError::Webhook(
                    "a state_dir is required: undelivered events are spooled there".into(),
                ));
            };
            if !cfg.semantic.enabled {
                tracing::warn!("webhooks are configured but the semantic engine is off: no incidents will be sent");
            }
            let d = Dispatcher::start(&cfg.webhooks, &state.join("webhooks"), metrics.clone())
                .map_err(|e| StartError::Webhook(e.to_string()))?;
            analysis_sinks.push(d.clone());
            health.set(
                "webhooks",
                "ok",
                format!("{} receiver(s)", cfg.webhooks.len()),
            );
            Some(d)
        };
        let semantic = if cfg.semantic.enabled {
            let sink = SemanticSink::start(
                cfg.semantic.engine.clone(),
                cfg.semantic.queue,
                cfg.state_dir.clone(),
                metrics.clone(),
                health.clone(),
                analysis_sinks,
            )
            .map_err(|source| StartError::Semantic { source })?;
            pipeline.add_sink(sink.clone());
            crate::semantic::load::load_in_background(
                &cfg.semantic,
                cfg.state_dir.clone(),
                sink.clone(),
                health.clone(),
                metrics.clone(),
            );
            Some(sink)
        } else {
            health.set("semantic", "ok", "disabled");
            None
        };
        let Some(submitter) = pipeline.submitter() else {
            unreachable_pipeline();
            return Err(StartError::Tap(TapError::Client("pipeline closed".into())));
        };
        let tap = Tap::start(cfg, metrics.clone(), submitter).await?;
        health.set("tap", "ok", "");
        let listeners = tap.listeners.clone();
        let state = Arc::new(AdminState {
            auth: cfg.admin_auth.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            pipeline: pipeline.clone(),
            listeners: Mutex::new(listeners.clone()),
            admin_addr: Mutex::new(None),
            semantic: Mutex::new(semantic.clone()),
        });
        let admin = Admin::start(cfg.admin_listen, state)
            .await
            .map_err(|source| StartError::Admin {
                addr: cfg.admin_listen,
                source,
            })?;
        health.set_ready(true);
        tracing::info!(listeners = listeners.len(), admin = %admin.addr, "semtap ready");
        Ok(Running {
            metrics,
            semantic,
            pipeline,
            health,
            otlp,
            webhooks,
            tap: Some(tap),
            admin: Some(admin),
            listeners,
            grace: cfg.shutdown_grace,
        })
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    /// Bound addresses of all listeners, in config order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// The admin server's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Graceful stop: not ready, stop accepting, let in-flight streams finish up to the
    /// grace period, drain analysis, flush sinks.
    pub async fn shutdown(mut self) {
        self.health.set_ready(false);
        if let Some(tap) = self.tap.take() {
            tap.shutdown(self.grace).await;
        }
        let pipeline = self.pipeline.clone();
        let _ =
            tokio::task::spawn_blocking(move || pipeline.shutdown(Duration::from_secs(5))).await;
        if let Some(otlp) = self.otlp.take() {
            let _ =
                tokio::task::spawn_blocking(move || otlp.shutdown(Duration::from_secs(5))).await;
        }
        if let Some(w) = self.webhooks.take() {
            // In-flight attempts get a moment; the rest stays in the spool for the next start.
            w.shutdown(self.grace.min(Duration::from_secs(5))).await;
        }
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
        tracing::info!("semtap stopped");
    }
}

fn unreachable_pipeline() {
    tracing::error!("analysis pipeline closed before start");
}
