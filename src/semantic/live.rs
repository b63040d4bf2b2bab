//! The engine on live traffic: a record sink with its own thread and bounded queue (records
//! are dropped and counted when it falls behind; the tap never waits), the model loaded in the
//! background (the engine runs degraded, cheap checks only, until it is ready), baselines saved
//! to the state dir and reloaded on start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::engine::{Analysis, Engine, EngineConfig};
use super::incidents::IncidentEvent;
use super::review::{BatchEmbedder, Review, ReviewConfig, Reviewer};
use super::TextEmbedder;
use crate::admin::Health;
use crate::metrics::Metrics;
use crate::pipeline::poll::Backoff;
use crate::pipeline::RecordSink;
use crate::record::ExchangeRecord;

/// Consumers of the engine's conclusions (exporters, webhooks, the demo, tests).
pub trait AnalysisSink: Send + Sync {
    /// One analysed exchange.
    fn on_analysis(&self, record: &ExchangeRecord, analysis: &Analysis);
    /// An incident opened or resolved.
    fn on_incident(&self, event: &IncidentEvent);
    /// The live transformer tier's later verdict on an exchange (sampled or flagged).
    fn on_review(&self, _record: &ExchangeRecord, _review: &Review) {}
}

/// How often baselines are written to the state dir.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// The live engine.
pub struct SemanticSink {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    /// Records queued and not yet taken by the engine thread.
    depth: Arc<AtomicU64>,
    /// `semtap.records_dropped{reason="semantic_queue_full"}`, looked up once.
    dropped_counter: crate::metrics::Counter,
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<Metrics>,
    sinks: Vec<Arc<dyn AnalysisSink>>,
}

enum Msg {
    Record(Arc<ExchangeRecord>),
    Embedder(Arc<dyn TextEmbedder>),
    Reviewer(Box<Reviewer>),
    Flush(SyncSender<()>),
    Reset(String, SyncSender<Option<usize>>),
}

/// Where the engine keeps its state.
pub fn baselines_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("baselines.json")
}

impl SemanticSink {
    /// Starts the engine thread. `state_dir` (if any) holds the saved baselines.
    pub fn start(
        cfg: EngineConfig,
        queue: usize,
        state_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        sinks: Vec<Arc<dyn AnalysisSink>>,
    ) -> std::io::Result<Arc<SemanticSink>> {
        let prefix = format!("{:08x}", rand::random::<u32>());
        let engine = Arc::new(Mutex::new(Engine::new(cfg, None, &prefix)));
        let (tx, rx) = mpsc::sync_channel(queue);
        let depth = Arc::new(AtomicU64::new(0));
        // The thread ends (saving the baselines) when the last sender, this sink, is dropped.
        {
            let engine = engine.clone();
            let metrics = metrics.clone();
            let depth = depth.clone();
            let sinks = sinks.clone();
            std::thread::Builder::new()
                .name("semtap-semantic".into())
                .spawn(move || {
                    crate::priority::idle_thread();
                    run(rx, engine, metrics, health, sinks, state_dir, depth)
                })?;
        }
        Ok(Arc::new(SemanticSink {
            tx,
            dropped: AtomicU64::new(0),
            depth,
            dropped_counter: metrics.counter(
                "semtap.records_dropped",
                &[("reason", "semantic_queue_full")],
            ),
            engine,
            metrics,
            sinks,
        }))
    }

    /// Switches on embedding-based analysis once the model is ready.
    pub fn set_embedder(&self, e: Arc<dyn TextEmbedder>) {
        // Blocking send: this happens once, and must not be dropped.
        let _ = self.tx.send(Msg::Embedder(e));
    }

    /// Starts the live transformer tier on `embedder`: the engine thread offers it every
    /// analysed exchange from now on.
    pub fn start_reviewer(
        &self,
        cfg: ReviewConfig,
        embedder: Arc<dyn BatchEmbedder>,
    ) -> std::io::Result<()> {
        let r = Reviewer::start(
            cfg,
            embedder,
            self.engine.clone(),
            self.metrics.clone(),
            self.sinks.clone(),
        )?;
        let _ = self.tx.send(Msg::Reviewer(Box::new(r)));
        Ok(())
    }

    /// The engine, for the admin API (pin, reset, list).
    pub fn engine(&self) -> Arc<Mutex<Engine>> {
        self.engine.clone()
    }

    /// Starts `key`'s baseline over on the engine thread (so the incidents it resolves are
    /// published like any other). `None` if the key is unknown.
    pub fn reset(&self, key: &str) -> Option<usize> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(Msg::Reset(key.to_string(), tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok().flatten()
    }

    /// Records dropped because the engine fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl RecordSink for SemanticSink {
    fn accept(&self, record: &Arc<ExchangeRecord>) {
        // Counted before the send so the engine thread never decrements below zero.
        self.depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Msg::Record(record.clone())).is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_counter.inc();
        }
    }

    fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn run(
    rx: Receiver<Msg>,
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    sinks: Vec<Arc<dyn AnalysisSink>>,
    state_dir: Option<PathBuf>,
    depth: Arc<AtomicU64>,
) {
    let path = state_dir.as_deref().map(baselines_path);
    let mut last_save = Instant::now();
    let mut dirty = false;
    let mut tier: Option<&'static str> = None;
    let mut reviewer: Option<Box<Reviewer>> = None;
    // Metric handles looked up once, not per record (a lookup takes the registry's lock).
    let lag = metrics.histogram("semtap.semantic.lag", &[]);
    let queue_depth = metrics.gauge("semtap.semantic.queue_depth", &[]);
    let mut embeddings: Option<crate::metrics::Counter> = None;
    let mut drift_gauges: std::collections::HashMap<String, crate::metrics::Gauge> =
        std::collections::HashMap::new();
    let save = |engine: &Engine| {
        // Without a model there is nothing worth keeping, and writing would replace the
        // baselines a previous run learned with one.
        if engine.tier().is_none() {
            return;
        }
        if let Some(p) = &path {
            if let Err(e) = engine.save(p) {
                tracing::warn!(error = %e, path = %p.display(), "could not save baselines");
            }
        }
    };
    // Polled, not blocked on: the analysis thread's `try_send` never has to wake this one.
    let mut backoff = Backoff::new();
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => {
                backoff.reset();
                Some(m)
            }
            Err(TryRecvError::Empty) => {
                backoff.idle();
                None
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match msg {
            Some(Msg::Record(rec)) => {
                let left = depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                queue_depth.set(left as f64);
                let (analysis, events) = engine.lock().process(&rec);
                // From the exchange's end to its analysis: what queueing behind the engine costs.
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                if rec.end_ts_ms > 0 && now_ms >= rec.end_ts_ms {
                    lag.record((now_ms - rec.end_ts_ms) as f64 / 1000.0);
                }
                if let (Some(tier), n) = (tier, analysis.embedded) {
                    if n > 0 {
                        embeddings
                            .get_or_insert_with(|| {
                                metrics.counter("semtap.embeddings", &[("tier", tier)])
                            })
                            .add(u64::from(n));
                    }
                }
                // A gauge per baseline key, cached up to a bound (keys past the engine's
                // max_keys still get a lookup, not a cache entry).
                match drift_gauges.get(analysis.key.as_str()) {
                    Some(g) => g.set(analysis.drift),
                    None => {
                        let g = metrics.gauge(
                            "semtap.drift.score",
                            &[("semtap.key", analysis.key.as_str())],
                        );
                        g.set(analysis.drift);
                        if drift_gauges.len() < DRIFT_GAUGES_CACHED {
                            drift_gauges.insert(analysis.key.clone(), g);
                        }
                    }
                }
                dirty = true;
                publish(&metrics, &sinks, &rec, &analysis, &events);
                if let Some(r) = &reviewer {
                    r.offer(&rec, &analysis);
                }
            }
            Some(Msg::Reviewer(r)) => {
                health.set(
                    "semantic",
                    "ok",
                    format!("{} tier ready; {}", e_tier(tier), r.describe()),
                );
                reviewer = Some(r);
            }
            Some(Msg::Embedder(e)) => {
                tier = Some(e.tier());
                embeddings = None;
                let mut eng = engine.lock();
                eng.set_embedder(e);
                if let Some(p) = &path {
                    match eng.load(p) {
                        Ok(n) if n > 0 => {
                            tracing::info!(keys = n, "baselines reloaded from the state dir")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "saved baselines unreadable; relearning")
                        }
                    }
                }
                health.set("semantic", "ok", format!("{} tier ready", e_tier(tier)));
                metrics.gauge("semtap.semantic.degraded", &[]).set(0.0);
            }
            Some(Msg::Reset(key, done)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let events = engine.lock().reset(&key, now);
                if let Some(events) = &events {
                    tracing::info!(key = %key, resolved = events.len(), "baseline reset over the admin API");
                    for ev in events {
                        publish_incident(&metrics, &sinks, ev);
                    }
                    dirty = true;
                }
                let _ = done.send(events.map(|e| e.len()));
            }
            Some(Msg::Flush(done)) => {
                if let Some(r) = &reviewer {
                    r.flush(Duration::from_secs(30));
                }
                save(&engine.lock());
                let _ = done.send(());
            }
            None => {}
        }
        if dirty && last_save.elapsed() >= SAVE_EVERY {
            save(&engine.lock());
            last_save = Instant::now();
            dirty = false;
        }
    }
    save(&engine.lock());
}

/// Drift-score gauge handles the engine thread keeps (one per key).
const DRIFT_GAUGES_CACHED: usize = 1024;

fn e_tier(t: Option<&'static str>) -> &'static str {
    t.unwrap_or("no")
}

fn publish(
    metrics: &Metrics,
    sinks: &[Arc<dyn AnalysisSink>],
    rec: &ExchangeRecord,
    analysis: &Analysis,
    events: &[IncidentEvent],
) {
    for f in &analysis.flags {
        metrics
            .counter(
                "semtap.flags",
                &[
                    ("flag", f),
                    ("gen_ai.provider.name", rec.provider.as_str()),
                    ("semtap.listener", rec.listener.as_str()),
                ],
            )
            .inc();
    }
    for ev in events {
        publish_incident(metrics, &[], ev);
    }
    for s in sinks {
        s.on_analysis(rec, analysis);
        for ev in events {
            s.on_incident(ev);
        }
    }
}

/// Logs, counts and hands an incident change to the sinks.
pub(crate) fn publish_incident(
    metrics: &Metrics,
    sinks: &[Arc<dyn AnalysisSink>],
    ev: &IncidentEvent,
) {
    {
        let i = &ev.incident;
        match ev.state {
            "opened" => tracing::warn!(
                incident = %i.id, kind = i.kind.as_str(), key = %i.key, severity = ?i.severity,
                monitor = %i.evidence.monitor, score = i.evidence.score, threshold = i.evidence.threshold,
                "incident opened"
            ),
            _ => {
                tracing::info!(incident = %i.id, kind = i.kind.as_str(), key = %i.key, "incident resolved")
            }
        }
        let delta = if ev.state == "opened" { 1.0 } else { -1.0 };
        metrics
            .gauge("semtap.incidents.open", &[("kind", i.kind.as_str())])
            .add(delta);
        metrics
            .counter(
                "semtap.incidents",
                &[("kind", i.kind.as_str()), ("state", ev.state)],
            )
            .inc();
    }
    for s in sinks {
        s.on_incident(ev);
    }
}
