//! Webhook signatures: `X-Semtap-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<raw body>"`, keyed with the secret's raw UTF-8 bytes. Every delivery attempt is
//! signed afresh (a new `t`), so receivers can reject anything older than
//! [`TOLERANCE_SECS`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-semtap-signature";
/// Receivers should reject signatures whose timestamp is further than this from their clock.
pub const TOLERANCE_SECS: u64 = 300;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header is malformed (want t=<unix seconds>,v1=<hex>)")]
    Malformed,
    #[error("signature timestamp is {0} s away from now (limit {TOLERANCE_SECS} s)")]
    Stale(u64),
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// The keyed MAC over `"<t>.<body>"`. HMAC accepts keys of any length, so this is never
/// `None` in practice.
fn mac(secret: &[u8], t: u64, body: &[u8]) -> Option<HmacSha256> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).ok()?;
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(m)
}

/// Hex HMAC-SHA256(secret, "<t>.<body>").
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    mac(secret, t, body)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// The full header value: `t=<t>,v1=<hex>`.
pub fn signature_header(secret: &[u8], t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", signature(secret, t, body))
}

/// Checks a header value against `body` at `now` (unix seconds), in constant time. Several
/// `v1=` entries are accepted (any may match), as during a secret rotation.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<(), VerifyError> {
    let mut t: Option<u64> = None;
    let mut sigs: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return Err(VerifyError::Malformed);
        };
        match k {
            "t" => t = Some(v.parse().map_err(|_| VerifyError::Malformed)?),
            "v1" => sigs.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {} // unknown schemes are ignored, for forward compatibility
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if sigs.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let age = now.abs_diff(t);
    if age > tolerance {
        return Err(VerifyError::Stale(age));
    }
    let Some(m) = mac(secret, t, body) else {
        return Err(VerifyError::Mismatch);
    };
    if sigs.iter().any(|s| m.clone().verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_matches_an_independent_computation() {
        // python3 -c "import hmac,hashlib;print(hmac.new(b'whsec_test',
        //   b'1700000000.{\"a\":1}', hashlib.sha256).hexdigest())"
        assert_eq!(
            signature(b"whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        // The secret is used as its raw UTF-8 bytes.
        assert_eq!(
            signature("sécret".as_bytes(), 1_700_000_000, b"{}"),
            "179848ae66b0c9c38b9cf40982b964a67791b5003717edf18f516db6c14db954"
        );
    }

    #[test]
    fn verify_accepts_fresh_and_rejects_wrong_secret_stale_and_garbage() {
        let body = br#"{"id":"x"}"#;
        let h = signature_header(b"s3cret", 1000, body);
        assert_eq!(verify(b"s3cret", &h, body, 1100, TOLERANCE_SECS), Ok(()));
        assert_eq!(
            verify(b"wrong", &h, body, 1100, TOLERANCE_SECS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &h, b"{\"id\":\"y\"}", 1100, TOLERANCE_SECS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &h, body, 1301, TOLERANCE_SECS),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(b"s3cret", "v1=abc", body, 1000, 300),
            Err(VerifyError::Malformed)
        );
        let rotated = format!("{h},v1={}", signature(b"new", 1000, body));
        assert_eq!(verify(b"new", &rotated, body, 1000, 300), Ok(()));
    }
}
