//! JWT test kit: a key per algorithm generated for the test (never committed), the
//! `[auth]` TOML that trusts them, and token minting — including hand-built headers for
//! attacks (alg none, crit, jku, confusion).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// PEM public key (asymmetric) or the secret's bytes (HMAC), as written for doorman.
    pub public: Vec<u8>,
}

pub struct JwtKit {
    pub dir: tempfile::TempDir,
    pub keys: Vec<Key>,
}

pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "api";

fn asymmetric(kid: &str, alg: Algorithm, rc: &'static rcgen::SignatureAlgorithm) -> Key {
    let kp = rcgen::KeyPair::generate_for(rc).unwrap();
    let private = kp.serialize_pem();
    let encoding = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
        _ => EncodingKey::from_rsa_pem(private.as_bytes()),
    }
    .unwrap();
    Key {
        kid: kid.into(),
        alg,
        encoding,
        public: kp.public_key_pem().into_bytes(),
    }
}

fn hmac(kid: &str, alg: Algorithm) -> Key {
    let secret: Vec<u8> = (0..48).map(|_| fastrand::alphanumeric() as u8).collect();
    Key {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_secret(&secret),
        public: secret,
    }
}

impl JwtKit {
    /// One key per supported algorithm; RSA keys are shared by RS*/PS* to keep keygen fast.
    pub fn new() -> JwtKit {
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa_private = rsa.serialize_pem();
        let rsa_public = rsa.public_key_pem().into_bytes();
        let mut keys = vec![
            hmac("hs256", Algorithm::HS256),
            hmac("hs384", Algorithm::HS384),
            hmac("hs512", Algorithm::HS512),
            asymmetric("es256", Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            asymmetric("es384", Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
            asymmetric("eddsa", Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ];
        for (kid, alg) in [
            ("rs256", Algorithm::RS256),
            ("rs384", Algorithm::RS384),
            ("rs512", Algorithm::RS512),
            ("ps256", Algorithm::PS256),
            ("ps384", Algorithm::PS384),
            ("ps512", Algorithm::PS512),
        ] {
            keys.push(Key {
                kid: kid.into(),
                alg,
                encoding: EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
                public: rsa_public.clone(),
            });
        }
        JwtKit {
            dir: tempfile::tempdir().unwrap(),
            keys,
        }
    }

    pub fn key(&self, kid: &str) -> &Key {
        self.keys.iter().find(|k| k.kid == kid).unwrap()
    }

    /// `[auth]` with every key (files written now), issuer/audience set, sub and scope
    /// forwarded; `extra` lines go inside `[auth]`.
    pub fn auth_toml(&self, extra: &str) -> String {
        let all: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        self.auth_toml_for(&all, extra)
    }

    /// `auth_toml` trusting only the keys named in `kids`.
    pub fn auth_toml_for(&self, kids: &[&str], extra: &str) -> String {
        let mut out = format!(
            "[auth]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nleeway = \"30s\"\n\
             forward_claims = {{ sub = \"x-user-id\", scope = \"x-user-scope\" }}\n{extra}\n"
        );
        for k in self.keys.iter().filter(|k| kids.contains(&k.kid.as_str())) {
            let path = self.dir.path().join(&k.kid);
            std::fs::write(&path, &k.public).unwrap();
            let source = match k.alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "secret_file",
                _ => "public_key_file",
            };
            out.push_str(&format!(
                "[[auth.keys]]\nkid = \"{}\"\nalgorithm = \"{:?}\"\n{source} = \"{}\"\n",
                k.kid,
                k.alg,
                path.display()
            ));
        }
        out
    }
}

pub fn now() -> u64 {
    doorman::auth::unix_now()
}

/// Claims that pass every rule: change what a case needs.
pub fn good_claims(sub: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": "read write",
        "iat": now, "nbf": now, "exp": now + 300, "jti": format!("jti-{}", fastrand::u64(..)),
    })
}

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with exactly this header and these claims, signed with `key` under `alg`.
pub fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{sig}")
}

/// A well-formed token for `kid` with `claims`.
pub fn sign(key: &Key, claims: &Value) -> String {
    let header = json!({"alg": format!("{:?}", key.alg), "typ": "JWT", "kid": key.kid});
    sign_raw(&header, claims, &key.encoding, key.alg)
}
