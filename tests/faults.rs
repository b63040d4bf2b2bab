//! Faults with real processes and sockets: the upstream process SIGKILLed mid-stream and
//! restarted on the same port, and semtap itself SIGKILLed under load with undelivered
//! webhooks and learned baselines, then restarted on the same state dir.
//!
//! The webhook receiver and the OTLP collector going down and coming back are covered in
//! tests/webhooks.rs (`outage_refused_500_hang_and_a_restart_lose_nothing`) and tests/otlp.rs
//! (`collector_down_never_touches_the_proxy_and_export_resumes_when_it_is_back`); the table in
//! docs/faults.md lists every scenario and the test behind it.

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proc::{addr_of, Proc};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use semtap::record::Outcome;
use semtap::simulate::MockUpstream;

/// Set in a child copy of this test binary: serve the simulated upstream on this port.
const CHILD_ENV: &str = "SEMTAP_FAULTS_UPSTREAM_PORT";
const CHILD_READY: &str = "mock upstream ready";

/// Not a check: in a child copy of this binary (see [`UpstreamProcess`]) this serves the
/// simulated upstream until killed; in a normal run it returns at once.
#[test]
fn child_process_upstream_entry_point() {
    let Some(port) = std::env::var(CHILD_ENV)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let _up = MockUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("bind the upstream port");
        println!("{CHILD_READY}");
        std::future::pending::<()>().await;
    });
}

/// The simulated upstream in its own process, so that it can be SIGKILLed like a real one.
struct UpstreamProcess {
    child: Child,
}

impl UpstreamProcess {
    fn start(port: u16) -> UpstreamProcess {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "child_process_upstream_entry_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the upstream process");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.any(|l| l.is_ok_and(|l| l.contains(CHILD_READY)));
        assert!(ready, "the upstream process never became ready");
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        UpstreamProcess { child }
    }

    fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for UpstreamProcess {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A guard against a hang, not a measure of speed: generous, and the failure says "hung".
async fn no_hang<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: hung"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_stream_cuts_the_client_and_traffic_resumes_when_it_is_back() {
    let port = free_port();
    let mut upstream = UpstreamProcess::start(port);
    let t = tap(&format!("http://127.0.0.1:{port}")).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", t.base());

    // A healthy call first, so a pooled connection to the upstream exists when it dies.
    let (s, _, _) = send(&c, post_json(&url, &chat_body("gpt-4o", "warm", false))).await;
    assert_eq!(s, 200);
    let _ = t.next_record();

    // A stream held open after its first event, then the upstream process is killed.
    let req = with_header(
        post_json(&url, &chat_body("gpt-4o", "cut me", true)),
        "x-mock-fault",
        "gate",
    );
    let resp = c.request(req).await.expect("headers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = no_hang("first event", body.frame()).await;
    assert!(
        first.is_some_and(|f| f.is_ok()),
        "the first event arrives before the kill"
    );
    upstream.kill_hard();
    let rest = no_hang("the rest of the cut stream", body.collect()).await;
    assert!(rest.is_err(), "the client sees the cut, not a clean end");
    let r = t.next_record();
    assert_eq!(r.outcome, Outcome::StreamInterrupted);
    assert!(r.finish_reasons.iter().any(|f| f == "stream_interrupted"));

    // While it is down: an immediate 502 in the provider's envelope, not a hang.
    let (s, h, _) = no_hang(
        "a call while the upstream is down",
        send(&c, post_json(&url, &chat_body("gpt-4o", "down", false))),
    )
    .await;
    assert_eq!(s, 502);
    assert_eq!(
        h.get("x-semtap-error").and_then(|v| v.to_str().ok()),
        Some("upstream_unreachable")
    );
    assert_eq!(t.next_record().outcome, Outcome::UpstreamUnreachable);

    // Back on the same port: the very next calls succeed, streaming and not.
    let _upstream = UpstreamProcess::start(port);
    for stream in [false, true, false, true] {
        let (s, _, b) = send(&c, post_json(&url, &chat_body("gpt-4o", "back", stream))).await;
        assert_eq!(s, 200, "stream={stream}: {}", String::from_utf8_lossy(&b));
        if stream {
            assert!(String::from_utf8_lossy(&b).contains("[DONE]"));
        }
        assert_eq!(t.next_record().outcome, Outcome::Complete);
    }
    t.running.shutdown().await;
}

/// A webhook receiver that verifies each signature with semtap's documented scheme and keeps
/// the ids it accepted.
struct Receiver {
    ids: Arc<Mutex<Vec<String>>>,
    unverified: Arc<Mutex<usize>>,
}

async fn receive(addr: SocketAddr, secret: &'static str) -> Receiver {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the receiver port");
    let ids = Arc::new(Mutex::new(Vec::new()));
    let unverified = Arc::new(Mutex::new(0));
    let (ids2, bad2) = (ids.clone(), unverified.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (ids, bad) = (ids2.clone(), bad2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let (ids, bad) = (ids.clone(), bad.clone());
                    async move {
                        let sig = req
                            .headers()
                            .get(semtap::alert::SIGNATURE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        let status = if semtap::alert::verify(
                            secret.as_bytes(),
                            &sig,
                            &body,
                            now,
                            semtap::alert::TOLERANCE_SECS,
                        )
                        .is_ok()
                        {
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            ids.lock()
                                .push(v["id"].as_str().unwrap_or_default().to_string());
                            200
                        } else {
                            *bad.lock() += 1;
                            401
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .expect("response");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Receiver { ids, unverified }
}

/// Ids in a spool journal that have an `add` line and no `done` line.
fn undelivered(spool: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(spool).unwrap_or_default();
    let mut added = Vec::new();
    let mut done = BTreeSet::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a torn last line is the spool's to skip
        };
        match v["op"].as_str() {
            Some("add") => added.push((v["seq"].as_u64(), v["id"].as_str().map(String::from))),
            Some("done") => {
                done.insert(v["seq"].as_u64());
            }
            _ => {}
        }
    }
    added
        .into_iter()
        .filter(|(seq, _)| !done.contains(seq))
        .filter_map(|(_, id)| id)
        .collect()
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semtap_sigkilled_under_load_delivers_its_spool_and_reloads_baselines_after_restart() {
    const SECRET: &str = "faults-hook-secret";
    let up = MockUpstream::start().await.expect("mock");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    let model = dir.path().join("tiny-model");
    semtap::semantic::testing::write_tiny_bert(&model, 11).expect("tiny model");
    let hook_addr = SocketAddr::from(([127, 0, 0, 1], free_port())); // down: refused
    let cfg = dir.path().join("semtap.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[semantic]\nmodel_dir = \"{}\"\nbaseline_size = 20\n[[webhook]]\nname = \"hook\"\nurl = \"http://{hook_addr}/semtap\"\nsecret_env = \"FAULTS_HOOK_SECRET\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n",
            state.display(),
            up.url(),
            model.display(),
        ),
    )
    .expect("config");
    let args = [
        "run",
        "--config",
        cfg.to_str().expect("utf8"),
        "--log-format",
        "json",
    ];
    let envs = [("SEMTAP_SEMANTIC", "on"), ("FAULTS_HOOK_SECRET", SECRET)];

    // Run 1: steady load on one key, an incident on another, the receiver refusing.
    let mut p = Proc::spawn(&args, &envs);
    p.wait_log("semantic engine: static tier ready");
    let listen = addr_of(&p.wait_log("listener bound"));
    let admin = addr_of(&p.wait_log("admin server bound"));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, url) = (stop.clone(), format!("http://{listen}/v1/chat/completions"));
        load.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let body = chat_body("gpt-4o", &format!("question {worker}-{i}"), i % 2 == 0);
                // Errors are expected once semtap is killed.
                if let Ok(resp) = c.request(post_json(&url, &body)).await {
                    let _ = resp.into_body().collect().await;
                }
                i += 1;
                // Paced, so that the test loads semtap without starving a shared CI machine.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    blank_then_overloaded(&client(), &format!("http://{listen}/v1/chat/completions")).await;
    let spool = state.join("webhooks").join("hook").join("spool.jsonl");
    wait_until("an incident spooled on disk", 60, || {
        !undelivered(&spool).is_empty()
    })
    .await;
    // Baselines are written every 30 s while learning: wait for the file, load still running.
    let baselines = semtap::semantic::live::baselines_path(&state);
    wait_until("baselines saved by the running engine", 90, || {
        std::fs::read_to_string(&baselines).is_ok_and(|t| t.contains("main/openai/gpt-4o"))
    })
    .await;
    let metrics = get_text(&format!("http://{admin}/metrics")).await.1;
    assert!(
        prom_sum(&metrics, "semtap_requests_total", &[]) >= 30.0,
        "under load"
    );
    let served = prom_sum(&metrics, "semtap_requests_total", &[]);
    p.kill_hard();
    stop.store(true, Ordering::SeqCst);
    for l in load {
        let _ = l.await;
    }
    let spooled = undelivered(&spool);
    assert!(!spooled.is_empty(), "undelivered events survive the kill");

    // Run 2 on the same state dir, the receiver now up.
    let rx = receive(hook_addr, SECRET).await;
    let p = Proc::spawn(&args, &envs);
    let reloaded = p.wait_log("baselines reloaded from the state dir");
    assert!(
        reloaded["fields"]["keys"].as_u64().is_some_and(|k| k >= 1),
        "{reloaded}"
    );
    p.wait_log("undelivered webhook events recovered from the spool");
    let admin = addr_of(&p.wait_log("admin server bound"));
    wait_until("every spooled event delivered", 60, || {
        let got: BTreeSet<String> = rx.ids.lock().iter().cloned().collect();
        spooled.iter().all(|id| got.contains(id))
    })
    .await;
    assert_eq!(*rx.unverified.lock(), 0, "every delivery signed");
    let list = get_text(&format!("http://{admin}/baselines")).await.1;
    assert!(list.contains("main/openai/gpt-4o"), "{list}");
    wait_until("the spool emptied", 30, || undelivered(&spool).is_empty()).await;
    eprintln!(
        "sigkill: {served} requests before the kill, {} events spooled, all delivered after restart; baselines reloaded: {}",
        spooled.len(),
        reloaded["fields"]["keys"]
    );
    drop(p);
}
