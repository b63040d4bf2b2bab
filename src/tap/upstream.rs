//! Dialling the upstream: TCP, then rustls where the scheme is https (HTTP/1.1 or h2 by
//! ALPN), with a connect timeout and egress through `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`
//! when set. The connections are kept in [`super::pool`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::BoxError;

/// Opens connections to upstreams (every listener's pool dials through one).
pub type Connector = hyper_rustls::HttpsConnector<Egress>;

/// Marks a connect attempt that ran out of time (502 vs 504 depends on it).
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(pub Duration);

/// Connects directly, or through a CONNECT tunnel when the proxy variables say so.
#[derive(Clone)]
pub struct Egress {
    direct: HttpConnector,
    proxy: Option<Arc<Matcher>>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let timeout = self.timeout;
        let intercept = self.proxy.as_ref().and_then(|m| m.intercept(&dst));
        let mut direct = self.direct.clone();
        Box::pin(async move {
            let fut = async {
                match intercept {
                    Some(i) => {
                        let mut tunnel = Tunnel::new(i.uri().clone(), direct);
                        if let Some(auth) = i.basic_auth() {
                            tunnel = tunnel.with_auth(auth.clone());
                        }
                        tower_service::Service::call(&mut tunnel, dst)
                            .await
                            .map_err(|e| Box::new(e) as BoxError)
                    }
                    None => tower_service::Service::call(&mut direct, dst)
                        .await
                        .map_err(|e| Box::new(e) as BoxError),
                }
            };
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(Box::new(ConnectTimeout(timeout)) as BoxError),
            }
        })
    }
}

/// Builds the shared connector. Proxy settings are read from the environment once, here.
pub fn build_connector(connect_timeout: Duration) -> Result<Connector, BoxError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let matcher = Matcher::from_env();
    let has_proxy = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let egress = Egress {
        direct: http,
        proxy: has_proxy.then(|| Arc::new(matcher)),
        timeout: connect_timeout,
    };
    let tls = client_tls_config()?;
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(egress))
}

/// TLS settings for outgoing connections (upstreams, OTLP, webhooks): the system's roots,
/// or the bundled Mozilla roots where the system has none.
pub fn client_tls_config() -> Result<rustls::ClientConfig, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs_or_empty() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn rustls_native_certs_or_empty() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let loaded = rustls_native_certs::load_native_certs();
    if !loaded.errors.is_empty() {
        tracing::debug!(
            errors = loaded.errors.len(),
            "some system certificates could not be read"
        );
    }
    loaded.certs
}

/// True if `err` (or anything it wraps) is a connect timeout.
pub fn is_connect_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<ConnectTimeout>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = e.source();
    }
    false
}
