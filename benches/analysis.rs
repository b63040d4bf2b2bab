//! The analysis thread's work per exchange, engine off: build the record from a capture
//! (parse request and answer, usage, timings) and record its metrics. At saturation this thread
//! shares the CPUs with the data path, so its cost per exchange is part of the tap's.
//!
//! Quick check: `cargo bench --bench analysis -- --test`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use semtap::metrics::{Metrics, MetricsOptions};
use semtap::pipeline::assemble::assemble;
use semtap::pipeline::Capture;
use semtap::protocol::classify;
use semtap::record::Outcome;
use semtap::tap::body::CaptureBuf;

/// The request and ~1 KB answer `scripts/lib.sh` serves in the tap benchmarks.
const REQUEST: &str =
    r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "How do tides work?"}]}"#;

fn answer() -> String {
    let text = "Tides are caused mainly by the Moon's gravity pulling on the oceans, with the Sun adding a smaller pull; when they line up we get spring tides, and at right angles, neap tides. ".repeat(3);
    format!(
        r#"{{"id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18", "choices": [{{"index": 0, "message": {{"role": "assistant", "content": "{}"}}, "finish_reason": "stop"}}], "usage": {{"prompt_tokens": 20, "completion_tokens": 150, "total_tokens": 170}}}}"#,
        &text[..text.len().min(700)]
    )
}

fn body(bytes: &[u8]) -> semtap::pipeline::CapturedBody {
    let mut buf = CaptureBuf::new(1 << 20, None);
    buf.push(bytes);
    buf.into_captured()
}

fn capture(answer: &[u8]) -> Capture {
    let path = "/v1/chat/completions";
    Capture {
        id: "0123456789abcdef0123456789abcdef".into(),
        listener: Arc::from("openai"),
        started_at_ms: 1_700_000_000_000,
        method: "POST".into(),
        path: path.into(),
        route: classify(&http::Method::POST, path, None, false),
        server_address: Arc::from("127.0.0.1"),
        server_port: 18001,
        request: body(REQUEST.as_bytes()),
        status: 200,
        response_content_type: Some("application/json".into()),
        response: body(answer),
        chunk_times: vec![(answer.len() as u64, 180)],
        outcome: Outcome::Complete,
        duration: Duration::from_micros(200),
        upstream_headers_after: Some(Duration::from_micros(170)),
        dispatch_after: Duration::from_micros(4),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let answer = answer();
    let metrics = Metrics::new(MetricsOptions::default());
    let mut g = c.benchmark_group("analysis_1kb_chat_completion");
    g.bench_function("assemble", |b| {
        b.iter_batched(
            || capture(answer.as_bytes()),
            |c| black_box(assemble(c, 1 << 20)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("assemble_and_record_metrics", |b| {
        b.iter_batched(
            || capture(answer.as_bytes()),
            |c| {
                let rec = assemble(c, 1 << 20);
                metrics.record_exchange(&rec);
                black_box(rec)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
