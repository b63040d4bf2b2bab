//! Incidents: what the monitors conclude, deduplicated per monitor and key, opened when a
//! monitor crosses its threshold and resolved with hysteresis. These are what exporters and
//! webhooks send.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The incident kinds, exactly as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    Drift,
    ModelChanged,
    BlankRate,
    RefusalRate,
    ErrorRate,
    RateLimited,
    StreamInterrupted,
    OutlierRate,
    Latency,
    Ttft,
    Throughput,
}

impl IncidentKind {
    /// Every kind, in a stable order.
    pub const ALL: [IncidentKind; 11] = [
        IncidentKind::Drift,
        IncidentKind::ModelChanged,
        IncidentKind::BlankRate,
        IncidentKind::RefusalRate,
        IncidentKind::ErrorRate,
        IncidentKind::RateLimited,
        IncidentKind::StreamInterrupted,
        IncidentKind::OutlierRate,
        IncidentKind::Latency,
        IncidentKind::Ttft,
        IncidentKind::Throughput,
    ];

    /// The exported name.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Drift => "drift",
            IncidentKind::ModelChanged => "model_changed",
            IncidentKind::BlankRate => "blank_rate",
            IncidentKind::RefusalRate => "refusal_rate",
            IncidentKind::ErrorRate => "error_rate",
            IncidentKind::RateLimited => "rate_limited",
            IncidentKind::StreamInterrupted => "stream_interrupted",
            IncidentKind::OutlierRate => "outlier_rate",
            IncidentKind::Latency => "latency",
            IncidentKind::Ttft => "ttft",
            IncidentKind::Throughput => "throughput",
        }
    }
}

/// How bad an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// What made a monitor fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The monitor (e.g. `blank_rate`, `drift.static_martingale`).
    pub monitor: String,
    pub score: f64,
    pub threshold: f64,
    /// Exchanges the monitor looked at.
    pub window: u64,
    /// A few exchanges that show the problem.
    pub example_ids: Vec<String>,
    /// Free-form detail (e.g. `gpt-4o-2024-08-06 -> gpt-4o-2024-11-20`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub kind: IncidentKind,
    /// `<listener>/<provider>/<model>[/<route>]`.
    pub key: String,
    /// The key's parts, as structured fields (models may contain `/`, so do not re-parse
    /// `key`). Empty in incidents saved before these fields existed.
    #[serde(default)]
    pub listener: String,
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub severity: Severity,
    pub opened_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
    /// The exchange that opened it.
    pub exchange_id: String,
    pub evidence: Evidence,
}

/// The parts of a baseline key: `<listener>/<provider>/<model>[/<route>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyParts {
    pub listener: String,
    pub provider: String,
    pub model: String,
    pub route: Option<String>,
}

/// An incident opening or resolving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentEvent {
    /// `opened` or `resolved`.
    pub state: &'static str,
    pub ts_ms: u64,
    /// The exchange at which the change was decided.
    pub exchange_id: String,
    pub incident: Incident,
}

/// A monitor's verdict for one key after an observation.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Over threshold: open (or keep open, possibly escalating severity).
    Fire {
        severity: Severity,
        evidence: Evidence,
    },
    /// Back to normal by the monitor's resolve rule (hysteresis lives in the monitor).
    Clear,
    /// Neither: keep the current state.
    Hold,
}

/// One open incident per (kind, key); a cooldown before the same pair may reopen.
#[derive(Debug, Default)]
pub struct IncidentBook {
    open: BTreeMap<(IncidentKind, String), Incident>,
    last_resolved: BTreeMap<(IncidentKind, String), u64>,
    next: u64,
    cooldown_ms: u64,
    prefix: String,
}

impl IncidentBook {
    /// A book whose incidents may reopen `cooldown_ms` after resolving. Ids are
    /// `<prefix>-<n>`; the prefix should be unique per process start.
    pub fn new(cooldown_ms: u64, prefix: impl Into<String>) -> Self {
        IncidentBook {
            cooldown_ms,
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    /// Applies a verdict; returns the event it causes, if any. Incidents it opens have empty
    /// key parts; the engine uses [`IncidentBook::apply_for`].
    pub fn apply(
        &mut self,
        kind: IncidentKind,
        key: &str,
        verdict: Verdict,
        now_ms: u64,
        exchange_id: &str,
    ) -> Option<IncidentEvent> {
        self.apply_for(
            kind,
            key,
            &KeyParts::default(),
            verdict,
            now_ms,
            exchange_id,
        )
    }

    /// Applies a verdict for `key`, whose parts are `parts`; returns the event it causes.
    pub fn apply_for(
        &mut self,
        kind: IncidentKind,
        key: &str,
        parts: &KeyParts,
        verdict: Verdict,
        now_ms: u64,
        exchange_id: &str,
    ) -> Option<IncidentEvent> {
        let k = (kind, key.to_string());
        match verdict {
            Verdict::Hold => None,
            Verdict::Fire { severity, evidence } => {
                if let Some(open) = self.open.get_mut(&k) {
                    if severity > open.severity {
                        open.severity = severity;
                    }
                    return None;
                }
                if let Some(&t) = self.last_resolved.get(&k) {
                    if now_ms < t.saturating_add(self.cooldown_ms) {
                        return None;
                    }
                }
                self.next += 1;
                let incident = Incident {
                    id: format!("{}-{}", self.prefix, self.next),
                    kind,
                    key: key.to_string(),
                    listener: parts.listener.clone(),
                    provider: parts.provider.clone(),
                    model: parts.model.clone(),
                    route: parts.route.clone(),
                    severity,
                    opened_ms: now_ms,
                    resolved_ms: None,
                    exchange_id: exchange_id.to_string(),
                    evidence,
                };
                self.open.insert(k, incident.clone());
                Some(IncidentEvent {
                    state: "opened",
                    ts_ms: now_ms,
                    exchange_id: exchange_id.to_string(),
                    incident,
                })
            }
            Verdict::Clear => {
                let mut incident = self.open.remove(&k)?;
                incident.resolved_ms = Some(now_ms);
                self.last_resolved.insert(k, now_ms);
                Some(IncidentEvent {
                    state: "resolved",
                    ts_ms: now_ms,
                    exchange_id: exchange_id.to_string(),
                    incident,
                })
            }
        }
    }

    /// True if (kind, key) has an open incident.
    pub fn is_open(&self, kind: IncidentKind, key: &str) -> bool {
        self.open.contains_key(&(kind, key.to_string()))
    }

    /// All open incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// Resolves every open incident of `key` (its baseline was reset).
    pub fn resolve_key(&mut self, key: &str, now_ms: u64) -> Vec<IncidentEvent> {
        let kinds: Vec<IncidentKind> = self
            .open
            .keys()
            .filter(|(_, k)| k == key)
            .map(|(kind, _)| *kind)
            .collect();
        kinds
            .into_iter()
            .filter_map(|kind| self.apply(kind, key, Verdict::Clear, now_ms, ""))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Evidence {
        Evidence {
            monitor: "blank_rate".into(),
            score: 0.5,
            threshold: 0.1,
            window: 50,
            example_ids: vec!["a".into()],
            detail: String::new(),
        }
    }

    #[test]
    fn one_open_incident_per_kind_and_key_with_cooldown() {
        let mut b = IncidentBook::new(1000, "t");
        let fire = || Verdict::Fire {
            severity: Severity::Warning,
            evidence: ev(),
        };
        assert!(b
            .apply(IncidentKind::BlankRate, "k", fire(), 0, "x1")
            .is_some());
        assert!(b
            .apply(IncidentKind::BlankRate, "k", fire(), 10, "x2")
            .is_none());
        assert!(b
            .apply(IncidentKind::BlankRate, "k2", fire(), 10, "x3")
            .is_some());
        let r = b.apply(IncidentKind::BlankRate, "k", Verdict::Clear, 20, "x4");
        assert_eq!(r.map(|e| e.state), Some("resolved"));
        assert!(
            b.apply(IncidentKind::BlankRate, "k", fire(), 500, "x5")
                .is_none(),
            "cooldown"
        );
        assert!(b
            .apply(IncidentKind::BlankRate, "k", fire(), 1500, "x6")
            .is_some());
    }

    #[test]
    fn severity_escalates_without_a_new_incident() {
        let mut b = IncidentBook::new(0, "t");
        b.apply(
            IncidentKind::ErrorRate,
            "k",
            Verdict::Fire {
                severity: Severity::Warning,
                evidence: ev(),
            },
            0,
            "a",
        );
        assert!(b
            .apply(
                IncidentKind::ErrorRate,
                "k",
                Verdict::Fire {
                    severity: Severity::Critical,
                    evidence: ev()
                },
                1,
                "b"
            )
            .is_none());
        assert_eq!(
            b.open().next().map(|i| i.severity),
            Some(Severity::Critical)
        );
    }
}
