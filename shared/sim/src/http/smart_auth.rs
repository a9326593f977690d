//! The FHIR simulator's authorization server, strict as SMART Backend
//! Services and RFC 7523 ask: a client registers its public key (a JWK);
//! `POST /token` takes `grant_type=client_credentials` with a signed client
//! assertion, checks its signature against that key, `iss` = `sub` = the
//! client, `aud` = this endpoint, `exp` in the future and at most five
//! minutes ahead, and a `jti` not seen before, then issues a short-lived
//! bearer token. Errors are RFC 6749's (`invalid_request`,
//! `unsupported_grant_type`, `invalid_scope` 400; `invalid_client` 401 for
//! every failed assertion check, as RFC 7523 section 3.2 says).

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hub_adapters::fhir::{CLIENT_ASSERTION_TYPE, MAX_ASSERTION_LIFETIME};
use rand::RngCore;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clock skew allowed on an assertion's `exp`.
const SKEW_SECS: i64 = 5;

enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed P-384 point.
    Ec(Vec<u8>),
}

struct Client {
    kid: String,
    alg: &'static str,
    key: PublicKey,
}

/// An RFC 6749 error answer.
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: &'static str,
}

fn refuse(status: StatusCode, code: &'static str, description: &'static str) -> Refusal {
    Refusal {
        status,
        code,
        description,
    }
}

fn bad_client(description: &'static str) -> Refusal {
    refuse(StatusCode::UNAUTHORIZED, "invalid_client", description)
}

pub(crate) struct AuthServer {
    lifetime: Duration,
    clients: Mutex<HashMap<String, Client>>,
    /// `client jti` -> the assertion's `exp`, kept until it passes.
    seen: Mutex<HashMap<String, i64>>,
    /// Access token -> when it expires.
    tokens: Mutex<HashMap<String, Instant>>,
    issued: AtomicU64,
    refusals: Mutex<Vec<&'static str>>,
    expired_presented: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn b64(field: &Value) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(field.as_str()?).ok()
}

impl AuthServer {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            clients: Mutex::default(),
            seen: Mutex::default(),
            tokens: Mutex::default(),
            issued: AtomicU64::new(0),
            refusals: Mutex::default(),
            expired_presented: AtomicU64::new(0),
        }
    }

    /// Registers `client_id` with the public JWK (`kty` RSA with `n`, `e`,
    /// or EC P-384 with `x`, `y`; `kid` and `alg` required).
    pub(crate) fn register(&self, client_id: &str, jwk: &Value) -> Result<(), String> {
        let kid = jwk["kid"].as_str().ok_or("jwk: kid missing")?.to_string();
        let (alg, key) = match (jwk["kty"].as_str(), jwk["alg"].as_str()) {
            (Some("RSA"), Some("RS384")) => (
                "RS384",
                PublicKey::Rsa {
                    n: b64(&jwk["n"]).ok_or("jwk: n")?,
                    e: b64(&jwk["e"]).ok_or("jwk: e")?,
                },
            ),
            (Some("EC"), Some("ES384")) if jwk["crv"] == "P-384" => {
                let mut point = vec![4u8];
                point.extend(b64(&jwk["x"]).ok_or("jwk: x")?);
                point.extend(b64(&jwk["y"]).ok_or("jwk: y")?);
                ("ES384", PublicKey::Ec(point))
            }
            _ => return Err("jwk: RS384 RSA or ES384 P-384 keys only".into()),
        };
        lock(&self.clients).insert(client_id.to_string(), Client { kid, alg, key });
        Ok(())
    }

    /// Answers a token request sent to `token_url` with the form `form`.
    pub(crate) fn token(
        &self,
        token_url: &str,
        form: &HashMap<String, String>,
    ) -> Result<Value, Refusal> {
        let answer = self.check(token_url, form);
        if let Err(refusal) = &answer {
            lock(&self.refusals).push(refusal.code);
        }
        answer
    }

    fn check(&self, token_url: &str, form: &HashMap<String, String>) -> Result<Value, Refusal> {
        let field = |name: &str| form.get(name).map(String::as_str);
        match field("grant_type") {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "grant_type must be client_credentials",
                ))
            }
            None => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type missing",
                ))
            }
        }
        if field("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_assertion_type must be the JWT bearer type",
            ));
        }
        let scope = field("scope").unwrap_or_default();
        if scope.is_empty() || !scope.split(' ').all(|s| s.starts_with("system/")) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "system scopes required",
            ));
        }
        let assertion = field("client_assertion").ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_assertion missing",
            )
        })?;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, claims, signature_part] = parts[..] else {
            return Err(bad_client("client_assertion is not a signed JWT"));
        };
        let decode = |part: &str| -> Option<Value> {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
        };
        let (Some(header_json), Some(claims_json)) = (decode(header), decode(claims)) else {
            return Err(bad_client("client_assertion is not a JWT"));
        };
        let client_id = claims_json["iss"].as_str().unwrap_or_default();
        if claims_json["sub"].as_str() != Some(client_id) {
            return Err(bad_client("iss and sub must both be the client_id"));
        }
        {
            let clients = lock(&self.clients);
            let client = clients
                .get(client_id)
                .ok_or_else(|| bad_client("unknown client"))?;
            if header_json["kid"].as_str() != Some(client.kid.as_str()) {
                return Err(bad_client("kid is not the client's registered key"));
            }
            if header_json["alg"].as_str() != Some(client.alg) {
                return Err(bad_client("alg is not the registered key's"));
            }
            let signed = format!("{header}.{claims}");
            let signature = URL_SAFE_NO_PAD
                .decode(signature_part)
                .map_err(|_| bad_client("signature unreadable"))?;
            let verified = match &client.key {
                PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }.verify(
                    &signature::RSA_PKCS1_2048_8192_SHA384,
                    signed.as_bytes(),
                    &signature,
                ),
                PublicKey::Ec(point) => {
                    UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                        .verify(signed.as_bytes(), &signature)
                }
            };
            verified
                .map_err(|_| bad_client("signature does not verify with the registered key"))?;
        }
        if claims_json["aud"].as_str() != Some(token_url) {
            return Err(bad_client("aud must be the token endpoint's URL"));
        }
        let now = chrono::Utc::now().timestamp();
        let exp = claims_json["exp"]
            .as_i64()
            .ok_or_else(|| bad_client("exp missing"))?;
        if exp <= now - SKEW_SECS {
            return Err(bad_client("assertion expired"));
        }
        if exp > now + MAX_ASSERTION_LIFETIME.as_secs() as i64 + SKEW_SECS {
            return Err(bad_client("exp more than five minutes ahead"));
        }
        let jti = claims_json["jti"]
            .as_str()
            .filter(|j| !j.is_empty())
            .ok_or_else(|| bad_client("jti missing"))?;
        {
            let mut seen = lock(&self.seen);
            seen.retain(|_, exp| *exp > now - SKEW_SECS);
            if seen.insert(format!("{client_id} {jti}"), exp).is_some() {
                return Err(bad_client("jti already used"));
            }
        }
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        lock(&self.tokens).insert(token.clone(), Instant::now() + self.lifetime);
        self.issued.fetch_add(1, Ordering::Relaxed);
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.lifetime.as_secs().max(1),
            "scope": scope,
        }))
    }

    /// Whether `presented` is a token this server issued that has not
    /// expired; the refusal's description otherwise.
    pub(crate) fn admit(&self, presented: Option<&str>) -> Result<(), &'static str> {
        let presented = presented.ok_or("access token required")?;
        let tokens = lock(&self.tokens);
        match tokens.get(presented) {
            Some(expires) if Instant::now() < *expires => Ok(()),
            Some(_) => {
                self.expired_presented.fetch_add(1, Ordering::Relaxed);
                Err("access token expired")
            }
            None => Err("unknown access token"),
        }
    }

    /// Every token issued so far expires now.
    pub(crate) fn expire_all(&self) {
        let now = Instant::now();
        for expires in lock(&self.tokens).values_mut() {
            *expires = now;
        }
    }

    pub(crate) fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    pub(crate) fn refusals(&self) -> Vec<&'static str> {
        lock(&self.refusals).clone()
    }

    pub(crate) fn expired_presented(&self) -> u64 {
        self.expired_presented.load(Ordering::Relaxed)
    }
}
