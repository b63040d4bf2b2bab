//! Anthropic Messages-shaped answers.

use serde_json::{json, Value};

use super::body::{Phase, Reply, SseEvent};
use super::text::{
    alnum_id, answer_with, chunk_words, content_text, estimate_tokens, fragments, last_user_text,
    messages_tokens, truncate_to_tokens, wants_weather_tool, weather_args, weather_tool_name,
};
use super::Ctx;

/// Under the `swap` fault, the upstream silently serves another snapshot of the model.
fn swapped(model: String, ctx: &Ctx) -> String {
    if ctx.faults.swap {
        format!("{model}-swapped")
    } else {
        model
    }
}

/// The dated model name the API reports for an alias.
fn resolve_model(model: Option<&str>) -> String {
    match model {
        None | Some("") => "claude-sonnet-4-5-20250929".to_string(),
        Some("claude-sonnet-4-5") => "claude-sonnet-4-5-20250929".to_string(),
        Some("claude-haiku-4-5") => "claude-haiku-4-5-20251001".to_string(),
        Some("claude-opus-4-1") => "claude-opus-4-1-20250805".to_string(),
        Some("claude-sonnet-4-0") => "claude-sonnet-4-20250514".to_string(),
        Some("claude-3-5-haiku-latest") => "claude-3-5-haiku-20241022".to_string(),
        Some(m) => m.to_string(),
    }
}

/// The Anthropic error envelope for `status`.
pub(crate) fn error_body(status: u16, message: Option<&str>) -> Value {
    let (etype, default_msg) = match status {
        400 => ("invalid_request_error", "Invalid request."),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => ("permission_error", "Your API key does not have permission to use the specified resource."),
        404 => ("not_found_error", "The requested resource could not be found."),
        405 => ("invalid_request_error", "Method not allowed."),
        413 => ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429 => ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit. Please try again later."),
        529 => ("overloaded_error", "Overloaded"),
        s if s >= 500 => ("api_error", "Internal server error"),
        _ => ("invalid_request_error", "Invalid request."),
    };
    json!({"type": "error", "error": {"type": etype, "message": message.unwrap_or(default_msg)}})
}

/// `POST .../messages`.
pub(crate) fn messages(req: &Value, raw_body: &[u8], ctx: &Ctx) -> Result<Reply, String> {
    if !matches!(req.get("messages"), Some(Value::Array(_))) {
        return Err("messages: Field required".to_string());
    }
    let model = swapped(resolve_model(req.get("model").and_then(Value::as_str)), ctx);
    let prompt = last_user_text(req.get("messages"));
    let tools_tokens = match req.get("tools") {
        Some(t @ Value::Array(a)) if !a.is_empty() => estimate_tokens(&t.to_string()),
        _ => 0,
    };
    let total_in = messages_tokens(req.get("messages"))
        + estimate_tokens(&content_text(req.get("system").unwrap_or(&Value::Null)))
        + tools_tokens;
    let uses_cache = raw_body.windows(13).any(|w| w == b"cache_control");
    let cache_read = if uses_cache && total_in >= 1024 {
        total_in * 3 / 4
    } else {
        0
    };
    let input_tokens = total_in - cache_read;

    let id = format!("msg_01{}", alnum_id(ctx.seed, 22));
    let tool_id = format!("toolu_01{}", alnum_id(ctx.seed ^ 0x0000_ca11, 22));
    let max = req.get("max_tokens").and_then(Value::as_u64);

    // Blocks: (kind, text or tool arguments).
    let tool = !ctx.faults.blank && wants_weather_tool(req, &prompt);
    let (text, stop_reason, tool_args) = if ctx.faults.blank {
        (String::new(), "end_turn", None)
    } else if tool {
        let args = weather_args(&prompt);
        let place = args
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or("there")
            .to_string();
        (
            format!("I'll check the current weather in {place} for you."),
            "tool_use",
            Some(args),
        )
    } else {
        let (text, cut) = truncate_to_tokens(&answer_with(&prompt, &ctx.faults), max);
        (text, if cut { "max_tokens" } else { "end_turn" }, None)
    };
    let tool_name = weather_tool_name(req);
    let output_tokens = estimate_tokens(&text)
        + tool_args
            .as_ref()
            .map(|a| estimate_tokens(&a.to_string()) + 10)
            .unwrap_or(0);
    let usage = json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output_tokens,
        "service_tier": "standard"
    });

    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let mut content = vec![json!({"type": "text", "text": text})];
        if let Some(args) = &tool_args {
            content
                .push(json!({"type": "tool_use", "id": tool_id, "name": tool_name, "input": args}));
        }
        let mut v = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null
        });
        if !ctx.faults.no_usage {
            v["usage"] = usage;
        }
        return Ok(Reply::Json(v));
    }

    let mut events = Vec::new();
    let mut start = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null
    });
    if !ctx.faults.no_usage {
        start["usage"] = json!({
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cache_read,
            "output_tokens": 1,
            "service_tier": "standard"
        });
    }
    let ev = |phase, v: Value| {
        let name = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        SseEvent::named(phase, &name, &v)
    };
    events.push(ev(
        Phase::Pre,
        json!({"type": "message_start", "message": start}),
    ));
    events.push(ev(
        Phase::Pre,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(ev(Phase::Pre, json!({"type": "ping"})));
    for piece in chunk_words(&text, ctx.seed) {
        events.push(ev(
            Phase::Content,
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(ev(
        Phase::Post,
        json!({"type": "content_block_stop", "index": 0}),
    ));
    if let Some(args) = &tool_args {
        events.push(ev(
            Phase::Post,
            json!({
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": tool_id, "name": tool_name, "input": {}}
            }),
        ));
        events.push(ev(
            Phase::Post,
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ));
        for frag in fragments(&args.to_string(), ctx.seed) {
            events.push(ev(
                Phase::Content,
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": frag}}),
            ));
        }
        events.push(ev(
            Phase::Post,
            json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    let mut delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null}
    });
    if !ctx.faults.no_usage {
        delta["usage"] = json!({"output_tokens": output_tokens});
    }
    events.push(ev(Phase::Post, delta));
    events.push(ev(Phase::Post, json!({"type": "message_stop"})));
    Ok(Reply::Stream(events))
}
