//! Delivery: the HTTP client, one signed attempt, exponential backoff with jitter and the
//! per-receiver circuit breaker.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::WebhookConfig;
use super::sign;

/// The client all receivers share: HTTP/1.1 and h2 over rustls (https) or plain http.
pub type WebhookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Building the client failed (TLS setup).
#[derive(Debug, thiserror::Error)]
#[error("webhook client: {0}")]
pub struct ClientError(String);

/// Builds the shared client (system roots, or the bundled web PKI roots when none load).
pub fn build_client() -> Result<WebhookClient, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls = crate::tap::upstream::client_tls_config().map_err(|e| ClientError(e.to_string()))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build(https))
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx: delivered.
    Delivered(u16),
    /// The receiver rejected this payload for good (400, 410, 413, 422): it is dropped.
    Rejected(u16),
    /// Anything else (refused, timeout, 5xx, 401/403, 429...): try again later.
    Retry(String),
}

/// Statuses that say "this payload will never be accepted"; everything else non-2xx is
/// retried (a 401 during a secret rotation or a 404 while a receiver deploys must not lose
/// events).
const PERMANENT: &[u16] = &[400, 410, 413, 422];

/// Sends one signed attempt (signed now, with a fresh timestamp), bounded by `cfg.timeout`.
pub async fn attempt(
    client: &WebhookClient,
    cfg: &WebhookConfig,
    id: &str,
    body: &Bytes,
) -> Attempt {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sig = sign::signature_header(cfg.secret.as_bytes(), t, body);
    let event_type = if id.ends_with(".resolved") {
        "incident.resolved"
    } else {
        "incident.opened"
    };
    let mut req = http::Request::post(cfg.url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("semtap/", env!("CARGO_PKG_VERSION")),
        )
        .header(sign::SIGNATURE_HEADER, sig)
        .header("x-semtap-event-type", event_type);
    if let Ok(v) = http::HeaderValue::from_str(id) {
        req = req.header("x-semtap-event-id", v);
    }
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    let req = match req.body(Full::new(body.clone())) {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(format!("request: {e}")),
    };
    let send = async {
        let resp = client.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })?;
        let status = resp.status().as_u16();
        // Read (and discard) the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        Ok::<u16, String>(status)
    };
    match tokio::time::timeout(cfg.timeout, send).await {
        Err(_) => Attempt::Retry(format!("timed out after {:?}", cfg.timeout)),
        Ok(Err(e)) => Attempt::Retry(e),
        Ok(Ok(s)) if (200..300).contains(&s) => Attempt::Delivered(s),
        Ok(Ok(s)) if PERMANENT.contains(&s) => Attempt::Rejected(s),
        Ok(Ok(s)) => Attempt::Retry(format!("HTTP {s}")),
    }
}

/// Exponential backoff with equal jitter: attempt `n` (0-based) waits a uniformly random time
/// in `[d/2, d]` where `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling for attempt `n`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retrying after failed attempt `n`, with `u` uniform in [0, 1).
    pub fn delay_with(&self, n: u32, u: f64) -> Duration {
        let d = self.ceiling(n);
        d / 2 + d.mul_f64(0.5 * u.clamp(0.0, 1.0))
    }

    /// The wait before retrying after failed attempt `n`.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, rand::random::<f64>())
    }
}

/// Circuit breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts flow.
    Closed,
    /// No attempts until the instant.
    Open(Instant),
    /// One trial attempt is allowed; its result closes or reopens the breaker.
    HalfOpen,
}

/// Opens after `threshold` consecutive failures, stays open `open_for`, then lets one trial
/// attempt through (half-open): success closes it, failure opens it again.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    state: BreakerState,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            state: BreakerState::Closed,
        }
    }

    /// The current state (an expired open state reads as half-open on the next `allow`).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// `Ok` if an attempt may go now, else how long to wait.
    pub fn allow(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => Ok(()),
            BreakerState::Open(until) if now >= until => {
                self.state = BreakerState::HalfOpen;
                Ok(())
            }
            BreakerState::Open(until) => Err(until - now),
        }
    }

    /// The receiver answered (delivered or rejected): it is up.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
    }

    /// An attempt failed. Returns true if this opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let open = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.failures >= self.threshold,
            BreakerState::Open(_) => false,
        };
        if open {
            self.state = BreakerState::Open(now + self.open_for);
        }
        open
    }

    /// 0 closed, 1 half-open, 2 open: the `semtap.webhook.breaker` gauge.
    pub fn gauge_value(&self) -> f64 {
        match self.state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open(_) => 2.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jitter_stays_in_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(1000), Duration::from_secs(5), "no overflow");
        assert_eq!(b.delay_with(3, 0.0), Duration::from_millis(400));
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(800));
        for n in 0..40 {
            for _ in 0..50 {
                let d = b.delay(n);
                let c = b.ceiling(n);
                assert!(
                    d >= c / 2 && d <= c,
                    "attempt {n}: {d:?} outside [{:?}, {c:?}]",
                    c / 2
                );
            }
        }
        // Jitter actually varies.
        let samples: std::collections::HashSet<Duration> = (0..20).map(|_| b.delay(5)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut br = Breaker::new(3, Duration::from_secs(10));
        assert_eq!(br.allow(t0), Ok(()));
        assert!(!br.on_failure(t0));
        assert!(!br.on_failure(t0));
        assert_eq!(br.state(), BreakerState::Closed);
        assert!(br.on_failure(t0), "third consecutive failure opens");
        assert_eq!(
            br.allow(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert_eq!(br.gauge_value(), 2.0);
        // After the open period: one trial.
        assert_eq!(br.allow(t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(br.state(), BreakerState::HalfOpen);
        // The trial fails: open again straight away.
        let t1 = t0 + Duration::from_secs(10);
        assert!(br.on_failure(t1));
        assert!(br.allow(t1 + Duration::from_secs(1)).is_err());
        assert_eq!(br.allow(t1 + Duration::from_secs(10)), Ok(()));
        br.on_success();
        assert_eq!(br.state(), BreakerState::Closed);
        // A success resets the count.
        assert!(!br.on_failure(t1));
        br.on_success();
        assert!(!br.on_failure(t1));
        assert!(!br.on_failure(t1));
        assert_eq!(br.state(), BreakerState::Closed);
    }
}
