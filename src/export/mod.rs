//! Export: OTLP traces, metrics and logs. Spans and incident logs are built on the analysis
//! thread and handed to one exporter thread through a bounded queue (full: dropped and
//! counted; the tap never waits); metrics are read from the tap's own snapshots on a timer.
//! The exporter thread runs its own small tokio runtime, so a slow or dead collector costs
//! one thread and a bounded queue, never the proxy's runtime.

pub mod config;
pub mod metrics;
pub mod resource;
pub mod spans;
pub mod transport;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLoggerProvider};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use self::config::{OtlpConfig, Protocol, SignalTarget};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::pipeline::RecordSink;
use crate::record::{ExchangeRecord, TraceIndex};
use crate::semantic::engine::Analysis;
use crate::semantic::incidents::{IncidentEvent, Severity as IncidentSeverity};
use crate::semantic::live::AnalysisSink;
use crate::semantic::review::Review;
use crate::tap::body::BoxError;

/// Errors starting the exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTLP {signal} exporter for {endpoint}: {reason}")]
    Build {
        signal: &'static str,
        endpoint: String,
        reason: String,
    },
    #[error("cannot start the exporter thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Exchanges with an app `traceparent` remembered for linking incident logs (bounded).
const TRACE_MEMORY: usize = 8192;

enum Item {
    Span(Box<SpanData>),
    Log(Box<SdkLogRecord>),
}

/// The OTLP exporter: a record/analysis sink whose output leaves on its own thread.
pub struct OtlpExporter {
    tx: mpsc::Sender<Item>,
    cfg: OtlpConfig,
    counters: Counters,
    scope: InstrumentationScope,
    logger: Option<opentelemetry_sdk::logs::SdkLogger>,
    _logger_provider: Option<SdkLoggerProvider>,
    traces: Mutex<TraceIndex>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Closed when the exporter thread ends.
    finished: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

const TRACES: usize = 0;
const METRICS: usize = 1;
const LOGS: usize = 2;
const SIGNALS: [&str; 3] = ["traces", "metrics", "logs"];

/// The exporter's own metric handles, looked up once: a lookup by name takes the metric
/// registry's lock, and spans are queued once per exchange.
#[derive(Clone)]
struct Counters {
    queue_depth: Gauge,
    queue_full: [Counter; 3],
    failed: [Counter; 3],
    exported: [Counter; 3],
}

impl Counters {
    fn new(m: &Metrics) -> Counters {
        let by = |name: &str, reason: Option<&str>| {
            SIGNALS.map(|signal| match reason {
                Some(r) => m.counter(name, &[("signal", signal), ("reason", r)]),
                None => m.counter(name, &[("signal", signal)]),
            })
        };
        Counters {
            queue_depth: m.gauge("semtap.export.queue_depth", &[]),
            queue_full: by("semtap.export.dropped", Some("queue_full")),
            failed: by("semtap.export.dropped", Some("export_failed")),
            exported: by("semtap.export.exported", None),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl OtlpExporter {
    /// Starts the exporter thread. Fails only on configuration the OTLP exporters refuse;
    /// an unreachable collector is not an error (data is retried, then dropped and counted).
    pub fn start(cfg: OtlpConfig, metrics: Arc<Metrics>) -> Result<Arc<OtlpExporter>, ExportError> {
        let attrs = resource::attributes(&cfg, &|k| std::env::var(k).ok());
        let sdk_resource = resource::sdk_resource(&attrs);
        let proto_resource = metrics::proto_resource(&attrs);
        let scope = InstrumentationScope::builder("semtap")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (finished_tx, finished_rx) = std::sync::mpsc::channel::<()>();
        let counters = Counters::new(&metrics);
        let logger_provider = cfg.logs.as_ref().map(|_| {
            SdkLoggerProvider::builder()
                .with_resource(sdk_resource.clone())
                .build()
        });
        let logger = logger_provider.as_ref().map(|p| p.logger("semtap"));
        {
            let cfg = cfg.clone();
            let counters = counters.clone();
            let scope = scope.clone();
            std::thread::Builder::new()
                .name("semtap-otlp".into())
                .spawn(move || {
                    crate::priority::background_thread();
                    let _finished = finished_tx;
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(ExportError::Thread(e)));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let sinks = match Sinks::build(&cfg, &sdk_resource) {
                            Ok(s) => {
                                let _ = ready_tx.send(Ok(()));
                                s
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        let worker = Worker {
                            cfg,
                            metrics,
                            counters,
                            scope,
                            proto_resource,
                            sinks,
                            encoder: None,
                        };
                        worker.run(rx, stop_rx).await;
                    });
                })?;
        }
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ExportError::Thread(std::io::Error::other(
                    "exporter thread ended during start",
                )))
            }
        }
        tracing::info!(
            traces = cfg.traces.as_ref().map(|t| t.endpoint.as_str()),
            metrics = cfg.metrics.as_ref().map(|t| t.endpoint.as_str()),
            logs = cfg.logs.as_ref().map(|t| t.endpoint.as_str()),
            "OTLP export on"
        );
        Ok(Arc::new(OtlpExporter {
            tx,
            cfg,
            counters,
            scope,
            logger,
            _logger_provider: logger_provider,
            traces: Mutex::new(TraceIndex::new(TRACE_MEMORY)),
            stop: Mutex::new(Some(stop_tx)),
            finished: Mutex::new(Some(finished_rx)),
        }))
    }

    fn enqueue(&self, item: Item, signal: usize) {
        if self.tx.try_send(item).is_err() {
            self.counters.queue_full[signal].inc();
        }
    }

    fn span(&self, record: &ExchangeRecord, analysis: Option<&Analysis>) {
        if self.logger.is_some() && record.traceparent.is_some() {
            self.traces.lock().remember(record);
        }
        if self.cfg.traces.is_none() {
            return;
        }
        if record.traceparent.as_ref().is_some_and(|t| !t.sampled) {
            // Parent-based sampling, as every OTel SDK does by default.
            return;
        }
        let opts = spans::SpanOptions {
            capture_content: self.cfg.capture_content,
            content_max_bytes: self.cfg.content_max_bytes,
        };
        let data = spans::build(record, analysis, opts, &self.scope);
        self.enqueue(Item::Span(Box::new(data)), TRACES);
    }

    /// Final flush (metrics included), then stops the thread; waits up to `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(());
        }
        if let Some(finished) = self.finished.lock().take() {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(timeout)
            {
                tracing::warn!("OTLP exporter still busy at shutdown; leaving it");
            }
        }
    }
}

impl RecordSink for OtlpExporter {
    fn accept(&self, record: &Arc<ExchangeRecord>) {
        self.span(record, None);
    }
}

impl AnalysisSink for OtlpExporter {
    fn on_analysis(&self, record: &ExchangeRecord, analysis: &Analysis) {
        self.span(record, Some(analysis));
    }

    fn on_review(&self, record: &ExchangeRecord, review: &Review) {
        self.review_log(record, review);
    }

    fn on_incident(&self, event: &IncidentEvent) {
        let Some(logger) = &self.logger else {
            return;
        };
        let i = &event.incident;
        let (trace, span) = self.traces.lock().ids_of(&event.exchange_id);
        let mut r = logger.create_log_record();
        let ts = UNIX_EPOCH + Duration::from_millis(event.ts_ms);
        r.set_timestamp(ts);
        r.set_observed_timestamp(SystemTime::now());
        let opened = event.state == "opened";
        let (sev, text) = match (opened, i.severity) {
            (true, IncidentSeverity::Critical) => (Severity::Error, "ERROR"),
            (true, IncidentSeverity::Warning) => (Severity::Warn, "WARN"),
            (false, _) => (Severity::Info, "INFO"),
        };
        r.set_severity_number(sev);
        r.set_severity_text(text);
        r.set_event_name(if opened {
            "semtap.incident.opened"
        } else {
            "semtap.incident.resolved"
        });
        r.set_body(AnyValue::from(format!(
            "incident {} {}: {} on {} ({} = {:.4}, threshold {:.4})",
            i.id,
            event.state,
            i.kind.as_str(),
            i.key,
            i.evidence.monitor,
            i.evidence.score,
            i.evidence.threshold
        )));
        r.add_attribute("semtap.incident.id", i.id.clone());
        r.add_attribute("semtap.incident.state", event.state);
        r.add_attribute("semtap.incident.kind", i.kind.as_str());
        r.add_attribute("semtap.incident.key", i.key.clone());
        r.add_attribute(
            "semtap.incident.severity",
            match i.severity {
                IncidentSeverity::Critical => "critical",
                IncidentSeverity::Warning => "warning",
            },
        );
        r.add_attribute("semtap.incident.monitor", i.evidence.monitor.clone());
        r.add_attribute("semtap.incident.score", i.evidence.score);
        r.add_attribute("semtap.incident.threshold", i.evidence.threshold);
        r.add_attribute(
            "semtap.incident.window",
            i64::try_from(i.evidence.window).unwrap_or(i64::MAX),
        );
        r.add_attribute("semtap.incident.opened_by", i.exchange_id.clone());
        r.add_attribute("semtap.exchange.id", event.exchange_id.clone());
        if !i.evidence.detail.is_empty() {
            r.add_attribute("semtap.incident.detail", i.evidence.detail.clone());
        }
        if let (Ok(t), Ok(s)) = (TraceId::from_hex(&trace), SpanId::from_hex(&span)) {
            r.set_trace_context(t, s, Some(TraceFlags::SAMPLED));
        }
        self.enqueue(Item::Log(Box::new(r)), LOGS);
    }
}

impl OtlpExporter {
    /// The transformer tier's verdict as a log record in the exchange's trace (linked to its
    /// span), so a trace view shows the second opinion next to the call it is about.
    fn review_log(&self, record: &ExchangeRecord, review: &Review) {
        let Some(logger) = &self.logger else {
            return;
        };
        let (trace, span) = self.traces.lock().ids_of(&review.exchange_id);
        let mut r = logger.create_log_record();
        r.set_timestamp(UNIX_EPOCH + Duration::from_millis(review.ts_ms));
        r.set_observed_timestamp(SystemTime::now());
        let anomalous = !review.flags.is_empty();
        r.set_severity_number(if anomalous {
            Severity::Warn
        } else {
            Severity::Info
        });
        r.set_severity_text(if anomalous { "WARN" } else { "INFO" });
        r.set_event_name("semtap.transformer.verdict");
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(",")
            }
        };
        r.set_body(AnyValue::from(format!(
            "transformer verdict on {} ({}): flags {}; confirmed {}; cleared {}",
            review.exchange_id,
            review.reason,
            list(&review.flags),
            list(&review.confirmed),
            list(&review.cleared)
        )));
        r.add_attribute("semtap.exchange.id", review.exchange_id.clone());
        r.add_attribute("semtap.key", review.key.clone());
        r.add_attribute("semtap.review.reason", review.reason);
        r.add_attribute("semtap.review.warming_up", review.warming_up);
        r.add_attribute(
            "semtap.review.lag_ms",
            i64::try_from(review.lag_ms).unwrap_or(i64::MAX),
        );
        let strs = |v: &[&'static str]| {
            AnyValue::ListAny(Box::new(v.iter().map(|f| AnyValue::from(*f)).collect()))
        };
        r.add_attribute("semtap.review.flags", strs(&review.flags));
        r.add_attribute("semtap.review.static_flags", strs(&review.static_flags));
        r.add_attribute("semtap.review.confirmed", strs(&review.confirmed));
        r.add_attribute("semtap.review.cleared", strs(&review.cleared));
        for (name, score) in &review.scores {
            r.add_attribute(format!("semtap.review.score.{name}"), *score);
        }
        if let Some(m) = record.request_model.as_deref() {
            r.add_attribute("gen_ai.request.model", m.to_string());
        }
        r.add_attribute("gen_ai.provider.name", record.provider.as_str());
        if let (Ok(t), Ok(s)) = (TraceId::from_hex(&trace), SpanId::from_hex(&span)) {
            r.set_trace_context(t, s, Some(TraceFlags::SAMPLED));
        }
        self.enqueue(Item::Log(Box::new(r)), LOGS);
    }
}

/// The per-signal senders, built inside the exporter's runtime.
struct Sinks {
    spans: Option<opentelemetry_otlp::SpanExporter>,
    logs: Option<opentelemetry_otlp::LogExporter>,
    metrics: Option<MetricsSender>,
}

enum MetricsSender {
    Grpc(
        MetricsServiceClient<tonic::transport::Channel>,
        SignalTarget,
    ),
    Http(transport::OtlpHttpClient, SignalTarget),
}

fn build_err(signal: &'static str, t: &SignalTarget, e: impl std::fmt::Display) -> ExportError {
    ExportError::Build {
        signal,
        endpoint: t.endpoint.clone(),
        reason: e.to_string(),
    }
}

/// Builds one of the OTLP crate's exporters (their builders share method names, not a trait)
/// for `target`, over our tonic channel or our hyper client, with the resource set.
macro_rules! otlp_exporter {
    ($kind:ident, $t:expr, $signal:expr, $resource:expr) => {{
        let t: &SignalTarget = $t;
        let mut e = match t.protocol {
            Protocol::Grpc => opentelemetry_otlp::$kind::builder()
                .with_tonic()
                .with_channel(transport::grpc_channel(t).map_err(|e| build_err($signal, t, e))?)
                .with_metadata(transport::metadata(t))
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::$kind::builder()
                .with_http()
                .with_http_client(
                    transport::OtlpHttpClient::new(t.timeout)
                        .map_err(|e| build_err($signal, t, e))?,
                )
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(t.endpoint.clone())
                .with_timeout(t.timeout)
                .with_headers(t.headers.iter().cloned().collect())
                .build(),
        }
        .map_err(|e| build_err($signal, t, e))?;
        e.set_resource($resource);
        e
    }};
}

impl Sinks {
    fn build(
        cfg: &OtlpConfig,
        resource: &opentelemetry_sdk::Resource,
    ) -> Result<Sinks, ExportError> {
        let spans = match &cfg.traces {
            None => None,
            Some(t) => Some(otlp_exporter!(SpanExporter, t, "traces", resource)),
        };
        let logs = match &cfg.logs {
            None => None,
            Some(t) => Some(otlp_exporter!(LogExporter, t, "logs", resource)),
        };
        let metrics = match &cfg.metrics {
            None => None,
            Some(t) => Some(match t.protocol {
                Protocol::Grpc => MetricsSender::Grpc(
                    MetricsServiceClient::new(
                        transport::grpc_channel(t).map_err(|e| build_err("metrics", t, e))?,
                    ),
                    t.clone(),
                ),
                Protocol::HttpProtobuf => MetricsSender::Http(
                    transport::OtlpHttpClient::new(t.timeout)
                        .map_err(|e| build_err("metrics", t, e))?,
                    t.clone(),
                ),
            }),
        };
        Ok(Sinks {
            spans,
            logs,
            metrics,
        })
    }
}

struct Worker {
    cfg: OtlpConfig,
    metrics: Arc<Metrics>,
    counters: Counters,
    scope: InstrumentationScope,
    proto_resource: opentelemetry_proto::tonic::resource::v1::Resource,
    sinks: Sinks,
    encoder: Option<metrics::MetricsEncoder>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>, mut stop: oneshot::Receiver<()>) {
        let start_ns = now_ns();
        self.encoder = Some(metrics::MetricsEncoder::new(
            self.cfg.temporality,
            self.cfg.histograms,
            start_ns,
        ));
        let mut spans: Vec<SpanData> = Vec::new();
        let mut logs: Vec<SdkLogRecord> = Vec::new();
        let mut metric_tick = tokio::time::interval(self.cfg.metric_interval);
        metric_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        metric_tick.tick().await;
        let mut batch_tick = tokio::time::interval(self.cfg.batch_delay);
        batch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(Item::Span(s)) => {
                        spans.push(*s);
                        if spans.len() >= self.cfg.batch_size {
                            self.send_spans(&mut spans).await;
                        }
                    }
                    Some(Item::Log(l)) => {
                        logs.push(*l);
                        if logs.len() >= self.cfg.batch_size {
                            self.send_logs(&mut logs).await;
                        }
                    }
                    None => break,
                },
                _ = batch_tick.tick() => {
                    self.send_spans(&mut spans).await;
                    self.send_logs(&mut logs).await;
                }
                _ = metric_tick.tick() => self.send_metrics().await,
                _ = &mut stop => break,
            }
            self.counters.queue_depth.set(rx.len() as f64);
        }
        // Drain what is queued, then one last collection.
        while let Ok(item) = rx.try_recv() {
            match item {
                Item::Span(s) => spans.push(*s),
                Item::Log(l) => logs.push(*l),
            }
        }
        self.send_spans(&mut spans).await;
        self.send_logs(&mut logs).await;
        self.send_metrics().await;
    }

    fn count(&self, signal: usize, n: usize, result: &Result<(), BoxError>) {
        match result {
            Ok(()) => self.counters.exported[signal].add(n as u64),
            Err(e) => {
                self.counters.failed[signal].add(n as u64);
                tracing::warn!(signal = SIGNALS[signal], items = n, error = %e, "OTLP export failed; items dropped");
            }
        }
    }

    /// Runs one export with the signal's timeout (plus margin for the exporter's own retries).
    async fn bounded<F: std::future::Future<Output = Result<(), BoxError>>>(
        timeout: Duration,
        fut: F,
    ) -> Result<(), BoxError> {
        match tokio::time::timeout(timeout * 3, fut).await {
            Ok(r) => r,
            Err(_) => Err("export timed out".into()),
        }
    }

    async fn send_spans(&self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let items = std::mem::take(batch);
        let n = items.len();
        let (Some(e), Some(t)) = (&self.sinks.spans, &self.cfg.traces) else {
            return;
        };
        let r = Self::bounded(t.timeout, async {
            e.export(items)
                .await
                .map_err(|e| -> BoxError { e.to_string().into() })
        })
        .await;
        self.count(TRACES, n, &r);
    }

    async fn send_logs(&self, batch: &mut Vec<SdkLogRecord>) {
        if batch.is_empty() {
            return;
        }
        let items = std::mem::take(batch);
        let n = items.len();
        let (Some(e), Some(t)) = (&self.sinks.logs, &self.cfg.logs) else {
            return;
        };
        let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            items.iter().map(|r| (r, &self.scope)).collect();
        let r = Self::bounded(t.timeout, async {
            e.export(LogBatch::new(&pairs))
                .await
                .map_err(|e| -> BoxError { e.to_string().into() })
        })
        .await;
        self.count(LOGS, n, &r);
    }

    async fn send_metrics(&mut self) {
        let Some(sender) = &self.sinks.metrics else {
            return;
        };
        let Some(encoder) = self.encoder.as_mut() else {
            return;
        };
        let families = self.metrics.snapshot_detailed(encoder.wants_values());
        let scope = opentelemetry_proto::tonic::common::v1::InstrumentationScope {
            name: "semtap".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let req = encoder.encode(&families, &self.proto_resource, &scope, now_ns());
        let n = families.len();
        let r = match sender {
            MetricsSender::Grpc(client, t) => {
                let mut client = client.clone();
                let mut request = tonic::Request::new(req);
                *request.metadata_mut() = transport::metadata(t);
                Self::bounded(t.timeout, async move {
                    client
                        .export(request)
                        .await
                        .map(|_| ())
                        .map_err(|e| -> BoxError { format!("{} {}", e.code(), e.message()).into() })
                })
                .await
            }
            MetricsSender::Http(client, t) => {
                Self::bounded(t.timeout, client.post_protobuf(t, req.encode_to_vec())).await
            }
        };
        self.count(METRICS, n, &r);
    }
}
