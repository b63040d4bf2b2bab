//! Metrics: GenAI client semantic-convention metrics from exchange records, plain-traffic and
//! pipeline counters, rendered as Prometheus text or as a neutral snapshot for exporters.
//!
//! Hot-path recording never takes a lock shared between threads (see `hist.rs` for why);
//! label lookups for per-exchange metrics take a read lock and are done once per exchange.
//!
//! Cardinality is bounded: label values come from small closed sets or are capped
//! (`max_models` request and response models, then `other`; see `semtap.label_overflow`).
//! Ids, prompts and answers are never labels.
//!
//! Names follow the GenAI semantic conventions as released in semantic-conventions v1.41
//! (`gen_ai.client.operation.duration`, `gen_ai.client.token.usage`, ...). With
//! `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` they follow the latest draft in
//! open-telemetry/semantic-conventions-genai instead (genai PRs #374 and #521):
//! `gen_ai.client.inference.duration` for inference operations (embeddings keep
//! `gen_ai.client.operation.duration`), `gen_ai.client.inference.time_to_first_chunk`,
//! `gen_ai.client.inference.time_per_output_chunk`, and in place of `gen_ai.client.token.usage`
//! the histograms `gen_ai.client.inference.operation.{input,output}_tokens` plus the counters
//! `gen_ai.client.inference.usage.{input_tokens,output_tokens,cache_read.input_tokens,
//! reasoning.output_tokens}` (with `gen_ai.token.modality="unknown"`: records carry no
//! per-modality split).

mod hist;
mod labels;
mod prometheus;
#[cfg(test)]
mod tests;

pub use hist::{Counter, Gauge, Histogram, HistogramSnapshot, HistogramSpec};
pub use prometheus::prometheus_name;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::record::{ExchangeRecord, Outcome};
use labels::{status_class, LabelCap, SeriesMap};

/// Spec-advised buckets for GenAI client durations, TTFC and time per output chunk (seconds).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Spec-advised buckets for GenAI token counts.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Request durations as plain HTTP (seconds): the HTTP semantic-convention buckets up to 10 s,
/// extended to 5 minutes because LLM calls through the same listener run that long.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// semtap's own overhead is tens of microseconds; buckets resolve that range (seconds).
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,
];
/// Output tokens per second.
pub const RATE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The instrument kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Monotonic sum.
    Counter,
    /// Last value.
    Gauge,
    /// Explicit-bucket histogram.
    Histogram,
}

/// A metric's identity and metadata: OTel name, UCUM unit, description, and for histograms the
/// storage spec and bucket boundaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDesc {
    /// OTel name (dotted).
    pub name: &'static str,
    /// UCUM unit: `s`, `By`, `{token}`, ...
    pub unit: &'static str,
    /// One line for HELP / OTLP description.
    pub description: &'static str,
    /// Instrument kind.
    pub kind: MetricKind,
    /// Histogram bucket boundaries (ascending); empty for counters and gauges.
    pub boundaries: &'static [f64],
    /// Histogram storage unit; ignored for counters and gauges.
    pub spec: HistogramSpec,
}

impl MetricDesc {
    /// A counter descriptor.
    pub const fn counter(
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        MetricDesc {
            name,
            unit,
            description,
            kind: MetricKind::Counter,
            boundaries: &[],
            spec: HistogramSpec::COUNT,
        }
    }

    /// A gauge descriptor.
    pub const fn gauge(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        MetricDesc {
            name,
            unit,
            description,
            kind: MetricKind::Gauge,
            boundaries: &[],
            spec: HistogramSpec::COUNT,
        }
    }

    /// A histogram descriptor.
    pub const fn histogram(
        name: &'static str,
        unit: &'static str,
        description: &'static str,
        spec: HistogramSpec,
        boundaries: &'static [f64],
    ) -> Self {
        MetricDesc {
            name,
            unit,
            description,
            kind: MetricKind::Histogram,
            boundaries,
            spec,
        }
    }
}

/// Descriptors of every metric semtap emits. To add a pipeline metric, add a constant here and
/// to [`KNOWN`], then `metrics.counter(desc::NAME.name, &[("label", "value")])`.
pub mod desc {
    use super::*;

    /// `gen_ai.client.operation.duration` (released name; also embeddings under latest).
    pub const OPERATION_DURATION: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.operation.duration",
        "s",
        "GenAI operation duration.",
        HistogramSpec::SECONDS,
        DURATION_BUCKETS,
    );
    /// `gen_ai.client.token.usage` (released name).
    pub const TOKEN_USAGE: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.token.usage",
        "{token}",
        "Number of input and output tokens used.",
        HistogramSpec::COUNT,
        TOKEN_BUCKETS,
    );
    /// `gen_ai.client.operation.time_to_first_chunk` (released name).
    pub const TIME_TO_FIRST_CHUNK: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.operation.time_to_first_chunk",
        "s",
        "Time to receive the first chunk of a streamed response, from when the request was issued.",
        HistogramSpec::SECONDS,
        DURATION_BUCKETS,
    );
    /// `gen_ai.client.operation.time_per_output_chunk` (released name).
    pub const TIME_PER_OUTPUT_CHUNK: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.operation.time_per_output_chunk",
        "s",
        "Time between the end of the previous chunk and the end of the current one, for each chunk after the first.",
        HistogramSpec::SECONDS,
        DURATION_BUCKETS,
    );
    /// `gen_ai.client.inference.duration` (latest draft).
    pub const INFERENCE_DURATION: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.inference.duration",
        "s",
        "GenAI client inference operation duration.",
        HistogramSpec::SECONDS,
        DURATION_BUCKETS,
    );
    /// `gen_ai.client.inference.time_to_first_chunk` (latest draft).
    pub const INFERENCE_TIME_TO_FIRST_CHUNK: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.inference.time_to_first_chunk",
        "s",
        "Time to receive the first chunk of a streamed response, from when the request was issued.",
        HistogramSpec::SECONDS,
        DURATION_BUCKETS,
    );
    /// `gen_ai.client.inference.time_per_output_chunk` (latest draft).
    pub const INFERENCE_TIME_PER_OUTPUT_CHUNK: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.inference.time_per_output_chunk",
        "s",
        "Time between the end of the previous chunk and the end of the current one, for each chunk after the first.",
        HistogramSpec::SECONDS,
        DURATION_BUCKETS,
    );
    /// `gen_ai.client.inference.operation.input_tokens` (latest draft).
    pub const INFERENCE_INPUT_TOKENS: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.inference.operation.input_tokens",
        "{token}",
        "The number of input (prompt) tokens used per inference operation.",
        HistogramSpec::COUNT,
        TOKEN_BUCKETS,
    );
    /// `gen_ai.client.inference.operation.output_tokens` (latest draft).
    pub const INFERENCE_OUTPUT_TOKENS: MetricDesc = MetricDesc::histogram(
        "gen_ai.client.inference.operation.output_tokens",
        "{token}",
        "The number of output (completion) tokens used per inference operation.",
        HistogramSpec::COUNT,
        TOKEN_BUCKETS,
    );
    /// `gen_ai.client.inference.usage.input_tokens` (latest draft).
    pub const USAGE_INPUT_TOKENS: MetricDesc = MetricDesc::counter(
        "gen_ai.client.inference.usage.input_tokens",
        "{token}",
        "The number of input (prompt) tokens used, including cached tokens.",
    );
    /// `gen_ai.client.inference.usage.output_tokens` (latest draft).
    pub const USAGE_OUTPUT_TOKENS: MetricDesc = MetricDesc::counter(
        "gen_ai.client.inference.usage.output_tokens",
        "{token}",
        "The number of output (completion) tokens used, including reasoning tokens.",
    );
    /// `gen_ai.client.inference.usage.cache_read.input_tokens` (latest draft).
    pub const USAGE_CACHE_READ_TOKENS: MetricDesc = MetricDesc::counter(
        "gen_ai.client.inference.usage.cache_read.input_tokens",
        "{token}",
        "The number of input tokens served from a provider-managed cache.",
    );
    /// `gen_ai.client.inference.usage.reasoning.output_tokens` (latest draft).
    pub const USAGE_REASONING_TOKENS: MetricDesc = MetricDesc::counter(
        "gen_ai.client.inference.usage.reasoning.output_tokens",
        "{token}",
        "The number of output tokens used for reasoning.",
    );
    /// Time to the first chunk that carries content.
    pub const TIME_TO_FIRST_TOKEN: MetricDesc = MetricDesc::histogram(
        "semtap.time_to_first_token",
        "s",
        "Time to the first response chunk that carries content (what users call TTFT).",
        HistogramSpec::SECONDS,
        DURATION_BUCKETS,
    );
    /// Generation speed as the client saw it.
    pub const OUTPUT_TOKENS_PER_SECOND: MetricDesc = MetricDesc::histogram(
        "semtap.output_tokens_per_second",
        "{token}/s",
        "Output tokens per second: after the first token for streams, over the whole call otherwise.",
        HistogramSpec::RATE,
        RATE_BUCKETS,
    );
    /// Time semtap itself added.
    pub const OVERHEAD: MetricDesc = MetricDesc::histogram(
        "semtap.overhead",
        "s",
        "Time spent inside semtap on the data path for one exchange.",
        HistogramSpec::SECONDS,
        OVERHEAD_BUCKETS,
    );
    /// Recognised LLM exchanges.
    pub const EXCHANGES: MetricDesc = MetricDesc::counter(
        "semtap.exchanges",
        "{exchange}",
        "Recognised LLM API exchanges, by HTTP status class and error type.",
    );
    /// Bodies semtap could not understand.
    pub const PARSE_ANOMALIES: MetricDesc = MetricDesc::counter(
        "semtap.parse_anomalies",
        "{exchange}",
        "Exchanges whose body semtap could not fully understand (forwarded untouched regardless).",
    );
    /// Captures that hit the size cap.
    pub const CAPTURE_TRUNCATED: MetricDesc = MetricDesc::counter(
        "semtap.capture_truncated",
        "{exchange}",
        "Exchanges whose capture hit the size cap.",
    );
    /// Usage counted by semtap rather than reported by the upstream.
    pub const USAGE_ESTIMATED: MetricDesc = MetricDesc::counter(
        "semtap.usage_estimated",
        "{exchange}",
        "Exchanges whose token usage semtap estimated because the upstream reported none.",
    );
    /// Last seen remaining-requests rate-limit header.
    pub const RATE_LIMIT_REMAINING_REQUESTS: MetricDesc = MetricDesc::gauge(
        "semtap.rate_limit.remaining_requests",
        "{request}",
        "Requests left in the provider's rate-limit window, as last reported by the provider.",
    );
    /// Last seen remaining-tokens rate-limit header.
    pub const RATE_LIMIT_REMAINING_TOKENS: MetricDesc = MetricDesc::gauge(
        "semtap.rate_limit.remaining_tokens",
        "{token}",
        "Tokens left in the provider's rate-limit window, as last reported by the provider.",
    );
    /// Every request through semtap.
    pub const REQUESTS: MetricDesc = MetricDesc::counter(
        "semtap.requests",
        "{request}",
        "HTTP requests proxied by semtap, LLM API calls or not.",
    );
    /// Duration of every request seen as plain HTTP.
    pub const REQUEST_DURATION: MetricDesc = MetricDesc::histogram(
        "semtap.request.duration",
        "s",
        "Duration of proxied requests as plain HTTP (LLM API calls or not), measured by the data path.",
        HistogramSpec::SECONDS,
        REQUEST_DURATION_BUCKETS,
    );
    /// Values folded into `other` by a label cap.
    pub const LABEL_OVERFLOW: MetricDesc = MetricDesc::counter(
        "semtap.label_overflow",
        "{value}",
        "Label values replaced by a fallback because the label reached its cardinality cap.",
    );
    /// Records dropped before analysis (label `reason`).
    pub const RECORDS_DROPPED: MetricDesc = MetricDesc::counter(
        "semtap.records_dropped",
        "{record}",
        "Exchange records dropped before analysis, by reason.",
    );
    /// Body bytes captured for analysis.
    pub const CAPTURED_BYTES: MetricDesc =
        MetricDesc::counter("semtap.captured", "By", "Body bytes captured for analysis.");
    /// Requests currently in flight.
    pub const IN_FLIGHT: MetricDesc = MetricDesc::gauge(
        "semtap.requests.in_flight",
        "{request}",
        "Requests currently being proxied.",
    );
    /// Records waiting for analysis.
    pub const ANALYSIS_QUEUE_DEPTH: MetricDesc = MetricDesc::gauge(
        "semtap.analysis.queue_depth",
        "{record}",
        "Exchange records waiting for analysis.",
    );
    /// Upstream failures (label `kind`).
    pub const UPSTREAM_ERRORS: MetricDesc = MetricDesc::counter(
        "semtap.upstream_errors",
        "{error}",
        "Upstream failures, by kind (connect, tls, timeout, reset, ...).",
    );
    /// Requests refused before forwarding (label `reason`, e.g. `max_in_flight`).
    pub const REJECTED: MetricDesc = MetricDesc::counter(
        "semtap.rejected",
        "{request}",
        "Requests semtap refused before forwarding, by reason.",
    );
    /// Failures accepting client connections.
    pub const ACCEPT_ERRORS: MetricDesc = MetricDesc::counter(
        "semtap.accept_errors",
        "{error}",
        "Errors accepting client connections on a listener.",
    );
    /// WebSocket upgrades passed through.
    pub const WEBSOCKET_UPGRADES: MetricDesc = MetricDesc::counter(
        "semtap.websocket_upgrades",
        "{connection}",
        "Connections upgraded to WebSocket (passed through, not analysed).",
    );
    /// Connections opened to upstreams (a steady rise under steady load means no reuse).
    pub const UPSTREAM_CONNECTIONS_OPENED: MetricDesc = MetricDesc::counter(
        "semtap.upstream.connections_opened",
        "{connection}",
        "Connections opened to the listener's upstream.",
    );
    /// Idle upstream connections held for reuse (capped by limits.upstream_idle_connections).
    pub const UPSTREAM_CONNECTIONS_IDLE: MetricDesc = MetricDesc::gauge(
        "semtap.upstream.connections_idle",
        "{connection}",
        "Idle HTTP/1 connections to the listener's upstream kept for reuse.",
    );
}

/// Every descriptor, so by-name lookups (`Metrics::counter("semtap.records_dropped", ..)`)
/// get the right unit, description and buckets.
pub const KNOWN: &[MetricDesc] = &[
    desc::OPERATION_DURATION,
    desc::TOKEN_USAGE,
    desc::TIME_TO_FIRST_CHUNK,
    desc::TIME_PER_OUTPUT_CHUNK,
    desc::INFERENCE_DURATION,
    desc::INFERENCE_TIME_TO_FIRST_CHUNK,
    desc::INFERENCE_TIME_PER_OUTPUT_CHUNK,
    desc::INFERENCE_INPUT_TOKENS,
    desc::INFERENCE_OUTPUT_TOKENS,
    desc::USAGE_INPUT_TOKENS,
    desc::USAGE_OUTPUT_TOKENS,
    desc::USAGE_CACHE_READ_TOKENS,
    desc::USAGE_REASONING_TOKENS,
    desc::TIME_TO_FIRST_TOKEN,
    desc::OUTPUT_TOKENS_PER_SECOND,
    desc::OVERHEAD,
    desc::EXCHANGES,
    desc::PARSE_ANOMALIES,
    desc::CAPTURE_TRUNCATED,
    desc::USAGE_ESTIMATED,
    desc::RATE_LIMIT_REMAINING_REQUESTS,
    desc::RATE_LIMIT_REMAINING_TOKENS,
    desc::REQUESTS,
    desc::REQUEST_DURATION,
    desc::LABEL_OVERFLOW,
    desc::RECORDS_DROPPED,
    desc::CAPTURED_BYTES,
    desc::IN_FLIGHT,
    desc::ANALYSIS_QUEUE_DEPTH,
    desc::UPSTREAM_ERRORS,
    desc::REJECTED,
    desc::ACCEPT_ERRORS,
    desc::WEBSOCKET_UPGRADES,
    desc::UPSTREAM_CONNECTIONS_OPENED,
    desc::UPSTREAM_CONNECTIONS_IDLE,
];

/// Label keys used by semtap's own series.
pub mod label {
    /// The semtap listener (config name) that took the request.
    pub const LISTENER: &str = "listener";
    /// `gen_ai.provider.name`.
    pub const PROVIDER: &str = "gen_ai.provider.name";
    /// `gen_ai.operation.name`.
    pub const OPERATION: &str = "gen_ai.operation.name";
    /// `gen_ai.request.model` (capped).
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// `gen_ai.response.model` (capped).
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// `error.type`; absent on success.
    pub const ERROR_TYPE: &str = "error.type";
    /// `gen_ai.token.type` (`input` / `output`).
    pub const TOKEN_TYPE: &str = "gen_ai.token.type";
    /// `gen_ai.token.modality` (latest draft usage counters).
    pub const TOKEN_MODALITY: &str = "gen_ai.token.modality";
    /// HTTP status class: `2xx` ... `5xx`, `none`.
    pub const STATUS_CLASS: &str = "status_class";
    /// How a request ended (`Outcome::as_str`).
    pub const OUTCOME: &str = "outcome";
}

/// Fallback for capped labels.
const OTHER: &str = "other";
/// `error.type`'s own fallback value, per the semantic conventions.
const OTHER_ERROR: &str = "_OTHER";

/// Configuration of [`Metrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsOptions {
    /// Distinct request (and, separately, response) model names kept as label values.
    pub max_models: usize,
    /// Use the latest draft GenAI metric names instead of the released ones.
    pub latest_semconv: bool,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            max_models: 50,
            latest_semconv: false,
        }
    }
}

impl MetricsOptions {
    /// Defaults, with `latest_semconv` from `OTEL_SEMCONV_STABILITY_OPT_IN` as OTel SDKs read it.
    pub fn from_env() -> MetricsOptions {
        let v = std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").ok();
        MetricsOptions {
            latest_semconv: wants_latest_semconv(v.as_deref()),
            ..MetricsOptions::default()
        }
    }
}

/// Whether an `OTEL_SEMCONV_STABILITY_OPT_IN` value (comma-separated) opts into the latest
/// experimental GenAI conventions.
pub fn wants_latest_semconv(opt_in: Option<&str>) -> bool {
    opt_in.is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim() == "gen_ai_latest_experimental")
    })
}

/// A point-in-time copy of one metric family, independent of any export format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricFamilySnapshot {
    /// OTel name (dotted).
    pub name: String,
    /// UCUM unit.
    pub unit: String,
    /// Description.
    pub description: String,
    /// Instrument kind.
    pub kind: MetricKind,
    /// Series sorted by labels; histogram series with no values are left out.
    pub series: Vec<SeriesSnapshot>,
}

/// One series of a family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSnapshot {
    /// OTel attribute keys (dotted) and values; labels with empty values are left out.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: SeriesValue,
}

/// A series value; cumulative since process start.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesValue {
    /// Counter total.
    Counter(u64),
    /// Gauge value.
    Gauge(f64),
    /// Histogram state.
    Histogram(HistogramPoint),
}

/// Explicit-bucket histogram state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramPoint {
    /// Values recorded.
    pub count: u64,
    /// Exact sum of the values.
    pub sum: f64,
    /// Exact smallest value.
    pub min: f64,
    /// Exact largest value.
    pub max: f64,
    /// Bucket upper bounds, ascending, `+Inf` excluded.
    pub boundaries: Vec<f64>,
    /// Values `<=` each boundary (Prometheus style); the `+Inf` bucket is `count`.
    pub cumulative_counts: Vec<u64>,
    /// Full-resolution content as (value, count), ascending; filled only by
    /// [`Metrics::snapshot_detailed`] (exponential-histogram export needs it).
    #[serde(skip)]
    pub values: Vec<(f64, u64)>,
}

impl HistogramPoint {
    /// Per-bucket (non-cumulative) counts, `boundaries.len() + 1` long, as OTLP wants.
    pub fn bucket_counts(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.cumulative_counts.len() + 1);
        let mut prev = 0;
        for &c in self
            .cumulative_counts
            .iter()
            .chain(std::iter::once(&self.count))
        {
            out.push(c.saturating_sub(prev));
            prev = c.max(prev);
        }
        out
    }
}

/// Per-listener figures for `/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListenerSummary {
    /// Listener name.
    pub listener: String,
    /// Requests proxied (`semtap.requests`).
    pub requests: u64,
    /// Recognised LLM exchanges (`semtap.exchanges`).
    pub exchanges: u64,
    /// Median exchange duration, seconds.
    pub duration_p50_s: Option<f64>,
    /// 99th percentile exchange duration, seconds.
    pub duration_p99_s: Option<f64>,
    /// Median time to first token, seconds.
    pub ttft_p50_s: Option<f64>,
    /// 99th percentile time to first token, seconds.
    pub ttft_p99_s: Option<f64>,
}

#[derive(Debug, Clone)]
enum SeriesHandle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// One metric family and its series, keyed by flattened `[key, value, key, value, ...]`.
struct Family {
    name: String,
    unit: String,
    description: String,
    kind: MetricKind,
    spec: HistogramSpec,
    boundaries: Vec<f64>,
    series: SeriesMap<SeriesHandle>,
}

impl Family {
    fn from_desc(d: &MetricDesc) -> Family {
        Family {
            name: d.name.to_string(),
            unit: d.unit.to_string(),
            description: d.description.to_string(),
            kind: d.kind,
            spec: d.spec,
            boundaries: d.boundaries.to_vec(),
            series: SeriesMap::new(),
        }
    }

    /// A family for a name with no descriptor. Histograms default to seconds with the GenAI
    /// duration buckets; use [`Metrics::describe`] for anything else.
    fn generic(name: &str, kind: MetricKind) -> Family {
        let (unit, boundaries) = match kind {
            MetricKind::Histogram => ("s", DURATION_BUCKETS.to_vec()),
            _ => ("", Vec::new()),
        };
        Family {
            name: name.to_string(),
            unit: unit.to_string(),
            description: String::new(),
            kind,
            spec: HistogramSpec::SECONDS,
            boundaries,
            series: SeriesMap::new(),
        }
    }
}

/// What kind of handle a caller wants from a family.
#[derive(Clone, Copy)]
enum Want {
    Counter,
    Gauge,
    Histogram,
}

impl Want {
    fn kind(self) -> MetricKind {
        match self {
            Want::Counter => MetricKind::Counter,
            Want::Gauge => MetricKind::Gauge,
            Want::Histogram => MetricKind::Histogram,
        }
    }
}

struct Caps {
    listener: LabelCap,
    operation: LabelCap,
    provider: LabelCap,
    request_model: LabelCap,
    response_model: LabelCap,
    error_type: LabelCap,
    outcome: LabelCap,
}

/// Per-exchange series sharing listener / operation / provider / models.
struct GenAiSeries {
    input_tokens: Histogram,
    output_tokens: Histogram,
    usage: Option<UsageCounters>,
    time_to_first_chunk: Histogram,
    time_per_output_chunk: Histogram,
    time_to_first_token: Histogram,
    output_tokens_per_second: Histogram,
    overhead: Histogram,
    parse_anomalies: Counter,
    capture_truncated: Counter,
    usage_estimated: Counter,
}

/// Latest-draft token counters.
struct UsageCounters {
    input: Counter,
    output: Counter,
    cache_read: Counter,
    reasoning: Counter,
}

/// Series that also depend on how the exchange ended.
struct OutcomeSeries {
    duration: Histogram,
    exchanges: Counter,
}

/// All of semtap's metrics. Create one and share it (`Arc<Metrics>`).
pub struct Metrics {
    opts: MetricsOptions,
    families: RwLock<BTreeMap<String, Arc<Family>>>,
    caps: Caps,
    genai: SeriesMap<Arc<GenAiSeries>>,
    outcomes: SeriesMap<Arc<OutcomeSeries>>,
    rate_limit_requests: SeriesMap<Gauge>,
    rate_limit_tokens: SeriesMap<Gauge>,
    requests: SeriesMap<Counter>,
    plain: SeriesMap<Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry with the given options.
    pub fn new(opts: MetricsOptions) -> Metrics {
        let families = RwLock::new(BTreeMap::new());
        let overflow = |label: &str| -> Counter {
            let fam = families
                .write()
                .entry(desc::LABEL_OVERFLOW.name.to_string())
                .or_insert_with(|| Arc::new(Family::from_desc(&desc::LABEL_OVERFLOW)))
                .clone();
            let c = Counter::new();
            fam.series
                .get_or_insert_with(&["label", label], || SeriesHandle::Counter(c.clone()));
            c
        };
        let caps = Caps {
            listener: LabelCap::new(64, OTHER, overflow(label::LISTENER)),
            operation: LabelCap::new(32, OTHER, overflow(label::OPERATION)),
            provider: LabelCap::new(32, OTHER, overflow(label::PROVIDER)),
            request_model: LabelCap::new(opts.max_models, OTHER, overflow(label::REQUEST_MODEL)),
            response_model: LabelCap::new(opts.max_models, OTHER, overflow(label::RESPONSE_MODEL)),
            error_type: LabelCap::new(64, OTHER_ERROR, overflow(label::ERROR_TYPE)),
            outcome: LabelCap::new(32, OTHER, overflow(label::OUTCOME)),
        };
        Metrics {
            opts,
            families,
            caps,
            genai: SeriesMap::new(),
            outcomes: SeriesMap::new(),
            rate_limit_requests: SeriesMap::new(),
            rate_limit_tokens: SeriesMap::new(),
            requests: SeriesMap::new(),
            plain: SeriesMap::new(),
        }
    }

    /// The options this registry was built with.
    pub fn options(&self) -> &MetricsOptions {
        &self.opts
    }

    /// Registers a descriptor so later by-name calls use its unit, description and buckets.
    /// A name already registered keeps its first definition.
    pub fn describe(&self, d: MetricDesc) {
        self.families
            .write()
            .entry(d.name.to_string())
            .or_insert_with(|| Arc::new(Family::from_desc(&d)));
    }

    /// The counter `name` with `labels` (empty values are dropped). Call once and keep the
    /// handle: the lookup takes locks, the handle's `inc` does not.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Counter {
        match self.handle(name, labels, Want::Counter) {
            Some(SeriesHandle::Counter(c)) => c,
            _ => Counter::new(),
        }
    }

    /// The gauge `name` with `labels`; keep the handle.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.handle(name, labels, Want::Gauge) {
            Some(SeriesHandle::Gauge(g)) => g,
            _ => Gauge::new(),
        }
    }

    /// The histogram `name` with `labels`; keep the handle. Unknown names are seconds-valued
    /// with the GenAI duration buckets unless [`describe`](Self::describe)d first.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Histogram {
        match self.handle(name, labels, Want::Histogram) {
            Some(SeriesHandle::Histogram(h)) => h,
            _ => Histogram::new(HistogramSpec::SECONDS),
        }
    }

    /// The family `name`, created from [`KNOWN`] or generically if new; `None` if it exists
    /// with another kind.
    fn family(&self, name: &str, kind: MetricKind) -> Option<Arc<Family>> {
        let existing = self.families.read().get(name).cloned();
        let fam = match existing {
            Some(f) => f,
            None => self
                .families
                .write()
                .entry(name.to_string())
                .or_insert_with(|| {
                    Arc::new(match KNOWN.iter().find(|d| d.name == name) {
                        Some(d) => Family::from_desc(d),
                        None => Family::generic(name, kind),
                    })
                })
                .clone(),
        };
        (fam.kind == kind).then_some(fam)
    }

    fn handle(&self, name: &str, labels: &[(&str, &str)], want: Want) -> Option<SeriesHandle> {
        let Some(fam) = self.family(name, want.kind()) else {
            tracing::warn!(
                metric = name,
                "metric already registered with another kind; not exported"
            );
            return None;
        };
        let mut flat: Vec<&str> = Vec::with_capacity(labels.len() * 2);
        for (k, v) in labels {
            if !v.is_empty() {
                flat.push(k);
                flat.push(v);
            }
        }
        // The family's kind matches `want`, so the series' handle has the wanted type.
        Some(fam.series.get_or_insert_with(&flat, || match want {
            Want::Counter => SeriesHandle::Counter(Counter::new()),
            Want::Gauge => SeriesHandle::Gauge(Gauge::new()),
            Want::Histogram => SeriesHandle::Histogram(Histogram::new(fam.spec)),
        }))
    }

    /// Records the metrics of one recognised LLM exchange.
    pub fn record_exchange(&self, rec: &ExchangeRecord) {
        let op = if rec.operation.is_empty() {
            rec.api.operation()
        } else {
            rec.operation.as_str()
        };
        let req = rec.request_model.as_deref().unwrap_or("");
        let resp = rec.response_model.as_deref().unwrap_or("");
        let base = [rec.listener.as_str(), op, rec.provider.as_str(), req, resp];
        let err = error_type(rec);
        let outcome = [
            base[0],
            base[1],
            base[2],
            base[3],
            base[4],
            status_class(rec.status),
            err.as_ref(),
        ];

        let record_outcome = |o: &OutcomeSeries| {
            o.duration.record(rec.duration_ms / 1e3);
            o.exchanges.inc();
        };
        let outcome_hit = self
            .outcomes
            .with(&outcome, |o| record_outcome(o))
            .is_some();
        let genai_hit = self.genai.with(&base, |s| record_genai(s, rec)).is_some();
        if !(outcome_hit && genai_hit) {
            // Cap once per exchange so an overflowing value is counted once.
            let key = self.capped_base(&base);
            if !outcome_hit {
                record_outcome(&self.outcome_series(&key, outcome[5], outcome[6]));
            }
            if !genai_hit {
                record_genai(&self.genai_series(&key), rec);
            }
        }

        if let Some(rl) = rec.rate_limit.as_ref() {
            let key = [base[2], req];
            if let Some(v) = rl.remaining_requests {
                self.rate_limit_gauge(
                    &self.rate_limit_requests,
                    &desc::RATE_LIMIT_REMAINING_REQUESTS,
                    &key,
                )
                .set(v as f64);
            }
            if let Some(v) = rl.remaining_tokens {
                self.rate_limit_gauge(
                    &self.rate_limit_tokens,
                    &desc::RATE_LIMIT_REMAINING_TOKENS,
                    &key,
                )
                .set(v as f64);
            }
        }
    }

    /// Counts one proxied request (`semtap.requests`), LLM or not. `api_operation` is the
    /// `gen_ai.operation.name` (`Api::operation()`, `http` for plain traffic); `status` 0 means
    /// no response was sent; `outcome` is `Outcome::as_str()`.
    pub fn record_request(
        &self,
        listener: &str,
        provider: &str,
        api_operation: &str,
        status: u16,
        outcome: &str,
    ) {
        let raw = [
            listener,
            provider,
            api_operation,
            status_class(status),
            outcome,
        ];
        if self.requests.with(&raw, Counter::inc).is_some() {
            return;
        }
        let key = [
            self.caps.listener.admit(raw[0]),
            self.caps.provider.admit(raw[1]),
            self.caps.operation.admit(raw[2]),
            raw[3],
            self.caps.outcome.admit(raw[4]),
        ];
        self.requests
            .get_or_insert_with(&key, || {
                self.counter(
                    desc::REQUESTS.name,
                    &[
                        (label::LISTENER, key[0]),
                        (label::PROVIDER, key[1]),
                        (label::OPERATION, key[2]),
                        (label::STATUS_CLASS, key[3]),
                        (label::OUTCOME, key[4]),
                    ],
                )
            })
            .inc();
    }

    /// The plain request-duration histogram (`semtap.request.duration`) of `listener`. The tap
    /// looks it up once per listener and records every request into it without a lookup.
    pub fn plain_duration_histogram(&self, listener: &str) -> Histogram {
        if let Some(h) = self.plain.with(&[listener], Histogram::clone) {
            return h;
        }
        let l = self.caps.listener.admit(listener);
        self.plain.get_or_insert_with(&[l], || {
            self.histogram(desc::REQUEST_DURATION.name, &[(label::LISTENER, l)])
        })
    }

    /// Records a request's duration as plain HTTP (`semtap.request.duration`), LLM call or not.
    pub fn observe_plain_duration(&self, listener: &str, secs: f64) {
        self.plain_duration_histogram(listener).record(secs);
    }

    fn rate_limit_gauge(&self, map: &SeriesMap<Gauge>, d: &MetricDesc, raw: &[&str; 2]) -> Gauge {
        if let Some(g) = map.with(raw, Gauge::clone) {
            return g;
        }
        // The exchange's own series already counted any overflow of these values.
        let key = [
            self.caps.provider.admit_uncounted(raw[0]),
            self.caps.request_model.admit_uncounted(raw[1]),
        ];
        map.get_or_insert_with(&key, || {
            self.gauge(
                d.name,
                &[(label::PROVIDER, key[0]), (label::REQUEST_MODEL, key[1])],
            )
        })
    }

    /// Finds or builds the series for capped base labels (slow path).
    fn genai_series(&self, key: &[&str; 5]) -> Arc<GenAiSeries> {
        self.genai.get_or_insert_with(key, || {
            let base = base_labels(key);
            let hist = |d: &MetricDesc, extra: &[(&str, &str)]| {
                self.histogram(d.name, &[&base[..], extra].concat())
            };
            let counter = |d: &MetricDesc, extra: &[(&str, &str)]| {
                self.counter(d.name, &[&base[..], extra].concat())
            };
            let latest = self.opts.latest_semconv;
            let (input_tokens, output_tokens, usage, ttfc, tpoc) = if latest {
                let modality = [(label::TOKEN_MODALITY, "unknown")];
                (
                    hist(&desc::INFERENCE_INPUT_TOKENS, &[]),
                    hist(&desc::INFERENCE_OUTPUT_TOKENS, &[]),
                    Some(UsageCounters {
                        input: counter(&desc::USAGE_INPUT_TOKENS, &modality),
                        output: counter(&desc::USAGE_OUTPUT_TOKENS, &modality),
                        cache_read: counter(&desc::USAGE_CACHE_READ_TOKENS, &modality),
                        reasoning: counter(&desc::USAGE_REASONING_TOKENS, &modality),
                    }),
                    hist(&desc::INFERENCE_TIME_TO_FIRST_CHUNK, &[]),
                    hist(&desc::INFERENCE_TIME_PER_OUTPUT_CHUNK, &[]),
                )
            } else {
                (
                    hist(&desc::TOKEN_USAGE, &[(label::TOKEN_TYPE, "input")]),
                    hist(&desc::TOKEN_USAGE, &[(label::TOKEN_TYPE, "output")]),
                    None,
                    hist(&desc::TIME_TO_FIRST_CHUNK, &[]),
                    hist(&desc::TIME_PER_OUTPUT_CHUNK, &[]),
                )
            };
            Arc::new(GenAiSeries {
                input_tokens,
                output_tokens,
                usage,
                time_to_first_chunk: ttfc,
                time_per_output_chunk: tpoc,
                time_to_first_token: hist(&desc::TIME_TO_FIRST_TOKEN, &[]),
                output_tokens_per_second: hist(&desc::OUTPUT_TOKENS_PER_SECOND, &[]),
                overhead: hist(&desc::OVERHEAD, &[]),
                parse_anomalies: counter(&desc::PARSE_ANOMALIES, &[]),
                capture_truncated: counter(&desc::CAPTURE_TRUNCATED, &[]),
                usage_estimated: counter(&desc::USAGE_ESTIMATED, &[]),
            })
        })
    }

    /// Slow path for [`OutcomeSeries`], from capped base labels.
    fn outcome_series(&self, b: &[&str; 5], class: &str, err: &str) -> Arc<OutcomeSeries> {
        let err = self.caps.error_type.admit(err);
        let key = [b[0], b[1], b[2], b[3], b[4], class, err];
        self.outcomes.get_or_insert_with(&key, || {
            let base = base_labels(b);
            let duration = if self.opts.latest_semconv && b[1] != "embeddings" {
                &desc::INFERENCE_DURATION
            } else {
                &desc::OPERATION_DURATION
            };
            let with_err = [&base[..], &[(label::ERROR_TYPE, err)]].concat();
            let with_class = [
                &base[..],
                &[(label::STATUS_CLASS, class), (label::ERROR_TYPE, err)],
            ]
            .concat();
            Arc::new(OutcomeSeries {
                duration: self.histogram(duration.name, &with_err),
                exchanges: self.counter(desc::EXCHANGES.name, &with_class),
            })
        })
    }

    fn capped_base<'a>(&self, raw: &[&'a str; 5]) -> [&'a str; 5] {
        [
            self.caps.listener.admit(raw[0]),
            self.caps.operation.admit(raw[1]),
            self.caps.provider.admit(raw[2]),
            self.caps.request_model.admit(raw[3]),
            self.caps.response_model.admit(raw[4]),
        ]
    }

    /// Every family and series, cumulative; the basis for Prometheus and OTLP export.
    pub fn snapshot(&self) -> Vec<MetricFamilySnapshot> {
        self.snapshot_detailed(false)
    }

    /// [`Metrics::snapshot`], with each histogram's full-resolution values when `values`.
    pub fn snapshot_detailed(&self, values: bool) -> Vec<MetricFamilySnapshot> {
        let families: Vec<Arc<Family>> = self.families.read().values().cloned().collect();
        let mut out = Vec::with_capacity(families.len());
        for fam in families {
            let entries = fam.series.entries();
            let hists: Vec<&Histogram> = entries
                .iter()
                .filter_map(|(_, h)| match h {
                    SeriesHandle::Histogram(h) => Some(h),
                    _ => None,
                })
                .collect();
            let mut snaps = Histogram::snapshot_many(&hists).into_iter();
            let mut series = Vec::with_capacity(entries.len());
            for (flat, h) in &entries {
                let value = match h {
                    SeriesHandle::Counter(c) => SeriesValue::Counter(c.get()),
                    SeriesHandle::Gauge(g) => SeriesValue::Gauge(g.get()),
                    SeriesHandle::Histogram(_) => match snaps.next() {
                        Some(s) if s.count() > 0 => {
                            let mut p = histogram_point(&s, &fam.boundaries);
                            if values {
                                p.values = s.values();
                            }
                            SeriesValue::Histogram(p)
                        }
                        _ => continue,
                    },
                };
                let labels = flat
                    .chunks_exact(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                series.push(SeriesSnapshot { labels, value });
            }
            if series.is_empty() {
                continue;
            }
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            out.push(MetricFamilySnapshot {
                name: fam.name.clone(),
                unit: fam.unit.clone(),
                description: fam.description.clone(),
                kind: fam.kind,
                series,
            });
        }
        out
    }

    /// Prometheus text exposition format 0.0.4, OTel names translated (see [`prometheus_name`]).
    pub fn render_prometheus(&self) -> String {
        prometheus::render(&self.snapshot())
    }

    /// Per-listener request counts and p50/p99 of exchange duration and TTFT, by listener name.
    pub fn summary(&self) -> Vec<ListenerSummary> {
        let mut by: BTreeMap<
            String,
            (
                ListenerSummary,
                Option<HistogramSnapshot>,
                Option<HistogramSnapshot>,
            ),
        > = BTreeMap::new();
        let entries = |name: &str| -> Vec<(Vec<String>, SeriesHandle)> {
            self.families
                .read()
                .get(name)
                .map(|f| f.series.entries())
                .unwrap_or_default()
        };
        for (flat, h) in entries(desc::REQUESTS.name) {
            if let (Some(l), SeriesHandle::Counter(c)) = (label_value(&flat, label::LISTENER), h) {
                by.entry(l.to_string()).or_default().0.requests += c.get();
            }
        }
        for (flat, h) in entries(desc::EXCHANGES.name) {
            if let (Some(l), SeriesHandle::Counter(c)) = (label_value(&flat, label::LISTENER), h) {
                by.entry(l.to_string()).or_default().0.exchanges += c.get();
            }
        }
        let mut merge_into = |names: &[&str], ttft: bool| {
            let mut listeners = Vec::new();
            let mut hists = Vec::new();
            for name in names {
                for (flat, h) in entries(name) {
                    if let (Some(l), SeriesHandle::Histogram(h)) =
                        (label_value(&flat, label::LISTENER), h)
                    {
                        listeners.push(l.to_string());
                        hists.push(h);
                    }
                }
            }
            let refs: Vec<&Histogram> = hists.iter().collect();
            for (l, snap) in listeners.into_iter().zip(Histogram::snapshot_many(&refs)) {
                let e = by.entry(l).or_default();
                let slot = if ttft { &mut e.2 } else { &mut e.1 };
                match slot {
                    Some(acc) => acc.merge(&snap),
                    None => *slot = Some(snap),
                }
            }
        };
        merge_into(
            &[desc::OPERATION_DURATION.name, desc::INFERENCE_DURATION.name],
            false,
        );
        merge_into(&[desc::TIME_TO_FIRST_TOKEN.name], true);
        by.into_iter()
            .map(|(listener, (mut s, dur, ttft))| {
                s.listener = listener;
                if let Some(d) = dur {
                    s.duration_p50_s = d.quantile(0.5);
                    s.duration_p99_s = d.quantile(0.99);
                }
                if let Some(t) = ttft {
                    s.ttft_p50_s = t.quantile(0.5);
                    s.ttft_p99_s = t.quantile(0.99);
                }
                s
            })
            .collect()
    }
}

/// Records the per-exchange values that do not depend on the outcome.
fn record_genai(s: &GenAiSeries, rec: &ExchangeRecord) {
    let u = &rec.usage;
    if let Some(n) = u.input_tokens {
        s.input_tokens.record(n as f64);
    }
    if let Some(n) = u.output_tokens {
        s.output_tokens.record(n as f64);
    }
    if let Some(c) = s.usage.as_ref() {
        c.input.add(u.input_tokens.unwrap_or(0));
        c.output.add(u.output_tokens.unwrap_or(0));
        c.cache_read.add(u.cached_input_tokens.unwrap_or(0));
        c.reasoning.add(u.reasoning_tokens.unwrap_or(0));
    }
    if rec.stream {
        if let Some(t) = rec.time_to_first_chunk_ms {
            s.time_to_first_chunk.record(t / 1e3);
        }
        if !rec.chunk_gaps_ms.is_empty() {
            s.time_per_output_chunk
                .record_all(rec.chunk_gaps_ms.iter().map(|&g| f64::from(g) / 1e3));
        }
    }
    if let Some(t) = rec.ttft_ms {
        s.time_to_first_token.record(t / 1e3);
    }
    if let Some(out) = u.output_tokens.filter(|&n| n > 0) {
        let generating_ms = if rec.stream {
            rec.duration_ms - rec.ttft_ms.or(rec.time_to_first_chunk_ms).unwrap_or(0.0)
        } else {
            rec.duration_ms
        };
        if generating_ms > 0.0 {
            s.output_tokens_per_second
                .record(out as f64 / (generating_ms / 1e3));
        }
    }
    s.overhead.record(rec.overhead_ms / 1e3);
    if rec.parse_anomaly.is_some() {
        s.parse_anomalies.inc();
    }
    if rec.capture_truncated {
        s.capture_truncated.inc();
    }
    if u.estimated {
        s.usage_estimated.inc();
    }
}

/// `error.type` for a record: the record's own, else the outcome name for transport failures,
/// else the HTTP status for error responses; empty on success.
fn error_type(rec: &ExchangeRecord) -> Cow<'_, str> {
    match rec.error_type.as_deref() {
        Some(e) if !e.is_empty() => Cow::Borrowed(e),
        _ if rec.outcome != Outcome::Complete => Cow::Borrowed(rec.outcome.as_str()),
        _ if rec.status >= 400 => Cow::Owned(rec.status.to_string()),
        _ => Cow::Borrowed(""),
    }
}

fn base_labels<'a>(key: &[&'a str; 5]) -> [(&'static str, &'a str); 5] {
    [
        (label::LISTENER, key[0]),
        (label::OPERATION, key[1]),
        (label::PROVIDER, key[2]),
        (label::REQUEST_MODEL, key[3]),
        (label::RESPONSE_MODEL, key[4]),
    ]
}

fn label_value<'a>(flat: &'a [String], key: &str) -> Option<&'a str> {
    flat.chunks_exact(2)
        .find(|kv| kv[0] == key)
        .map(|kv| kv[1].as_str())
}

fn histogram_point(s: &HistogramSnapshot, boundaries: &[f64]) -> HistogramPoint {
    HistogramPoint {
        count: s.count(),
        sum: s.sum(),
        min: s.min().unwrap_or(0.0),
        max: s.max().unwrap_or(0.0),
        boundaries: boundaries.to_vec(),
        cumulative_counts: s.cumulative_counts(boundaries),
        values: Vec::new(),
    }
}
