//! `x-mock-fault`, `x-mock-ttft-ms` and `x-mock-chunk-delay-ms` request headers.

use std::time::Duration;

use http::HeaderMap;

/// Faults requested with `x-mock-fault` (comma-separated; unknown ones are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    pub(crate) status: Option<u16>,
    pub(crate) hang: bool,
    pub(crate) cut: Option<usize>,
    pub(crate) gate: bool,
    pub(crate) malformed_json: bool,
    pub(crate) malformed_sse: bool,
    pub(crate) blank: bool,
    pub(crate) gzip: bool,
    pub(crate) no_usage: bool,
    /// The answer loops: its first sentence over and over.
    pub(crate) looping: bool,
    /// A 200 whose text is an error message.
    pub(crate) error_text: bool,
    /// A silent model swap: another dated model name and answers of another style and topic.
    pub(crate) swap: bool,
}

impl Faults {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut f = Faults::default();
        for value in headers.get_all("x-mock-fault") {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let item = item.trim().to_ascii_lowercase();
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim().to_string(), Some(a.trim().to_string())),
                    None => (item.clone(), None),
                };
                match (name.as_str(), arg) {
                    ("status", Some(a)) => {
                        f.status = a.parse::<u16>().ok().filter(|s| (400..=599).contains(s));
                    }
                    ("cut", Some(a)) => f.cut = a.parse().ok(),
                    ("hang", _) => f.hang = true,
                    ("gate", _) => f.gate = true,
                    ("malformed_json", _) => f.malformed_json = true,
                    ("malformed_sse", _) => f.malformed_sse = true,
                    ("blank", _) => f.blank = true,
                    ("gzip", _) => f.gzip = true,
                    ("no_usage", _) => f.no_usage = true,
                    ("loop", _) => f.looping = true,
                    ("error_text", _) => f.error_text = true,
                    ("swap", _) => f.swap = true,
                    _ => {}
                }
            }
        }
        f
    }
}

/// Delays requested with `x-mock-ttft-ms` and `x-mock-chunk-delay-ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timing {
    /// Before the first stream chunk, or before a non-stream response.
    pub(crate) ttft: Duration,
    /// Between stream chunks.
    pub(crate) chunk_delay: Duration,
}

impl Timing {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        Timing {
            ttft: ms(headers, "x-mock-ttft-ms"),
            chunk_delay: ms(headers, "x-mock-chunk-delay-ms"),
        }
    }
}

fn ms(headers: &HeaderMap, name: &str) -> Duration {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|n| Duration::from_millis(n.min(3_600_000)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_faults() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-mock-fault",
            http::HeaderValue::from_static("status=529, cut=3,gate,no_usage,bogus"),
        );
        let f = Faults::from_headers(&h);
        assert_eq!(f.status, Some(529));
        assert_eq!(f.cut, Some(3));
        assert!(f.gate && f.no_usage && !f.hang);
        h.insert("x-mock-fault", http::HeaderValue::from_static("status=abc"));
        assert_eq!(Faults::from_headers(&h).status, None);
    }
}
