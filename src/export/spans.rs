//! One CLIENT span per exchange, with the GenAI semantic-convention attributes and semtap's
//! own verdicts. Built after the exchange ended (from the record, with explicit times and
//! ids), so the span never waits on anything but tier-1 analysis.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::record::{exchange_ids, ExchangeRecord};
use crate::semantic::engine::Analysis;

/// The span's trace and span ids, and its parent when the app sent a `traceparent`.
pub struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub sampled: bool,
}

/// Ids for `record`'s span (see [`exchange_ids`]).
pub fn span_ids(record: &ExchangeRecord) -> SpanIds {
    let (trace, span) = exchange_ids(&record.id, record.traceparent.as_ref());
    let trace_id = TraceId::from_hex(&trace).unwrap_or(TraceId::INVALID);
    let span_id = SpanId::from_hex(&span).unwrap_or(SpanId::INVALID);
    let (parent, sampled) = match &record.traceparent {
        Some(tp) => (SpanId::from_hex(&tp.parent_span_id).ok(), tp.sampled),
        None => (None, true),
    };
    SpanIds {
        trace_id,
        span_id,
        parent,
        sampled,
    }
}

/// What goes on spans besides the always-present attributes.
#[derive(Debug, Clone, Copy)]
pub struct SpanOptions {
    pub capture_content: bool,
    pub content_max_bytes: usize,
}

fn at_ms(ms: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros((ms.max(0.0) * 1000.0) as u64)
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(
        v.iter().map(|s| StringValue::from(s.clone())).collect(),
    ))
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The span for one exchange. `analysis` is `None` when the semantic engine is off.
pub fn build(
    record: &ExchangeRecord,
    analysis: Option<&Analysis>,
    opts: SpanOptions,
    scope: &InstrumentationScope,
) -> SpanData {
    let ids = span_ids(record);
    let model = record.request_model.as_deref().unwrap_or("");
    let name = if model.is_empty() {
        record.operation.clone()
    } else {
        format!("{} {}", record.operation, model)
    };
    let mut a: Vec<KeyValue> = Vec::with_capacity(40);
    a.push(KeyValue::new(
        "gen_ai.operation.name",
        record.operation.clone(),
    ));
    a.push(KeyValue::new(
        "gen_ai.provider.name",
        record.provider.as_str(),
    ));
    if let Some(m) = &record.request_model {
        a.push(KeyValue::new("gen_ai.request.model", m.clone()));
    }
    if let Some(m) = &record.response_model {
        a.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    if let Some(id) = &record.response_id {
        a.push(KeyValue::new("gen_ai.response.id", id.clone()));
    }
    if !record.finish_reasons.is_empty() {
        a.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            strings(&record.finish_reasons),
        ));
    }
    let u = &record.usage;
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(t) = u.input_tokens {
        a.push(KeyValue::new("gen_ai.usage.input_tokens", int(t)));
    }
    if let Some(t) = u.output_tokens {
        a.push(KeyValue::new("gen_ai.usage.output_tokens", int(t)));
    }
    if let Some(t) = u.cached_input_tokens {
        a.push(KeyValue::new(
            "gen_ai.usage.cache_read.input_tokens",
            int(t),
        ));
    }
    if let Some(t) = u.reasoning_tokens {
        a.push(KeyValue::new(
            "gen_ai.usage.reasoning.output_tokens",
            int(t),
        ));
    }
    let p = &record.params;
    if let Some(v) = p.max_tokens {
        a.push(KeyValue::new("gen_ai.request.max_tokens", int(v)));
    }
    for (k, v) in [
        ("gen_ai.request.temperature", p.temperature),
        ("gen_ai.request.top_p", p.top_p),
        ("gen_ai.request.top_k", p.top_k),
        ("gen_ai.request.frequency_penalty", p.frequency_penalty),
        ("gen_ai.request.presence_penalty", p.presence_penalty),
    ] {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v));
        }
    }
    if !p.stop_sequences.is_empty() {
        a.push(KeyValue::new(
            "gen_ai.request.stop_sequences",
            strings(&p.stop_sequences),
        ));
    }
    if let Some(s) = p.seed {
        a.push(KeyValue::new("gen_ai.request.seed", s));
    }
    if let Some(n) = p.choice_count {
        a.push(KeyValue::new("gen_ai.request.choice.count", int(n)));
    }
    if let Some(h) = &record.server_address {
        a.push(KeyValue::new("server.address", h.clone()));
    }
    if let Some(port) = record.server_port {
        a.push(KeyValue::new("server.port", i64::from(port)));
    }
    if record.status != 0 {
        a.push(KeyValue::new(
            "http.response.status_code",
            i64::from(record.status),
        ));
    }
    if let Some(e) = &record.error_type {
        a.push(KeyValue::new("error.type", e.clone()));
    }
    if let Some(t) = record.time_to_first_chunk_ms {
        a.push(KeyValue::new(
            "gen_ai.response.time_to_first_chunk",
            t / 1000.0,
        ));
    }
    a.push(KeyValue::new("gen_ai.request.stream", record.stream));
    // semtap's own.
    a.push(KeyValue::new("semtap.exchange.id", record.id.clone()));
    a.push(KeyValue::new("semtap.listener", record.listener.clone()));
    a.push(KeyValue::new("semtap.outcome", record.outcome.as_str()));
    a.push(KeyValue::new("semtap.overhead_ms", record.overhead_ms));
    a.push(KeyValue::new("semtap.usage.estimated", u.estimated));
    if let Some(t) = record.ttft_ms {
        a.push(KeyValue::new("semtap.time_to_first_token_ms", t));
    }
    if let Some(anom) = &record.parse_anomaly {
        a.push(KeyValue::new("semtap.parse_anomaly", anom.clone()));
    }
    if record.capture_truncated {
        a.push(KeyValue::new("semtap.capture_truncated", true));
    }
    let end = at_ms(record.ts_ms as f64 + record.duration_ms);
    let mut events = Vec::new();
    if let Some(an) = analysis {
        a.push(KeyValue::new("semtap.baseline.key", an.key.clone()));
        a.push(KeyValue::new(
            "semtap.flags",
            Value::Array(Array::String(
                an.flags.iter().map(|f| StringValue::from(*f)).collect(),
            )),
        ));
        for (flag, score) in &an.scores {
            a.push(KeyValue::new(format!("semtap.score.{flag}"), *score));
        }
        a.push(KeyValue::new("semtap.drift", an.drift));
        if an.warming_up {
            a.push(KeyValue::new("semtap.baseline.warming_up", true));
        }
        for flag in &an.flags {
            let mut attrs = vec![KeyValue::new("semtap.flag", *flag)];
            if let Some(s) = an.scores.get(flag) {
                attrs.push(KeyValue::new("semtap.score", *s));
            }
            if let Some(t) = an.thresholds.get(flag) {
                attrs.push(KeyValue::new("semtap.threshold", *t));
            }
            events.push(Event::new(format!("semtap.flag.{flag}"), end, attrs, 0));
        }
    }
    if opts.capture_content {
        let max = opts.content_max_bytes;
        if let Some(prompt) = &record.prompt {
            let msgs = serde_json::json!([{
                "role": "user",
                "parts": [{"type": "text", "content": cap(prompt, max)}],
            }]);
            a.push(KeyValue::new("gen_ai.input.messages", msgs.to_string()));
        }
        if !record.response.is_empty() || !record.tool_calls.is_empty() {
            let mut parts = Vec::new();
            if !record.response.is_empty() {
                parts.push(
                    serde_json::json!({"type": "text", "content": cap(&record.response, max)}),
                );
            }
            for t in &record.tool_calls {
                parts.push(serde_json::json!({
                    "type": "tool_call", "id": t.id, "name": t.name,
                    "arguments": cap(&t.arguments, max),
                }));
            }
            let msgs = serde_json::json!([{
                "role": "assistant",
                "parts": parts,
                "finish_reason": record.finish_reasons.first(),
            }]);
            a.push(KeyValue::new("gen_ai.output.messages", msgs.to_string()));
        }
    }

    let status = match &record.error_type {
        Some(e) => Status::error(e.clone()),
        None => Status::Unset,
    };
    let flags = if ids.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanData {
        span_context: SpanContext::new(ids.trace_id, ids.span_id, flags, false, TraceState::NONE),
        parent_span_id: ids.parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: ids.parent.is_some(),
        span_kind: SpanKind::Client,
        name: Cow::Owned(name),
        start_time: at_ms(record.ts_ms as f64),
        end_time: end,
        attributes: a,
        dropped_attributes_count: 0,
        events: {
            let mut e = SpanEvents::default();
            e.events = events;
            e
        },
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Provider, TraceParent};

    fn rec() -> ExchangeRecord {
        ExchangeRecord {
            id: "x1".into(),
            ts_ms: 1_700_000_000_000,
            operation: "chat".into(),
            provider: Provider::OpenAi,
            request_model: Some("gpt-4o-mini".into()),
            prompt: Some("secret prompt".into()),
            response: "é".repeat(100),
            duration_ms: 250.0,
            status: 200,
            ..Default::default()
        }
    }

    fn attr<'a>(s: &'a SpanData, k: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| &kv.value)
    }

    #[test]
    fn span_is_named_operation_model_and_has_no_content_by_default() {
        let scope = InstrumentationScope::builder("semtap").build();
        let opts = SpanOptions {
            capture_content: false,
            content_max_bytes: 10,
        };
        let s = build(&rec(), None, opts, &scope);
        assert_eq!(s.name, "chat gpt-4o-mini");
        assert_eq!(s.span_kind, SpanKind::Client);
        assert!(attr(&s, "gen_ai.input.messages").is_none());
        assert!(attr(&s, "gen_ai.output.messages").is_none());
        assert_eq!(
            s.end_time.duration_since(s.start_time).unwrap(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn content_is_capped_on_char_boundaries_when_opted_in() {
        let scope = InstrumentationScope::builder("semtap").build();
        let opts = SpanOptions {
            capture_content: true,
            content_max_bytes: 11,
        };
        let s = build(&rec(), None, opts, &scope);
        let out = attr(&s, "gen_ai.output.messages").unwrap().as_str();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["parts"][0]["content"].as_str().unwrap(), "é".repeat(5));
    }

    #[test]
    fn traceparent_becomes_the_remote_parent() {
        let mut r = rec();
        r.traceparent = Some(TraceParent {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span_id: "00f067aa0ba902b7".into(),
            sampled: true,
        });
        let scope = InstrumentationScope::builder("semtap").build();
        let opts = SpanOptions {
            capture_content: false,
            content_max_bytes: 10,
        };
        let s = build(&r, None, opts, &scope);
        assert_eq!(
            s.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            s.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(s.parent_span_is_remote);
    }
}
