//! The properties the fuzz targets check, one function per target. Shared with
//! `tests/mutations.rs`, which runs them on seeded mutations of the corpus on stable Rust.

use semtap::protocol::sse::{SseEvent, SseParser};
use semtap::protocol::{parse_request, parse_response, ResponseStream};
use semtap::record::Api;

fn sse_parse(data: &[u8], cuts: &[usize], max: usize) -> (Vec<SseEvent>, bool) {
    let mut p = SseParser::new(max);
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let end = (at + c).min(data.len());
        p.push(&data[at..end], &mut out);
        at = end;
    }
    p.push(&data[at..], &mut out);
    let clean = p.finish(&mut out);
    (out, clean)
}

/// The SSE parser: no panic whatever the bytes, and splitting the input into pieces (sizes
/// taken from the input) does not change the events. The first byte picks the event size
/// cap, small so that oversized events are exercised too.
pub fn sse(input: &[u8]) {
    let Some((&cap, rest)) = input.split_first() else {
        return;
    };
    let max = 1 + usize::from(cap) * 16;
    let cuts: Vec<usize> = rest
        .iter()
        .take(16)
        .map(|b| usize::from(*b % 13) + 1)
        .collect();
    let whole = sse_parse(rest, &[], max);
    let split = sse_parse(rest, &cuts, max);
    assert_eq!(whole, split, "splitting changed the events");
}

const APIS: [Api; 6] = [
    Api::ChatCompletions,
    Api::Responses,
    Api::Completions,
    Api::Embeddings,
    Api::Messages,
    Api::Other,
];

/// The OpenAI and Anthropic body parsers: request bodies, whole responses (JSON and event
/// streams, 2xx and errors) and the incremental stream parser, which must agree with the
/// whole-body one. The first byte picks the API (and bit 7 an error status).
pub fn bodies(input: &[u8]) {
    let Some((&sel, body)) = input.split_first() else {
        return;
    };
    let api = APIS[usize::from(sel) % APIS.len()];
    let status = if sel & 0x80 != 0 { 529 } else { 200 };
    let _ = parse_request(api, body);
    let _ = parse_response(api, status, body, false);
    let whole = parse_response(api, 200, body, true);
    let mut stream = ResponseStream::new(api);
    for piece in body.chunks(usize::from(sel % 7) + 1) {
        stream.push(piece);
    }
    let streamed = stream.finish();
    // A body with no event is read as JSON by the whole-body parser (a mislabelled answer);
    // only streams are comparable.
    if streamed.anomaly.as_deref() != Some(semtap::protocol::anomaly::SSE_NO_EVENTS) {
        assert_eq!(
            whole.text, streamed.text,
            "streamed and whole parses differ"
        );
        assert_eq!(whole.finish_reasons, streamed.finish_reasons);
    }
}

/// The exchange-record reader (`semtap replay` input, capture files): every non-blank line is
/// either a record or a reported bad line.
pub fn record(input: &[u8]) {
    let (records, bad) = semtap::replay::read_records(input);
    let lines = input
        .split(|&b| b == b'\n')
        .filter(|l| !String::from_utf8_lossy(l).trim().is_empty())
        .count();
    assert_eq!(records.len() + bad.len(), lines);
}

/// The config loader: any text is a config or issues that each name a key.
pub fn config(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(e) = semtap::config::Config::from_toml(text, "fuzz.toml") {
        assert!(!e.issues.is_empty());
        for issue in &e.issues {
            assert!(!issue.key.is_empty(), "{issue}");
        }
    }
}
