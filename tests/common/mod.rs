//! Shared helpers for the integration tests: semtap in-process in front of the simulated
//! upstream, over real loopback sockets.
#![allow(dead_code)]

pub mod proc;

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use semtap::config::{Config, ListenerConfig, Upstream};
use semtap::pipeline::ChannelSink;
use semtap::record::{ExchangeRecord, Provider};
use semtap::server::Running;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub struct Tapped {
    pub running: Running,
    pub records: Receiver<Arc<ExchangeRecord>>,
    pub addr: SocketAddr,
}

impl Tapped {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.running.admin_addr().expect("admin bound"))
    }

    /// Waits for the next record (analysis is asynchronous).
    pub fn next_record(&self) -> Arc<ExchangeRecord> {
        self.records
            .recv_timeout(Duration::from_secs(20))
            .expect("a record within 20 s")
    }
}

pub fn config_for(upstream: &str, provider: Option<Provider>) -> Config {
    let mut cfg = Config {
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        ..Config::default()
    };
    cfg.listeners.push(ListenerConfig {
        name: "test".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        upstream: Upstream::parse(upstream).expect("upstream url"),
        provider,
    });
    cfg.shutdown_grace = Duration::from_secs(5);
    // The tap's own tests run without the semantic engine (tests/semantic_live.rs covers it).
    cfg.semantic.enabled = false;
    cfg
}

pub async fn tap_with(cfg: Config) -> Tapped {
    let (sink, records) = ChannelSink::new(10_000);
    let running = Running::start_with_sinks(&cfg, vec![sink])
        .await
        .expect("semtap starts");
    let addr = running.listener_addrs()[0];
    Tapped {
        running,
        records,
        addr,
    }
}

pub async fn tap(upstream: &str) -> Tapped {
    tap_with(config_for(upstream, None)).await
}

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn post_json(url: &str, body: &serde_json::Value) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-0000");
    if url.contains("/messages") {
        b = b.header("anthropic-version", "2023-06-01");
    }
    b.body(Full::new(Bytes::from(
        serde_json::to_vec(body).expect("json"),
    )))
    .expect("request")
}

pub fn with_header(
    mut req: http::Request<Full<Bytes>>,
    name: &'static str,
    value: &str,
) -> http::Request<Full<Bytes>> {
    req.headers_mut()
        .insert(name, value.parse().expect("header value"));
    req
}

/// Sends a request and returns status, headers and the whole body.
pub async fn send(
    client: &HttpClient,
    req: http::Request<Full<Bytes>>,
) -> (u16, http::HeaderMap, Bytes) {
    let resp = client.request(req).await.expect("response");
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("whole body").to_bytes();
    (status, parts.headers, bytes)
}

pub async fn get_text(url: &str) -> (u16, String) {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (s, _, b) = send(&client(), req).await;
    (s, String::from_utf8_lossy(&b).into_owned())
}

pub fn chat_body(model: &str, prompt: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "max_tokens": 200,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "earlier turn"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": prompt}
        ]
    })
}

pub fn messages_body(model: &str, prompt: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "max_tokens": 300,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": prompt}]
    })
}

/// Sum of all samples of a Prometheus metric whose labels contain every `needle`.
pub fn prom_sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let n = l.split(['{', ' ']).next().unwrap_or("");
            n == name
        })
        .filter(|l| needles.iter().all(|nd| l.contains(nd)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// This process's resident set size in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// 30 chat calls to `url` on one key: 6 blank answers, 4 normal, then 20 of status 529. Enough
/// for blank flags and an `error_rate` incident once the key has its error baseline.
pub async fn blank_then_overloaded(c: &HttpClient, url: &str) {
    for i in 0..30 {
        let req = post_json(
            url,
            &chat_body("gpt-4o-mini", "Why is the sky blue?", i % 2 == 0),
        );
        let req = if i < 6 {
            with_header(req, "x-mock-fault", "blank")
        } else if i >= 10 {
            with_header(req, "x-mock-fault", "status=529")
        } else {
            req
        };
        send(c, req).await;
    }
}
