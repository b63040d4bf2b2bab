//! A simulated LLM upstream: OpenAI- and Anthropic-shaped answers over real loopback sockets,
//! with fault injection, for the integration tests and `semtap demo`.
//!
//! [`MockUpstream::start`] binds `127.0.0.1:0` and serves HTTP/1.1 and h2c (with upgrades) until
//! [`MockUpstream::shutdown`] or drop.
//!
//! # LLM endpoints (POST)
//!
//! Any path ending in `/chat/completions` (OpenAI and Azure deployments), `/responses`,
//! `/completions`, `/embeddings` and `/messages` (Anthropic). Answers are deterministic given
//! the method, path, query and body: the text is chosen from a fixed set of paragraphs by a hash
//! of the last user message, and ids and timestamps are derived from a hash of the request.
//! With `"stream": true` they stream as SSE. When the request carries `tools` and the prompt
//! mentions the weather, the answer is a weather tool call.
//!
//! Request headers that shape the answer:
//! - `x-mock-ttft-ms: N` delays the first stream chunk, or the whole non-stream response.
//! - `x-mock-chunk-delay-ms: N` delays every later stream chunk.
//! - `x-mock-fault: a,b,...` with `status=NNN` (the provider's error envelope, `retry-after: 1`
//!   on 429 and 529), `hang` (no response until shutdown), `cut=N` (abort the body after N
//!   content chunks), `gate` (hold the stream after its first event until
//!   [`MockUpstream::release_gate`]), `malformed_json`, `malformed_sse`, `blank` (empty text),
//!   `gzip` (when the request accepts it), `no_usage`, `loop` (the first sentence repeated),
//!   `error_text` (a 200 whose text is an overload error) and `swap` (a silent model swap:
//!   another dated model name, answers of another topic and style).
//!
//! # Utility endpoints (any method)
//!
//! - `/bytes?n=N&seed=S`: N deterministic pseudo-random bytes in random-sized chunks.
//! - `/echo`: the request body back, request headers as `x-echo-<name>`, plus `x-echo-method`
//!   and `x-echo-path`.
//! - `/stream-bytes?mb=N`: N MiB, chunked, 64 KiB at a time, generated on the fly.
//! - `/slow-headers?ms=N`: 200 after N milliseconds.
//! - `GET /v1/realtime` with `Upgrade: websocket`: 101, then raw bytes are echoed back.
//!
//! Anything else is `404 {"error":"not found"}`. Every response carries `x-request-id`.

mod anthropic;
mod body;
mod faults;
mod openai;
mod text;
mod ws;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use body::{to_json, CancelGuard, MockBody, Phase, Reply, SseEvent};
use faults::{Faults, Timing};
use text::{fill_stream_bytes, fnv1a, hex_id, SplitMix};

/// Largest request body read (bigger ones get 413).
const MAX_BODY: usize = 256 << 20;

/// A simulated LLM upstream serving on a loopback socket. Stops on [`MockUpstream::shutdown`]
/// or when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// State shared by the accept loop, the connections and the handle.
pub(crate) struct Shared {
    requests: AtomicU64,
    cancelled: AtomicU64,
    shutting_down: AtomicBool,
    last: Mutex<Option<(HeaderMap, String)>>,
    /// Generation counter: a gated stream waits until it moves past the value it saw.
    gate: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
}

/// What the answer builders need besides the request JSON.
pub(crate) struct Ctx {
    /// Hash of method, path, query and body: ids, timestamps and chunking derive from it.
    pub(crate) seed: u64,
    pub(crate) faults: Faults,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves until dropped or shut down.
    pub async fn start() -> io::Result<MockUpstream> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` and serves until dropped or shut down.
    pub async fn start_on(addr: SocketAddr) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (gate, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            requests: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            last: Mutex::new(None),
            gate,
            shutdown: shutdown_rx,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(MockUpstream {
            addr,
            shared,
            shutdown_tx,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Releases the streams currently held by the `gate` fault. Streams gated after this call
    /// wait for the next one.
    pub fn release_gate(&self) {
        self.shared.gate.send_modify(|g| *g += 1);
    }

    /// Number of requests received so far (every path, every method).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Headers of the last request received, as received.
    pub fn last_request_headers(&self) -> Option<HeaderMap> {
        self.shared
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(h, _)| h.clone())
    }

    /// Path and query of the last request received, as received.
    pub fn last_request_path(&self) -> Option<String> {
        self.shared
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, p)| p.clone())
    }

    /// Requests whose connection or stream the client dropped before the response finished.
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Stops accepting, drops every connection (held and hanging ones included) and waits for
    /// the server task to end.
    pub async fn shutdown(mut self) {
        self.signal_shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn signal_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.shutdown_tx.send(true);
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.signal_shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Resolves once shutdown is signalled (or the handle is gone).
async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = wait_shutdown(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(stream, shared.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "mock upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "mock upstream connection ended with an error");
            }
        }
        _ = wait_shutdown(&mut shutdown) => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    *shared.last.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((req.headers().clone(), path_q.clone()));
    let guard = CancelGuard::new(shared.clone());
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/echo" => echo(req, &path_q, guard).await,
        "/bytes" => bytes_endpoint(&req, &path_q, guard),
        "/stream-bytes" => stream_bytes(&req, &path_q, guard),
        "/slow-headers" => slow_headers(&req, &path_q, guard).await,
        p if p.trim_end_matches('/').ends_with("/realtime") => {
            websocket(&shared, req, &path_q, guard)
        }
        p => match Endpoint::from_path(p) {
            Some(kind) => llm(&shared, kind, req, &path_q, guard).await,
            None => {
                let rid = request_id(req.method(), &path_q, b"");
                json_response(404, &rid, &serde_json::json!({"error": "not found"}), guard)
            }
        },
    };
    Ok(resp)
}

/// `x-request-id`: derived from the request so the same request gets the same id.
fn request_id(method: &Method, path_q: &str, body: &[u8]) -> String {
    format!(
        "req_{}",
        hex_id(
            fnv1a(&[method.as_str().as_bytes(), path_q.as_bytes(), body]),
            24
        )
    )
}

fn query_u64(path_q: &str, key: &str) -> Option<Result<u64, ()>> {
    let query = path_q.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.parse::<u64>().map_err(|_| ()))
}

fn set_header(resp: &mut Response<MockBody>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

fn response(status: u16, rid: &str, body: MockBody) -> Response<MockBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set_header(&mut resp, "x-request-id", rid);
    resp
}

fn json_response(status: u16, rid: &str, v: &Value, guard: CancelGuard) -> Response<MockBody> {
    let mut resp = response(status, rid, MockBody::full(to_json(v), guard));
    set_header(&mut resp, "content-type", "application/json");
    resp
}

async fn read_body(body: Incoming) -> Result<Bytes, u16> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(413),
        Err(_) => Err(400),
    }
}

// ---------------------------------------------------------------------------------------------
// Utility endpoints

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

async fn echo(req: Request<Incoming>, path_q: &str, guard: CancelGuard) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(status) => {
            let rid = request_id(&parts.method, path_q, b"");
            return json_response(
                status,
                &rid,
                &serde_json::json!({"error": "bad request body"}),
                guard,
            );
        }
    };
    let rid = request_id(&parts.method, path_q, &body);
    let listed: Vec<String> = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let content_type = parts.headers.get(CONTENT_TYPE).cloned();
    let mut resp = response(200, &rid, MockBody::full(body, guard));
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || listed.iter().any(|l| l == n) {
            continue;
        }
        if let Ok(echoed) = HeaderName::from_bytes(format!("x-echo-{n}").as_bytes()) {
            resp.headers_mut().append(echoed, value.clone());
        }
    }
    set_header(&mut resp, "x-echo-method", parts.method.as_str());
    set_header(&mut resp, "x-echo-path", path_q);
    let ct = content_type.unwrap_or(HeaderValue::from_static("application/octet-stream"));
    resp.headers_mut().insert(CONTENT_TYPE, ct);
    resp
}

/// Sends `total` deterministic bytes for `seed` in chunks sized by `next_size`.
fn spawn_bytes(
    seed: u64,
    total: u64,
    mut next_size: impl FnMut() -> u64 + Send + 'static,
) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut off = 0u64;
        while off < total {
            let k = next_size().clamp(1, total - off);
            let mut buf = vec![0u8; k as usize];
            fill_stream_bytes(seed, off, &mut buf);
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return;
            }
            off += k;
        }
    });
    rx
}

fn bytes_endpoint(req: &Request<Incoming>, path_q: &str, guard: CancelGuard) -> Response<MockBody> {
    let rid = request_id(req.method(), path_q, b"");
    let (n, seed) = match (query_u64(path_q, "n"), query_u64(path_q, "seed")) {
        (Some(Err(())), _) | (_, Some(Err(()))) => {
            return json_response(
                400,
                &rid,
                &serde_json::json!({"error": "n and seed must be integers"}),
                guard,
            )
        }
        (n, seed) => (
            n.and_then(Result::ok).unwrap_or(1024),
            seed.and_then(Result::ok).unwrap_or(0),
        ),
    };
    if n > 1 << 30 {
        return json_response(
            400,
            &rid,
            &serde_json::json!({"error": "n is at most 1 GiB"}),
            guard,
        );
    }
    let body = if n == 0 {
        MockBody::full(Bytes::new(), guard)
    } else {
        let mut sizes = SplitMix::new(rand::random::<u64>());
        MockBody::channel(
            spawn_bytes(seed, n, move || sizes.range(1, 16_384)),
            Some(n),
            guard,
        )
    };
    let mut resp = response(200, &rid, body);
    set_header(&mut resp, "content-type", "application/octet-stream");
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(n));
    resp
}

fn stream_bytes(req: &Request<Incoming>, path_q: &str, guard: CancelGuard) -> Response<MockBody> {
    let rid = request_id(req.method(), path_q, b"");
    let mb = match query_u64(path_q, "mb") {
        Some(Ok(mb)) if mb <= 1 << 16 => mb,
        None => 1,
        _ => {
            return json_response(
                400,
                &rid,
                &serde_json::json!({"error": "mb must be an integer up to 65536"}),
                guard,
            )
        }
    };
    let seed = query_u64(path_q, "seed").and_then(Result::ok).unwrap_or(0);
    let rx = spawn_bytes(seed, mb << 20, || 64 << 10);
    let mut resp = response(200, &rid, MockBody::channel(rx, None, guard));
    set_header(&mut resp, "content-type", "application/octet-stream");
    resp
}

async fn slow_headers(
    req: &Request<Incoming>,
    path_q: &str,
    guard: CancelGuard,
) -> Response<MockBody> {
    let rid = request_id(req.method(), path_q, b"");
    let ms = query_u64(path_q, "ms")
        .and_then(Result::ok)
        .unwrap_or(1000)
        .min(600_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let mut resp = response(200, &rid, MockBody::full(Bytes::from_static(b"ok"), guard));
    set_header(&mut resp, "content-type", "text/plain");
    resp
}

fn websocket(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    path_q: &str,
    guard: CancelGuard,
) -> Response<MockBody> {
    let rid = request_id(req.method(), path_q, b"");
    let headers = req.headers();
    let wants_ws = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        });
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (true, Some(key)) = (wants_ws, key) else {
        let mut resp = json_response(
            426,
            &rid,
            &serde_json::json!({"error": "websocket upgrade required"}),
            guard,
        );
        set_header(&mut resp, "upgrade", "websocket");
        return resp;
    };
    let protocol = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_string());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "mock websocket upgrade failed");
                return;
            }
        };
        let mut io = TokioIo::new(upgraded);
        let echo = async {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = io.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await?;
                io.flush().await?;
            }
            io.shutdown().await
        };
        tokio::select! {
            _ = echo => {}
            _ = wait_shutdown(&mut shutdown) => {}
        }
    });
    let mut resp = response(101, &rid, MockBody::full(Bytes::new(), guard));
    set_header(&mut resp, "upgrade", "websocket");
    set_header(&mut resp, "connection", "Upgrade");
    set_header(&mut resp, "sec-websocket-accept", &ws::accept_key(&key));
    if let Some(p) = protocol {
        set_header(&mut resp, "sec-websocket-protocol", &p);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// LLM endpoints

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Responses,
    Completions,
    Embeddings,
    Messages,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Endpoint> {
        let p = path.trim_end_matches('/');
        if p.ends_with("/chat/completions") {
            Some(Endpoint::Chat)
        } else if p.ends_with("/responses") {
            Some(Endpoint::Responses)
        } else if p.ends_with("/completions") {
            Some(Endpoint::Completions)
        } else if p.ends_with("/embeddings") {
            Some(Endpoint::Embeddings)
        } else if p.ends_with("/messages") {
            Some(Endpoint::Messages)
        } else {
            None
        }
    }

    fn anthropic(self) -> bool {
        self == Endpoint::Messages
    }

    fn error_body(self, status: u16, message: Option<&str>) -> Value {
        if self.anthropic() {
            anthropic::error_body(status, message)
        } else {
            openai::error_body(status, message)
        }
    }
}

fn error_response(
    kind: Endpoint,
    status: u16,
    message: Option<&str>,
    rid: &str,
    guard: CancelGuard,
) -> Response<MockBody> {
    let mut resp = json_response(status, rid, &kind.error_body(status, message), guard);
    if status == 429 || status == 529 {
        set_header(&mut resp, "retry-after", "1");
    }
    if kind.anthropic() {
        set_header(&mut resp, "request-id", rid);
    } else if status == 429 {
        set_header(&mut resp, "x-ratelimit-remaining-requests", "0");
    }
    resp
}

fn success_headers(kind: Endpoint, rid: &str, resp: &mut Response<MockBody>) {
    if kind.anthropic() {
        set_header(resp, "request-id", rid);
        set_header(resp, "anthropic-ratelimit-requests-limit", "4000");
        set_header(resp, "anthropic-ratelimit-requests-remaining", "3999");
        set_header(
            resp,
            "anthropic-ratelimit-requests-reset",
            "2025-01-01T00:00:01Z",
        );
        set_header(resp, "anthropic-ratelimit-tokens-limit", "400000");
        set_header(resp, "anthropic-ratelimit-tokens-remaining", "399000");
        set_header(
            resp,
            "anthropic-ratelimit-tokens-reset",
            "2025-01-01T00:00:01Z",
        );
    } else {
        set_header(resp, "openai-version", "2020-10-01");
        set_header(resp, "openai-processing-ms", "42");
        set_header(resp, "x-ratelimit-limit-requests", "5000");
        set_header(resp, "x-ratelimit-limit-tokens", "160000");
        set_header(resp, "x-ratelimit-remaining-requests", "4999");
        set_header(resp, "x-ratelimit-remaining-tokens", "159000");
        set_header(resp, "x-ratelimit-reset-requests", "12ms");
        set_header(resp, "x-ratelimit-reset-tokens", "375ms");
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let mut it = t.split(';');
            let coding = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn llm(
    shared: &Arc<Shared>,
    kind: Endpoint,
    req: Request<Incoming>,
    path_q: &str,
    guard: CancelGuard,
) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(status) => {
            let rid = request_id(&parts.method, path_q, b"");
            return error_response(
                kind,
                status,
                Some("Could not read the request body."),
                &rid,
                guard,
            );
        }
    };
    let rid = request_id(&parts.method, path_q, &body);
    if parts.method != Method::POST {
        return error_response(kind, 405, None, &rid, guard);
    }
    let faults = Faults::from_headers(&parts.headers);
    let timing = Timing::from_headers(&parts.headers);
    if faults.hang {
        // Never answers: shutdown drops the connection, and with it this future.
        let _guard = guard;
        match std::future::pending::<Infallible>().await {}
    }
    if let Some(status) = faults.status {
        sleep(timing.ttft).await;
        return error_response(kind, status, None, &rid, guard);
    }
    let req_json: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return error_response(
                kind,
                400,
                Some("The request body must be a JSON object."),
                &rid,
                guard,
            );
        }
        Err(e) => {
            let msg = if kind.anthropic() {
                format!("There was an error parsing the body of your request: {e}")
            } else {
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)".to_string()
            };
            return error_response(kind, 400, Some(&msg), &rid, guard);
        }
    };
    if faults.malformed_json {
        sleep(timing.ttft).await;
        let truncated: &'static [u8] = if kind.anthropic() {
            b"{\"id\":\"msg_x\",\"type\":\"message\",\"content\":[{\"ty"
        } else {
            b"{\"id\":\"chatcmpl-x\",\"choices\":[{\"mess"
        };
        let mut resp = response(
            200,
            &rid,
            MockBody::full(Bytes::from_static(truncated), guard),
        );
        set_header(&mut resp, "content-type", "application/json");
        success_headers(kind, &rid, &mut resp);
        return resp;
    }
    let ctx = Ctx {
        seed: fnv1a(&[parts.method.as_str().as_bytes(), path_q.as_bytes(), &body]),
        faults,
    };
    let reply = match kind {
        Endpoint::Chat => openai::chat(&req_json, &ctx),
        Endpoint::Responses => openai::responses(&req_json, &ctx),
        Endpoint::Completions => openai::completions(&req_json, &ctx),
        Endpoint::Embeddings => openai::embeddings(&req_json, &ctx),
        Endpoint::Messages => anthropic::messages(&req_json, &body, &ctx),
    };
    let reply = match reply {
        Ok(r) => r,
        Err(msg) => return error_response(kind, 400, Some(&msg), &rid, guard),
    };
    match reply {
        Reply::Json(v) => {
            sleep(timing.ttft).await;
            let json = to_json(&v).into_bytes();
            let compressed = if ctx.faults.gzip && accepts_gzip(&parts.headers) {
                gzip(&json).ok()
            } else {
                None
            };
            let mut resp = match compressed {
                Some(gz) => {
                    let mut r = response(200, &rid, MockBody::full(gz, guard));
                    set_header(&mut r, "content-encoding", "gzip");
                    r
                }
                None => response(200, &rid, MockBody::full(json, guard)),
            };
            set_header(&mut resp, "content-type", "application/json");
            success_headers(kind, &rid, &mut resp);
            resp
        }
        Reply::Stream(mut events) => {
            if ctx.faults.malformed_sse && !events.is_empty() {
                events.insert(1, SseEvent::raw(Phase::Pre, b"data: {not json\n\n"));
                events.insert(
                    2,
                    SseEvent::raw(Phase::Pre, b"data: \xff\xfe binary junk\n\n"),
                );
            }
            let gate_from = ctx.faults.gate.then(|| *shared.gate.borrow());
            let rx = spawn_stream(shared, events, timing, ctx.faults.cut, gate_from);
            let mut resp = response(200, &rid, MockBody::channel(rx, None, guard));
            set_header(
                &mut resp,
                "content-type",
                "text/event-stream; charset=utf-8",
            );
            set_header(&mut resp, "cache-control", "no-cache");
            success_headers(kind, &rid, &mut resp);
            resp
        }
    }
}

/// Feeds `events` to the body with the requested delays, gate and cut.
fn spawn_stream(
    shared: &Arc<Shared>,
    events: Vec<SseEvent>,
    timing: Timing,
    cut: Option<usize>,
    gate_from: Option<u64>,
) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(4);
    let mut shutdown = shared.shutdown.clone();
    let mut gate = shared.gate.subscribe();
    tokio::spawn(async move {
        let produce = async {
            let mut content_sent = 0usize;
            for (i, ev) in events.into_iter().enumerate() {
                sleep(if i == 0 {
                    timing.ttft
                } else {
                    timing.chunk_delay
                })
                .await;
                if let Some(n) = cut {
                    if ev.phase != Phase::Pre && content_sent >= n {
                        // Let hyper write out what it has, then fail the body: the connection is
                        // aborted without the terminating chunk.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        let _ = tx.send(Err(io::Error::other("x-mock-fault: cut"))).await;
                        return;
                    }
                }
                if ev.phase == Phase::Content {
                    content_sent += 1;
                }
                if tx.send(Ok(ev.bytes)).await.is_err() {
                    return;
                }
                if i == 0 {
                    if let Some(from) = gate_from {
                        let _ = gate.wait_for(|g| *g > from).await;
                    }
                }
            }
        };
        tokio::select! {
            _ = produce => {}
            _ = tx.closed() => {}
            _ = wait_shutdown(&mut shutdown) => {}
        }
    });
    rx
}
