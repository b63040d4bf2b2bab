//! OTLP settings: the `[otlp]` section, the standard `OTEL_*` variables (which override the
//! file, as users of every other OpenTelemetry SDK expect) and `--otlp-endpoint` (which
//! overrides both). Resolved once at start into [`OtlpConfig`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigIssue;

/// Wire protocol for OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

/// Aggregation temporality of exported sums and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// How histograms go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistogramAggregation {
    /// The spec's explicit bucket boundaries (what the dashboards expect).
    Explicit,
    /// Base-2 exponential buckets, computed from the full-resolution hdrhistograms.
    Exponential,
}

/// One signal's destination.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalTarget {
    /// Full URL: for HTTP the signal path (`/v1/traces`, ...) is already appended.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Extra request headers (e.g. an API key for a hosted backend). Never logged.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Resolved OTLP settings. `None` signals are switched off.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub traces: Option<SignalTarget>,
    pub metrics: Option<SignalTarget>,
    pub logs: Option<SignalTarget>,
    pub service_name: String,
    /// From `OTEL_RESOURCE_ATTRIBUTES` and `[otlp.resource]`.
    pub resource_attributes: Vec<(String, String)>,
    pub metric_interval: Duration,
    pub temporality: Temporality,
    pub histograms: HistogramAggregation,
    /// Put prompt and answer text on spans (`gen_ai.input.messages`/`gen_ai.output.messages`).
    pub capture_content: bool,
    /// Cap on each content attribute, in bytes.
    pub content_max_bytes: usize,
    /// Spans and log records waiting for export; beyond it they are dropped and counted.
    pub queue_size: usize,
    /// Items per export request.
    pub batch_size: usize,
    /// Longest an item waits for a batch to fill.
    pub batch_delay: Duration,
}

/// The `[otlp]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOtlp {
    enabled: Option<bool>,
    endpoint: Option<String>,
    protocol: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    traces_endpoint: Option<String>,
    metrics_endpoint: Option<String>,
    logs_endpoint: Option<String>,
    traces: Option<bool>,
    metrics: Option<bool>,
    logs: Option<bool>,
    timeout_ms: Option<u64>,
    service_name: Option<String>,
    #[serde(default)]
    resource: BTreeMap<String, String>,
    metric_export_interval_ms: Option<u64>,
    temporality: Option<String>,
    histogram_aggregation: Option<String>,
    capture_content: Option<bool>,
    content_max_bytes: Option<usize>,
    queue_size: Option<usize>,
    batch_size: Option<usize>,
    batch_delay_ms: Option<u64>,
}

const ENV: &str = "<environment>";
const CLI: &str = "<command line>";

/// Where a resolved value came from, for error messages.
struct Src<'a> {
    file: &'a str,
}

/// Resolves the OTLP settings. `env` reads a variable (injected so tests need not touch the
/// process environment). Returns `Ok(None)` when no endpoint is configured anywhere.
pub fn resolve(
    file: &FileOtlp,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    flag_endpoint: Option<&str>,
) -> Result<Option<OtlpConfig>, Vec<ConfigIssue>> {
    let src = Src { file: source };
    let mut issues = Vec::new();
    let mut issue = |source: &str, key: &str, reason: String| {
        issues.push(ConfigIssue {
            source: source.to_string(),
            key: key.to_string(),
            reason,
        })
    };
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());

    if file.enabled == Some(false) && flag_endpoint.is_none() {
        return Ok(None);
    }
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }

    // Protocol: per-signal variables may differ; the general one and the file set the default.
    let parse_protocol = |text: &str| match text.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err("http/json is not supported; use grpc or http/protobuf".to_string()),
        other => Err(format!(
            "unknown protocol `{other}` (use grpc or http/protobuf)"
        )),
    };
    let mut protocol = Protocol::Grpc;
    if let Some(p) = &file.protocol {
        match parse_protocol(p) {
            Ok(p) => protocol = p,
            Err(r) => issue(src.file, "otlp.protocol", r),
        }
    }
    if let Some(p) = env("OTEL_EXPORTER_OTLP_PROTOCOL") {
        match parse_protocol(&p) {
            Ok(p) => protocol = p,
            Err(r) => issue(ENV, "OTEL_EXPORTER_OTLP_PROTOCOL", r),
        }
    }

    // Base endpoint: flag > env > file.
    let base: Option<(String, &str, String)> = if let Some(e) = flag_endpoint {
        Some((e.to_string(), CLI, "--otlp-endpoint".into()))
    } else if let Some(e) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some((e, ENV, "OTEL_EXPORTER_OTLP_ENDPOINT".into()))
    } else {
        file.endpoint
            .clone()
            .map(|e| (e, src.file, "otlp.endpoint".to_string()))
    };

    let file_headers: Vec<(String, String)> = file
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Err(r) = check_headers(&file_headers) {
        issue(src.file, "otlp.headers", r);
    }
    let mut headers = file_headers;
    if let Some(h) = env("OTEL_EXPORTER_OTLP_HEADERS") {
        match parse_kv_list(&h).and_then(|kv| check_headers(&kv).map(|_| kv)) {
            Ok(kv) => merge(&mut headers, kv),
            Err(r) => issue(ENV, "OTEL_EXPORTER_OTLP_HEADERS", r),
        }
    }

    let timeout = match env_ms(&env, "OTEL_EXPORTER_OTLP_TIMEOUT") {
        Some(Ok(t)) => t,
        Some(Err(r)) => {
            issue(ENV, "OTEL_EXPORTER_OTLP_TIMEOUT", r);
            Duration::from_secs(10)
        }
        None => Duration::from_millis(file.timeout_ms.unwrap_or(10_000).max(1)),
    };

    let mut signal = |name: &str,
                      path: &str,
                      file_endpoint: &Option<String>,
                      file_on: Option<bool>|
     -> Option<SignalTarget> {
        let upper = name.to_ascii_uppercase();
        if file_on == Some(false) {
            return None;
        }
        if env(&format!("OTEL_{upper}_EXPORTER")).is_some_and(|v| v.trim() == "none") {
            return None;
        }
        let mut proto = protocol;
        let pvar = format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL");
        if let Some(p) = env(&pvar) {
            match parse_protocol(&p) {
                Ok(p) => proto = p,
                Err(r) => issue(ENV, &pvar, r),
            }
        }
        // Per-signal endpoints are used as written; base endpoints get the signal path (HTTP).
        let evar = format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT");
        let (url, from, key, as_is) = if let Some(e) = env(&evar) {
            (e, ENV, evar.clone(), true)
        } else if let Some(e) = file_endpoint.clone().filter(|_| flag_endpoint.is_none()) {
            (e, src.file, format!("otlp.{name}_endpoint"), true)
        } else if let Some((e, from, key)) = base.clone() {
            (e, from, key, false)
        } else {
            return None;
        };
        let url = url.trim().to_string();
        if let Err(r) = crate::config::parse_http_url(&url) {
            issue(from, &key, r);
            return None;
        }
        let endpoint = if proto == Protocol::HttpProtobuf && !as_is {
            format!("{}/{}", url.trim_end_matches('/'), path)
        } else {
            url
        };
        let mut hs = headers.clone();
        let hvar = format!("OTEL_EXPORTER_OTLP_{upper}_HEADERS");
        if let Some(h) = env(&hvar) {
            match parse_kv_list(&h).and_then(|kv| check_headers(&kv).map(|_| kv)) {
                Ok(kv) => merge(&mut hs, kv),
                Err(r) => issue(ENV, &hvar, r),
            }
        }
        let tvar = format!("OTEL_EXPORTER_OTLP_{upper}_TIMEOUT");
        let timeout = match env_ms(&env, &tvar) {
            Some(Ok(t)) => t,
            Some(Err(r)) => {
                issue(ENV, &tvar, r);
                timeout
            }
            None => timeout,
        };
        Some(SignalTarget {
            endpoint,
            protocol: proto,
            headers: hs,
            timeout,
        })
    };
    let traces = signal("traces", "v1/traces", &file.traces_endpoint, file.traces);
    let metrics = signal(
        "metrics",
        "v1/metrics",
        &file.metrics_endpoint,
        file.metrics,
    );
    let logs = signal("logs", "v1/logs", &file.logs_endpoint, file.logs);

    let service_name = env("OTEL_SERVICE_NAME")
        .or_else(|| file.service_name.clone())
        .unwrap_or_else(|| "semtap".to_string());
    let mut resource_attributes: Vec<(String, String)> = file
        .resource
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(r) = env("OTEL_RESOURCE_ATTRIBUTES") {
        match parse_kv_list(&r) {
            Ok(kv) => merge(&mut resource_attributes, kv),
            Err(e) => issue(ENV, "OTEL_RESOURCE_ATTRIBUTES", e),
        }
    }

    let metric_interval = match env_ms(&env, "OTEL_METRIC_EXPORT_INTERVAL") {
        Some(Ok(t)) => t,
        Some(Err(r)) => {
            issue(ENV, "OTEL_METRIC_EXPORT_INTERVAL", r);
            Duration::from_secs(60)
        }
        None => match file.metric_export_interval_ms {
            Some(0) => {
                issue(
                    src.file,
                    "otlp.metric_export_interval_ms",
                    "must be positive".into(),
                );
                Duration::from_secs(60)
            }
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(60),
        },
    };

    let temporality = {
        let (text, from, key) = match env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
            Some(t) => (
                Some(t),
                ENV,
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            ),
            None => (file.temporality.clone(), src.file, "otlp.temporality"),
        };
        match text.as_deref().map(|t| t.trim().to_ascii_lowercase()) {
            None => Temporality::Cumulative,
            Some(t) if t == "cumulative" => Temporality::Cumulative,
            // `lowmemory` keeps sums cumulative in other SDKs; for semtap's pre-aggregated
            // data the difference does not matter, so it means delta here.
            Some(t) if t == "delta" || t == "lowmemory" => Temporality::Delta,
            Some(t) => {
                issue(
                    from,
                    key,
                    format!("unknown temporality `{t}` (use cumulative or delta)"),
                );
                Temporality::Cumulative
            }
        }
    };

    let histograms = {
        let (text, from, key) =
            match env("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION") {
                Some(t) => (
                    Some(t),
                    ENV,
                    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                ),
                None => (
                    file.histogram_aggregation.clone(),
                    src.file,
                    "otlp.histogram_aggregation",
                ),
            };
        match text.as_deref().map(str::trim) {
            None | Some("explicit_bucket_histogram") | Some("explicit") => {
                HistogramAggregation::Explicit
            }
            Some("base2_exponential_bucket_histogram") | Some("exponential") => {
                HistogramAggregation::Exponential
            }
            Some(t) => {
                issue(
                    from,
                    key,
                    format!(
                        "unknown histogram aggregation `{t}` (use explicit_bucket_histogram or base2_exponential_bucket_histogram)"
                    ),
                );
                HistogramAggregation::Explicit
            }
        }
    };

    let positive =
        |v: Option<usize>, default: usize, key: &str, issues: &mut Vec<ConfigIssue>| match v {
            Some(0) => {
                issues.push(ConfigIssue {
                    source: src.file.to_string(),
                    key: key.to_string(),
                    reason: "must be positive".into(),
                });
                default
            }
            Some(v) => v,
            None => default,
        };
    let queue_size = positive(file.queue_size, 4096, "otlp.queue_size", &mut issues);
    let batch_size = positive(file.batch_size, 512, "otlp.batch_size", &mut issues);
    let content_max_bytes = positive(
        file.content_max_bytes,
        16 * 1024,
        "otlp.content_max_bytes",
        &mut issues,
    );
    let capture_content = match env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT") {
        Some(v) => v.trim().eq_ignore_ascii_case("true"),
        None => file.capture_content.unwrap_or(false),
    };

    if !issues.is_empty() {
        return Err(issues);
    }
    if traces.is_none() && metrics.is_none() && logs.is_none() {
        return Ok(None);
    }
    Ok(Some(OtlpConfig {
        traces,
        metrics,
        logs,
        service_name,
        resource_attributes,
        metric_interval,
        temporality,
        histograms,
        capture_content,
        content_max_bytes,
        queue_size,
        batch_size: batch_size.min(queue_size),
        batch_delay: Duration::from_millis(file.batch_delay_ms.unwrap_or(1000).max(1)),
    }))
}

/// A positive number of milliseconds from variable `var`, if set.
fn env_ms(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<Result<Duration, String>> {
    let t = env(var)?;
    Some(match t.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(format!("`{t}` is not a positive number of milliseconds")),
    })
}

/// Header names and values must be sendable over HTTP and as gRPC metadata.
fn check_headers(kv: &[(String, String)]) -> Result<(), String> {
    for (k, v) in kv {
        if http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).is_err() {
            return Err(format!("`{k}` is not a valid header name"));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(format!(
                "the value of header `{k}` is not a valid header value"
            ));
        }
    }
    Ok(())
}

/// Parses the W3C-baggage-like `k=v,k2=v2` lists of `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES` (values percent-decoded).
pub fn parse_kv_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("`{part}` is not key=value"));
        };
        let k = crate::config::percent_decode(k.trim())?;
        if k.is_empty() {
            return Err(format!("`{part}` has an empty key"));
        }
        out.push((k, crate::config::percent_decode(v.trim())?));
    }
    Ok(out)
}

fn merge(into: &mut Vec<(String, String)>, more: Vec<(String, String)>) {
    for (k, v) in more {
        match into.iter_mut().find(|(ek, _)| ek.eq_ignore_ascii_case(&k)) {
            Some(slot) => slot.1 = v,
            None => into.push((k, v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn file(text: &str) -> FileOtlp {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn nothing_configured_means_off() {
        let r = resolve(&FileOtlp::default(), "f", &env_of(&[]), None).unwrap();
        assert!(r.is_none());
    }

    #[test]
    fn http_base_endpoint_gets_signal_paths_and_per_signal_is_used_as_is() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l:9/custom"),
        ]);
        let c = resolve(&FileOtlp::default(), "f", &env, None)
            .unwrap()
            .unwrap();
        assert_eq!(c.traces.unwrap().endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.metrics.unwrap().endpoint, "http://c:4318/v1/metrics");
        assert_eq!(c.logs.unwrap().endpoint, "http://l:9/custom");
    }

    #[test]
    fn env_overrides_file_and_flag_overrides_env() {
        let f = file("endpoint = \"http://file:4317\"\nservice_name = \"from-file\"");
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ]);
        let c = resolve(&f, "f", &env, None).unwrap().unwrap();
        assert_eq!(c.traces.as_ref().unwrap().endpoint, "http://env:4317");
        assert_eq!(c.service_name, "from-env");
        let c = resolve(&f, "f", &env, Some("http://flag:4317"))
            .unwrap()
            .unwrap();
        assert_eq!(c.traces.unwrap().endpoint, "http://flag:4317");
    }

    #[test]
    fn headers_and_resource_attributes_are_parsed_and_decoded() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x-team=ml"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=traces"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,team=ml",
            ),
        ]);
        let c = resolve(&FileOtlp::default(), "f", &env, None)
            .unwrap()
            .unwrap();
        let t = c.traces.unwrap();
        assert!(t.headers.contains(&("api-key".into(), "a b".into())));
        assert!(t.headers.contains(&("x-team".into(), "traces".into())));
        assert!(c
            .metrics
            .unwrap()
            .headers
            .contains(&("x-team".into(), "ml".into())));
        assert!(c
            .resource_attributes
            .contains(&("deployment.environment".into(), "prod".into())));
    }

    #[test]
    fn bad_values_name_their_key() {
        let f = file("endpoint = \"ftp://x\"\ntemporality = \"sideways\"");
        let errs = resolve(&f, "semtap.toml", &env_of(&[]), None).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"otlp.endpoint"), "{errs:?}");
        assert!(keys.contains(&"otlp.temporality"), "{errs:?}");
        assert!(errs.iter().all(|e| e.source == "semtap.toml"));
        let errs = resolve(
            &FileOtlp::default(),
            "f",
            &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")]),
            None,
        )
        .unwrap_err();
        assert_eq!(errs[0].key, "OTEL_EXPORTER_OTLP_ENDPOINT");
        assert_eq!(errs[0].source, "<environment>");
    }

    #[test]
    fn bad_headers_name_the_variable_that_sent_them_and_per_signal_timeouts_apply() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-ok=1,x-bad=a%0Ab"),
        ]);
        let errs = resolve(&FileOtlp::default(), "f", &env, None).unwrap_err();
        assert_eq!(errs[0].key, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "{errs:?}");
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "500"),
        ]);
        let c = resolve(&FileOtlp::default(), "f", &env, None)
            .unwrap()
            .unwrap();
        assert_eq!(c.traces.unwrap().timeout, Duration::from_millis(3000));
        assert_eq!(c.logs.unwrap().timeout, Duration::from_millis(500));
    }

    #[test]
    fn signals_can_be_switched_off_one_by_one() {
        let f = file("endpoint = \"http://c:4317\"\nlogs = false");
        let env = env_of(&[("OTEL_METRICS_EXPORTER", "none")]);
        let c = resolve(&f, "f", &env, None).unwrap().unwrap();
        assert!(c.traces.is_some() && c.metrics.is_none() && c.logs.is_none());
    }

    #[test]
    fn temporality_and_histogram_options_from_env() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                "base2_exponential_bucket_histogram",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ]);
        let c = resolve(&FileOtlp::default(), "f", &env, None)
            .unwrap()
            .unwrap();
        assert_eq!(c.temporality, Temporality::Delta);
        assert_eq!(c.histograms, HistogramAggregation::Exponential);
        assert_eq!(c.metric_interval, Duration::from_millis(500));
    }
}
