//! The upstream connection pool over real loopback sockets: reuse, the keep-alive race, the
//! idle cap and the idle timeout, each seen from an upstream that counts its connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proc::{addr_of, Proc};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

/// How the raw upstream treats each connection.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Wait this long before answering (holds requests in flight at once).
    delay: Duration,
    /// Close the connection this long after each answer, without saying so in a header
    /// (what an upstream's keep-alive timeout does).
    close_after: Option<Duration>,
    /// Send the answer chunked (as streams and many servers do) instead of with a length.
    chunked: bool,
}

/// Answers at once, keeps connections open, sends a length.
const PLAIN: Behaviour = Behaviour {
    delay: Duration::ZERO,
    close_after: None,
    chunked: false,
};

/// A bare HTTP/1.1 upstream on loopback; returns its address and the connections it accepted.
async fn raw_upstream(b: Behaviour) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then a content-length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    tokio::time::sleep(b.delay).await;
                    let (half, rest) = ANSWER.split_at(ANSWER.len() / 2);
                    let resp = if b.chunked {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{half}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
                            half.len(),
                            rest.len()
                        )
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                            ANSWER.len()
                        )
                    };
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if let Some(after) = b.close_after {
                        tokio::time::sleep(after).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn metric(t: &Tapped, name: &str) -> f64 {
    let (_, text) = get_text(&format!("{}/metrics", t.admin())).await;
    prom_sum(&text, name, &[])
}

async fn chat(c: &HttpClient, t: &Tapped) -> u16 {
    let (status, _, body) = send(
        c,
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o-mini", "hi", false),
        ),
    )
    .await;
    assert_eq!(body.as_ref(), ANSWER.as_bytes());
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (addr, accepted) = raw_upstream(PLAIN).await;
    let t = tap(&format!("http://{addr}")).await;
    let c = client();
    for _ in 0..25 {
        assert_eq!(chat(&c, &t).await, 200);
    }
    // A fresh client connection to semtap still finds the pooled upstream connection.
    assert_eq!(chat(&client(), &t).await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric(&t, "semtap_upstream_connections_opened_total").await,
        1.0
    );
    assert_eq!(metric(&t, "semtap_upstream_connections_idle").await, 1.0);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_return_their_connection_too() {
    let (addr, accepted) = raw_upstream(Behaviour {
        chunked: true,
        ..PLAIN
    })
    .await;
    let t = tap(&format!("http://{addr}")).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(chat(&c, &t).await, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_idle_is_never_used() {
    let (addr, accepted) = raw_upstream(Behaviour {
        close_after: Some(Duration::from_millis(20)),
        ..PLAIN
    })
    .await;
    let t = tap(&format!("http://{addr}")).await;
    let c = client();
    for _ in 0..6 {
        assert_eq!(chat(&c, &t).await, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_the_rest_closed() {
    let (addr, accepted) = raw_upstream(Behaviour {
        delay: Duration::from_millis(300),
        ..PLAIN
    })
    .await;
    let mut cfg = config_for(&format!("http://{addr}"), None);
    cfg.limits.upstream_idle_connections = 2;
    let t = tap_with(cfg).await;
    let burst = || async {
        let all = (0..6).map(|_| {
            let c = client();
            let t = &t;
            async move { chat(&c, t).await }
        });
        for status in futures_util::future::join_all(all).await {
            assert_eq!(status, 200);
        }
    };
    burst().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
    assert_eq!(metric(&t, "semtap_upstream_connections_idle").await, 2.0);
    // The next burst reuses the two kept and opens four.
    burst().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    assert_eq!(metric(&t, "semtap_upstream_connections_idle").await, 2.0);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_past_the_keepalive_is_closed_not_reused() {
    let (addr, accepted) = raw_upstream(PLAIN).await;
    let mut cfg = config_for(&format!("http://{addr}"), None);
    cfg.limits.upstream_keepalive = Duration::from_millis(200);
    let t = tap_with(cfg).await;
    let c = client();
    assert_eq!(chat(&c, &t).await, 200);
    assert_eq!(chat(&c, &t).await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(chat(&c, &t).await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_idle_connections_allowed_every_request_opens_its_own() {
    let (addr, accepted) = raw_upstream(PLAIN).await;
    let mut cfg = config_for(&format!("http://{addr}"), None);
    cfg.limits.upstream_idle_connections = 0;
    let t = tap_with(cfg).await;
    let c = client();
    for _ in 0..4 {
        assert_eq!(chat(&c, &t).await, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    assert_eq!(metric(&t, "semtap_upstream_connections_idle").await, 0.0);
    t.running.shutdown().await;
}

/// An HTTPS upstream on loopback with the test certificate, offering `alpn`; returns its port,
/// the connections it accepted and the HTTP version of every request it served.
async fn tls_upstream(
    alpn: &[&[u8]],
) -> (
    u16,
    Arc<AtomicUsize>,
    Arc<parking_lot::Mutex<Vec<http::Version>>>,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let certs = CertificateDer::pem_file_iter(format!("{dir}/localhost.crt"))
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/localhost.key")).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let versions = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (count, seen) = (accepted.clone(), versions.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        seen.lock().push(req.version());
                        async move {
                            // A short wait keeps the concurrent requests in flight together.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                        ANSWER.as_bytes(),
                                    )))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (port, accepted, versions)
}

/// semtap (as its own process, trusting the test certificate) in front of `https://localhost:port`.
async fn through_tls(port: u16) -> (Proc, String) {
    let cert = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tls/localhost.crt"
    );
    let p = Proc::run_flags(
        &format!("https://localhost:{port}"),
        &[],
        &[("SSL_CERT_FILE", cert), ("SSL_CERT_DIR", "/nonexistent")],
    );
    let listen = addr_of(&p.wait_log("listener bound"));
    (p, format!("http://{listen}"))
}

async fn chat_at(base: &str) -> (u16, bytes::Bytes) {
    let (status, _, body) = send(
        &client(),
        post_json(
            &format!("{base}/v1/chat/completions"),
            &chat_body("gpt-4o-mini", "hi", false),
        ),
    )
    .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_offering_h2_gets_every_request_on_one_multiplexed_connection() {
    let (port, accepted, versions) = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let (_p, base) = through_tls(port).await;
    for _ in 0..5 {
        let (status, body) = chat_at(&base).await;
        assert_eq!(status, 200);
        assert_eq!(body.as_ref(), ANSWER.as_bytes());
    }
    let all = (0..8).map(|_| {
        let base = base.clone();
        async move { chat_at(&base).await }
    });
    for (status, body) in futures_util::future::join_all(all).await {
        assert_eq!(status, 200);
        assert_eq!(body.as_ref(), ANSWER.as_bytes());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let versions = versions.lock().clone();
    assert_eq!(versions.len(), 13);
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_offering_only_http1_is_pooled_over_http1() {
    let (port, accepted, versions) = tls_upstream(&[b"http/1.1"]).await;
    let (_p, base) = through_tls(port).await;
    for _ in 0..5 {
        let (status, body) = chat_at(&base).await;
        assert_eq!(status, 200);
        assert_eq!(body.as_ref(), ANSWER.as_bytes());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(versions.lock().iter().all(|v| *v == http::Version::HTTP_11));
}
