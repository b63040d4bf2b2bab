//! The tap: listeners that accept the app's HTTP/1.1 and h2c connections and forward every
//! request to their upstream. See [`forward`] for the per-request path.

pub mod body;
pub mod errors;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Submitter;
use body::{BoxError, CaptureBudget};
use forward::ListenerCtx;

/// The body type of every response semtap sends.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Errors starting the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("listener `{name}` cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the upstream client: {0}")]
    Client(BoxError),
}

/// A bound listener, as `/status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoundListener {
    pub name: String,
    pub addr: SocketAddr,
    pub upstream: String,
}

/// The running tap.
pub struct Tap {
    pub listeners: Vec<BoundListener>,
    stop: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<GracefulShutdown>>,
    budget: Arc<CaptureBudget>,
}

/// Total capture bytes held at once across all exchanges (in flight and queued).
const CAPTURE_BUDGET: usize = 256 << 20;

impl Tap {
    /// Binds every listener and starts accepting.
    pub async fn start(
        cfg: &Config,
        metrics: Arc<Metrics>,
        submitter: Submitter,
    ) -> Result<Tap, TapError> {
        let connector =
            upstream::build_connector(cfg.limits.connect_timeout).map_err(TapError::Client)?;
        let inflight = forward::InFlight::new(cfg.limits.max_in_flight);
        let budget = CaptureBudget::new(CAPTURE_BUDGET);
        let (stop, _) = watch::channel(false);
        let mut listeners = Vec::new();
        let mut accept_loops = Vec::new();
        for l in &cfg.listeners {
            let tcp = TcpListener::bind(l.listen)
                .await
                .map_err(|source| TapError::Bind {
                    name: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
            let addr = tcp.local_addr().map_err(|source| TapError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            tracing::info!(listener = %l.name, addr = %addr, upstream = %l.upstream, "listener bound");
            let ctx = Arc::new(ListenerCtx {
                name: Arc::from(l.name.as_str()),
                upstream: l.upstream.clone(),
                provider_hint: l.provider,
                pool: pool::UpstreamPool::new(
                    &l.upstream,
                    connector.clone(),
                    pool::PoolLimits {
                        max_idle: cfg.limits.upstream_idle_connections,
                        idle_timeout: cfg.limits.upstream_keepalive,
                    },
                    &metrics,
                    &l.name,
                )
                .map_err(TapError::Client)?,
                limits: cfg.limits.clone(),
                submitter: submitter.clone(),
                metrics: metrics.clone(),
                inflight: inflight.clone(),
                budget: budget.clone(),
                server_address: Arc::from(l.upstream.host()),
                counters: forward::TapCounters::new(&metrics),
                plain_duration: metrics.plain_duration_histogram(&l.name),
            });
            listeners.push(BoundListener {
                name: l.name.clone(),
                addr,
                upstream: l.upstream.to_string(),
            });
            accept_loops.push(tokio::spawn(accept_loop(tcp, ctx, stop.subscribe())));
        }
        Ok(Tap {
            listeners,
            stop,
            accept_loops,
            budget,
        })
    }

    /// Bytes currently held in captures.
    pub fn capture_bytes_held(&self) -> usize {
        self.budget.used()
    }

    /// Stops accepting, lets in-flight exchanges finish for up to `grace`, then drops the rest.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut graces = Vec::new();
        for h in self.accept_loops {
            if let Ok(g) = h.await {
                graces.push(g);
            }
        }
        let all = futures_util::future::join_all(graces.into_iter().map(|g| g.shutdown()));
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(grace = ?grace, "in-flight requests still open after the grace period; closing them");
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    ctx: Arc<ListenerCtx>,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    loop {
        tokio::select! {
            accepted = tcp.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                        ctx.counters.accept_errors.inc();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let svc = service_fn(move |req| forward::handle(ctx.clone(), req));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    graceful
}
