//! How OTLP bytes leave: a hyper + rustls HTTP client (the same TLS stack as the tap, handed to
//! the OTLP HTTP exporters and used for metrics over HTTP), and tonic channels for gRPC.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::SignalTarget;
use crate::tap::body::BoxError;

/// Largest collector response read (collectors answer with tiny bodies).
const MAX_RESPONSE: usize = 1 << 20;

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// HTTP client for OTLP/HTTP; implements the OTLP exporters' client trait.
#[derive(Clone)]
pub struct OtlpHttpClient {
    inner: Inner,
    timeout: Duration,
}

impl std::fmt::Debug for OtlpHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHttpClient").finish_non_exhaustive()
    }
}

impl OtlpHttpClient {
    /// A client whose requests (response body included) end within `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, BoxError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tap::upstream::client_tls_config()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(OtlpHttpClient { inner, timeout })
    }

    /// Sends one request and reads the (capped) response.
    pub async fn send(&self, req: http::Request<Bytes>) -> Result<http::Response<Bytes>, BoxError> {
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, Full::new(body));
        let fut = async {
            let resp = self.inner.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| -> BoxError { e })?
                .to_bytes();
            Ok::<_, BoxError>(http::Response::from_parts(parts, body))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout).into()),
        }
    }

    /// POSTs a protobuf body to `target` with its headers; Ok only on a 2xx answer.
    pub async fn post_protobuf(
        &self,
        target: &SignalTarget,
        body: Vec<u8>,
    ) -> Result<(), BoxError> {
        let mut req = http::Request::post(&target.endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (k, v) in &target.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = self.send(req.body(Bytes::from(body))?).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {}", resp.status()).into())
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        self.send(request).await
    }
}

/// A lazily connecting gRPC channel for `target` (reconnects by itself after an outage).
pub fn grpc_channel(target: &SignalTarget) -> Result<tonic::transport::Channel, BoxError> {
    let mut ep = tonic::transport::Channel::from_shared(target.endpoint.clone())?
        .timeout(target.timeout)
        .connect_timeout(target.timeout);
    if target.endpoint.starts_with("https://") {
        ep = ep.tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots())?;
    }
    Ok(ep.connect_lazy())
}

/// The target's headers as gRPC metadata (invalid ones were refused at config time).
pub fn metadata(target: &SignalTarget) -> tonic::metadata::MetadataMap {
    let mut map = tonic::metadata::MetadataMap::new();
    for (k, v) in &target.headers {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
            tonic::metadata::MetadataValue::try_from(v.as_str()),
        ) {
            map.insert(k, v);
        }
    }
    map
}
