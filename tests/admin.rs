//! The admin API's bearer token over real loopback sockets: what is refused without it, what
//! stays open for probes and scrapers, and that semtap will not expose the API without one.

mod common;

use std::process::Command;

use bytes::Bytes;
use common::proc::{addr_of, Proc};
use common::*;
use http_body_util::Full;
use semtap::admin::AdminAuth;
use semtap::alert::Secret;
use semtap::simulate::MockUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_semtap");
const TOKEN: &str = "adm-PLANTED-token-5c1e";

async fn call(method: &str, url: &str, token: Option<&str>) -> (u16, http::HeaderMap) {
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    let (s, h, _) = send(&client(), req).await;
    (s, h)
}

/// The status of `GET {admin}{path}`, with `token` as a bearer token when given.
async fn get_status(admin: &str, path: &str, token: Option<&str>) -> u16 {
    call("GET", &format!("{admin}{path}"), token).await.0
}

/// A tap whose admin API needs `TOKEN`; `/metrics` open or not.
async fn tapped_with_token(metrics_public: bool) -> (MockUpstream, Tapped) {
    tapped_with_auth(AdminAuth {
        token: Some(Secret::new(TOKEN)),
        metrics_public,
    })
    .await
}

async fn tapped_with_auth(auth: AdminAuth) -> (MockUpstream, Tapped) {
    let up = MockUpstream::start().await.expect("mock");
    let mut cfg = config_for(&up.url(), None);
    cfg.admin_auth = auth;
    let t = tap_with(cfg).await;
    (up, t)
}

const GUARDED: &[(&str, &str)] = &[
    ("GET", "/status"),
    ("GET", "/baselines"),
    ("GET", "/incidents"),
    ("POST", "/baselines/test%2Fopenai%2Fgpt-4o/pin"),
    ("POST", "/baselines/test%2Fopenai%2Fgpt-4o/reset"),
    ("GET", "/no-such-route"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_route_but_the_probes_and_metrics_answers_401_without_it() {
    let (_up, t) = tapped_with_token(true).await;
    let admin = t.admin();
    for (method, path) in GUARDED {
        let url = format!("{admin}{path}");
        let (s, h) = call(method, &url, None).await;
        assert_eq!(s, 401, "{method} {path} without a token");
        assert!(
            h.get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Bearer")),
            "{method} {path}: {h:?}"
        );
        for wrong in [
            "nope",
            "adm-PLANTED-token-5c1",
            "adm-PLANTED-token-5c1e0",
            "",
        ] {
            assert_eq!(
                call(method, &url, Some(wrong)).await.0,
                401,
                "{method} {path} with token `{wrong}`"
            );
        }
        // Another scheme carrying the right token is not a bearer token.
        let req = http::Request::builder()
            .method(*method)
            .uri(&url)
            .header("authorization", format!("Basic {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(send(&client(), req).await.0, 401, "{method} {path} Basic");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let s = get_status(&admin, path, None).await;
        assert_eq!(s, 200, "{path} stays open without a token");
    }
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_token_opens_every_route() {
    let (_up, t) = tapped_with_token(false).await;
    let admin = t.admin();
    assert_eq!(get_status(&admin, "/status", Some(TOKEN)).await, 200);
    assert_eq!(get_status(&admin, "/metrics", Some(TOKEN)).await, 200);
    // The scheme is case-insensitive (RFC 9110).
    let req = http::Request::get(format!("{admin}/status"))
        .header("authorization", format!("bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send(&client(), req).await.0, 200);
    // Past the token check, the routes answer as they always did (engine off here: 503).
    assert_eq!(get_status(&admin, "/baselines", Some(TOKEN)).await, 503);
    assert_eq!(get_status(&admin, "/no-such-route", Some(TOKEN)).await, 404);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_public_false_puts_metrics_behind_the_token_but_not_the_probes() {
    let (_up, t) = tapped_with_token(false).await;
    let admin = t.admin();
    assert_eq!(get_status(&admin, "/metrics", None).await, 401);
    assert_eq!(get_status(&admin, "/metrics", Some("wrong")).await, 401);
    assert_eq!(get_status(&admin, "/metrics", Some(TOKEN)).await, 200);
    assert_eq!(get_status(&admin, "/healthz", None).await, 200);
    assert_eq!(get_status(&admin, "/readyz", None).await, 200);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_configured_the_loopback_admin_api_is_open_as_before() {
    let (_up, t) = tapped_with_auth(AdminAuth::default()).await;
    let admin = t.admin();
    assert_eq!(get_status(&admin, "/status", None).await, 200);
    assert_eq!(get_status(&admin, "/metrics", None).await, 200);
    t.running.shutdown().await;
}

#[test]
fn a_non_loopback_admin_without_a_token_is_refused_naming_the_flag_or_key() {
    // By flag: nothing is bound, semtap exits 2 naming `--admin` and the reason.
    let out = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--admin",
            "0.0.0.0:0",
        ])
        .env("SEMTAP_SEMANTIC", "off")
        .env_remove("SEMTAP_ADMIN_TOKEN")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--admin") && err.contains("not loopback") && err.contains("token"),
        "{err}"
    );

    // By file: the key is `admin.listen`; check-config says the same.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("exposed.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n[admin]\nlisten = \"0.0.0.0:9464\"\n",
    )
    .expect("write");
    let file = path.to_str().expect("utf8");
    for args in [vec!["check-config", file], vec!["run", "--config", file]] {
        let out = Command::new(BIN)
            .args(&args)
            .env("SEMTAP_SEMANTIC", "off")
            .env_remove("SEMTAP_ADMIN_TOKEN")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("exposed.toml: admin.listen:") && err.contains("0.0.0.0:9464"),
            "{args:?}: {err}"
        );
    }

    // With a token (variable or file) the same file is valid.
    let out = Command::new(BIN)
        .args(["check-config", file])
        .env("SEMTAP_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
    std::fs::write(
        &path,
        format!("[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n[admin]\nlisten = \"0.0.0.0:9464\"\ntoken_file = \"{}\"\n", token_file.display()),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check-config", file])
        .env_remove("SEMTAP_ADMIN_TOKEN")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_an_exposed_admin_before_binding_anything() {
    let up = MockUpstream::start().await.expect("mock");
    let mut cfg = config_for(&up.url(), None);
    cfg.admin_listen = "0.0.0.0:0".parse().expect("addr");
    let err = semtap::server::Running::start(&cfg)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("admin.listen") && e.contains("no admin token")),
        "{err:?}"
    );
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_auth.metrics_public = false;
    let err = semtap::server::Running::start(&cfg)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("admin.metrics_public")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_appears_in_logs_or_admin_answers() {
    let up = MockUpstream::start().await.expect("mock");
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
    let cfg = dir.path().join("semtap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\nmetrics_public = false\n",
            up.url(),
            token_file.display()
        ),
    )
    .expect("write");
    for (how, envs) in [
        ("token_file", vec![]),
        ("SEMTAP_ADMIN_TOKEN", vec![("SEMTAP_ADMIN_TOKEN", TOKEN)]),
    ] {
        let p = Proc::run_config(&cfg, &envs);
        let listen = addr_of(&p.wait_log("listener bound"));
        let admin = addr_of(&p.wait_log("admin server bound"));
        p.wait_log("semtap ready");
        // The app's traffic, then admin calls with the right, a wrong and no token.
        let (s, _, _) = send(
            &client(),
            post_json(
                &format!("http://{listen}/v1/chat/completions"),
                &chat_body("gpt-4o", "hi", false),
            ),
        )
        .await;
        assert_eq!(s, 200, "{how}");
        let mut answers = String::new();
        for path in ["/status", "/metrics", "/readyz", "/healthz"] {
            for token in [Some(TOKEN), Some("adm-PLANTED-wrong"), None] {
                let mut b = http::Request::get(format!("http://{admin}{path}"));
                if let Some(t) = token {
                    b = b.header("authorization", format!("Bearer {t}"));
                }
                let (s, h, body) =
                    send(&client(), b.body(Full::new(Bytes::new())).expect("request")).await;
                let open = path == "/readyz" || path == "/healthz" || token == Some(TOKEN);
                assert_eq!(s == 200, open, "{how}: {path} with {token:?} answered {s}");
                answers.push_str(&format!("{h:?}"));
                answers.push_str(&String::from_utf8_lossy(&body));
            }
        }
        let logs = p.output();
        drop(p);
        assert!(!logs.is_empty());
        assert!(!logs.contains("PLANTED"), "{how}: a token leaked into logs");
        assert!(
            !answers.contains("PLANTED"),
            "{how}: a token leaked into an admin answer"
        );
    }
}
