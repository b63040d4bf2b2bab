//! The official `openai` and `anthropic` Python SDKs, streaming and not, get the same text,
//! usage and exceptions through semtap as they get directly.

mod common;

use std::process::Command;

use common::*;
use semtap::simulate::MockUpstream;

fn sdks_available() -> bool {
    Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_see_the_same_answers_through_semtap() {
    if !sdks_available() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install the openai and anthropic SDKs (pip install openai anthropic)"
        );
        eprintln!("skipped: python3 -m pip install openai anthropic to run this test");
        return;
    }
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/compare.py");
    let direct = up.url();
    let tapped = t.base();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &direct, &tapped])
            .output()
    })
    .await
    .expect("join")
    .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from the script");
    let cases = v["direct"].as_object().expect("cases");
    for (case, d) in cases {
        assert_eq!(d, &v["tapped"][case], "{case} differs through semtap");
    }
    assert_eq!(v["tapped"]["openai_429"], "RateLimitError");
    // OverloadedError in recent SDKs, InternalServerError in older ones; the same as direct.
    assert!(v["tapped"]["anthropic_529"]
        .as_str()
        .unwrap_or("")
        .ends_with(":529"));
    assert!(!v["tapped"]["anthropic_stream"]["text"]
        .as_str()
        .unwrap_or("")
        .is_empty());
    // Every SDK call (7) became a record.
    let mut n = 0;
    while t
        .records
        .recv_timeout(std::time::Duration::from_secs(5))
        .is_ok()
    {
        n += 1;
        if n == 7 {
            break;
        }
    }
    assert_eq!(n, 7);
    t.running.shutdown().await;
}
