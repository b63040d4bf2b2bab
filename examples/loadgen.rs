//! Fixed-rate load generator for the tap benchmarks (BENCHMARKS.md).
//!
//! Open loop: request `i` is due at `start + i / rate`; latency is measured from when it was
//! due, not from when it was sent, so a stall shows up in the tail instead of hiding
//! (coordinated omission). Each of `--connections` workers keeps one HTTP/1.1 connection.
//!
//! Pacing: each worker waits for its send time on a Linux timerfd (microsecond precision),
//! not on tokio's timer, whose 1 ms ticks release the requests of a millisecond together: at
//! 13k requests/s that is bursts of 13, and the proxy under test then queues them, which
//! shows up as latency the proxy would not add to evenly spaced traffic. `--pacing tokio`
//! keeps the old behaviour for comparison; off Linux it is the only one.
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/v1/chat/completions \
//!     --rate 5000 --duration 10 --connections 64 --body bench/chat_request.json

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

struct Args {
    url: http::Uri,
    rate: f64,
    duration: Duration,
    connections: usize,
    body: Bytes,
    /// SHA-256 (hex) every response body must have; mismatches are counted.
    expect: Option<String>,
    /// Wait for send times on a timerfd (true) or on tokio's 1 ms timer.
    precise: bool,
}

fn parse() -> Result<Args, String> {
    let mut url = None;
    let mut rate = 1000.0;
    let mut duration = 10.0;
    let mut connections = 64;
    let mut body = Bytes::new();
    let mut expect = None;
    let mut precise = cfg!(target_os = "linux");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--url" => url = Some(v.parse::<http::Uri>().map_err(|e| e.to_string())?),
            "--rate" => rate = v.parse().map_err(|_| "bad --rate")?,
            "--duration" => duration = v.parse().map_err(|_| "bad --duration")?,
            "--connections" => connections = v.parse().map_err(|_| "bad --connections")?,
            "--body" => body = Bytes::from(std::fs::read(&v).map_err(|e| format!("{v}: {e}"))?),
            "--expect-sha256" => expect = Some(v.to_ascii_lowercase()),
            "--pacing" => {
                precise = match v.as_str() {
                    "timerfd" if cfg!(target_os = "linux") => true,
                    "tokio" => false,
                    _ => return Err(format!("--pacing {v}: timerfd (Linux) or tokio")),
                }
            }
            _ => return Err(format!("unknown flag {a}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        rate,
        duration: Duration::from_secs_f64(duration),
        connections,
        body,
        expect,
        precise,
    })
}

/// A timer with the kernel's resolution: a timerfd the tokio reactor watches.
#[cfg(target_os = "linux")]
struct PreciseTimer(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

#[cfg(target_os = "linux")]
impl PreciseTimer {
    fn new() -> std::io::Result<PreciseTimer> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd it returns is owned by the OwnedFd from here on.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open as long as it is
        // registered.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(owned)? };
        Ok(PreciseTimer(fd))
    }

    async fn sleep_until(&self, due: Instant) {
        use std::os::fd::AsRawFd;
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: fd is our timerfd and spec a valid itimerspec.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
            return tokio::time::sleep_until(due.into()).await;
        }
        loop {
            let Ok(mut guard) = self.0.readable().await else {
                return tokio::time::sleep_until(due.into()).await;
            };
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 we own.
            let n = unsafe { libc::read(fd, (&mut expirations as *mut u64).cast(), 8) };
            if n == 8 {
                return;
            }
            guard.clear_ready();
        }
    }
}

/// Waits until `due`: on the timerfd where there is one, else on tokio's timer.
struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<PreciseTimer>,
}

impl Pacer {
    fn new(precise: bool) -> Pacer {
        #[cfg(target_os = "linux")]
        {
            let timer = if precise {
                match PreciseTimer::new() {
                    Ok(t) => Some(t),
                    Err(e) => {
                        eprintln!(
                            "loadgen: no timerfd ({e}); this worker paces on tokio's 1 ms timer"
                        );
                        None
                    }
                }
            } else {
                None
            };
            Pacer { timer }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = precise;
            Pacer {}
        }
    }

    async fn sleep_until(&self, due: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(t) = &self.timer {
            return t.sleep_until(due).await;
        }
        tokio::time::sleep_until(due.into()).await
    }
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let total = (args.rate * args.duration.as_secs_f64()) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("histogram bounds"),
    ));
    let start = Instant::now() + Duration::from_millis(200);
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (next, errors, hist) = (next.clone(), errors.clone(), hist.clone());
        let (expect, mismatches) = (args.expect.clone(), mismatches.clone());
        let url = args.url.clone();
        let body = args.body.clone();
        let rate = args.rate;
        let precise = args.precise;
        workers.push(tokio::spawn(async move {
            let pacer = Pacer::new(precise);
            let host = url.authority().map(|a| a.to_string()).unwrap_or_default();
            let mut local =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut sender = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                pacer.sleep_until(due).await;
                if sender.is_none() {
                    let Ok(stream) = tokio::net::TcpStream::connect(&host).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((s, conn)) = http1::handshake(TokioIo::new(stream)).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let Some(s) = sender.as_mut() else { continue };
                if s.ready().await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                    continue;
                }
                let method = if body.is_empty() {
                    http::Method::GET
                } else {
                    http::Method::POST
                };
                let req = http::Request::builder()
                    .method(method)
                    .uri(url.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                    .header("host", &host)
                    .header("content-type", "application/json")
                    .header("authorization", "Bearer sk-bench")
                    .body(Full::new(body.clone()))
                    .expect("request");
                let ok = match s.send_request(req).await {
                    Ok(resp) => {
                        let good = resp.status().is_success();
                        match resp.into_body().collect().await {
                            Ok(b) if good => {
                                if let Some(want) = &expect {
                                    use sha2::Digest;
                                    let got = hex::encode(sha2::Sha256::digest(b.to_bytes()));
                                    if &got != want {
                                        mismatches.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                true
                            }
                            _ => false,
                        }
                    }
                    Err(_) => false,
                };
                if ok {
                    let _ = local.record(due.elapsed().as_micros().max(1) as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                }
            }
            let _ = hist.lock().add(&local);
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = hist.lock();
    let q = |p: f64| h.value_at_quantile(p) as f64;
    println!(
        "{}",
        serde_json::json!({
            "requests": h.len(),
            "errors": errors.load(Ordering::Relaxed),
            "body_mismatches": mismatches.load(Ordering::Relaxed),
            "offered_rps": args.rate,
            "achieved_rps": h.len() as f64 / elapsed,
            "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": h.max(),
        })
    );
}
