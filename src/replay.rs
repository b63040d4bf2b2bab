//! `semtap replay`: the live engine on recorded traffic, in timestamp order.
//!
//! Input: JSON lines of exchange records (what `capture.file` writes) or minimal records with
//! only `id`, `ts_ms`, `response` and any of `provider`, `model`, `response_model`, `route`,
//! `listener`, `status`, `prompt`, `finish_reason`/`finish_reasons`, `latency_ms`, `ttft_ms`,
//! `input_tokens`, `output_tokens`, `error_type` (defaults in docs/exchange-record.md).
//! Output: one line per exchange and one per incident change.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde_json::{json, Map, Value};

use crate::record::{Api, ExchangeRecord, Outcome, Provider};
use crate::semantic::engine::Engine;

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// Reads records from JSON lines; malformed lines are reported and skipped.
pub fn read_records(input: impl BufRead) -> (Vec<ExchangeRecord>, Vec<BadLine>) {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in input.split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = match line {
            Ok(b) => b,
            Err(e) => {
                bad.push(BadLine {
                    line: line_no,
                    reason: format!("read error: {e}"),
                });
                break;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match parse_record(text) {
            Ok(r) => records.push(r),
            Err(reason) => bad.push(BadLine {
                line: line_no,
                reason,
            }),
        }
    }
    records.sort_by_key(|r| r.ts_ms);
    (records, bad)
}

/// Parses one line: a full exchange record or a minimal one.
pub fn parse_record(text: &str) -> Result<ExchangeRecord, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut m) = v else {
        return Err("not a JSON object".into());
    };
    if !m.get("id").is_some_and(|v| v.is_string() || v.is_number()) {
        return Err("missing `id`".into());
    }
    if let Some(Value::Number(n)) = m.get("id").cloned() {
        m.insert("id".into(), Value::String(n.to_string()));
    }
    if !m.get("ts_ms").is_some_and(Value::is_u64) {
        return Err("missing or invalid `ts_ms` (unix milliseconds)".into());
    }
    let has_api = m.contains_key("api");
    let has_status = m.contains_key("status");
    alias(&mut m, "latency_ms", "duration_ms");
    if let Some(f) = m.remove("finish_reason") {
        if !m.contains_key("finish_reasons") {
            let list = match f {
                Value::String(s) => vec![Value::String(s)],
                Value::Null => vec![],
                other => return Err(format!("`finish_reason` must be a string, got {other}")),
            };
            m.insert("finish_reasons".into(), Value::Array(list));
        }
    }
    let mut usage = match m.remove("usage") {
        Some(Value::Object(u)) => u,
        _ => Map::new(),
    };
    for k in ["input_tokens", "output_tokens"] {
        if let Some(v) = m.remove(k) {
            usage.insert(k.into(), v);
        }
    }
    m.insert("usage".into(), Value::Object(usage));
    if let Some(Value::String(p)) = m.get("provider") {
        if Provider::parse(p).is_none() {
            return Err(format!("unknown provider `{p}`"));
        }
        let canonical = Provider::parse(p).map(|p| p.as_str()).unwrap_or("unknown");
        m.insert("provider".into(), Value::String(canonical.into()));
    }
    let mut rec: ExchangeRecord =
        serde_json::from_value(Value::Object(m)).map_err(|e| format!("invalid record: {e}"))?;
    if rec.listener.is_empty() {
        rec.listener = "replay".into();
    }
    if rec.provider == Provider::Unknown {
        rec.provider = Provider::OpenAi;
    }
    if !has_api {
        rec.api = if rec.provider == Provider::Anthropic {
            Api::Messages
        } else {
            Api::ChatCompletions
        };
    }
    if rec.operation.is_empty() {
        rec.operation = rec.api.operation().to_string();
    }
    if !has_status {
        rec.status = 200;
    }
    if rec.end_ts_ms == 0 {
        rec.end_ts_ms = rec.ts_ms.saturating_add(rec.duration_ms.max(0.0) as u64);
    }
    if rec.ttft_ms.is_some() {
        rec.stream = true;
    }
    match rec.error_type.as_deref() {
        Some("stream_interrupted") | Some("upstream_body_error") | Some("idle_timeout") => {
            rec.outcome = Outcome::StreamInterrupted
        }
        Some("timeout") | Some("upstream_timeout") => rec.outcome = Outcome::UpstreamTimeout,
        Some("upstream_unreachable") => rec.outcome = Outcome::UpstreamUnreachable,
        _ => {}
    }
    Ok(rec)
}

fn alias(m: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(v) = m.remove(from) {
        m.entry(to.to_string()).or_insert(v);
    }
}

/// What a replay found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub records: usize,
    pub malformed_lines: usize,
    pub flags: BTreeMap<String, u64>,
    pub incidents_opened: BTreeMap<String, u64>,
    pub incidents_resolved: BTreeMap<String, u64>,
    pub tier: String,
}

/// Runs `engine` over `records`, writing exchange and incident lines to `out`.
pub fn run(
    engine: &mut Engine,
    records: &[ExchangeRecord],
    out: &mut dyn Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary {
        records: records.len(),
        tier: engine.tier().unwrap_or("none").to_string(),
        ..Default::default()
    };
    for chunk in records.chunks(PREFETCH) {
        // Answers and prompts of the next records, embedded together in length-sorted batches.
        let texts: Vec<&str> = chunk
            .iter()
            .flat_map(|r| std::iter::once(r.response.as_str()).chain(r.prompt.as_deref()))
            .filter(|t| !t.trim().is_empty())
            .collect();
        engine.prefetch(&texts);
        for rec in chunk {
            write_one(engine, rec, out, &mut summary)?;
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Records whose texts are embedded together before they are analysed one by one.
const PREFETCH: usize = 256;

fn write_one(
    engine: &mut Engine,
    rec: &ExchangeRecord,
    out: &mut dyn Write,
    summary: &mut Summary,
) -> std::io::Result<()> {
    {
        let (a, events) = engine.process(rec);
        for f in &a.flags {
            *summary.flags.entry((*f).to_string()).or_default() += 1;
        }
        let line = json!({"type": "exchange", "id": a.id, "key": a.key, "flags": a.flags, "scores": a.scores});
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        for ev in events {
            let i = &ev.incident;
            let bucket = if ev.state == "opened" {
                &mut summary.incidents_opened
            } else {
                &mut summary.incidents_resolved
            };
            *bucket.entry(i.kind.as_str().to_string()).or_default() += 1;
            let line = json!({
                "type": "incident", "state": ev.state, "kind": i.kind, "key": i.key,
                "ts_ms": ev.ts_ms, "exchange_id": ev.exchange_id, "incident_id": i.id,
                "severity": i.severity, "evidence": i.evidence,
            });
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_time_near_the_end_of_time_does_not_overflow() {
        // Found by `cargo fuzz run record`: ts_ms + latency overflowed (a panic in debug).
        let r = parse_record(
            r#"{"id":"a","ts_ms":18446744073709551615,"response":"x","latency_ms":300}"#,
        );
        assert_eq!(r.map(|r| r.end_ts_ms).ok(), Some(u64::MAX));
    }

    #[test]
    fn minimal_records_take_documented_defaults() {
        let r = parse_record(
            r#"{"id":"a","ts_ms":5,"response":"hi","finish_reason":"length","latency_ms":120,"output_tokens":7}"#,
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.listener, "replay");
        assert_eq!(r.provider, Provider::OpenAi);
        assert_eq!(r.api, Api::ChatCompletions);
        assert_eq!(r.status, 200);
        assert_eq!(r.finish_reasons, vec!["length".to_string()]);
        assert_eq!(r.duration_ms, 120.0);
        assert_eq!(r.usage.output_tokens, Some(7));
        assert_eq!(r.end_ts_ms, 125);
    }

    #[test]
    fn malformed_lines_are_reported_with_their_numbers_and_skipped() {
        let input = b"{\"id\":\"a\",\"ts_ms\":2,\"response\":\"x\"}\nnot json\n\n{\"ts_ms\":1}\n{\"id\":\"b\",\"ts_ms\":1,\"response\":\"y\",\"provider\":\"anthropic\"}\n\xff\xfe\n";
        let (recs, bad) = read_records(&input[..]);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].id, "b", "sorted by timestamp");
        assert_eq!(recs[0].api, Api::Messages);
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 4, 6]);
    }

    #[test]
    fn full_records_round_trip() {
        let rec = ExchangeRecord {
            id: "z".into(),
            ts_ms: 9,
            listener: "l".into(),
            provider: Provider::Anthropic,
            api: Api::Messages,
            status: 200,
            response: "hello".into(),
            ..Default::default()
        };
        let line = serde_json::to_string(&rec).unwrap_or_default();
        let back = parse_record(&line).unwrap_or_default();
        assert_eq!(back.listener, "l");
        assert_eq!(back.provider, Provider::Anthropic);
        assert_eq!(back.response, "hello");
    }
}
