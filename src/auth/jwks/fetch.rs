//! One GET of a key set or a discovery document, through hyper-util's client with
//! hyper-rustls: HTTPS with the system's roots plus `ca_file` (plain HTTP only to loopback,
//! as checked at load), HTTP/1.1, no connection kept between refreshes. Connect to last
//! byte under `timeout`, the body capped at 1 MiB, redirects not followed (a 3xx is a
//! failure like any answer but 200).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, USER_AGENT};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tracing::warn;

use crate::config::{JwksSettings, defaults, url_allowed};

/// Why a fetch did not put a new set in force.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("the provider answered {0} (only 200 is a key set)")]
    Status(u16),
    #[error("no complete answer within the timeout")]
    Timeout,
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    #[error("the answer is over {} bytes", defaults::JWKS_MAX_BYTES)]
    TooLarge,
    #[error("not a key set: {0}")]
    Invalid(String),
    #[error("the set has no usable key")]
    NoUsableKeys,
    #[error("discovery: {0}")]
    Discovery(String),
}

impl FetchError {
    /// The metric label (`doorman_jwks_fetches_total{outcome}`).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            FetchError::Status(_) => "http_status",
            FetchError::Timeout => "timeout",
            FetchError::Connect(_) => "connect",
            FetchError::TooLarge => "too_large",
            FetchError::Invalid(_) => "invalid",
            FetchError::NoUsableKeys => "no_usable_keys",
            FetchError::Discovery(_) => "discovery",
        }
    }
}

pub(super) struct Client {
    http: HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// The system's roots (read off the runtime's threads: it is file IO) and `ca_file`.
    pub(super) async fn new(settings: &JwksSettings) -> Result<Client, String> {
        let extra = settings.ca.clone();
        let roots = tokio::task::spawn_blocking(move || {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                warn!(error = %e, "JWKS: a system root certificate could not be read");
            }
            roots.add_parsable_certificates(native.certs);
            let (_, refused) = roots.add_parsable_certificates(extra);
            if refused > 0 {
                warn!(
                    refused,
                    "JWKS: certificates of ca_file that are no trust anchor"
                );
            }
            roots
        })
        .await
        .map_err(|e| format!("reading the root certificates failed: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // http:// is allowed by the connector, and by the configuration only to loopback.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        // Refreshes are minutes apart: a kept connection would only hold a socket open.
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        Ok(Client {
            http,
            timeout: settings.timeout,
        })
    }

    /// The body of a 200 answer, and its `Cache-Control: max-age`.
    pub(super) async fn get(&self, uri: &Uri) -> Result<(Bytes, Option<Duration>), FetchError> {
        let req = Request::get(uri.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(USER_AGENT, concat!("doorman/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| FetchError::Connect(chain(&e)))?;
            if resp.status() != StatusCode::OK {
                return Err(FetchError::Status(resp.status().as_u16()));
            }
            let declared = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > defaults::JWKS_MAX_BYTES as u64) {
                return Err(FetchError::TooLarge);
            }
            let max_age = max_age(resp.headers());
            let body = Limited::new(resp.into_body(), defaults::JWKS_MAX_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Connect(chain(&*e))
                    }
                })?
                .to_bytes();
            Ok((body, max_age))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    /// OpenID Connect Discovery: the document must name `issuer` exactly (§4.3), and its
    /// `jwks_uri` must be a URL doorman may fetch.
    pub(super) async fn discover(&self, document: &Uri, issuer: &str) -> Result<Uri, FetchError> {
        #[derive(Deserialize)]
        struct Document {
            issuer: String,
            jwks_uri: String,
        }
        let (body, _) = self.get(document).await?;
        let doc: Document = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Discovery(format!("not a discovery document: {e}")))?;
        if doc.issuer != issuer {
            return Err(FetchError::Discovery(format!(
                "the document's issuer {:?} is not [auth] issuer {issuer:?}",
                doc.issuer
            )));
        }
        let uri: Uri = doc
            .jwks_uri
            .parse()
            .map_err(|e| FetchError::Discovery(format!("jwks_uri {:?}: {e}", doc.jwks_uri)))?;
        url_allowed(&uri)
            .map_err(|e| FetchError::Discovery(format!("jwks_uri {:?}: {e}", doc.jwks_uri)))?;
        Ok(uri)
    }
}

/// An error and its causes on one line (hyper-util's own message is only "client error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// `Cache-Control: max-age=N` (`no-cache` / `no-store` read as 0: the caller clamps to
/// `min_refresh`).
pub(super) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                found = Some(Duration::from_secs(secs));
            }
        }
    }
    found
}
