//! The `semtap` binary as users and scripts run it: flags, exit codes, logs, signals.

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::proc::{addr_of, Proc};
use common::*;
use http_body_util::{BodyExt, Full};
use semtap::simulate::MockUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_semtap");

#[test]
fn check_config_names_file_key_and_reason_and_exits_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(b"[[listener]]\nlisten = \"127.0.0.1:99999\"\nupstream = \"api.openai.com\"\n\n[limits]\nidle_timeout = \"soon\"\n"))
        .expect("write");
    let out = Command::new(BIN)
        .args(["check-config", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("limits.idle_timeout"), "{err}");

    let path2 = dir.path().join("bad2.toml");
    std::fs::write(
        &path2,
        "[[listener]]\nlisten = \"127.0.0.1:99999\"\nupstream = \"api.openai.com\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check-config", path2.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listener[0].listen"), "{err}");
    assert!(
        err.contains("listener[0].upstream") && err.contains("no scheme"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["check-config", "semtap.example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(BIN)
        .args(["run", "--no-such-flag"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["run"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "no listener is a config error");
    let out = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://x",
            "--log-format",
            "xml",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_otlp_settings_exit_2_naming_the_flag_or_variable() {
    let base = ["run", "--listen", "127.0.0.1:0", "--upstream", "http://x"];
    let out = Command::new(BIN)
        .args(base)
        .args(["--otlp-endpoint", "collector:4317"])
        .env("SEMTAP_SEMANTIC", "off")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--otlp-endpoint"), "{err}");
    let out = Command::new(BIN)
        .args(base)
        .env("SEMTAP_SEMANTIC", "off")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_flags_binds_port_0_and_sigterm_lets_streams_finish() {
    let up = MockUpstream::start().await.expect("mock");
    let mut p = Proc::run_flags(&up.url(), &[], &[]);
    let listen = addr_of(&p.wait_log("listener bound"));
    let admin = addr_of(&p.wait_log("admin server bound"));
    p.wait_log("semtap ready");
    let (s, status) = get_text(&format!("http://{admin}/status")).await;
    assert_eq!(s, 200);
    assert!(status.contains(&listen), "{status}");
    // A slow stream in flight when SIGTERM arrives still completes.
    let req = with_header(
        post_json(
            &format!("http://{listen}/v1/chat/completions"),
            &chat_body("gpt-4o", "slow", true),
        ),
        "x-mock-chunk-delay-ms",
        "40",
    );
    let c = client();
    let resp = c.request(req).await.expect("headers");
    let status = {
        let pid_wait = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(100));
            p.terminate()
        });
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("stream finished cleanly")
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("[DONE]"));
        pid_wait.await.expect("join")
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_key_appears_nowhere_semtap_writes() {
    const KEY: &str = "sk-PLANTED-7f3a9c2e1d";
    let up = MockUpstream::start().await.expect("mock");
    let dir = tempfile::tempdir().expect("tmp");
    let capture = dir.path().join("exchanges.jsonl");
    let cfg = dir.path().join("semtap.toml");
    let model = dir.path().join("tiny-model");
    semtap::semantic::testing::write_tiny_bert(&model, 3).expect("tiny model");
    std::fs::write(&cfg, format!("state_dir = \"{}\"\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[capture]\nfile = \"{}\"\n[semantic]\nmodel_dir = \"{}\"\n", dir.path().join("state").display(), up.url(), capture.display(), model.display())).expect("cfg");
    let p = Proc::run_config(&cfg, &[("SEMTAP_SEMANTIC", "on")]);
    p.wait_log("semantic engine: static tier ready");
    let listen = addr_of(&p.wait_log("listener bound"));
    let admin = addr_of(&p.wait_log("admin server bound"));
    let c = client();
    for (i, path) in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/responses",
        "/unknown",
    ]
    .iter()
    .enumerate()
    {
        let body = if path.contains("messages") {
            messages_body("claude-3-5-haiku", "hi", i % 2 == 0)
        } else {
            chat_body("gpt-4o", "hi", i % 2 == 0)
        };
        let req = http::Request::post(format!("http://{listen}{path}?api_key={KEY}&key={KEY}"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-api-key", KEY)
            .header("api-key", KEY)
            .header("cookie", format!("session={KEY}"))
            .header("openai-organization", "org-1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&body).expect("json"),
            )))
            .expect("req");
        send(&c, req).await;
    }
    // A body that is not a valid chat request, so the anomaly path logs too.
    let (s, _, _) = send(
        &c,
        http::Request::post(format!("http://{listen}/v1/chat/completions?key={KEY}"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("req"),
    )
    .await;
    assert!(s == 200 || s == 400, "{s}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = get_text(&format!("http://{admin}/metrics")).await.1;
    let status = get_text(&format!("http://{admin}/status")).await.1;
    let baselines = get_text(&format!("http://{admin}/baselines")).await.1;
    assert!(baselines.contains("main/openai/gpt-4o"), "{baselines}");
    let logs = p.output();
    drop(p);
    let captured = std::fs::read_to_string(&capture).unwrap_or_default();
    assert!(
        captured.lines().count() >= 3,
        "capture file written: {captured}"
    );
    let h = up.last_request_headers().expect("upstream saw requests");
    assert!(
        h.get("authorization").is_some(),
        "the key itself still reaches the upstream"
    );
    for (what, text) in [
        ("metrics", &metrics),
        ("status", &status),
        ("capture file", &captured),
        ("baselines", &baselines),
        ("logs", &logs),
    ] {
        assert!(!text.contains("PLANTED"), "key leaked into {what}");
    }
    assert!(!logs.is_empty());
    assert!(!logs.contains("PLANTED"), "key leaked into logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_a_planted_key() {
    const KEY: &str = "sk-PLANTED-LOG-99";
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let p = Proc::run_flags(
        &format!("http://127.0.0.1:{port}"),
        &["--log-level", "trace"],
        &[],
    );
    let listen = addr_of(&p.wait_log("listener bound"));
    let c = client();
    let req = http::Request::post(format!("http://{listen}/v1/chat/completions?api-key={KEY}"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-api-key", KEY)
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&chat_body("gpt-4o", "hi", false)).expect("json"),
        )))
        .expect("req");
    let (s, _, body) = send(&c, req).await;
    assert_eq!(s, 502);
    assert!(!String::from_utf8_lossy(&body).contains("PLANTED"));
    p.wait_log("upstream connect failed");
    let out = p.output();
    assert!(out.contains("upstream connect failed"));
    assert!(!out.contains("PLANTED"), "key leaked into logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_goes_through_https_proxy_when_set() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = MockUpstream::start().await.expect("mock");
    // A minimal CONNECT proxy on loopback that counts tunnels.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let proxy_addr = proxy.local_addr().expect("addr");
    let tunnels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t2 = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = proxy.accept().await {
            let t2 = t2.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split(' ').next())
                else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                t2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    let proxy_url = format!("http://{proxy_addr}");
    let p = Proc::run_flags(
        &up.url(),
        &[],
        &[
            ("HTTPS_PROXY", &proxy_url),
            ("HTTP_PROXY", &proxy_url),
            ("NO_PROXY", ""),
        ],
    );
    let listen = addr_of(&p.wait_log("listener bound"));
    let (s, _, _) = send(
        &client(),
        post_json(
            &format!("http://{listen}/v1/chat/completions"),
            &chat_body("gpt-4o", "via proxy", false),
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        tunnels.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "request went through the proxy"
    );
}

#[test]
fn replay_writes_one_line_per_record_and_skips_malformed_lines_with_their_numbers() {
    let model = tempfile::tempdir().expect("tmp");
    semtap::semantic::testing::write_tiny_bert(model.path(), 7).expect("tiny bert");
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("records.jsonl");
    let mut lines = Vec::new();
    for i in 0..40u64 {
        let response = if i == 30 {
            "   ".to_string()
        } else {
            format!("the cat sat on the mat number {i}")
        };
        lines.push(
            serde_json::json!({"id": format!("r{i}"), "ts_ms": 1_000 + i, "model": "m",
                "prompt": "where did the cat sit", "response": response})
            .to_string(),
        );
    }
    lines.insert(5, "{not json".to_string());
    std::fs::write(&input, lines.join("\n")).expect("write");
    for tier in ["transformer", "static"] {
        let out = dir.path().join(format!("flags-{tier}.jsonl"));
        let run = Command::new(BIN)
            .args(["replay", input.to_str().expect("utf-8 path"), "--out"])
            .arg(&out)
            .args(["--tier", tier, "--model-dir"])
            .arg(model.path())
            .output()
            .expect("run replay");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{tier}: {stderr}");
        assert!(stderr.contains(":6: skipped"), "{tier}: {stderr}");
        let text = std::fs::read_to_string(&out).expect("out");
        let exchanges: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "exchange")
            .collect();
        assert_eq!(exchanges.len(), 40, "{tier}");
        let blank = exchanges.iter().find(|v| v["id"] == "r30").expect("r30");
        assert!(
            blank["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "blank")),
            "{tier}: {blank}"
        );
        assert!(
            stderr.contains(&format!("\"tier\": \"{tier}\"")),
            "{stderr}"
        );
    }
}
