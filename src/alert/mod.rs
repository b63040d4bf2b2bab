//! Signed webhooks: incidents delivered at least once to each configured receiver.
//!
//! The [`Dispatcher`] is an [`AnalysisSink`]. `on_incident` runs on the engine thread: for
//! each receiver that wants the incident it builds the payload, appends it to that receiver's
//! spool and fsyncs (incidents are rare, deduplicated per monitor and key, so a few
//! milliseconds there are acceptable and nothing is lost once it returns), then wakes the
//! receiver's delivery task. That task (one per receiver, on the tokio runtime) sends the
//! oldest spooled event, signed afresh per attempt, retrying with backoff and jitter behind a
//! circuit breaker, and removes it once delivered. Events reach a receiver in spool order.
//! The payload and signature are documented in `docs/webhooks.md`.

pub mod config;
pub mod deliver;
pub mod payload;
pub mod sign;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

pub use config::{Secret, WebhookConfig};
pub use payload::{event_id, fingerprint, WebhookEvent, SCHEMA};
pub use sign::{signature_header, verify, VerifyError, SIGNATURE_HEADER, TOLERANCE_SECS};

use crate::metrics::{Counter, Gauge, Histogram, HistogramSpec, MetricDesc, Metrics};
use crate::record::{ExchangeRecord, TraceIndex};
use crate::semantic::engine::Analysis;
use crate::semantic::incidents::IncidentEvent;
use crate::semantic::live::AnalysisSink;
use deliver::{Attempt, Backoff, Breaker, WebhookClient};
use spool::{Spool, SpoolEntry};

/// Exchange ids remembered with their `traceparent` trace id, for evidence examples. Records
/// without one need no entry (their trace id is derived from the exchange id).
pub const TRACE_MAP_CAP: usize = 4096;

/// Delivery latency buckets (seconds): a live receiver answers in well under a second; a
/// spooled event may wait through an outage.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
];

/// The webhook metrics.
pub mod desc {
    use super::*;

    pub const DELIVERIES: MetricDesc = MetricDesc::counter(
        "semtap.webhook.deliveries",
        "{attempt}",
        "Webhook delivery attempts by receiver and result (sent, retried, failed).",
    );
    pub const SPOOL_DEPTH: MetricDesc = MetricDesc::gauge(
        "semtap.webhook.spool.depth",
        "{event}",
        "Webhook events spooled and not yet delivered, by receiver.",
    );
    pub const SPOOL_DROPPED: MetricDesc = MetricDesc::counter(
        "semtap.webhook.spool.dropped",
        "{event}",
        "Webhook events dropped undelivered (spool full, or the receiver rejected them for good).",
    );
    pub const DELIVERY_LATENCY: MetricDesc = MetricDesc::histogram(
        "semtap.webhook.delivery_latency",
        "s",
        "Time from the incident event to its successful webhook delivery.",
        HistogramSpec::SECONDS,
        LATENCY_BUCKETS,
    );
    pub const BREAKER: MetricDesc = MetricDesc::gauge(
        "semtap.webhook.breaker",
        "1",
        "Webhook circuit breaker state by receiver: 0 closed, 1 half-open, 2 open.",
    );
}

/// Errors starting the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error(transparent)]
    Client(#[from] deliver::ClientError),
}

struct Receiver {
    cfg: WebhookConfig,
    spool: Mutex<Spool>,
    wake: Notify,
    sent: Counter,
    retried: Counter,
    failed: Counter,
    dropped_full: Counter,
    dropped_rejected: Counter,
    depth: Gauge,
    breaker: Gauge,
    latency: Histogram,
}

impl Receiver {
    fn set_depth(&self, n: usize) {
        self.depth.set(n as f64);
    }

    fn count_dropped(&self, dropped: &[SpoolEntry]) {
        for e in dropped {
            self.dropped_full.inc();
            tracing::warn!(
                receiver = %self.cfg.name, event = %e.id, max = self.cfg.spool_max_events,
                "webhook spool full: dropped the oldest undelivered event"
            );
        }
    }
}

/// Sends incidents to the configured webhook receivers.
pub struct Dispatcher {
    receivers: Vec<Arc<Receiver>>,
    traces: Mutex<TraceIndex>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Where a receiver's spool lives under the webhook directory.
pub fn spool_dir(webhook_dir: &Path, receiver: &str) -> PathBuf {
    webhook_dir.join(receiver)
}

impl Dispatcher {
    /// Opens each receiver's spool under `dir` (`<dir>/<receiver name>/spool.jsonl`) and
    /// starts its delivery task; events left from a previous run are delivered first. Must be
    /// called inside a tokio runtime.
    pub fn start(
        webhooks: &[WebhookConfig],
        dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Dispatcher>, AlertError> {
        for d in [
            desc::DELIVERIES,
            desc::SPOOL_DEPTH,
            desc::SPOOL_DROPPED,
            desc::DELIVERY_LATENCY,
            desc::BREAKER,
        ] {
            metrics.describe(d);
        }
        let client = deliver::build_client()?;
        let mut receivers = Vec::new();
        for cfg in webhooks {
            let (spool, report) = Spool::open(&spool_dir(dir, &cfg.name), cfg.spool_max_events)?;
            let name = cfg.name.as_str();
            let deliveries = |result| {
                metrics.counter(
                    desc::DELIVERIES.name,
                    &[("receiver", name), ("result", result)],
                )
            };
            let r = Arc::new(Receiver {
                sent: deliveries("sent"),
                retried: deliveries("retried"),
                failed: deliveries("failed"),
                dropped_full: metrics.counter(
                    desc::SPOOL_DROPPED.name,
                    &[("receiver", name), ("reason", "spool_full")],
                ),
                dropped_rejected: metrics.counter(
                    desc::SPOOL_DROPPED.name,
                    &[("receiver", name), ("reason", "rejected")],
                ),
                depth: metrics.gauge(desc::SPOOL_DEPTH.name, &[("receiver", name)]),
                breaker: metrics.gauge(desc::BREAKER.name, &[("receiver", name)]),
                latency: metrics.histogram(desc::DELIVERY_LATENCY.name, &[("receiver", name)]),
                spool: Mutex::new(spool),
                wake: Notify::new(),
                cfg: cfg.clone(),
            });
            r.count_dropped(&report.dropped);
            r.set_depth(report.recovered);
            if report.recovered > 0 {
                tracing::info!(receiver = %cfg.name, events = report.recovered, "undelivered webhook events recovered from the spool");
            }
            if cfg.url.scheme_str() == Some("http")
                && !cfg
                    .url
                    .host()
                    .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]")
            {
                tracing::warn!(receiver = %cfg.name, "webhook URL is plain http: payloads travel unencrypted (they are signed)");
            }
            receivers.push(r);
        }
        let (stop, _) = watch::channel(false);
        let tasks = receivers
            .iter()
            .map(|r| tokio::spawn(run_receiver(r.clone(), client.clone(), stop.subscribe())))
            .collect();
        Ok(Arc::new(Dispatcher {
            receivers,
            traces: Mutex::new(TraceIndex::new(TRACE_MAP_CAP)),
            stop,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Events spooled and not yet delivered, over all receivers.
    pub fn pending(&self) -> usize {
        self.receivers.iter().map(|r| r.spool.lock().len()).sum()
    }

    /// Ids of the events waiting for `receiver`, oldest first (`None`: no such receiver).
    pub fn pending_ids(&self, receiver: &str) -> Option<Vec<String>> {
        self.receivers
            .iter()
            .find(|r| r.cfg.name == receiver)
            .map(|r| r.spool.lock().ids())
    }

    /// The trace id for an example exchange.
    fn trace_of(&self, exchange_id: &str) -> String {
        self.traces.lock().ids_of(exchange_id).0
    }

    /// Stops delivery: attempts in flight get up to `grace` to finish, then are abandoned.
    /// Whatever is undelivered stays in the spool for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        let deadline = tokio::time::Instant::now() + grace;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
        let left = self.pending();
        if left > 0 {
            tracing::info!(
                events = left,
                "undelivered webhook events kept in the spool"
            );
        }
    }
}

impl Drop for Dispatcher {
    /// A dispatcher dropped without [`Dispatcher::shutdown`] (e.g. semtap failed to start
    /// after creating it) stops its delivery tasks; the spool keeps what was not delivered.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
    }
}

impl AnalysisSink for Dispatcher {
    fn on_analysis(&self, record: &ExchangeRecord, _analysis: &Analysis) {
        if record.traceparent.is_some() {
            self.traces.lock().remember(record);
        }
    }

    fn on_incident(&self, event: &IncidentEvent) {
        let wanted: Vec<&Arc<Receiver>> = self
            .receivers
            .iter()
            .filter(|r| r.cfg.wants(&event.incident))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let payload = WebhookEvent::from_incident(event, |x| self.trace_of(x));
        let body = match serde_json::to_vec(&payload) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, event = %payload.id, "cannot serialise webhook event");
                return;
            }
        };
        for r in wanted {
            let (dropped, result, depth) = {
                let mut s = r.spool.lock();
                let (dropped, result) = s.push(&payload.id, event.ts_ms, body.clone());
                (dropped, result, s.len())
            };
            if let Err(e) = result {
                tracing::error!(receiver = %r.cfg.name, event = %payload.id, error = %e,
                    "could not write the webhook spool; the event is kept in memory only");
            }
            r.count_dropped(&dropped);
            r.set_depth(depth);
            r.wake.notify_one();
        }
    }
}

/// Waits `d`, or less if asked to stop. Returns false when stopping.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One receiver's delivery loop: oldest event first, until delivered or rejected.
async fn run_receiver(r: Arc<Receiver>, client: WebhookClient, mut stop: watch::Receiver<bool>) {
    let backoff = Backoff {
        initial: r.cfg.backoff_initial,
        max: r.cfg.backoff_max,
    };
    let mut breaker = Breaker::new(r.cfg.breaker_failures, r.cfg.breaker_open);
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let head = r.spool.lock().front();
        let Some(entry) = head else {
            tokio::select! {
                _ = r.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        if let Err(wait) = breaker.allow(Instant::now()) {
            if !pause(wait, &mut stop).await {
                return;
            }
            continue;
        }
        r.breaker.set(breaker.gauge_value());
        let outcome = deliver::attempt(&client, &r.cfg, &entry.id, &entry.body).await;
        let done = match outcome {
            Attempt::Delivered(status) => {
                breaker.on_success();
                r.sent.inc();
                let age = now_ms().saturating_sub(entry.ts_ms) as f64 / 1000.0;
                r.latency.record(age);
                tracing::debug!(receiver = %r.cfg.name, event = %entry.id, status, attempts = failures + 1, "webhook delivered");
                true
            }
            Attempt::Rejected(status) => {
                breaker.on_success();
                r.failed.inc();
                r.dropped_rejected.inc();
                tracing::error!(receiver = %r.cfg.name, event = %entry.id, status,
                    "webhook receiver rejected the event for good; dropped");
                true
            }
            Attempt::Retry(reason) => {
                r.retried.inc();
                let opened = breaker.on_failure(Instant::now());
                r.breaker.set(breaker.gauge_value());
                let wait = backoff.delay(failures);
                failures = failures.saturating_add(1);
                if opened {
                    tracing::warn!(receiver = %r.cfg.name, event = %entry.id, %reason, open_for = ?r.cfg.breaker_open,
                        "webhook delivery failing; circuit breaker open");
                } else {
                    tracing::warn!(receiver = %r.cfg.name, event = %entry.id, %reason, retry_in = ?wait, attempt = failures,
                        "webhook delivery failed; will retry");
                }
                if !pause(wait, &mut stop).await {
                    return;
                }
                false
            }
        };
        if done {
            failures = 0;
            r.breaker.set(breaker.gauge_value());
            let rc = r.clone();
            let seq = entry.seq;
            let res = tokio::task::spawn_blocking(move || {
                let mut s = rc.spool.lock();
                let res = s.remove(seq);
                (res, s.len())
            })
            .await;
            match res {
                Ok((Ok(()), depth)) => r.set_depth(depth),
                Ok((Err(e), depth)) => {
                    r.set_depth(depth);
                    tracing::warn!(receiver = %r.cfg.name, error = %e, "could not mark a webhook event delivered; it may be sent again after a restart");
                }
                Err(e) => tracing::warn!(error = %e, "webhook spool task failed"),
            }
        }
    }
}
