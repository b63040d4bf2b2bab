//! Configuration: the TOML file (contract: `semtap.example.toml`), `SEMTAP_*` environment
//! variables and command-line flags, merged in that order of increasing precedence.
//!
//! Loading never panics: every problem becomes a [`ConfigIssue`] naming the file, the key
//! and the reason, and all of them are reported at once.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::record::Provider;

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file, or `<command line>` / `<environment>` where a flag or variable was at fault.
    pub source: String,
    /// Dotted key path, e.g. `listener[0].upstream`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.reason)
    }
}

/// Every problem found while loading; `Display` prints one per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// A duration written as `250ms`, `10s`, `5m`, `1h` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Float(s) if s.is_finite() && s >= 0.0 => {
                Ok(HumanDuration(Duration::from_secs_f64(s)))
            }
            Raw::Float(_) => Err(serde::de::Error::custom("duration must be >= 0")),
            Raw::Text(t) => parse_duration(&t)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (use e.g. 250ms, 10s, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` in `{text}`")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The file's shape. Every key is optional; defaults live in [`Config`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    listener: Vec<FileListener>,
    #[serde(default)]
    admin: FileAdmin,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    pipeline: FilePipeline,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    shutdown: FileShutdown,
    #[serde(default)]
    capture: FileCapture,
    #[serde(default)]
    semantic: FileSemantic,
    #[serde(default)]
    otlp: crate::export::config::FileOtlp,
    #[serde(default)]
    webhook: Vec<crate::alert::config::FileWebhook>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSemantic {
    enabled: Option<bool>,
    model: Option<String>,
    model_dir: Option<PathBuf>,
    device: Option<String>,
    max_tokens: Option<u64>,
    queue: Option<u64>,
    baseline_size: Option<u64>,
    max_keys: Option<u64>,
    alpha: Option<f64>,
    drift_threshold: Option<f64>,
    cooldown: Option<HumanDuration>,
    transformer_sample: Option<f64>,
    transformer: Option<bool>,
    transformer_review_flagged: Option<bool>,
    transformer_queue: Option<u64>,
    transformer_batch: Option<u64>,
    transformer_batch_wait: Option<HumanDuration>,
    transformer_cache: Option<u64>,
    transformer_threads: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    name: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    provider: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    metrics_public: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    capture_bytes: Option<u64>,
    decompressed_bytes: Option<u64>,
    connect_timeout: Option<HumanDuration>,
    response_timeout: Option<HumanDuration>,
    idle_timeout: Option<HumanDuration>,
    max_in_flight: Option<u64>,
    upstream_idle_connections: Option<u64>,
    upstream_keepalive: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePipeline {
    queue: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    max_models: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShutdown {
    grace: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCapture {
    file: Option<PathBuf>,
    max_bytes: Option<u64>,
    keep: Option<u64>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl LogFormat {
    /// Parses `human` or `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "human" => Some(LogFormat::Human),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The upstream a listener forwards to: an origin plus an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prepended to every request path, without a trailing slash (may be empty).
    pub path_prefix: String,
}

/// Parses an outgoing `http(s)://host[:port]/path[?query]` URL (upstreams, OTLP endpoints,
/// webhooks). Credentials in the URL are refused: secrets go in headers, never in URLs.
pub fn parse_http_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(s) => return Err(format!("scheme `{s}` is not supported (use http or https)")),
        None => return Err(format!("`{text}` has no scheme (use http:// or https://)")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{text}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not allowed (use headers)".to_string());
    }
    if authority.host().is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    Ok(uri)
}

/// Decodes `%XX` escapes (URL paths, `OTEL_*` key=value lists); an invalid escape or
/// non-UTF-8 result is an error.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 after decoding"))
}

impl Upstream {
    /// Parses `http(s)://host[:port][/prefix]`. Userinfo is refused: keys do not go in URLs.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri = parse_http_url(text)?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(format!("`{text}` has no host"));
        };
        if uri.query().is_some() {
            return Err("the upstream URL must not have a query string".to_string());
        }
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            scheme,
            authority,
            path_prefix,
        })
    }

    /// Host name for `server.address`.
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// Port for `server.port`, defaulted from the scheme.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme, self.authority, self.path_prefix
        )
    }
}

/// One listener: where the app connects and where semtap forwards.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// Forces the provider for OpenAI-shaped paths (e.g. an Anthropic-compatible gateway).
    pub provider: Option<Provider>,
}

/// Limits on the data path. Each has a metric and a documented behaviour when hit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of each request and response body kept for analysis; the forward is never capped.
    pub capture_bytes: usize,
    /// Cap on the decompressed analysis copy of a compressed body.
    pub decompressed_bytes: usize,
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response headers.
    pub response_timeout: Duration,
    /// Time allowed between two body chunks from the upstream.
    pub idle_timeout: Duration,
    /// Requests beyond this many in flight get a 503 from semtap.
    pub max_in_flight: usize,
    /// Idle HTTP/1 connections kept open per listener's upstream; more are closed.
    pub upstream_idle_connections: usize,
    /// An idle upstream connection unused this long is closed.
    pub upstream_keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            capture_bytes: 1 << 20,
            decompressed_bytes: 8 << 20,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
            max_in_flight: 10_000,
            upstream_idle_connections: 256,
            upstream_keepalive: Duration::from_secs(90),
        }
    }
}

/// Optional local file of exchange records (JSON lines), rotated and size-capped.
#[derive(Debug, Clone)]
pub struct CaptureFileConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: usize,
}

/// The semantic engine's settings (`[semantic]`).
#[derive(Debug, Clone)]
pub struct SemanticConfig {
    pub enabled: bool,
    /// Model name (default sentence-transformers/all-MiniLM-L6-v2).
    pub model: String,
    /// A directory holding model.safetensors, tokenizer.json and config.json.
    pub model_dir: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda:N` or `metal`: where the transformer runs (the one-time
    /// distillation of the static table and the live transformer tier).
    pub device: String,
    /// Token budget per text (longer texts are truncated).
    pub max_tokens: usize,
    /// Records queued for the engine; beyond it they are dropped and counted.
    pub queue: usize,
    /// Run the live transformer tier (a sample per key plus every flagged answer).
    pub transformer: bool,
    /// The fraction of each key's answers the live transformer tier embeds; unset: 0.02 on a
    /// CPU, 1.0 on a GPU.
    pub transformer_sample: Option<f64>,
    /// The live transformer tier's queue, batching and cache (its `sample` is resolved from
    /// `transformer_sample` once the device is known).
    pub review: crate::semantic::review::ReviewConfig,
    pub engine: crate::semantic::engine::EngineConfig,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        SemanticConfig {
            enabled: true,
            model: crate::semantic::model::DEFAULT_MODEL.to_string(),
            model_dir: None,
            device: "auto".into(),
            max_tokens: 256,
            queue: 4096,
            transformer: true,
            transformer_sample: None,
            review: Default::default(),
            engine: Default::default(),
        }
    }
}

/// The merged, validated configuration semtap runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub admin_listen: SocketAddr,
    /// Who may use the admin API beyond the probes.
    pub admin_auth: crate::admin::AdminAuth,
    pub state_dir: Option<PathBuf>,
    pub limits: Limits,
    /// Capacity of the queue from the data path to analysis.
    pub pipeline_queue: usize,
    pub max_models: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_grace: Duration,
    pub capture_file: Option<CaptureFileConfig>,
    pub semantic: SemanticConfig,
    /// OTLP export; `None` when no endpoint is configured.
    pub otlp: Option<crate::export::config::OtlpConfig>,
    /// Webhook receivers (`[[webhook]]`, `--webhook`).
    pub webhooks: Vec<crate::alert::WebhookConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Vec::new(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            admin_auth: crate::admin::AdminAuth::default(),
            state_dir: None,
            limits: Limits::default(),
            pipeline_queue: 4096,
            max_models: 50,
            log_format: LogFormat::Human,
            log_level: "info".to_string(),
            shutdown_grace: Duration::from_secs(30),
            capture_file: None,
            semantic: SemanticConfig::default(),
            otlp: None,
            webhooks: Vec::new(),
        }
    }
}

/// Values from flags and `SEMTAP_*` variables that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub admin: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub model_dir: Option<PathBuf>,
    /// `SEMTAP_SEMANTIC=off` turns the semantic engine off (on/off).
    pub semantic: Option<bool>,
    /// `--otlp-endpoint`: beats `OTEL_EXPORTER_OTLP_ENDPOINT` and `otlp.endpoint`.
    pub otlp_endpoint: Option<String>,
    /// Read the standard `OTEL_*` variables (the command line does; tests usually do not).
    pub otel_env: bool,
    /// `--webhook URL` receivers, signed with `webhook_secret` (`SEMTAP_WEBHOOK_SECRET`).
    pub webhooks: Vec<String>,
    pub webhook_secret: Option<crate::alert::Secret>,
    /// `SEMTAP_ADMIN_TOKEN`: beats `admin.token` and `admin.token_file`.
    pub admin_token: Option<crate::alert::Secret>,
}

const CLI: &str = "<command line>";
const ENV: &str = "<environment>";

impl Config {
    /// Loads `path` (if any), applies overrides and validates everything.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (file, source) = match path {
            Some(p) => {
                let source = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    issues: vec![ConfigIssue {
                        source: source.clone(),
                        key: "(file)".into(),
                        reason: format!("cannot read: {e}"),
                    }],
                })?;
                (parse_file(&text, &source)?, source)
            }
            None => (FileConfig::default(), CLI.to_string()),
        };
        build(file, &source, overrides)
    }

    /// Validates TOML text as if it were a file called `source`.
    pub fn from_toml(text: &str, source: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with(text, source, &Overrides::default())
    }

    /// Like [`Config::from_toml`], with the overrides a deployment would set (its variables).
    pub fn from_toml_with(
        text: &str,
        source: &str,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        build(parse_file(text, source)?, source, overrides)
    }
}

fn parse_file(text: &str, source: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let key = e
            .span()
            .and_then(|span| key_at(text, span.start))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "(syntax)".to_string());
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim().to_string();
        let reason = match line {
            Some(l) => format!("{msg} (line {l})"),
            None => msg,
        };
        ConfigError {
            issues: vec![ConfigIssue {
                source: source.to_string(),
                key,
                reason,
            }],
        }
    })
}

/// Best-effort dotted key for a byte offset: the enclosing `[table]` and the key on that line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let line = text.get(line_start..line_end)?.trim();
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    if line.starts_with('[') {
        let name = line.trim_matches(|c| c == '[' || c == ']').trim();
        return Some(name.to_string());
    }
    let key = line.split('=').next()?.trim();
    if key.is_empty() {
        return None;
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = text.strip_prefix(':') {
        if let Ok(p) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([0, 0, 0, 0], p)));
        }
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        if let Ok(p) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
        }
    }
    Err(format!(
        "`{text}` is not an address (use IP:PORT, e.g. 127.0.0.1:8080; port 0 picks a free one)"
    ))
}

/// `[admin]` token and `metrics_public`, and the refusal to expose the admin API without a
/// token: `/status` and the baselines API (pin, reset) must not be open to a whole network.
fn admin_auth(
    file: &FileAdmin,
    source: &str,
    ov: &Overrides,
    cfg: &mut Config,
    issues: &mut Vec<ConfigIssue>,
) {
    let mut issue = |src: &str, key: &str, reason: String| {
        issues.push(ConfigIssue {
            source: src.to_string(),
            key: key.to_string(),
            reason,
        })
    };
    let token = match (&ov.admin_token, &file.token, &file.token_file) {
        (Some(t), _, _) => Some((ENV, "SEMTAP_ADMIN_TOKEN", t.clone())),
        (None, Some(_), Some(_)) => {
            issue(
                source,
                "admin.token",
                "set token or token_file, not both".into(),
            );
            None
        }
        (None, Some(t), None) => {
            Some((source, "admin.token", crate::alert::Secret::new(t.clone())))
        }
        (None, None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => Some((
                source,
                "admin.token_file",
                crate::alert::Secret::new(t.trim_end_matches(['\n', '\r'])),
            )),
            Err(e) => {
                issue(
                    source,
                    "admin.token_file",
                    format!("cannot read `{}`: {e}", path.display()),
                );
                None
            }
        },
        (None, None, None) => None,
    };
    let mut token_given = false;
    if let Some((src, key, t)) = token {
        token_given = true;
        match crate::admin::check_token(t.as_bytes()) {
            Ok(()) => cfg.admin_auth.token = Some(t),
            Err(reason) => issue(src, key, reason.to_string()),
        }
    }
    if let Some(p) = file.metrics_public {
        cfg.admin_auth.metrics_public = p;
    }
    if !token_given {
        let (src, key) = if ov.admin.is_some() {
            (CLI, "--admin")
        } else {
            (source, "admin.listen")
        };
        if !cfg.admin_listen.ip().is_loopback() {
            issue(
                src,
                key,
                format!(
                    "the admin server would listen on {} (not loopback) without a token: set \
                     admin.token_file, admin.token or SEMTAP_ADMIN_TOKEN, or listen on 127.0.0.1",
                    cfg.admin_listen
                ),
            );
        }
        if !cfg.admin_auth.metrics_public {
            issue(
                source,
                "admin.metrics_public",
                "false needs a token (admin.token_file, admin.token or SEMTAP_ADMIN_TOKEN)".into(),
            );
        }
    }
}

fn build(file: FileConfig, source: &str, ov: &Overrides) -> Result<Config, ConfigError> {
    let mut issues = Vec::new();
    let mut cfg = Config::default();
    macro_rules! issue {
        ($src:expr, $key:expr, $reason:expr $(,)?) => {
            issues.push(ConfigIssue {
                source: $src.to_string(),
                key: String::from($key),
                reason: String::from($reason),
            })
        };
    }

    for (i, l) in file.listener.iter().enumerate() {
        let key = |k: &str| format!("listener[{i}].{k}");
        let name = l.name.clone().unwrap_or_else(|| {
            if i == 0 {
                "default".to_string()
            } else {
                format!("listener{i}")
            }
        });
        let listen = match l.listen.as_deref() {
            Some(t) => parse_addr(t)
                .map_err(|r| issue!(source, key("listen"), r))
                .ok(),
            None => {
                issue!(source, key("listen"), "is required");
                None
            }
        };
        let upstream = match l.upstream.as_deref() {
            Some(t) => Upstream::parse(t)
                .map_err(|r| issue!(source, key("upstream"), r))
                .ok(),
            None => {
                issue!(source, key("upstream"), "is required");
                None
            }
        };
        let provider = match l.provider.as_deref() {
            Some(p) => match Provider::parse(p) {
                Some(p) => Some(p),
                None => {
                    issue!(
                        source,
                        key("provider"),
                        format!(
                            "unknown provider `{p}` (use openai, anthropic or azure.ai.openai)"
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        if let (Some(listen), Some(upstream)) = (listen, upstream) {
            cfg.listeners.push(ListenerConfig {
                name,
                listen,
                upstream,
                provider,
            });
        }
    }

    // Flags / SEMTAP_* override the first listener, or create one.
    if ov.listen.is_some() || ov.upstream.is_some() {
        let listen = ov
            .listen
            .as_deref()
            .map(|t| parse_addr(t).map_err(|r| issue!(CLI, "--listen", r)).ok());
        let upstream = ov.upstream.as_deref().map(|t| {
            Upstream::parse(t)
                .map_err(|r| issue!(CLI, "--upstream", r))
                .ok()
        });
        if let Some(first) = cfg.listeners.first_mut() {
            if let Some(Some(l)) = listen {
                first.listen = l;
            }
            if let Some(Some(u)) = upstream {
                first.upstream = u;
            }
        } else {
            match (listen, upstream) {
                (Some(Some(listen)), Some(Some(upstream))) => cfg.listeners.push(ListenerConfig {
                    name: "default".into(),
                    listen,
                    upstream,
                    provider: None,
                }),
                (None, _) => issue!(
                    CLI,
                    "--listen",
                    "is required with --upstream when no config file defines a listener",
                ),
                (_, None) => issue!(
                    CLI,
                    "--upstream",
                    "is required with --listen when no config file defines a listener",
                ),
                _ => {}
            }
        }
    }

    let mut names = std::collections::HashSet::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if !names.insert(l.name.clone()) {
            issue!(
                source,
                format!("listener[{i}].name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
    }

    match ov.admin.as_deref() {
        Some(t) => match parse_addr(t) {
            Ok(a) => cfg.admin_listen = a,
            Err(r) => issue!(CLI, "--admin", r),
        },
        None => {
            if let Some(t) = file.admin.listen.as_deref() {
                match parse_addr(t) {
                    Ok(a) => cfg.admin_listen = a,
                    Err(r) => issue!(source, "admin.listen", r),
                }
            }
        }
    }

    admin_auth(&file.admin, source, ov, &mut cfg, &mut issues);

    cfg.state_dir = ov.state_dir.clone().or(file.state_dir);
    cfg.webhooks = crate::alert::config::build(
        &file.webhook,
        source,
        &ov.webhooks,
        ov.webhook_secret.as_ref(),
        &mut issues,
    );
    if !cfg.webhooks.is_empty() && cfg.state_dir.is_none() {
        issue!(
            source,
            "state_dir",
            "is required with webhooks: undelivered events are spooled in <state_dir>/webhooks/ (set state_dir, --state-dir or SEMTAP_STATE_DIR)",
        );
    }

    let lim = &file.limits;
    macro_rules! positive {
        ($v:expr, $key:expr) => {
            match $v {
                Some(0) => {
                    issue!(source, $key, "must be greater than 0");
                    None
                }
                other => other,
            }
        };
    }
    if let Some(v) = positive!(lim.capture_bytes, "limits.capture_bytes") {
        cfg.limits.capture_bytes = v as usize;
    }
    if let Some(v) = positive!(lim.decompressed_bytes, "limits.decompressed_bytes") {
        cfg.limits.decompressed_bytes = v as usize;
    }
    if let Some(v) = positive!(lim.max_in_flight, "limits.max_in_flight") {
        cfg.limits.max_in_flight = v as usize;
    }
    // 0 idle connections is valid: every request opens its own.
    if let Some(v) = lim.upstream_idle_connections {
        cfg.limits.upstream_idle_connections = v as usize;
    }
    if let Some(d) = lim.upstream_keepalive {
        cfg.limits.upstream_keepalive = d.0;
    }
    if let Some(d) = lim.connect_timeout {
        cfg.limits.connect_timeout = d.0;
    }
    if let Some(d) = lim.response_timeout {
        cfg.limits.response_timeout = d.0;
    }
    if let Some(d) = lim.idle_timeout {
        cfg.limits.idle_timeout = d.0;
    }
    for (key, d) in [
        ("limits.connect_timeout", cfg.limits.connect_timeout),
        ("limits.response_timeout", cfg.limits.response_timeout),
        ("limits.idle_timeout", cfg.limits.idle_timeout),
    ] {
        if d.is_zero() {
            issue!(source, key, "must be greater than 0");
        }
    }
    if let Some(v) = positive!(file.pipeline.queue, "pipeline.queue") {
        cfg.pipeline_queue = v as usize;
    }
    if let Some(v) = positive!(file.metrics.max_models, "metrics.max_models") {
        cfg.max_models = v as usize;
    }
    if let Some(g) = file.shutdown.grace {
        cfg.shutdown_grace = g.0;
    }

    match ov.log_format.as_deref() {
        Some(f) => match LogFormat::parse(f) {
            Some(f) => cfg.log_format = f,
            None => issue!(CLI, "--log-format", format!("`{f}` is not human or json")),
        },
        None => {
            if let Some(f) = file.log.format.as_deref() {
                match LogFormat::parse(f) {
                    Some(f) => cfg.log_format = f,
                    None => issue!(source, "log.format", format!("`{f}` is not human or json")),
                }
            }
        }
    }
    if let Some(l) = ov.log_level.clone().or(file.log.level) {
        if tracing_subscriber::EnvFilter::try_new(&l).is_err() {
            issue!(source, "log.level", format!("`{l}` is not a log filter"));
        } else {
            cfg.log_level = l;
        }
    }

    if let Some(path) = file.capture.file {
        let max_bytes = positive!(file.capture.max_bytes, "capture.max_bytes").unwrap_or(100 << 20);
        let keep = file.capture.keep.unwrap_or(3) as usize;
        cfg.capture_file = Some(CaptureFileConfig {
            path,
            max_bytes,
            keep,
        });
    }

    let no_env = |_: &str| None;
    let process_env = |k: &str| std::env::var(k).ok();
    let env: &dyn Fn(&str) -> Option<String> = if ov.otel_env { &process_env } else { &no_env };
    match crate::export::config::resolve(&file.otlp, source, env, ov.otlp_endpoint.as_deref()) {
        Ok(o) => cfg.otlp = o,
        Err(more) => issues.extend(more),
    }

    let sem = &file.semantic;
    let sc = &mut cfg.semantic;
    if let Some(v) = ov.semantic.or(sem.enabled) {
        sc.enabled = v;
    }
    if let Some(m) = &sem.model {
        sc.model = m.clone();
    }
    sc.model_dir = ov.model_dir.clone().or(sem.model_dir.clone());
    if let Some(d) = &sem.device {
        let ok = d == "auto"
            || d == "cpu"
            || d == "metal"
            || d.strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok())
            || d == "cuda";
        if ok {
            sc.device = d.clone();
        } else {
            issue!(
                source,
                "semantic.device",
                format!("`{d}` is not auto, cpu, cuda:N or metal")
            );
        }
    }
    if let Some(v) = positive!(sem.max_tokens, "semantic.max_tokens") {
        if v > 512 {
            issue!(
                source,
                "semantic.max_tokens",
                "must be at most 512 (the model's position limit)"
            );
        } else {
            sc.max_tokens = v as usize;
        }
    }
    if let Some(v) = positive!(sem.queue, "semantic.queue") {
        sc.queue = v as usize;
    }
    if let Some(v) = positive!(sem.baseline_size, "semantic.baseline_size") {
        if v < 20 {
            issue!(source, "semantic.baseline_size", "must be at least 20");
        } else {
            sc.engine.baseline_size = v as usize;
        }
    }
    if let Some(v) = positive!(sem.max_keys, "semantic.max_keys") {
        sc.engine.max_keys = v as usize;
    }
    if let Some(a) = sem.alpha {
        if a > 0.0 && a < 0.5 {
            sc.engine.alpha = a;
        } else {
            issue!(source, "semantic.alpha", "must be between 0 and 0.5");
        }
    }
    if let Some(t) = sem.drift_threshold {
        if t >= 10.0 {
            sc.engine.drift_threshold = t;
        } else {
            issue!(
                source,
                "semantic.drift_threshold",
                "must be at least 10 (it is an average run length in responses)"
            );
        }
    }
    if let Some(c) = sem.cooldown {
        sc.engine.cooldown_ms = c.0.as_millis() as u64;
    }
    if let Some(b) = sem.transformer {
        sc.transformer = b;
    }
    if let Some(b) = sem.transformer_review_flagged {
        sc.review.review_flagged = b;
    }
    if let Some(v) = positive!(sem.transformer_queue, "semantic.transformer_queue") {
        sc.review.queue = v as usize;
    }
    if let Some(v) = positive!(sem.transformer_batch, "semantic.transformer_batch") {
        sc.review.max_batch = v as usize;
    }
    if let Some(w) = sem.transformer_batch_wait {
        sc.review.max_wait = w.0;
    }
    if let Some(v) = sem.transformer_cache {
        sc.review.cache = v as usize;
    }
    if let Some(v) = positive!(sem.transformer_threads, "semantic.transformer_threads") {
        sc.review.threads = v as usize;
    }
    if let Some(f) = sem.transformer_sample {
        if (0.0..=1.0).contains(&f) {
            sc.transformer_sample = Some(f);
        } else {
            issue!(
                source,
                "semantic.transformer_sample",
                "must be between 0 and 1"
            );
        }
    }

    if cfg.listeners.is_empty() && issues.is_empty() {
        issue!(
            source,
            "listener",
            "no listener: add a [[listener]] with listen and upstream, or pass --listen and --upstream",
        );
    }

    if issues.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError { issues })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2").ok(), Some(Duration::from_secs(2)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn full_example_parses() {
        let text = include_str!("../semtap.example.toml");
        let cfg = Config::from_toml(text, "semtap.example.toml");
        assert!(cfg.is_ok(), "{:?}", cfg.err());
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let text = "[[listener]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"ftp://x\"\n\n[[listener]]\nlisten = \"nope\"\nupstream = \"http://a\"\n";
        let err = Config::from_toml(text, "bad.toml").err();
        let err = err.map(|e| e.issues).unwrap_or_default();
        assert_eq!(err.len(), 2);
        assert_eq!(err[0].source, "bad.toml");
        assert_eq!(err[0].key, "listener[0].upstream");
        assert!(err[0].reason.contains("not supported"));
        assert_eq!(err[1].key, "listener[1].listen");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = "[limits]\ncapture_bytez = 5\n";
        let err = Config::from_toml(text, "c.toml").err().map(|e| e.issues);
        let issues = err.unwrap_or_default();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].key, "limits.capture_bytez");
        assert!(
            issues[0].reason.contains("unknown field"),
            "{}",
            issues[0].reason
        );
    }

    #[test]
    fn a_syntax_error_on_an_empty_table_name_still_names_a_key() {
        for text in ["[]\n", "[[]]\n", "[ ]\nx = 1\n", "= 5\n"] {
            let issues = Config::from_toml(text, "c.toml")
                .err()
                .map(|e| e.issues)
                .unwrap_or_default();
            assert_eq!(issues.len(), 1, "{text:?}");
            assert!(!issues[0].key.is_empty(), "{text:?}: {}", issues[0]);
        }
    }

    #[test]
    fn wrong_type_is_named() {
        let text = "[limits]\nidle_timeout = \"forever\"\n";
        let issues = Config::from_toml(text, "c.toml")
            .err()
            .map(|e| e.issues)
            .unwrap_or_default();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].key, "limits.idle_timeout");
    }

    #[test]
    fn flags_alone_make_a_listener() {
        let ov = Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some("http://127.0.0.1:9/v1/".into()),
            ..Default::default()
        };
        let cfg = Config::load(None, &ov);
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cfg.listeners.len(), 1);
        assert_eq!(cfg.listeners[0].upstream.path_prefix, "/v1");
        assert_eq!(cfg.admin_listen.port(), 9464);
    }

    #[test]
    fn upstream_with_credentials_is_refused() {
        assert!(Upstream::parse("https://user:sk-secret@api.openai.com").is_err());
    }

    #[test]
    fn admin_token_rules_name_the_key() {
        let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://a\"\n[admin]\n";
        let keys = |extra: &str| -> Vec<String> {
            Config::from_toml(&format!("{base}{extra}"), "c.toml")
                .err()
                .map(|e| e.issues.into_iter().map(|i| i.key).collect())
                .unwrap_or_default()
        };
        assert_eq!(keys("listen = \"0.0.0.0:9464\"\n"), ["admin.listen"]);
        assert_eq!(keys("listen = \"[::1]:9464\"\n"), Vec::<String>::new());
        assert_eq!(keys("metrics_public = false\n"), ["admin.metrics_public"]);
        assert_eq!(
            keys("token = \"a\"\ntoken_file = \"/nonexistent\"\n"),
            ["admin.token"]
        );
        assert_eq!(keys("token = \"two words\"\n"), ["admin.token"]);
        assert_eq!(
            keys("token_file = \"/nonexistent/t\"\n"),
            ["admin.token_file"]
        );
        let ok = "listen = \"0.0.0.0:9464\"\ntoken = \"t0k\"\nmetrics_public = false\n";
        assert_eq!(keys(ok), Vec::<String>::new());
        // The variable beats the file and satisfies the exposure rule on its own.
        let ov = Overrides {
            admin_token: Some(crate::alert::Secret::new("from-env")),
            ..Default::default()
        };
        let cfg = Config::from_toml_with(
            &format!("{base}listen = \":9464\"\ntoken = \"t\"\n"),
            "c.toml",
            &ov,
        );
        let token = cfg.ok().and_then(|c| c.admin_auth.token);
        assert_eq!(token, Some(crate::alert::Secret::new("from-env")));
    }
}
