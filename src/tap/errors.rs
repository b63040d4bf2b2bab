//! Responses semtap writes itself, only when the upstream gave none: in the provider's own
//! error envelope, so SDKs raise their usual exception, plus `x-semtap-error` naming what failed.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::ProxyBody;
use crate::record::Provider;

/// Header on every response semtap generated, naming the failure.
pub const SEMTAP_ERROR_HEADER: &str = "x-semtap-error";

/// A JSON error response shaped like `provider`'s own errors.
pub fn error_response(
    provider: Provider,
    status: StatusCode,
    kind: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    let message = format!("semtap: {message}");
    let body = match provider {
        Provider::Anthropic => {
            let t = match status.as_u16() {
                503 | 529 => "overloaded_error",
                504 => "timeout_error",
                _ => "api_error",
            };
            serde_json::json!({"type": "error", "error": {"type": t, "message": message}})
        }
        _ => serde_json::json!({
            "error": {"message": message, "type": kind, "param": null, "code": kind}
        }),
    };
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(SEMTAP_ERROR_HEADER, HeaderValue::from_static(kind));
    resp
}
