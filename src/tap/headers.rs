//! Header handling on the data path: hop-by-hop headers (RFC 9110 §7.6.1) are dropped in
//! both directions, everything else passes untouched. Secrets are never copied out of here.

use http::header::{
    AsHeaderName, HeaderMap, HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Names semtap reads on the data path, parsed once (a `&str` lookup parses the name on
/// every call).
pub mod name {
    use http::header::HeaderName;

    pub const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
    pub const SEMTAP_ROUTE: HeaderName = HeaderName::from_static("x-semtap-route");
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub const OPENAI_REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    pub const OPENAI_REMAINING_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-tokens");
    pub const ANTHROPIC_REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-requests-remaining");
    pub const ANTHROPIC_REMAINING_TOKENS: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining");
}

/// Hop-by-hop in every message; `Connection`, `Upgrade` and `TE` have their own rules below.
const ALWAYS_HOP_BY_HOP: [HeaderName; 4] =
    [KEEP_ALIVE, PROXY_CONNECTION, TRANSFER_ENCODING, TRAILER];

/// True if `name` is hop-by-hop by itself (not counting names `Connection` lists).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION || name == UPGRADE || name == TE || ALWAYS_HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Connection: upgrade` and `Upgrade`
/// survive so a WebSocket handshake can pass through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names is cheaper than eight removals,
    // each of which hashes its name. `Connection` lists the others, so without it and
    // without the fixed ones there is nothing to do.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if keep_upgrade && name == UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    if !keep_upgrade {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    for name in &ALWAYS_HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(TE);
    if te_trailers {
        headers.insert(TE, http::HeaderValue::from_static("trailers"));
    }
}

/// True for a request asking to switch protocols (WebSocket).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// A header's value as text, cut to `max` bytes (for route names and similar labels).
pub fn text(headers: &HeaderMap, name: impl AsHeaderName, max: usize) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    if v.is_empty() {
        return None;
    }
    let mut end = v.len().min(max);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    Some(v[..end].to_string())
}

/// A header's value as an unsigned number.
pub fn number(headers: &HeaderMap, name: impl AsHeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("trailers, gzip"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get(CONNECTION).is_none());
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(h.get(TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.append("x-kept", HeaderValue::from_static("2"));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // Any one of them alone takes the full path.
        for n in [
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "trailer",
            "upgrade",
        ] {
            let mut h = before.clone();
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h, before, "{n} not removed");
        }
    }

    #[test]
    fn upgrade_headers_survive_for_websockets() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert!(h.get(UPGRADE).is_some());
        assert!(h.get(CONNECTION).is_some());
    }
}
