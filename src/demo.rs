//! `semtap demo`: a simulated upstream, semtap in front of it, and traffic through it, all in
//! one process, printing what semtap measured as it fills. Nothing else needs to run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Config, ListenerConfig, Upstream};
use crate::record::Provider;
use crate::server::Running;
use crate::simulate::MockUpstream;

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Duration,
    pub rate: u64,
    pub seed: u64,
}

const PROMPTS: &[&str] = &[
    "Explain how a hash map handles collisions.",
    "What causes the seasons on Earth?",
    "Summarise the causes of the French Revolution.",
    "How does TCP congestion control work?",
    "Give me tips for a first marathon.",
    "Why is the sky blue?",
    "What is the difference between a process and a thread?",
    "How do vaccines train the immune system?",
];

/// Runs the demo; returns whether traffic flowed and was measured.
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let upstream = MockUpstream::start().await?;
    let mut cfg = Config {
        admin_listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    cfg.listeners.push(ListenerConfig {
        name: "openai".into(),
        listen: "127.0.0.1:0".parse()?,
        upstream: Upstream::parse(&upstream.url()).map_err(anyhow::Error::msg)?,
        provider: None,
    });
    cfg.listeners.push(ListenerConfig {
        name: "anthropic".into(),
        listen: "127.0.0.1:0".parse()?,
        upstream: Upstream::parse(&upstream.url()).map_err(anyhow::Error::msg)?,
        provider: Some(Provider::Anthropic),
    });
    let running = Running::start(&cfg).await?;
    let openai = running
        .listener_addr("openai")
        .ok_or_else(|| anyhow::anyhow!("no openai listener"))?;
    let anthropic = running
        .listener_addr("anthropic")
        .ok_or_else(|| anyhow::anyhow!("no anthropic listener"))?;
    let admin = running
        .admin_addr()
        .ok_or_else(|| anyhow::anyhow!("no admin server"))?;
    println!("semtap demo: simulated upstream at {}", upstream.url());
    println!("  OpenAI base URL    http://{openai}/v1");
    println!("  Anthropic base URL http://{anthropic}");
    println!("  metrics            http://{admin}/metrics");
    println!(
        "sending {} req/s for {}s (streaming and not, with some 529s and blank answers)...\n",
        opts.rate,
        opts.duration.as_secs()
    );

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / opts.rate as f64);
    let mut tick = tokio::time::interval(interval);
    let mut n: u64 = opts.seed.wrapping_mul(7919);
    let mut sent = 0u64;
    let mut last_print = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    while start.elapsed() < opts.duration {
        tick.tick().await;
        n = n.wrapping_add(1);
        let prompt = PROMPTS[(n as usize) % PROMPTS.len()];
        let stream = n % 2 == 0;
        let fault = match n % 40 {
            7 => Some("status=529"),
            19 => Some("blank"),
            _ => None,
        };
        let req = if n % 3 == 0 {
            let body = serde_json::json!({
                "model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            });
            build(
                &format!("http://{anthropic}/v1/messages"),
                &body,
                fault,
                true,
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
            )
        };
        let Ok(req) = req else { continue };
        let client = client.clone();
        tasks.spawn(async move {
            if let Ok(resp) = client.request(req).await {
                let _ = resp.into_body().collect().await;
            }
        });
        sent += 1;
        while tasks.try_join_next().is_some() {}
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            print_summary(&running, start.elapsed());
        }
    }
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!();
    print_summary(&running, start.elapsed());
    let text = running.metrics.render_prometheus();
    println!("\nfrom http://{admin}/metrics:");
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("semtap_requests_total")
                || l.starts_with("gen_ai_client_operation_duration_seconds_count")
                || l.starts_with("gen_ai_client_token_usage_sum"))
    }) {
        println!("  {line}");
    }
    let processed = running.pipeline.stats().processed;
    println!("\n{sent} requests sent, {processed} exchanges analysed");
    running.shutdown().await;
    upstream.shutdown().await;
    Ok(processed > 0)
}

fn build(
    url: &str,
    body: &serde_json::Value,
    fault: Option<&str>,
    anthropic: bool,
) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let mut b = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-demo-not-a-real-key");
    if anthropic {
        b = b
            .header("anthropic-version", "2023-06-01")
            .header("x-api-key", "sk-ant-demo-not-a-real-key");
    }
    if let Some(f) = fault {
        b = b.header("x-mock-fault", f);
    }
    b = b.header("x-mock-chunk-delay-ms", "5");
    Ok(b.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?)
}

fn print_summary(running: &Running, elapsed: Duration) {
    let s = running.metrics.summary();
    println!(
        "[{:>5.1}s] {}",
        elapsed.as_secs_f64(),
        serde_json::to_string(&s).unwrap_or_default()
    );
}
