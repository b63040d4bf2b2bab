//! The response body type of the simulated upstream, the cancellation guard and SSE helpers.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;
use tokio::sync::mpsc;

use super::Shared;

/// Counts the request as cancelled when dropped before [`CancelGuard::finish`].
pub(crate) struct CancelGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl CancelGuard {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        CancelGuard {
            shared,
            done: false,
        }
    }

    /// The response reached its intended end (or its intended fault).
    pub(crate) fn finish(&mut self) {
        self.done = true;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done && !self.shared.shutting_down.load(Ordering::SeqCst) {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    Channel {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        /// Exact length when known (content-length set), counted down as frames go out.
        remaining: Option<u64>,
    },
}

/// Either a whole body or frames produced by a task; an `Err` frame aborts the connection.
pub(crate) struct MockBody {
    kind: Kind,
    guard: Option<CancelGuard>,
}

impl MockBody {
    /// A complete body.
    pub(crate) fn full(bytes: impl Into<Bytes>, mut guard: CancelGuard) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            // hyper may never poll an empty body: it is finished already.
            guard.finish();
            return MockBody {
                kind: Kind::Full(None),
                guard: Some(guard),
            };
        }
        MockBody {
            kind: Kind::Full(Some(bytes)),
            guard: Some(guard),
        }
    }

    /// A body fed by a channel; `len` is its exact length when known.
    pub(crate) fn channel(
        rx: mpsc::Receiver<io::Result<Bytes>>,
        len: Option<u64>,
        guard: CancelGuard,
    ) -> Self {
        MockBody {
            kind: Kind::Channel { rx, remaining: len },
            guard: Some(guard),
        }
    }

    fn finish(&mut self) {
        if let Some(g) = self.guard.as_mut() {
            g.finish();
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(b) => {
                let out = b.take();
                this.finish();
                Poll::Ready(out.map(|b| Ok(Frame::data(b))))
            }
            Kind::Channel { rx, remaining } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    if let Some(r) = remaining.as_mut() {
                        *r = r.saturating_sub(b.len() as u64);
                        if *r == 0 {
                            this.finish();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish();
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    this.finish();
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Channel {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            Kind::Channel { .. } => SizeHint::default(),
        }
    }
}

/// Where an SSE event sits in the stream; `cut=N` counts `Content` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before any content (role chunk, `message_start`, ...).
    Pre,
    /// A content delta.
    Content,
    /// After the content (finish, usage, `[DONE]`, `message_stop`, ...).
    Post,
}

/// One SSE event, already framed.
pub(crate) struct SseEvent {
    pub(crate) phase: Phase,
    pub(crate) bytes: Bytes,
}

impl SseEvent {
    /// `data: {json}\n\n` (OpenAI chat and legacy completions).
    pub(crate) fn data(phase: Phase, v: &Value) -> Self {
        SseEvent {
            phase,
            bytes: Bytes::from(format!("data: {}\n\n", to_json(v))),
        }
    }

    /// `event: name\ndata: {json}\n\n` (Anthropic, Responses).
    pub(crate) fn named(phase: Phase, name: &str, v: &Value) -> Self {
        SseEvent {
            phase,
            bytes: Bytes::from(format!("event: {name}\ndata: {}\n\n", to_json(v))),
        }
    }

    /// `data: [DONE]\n\n`.
    pub(crate) fn done() -> Self {
        SseEvent {
            phase: Phase::Post,
            bytes: Bytes::from_static(b"data: [DONE]\n\n"),
        }
    }

    /// Raw bytes (the `malformed_sse` junk).
    pub(crate) fn raw(phase: Phase, bytes: &'static [u8]) -> Self {
        SseEvent {
            phase,
            bytes: Bytes::from_static(bytes),
        }
    }
}

/// What an LLM endpoint answers.
pub(crate) enum Reply {
    /// A non-stream JSON object.
    Json(Value),
    /// An SSE stream.
    Stream(Vec<SseEvent>),
}

/// Keys in the order the official APIs write them; others follow alphabetically.
const KEY_ORDER: &[&str] = &[
    "id",
    "type",
    "object",
    "created",
    "created_at",
    "status",
    "error",
    "incomplete_details",
    "instructions",
    "max_output_tokens",
    "index",
    "role",
    "model",
    "call_id",
    "name",
    "item_id",
    "output_index",
    "content_index",
    "delta",
    "content",
    "text",
    "partial_json",
    "refusal",
    "tool_calls",
    "function",
    "arguments",
    "input",
    "embedding",
    "choices",
    "data",
    "message",
    "content_block",
    "output",
    "item",
    "part",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "stop_sequence",
    "annotations",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "store",
    "temperature",
    "text_format",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "input_tokens_details",
    "output_tokens",
    "output_tokens_details",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cached_tokens",
    "audio_tokens",
    "reasoning_tokens",
    "accepted_prediction_tokens",
    "rejected_prediction_tokens",
    "user",
    "metadata",
    "service_tier",
    "system_fingerprint",
    "sequence_number",
];

/// Serialises `v` with object keys in [`KEY_ORDER`] rather than alphabetically.
pub(crate) fn to_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| {
                (
                    KEY_ORDER
                        .iter()
                        .position(|o| o == k)
                        .unwrap_or(KEY_ORDER.len()),
                    k.as_str(),
                )
            });
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(k.as_str()) {
                    write_json(item, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}
