//! Cost of recording one value through the public hot-path API, from one thread and from two
//! threads recording into the same series at once, and of `Metrics::record_exchange`.
//!
//! The concurrent benches time each thread from a shared start barrier and report the slowest
//! thread's time per value: with no shared lock it should match the single-thread figure.
//! `shared_mutex_baseline` is the naive design (one `Mutex<Histogram>`) for contrast, and
//! `unshared_baseline` (each thread its own plain HdrHistogram) is the machine's control: on a
//! busy machine the two threads time-slice instead of running in parallel, every 2-thread
//! figure doubles including this one, and the shared mutex looks cheap because it is never
//! contended. Read the 2-thread figures against the control.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use parking_lot::Mutex;
use semtap::metrics::{Histogram, HistogramSpec, Metrics, MetricsOptions};
use semtap::record::{Api, ExchangeRecord, Provider, RateLimit, Usage};

/// Durations spread over the spec's buckets, so recording is not one hot counter.
const VALUES: [f64; 16] = [
    0.003, 0.012, 0.025, 0.051, 0.09, 0.17, 0.33, 0.7, 1.3, 2.7, 5.5, 11.0, 0.045, 0.21, 0.8, 3.9,
];

/// Runs `threads` threads that each call `f(i)` for `i in 0..iters` after a common barrier;
/// returns the slowest thread's elapsed time.
fn concurrent(threads: usize, iters: u64, f: &(impl Fn(u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        f(i + t as u64);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .max()
            .unwrap_or_default()
    })
}

fn histogram_record(c: &mut Criterion) {
    let mut g = c.benchmark_group("histogram_record");

    let h = Histogram::new(HistogramSpec::SECONDS);
    let mut i = 0usize;
    g.bench_function("1_thread", |b| {
        b.iter(|| {
            i = (i + 1) & 15;
            h.record(black_box(VALUES[i]));
        })
    });

    for threads in [1, 2] {
        let h = Histogram::new(HistogramSpec::SECONDS);
        let record = |i: u64| h.record(black_box(VALUES[(i & 15) as usize]));
        g.bench_function(format!("{threads}_threads_concurrent"), |b| {
            b.iter_custom(|iters| concurrent(threads, iters, &record))
        });
    }

    // Machine check: each thread records into its own plain HdrHistogram (no Arc, no lock).
    // If this slows down at 2 threads too, the CPUs are busy, not the design.
    for threads in [1, 2] {
        let record = |i: u64| {
            thread_local! {
                static OWN: std::cell::RefCell<Option<hdrhistogram::Histogram<u64>>> =
                    std::cell::RefCell::new(hdrhistogram::Histogram::new(2).ok());
            }
            OWN.with(|h| {
                if let Some(h) = h.borrow_mut().as_mut() {
                    let _ = h.record((black_box(VALUES[(i & 15) as usize]) * 1e6) as u64);
                }
            });
        };
        g.bench_function(format!("unshared_baseline_{threads}_threads"), |b| {
            b.iter_custom(|iters| concurrent(threads, iters, &record))
        });
    }

    let shared = Mutex::new(hdrhistogram::Histogram::<u64>::new(2).unwrap_or_else(|_| {
        unreachable!("2 significant digits is a valid histogram configuration")
    }));
    let record = |i: u64| {
        let _ = shared
            .lock()
            .record((black_box(VALUES[(i & 15) as usize]) * 1e6) as u64);
    };
    g.bench_function("shared_mutex_baseline_2_threads", |b| {
        b.iter_custom(|iters| concurrent(2, iters, &record))
    });
    g.finish();
}

fn streamed_record(model: &str) -> ExchangeRecord {
    ExchangeRecord {
        id: "rec-1".into(),
        listener: "main".into(),
        provider: Provider::OpenAi,
        api: Api::ChatCompletions,
        operation: "chat".into(),
        request_model: Some(model.into()),
        response_model: Some(format!("{model}-2024-08-06")),
        stream: true,
        status: 200,
        usage: Usage {
            input_tokens: Some(812),
            output_tokens: Some(236),
            ..Usage::default()
        },
        duration_ms: 4200.0,
        time_to_first_chunk_ms: Some(310.0),
        ttft_ms: Some(340.0),
        chunk_gaps_ms: (0..50).map(|i| 10.0 + (i % 7) as f32).collect(),
        overhead_ms: 0.04,
        rate_limit: Some(RateLimit {
            remaining_requests: Some(4999),
            remaining_tokens: Some(1_999_000),
        }),
        ..ExchangeRecord::default()
    }
}

fn record_exchange(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_exchange");
    let m = Metrics::new(MetricsOptions::default());
    let rec = streamed_record("gpt-4o");
    g.bench_function("1_thread_50_chunks", |b| {
        b.iter(|| m.record_exchange(black_box(&rec)))
    });
    let recs = [streamed_record("gpt-4o"), streamed_record("gpt-4o-mini")];
    let record = |i: u64| m.record_exchange(black_box(&recs[(i & 1) as usize]));
    g.bench_function("2_threads_concurrent_50_chunks", |b| {
        b.iter_custom(|iters| concurrent(2, iters, &record))
    });
    g.finish();
}

criterion_group!(benches, histogram_record, record_exchange);
criterion_main!(benches);
