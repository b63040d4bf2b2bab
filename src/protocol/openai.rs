//! OpenAI-shaped bodies: Chat Completions, Responses, legacy Completions and Embeddings, as
//! served by OpenAI, Azure OpenAI and OpenAI-compatible servers (vLLM, Ollama, LiteLLM).
//!
//! Non-streamed bodies are read as a borrowed [`super::json::Value`] (once per exchange, shape varies).
//! Stream chunks, read hundreds of times per exchange, go through small borrowed structs whose
//! fields never fail to deserialize, so one odd field does not cost the chunk.

use super::json::Value;
use serde::Deserialize;

use super::sse::SseEventRef;
use super::{
    append_capped, error_object_type, error_type_of, non_empty_str, u64_at, Acc, LNum, LStr,
    MAX_CHOICES, MAX_PROMPT_BYTES,
};
use crate::record::Usage;

// ---------------------------------------------------------------------------------------------
// Requests

/// Text of a user content value: a string, or the text parts of a parts array.
fn user_content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.to_string()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                let ty = p.get("type").and_then(Value::as_str);
                if matches!(ty, Some("text" | "input_text")) {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        if !append_capped(&mut out, t, MAX_PROMPT_BYTES) {
                            break;
                        }
                    }
                }
            }
            (!out.is_empty()).then_some(out)
        }
        _ => None,
    }
}

/// Chat Completions: the last `messages[]` entry with role `user`.
pub(crate) fn chat_prompt(v: &Value) -> Option<String> {
    let msgs = v.get("messages")?.as_array()?;
    let last = msgs
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    user_content_text(last.get("content")?)
}

/// Responses: `input` as a string, or the last user message item of an item list.
pub(crate) fn responses_prompt(v: &Value) -> Option<String> {
    match v.get("input")? {
        Value::String(s) => Some(s.to_string()),
        Value::Array(items) => {
            let last = items.iter().rev().find(|i| {
                i.get("role").and_then(Value::as_str) == Some("user")
                    && matches!(
                        i.get("type").and_then(Value::as_str),
                        None | Some("message")
                    )
            })?;
            user_content_text(last.get("content")?)
        }
        _ => None,
    }
}

/// Legacy Completions: `prompt` as a string, or the first string of a batch (the batch's first
/// prompt is the one whose answer, choice 0, the record keeps). Token arrays have no text.
pub(crate) fn completions_prompt(v: &Value) -> Option<String> {
    match v.get("prompt")? {
        Value::String(s) => Some(s.to_string()),
        Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Embeddings: `input` as a string, or a list of strings joined with newlines (capped).
pub(crate) fn embeddings_prompt(v: &Value) -> Option<String> {
    match v.get("input")? {
        Value::String(s) => Some(s.to_string()),
        Value::Array(a) => {
            let mut out = String::new();
            for s in a.iter().filter_map(Value::as_str) {
                if !out.is_empty() {
                    out.push('\n');
                }
                if !append_capped(&mut out, s, MAX_PROMPT_BYTES) {
                    break;
                }
            }
            (!out.is_empty()).then_some(out)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Non-streamed responses

/// Usage in either naming: Chat/Completions/Embeddings (`prompt_tokens`, ...) or Responses
/// (`input_tokens`, ...).
pub(crate) fn usage_of(u: &Value) -> Usage {
    let first = |a: &[&str], b: &[&str]| u64_at(u, a).or_else(|| u64_at(u, b));
    Usage {
        input_tokens: first(&["prompt_tokens"], &["input_tokens"]),
        output_tokens: first(&["completion_tokens"], &["output_tokens"]),
        cached_input_tokens: first(
            &["prompt_tokens_details", "cached_tokens"],
            &["input_tokens_details", "cached_tokens"],
        ),
        reasoning_tokens: first(
            &["completion_tokens_details", "reasoning_tokens"],
            &["output_tokens_details", "reasoning_tokens"],
        ),
        estimated: false,
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

fn set_usage(v: &Value, acc: &mut Acc) {
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        acc.info.usage = usage_of(u);
    }
}

/// Tool arguments as text: a string as is, any other JSON (some compatible servers send an
/// object) serialized.
fn arguments_text(a: Option<&Value>) -> String {
    match a {
        Some(Value::String(s)) => s.to_string(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn push_tool_call(acc: &mut Acc, id: Option<&str>, name: &str, args: &str) {
    if let Some(i) = acc.add_tool_call(id.map(str::to_owned), name.to_owned()) {
        acc.push_args(i, args);
    }
}

/// Chat Completions and legacy Completions: text and tool calls of choice 0 (the record keeps
/// one answer), finish reasons of every choice in index order.
pub(crate) fn chat_json(v: &Value, acc: &mut Acc) {
    set_id_model(v, acc);
    set_usage(v, acc);
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return;
    };
    let mut indexed: Vec<(u64, &Value)> = choices
        .iter()
        .enumerate()
        .map(|(pos, c)| (u64_at(c, &["index"]).unwrap_or(pos as u64), c))
        .collect();
    indexed.sort_by_key(|(i, _)| *i);
    for (_, c) in indexed.iter().take(MAX_CHOICES) {
        if let Some(r) = c.get("finish_reason").and_then(non_empty_str) {
            acc.info.finish_reasons.push(r.to_owned());
        }
    }
    let Some((_, first)) = indexed.first() else {
        return;
    };
    if let Some(t) = first.get("text").and_then(Value::as_str) {
        acc.push_text(t);
    }
    let Some(msg) = first.get("message") else {
        return;
    };
    match msg.get("content") {
        Some(Value::String(s)) => acc.push_text(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                if matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("text" | "output_text")
                ) {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        acc.push_text(t);
                    }
                }
            }
        }
        _ => {}
    }
    if let Some(r) = msg.get("refusal").and_then(Value::as_str) {
        acc.push_text(r);
    }
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for tc in calls {
            let f = tc.get("function");
            push_tool_call(
                acc,
                tc.get("id").and_then(non_empty_str),
                f.and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                &arguments_text(f.and_then(|f| f.get("arguments"))),
            );
        }
    }
    if let Some(fc) = msg.get("function_call").filter(|f| f.is_object()) {
        push_tool_call(
            acc,
            None,
            fc.get("name").and_then(Value::as_str).unwrap_or(""),
            &arguments_text(fc.get("arguments")),
        );
    }
}

/// Embeddings: no answer, only model and input token usage.
pub(crate) fn embeddings_json(v: &Value, acc: &mut Acc) {
    set_id_model(v, acc);
    set_usage(v, acc);
}

/// Responses API: a whole `response` object (the body, or the payload of a terminal stream
/// event).
pub(crate) fn responses_json(v: &Value, acc: &mut Acc) {
    apply_response_object(v, acc, true, true);
}

/// Applies a Responses `response` object. `with_text` / `with_tools` say whether its output
/// should fill text and tool calls (a stream that already assembled them from deltas keeps
/// its own).
fn apply_response_object(r: &Value, acc: &mut Acc, with_text: bool, with_tools: bool) {
    set_id_model(r, acc);
    set_usage(r, acc);
    if let Some(output) = r.get("output").and_then(Value::as_array) {
        for item in output {
            match item.get("type").and_then(Value::as_str) {
                Some("message") if with_text => {
                    let parts = item.get("content").and_then(Value::as_array);
                    for p in parts.into_iter().flatten() {
                        match p.get("type").and_then(Value::as_str) {
                            Some("output_text") => {
                                acc.push_text(p.get("text").and_then(Value::as_str).unwrap_or(""))
                            }
                            Some("refusal") => acc
                                .push_text(p.get("refusal").and_then(Value::as_str).unwrap_or("")),
                            _ => {}
                        }
                    }
                }
                Some("function_call" | "custom_tool_call") if with_tools => {
                    let args = item.get("arguments").or_else(|| item.get("input"));
                    push_tool_call(
                        acc,
                        item.get("call_id")
                            .and_then(non_empty_str)
                            .or_else(|| item.get("id").and_then(non_empty_str)),
                        item.get("name").and_then(Value::as_str).unwrap_or(""),
                        &arguments_text(args),
                    );
                }
                _ => {}
            }
        }
    }
    let finish = match r.get("status").and_then(Value::as_str) {
        Some("completed") => Some("stop"),
        Some("incomplete") => Some(
            r.get("incomplete_details")
                .and_then(|d| d.get("reason"))
                .and_then(non_empty_str)
                .unwrap_or("incomplete"),
        ),
        Some("failed") => Some("error"),
        Some("cancelled") => Some("cancelled"),
        _ => None,
    };
    if let Some(f) = finish {
        acc.info.finish_reasons = vec![f.to_owned()];
    }
    if r.get("error").is_some_and(|e| e.is_object()) {
        acc.info.error_type = error_type_of(r).or_else(|| Some("error".to_owned()));
    }
}

// ---------------------------------------------------------------------------------------------
// Chat Completions / legacy Completions streams

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    id: LStr<'a>,
    #[serde(borrow, default)]
    model: LStr<'a>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(borrow, default)]
    error: Option<Value<'a>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: LNum,
    #[serde(borrow, default)]
    delta: Option<ChunkDelta<'a>>,
    /// Legacy Completions streams carry text here instead of in a delta.
    #[serde(borrow, default)]
    text: LStr<'a>,
    #[serde(borrow, default)]
    finish_reason: LStr<'a>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    content: LStr<'a>,
    #[serde(borrow, default)]
    refusal: LStr<'a>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: LNum,
    #[serde(borrow, default)]
    id: LStr<'a>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: LStr<'a>,
    #[serde(borrow, default)]
    arguments: LStr<'a>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: LNum,
    #[serde(default)]
    completion_tokens: LNum,
    #[serde(default)]
    prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    completion_tokens_details: Option<TokenDetails>,
}

#[derive(Deserialize)]
struct TokenDetails {
    #[serde(default)]
    cached_tokens: LNum,
    #[serde(default)]
    reasoning_tokens: LNum,
}

/// Stream state for Chat Completions and legacy Completions.
#[derive(Debug, Default)]
pub(crate) struct ChatStream {
    /// Choice 0's tool-call stream index → position in `tool_calls`.
    tools: Vec<(u64, usize)>,
    /// Position of a legacy `function_call` being streamed.
    function_call: Option<usize>,
    /// Finish reason per choice index.
    finish: Vec<Option<String>>,
}

impl ChatStream {
    pub(crate) fn on_event(&mut self, acc: &mut Acc, ev: &SseEventRef<'_>) {
        let data = ev.data.trim_ascii();
        if data.is_empty() {
            return;
        }
        if data == b"[DONE]" {
            acc.info.stream_complete = true;
            return;
        }
        if ev.event == Some(b"error") {
            let v = acc.parse_event::<Value>(data);
            acc.info.error_type = v
                .as_ref()
                .and_then(error_type_of)
                .or_else(|| Some("error".to_owned()));
            return;
        }
        let Some(chunk) = acc.parse_event::<ChatChunk<'_>>(data) else {
            return;
        };
        if acc.info.response_id.is_none() {
            acc.info.response_id = chunk.id.non_empty().map(str::to_owned);
        }
        if acc.info.response_model.is_none() {
            acc.info.response_model = chunk.model.non_empty().map(str::to_owned);
        }
        if let Some(e) = chunk.error.filter(|e| !e.is_null()) {
            acc.info.error_type = error_object_type(&e).or_else(|| Some("error".to_owned()));
        }
        if let Some(u) = chunk.usage {
            let (p, c) = (u.prompt_tokens_details, u.completion_tokens_details);
            acc.info.usage = Usage {
                input_tokens: u.prompt_tokens.0,
                output_tokens: u.completion_tokens.0,
                cached_input_tokens: p.and_then(|d| d.cached_tokens.0),
                reasoning_tokens: c.and_then(|d| d.reasoning_tokens.0),
                estimated: false,
            };
        }
        let mut content = false;
        for choice in chunk.choices.into_iter().flatten() {
            let idx = choice.index.0.unwrap_or(0);
            if let Some(r) = choice.finish_reason.non_empty() {
                if let Ok(i) = usize::try_from(idx) {
                    if i < MAX_CHOICES {
                        if self.finish.len() <= i {
                            self.finish.resize(i + 1, None);
                        }
                        self.finish[i] = Some(r.to_owned());
                    }
                }
            }
            if idx != 0 {
                continue;
            }
            if let Some(t) = choice.text.non_empty() {
                acc.push_text(t);
                content = true;
            }
            let Some(delta) = choice.delta else {
                continue;
            };
            for t in [delta.content.non_empty(), delta.refusal.non_empty()]
                .into_iter()
                .flatten()
            {
                acc.push_text(t);
                content = true;
            }
            for tc in delta.tool_calls.into_iter().flatten() {
                content |= self.on_tool_delta(acc, tc);
            }
            if let Some(f) = delta.function_call {
                let pos = match self.function_call {
                    Some(p) => Some(p),
                    None => {
                        let p = acc.add_tool_call(None, String::new());
                        self.function_call = p;
                        p
                    }
                };
                if let Some(p) = pos {
                    content |= fill_call(acc, p, None, f.name.non_empty(), f.arguments.as_str());
                }
            }
        }
        if content {
            acc.content_at(ev.end_offset);
        }
    }

    /// Folds one `delta.tool_calls[]` entry into its call. Returns whether it carried content.
    fn on_tool_delta(&mut self, acc: &mut Acc, tc: ToolCallDelta<'_>) -> bool {
        let id = tc.id.non_empty();
        // Some compatible servers omit `index`: a new id starts a new call, otherwise the
        // delta continues the latest one.
        let key = match tc.index.0 {
            Some(i) => i,
            None => match (id, self.tools.last()) {
                (Some(id), Some(&(k, p)))
                    if acc.info.tool_calls.get(p).and_then(|t| t.id.as_deref()) == Some(id) =>
                {
                    k
                }
                (None, Some(&(k, _))) => k,
                _ => self.tools.iter().map(|(k, _)| k + 1).max().unwrap_or(0),
            },
        };
        let pos = match self.tools.iter().find(|(k, _)| *k == key) {
            Some(&(_, p)) => p,
            None => match acc.add_tool_call(None, String::new()) {
                Some(p) => {
                    self.tools.push((key, p));
                    p
                }
                None => return false,
            },
        };
        let (name, args) = match &tc.function {
            Some(f) => (f.name.non_empty(), f.arguments.as_str()),
            None => (None, None),
        };
        fill_call(acc, pos, id, name, args)
    }

    pub(crate) fn finish(&mut self, acc: &mut Acc) {
        acc.info.finish_reasons = std::mem::take(&mut self.finish)
            .into_iter()
            .flatten()
            .collect();
    }
}

/// Sets a streamed call's id and name (first one wins: some servers repeat them on every
/// delta) and appends its arguments. Returns whether anything was carried.
fn fill_call(
    acc: &mut Acc,
    pos: usize,
    id: Option<&str>,
    name: Option<&str>,
    args: Option<&str>,
) -> bool {
    let mut carried = false;
    if let Some(tc) = acc.info.tool_calls.get_mut(pos) {
        if let Some(id) = id {
            carried = true;
            if tc.id.is_none() {
                tc.id = Some(id.chars().take(256).collect());
            }
        }
        if let Some(name) = name {
            carried = true;
            if tc.name.is_empty() {
                tc.name = name.chars().take(1024).collect();
            }
        }
    }
    if let Some(a) = args.filter(|a| !a.is_empty()) {
        acc.push_args(pos, a);
        carried = true;
    }
    carried
}

// ---------------------------------------------------------------------------------------------
// Responses API streams

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(borrow, default, rename = "type")]
    ty: LStr<'a>,
    #[serde(borrow, default)]
    delta: LStr<'a>,
    #[serde(default)]
    output_index: LNum,
    #[serde(borrow, default)]
    item_id: LStr<'a>,
    #[serde(borrow, default)]
    arguments: LStr<'a>,
    #[serde(borrow, default)]
    item: Option<Value<'a>>,
    #[serde(borrow, default)]
    response: Option<Value<'a>>,
}

/// Stream state for the Responses API.
#[derive(Debug, Default)]
pub(crate) struct ResponsesStream {
    /// Function-call items: (output_index, item id, position in `tool_calls`).
    calls: Vec<(Option<u64>, Option<String>, usize)>,
    saw_text_delta: bool,
}

impl ResponsesStream {
    pub(crate) fn on_event(&mut self, acc: &mut Acc, ev: &SseEventRef<'_>) {
        let data = ev.data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        let Some(e) = acc.parse_event::<ResponsesEvent<'_>>(data) else {
            return;
        };
        let sse_name = ev.event.map(String::from_utf8_lossy);
        let ty = e.ty.as_str().or(sse_name.as_deref()).unwrap_or("");
        match ty {
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(d) = e.delta.non_empty() {
                    acc.push_text(d);
                    acc.content_at(ev.end_offset);
                    self.saw_text_delta = true;
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let Some(item) = e.item.as_ref() else {
                    return;
                };
                if !matches!(
                    item.get("type").and_then(Value::as_str),
                    Some("function_call" | "custom_tool_call")
                ) {
                    return;
                }
                let item_id = item.get("id").and_then(non_empty_str);
                let pos = match self.find(e.output_index.0, item_id) {
                    Some(p) => p,
                    None => {
                        let Some(p) = acc.add_tool_call(None, String::new()) else {
                            return;
                        };
                        self.calls
                            .push((e.output_index.0, item_id.map(str::to_owned), p));
                        p
                    }
                };
                let call_id = item.get("call_id").and_then(non_empty_str).or(item_id);
                let name = item.get("name").and_then(non_empty_str);
                let args = arguments_text(item.get("arguments").or_else(|| item.get("input")));
                if ty == "response.output_item.done" {
                    fill_call(acc, pos, call_id, name, None);
                    if !args.is_empty() {
                        acc.set_args(pos, &args);
                    }
                } else if fill_call(acc, pos, call_id, name, Some(&args)) {
                    acc.content_at(ev.end_offset);
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                if let Some(pos) = self.find(e.output_index.0, e.item_id.non_empty()) {
                    if let Some(d) = e.delta.non_empty() {
                        acc.push_args(pos, d);
                        acc.content_at(ev.end_offset);
                    }
                }
            }
            "response.function_call_arguments.done" => {
                if let (Some(pos), Some(a)) = (
                    self.find(e.output_index.0, e.item_id.non_empty()),
                    e.arguments.non_empty(),
                ) {
                    acc.set_args(pos, a);
                }
            }
            "response.created" | "response.in_progress" => {
                if let Some(r) = e.response.as_ref() {
                    set_id_model(r, acc);
                }
            }
            "response.completed"
            | "response.incomplete"
            | "response.failed"
            | "response.cancelled" => {
                if let Some(r) = e.response.as_ref() {
                    let with_text = !self.saw_text_delta && acc.info.text.is_empty();
                    let with_tools = acc.info.tool_calls.is_empty();
                    apply_response_object(r, acc, with_text, with_tools);
                }
                if matches!(ty, "response.completed" | "response.incomplete") {
                    acc.info.stream_complete = true;
                }
                if ty == "response.failed" && acc.info.error_type.is_none() {
                    acc.info.error_type = Some("error".to_owned());
                }
            }
            "error" => {
                let v = Value::parse(data).ok();
                acc.info.error_type = v
                    .as_ref()
                    .and_then(error_type_of)
                    .or_else(|| Some("error".to_owned()));
            }
            _ => {}
        }
    }

    fn find(&self, output_index: Option<u64>, item_id: Option<&str>) -> Option<usize> {
        self.calls
            .iter()
            .find(|(oi, id, _)| match (output_index, item_id) {
                (Some(o), _) if oi.is_some() => *oi == Some(o),
                (_, Some(i)) => id.as_deref() == Some(i),
                _ => false,
            })
            .map(|(_, _, p)| *p)
    }

    pub(crate) fn finish(&mut self, _acc: &mut Acc) {}
}

#[cfg(test)]
mod tests {
    use crate::protocol::{anomaly, parse_request, parse_response, ResponseStream};
    use crate::record::{Api, ToolCall, Usage};

    /// Builds an SSE body from `data:` payloads, the way OpenAI frames them.
    fn sse(payloads: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"\n\n");
        }
        out
    }

    /// Builds an SSE body of named events, the way the Responses API frames them.
    fn sse_named(events: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in events {
            out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
        }
        out
    }

    const CHAT_STREAM: &[&str] = &[
        r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":"The capital"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":" of France is \"Paris\".\n"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[],"usage":{"prompt_tokens":1117,"completion_tokens":12,"total_tokens":1129,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
        "[DONE]",
    ];

    #[test]
    fn chat_stream_assembles_text_usage_finish_and_completes() {
        let body = sse(CHAT_STREAM);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.text, "The capital of France is \"Paris\".\n");
        assert_eq!(
            info.response_id.as_deref(),
            Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG")
        );
        assert_eq!(info.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(info.finish_reasons, vec!["stop"]);
        assert_eq!(
            info.usage,
            Usage {
                input_tokens: Some(1117),
                output_tokens: Some(12),
                cached_input_tokens: Some(1024),
                reasoning_tokens: Some(0),
                estimated: false
            }
        );
        assert!(info.stream_complete);
        assert_eq!(info.anomaly, None);
        assert!(info.tool_calls.is_empty());
    }

    #[test]
    fn chat_stream_offsets_mark_first_event_and_content_events_only() {
        let body = sse(CHAT_STREAM);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        let ends: Vec<usize> = {
            let mut p = crate::protocol::sse::SseParser::new(1 << 20);
            let mut out = Vec::new();
            p.push(&body, &mut out);
            out.iter().map(|e| e.end_offset).collect()
        };
        assert_eq!(info.first_event_end, Some(ends[0]));
        // The role-only first chunk, the finish chunk and the usage chunk carry no content.
        assert_eq!(info.content_event_ends, vec![ends[1], ends[2]]);
    }

    #[test]
    fn chat_stream_pushed_byte_by_byte_matches_whole_body() {
        let body = sse(CHAT_STREAM);
        let whole = parse_response(Api::ChatCompletions, 200, &body, true);
        let mut s = ResponseStream::new(Api::ChatCompletions);
        for b in body.chunks(1) {
            s.push(b);
        }
        assert_eq!(s.finish(), whole);
    }

    #[test]
    fn chat_stream_without_done_is_not_complete() {
        let body = sse(&CHAT_STREAM[..3]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert!(!info.stream_complete);
        assert_eq!(info.text, "The capital of France is \"Paris\".\n");
        assert!(info.finish_reasons.is_empty());
        assert_eq!(info.anomaly, None);
    }

    #[test]
    fn chat_stream_cut_mid_event_is_not_complete() {
        let mut body = sse(&CHAT_STREAM[..2]);
        body.extend_from_slice(br#"data: {"id":"chatcmpl-B9MH","choices":[{"index":0,"del"#);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert!(!info.stream_complete);
        assert_eq!(info.text, "The capital");
    }

    #[test]
    fn chat_stream_assembles_parallel_tool_calls_by_index() {
        let body = sse(&[
            r#"{"id":"chatcmpl-tc1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-tc1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"lo"}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-tc1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"cation\": \"Paris\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-tc1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_X2","type":"function","function":{"name":"get_time","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-tc1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"tz\":\"CET\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-tc1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(
            info.tool_calls,
            vec![
                ToolCall {
                    id: Some("call_DdmO9pD3xa9XTPNJ32zg2hcA".into()),
                    name: "get_weather".into(),
                    arguments: r#"{"location": "Paris"}"#.into()
                },
                ToolCall {
                    id: Some("call_X2".into()),
                    name: "get_time".into(),
                    arguments: r#"{"tz":"CET"}"#.into()
                },
            ]
        );
        assert_eq!(info.text, "");
        assert_eq!(info.finish_reasons, vec!["tool_calls"]);
        // Every tool-call delta (start or arguments) is content; the finish chunk is not.
        assert_eq!(info.content_event_ends.len(), 5);
    }

    #[test]
    fn chat_stream_tool_calls_without_index_from_compatible_servers() {
        let body = sse(&[
            r#"{"id":"x","model":"llama3.1","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","function":{"name":"a","arguments":"{\"q\":1}"}}]}}]}"#,
            r#"{"id":"x","model":"llama3.1","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_2","function":{"name":"b","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        let names: Vec<&str> = info.tool_calls.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(info.tool_calls[0].arguments, r#"{"q":1}"#);
    }

    #[test]
    fn chat_stream_legacy_function_call_becomes_tool_call() {
        let body = sse(&[
            r#"{"id":"c","model":"gpt-3.5-turbo-0613","choices":[{"index":0,"delta":{"role":"assistant","content":null,"function_call":{"name":"get_current_weather","arguments":""}},"finish_reason":null}]}"#,
            r#"{"id":"c","model":"gpt-3.5-turbo-0613","choices":[{"index":0,"delta":{"function_call":{"arguments":"{\"location\":\"Boston\"}"}},"finish_reason":null}]}"#,
            r#"{"id":"c","model":"gpt-3.5-turbo-0613","choices":[{"index":0,"delta":{},"finish_reason":"function_call"}]}"#,
            "[DONE]",
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.tool_calls.len(), 1);
        assert_eq!(info.tool_calls[0].name, "get_current_weather");
        assert_eq!(info.tool_calls[0].arguments, r#"{"location":"Boston"}"#);
        assert_eq!(info.finish_reasons, vec!["function_call"]);
    }

    #[test]
    fn chat_stream_with_n_choices_keeps_choice_zero_text_and_all_finish_reasons() {
        let body = sse(&[
            r#"{"id":"c","model":"m","choices":[{"index":1,"delta":{"content":"B"}},{"index":0,"delta":{"content":"A"}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            "[DONE]",
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.text, "A");
        assert_eq!(info.finish_reasons, vec!["stop", "length"]);
    }

    #[test]
    fn chat_stream_malformed_chunk_is_anomaly_but_parsing_continues() {
        let body = sse(&[
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            "[DONE]",
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.text, "Hello");
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::SSE_DATA_NOT_JSON));
        assert!(info.stream_complete);
    }

    #[test]
    fn chat_stream_oddly_typed_fields_do_not_lose_the_chunk() {
        let body = sse(&[
            r#"{"id":7,"model":null,"choices":[{"index":"0","delta":{"content":"ok","tool_calls":null,"extra":[1,{"a":2}]},"finish_reason":false}],"usage":{"prompt_tokens":3.0,"completion_tokens":-1}}"#,
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.text, "ok");
        assert_eq!(info.anomaly, None);
        assert_eq!(info.usage.input_tokens, Some(3));
        assert_eq!(info.usage.output_tokens, None);
    }

    #[test]
    fn chat_stream_non_json_data_line_is_anomaly() {
        let body = sse(&["hello world", "[DONE]"]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::SSE_DATA_NOT_JSON));
        assert!(info.stream_complete);
    }

    #[test]
    fn chat_stream_in_band_error_sets_error_type() {
        let body = sse(&[
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"partial"}}]}"#,
            r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#,
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.error_type.as_deref(), Some("server_error"));
        assert!(!info.stream_complete);
    }

    #[test]
    fn event_stream_content_type_with_no_events_is_anomaly() {
        let info = parse_response(Api::ChatCompletions, 200, b"", true);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::SSE_NO_EVENTS));
        let info = parse_response(Api::ChatCompletions, 200, b": ping\n\n", true);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::SSE_NO_EVENTS));
    }

    #[test]
    fn json_body_labelled_event_stream_is_still_read_but_flagged() {
        let info = parse_response(Api::ChatCompletions, 200, CHAT_JSON.as_bytes(), true);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::SSE_NO_EVENTS));
        assert_eq!(info.text, "Hello! How can I assist you today?");
    }

    #[test]
    fn sse_body_without_event_stream_content_type_is_parsed_as_stream() {
        let body = sse(CHAT_STREAM);
        let info = parse_response(Api::ChatCompletions, 200, &body, false);
        assert!(info.stream_complete);
        assert_eq!(info.text, "The capital of France is \"Paris\".\n");
    }

    #[test]
    fn oversized_stream_event_is_anomaly() {
        let big = format!(
            r#"{{"id":"c","model":"m","choices":[{{"index":0,"delta":{{"content":"{}"}}}}]}}"#,
            "x".repeat(crate::protocol::MAX_EVENT_BYTES)
        );
        let body = sse(&[
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            &big,
            "[DONE]",
        ]);
        let info = parse_response(Api::ChatCompletions, 200, &body, true);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::SSE_OVERSIZED));
        assert_eq!(info.text, "a");
        assert!(info.stream_complete);
    }

    #[test]
    fn runaway_stream_text_is_capped_and_flagged() {
        let piece = "y".repeat(64 * 1024);
        let chunk = format!(
            r#"{{"id":"c","model":"m","choices":[{{"index":0,"delta":{{"content":"{piece}"}}}}]}}"#
        );
        let mut s = ResponseStream::new(Api::ChatCompletions);
        let framed = sse(&[&chunk]);
        for _ in 0..80 {
            s.push(&framed);
        }
        let info = s.finish();
        assert_eq!(info.text.len(), crate::protocol::MAX_TEXT_BYTES);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::TEXT_TRUNCATED));
    }

    const CHAT_JSON: &str = r#"{
      "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
      "object": "chat.completion",
      "created": 1741569952,
      "model": "gpt-4.1-2025-04-14",
      "choices": [
        {
          "index": 0,
          "message": {
            "role": "assistant",
            "content": "Hello! How can I assist you today?",
            "refusal": null,
            "annotations": []
          },
          "logprobs": null,
          "finish_reason": "stop"
        }
      ],
      "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": {
          "reasoning_tokens": 0,
          "audio_tokens": 0,
          "accepted_prediction_tokens": 0,
          "rejected_prediction_tokens": 0
        }
      },
      "service_tier": "default"
    }"#;

    #[test]
    fn chat_json_reads_text_usage_model_id_finish() {
        let info = parse_response(Api::ChatCompletions, 200, CHAT_JSON.as_bytes(), false);
        assert_eq!(info.text, "Hello! How can I assist you today?");
        assert_eq!(
            info.response_id.as_deref(),
            Some("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT")
        );
        assert_eq!(info.response_model.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(info.finish_reasons, vec!["stop"]);
        assert_eq!(info.usage.input_tokens, Some(19));
        assert_eq!(info.usage.output_tokens, Some(10));
        assert_eq!(info.usage.cached_input_tokens, Some(0));
        assert_eq!(info.usage.reasoning_tokens, Some(0));
        assert!(!info.stream_complete);
        assert_eq!(info.first_event_end, None);
        assert!(info.content_event_ends.is_empty());
        assert_eq!(info.anomaly, None);
    }

    #[test]
    fn chat_json_tool_calls_and_content_parts() {
        let body = r#"{
          "id": "chatcmpl-abc123",
          "object": "chat.completion",
          "created": 1699896916,
          "model": "gpt-4o-mini",
          "choices": [{
            "index": 0,
            "message": {
              "role": "assistant",
              "content": [{"type": "text", "text": "Let me check."}],
              "tool_calls": [{
                "id": "call_abc123",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": "{\n\"location\": \"Boston, MA\"\n}"}
              }, {
                "id": "call_obj",
                "type": "function",
                "function": {"name": "lookup", "arguments": {"k": 1}}
              }]
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
          }],
          "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99,
                    "completion_tokens_details": {"reasoning_tokens": 0}}
        }"#;
        let info = parse_response(Api::ChatCompletions, 200, body.as_bytes(), false);
        assert_eq!(info.text, "Let me check.");
        assert_eq!(info.tool_calls.len(), 2);
        assert_eq!(info.tool_calls[0].id.as_deref(), Some("call_abc123"));
        assert_eq!(info.tool_calls[0].name, "get_current_weather");
        assert_eq!(
            info.tool_calls[0].arguments,
            "{\n\"location\": \"Boston, MA\"\n}"
        );
        assert_eq!(info.tool_calls[1].arguments, r#"{"k":1}"#);
        assert_eq!(info.finish_reasons, vec!["tool_calls"]);
        assert_eq!(info.usage.cached_input_tokens, None);
    }

    #[test]
    fn chat_json_legacy_function_call() {
        let body = r#"{"id":"c","object":"chat.completion","model":"gpt-3.5-turbo-0613","choices":[{"index":0,"message":{"role":"assistant","content":null,"function_call":{"name":"get_current_weather","arguments":"{\"location\": \"Boston\"}"}},"finish_reason":"function_call"}]}"#;
        let info = parse_response(Api::ChatCompletions, 200, body.as_bytes(), false);
        assert_eq!(info.tool_calls[0].name, "get_current_weather");
        assert_eq!(info.tool_calls[0].id, None);
    }

    #[test]
    fn chat_json_refusal_is_kept_as_answer_text() {
        let body = r#"{"id":"c","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I'm sorry, I can't help with that."},"finish_reason":"stop"}]}"#;
        let info = parse_response(Api::ChatCompletions, 200, body.as_bytes(), false);
        assert_eq!(info.text, "I'm sorry, I can't help with that.");
    }

    #[test]
    fn malformed_json_body_is_anomaly() {
        let info = parse_response(
            Api::ChatCompletions,
            200,
            br#"{"id":"c","choices":[{"#,
            false,
        );
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::INVALID_JSON));
        let info = parse_response(Api::ChatCompletions, 200, b"<html>ok</html>", false);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::INVALID_JSON));
        let info = parse_response(Api::ChatCompletions, 200, b"[1,2]", false);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::UNEXPECTED_JSON));
        let info = parse_response(Api::ChatCompletions, 200, b"", false);
        assert_eq!(info.anomaly.as_deref(), Some(anomaly::EMPTY_BODY));
    }

    #[test]
    fn openai_429_rate_limit_exceeded_error_type() {
        let body = r#"{
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29876, Requested 1200. Please try again in 2.152s.",
        "type": "tokens",
        "param": null,
        "code": "rate_limit_exceeded"
    }
}"#;
        let info = parse_response(Api::ChatCompletions, 429, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(info.text, "");
        assert_eq!(info.anomaly, None);
    }

    #[test]
    fn openai_429_insufficient_quota_error_type() {
        let body = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let info = parse_response(Api::ChatCompletions, 429, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("insufficient_quota"));
    }

    #[test]
    fn openai_400_prefers_type_over_code() {
        let body = r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let info = parse_response(Api::ChatCompletions, 400, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("invalid_request_error"));
    }

    #[test]
    fn azure_error_with_only_code_uses_code() {
        let body = r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current AIServices S0 pricing tier."}}"#;
        let info = parse_response(Api::ChatCompletions, 429, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("429"));
        let body = r#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
        let info = parse_response(Api::ChatCompletions, 400, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("content_filter"));
    }

    #[test]
    fn vllm_and_ollama_error_shapes() {
        let body = r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#;
        let info = parse_response(Api::ChatCompletions, 404, body.as_bytes(), false);
        assert_eq!(info.error_type.as_deref(), Some("NotFoundError"));
        let info = parse_response(
            Api::ChatCompletions,
            404,
            br#"{"error":"model \"x\" not found"}"#,
            false,
        );
        assert_eq!(info.error_type, None);
    }

    #[test]
    fn non_json_error_body_has_no_error_type_and_no_anomaly() {
        let body = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
        let info = parse_response(Api::ChatCompletions, 502, body, false);
        assert_eq!(info.error_type, None);
        assert_eq!(info.anomaly, None);
    }

    #[test]
    fn completions_json_and_stream_read_choice_text() {
        let body = r#"{"id":"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7","object":"text_completion","created":1589478378,"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb","choices":[{"text":"\n\nThis is indeed a test","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        let info = parse_response(Api::Completions, 200, body.as_bytes(), false);
        assert_eq!(info.text, "\n\nThis is indeed a test");
        assert_eq!(info.finish_reasons, vec!["length"]);
        assert_eq!(info.usage.input_tokens, Some(5));

        let stream = sse(&[
            r#"{"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":"This","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
            r#"{"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":" is a test","index":0,"logprobs":null,"finish_reason":"stop"}],"model":"gpt-3.5-turbo-instruct"}"#,
            "[DONE]",
        ]);
        let info = parse_response(Api::Completions, 200, &stream, true);
        assert_eq!(info.text, "This is a test");
        assert_eq!(info.finish_reasons, vec!["stop"]);
        assert!(info.stream_complete);
        assert_eq!(info.content_event_ends.len(), 2);
    }

    #[test]
    fn embeddings_json_reads_usage_and_model_without_text() {
        let body = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.0023064255,-0.009327292,-0.0028842222],"index":0}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let info = parse_response(Api::Embeddings, 200, body.as_bytes(), false);
        assert_eq!(info.text, "");
        assert_eq!(
            info.response_model.as_deref(),
            Some("text-embedding-3-small")
        );
        assert_eq!(info.usage.input_tokens, Some(8));
        assert_eq!(info.usage.output_tokens, None);
        assert_eq!(info.anomaly, None);
    }

    const RESPONSES_JSON: &str = r#"{
      "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
      "object": "response",
      "created_at": 1741476777,
      "status": "completed",
      "error": null,
      "incomplete_details": null,
      "instructions": null,
      "max_output_tokens": null,
      "model": "gpt-4o-2024-08-06",
      "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
          "type": "message",
          "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
          "status": "completed",
          "role": "assistant",
          "content": [
            {"type": "output_text", "text": "The image depicts a scenic landscape.", "annotations": []}
          ]
        }
      ],
      "parallel_tool_calls": true,
      "usage": {
        "input_tokens": 328,
        "input_tokens_details": {"cached_tokens": 128},
        "output_tokens": 52,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 380
      }
    }"#;

    #[test]
    fn responses_json_reads_output_text_usage_status() {
        let info = parse_response(Api::Responses, 200, RESPONSES_JSON.as_bytes(), false);
        assert_eq!(info.text, "The image depicts a scenic landscape.");
        assert_eq!(
            info.response_id.as_deref(),
            Some("resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41")
        );
        assert_eq!(info.finish_reasons, vec!["stop"]);
        assert_eq!(
            info.usage,
            Usage {
                input_tokens: Some(328),
                output_tokens: Some(52),
                cached_input_tokens: Some(128),
                reasoning_tokens: Some(20),
                estimated: false
            }
        );
        assert_eq!(info.error_type, None);
    }

    #[test]
    fn responses_json_function_call_and_incomplete_reason() {
        let body = r#"{"id":"resp_fc","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-4.1","output":[{"type":"function_call","id":"fc_12345xyz","call_id":"call_12345xyz","name":"get_weather","arguments":"{\"location\":\"Paris, France\"}","status":"completed"}],"usage":{"input_tokens":291,"output_tokens":23,"total_tokens":314}}"#;
        let info = parse_response(Api::Responses, 200, body.as_bytes(), false);
        assert_eq!(
            info.tool_calls,
            vec![ToolCall {
                id: Some("call_12345xyz".into()),
                name: "get_weather".into(),
                arguments: r#"{"location":"Paris, France"}"#.into()
            }]
        );
        assert_eq!(info.finish_reasons, vec!["max_output_tokens"]);
    }

    fn responses_stream_events() -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "response.created",
                r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null}}"#,
            ),
            (
                "response.in_progress",
                r#"{"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","status":"in_progress","model":"gpt-4.1-2025-04-14","output":[]}}"#,
            ),
            (
                "response.output_item.added",
                r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
            ),
            (
                "response.content_part.added",
                r#"{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}"#,
            ),
            (
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":"Hi"}"#,
            ),
            (
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":" there!"}"#,
            ),
            (
                "response.output_text.done",
                r#"{"type":"response.output_text.done","sequence_number":6,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"text":"Hi there!"}"#,
            ),
            (
                "response.output_item.added",
                r#"{"type":"response.output_item.added","sequence_number":7,"output_index":1,"item":{"type":"function_call","id":"fc_1","call_id":"call_abc","name":"get_weather","arguments":"","status":"in_progress"}}"#,
            ),
            (
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","sequence_number":8,"item_id":"fc_1","output_index":1,"delta":"{\"location\":"}"#,
            ),
            (
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","sequence_number":9,"item_id":"fc_1","output_index":1,"delta":"\"Paris\"}"}"#,
            ),
            (
                "response.function_call_arguments.done",
                r#"{"type":"response.function_call_arguments.done","sequence_number":10,"item_id":"fc_1","output_index":1,"arguments":"{\"location\":\"Paris\"}"}"#,
            ),
            (
                "response.output_item.done",
                r#"{"type":"response.output_item.done","sequence_number":11,"output_index":1,"item":{"type":"function_call","id":"fc_1","call_id":"call_abc","name":"get_weather","arguments":"{\"location\":\"Paris\"}","status":"completed"}}"#,
            ),
            (
                "response.completed",
                r#"{"type":"response.completed","sequence_number":12,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","status":"completed","error":null,"incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there!","annotations":[]}]},{"type":"function_call","id":"fc_1","call_id":"call_abc","name":"get_weather","arguments":"{\"location\":\"Paris\"}","status":"completed"}],"usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}}}"#,
            ),
        ]
    }

    #[test]
    fn responses_stream_assembles_text_tool_call_usage_and_completes() {
        let body = sse_named(&responses_stream_events());
        let info = parse_response(Api::Responses, 200, &body, true);
        assert_eq!(info.text, "Hi there!");
        assert_eq!(
            info.tool_calls,
            vec![ToolCall {
                id: Some("call_abc".into()),
                name: "get_weather".into(),
                arguments: r#"{"location":"Paris"}"#.into()
            }]
        );
        assert_eq!(
            info.response_id.as_deref(),
            Some("resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654")
        );
        assert_eq!(info.response_model.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(info.usage.input_tokens, Some(37));
        assert_eq!(info.usage.output_tokens, Some(11));
        assert_eq!(info.finish_reasons, vec!["stop"]);
        assert!(info.stream_complete);
        assert_eq!(info.anomaly, None);
        // Two text deltas, the function-call item (name), two argument deltas.
        assert_eq!(info.content_event_ends.len(), 5);
    }

    #[test]
    fn responses_stream_without_terminal_event_is_not_complete() {
        let events = responses_stream_events();
        let body = sse_named(&events[..6]);
        let info = parse_response(Api::Responses, 200, &body, true);
        assert!(!info.stream_complete);
        assert_eq!(info.text, "Hi there!");
        assert_eq!(info.usage, Usage::default());
    }

    #[test]
    fn responses_stream_incomplete_reports_reason_and_completes() {
        let body = sse_named(&[
            (
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"Once upon"}"#,
            ),
            (
                "response.incomplete",
                r#"{"type":"response.incomplete","response":{"id":"resp_i","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"o4-mini","output":[{"type":"message","content":[{"type":"output_text","text":"Once upon"}]}],"usage":{"input_tokens":10,"output_tokens":16,"output_tokens_details":{"reasoning_tokens":12}}}}"#,
            ),
        ]);
        let info = parse_response(Api::Responses, 200, &body, true);
        assert_eq!(info.finish_reasons, vec!["max_output_tokens"]);
        assert!(info.stream_complete);
        assert_eq!(
            info.text, "Once upon",
            "delta text is not doubled by the final object"
        );
        assert_eq!(info.usage.reasoning_tokens, Some(12));
    }

    #[test]
    fn responses_stream_failed_and_error_events_set_error_type() {
        let body = sse_named(&[(
            "response.failed",
            r#"{"type":"response.failed","response":{"id":"resp_f","object":"response","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"model":"gpt-4o","output":[]}}"#,
        )]);
        let info = parse_response(Api::Responses, 200, &body, true);
        assert_eq!(info.error_type.as_deref(), Some("server_error"));
        assert!(!info.stream_complete);

        let body = sse_named(&[(
            "error",
            r#"{"type":"error","code":"rate_limit_exceeded","message":"Rate limit reached","param":null,"sequence_number":1}"#,
        )]);
        let info = parse_response(Api::Responses, 200, &body, true);
        assert_eq!(info.error_type.as_deref(), Some("rate_limit_exceeded"));
    }

    #[test]
    fn responses_stream_text_only_in_final_object_is_used() {
        let body = sse_named(&[(
            "response.completed",
            r#"{"type":"response.completed","response":{"id":"r","status":"completed","model":"m","output":[{"type":"message","content":[{"type":"output_text","text":"Only here"}]}]}}"#,
        )]);
        let info = parse_response(Api::Responses, 200, &body, true);
        assert_eq!(info.text, "Only here");
    }

    #[test]
    fn request_chat_reads_model_stream_params_and_last_user_turn() {
        let body = r#"{
          "model": "gpt-4o",
          "stream": true,
          "stream_options": {"include_usage": true},
          "max_completion_tokens": 512,
          "temperature": 0.2,
          "top_p": 0.9,
          "frequency_penalty": 0.5,
          "presence_penalty": -0.5,
          "stop": ["\n\n", "END"],
          "seed": -42,
          "n": 2,
          "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": [
              {"type": "text", "text": "What is in this image?"},
              {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "tool output"}
          ]
        }"#;
        let r = parse_request(Api::ChatCompletions, body.as_bytes()).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o"));
        assert!(r.stream);
        assert_eq!(r.prompt.as_deref(), Some("What is in this image?"));
        assert_eq!(r.params.max_tokens, Some(512));
        assert_eq!(r.params.temperature, Some(0.2));
        assert_eq!(r.params.top_p, Some(0.9));
        assert_eq!(r.params.frequency_penalty, Some(0.5));
        assert_eq!(r.params.presence_penalty, Some(-0.5));
        assert_eq!(r.params.stop_sequences, vec!["\n\n", "END"]);
        assert_eq!(r.params.seed, Some(-42));
        assert_eq!(r.params.choice_count, Some(2));
    }

    #[test]
    fn request_chat_stop_string_and_max_tokens() {
        let body = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"max_tokens":100,"stop":"~~"}"#;
        let r = parse_request(Api::ChatCompletions, body.as_bytes()).unwrap();
        assert_eq!(r.params.max_tokens, Some(100));
        assert_eq!(r.params.stop_sequences, vec!["~~"]);
        assert!(!r.stream);
        assert_eq!(r.prompt.as_deref(), Some("hi"));
    }

    #[test]
    fn request_responses_input_string_and_item_list() {
        let r = parse_request(
            Api::Responses,
            br#"{"model":"gpt-4.1","input":"Tell me a three sentence bedtime story about a unicorn.","max_output_tokens":300,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            r.prompt.as_deref(),
            Some("Tell me a three sentence bedtime story about a unicorn.")
        );
        assert_eq!(r.params.max_tokens, Some(300));
        assert!(r.stream);

        let body = r#"{"model":"gpt-4.1","input":[
            {"role":"developer","content":"Talk like a pirate."},
            {"role":"user","content":"Are semicolons optional in JavaScript?"},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Arr"}]},
            {"type":"message","role":"user","content":[{"type":"input_text","text":"And in Rust?"},{"type":"input_image","image_url":"data:..."}]},
            {"type":"function_call_output","call_id":"call_1","output":"{\"temp\":20}"}
        ]}"#;
        let r = parse_request(Api::Responses, body.as_bytes()).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("And in Rust?"));
    }

    #[test]
    fn request_completions_prompt_string_or_first_of_batch() {
        let r = parse_request(Api::Completions, br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7,"temperature":0}"#).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("Say this is a test"));
        assert_eq!(r.params.temperature, Some(0.0));
        let r = parse_request(
            Api::Completions,
            br#"{"model":"m","prompt":["first","second"]}"#,
        )
        .unwrap();
        assert_eq!(r.prompt.as_deref(), Some("first"));
        let r = parse_request(Api::Completions, br#"{"model":"m","prompt":[1212,318]}"#).unwrap();
        assert_eq!(r.prompt, None);
    }

    #[test]
    fn request_embeddings_input_list_is_joined() {
        let r = parse_request(Api::Embeddings, br#"{"model":"text-embedding-3-small","input":["alpha","beta"],"encoding_format":"float"}"#).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("alpha\nbeta"));
        let r = parse_request(
            Api::Embeddings,
            br#"{"model":"text-embedding-3-small","input":"The food was delicious"}"#,
        )
        .unwrap();
        assert_eq!(r.prompt.as_deref(), Some("The food was delicious"));
    }

    #[test]
    fn request_embeddings_huge_input_is_capped() {
        let item = "z".repeat(300_000);
        let body = serde_json::json!({"model": "m", "input": [item.clone(), item.clone(), item.clone(), item.clone(), item]});
        let r = parse_request(Api::Embeddings, body.to_string().as_bytes()).unwrap();
        assert_eq!(
            r.prompt.map(|p| p.len()),
            Some(crate::protocol::MAX_PROMPT_BYTES)
        );
    }

    #[test]
    fn request_invalid_json_is_error_and_wrong_types_are_ignored() {
        assert!(parse_request(Api::ChatCompletions, b"{\"model\":").is_err());
        assert!(parse_request(Api::ChatCompletions, b"[]").is_err());
        let r = parse_request(
            Api::ChatCompletions,
            br#"{"model":5,"stream":"yes","temperature":"hot","messages":"nope"}"#,
        )
        .unwrap();
        assert_eq!(r.model, None);
        assert!(!r.stream);
        assert_eq!(r.params.temperature, None);
        assert_eq!(r.prompt, None);
    }
}
