//! Where request and response bodies are understood: route detection, the incremental SSE
//! parser, and the OpenAI / Anthropic body parsers. Everything here is pure (no I/O) and must
//! never panic on bad input: a body it cannot read yields a `parse_anomaly`, not an error path.

pub mod anthropic;
pub mod openai;
pub mod sse;

use crate::record::{Api, Provider, RequestParams, ToolCall, Usage};

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
