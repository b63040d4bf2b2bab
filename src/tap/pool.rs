//! Connections to one upstream, kept open and reused.
//!
//! Why not hyper-util's pooled client: for HTTP/1 it spawns a task per request to put the
//! connection back once the response body has been read, and takes a pool-wide lock and a
//! hash of the origin twice per request. Here the response body (the tap's [`TapBody`]) hands
//! its connection back itself when it ends, and each listener has its own pool, so a request
//! costs one uncontended lock to take a connection and one to return it. BENCHMARKS.md has
//! the measured difference.
//!
//! - HTTP/1.1: idle connections on a LIFO stack (the most recently used first, so a
//!   connection the upstream may have timed out is the least likely to be picked), at most
//!   `max_idle`, each dropped after `idle_timeout` unused. A connection goes back only when
//!   its response ended cleanly; a cancelled or cut response closes it.
//! - HTTP/2 (negotiated by ALPN over TLS): one shared connection, multiplexed, reopened when
//!   it closes.
//! - A request sent on a reused HTTP/1 connection that the upstream closed in the meantime
//!   (the keep-alive race) is retried once on a fresh connection, as long as nothing of it was
//!   written; the retry always opens a new connection (an upstream that closed one idle
//!   connection has often closed them all). Once written it is not: the upstream may have read it, and an LLM call is not
//!   safe to run twice. So a connection closed without `Connection: close` at the very moment
//!   a request goes out fails that request with a 502, as with any HTTP/1 client (hyper-util's
//!   pooled client, used before this pool, fails the same way).
//!
//! [`TapBody`]: super::body::TapBody

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tower_service::Service;

use super::body::{BoxError, RequestTee};
use super::upstream::{is_connect_timeout, Connector};
use crate::config::Upstream;
use crate::metrics::{Counter, Gauge, Metrics};

/// Why a request did not get a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, DNS, TLS, proxy, connect timeout).
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error("request: {0}")]
    Request(#[source] hyper::Error),
}

impl SendError {
    /// True when connecting failed (as opposed to a failure on an open connection).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    /// True when the failure was a timeout while connecting.
    pub fn is_connect_timeout(&self) -> bool {
        match self {
            SendError::Connect(e) => is_connect_timeout(e.as_ref()),
            SendError::Request(e) => is_connect_timeout(e),
        }
    }
}

/// Pool size and keep-alive (`limits.upstream_idle_connections`, `limits.upstream_keepalive`).
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Most idle HTTP/1 connections kept; one more is closed instead of kept.
    pub max_idle: usize,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
}

/// How long a pooled HTTP/1 connection may take to become ready for the next request.
const READY_WAIT: Duration = Duration::from_millis(100);

struct Idle {
    tx: http1::SendRequest<RequestTee>,
    since: Instant,
}

/// The connections of one listener to its upstream.
pub struct UpstreamPool {
    connector: Connector,
    /// `scheme://authority` of the upstream: what the connector dials.
    origin: Uri,
    /// `Host` for HTTP/1 requests (the port only when it is not the scheme's default).
    host: HeaderValue,
    limits: PoolLimits,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<RequestTee>>>,
    /// Set once the upstream negotiated h2: later connects are made one at a time.
    speaks_h2: AtomicBool,
    h2_connecting: tokio::sync::Mutex<()>,
    opened: Counter,
    idle_gauge: Gauge,
}

/// A request's HTTP/1 connection while its response body is read; [`Lease::release`] puts it
/// back in the pool, dropping it closes the connection once that response is done.
pub struct Lease {
    pool: Arc<UpstreamPool>,
    tx: http1::SendRequest<RequestTee>,
}

impl Lease {
    /// The response ended cleanly: the connection can carry another request.
    pub fn release(self) {
        let Lease { pool, tx } = self;
        pool.put_back(tx);
    }
}

enum Conn {
    H1 {
        tx: http1::SendRequest<RequestTee>,
        reused: bool,
    },
    H2(http2::SendRequest<RequestTee>),
}

impl UpstreamPool {
    /// A pool for `upstream`, dialling through `connector`; counts connections opened as
    /// `semtap.upstream.connections_opened{listener}` and idle ones as
    /// `semtap.upstream.connections_idle{listener}`.
    pub fn new(
        upstream: &Upstream,
        connector: Connector,
        limits: PoolLimits,
        metrics: &Metrics,
        listener: &str,
    ) -> Result<Arc<UpstreamPool>, BoxError> {
        let origin = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()?;
        let default_port = if upstream.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = match upstream.authority.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", upstream.authority.host()),
            _ => upstream.authority.host().to_string(),
        };
        Ok(Arc::new(UpstreamPool {
            connector,
            origin,
            host: HeaderValue::from_str(&host)?,
            limits,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            speaks_h2: AtomicBool::new(false),
            h2_connecting: tokio::sync::Mutex::new(()),
            opened: metrics.counter(
                "semtap.upstream.connections_opened",
                &[("listener", listener)],
            ),
            idle_gauge: metrics.gauge(
                "semtap.upstream.connections_idle",
                &[("listener", listener)],
            ),
        }))
    }

    /// Sends `req` (its URI in origin form: the upstream path and query) and returns the
    /// response head. For HTTP/1 the
    /// [`Lease`] must be released when the response body has ended, or dropped otherwise.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestTee>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let mut retried = false;
        loop {
            let (error, unsent, may_retry) = match self.checkout(retried).await? {
                Conn::H2(mut tx) => {
                    self.for_h2(&mut req);
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok((resp, None)),
                        Err(mut e) => {
                            let closed = tx.is_closed();
                            if closed {
                                self.forget_h2();
                            }
                            let unsent = e.take_message();
                            (e.into_error(), unsent, closed)
                        }
                    }
                }
                Conn::H1 { mut tx, reused } => {
                    self.for_h1(&mut req);
                    match tx.try_send_request(req).await {
                        Ok(resp) => {
                            let lease = Lease {
                                pool: self.clone(),
                                tx,
                            };
                            return Ok((resp, Some(lease)));
                        }
                        Err(mut e) => {
                            let unsent = e.take_message();
                            (e.into_error(), unsent, reused)
                        }
                    }
                }
            };
            // A connection that closed as it was picked (the keep-alive race) gives the request
            // back unsent: one more try, on a fresh connection.
            match unsent {
                Some(r) if may_retry && !retried => {
                    retried = true;
                    req = r;
                }
                _ => return Err(SendError::Request(error)),
            }
        }
    }

    /// HTTP/1 requests keep the path (CONNECT names the upstream's authority instead) and
    /// carry the upstream's `Host`.
    fn for_h1(&self, req: &mut Request<RequestTee>) {
        if req.method() == http::Method::CONNECT {
            if let Some(a) = self.origin.authority().cloned() {
                *req.uri_mut() = Uri::from(a);
            }
        }
        req.headers_mut()
            .insert(http::header::HOST, self.host.clone());
    }

    /// HTTP/2 takes the absolute URI (`:scheme`, `:authority`) and no `Host`.
    fn for_h2(&self, req: &mut Request<RequestTee>) {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = self.origin.scheme().cloned();
        parts.authority = self.origin.authority().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        req.headers_mut().remove(http::header::HOST);
    }

    /// A connection for one request: the shared HTTP/2 one, an idle HTTP/1 one, or a new one
    /// (`fresh`: only a new one, for a retry).
    async fn checkout(&self, fresh: bool) -> Result<Conn, SendError> {
        if let Some(tx) = self.live_h2() {
            return Ok(Conn::H2(tx));
        }
        if self.speaks_h2.load(Ordering::Relaxed) {
            // One handshake for everyone waiting: the others share its connection.
            let _one = self.h2_connecting.lock().await;
            if let Some(tx) = self.live_h2() {
                return Ok(Conn::H2(tx));
            }
            return self.connect().await;
        }
        if !fresh {
            loop {
                let idle = {
                    let mut idle = self.idle.lock();
                    self.prune(&mut idle);
                    let got = idle.pop();
                    self.idle_gauge.set(idle.len() as f64);
                    got
                };
                let Some(Idle { mut tx, .. }) = idle else {
                    break;
                };
                // Usually ready at once; right after a response ended the connection may still be
                // finishing it. One still sending an earlier request body (the upstream answered
                // before reading all of it) is waited for at most READY_WAIT, then dropped.
                if tx.is_closed() {
                    continue;
                }
                if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, tx.ready()).await {
                    return Ok(Conn::H1 { tx, reused: true });
                }
            }
        }
        self.connect().await
    }

    /// The shared HTTP/2 connection, unless it has closed (then forgotten).
    fn live_h2(&self) -> Option<http2::SendRequest<RequestTee>> {
        let tx = self.h2.lock().clone()?;
        if tx.is_closed() {
            self.forget_h2();
            return None;
        }
        Some(tx)
    }

    /// Drops idle connections that are closed or unused for longer than the idle timeout.
    /// The stack is ordered by when each went idle, so the expired ones are at the bottom.
    fn prune(&self, idle: &mut Vec<Idle>) {
        let expired = idle
            .iter()
            .take_while(|i| i.since.elapsed() >= self.limits.idle_timeout)
            .count();
        if expired > 0 {
            idle.drain(..expired);
        }
        if idle.last().is_some_and(|i| i.tx.is_closed()) {
            idle.retain(|i| !i.tx.is_closed());
        }
    }

    fn put_back(&self, tx: http1::SendRequest<RequestTee>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        self.prune(&mut idle);
        if self.limits.max_idle > 0 {
            // Full: the longest idle goes, the one just used stays.
            if idle.len() >= self.limits.max_idle {
                idle.remove(0);
            }
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
        self.idle_gauge.set(idle.len() as f64);
    }

    /// Drops the shared HTTP/2 connection if it has closed (the next request reconnects).
    fn forget_h2(&self) {
        let mut shared = self.h2.lock();
        if shared.as_ref().is_some_and(|s| s.is_closed()) {
            *shared = None;
        }
    }

    /// Opens a connection. Boxed: dialling (DNS, TCP, TLS, the handshake) is a future of
    /// several KB, and inline it made every request's handler future that large (9.9 KB, 2.6
    /// without it), moved and touched per request for a step that runs once per connection.
    async fn connect(&self) -> Result<Conn, SendError> {
        Box::pin(self.dial()).await
    }

    async fn dial(&self) -> Result<Conn, SendError> {
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(SendError::Connect)?;
        self.opened.inc();
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?;
            self.speaks_h2.store(true, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                }
            });
            *self.h2.lock() = Some(tx.clone());
            Ok(Conn::H2(tx))
        } else {
            let (tx, conn) = http1::handshake(io)
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok(Conn::H1 { tx, reused: false })
        }
    }
}
