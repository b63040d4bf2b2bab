//! The tap over real loopback sockets: semtap in front of the simulated upstream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use rand::{Rng, SeedableRng};
use semtap::record::{Api, Outcome, Provider};
use semtap::simulate::MockUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_and_headers_pass_through_byte_exact() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let c = client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..40 {
        let len = match i % 4 {
            0 => 0,
            1 => rng.random_range(1..64),
            2 => rng.random_range(1000..20_000),
            _ => rng.random_range(100_000..400_000),
        };
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let req = http::Request::post(format!("{}/echo?i={i}&x=%20y", t.base()))
            .header("x-custom-thing", format!("value-{i}"))
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body.clone())))
            .expect("req");
        let (status, headers, got) = send(&c, req).await;
        assert_eq!(status, 200);
        assert_eq!(got.as_ref(), body.as_slice(), "body {i} differs");
        assert_eq!(
            headers
                .get("x-echo-x-custom-thing")
                .and_then(|v| v.to_str().ok()),
            Some(format!("value-{i}").as_str())
        );
        assert_eq!(
            headers.get("x-echo-path").and_then(|v| v.to_str().ok()),
            Some(format!("/echo?i={i}&x=%20y").as_str())
        );
    }
    // Binary responses: through semtap equals direct.
    for seed in 0..10u64 {
        let n = 1 + seed * 77_777;
        let direct = send(
            &c,
            http::Request::get(format!("{}/bytes?n={n}&seed={seed}", up.url()))
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await;
        let tapped = send(
            &c,
            http::Request::get(format!("{}/bytes?n={n}&seed={seed}", t.base()))
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await;
        assert_eq!(direct.0, tapped.0);
        assert_eq!(direct.2, tapped.2, "bytes seed {seed}");
        assert_eq!(direct.1.get("content-type"), tapped.1.get("content-type"));
        assert_eq!(direct.1.get("x-request-id"), tapped.1.get("x-request-id"));
    }
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_rewritten_and_hop_by_hop_headers_dropped() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let req = http::Request::post(format!("{}/echo", t.base()))
        .header("host", "app.internal:1234")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret-hop")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "yes")
        .body(Full::new(Bytes::from_static(b"hi")))
        .expect("req");
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    let h = up.last_request_headers().expect("upstream saw a request");
    assert_eq!(
        h.get("host").and_then(|v| v.to_str().ok()),
        Some(up.addr().to_string().as_str())
    );
    assert!(h.get("x-hop").is_none());
    assert!(h.get("keep-alive").is_none());
    assert_eq!(
        h.get("x-end-to-end").and_then(|v| v.to_str().ok()),
        Some("yes")
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_records_streaming_and_not() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&format!("{}/", up.url())).await;
    let c = client();
    for stream in [false, true] {
        let body = chat_body("gpt-4o-mini", "Why is the sky blue?", stream);
        let direct = send(
            &c,
            post_json(&format!("{}/v1/chat/completions", up.url()), &body),
        )
        .await;
        t.next_record_opt();
        let tapped = send(
            &c,
            post_json(&format!("{}/v1/chat/completions", t.base()), &body),
        )
        .await;
        assert_eq!(direct.0, tapped.0);
        assert_eq!(strip_ids(&direct.2), strip_ids(&tapped.2));
        let r = t.next_record();
        assert_eq!(r.provider, Provider::OpenAi);
        assert_eq!(r.api, Api::ChatCompletions);
        assert_eq!(r.operation, "chat");
        assert_eq!(r.request_model.as_deref(), Some("gpt-4o-mini"));
        assert!(r.response_model.is_some());
        assert_eq!(r.stream, stream);
        assert_eq!(r.status, 200);
        assert_eq!(r.outcome, Outcome::Complete);
        assert_eq!(r.prompt.as_deref(), Some("Why is the sky blue?"));
        assert!(!r.response.is_empty(), "assembled answer text");
        assert_eq!(r.finish_reasons, vec!["stop".to_string()]);
        assert!(r.usage.output_tokens.unwrap_or(0) > 0);
        assert!(!r.usage.estimated);
        assert_eq!(r.params.max_tokens, Some(200));
        assert_eq!(r.params.temperature, Some(0.3));
        assert!(r.error_type.is_none(), "{:?}", r.error_type);
        assert!(r.parse_anomaly.is_none(), "{:?}", r.parse_anomaly);
        if stream {
            assert!(r.ttft_ms.is_some() && r.time_to_first_chunk_ms.is_some());
            assert!(r.ttft_ms >= r.time_to_first_chunk_ms);
        } else {
            assert!(r.ttft_ms.is_none());
        }
        assert!(r.duration_ms >= r.upstream_ms);
    }
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_responses_and_legacy_apis_are_recognised() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let c = client();
    for stream in [false, true] {
        let (s, _, _) = send(
            &c,
            post_json(
                &format!("{}/v1/messages", t.base()),
                &messages_body("claude-sonnet-4-5", "Tell me about tides.", stream),
            ),
        )
        .await;
        assert_eq!(s, 200);
        let r = t.next_record();
        assert_eq!(
            (r.provider, r.api, r.stream),
            (Provider::Anthropic, Api::Messages, stream)
        );
        assert_eq!(r.prompt.as_deref(), Some("Tell me about tides."));
        assert!(!r.response.is_empty());
        assert_eq!(r.finish_reasons, vec!["end_turn".to_string()]);
        assert!(r.usage.input_tokens.is_some() && r.usage.output_tokens.is_some());
        assert!(r.parse_anomaly.is_none(), "{:?}", r.parse_anomaly);

        let body =
            serde_json::json!({"model": "gpt-4.1", "input": "Define entropy.", "stream": stream});
        let (s, _, _) = send(&c, post_json(&format!("{}/v1/responses", t.base()), &body)).await;
        assert_eq!(s, 200);
        let r = t.next_record();
        assert_eq!((r.api, r.stream), (Api::Responses, stream));
        assert_eq!(r.prompt.as_deref(), Some("Define entropy."));
        assert!(!r.response.is_empty());
        assert!(r.usage.output_tokens.is_some());

        let body = serde_json::json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "stream": stream});
        let (s, _, _) = send(
            &c,
            post_json(&format!("{}/v1/completions", t.base()), &body),
        )
        .await;
        assert_eq!(s, 200);
        let r = t.next_record();
        assert_eq!(
            (r.api, r.operation.as_str()),
            (Api::Completions, "text_completion")
        );
        assert!(!r.response.is_empty());
    }
    let body = serde_json::json!({"model": "text-embedding-3-small", "input": ["a", "b"]});
    let (s, _, _) = send(&c, post_json(&format!("{}/v1/embeddings", t.base()), &body)).await;
    assert_eq!(s, 200);
    let r = t.next_record();
    assert_eq!(
        (r.api, r.operation.as_str()),
        (Api::Embeddings, "embeddings")
    );
    assert!(r.usage.input_tokens.is_some());
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployment_paths_name_the_model() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let body = serde_json::json!({"messages": [{"role": "user", "content": "hello"}]});
    let url = format!(
        "{}/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
        t.base()
    );
    let (s, _, _) = send(&client(), post_json(&url, &body)).await;
    assert_eq!(s, 200);
    let r = t.next_record();
    assert_eq!(r.provider, Provider::AzureOpenAi);
    assert_eq!(r.request_model.as_deref(), Some("my-gpt4o"));
    assert_eq!(
        up.last_request_path().as_deref(),
        Some("/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21")
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_forwarded_without_buffering() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let req = with_header(
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o-mini", "hold on", true),
        ),
        "x-mock-fault",
        "gate",
    );
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("headers arrive while upstream holds the rest")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first chunk arrives while the upstream still holds back the rest.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk not buffered");
    let first = first
        .expect("a frame")
        .expect("ok frame")
        .into_data()
        .unwrap_or_default();
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    up.release_gate();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::Complete);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_statuses_pass_through_untouched() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let c = client();
    for (path, status, body, etype) in [
        (
            "/v1/chat/completions",
            429,
            chat_body("gpt-4o", "x", false),
            "rate_limit_exceeded",
        ),
        (
            "/v1/chat/completions",
            500,
            chat_body("gpt-4o", "x", true),
            "server_error",
        ),
        (
            "/v1/messages",
            529,
            messages_body("claude-opus-4", "x", true),
            "overloaded_error",
        ),
    ] {
        let fault = format!("status={status}");
        let direct = send(
            &c,
            with_header(
                post_json(&format!("{}{path}", up.url()), &body),
                "x-mock-fault",
                &fault,
            ),
        )
        .await;
        let tapped = send(
            &c,
            with_header(
                post_json(&format!("{}{path}", t.base()), &body),
                "x-mock-fault",
                &fault,
            ),
        )
        .await;
        assert_eq!(tapped.0, status);
        assert_eq!(direct.0, tapped.0);
        assert_eq!(direct.2, tapped.2);
        assert_eq!(direct.1.get("retry-after"), tapped.1.get("retry-after"));
        assert!(
            tapped.1.get("x-semtap-error").is_none(),
            "an upstream error is not semtap's"
        );
        let r = t.next_record();
        assert_eq!(r.status, status);
        assert_eq!(r.error_type.as_deref(), Some(etype));
    }
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_gives_502_in_the_providers_envelope() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let t = tap(&format!("http://127.0.0.1:{port}")).await;
    let c = client();
    let (s, h, b) = send(
        &c,
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "x", false),
        ),
    )
    .await;
    assert_eq!(s, 502);
    assert_eq!(
        h.get("x-semtap-error").and_then(|v| v.to_str().ok()),
        Some("upstream_unreachable")
    );
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json error body");
    assert!(v["error"]["message"].is_string(), "{v}");
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::UpstreamUnreachable);
    assert_eq!(r.status, 502);

    let (s, _, b) = send(
        &c,
        post_json(
            &format!("{}/v1/messages", t.base()),
            &messages_body("claude-3-5-haiku", "x", false),
        ),
    )
    .await;
    assert_eq!(s, 502);
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json error body");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let _ = t.next_record();
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_gives_504() {
    let up = MockUpstream::start().await.expect("mock");
    let mut cfg = config_for(&up.url(), None);
    cfg.limits.response_timeout = Duration::from_millis(300);
    let t = tap_with(cfg).await;
    let req = with_header(
        post_json(
            &format!("{}/v1/messages", t.base()),
            &messages_body("claude-3-5-haiku", "x", false),
        ),
        "x-mock-fault",
        "hang",
    );
    let (s, h, b) = send(&client(), req).await;
    assert_eq!(s, 504);
    assert_eq!(
        h.get("x-semtap-error").and_then(|v| v.to_str().ok()),
        Some("upstream_timeout")
    );
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["error"]["type"], "timeout_error");
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::UpstreamTimeout);
    assert_eq!(r.error_type.as_deref(), Some("504"));
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_upstream_ends_abruptly_for_the_client_too() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let req = with_header(
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "x", true),
        ),
        "x-mock-fault",
        "cut=3",
    );
    let resp = client().request(req).await.expect("headers");
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await;
    assert!(
        collected.is_err(),
        "the client must see the cut, not a clean end"
    );
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::StreamInterrupted);
    assert_eq!(r.error_type.as_deref(), Some("upstream_body_error"));
    assert!(r.finish_reasons.iter().any(|f| f == "stream_interrupted"));
    assert!(!r.response.is_empty(), "text up to the cut is kept");
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream_request() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let req = with_header(
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "x", true),
        ),
        "x-mock-fault",
        "gate",
    );
    let c = client();
    let resp = c.request(req).await.expect("headers");
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);
    drop(c);
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::ClientCancelled);
    assert_eq!(r.error_type.as_deref(), Some("client_cancelled"));
    let mut cancelled = 0;
    for _ in 0..100 {
        cancelled = up.cancelled();
        if cancelled > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled, 1, "the upstream saw its request cancelled");
    up.release_gate();
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_bodies_are_forwarded_unchanged_and_flagged() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let c = client();
    for (fault, stream) in [("malformed_json", false), ("malformed_sse", true)] {
        let body = chat_body("gpt-4o", "x", stream);
        let direct = send(
            &c,
            with_header(
                post_json(&format!("{}/v1/chat/completions", up.url()), &body),
                "x-mock-fault",
                fault,
            ),
        )
        .await;
        let tapped = send(
            &c,
            with_header(
                post_json(&format!("{}/v1/chat/completions", t.base()), &body),
                "x-mock-fault",
                fault,
            ),
        )
        .await;
        assert_eq!(direct.0, tapped.0);
        assert_eq!(strip_ids(&direct.2), strip_ids(&tapped.2), "{fault}");
        let r = t.next_record();
        assert!(r.parse_anomaly.is_some(), "{fault} is a parse anomaly");
    }
    let m = get_text(&format!("{}/metrics", t.admin())).await.1;
    assert!(
        prom_sum(&m, "semtap_parse_anomalies_total", &[]) >= 2.0,
        "{m}"
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_llm_answer_is_captured_up_to_the_cap() {
    let up = MockUpstream::start().await.expect("mock");
    let mut cfg = config_for(&up.url(), None);
    cfg.limits.capture_bytes = 300;
    let t = tap_with(cfg).await;
    let (s, _, b) = send(
        &client(),
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "long please", true),
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert!(b.len() > 300);
    let r = t.next_record();
    assert!(r.capture_truncated);
    assert_eq!(r.response_bytes, b.len() as u64);
    assert!(
        r.parse_anomaly.is_none(),
        "a capped capture is not an anomaly: {:?}",
        r.parse_anomaly
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_plain_passthrough_and_counted() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let c = client();
    let (s, _, b) = send(
        &c,
        http::Request::get(format!("{}/no/such/thing", t.base()))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    let direct = send(
        &c,
        http::Request::get(format!("{}/no/such/thing", up.url()))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(b, direct.2);
    let (s, _, _) = send(
        &c,
        http::Request::get(format!("{}/v1/models", t.base()))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert!(s == 404 || s == 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        t.records.try_recv().is_err(),
        "plain traffic makes no exchange record"
    );
    let m = get_text(&format!("{}/metrics", t.admin())).await.1;
    assert_eq!(
        prom_sum(
            &m,
            "semtap_requests_total",
            &["gen_ai_operation_name=\"http\""]
        ),
        2.0,
        "{m}"
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_requests_sent() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let c = client();
    let mut n_chat = 0;
    let mut n_msgs = 0;
    for i in 0..30 {
        let stream = i % 2 == 0;
        if i % 3 == 0 {
            send(
                &c,
                post_json(
                    &format!("{}/v1/messages", t.base()),
                    &messages_body("claude-sonnet-4-5", "hi", stream),
                ),
            )
            .await;
            n_msgs += 1;
        } else {
            let req = post_json(
                &format!("{}/v1/chat/completions", t.base()),
                &chat_body("gpt-4o-mini", "hi", stream),
            );
            let req = if i % 5 == 0 {
                with_header(req, "x-mock-fault", "status=500")
            } else {
                req
            };
            send(&c, req).await;
            n_chat += 1;
        }
    }
    for _ in 0..30 {
        let _ = t.next_record();
    }
    let m = get_text(&format!("{}/metrics", t.admin())).await.1;
    assert_eq!(prom_sum(&m, "semtap_requests_total", &[]), 30.0);
    assert_eq!(
        prom_sum(
            &m,
            "gen_ai_client_operation_duration_seconds_count",
            &["gen_ai_provider_name=\"openai\""]
        ),
        n_chat as f64
    );
    assert_eq!(
        prom_sum(
            &m,
            "gen_ai_client_operation_duration_seconds_count",
            &["gen_ai_provider_name=\"anthropic\""]
        ),
        n_msgs as f64
    );
    assert_eq!(
        prom_sum(
            &m,
            "gen_ai_client_operation_duration_seconds_count",
            &["error_type=\"server_error\""]
        ),
        4.0
    );
    assert!(
        prom_sum(
            &m,
            "gen_ai_client_token_usage_count",
            &["gen_ai_token_type=\"output\""]
        ) >= 26.0
    );
    assert!(prom_sum(&m, "semtap_time_to_first_token_seconds_count", &[]) >= 13.0);
    assert!(m.contains("gen_ai_client_operation_time_to_first_chunk_seconds_bucket"));
    assert!(m.contains("gen_ai_client_operation_time_per_output_chunk_seconds_bucket"));
    let (s, status) = get_text(&format!("{}/status", t.admin())).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(v["listeners"][0]["addr"], t.addr.to_string());
    assert_eq!(v["pipeline"]["processed"], 30);
    let (s, _) = get_text(&format!("{}/readyz", t.admin())).await;
    assert_eq!(s, 200);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let (s, _, b) = send(
        &h2c_client(),
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "h2", true),
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&b).contains("[DONE]"));
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::Complete);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_answers_are_forwarded_compressed_and_analysed_decompressed() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let c = client();
    let mk = |base: &str| {
        with_header(
            with_header(
                post_json(
                    &format!("{base}/v1/chat/completions"),
                    &chat_body("gpt-4o", "zip it", false),
                ),
                "x-mock-fault",
                "gzip",
            ),
            "accept-encoding",
            "gzip",
        )
    };
    let direct = send(&c, mk(&up.url())).await;
    let tapped = send(&c, mk(&t.base())).await;
    assert_eq!(
        tapped
            .1
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    assert_eq!(direct.2.len(), tapped.2.len(), "still compressed");
    let r = t.next_record();
    assert!(
        !r.response.is_empty(),
        "analysis saw the decompressed answer"
    );
    assert!(r.parse_anomaly.is_none());
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_usage_is_estimated_and_marked() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let req = with_header(
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("llama3", "count me", true),
        ),
        "x-mock-fault",
        "no_usage",
    );
    send(&client(), req).await;
    let r = t.next_record();
    assert!(r.usage.estimated);
    assert!(r.usage.output_tokens.unwrap_or(0) > 0);
    t.running.shutdown().await;
}

/// Sends a WebSocket upgrade request to the tap at `addr` and reads the response head
/// (lowercased); the stream is then the upgraded connection.
async fn open_websocket(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "closed before the response head");
        got.extend_from_slice(&buf[..n]);
    }
    (s, String::from_utf8_lossy(&got).to_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_forwarded_untouched() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let (mut s, head) = open_websocket(t.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let payload: Vec<u8> = (0..=255u8).collect();
    s.write_all(&payload).await.expect("write payload");
    let mut buf = vec![0u8; 4096];
    let mut echoed = Vec::new();
    while echoed.len() < payload.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("echo in time")
            .expect("read");
        assert!(n > 0);
        echoed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(echoed, payload);
    drop(s);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_records_not_requests() {
    let up = MockUpstream::start().await.expect("mock");
    let mut cfg = config_for(&up.url(), None);
    cfg.pipeline_queue = 1;
    let t = tap_with(cfg).await;
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let c = c.clone();
        let url = format!("{}/v1/chat/completions", t.base());
        tasks.push(tokio::spawn(async move {
            send(&c, post_json(&url, &chat_body("gpt-4o", "burst", false)))
                .await
                .0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("join"), 200, "every request is served");
    }
    // Every capture was either analysed or dropped and counted; none vanished.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let s = t.running.pipeline.stats();
        if s.processed + s.dropped >= 64 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats.processed + stats.dropped, 64, "{stats:?}");
    let m = get_text(&format!("{}/metrics", t.admin())).await.1;
    assert_eq!(prom_sum(&m, "semtap_requests_total", &[]), 64.0);
    assert_eq!(
        prom_sum(&m, "semtap_records_dropped_total", &[]),
        stats.dropped as f64
    );
    t.running.shutdown().await;
}

fn strip_ids(b: &Bytes) -> Vec<u8> {
    // The simulated upstream makes fresh ids per call; everything else must match.
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len());
    for (i, part) in s.split("\"id\":\"").enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            out.push_str("\"id\":\"");
            out.push_str(part.split_once('"').map(|x| x.1).unwrap_or(""));
        }
    }
    out.into_bytes()
}

trait NextOpt {
    fn next_record_opt(&self);
}

impl NextOpt for Tapped {
    fn next_record_opt(&self) {
        while self.records.try_recv().is_ok() {}
    }
}

/// With `max_in_flight = 1`, a request after each way an exchange can end is served, not
/// refused: every path (answered, error status, cut stream, client gone, upstream timeout,
/// WebSocket closed) gives its in-flight slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_request_ends_gives_its_in_flight_slot_back() {
    let up = MockUpstream::start().await.expect("mock");
    let mut cfg = config_for(&up.url(), None);
    cfg.limits.max_in_flight = 1;
    cfg.limits.response_timeout = Duration::from_millis(300);
    let t = tap_with(cfg).await;
    let chat = format!("{}/v1/chat/completions", t.base());
    let faulted = |fault: &str, stream: bool| {
        with_header(
            post_json(&chat, &chat_body("gpt-4o", "x", stream)),
            "x-mock-fault",
            fault,
        )
    };
    // The slot of an exchange that ended on the server's side after the client's is given
    // back a moment later: retry a refusal for a while, but a slot that never comes back
    // fails.
    let served_after = |what: &'static str| {
        let chat = chat.clone();
        async move {
            let c = client();
            for _ in 0..200 {
                let (s, _, _) = send(&c, post_json(&chat, &chat_body("gpt-4o", "x", false))).await;
                if s != 503 {
                    assert_eq!(s, 200, "after {what}");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the in-flight slot was not given back after {what}");
        }
    };
    let c = client();

    served_after("nothing yet").await;
    let (s, _, _) = send(&c, faulted("status=529", false)).await;
    assert_eq!(s, 529);
    served_after("an error status").await;

    let resp = c.request(faulted("cut=3", true)).await.expect("headers");
    assert!(resp.into_body().collect().await.is_err(), "cut");
    served_after("a cut stream").await;

    let gone = client();
    let resp = gone.request(faulted("gate", true)).await.expect("headers");
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);
    drop(gone);
    served_after("a client that went away").await;
    up.release_gate();

    let (s, _, _) = send(&c, faulted("hang", false)).await;
    assert_eq!(s, 504);
    served_after("an upstream timeout").await;

    let (ws, head) = open_websocket(t.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    drop(ws);
    served_after("a WebSocket closed").await;
    t.running.shutdown().await;
}
