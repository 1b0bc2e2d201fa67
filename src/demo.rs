//! `doorman demo`: a zero-setup first run. Three replica servers on loopback, a CA and a
//! certificate generated in memory, doorman in front, and curl commands to paste.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::debug;

use crate::config::{
    AuthMode, AuthSettings, Balance, CertificateSpec, Config, HealthSpec, IdempotencyMode,
    IdempotencySettings, JwtKey, RevocationSettings, RouteSpec, ServerSettings, ServerSpec,
    StoreSettings, UpstreamSpec, defaults,
};
use crate::server::{self, Listeners};
use crate::snapshot::Snapshot;

pub(crate) const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where the demo CA certificate is written for `curl --cacert`.
    pub ca_dir: PathBuf,
}

/// Run the demo until `shutdown` resolves.
pub async fn run(opts: DemoOptions, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let mut servers = Vec::new();
    for i in 1..=REPLICAS {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind a demo replica: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(replica(listener, format!("replica-{i}")));
        servers.push(ServerSpec {
            address: addr,
            weight: 1,
        });
    }

    let (ca_pem, cert) =
        certificate().map_err(|e| format!("cannot generate the demo certificate: {e}"))?;
    // A fresh random HS256 secret per run: the demo token is only good for this process.
    let secret: Vec<u8> = (0..48).map(|_| fastrand::alphanumeric() as u8).collect();
    let (token, jti, exp) = demo_token(&secret)?;
    std::fs::create_dir_all(&opts.ca_dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.ca_dir.display()))?;
    let ca_path = opts.ca_dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem)
        .map_err(|e| format!("cannot write {}: {e}", ca_path.display()))?;

    let mut settings = ServerSettings::with_listen(opts.listen);
    settings.admin_listen = opts.admin_listen;
    let config = Config {
        server: settings,
        tls: vec![cert],
        cipher_suites: Vec::new(),
        upstreams: vec![UpstreamSpec {
            name: "demo".into(),
            balance: Balance::RoundRobin,
            health: HealthSpec::default(),
            retries: 2,
            retry_budget: 0.2,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            response_timeout: defaults::RESPONSE_TIMEOUT,
            keepalive: defaults::KEEPALIVE,
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            servers: servers.clone(),
        }],
        routes: vec![
            RouteSpec {
                host: None,
                path_prefix: "/api/".into(),
                upstream: "demo".into(),
                auth: AuthMode::Required,
                idempotency: IdempotencyMode::Off,
                allow_methods: Vec::new(),
            },
            RouteSpec {
                host: None,
                path_prefix: "/orders".into(),
                upstream: "demo".into(),
                auth: AuthMode::Off,
                idempotency: IdempotencyMode::Required,
                allow_methods: Vec::new(),
            },
            RouteSpec {
                host: None,
                path_prefix: "/".into(),
                upstream: "demo".into(),
                auth: AuthMode::Off,
                idempotency: IdempotencyMode::Off,
                allow_methods: Vec::new(),
            },
        ],
        store: StoreSettings::default(),
        auth: Some(demo_auth(&secret)),
        revocation: RevocationSettings::default(),
        idempotency: IdempotencySettings::default(),
        log: Default::default(),
    };
    let listeners = Listeners::bind(&config.server)
        .await
        .map_err(|e| e.to_string())?;
    let addrs = listeners.addrs().map_err(|e| e.to_string())?;
    let snapshot = Snapshot::build(&config)?.into_shared();

    let port = addrs.tls.port();
    let ca = ca_path.display();
    let replicas: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("replica-{} on {}", i + 1, s.address))
        .collect();
    println!("doorman demo is running: TLS 1.3 (h2 and http/1.1) on https://localhost:{port}");
    println!("round robin across {}", replicas.join(", "));
    println!("admin: http://{}/health and /ready", addrs.admin);
    println!();
    println!("Try it (each request goes to the next replica, see x-upstream-id):");
    println!("  curl -si --cacert {ca} --http1.1 https://localhost:{port}/hello");
    println!("  curl -si --cacert {ca} --http2 https://localhost:{port}/hello");
    println!(
        "  for i in 1 2 3 4 5 6; do curl -s --cacert {ca} -o /dev/null -w '%{{http_version}} %header{{x-upstream-id}}\\n' https://localhost:{port}/; done"
    );
    println!("  curl -s http://{}/ready", addrs.admin);
    println!();
    println!("/api/ needs a JWT; this HS256 token (subject demo-user) is valid for an hour:");
    println!("  export TOKEN={token}");
    println!(
        "  curl -s --cacert {ca} -H \"Authorization: Bearer $TOKEN\" https://localhost:{port}/api/me"
    );
    println!(
        "  curl -s --cacert {ca} -o /dev/null -w '%{{http_code}}\\n' https://localhost:{port}/api/me"
    );
    println!("Revoke it, then the same request is refused with 401:");
    println!(
        "  curl -s -X POST http://{}/revocations -H 'content-type: application/json' -d '{{\"jti\":\"{jti}\",\"expires_at\":{exp}}}'",
        addrs.admin
    );
    println!(
        "  curl -s --cacert {ca} -o /dev/null -w '%{{http_code}}\\n' -H \"Authorization: Bearer $TOKEN\" https://localhost:{port}/api/me"
    );
    println!();
    println!(
        "/orders needs an Idempotency-Key on POST: run this twice; the second answer is the first one replayed"
    );
    println!("(same body, same x-upstream-id, Idempotent-Replayed: true) and no replica sees it:");
    println!(
        "  curl -si --cacert {ca} -X POST -H 'Idempotency-Key: order-42' -H 'content-type: application/json' -d '{{\"item\":\"book\"}}' https://localhost:{port}/orders"
    );
    println!();
    println!("Press Ctrl-C to stop.");

    server::run(listeners, snapshot, shutdown)
        .await
        .map_err(|e| e.to_string())
}

fn demo_auth(secret: &[u8]) -> AuthSettings {
    AuthSettings {
        issuer: Some(DEMO_ISSUER.into()),
        audiences: Some(vec!["demo".into()]),
        leeway: defaults::LEEWAY,
        require_jti: true,
        forward_claims: vec![("sub".into(), http::HeaderName::from_static("x-user-id"))],
        strip_authorization: true,
        cache_entries: defaults::AUTH_CACHE_ENTRIES,
        max_lifetime: None,
        keys: vec![JwtKey {
            kid: Some("demo".into()),
            algorithm: jsonwebtoken::Algorithm::HS256,
            key: jsonwebtoken::DecodingKey::from_secret(secret),
        }],
        jwks: None,
    }
}

const DEMO_ISSUER: &str = "https://doorman.demo";

/// A one-hour HS256 token for `demo-user`: (token, jti, exp).
fn demo_token(secret: &[u8]) -> Result<(String, String, u64), String> {
    let now = crate::auth::unix_now();
    let jti = format!("demo-{:016x}", fastrand::u64(..));
    let exp = now + 3600;
    let claims = serde_json::json!({
        "iss": DEMO_ISSUER, "aud": "demo", "sub": "demo-user",
        "iat": now, "exp": exp, "jti": jti,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("demo".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| format!("cannot sign the demo token: {e}"))?;
    Ok((token, jti, exp))
}

/// A demo CA and a localhost certificate it signed, both generated in memory.
pub(crate) fn certificate() -> Result<(String, CertificateSpec), Box<dyn std::error::Error>> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "doorman demo CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    let key = pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![leaf.der().clone(), ca.der().clone()],
        key,
        &provider,
    )?;
    let spec = CertificateSpec {
        server_names: vec!["localhost".into()],
        key: Arc::new(certified),
        source: "demo (in memory)".into(),
    };
    Ok((ca.pem(), spec))
}

/// A demo replica: answers every request with its id and a JSON echo of what it received.
async fn replica(listener: TcpListener, id: String) {
    let id: Arc<str> = id.into();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let id = id.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| echo(req, id.clone()));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(error = %e, "demo replica connection error");
            }
        });
    }
}

async fn echo(req: Request<Incoming>, id: Arc<str>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str())
            .and_modify(|s| {
                s.push_str(", ");
                s.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let json = serde_json::json!({
        "upstream": &*id,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{json:#}\n"))));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-upstream-id",
        header::HeaderValue::from_str(&id).expect("replica ids are ASCII"),
    );
    Ok(resp)
}
