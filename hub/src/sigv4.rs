//! SigV4 verification for `hub local serve`: the check API Gateway's IAM
//! authorisation makes, against a small set of local credentials. The
//! canonical request follows the rules `aws-sigv4` signs with for
//! `execute-api` (normalised, double-encoded path; sorted, re-encoded query;
//! only the headers the client listed as signed).

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use subtle::ConstantTimeEq;

pub const SERVICE: &str = "execute-api";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the request's clock may be from ours (AWS allows 5 minutes).
pub const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// Characters `aws-sigv4` percent-encodes (everything but RFC 3986
/// unreserved characters).
const BASE_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'/')
    .add(b':')
    .add(b',')
    .add(b'?')
    .add(b'#')
    .add(b'[')
    .add(b']')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'@')
    .add(b'!')
    .add(b'$')
    .add(b'&')
    .add(b'\'')
    .add(b'(')
    .add(b')')
    .add(b'*')
    .add(b'+')
    .add(b';')
    .add(b'=')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'"')
    .add(b'^')
    .add(b'`')
    .add(b'\\');
const PATH_SET: &AsciiSet = &BASE_SET.remove(b'/');

/// One local identity: an access key, its secret and who it is.
pub struct LocalIdentity {
    pub access_key_id: String,
    pub secret: SecretString,
    pub arn: String,
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("access_key_id", &self.access_key_id)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// `ACCESS_KEY_ID:SECRET:ARN` (the ARN may itself contain colons).
    pub fn parse_flag(flag: &str) -> Result<Self, String> {
        let mut parts = flag.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(key), Some(secret), Some(arn))
                if !key.is_empty() && !secret.is_empty() && !arn.is_empty() =>
            {
                Ok(Self {
                    access_key_id: key.to_string(),
                    secret: SecretString::from(secret.to_string()),
                    arn: arn.to_string(),
                })
            }
            _ => Err("--identity must be ACCESS_KEY_ID:SECRET:ARN".into()),
        }
    }
}

/// The local credentials file:
///
/// ```toml
/// [[identity]]
/// access_key_id = "AKIDLOCALALICE"
/// secret_access_key = "alice-secret"
/// arn = "arn:aws:iam::000000000000:user/alice"
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    identity: Vec<FileIdentity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    access_key_id: String,
    secret_access_key: SecretString,
    arn: String,
}

pub fn read_credentials_file(path: &Path) -> Result<Vec<LocalIdentity>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: CredentialsFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file
        .identity
        .into_iter()
        .map(|i| LocalIdentity {
            access_key_id: i.access_key_id,
            secret: i.secret_access_key,
            arn: i.arn,
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request is not signed (no SigV4 Authorization header)")]
    Unsigned,
    #[error("the request's signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("the request's signature has expired or is from the future (more than 5 minutes from the server's clock)")]
    Expired,
    #[error("the access key is not known to this hub")]
    UnknownKey,
    #[error("the request is signed for another region or service ({0})")]
    WrongScope(String),
    #[error("the request's signature does not match")]
    BadSignature,
}

/// What a request looks like on the wire, for verification.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent, still percent-encoded.
    pub path: &'a str,
    /// The raw query string.
    pub query: &'a str,
    /// Header names in lowercase.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub struct Verifier {
    identities: HashMap<String, LocalIdentity>,
    region: String,
}

impl Verifier {
    pub fn new(identities: Vec<LocalIdentity>, region: &str) -> Self {
        Self {
            identities: identities
                .into_iter()
                .map(|i| (i.access_key_id.clone(), i))
                .collect(),
            region: region.to_string(),
        }
    }

    pub fn identities(&self) -> impl Iterator<Item = &LocalIdentity> {
        self.identities.values()
    }

    /// The identity that signed `request`, if the signature is good.
    pub fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<&LocalIdentity, AuthError> {
        let authorization = request.values("authorization");
        let [authorization] = authorization.as_slice() else {
            return Err(if authorization.is_empty() {
                AuthError::Unsigned
            } else {
                AuthError::Malformed("more than one Authorization header")
            });
        };
        let Some(fields) = authorization
            .trim()
            .strip_prefix(ALGORITHM)
            .filter(|rest| rest.starts_with(' '))
        else {
            return Err(AuthError::Malformed(
                "the algorithm must be AWS4-HMAC-SHA256",
            ));
        };
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for field in fields.split(',') {
            match field.trim().split_once('=') {
                Some(("Credential", value)) => credential = Some(value),
                Some(("SignedHeaders", value)) => signed_headers = Some(value),
                Some(("Signature", value)) => signature = Some(value),
                _ => return Err(AuthError::Malformed("unknown Authorization field")),
            }
        }
        let (Some(credential), Some(signed_headers), Some(signature)) =
            (credential, signed_headers, signature)
        else {
            return Err(AuthError::Malformed(
                "Credential, SignedHeaders and Signature are required",
            ));
        };
        let scope: Vec<&str> = credential.split('/').collect();
        let [key_id, date, region, service, terminator] = scope.as_slice() else {
            return Err(AuthError::Malformed(
                "Credential must be KEY/DATE/REGION/SERVICE/aws4_request",
            ));
        };
        let dates = request.values("x-amz-date");
        let [amz_date] = dates.as_slice() else {
            return Err(AuthError::Malformed(
                "exactly one X-Amz-Date header is required",
            ));
        };
        let signed_at = NaiveDateTime::parse_from_str(amz_date.trim(), "%Y%m%dT%H%M%SZ")
            .map_err(|_| AuthError::Malformed("X-Amz-Date must be YYYYMMDDTHHMMSSZ"))?
            .and_utc();
        if (now - signed_at).abs() > MAX_SKEW {
            return Err(AuthError::Expired);
        }
        if amz_date.trim().get(..8) != Some(*date) || *terminator != "aws4_request" {
            return Err(AuthError::Malformed(
                "the credential scope does not match X-Amz-Date",
            ));
        }
        if *region != self.region || *service != SERVICE {
            return Err(AuthError::WrongScope(format!("{region}/{service}")));
        }
        let identity = self.identities.get(*key_id).ok_or(AuthError::UnknownKey)?;

        let names: Vec<&str> = signed_headers.split(';').collect();
        let sorted = names.windows(2).all(|w| w[0] < w[1]);
        if !sorted
            || names
                .iter()
                .any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Err(AuthError::Malformed(
                "SignedHeaders must be lowercase, sorted and unique",
            ));
        }
        if !names.contains(&"host") || !names.contains(&"x-amz-date") {
            return Err(AuthError::Malformed("host and x-amz-date must be signed"));
        }
        let mut canonical_headers = String::new();
        for name in &names {
            let values = request.values(name);
            if values.is_empty() {
                return Err(AuthError::Malformed("a signed header is missing"));
            }
            let joined: Vec<String> = values
                .iter()
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            canonical_headers.push_str(&format!("{name}:{}\n", joined.join(",")));
        }

        let body_hash = hex::encode(Sha256::digest(request.body));
        match request.values("x-amz-content-sha256").as_slice() {
            [] => {}
            [claimed] if claimed.trim().eq_ignore_ascii_case(&body_hash) => {}
            _ => return Err(AuthError::BadSignature),
        }

        let canonical_request = format!(
            "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{body_hash}",
            request.method.to_ascii_uppercase(),
            canonical_path(request.path),
            canonical_query(request.query),
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{}\n{date}/{region}/{service}/aws4_request\n{}",
            amz_date.trim(),
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let key = signing_key(&identity.secret, date, region, service);
        let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
        if expected
            .as_bytes()
            .ct_eq(signature.trim().as_bytes())
            .into()
        {
            Ok(identity)
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &SecretString, date: &str, region: &str, service: &str) -> Vec<u8> {
    let key = hmac(
        format!("AWS4{}", secret.expose_secret()).as_bytes(),
        date.as_bytes(),
    );
    let key = hmac(&key, region.as_bytes());
    let key = hmac(&key, service.as_bytes());
    hmac(&key, b"aws4_request")
}

/// Remove dot segments and empty segments, then encode the (already
/// encoded) path again, as `aws-sigv4` does for every service but S3.
fn canonical_path(path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let normalised = if path.contains('.') || path.contains("//") {
        let mut segments: Vec<&str> = Vec::new();
        for segment in path.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                other => segments.push(other),
            }
        }
        let mut result = format!("/{}", segments.join("/"));
        let trailing = ["/", "/.", "/./", "/..", "/../"]
            .iter()
            .any(|s| path.ends_with(s));
        if trailing && !result.ends_with('/') {
            result.push('/');
        }
        result
    } else {
        path
    };
    utf8_percent_encode(&normalised, PATH_SET).to_string()
}

fn canonical_query(query: &str) -> String {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            (
                utf8_percent_encode(&k, BASE_SET).to_string(),
                utf8_percent_encode(&v, BASE_SET).to_string(),
            )
        })
        .collect();
    params.sort();
    params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use std::time::SystemTime;

    fn signed(
        method: &str,
        url: &str,
        body: &[u8],
        key: &str,
        secret: &str,
        region: &str,
        time: SystemTime,
    ) -> Vec<(String, String)> {
        let identity = Credentials::new(key, secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .expect("params")
            .into();
        let headers = [("content-type", "application/json")];
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .expect("signable");
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        instructions.apply_to_request_http1x(&mut request);
        let authority = url
            .split("//")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let mut out = vec![("host".to_string(), authority.to_string())];
        for (name, value) in request.headers() {
            out.push((
                name.as_str().to_string(),
                value.to_str().expect("ascii").to_string(),
            ));
        }
        // What a client adds after signing is not signed, and is ignored.
        out.push(("accept".into(), "*/*".into()));
        out
    }

    fn verifier() -> Verifier {
        Verifier::new(
            vec![
                LocalIdentity::parse_flag("AKIDALICE:alice-secret:arn:aws:iam::0:user/alice")
                    .expect("flag"),
            ],
            "eu-west-2",
        )
    }

    fn check(
        url_path: &str,
        body: &[u8],
        sign_with: (&str, &str, &str),
        age: std::time::Duration,
    ) -> Result<String, AuthError> {
        let url = format!("http://127.0.0.1:8080{url_path}");
        let time = SystemTime::now() - age;
        let headers = signed(
            "POST",
            &url,
            body,
            sign_with.0,
            sign_with.1,
            sign_with.2,
            time,
        );
        let (path, query) = url_path.split_once('?').unwrap_or((url_path, ""));
        let verifier = verifier();
        verifier
            .verify(
                &SignedRequest {
                    method: "POST",
                    path,
                    query,
                    headers: &headers,
                    body,
                },
                Utc::now(),
            )
            .map(|identity| identity.arn.clone())
    }

    const ALICE: (&str, &str, &str) = ("AKIDALICE", "alice-secret", "eu-west-2");

    #[test]
    fn accepts_what_aws_sigv4_signs() {
        let zero = std::time::Duration::ZERO;
        for path in [
            "/campaigns",
            "/campaigns?dry_run=true",
            "/campaigns/abc12345/opt-outs",
            "/campaigns/a%20b/x?b=2&a=1&a=0&c=%2F+x",
            "/",
        ] {
            assert_eq!(
                check(path, b"{\"a\":1}", ALICE, zero),
                Ok("arn:aws:iam::0:user/alice".into()),
                "{path}"
            );
        }
    }

    #[test]
    fn refuses_bad_unknown_expired_and_misscoped() {
        let zero = std::time::Duration::ZERO;
        assert_eq!(
            check(
                "/campaigns",
                b"{}",
                ("AKIDALICE", "wrong", "eu-west-2"),
                zero
            ),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check("/campaigns", b"{}", ("AKIDMALLORY", "x", "eu-west-2"), zero),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            check(
                "/campaigns",
                b"{}",
                ALICE,
                std::time::Duration::from_secs(6 * 60)
            ),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            check(
                "/campaigns",
                b"{}",
                ("AKIDALICE", "alice-secret", "us-east-1"),
                zero
            ),
            Err(AuthError::WrongScope(_))
        ));
    }

    #[test]
    fn refuses_a_tampered_request() {
        let url = "http://127.0.0.1:8080/campaigns";
        let headers = signed(
            "POST",
            url,
            b"{\"a\":1}",
            ALICE.0,
            ALICE.1,
            ALICE.2,
            SystemTime::now(),
        );
        let verifier = verifier();
        let request = |path, body| SignedRequest {
            method: "POST",
            path,
            query: "",
            headers: &headers,
            body,
        };
        assert!(verifier
            .verify(&request("/campaigns", b"{\"a\":1}"), Utc::now())
            .is_ok());
        assert_eq!(
            verifier
                .verify(&request("/campaigns", b"{\"a\":2}"), Utc::now())
                .map(|_| ()),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verifier
                .verify(&request("/practices", b"{\"a\":1}"), Utc::now())
                .map(|_| ()),
            Err(AuthError::BadSignature)
        );
        let unsigned: Vec<(String, String)> = Vec::new();
        assert_eq!(
            verifier
                .verify(
                    &SignedRequest {
                        method: "GET",
                        path: "/campaigns",
                        query: "",
                        headers: &unsigned,
                        body: b"",
                    },
                    Utc::now()
                )
                .map(|_| ()),
            Err(AuthError::Unsigned)
        );
    }
}
