//! Bodies on the data path: each forwards every frame untouched and, on the side, keeps a
//! capped copy and chunk timings for analysis. Nothing here waits on analysis: finishing an
//! exchange is a `try_send` into a bounded queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use super::forward::ListenerCtx;
use super::pool::Lease;
use crate::pipeline::{Capture, CapturedBody};
use crate::record::Outcome;

/// Boxed error type for bodies on the data path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Process-wide budget of bytes held in captures (in flight and queued), so that many
/// concurrent large bodies cannot grow memory without bound. When the budget is spent,
/// new bytes are not captured (the capture is marked truncated); forwarding is unaffected.
#[derive(Debug)]
pub struct CaptureBudget {
    used: AtomicUsize,
    limit: usize,
}

impl CaptureBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(CaptureBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes currently held.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A capture buffer that returns its bytes to the budget when dropped.
#[derive(Debug)]
pub struct CaptureBuf {
    pub(crate) bytes: Vec<u8>,
    pub(crate) total: u64,
    pub(crate) truncated: bool,
    cap: usize,
    held: usize,
    budget: Option<Arc<CaptureBudget>>,
}

impl CaptureBuf {
    /// A buffer keeping at most `cap` bytes, drawing on `budget`. `cap == 0` keeps nothing.
    pub fn new(cap: usize, budget: Option<Arc<CaptureBudget>>) -> Self {
        CaptureBuf {
            bytes: Vec::new(),
            total: 0,
            truncated: false,
            cap,
            held: 0,
            budget,
        }
    }

    /// Copies what fits of `data`.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if self.truncated || self.cap == 0 {
            return;
        }
        let room = self.cap.saturating_sub(self.bytes.len());
        let take = data.len().min(room);
        if take > 0 {
            let ok = match &self.budget {
                Some(b) => b.try_take(take),
                None => true,
            };
            if !ok {
                self.truncated = true;
                return;
            }
            self.held += take;
            self.bytes.extend_from_slice(&data[..take]);
        }
        if take < data.len() {
            self.truncated = true;
        }
    }

    /// Moves the bytes out into an analysis body (the budget stays held until that drops).
    pub fn into_captured(mut self) -> CapturedBody {
        CapturedBody {
            bytes: std::mem::take(&mut self.bytes),
            total: self.total,
            truncated: self.truncated,
            _budget: BudgetHold {
                n: std::mem::take(&mut self.held),
                budget: self.budget.take(),
            },
        }
    }
}

impl Drop for CaptureBuf {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(self.held);
        }
    }
}

/// Bytes held against the capture budget; returned on drop.
#[derive(Debug, Default)]
pub struct BudgetHold {
    n: usize,
    budget: Option<Arc<CaptureBudget>>,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(self.n);
        }
    }
}

/// The request body as forwarded upstream, copying what fits into a shared capture.
pub struct RequestTee {
    inner: hyper::body::Incoming,
    capture: Option<Arc<Mutex<CaptureBuf>>>,
}

impl RequestTee {
    /// Wraps `inner`; `capture` is `None` for traffic that is not analysed.
    pub fn new(inner: hyper::body::Incoming, capture: Option<Arc<Mutex<CaptureBuf>>>) -> Self {
        RequestTee { inner, capture }
    }
}

impl Body for RequestTee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(cap)) = (&polled, &self.capture) {
            if let Some(data) = frame.data_ref() {
                cap.lock().push(data);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Most chunk timestamps kept per exchange; later chunks extend the last entry.
const MAX_CHUNK_TIMES: usize = 16_384;

/// Everything about one exchange that the response body needs to finish it, and the
/// in-flight slot its request took (given back when the exchange is finished or dropped).
pub struct Exchange {
    pub capture: Capture,
    pub request_capture: Option<Arc<Mutex<CaptureBuf>>>,
    pub response_capture: CaptureBuf,
    pub started: Instant,
    /// False for plain traffic, which is counted but not analysed.
    pub analysed: bool,
    /// Also the listener's context: where the exchange is counted and queued for analysis.
    pub slot: Slot,
}

impl Exchange {
    /// Closes the exchange: counts it, hands the capture to analysis (never waits) and gives
    /// the in-flight slot back.
    pub fn finish(self, outcome: Outcome, detail: Option<&'static str>) {
        let Exchange {
            mut capture,
            request_capture,
            response_capture,
            started,
            analysed,
            slot,
        } = self;
        capture.outcome = outcome;
        if detail.is_some() {
            capture.error_detail = detail;
        }
        capture.duration = started.elapsed();
        if let Some(req) = request_capture {
            // Shared with the request body, which hyper may still hold: taken, not moved.
            let buf = std::mem::replace(&mut *req.lock(), CaptureBuf::new(0, None));
            capture.request = buf.into_captured();
        }
        capture.response = response_capture.into_captured();
        let ctx = &slot.0;
        ctx.metrics.record_request(
            &capture.listener,
            capture.route.provider.as_str(),
            capture.route.api.operation(),
            capture.status,
            capture.outcome.as_str(),
        );
        ctx.plain_duration.record(capture.duration.as_secs_f64());
        if analysed {
            ctx.submitter.submit(capture);
        }
    }
}

/// One of the in-flight limit's slots (`limits.max_in_flight`), from a request's start to the
/// end of its exchange; dropping it gives the slot back, on every path (answered, failed,
/// cancelled, upgraded). It carries the listener's context, which the exchange reads through it.
pub struct Slot(Arc<ListenerCtx>);

impl Slot {
    /// A slot of `ctx`'s limit, or `None` when all are taken.
    pub fn take(ctx: &Arc<ListenerCtx>) -> Option<Slot> {
        ctx.inflight.try_take().then(|| Slot(ctx.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inflight.give_back();
    }
}

/// The response body sent to the client: upstream frames, untouched, as they arrive.
pub struct TapBody {
    inner: hyper::body::Incoming,
    exchange: Option<Exchange>,
    /// The HTTP/1 upstream connection, back to the pool once the body has ended cleanly.
    lease: Option<Lease>,
    idle: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    last_activity: Instant,
    forward_time: Duration,
}

impl TapBody {
    /// Wraps the upstream body; the exchange is finished when the body ends, fails or is dropped.
    pub fn new(
        inner: hyper::body::Incoming,
        exchange: Exchange,
        lease: Option<Lease>,
        idle: Duration,
    ) -> Self {
        TapBody {
            inner,
            exchange: Some(exchange),
            lease,
            idle,
            sleep: None,
            last_activity: Instant::now(),
            forward_time: Duration::ZERO,
        }
    }

    fn finish(&mut self, outcome: Outcome, detail: Option<&'static str>) {
        if let Some(lease) = self.lease.take() {
            // `Complete` is given only once the upstream body has ended (its last frame, `None`,
            // or a drop after the end), and only such a connection can carry another request.
            // (`is_end_stream` would not do: hyper says it only for bodies with a length.)
            if outcome == Outcome::Complete {
                lease.release();
            }
        }
        if let Some(mut ex) = self.exchange.take() {
            ex.capture.forward_overhead += self.forward_time;
            ex.finish(outcome, detail);
        }
    }

    fn on_data(&mut self, data: &Bytes) {
        let Some(ex) = self.exchange.as_mut() else {
            return;
        };
        ex.response_capture.push(data);
        if !ex.analysed {
            // Plain traffic is counted, not analysed: nothing reads its chunk timings.
            return;
        }
        let end = ex.response_capture.total;
        let at_us = ex.started.elapsed().as_micros() as u64;
        let times = &mut ex.capture.chunk_times;
        if times.len() < MAX_CHUNK_TIMES {
            times.push((end, at_us));
        } else if let Some(last) = times.last_mut() {
            *last = (end, at_us);
        }
    }

    /// True once the upstream has nothing more to send (so a drop now is not a cancel).
    fn upstream_done(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let t0 = Instant::now();
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    this.on_data(&data);
                }
                this.last_activity = t0;
                if this.inner.is_end_stream() {
                    this.finish(Outcome::Complete, None);
                }
                this.forward_time += t0.elapsed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Outcome::StreamInterrupted, Some("upstream_body_error"));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.finish(Outcome::Complete, None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                // Idle timeout between chunks: one timer, re-armed lazily from the last activity.
                loop {
                    let deadline = this.last_activity + this.idle;
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                    if sleep.deadline() != tokio::time::Instant::from_std(deadline) {
                        sleep.as_mut().reset(deadline.into());
                    }
                    match sleep.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(()) => {
                            if this.last_activity + this.idle <= Instant::now() {
                                this.finish(Outcome::StreamInterrupted, Some("idle_timeout"));
                                return Poll::Ready(Some(Err(
                                    "semtap: upstream idle timeout".into()
                                )));
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TapBody {
    fn drop(&mut self) {
        if self.exchange.is_some() {
            if self.upstream_done() {
                self.finish(Outcome::Complete, None);
            } else {
                self.finish(Outcome::ClientCancelled, None);
            }
        }
    }
}
