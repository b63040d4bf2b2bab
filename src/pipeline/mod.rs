//! From the data path to analysis: the bounded queue of captures, the analysis thread that
//! turns each capture into an [`ExchangeRecord`], and the fan-out of records to consumers.
//!
//! The data path only ever calls [`Submitter::submit`], a `try_send`: when the queue is full
//! the capture is dropped and counted (`semtap_records_dropped_total{reason="queue_full"}`),
//! and the request is never delayed. Nor does it wake the analysis thread: that thread polls
//! the queue ([`poll`]), so handing over a capture costs the data path no system call.

pub mod assemble;
pub mod capture_file;
pub mod poll;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::metrics::{Counter, Metrics};
use crate::protocol::RouteMatch;
use crate::record::{ExchangeRecord, Outcome, RateLimit};
use crate::tap::body::BudgetHold;
use poll::Backoff;

/// A captured body: the first bytes of it (up to the capture cap) and its real length.
#[derive(Debug, Default)]
pub struct CapturedBody {
    pub bytes: Vec<u8>,
    pub total: u64,
    pub truncated: bool,
    pub(crate) _budget: BudgetHold,
}

/// What the data path knows about one exchange when it ends. No secrets: credentials,
/// cookies and the query string are never copied in here.
#[derive(Debug, Default)]
pub struct Capture {
    pub id: String,
    pub listener: Arc<str>,
    pub started_at_ms: u64,
    pub method: String,
    pub path: String,
    pub route: RouteMatch,
    /// Value of the `x-semtap-route` request header.
    pub route_header: Option<String>,
    pub traceparent: Option<String>,
    pub server_address: Arc<str>,
    pub server_port: u16,
    pub request: CapturedBody,
    pub request_encoding: Option<String>,
    pub status: u16,
    pub response_content_type: Option<String>,
    pub response_encoding: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub response: CapturedBody,
    /// (response bytes received so far, microseconds since start) per body chunk.
    pub chunk_times: Vec<(u64, u64)>,
    pub outcome: Outcome,
    pub error_detail: Option<&'static str>,
    pub duration: Duration,
    /// When the upstream's response headers arrived, since start.
    pub upstream_headers_after: Option<Duration>,
    /// When the request was handed to the upstream client, since start.
    pub dispatch_after: Duration,
    /// Time spent forwarding body chunks inside semtap.
    pub forward_overhead: Duration,
}

/// Where records go after analysis. Implementations must not block: a slow consumer keeps
/// its own bounded queue and counts what it drops.
pub trait RecordSink: Send + Sync {
    /// Takes one record.
    fn accept(&self, record: &Arc<ExchangeRecord>);
    /// Called once at shutdown, after the last record.
    fn flush(&self) {}
}

/// The data path's handle on the analysis queue.
#[derive(Clone)]
pub struct Submitter {
    tx: SyncSender<Capture>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Set by [`Pipeline::shutdown`]: the worker stops once the queue is empty, even while
    /// submitters remain (an upgraded connection still open holds its listener's).
    closing: AtomicBool,
    depth: AtomicUsize,
    capacity: usize,
    dropped: AtomicU64,
    processed: AtomicU64,
    metrics: Arc<Metrics>,
    /// Drop counters, looked up once (they count when the queue is full: the worst time).
    dropped_full: Counter,
    dropped_shutdown: Counter,
}

impl Submitter {
    /// Queues a capture for analysis without waiting; drops and counts it if the queue is full.
    pub fn submit(&self, capture: Capture) {
        self.shared.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(capture) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.shared.drop_queued(&self.shared.dropped_full),
            Err(TrySendError::Disconnected(_)) => {
                self.shared.drop_queued(&self.shared.dropped_shutdown)
            }
        }
    }
}

impl Shared {
    /// Counts one capture that was counted into the queue's depth as dropped, under `why`.
    fn drop_queued(&self, why: &Counter) {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        why.inc();
    }
}

/// Counts for `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PipelineStats {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub dropped: u64,
    pub processed: u64,
}

/// The analysis stage: one thread of its own, so parsing never runs on the proxy's runtime.
pub struct Pipeline {
    submitter: Mutex<Option<Submitter>>,
    shared: Arc<Shared>,
    sinks: Arc<Mutex<Vec<Arc<dyn RecordSink>>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts the analysis thread with a queue of `capacity` captures.
    pub fn start(capacity: usize, decompressed_cap: usize, metrics: Arc<Metrics>) -> Arc<Pipeline> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared {
            closing: AtomicBool::new(false),
            depth: AtomicUsize::new(0),
            capacity,
            dropped: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            dropped_full: metrics.counter("semtap.records_dropped", &[("reason", "queue_full")]),
            dropped_shutdown: metrics.counter("semtap.records_dropped", &[("reason", "shutdown")]),
            metrics,
        });
        let sinks: Arc<Mutex<Vec<Arc<dyn RecordSink>>>> = Arc::default();
        let worker = {
            let shared = shared.clone();
            let sinks = sinks.clone();
            std::thread::Builder::new()
                .name("semtap-analysis".into())
                .spawn(move || {
                    crate::priority::background_thread();
                    run_worker(rx, shared, sinks, decompressed_cap)
                })
                .ok()
        };
        if worker.is_none() {
            tracing::error!("could not start the analysis thread; records will be dropped");
        }
        Arc::new(Pipeline {
            submitter: Mutex::new(Some(Submitter {
                tx,
                shared: shared.clone(),
            })),
            shared,
            sinks,
            worker: Mutex::new(worker),
        })
    }

    /// A handle for the data path. `None` after shutdown.
    pub fn submitter(&self) -> Option<Submitter> {
        self.submitter.lock().clone()
    }

    /// Adds a consumer of records.
    pub fn add_sink(&self, sink: Arc<dyn RecordSink>) {
        self.sinks.lock().push(sink);
    }

    /// Queue depth, capacity and counts.
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            queue_depth: self.shared.depth.load(Ordering::Relaxed),
            queue_capacity: self.shared.capacity,
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            processed: self.shared.processed.load(Ordering::Relaxed),
        }
    }

    /// Stops taking captures, drains the queue (up to `timeout`) and flushes the sinks.
    /// Captures submitted after the queue has drained (by an exchange still open, such as an
    /// upgraded connection's) are dropped and counted (`reason="shutdown"`).
    pub fn shutdown(&self, timeout: Duration) {
        self.submitter.lock().take();
        self.shared.closing.store(true, Ordering::Release);
        let handle = self.worker.lock().take();
        if let Some(h) = handle {
            let deadline = std::time::Instant::now() + timeout;
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!(
                    queued = self.shared.depth.load(Ordering::Relaxed),
                    "analysis did not drain before the shutdown deadline"
                );
            }
        }
        for s in self.sinks.lock().iter() {
            s.flush();
        }
    }
}

fn run_worker(
    rx: Receiver<Capture>,
    shared: Arc<Shared>,
    sinks: Arc<Mutex<Vec<Arc<dyn RecordSink>>>>,
    decompressed_cap: usize,
) {
    let depth_gauge = shared.metrics.gauge("semtap.analysis.queue_depth", &[]);
    let mut backoff = Backoff::new();
    while let Some(capture) = next_capture(&rx, &shared.closing, &mut backoff) {
        let depth = shared
            .depth
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        depth_gauge.set(depth as f64);
        let record = assemble::assemble(capture, decompressed_cap);
        shared.metrics.record_exchange(&record);
        shared.processed.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(record);
        // Sinks never block (`RecordSink`), so they are called under the lock; adding one is rare.
        for s in sinks.lock().iter() {
            s.accept(&record);
        }
    }
    // Closing: what raced in after the last look is counted, and dropping `rx` then makes any
    // later submit fail (and count) at once.
    while rx.try_recv().is_ok() {
        shared.drop_queued(&shared.dropped_shutdown);
    }
}

/// The next capture, or `None` once the queue is drained and either every submitter is gone
/// or the pipeline is `closing`. The thread polls (see [`poll`]): the data path's `try_send`
/// never has to wake it.
fn next_capture(
    rx: &Receiver<Capture>,
    closing: &AtomicBool,
    backoff: &mut Backoff,
) -> Option<Capture> {
    loop {
        match rx.try_recv() {
            Ok(capture) => {
                backoff.reset();
                return Some(capture);
            }
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if closing.load(Ordering::Acquire) => return None,
            Err(TryRecvError::Empty) => backoff.idle(),
        }
    }
}

/// A sink that keeps records for a reader in the same process (tests, the demo), bounded:
/// when the reader falls behind, records are dropped and counted.
pub struct ChannelSink {
    tx: SyncSender<Arc<ExchangeRecord>>,
    dropped: AtomicU64,
}

impl ChannelSink {
    /// A sink and its receiving end, holding at most `capacity` unread records.
    pub fn new(capacity: usize) -> (Arc<ChannelSink>, Receiver<Arc<ExchangeRecord>>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        (
            Arc::new(ChannelSink {
                tx,
                dropped: AtomicU64::new(0),
            }),
            rx,
        )
    }

    /// Records dropped because the reader fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl RecordSink for ChannelSink {
    fn accept(&self, record: &Arc<ExchangeRecord>) {
        if self.tx.try_send(record.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsOptions;

    #[test]
    fn shutdown_returns_while_a_submitter_is_held_and_later_captures_count_as_dropped() {
        let p = Pipeline::start(
            8,
            1 << 20,
            Arc::new(Metrics::new(MetricsOptions::default())),
        );
        let (sink, records) = ChannelSink::new(8);
        p.add_sink(sink);
        // Held the way an upgraded connection still open at shutdown holds its listener's.
        let held = p.submitter().expect("a submitter before shutdown");
        held.submit(Capture::default());
        // Generous: a worker that waited for `held` to go would use all of it, and the
        // capture below would then be queued instead of dropped.
        p.shutdown(Duration::from_secs(60));
        assert_eq!(
            records.try_iter().count(),
            1,
            "queued before shutdown: analysed"
        );
        held.submit(Capture::default());
        let st = p.stats();
        assert_eq!(st.processed, 1);
        assert_eq!(
            st.dropped, 1,
            "submitted after shutdown: dropped and counted"
        );
        assert_eq!(st.queue_depth, 0);
    }
}
