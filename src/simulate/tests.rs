//! The simulated upstream over real loopback sockets.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::MockUpstream;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(c: &HttpClient, req: http::Request<Full<Bytes>>) -> (u16, http::HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body)
}

fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

fn chat(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    })
}

fn messages(prompt: &str, stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 300, "stream": stream, "messages": [{"role": "user", "content": prompt}]})
}

/// `data:` payloads of an SSE body (JSON ones parsed, others as strings).
fn sse_data(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_string())))
        .collect()
}

/// A raw HTTP/1.1 exchange: everything the server sends until it closes.
async fn raw(addr: std::net::SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .ok();
    out
}

fn raw_post(addr: std::net::SocketAddr, path: &str, body: &Value, extra: &str) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn chat_non_stream_is_shaped_like_openai() {
    let up = MockUpstream::start().await.expect("start");
    let (s, h, b) = send(
        &client(),
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("Why is the sky blue?", false),
            &[],
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.get("x-ratelimit-remaining-requests")
            .and_then(|v| v.to_str().ok()),
        Some("4999")
    );
    assert_eq!(
        h.get("x-ratelimit-remaining-tokens")
            .and_then(|v| v.to_str().ok()),
        Some("159000")
    );
    assert!(h.get("x-request-id").is_some());
    assert!(
        b.starts_with(b"{\"id\":\"chatcmpl-"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|t| t.len() > 100));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert!(u["completion_tokens_details"]["reasoning_tokens"].is_u64());
    assert!(v["system_fingerprint"]
        .as_str()
        .is_some_and(|f| f.starts_with("fp_")));
    // Deterministic.
    let (_, h2, b2) = send(
        &client(),
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("Why is the sky blue?", false),
            &[],
        ),
    )
    .await;
    assert_eq!(b, b2);
    assert_eq!(h.get("x-request-id"), h2.get("x-request-id"));
    assert_eq!(up.requests(), 2);
    assert_eq!(
        up.last_request_path().as_deref(),
        Some("/v1/chat/completions")
    );
    up.shutdown().await;
}

#[tokio::test]
async fn chat_stream_ends_with_done_and_matches_non_stream_text() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let url = format!("{}/v1/chat/completions", up.url());
    let (s, h, b) = send(&c, post(&url, &chat("Tell me something", true), &[])).await;
    assert_eq!(s, 200);
    assert!(h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream")));
    assert!(b.ends_with(b"data: [DONE]\n\n"));
    let events = sse_data(&b);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    let n = events.len();
    assert_eq!(events[n - 3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[n - 2]["choices"], json!([]));
    assert!(events[n - 2]["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|t| t > 0));
    assert_eq!(events[n - 1], Value::String("[DONE]".into()));
    assert!(events.len() > 8, "several content deltas");
    let (_, _, whole) = send(&c, post(&url, &chat("Tell me something", false), &[])).await;
    let v: Value = serde_json::from_slice(&whole).expect("json");
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str(),
        Some(text.as_str())
    );
    // no_usage drops the usage chunk.
    let (_, _, b) = send(
        &c,
        post(
            &url,
            &chat("Tell me something", true),
            &[("x-mock-fault", "no_usage")],
        ),
    )
    .await;
    assert!(!String::from_utf8_lossy(&b).contains("\"usage\""));
    up.shutdown().await;
}

#[tokio::test]
async fn tool_calls_for_weather() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let mut body = chat("What's the weather in Paris?", false);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let (_, _, b) = send(
        &c,
        post(&format!("{}/v1/chat/completions", up.url()), &body, &[]),
    )
    .await;
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))
        .expect("args json");
    assert_eq!(args["location"], "Paris");

    body["stream"] = json!(true);
    let (_, _, b) = send(
        &c,
        post(&format!("{}/v1/chat/completions", up.url()), &body, &[]),
    )
    .await;
    let events = sse_data(&b);
    assert_eq!(
        events[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let args: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).expect("streamed args")["location"],
        "Paris"
    );

    let mut m = messages("weather in Oslo?", true);
    m["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let (_, _, b) = send(&c, post(&format!("{}/v1/messages", up.url()), &m, &[])).await;
    let events = sse_data(&b);
    let partial: String = events
        .iter()
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial).expect("input json")["location"],
        "Oslo"
    );
    assert!(events
        .iter()
        .any(|e| e["delta"]["stop_reason"] == "tool_use"));
    up.shutdown().await;
}

#[tokio::test]
async fn anthropic_stream_ends_with_message_stop() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let url = format!("{}/v1/messages", up.url());
    let (s, h, b) = send(&c, post(&url, &messages("Tell me about tides.", true), &[])).await;
    assert_eq!(s, 200);
    assert!(h.get("anthropic-ratelimit-requests-remaining").is_some());
    assert!(h.get("anthropic-ratelimit-tokens-remaining").is_some());
    let text = String::from_utf8_lossy(&b);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(
        names[names.len() - 4..],
        [
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(b.ends_with(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    let events = sse_data(&b);
    assert!(events[0]["message"]["id"]
        .as_str()
        .is_some_and(|i| i.starts_with("msg_")));
    assert_eq!(events[0]["message"]["model"], "claude-sonnet-4-5-20250929");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();

    let (_, _, b) = send(
        &c,
        post(&url, &messages("Tell me about tides.", false), &[]),
    )
    .await;
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["text"].as_str(), Some(streamed.as_str()));
    assert!(v["usage"]["input_tokens"].is_u64() && v["usage"]["cache_read_input_tokens"].is_u64());
    up.shutdown().await;
}

#[tokio::test]
async fn responses_and_legacy_and_embeddings() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let body = json!({"model": "gpt-4.1", "input": "Define entropy.", "stream": true});
    let (_, _, b) = send(&c, post(&format!("{}/v1/responses", up.url()), &body, &[])).await;
    let text = String::from_utf8_lossy(&b);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(names.last(), Some(&"response.completed"));
    assert!(
        names.contains(&"response.output_text.delta")
            && names.contains(&"response.output_text.done")
    );
    let last = sse_data(&b).pop().unwrap_or_default();
    assert_eq!(last["response"]["status"], "completed");
    assert!(last["response"]["usage"]["output_tokens"]
        .as_u64()
        .is_some_and(|t| t > 0));

    let body = json!({"model": "gpt-4.1", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]});
    let (_, _, b) = send(&c, post(&format!("{}/v1/responses", up.url()), &body, &[])).await;
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");

    let body =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "stream": true});
    let (_, _, b) = send(
        &c,
        post(&format!("{}/v1/completions", up.url()), &body, &[]),
    )
    .await;
    assert!(b.ends_with(b"data: [DONE]\n\n"));
    assert!(sse_data(&b)[0]["choices"][0]["text"].is_string());

    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"]});
    let (s, _, b) = send(&c, post(&format!("{}/v1/embeddings", up.url()), &body, &[])).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["data"][1]["embedding"].as_array().map(Vec::len), Some(8));
    assert!(v["usage"]["prompt_tokens"].is_u64());
    up.shutdown().await;
}

#[tokio::test]
async fn cut_closes_without_the_terminal_chunk() {
    let up = MockUpstream::start().await.expect("start");
    let got = raw(
        up.addr(),
        &raw_post(
            up.addr(),
            "/v1/chat/completions",
            &chat("x", true),
            "x-mock-fault: cut=3\r\n",
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert_eq!(text.matches("\"delta\":{\"content\":").count(), 3, "{text}");
    assert!(!got.ends_with(b"0\r\n\r\n"), "no terminating chunk");
    assert!(!text.contains("[DONE]"));
    // The client library sees an error, not a clean end.
    let resp = client()
        .request(post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("x", true),
            &[("x-mock-fault", "cut=1")],
        ))
        .await
        .expect("headers");
    assert!(resp.into_body().collect().await.is_err());
    assert_eq!(up.cancelled(), 0, "a cut is not a cancellation");
    up.shutdown().await;
}

#[tokio::test]
async fn status_529_envelope() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let (s, h, b) = send(
        &c,
        post(
            &format!("{}/v1/messages", up.url()),
            &messages("x", true),
            &[("x-mock-fault", "status=529")],
        ),
    )
    .await;
    assert_eq!(s, 529);
    assert_eq!(
        h.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert!(v["error"]["message"].is_string());

    let (s, h, b) = send(
        &c,
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("x", false),
            &[("x-mock-fault", "status=429")],
        ),
    )
    .await;
    assert_eq!(s, 429);
    assert_eq!(
        h.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");
    assert!(v["error"].get("param").is_some() && v["error"].get("code").is_some());

    let (s, _, b) = send(
        &c,
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("x", false),
            &[("x-mock-fault", "status=503")],
        ),
    )
    .await;
    assert_eq!(s, 503);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).expect("json")["error"]["type"],
        "server_error"
    );
    up.shutdown().await;
}

#[tokio::test]
async fn bad_requests_do_not_panic() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let req = http::Request::post(format!("{}/v1/chat/completions", up.url()))
        .body(Full::new(Bytes::from_static(b"{nope")))
        .expect("req");
    let (s, _, b) = send(&c, req).await;
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).expect("json")["error"]["type"],
        "invalid_request_error"
    );
    let req = http::Request::post(format!("{}/v1/messages", up.url()))
        .body(Full::new(Bytes::from_static(b"[1,2]")))
        .expect("req");
    let (s, _, b) = send(&c, req).await;
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).expect("json")["type"],
        "error"
    );
    let (s, _, b) = send(
        &c,
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &json!({"model": 5}),
            &[],
        ),
    )
    .await;
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = send(
        &c,
        http::Request::get(format!("{}/nope", up.url()))
            .body(Full::default())
            .expect("req"),
    )
    .await;
    assert_eq!(
        (s, b.as_ref()),
        (404, b"{\"error\":\"not found\"}".as_ref())
    );
    let (s, _, b) = send(
        &c,
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("x", false),
            &[("x-mock-fault", "malformed_json")],
        ),
    )
    .await;
    assert_eq!(
        (s, b.as_ref()),
        (200, b"{\"id\":\"chatcmpl-x\",\"choices\":[{\"mess".as_ref())
    );
    up.shutdown().await;
}

#[tokio::test]
async fn malformed_sse_blank_and_gzip() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let url = format!("{}/v1/chat/completions", up.url());
    let (_, _, b) = send(
        &c,
        post(&url, &chat("x", true), &[("x-mock-fault", "malformed_sse")]),
    )
    .await;
    assert!(b.windows(16).any(|w| w == b"data: {not json\n"));
    let junk: &[u8] = b"data: \xff\xfe binary junk\n\n";
    assert!(b.windows(junk.len()).any(|w| w == junk));
    assert!(b.ends_with(b"data: [DONE]\n\n"));

    let (_, _, b) = send(
        &c,
        post(&url, &chat("x", false), &[("x-mock-fault", "blank")]),
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&b).expect("json")["choices"][0]["message"]["content"],
        ""
    );

    let (_, h, gz) = send(
        &c,
        post(
            &url,
            &chat("x", false),
            &[("x-mock-fault", "gzip"), ("accept-encoding", "gzip, br")],
        ),
    )
    .await;
    assert_eq!(
        h.get("content-encoding").and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_ref()), &mut plain)
        .expect("gunzip");
    assert_eq!(
        serde_json::from_slice::<Value>(&plain).expect("json")["object"],
        "chat.completion"
    );
    let (_, h, _) = send(
        &c,
        post(&url, &chat("x", false), &[("x-mock-fault", "gzip")]),
    )
    .await;
    assert!(
        h.get("content-encoding").is_none(),
        "not without accept-encoding"
    );
    up.shutdown().await;
}

#[tokio::test]
async fn bytes_are_deterministic() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let get = |path: String| http::Request::get(path).body(Full::default()).expect("req");
    let (s, h, a) = send(&c, get(format!("{}/bytes?n=100000&seed=7", up.url()))).await;
    assert_eq!(s, 200);
    assert_eq!(
        h.get("content-length").and_then(|v| v.to_str().ok()),
        Some("100000")
    );
    assert_eq!(
        h.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    let (_, h2, b) = send(&c, get(format!("{}/bytes?n=100000&seed=7", up.url()))).await;
    assert_eq!(a.len(), 100_000);
    assert_eq!(a, b);
    assert_eq!(h.get("x-request-id"), h2.get("x-request-id"));
    let (_, _, other) = send(&c, get(format!("{}/bytes?n=100000&seed=8", up.url()))).await;
    assert_ne!(a, other);
    let (_, _, prefix) = send(&c, get(format!("{}/bytes?n=1000&seed=7", up.url()))).await;
    assert_eq!(prefix, a.slice(..1000));
    let (s, _, _) = send(&c, get(format!("{}/bytes?n=abc", up.url()))).await;
    assert_eq!(s, 400);
    let (s, _, b) = send(&c, get(format!("{}/stream-bytes?mb=2", up.url()))).await;
    assert_eq!((s, b.len()), (200, 2 << 20));
    assert_eq!(up.cancelled(), 0);
    up.shutdown().await;
}

#[tokio::test]
async fn echo_reflects_body_and_headers() {
    let up = MockUpstream::start().await.expect("start");
    let req = http::Request::put(format!("{}/echo?a=1", up.url()))
        .header("x-thing", "v")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "gone")
        .body(Full::new(Bytes::from_static(b"\x00\x01binary\xff")))
        .expect("req");
    let (s, h, b) = send(&client(), req).await;
    assert_eq!(s, 200);
    assert_eq!(b.as_ref(), b"\x00\x01binary\xff");
    assert_eq!(
        h.get("x-echo-x-thing").and_then(|v| v.to_str().ok()),
        Some("v")
    );
    assert_eq!(
        h.get("x-echo-method").and_then(|v| v.to_str().ok()),
        Some("PUT")
    );
    assert_eq!(
        h.get("x-echo-path").and_then(|v| v.to_str().ok()),
        Some("/echo?a=1")
    );
    assert!(h.get("x-echo-x-hop").is_none() && h.get("x-echo-connection").is_none());
    assert!(up
        .last_request_headers()
        .is_some_and(|h| h.get("x-thing").is_some()));
    up.shutdown().await;
}

#[tokio::test]
async fn websocket_accept_key_and_echo() {
    let up = MockUpstream::start().await.expect("start");
    let mut s = TcpStream::connect(up.addr()).await.expect("connect");
    let req = format!(
        "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        up.addr()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed before 101");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    s.write_all(&payload).await.expect("write");
    let mut echoed = Vec::new();
    while echoed.len() < payload.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0);
        echoed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(echoed, payload);
    up.shutdown().await;
}

#[tokio::test]
async fn gate_holds_until_released_and_drop_counts_as_cancelled() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let url = format!("{}/v1/chat/completions", up.url());
    let resp = c
        .request(post(
            &url,
            &chat("hold on", true),
            &[("x-mock-fault", "gate")],
        ))
        .await
        .expect("headers");
    let mut body = resp.into_body();
    let first = body
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .unwrap_or_default();
    assert!(first.starts_with(b"data: {"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), body.frame())
            .await
            .is_err(),
        "held by the gate"
    );
    up.release_gate();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(up.cancelled(), 0);

    // A client that goes away mid-stream is counted.
    let resp = c
        .request(post(
            &url,
            &chat("hold on", true),
            &[("x-mock-fault", "gate")],
        ))
        .await
        .expect("headers");
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);
    wait_for(|| up.cancelled() == 1).await;

    // So is one that gives up on a hanging request.
    let hang = raw_post(
        up.addr(),
        "/v1/messages",
        &messages("x", false),
        "x-mock-fault: hang\r\n",
    );
    let mut s = TcpStream::connect(up.addr()).await.expect("connect");
    s.write_all(hang.as_bytes()).await.expect("write");
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
            .await
            .is_err(),
        "no response"
    );
    drop(s);
    wait_for(|| up.cancelled() == 2).await;
    up.shutdown().await;
}

#[tokio::test]
async fn hanging_requests_end_at_shutdown_and_h2c_is_served() {
    let up = MockUpstream::start().await.expect("start");
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (s, _, b) = send(
        &h2,
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("h2", true),
            &[],
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert!(b.ends_with(b"data: [DONE]\n\n"));
    let pending = tokio::spawn({
        let url = format!("{}/v1/chat/completions", up.url());
        async move {
            client()
                .request(post(&url, &chat("x", false), &[("x-mock-fault", "hang")]))
                .await
                .is_err()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    up.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(
        tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("ended")
            .expect("join"),
        "the hanging request fails"
    );
}

#[tokio::test]
async fn delays_are_applied() {
    let up = MockUpstream::start().await.expect("start");
    let c = client();
    let t = std::time::Instant::now();
    let (s, _, _) = send(
        &c,
        post(
            &format!("{}/v1/messages", up.url()),
            &messages("x", false),
            &[("x-mock-ttft-ms", "150")],
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    let t = std::time::Instant::now();
    let (_, _, b) = send(
        &c,
        post(
            &format!("{}/v1/chat/completions", up.url()),
            &chat("x", true),
            &[("x-mock-chunk-delay-ms", "5")],
        ),
    )
    .await;
    let n = sse_data(&b).len() as u32;
    assert!(t.elapsed() >= Duration::from_millis(5) * (n - 1));
    let t = std::time::Instant::now();
    let (s, _, _) = send(
        &c,
        http::Request::get(format!("{}/slow-headers?ms=100", up.url()))
            .body(Full::default())
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(t.elapsed() >= Duration::from_millis(100));
    up.shutdown().await;
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cond(), "condition not reached in time");
}
