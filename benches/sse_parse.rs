//! SSE parsing throughput: the per-chunk cost the tap adds to every streamed LLM answer.
//!
//! Quick check: `cargo bench --bench sse_parse -- --test`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use semtap::protocol::sse::SseParser;
use semtap::protocol::{parse_response, ResponseStream, MAX_EVENT_BYTES};
use semtap::record::Api;

/// Words the synthetic answers are made of: mostly ASCII, some escapes and multi-byte text,
/// as real answers have.
const WORDS: &[&str] = &[
    " The",
    " capital",
    " of",
    " France",
    " is",
    " \\\"Paris\\\"",
    ".\\n",
    " It",
    " has",
    " about",
    " 2.1",
    " million",
    " résidents",
    " —",
    " 日本",
    " and",
    " many",
    " museums",
    ",",
    " e.g.",
];

/// A Chat Completions stream as OpenAI sends it with `include_usage`: role chunk, `chunks`
/// content deltas, finish chunk, usage chunk, `[DONE]`.
fn openai_chat_stream(chunks: usize) -> Vec<u8> {
    let head = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":"#;
    let mut out = String::new();
    out.push_str(&format!(
        "data: {head}{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ));
    for i in 0..chunks {
        let w = WORDS[i % WORDS.len()];
        out.push_str(&format!(
            "data: {head}{{\"content\":\"{w}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    out.push_str(&format!(
        "data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    out.push_str(r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":1117,"completion_tokens":500,"total_tokens":1617,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#);
    out.push_str("\n\ndata: [DONE]\n\n");
    out.into_bytes()
}

/// A Messages stream as Anthropic sends it: named events, `chunks` text deltas, pings.
fn anthropic_stream(chunks: usize) -> Vec<u8> {
    let mut out = String::new();
    out.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2048,\"output_tokens\":2}}}\n\n");
    out.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..chunks {
        if i % 100 == 0 {
            out.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
        }
        let w = WORDS[i % WORDS.len()];
        out.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{w}\"}}}}\n\n"
        ));
    }
    out.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    out.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":500}}\n\n");
    out.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    out.into_bytes()
}

fn sse_only(body: &[u8], chunk: usize) -> usize {
    let mut p = SseParser::new(MAX_EVENT_BYTES);
    let mut n = 0;
    for c in body.chunks(chunk) {
        p.push_with(c, |ev| n += ev.data.len());
    }
    p.finish_with(|ev| n += ev.data.len());
    n
}

fn incremental(api: Api, body: &[u8], chunk: usize) -> usize {
    let mut s = ResponseStream::new(api);
    for c in body.chunks(chunk) {
        s.push(c);
    }
    s.finish().text.len()
}

fn bench(c: &mut Criterion) {
    let openai = openai_chat_stream(500);
    let anthropic = anthropic_stream(500);
    assert!(parse_response(Api::ChatCompletions, 200, &openai, true).stream_complete);
    assert!(parse_response(Api::Messages, 200, &anthropic, true).stream_complete);

    let mut g = c.benchmark_group("sse_openai_chat_500");
    g.throughput(Throughput::Bytes(openai.len() as u64));
    g.bench_function("parse_response", |b| {
        b.iter(|| parse_response(Api::ChatCompletions, 200, black_box(&openai), true))
    });
    g.bench_function("response_stream_1400b_chunks", |b| {
        b.iter(|| incremental(Api::ChatCompletions, black_box(&openai), 1400))
    });
    g.bench_function("sse_parser_only", |b| {
        b.iter(|| sse_only(black_box(&openai), usize::MAX))
    });
    g.bench_function("sse_parser_only_64b_chunks", |b| {
        b.iter(|| sse_only(black_box(&openai), 64))
    });
    g.finish();

    let mut g = c.benchmark_group("sse_anthropic_500");
    g.throughput(Throughput::Bytes(anthropic.len() as u64));
    g.bench_function("parse_response", |b| {
        b.iter(|| parse_response(Api::Messages, 200, black_box(&anthropic), true))
    });
    g.bench_function("response_stream_1400b_chunks", |b| {
        b.iter(|| incremental(Api::Messages, black_box(&anthropic), 1400))
    });
    g.bench_function("sse_parser_only", |b| {
        b.iter(|| sse_only(black_box(&anthropic), usize::MAX))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
