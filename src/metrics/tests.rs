use std::collections::{HashMap, HashSet};

use super::*;
use crate::record::{Api, Provider, RateLimit, ToolCall, TraceParent, Usage};

fn metrics() -> Metrics {
    Metrics::new(MetricsOptions::default())
}

fn latest_metrics() -> Metrics {
    Metrics::new(MetricsOptions {
        latest_semconv: true,
        ..MetricsOptions::default()
    })
}

/// A streamed chat exchange whose ids and text must never reach metric output.
fn streamed_chat() -> ExchangeRecord {
    ExchangeRecord {
        id: "rec-7f3a-SECRETID".into(),
        ts_ms: 1_700_000_000_000,
        listener: "main".into(),
        provider: Provider::OpenAi,
        api: Api::ChatCompletions,
        operation: "chat".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        request_model: Some("gpt-4o".into()),
        response_model: Some("gpt-4o-2024-08-06".into()),
        response_id: Some("chatcmpl-SECRETRESP".into()),
        stream: true,
        status: 200,
        prompt: Some("PROMPT-TEXT-do-not-leak".into()),
        response: "ANSWER-TEXT-do-not-leak".into(),
        tool_calls: vec![ToolCall {
            id: Some("call_SECRETTOOL".into()),
            name: "lookup_SECRETTOOLNAME".into(),
            arguments: "{\"city\":\"SECRET-CITY\"}".into(),
        }],
        finish_reasons: vec!["stop".into()],
        usage: Usage {
            input_tokens: Some(12),
            output_tokens: Some(40),
            cached_input_tokens: Some(4),
            reasoning_tokens: Some(7),
            estimated: false,
        },
        duration_ms: 1500.0,
        time_to_first_chunk_ms: Some(300.0),
        ttft_ms: Some(350.0),
        time_per_output_chunk_ms: Some(25.0),
        chunk_gaps_ms: vec![20.0, 30.0, 25.0],
        overhead_ms: 0.05,
        rate_limit: Some(RateLimit {
            remaining_requests: Some(99),
            remaining_tokens: Some(12345),
        }),
        traceparent: Some(TraceParent {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span_id: "00f067aa0ba902b7".into(),
            sampled: true,
        }),
        ..ExchangeRecord::default()
    }
}

fn labels_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// The value of the series of `name` whose label set is exactly `labels`.
fn series<'a>(
    snap: &'a [MetricFamilySnapshot],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a SeriesValue> {
    let want = labels_of(labels);
    let fam = snap.iter().find(|f| f.name == name)?;
    fam.series
        .iter()
        .find(|s| {
            let mut have = s.labels.clone();
            have.sort();
            have == want
        })
        .map(|s| &s.value)
}

fn hist_point<'a>(
    snap: &'a [MetricFamilySnapshot],
    name: &str,
    labels: &[(&str, &str)],
) -> &'a HistogramPoint {
    match series(snap, name, labels) {
        Some(SeriesValue::Histogram(p)) => p,
        other => panic!("{name} {labels:?}: expected a histogram, got {other:?}"),
    }
}

fn counter_value(snap: &[MetricFamilySnapshot], name: &str, labels: &[(&str, &str)]) -> u64 {
    match series(snap, name, labels) {
        Some(SeriesValue::Counter(v)) => *v,
        other => panic!("{name} {labels:?}: expected a counter, got {other:?}"),
    }
}

const CHAT_LABELS: [(&str, &str); 5] = [
    ("listener", "main"),
    ("gen_ai.operation.name", "chat"),
    ("gen_ai.provider.name", "openai"),
    ("gen_ai.request.model", "gpt-4o"),
    ("gen_ai.response.model", "gpt-4o-2024-08-06"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    CHAT_LABELS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Histogram core
// ---------------------------------------------------------------------------------------------

#[test]
fn values_recorded_from_two_threads_merge_exactly() {
    let h = Histogram::new(HistogramSpec::SECONDS);
    let n = 10_000u64;
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let h = h.clone();
            s.spawn(move || {
                for i in 0..n {
                    // Distinct values per thread: 1 ms .. 10 s.
                    h.record(((i % 1000) + 1 + t * 1000) as f64 / 1000.0);
                }
            });
        }
    });
    let snap = h.snapshot();
    assert_eq!(snap.count(), 2 * n);
    let expected: f64 = (0..2u64)
        .flat_map(|t| (0..n).map(move |i| ((i % 1000) + 1 + t * 1000) as f64 / 1000.0))
        .sum();
    assert!(
        (snap.sum() - expected).abs() < 1e-6 * expected,
        "{} vs {expected}",
        snap.sum()
    );
    assert_eq!(snap.min(), Some(0.001));
    assert_eq!(snap.max(), Some(2.0));
    assert_eq!(snap.cumulative_count_le(f64::INFINITY), 2 * n);
}

#[test]
fn bucket_counts_are_exact_at_boundaries() {
    let h = Histogram::new(HistogramSpec::SECONDS);
    // On the boundary, between boundaries, and beyond the last one.
    for v in [0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 81.92, 100.0] {
        h.record(v);
    }
    let snap = h.snapshot();
    let cum = snap.cumulative_counts(DURATION_BUCKETS);
    assert_eq!(cum.len(), DURATION_BUCKETS.len());
    let at = |b: f64| cum[DURATION_BUCKETS.iter().position(|&x| x == b).unwrap()];
    assert_eq!(at(0.01), 1);
    assert_eq!(at(0.02), 3);
    assert_eq!(at(0.04), 5);
    assert_eq!(at(0.08), 6);
    assert_eq!(at(40.96), 6);
    assert_eq!(at(81.92), 7);
    assert_eq!(snap.count(), 8);
    assert_eq!(snap.cumulative_count_le(0.0099), 0);
    assert_eq!(snap.cumulative_count_le(0.01), 1);
    // Sum is exact, not quantised.
    assert!((snap.sum() - 182.085).abs() < 1e-9, "{}", snap.sum());
}

#[test]
fn token_buckets_count_values_on_and_apart_from_boundaries_exactly() {
    let h = Histogram::new(HistogramSpec::COUNT);
    // Up to 255 every integer is its own step; 1024 shares a step with 1025..=1031 (documented
    // ~0.8% resolution), so the value above it is taken clear of that step.
    for v in [1.0, 4.0, 5.0, 16.0, 17.0, 1024.0, 1040.0] {
        h.record(v);
    }
    let cum = h.snapshot().cumulative_counts(TOKEN_BUCKETS);
    assert_eq!(&cum[..6], &[1, 2, 4, 5, 5, 6]);
    assert_eq!(cum[6], 7);
}

#[test]
fn quantiles_are_close_and_within_min_max() {
    let h = Histogram::new(HistogramSpec::SECONDS);
    for i in 1..=1000 {
        h.record(i as f64 / 1000.0);
    }
    let snap = h.snapshot();
    let p50 = snap.quantile(0.5).unwrap();
    let p99 = snap.quantile(0.99).unwrap();
    assert!((p50 - 0.5).abs() / 0.5 < 0.01, "p50 {p50}");
    assert!((p99 - 0.99).abs() / 0.99 < 0.01, "p99 {p99}");
    assert_eq!(snap.quantile(1.0), Some(1.0));
    assert_eq!(snap.quantile(0.0), Some(0.001));
    assert_eq!(
        Histogram::new(HistogramSpec::SECONDS)
            .snapshot()
            .quantile(0.5),
        None
    );
}

#[test]
fn out_of_range_values_are_clamped_and_nan_ignored() {
    let h = Histogram::new(HistogramSpec::SECONDS);
    h.record(-3.0);
    h.record(f64::NAN);
    h.record(f64::INFINITY);
    h.record(1e12);
    let snap = h.snapshot();
    assert_eq!(snap.count(), 3);
    assert_eq!(snap.min(), Some(0.0));
    assert_eq!(snap.max(), Some(HistogramSpec::SECONDS.max_value()));
    assert_eq!(snap.cumulative_count_le(0.0), 1);
}

#[test]
fn values_survive_thread_exit_and_exited_slots_are_reused() {
    let h = Histogram::new(HistogramSpec::COUNT);
    for _ in 0..20 {
        let h = h.clone();
        std::thread::spawn(move || h.record(3.0)).join().unwrap();
    }
    assert_eq!(h.snapshot().count(), 20);
    // Twenty sequential threads must not leave twenty slots behind (other tests run in
    // parallel and hold a few, hence the slack).
    assert!(hist::slot_count() < 20, "slots: {}", hist::slot_count());
}

#[test]
fn a_reused_series_id_starts_empty() {
    for _ in 0..50 {
        let a = Histogram::new(HistogramSpec::COUNT);
        a.record(1.0);
        drop(a);
        let b = Histogram::new(HistogramSpec::COUNT);
        assert_eq!(b.snapshot().count(), 0);
    }
}

#[test]
fn record_all_equals_many_records() {
    let a = Histogram::new(HistogramSpec::SECONDS);
    let b = Histogram::new(HistogramSpec::SECONDS);
    let vals = [0.02, 0.5, 3.0, f64::NAN, -1.0];
    a.record_all(vals);
    for v in vals {
        b.record(v);
    }
    let (a, b) = (a.snapshot(), b.snapshot());
    assert_eq!(a.count(), 4);
    assert_eq!(a.count(), b.count());
    assert_eq!(a.sum(), b.sum());
    assert_eq!(
        a.cumulative_counts(DURATION_BUCKETS),
        b.cumulative_counts(DURATION_BUCKETS)
    );
}

#[test]
fn handles_and_registry_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Metrics>();
    send_sync::<Histogram>();
    send_sync::<Counter>();
    send_sync::<Gauge>();
}

#[test]
fn counters_and_gauges_count() {
    let c = Counter::new();
    c.inc();
    c.add(4);
    assert_eq!(c.clone().get(), 5);
    let g = Gauge::new();
    g.inc();
    g.inc();
    g.dec();
    g.add(0.5);
    assert_eq!(g.get(), 1.5);
    g.set(-2.0);
    assert_eq!(g.get(), -2.0);
}

#[test]
fn histogram_point_bucket_counts_are_per_bucket() {
    let p = HistogramPoint {
        count: 10,
        sum: 0.0,
        min: 0.0,
        max: 0.0,
        boundaries: vec![1.0, 2.0, 3.0],
        cumulative_counts: vec![2, 2, 7],
        values: Vec::new(),
    };
    assert_eq!(p.bucket_counts(), vec![2, 0, 5, 3]);
}

// ---------------------------------------------------------------------------------------------
// Metrics from records
// ---------------------------------------------------------------------------------------------

#[test]
fn exchange_record_shows_up_under_expected_names_and_labels() {
    let m = metrics();
    m.record_exchange(&streamed_chat());
    let snap = m.snapshot();

    let d = hist_point(&snap, "gen_ai.client.operation.duration", &CHAT_LABELS);
    assert_eq!(d.count, 1);
    assert!((d.sum - 1.5).abs() < 1e-12);
    assert_eq!(d.boundaries, DURATION_BUCKETS);

    let input = hist_point(
        &snap,
        "gen_ai.client.token.usage",
        &with(&[("gen_ai.token.type", "input")]),
    );
    assert_eq!((input.count, input.sum), (1, 12.0));
    let output = hist_point(
        &snap,
        "gen_ai.client.token.usage",
        &with(&[("gen_ai.token.type", "output")]),
    );
    assert_eq!((output.count, output.sum), (1, 40.0));
    assert_eq!(output.boundaries, TOKEN_BUCKETS);

    let ttfc = hist_point(
        &snap,
        "gen_ai.client.operation.time_to_first_chunk",
        &CHAT_LABELS,
    );
    assert!((ttfc.sum - 0.3).abs() < 1e-12);
    let tpoc = hist_point(
        &snap,
        "gen_ai.client.operation.time_per_output_chunk",
        &CHAT_LABELS,
    );
    assert_eq!(tpoc.count, 3);
    assert!((tpoc.sum - 0.075).abs() < 1e-9);
    let ttft = hist_point(&snap, "semtap.time_to_first_token", &CHAT_LABELS);
    assert!((ttft.sum - 0.35).abs() < 1e-12);
    let tps = hist_point(&snap, "semtap.output_tokens_per_second", &CHAT_LABELS);
    assert!((tps.sum - 40.0 / 1.15).abs() < 1e-9, "{}", tps.sum);
    let overhead = hist_point(&snap, "semtap.overhead", &CHAT_LABELS);
    assert!((overhead.sum - 0.00005).abs() < 1e-12);

    assert_eq!(
        counter_value(&snap, "semtap.exchanges", &with(&[("status_class", "2xx")])),
        1
    );
    assert_eq!(
        counter_value(&snap, "semtap.parse_anomalies", &CHAT_LABELS),
        0
    );

    let rl = [
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o"),
    ];
    assert_eq!(
        series(&snap, "semtap.rate_limit.remaining_requests", &rl),
        Some(&SeriesValue::Gauge(99.0))
    );
    assert_eq!(
        series(&snap, "semtap.rate_limit.remaining_tokens", &rl),
        Some(&SeriesValue::Gauge(12345.0))
    );

    let text = m.render_prometheus();
    for expected in [
        "# TYPE gen_ai_client_operation_duration_seconds histogram",
        "# TYPE gen_ai_client_token_usage histogram",
        "# TYPE gen_ai_client_operation_time_to_first_chunk_seconds histogram",
        "# TYPE gen_ai_client_operation_time_per_output_chunk_seconds histogram",
        "# TYPE semtap_time_to_first_token_seconds histogram",
        "# TYPE semtap_output_tokens_per_second histogram",
        "# TYPE semtap_overhead_seconds histogram",
        "# TYPE semtap_exchanges_total counter",
        "# TYPE semtap_rate_limit_remaining_requests gauge",
        "gen_ai_client_operation_duration_seconds_bucket{listener=\"main\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o\",gen_ai_response_model=\"gpt-4o-2024-08-06\",le=\"2.56\"} 1",
        "gen_ai_client_operation_duration_seconds_bucket{listener=\"main\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o\",gen_ai_response_model=\"gpt-4o-2024-08-06\",le=\"1.28\"} 0",
        "gen_ai_client_token_usage_sum{listener=\"main\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o\",gen_ai_response_model=\"gpt-4o-2024-08-06\",gen_ai_token_type=\"output\"} 40",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    check_exposition(&text).unwrap();
}

#[test]
fn failed_exchange_carries_error_type_and_status_class() {
    let m = metrics();
    let mut rec = streamed_chat();
    rec.status = 429;
    rec.error_type = Some("rate_limit_exceeded".into());
    rec.stream = false;
    m.record_exchange(&rec);
    // No status text either: the status alone becomes error.type.
    let mut rec2 = streamed_chat();
    rec2.status = 503;
    rec2.stream = false;
    m.record_exchange(&rec2);
    // Transport failure: the outcome name.
    let mut rec3 = streamed_chat();
    rec3.status = 0;
    rec3.outcome = Outcome::UpstreamTimeout;
    m.record_exchange(&rec3);

    let snap = m.snapshot();
    let err = |e| with(&[("error.type", e)]);
    assert_eq!(
        hist_point(
            &snap,
            "gen_ai.client.operation.duration",
            &err("rate_limit_exceeded")
        )
        .count,
        1
    );
    assert_eq!(
        hist_point(&snap, "gen_ai.client.operation.duration", &err("503")).count,
        1
    );
    assert_eq!(
        hist_point(&snap, "gen_ai.client.operation.duration", &err("timeout")).count,
        1
    );
    let ex = |class, e| with(&[("status_class", class), ("error.type", e)]);
    assert_eq!(
        counter_value(&snap, "semtap.exchanges", &ex("4xx", "rate_limit_exceeded")),
        1
    );
    assert_eq!(
        counter_value(&snap, "semtap.exchanges", &ex("5xx", "503")),
        1
    );
    assert_eq!(
        counter_value(&snap, "semtap.exchanges", &ex("none", "timeout")),
        1
    );
}

#[test]
fn chunk_metrics_are_recorded_for_streams_only() {
    let m = metrics();
    let mut rec = streamed_chat();
    rec.stream = false;
    m.record_exchange(&rec);
    let snap = m.snapshot();
    assert!(series(
        &snap,
        "gen_ai.client.operation.time_to_first_chunk",
        &CHAT_LABELS
    )
    .is_none());
    assert!(series(
        &snap,
        "gen_ai.client.operation.time_per_output_chunk",
        &CHAT_LABELS
    )
    .is_none());
    // Non-streamed: tokens over the whole duration.
    let tps = hist_point(&snap, "semtap.output_tokens_per_second", &CHAT_LABELS);
    assert!((tps.sum - 40.0 / 1.5).abs() < 1e-9);
}

#[test]
fn anomaly_truncation_and_estimation_are_counted() {
    let m = metrics();
    let mut rec = streamed_chat();
    rec.parse_anomaly = Some("unexpected json: SECRET-BODY".into());
    rec.capture_truncated = true;
    rec.usage.estimated = true;
    m.record_exchange(&rec);
    m.record_exchange(&rec);
    let snap = m.snapshot();
    assert_eq!(
        counter_value(&snap, "semtap.parse_anomalies", &CHAT_LABELS),
        2
    );
    assert_eq!(
        counter_value(&snap, "semtap.capture_truncated", &CHAT_LABELS),
        2
    );
    assert_eq!(
        counter_value(&snap, "semtap.usage_estimated", &CHAT_LABELS),
        2
    );
    assert!(!m.render_prometheus().contains("SECRET-BODY"));
}

#[test]
fn model_labels_beyond_the_cap_become_other() {
    let m = Metrics::new(MetricsOptions {
        max_models: 2,
        latest_semconv: false,
    });
    for model in ["m1", "m2", "m3", "m4", "m1"] {
        let mut rec = streamed_chat();
        rec.request_model = Some(model.into());
        rec.response_model = None;
        m.record_exchange(&rec);
    }
    let snap = m.snapshot();
    let fam = snap
        .iter()
        .find(|f| f.name == "gen_ai.client.operation.duration")
        .unwrap();
    let mut models: Vec<(String, u64)> = fam
        .series
        .iter()
        .map(|s| {
            let model = s
                .labels
                .iter()
                .find(|(k, _)| k == "gen_ai.request.model")
                .map(|(_, v)| v.clone())
                .unwrap();
            let SeriesValue::Histogram(p) = &s.value else {
                panic!()
            };
            (model, p.count)
        })
        .collect();
    models.sort();
    assert_eq!(
        models,
        vec![("m1".into(), 2), ("m2".into(), 1), ("other".into(), 2)]
    );
    // Every capped lookup of m3/m4 counts (one per record and label cache miss).
    let overflow = counter_value(
        &snap,
        "semtap.label_overflow",
        &[("label", "gen_ai.request.model")],
    );
    assert!(overflow >= 2, "{overflow}");
    assert!(m
        .render_prometheus()
        .contains("semtap_label_overflow_total{label=\"gen_ai.request.model\"}"));
}

#[test]
fn request_counts_are_capped_per_label_too() {
    let m = metrics();
    for i in 0..100 {
        m.record_request(&format!("listener-{i}"), "openai", "chat", 200, "complete");
    }
    let snap = m.snapshot();
    let fam = snap.iter().find(|f| f.name == "semtap.requests").unwrap();
    assert!(fam.series.len() <= 65, "{}", fam.series.len());
    let total: u64 = fam
        .series
        .iter()
        .map(|s| match s.value {
            SeriesValue::Counter(v) => v,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 100);
}

#[test]
fn over_long_label_values_are_not_kept() {
    let m = metrics();
    let mut rec = streamed_chat();
    let long = "x".repeat(500);
    rec.request_model = Some(long.clone());
    m.record_exchange(&rec);
    let text = m.render_prometheus();
    assert!(!text.contains(&long));
    assert!(text.contains("gen_ai_request_model=\"other\""));
}

#[test]
fn latest_semconv_renames_genai_metrics() {
    let m = latest_metrics();
    m.record_exchange(&streamed_chat());
    let mut emb = streamed_chat();
    emb.api = Api::Embeddings;
    emb.operation = "embeddings".into();
    emb.stream = false;
    m.record_exchange(&emb);
    let snap = m.snapshot();
    let names: HashSet<&str> = snap.iter().map(|f| f.name.as_str()).collect();
    for present in [
        "gen_ai.client.inference.duration",
        "gen_ai.client.inference.time_to_first_chunk",
        "gen_ai.client.inference.time_per_output_chunk",
        "gen_ai.client.inference.operation.input_tokens",
        "gen_ai.client.inference.operation.output_tokens",
        "gen_ai.client.inference.usage.input_tokens",
        "gen_ai.client.inference.usage.output_tokens",
        "gen_ai.client.inference.usage.cache_read.input_tokens",
        "gen_ai.client.inference.usage.reasoning.output_tokens",
        // Embeddings are not inference: they keep the operation duration.
        "gen_ai.client.operation.duration",
    ] {
        assert!(names.contains(present), "missing {present}: {names:?}");
    }
    for absent in [
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.time_to_first_chunk",
        "gen_ai.client.operation.time_per_output_chunk",
    ] {
        assert!(!names.contains(absent), "unexpected {absent}");
    }
    let d = hist_point(&snap, "gen_ai.client.inference.duration", &CHAT_LABELS);
    assert_eq!(d.count, 1);
    let emb_labels = [
        ("listener", "main"),
        ("gen_ai.operation.name", "embeddings"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o"),
        ("gen_ai.response.model", "gpt-4o-2024-08-06"),
    ];
    assert_eq!(
        hist_point(&snap, "gen_ai.client.operation.duration", &emb_labels).count,
        1
    );
    let modality = with(&[("gen_ai.token.modality", "unknown")]);
    assert_eq!(
        counter_value(
            &snap,
            "gen_ai.client.inference.usage.input_tokens",
            &modality
        ),
        12
    );
    assert_eq!(
        counter_value(
            &snap,
            "gen_ai.client.inference.usage.output_tokens",
            &modality
        ),
        40
    );
    assert_eq!(
        counter_value(
            &snap,
            "gen_ai.client.inference.usage.cache_read.input_tokens",
            &modality
        ),
        4
    );
    assert_eq!(
        counter_value(
            &snap,
            "gen_ai.client.inference.usage.reasoning.output_tokens",
            &modality
        ),
        7
    );
    let text = m.render_prometheus();
    assert!(text.contains("# TYPE gen_ai_client_inference_duration_seconds histogram"));
    assert!(text.contains("# TYPE gen_ai_client_inference_usage_input_tokens_total counter"));
    assert!(text.contains("# TYPE gen_ai_client_inference_operation_output_tokens histogram"));
    check_exposition(&text).unwrap();
}

#[test]
fn semconv_opt_in_is_read_from_a_comma_separated_list() {
    assert!(!wants_latest_semconv(None));
    assert!(!wants_latest_semconv(Some("")));
    assert!(!wants_latest_semconv(Some("http")));
    assert!(wants_latest_semconv(Some("gen_ai_latest_experimental")));
    assert!(wants_latest_semconv(Some(
        "http/dup, gen_ai_latest_experimental"
    )));
    assert!(!wants_latest_semconv(Some("gen_ai_latest_experimental_x")));
}

#[test]
fn ids_and_content_never_appear_in_output() {
    let m = metrics();
    let rec = streamed_chat();
    m.record_exchange(&rec);
    let latest = latest_metrics();
    latest.record_exchange(&rec);
    let outputs = [
        m.render_prometheus(),
        format!("{:?}", m.snapshot()),
        serde_json::to_string(&m.summary()).unwrap(),
        latest.render_prometheus(),
    ];
    let trace = rec.traceparent.as_ref().unwrap();
    let secrets = [
        rec.id.as_str(),
        rec.response_id.as_deref().unwrap(),
        rec.prompt.as_deref().unwrap(),
        rec.response.as_str(),
        rec.tool_calls[0].id.as_deref().unwrap(),
        rec.tool_calls[0].name.as_str(),
        "SECRET-CITY",
        trace.trace_id.as_str(),
        trace.parent_span_id.as_str(),
        "SECRET",
    ];
    for out in &outputs {
        for s in secrets {
            assert!(!out.contains(s), "{s:?} leaked into output");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plain traffic, named metrics, summary
// ---------------------------------------------------------------------------------------------

#[test]
fn plain_requests_are_counted_by_status_class_and_outcome() {
    let m = metrics();
    m.record_request("main", "unknown", "http", 200, "complete");
    m.record_request("main", "unknown", "http", 204, "complete");
    m.record_request("main", "unknown", "http", 0, "upstream_unreachable");
    m.observe_plain_duration("main", 0.02);
    m.observe_plain_duration("main", 0.2);
    let snap = m.snapshot();
    let l = |class, outcome| {
        [
            ("listener", "main"),
            ("gen_ai.provider.name", "unknown"),
            ("gen_ai.operation.name", "http"),
            ("status_class", class),
            ("outcome", outcome),
        ]
    };
    assert_eq!(
        counter_value(&snap, "semtap.requests", &l("2xx", "complete")),
        2
    );
    assert_eq!(
        counter_value(&snap, "semtap.requests", &l("none", "upstream_unreachable")),
        1
    );
    let p = hist_point(&snap, "semtap.request.duration", &[("listener", "main")]);
    assert_eq!(p.count, 2);
    assert_eq!(p.boundaries, REQUEST_DURATION_BUCKETS);
    let text = m.render_prometheus();
    assert!(text.contains("semtap_requests_total{listener=\"main\",gen_ai_provider_name=\"unknown\",gen_ai_operation_name=\"http\",status_class=\"2xx\",outcome=\"complete\"} 2"));
    assert!(text.contains("semtap_request_duration_seconds_count{listener=\"main\"} 2"));
}

#[test]
fn named_handles_share_one_series_and_use_known_descriptors() {
    let m = metrics();
    let a = m.counter("semtap.records_dropped", &[("reason", "queue_full")]);
    let b = m.counter("semtap.records_dropped", &[("reason", "queue_full")]);
    a.inc();
    b.add(2);
    m.counter("semtap.records_dropped", &[("reason", "shutdown")])
        .inc();
    m.gauge("semtap.analysis.queue_depth", &[]).set(7.0);
    m.counter("semtap.captured", &[]).add(1024);
    let in_flight = m.gauge("semtap.requests.in_flight", &[("listener", "main")]);
    in_flight.inc();
    m.counter("semtap.brand_new", &[("k", "v")]).inc();
    // A name already used for a counter cannot become a gauge; the handle is detached.
    m.gauge("semtap.records_dropped", &[]).set(1.0);

    let snap = m.snapshot();
    assert_eq!(
        counter_value(&snap, "semtap.records_dropped", &[("reason", "queue_full")]),
        3
    );
    assert_eq!(
        counter_value(&snap, "semtap.records_dropped", &[("reason", "shutdown")]),
        1
    );
    let text = m.render_prometheus();
    for expected in [
        "# HELP semtap_records_dropped_total Exchange records dropped before analysis, by reason.",
        "semtap_records_dropped_total{reason=\"queue_full\"} 3",
        "# TYPE semtap_analysis_queue_depth gauge",
        "semtap_analysis_queue_depth 7",
        "semtap_captured_bytes_total 1024",
        "semtap_requests_in_flight{listener=\"main\"} 1",
        "# HELP semtap_brand_new_total semtap.brand_new",
        "semtap_brand_new_total{k=\"v\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    check_exposition(&text).unwrap();
}

#[test]
fn summary_reports_requests_and_percentiles_per_listener() {
    let m = metrics();
    for i in 1..=100 {
        let mut rec = streamed_chat();
        rec.duration_ms = i as f64 * 10.0;
        rec.ttft_ms = Some(i as f64);
        m.record_exchange(&rec);
        m.record_request("main", "openai", "chat", 200, "complete");
    }
    let mut other = streamed_chat();
    other.listener = "side".into();
    other.response_model = Some("another".into());
    m.record_exchange(&other);
    m.record_request("side", "unknown", "http", 404, "complete");

    let s = m.summary();
    assert_eq!(s.len(), 2);
    let main = &s[0];
    assert_eq!(main.listener, "main");
    assert_eq!((main.requests, main.exchanges), (100, 100));
    let p50 = main.duration_p50_s.unwrap();
    let p99 = main.duration_p99_s.unwrap();
    assert!((p50 - 0.5).abs() < 0.01, "{p50}");
    assert!((p99 - 0.99).abs() < 0.015, "{p99}");
    let t50 = main.ttft_p50_s.unwrap();
    assert!((t50 - 0.05).abs() < 0.001, "{t50}");
    let side = &s[1];
    assert_eq!(
        (side.listener.as_str(), side.requests, side.exchanges),
        ("side", 1, 1)
    );
    assert_eq!(side.duration_p50_s, Some(1.5));
}

// ---------------------------------------------------------------------------------------------
// Prometheus format
// ---------------------------------------------------------------------------------------------

#[test]
fn prometheus_names_follow_otel_translation() {
    use MetricKind::*;
    let cases = [
        (
            "gen_ai.client.operation.duration",
            "s",
            Histogram,
            "gen_ai_client_operation_duration_seconds",
        ),
        (
            "gen_ai.client.token.usage",
            "{token}",
            Histogram,
            "gen_ai_client_token_usage",
        ),
        (
            "semtap.requests",
            "{request}",
            Counter,
            "semtap_requests_total",
        ),
        (
            "semtap.captured",
            "By",
            Counter,
            "semtap_captured_bytes_total",
        ),
        (
            "semtap.output_tokens_per_second",
            "{token}/s",
            Histogram,
            "semtap_output_tokens_per_second",
        ),
        ("x.rate", "By/s", Gauge, "x_rate_bytes_per_second"),
        ("x.ratio", "1", Gauge, "x_ratio"),
        ("already_total", "", Counter, "already_total"),
        ("9lives", "", Gauge, "_9lives"),
        ("a-b c", "ms", Gauge, "a_b_c_milliseconds"),
    ];
    for (name, unit, kind, want) in cases {
        assert_eq!(prometheus_name(name, unit, kind), want, "{name} {unit}");
    }
}

#[test]
fn label_values_are_escaped() {
    let m = metrics();
    m.counter("semtap.upstream_errors", &[("kind", "a\"b\\c\nd")])
        .inc();
    let text = m.render_prometheus();
    assert!(
        text.contains(r#"semtap_upstream_errors_total{kind="a\"b\\c\nd"} 1"#),
        "{text}"
    );
    check_exposition(&text).unwrap();
}

#[test]
fn output_order_is_deterministic() {
    let build = |order: &[&str]| {
        let m = metrics();
        for model in order {
            let mut rec = streamed_chat();
            rec.request_model = Some(model.to_string());
            m.record_exchange(&rec);
        }
        m.record_request("b", "openai", "chat", 200, "complete");
        m.record_request("a", "openai", "chat", 200, "complete");
        m.render_prometheus()
    };
    assert_eq!(build(&["x", "y", "z"]), build(&["z", "x", "y"]));
}

#[test]
fn exposition_checker_rejects_broken_output() {
    assert!(check_exposition("x 1\n").is_err(), "sample before TYPE");
    assert!(
        check_exposition("# TYPE x counter\nx 1\n").is_err(),
        "counter without _total"
    );
    assert!(
        check_exposition("# TYPE x gauge\nx{a=\"1} 1\n").is_err(),
        "unterminated value"
    );
    let bad_hist = "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n";
    assert!(check_exposition(bad_hist).is_err(), "non-monotonic buckets");
    let bad_count =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n";
    assert!(check_exposition(bad_count).is_err(), "+Inf != _count");
    let good = "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n";
    check_exposition(good).unwrap();
}

/// A histogram series inside the checker: family name and labels without `le`.
type SeriesKey = (String, Vec<(String, String)>);

/// A small Prometheus text-format (0.0.4) checker: TYPE precedes a family's samples, every
/// sample is `name{labels} value`, names belong to the current family, histogram buckets are
/// cumulative with ascending `le`, and the `+Inf` bucket equals `_count`.
fn check_exposition(text: &str) -> Result<(), String> {
    let mut typed: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None;
    // (family, labels without le) -> (last le, last count, +Inf count)
    let mut buckets: HashMap<SeriesKey, (f64, f64, Option<f64>)> = HashMap::new();
    let mut counts: Vec<(SeriesKey, f64)> = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("output must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| Err(format!("line {}: {m}: {line:?}", n + 1));
        if line.is_empty() {
            return err("empty line");
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_metric_name(name) {
                return err("bad HELP name");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if !valid_metric_name(name) || it.next().is_some() {
                return err("bad TYPE line");
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                return err("bad type");
            }
            if !typed.insert(name.to_string()) {
                return err("family typed twice");
            }
            current = Some((name.to_string(), ty.to_string()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((fam, ty)) = current.as_ref() else {
            return err("sample before any TYPE");
        };
        let (name, labels, value) = match parse_sample(line) {
            Ok(s) => s,
            Err(e) => return err(&e),
        };
        let value: f64 = match value.as_str() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => match v.parse() {
                Ok(x) => x,
                Err(_) => return err("bad value"),
            },
        };
        match ty.as_str() {
            "counter" => {
                if name != *fam || !name.ends_with("_total") {
                    return err("counter sample must be <family> ending in _total");
                }
                if value < 0.0 || value.is_nan() {
                    return err("counter must be non-negative");
                }
            }
            "gauge" if name != *fam => return err("gauge sample name must equal family"),
            "histogram" => {
                let mut rest: Vec<(String, String)> =
                    labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                rest.sort();
                let key = (fam.clone(), rest);
                if name == format!("{fam}_bucket") {
                    let Some((_, le)) = labels.iter().find(|(k, _)| k == "le") else {
                        return err("bucket without le");
                    };
                    let le: f64 = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        match le.parse() {
                            Ok(x) => x,
                            Err(_) => return err("bad le"),
                        }
                    };
                    let e = buckets.entry(key).or_insert((f64::NEG_INFINITY, 0.0, None));
                    if le <= e.0 {
                        return err("le not ascending");
                    }
                    if value < e.1 {
                        return err("bucket counts not cumulative");
                    }
                    *e = (
                        le,
                        value,
                        if le == f64::INFINITY {
                            Some(value)
                        } else {
                            e.2
                        },
                    );
                } else if name == format!("{fam}_count") {
                    counts.push((key, value));
                } else if name != format!("{fam}_sum") {
                    return err("sample does not belong to histogram family");
                }
            }
            _ => {}
        }
    }
    for (key, count) in &counts {
        match buckets.get(key) {
            Some((_, _, Some(inf))) if inf == count => {}
            other => return Err(format!("{key:?}: _count {count} vs +Inf bucket {other:?}")),
        }
    }
    if counts.len() != buckets.len() {
        return Err("histogram series without _count".into());
    }
    Ok(())
}

fn valid_metric_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

type Sample = (String, Vec<(String, String)>, String);

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            // label name
            let start = match chars.peek() {
                Some(&(_, '}')) => {
                    chars.next();
                    break;
                }
                Some(&(i, _)) => i,
                None => return Err("unterminated labels".into()),
            };
            let mut end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    end = i;
                    break;
                }
            }
            let key = &r[start..end];
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value must be quoted".into());
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err("bad escape".into()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\n' => return Err("raw newline in label value".into()),
                    c => value.push(c),
                }
            }
            if !closed {
                return Err("unterminated label value".into());
            }
            labels.push((key.to_string(), value));
            match chars.next().map(|(_, c)| c) {
                Some(',') => continue,
                Some('}') => break,
                _ => return Err("expected , or }".into()),
            }
        }
        let consumed = chars.peek().map_or(r.len(), |&(i, _)| i);
        rest = &r[consumed..];
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("expected one space before value")?;
    if value.is_empty() || value.contains(' ') {
        return Err("expected exactly a value (no timestamp)".into());
    }
    Ok((name.to_string(), labels, value.to_string()))
}
