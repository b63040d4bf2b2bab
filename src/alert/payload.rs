//! The webhook payload, schema `semtap.webhook.v1` (documented in `docs/webhooks.md`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::semantic::incidents::{IncidentEvent, IncidentKind, Severity};

/// The schema name every payload carries; bumped on incompatible changes.
pub const SCHEMA: &str = "semtap.webhook.v1";

/// One webhook event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Idempotency key: the same on every delivery attempt and after restarts.
    pub id: String,
    /// `incident.opened` or `incident.resolved`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When semtap decided (RFC 3339, UTC) and the same in unix milliseconds.
    pub created_at: String,
    pub created_ms: u64,
    /// Same on every sidecar for the same kind, provider, model and route.
    pub fingerprint: String,
    pub incident: IncidentPayload,
    pub suggested_action: SuggestedAction,
    pub source: SourceInfo,
}

/// The incident the event is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentPayload {
    pub id: String,
    pub kind: IncidentKind,
    pub severity: Severity,
    /// `open` or `resolved`.
    pub state: String,
    pub key: KeyPayload,
    pub started_at: String,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
    /// The exchange at which the incident opened.
    pub exchange_id: String,
    pub evidence: EvidencePayload,
}

/// The baseline key, joined and in parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyPayload {
    /// `<listener>/<provider>/<model>[/<route>]`.
    pub joined: String,
    pub listener: String,
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub route: Option<String>,
}

/// What made the monitor fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidencePayload {
    pub monitor: String,
    pub score: f64,
    pub threshold: f64,
    pub window: u64,
    #[serde(default)]
    pub detail: String,
    pub examples: Vec<ExampleRef>,
}

/// An exchange that shows the problem, with its trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleRef {
    pub exchange_id: String,
    /// 32 hex: the app's `traceparent` trace id, or one derived from the exchange id.
    pub trace_id: String,
    /// 16 hex: the exchange's span id.
    pub span_id: String,
}

/// What a receiver could do about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuggestedAction {
    /// `fallback` (route away from this provider/model) when opened, `restore` when resolved.
    pub action: String,
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub route: Option<String>,
    pub reason: String,
}

/// Who sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub service: String,
    pub version: String,
}

/// The event id of an incident event: `<incident id>.<opened|resolved>`. Incident ids carry a
/// random per-process prefix, so ids are unique across restarts and stable across retries.
pub fn event_id(ev: &IncidentEvent) -> String {
    format!("{}.{}", ev.incident.id, ev.state)
}

/// 32 hex chars of SHA-256 over kind, provider, model and route (not the listener), so every
/// sidecar computes the same value for the same failure.
pub fn fingerprint(kind: IncidentKind, provider: &str, model: &str, route: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [
        "semtap.fingerprint.v1",
        kind.as_str(),
        provider,
        model,
        route.unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

impl WebhookEvent {
    /// The payload for `ev`; `trace_of` gives an example exchange's trace id.
    pub fn from_incident(ev: &IncidentEvent, trace_of: impl Fn(&str) -> String) -> WebhookEvent {
        let i = &ev.incident;
        let opened = ev.state == "opened";
        let examples = i
            .evidence
            .example_ids
            .iter()
            .map(|x| ExampleRef {
                exchange_id: x.clone(),
                trace_id: trace_of(x),
                span_id: crate::record::exchange_span_id(x),
            })
            .collect();
        WebhookEvent {
            schema: SCHEMA.to_string(),
            id: event_id(ev),
            event_type: format!("incident.{}", ev.state),
            created_at: rfc3339(ev.ts_ms),
            created_ms: ev.ts_ms,
            fingerprint: fingerprint(i.kind, &i.provider, &i.model, i.route.as_deref()),
            incident: IncidentPayload {
                id: i.id.clone(),
                kind: i.kind,
                severity: i.severity,
                state: if opened { "open" } else { "resolved" }.to_string(),
                key: KeyPayload {
                    joined: i.key.clone(),
                    listener: i.listener.clone(),
                    provider: i.provider.clone(),
                    model: i.model.clone(),
                    route: i.route.clone(),
                },
                started_at: rfc3339(i.opened_ms),
                started_ms: i.opened_ms,
                resolved_at: i.resolved_ms.map(rfc3339),
                resolved_ms: i.resolved_ms,
                exchange_id: i.exchange_id.clone(),
                evidence: EvidencePayload {
                    monitor: i.evidence.monitor.clone(),
                    score: finite(i.evidence.score),
                    threshold: finite(i.evidence.threshold),
                    window: i.evidence.window,
                    detail: i.evidence.detail.clone(),
                    examples,
                },
            },
            suggested_action: SuggestedAction {
                action: if opened { "fallback" } else { "restore" }.to_string(),
                provider: i.provider.clone(),
                model: i.model.clone(),
                route: i.route.clone(),
                reason: if opened {
                    format!(
                        "{} on {} {}: route traffic to a fallback until resolved",
                        i.kind.as_str(),
                        i.provider,
                        i.model
                    )
                } else {
                    format!(
                        "{} on {} {} resolved: traffic may return",
                        i.kind.as_str(),
                        i.provider,
                        i.model
                    )
                },
            },
            source: SourceInfo {
                service: "semtap".to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
        }
    }
}

/// JSON has no infinities or NaN; clamp them so the payload always serialises.
fn finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(f64::MIN, f64::MAX)
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds: `2024-05-01T12:00:00.000Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantic::incidents::{Evidence, Incident};

    fn event(listener: &str, state: &'static str) -> IncidentEvent {
        IncidentEvent {
            state,
            ts_ms: 1_700_000_000_123,
            exchange_id: "x2".into(),
            incident: Incident {
                id: "abcd0123-1".into(),
                kind: IncidentKind::ErrorRate,
                key: format!("{listener}/openai/org/model-a/chat"),
                listener: listener.into(),
                provider: "openai".into(),
                model: "org/model-a".into(),
                route: Some("chat".into()),
                severity: Severity::Critical,
                opened_ms: 1_700_000_000_000,
                resolved_ms: None,
                exchange_id: "x1".into(),
                evidence: Evidence {
                    monitor: "error_rate".into(),
                    score: 0.6,
                    threshold: 0.01,
                    window: 30,
                    example_ids: vec!["x1".into()],
                    detail: String::new(),
                },
            },
        }
    }

    #[test]
    fn fingerprint_is_stable_and_ignores_the_listener() {
        let a = WebhookEvent::from_incident(&event("east", "opened"), |_| "t".into());
        let b = WebhookEvent::from_incident(&event("west", "opened"), |_| "t".into());
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.incident.key.joined, b.incident.key.joined);
        // Pinned (computed independently with Python's hashlib over the NUL-separated parts):
        // a change here breaks fleet-wide merging across versions, so it must be deliberate.
        assert_eq!(a.fingerprint, "0b885c2c97443b7b59a38afc40ea43dc");
        assert_eq!(a.fingerprint.len(), 32);
        assert_ne!(
            fingerprint(IncidentKind::ErrorRate, "openai", "org/model-a", None),
            a.fingerprint
        );
        assert_ne!(
            fingerprint(IncidentKind::Drift, "openai", "org/model-a", Some("chat")),
            a.fingerprint
        );
        // No ambiguity between parts: "a/b" + "c" differs from "a" + "b/c" and from joins.
        assert_ne!(
            fingerprint(IncidentKind::Drift, "ab", "c", None),
            fingerprint(IncidentKind::Drift, "a", "bc", None)
        );
    }

    #[test]
    fn payload_fields_and_ids() {
        let e = WebhookEvent::from_incident(&event("l", "opened"), |x| format!("trace-{x}"));
        assert_eq!(e.id, "abcd0123-1.opened");
        assert_eq!(e.event_type, "incident.opened");
        assert_eq!(e.created_at, "2023-11-14T22:13:20.123Z");
        assert_eq!(e.incident.started_at, "2023-11-14T22:13:20.000Z");
        assert_eq!(e.suggested_action.action, "fallback");
        assert_eq!(e.suggested_action.model, "org/model-a");
        assert_eq!(e.incident.evidence.examples[0].trace_id, "trace-x1");
        let r = WebhookEvent::from_incident(&event("l", "resolved"), |x| x.into());
        assert_eq!(r.id, "abcd0123-1.resolved");
        assert_eq!(r.suggested_action.action, "restore");
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(json["type"], "incident.opened");
        assert_eq!(json["incident"]["kind"], "error_rate");
        assert_eq!(json["incident"]["severity"], "critical");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
