//! Memory stays flat while large bodies stream through (its own test binary, so no other
//! test shares the process whose RSS is measured).

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use semtap::simulate::MockUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_stream_passes_with_flat_memory() {
    let up = MockUpstream::start().await.expect("mock");
    let t = tap(&up.url()).await;
    let before = rss_bytes();
    assert!(before > 0, "RSS is readable from /proc/self/status");
    let req = http::Request::get(format!("{}/stream-bytes?mb=100", t.base()))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = client().request(req).await.expect("resp");
    let mut body = resp.into_body();
    let mut total = 0u64;
    let mut peak = before;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Some(d) = frame.data_ref() {
            total += d.len() as u64;
        }
        if total % (8 << 20) < 65_536 {
            peak = peak.max(rss_bytes());
        }
    }
    assert_eq!(total, 100 << 20);
    peak = peak.max(rss_bytes());
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 48 << 20,
        "RSS grew by {} MiB while streaming 100 MiB",
        growth >> 20
    );
    t.running.shutdown().await;
}
