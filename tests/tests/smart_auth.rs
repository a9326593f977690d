//! OAuth2 client credentials (SMART Backend Services) between the FHIR
//! connector and the FHIR simulator's strict token endpoint: a practice
//! on OAuth extracts and is written back, a token that expires during an
//! extraction is renewed without restarting it, a wrong key fails the
//! practice with a reason naming it and no secret material, and the token
//! endpoint refuses what SMART and RFC 7523 refuse. Keys are made at run
//! time.

use futures::StreamExt;
use hub_adapters::fhir::{
    new_es384_key_pem, ClientCredentials, FhirConfig, FhirGpConnector, CLIENT_ASSERTION_TYPE,
};
use hub_core::domain::{GpPatient, NhsNumber, Personal};
use hub_core::ports::{
    GpConnector, GpError, Medium, Practice, Secrets, SecretsError, WritebackEntry, WritebackResult,
};
use hub_sim::http::{start_fhir, FhirServer, FhirServerConfig};
use hub_sim::{GpEstate, RegionSpec};
use hub_testkit::logs::CapturedLogs;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const SECRET_NAME: &str = "sms-hub/gp/oauth-client";
const CLIENT_ID: &str = "sms-engagement-hub";

/// Secrets Manager as the connector sees it: one secret.
struct OneSecret(String);

#[async_trait::async_trait]
impl Secrets for OneSecret {
    async fn secret(&self, id: &str) -> Result<SecretString, SecretsError> {
        if id == SECRET_NAME {
            Ok(SecretString::from(self.0.clone()))
        } else {
            Err(SecretsError::NotFound(id.into()))
        }
    }
}

fn client_secret(token_url: &str, pem: &str, alg: &str) -> String {
    json!({
        "client_id": CLIENT_ID,
        "token_url": token_url,
        "private_key_pem": pem,
        "kid": "hub-key-1",
        "alg": alg,
        "scope": "system/Patient.rs system/Communication.c",
    })
    .to_string()
}

struct Setup {
    server: FhirServer,
    connector: FhirGpConnector,
    practice: Practice,
    estate: GpEstate,
    pem: String,
}

/// A practice of `patients` behind a server whose tokens live
/// `lifetime`, the hub's client registered with the key in its secret.
async fn setup(patients: u64, lifetime: Duration) -> Setup {
    setup_with_key(patients, lifetime, new_es384_key_pem(), "ES384").await
}

/// A 2048-bit RSA key (PKCS#8), made now by openssl (ring makes no RSA
/// keys; infra/mesh.sh needs openssl for the MESH tests too).
fn new_rsa_key_pem() -> String {
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "openssl genpkey failed");
    String::from_utf8(made.stdout).expect("PEM is text")
}

async fn setup_with_key(patients: u64, lifetime: Duration, pem: String, alg: &str) -> Setup {
    let estate = GpEstate::generate(RegionSpec {
        practices: 1,
        patients,
        seed: 41,
    });
    let (_, server) = start_fhir(
        estate.clone(),
        FhirServerConfig {
            token_lifetime: Some(lifetime),
            polls_before_ready: 1,
            ..FhirServerConfig::default()
        },
    )
    .await
    .expect("FHIR simulator starts");
    let secret = client_secret(&server.token_url(), &pem, alg);
    let credentials = ClientCredentials::parse(&secret).expect("the secret parses");
    server
        .register_client(CLIENT_ID, &credentials.public_jwk())
        .expect("client registered");
    let connector = FhirGpConnector::new(FhirConfig {
        page_size: 50,
        min_poll: Duration::from_millis(10),
        ..FhirConfig::default()
    })
    .unwrap()
    .with_credential_source(Arc::new(OneSecret(secret)));
    let ods = estate.practices()[0].ods.clone();
    let practice = server
        .practice(&ods, false, Some(SECRET_NAME))
        .expect("practice");
    Setup {
        server,
        connector,
        practice,
        estate,
        pem,
    }
}

async fn read(
    stream: &mut futures::stream::BoxStream<'static, Result<GpPatient, GpError>>,
    at_most: usize,
) -> (Vec<GpPatient>, Vec<GpError>) {
    let (mut patients, mut errors) = (Vec::new(), Vec::new());
    while patients.len() + errors.len() < at_most {
        match stream.next().await {
            Some(Ok(patient)) => patients.push(patient),
            Some(Err(error)) => errors.push(error),
            None => break,
        }
    }
    (patients, errors)
}

fn entry(nhs: &NhsNumber, n: usize) -> WritebackEntry {
    WritebackEntry {
        nhs_number: nhs.clone(),
        reference: format!("c.G85001-0000.{n}"),
        sent_at: chrono::Utc::now(),
        message: Personal::new("NHS South East London: please book your booster.".into()),
        medium: Medium::Sms,
    }
}

/// GIVEN a practice whose GP system takes only SMART Backend Services
/// tokens, WHEN the hub extracts it (search and bulk export) and writes
/// back, THEN every patient is read and every entry recorded on one
/// access token, fetched with a signed assertion the server verified.
#[tokio::test]
async fn a_practice_on_oauth_extracts_and_is_written_back() {
    let setup = setup(300, Duration::from_secs(60)).await;
    let listed = setup.estate.practices()[0].list_size as usize;

    let mut stream = setup.connector.extract(&setup.practice).await.unwrap();
    let (patients, errors) = read(&mut stream, usize::MAX).await;
    assert_eq!(patients.len() + errors.len(), listed);
    assert!(patients.len() > listed * 9 / 10, "{}", patients.len());

    let mut export = setup.practice.clone();
    if let hub_core::ports::GpConnection::Fhir { bulk_export, .. } = &mut export.connection {
        *bulk_export = true;
    }
    let mut stream = setup.connector.extract(&export).await.unwrap();
    let (exported, _) = read(&mut stream, usize::MAX).await;
    assert_eq!(exported.len(), patients.len());

    let entries: Vec<WritebackEntry> = patients
        .iter()
        .filter_map(|p| NhsNumber::parse(p.nhs_number.expose()).ok())
        .take(3)
        .enumerate()
        .map(|(n, nhs)| entry(&nhs, n))
        .collect();
    let results = setup
        .connector
        .write_back(&setup.practice, &entries)
        .await
        .unwrap();
    assert_eq!(results, vec![WritebackResult::Recorded; 3]);
    assert_eq!(setup.server.communications_stored(), 3);
    assert_eq!(setup.server.tokens_issued(), 1, "one token, kept");
    assert!(setup.server.token_refusals().is_empty());

    // Without a token the server refuses, so the token above mattered.
    let unauthorised = reqwest::get(format!(
        "{}/Patient",
        setup.server.base_url(&setup.practice.ods)
    ))
    .await
    .unwrap();
    assert_eq!(unauthorised.status(), 401);
}

/// GIVEN an extraction on its third page, WHEN the server expires every
/// token, THEN the next page's 401 fetches a new token and the page is
/// asked for again: all patients read, the search never restarted.
#[tokio::test]
async fn a_token_that_expires_mid_extraction_is_renewed_without_restarting() {
    let setup = setup(400, Duration::from_secs(60)).await;
    let listed = setup.estate.practices()[0].list_size as usize;
    let mut stream = setup.connector.extract(&setup.practice).await.unwrap();
    let (first, first_errors) = read(&mut stream, 120).await;
    assert_eq!(setup.server.tokens_issued(), 1);

    setup.server.expire_tokens();
    let (rest, rest_errors) = read(&mut stream, usize::MAX).await;

    assert_eq!(
        first.len() + first_errors.len() + rest.len() + rest_errors.len(),
        listed
    );
    assert!(rest_errors
        .iter()
        .all(|e| matches!(e, GpError::MalformedRecord(_))));
    assert_eq!(setup.server.expired_tokens_presented(), 1);
    assert_eq!(setup.server.tokens_issued(), 2, "renewed once");
    assert_eq!(
        setup.server.first_pages(),
        1,
        "the search was not restarted"
    );
}

/// GIVEN tokens living 2 s, WHEN an extraction outlasts one, THEN the
/// connector renews it before it lapses: no request is refused.
#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let setup = setup(200, Duration::from_secs(2)).await;
    let mut stream = setup.connector.extract(&setup.practice).await.unwrap();
    let (first, _) = read(&mut stream, 60).await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let (rest, _) = read(&mut stream, usize::MAX).await;

    assert!(first.len() + rest.len() > 150);
    assert_eq!(setup.server.tokens_issued(), 2);
    assert_eq!(setup.server.expired_tokens_presented(), 0);
}

/// GIVEN the GP system registered another key for the hub's client, WHEN
/// the practice is extracted, THEN it fails as misconfigured, naming the
/// practice, the secret and `invalid_client`; neither the error nor the
/// logs hold the key, the assertion or a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_fails_the_practice_naming_it_and_no_secret() {
    let captured = CapturedLogs::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let setup = setup(50, Duration::from_secs(60)).await;
    let other_key = new_es384_key_pem();
    let other = ClientCredentials::parse(&client_secret(
        &setup.server.token_url(),
        &other_key,
        "ES384",
    ))
    .unwrap();
    setup
        .server
        .register_client(CLIENT_ID, &other.public_jwk())
        .unwrap();

    let error = match setup.connector.extract(&setup.practice).await {
        Ok(_) => panic!("extraction with the wrong key started"),
        Err(error) => error,
    };

    let GpError::Misconfigured(reason) = &error else {
        panic!("not misconfigured: {error}");
    };
    let ods = setup.practice.ods.to_string();
    assert!(reason.contains(&ods), "{reason}");
    assert!(reason.contains(SECRET_NAME), "{reason}");
    assert!(reason.contains("invalid_client"), "{reason}");
    assert_eq!(setup.server.token_refusals(), vec!["invalid_client"]);
    let key_body: String = setup
        .pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let logs = captured.text();
    for text in [reason.as_str(), logs.as_str()] {
        for line in key_body.as_bytes().chunks(16) {
            let piece = std::str::from_utf8(line).unwrap();
            assert!(!text.contains(piece), "key material in {text}");
        }
        assert!(!text.contains("eyJ"), "a JWT in {text}");
    }
}

async fn ask_for_token(server: &FhirServer, form: &[(&str, &str)]) -> (u16, Value) {
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", hub_adapters::fhir::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let response = reqwest::Client::new()
        .post(server.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The token endpoint refuses, with RFC 6749's codes: a replayed `jti`,
/// an `aud` that is not the endpoint, an expired assertion, one expiring
/// more than five minutes ahead, a wrong grant or assertion type, and no
/// scope; it answers a good assertion once.
#[tokio::test]
async fn the_token_endpoint_is_strict() {
    let setup = setup(10, Duration::from_secs(60)).await;
    let server = &setup.server;
    let token_url = server.token_url();
    let credentials =
        ClientCredentials::parse(&client_secret(&token_url, &setup.pem, "ES384")).unwrap();
    let now = chrono::Utc::now();
    let scope = "system/Patient.rs";
    let request = |assertion: &SecretString| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_string()),
            ("client_assertion", assertion.expose_secret().to_string()),
            ("scope", scope.to_string()),
        ]
    };
    let ask = |form: Vec<(&'static str, String)>| async move {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ask_for_token(server, &form).await
    };

    let good = credentials.assertion(now).unwrap();
    let (status, issued) = ask(request(&good)).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["token_type"], "bearer");
    assert_eq!(issued["expires_in"], 60);
    let (status, replayed) = ask(request(&good)).await;
    assert_eq!(
        (status, replayed["error"].as_str()),
        (401, Some("invalid_client"))
    );

    let elsewhere = ClientCredentials::parse(&client_secret(
        &format!("{token_url}/other"),
        &setup.pem,
        "ES384",
    ))
    .unwrap()
    .assertion(now)
    .unwrap();
    let expired = credentials
        .assertion(now - chrono::Duration::minutes(10))
        .unwrap();
    let too_long = credentials
        .assertion(now + chrono::Duration::minutes(2))
        .unwrap();
    for (what, assertion) in [("aud", elsewhere), ("expired", expired), ("exp", too_long)] {
        let (status, refused) = ask(request(&assertion)).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}"
        );
    }

    let fresh = || credentials.assertion(chrono::Utc::now()).unwrap();
    let mut wrong_grant = request(&fresh());
    wrong_grant[0].1 = "authorization_code".into();
    let mut wrong_type = request(&fresh());
    wrong_type[1].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer".into();
    let mut no_scope = request(&fresh());
    no_scope.pop();
    for (form, code) in [
        (wrong_grant, "unsupported_grant_type"),
        (wrong_type, "invalid_request"),
        (no_scope, "invalid_scope"),
    ] {
        let (status, refused) = ask(form).await;
        assert_eq!((status, refused["error"].as_str()), (400, Some(code)));
    }
    assert_eq!(server.tokens_issued(), 1);
}

/// GIVEN the hub's client registered with an RSA key (RS384), WHEN the
/// practice is extracted, THEN the server verifies the RS384 assertion and
/// every patient is read.
#[tokio::test]
async fn an_rs384_client_is_admitted() {
    let setup = setup_with_key(120, Duration::from_secs(60), new_rsa_key_pem(), "RS384").await;
    let listed = setup.estate.practices()[0].list_size as usize;
    let mut stream = setup.connector.extract(&setup.practice).await.unwrap();
    let (patients, errors) = read(&mut stream, usize::MAX).await;
    assert_eq!(patients.len() + errors.len(), listed);
    assert_eq!(setup.server.tokens_issued(), 1);
    let jwk = ClientCredentials::parse(&client_secret(
        &setup.server.token_url(),
        &setup.pem,
        "RS384",
    ))
    .unwrap()
    .public_jwk();
    assert_eq!(
        (jwk["kty"].as_str(), jwk["alg"].as_str()),
        (Some("RSA"), Some("RS384"))
    );
}
