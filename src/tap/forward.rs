//! The request handler: where a request enters semtap and leaves for the upstream.
//!
//! Order of work per request: classify the path, rewrite the URI and `Host`, drop hop-by-hop
//! headers, send with the body tee'd into a capped capture, and return the upstream's
//! status, headers and body frames as they come. Analysis happens after, elsewhere.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use super::body::{CaptureBudget, CaptureBuf, Exchange, RequestTee, Slot, TapBody};
use super::errors::error_response;
use super::headers::{self, is_upgrade_request, name, strip_hop_by_hop};
use super::pool::UpstreamPool;
use super::ProxyBody;
use crate::config::{Limits, Upstream};
use crate::metrics::{Counter, Histogram, Metrics};
use crate::pipeline::{Capture, Submitter};
use crate::protocol::classify;
use crate::record::{Api, Outcome, Provider, RateLimit};

/// Everything one listener's requests share.
pub struct ListenerCtx {
    pub name: Arc<str>,
    pub upstream: Upstream,
    pub provider_hint: Option<Provider>,
    pub pool: Arc<UpstreamPool>,
    pub limits: Limits,
    pub submitter: Submitter,
    pub metrics: Arc<Metrics>,
    pub inflight: Arc<InFlight>,
    pub budget: Arc<CaptureBudget>,
    pub server_address: Arc<str>,
    pub counters: TapCounters,
    /// `semtap.request.duration` for this listener.
    pub plain_duration: Histogram,
}

/// The in-flight limit (`limits.max_in_flight`), shared by every listener. A counter, not a
/// semaphore: nothing ever waits for a slot (over the limit a request is refused at once), and
/// a semaphore's release takes its waiters' lock, on every request, from every thread.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    limit: usize,
}

impl InFlight {
    /// A limit of `limit` requests at once.
    pub fn new(limit: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            count: AtomicUsize::new(0),
            limit,
        })
    }

    /// Takes a slot; false (and nothing taken) when all `limit` are in use. The count guards
    /// no data, so relaxed ordering is enough. (Callers hold slots as [`Slot`]s, which give
    /// them back when dropped.)
    pub fn try_take(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns a slot taken by [`InFlight::try_take`].
    pub fn give_back(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// The tap's own counters, looked up once: they count exactly when the proxy is saturated or
/// the upstream is failing, when a lookup by name (registry lock, label vector) costs most.
#[derive(Clone)]
pub struct TapCounters {
    pub rejected_in_flight: Counter,
    pub upstream_unreachable: Counter,
    pub upstream_timeout: Counter,
    pub websocket_upgrades: Counter,
    pub accept_errors: Counter,
}

impl TapCounters {
    /// Registers the counters in `metrics`.
    pub fn new(metrics: &Metrics) -> TapCounters {
        let upstream = |kind| metrics.counter("semtap.upstream_errors", &[("kind", kind)]);
        TapCounters {
            rejected_in_flight: metrics.counter("semtap.rejected", &[("reason", "max_in_flight")]),
            upstream_unreachable: upstream("upstream_unreachable"),
            upstream_timeout: upstream("upstream_timeout"),
            websocket_upgrades: metrics.counter("semtap.websocket_upgrades", &[]),
            accept_errors: metrics.counter("semtap.accept_errors", &[]),
        }
    }
}

/// Unique exchange ids: a random per-process prefix and a counter (unique across restarts).
fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let p = *PREFIX.get_or_init(rand::random::<u64>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // 32 hex digits, written directly (the formatting machinery costs more, on every request).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for v in [p, n] {
        for shift in (0..16).rev() {
            id.push(HEX[((v >> (shift * 4)) & 0xf) as usize] as char);
        }
    }
    id
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Finishes the exchange as cancelled if the handler future is dropped before the upstream
/// answered (the client went away); hyper then drops the upstream request too.
struct PendingGuard(Option<Exchange>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(ex) = self.0.take() {
            ex.finish(Outcome::ClientCancelled, None);
        }
    }
}

/// Handles one request from the app.
pub async fn handle(
    ctx: Arc<ListenerCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let started_at_ms = now_ms();
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let anthropic_header = parts.headers.contains_key(name::ANTHROPIC_VERSION);
    let route = classify(&parts.method, &path, ctx.provider_hint, anthropic_header);
    let provider_for_errors = if route.provider == Provider::Unknown {
        ctx.provider_hint.unwrap_or(if anthropic_header {
            Provider::Anthropic
        } else {
            Provider::OpenAi
        })
    } else {
        route.provider
    };

    let Some(slot) = Slot::take(&ctx) else {
        ctx.counters.rejected_in_flight.inc();
        return Ok(error_response(
            provider_for_errors,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight through semtap (limits.max_in_flight)",
        ));
    };

    let upgrade = parts.version == Version::HTTP_11 && is_upgrade_request(&parts.headers);
    let analysed = route.api != Api::Other && !upgrade;

    let mut pq = String::with_capacity(ctx.upstream.path_prefix.len() + path.len() + 64);
    pq.push_str(&ctx.upstream.path_prefix);
    pq.push_str(&path);
    if let Some(q) = parts.uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    // Origin form; the pool adds the upstream's scheme and authority where the protocol wants them.
    let uri = match http::uri::PathAndQuery::from_maybe_shared(pq) {
        Ok(pq) => Uri::from(pq),
        Err(_) => {
            return Ok(error_response(
                provider_for_errors,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "request path cannot be forwarded",
            ));
        }
    };

    let route_header = headers::text(&parts.headers, name::SEMTAP_ROUTE, 128);
    let traceparent = headers::text(&parts.headers, name::TRACEPARENT, 128);
    let request_encoding = headers::text(&parts.headers, header::CONTENT_ENCODING, 32);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };

    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(header::HOST);
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();

    let cap = if analysed {
        ctx.limits.capture_bytes
    } else {
        0
    };
    let request_capture =
        analysed.then(|| Arc::new(Mutex::new(CaptureBuf::new(cap, Some(ctx.budget.clone())))));
    let up_req = Request::from_parts(parts, RequestTee::new(body, request_capture.clone()));
    let method = up_req.method().to_string();

    let mut guard = PendingGuard(Some(Exchange {
        slot,
        capture: Capture {
            id: next_id(),
            listener: ctx.name.clone(),
            started_at_ms,
            method,
            path,
            route: route.clone(),
            route_header,
            traceparent,
            server_address: ctx.server_address.clone(),
            server_port: ctx.upstream.port(),
            request_encoding,
            // Spelled out, not `..Default::default()`: that would build and drop a default
            // `listener` and `server_address` (`Arc<str>`s sharing one static, so two atomic
            // writes each to a line every thread writes) on every request.
            request: Default::default(),
            status: 0,
            response_content_type: None,
            response_encoding: None,
            rate_limit: None,
            response: Default::default(),
            chunk_times: Vec::new(),
            outcome: Outcome::default(),
            error_detail: None,
            duration: Duration::ZERO,
            upstream_headers_after: None,
            dispatch_after: Duration::ZERO,
            forward_overhead: Duration::ZERO,
        },
        request_capture,
        response_capture: CaptureBuf::new(cap, Some(ctx.budget.clone())),
        started,
        analysed,
    }));
    if let Some(ex) = guard.0.as_mut() {
        ex.capture.dispatch_after = started.elapsed();
    }

    let sent = tokio::time::timeout(ctx.limits.response_timeout, ctx.pool.send(up_req)).await;
    let (resp, lease) = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let timeout = e.is_connect_timeout();
            let (status, kind, outcome) = if timeout {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    Outcome::UpstreamTimeout,
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    Outcome::UpstreamUnreachable,
                )
            };
            let what = if e.is_connect() { "connect" } else { "request" };
            tracing::warn!(listener = %ctx.name, upstream = %ctx.upstream, error = %error_chain(&e), "upstream {what} failed");
            if timeout {
                ctx.counters.upstream_timeout.inc();
            } else {
                ctx.counters.upstream_unreachable.inc();
            }
            let resp = error_response(
                provider_for_errors,
                status,
                kind,
                &format!("upstream {what} failed"),
            );
            if let Some(mut ex) = guard.0.take() {
                ex.capture.status = status.as_u16();
                ex.finish(outcome, None);
            }
            return Ok(resp);
        }
        Err(_) => {
            tracing::warn!(listener = %ctx.name, upstream = %ctx.upstream, "upstream did not answer within limits.response_timeout");
            ctx.counters.upstream_timeout.inc();
            let resp = error_response(
                provider_for_errors,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "upstream did not answer in time",
            );
            if let Some(mut ex) = guard.0.take() {
                ex.capture.status = 504;
                ex.finish(Outcome::UpstreamTimeout, None);
            }
            return Ok(resp);
        }
    };

    let Some(mut ex) = guard.0.take() else {
        return Ok(error_response(
            provider_for_errors,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "exchange state lost",
        ));
    };
    ex.capture.upstream_headers_after = Some(started.elapsed());
    ex.capture.status = resp.status().as_u16();
    let h = resp.headers();
    ex.capture.response_content_type = headers::text(h, header::CONTENT_TYPE, 128);
    ex.capture.response_encoding = headers::text(h, header::CONTENT_ENCODING, 32);
    ex.capture.rate_limit = rate_limit(h);

    if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The upgraded connection is the client's now; it never returns to the pool.
        drop(lease);
        return Ok(switch_protocols(&ctx, resp, client_upgrade, ex));
    }

    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, false);
    rparts.version = Version::HTTP_11;
    let body = TapBody::new(rbody, ex, lease, ctx.limits.idle_timeout);
    Ok(Response::from_parts(rparts, body.boxed_unsync()))
}

/// Completes a WebSocket (or other) upgrade: both sides' raw bytes are copied untouched.
fn switch_protocols(
    ctx: &Arc<ListenerCtx>,
    mut resp: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ex: Exchange,
) -> Response<ProxyBody> {
    ctx.counters.websocket_upgrades.inc();
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let (mut rparts, _) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, true);
    let name = ctx.name.clone();
    tokio::spawn(async move {
        let ex = ex;
        let Some(client_upgrade) = client_upgrade else {
            ex.finish(Outcome::ClientCancelled, None);
            return;
        };
        match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(c), Ok(u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                tracing::debug!(listener = %name, result = ?r.as_ref().map_err(|e| e.kind()), "upgraded connection closed");
                ex.finish(Outcome::Complete, None);
            }
            _ => {
                tracing::debug!(listener = %name, "upgrade did not complete");
                ex.finish(Outcome::ClientCancelled, None);
            }
        }
    });
    Response::from_parts(
        rparts,
        Empty::new().map_err(|never| match never {}).boxed_unsync(),
    )
}

/// Remaining request/token budget from OpenAI's or Anthropic's rate-limit headers.
fn rate_limit(h: &http::HeaderMap) -> Option<RateLimit> {
    let rl = RateLimit {
        remaining_requests: headers::number(h, name::OPENAI_REMAINING_REQUESTS)
            .or_else(|| headers::number(h, name::ANTHROPIC_REMAINING_REQUESTS)),
        remaining_tokens: headers::number(h, name::OPENAI_REMAINING_TOKENS)
            .or_else(|| headers::number(h, name::ANTHROPIC_REMAINING_TOKENS)),
    };
    (rl.remaining_requests.is_some() || rl.remaining_tokens.is_some()).then_some(rl)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    #[test]
    fn in_flight_refuses_past_its_limit_and_takes_again_once_given_back() {
        let f = InFlight::new(2);
        assert!(f.try_take());
        assert!(f.try_take());
        assert!(!f.try_take(), "over the limit");
        assert_eq!(f.in_use(), 2, "a refusal takes nothing");
        f.give_back();
        assert!(f.try_take());
        assert!(!InFlight::new(0).try_take());
    }

    #[test]
    fn in_flight_never_exceeds_its_limit_under_contention() {
        let f = InFlight::new(3);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if f.try_take() {
                            peak.fetch_max(f.in_use(), std::sync::atomic::Ordering::Relaxed);
                            f.give_back();
                        }
                    }
                });
            }
        });
        assert!(peak.into_inner() <= 3);
        assert_eq!(f.in_use(), 0, "every slot taken was given back");
    }

    #[test]
    fn exchange_ids_are_32_hex_digits_and_unique() {
        let a = super::next_id();
        let b = super::next_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        // Same process prefix, a counter that only grows (other tests may take ids between).
        assert_eq!(a[..16], b[..16]);
        let n = |s: &str| u64::from_str_radix(&s[16..], 16).unwrap_or(0);
        assert!(n(&b) > n(&a));
    }
}
