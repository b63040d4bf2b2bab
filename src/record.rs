//! The exchange record: one recognised LLM call, as the tap saw it.
//!
//! This is the contract between the tap and everything downstream of it (metrics, the
//! semantic engine, exporters, the capture file and `semtap replay`). Its JSON form, one
//! object per line, is documented in `docs/exchange-record.md`.

use serde::{Deserialize, Serialize};

/// Which LLM provider's API an exchange spoke. Values follow `gen_ai.provider.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "azure.ai.openai")]
    AzureOpenAi,
    /// Traffic that matched no known API: forwarded and counted as plain HTTP.
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
}

impl Provider {
    /// The `gen_ai.provider.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::AzureOpenAi => "azure.ai.openai",
            Provider::Unknown => "unknown",
        }
    }

    /// Parses a provider name as written in config or records.
    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "openai" => Some(Provider::OpenAi),
            "anthropic" => Some(Provider::Anthropic),
            "azure.ai.openai" | "azure" | "azure_openai" => Some(Provider::AzureOpenAi),
            "unknown" => Some(Provider::Unknown),
            _ => None,
        }
    }
}

/// The concrete API endpoint an exchange used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions` (and compatible servers).
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI legacy `POST /v1/completions`.
    Completions,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anything else: forwarded untouched, counted as plain HTTP.
    #[default]
    Other,
}

impl Api {
    /// The `gen_ai.operation.name` value for this API.
    pub fn operation(self) -> &'static str {
        match self {
            Api::ChatCompletions | Api::Responses | Api::Messages => "chat",
            Api::Completions => "text_completion",
            Api::Embeddings => "embeddings",
            Api::Other => "http",
        }
    }

    /// Short stable name used in records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Responses => "responses",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Messages => "messages",
            Api::Other => "other",
        }
    }
}

/// How the exchange ended, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered and the whole body reached the client.
    #[default]
    Complete,
    /// The upstream could not be reached (connect error, DNS, TLS); the client got a 502.
    UpstreamUnreachable,
    /// The upstream did not answer in time; the client got a 504.
    UpstreamTimeout,
    /// The upstream cut the body mid-way; the client saw the same abrupt end.
    StreamInterrupted,
    /// The client went away before the end; the upstream request was cancelled.
    ClientCancelled,
}

impl Outcome {
    /// Stable name, used as `error.type` where no HTTP status explains the failure.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::UpstreamTimeout => "timeout",
            Outcome::StreamInterrupted => "stream_interrupted",
            Outcome::ClientCancelled => "client_cancelled",
        }
    }
}

/// Generation parameters the request asked for (absent ones are `None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u64>,
}

/// A tool (function) call the model asked for; kept apart from the answer text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// Token usage. `estimated` is true when the upstream sent none and semtap counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    #[serde(default)]
    pub estimated: bool,
}

/// Provider rate-limit headers seen on the response (remaining budget).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<u64>,
}

/// W3C trace context carried by the app's request, so exporters can join its trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_span_id: String,
    pub sampled: bool,
}

/// One recognised LLM call. Times are milliseconds; `ts_ms` is unix epoch milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    pub id: String,
    pub ts_ms: u64,
    #[serde(default)]
    pub end_ts_ms: u64,
    #[serde(default)]
    pub listener: String,
    #[serde(default)]
    pub provider: Provider,
    #[serde(default)]
    pub api: Api,
    /// `gen_ai.operation.name`: chat, text_completion, embeddings.
    #[serde(default)]
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default)]
    pub method: String,
    /// Request path without the query string (query parameters may hold keys).
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    /// The model the request asked for (for Azure, the deployment name if the body has none).
    #[serde(default, rename = "model", skip_serializing_if = "Option::is_none")]
    pub request_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    #[serde(default)]
    pub stream: bool,
    /// HTTP status the client received; 0 if none was sent.
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub outcome: Outcome,
    /// `error.type`: provider error type, HTTP status, or the outcome name; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default)]
    pub params: RequestParams,
    /// Text of the last user turn (system prompt and history excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Answer text, assembled from deltas when streamed.
    #[serde(default)]
    pub response: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finish_reasons: Vec<String>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub duration_ms: f64,
    /// First response chunk of any kind (the spec's time to first chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_chunk_ms: Option<f64>,
    /// First chunk that carries content: what users call TTFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Mean time between consecutive chunks after the first, for streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_per_output_chunk_ms: Option<f64>,
    /// Gaps between consecutive chunks after the first (ms), capped; feeds the per-chunk histogram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_gaps_ms: Vec<f32>,
    /// Time from the request reaching semtap to the upstream's response headers.
    #[serde(default)]
    pub upstream_ms: f64,
    /// Time spent inside semtap on the data path (before dispatch plus per-chunk forwarding).
    #[serde(default)]
    pub overhead_ms: f64,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub response_bytes: u64,
    /// The capture hit its size cap; text fields hold what fit.
    #[serde(default)]
    pub capture_truncated: bool,
    /// Why the body could not be understood (forwarded untouched regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_anomaly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<TraceParent>,
}

/// SHA-256 of an exchange id: bytes 0..16 are its derived trace id, 16..24 its span id.
fn exchange_digest(exchange_id: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(exchange_id.as_bytes()).into()
}

/// The trace and span id of an exchange's span (32 and 16 lowercase hex chars), from one digest:
/// the app's `traceparent` trace id when the request carried one, else the first 16 bytes of
/// SHA-256 of the exchange id; the span id is bytes 16..24 of that digest. Exporters and
/// webhook evidence both use this, so they point at the same trace without sharing state.
pub fn exchange_ids(exchange_id: &str, traceparent: Option<&TraceParent>) -> (String, String) {
    let d = exchange_digest(exchange_id);
    let trace = match traceparent {
        Some(tp) if tp.trace_id.len() == 32 => tp.trace_id.to_ascii_lowercase(),
        _ => hex::encode(&d[..16]),
    };
    (trace, hex::encode(&d[16..24]))
}

/// The trace id of `record`'s span (see [`exchange_ids`]).
pub fn exchange_trace_id(record: &ExchangeRecord) -> String {
    exchange_ids(&record.id, record.traceparent.as_ref()).0
}

/// The span id of an exchange's span (see [`exchange_ids`]).
pub fn exchange_span_id(exchange_id: &str) -> String {
    hex::encode(&exchange_digest(exchange_id)[16..24])
}

/// The app's trace ids of recent exchanges that carried a `traceparent`, so an exchange named
/// later (an incident's evidence) maps to the trace its span joined. Exchanges without one need
/// no entry: their trace id derives from the id. Bounded: the oldest entry goes first.
#[derive(Debug)]
pub struct TraceIndex {
    cap: usize,
    map: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl TraceIndex {
    /// An index of at most `cap` exchanges.
    pub fn new(cap: usize) -> TraceIndex {
        TraceIndex {
            cap: cap.max(1),
            map: Default::default(),
            order: Default::default(),
        }
    }

    /// Remembers `record`'s trace if the app sent one.
    pub fn remember(&mut self, record: &ExchangeRecord) {
        let Some(tp) = &record.traceparent else {
            return;
        };
        if self.map.contains_key(&record.id) {
            return;
        }
        while self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        let trace = exchange_ids(&record.id, Some(tp)).0;
        self.map.insert(record.id.clone(), trace);
        self.order.push_back(record.id.clone());
    }

    /// The trace and span id of exchange `id`'s span.
    pub fn ids_of(&self, id: &str) -> (String, String) {
        let (derived, span) = exchange_ids(id, None);
        match self.map.get(id) {
            Some(t) => (t.clone(), span),
            None => (derived, span),
        }
    }

    /// Exchanges remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod trace_id_tests {
    use super::*;

    #[test]
    fn trace_id_prefers_traceparent_and_is_derived_otherwise() {
        // The digest, computed here straight from the definition.
        let full = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(b"ex-1"))
        };
        let mut rec = ExchangeRecord {
            id: "ex-1".into(),
            ..Default::default()
        };
        let derived = exchange_trace_id(&rec);
        assert_eq!(derived.len(), 32);
        assert_eq!(derived, full[..32]);
        assert_eq!(exchange_span_id("ex-1"), full[32..48]);
        assert_eq!(exchange_span_id("ex-1").len(), 16);
        assert_ne!(exchange_span_id("ex-1"), exchange_span_id("ex-2"));
        rec.traceparent = Some(TraceParent {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span_id: "00f067aa0ba902b7".into(),
            sampled: true,
        });
        assert_eq!(exchange_trace_id(&rec), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn trace_id_known_vector() {
        // python3 -c "import hashlib;h=hashlib.sha256(b'abc').hexdigest();print(h[:32],h[32:48])"
        let rec = ExchangeRecord {
            id: "abc".into(),
            ..Default::default()
        };
        assert_eq!(exchange_trace_id(&rec), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(exchange_span_id("abc"), "b00361a396177a9c");
    }

    #[test]
    fn trace_index_keeps_app_traces_bounded_and_derives_the_rest() {
        let tp = |t: &str| TraceParent {
            trace_id: t.into(),
            parent_span_id: "00f067aa0ba902b7".into(),
            sampled: true,
        };
        let mut idx = TraceIndex::new(2);
        for (id, t) in [("a", "1"), ("b", "2"), ("c", "3")] {
            idx.remember(&ExchangeRecord {
                id: id.into(),
                traceparent: Some(tp(&t.repeat(32))),
                ..Default::default()
            });
        }
        idx.remember(&ExchangeRecord {
            id: "plain".into(),
            ..Default::default()
        });
        assert_eq!(idx.len(), 2, "bounded, and plain exchanges need no entry");
        assert_eq!(idx.ids_of("c").0, "3".repeat(32));
        assert_eq!(idx.ids_of("a"), exchange_ids("a", None), "evicted: derived");
        assert_eq!(idx.ids_of("plain").1, exchange_span_id("plain"));
    }
}
