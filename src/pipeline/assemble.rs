//! Turns a [`Capture`] into an [`ExchangeRecord`]: decompress the analysis copy (capped),
//! parse both bodies, map content events onto chunk arrival times, fill in usage.

use std::borrow::Cow;
use std::io::Read;

use crate::protocol::{self, ResponseInfo};
use crate::record::{Api, ExchangeRecord, Outcome, TraceParent, Usage};

use super::{Capture, CapturedBody};

/// Most per-chunk gaps kept in one record.
const MAX_GAPS: usize = 4096;

/// Builds the record for one capture. Never fails: what cannot be understood becomes
/// `parse_anomaly`. The capture's and the parsed answer's strings move into the record (this
/// runs for every analysed exchange).
pub fn assemble(mut c: Capture, decompressed_cap: usize) -> ExchangeRecord {
    let mut rec = ExchangeRecord {
        id: std::mem::take(&mut c.id),
        ts_ms: c.started_at_ms,
        end_ts_ms: c.started_at_ms + c.duration.as_millis() as u64,
        listener: c.listener.to_string(),
        provider: c.route.provider,
        api: c.route.api,
        operation: c.route.api.operation().to_string(),
        route: c.route_header.take(),
        method: std::mem::take(&mut c.method),
        path: std::mem::take(&mut c.path),
        server_address: Some(c.server_address.to_string()),
        server_port: Some(c.server_port),
        status: c.status,
        outcome: c.outcome,
        duration_ms: ms(c.duration),
        request_bytes: c.request.total,
        response_bytes: c.response.total,
        capture_truncated: c.request.truncated || c.response.truncated,
        rate_limit: c.rate_limit.take(),
        traceparent: c.traceparent.as_deref().and_then(parse_traceparent),
        ..Default::default()
    };
    if let Some(h) = c.upstream_headers_after {
        rec.upstream_ms = ms(h.saturating_sub(c.dispatch_after));
    }
    rec.overhead_ms = ms(c.dispatch_after + c.forward_overhead);

    let mut anomalies: Vec<String> = Vec::new();

    // Request.
    let (req_body, req_capped) = decode(
        &c.request,
        c.request_encoding.as_deref(),
        decompressed_cap,
        &mut anomalies,
    );
    if !req_body.is_empty() {
        match protocol::parse_request(c.route.api, &req_body) {
            Ok(info) => {
                rec.request_model = info.model;
                rec.stream = info.stream;
                rec.params = info.params;
                rec.prompt = info.prompt;
            }
            Err(e) => {
                if !c.request.truncated && !req_capped {
                    anomalies.push(format!("request: {e}"));
                }
            }
        }
    }
    if rec.request_model.is_none() {
        rec.request_model = c.route.azure_deployment.take();
    }

    // Response.
    let is_sse = c.response_content_type.as_deref().is_some_and(|t| {
        t.trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
    });
    if is_sse {
        rec.stream = true;
    }
    let (resp_body, resp_capped) = decode(
        &c.response,
        c.response_encoding.as_deref(),
        decompressed_cap,
        &mut anomalies,
    );
    let mut info: ResponseInfo = if c.status == 0 || (resp_body.is_empty() && c.response.total == 0)
    {
        ResponseInfo::default()
    } else {
        protocol::parse_response(c.route.api, c.status, &resp_body, is_sse)
    };
    if let Some(a) = &info.anomaly {
        // A body cut by the capture cap or by the upstream is expected to end badly.
        let cut = c.response.truncated || resp_capped || c.outcome != Outcome::Complete;
        if !cut {
            anomalies.push(a.clone());
        }
    }
    // A decompressed copy cut at `limits.decompressed_bytes` is a truncated capture too.
    rec.capture_truncated |= req_capped || resp_capped;
    rec.response_id = info.response_id.take();
    rec.response_model = info.response_model.take();
    rec.response = std::mem::take(&mut info.text);
    rec.tool_calls = std::mem::take(&mut info.tool_calls);
    rec.finish_reasons = std::mem::take(&mut info.finish_reasons);
    rec.usage = std::mem::take(&mut info.usage);

    // Timings from chunk arrival. Offsets are only meaningful on the uncompressed wire bytes.
    let identity = c
        .response_encoding
        .as_deref()
        .is_none_or(|e| e.eq_ignore_ascii_case("identity"));
    if rec.stream && identity {
        if let Some(first) = info.first_event_end {
            rec.time_to_first_chunk_ms = arrival_ms(&c.chunk_times, first as u64);
        }
        if let Some(&first_content) = info.content_event_ends.first() {
            rec.ttft_ms = arrival_ms(&c.chunk_times, first_content as u64);
        }
        let gaps = content_chunk_gaps(&c.chunk_times, &info.content_event_ends);
        if !gaps.is_empty() {
            let mean = gaps.iter().map(|&g| g as f64).sum::<f64>() / gaps.len() as f64;
            rec.time_per_output_chunk_ms = Some(mean);
        }
        rec.chunk_gaps_ms = gaps;
    } else if rec.stream {
        // Compressed stream: the first wire chunk is the best we know.
        if let Some(&(_, at)) = c.chunk_times.first() {
            rec.time_to_first_chunk_ms = Some(at as f64 / 1000.0);
            rec.ttft_ms = rec.time_to_first_chunk_ms;
        }
    }

    // Errors.
    rec.error_type = if c.status >= 400 {
        Some(
            info.error_type
                .take()
                .unwrap_or_else(|| c.status.to_string()),
        )
    } else if c.outcome != Outcome::Complete {
        Some(c.error_detail.unwrap_or(c.outcome.as_str()).to_string())
    } else if let Some(e) = info.error_type.take() {
        Some(e)
    } else if rec.stream
        && is_sse
        && !info.stream_complete
        && !c.response.truncated
        && c.status < 300
    {
        Some("stream_incomplete".to_string())
    } else {
        None
    };
    if c.outcome == Outcome::StreamInterrupted
        && !rec.finish_reasons.iter().any(|f| f == "stream_interrupted")
    {
        // Downstream detectors treat a cut stream as truncated.
        rec.finish_reasons.push("stream_interrupted".to_string());
    }

    // Usage: count output tokens when the upstream did not.
    if c.status < 300
        && rec.api != Api::Embeddings
        && rec.api != Api::Other
        && rec.usage.output_tokens.is_none()
    {
        let mut n = estimate_tokens(&rec.response);
        for t in &rec.tool_calls {
            n += estimate_tokens(&t.name) + estimate_tokens(&t.arguments);
        }
        if n > 0 || c.outcome == Outcome::Complete {
            rec.usage = Usage {
                output_tokens: Some(n),
                estimated: true,
                ..rec.usage
            };
        }
    }

    if !anomalies.is_empty() {
        rec.parse_anomaly = Some(anomalies.join("; "));
    }
    rec
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// When the chunk holding byte `offset - 1` arrived.
fn arrival_ms(times: &[(u64, u64)], offset: u64) -> Option<f64> {
    let i = times.partition_point(|&(end, _)| end < offset);
    times.get(i).map(|&(_, at)| at as f64 / 1000.0)
}

/// Gaps between consecutive network chunks that carried content, after the first.
fn content_chunk_gaps(times: &[(u64, u64)], content_ends: &[usize]) -> Vec<f32> {
    let mut gaps = Vec::new();
    let mut last_chunk: Option<usize> = None;
    for &end in content_ends {
        let i = times.partition_point(|&(e, _)| e < end as u64);
        if i >= times.len() {
            break;
        }
        if let Some(prev) = last_chunk {
            if i != prev {
                let g = times[i].1.saturating_sub(times[prev].1) as f32 / 1000.0;
                if gaps.len() < MAX_GAPS {
                    gaps.push(g);
                }
            }
        }
        last_chunk = Some(i);
    }
    gaps
}

/// The analysis copy of a body, decompressed up to `cap` bytes, and whether the cap cut it
/// (a gzip bomb, or an answer larger than the cap). A body that fails to decompress part-way
/// keeps what came out before the failure. An uncompressed body is borrowed as it is.
fn decode<'a>(
    body: &'a CapturedBody,
    encoding: Option<&str>,
    cap: usize,
    anomalies: &mut Vec<String>,
) -> (Cow<'a, [u8]>, bool) {
    let bytes = body.bytes.as_slice();
    let enc = match encoding.map(str::trim) {
        None | Some("") => return (Cow::Borrowed(bytes), false),
        Some(e) if e.eq_ignore_ascii_case("identity") => return (Cow::Borrowed(bytes), false),
        Some(e) => e.to_ascii_lowercase(),
    };
    let reader: Box<dyn Read> = match enc.as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        "deflate" => {
            // RFC 9110 deflate is zlib-wrapped; some servers send raw deflate.
            if bytes.len() >= 2
                && (u16::from(bytes[0]) << 8 | u16::from(bytes[1])) % 31 == 0
                && bytes[0] & 0x0f == 8
            {
                Box::new(flate2::read::ZlibDecoder::new(bytes))
            } else {
                Box::new(flate2::read::DeflateDecoder::new(bytes))
            }
        }
        "br" => Box::new(brotli::Decompressor::new(bytes, 4096)),
        other => {
            anomalies.push(format!("unsupported content-encoding `{other}`"));
            return (Cow::Borrowed(&[]), false);
        }
    };
    let mut out = Vec::new();
    let mut limited = reader.take(cap as u64);
    let mut buf = [0u8; 8192];
    loop {
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                if !body.truncated {
                    anomalies.push(format!("decompression failed: {e}"));
                }
                break;
            }
        }
    }
    // At the cap, one more byte from the decoder says whether the body went on.
    let capped = out.len() as u64 == cap as u64
        && matches!(limited.into_inner().read(&mut [0u8; 1]), Ok(n) if n > 0);
    (Cow::Owned(out), capped)
}

/// W3C `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
pub fn parse_traceparent(v: &str) -> Option<TraceParent> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hex(version, 2)
        || version == "ff"
        || !hex(trace_id, 32)
        || !hex(parent, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id: trace_id.to_string(),
        parent_span_id: parent.to_string(),
        sampled: flags & 1 == 1,
    })
}

/// Estimated BPE token count for text the upstream gave no usage for: one token per common
/// word (up to 6 characters), longer words split about every five characters, one per
/// punctuation mark. A rough English-prose heuristic (not measured against a real tokenizer;
/// scripts without spaces count low); records using it are marked `estimated`.
pub fn estimate_tokens(text: &str) -> u64 {
    let mut n = 0u64;
    let mut word_len = 0usize;
    let flush = |len: usize| {
        if len == 0 {
            0
        } else {
            if len <= 6 {
                1
            } else {
                len.div_ceil(5) as u64
            }
        }
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // ASCII (most of any answer) by byte; other characters decoded one at a time.
        let (alnum, space) = if b < 0x80 {
            i += 1;
            (b.is_ascii_alphanumeric(), b.is_ascii_whitespace())
        } else {
            let Some(ch) = text[i..].chars().next() else {
                break;
            };
            i += ch.len_utf8();
            (ch.is_alphanumeric(), ch.is_whitespace())
        };
        if alnum {
            word_len += 1;
        } else {
            n += flush(word_len);
            word_len = 0;
            if !space {
                n += 1;
            }
        }
    }
    n += flush(word_len);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_valid_and_invalid() {
        let tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(tp.as_ref().map(|t| t.sampled), Some(true));
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
        assert!(
            parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none()
        );
    }

    #[test]
    fn token_estimate_is_near_bpe_on_prose() {
        // "The quick brown fox jumps over the lazy dog." is 10 cl100k tokens.
        let n = estimate_tokens("The quick brown fox jumps over the lazy dog.");
        assert!((9..=12).contains(&n), "{n}");
        assert_eq!(estimate_tokens(""), 0);
    }

    #[test]
    fn token_estimate_counts_non_ascii_text_as_the_char_rule_says() {
        // The rule, char by char: runs of alphanumerics count 1 (≤ 6 chars) or len/5 rounded
        // up; every other non-space char counts 1.
        let by_chars = |text: &str| {
            let (mut n, mut run) = (0u64, 0usize);
            let flush = |len: usize| match len {
                0 => 0,
                1..=6 => 1,
                _ => len.div_ceil(5) as u64,
            };
            for ch in text.chars() {
                if ch.is_alphanumeric() {
                    run += 1;
                } else {
                    n += flush(run);
                    run = 0;
                    n += u64::from(!ch.is_whitespace());
                }
            }
            n + flush(run)
        };
        for t in [
            "Grüße aus München — größte Straße!",
            "日本語のテキストと English words, mixed.",
            "tab\tseparated\u{a0}no-break\u{2003}em-space ∑ x² ≤ 10",
            "\u{fffd}\u{fffd} broken \u{0}",
        ] {
            assert_eq!(estimate_tokens(t), by_chars(t), "{t}");
        }
    }

    #[test]
    fn arrival_maps_offsets_to_chunks() {
        let times = vec![(10, 1000), (25, 2000), (40, 5000)];
        assert_eq!(arrival_ms(&times, 5), Some(1.0));
        assert_eq!(arrival_ms(&times, 10), Some(1.0));
        assert_eq!(arrival_ms(&times, 11), Some(2.0));
        assert_eq!(arrival_ms(&times, 41), None);
        assert_eq!(content_chunk_gaps(&times, &[5, 8, 20, 40]), vec![1.0, 3.0]);
    }

    #[test]
    fn gzip_capture_decodes_and_garbage_is_an_anomaly() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(b"{\"hello\":\"world\"}");
        let gz = enc.finish().unwrap_or_default();
        let body = CapturedBody {
            bytes: gz,
            total: 0,
            truncated: false,
            _budget: Default::default(),
        };
        let mut an = Vec::new();
        assert_eq!(
            &*decode(&body, Some("gzip"), 1 << 20, &mut an).0,
            b"{\"hello\":\"world\"}"
        );
        assert!(an.is_empty());
        // An uncompressed body is read where it lies, whatever the case of `identity`.
        for enc in [None, Some(""), Some(" Identity ")] {
            let (out, capped) = decode(&body, enc, 1 << 20, &mut an);
            assert!(matches!(out, Cow::Borrowed(b) if b == body.bytes.as_slice()));
            assert!(!capped);
        }
        assert!(an.is_empty());
        let bad = CapturedBody {
            bytes: b"not gzip".to_vec(),
            total: 8,
            truncated: false,
            _budget: Default::default(),
        };
        let (out, capped) = decode(&bad, Some("gzip"), 1 << 20, &mut an);
        assert!(out.is_empty());
        assert!(!capped);
        assert_eq!(an.len(), 1);
    }

    #[test]
    fn decompression_is_capped() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let _ = enc.write_all(&vec![b'a'; 10 << 20]);
        let gz = enc.finish().unwrap_or_default();
        let body = CapturedBody {
            bytes: gz,
            total: 0,
            truncated: false,
            _budget: Default::default(),
        };
        let (out, capped) = decode(&body, Some("gzip"), 1 << 20, &mut Vec::new());
        assert_eq!(out.len(), 1 << 20);
        assert!(capped, "cut at the cap");
        let (out, capped) = decode(&body, Some("gzip"), 10 << 20, &mut Vec::new());
        assert_eq!(out.len(), 10 << 20);
        assert!(!capped, "exactly the cap is not cut");
    }
}
