//! Webhooks over real loopback sockets: a receiver started by the test verifies signatures
//! independently (hmac crate) and deduplicates by event id. Incidents come from real traffic
//! through semtap to the simulated upstream (a burst of 500s opens an `error_rate` incident).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use semtap::alert::{event_id, Secret, WebhookConfig};
use semtap::config::Config;
use semtap::record::ExchangeRecord;
use semtap::semantic::engine::Analysis;
use semtap::semantic::incidents::IncidentEvent;
use semtap::semantic::live::AnalysisSink;
use semtap::server::Running;
use semtap::simulate::MockUpstream;
use sha2::Sha256;

const OK: u8 = 0;
const FAIL_500: u8 = 1;
const HANG: u8 = 2;

#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    verified: bool,
    /// 0 while hanging.
    answered: u16,
    header: String,
    body: Bytes,
}

struct HookState {
    secret: String,
    mode: AtomicU8,
    log: Mutex<Vec<Delivery>>,
}

/// A webhook receiver: refuses (not listening), answers 500, hangs, or accepts.
struct Hook {
    addr: SocketAddr,
    st: Arc<HookState>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Independent check of `t=<t>,v1=<hex>` with the hmac crate, 300 s tolerance.
fn independent_verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut sig = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sig = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(sig)) = (t, sig) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn handle(
    req: http::Request<Incoming>,
    st: Arc<HookState>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let header = req
        .headers()
        .get("x-semtap-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .unwrap_or_default();
    let verified = independent_verify(&st.secret, &header, &body);
    let mode = st.mode.load(Ordering::SeqCst);
    let answered = match mode {
        HANG => 0,
        FAIL_500 => 500,
        _ if verified => 200,
        _ => 401,
    };
    st.log.lock().push(Delivery {
        id,
        verified,
        answered,
        header,
        body,
    });
    if mode == HANG {
        std::future::pending::<()>().await;
    }
    let resp = http::Response::builder()
        .status(answered)
        .body(Full::new(Bytes::new()))
        .expect("response");
    Ok(resp)
}

impl Hook {
    /// A receiver on a reserved port, not listening yet (connections are refused).
    async fn new(secret: &str) -> Hook {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        Hook {
            addr,
            st: Arc::new(HookState {
                secret: secret.to_string(),
                mode: AtomicU8::new(OK),
                log: Mutex::new(Vec::new()),
            }),
            task: Mutex::new(None),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/semtap", self.addr)
    }

    async fn listen(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the receiver port");
        let st = self.st.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: stopping the receiver aborts them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        *self.task.lock() = Some(task);
    }

    fn set_mode(&self, m: u8) {
        self.st.mode.store(m, Ordering::SeqCst);
    }

    fn log(&self) -> Vec<Delivery> {
        self.st.log.lock().clone()
    }

    /// Ids accepted (verified, 200), deduplicated, in first-acceptance order.
    fn accepted(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.log()
            .into_iter()
            .filter(|d| d.answered == 200 && d.verified)
            .filter(|d| seen.insert(d.id.clone()))
            .map(|d| d.id)
            .collect()
    }
}

/// Collects what the engine concludes.
#[derive(Default)]
struct Collector {
    analyses: AtomicUsize,
    events: Mutex<Vec<IncidentEvent>>,
}

impl AnalysisSink for Collector {
    fn on_analysis(&self, _: &ExchangeRecord, _: &Analysis) {
        self.analyses.fetch_add(1, Ordering::SeqCst);
    }
    fn on_incident(&self, event: &IncidentEvent) {
        self.events.lock().push(event.clone());
    }
}

impl Collector {
    fn ids(&self) -> Vec<String> {
        self.events.lock().iter().map(event_id).collect()
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hook_config(name: &str, url: &str, secret: &str) -> WebhookConfig {
    let mut w = WebhookConfig::new(name, url, Secret::new(secret)).expect("webhook config");
    w.timeout = Duration::from_millis(500);
    w.backoff_initial = Duration::from_millis(50);
    w.backoff_max = Duration::from_millis(300);
    w.breaker_failures = 3;
    w.breaker_open = Duration::from_millis(300);
    w
}

fn semtap_config(
    upstream: &str,
    state: &Path,
    model_dir: &Path,
    hooks: Vec<WebhookConfig>,
) -> Config {
    let mut cfg = config_for(upstream, None);
    cfg.semantic.enabled = true;
    // No model: the engine runs degraded; the rate monitors (error_rate) still work.
    cfg.semantic.model_dir = Some(model_dir.to_path_buf());
    cfg.semantic.engine.cooldown_ms = 0;
    cfg.state_dir = Some(state.to_path_buf());
    cfg.webhooks = hooks;
    cfg
}

/// Sends `ok` good requests then `errors` 500s for `model`, one at a time.
async fn traffic(base: &str, model: &str, ok: usize, errors: usize, traceparent: Option<&str>) {
    let c = client();
    let url = format!("{base}/v1/chat/completions");
    for i in 0..ok + errors {
        let mut req = post_json(&url, &chat_body(model, "Why is the sky blue?", false));
        if i >= ok {
            req = with_header(req, "x-mock-fault", "status=500");
        }
        if let Some(tp) = traceparent {
            req = with_header(req, "traceparent", tp);
        }
        send(&c, req).await;
    }
}

async fn start(cfg: &Config, collector: &Arc<Collector>) -> Running {
    Running::start_full(
        cfg,
        Vec::new(),
        vec![collector.clone() as Arc<dyn AnalysisSink>],
    )
    .await
    .expect("semtap starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_is_delivered_signed_once_with_trace_ids_and_a_wrong_secret_fails() {
    let up = MockUpstream::start().await.expect("mock");
    let state = tempfile::tempdir().expect("tmp");
    let model = tempfile::tempdir().expect("tmp");
    let good = Hook::new("right-secret").await;
    good.listen().await;
    // This receiver expects another secret: semtap's signatures must fail its check.
    let bad = Hook::new("other-secret").await;
    bad.listen().await;
    let cfg = semtap_config(
        &up.url(),
        state.path(),
        model.path(),
        vec![
            hook_config("good", &good.url(), "right-secret"),
            hook_config("bad", &bad.url(), "right-secret"),
        ],
    );
    let collector = Arc::new(Collector::default());
    let running = start(&cfg, &collector).await;
    let base = format!("http://{}", running.listener_addrs()[0]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    // 10 clean, then 30 errors: one incident for the key however long the burst lasts.
    traffic(&base, "gpt-4o-mini", 10, 30, Some(&tp)).await;
    wait_until("every exchange analysed", 30, || {
        collector.analyses.load(Ordering::SeqCst) >= 40
    })
    .await;
    let opened: Vec<IncidentEvent> = collector
        .events
        .lock()
        .iter()
        .filter(|e| e.state == "opened")
        .cloned()
        .collect();
    assert_eq!(
        opened.len(),
        1,
        "deduplicated per monitor and key: {opened:?}"
    );
    let want = event_id(&opened[0]);
    let webhooks = running.webhooks.clone().expect("dispatcher");
    wait_until("delivery to the good receiver", 30, || {
        webhooks.pending_ids("good").is_some_and(|p| p.is_empty()) && !good.accepted().is_empty()
    })
    .await;
    assert_eq!(good.accepted(), vec![want.clone()], "exactly the one event");

    let d = good
        .log()
        .into_iter()
        .find(|d| d.answered == 200)
        .expect("a delivery");
    assert!(d.verified, "signature verifies independently");
    assert!(semtap::alert::verify(
        b"right-secret",
        &d.header,
        &d.body,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|x| x.as_secs())
            .unwrap_or(0),
        300
    )
    .is_ok());
    let v: serde_json::Value = serde_json::from_slice(&d.body).expect("json payload");
    assert_eq!(v["schema"], "semtap.webhook.v1");
    assert_eq!(v["id"], want.as_str());
    assert_eq!(v["type"], "incident.opened");
    assert_eq!(v["incident"]["kind"], "error_rate");
    assert_eq!(v["incident"]["state"], "open");
    assert_eq!(v["incident"]["id"], opened[0].incident.id.as_str());
    assert_eq!(v["incident"]["key"]["joined"], "test/openai/gpt-4o-mini");
    assert_eq!(v["incident"]["key"]["listener"], "test");
    assert_eq!(v["incident"]["key"]["provider"], "openai");
    assert_eq!(v["incident"]["key"]["model"], "gpt-4o-mini");
    assert_eq!(v["incident"]["evidence"]["monitor"], "error_rate");
    let examples = v["incident"]["evidence"]["examples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!examples.is_empty(), "{v}");
    for e in &examples {
        assert_eq!(e["trace_id"], trace, "the app's traceparent trace id");
        assert_eq!(e["span_id"].as_str().map(str::len), Some(16));
    }
    assert_eq!(v["suggested_action"]["action"], "fallback");
    assert_eq!(v["suggested_action"]["provider"], "openai");
    assert_eq!(v["suggested_action"]["model"], "gpt-4o-mini");
    assert_eq!(
        v["fingerprint"],
        semtap::alert::fingerprint(
            semtap::semantic::incidents::IncidentKind::ErrorRate,
            "openai",
            "gpt-4o-mini",
            None
        )
        .as_str()
    );

    // The receiver with the other secret: verification fails; semtap keeps retrying.
    wait_until("attempts at the wrong-secret receiver", 30, || {
        bad.log().len() >= 2
    })
    .await;
    let log = bad.log();
    assert!(log.iter().all(|d| !d.verified && d.answered == 401));
    assert!(log.iter().all(|d| d.id == want));
    assert!(
        semtap::alert::verify(b"other-secret", &log[0].header, &log[0].body, 0, u64::MAX).is_err()
    );
    assert_eq!(webhooks.pending_ids("bad"), Some(vec![want.clone()]));
    // Every attempt is signed afresh over the same bytes.
    assert!(log.windows(2).all(|w| w[0].body == w[1].body));

    let m = get_text(&format!(
        "http://{}/metrics",
        running.admin_addr().expect("admin")
    ))
    .await
    .1;
    assert_eq!(
        prom_sum(
            &m,
            "semtap_webhook_deliveries_total",
            &["receiver=\"good\"", "result=\"sent\""]
        ),
        1.0,
        "{m}"
    );
    assert!(
        prom_sum(
            &m,
            "semtap_webhook_deliveries_total",
            &["receiver=\"bad\"", "result=\"retried\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        m.contains("semtap_webhook_delivery_latency_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("semtap_webhook_spool_depth"), "{m}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_refused_500_hang_and_a_restart_lose_nothing() {
    let up = MockUpstream::start().await.expect("mock");
    let state = tempfile::tempdir().expect("tmp");
    let model = tempfile::tempdir().expect("tmp");
    let hook = Hook::new("s3cret").await; // not listening: connections refused
    let cfg = semtap_config(
        &up.url(),
        state.path(),
        model.path(),
        vec![hook_config("hook", &hook.url(), "s3cret")],
    );
    let collector = Arc::new(Collector::default());

    // Run 1, receiver refusing: an incident opens and resolves.
    let running = start(&cfg, &collector).await;
    let base = format!("http://{}", running.listener_addrs()[0]);
    let metrics_url = format!("http://{}/metrics", running.admin_addr().expect("admin"));
    traffic(&base, "model-a", 10, 20, None).await;
    wait_until("model-a incident opened", 30, || collector.ids().len() == 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = get_text(&metrics_url).await.1;
        if prom_sum(
            &m,
            "semtap_webhook_deliveries_total",
            &["result=\"retried\""],
        ) >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no refused attempt counted: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    traffic(&base, "model-a", 30, 0, None).await;
    wait_until("model-a incident resolved", 30, || {
        collector.ids().len() == 2
    })
    .await;

    // The receiver comes up answering 500, then hangs.
    hook.set_mode(FAIL_500);
    hook.listen().await;
    wait_until("a 500 answered", 30, || {
        hook.log().iter().any(|d| d.answered == 500)
    })
    .await;
    hook.set_mode(HANG);
    wait_until("a hanging attempt", 30, || {
        hook.log().iter().any(|d| d.answered == 0)
    })
    .await;
    traffic(&base, "model-b", 10, 20, None).await;
    wait_until("model-b incident opened", 30, || collector.ids().len() == 3).await;
    let webhooks = running.webhooks.clone().expect("dispatcher");
    wait_until("all three spooled", 30, || webhooks.pending() == 3).await;
    assert!(
        hook.accepted().is_empty(),
        "nothing accepted during the outage"
    );
    let spooled = webhooks.pending_ids("hook").unwrap_or_default();
    assert_eq!(spooled, collector.ids(), "spooled oldest first");
    running.shutdown().await;
    drop(webhooks);

    // Run 2 on the same state dir: the spool comes back; one more incident joins it.
    let running = start(&cfg, &collector).await;
    let webhooks = running.webhooks.clone().expect("dispatcher");
    assert_eq!(
        webhooks.pending_ids("hook"),
        Some(spooled.clone()),
        "the spool survived the restart"
    );
    let base = format!("http://{}", running.listener_addrs()[0]);
    traffic(&base, "model-c", 10, 20, None).await;
    wait_until("model-c incident opened", 30, || collector.ids().len() == 4).await;

    // The receiver recovers: everything arrives, each id once after dedup, in spool order.
    hook.set_mode(OK);
    let expected = collector.ids();
    wait_until("every event delivered", 30, || {
        hook.accepted().len() == expected.len() && webhooks.pending() == 0
    })
    .await;
    assert_eq!(hook.accepted(), expected, "all delivered, in order");
    let unique: BTreeSet<String> = hook.log().into_iter().map(|d| d.id).collect();
    assert_eq!(unique, expected.iter().cloned().collect::<BTreeSet<_>>());
    assert!(
        hook.log().iter().all(|d| d.verified),
        "every attempt signed"
    );
    let ids: HashSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(
        ids.len(),
        4,
        "event ids are unique across the restart: {expected:?}"
    );
    running.shutdown().await;
}

#[test]
fn python_example_verifies_semtap_signatures() {
    let have = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is required under CI=true"
        );
        eprintln!("note: python3 not found; skipping the Python example check");
        return;
    }
    let body = br#"{"schema":"semtap.webhook.v1","id":"abc-1.opened","type":"incident.opened"}"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = semtap::alert::signature_header(b"py-secret \xc3\xa9".as_slice(), now, body);
    let run = |secret: &str, header: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/verify_webhook.py"
            ))
            .arg("check")
            .arg(header)
            .env("SEMTAP_WEBHOOK_SECRET", secret)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body)
            .expect("write body");
        let out = child.wait_with_output().expect("python3 finishes");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert_eq!(run("py-secret é", &header), (Some(0), "ok".to_string()));
    assert_eq!(run("wrong", &header), (Some(1), "rejected".to_string()));
    let stale = semtap::alert::signature_header(b"py-secret \xc3\xa9".as_slice(), now - 301, body);
    assert_eq!(
        run("py-secret é", &stale),
        (Some(1), "rejected".to_string())
    );
}

#[test]
fn config_errors_name_the_file_key_and_reason() {
    let bin = env!("CARGO_BIN_EXE_semtap");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().to_string_lossy().to_string();
    let out = std::process::Command::new(bin)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .args([
            "--state-dir",
            &state,
            "--webhook",
            "http://127.0.0.1:9/hook",
        ])
        .env_remove("SEMTAP_WEBHOOK_SECRET")
        .env_remove("SEMTAP_CONFIG")
        .output()
        .expect("semtap runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("<environment>: SEMTAP_WEBHOOK_SECRET: is not set"),
        "{err}"
    );

    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "state_dir = \"/tmp/x\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n\n[[webhook]]\nurl = \"not a url\"\nsecret_env = \"SEMTAP_TEST_NO_SUCH_SECRET_VAR\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(bin)
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("semtap runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = file.display().to_string();
    assert!(
        err.contains(&format!("{f}: webhook[0].url: `not a url` is not a URL")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}: webhook[0].secret_env: environment variable `SEMTAP_TEST_NO_SUCH_SECRET_VAR` is not set"
        )),
        "{err}"
    );
}
