//! Cost of the cheap per-response checks and the lexical profile, which run on every answer.
//!
//! Quick check: `cargo bench --bench checks -- --test`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use semtap::record::{Api, ExchangeRecord, Outcome};
use semtap::semantic::checks::{error_text, garbled, refusal, repetition, run_checks, CheckConfig};
use semtap::semantic::lexical::profile;

/// A normal answer of about 256 tokens (~1.2 KB); the same text the checks' unit tests use.
const ANSWER_256: &str = include_str!("../tests/fixtures/answer_256.txt");

const WORDS: &[&str] = &[
    "the",
    "model",
    "answer",
    "returns",
    "a",
    "list",
    "of",
    "values",
    "and",
    "then",
    "sorts",
    "them",
    "by",
    "date",
    "which",
    "is",
    "usually",
    "what",
    "you",
    "want",
    "when",
    "data",
    "arrives",
    "late",
    "from",
    "several",
    "servers",
    "in",
    "different",
    "regions",
    "résumé",
    "naïve",
    "日本語",
    "cache",
    "latency",
    "request",
];

/// About `bytes` of varied prose (a deterministic pseudo-random word stream).
fn prose(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 64);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut n = 0;
    while s.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        n += 1;
        s.push_str(match n % 97 {
            0 => ".\n\n",
            k if k % 13 == 0 => ". ",
            k if k % 7 == 0 => ", ",
            _ => " ",
        });
    }
    s
}

fn record(text: String) -> ExchangeRecord {
    ExchangeRecord {
        id: "bench".into(),
        api: Api::ChatCompletions,
        status: 200,
        outcome: Outcome::Complete,
        response: text,
        prompt: Some("Explain photosynthesis briefly.".into()),
        finish_reasons: vec!["stop".into()],
        ..ExchangeRecord::default()
    }
}

fn bench_checks(c: &mut Criterion) {
    let cfg = CheckConfig::default();

    let short = record(ANSWER_256.to_string());
    let mut g = c.benchmark_group("run_checks");
    g.throughput(Throughput::Bytes(short.response.len() as u64));
    g.bench_function("answer_256_tokens", |b| {
        b.iter(|| run_checks(black_box(&short), black_box(&cfg)))
    });
    g.finish();

    let mut g = c.benchmark_group("check_256_tokens");
    let text = ANSWER_256;
    g.bench_function("refusal", |b| b.iter(|| refusal(black_box(text))));
    g.bench_function("repetition", |b| b.iter(|| repetition(black_box(text))));
    g.bench_function("garbled", |b| b.iter(|| garbled(black_box(text), None)));
    g.bench_function("error_text", |b| {
        b.iter(|| error_text(black_box(text), None))
    });
    g.bench_function("lexical_profile", |b| b.iter(|| profile(black_box(text))));
    g.finish();

    let huge = record(prose(10 * 1024 * 1024));
    let blank = record(" \n".repeat(5 * 1024 * 1024));
    let mut g = c.benchmark_group("run_checks_10mb");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(huge.response.len() as u64));
    g.bench_function("prose", |b| {
        b.iter(|| run_checks(black_box(&huge), black_box(&cfg)))
    });
    g.bench_function("whitespace_only", |b| {
        b.iter(|| run_checks(black_box(&blank), black_box(&cfg)))
    });
    g.bench_function("lexical_profile_prose", |b| {
        b.iter(|| profile(black_box(&huge.response)))
    });
    g.finish();
}

criterion_group!(benches, bench_checks);
criterion_main!(benches);
