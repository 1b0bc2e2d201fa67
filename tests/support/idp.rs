//! A test identity provider on 127.0.0.1: HTTPS under a CA of its own (doorman trusts it
//! through `ca_file`), an OpenID discovery document and a JWKS whose keys a test rotates,
//! hit counters, and answers it can make fail, hang or return garbage. Signing keys are
//! generated per test (RSA, P-256, Ed25519), never committed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::TestPki;

/// What the JWKS endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the keys set by `serve`.
    Serve,
    /// 500.
    Fail,
    /// Never answers (the connection stays open).
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with `{"keys": []}`.
    Empty,
}

/// A key the provider publishes and the test signs tokens with.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// The public JWK as published (kid, alg, use set).
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    pub fn rsa(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let encoding = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap();
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap(),
        )
        .unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding,
            jwk,
        }
    }

    pub fn es256(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        let (x, y) = raw[1..].split_at(32);
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": kid, "alg": "ES256", "use": "sig"}),
        }
    }

    pub fn eddsa(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key_raw()), "kid": kid, "alg": "EdDSA"}),
        }
    }

    /// A token with this key's kid and algorithm.
    pub fn token(&self, claims: &Value) -> String {
        self.token_as(&self.kid, claims)
    }

    /// A token signed by this key but naming `kid`.
    pub fn token_as(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": format!("{:?}", self.alg), "typ": "JWT", "kid": kid});
        super::jwt::sign_raw(&header, claims, &self.encoding, self.alg)
    }
}

struct State {
    keys: Mutex<Vec<Value>>,
    mode: Mutex<Mode>,
    cache_control: Mutex<Option<String>>,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
}

pub struct Idp {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`: the discovery document's issuer.
    pub issuer: String,
    pub pki: TestPki,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    /// Serving an empty key set until `serve` is called.
    pub async fn start() -> Idp {
        let pki = TestPki::new();
        let leaf = pki.leaf("idp", &["127.0.0.1"]);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert_path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key_path).unwrap();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("https://{addr}");
        let state = Arc::new(State {
            keys: Mutex::new(Vec::new()),
            mode: Mutex::new(Mode::Serve),
            cache_control: Mutex::new(None),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
        });
        let task = {
            let (state, issuer) = (state.clone(), issuer.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, state, issuer) =
                        (acceptor.clone(), state.clone(), issuer.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let (state, issuer) = (state.clone(), issuer.clone());
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    answer(req.uri().path(), &state, &issuer).await,
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            })
        };
        Idp {
            addr,
            issuer,
            pki,
            state,
            task,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/certs", self.issuer)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.pki.ca_path()
    }

    /// Publish exactly these keys.
    pub fn serve(&self, keys: &[&SigningKey]) {
        self.serve_json(keys.iter().map(|k| k.jwk.clone()).collect());
    }

    /// Publish these JWKs as they are.
    pub fn serve_json(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_owned);
    }

    /// Requests for the JWKS so far, answered or not.
    pub fn hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }
}

async fn answer(path: &str, state: &State, issuer: &str) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: String, cache: Option<String>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        if let Some(c) = cache {
            r.headers_mut().insert("cache-control", c.parse().unwrap());
        }
        r
    };
    match path {
        "/.well-known/openid-configuration" => {
            state.discovery_hits.fetch_add(1, Ordering::SeqCst);
            let doc = json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/certs"),
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            });
            json(StatusCode::OK, doc.to_string(), None)
        }
        "/certs" => {
            state.jwks_hits.fetch_add(1, Ordering::SeqCst);
            let mode = *state.mode.lock().unwrap();
            let cache = state.cache_control.lock().unwrap().clone();
            match mode {
                Mode::Serve => {
                    let keys = state.keys.lock().unwrap().clone();
                    json(StatusCode::OK, json!({ "keys": keys }).to_string(), cache)
                }
                Mode::Fail => json(StatusCode::INTERNAL_SERVER_ERROR, "{}".into(), None),
                Mode::Hang => {
                    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
                    json(StatusCode::OK, "{}".into(), None)
                }
                Mode::Garbage => json(StatusCode::OK, "<html>oops</html>".into(), None),
                Mode::Empty => json(StatusCode::OK, r#"{"keys": []}"#.into(), None),
            }
        }
        _ => json(StatusCode::NOT_FOUND, "{}".into(), None),
    }
}
