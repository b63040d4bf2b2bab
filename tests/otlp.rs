//! OTLP export against a real receiver started by the test: gRPC (tonic with the OTLP
//! services) and HTTP/protobuf (hyper), over loopback. Spans, metrics and logs are decoded and
//! their attributes checked; the collector being down never touches the proxy.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use semtap::export::config::{
    HistogramAggregation, OtlpConfig, Protocol, SignalTarget, Temporality,
};
use semtap::simulate::MockUpstream;
use tokio::sync::oneshot;

use common::*;

const PLANTED_KEY: &str = "sk-proj-PLANTEDkey0123456789abcdefOTLP";

/// Everything a receiver got, decoded, plus the raw bytes (for leak searches).
#[derive(Default)]
struct Got {
    /// The `x-tenant` header of every export request (configured on the exporter).
    tenants: Vec<String>,
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    raw: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Got>>);

impl Receiver {
    fn spans(&self) -> Vec<Span> {
        let g = self.0.lock();
        g.traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
    fn logs(&self) -> Vec<LogRecord> {
        let g = self.0.lock();
        g.logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| s.log_records.clone())
            .collect()
    }
    fn metric_names(&self) -> Vec<String> {
        let g = self.0.lock();
        g.metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| s.metrics.iter().map(|m| m.name.clone()))
            .collect()
    }
    /// The latest collection's data for `name`.
    fn last_metric(&self, name: &str) -> Option<metric::Data> {
        let g = self.0.lock();
        g.metrics
            .iter()
            .rev()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .find(|m| m.name == name)
            .and_then(|m| m.data.clone())
    }
    fn resource_attr(&self, key: &str) -> Option<String> {
        let g = self.0.lock();
        g.traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|r| r.resource.as_ref())
            .find_map(|r| attr_str(&r.attributes, key))
    }
}

impl Receiver {
    /// Keeps one gRPC export: its `x-tenant` metadata, raw bytes, and the decoded request.
    fn keep<T: Message>(&self, req: tonic::Request<T>, into: impl FnOnce(&mut Got, T)) {
        let tenant = req
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let r = req.into_inner();
        let mut g = self.0.lock();
        g.tenants.push(tenant);
        g.raw.extend(r.encode_to_vec());
        into(&mut g, r);
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(req, |g, r| g.traces.push(r));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.keep(req, |g, r| g.metrics.push(r));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.keep(req, |g, r| g.logs.push(r));
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A running receiver; dropping `stop` shuts it down.
struct Collector {
    got: Receiver,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn grpc_collector_on(listener: tokio::net::TcpListener) -> Collector {
    let got = Receiver::default();
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(got.clone()))
        .add_service(MetricsServiceServer::new(got.clone()))
        .add_service(LogsServiceServer::new(got.clone()));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Collector {
        got,
        addr,
        _stop: stop,
    }
}

async fn grpc_collector() -> Collector {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    grpc_collector_on(l).await
}

async fn http_collector() -> Collector {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Receiver::default();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = &mut stopped => return,
            };
            let Ok((stream, _)) = conn else { continue };
            let g = g.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let ct = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            assert_eq!(ct, "application/x-protobuf", "content type for {path}");
                            let mut got = g.0.lock();
                            got.raw.extend_from_slice(&body);
                            let ok = match path.as_str() {
                                "/v1/traces" => ExportTraceServiceRequest::decode(body)
                                    .map(|r| got.traces.push(r))
                                    .is_ok(),
                                "/v1/metrics" => ExportMetricsServiceRequest::decode(body)
                                    .map(|r| got.metrics.push(r))
                                    .is_ok(),
                                "/v1/logs" => ExportLogsServiceRequest::decode(body)
                                    .map(|r| got.logs.push(r))
                                    .is_ok(),
                                _ => false,
                            };
                            let status = if ok { 200 } else { 400 };
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Collector {
        got,
        addr,
        _stop: stop,
    }
}

fn otlp_config(endpoint: &str, protocol: Protocol) -> OtlpConfig {
    let target = |path: &str| SignalTarget {
        endpoint: match protocol {
            Protocol::Grpc => endpoint.to_string(),
            Protocol::HttpProtobuf => format!("{endpoint}/{path}"),
        },
        protocol,
        headers: vec![("x-tenant".into(), "test".into())],
        timeout: Duration::from_secs(2),
    };
    OtlpConfig {
        traces: Some(target("v1/traces")),
        metrics: Some(target("v1/metrics")),
        logs: Some(target("v1/logs")),
        service_name: "semtap-test".into(),
        resource_attributes: vec![("deployment.environment".into(), "test".into())],
        metric_interval: Duration::from_millis(200),
        temporality: Temporality::Cumulative,
        histograms: HistogramAggregation::Explicit,
        capture_content: false,
        content_max_bytes: 4096,
        queue_size: 1024,
        batch_size: 64,
        batch_delay: Duration::from_millis(50),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn authed(req: http::Request<Full<Bytes>>) -> http::Request<Full<Bytes>> {
    let req = with_header(req, "authorization", &format!("Bearer {PLANTED_KEY}"));
    with_header(req, "x-api-key", PLANTED_KEY)
}

/// Four calls (OpenAI and Anthropic, streaming and not), the first carrying a traceparent.
async fn four_calls(base: &str) {
    let c = client();
    let chat = format!("{base}/v1/chat/completions");
    let msgs = format!("{base}/v1/messages");
    let req = authed(post_json(
        &chat,
        &chat_body("gpt-4o-mini", "Why is the sky blue?", false),
    ));
    let req = with_header(
        req,
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    assert_eq!(send(&c, req).await.0, 200);
    let req = authed(post_json(
        &chat,
        &chat_body("gpt-4o-mini", "Name a prime.", true),
    ));
    assert_eq!(send(&c, req).await.0, 200);
    let req = authed(post_json(
        &msgs,
        &messages_body("claude-sonnet-4-5", "Hello there", false),
    ));
    assert_eq!(send(&c, req).await.0, 200);
    let req = authed(post_json(
        &msgs,
        &messages_body("claude-sonnet-4-5", "Tell a joke", true),
    ));
    assert_eq!(send(&c, req).await.0, 200);
}

fn check_spans(spans: &[Span]) {
    let openai: Vec<&Span> = spans
        .iter()
        .filter(|s| attr_str(&s.attributes, "gen_ai.provider.name").as_deref() == Some("openai"))
        .collect();
    let anthropic: Vec<&Span> = spans
        .iter()
        .filter(|s| attr_str(&s.attributes, "gen_ai.provider.name").as_deref() == Some("anthropic"))
        .collect();
    assert_eq!(openai.len(), 2, "openai spans");
    assert_eq!(anthropic.len(), 2, "anthropic spans");
    for s in spans {
        assert_eq!(s.kind, 3, "CLIENT span kind"); // SPAN_KIND_CLIENT
        let a = &s.attributes;
        assert_eq!(
            attr_str(a, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        let model = attr_str(a, "gen_ai.request.model").expect("request model");
        assert_eq!(s.name, format!("chat {model}"));
        assert!(
            attr_str(a, "gen_ai.response.model").is_some(),
            "{:?}",
            s.name
        );
        assert!(attr_str(a, "gen_ai.response.id").is_some());
        assert!(attr_int(a, "gen_ai.usage.input_tokens").is_some_and(|t| t > 0));
        assert!(attr_int(a, "gen_ai.usage.output_tokens").is_some_and(|t| t > 0));
        assert!(attr(a, "gen_ai.response.finish_reasons").is_some());
        assert_eq!(attr_str(a, "server.address").as_deref(), Some("127.0.0.1"));
        assert!(attr_int(a, "server.port").is_some());
        assert!(attr(a, "semtap.overhead_ms").is_some());
        assert!(
            attr(a, "gen_ai.input.messages").is_none(),
            "content is opt-in"
        );
        assert!(
            attr(a, "gen_ai.output.messages").is_none(),
            "content is opt-in"
        );
        assert!(s.end_time_unix_nano > s.start_time_unix_nano);
    }
    // The streamed ones report their first chunk.
    assert!(spans.iter().any(|s| matches!(
        attr(&s.attributes, "gen_ai.response.time_to_first_chunk"),
        Some(any_value::Value::DoubleValue(v)) if *v > 0.0
    )));
    // The app's traceparent is continued.
    let joined = spans
        .iter()
        .find(|s| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("a span in the app's trace");
    assert_eq!(hex(&joined.parent_span_id), "00f067aa0ba902b7");
    // The others are roots of their own traces.
    assert_eq!(
        spans.iter().filter(|s| s.parent_span_id.is_empty()).count(),
        3
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn histogram_count(data: &metric::Data) -> u64 {
    match data {
        metric::Data::Histogram(h) => h.data_points.iter().map(|p| p.count).sum(),
        metric::Data::ExponentialHistogram(h) => h.data_points.iter().map(|p| p.count).sum(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_carries_genai_spans_metrics_and_a_continued_trace() {
    let up = MockUpstream::start().await.expect("mock");
    let col = grpc_collector().await;
    let mut cfg = config_for(&up.url(), None);
    cfg.otlp = Some(otlp_config(&format!("http://{}", col.addr), Protocol::Grpc));
    let t = tap_with(cfg).await;
    four_calls(&t.base()).await;

    let spans = wait_for("4 spans", || {
        let s = col.got.spans();
        (s.len() >= 4).then_some(s)
    })
    .await;
    check_spans(&spans);
    assert_eq!(
        col.got.resource_attr("service.name").as_deref(),
        Some("semtap-test")
    );
    assert_eq!(
        col.got.resource_attr("deployment.environment").as_deref(),
        Some("test")
    );
    assert!(col.got.resource_attr("service.instance.id").is_some());

    // Metrics come from the tap's own histograms: counts equal the calls made.
    let count = wait_for("duration histogram with 4 calls", || {
        col.got
            .last_metric("gen_ai.client.operation.duration")
            .map(|d| histogram_count(&d))
            .filter(|&c| c >= 4)
    })
    .await;
    assert_eq!(count, 4);
    let names = col.got.metric_names();
    for want in ["gen_ai.client.token.usage", "semtap.requests"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    if let Some(metric::Data::Histogram(h)) =
        col.got.last_metric("gen_ai.client.operation.duration")
    {
        assert_eq!(h.aggregation_temporality, 2, "cumulative by default");
        assert!(!h.data_points[0].explicit_bounds.is_empty());
    } else {
        panic!("explicit-bucket histogram expected");
    }

    t.running.shutdown().await;
    let tenants = col.got.0.lock().tenants.clone();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| t == "test"),
        "configured headers go out as gRPC metadata: {tenants:?}"
    );
    let raw = col.got.0.lock().raw.clone();
    assert!(!raw.is_empty());
    assert!(
        memchr::memmem::find(&raw, PLANTED_KEY.as_bytes()).is_none(),
        "the API key leaked into OTLP"
    );
    assert!(
        memchr::memmem::find(&raw, b"sky blue").is_none(),
        "prompt leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_works_and_content_goes_out_only_when_opted_in() {
    let up = MockUpstream::start().await.expect("mock");
    let col = http_collector().await;
    let mut cfg = config_for(&up.url(), None);
    let mut o = otlp_config(&format!("http://{}", col.addr), Protocol::HttpProtobuf);
    o.capture_content = true;
    o.content_max_bytes = 64;
    o.histograms = HistogramAggregation::Exponential;
    cfg.otlp = Some(o);
    let t = tap_with(cfg).await;
    four_calls(&t.base()).await;
    let spans = wait_for("4 spans over HTTP", || {
        let s = col.got.spans();
        (s.len() >= 4).then_some(s)
    })
    .await;
    for s in &spans {
        let input = attr_str(&s.attributes, "gen_ai.input.messages").expect("input messages");
        let v: serde_json::Value = serde_json::from_str(&input).expect("input is JSON");
        assert_eq!(v[0]["role"], "user");
        let output = attr_str(&s.attributes, "gen_ai.output.messages").expect("output messages");
        let v: serde_json::Value = serde_json::from_str(&output).expect("output is JSON");
        assert!(v[0]["parts"][0]["content"].as_str().expect("text").len() <= 64);
    }
    let count = wait_for("exponential histogram with 4 calls", || {
        col.got
            .last_metric("gen_ai.client.operation.duration")
            .filter(|d| matches!(d, metric::Data::ExponentialHistogram(_)))
            .map(|d| histogram_count(&d))
            .filter(|&c| c >= 4)
    })
    .await;
    assert_eq!(count, 4);
    let tenants = col.got.0.lock().tenants.clone();
    assert!(
        tenants.iter().all(|t| t == "test"),
        "configured headers go out as HTTP headers: {tenants:?}"
    );
    let raw = col.got.0.lock().raw.clone();
    assert!(memchr::memmem::find(&raw, PLANTED_KEY.as_bytes()).is_none());
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_go_out_as_logs_linked_to_the_span_that_opened_them() {
    let up = MockUpstream::start().await.expect("mock");
    let col = grpc_collector().await;
    let model = tempfile::tempdir().expect("tmp");
    semtap::semantic::testing::write_tiny_bert(model.path(), 7).expect("tiny bert");
    let mut cfg = config_for(&up.url(), None);
    cfg.semantic.enabled = true;
    cfg.semantic.model_dir = Some(model.path().to_path_buf());
    cfg.otlp = Some(otlp_config(&format!("http://{}", col.addr), Protocol::Grpc));
    let t = tap_with(cfg).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", t.base());
    for i in 0..30 {
        let req = post_json(
            &url,
            &chat_body("gpt-4o-mini", "Why is the sky blue?", false),
        );
        // Every call is part of the app's trace: the incident log must land in it too.
        let req = with_header(
            req,
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let req = if i >= 10 {
            with_header(req, "x-mock-fault", "status=529")
        } else {
            req
        };
        send(&c, req).await;
    }
    let log = wait_for("an incident log", || {
        col.got.logs().into_iter().find(|l| {
            attr_str(&l.attributes, "semtap.incident.kind").as_deref() == Some("error_rate")
        })
    })
    .await;
    assert_eq!(
        attr_str(&log.attributes, "semtap.incident.state").as_deref(),
        Some("opened")
    );
    assert_eq!(log.event_name, "semtap.incident.opened");
    assert!(log.severity_number >= 13, "WARN or above");
    let spans = wait_for("the opening span", || {
        let spans = col.got.spans();
        spans
            .iter()
            .any(|s| s.span_id == log.span_id)
            .then_some(spans)
    })
    .await;
    let opener = spans
        .iter()
        .find(|s| s.span_id == log.span_id)
        .expect("span");
    assert_eq!(opener.trace_id, log.trace_id);
    assert_eq!(hex(&log.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    // Spans carry the engine's verdicts.
    assert!(spans
        .iter()
        .all(|s| attr_str(&s.attributes, "semtap.baseline.key").is_some()));
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformer_verdicts_go_out_as_logs_linked_to_the_exchange_span() {
    let up = MockUpstream::start().await.expect("mock");
    let col = grpc_collector().await;
    let model = tempfile::tempdir().expect("tmp");
    semtap::semantic::testing::write_tiny_bert(model.path(), 7).expect("tiny bert");
    let mut cfg = config_for(&up.url(), None);
    cfg.semantic.enabled = true;
    cfg.semantic.model_dir = Some(model.path().to_path_buf());
    // Every answer reviewed, so the test does not depend on which ids the sample picks.
    cfg.semantic.transformer_sample = Some(1.0);
    cfg.otlp = Some(otlp_config(&format!("http://{}", col.addr), Protocol::Grpc));
    let t = tap_with(cfg).await;
    let admin = t.admin();
    // The transformer tier is up once health says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get_text(&format!("{admin}/status")).await;
        if body.contains("transformer tier on cpu") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no transformer tier: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = client();
    let url = format!("{}/v1/chat/completions", t.base());
    for _ in 0..5 {
        let req = post_json(
            &url,
            &chat_body("gpt-4o-mini", "Why is the sky blue?", false),
        );
        let req = with_header(
            req,
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        send(&c, req).await;
    }
    let log = wait_for("a transformer verdict log", || {
        col.got
            .logs()
            .into_iter()
            .find(|l| l.event_name == "semtap.transformer.verdict")
    })
    .await;
    assert_eq!(
        attr_str(&log.attributes, "semtap.review.reason").as_deref(),
        Some("sample")
    );
    assert_eq!(
        attr_str(&log.attributes, "semtap.key").as_deref(),
        Some("test/openai/gpt-4o-mini")
    );
    assert_eq!(hex(&log.trace_id), "0af7651916cd43dd8448eb211c80319c");
    let exchange = attr_str(&log.attributes, "semtap.exchange.id").expect("exchange id");
    let span = wait_for("the exchange's span", || {
        col.got
            .spans()
            .into_iter()
            .find(|s| s.span_id == log.span_id)
    })
    .await;
    assert_eq!(span.trace_id, log.trace_id);
    assert_eq!(
        attr_str(&span.attributes, "semtap.exchange.id").as_deref(),
        Some(exchange.as_str())
    );
    let m = get_text(&format!("{admin}/metrics")).await.1;
    assert!(prom_sum(&m, "semtap_embeddings_total", &["tier=\"transformer\""]) >= 1.0);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_never_touches_the_proxy_and_export_resumes_when_it_is_back() {
    let up = MockUpstream::start().await.expect("mock");
    // Reserve a port, then close it: the collector is down (connection refused).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut cfg = config_for(&up.url(), None);
    let mut o = otlp_config(&format!("http://127.0.0.1:{port}"), Protocol::Grpc);
    o.queue_size = 8;
    o.batch_size = 4;
    cfg.otlp = Some(o);
    let t = tap_with(cfg).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", t.base());
    for _ in 0..60 {
        let req = post_json(&url, &chat_body("gpt-4o-mini", "Hi", false));
        assert_eq!(send(&c, req).await.0, 200, "the proxy is unaffected");
    }
    // Bounded: what could not wait was dropped and counted.
    let admin = t.admin();
    let dropped = wait_for("export drops counted", || {
        let m = futures_block(get_text(&format!("{admin}/metrics"))).1;
        let d = prom_sum(&m, "semtap_export_dropped_total", &[]);
        (d > 0.0).then_some(d)
    })
    .await;
    assert!(dropped > 0.0);

    // The collector comes up on that port: new data flows.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let col = grpc_collector_on(l).await;
    for _ in 0..5 {
        let req = post_json(&url, &chat_body("gpt-4o-mini", "Hi again", false));
        assert_eq!(send(&c, req).await.0, 200);
    }
    wait_for("spans after recovery", || {
        (!col.got.spans().is_empty()).then_some(())
    })
    .await;
    wait_for("metrics after recovery", || {
        col.got
            .last_metric("gen_ai.client.operation.duration")
            .map(|d| histogram_count(&d))
            .filter(|&c| c >= 65)
    })
    .await;
    t.running.shutdown().await;
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[test]
fn config_errors_name_the_key() {
    let text = "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n[otlp]\nendpoint = \"collector:4317\"\nprotocol = \"smoke-signals\"\n";
    let err = semtap::config::Config::from_toml(text, "bad.toml").expect_err("invalid");
    let msg = err.to_string();
    assert!(msg.contains("bad.toml: otlp.protocol"), "{msg}");
    assert!(msg.contains("bad.toml: otlp.endpoint"), "{msg}");
}
