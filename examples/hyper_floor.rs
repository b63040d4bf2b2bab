//! The floor under any hyper-based proxy on this machine (BENCHMARKS.md, "session 8: the
//! hyper floor").
//!
//! The cheapest HTTP/1 reverse proxy hyper allows: each client connection gets its own
//! upstream connection, opened on its first request and used for its requests one after the
//! other (no shared pool, one uncontended lock per request, no task per request), and a
//! request is forwarded with only `Host` rewritten; the upstream's response head and body go back as they are. No capture, no
//! timers, no metrics, no analysis. `scripts/bench_tap_ab.sh` runs it beside semtap and nginx
//! so that the distance from semtap to nginx splits into what hyper costs and what semtap adds.
//!
//! cargo run --release --example hyper_floor -- 127.0.0.1:18120 127.0.0.1:18101

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Body = BoxBody<Bytes, hyper::Error>;

/// One client connection's upstream connection, opened on first use.
struct Upstream {
    addr: String,
    host: HeaderValue,
    tx: Mutex<Option<client::SendRequest<Incoming>>>,
}

impl Upstream {
    async fn forward(&self, mut req: Request<Incoming>) -> Response<Body> {
        req.headers_mut()
            .insert(http::header::HOST, self.host.clone());
        let mut slot = self.tx.lock().await;
        if slot.as_ref().is_none_or(|tx| tx.is_closed()) {
            *slot = None;
        }
        let tx = match &mut *slot {
            Some(tx) => tx,
            None => match self.connect().await {
                Ok(tx) => slot.insert(tx),
                Err(_) => return bad_gateway(),
            },
        };
        if tx.ready().await.is_err() {
            *slot = None;
            return bad_gateway();
        }
        match tx.send_request(req).await {
            Ok(resp) => resp.map(|b| b.boxed()),
            Err(_) => bad_gateway(),
        }
    }

    async fn connect(&self) -> std::io::Result<client::SendRequest<Incoming>> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (tx, conn) = client::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(tx)
    }
}

fn bad_gateway() -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let host = HeaderValue::from_str(&upstream)?;
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("hyper_floor listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let up = Arc::new(Upstream {
            addr: upstream.clone(),
            host: host.clone(),
            tx: Mutex::new(None),
        });
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let up = up.clone();
                async move { Ok::<_, Infallible>(up.forward(req).await) }
            });
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
