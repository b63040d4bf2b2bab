//! Per-key monitors: event rates (blank, refusal, errors, 429s, cut streams, outliers),
//! latency-like values (latency, time to first token, throughput) and the response model.
//! Each returns a [`Verdict`]; hysteresis (when to clear) lives here, dedup in the book.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::conformal::binomial_sf;
use super::incidents::{Evidence, Severity, Verdict};

/// Settings shared by the rate monitors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateSettings {
    /// Exchanges in the sliding window.
    pub window: usize,
    /// Binomial tail probability below which the window is surprising.
    pub alpha: f64,
    /// Fewest events in the window before anything opens.
    pub min_events: u64,
    /// Event fraction in the window at which the incident is critical.
    pub critical_fraction: f64,
    /// Exchanges that must pass (nearly) clean before the incident resolves.
    pub recover: usize,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            window: 50,
            alpha: 1e-6,
            min_events: 3,
            critical_fraction: 0.5,
            recover: 20,
        }
    }
}

/// Rate of an event per key against the key's learned normal rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateMonitor {
    name: String,
    floor: f64,
    cap: f64,
    window: VecDeque<(bool, String)>,
    positives: u64,
    learn_seen: u64,
    learn_positives: u64,
    learn_n: u64,
    open: bool,
}

impl RateMonitor {
    /// A monitor called `name` whose normal rate is learned over the first `learn_n`
    /// exchanges and kept within `[floor, cap]`.
    pub fn new(name: &str, floor: f64, cap: f64, learn_n: u64) -> Self {
        RateMonitor {
            name: name.to_string(),
            floor,
            cap,
            window: VecDeque::new(),
            positives: 0,
            learn_seen: 0,
            learn_positives: 0,
            learn_n,
            open: false,
        }
    }

    /// The normal rate the window is compared against.
    pub fn base_rate(&self) -> f64 {
        if self.learn_seen == 0 {
            return self.floor;
        }
        let learned = (self.learn_positives as f64 + 0.5) / (self.learn_seen as f64 + 1.0);
        learned.clamp(self.floor, self.cap)
    }

    /// Current event fraction in the window.
    pub fn fraction(&self) -> f64 {
        if self.window.is_empty() {
            0.0
        } else {
            self.positives as f64 / self.window.len() as f64
        }
    }

    /// Observes one exchange (`event` = it had the problem).
    pub fn observe(&mut self, event: bool, exchange_id: &str, s: &RateSettings) -> Verdict {
        let p0 = self.base_rate();
        if self.learn_seen < self.learn_n {
            self.learn_seen += 1;
            self.learn_positives += u64::from(event);
        }
        self.window.push_back((event, exchange_id.to_string()));
        self.positives += u64::from(event);
        while self.window.len() > s.window {
            if let Some((e, _)) = self.window.pop_front() {
                self.positives -= u64::from(e);
            }
        }
        let n = self.window.len() as u64;
        let k = self.positives;
        // The tail sum is the costly part: only worth it when enough events could fire.
        let tail = if k >= s.min_events {
            binomial_sf(k, n, p0)
        } else {
            1.0
        };
        if tail < s.alpha {
            self.open = true;
            let frac = k as f64 / n as f64;
            let severity = if frac >= s.critical_fraction {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let examples = self
                .window
                .iter()
                .rev()
                .filter(|(e, _)| *e)
                .take(5)
                .map(|(_, id)| id.clone())
                .collect();
            return Verdict::Fire {
                severity,
                evidence: Evidence {
                    monitor: self.name.clone(),
                    score: frac,
                    threshold: p0,
                    window: n,
                    example_ids: examples,
                    detail: format!(
                        "{k} of {n} (normal rate {:.3}, binomial tail {tail:.2e})",
                        p0
                    ),
                },
            };
        }
        if self.open {
            let recent = self.window.iter().rev().take(s.recover);
            let (seen, hits) = recent.fold((0usize, 0usize), |(a, b), (e, _)| {
                (a + 1, b + usize::from(*e))
            });
            let allowed = (2.0 * p0 * s.recover as f64).floor() as usize;
            if seen >= s.recover && hits <= allowed {
                self.open = false;
                return Verdict::Clear;
            }
        }
        Verdict::Hold
    }
}

/// A value that should not rise (latency, TTFT) or fall (throughput) against its baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueMonitor {
    name: String,
    /// True when high values are bad.
    high_is_bad: bool,
    /// Smallest absolute change worth an incident (same unit as values).
    min_effect: f64,
    learn: Vec<f64>,
    learn_n: usize,
    /// Baseline tail quantile (p95 for high-is-bad, p5 otherwise) and median.
    tail: Option<f64>,
    median: Option<f64>,
    /// Upper confidence bound (99%) of the chance a healthy value is beyond `tail`: the tail is
    /// itself estimated from `learn_n` values, and testing against its nominal 5% would turn
    /// every unlucky baseline into a stream of false alarms.
    #[serde(default)]
    p0: Option<f64>,
    recent: VecDeque<(f64, String)>,
    open: bool,
}

/// Wilson upper bound (z = 2.33, one-sided 99%) of a proportion seen `hits` times in `n`.
fn wilson_upper(hits: usize, n: usize) -> f64 {
    let n = n.max(1) as f64;
    let p = hits as f64 / n;
    let z2 = 2.33f64 * 2.33;
    let centre = p + z2 / (2.0 * n);
    let spread = 2.33 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(0.5)
}

/// Recent values compared with the baseline tail.
const RECENT: usize = 20;

impl ValueMonitor {
    /// A monitor learning its baseline from the first `learn_n` values.
    pub fn new(name: &str, high_is_bad: bool, min_effect: f64, learn_n: usize) -> Self {
        ValueMonitor {
            name: name.to_string(),
            high_is_bad,
            min_effect,
            learn: Vec::new(),
            learn_n,
            tail: None,
            median: None,
            p0: None,
            recent: VecDeque::new(),
            open: false,
        }
    }

    /// Observes one value.
    pub fn observe(&mut self, v: f64, exchange_id: &str, alpha: f64) -> Verdict {
        if !v.is_finite() {
            return Verdict::Hold;
        }
        let (Some(tail), Some(median)) = (self.tail, self.median) else {
            self.learn.push(v);
            if self.learn.len() >= self.learn_n {
                let mut s = std::mem::take(&mut self.learn);
                s.sort_by(f64::total_cmp);
                let q = |f: f64| s[((s.len() - 1) as f64 * f).round() as usize];
                let tail = if self.high_is_bad { q(0.95) } else { q(0.05) };
                let beyond = s
                    .iter()
                    .filter(|&&x| if self.high_is_bad { x > tail } else { x < tail })
                    .count();
                self.tail = Some(tail);
                self.median = Some(q(0.5));
                self.p0 = Some(wilson_upper(beyond, s.len()));
            }
            return Verdict::Hold;
        };
        self.recent.push_back((v, exchange_id.to_string()));
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let bad = |x: f64| {
            if self.high_is_bad {
                x > tail && x - median >= self.min_effect
            } else {
                x < tail && median - x >= self.min_effect
            }
        };
        let k = self.recent.iter().filter(|(x, _)| bad(*x)).count() as u64;
        let n = self.recent.len() as u64;
        if n >= 10 && k >= 3 && binomial_sf(k, n, self.p0.unwrap_or(0.01)) < alpha {
            self.open = true;
            let mut vals: Vec<f64> = self.recent.iter().map(|(x, _)| *x).collect();
            vals.sort_by(f64::total_cmp);
            let recent_median = vals[vals.len() / 2];
            let ratio = if self.high_is_bad {
                recent_median / median.max(1e-9)
            } else {
                median / recent_median.max(1e-9)
            };
            let severity = if ratio >= 3.0 {
                Severity::Critical
            } else {
                Severity::Warning
            };
            return Verdict::Fire {
                severity,
                evidence: Evidence {
                    monitor: self.name.clone(),
                    score: recent_median,
                    threshold: tail,
                    window: n,
                    example_ids: self
                        .recent
                        .iter()
                        .rev()
                        .filter(|(x, _)| bad(*x))
                        .take(5)
                        .map(|(_, id)| id.clone())
                        .collect(),
                    detail: format!(
                        "{k} of last {n} beyond the baseline {} {tail:.4} (median now {recent_median:.4}, was {median:.4})",
                        if self.high_is_bad { "p95" } else { "p5" }
                    ),
                },
            };
        }
        if self.open && n >= 10 && k <= 1 {
            self.open = false;
            return Verdict::Clear;
        }
        Verdict::Hold
    }
}

/// Watches the response model under one key: a silent swap or version bump.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelMonitor {
    established: Option<String>,
    streak_model: Option<String>,
    streak: u32,
    open: bool,
}

/// Consecutive responses from a different model before it counts as a change.
const MODEL_STREAK: u32 = 3;

impl ModelMonitor {
    /// The model the key's baseline was learned with.
    pub fn established(&self) -> Option<&str> {
        self.established.as_deref()
    }

    /// Accepts the current model as the new normal (baseline reset).
    pub fn accept_current(&mut self) {
        if let Some(m) = self.streak_model.take() {
            self.established = Some(m);
        }
        self.streak = 0;
        self.open = false;
    }

    /// Observes one response model.
    pub fn observe(&mut self, model: Option<&str>, exchange_id: &str) -> Verdict {
        let Some(model) = model else {
            return Verdict::Hold;
        };
        let Some(est) = self.established.as_deref() else {
            self.established = Some(model.to_string());
            return Verdict::Hold;
        };
        if model == est {
            self.streak_model = None;
            self.streak = 0;
            if self.open {
                self.open = false;
                return Verdict::Clear;
            }
            return Verdict::Hold;
        }
        if self.streak_model.as_deref() == Some(model) {
            self.streak += 1;
        } else {
            self.streak_model = Some(model.to_string());
            self.streak = 1;
        }
        if self.streak >= MODEL_STREAK && !self.open {
            self.open = true;
            return Verdict::Fire {
                severity: Severity::Warning,
                evidence: Evidence {
                    monitor: "model_changed".into(),
                    score: f64::from(self.streak),
                    threshold: f64::from(MODEL_STREAK),
                    window: u64::from(self.streak),
                    example_ids: vec![exchange_id.to_string()],
                    detail: format!("{est} -> {model}"),
                },
            };
        }
        Verdict::Hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_monitor_opens_on_a_burst_and_resolves_after_recovery() {
        let s = RateSettings::default();
        let mut m = RateMonitor::new("blank_rate", 0.01, 0.2, 100);
        for i in 0..200 {
            assert!(
                matches!(m.observe(i % 150 == 0, "ok", &s), Verdict::Hold),
                "normal traffic never fires"
            );
        }
        let mut opened_at = None;
        for i in 0..30 {
            if let Verdict::Fire { .. } = m.observe(i % 3 == 0, "bad", &s) {
                opened_at.get_or_insert(i);
            }
        }
        // One answer in three blank against a ~1% normal rate: open within ~25 exchanges.
        assert!(opened_at.is_some_and(|i| i < 25), "{opened_at:?}");
        let mut cleared = false;
        for _ in 0..s.window {
            if let Verdict::Clear = m.observe(false, "ok", &s) {
                cleared = true;
                break;
            }
        }
        assert!(cleared);
    }

    #[test]
    fn two_blanks_are_not_an_incident() {
        let s = RateSettings::default();
        let mut m = RateMonitor::new("blank_rate", 0.01, 0.2, 100);
        assert!(matches!(m.observe(true, "a", &s), Verdict::Hold));
        assert!(matches!(m.observe(true, "b", &s), Verdict::Hold));
    }

    #[test]
    fn latency_monitor_fires_on_a_spike_not_on_noise() {
        let mut m = ValueMonitor::new("latency", true, 0.2, 100);
        let mut u = super::super::conformal::Uniforms::new(3);
        for _ in 0..500 {
            let v = 0.5 + 0.3 * u.next_f64();
            assert!(!matches!(m.observe(v, "n", 1e-6), Verdict::Fire { .. }));
        }
        let mut first = None;
        let mut worst = None;
        for i in 0..20 {
            if let Verdict::Fire { severity, .. } = m.observe(3.0, "slow", 1e-6) {
                first.get_or_insert(i);
                worst = worst.max(Some(severity));
            }
        }
        // The tail rate is a 99% upper bound from 100 warm-up values (~0.13), so a spike needs
        // about a dozen values beyond it.
        assert!(first.is_some_and(|i| i < 14), "{first:?}");
        assert_eq!(
            worst,
            Some(Severity::Critical),
            "escalates as the spike persists"
        );
    }

    #[test]
    fn model_swap_fires_after_a_streak_and_clears_when_it_returns() {
        let mut m = ModelMonitor::default();
        m.observe(Some("gpt-4o-2024-08-06"), "a");
        assert!(matches!(
            m.observe(Some("gpt-4o-2024-11-20"), "b"),
            Verdict::Hold
        ));
        assert!(matches!(
            m.observe(Some("gpt-4o-2024-11-20"), "c"),
            Verdict::Hold
        ));
        assert!(matches!(
            m.observe(Some("gpt-4o-2024-11-20"), "d"),
            Verdict::Fire { .. }
        ));
        assert!(matches!(
            m.observe(Some("gpt-4o-2024-08-06"), "e"),
            Verdict::Clear
        ));
    }
}
