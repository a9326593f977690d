//! OAuth2 client credentials as SMART Backend Services (and NHS England's
//! "signed JWT" APIs) define them: the hub signs a short-lived client
//! assertion with its private key (RS384 or ES384), posts it to the GP
//! system's token endpoint and is given an access token, kept until shortly
//! before it expires.
//!
//! Nothing here writes a key, an assertion or a token into an error or a
//! log: errors name the secret's field or the token endpoint's error code.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::{DateTime, Utc};
use hub_core::ports::GpError;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// `client_assertion_type` of a signed JWT (RFC 7523).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// SMART: an assertion expires no more than five minutes after it is made.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// Ours live a little less, for clock skew between us and the GP system.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(240);
/// Used when the token endpoint does not say how long a token lives.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// A token is renewed this long before it expires (at most a quarter of
/// its life), so no request is sent with one about to lapse.
const RENEW_BEFORE: Duration = Duration::from_secs(30);

/// The signing algorithms SMART Backend Services requires servers to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    Rs384,
    Es384,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs384 => "RS384",
            Self::Es384 => "ES384",
        }
    }
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// The secret of a practice on OAuth, as Secrets Manager holds it:
/// `{"client_id", "token_url", "private_key_pem", "kid", "alg", "scope"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSecret {
    client_id: String,
    token_url: String,
    private_key_pem: SecretString,
    kid: String,
    alg: String,
    scope: String,
}

/// A registered backend client: who the hub is at one GP system's token
/// endpoint, and the key it proves it with.
pub struct ClientCredentials {
    client_id: String,
    token_url: Url,
    kid: String,
    alg: SigningAlg,
    scope: String,
    key: SigningKey,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url.as_str())
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a client secret cannot be used; names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct CredentialError {
    pub field: &'static str,
    pub problem: String,
}

fn problem(field: &'static str, problem: impl Into<String>) -> CredentialError {
    CredentialError {
        field,
        problem: problem.into(),
    }
}

impl ClientCredentials {
    /// Reads the secret's JSON. Unknown fields are refused by name; the
    /// key must be PKCS#8 (`BEGIN PRIVATE KEY`), or PKCS#1 for RSA.
    pub fn parse(json: &str) -> Result<Self, CredentialError> {
        let secret: ClientSecret = serde_json::from_str(json)
            .map_err(|e| problem("secret", crate::secret_json::describe_error(&e)))?;
        for (field, value) in [
            ("client_id", &secret.client_id),
            ("kid", &secret.kid),
            ("scope", &secret.scope),
        ] {
            if value.trim().is_empty() {
                return Err(problem(field, "is empty"));
            }
        }
        let token_url =
            Url::parse(&secret.token_url).map_err(|_| problem("token_url", "is not a URL"))?;
        let loopback = token_url.host_str().is_some_and(|host| {
            host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match token_url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => return Err(problem("token_url", "must be https")),
        }
        let alg = match secret.alg.as_str() {
            "RS384" => SigningAlg::Rs384,
            "ES384" => SigningAlg::Es384,
            _ => return Err(problem("alg", "must be RS384 or ES384")),
        };
        let key = signing_key(secret.private_key_pem.expose_secret(), alg)?;
        Ok(Self {
            client_id: secret.client_id,
            token_url,
            kid: secret.kid,
            alg,
            scope: secret.scope,
            key,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The public half as a JWK (`kid`, `alg`, `use: sig`): what the GP
    /// system registers for this client (its JWKS holds it).
    pub fn public_jwk(&self) -> serde_json::Value {
        match &self.key {
            SigningKey::Rsa(pair) => {
                let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
                let unsigned = |bytes: &[u8]| {
                    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
                    URL_SAFE_NO_PAD.encode(&bytes[first..])
                };
                json!({
                    "kty": "RSA",
                    "kid": self.kid,
                    "alg": self.alg.as_str(),
                    "use": "sig",
                    "n": unsigned(&public.n),
                    "e": unsigned(&public.e),
                })
            }
            SigningKey::Ec(pair) => {
                // Uncompressed point: 0x04, x, y (48 bytes each on P-384).
                let point = pair.public_key().as_ref();
                let (x, y) = point[1..].split_at((point.len() - 1) / 2);
                json!({
                    "kty": "EC",
                    "crv": "P-384",
                    "kid": self.kid,
                    "alg": self.alg.as_str(),
                    "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        }
    }

    /// A signed client assertion: `iss` = `sub` = client id, `aud` = the
    /// token endpoint, `exp` four minutes on, a fresh `jti`, `kid` in the
    /// header.
    pub fn assertion(&self, now: DateTime<Utc>) -> Result<SecretString, CredentialError> {
        let header = json!({ "alg": self.alg.as_str(), "kid": self.kid, "typ": "JWT" });
        let claims = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url.as_str(),
            "exp": now.timestamp() + ASSERTION_LIFETIME.as_secs() as i64,
            "iat": now.timestamp(),
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &self.key {
            SigningKey::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA384,
                    &rng,
                    signing_input.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| problem("private_key_pem", "cannot sign"))?;
                signature
            }
            SigningKey::Ec(pair) => pair
                .sign(&rng, signing_input.as_bytes())
                .map_err(|_| problem("private_key_pem", "cannot sign"))?
                .as_ref()
                .to_vec(),
        };
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

/// The DER inside a PEM block labelled `label`, if there is one.
fn pem_block(pem: &str, label: &str) -> Option<Result<Vec<u8>, CredentialError>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].split_whitespace().collect();
    Some(STANDARD.decode(body).map_err(|_| {
        problem(
            "private_key_pem",
            "is not valid base64 inside its PEM block",
        )
    }))
}

fn signing_key(pem: &str, alg: SigningAlg) -> Result<SigningKey, CredentialError> {
    let unreadable = |what: &str| problem("private_key_pem", what.to_string());
    if let Some(der) = pem_block(pem, "PRIVATE KEY") {
        let der = der?;
        return match alg {
            SigningAlg::Rs384 => RsaKeyPair::from_pkcs8(&der)
                .map(SigningKey::Rsa)
                .map_err(|_| unreadable("is not an RSA key of 2048 bits or more (alg RS384)")),
            SigningAlg::Es384 => EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &der,
                &SystemRandom::new(),
            )
            .map(SigningKey::Ec)
            .map_err(|_| unreadable("is not a P-384 EC key (alg ES384)")),
        };
    }
    if let Some(der) = pem_block(pem, "RSA PRIVATE KEY") {
        let der = der?;
        return match alg {
            SigningAlg::Rs384 => RsaKeyPair::from_der(&der)
                .map(SigningKey::Rsa)
                .map_err(|_| unreadable("is not an RSA key of 2048 bits or more")),
            SigningAlg::Es384 => Err(unreadable("is an RSA key but alg is ES384")),
        };
    }
    if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Err(unreadable(
            "is a SEC1 EC key: convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)",
        ));
    }
    if pem.contains("ENCRYPTED PRIVATE KEY") {
        return Err(unreadable(
            "is encrypted: store it unencrypted in the secret",
        ));
    }
    Err(unreadable("holds no PEM private key"))
}

/// A PKCS#8 PEM of a new P-384 key (for setting up a client; tests make
/// their keys with it at run time).
pub fn new_es384_key_pem() -> String {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .expect("the system's random source works");
    let body = STANDARD.encode(pkcs8.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

struct Cached {
    token: SecretString,
    renew_at: Instant,
}

/// Access tokens of one client: fetched when first needed, kept until
/// shortly before they expire, fetched again after the GP system refuses
/// one. Shared by every practice whose registry entry names the secret.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    credentials: ClientCredentials,
    secret_name: String,
    request_timeout: Duration,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl TokenSource {
    pub(crate) fn new(
        http: reqwest::Client,
        credentials: ClientCredentials,
        secret_name: &str,
        request_timeout: Duration,
    ) -> Self {
        Self {
            http,
            credentials,
            secret_name: secret_name.to_string(),
            request_timeout,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A token that is not about to expire.
    pub(crate) async fn token(&self, ods: &str) -> Result<SecretString, GpError> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(current.token.clone());
        }
        let fresh = self.fetch(ods).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// After the GP system refused `used`: a new token, unless another
    /// request has fetched one meanwhile.
    pub(crate) async fn renewed(
        &self,
        ods: &str,
        used: &SecretString,
    ) -> Result<SecretString, GpError> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached
            .as_ref()
            .filter(|c| c.token.expose_secret() != used.expose_secret())
        {
            return Ok(current.token.clone());
        }
        let fresh = self.fetch(ods).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn fetch(&self, ods: &str) -> Result<Cached, GpError> {
        let secret = &self.secret_name;
        let assertion = self.credentials.assertion(Utc::now()).map_err(|e| {
            GpError::Misconfigured(format!("{ods}: GP credential secret {secret}: {e}"))
        })?;
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .append_pair("client_assertion", assertion.expose_secret())
            .append_pair("scope", &self.credentials.scope)
            .finish();
        let response = self
            .http
            .post(self.credentials.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .timeout(self.request_timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "failed"
                };
                GpError::Unavailable(format!("{ods}: token request {kind}"))
            })?;
        let status = response.status();
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
            // RFC 6749 5.2: `error` is a code of printable ASCII without
            // quotes or backslashes; the description is not repeated.
            let code = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .filter(|c| {
                    c.len() <= 40 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .unwrap_or_else(|| "no error code".into());
            return Err(GpError::Misconfigured(format!(
                "{ods}: the token endpoint refused client {} of secret {secret} ({status}, {code})",
                self.credentials.client_id
            )));
        }
        if !status.is_success() {
            return Err(GpError::Unavailable(format!(
                "{ods}: token request: HTTP {status}"
            )));
        }
        let answer: TokenResponse = response
            .json()
            .await
            .map_err(|_| GpError::Unavailable(format!("{ods}: token response unreadable")))?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(GpError::Misconfigured(format!(
                "{ods}: the token endpoint issued a token that is not a bearer token"
            )));
        }
        let lifetime = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let renew_at = Instant::now() + lifetime - RENEW_BEFORE.min(lifetime / 4);
        tracing::info!(
            ods,
            client = %self.credentials.client_id,
            expires_in_s = lifetime.as_secs(),
            "GP access token issued"
        );
        Ok(Cached {
            token: answer.access_token,
            renew_at,
        })
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pem: &str, alg: &str) -> String {
        json!({
            "client_id": "sms-hub",
            "token_url": "https://gp.example/oauth2/token",
            "private_key_pem": pem,
            "kid": "hub-2026",
            "alg": alg,
            "scope": "system/Patient.rs system/Communication.c",
        })
        .to_string()
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn an_es384_assertion_carries_the_claims_smart_requires_and_verifies() {
        let credentials = ClientCredentials::parse(&secret(&new_es384_key_pem(), "ES384")).unwrap();
        let now = Utc::now();
        let jwt = credentials.assertion(now).unwrap();
        let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(
            (header["alg"].as_str(), header["kid"].as_str()),
            (Some("ES384"), Some("hub-2026"))
        );
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "sms-hub");
        assert_eq!(claims["sub"], "sms-hub");
        assert_eq!(claims["aud"], "https://gp.example/oauth2/token");
        let exp = claims["exp"].as_i64().unwrap();
        assert!(
            exp > now.timestamp() && exp <= now.timestamp() + 300,
            "{exp}"
        );
        let other = decode(
            credentials
                .assertion(now)
                .unwrap()
                .expose_secret()
                .split('.')
                .nth(1)
                .unwrap(),
        );
        assert_ne!(
            claims["jti"], other["jti"],
            "every assertion has its own jti"
        );
        // The signature verifies with the public JWK alone.
        let jwk = credentials.public_jwk();
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let key = signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point);
        let signed = format!("{}.{}", parts[0], parts[1]);
        key.verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        )
        .expect("signature verifies");
        assert!(key
            .verify(
                b"something else",
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()
            )
            .is_err());
    }

    #[test]
    fn a_bad_secret_is_refused_naming_the_field_and_never_the_key() {
        let pem = new_es384_key_pem();
        let cases = [
            (secret(&pem, "RS256"), "alg"),
            (secret(&pem, "RS384"), "private_key_pem"),
            (secret("not a key", "ES384"), "private_key_pem"),
            (
                secret(&pem.replace("PRIVATE KEY", "EC PRIVATE KEY"), "ES384"),
                "private_key_pem",
            ),
            (
                secret(&pem, "ES384").replace("https://gp.example", "http://gp.example"),
                "token_url",
            ),
            (
                secret(&pem, "ES384").replace("\"kid\":\"hub-2026\"", "\"kid\":\" \""),
                "kid",
            ),
            (
                secret(&pem, "ES384").replace("\"scope\"", "\"scopes\""),
                "secret",
            ),
            ("{\"token\": \"x\"}".to_string(), "secret"),
        ];
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        for (json, field) in cases {
            let error = ClientCredentials::parse(&json).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(!error.to_string().contains(&body[10..40]), "{error}");
        }
        let unknown =
            ClientCredentials::parse(&secret(&pem, "ES384").replace("\"scope\"", "\"scopes\""))
                .unwrap_err();
        assert!(unknown.problem.contains("scopes"), "{unknown}");
        assert!(!format!(
            "{:?}",
            ClientCredentials::parse(&secret(&pem, "ES384")).unwrap()
        )
        .contains(&body[10..40]));
    }
}
