//! Anthropic Messages API bodies (`POST /v1/messages`), streamed and not.
//!
//! Like the OpenAI side, the whole-body form is read as `serde_json::Value` and the hot
//! `content_block_delta` events through a small borrowed struct.

use super::json::Value;
use serde::Deserialize;

use super::sse::SseEventRef;
use super::{
    append_capped, error_object_type, non_empty_str, u64_at, Acc, LNum, LStr, MAX_PROMPT_BYTES,
};
use crate::record::Usage;

// ---------------------------------------------------------------------------------------------
// Requests

/// The last user turn's text. User messages holding only `tool_result` blocks are the client
/// returning tool output, not a user turn, so they are skipped (the OpenAI shapes give tool
/// output its own `tool` role, so this keeps both providers' prompts comparable).
pub(crate) fn messages_prompt(v: &Value) -> Option<String> {
    let msgs = v.get("messages")?.as_array()?;
    for m in msgs.iter().rev() {
        if m.get("role").and_then(Value::as_str) != Some("user") {
            continue;
        }
        match m.get("content") {
            Some(Value::String(s)) => return Some(s.to_string()),
            Some(Value::Array(blocks)) => {
                let mut out = String::new();
                let mut tool_results = false;
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            if let Some(t) = b.get("text").and_then(Value::as_str) {
                                if !out.is_empty() {
                                    out.push('\n');
                                }
                                if !append_capped(&mut out, t, MAX_PROMPT_BYTES) {
                                    break;
                                }
                            }
                        }
                        Some("tool_result") => tool_results = true,
                        _ => {}
                    }
                }
                if !out.is_empty() {
                    return Some(out);
                }
                if !tool_results {
                    return None;
                }
            }
            _ => return None,
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Anthropic usage. `input_tokens` is reported as Anthropic counts it (excluding cache reads,
/// which go to `cached_input_tokens`).
fn apply_usage(u: &Value, usage: &mut Usage) {
    if let Some(n) = u64_at(u, &["input_tokens"]) {
        usage.input_tokens = Some(n);
    }
    if let Some(n) = u64_at(u, &["output_tokens"]) {
        usage.output_tokens = Some(n);
    }
    if let Some(n) = u64_at(u, &["cache_read_input_tokens"]) {
        usage.cached_input_tokens = Some(n);
    }
}

fn set_id_model(v: &Value, acc: &mut Acc) {
    if let Some(id) = v.get("id").and_then(non_empty_str) {
        acc.info.response_id = Some(id.to_owned());
    }
    if let Some(m) = v.get("model").and_then(non_empty_str) {
        acc.info.response_model = Some(m.to_owned());
    }
}

/// A whole `message` object: text blocks joined, `tool_use` blocks as tool calls (input
/// serialized to a JSON string), stop reason, usage.
pub(crate) fn messages_json(v: &Value, acc: &mut Acc) {
    set_id_model(v, acc);
    for b in v
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => acc.push_text(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let id = b.get("id").and_then(non_empty_str).map(str::to_owned);
                let name = b
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if let Some(i) = acc.add_tool_call(id, name) {
                    let args = b.get("input").map(Value::to_string).unwrap_or_default();
                    acc.push_args(i, &args);
                }
            }
            _ => {}
        }
    }
    if let Some(r) = v.get("stop_reason").and_then(non_empty_str) {
        acc.info.finish_reasons = vec![r.to_owned()];
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        apply_usage(u, &mut acc.info.usage);
    }
}

#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: LStr<'a>,
    #[serde(default)]
    index: LNum,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    content_block: Option<Value<'a>>,
    #[serde(borrow, default)]
    message: Option<Value<'a>>,
    #[serde(borrow, default)]
    usage: Option<Value<'a>>,
    #[serde(borrow, default)]
    error: Option<Value<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: LStr<'a>,
    #[serde(borrow, default)]
    text: LStr<'a>,
    #[serde(borrow, default)]
    partial_json: LStr<'a>,
    #[serde(borrow, default)]
    stop_reason: LStr<'a>,
}

#[derive(Debug)]
struct ToolBlock {
    index: Option<u64>,
    pos: usize,
    /// The `input` the block started with, used if no `input_json_delta` follows.
    initial_input: String,
}

/// Stream state for the Messages API.
#[derive(Debug, Default)]
pub(crate) struct MessagesStream {
    tools: Vec<ToolBlock>,
}

impl MessagesStream {
    pub(crate) fn on_event(&mut self, acc: &mut Acc, ev: &SseEventRef<'_>) {
        let data = ev.data.trim_ascii();
        if data.is_empty() {
            return;
        }
        let Some(e) = acc.parse_event::<StreamEvent<'_>>(data) else {
            return;
        };
        let sse_name = ev.event.map(String::from_utf8_lossy);
        let ty = e.ty.as_str().or(sse_name.as_deref()).unwrap_or("");
        match ty {
            "content_block_delta" => {
                let Some(d) = e.delta else { return };
                match d.ty.as_str() {
                    Some("text_delta") => {
                        if let Some(t) = d.text.non_empty() {
                            acc.push_text(t);
                            acc.content_at(ev.end_offset);
                        }
                    }
                    Some("input_json_delta") => {
                        let Some(b) = self.tools.iter().find(|b| b.index == e.index.0) else {
                            return;
                        };
                        if let Some(j) = d.partial_json.non_empty() {
                            acc.push_args(b.pos, j);
                            acc.content_at(ev.end_offset);
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta: not answer text.
                    _ => {}
                }
            }
            "content_block_start" => {
                let Some(block) = e.content_block.as_ref() else {
                    return;
                };
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let id = block.get("id").and_then(non_empty_str).map(str::to_owned);
                        let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                        let Some(pos) = acc.add_tool_call(id, name.to_owned()) else {
                            return;
                        };
                        let initial_input = block.get("input").map(Value::to_string);
                        self.tools.push(ToolBlock {
                            index: e.index.0,
                            pos,
                            initial_input: initial_input.unwrap_or_default(),
                        });
                        acc.content_at(ev.end_offset);
                    }
                    Some("text") => {
                        if let Some(t) = block.get("text").and_then(non_empty_str) {
                            acc.push_text(t);
                            acc.content_at(ev.end_offset);
                        }
                    }
                    _ => {}
                }
            }
            "message_start" => {
                if let Some(m) = e.message.as_ref() {
                    set_id_model(m, acc);
                    if let Some(u) = m.get("usage").filter(|u| u.is_object()) {
                        apply_usage(u, &mut acc.info.usage);
                    }
                }
            }
            "message_delta" => {
                if let Some(r) = e.delta.as_ref().and_then(|d| d.stop_reason.non_empty()) {
                    acc.info.finish_reasons = vec![r.to_owned()];
                }
                if let Some(u) = e.usage.as_ref().filter(|u| u.is_object()) {
                    apply_usage(u, &mut acc.info.usage);
                }
            }
            "message_stop" => acc.info.stream_complete = true,
            "error" => {
                let ty = e.error.as_ref().and_then(error_object_type);
                acc.info.error_type = ty.or_else(|| Some("error".to_owned()));
            }
            // ping, content_block_stop and future event types.
            _ => {}
        }
    }

    /// Tools whose arguments never streamed (or streamed only `partial_json: ""`) keep the
    /// `input` they started with, matching the whole-body form (`{}` for no arguments).
    pub(crate) fn finish(&mut self, acc: &mut Acc) {
        for b in &self.tools {
            let empty = acc
                .info
                .tool_calls
                .get(b.pos)
                .is_some_and(|t| t.arguments.is_empty());
            if empty && !b.initial_input.is_empty() {
                acc.push_args(b.pos, &b.initial_input);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{anomaly, parse_request, parse_response, ResponseStream};
    use crate::record::{Api, ToolCall, Usage};

    fn sse(events: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in events {
            out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
        }
        out
    }

    fn text_stream() -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":2}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"! How can I \"help\"?"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]
    }

    #[test]
    fn messages_stream_assembles_text_usage_stop_reason_and_completes() {
        let body = sse(&text_stream());
        let info = parse_response(Api::Messages, 200, &body, true);
        assert_eq!(info.text, "Hello! How can I \"help\"?");
        assert_eq!(
            info.response_id.as_deref(),
            Some("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY")
        );
        assert_eq!(
            info.response_model.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(info.finish_reasons, vec!["end_turn"]);
        assert_eq!(
            info.usage,
            Usage {
                input_tokens: Some(472),
                output_tokens: Some(15),
                cached_input_tokens: Some(2048),
                reasoning_tokens: None,
                estimated: false
            }
        );
        assert!(info.stream_complete);
        assert_eq!(info.anomaly, None);
        assert_eq!(info.content_event_ends.len(), 2);
        assert!(info.first_event_end.unwrap() < info.content_event_ends[0]);
    }

    #[test]
    fn messages_stream_in_random_chunks_matches_whole_body() {
        let body = sse(&text_stream());
        let whole = parse_response(Api::Messages, 200, &body, true);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..50 {
            let mut s = ResponseStream::new(Api::Messages);
            let mut pos = 0;
            while pos < body.len() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let end = (pos + 1 + (state % 40) as usize).min(body.len());
                s.push(&body[pos..end]);
                pos = end;
            }
            assert_eq!(s.finish(), whole);
        }
    }

    #[test]
    fn messages_stream_without_message_stop_is_not_complete() {
        let events = text_stream();
        let body = sse(&events[..5]);
        let info = parse_response(Api::Messages, 200, &body, true);
        assert!(!info.stream_complete);
        assert_eq!(info.text, "Hello! How can I \"help\"?");
        assert!(info.finish_reasons.is_empty());
    }

    #[test]
    fn messages_stream_tool_use_arguments_from_partial_json() {
        let body = sse(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"I need the weather tool."}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Okay, let me check."}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":2}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_02","name":"get_time","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":3}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        let info = parse_response(Api::Messages, 200, &body, true);
        assert_eq!(
            info.text, "Okay, let me check.",
            "thinking is not answer text"
        );
        assert_eq!(
            info.tool_calls,
            vec![
                ToolCall {
                    id: Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6".into()),
                    name: "get_weather".into(),
                    arguments: r#"{"location": "San Francisco, CA"}"#.into()
                },
                ToolCall {
                    id: Some("toolu_02".into()),
                    name: "get_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(info.finish_reasons, vec!["tool_use"]);
        assert_eq!(info.usage.output_tokens, Some(89));
        // text delta, tool start, two non-empty json deltas, second tool start.
        assert_eq!(info.content_event_ends.len(), 5);
    }

    #[test]
    fn messages_stream_overloaded_error_event_sets_error_type() {
        let mut events = text_stream();
        events.truncate(4);
        events.push((
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ));
        let info = parse_response(Api::Messages, 200, &sse(&events), true);
        assert_eq!(info.error_type.as_deref(), Some("overloaded_error"));
        assert!(!info.stream_complete);
        assert_eq!(info.text, "Hello");
    }

    #[test]
    fn messages_stream_non_json_data_is_anomaly_and_parsing_continues() {
        let mut events = text_stream();
        events.insert(3, ("content_block_delta", "{not json"));
        let info = parse_response(Api::Messages, 200, &sse(&events), true);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::SSE_DATA_NOT_JSON));
        assert!(info.stream_complete);
        assert_eq!(info.text, "Hello! How can I \"help\"?");
    }

    #[test]
    fn messages_stream_crlf_framing_parses_the_same() {
        let lf = sse(&text_stream());
        let crlf: Vec<u8> = String::from_utf8(lf.clone())
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes();
        let a = parse_response(Api::Messages, 200, &lf, true);
        let b = parse_response(Api::Messages, 200, &crlf, true);
        assert_eq!(a.text, b.text);
        assert_eq!(a.usage, b.usage);
        assert!(b.stream_complete);
        assert_eq!(
            b.first_event_end.map(|e| crlf[..e].ends_with(b"\r\n\r\n")),
            Some(true)
        );
    }

    const MESSAGE_JSON: &str = r#"{
      "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
      "type": "message",
      "role": "assistant",
      "model": "claude-sonnet-4-5-20250929",
      "content": [
        {"type": "thinking", "thinking": "Let me think.", "signature": "abc"},
        {"type": "text", "text": "I'll check the weather."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
      ],
      "stop_reason": "tool_use",
      "stop_sequence": null,
      "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1800}
    }"#;

    #[test]
    fn messages_json_reads_text_tool_use_stop_reason_usage() {
        let info = parse_response(Api::Messages, 200, MESSAGE_JSON.as_bytes(), false);
        assert_eq!(info.text, "I'll check the weather.");
        assert_eq!(
            info.response_id.as_deref(),
            Some("msg_01XFDUDYJgAACzvnptvVoYEL")
        );
        assert_eq!(
            info.response_model.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(info.tool_calls.len(), 1);
        assert_eq!(
            info.tool_calls[0].id.as_deref(),
            Some("toolu_01A09q90qw90lq917835lq9")
        );
        assert_eq!(info.tool_calls[0].name, "get_weather");
        let args: serde_json::Value = serde_json::from_str(&info.tool_calls[0].arguments).unwrap();
        assert_eq!(
            args,
            serde_json::json!({"location": "San Francisco, CA", "unit": "celsius"})
        );
        assert_eq!(info.finish_reasons, vec!["tool_use"]);
        assert_eq!(info.usage.input_tokens, Some(2095));
        assert_eq!(info.usage.output_tokens, Some(503));
        assert_eq!(info.usage.cached_input_tokens, Some(1800));
        assert!(info.content_event_ends.is_empty());
    }

    #[test]
    fn anthropic_529_overloaded_error_type() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
        let info = parse_response(Api::Messages, 529, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("overloaded_error"));
        assert_eq!(info.text, "");
        assert_eq!(info.anomaly, None);
    }

    #[test]
    fn anthropic_429_rate_limit_error_type() {
        let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 50,000 input tokens per minute."}}"#;
        let info = parse_response(Api::Messages, 429, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("rate_limit_error"));
    }

    #[test]
    fn request_messages_reads_params_and_last_user_text() {
        let body = r#"{
          "model": "claude-sonnet-4-5",
          "max_tokens": 1024,
          "system": "You are a helpful assistant.",
          "temperature": 0.7,
          "top_k": 40,
          "top_p": 0.95,
          "stop_sequences": ["\n\nHuman:"],
          "stream": true,
          "messages": [
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": "Hi, I'm Claude. How can I help you?"},
            {"role": "user", "content": [
              {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
              {"type": "text", "text": "Can you explain LLMs in plain English?"}
            ]}
          ]
        }"#;
        let r = parse_request(Api::Messages, body.as_bytes()).unwrap();
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
        assert!(r.stream);
        assert_eq!(r.params.max_tokens, Some(1024));
        assert_eq!(r.params.temperature, Some(0.7));
        assert_eq!(r.params.top_k, Some(40.0));
        assert_eq!(r.params.top_p, Some(0.95));
        assert_eq!(r.params.stop_sequences, vec!["\n\nHuman:"]);
        assert_eq!(
            r.prompt.as_deref(),
            Some("Can you explain LLMs in plain English?")
        );
    }

    #[test]
    fn request_messages_skips_tool_result_only_turns() {
        let body = r#"{
          "model": "claude-sonnet-4-5", "max_tokens": 512,
          "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, cloudy"}]}
          ]
        }"#;
        let r = parse_request(Api::Messages, body.as_bytes()).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("What's the weather in Paris?"));
    }
}
