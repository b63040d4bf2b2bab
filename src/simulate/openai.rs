//! OpenAI-shaped answers: chat completions, Responses, legacy completions and embeddings.

use serde_json::{json, Value};

use super::body::{Phase, Reply, SseEvent};
use super::text::{
    alnum_id, answer_with, chunk_words, content_text, created_at, estimate_tokens, fragments,
    hex_id, last_user_text, messages_tokens, mix64, truncate_to_tokens, wants_weather_tool,
    weather_args, weather_tool_name,
};
use super::ws::base64;
use super::Ctx;

/// Under the `swap` fault, the upstream silently serves another snapshot of the model.
fn swapped(model: String, ctx: &Ctx) -> String {
    if ctx.faults.swap {
        format!("{model}-swapped")
    } else {
        model
    }
}

/// The dated model name the API reports for a request's model.
pub(crate) fn resolve_model(model: Option<&str>) -> String {
    match model {
        None | Some("") | Some("gpt-4o-mini") => "gpt-4o-mini-2024-07-18".to_string(),
        Some("gpt-4o") => "gpt-4o-2024-08-06".to_string(),
        Some("gpt-4.1") => "gpt-4.1-2025-04-14".to_string(),
        Some("gpt-4.1-mini") => "gpt-4.1-mini-2025-04-14".to_string(),
        Some("o3-mini") => "o3-mini-2025-01-31".to_string(),
        Some(m) => m.to_string(),
    }
}

/// The OpenAI error envelope for `status`.
pub(crate) fn error_body(status: u16, message: Option<&str>) -> Value {
    let (etype, code, default_msg) = match status {
        400 => ("invalid_request_error", Value::Null, "Invalid request."),
        401 => (
            "invalid_request_error",
            json!("invalid_api_key"),
            "Incorrect API key provided: sk-mock****. You can find your API key at https://platform.openai.com/account/api-keys.",
        ),
        403 => ("invalid_request_error", json!("unsupported_country_region_territory"), "Country, region, or territory not supported."),
        404 => ("invalid_request_error", json!("model_not_found"), "The model does not exist or you do not have access to it."),
        405 => ("invalid_request_error", Value::Null, "Method not allowed."),
        429 => (
            "rate_limit_exceeded",
            json!("rate_limit_exceeded"),
            "Rate limit reached for requests on your organization. Limit: 5000 / min. Please try again in 1s.",
        ),
        503 => ("server_error", Value::Null, "The engine is currently overloaded, please try again later."),
        s if s >= 500 => ("server_error", Value::Null, "The server had an error while processing your request. Sorry about that!"),
        _ => ("invalid_request_error", Value::Null, "Invalid request."),
    };
    json!({"error": {"message": message.unwrap_or(default_msg), "type": etype, "param": Value::Null, "code": code}})
}

fn fingerprint(seed: u64) -> String {
    format!("fp_{}", hex_id(seed ^ 0x00f1_9e70, 10))
}

fn max_tokens(req: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64))
}

fn is_stream(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn include_usage(req: &Value, ctx: &Ctx) -> bool {
    !ctx.faults.no_usage
        && req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false)
}

fn tools_tokens(req: &Value) -> u64 {
    match req.get("tools") {
        Some(t @ Value::Array(a)) if !a.is_empty() => estimate_tokens(&t.to_string()),
        _ => 0,
    }
}

fn reasoning_tokens(model: &str, seed: u64) -> u64 {
    let reasons = ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model.starts_with(p));
    if reasons {
        64 * (1 + mix64(seed ^ 0x0007_ea50) % 6)
    } else {
        0
    }
}

fn cached_tokens(prompt_tokens: u64) -> u64 {
    if prompt_tokens >= 1024 {
        prompt_tokens / 2 / 128 * 128
    } else {
        0
    }
}

fn chat_usage(prompt: u64, completion: u64, reasoning: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached_tokens(prompt), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// What the model "says": text, or one weather tool call.
enum Said {
    Text { text: String, truncated: bool },
    Tool { name: String, args: String },
}

fn say(req: &Value, prompt: &str, ctx: &Ctx, max: Option<u64>) -> Said {
    if ctx.faults.blank {
        return Said::Text {
            text: String::new(),
            truncated: false,
        };
    }
    if wants_weather_tool(req, prompt) {
        return Said::Tool {
            name: weather_tool_name(req),
            args: weather_args(prompt).to_string(),
        };
    }
    let (text, truncated) = truncate_to_tokens(&answer_with(prompt, &ctx.faults), max);
    Said::Text { text, truncated }
}

impl Said {
    fn output_tokens(&self) -> u64 {
        match self {
            Said::Text { text, .. } => estimate_tokens(text),
            Said::Tool { args, name, .. } => estimate_tokens(args) + estimate_tokens(name) + 7,
        }
    }
}

/// `POST .../chat/completions`.
pub(crate) fn chat(req: &Value, ctx: &Ctx) -> Result<Reply, String> {
    if !matches!(req.get("messages"), Some(Value::Array(_))) {
        return Err("Missing required parameter: 'messages'.".to_string());
    }
    let model = swapped(resolve_model(req.get("model").and_then(Value::as_str)), ctx);
    let prompt = last_user_text(req.get("messages"));
    let prompt_tokens = messages_tokens(req.get("messages")) + tools_tokens(req);
    let said = say(
        req,
        &prompt,
        ctx,
        max_tokens(req, &["max_completion_tokens", "max_tokens"]),
    );
    let reasoning = reasoning_tokens(&model, ctx.seed);
    let usage = chat_usage(prompt_tokens, said.output_tokens() + reasoning, reasoning);
    let id = format!("chatcmpl-{}", alnum_id(ctx.seed, 29));
    let created = created_at(ctx.seed);
    let fp = fingerprint(ctx.seed);
    let call_id = format!("call_{}", alnum_id(ctx.seed ^ 0x0000_ca11, 24));
    let finish = match &said {
        Said::Text {
            truncated: true, ..
        } => "length",
        Said::Text { .. } => "stop",
        Said::Tool { .. } => "tool_calls",
    };

    if !is_stream(req) {
        let message = match &said {
            Said::Text { text, .. } => {
                json!({"role": "assistant", "content": text, "refusal": null, "annotations": []})
            }
            Said::Tool { name, args, .. } => json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}],
                "refusal": null,
                "annotations": []
            }),
        };
        let mut v = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "service_tier": "default",
            "system_fingerprint": fp
        });
        if !ctx.faults.no_usage {
            v["usage"] = usage;
        }
        return Ok(Reply::Json(v));
    }

    let with_usage = include_usage(req, ctx);
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": fp,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if with_usage {
            v["usage"] = Value::Null;
        }
        v
    };
    let mut events = Vec::new();
    match &said {
        Said::Text { text, .. } => {
            events.push(SseEvent::data(
                Phase::Pre,
                &chunk(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                ),
            ));
            for piece in chunk_words(text, ctx.seed) {
                events.push(SseEvent::data(
                    Phase::Content,
                    &chunk(json!({"content": piece}), Value::Null),
                ));
            }
        }
        Said::Tool { name, args, .. } => {
            let head = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}],
                "refusal": null
            });
            events.push(SseEvent::data(Phase::Pre, &chunk(head, Value::Null)));
            for frag in fragments(args, ctx.seed) {
                let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]});
                events.push(SseEvent::data(Phase::Content, &chunk(delta, Value::Null)));
            }
        }
    }
    events.push(SseEvent::data(
        Phase::Post,
        &chunk(json!({}), json!(finish)),
    ));
    if with_usage {
        let mut v = chunk(Value::Null, Value::Null);
        v["choices"] = json!([]);
        v["usage"] = usage;
        events.push(SseEvent::data(Phase::Post, &v));
    }
    events.push(SseEvent::done());
    Ok(Reply::Stream(events))
}

/// `POST .../completions` (legacy text completions).
pub(crate) fn completions(req: &Value, ctx: &Ctx) -> Result<Reply, String> {
    let prompt = match req.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::Null) | None => "<|endoftext|>".to_string(),
        Some(other) => other.to_string(),
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("gpt-3.5-turbo-instruct")
        .to_string();
    let (text, truncated) = if ctx.faults.blank {
        (String::new(), false)
    } else {
        truncate_to_tokens(
            &answer_with(&prompt, &ctx.faults),
            max_tokens(req, &["max_tokens"]),
        )
    };
    let finish = if truncated { "length" } else { "stop" };
    let prompt_tokens = estimate_tokens(&prompt).max(1);
    let completion_tokens = estimate_tokens(&text);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    });
    let id = format!("cmpl-{}", alnum_id(ctx.seed, 29));
    let created = created_at(ctx.seed);
    let fp = fingerprint(ctx.seed);
    let obj = |choices: Value| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": fp,
            "choices": choices
        })
    };
    if !is_stream(req) {
        let mut v =
            obj(json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]));
        if !ctx.faults.no_usage {
            v["usage"] = usage;
        }
        return Ok(Reply::Json(v));
    }
    let with_usage = include_usage(req, ctx);
    let chunk = |text: &str, finish: Value| {
        let mut v =
            obj(json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]));
        if with_usage {
            v["usage"] = Value::Null;
        }
        v
    };
    let mut events = Vec::new();
    let pieces = chunk_words(&text, ctx.seed);
    for (i, piece) in pieces.iter().enumerate() {
        // The first piece opens the stream, like a role chunk does for chat.
        let phase = if i == 0 { Phase::Pre } else { Phase::Content };
        events.push(SseEvent::data(phase, &chunk(piece, Value::Null)));
    }
    if pieces.is_empty() {
        events.push(SseEvent::data(Phase::Pre, &chunk("", Value::Null)));
    }
    events.push(SseEvent::data(Phase::Post, &chunk("", json!(finish))));
    if with_usage {
        let mut v = obj(json!([]));
        v["usage"] = usage;
        events.push(SseEvent::data(Phase::Post, &v));
    }
    events.push(SseEvent::done());
    Ok(Reply::Stream(events))
}

/// `POST .../embeddings`: eight deterministic unit-length floats per input.
pub(crate) fn embeddings(req: &Value, ctx: &Ctx) -> Result<Reply, String> {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect(),
        _ => return Err("'input' is a required property".to_string()),
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("text-embedding-3-small")
        .to_string();
    let as_base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let h = super::text::fnv1a(&[text.as_bytes()]);
            let raw: Vec<f64> = (0..8u64)
                .map(|k| (mix64(h ^ k.wrapping_mul(0x9e37_79b9)) % 20_001) as f64 / 10_000.0 - 1.0)
                .collect();
            let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
            let unit: Vec<f32> = raw.iter().map(|x| (x / norm) as f32).collect();
            let embedding = if as_base64 {
                let bytes: Vec<u8> = unit.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64(&bytes))
            } else {
                json!(unit)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|s| estimate_tokens(s).max(1)).sum();
    let mut v = json!({"object": "list", "data": data, "model": model});
    if !ctx.faults.no_usage {
        v["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    Ok(Reply::Json(v))
}

/// `POST .../responses` (the Responses API).
pub(crate) fn responses(req: &Value, ctx: &Ctx) -> Result<Reply, String> {
    let model = swapped(resolve_model(req.get("model").and_then(Value::as_str)), ctx);
    let instructions = req.get("instructions").cloned().unwrap_or(Value::Null);
    let (prompt, input_tokens) = match req.get("input") {
        Some(Value::String(s)) => (s.clone(), estimate_tokens(s) + 7),
        Some(items @ Value::Array(_)) => {
            (last_user_text(Some(items)), messages_tokens(Some(items)))
        }
        _ => (String::new(), 3),
    };
    let input_tokens =
        input_tokens + estimate_tokens(&content_text(&instructions)) + tools_tokens(req);
    let max = max_tokens(req, &["max_output_tokens"]);
    let said = say(req, &prompt, ctx, max);
    let reasoning = reasoning_tokens(&model, ctx.seed);
    let output_tokens = said.output_tokens() + reasoning;
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens(input_tokens)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens
    });
    let resp_id = format!("resp_{}", hex_id(ctx.seed, 48));
    let item_id = match &said {
        Said::Text { .. } => format!("msg_{}", hex_id(ctx.seed ^ 0x0000_0a5e, 48)),
        Said::Tool { .. } => format!("fc_{}", hex_id(ctx.seed ^ 0x0000_0a5e, 48)),
    };
    let call_id = format!("call_{}", alnum_id(ctx.seed ^ 0x0000_ca11, 24));
    let truncated = matches!(
        said,
        Said::Text {
            truncated: true,
            ..
        }
    );
    let final_status = if truncated { "incomplete" } else { "completed" };

    let item = |status: &str, full: bool| match &said {
        Said::Text { text, .. } => {
            let content = if full {
                json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
            } else {
                json!([])
            };
            json!({"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content})
        }
        Said::Tool { name, args, .. } => json!({
            "id": item_id,
            "type": "function_call",
            "status": status,
            "arguments": if full { args.as_str() } else { "" },
            "call_id": call_id,
            "name": name
        }),
    };
    let response = |status: &str, output: Value, usage: Option<&Value>| {
        let mut v = json!({
            "id": resp_id,
            "object": "response",
            "created_at": created_at(ctx.seed),
            "status": status,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": instructions,
            "max_output_tokens": max,
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": req.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "store": req.get("store").and_then(Value::as_bool).unwrap_or(true),
            "temperature": req.get("temperature").cloned().unwrap_or(json!(1.0)),
            "text": {"format": {"type": "text"}},
            "tool_choice": req.get("tool_choice").cloned().unwrap_or(json!("auto")),
            "tools": req.get("tools").cloned().unwrap_or(json!([])),
            "top_p": req.get("top_p").cloned().unwrap_or(json!(1.0)),
            "truncation": "disabled",
            "user": null,
            "metadata": req.get("metadata").cloned().unwrap_or(json!({}))
        });
        if !ctx.faults.no_usage {
            v["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        v
    };
    let final_item = item(final_status, true);
    let final_response = response(final_status, json!([final_item]), Some(&usage));

    if !is_stream(req) {
        return Ok(Reply::Json(final_response));
    }

    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |phase: Phase, mut v: Value| {
        let name = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        v["sequence_number"] = json!(seq);
        seq += 1;
        events.push(SseEvent::named(phase, &name, &v));
    };
    let pending = response("in_progress", json!([]), None);
    push(
        Phase::Pre,
        json!({"type": "response.created", "response": pending}),
    );
    push(
        Phase::Pre,
        json!({"type": "response.in_progress", "response": pending}),
    );
    push(
        Phase::Pre,
        json!({"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", false)}),
    );
    match &said {
        Said::Text { text, .. } => {
            push(
                Phase::Pre,
                json!({
                    "type": "response.content_part.added",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                }),
            );
            for piece in chunk_words(text, ctx.seed) {
                push(
                    Phase::Content,
                    json!({
                        "type": "response.output_text.delta",
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": []
                    }),
                );
            }
            push(
                Phase::Post,
                json!({
                    "type": "response.output_text.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": text,
                    "logprobs": []
                }),
            );
            push(
                Phase::Post,
                json!({
                    "type": "response.content_part.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                }),
            );
        }
        Said::Tool { args, .. } => {
            for frag in fragments(args, ctx.seed) {
                push(
                    Phase::Content,
                    json!({
                        "type": "response.function_call_arguments.delta",
                        "item_id": item_id,
                        "output_index": 0,
                        "delta": frag
                    }),
                );
            }
            push(
                Phase::Post,
                json!({
                    "type": "response.function_call_arguments.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "arguments": args
                }),
            );
        }
    }
    push(
        Phase::Post,
        json!({"type": "response.output_item.done", "output_index": 0, "item": final_item}),
    );
    let done_type = if truncated {
        "response.incomplete"
    } else {
        "response.completed"
    };
    push(
        Phase::Post,
        json!({"type": done_type, "response": final_response}),
    );
    Ok(Reply::Stream(events))
}
