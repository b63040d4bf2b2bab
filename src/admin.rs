//! The admin server: `/metrics` (Prometheus), `/healthz`, `/readyz` and `/status` (JSON).
//! Bound to loopback by default; it serves numbers and states, never content or secrets.
//! With a token, every route but the probes (and `/metrics` while public) needs
//! `Authorization: Bearer <token>`; config refuses a non-loopback bind without one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::alert::Secret;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::tap::BoundListener;

/// State of one component, as `/readyz` and `/status` report it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComponentState {
    /// `ok`, `degraded` (working with reduced function) or `down`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Readiness and component health, shared by everything that can degrade.
pub struct Health {
    started: Instant,
    ready: AtomicBool,
    components: Mutex<BTreeMap<String, ComponentState>>,
}

impl Health {
    /// Not ready until [`Health::set_ready`].
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            components: Mutex::new(BTreeMap::new()),
        })
    }

    /// Marks semtap ready (listeners bound) or not (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// True once listeners are bound and until shutdown starts.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Records a component's state.
    pub fn set(&self, component: &str, status: &'static str, detail: impl Into<String>) {
        self.components.lock().insert(
            component.to_string(),
            ComponentState {
                status,
                detail: detail.into(),
            },
        );
    }

    /// All components' states.
    pub fn components(&self) -> BTreeMap<String, ComponentState> {
        self.components.lock().clone()
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Who may call the admin API (`[admin]` token, `metrics_public`).
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// Required by every route except `/healthz`, `/readyz` and a public `/metrics`.
    pub token: Option<Secret>,
    /// `/metrics` without the token, so Prometheus scrapers need no credentials.
    pub metrics_public: bool,
}

impl Default for AdminAuth {
    fn default() -> Self {
        AdminAuth {
            token: None,
            metrics_public: true,
        }
    }
}

impl AdminAuth {
    /// True if `path` may be served to a request carrying `authorization`.
    fn allows(&self, path: &str, authorization: Option<&http::HeaderValue>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if path == "/healthz" || path == "/readyz" || (path == "/metrics" && self.metrics_public) {
            return true;
        }
        let presented = authorization
            .map(|v| v.as_bytes())
            .and_then(|v| v.split_first_chunk::<7>())
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, rest)| rest.trim_ascii())
            .unwrap_or_default();
        tokens_equal(token.as_bytes(), presented)
    }
}

/// Why a token cannot be used: it must fit in an `Authorization` header as typed.
pub fn check_token(token: &[u8]) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("the token is empty");
    }
    if !token.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("the token must be printable ASCII without spaces");
    }
    Ok(())
}

/// Compares digests so that neither the position of the first difference nor the token's
/// length shows in the time taken.
fn tokens_equal(expected: &[u8], presented: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(expected), Sha256::digest(presented));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The reason a config may not serve the admin API as it stands, if any.
pub fn exposure_problem(addr: SocketAddr, auth: &AdminAuth) -> Option<String> {
    if auth.token.is_none() && !addr.ip().is_loopback() {
        return Some(format!(
            "admin.listen: {addr} is not loopback and no admin token is set"
        ));
    }
    if auth.token.is_none() && !auth.metrics_public {
        return Some("admin.metrics_public: false needs an admin token".into());
    }
    None
}

/// What the admin endpoints read from.
pub struct AdminState {
    pub auth: AdminAuth,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Pipeline>,
    pub listeners: Mutex<Vec<BoundListener>>,
    pub admin_addr: Mutex<Option<SocketAddr>>,
    /// The semantic engine, when enabled (baselines API).
    pub semantic: Mutex<Option<Arc<crate::semantic::live::SemanticSink>>>,
}

/// The running admin server.
pub struct Admin {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Binds `addr` and serves until [`Admin::shutdown`].
    pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<Admin> {
        let tcp = TcpListener::bind(addr).await?;
        let addr = tcp.local_addr()?;
        *state.admin_addr.lock() = Some(addr);
        tracing::info!(addr = %addr, "admin server bound");
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                tokio::select! {
                    accepted = tcp.accept() => {
                        let Ok((stream, _)) = accepted else {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            continue;
                        };
                        let state = state.clone();
                        let svc = service_fn(move |req| serve(state.clone(), req));
                        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    _ = rx.changed() => break,
                }
            }
        });
        Ok(Admin { addr, stop, task })
    }

    /// Stops accepting admin connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    uptime_secs: f64,
    ready: bool,
    admin: Option<SocketAddr>,
    listeners: &'a [BoundListener],
    pipeline: crate::pipeline::PipelineStats,
    components: BTreeMap<String, ComponentState>,
    traffic: Vec<crate::metrics::ListenerSummary>,
}

async fn serve(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if !state
        .auth
        .allows(&path, req.headers().get(header::AUTHORIZATION))
    {
        tracing::debug!(path = %path, "admin request without a valid token");
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "unauthorized: send Authorization: Bearer <admin token>\n".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"semtap admin\""),
        );
        return Ok(r);
    }
    if path == "/baselines" || path.starts_with("/baselines/") || path == "/incidents" {
        return Ok(baselines_api(&state, req.method(), &path).await);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ));
    }
    let resp = match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render_prometheus(),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let comps = state.health.components();
            let down: Vec<_> = comps.iter().filter(|(_, c)| c.status == "down").collect();
            let degraded: BTreeMap<_, _> = comps.iter().filter(|(_, c)| c.status != "ok").collect();
            let ready = state.health.is_ready() && down.is_empty();
            let body = serde_json::json!({
                "ready": ready,
                "degraded": degraded,
            });
            json(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &body,
            )
        }
        "/status" => {
            let listeners = state.listeners.lock().clone();
            let s = Status {
                version: env!("CARGO_PKG_VERSION"),
                uptime_secs: state.health.uptime_secs(),
                ready: state.health.is_ready(),
                admin: *state.admin_addr.lock(),
                listeners: &listeners,
                pipeline: state.pipeline.stats(),
                components: state.health.components(),
                traffic: state.metrics.summary(),
            };
            json(StatusCode::OK, &s)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(resp)
}

/// `GET /baselines`, `GET /incidents`, `POST /baselines/{key}/pin`, `POST /baselines/{key}/reset`.
/// Keys contain slashes (`listener/provider/model[/route]`); they may be percent-encoded.
async fn baselines_api(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let Some(sem) = state.semantic.lock().clone() else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "the semantic engine is disabled"}),
        );
    };
    let engine = sem.engine();
    if path == "/baselines" || path == "/baselines/" {
        if method != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use GET\n".into(),
            );
        }
        // The engine thread holds this lock while it analyses: wait off the proxy's workers.
        let list = locked(engine, |e| e.baselines()).await;
        return json(StatusCode::OK, &serde_json::json!({ "baselines": list }));
    }
    if path == "/incidents" {
        let open = locked(engine, |e| e.open_incidents()).await;
        return json(StatusCode::OK, &serde_json::json!({ "open": open }));
    }
    let rest = &path["/baselines/".len()..];
    let (key, action) = match rest.rsplit_once('/') {
        Some((k, a)) if a == "pin" || a == "reset" => (
            crate::config::percent_decode(k).unwrap_or_else(|_| k.to_string()),
            a,
        ),
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "use /baselines/{key}/pin or /baselines/{key}/reset"}),
            );
        }
    };
    if method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".into(),
        );
    }
    let found = match action {
        "pin" => {
            let key2 = key.clone();
            locked(engine, move |e| e.pin(&key2)).await.then_some(0)
        }
        _ => {
            let key2 = key.clone();
            tokio::task::spawn_blocking(move || sem.reset(&key2))
                .await
                .ok()
                .flatten()
        }
    };
    match found {
        Some(resolved) => json(
            StatusCode::OK,
            &serde_json::json!({"key": key, "action": action, "resolved_incidents": resolved}),
        ),
        None => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no baseline for key `{key}`")}),
        ),
    }
}

/// Runs `f` on the engine under its lock, on a blocking thread: the engine thread holds the
/// lock for a whole analysis, which must not stall a runtime worker that also serves traffic.
async fn locked<T: Send + 'static>(
    engine: Arc<parking_lot::Mutex<crate::semantic::engine::Engine>>,
    f: impl FnOnce(&mut crate::semantic::engine::Engine) -> T + Send + 'static,
) -> T {
    match tokio::task::spawn_blocking(move || f(&mut engine.lock())).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into());
    text(status, "application/json", body)
}
