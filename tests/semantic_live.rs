//! The semantic engine behind the live tap, on a tiny generated BERT: flags counted, incidents
//! opened, baselines API, and a degraded (not down) semtap when the model is missing.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use semtap::simulate::MockUpstream;

async fn wait_component(admin: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get_text(&format!("{admin}/status")).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("status json");
        if v["components"]["semantic"]["status"] == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "semantic never became {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(url: &str) -> (u16, String) {
    let req = http::Request::post(url)
        .body(Full::new(Bytes::new()))
        .expect("req");
    let (s, _, b) = send(&client(), req).await;
    (s, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_engine_flags_answers_opens_incidents_and_serves_the_baselines_api() {
    let up = MockUpstream::start().await.expect("mock");
    let model = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    semtap::semantic::testing::write_tiny_bert(model.path(), 7).expect("tiny bert");
    let mut cfg = config_for(&up.url(), None);
    cfg.semantic.enabled = true;
    cfg.semantic.model_dir = Some(model.path().to_path_buf());
    cfg.state_dir = Some(state.path().to_path_buf());
    let t = tap_with(cfg).await;
    let admin = t.admin();
    wait_component(&admin, "ok").await;

    let c = client();
    let url = format!("{}/v1/chat/completions", t.base());
    blank_then_overloaded(&c, &url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let incidents = loop {
        let (_, body) = get_text(&format!("{admin}/incidents")).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        if v["open"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["kind"] == "error_rate"))
        {
            break v;
        }
        assert!(Instant::now() < deadline, "no error_rate incident: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let inc = incidents["open"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["kind"] == "error_rate"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(inc["key"], "test/openai/gpt-4o-mini");
    assert!(!inc["evidence"]["example_ids"]
        .as_array()
        .map(|a| a.is_empty())
        .unwrap_or(true));

    let m = get_text(&format!("{admin}/metrics")).await.1;
    assert!(
        prom_sum(&m, "semtap_flags_total", &["flag=\"blank\""]) >= 6.0,
        "{m}"
    );
    assert!(prom_sum(&m, "semtap_incidents_open", &["kind=\"error_rate\""]) >= 1.0);
    assert!(
        prom_sum(&m, "semtap_embeddings_total", &["tier=\"static\""]) >= 4.0,
        "the answers with text were embedded"
    );

    let (s, body) = get_text(&format!("{admin}/baselines")).await;
    assert_eq!(s, 200);
    assert!(body.contains("test/openai/gpt-4o-mini"), "{body}");
    let (s, _) = post(&format!("{admin}/baselines/test/openai/gpt-4o-mini/pin")).await;
    assert_eq!(s, 200);
    let (s, body) = post(&format!(
        "{admin}/baselines/test%2Fopenai%2Fgpt-4o-mini/reset"
    ))
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"resolved_incidents\": 1"), "{body}");
    let (s, _) = post(&format!("{admin}/baselines/no/such/key/reset")).await;
    assert_eq!(s, 404);

    t.running.shutdown().await;
    assert!(
        state.path().join("baselines.json").exists(),
        "baselines saved at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_degrades_semantics_but_traffic_flows() {
    let up = MockUpstream::start().await.expect("mock");
    let empty = tempfile::tempdir().expect("tmp");
    let mut cfg = config_for(&up.url(), None);
    cfg.semantic.enabled = true;
    cfg.semantic.model_dir = Some(empty.path().to_path_buf());
    let t = tap_with(cfg).await;
    let admin = t.admin();
    let v = wait_component(&admin, "degraded").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut detail = v["components"]["semantic"]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    while !detail.contains("model not found") {
        assert!(Instant::now() < deadline, "{detail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, body) = get_text(&format!("{admin}/status")).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        detail = v["components"]["semantic"]["detail"]
            .as_str()
            .unwrap_or("")
            .to_string();
    }
    let (s, body) = get_text(&format!("{admin}/readyz")).await;
    assert_eq!(s, 200, "degraded is still ready: {body}");
    assert!(body.contains("semantic"), "{body}");
    let req = with_header(
        post_json(
            &format!("{}/v1/chat/completions", t.base()),
            &chat_body("gpt-4o", "x", false),
        ),
        "x-mock-fault",
        "blank",
    );
    let (s, _, _) = send(&client(), req).await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = get_text(&format!("{admin}/metrics")).await.1;
        if prom_sum(&m, "semtap_flags_total", &["flag=\"blank\""]) >= 1.0 {
            assert_eq!(prom_sum(&m, "semtap_semantic_degraded", &[]), 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cheap checks keep running without the model"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.running.shutdown().await;
}
