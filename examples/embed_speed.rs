//! Embeddings per second of the transformer tier on given texts, for scripts/bench_embed.py,
//! which runs it beside sentence-transformers cell by cell so both see the same machine load.
//!
//! cargo run --release --example embed_speed -- --model-dir models/all-MiniLM-L6-v2 \
//!     --texts texts.json --batch 8 --forward semtap --seconds 3
//!
//! `texts.json` is a JSON array of strings; the first `--batch` are embedded together, over and
//! over, for `--seconds`. Prints one JSON object: embeddings/s (median of 1-second windows),
//! best window, and the process's peak RSS.

use std::time::{Duration, Instant};

use semtap::semantic::model::resolve;
use semtap::semantic::transformer::{DeviceChoice, Forward, TransformerEmbedder};

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let dir = arg("--model-dir").unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let texts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(
        arg("--texts").ok_or_else(|| anyhow::anyhow!("--texts FILE is required"))?,
    )?)?;
    let batch: usize = arg("--batch").unwrap_or_else(|| "1".into()).parse()?;
    let seconds: f64 = arg("--seconds").unwrap_or_else(|| "3".into()).parse()?;
    let forward = match arg("--forward").as_deref().unwrap_or("semtap") {
        "semtap" => Forward::Semtap,
        "graph" => Forward::SemtapGraph,
        "candle" => Forward::CandleBert,
        other => anyhow::bail!("--forward must be semtap, graph or candle, not {other}"),
    };
    let device = DeviceChoice::parse(&arg("--device").unwrap_or_else(|| "cpu".into()))?;
    let files = resolve("", Some(std::path::Path::new(&dir)))?;
    let emb = TransformerEmbedder::load_with(&files, device, 256, forward)?.with_max_batch(batch);
    let refs: Vec<&str> = texts.iter().take(batch).map(String::as_str).collect();
    anyhow::ensure!(refs.len() == batch, "need at least {batch} texts");
    emb.embed(&refs)?; // warm-up
    let mut windows = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end || windows.len() < 3 {
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < Duration::from_secs(1) || n == 0 {
            n += emb.embed(&refs)?.len();
        }
        windows.push(n as f64 / start.elapsed().as_secs_f64());
    }
    windows.sort_by(f64::total_cmp);
    let median = windows[windows.len() / 2];
    let best = windows[windows.len() - 1];
    println!(
        "{}",
        serde_json::json!({
            "forward": format!("{forward:?}"),
            "device": emb.device_name(),
            "batch": batch,
            "per_s": median,
            "best_per_s": best,
            "peak_rss_kb": peak_rss_kb(),
        })
    );
    Ok(())
}
