//! Malformed input against the running tap, over real loopback sockets: what the client and
//! the upstream get (bytes unchanged), what the record says (a parse anomaly, a truncated
//! capture), and that semtap keeps serving. The upstream here is raw TCP written by the test,
//! so framing (chunk sizes, header sizes, invalid UTF-8) is exactly what each case needs.
//! docs/malformed-input.md tables every case and the test behind it.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use semtap::record::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One piece of a raw response: bytes to write, then flush (a separate TCP segment).
enum Piece {
    Bytes(Vec<u8>),
    /// `n` bytes of `byte`, written 64 KiB at a time (large bodies without holding them).
    Fill(u8, usize),
}

/// A raw-TCP upstream: for every connection, reads one request (head and body), keeps it, and
/// writes `pieces`, then closes.
struct RawUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawUpstream {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The body of the last request received (after the blank line).
    fn last_body(&self) -> Vec<u8> {
        let reqs = self.requests.lock();
        let raw = reqs.last().cloned().unwrap_or_default();
        let at = find(&raw, b"\r\n\r\n").map(|i| i + 4).unwrap_or(raw.len());
        raw[at..].to_vec()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_request(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match len {
                Some(n) => buf.len() >= end + 4 + n,
                None if head.contains("transfer-encoding: chunked") => {
                    buf[end..].ends_with(b"0\r\n\r\n")
                }
                None => true,
            };
            if done {
                return buf;
            }
        }
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

async fn raw_upstream(pieces: Vec<Piece>) -> RawUpstream {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let pieces = Arc::new(pieces);
    let reqs = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let (reqs, pieces) = (reqs.clone(), pieces.clone());
            tokio::spawn(async move {
                let req = read_request(&mut s).await;
                reqs.lock().push(req);
                for p in pieces.iter() {
                    let ok = match p {
                        Piece::Bytes(b) => s.write_all(b).await.is_ok(),
                        Piece::Fill(byte, n) => {
                            let block = vec![*byte; 64 << 10];
                            let mut left = *n;
                            let mut ok = true;
                            while left > 0 && ok {
                                let k = left.min(block.len());
                                ok = s.write_all(&block[..k]).await.is_ok();
                                left -= k;
                            }
                            ok
                        }
                    };
                    if !ok || s.flush().await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    RawUpstream { addr, requests }
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

/// `pieces` as the upstream, a tap in front of it, and one chat call (model gpt-4o) through it.
async fn chat_via_tap(
    pieces: Vec<Piece>,
    stream: bool,
) -> (RawUpstream, Tapped, (u16, http::HeaderMap, Bytes)) {
    let up = raw_upstream(pieces).await;
    let t = tap(&up.url()).await;
    let answer = send(
        &client(),
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "x", stream),
        ),
    )
    .await;
    (up, t, answer)
}

fn json_head(len: usize, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

/// One chunk of chunked transfer encoding, size in lowercase hex.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

fn sse_delta(text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]})
    )
}

const SSE_END: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

fn chat_answer(content: &[u8]) -> Vec<u8> {
    let mut v = br#"{"id":"c1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":""#.to_vec();
    v.extend_from_slice(content);
    v.extend_from_slice(br#""},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#);
    v
}

async fn post_raw(url: &str, body: &[u8], extra: &[(&str, &str)]) -> (u16, http::HeaderMap, Bytes) {
    let mut b = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-0000");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("req");
    send(&client(), req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_json_request_reaches_the_upstream_byte_exact_and_is_recorded() {
    let answer = chat_answer(b"fine");
    let mut resp = json_head(answer.len(), "");
    resp.extend_from_slice(&answer);
    let up = raw_upstream(vec![Piece::Bytes(resp)]).await;
    let t = tap(&up.url()).await;
    let truncated =
        br#"{"model":"gpt-4o","stream":false,"messages":[{"role":"user","content":"hel"#;
    let (s, _, body) = post_raw(&format!("{}/v1/chat/completions", t.base()), truncated, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &answer[..], "the answer is untouched");
    assert_eq!(up.last_body(), truncated, "the request is untouched");
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::Complete);
    assert_eq!(
        r.request_model, None,
        "nothing read from an unreadable request"
    );
    assert_eq!(r.prompt, None);
    assert!(
        r.parse_anomaly
            .as_deref()
            .is_some_and(|a| a.starts_with("request: ")),
        "{:?}",
        r.parse_anomaly
    );
    assert_eq!(r.response, "fine", "the answer is still analysed");
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_json_answer_passes_byte_exact_and_is_a_parse_anomaly() {
    let answer = chat_answer(b"caf\xc3\xa9 \xff\xfe bad");
    let mut resp = json_head(answer.len(), "");
    resp.extend_from_slice(&answer);
    let (_up, t, (s, _, body)) = chat_via_tap(vec![Piece::Bytes(resp)], false).await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &answer[..]);
    let r = t.next_record();
    assert_eq!(
        r.parse_anomaly.as_deref(),
        Some(semtap::protocol::anomaly::INVALID_JSON)
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_an_sse_answer_passes_byte_exact_and_is_a_parse_anomaly() {
    let mut sse = sse_delta("good ").into_bytes();
    sse.extend_from_slice(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff\xfe\"},\"finish_reason\":null}]}\n\n");
    sse.extend_from_slice(sse_delta("tail").as_bytes());
    sse.extend_from_slice(SSE_END.as_bytes());
    let mut pieces = vec![Piece::Bytes(SSE_HEAD.to_vec()), Piece::Bytes(chunk(&sse))];
    pieces.push(Piece::Bytes(b"0\r\n\r\n".to_vec()));
    let (_up, t, (s, _, body)) = chat_via_tap(pieces, true).await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &sse[..]);
    let r = t.next_record();
    assert_eq!(
        r.parse_anomaly.as_deref(),
        Some(semtap::protocol::anomaly::SSE_DATA_NOT_JSON)
    );
    assert_eq!(r.response, "good tail", "the readable events are kept");
    assert_eq!(r.outcome, Outcome::Complete);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_chunk_sizes_and_split_characters_reassemble_to_the_same_answer() {
    // Events split mid-line and inside multi-byte characters; 1-byte chunks, chunk extensions,
    // upper-case hex with leading zeros, and a chunk holding several events.
    let text = ["Hé", "llo 🙂", " wörld", "!"];
    let mut sse = String::new();
    for t in text {
        sse.push_str(&sse_delta(t));
    }
    sse.push_str(SSE_END);
    let sse = sse.into_bytes();
    let mut pieces = vec![Piece::Bytes(SSE_HEAD.to_vec())];
    let mut i = 0;
    let mut n = 0;
    while i < sse.len() {
        let len = [1usize, 3, 7, 2, 64, 1, 5][n % 7].min(sse.len() - i);
        let data = &sse[i..i + len];
        let framed = match n % 3 {
            0 => chunk(data),
            1 => {
                let mut v = format!("{:08X};ext=\"x\"\r\n", len).into_bytes();
                v.extend_from_slice(data);
                v.extend_from_slice(b"\r\n");
                v
            }
            _ => {
                let mut v = format!("{:X}\r\n", len).into_bytes();
                v.extend_from_slice(data);
                v.extend_from_slice(b"\r\n");
                v
            }
        };
        pieces.push(Piece::Bytes(framed));
        i += len;
        n += 1;
    }
    pieces.push(Piece::Bytes(b"0\r\n\r\n".to_vec()));
    let (_up, t, (s, _, body)) = chat_via_tap(pieces, true).await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &sse[..], "the same bytes, whatever the framing");
    let r = t.next_record();
    assert_eq!(r.response, text.concat());
    assert_eq!(r.parse_anomaly, None);
    assert_eq!(r.finish_reasons, ["stop"]);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_single_sse_line_is_forwarded_whole_and_the_capture_stays_capped() {
    const N: usize = 10 << 20;
    let prefix = b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
    let suffix = b"\"},\"finish_reason\":null}]}\n\n";
    let total = prefix.len() + N + suffix.len() + SSE_END.len();
    let pieces = vec![
        Piece::Bytes(SSE_HEAD.to_vec()),
        Piece::Bytes(format!("{total:x}\r\n").into_bytes()),
        Piece::Bytes(prefix.to_vec()),
        Piece::Fill(b'a', N),
        Piece::Bytes(suffix.to_vec()),
        Piece::Bytes(SSE_END.as_bytes().to_vec()),
        Piece::Bytes(b"\r\n0\r\n\r\n".to_vec()),
    ];
    let (_up, t, (s, _, body)) = chat_via_tap(pieces, true).await;
    assert_eq!(s, 200);
    assert_eq!(body.len(), total, "every byte forwarded");
    assert!(body.starts_with(prefix) && body.ends_with(SSE_END.as_bytes()));
    assert!(body[prefix.len()..prefix.len() + N]
        .iter()
        .all(|&b| b == b'a'));
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::Complete);
    assert!(r.capture_truncated, "the analysis copy stops at the cap");
    assert!(
        r.response.len() <= 1 << 20,
        "the record holds at most the capture cap: {} bytes",
        r.response.len()
    );
    assert_eq!(r.response_bytes as usize, total);
    t.running.shutdown().await;
}

/// Sends `head` raw to `addr` and returns the status line semtap answered, if any.
async fn raw_status(addr: SocketAddr, head: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // semtap may answer and close before the whole head is written: ignore write errors.
    let _ = s.write_all(head).await;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while find(&buf, b"\r\n").is_none() {
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    line.lines().next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_request_header_gets_431_and_the_tap_keeps_serving() {
    let answer = chat_answer(b"fine");
    let mut resp = json_head(answer.len(), "");
    resp.extend_from_slice(&answer);
    let up = raw_upstream(vec![Piece::Bytes(resp)]).await;
    let t = tap(&up.url()).await;
    let mut head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 1 << 20));
    head.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
    let status = raw_status(t.addr, &head).await;
    assert_eq!(
        status.as_deref(),
        Some("HTTP/1.1 431 Request Header Fields Too Large")
    );
    assert!(
        up.requests.lock().is_empty(),
        "nothing reached the upstream"
    );
    let (s, _, body) = send(
        &client(),
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "x", false),
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &answer[..]);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_response_header_from_the_upstream_gives_a_502_not_a_crash() {
    let mut resp = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    resp.extend(std::iter::repeat_n(b'a', 1 << 20));
    resp.extend_from_slice(b"\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
    let (_up, t, (s, h, _)) = chat_via_tap(vec![Piece::Bytes(resp)], false).await;
    assert_eq!(s, 502);
    assert_eq!(
        h.get("x-semtap-error").and_then(|v| v.to_str().ok()),
        Some("upstream_unreachable")
    );
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::UpstreamUnreachable);
    t.running.shutdown().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_pass_compressed_and_a_corrupt_or_bomb_body_is_flagged_within_the_cap() {
    // A gzip request body: forwarded compressed, byte-exact.
    let answer = chat_answer(b"fine");
    let mut ok = json_head(answer.len(), "");
    ok.extend_from_slice(&answer);
    let up = raw_upstream(vec![Piece::Bytes(ok)]).await;
    let t = tap(&up.url()).await;
    let req_json =
        serde_json::to_vec(&chat_body("gpt-4o", "zipped question", false)).expect("json");
    let zipped = gzip(&req_json);
    let (s, _, _) = post_raw(
        &format!("{}/v1/chat/completions", t.base()),
        &zipped,
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(up.last_body(), zipped, "the request stays compressed");
    let r = t.next_record();
    assert_eq!(
        r.prompt.as_deref(),
        Some("zipped question"),
        "the analysis copy is decompressed"
    );
    t.running.shutdown().await;

    // A body that says gzip but is not: forwarded unchanged, decompression failure recorded.
    let garbage = b"\x1f\x8b\x08\x00this is not deflate data at all".to_vec();
    let mut resp = json_head(garbage.len(), "content-encoding: gzip\r\n");
    resp.extend_from_slice(&garbage);
    let (_up, t, (s, _, body)) = chat_via_tap(vec![Piece::Bytes(resp)], false).await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &garbage[..]);
    let r = t.next_record();
    let anomaly = r.parse_anomaly.clone().unwrap_or_default();
    assert!(anomaly.contains("decompression failed"), "{anomaly}");
    t.running.shutdown().await;

    // A gzip bomb: 64 MiB of answer in ~64 KiB. Forwarded compressed; analysis stops at
    // limits.decompressed_bytes (8 MiB), so the record is marked truncated.
    let bomb = gzip(&chat_answer(&vec![b'a'; 64 << 20]));
    assert!(
        bomb.len() < 1 << 20,
        "the bomb fits the capture: {}",
        bomb.len()
    );
    let mut resp = json_head(bomb.len(), "content-encoding: gzip\r\n");
    resp.extend_from_slice(&bomb);
    let (_up, t, (s, _, body)) = chat_via_tap(vec![Piece::Bytes(resp)], false).await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &bomb[..], "forwarded compressed, byte-exact");
    let r = t.next_record();
    assert!(r.capture_truncated, "{r:?}");
    assert_eq!(
        r.parse_anomaly, None,
        "a cut copy is truncated, not malformed"
    );
    assert!(r.response.len() <= 8 << 20);
    t.running.shutdown().await;
}

#[test]
fn malformed_config_files_exit_2_naming_the_file_and_never_panic() {
    let dir = tempfile::tempdir().expect("tmp");
    let deep = format!("a = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "syntax.toml",
            b"[[listener]\nlisten = \"127.0.0.1:0\"\n".to_vec(),
            "line 1",
        ),
        (
            "not-utf8.toml",
            b"state_dir = \"\xff\xfe\"\n".to_vec(),
            "(file)",
        ),
        ("nul.toml", b"\0\0\0\0".to_vec(), "nul.toml"),
        ("empty.toml", Vec::new(), "listener"),
        ("deep.toml", deep.into_bytes(), "deep.toml"),
        (
            "huge-string.toml",
            format!("state_dir = \"{}", "x".repeat(8 << 20)).into_bytes(),
            "huge-string.toml",
        ),
        (
            "wrong-types.toml",
            b"listener = 5\nadmin = \"x\"\n".to_vec(),
            "invalid type",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_semtap"))
            .args(["check-config", path.to_str().expect("utf8")])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
        assert!(
            err.len() < 4096,
            "{name}: the error is short: {} bytes",
            err.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_answer_times_out_at_the_idle_limit() {
    // Headers, half an event, then silence: the idle timeout cuts it; the client sees the cut.
    let pieces = vec![
        Piece::Bytes(SSE_HEAD.to_vec()),
        Piece::Bytes(chunk(b"data: {\"id\":\"c1\",\"choi")),
    ];
    let l = raw_upstream_then_hang(pieces).await;
    let mut cfg = config_for(&format!("http://{l}"), None);
    cfg.limits.idle_timeout = Duration::from_millis(300);
    let t = tap_with(cfg).await;
    let resp = client()
        .request(post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "x", true),
        ))
        .await
        .expect("headers");
    assert!(resp.into_body().collect().await.is_err());
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::StreamInterrupted);
    t.running.shutdown().await;
}

/// Like [`raw_upstream`] but keeps the connection open, silent, after the pieces.
async fn raw_upstream_then_hang(pieces: Vec<Piece>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let pieces = Arc::new(pieces);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let _ = read_request(&mut s).await;
                for p in pieces.iter() {
                    if let Piece::Bytes(b) = p {
                        let _ = s.write_all(b).await;
                    }
                }
                let _ = s.flush().await;
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}
