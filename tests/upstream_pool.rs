//! The upstream connection pool over real loopback sockets: reuse, the keep-alive race, the
//! idle cap and the idle timeout, each seen from an upstream that counts its connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
}

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
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                        ANSWER.len()
                    );
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
    let (addr, accepted) = raw_upstream(Behaviour {
        delay: Duration::ZERO,
        close_after: None,
    })
    .await;
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
async fn a_connection_the_upstream_closed_while_idle_is_never_used() {
    let (addr, accepted) = raw_upstream(Behaviour {
        delay: Duration::ZERO,
        close_after: Some(Duration::from_millis(20)),
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
        close_after: None,
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
    let (addr, accepted) = raw_upstream(Behaviour {
        delay: Duration::ZERO,
        close_after: None,
    })
    .await;
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
    let (addr, accepted) = raw_upstream(Behaviour {
        delay: Duration::ZERO,
        close_after: None,
    })
    .await;
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
