//! Where request and response bodies are understood: route detection, the incremental SSE
//! parser, and the OpenAI / Anthropic body parsers. Everything here is pure (no I/O) and must
//! never panic on bad input: a body it cannot read yields a `parse_anomaly`, not an error path.

pub mod anthropic;
pub mod json;
pub mod openai;
pub mod sse;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use json::Value;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::record::{Api, Provider, RequestParams, ToolCall, Usage};

use self::sse::{SseEventRef, SseParser};

/// What a request path says about the call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    pub provider: Provider,
    pub api: Api,
    /// Azure OpenAI deployment name from `/openai/deployments/{name}/...`.
    pub azure_deployment: Option<String>,
}

/// What a request body says about the call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    pub model: Option<String>,
    pub stream: bool,
    pub params: RequestParams,
    /// Text of the last user turn.
    pub prompt: Option<String>,
}

/// What a response body says about the call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseInfo {
    pub response_id: Option<String>,
    pub response_model: Option<String>,
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reasons: Vec<String>,
    pub usage: Usage,
    /// Provider error type from an error envelope or an in-stream error event.
    pub error_type: Option<String>,
    /// For streams: the terminal event (`[DONE]`, `message_stop`, `response.completed`) was seen.
    pub stream_complete: bool,
    /// Byte offset just past the first SSE event of any kind.
    pub first_event_end: Option<usize>,
    /// Byte offsets just past each event that carried content (text or tool-call deltas), capped.
    pub content_event_ends: Vec<usize>,
    /// Why the body could not be fully understood.
    pub anomaly: Option<String>,
}

/// Largest single SSE event kept. Generous because Responses API terminal events repeat the
/// whole answer; anything larger is dropped and reported rather than buffered.
pub const MAX_EVENT_BYTES: usize = 4 << 20;
/// Cap on assembled answer text, and separately on all tool-call arguments together, so a
/// runaway stream cannot grow a record without bound.
pub const MAX_TEXT_BYTES: usize = 4 << 20;
/// Cap on the extracted prompt text.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
/// Cap on `content_event_ends`: enough for any real answer, bounded for a hostile one.
pub const MAX_CONTENT_EVENTS: usize = 100_000;
/// Cap on tool calls and choices tracked per response.
pub(crate) const MAX_TOOL_CALLS: usize = 1024;
pub(crate) const MAX_CHOICES: usize = 128;

/// Stable `parse_anomaly` reasons (they end up as metric labels, so no free text).
pub mod anomaly {
    /// A 2xx body that should be JSON is not.
    pub const INVALID_JSON: &str = "invalid_json";
    /// A 2xx JSON body of an unexpected shape (not an object).
    pub const UNEXPECTED_JSON: &str = "unexpected_json_shape";
    /// A 2xx body that is empty.
    pub const EMPTY_BODY: &str = "empty_body";
    /// An SSE `data:` payload that is not JSON (other than `[DONE]`).
    pub const SSE_DATA_NOT_JSON: &str = "sse_data_not_json";
    /// An SSE payload that is JSON but not the object shape the API sends.
    pub const SSE_UNEXPECTED_JSON: &str = "sse_unexpected_json_shape";
    /// An SSE event larger than [`super::MAX_EVENT_BYTES`] was dropped.
    pub const SSE_OVERSIZED: &str = "sse_event_oversized";
    /// The response said `text/event-stream` but held no event.
    pub const SSE_NO_EVENTS: &str = "sse_no_events";
    /// Answer text or tool arguments passed their cap; what fit is kept.
    pub const TEXT_TRUNCATED: &str = "text_truncated";
}

/// Classifies a request by method and path (without query) into provider and API.
///
/// `provider_hint` is the listener's configured provider: it wins for OpenAI-shaped APIs,
/// because many providers (Anthropic included) also serve OpenAI-compatible paths.
/// `anthropic_version_header` (the request carried `anthropic-version`) marks Anthropic traffic
/// on paths that do not say so themselves.
pub fn classify(
    method: &http::Method,
    path: &str,
    provider_hint: Option<Provider>,
    anthropic_version_header: bool,
) -> RouteMatch {
    let hint = provider_hint.filter(|p| *p != Provider::Unknown);
    let header_provider = anthropic_version_header.then_some(Provider::Anthropic);
    let path = path.trim_end_matches('/');

    let mut azure_deployment = None;
    let mut op_path = path;
    if let Some(i) = path.find("/openai/deployments/") {
        let rest = &path[i + "/openai/deployments/".len()..];
        if let Some((name, _)) = rest.split_once('/') {
            if !name.is_empty() {
                azure_deployment = Some(name.to_owned());
                op_path = &rest[name.len()..];
            }
        }
    }

    let api = if *method != http::Method::POST {
        Api::Other
    } else if op_path.ends_with("/chat/completions") {
        Api::ChatCompletions
    } else if op_path.ends_with("/completions") {
        Api::Completions
    } else if op_path.ends_with("/responses") {
        Api::Responses
    } else if op_path.ends_with("/embeddings") {
        Api::Embeddings
    } else if op_path.ends_with("/messages") && azure_deployment.is_none() {
        Api::Messages
    } else {
        Api::Other
    };

    let shape_provider = match api {
        Api::Messages => Provider::Anthropic,
        Api::Other => Provider::Unknown,
        _ if azure_deployment.is_some() => Provider::AzureOpenAi,
        _ => Provider::OpenAi,
    };
    let provider = match api {
        // The Messages API is Anthropic's own shape whatever the listener is called.
        Api::Messages => Provider::Anthropic,
        Api::Other => hint.or(header_provider).unwrap_or(Provider::Unknown),
        _ => hint.or(header_provider).unwrap_or(shape_provider),
    };
    RouteMatch {
        provider,
        api,
        azure_deployment,
    }
}

/// Reads a request body: model, stream flag, generation parameters and the last user turn.
///
/// Errs (with a short reason) only when the body is not a JSON object; wrongly typed fields
/// are simply absent from the result.
pub fn parse_request(api: Api, body: &[u8]) -> Result<RequestInfo, String> {
    if api == Api::Other {
        return Ok(RequestInfo::default());
    }
    let v = Value::parse(strip_bom(body)).map_err(|e| format!("{}: {e}", anomaly::INVALID_JSON))?;
    if !v.is_object() {
        return Err("request body is not a JSON object".to_owned());
    }
    let model = v.get("model").and_then(Value::as_str).map(str::to_owned);
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let params = request_params(&v);
    let prompt = match api {
        Api::ChatCompletions => openai::chat_prompt(&v),
        Api::Responses => openai::responses_prompt(&v),
        Api::Completions => openai::completions_prompt(&v),
        Api::Embeddings => openai::embeddings_prompt(&v),
        Api::Messages => anthropic::messages_prompt(&v),
        Api::Other => None,
    }
    .map(|p| truncate_string(p, MAX_PROMPT_BYTES));
    Ok(RequestInfo {
        model,
        stream,
        params,
        prompt,
    })
}

fn request_params(v: &Value) -> RequestParams {
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let max_tokens = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| v.get(k).and_then(json_u64));
    let mut stop_sequences = Vec::new();
    for key in ["stop", "stop_sequences"] {
        match v.get(key) {
            Some(Value::String(s)) => stop_sequences.push(s.to_string()),
            Some(Value::Array(a)) => stop_sequences.extend(
                a.iter()
                    .filter_map(Value::as_str)
                    .take(64)
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    RequestParams {
        max_tokens,
        temperature: f("temperature"),
        top_p: f("top_p"),
        top_k: f("top_k"),
        frequency_penalty: f("frequency_penalty"),
        presence_penalty: f("presence_penalty"),
        stop_sequences,
        seed: v.get("seed").and_then(Value::as_i64),
        choice_count: v.get("n").and_then(json_u64),
    }
}

/// Reads a response body. Non-2xx: only the error envelope's type. 2xx JSON: answer text,
/// tool calls, finish reasons, usage, model and id. 2xx event streams: the same, assembled
/// from the events, plus the offsets that time them. Never fails: what cannot be read is
/// reported in `anomaly`.
pub fn parse_response(api: Api, status: u16, body: &[u8], is_event_stream: bool) -> ResponseInfo {
    if !(200..300).contains(&status) {
        return ResponseInfo {
            error_type: Value::parse(strip_bom(body))
                .ok()
                .as_ref()
                .and_then(error_type_of),
            ..ResponseInfo::default()
        };
    }
    if api == Api::Other {
        return ResponseInfo::default();
    }
    if is_event_stream || looks_like_sse(body) {
        let mut stream = ResponseStream::new(api);
        stream.push(body);
        let mut info = stream.finish();
        if info.anomaly.as_deref() == Some(anomaly::SSE_NO_EVENTS) {
            // A JSON answer mislabelled as a stream still tells us what happened.
            if let Ok(v) = Value::parse(strip_bom(body)) {
                let mut acc = Acc::default();
                parse_json_response(api, &v, &mut acc);
                let anomaly = info.anomaly.take();
                info = acc.info;
                info.anomaly = anomaly;
            }
        }
        return info;
    }
    let mut acc = Acc::default();
    let body = strip_bom(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        acc.anomaly(anomaly::EMPTY_BODY);
        return acc.info;
    }
    match Value::parse(body) {
        Ok(v) if v.is_object() => parse_json_response(api, &v, &mut acc),
        Ok(_) => acc.anomaly(anomaly::UNEXPECTED_JSON),
        Err(_) => acc.anomaly(anomaly::INVALID_JSON),
    }
    acc.info
}

fn parse_json_response(api: Api, v: &Value, acc: &mut Acc) {
    match api {
        Api::ChatCompletions | Api::Completions => openai::chat_json(v, acc),
        Api::Responses => openai::responses_json(v, acc),
        Api::Embeddings => openai::embeddings_json(v, acc),
        Api::Messages => anthropic::messages_json(v, acc),
        Api::Other => {}
    }
    if acc.info.error_type.is_none() && v.get("error").is_some_and(|e| !e.is_null()) {
        acc.info.error_type = error_type_of(v);
    }
}

/// A 2xx body served without `text/event-stream` that is plainly SSE anyway.
fn looks_like_sse(body: &[u8]) -> bool {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let b = &body[start..];
    b.starts_with(b"data:") || b.starts_with(b"event:") || b.starts_with(b": ")
}

/// The type of an error object (the `error` member of an envelope, or an error event's
/// payload): its `type`, else its `code`; `None` for anything but an object that has one.
pub(crate) fn error_object_type(e: &Value) -> Option<String> {
    let ty = e.get("type").and_then(non_empty_str);
    let code = e.get("code").and_then(|c| match c {
        Value::String(s) if !s.is_empty() => Some(s.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    // OpenAI rate limits say which limit in `type` ("tokens", "requests"); the code names
    // the error itself.
    if code.as_deref() == Some("rate_limit_exceeded") {
        return code;
    }
    ty.map(str::to_owned).or(code)
}

/// The `error.type` of an error envelope, for every shape seen in the wild:
/// OpenAI / LiteLLM / Azure `{"error":{"type","code"}}`, Anthropic
/// `{"type":"error","error":{"type"}}`, vLLM `{"object":"error","type"}`, Responses API
/// stream `{"type":"error","code"}`.
pub(crate) fn error_type_of(v: &Value) -> Option<String> {
    let from_obj = error_object_type;
    match v.get("error") {
        Some(e @ Value::Object(_)) => from_obj(e),
        _ => {
            let top_type = v.get("type").and_then(Value::as_str);
            let object = v.get("object").and_then(Value::as_str);
            if object == Some("error") || top_type == Some("error") {
                let t = from_obj(v);
                if t.as_deref() == Some("error") {
                    // The envelope's own marker, not a type: the code says more, if any.
                    v.get("code")
                        .and_then(non_empty_str)
                        .map(str::to_owned)
                        .or(t)
                } else {
                    t
                }
            } else {
                None
            }
        }
    }
}

/// Incremental response parser for event streams: feed body chunks as they pass, then
/// [`finish`](Self::finish). Memory stays bounded by the caps whatever the stream holds.
#[derive(Debug)]
pub struct ResponseStream {
    sse: SseParser,
    handler: StreamHandler,
    acc: Acc,
    events: u64,
}

#[derive(Debug)]
enum StreamHandler {
    Chat(openai::ChatStream),
    Responses(openai::ResponsesStream),
    Messages(anthropic::MessagesStream),
    Ignore,
}

impl ResponseStream {
    /// A parser for a stream of the given API.
    pub fn new(api: Api) -> Self {
        let handler = match api {
            Api::ChatCompletions | Api::Completions => StreamHandler::Chat(Default::default()),
            Api::Responses => StreamHandler::Responses(Default::default()),
            Api::Messages => StreamHandler::Messages(Default::default()),
            Api::Embeddings | Api::Other => StreamHandler::Ignore,
        };
        ResponseStream {
            sse: SseParser::new(MAX_EVENT_BYTES),
            handler,
            acc: Acc::default(),
            events: 0,
        }
    }

    /// Feeds the next body chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        let (handler, acc, events) = (&mut self.handler, &mut self.acc, &mut self.events);
        self.sse
            .push_with(chunk, |ev| on_event(handler, acc, events, &ev));
    }

    /// What has been understood so far (offsets, text); final fields fill in at `finish`.
    pub fn info(&self) -> &ResponseInfo {
        &self.acc.info
    }

    /// Ends the body and returns everything understood.
    pub fn finish(mut self) -> ResponseInfo {
        let (handler, acc, events) = (&mut self.handler, &mut self.acc, &mut self.events);
        self.sse
            .finish_with(|ev| on_event(handler, acc, events, &ev));
        if self.sse.oversized_events() > 0 {
            self.acc.anomaly(anomaly::SSE_OVERSIZED);
        }
        if self.events == 0 && self.sse.oversized_events() == 0 {
            self.acc.anomaly(anomaly::SSE_NO_EVENTS);
        }
        match &mut self.handler {
            StreamHandler::Chat(h) => h.finish(&mut self.acc),
            StreamHandler::Responses(h) => h.finish(&mut self.acc),
            StreamHandler::Messages(h) => h.finish(&mut self.acc),
            StreamHandler::Ignore => {}
        }
        self.acc.info
    }
}

fn on_event(handler: &mut StreamHandler, acc: &mut Acc, events: &mut u64, ev: &SseEventRef<'_>) {
    *events += 1;
    if acc.info.first_event_end.is_none() {
        acc.info.first_event_end = Some(ev.end_offset);
    }
    match handler {
        StreamHandler::Chat(h) => h.on_event(acc, ev),
        StreamHandler::Responses(h) => h.on_event(acc, ev),
        StreamHandler::Messages(h) => h.on_event(acc, ev),
        StreamHandler::Ignore => {}
    }
}

/// The response being assembled, with the caps that keep it bounded.
#[derive(Debug, Default)]
pub(crate) struct Acc {
    pub(crate) info: ResponseInfo,
    text_full: bool,
    args_bytes: usize,
    args_full: bool,
}

impl Acc {
    /// Records an anomaly unless an earlier one already explains the body.
    pub(crate) fn anomaly(&mut self, reason: &str) {
        if self.info.anomaly.is_none() {
            self.info.anomaly = Some(reason.to_owned());
        }
    }

    /// Appends answer text up to [`MAX_TEXT_BYTES`].
    pub(crate) fn push_text(&mut self, s: &str) {
        if self.text_full || s.is_empty() {
            return;
        }
        if !append_capped(&mut self.info.text, s, MAX_TEXT_BYTES) {
            self.text_full = true;
            self.anomaly(anomaly::TEXT_TRUNCATED);
        }
    }

    /// Appends to tool call `idx`'s arguments, within the shared arguments budget.
    pub(crate) fn push_args(&mut self, idx: usize, s: &str) {
        if self.args_full || s.is_empty() {
            return;
        }
        let Some(tc) = self.info.tool_calls.get_mut(idx) else {
            return;
        };
        let room = MAX_TEXT_BYTES.saturating_sub(self.args_bytes);
        let before = tc.arguments.len();
        let complete = append_capped(&mut tc.arguments, s, before + room);
        self.args_bytes += tc.arguments.len() - before;
        if !complete {
            self.args_full = true;
            self.anomaly(anomaly::TEXT_TRUNCATED);
        }
    }

    /// Replaces tool call `idx`'s arguments with a final value (e.g. from a `done` event).
    pub(crate) fn set_args(&mut self, idx: usize, s: &str) {
        let Some(tc) = self.info.tool_calls.get_mut(idx) else {
            return;
        };
        self.args_bytes = self.args_bytes.saturating_sub(tc.arguments.len());
        tc.arguments.clear();
        self.args_full = false;
        self.push_args(idx, s);
    }

    /// Adds a tool call, returning its index, or `None` past [`MAX_TOOL_CALLS`].
    pub(crate) fn add_tool_call(&mut self, id: Option<String>, name: String) -> Option<usize> {
        if self.info.tool_calls.len() >= MAX_TOOL_CALLS {
            return None;
        }
        self.info.tool_calls.push(ToolCall {
            id,
            name: truncate_string(name, 1024),
            arguments: String::new(),
        });
        Some(self.info.tool_calls.len() - 1)
    }

    /// Notes an event that carried content, for TTFT and inter-chunk timing.
    pub(crate) fn content_at(&mut self, end_offset: usize) {
        let ends = &mut self.info.content_event_ends;
        if ends.len() < MAX_CONTENT_EVENTS && ends.last() != Some(&end_offset) {
            ends.push(end_offset);
        }
    }

    /// Parses an SSE payload as `T`, recording an anomaly (and returning `None`) if it is not
    /// JSON or not of that shape.
    pub(crate) fn parse_event<'a, T: Deserialize<'a>>(&mut self, data: &'a [u8]) -> Option<T> {
        match serde_json::from_slice::<T>(data) {
            Ok(t) => Some(t),
            Err(e) => {
                self.anomaly(if e.is_data() {
                    anomaly::SSE_UNEXPECTED_JSON
                } else {
                    anomaly::SSE_DATA_NOT_JSON
                });
                None
            }
        }
    }
}

/// Appends as much of `s` as fits under `cap` bytes (cut on a char boundary). Returns false
/// when something was cut.
pub(crate) fn append_capped(dst: &mut String, s: &str, cap: usize) -> bool {
    if dst.len() + s.len() <= cap {
        dst.push_str(s);
        return true;
    }
    let mut cut = cap.saturating_sub(dst.len()).min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    dst.push_str(&s[..cut]);
    false
}

/// Cuts a string to at most `cap` bytes on a char boundary.
pub(crate) fn truncate_string(mut s: String, cap: usize) -> String {
    if s.len() > cap {
        let mut cut = cap;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

pub(crate) fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

pub(crate) fn non_empty_str<'v>(v: &'v Value<'_>) -> Option<&'v str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// A token count: non-negative integer, or an integral float (some servers send `12.0`).
pub(crate) fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
            .map(|f| f as u64)
    })
}

/// Reads the first present key of a JSON object as a token count.
pub(crate) fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    json_u64(cur)
}

/// A string field that never fails deserialization: anything but a string reads as `None`.
/// Used in the borrowed stream-chunk structs so one oddly typed field from an
/// OpenAI-compatible server does not cost the whole chunk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LStr<'a>(pub(crate) Option<Cow<'a, str>>);

impl LStr<'_> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
    pub(crate) fn non_empty(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                LStr::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LStr(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A count field that never fails deserialization (see [`LStr`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LNum(pub(crate) Option<u64>);

impl<'de> Deserialize<'de> for LNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LNum;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LNum(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LNum(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LNum(json_u64(&Value::Number(json::Number::F(v)))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LNum(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LNum(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LNum(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LNum(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                LNum::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LNum(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LNum(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn route(method: Method, path: &str) -> (Provider, Api) {
        let r = classify(&method, path, None, false);
        (r.provider, r.api)
    }

    #[test]
    fn classify_openai_paths() {
        assert_eq!(
            route(Method::POST, "/v1/chat/completions"),
            (Provider::OpenAi, Api::ChatCompletions)
        );
        assert_eq!(
            route(Method::POST, "/v1/responses"),
            (Provider::OpenAi, Api::Responses)
        );
        assert_eq!(
            route(Method::POST, "/v1/completions"),
            (Provider::OpenAi, Api::Completions)
        );
        assert_eq!(
            route(Method::POST, "/v1/embeddings"),
            (Provider::OpenAi, Api::Embeddings)
        );
        assert_eq!(
            route(Method::POST, "/v1/chat/completions/"),
            (Provider::OpenAi, Api::ChatCompletions)
        );
    }

    #[test]
    fn classify_openai_compatible_servers_use_openai_paths() {
        // vLLM, Ollama's OpenAI layer, LiteLLM behind a prefix.
        for p in [
            "/v1/chat/completions",
            "/ollama/v1/chat/completions",
            "/litellm/chat/completions",
            "/chat/completions",
        ] {
            assert_eq!(route(Method::POST, p).1, Api::ChatCompletions, "{p}");
        }
    }

    #[test]
    fn classify_anthropic_messages_and_count_tokens() {
        assert_eq!(
            route(Method::POST, "/v1/messages"),
            (Provider::Anthropic, Api::Messages)
        );
        assert_eq!(
            route(Method::POST, "/v1/messages/count_tokens"),
            (Provider::Unknown, Api::Other)
        );
        let r = classify(&Method::POST, "/v1/messages/batches", None, true);
        assert_eq!((r.provider, r.api), (Provider::Anthropic, Api::Other));
    }

    #[test]
    fn classify_azure_deployment_path() {
        let r = classify(
            &Method::POST,
            "/openai/deployments/gpt-4o-prod/chat/completions",
            None,
            false,
        );
        assert_eq!(r.provider, Provider::AzureOpenAi);
        assert_eq!(r.api, Api::ChatCompletions);
        assert_eq!(r.azure_deployment.as_deref(), Some("gpt-4o-prod"));
        let r = classify(
            &Method::POST,
            "/openai/deployments/embed-small/embeddings",
            None,
            false,
        );
        assert_eq!(
            (r.provider, r.api),
            (Provider::AzureOpenAi, Api::Embeddings)
        );
        let r = classify(
            &Method::POST,
            "/openai/deployments/instruct/completions",
            None,
            false,
        );
        assert_eq!(r.api, Api::Completions);
        let r = classify(
            &Method::POST,
            "/openai/deployments/x/images/generations",
            None,
            false,
        );
        assert_eq!((r.provider, r.api), (Provider::Unknown, Api::Other));
        assert_eq!(r.azure_deployment.as_deref(), Some("x"));
    }

    #[test]
    fn classify_non_post_and_unknown_paths_are_other() {
        assert_eq!(
            route(Method::GET, "/v1/chat/completions"),
            (Provider::Unknown, Api::Other)
        );
        assert_eq!(
            route(Method::GET, "/v1/models"),
            (Provider::Unknown, Api::Other)
        );
        assert_eq!(
            route(Method::POST, "/v1/files"),
            (Provider::Unknown, Api::Other)
        );
        assert_eq!(
            route(Method::POST, "/v1/responses/resp_123/cancel"),
            (Provider::Unknown, Api::Other)
        );
        assert_eq!(route(Method::POST, ""), (Provider::Unknown, Api::Other));
    }

    #[test]
    fn classify_provider_hint_overrides_openai_shaped_apis_only() {
        let r = classify(
            &Method::POST,
            "/v1/chat/completions",
            Some(Provider::Anthropic),
            false,
        );
        assert_eq!(
            (r.provider, r.api),
            (Provider::Anthropic, Api::ChatCompletions)
        );
        let r = classify(&Method::POST, "/v1/messages", Some(Provider::OpenAi), false);
        assert_eq!(r.provider, Provider::Anthropic);
        let r = classify(
            &Method::GET,
            "/v1/models",
            Some(Provider::AzureOpenAi),
            false,
        );
        assert_eq!((r.provider, r.api), (Provider::AzureOpenAi, Api::Other));
        let r = classify(
            &Method::POST,
            "/v1/chat/completions",
            Some(Provider::Unknown),
            false,
        );
        assert_eq!(r.provider, Provider::OpenAi, "an Unknown hint is no hint");
    }

    #[test]
    fn classify_anthropic_version_header_marks_anthropic_openai_compat() {
        let r = classify(&Method::POST, "/v1/chat/completions", None, true);
        assert_eq!(
            (r.provider, r.api),
            (Provider::Anthropic, Api::ChatCompletions)
        );
    }

    #[test]
    fn other_api_response_is_not_parsed() {
        let info = parse_response(Api::Other, 200, b"not json at all", false);
        assert_eq!(info, ResponseInfo::default());
        assert_eq!(
            parse_request(Api::Other, b"\xFF"),
            Ok(RequestInfo::default())
        );
    }

    #[test]
    fn invalid_utf8_and_binary_bodies_never_panic() {
        let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        for api in [
            Api::ChatCompletions,
            Api::Responses,
            Api::Completions,
            Api::Embeddings,
            Api::Messages,
        ] {
            for status in [200, 429, 500] {
                for stream in [false, true] {
                    let _ = parse_response(api, status, &junk, stream);
                }
            }
            assert!(parse_request(api, &junk).is_err());
            let mut body =
                b"data: {\"choices\":[{\"delta\":{\"content\":\"\xFF\xFE\"}}]}\n\n".to_vec();
            body.extend_from_slice(b"event: x\xC3\ndata: \x00\x01\n\n");
            let info = parse_response(api, 200, &body, true);
            // Embeddings never stream, so their events are not read at all.
            assert_eq!(info.anomaly.is_some(), api != Api::Embeddings, "{api:?}");
        }
    }

    #[test]
    fn body_with_utf8_bom_is_read() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        );
        let r = parse_request(Api::ChatCompletions, &body).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("hi"));
    }

    #[test]
    fn two_xx_body_carrying_error_envelope_sets_error_type() {
        let body = br#"{"error":{"message":"upstream failed","type":"server_error","code":null}}"#;
        let info = parse_response(Api::ChatCompletions, 200, body, false);
        assert_eq!(info.error_type.as_deref(), Some("server_error"));
    }

    #[test]
    fn append_capped_cuts_on_char_boundary() {
        let mut s = String::from("ab");
        assert!(!append_capped(&mut s, "cé", 4));
        assert_eq!(s, "abc");
        assert!(append_capped(&mut String::new(), "abc", 3));
    }

    #[test]
    fn lenient_fields_accept_any_json_type() {
        #[derive(serde::Deserialize)]
        struct T<'a> {
            #[serde(borrow, default)]
            s: LStr<'a>,
            #[serde(default)]
            n: LNum,
        }
        for (json, s, n) in [
            (r#"{"s":"x","n":5}"#, Some("x"), Some(5)),
            (r#"{"s":"a\nb","n":5.0}"#, Some("a\nb"), Some(5)),
            (r#"{"s":null,"n":null}"#, None, None),
            (r#"{"s":[1,{"a":[]}],"n":{"x":1}}"#, None, None),
            (r#"{"s":true,"n":-3}"#, None, None),
            (r#"{}"#, None, None),
        ] {
            let t: T<'_> = serde_json::from_str(json).unwrap();
            assert_eq!((t.s.as_str(), t.n.0), (s, n), "{json}");
        }
    }
}
