//! Transformer tier throughput: texts of exactly 16, 64 and 256 tokens (as the model sees
//! them, [CLS]/[SEP] included) in batches of 1, 8 and 32, on the real all-MiniLM-L6-v2.
//! Criterion's element throughput is embeddings per second. Without the model (install it
//! with models/pull.sh) the bench prints why and measures nothing.
//!
//! `SEMTAP_BENCH_DEVICE` (auto, cpu, cuda:N, metal) picks the device; default auto.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use semtap::semantic::model::{resolve, DEFAULT_MODEL};
use semtap::semantic::transformer::{DeviceChoice, TransformerEmbedder, DEFAULT_MAX_TOKENS};

const WORDS: &[&str] = &[
    "the", "model", "returned", "a", "short", "answer", "about", "river", "water", "and", "people",
    "who", "live", "near", "large", "cities", "in", "the", "north", "during", "winter", "time",
    "when", "light", "is", "low", "but", "work", "goes", "on", "as", "usual", "for", "most", "of",
    "them", "with", "some", "help", "from", "friends", "family", "or", "new", "tools", "that",
    "make", "life", "easier",
];

/// `n` texts of exactly `tokens` tokens each, built from common words and varied per text.
fn texts_of(emb: &TransformerEmbedder, tokens: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|k| {
            let mut words: Vec<&str> = Vec::new();
            let mut i = k * 7;
            let mut text = String::new();
            loop {
                let have = emb.token_count(&text).unwrap_or(usize::MAX);
                if have == tokens {
                    return text;
                }
                if have > tokens {
                    words.pop();
                    text = words.join(" ");
                    // A single-token filler closes any gap left by a multi-token word.
                    while emb.token_count(&text).unwrap_or(usize::MAX) < tokens {
                        words.push("a");
                        text = words.join(" ");
                    }
                    return text;
                }
                words.push(WORDS[i % WORDS.len()]);
                i += 1;
                text = words.join(" ");
            }
        })
        .collect()
}

fn bench_embed(c: &mut Criterion) {
    let files = match resolve(DEFAULT_MODEL, None) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("embed bench skipped: {e}");
            return;
        }
    };
    let device = std::env::var("SEMTAP_BENCH_DEVICE")
        .ok()
        .and_then(|d| DeviceChoice::parse(&d).ok())
        .unwrap_or(DeviceChoice::Auto);
    let emb = match TransformerEmbedder::load(&files, device, DEFAULT_MAX_TOKENS) {
        Ok(e) => e.with_max_batch(32),
        Err(e) => {
            eprintln!("embed bench skipped: cannot load the model: {e}");
            return;
        }
    };
    eprintln!(
        "embed bench: {} on {}",
        files.dir.display(),
        emb.device_name()
    );
    for tokens in [16usize, 64, 256] {
        let mut group = c.benchmark_group(format!("transformer/{tokens}tok"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for batch in [1usize, 8, 32] {
            let texts = texts_of(&emb, tokens, batch);
            for t in &texts {
                assert_eq!(emb.token_count(t).ok(), Some(tokens), "{t}");
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("batch", batch), &refs, |b, refs| {
                b.iter(|| emb.embed(refs).map(|v| v.len()).unwrap_or(0))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_embed);
criterion_main!(benches);
