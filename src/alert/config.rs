//! `[[webhook]]` entries and `semtap run --webhook URL`: where incidents are delivered, which
//! ones, and how hard to try. Validated into [`WebhookConfig`]s; every problem becomes a
//! [`ConfigIssue`] naming the file, the key (`webhook[0].url`) and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigIssue, HumanDuration};
use crate::semantic::incidents::{Incident, IncidentKind, Severity};

/// The environment variable `--webhook` takes its secret from.
pub const CLI_SECRET_ENV: &str = "SEMTAP_WEBHOOK_SECRET";

/// A webhook secret. Never printed: `Debug` shows `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(Arc::from(s.into()))
    }

    /// The raw UTF-8 bytes the HMAC is keyed with.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One `[[webhook]]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileWebhook {
    name: Option<String>,
    url: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    kinds: Option<Vec<String>>,
    severities: Option<Vec<String>>,
    keys: Option<Vec<String>>,
    timeout: Option<HumanDuration>,
    headers: Option<BTreeMap<String, String>>,
    spool_max_events: Option<u64>,
    backoff_initial: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
    breaker_failures: Option<u64>,
    breaker_open: Option<HumanDuration>,
}

/// A validated webhook receiver.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Names the receiver in metrics, logs and its spool directory (`[A-Za-z0-9._-]+`).
    pub name: String,
    pub url: http::Uri,
    pub secret: Secret,
    /// Incident kinds sent; empty = all.
    pub kinds: Vec<IncidentKind>,
    /// Severities sent; empty = all.
    pub severities: Vec<Severity>,
    /// Key patterns (`*` matches anything, `/` included) sent; empty = all.
    pub keys: Vec<String>,
    /// Per attempt: connect, send and the receiver's answer.
    pub timeout: Duration,
    /// Extra request headers (values may hold tokens: never logged).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Events kept undelivered at most; beyond it the oldest is dropped and counted.
    pub spool_max_events: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive failed attempts that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before one trial attempt.
    pub breaker_open: Duration,
}

/// Headers semtap sets itself; `headers` may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
    "x-semtap-signature",
    "x-semtap-event-id",
    "x-semtap-event-type",
];

impl WebhookConfig {
    /// A receiver at `url` with every other setting at its default.
    pub fn new(name: &str, url: &str, secret: Secret) -> Result<WebhookConfig, String> {
        check_name(name)?;
        Ok(WebhookConfig {
            name: name.to_string(),
            url: crate::config::parse_http_url(url)?,
            secret,
            kinds: Vec::new(),
            severities: Vec::new(),
            keys: Vec::new(),
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            spool_max_events: 10_000,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
        })
    }

    /// True if this receiver wants events about `incident`.
    pub fn wants(&self, incident: &Incident) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&incident.kind))
            && (self.severities.is_empty() || self.severities.contains(&incident.severity))
            && (self.keys.is_empty() || self.keys.iter().any(|p| glob(p, &incident.key)))
    }
}

/// `*` matches any run of characters (`/` included); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || name.starts_with('.')
    {
        return Err(format!(
            "`{name}` is not a receiver name (letters, digits, `.`, `_` and `-`; it names the spool directory)"
        ));
    }
    Ok(())
}

/// A default receiver name from the URL: `host` or `host_port`, made file-name safe.
fn default_name(url: &http::Uri) -> String {
    let a = url.authority().map(|a| a.as_str()).unwrap_or("webhook");
    let s: String = a
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_start_matches('.').to_string()
}

fn parse_kind(s: &str) -> Option<IncidentKind> {
    IncidentKind::ALL.into_iter().find(|k| k.as_str() == s)
}

fn parse_severity(s: &str) -> Option<Severity> {
    match s {
        "warning" => Some(Severity::Warning),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

const CLI: &str = "<command line>";
const ENV: &str = "<environment>";

/// Validates `[[webhook]]` entries and `--webhook` URLs (whose secret is `cli_secret`, read by
/// the CLI from [`CLI_SECRET_ENV`]). Problems go to `issues`.
pub(crate) fn build(
    file: &[FileWebhook],
    source: &str,
    cli_urls: &[String],
    cli_secret: Option<&Secret>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<WebhookConfig> {
    let mut out: Vec<WebhookConfig> = Vec::new();
    let mut issue = |src: &str, key: String, reason: String| {
        issues.push(ConfigIssue {
            source: src.to_string(),
            key,
            reason,
        })
    };
    for (i, w) in file.iter().enumerate() {
        let key = |k: &str| format!("webhook[{i}].{k}");
        let mut ok = true;
        let url = match w.url.as_deref() {
            Some(u) => match crate::config::parse_http_url(u) {
                Ok(u) => Some(u),
                Err(r) => {
                    issue(source, key("url"), r);
                    None
                }
            },
            None => {
                issue(source, key("url"), "is required".into());
                None
            }
        };
        let secret = match (&w.secret_env, &w.secret_file) {
            (Some(_), Some(_)) => {
                issue(
                    source,
                    key("secret_env"),
                    "set secret_env or secret_file, not both".into(),
                );
                None
            }
            (None, None) => {
                issue(
                    source,
                    key("secret_env"),
                    "a secret is required: set secret_env (an environment variable) or secret_file"
                        .into(),
                );
                None
            }
            (Some(var), None) => match std::env::var(var) {
                Ok(s) if !s.is_empty() => Some(Secret::new(s)),
                Ok(_) => {
                    issue(
                        source,
                        key("secret_env"),
                        format!("environment variable `{var}` is empty"),
                    );
                    None
                }
                Err(_) => {
                    issue(
                        source,
                        key("secret_env"),
                        format!("environment variable `{var}` is not set"),
                    );
                    None
                }
            },
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) if !s.trim_end_matches(['\n', '\r']).is_empty() => {
                    Some(Secret::new(s.trim_end_matches(['\n', '\r'])))
                }
                Ok(_) => {
                    issue(
                        source,
                        key("secret_file"),
                        format!("`{}` is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    issue(
                        source,
                        key("secret_file"),
                        format!("cannot read `{}`: {e}", path.display()),
                    );
                    None
                }
            },
        };
        let name = match (&w.name, &url) {
            (Some(n), _) => match check_name(n) {
                Ok(()) => Some(n.clone()),
                Err(r) => {
                    issue(source, key("name"), r);
                    None
                }
            },
            (None, Some(u)) => Some(default_name(u)),
            (None, None) => None,
        };
        let (Some(name), Some(url), Some(secret)) = (name, url, secret) else {
            continue;
        };
        let Ok(mut wc) = WebhookConfig::new(&name, &url.to_string(), secret) else {
            continue;
        };
        for k in w.kinds.iter().flatten() {
            match parse_kind(k) {
                Some(k) => wc.kinds.push(k),
                None => {
                    ok = false;
                    issue(
                        source,
                        key("kinds"),
                        format!(
                            "unknown incident kind `{k}` (one of {})",
                            IncidentKind::ALL.map(|k| k.as_str()).join(", ")
                        ),
                    )
                }
            }
        }
        for s in w.severities.iter().flatten() {
            match parse_severity(s) {
                Some(s) => wc.severities.push(s),
                None => {
                    ok = false;
                    issue(
                        source,
                        key("severities"),
                        format!("unknown severity `{s}` (warning or critical)"),
                    )
                }
            }
        }
        wc.keys = w.keys.clone().unwrap_or_default();
        if let Some(t) = w.timeout {
            if t.0.is_zero() {
                ok = false;
                issue(source, key("timeout"), "must be greater than 0".into());
            }
            wc.timeout = t.0;
        }
        for (h, v) in w.headers.iter().flatten() {
            let name = match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    ok = false;
                    issue(
                        source,
                        key("headers"),
                        format!("`{h}` is not a header name"),
                    );
                    continue;
                }
            };
            if RESERVED_HEADERS.contains(&name.as_str()) {
                ok = false;
                issue(
                    source,
                    key("headers"),
                    format!("`{h}` is set by semtap and cannot be overridden"),
                );
                continue;
            }
            match http::HeaderValue::from_str(v) {
                Ok(mut val) => {
                    val.set_sensitive(true);
                    wc.headers.push((name, val));
                }
                Err(_) => {
                    ok = false;
                    // The value may be a token: it is not echoed.
                    issue(
                        source,
                        key("headers"),
                        format!("the value of `{h}` is not a valid header value"),
                    )
                }
            }
        }
        if let Some(n) = w.spool_max_events {
            if n == 0 {
                ok = false;
                issue(
                    source,
                    key("spool_max_events"),
                    "must be greater than 0".into(),
                );
            }
            wc.spool_max_events = n as usize;
        }
        if let Some(d) = w.backoff_initial {
            wc.backoff_initial = d.0;
        }
        if let Some(d) = w.backoff_max {
            wc.backoff_max = d.0;
        }
        if wc.backoff_initial.is_zero() || wc.backoff_max < wc.backoff_initial {
            ok = false;
            issue(
                source,
                key("backoff_max"),
                "backoff_initial must be > 0 and backoff_max at least backoff_initial".into(),
            );
        }
        if let Some(n) = w.breaker_failures {
            if n == 0 || n > u64::from(u32::MAX) {
                ok = false;
                issue(
                    source,
                    key("breaker_failures"),
                    "must be between 1 and 4294967295".into(),
                );
            }
            wc.breaker_failures = n.clamp(1, u64::from(u32::MAX)) as u32;
        }
        if let Some(d) = w.breaker_open {
            wc.breaker_open = d.0;
        }
        if out.iter().any(|o| o.name == wc.name) {
            ok = false;
            issue(
                source,
                key("name"),
                format!(
                    "duplicate receiver name `{}` (set a distinct name: it names the spool)",
                    wc.name
                ),
            );
        }
        if ok {
            out.push(wc);
        }
    }
    for (i, u) in cli_urls.iter().enumerate() {
        let url = match crate::config::parse_http_url(u) {
            Ok(u) => u,
            Err(r) => {
                issue(CLI, "--webhook".into(), r);
                continue;
            }
        };
        let Some(secret) = cli_secret else {
            if i == 0 {
                issue(
                    ENV,
                    CLI_SECRET_ENV.into(),
                    "is not set; --webhook signs with the secret in this variable".into(),
                );
            }
            continue;
        };
        let mut name = default_name(&url);
        while out.iter().any(|o| o.name == name) {
            name.push_str("_cli");
        }
        match WebhookConfig::new(&name, u, secret.clone()) {
            Ok(w) => out.push(w),
            Err(r) => issue(CLI, "--webhook".into(), r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn issues(text: &str) -> Vec<ConfigIssue> {
        Config::from_toml(text, "w.toml")
            .err()
            .map(|e| e.issues)
            .unwrap_or_default()
    }

    const BASE: &str = "state_dir = \"/tmp/semtap-state\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n";

    #[test]
    fn bad_url_and_missing_secret_env_name_the_key() {
        let text = format!(
            "{BASE}[[webhook]]\nurl = \"ftp://x\"\nsecret_env = \"SEMTAP_TEST_SURELY_UNSET_VAR_1\"\n"
        );
        let is = issues(&text);
        assert_eq!(is.len(), 2, "{is:?}");
        assert!(is.iter().all(|i| i.source == "w.toml"));
        let url = is.iter().find(|i| i.key == "webhook[0].url");
        assert!(
            url.is_some_and(|i| i.reason.contains("not supported")),
            "{is:?}"
        );
        let env = is.iter().find(|i| i.key == "webhook[0].secret_env");
        assert!(
            env.is_some_and(|i| i.reason.contains("SEMTAP_TEST_SURELY_UNSET_VAR_1")
                && i.reason.contains("not set")),
            "{is:?}"
        );
    }

    #[test]
    fn full_entry_parses_with_filters_and_headers() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").expect("write");
        let text = format!(
            "{BASE}[[webhook]]\nname = \"pager\"\nurl = \"https://hooks.example.com/semtap?x=1\"\nsecret_file = {:?}\nkinds = [\"error_rate\", \"drift\"]\nseverities = [\"critical\"]\nkeys = [\"prod/openai/*\"]\ntimeout = \"3s\"\nheaders = {{ \"X-Team\" = \"ml\" }}\nspool_max_events = 50\nbackoff_initial = \"200ms\"\nbackoff_max = \"10s\"\nbreaker_failures = 3\nbreaker_open = \"5s\"\n",
            secret.display().to_string()
        );
        let cfg = Config::from_toml(&text, "w.toml");
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let w = &cfg.webhooks[0];
        assert_eq!(w.name, "pager");
        assert_eq!(w.secret.as_bytes(), b"s3cret");
        assert_eq!(w.kinds, vec![IncidentKind::ErrorRate, IncidentKind::Drift]);
        assert_eq!(w.severities, vec![Severity::Critical]);
        assert_eq!(w.timeout, Duration::from_secs(3));
        assert_eq!(w.headers.len(), 1);
        assert_eq!(w.spool_max_events, 50);
        assert_eq!(w.breaker_failures, 3);
        assert!(!format!("{w:?}").contains("s3cret"), "secret never printed");
    }

    #[test]
    fn reserved_headers_unknown_kinds_and_duplicate_names_are_refused() {
        let text = format!(
            "{BASE}[[webhook]]\nurl = \"http://a\"\nsecret_env = \"PATH\"\nkinds = [\"nope\"]\nheaders = {{ \"X-Semtap-Signature\" = \"x\" }}\n[[webhook]]\nurl = \"http://a\"\nsecret_env = \"PATH\"\n[[webhook]]\nurl = \"http://a\"\nsecret_env = \"PATH\"\n"
        );
        let is = issues(&text);
        assert!(is.iter().any(|i| i.key == "webhook[0].kinds"), "{is:?}");
        assert!(is.iter().any(|i| i.key == "webhook[0].headers"), "{is:?}");
        assert!(
            is.iter()
                .any(|i| i.key == "webhook[2].name" && i.reason.contains("duplicate")),
            "{is:?}"
        );
    }

    #[test]
    fn webhooks_need_a_state_dir() {
        let text = "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n[[webhook]]\nurl = \"http://a\"\nsecret_env = \"PATH\"\n";
        let is = issues(text);
        assert!(
            is.iter()
                .any(|i| i.key == "state_dir" && i.reason.contains("webhooks")),
            "{is:?}"
        );
    }

    #[test]
    fn cli_webhook_needs_the_secret_variable() {
        let ov = Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some("http://127.0.0.1:9".into()),
            state_dir: Some("/tmp/x".into()),
            webhooks: vec!["http://127.0.0.1:9999/hook".into()],
            ..Default::default()
        };
        let is = Config::load(None, &ov)
            .err()
            .map(|e| e.issues)
            .unwrap_or_default();
        assert_eq!(is.len(), 1, "{is:?}");
        assert_eq!(is[0].key, CLI_SECRET_ENV);
        let ov = Overrides {
            webhook_secret: Some(Secret::new("k")),
            ..ov
        };
        let cfg = Config::load(None, &ov);
        assert!(cfg.is_ok_and(|c| c.webhooks.len() == 1 && c.webhooks[0].name == "127.0.0.1_9999"));
    }

    #[test]
    fn the_documented_example_entry_is_valid() {
        // semtap.example.toml documents [[webhook]] commented out; every key it shows must
        // parse (secret_file is left out: secret_env and secret_file are exclusive).
        let example = include_str!("../../semtap.example.toml");
        let block = example
            .split("# [[webhook]]")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
            })
            .filter(|l| !l.starts_with("secret_file"))
            .map(|l| {
                if l.starts_with("secret_env") {
                    "secret_env = \"PATH\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(block.contains("url = "), "{block}");
        let cfg = Config::from_toml(&format!("{BASE}[[webhook]]\n{block}\n"), "example");
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("{e}\n{block}"),
        };
        assert_eq!(cfg.webhooks.len(), 1);
        assert_eq!(cfg.webhooks[0].name, "router");
    }

    #[test]
    fn key_globs() {
        assert!(glob("prod/openai/*", "prod/openai/gpt-4o/chat"));
        assert!(glob("*/anthropic/*", "a/anthropic/claude"));
        assert!(!glob("prod/openai/*", "dev/openai/gpt-4o"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("*", ""));
    }
}
