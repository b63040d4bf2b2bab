//! Verify a semtap webhook signature in Rust (hmac + sha2 + hex).
//!
//! `X-Semtap-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`; the
//! secret is used as its raw UTF-8 bytes. Verify against the raw body, compare in constant
//! time (`verify_slice`), reject timestamps more than 300 s away, and deduplicate on the
//! payload's `id` (delivery is at least once).
//!
//! ```text
//! SEMTAP_WEBHOOK_SECRET=... cargo run --example verify_webhook -- 't=...,v1=...' < body.json
//! ```

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const TOLERANCE_SECS: u64 = 300;

/// True if `header` is a valid, fresh signature of `body` under `secret`.
fn verify(secret: &str, header: &str, body: &[u8], now: u64) -> bool {
    let mut t: Option<u64> = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => match hex::decode(v) {
                Ok(s) => sigs.push(s),
                Err(_) => return false,
            },
            Some(_) => {}
            None => return false,
        }
    }
    let Some(t) = t else { return false };
    if sigs.is_empty() || now.abs_diff(t) > TOLERANCE_SECS {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    sigs.iter().any(|s| mac.clone().verify_slice(s).is_ok())
}

fn main() -> std::process::ExitCode {
    let secret = std::env::var("SEMTAP_WEBHOOK_SECRET").unwrap_or_default();
    let header = std::env::args().nth(1).unwrap_or_default();
    let mut body = Vec::new();
    if secret.is_empty() || header.is_empty() || std::io::stdin().read_to_end(&mut body).is_err() {
        eprintln!("usage: SEMTAP_WEBHOOK_SECRET=... verify_webhook '<X-Semtap-Signature>' < body");
        return std::process::ExitCode::from(2);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if verify(&secret, &header, &body, now) {
        println!("ok");
        std::process::ExitCode::SUCCESS
    } else {
        println!("rejected");
        std::process::ExitCode::from(1)
    }
}
