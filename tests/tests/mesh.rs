//! The MESH route against NHS England's `mesh-sandbox` (PyPI), started
//! here on loopback with full authentication: the client's protocol
//! (auth header, handshake, chunked send and download, acknowledgement),
//! and a practice's extract end to end through `MeshGpConnector`.

use chrono::Utc;
use futures::StreamExt;
use hub_adapters::mesh::{
    MeshClient, MeshConfig, MeshError, MeshGpConfig, MeshGpConnector, OutgoingMessage,
    EXTRACT_WORKFLOW, REQUEST_WORKFLOW, WRITEBACK_WORKFLOW,
};
use hub_core::domain::{check_digit, ContactPreference, OdsCode, Personal};
use hub_core::ports::{
    GpConnection, GpConnector, GpError, Medium, Practice, WritebackEntry, WritebackResult,
};
use hub_sim::mesh::{MeshPracticeSim, MeshSandbox, SandboxTls};
use secrecy::SecretString;
use std::path::Path;
use std::time::Duration;

const HUB: &str = "HUBMB01";
const PRACTICE: &str = "G85001MB";
const OTHER_PRACTICE: &str = "G85002MB";

async fn sandbox() -> MeshSandbox {
    // Installs mesh-sandbox on a fresh machine (a no-op once installed).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/mesh.sh");
    let status = std::process::Command::new(script)
        .arg("install")
        .status()
        .expect("infra/mesh.sh runs");
    assert!(status.success(), "infra/mesh.sh install failed");
    MeshSandbox::start(
        &MeshSandbox::default_venv(),
        &[HUB, PRACTICE, OTHER_PRACTICE],
    )
    .await
    .expect("mesh-sandbox starts")
}

fn small_chunks(sandbox: &MeshSandbox, mailbox: &str, chunk_size: usize) -> MeshClient {
    let mut config = sandbox.config(mailbox);
    config.chunk_size = chunk_size;
    MeshClient::new(config).expect("client")
}

fn nhs_number(n: u32) -> String {
    let first_nine = format!("{:09}", 943_000_000 + n * 7);
    let digits: Vec<u32> = first_nine
        .chars()
        .map(|c| c.to_digit(10).unwrap())
        .collect();
    match check_digit(&digits) {
        Some(check) => format!("{first_nine}{check}"),
        None => nhs_number(n + 1_000),
    }
}

fn practice(mailbox: &str, wait_seconds: u64) -> Practice {
    Practice {
        ods: OdsCode::parse("G85001").unwrap(),
        name: "Lewisham Medical Centre".into(),
        notice_email: "manager@example.nhs.uk".into(),
        dsa_signed: None,
        connection: GpConnection::Mesh {
            mailbox: mailbox.into(),
            wait_seconds: Some(wait_seconds),
        },
        list_size: 60,
    }
}

fn hub_connector(sandbox: &MeshSandbox) -> MeshGpConnector {
    MeshGpConnector::new(
        sandbox.client(HUB).unwrap(),
        MeshGpConfig {
            poll_interval: Duration::from_millis(200),
            ..MeshGpConfig::default()
        },
    )
}

fn message(to: &str, workflow: &str, body: &[u8]) -> OutgoingMessage {
    OutgoingMessage {
        to: to.into(),
        workflow_id: workflow.into(),
        local_id: None,
        subject: None,
        file_name: None,
        content_type: "text/csv".into(),
        body: body.to_vec(),
    }
}

#[tokio::test]
async fn the_client_speaks_mesh_to_the_sandbox() {
    let sandbox = sandbox().await;
    let hub = sandbox.client(HUB).unwrap();
    let practice = small_chunks(&sandbox, PRACTICE, 1000);
    hub.handshake().await.expect("handshake");

    // A wrong password or shared key is refused: the header is checked.
    let mut wrong = sandbox.config(HUB);
    wrong.password = SecretString::from("not-the-password");
    let refused = MeshClient::new(wrong)
        .unwrap()
        .handshake()
        .await
        .unwrap_err();
    assert!(refused.is_auth(), "{refused}");
    let wrong_key = MeshConfig::new(
        sandbox.base_url(),
        HUB,
        SecretString::from("password"),
        SecretString::from("another-shared-key"),
    );
    assert!(MeshClient::new(wrong_key)
        .unwrap()
        .list_inbox(None)
        .await
        .unwrap_err()
        .is_auth());

    // 2,500 bytes in chunks of 1,000: three chunks, joined back in order.
    let body: Vec<u8> = (0..2500u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut outgoing = message(HUB, EXTRACT_WORKFLOW, &body);
    outgoing.local_id = Some("request-1".into());
    let id = practice.send_message(&outgoing).await.expect("sent");
    practice
        .send_message(&message(HUB, "OTHER_WORKFLOW", b"x"))
        .await
        .expect("sent");

    assert_eq!(hub.list_inbox(None).await.unwrap().len(), 2);
    assert_eq!(
        hub.list_inbox(Some(EXTRACT_WORKFLOW)).await.unwrap(),
        vec![id.clone()]
    );
    let info = hub.message_info(&id).await.expect("head");
    assert_eq!(info.from, PRACTICE);
    assert_eq!(info.workflow_id, EXTRACT_WORKFLOW);
    assert_eq!(info.local_id.as_deref(), Some("request-1"));

    let downloaded = hub.download(&id).await.expect("downloaded");
    assert_eq!(downloaded.chunks, 3);
    assert_eq!(downloaded.body, body);

    // Acknowledged: gone from the inbox.
    hub.acknowledge(&id).await.expect("acknowledged");
    assert!(hub
        .list_inbox(Some(EXTRACT_WORKFLOW))
        .await
        .unwrap()
        .is_empty());
    // Only the recipient may read a message.
    let other = sandbox.client(OTHER_PRACTICE).unwrap();
    let theirs = practice
        .send_message(&message(HUB, EXTRACT_WORKFLOW, b"for the hub"))
        .await
        .unwrap();
    assert!(other.download(&theirs).await.is_err());
}

/// The CSV a practice sends: 60 patients, one deceased, one who dissents
/// from texts, one malformed row, a quoted name with a comma.
fn practice_extract() -> Vec<u8> {
    let mut csv = String::from(
        "nhs_number,given_name,family_name,date_of_birth,address_line_1,address_line_2,postcode,mobile,sms_consent,deceased\n",
    );
    for n in 0..60 {
        let consent = if n == 1 { "N" } else { "Y" };
        let deceased = if n == 2 { "2025-10-01" } else { "N" };
        let given = if n == 3 { "\"Mary, Jane\"" } else { "Sam" };
        csv.push_str(&format!(
            "{},{given},Okafor{n},1980-01-{:02},{n} Lewis Grove,Lewisham,SE13 6BG,07700 900{:03},{consent},{deceased}\n",
            nhs_number(n),
            n % 28 + 1,
            n
        ));
    }
    csv.push_str("9434765919,Only,Three-fields\n");
    csv.into_bytes()
}

#[tokio::test]
async fn a_mesh_practice_is_extracted_end_to_end() {
    let sandbox = sandbox().await;
    let connector = hub_connector(&sandbox);
    let hub = sandbox.client(HUB).unwrap();
    // The practice answers in chunks of 512 bytes (the extract is ~6 KB).
    let practice_side = MeshPracticeSim::new(small_chunks(&sandbox, PRACTICE, 512));
    // Another practice's extract waits in the hub's inbox: not ours to take.
    let other = sandbox.client(OTHER_PRACTICE).unwrap();
    let others_id = other
        .send_message(&message(HUB, EXTRACT_WORKFLOW, b"nhs_number\n"))
        .await
        .unwrap();

    let answering = tokio::spawn(async move {
        for _ in 0..100 {
            let requests = practice_side.requests().await.expect("inbox");
            if let Some(request) = requests.first() {
                assert_eq!(requests.len(), 1, "one request per extraction");
                assert_eq!(request.from, HUB);
                assert_eq!(request.ods.as_ref().map(OdsCode::as_str), Some("G85001"));
                practice_side
                    .answer(request, practice_extract())
                    .await
                    .expect("answered");
                return request.local_id.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the hub never asked for the extract");
    });

    let practice = practice(PRACTICE, 30);
    let rows: Vec<_> = connector
        .extract(&practice)
        .await
        .expect("extracted")
        .collect()
        .await;
    let local_id = answering.await.unwrap();
    assert!(local_id.is_some_and(|id| id.starts_with("G85001-")));

    let patients: Vec<_> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
    let malformed = rows
        .iter()
        .filter(|r| matches!(r, Err(GpError::MalformedRecord(_))))
        .count();
    assert_eq!(patients.len(), 60);
    assert_eq!(malformed, 1);
    assert_eq!(patients[0].nhs_number.expose(), &nhs_number(0));
    assert_eq!(
        patients[1].contact_preference,
        ContactPreference::NoTelephoneContact
    );
    assert!(patients[2].deceased);
    assert_eq!(patients[3].given_name.expose(), "Mary, Jane");
    assert_eq!(
        patients[59].mobile.expose().as_deref(),
        Some("07700 900059")
    );

    // The extract was acknowledged (MESH keeps no copy); the other
    // practice's is still waiting.
    assert_eq!(
        hub.list_inbox(Some(EXTRACT_WORKFLOW)).await.unwrap(),
        vec![others_id]
    );
    // The practice's request was acknowledged by the practice too.
    assert!(sandbox
        .client(PRACTICE)
        .unwrap()
        .list_inbox(Some(REQUEST_WORKFLOW))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_practice_that_never_answers_fails_after_its_wait() {
    let sandbox = sandbox().await;
    let connector = hub_connector(&sandbox);
    let started = std::time::Instant::now();
    let error = match connector.extract(&practice(PRACTICE, 1)).await {
        Ok(_) => panic!("no extract was sent"),
        Err(error) => error,
    };
    assert!(matches!(error, GpError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("within 1 s"), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The request did reach the practice's mailbox.
    let waiting = MeshPracticeSim::new(sandbox.client(PRACTICE).unwrap())
        .requests()
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1);
}

#[tokio::test]
async fn an_extract_without_the_required_columns_is_refused_and_acknowledged() {
    let sandbox = sandbox().await;
    let connector = hub_connector(&sandbox);
    // Sent before the hub asks: an extract already waiting is read at once.
    sandbox
        .client(PRACTICE)
        .unwrap()
        .send_message(&message(
            HUB,
            EXTRACT_WORKFLOW,
            b"nhs_number,mobile\n9434765919,07700900123\n",
        ))
        .await
        .unwrap();
    let error = match connector.extract(&practice(PRACTICE, 5)).await {
        Ok(_) => panic!("the extract lacks columns"),
        Err(error) => error,
    };
    assert!(
        error.to_string().contains("no column given_name"),
        "{error}"
    );
    assert!(!error.to_string().contains("9434765919"));
    assert!(sandbox
        .client(HUB)
        .unwrap()
        .list_inbox(None)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn write_back_sends_the_practice_the_list_of_who_was_messaged() {
    let sandbox = sandbox().await;
    let connector = hub_connector(&sandbox);
    let entries: Vec<WritebackEntry> = (0..3)
        .map(|n| WritebackEntry {
            nhs_number: hub_core::domain::NhsNumber::parse(&nhs_number(n)).unwrap(),
            reference: format!("campaign-1.G85001-0001.{n}"),
            sent_at: Utc::now(),
            message: Personal::new(format!("Stay cool, patient {n}, drink water.")),
            medium: if n == 2 { Medium::Letter } else { Medium::Sms },
        })
        .collect();
    let results = connector
        .write_back(&practice(PRACTICE, 5), &entries)
        .await
        .expect("written back");
    assert_eq!(results, vec![WritebackResult::Recorded; 3]);

    let practice_side = sandbox.client(PRACTICE).unwrap();
    let ids = practice_side
        .list_inbox(Some(WRITEBACK_WORKFLOW))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let csv = String::from_utf8(practice_side.download(&ids[0]).await.unwrap().body).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "nhs_number,reference,sent_at,medium,message");
    assert_eq!(lines.len(), 4);
    assert!(lines[2].starts_with(&format!("{},campaign-1.G85001-0001.1,", nhs_number(1))));
    assert!(lines[2].ends_with(",sms,\"Stay cool, patient 1, drink water.\""));
    assert!(lines[3].contains(",letter,"));
}

/// A mixed region: the same synthetic region run twice, all on FHIR and
/// with two practices on MESH (through the sandbox, answered by simulated
/// practices from the same estate). The MESH practices' cohorts come out
/// the same as over FHIR.
#[tokio::test]
async fn a_mixed_region_reaches_the_same_patients_over_mesh_as_over_fhir() {
    use hub_local::demo::{run, DemoOptions, Quiet};
    // Installs the sandbox if needed (the stack starts its own).
    drop(sandbox().await);
    let options = |mesh_practices| DemoOptions {
        practices: 4,
        patients: 800,
        seed: 77,
        external: hub_local::External {
            mesh_practices,
            ..Default::default()
        },
        timeout: Duration::from_secs(300),
        ..DemoOptions::default()
    };
    let fhir = run(&options(0), &Quiet).await.expect("FHIR-only demo");
    let mixed = run(&options(2), &Quiet).await.expect("mixed demo");
    assert_eq!(mixed.state, "completed");
    assert!(fhir.mesh_practices.is_empty());
    assert!(
        mixed.failed_practices.is_empty(),
        "{:?}",
        mixed.failed_practices
    );
    // The stack puts the region's last two practices on MESH.
    let region = hub_sim::GpEstate::generate(hub_sim::RegionSpec {
        practices: 4,
        patients: 800,
        seed: 77,
    });
    let last_two: Vec<String> = region.practices()[2..]
        .iter()
        .map(|p| p.ods.to_string())
        .collect();
    let mut compared = 0;
    for ods in &last_two {
        let over_fhir = fhir.practices.iter().find(|p| &p.ods == ods).unwrap();
        let Some(over_mesh) = mixed.practices.iter().find(|p| &p.ods == ods) else {
            continue; // not taking part (no data sharing agreement)
        };
        assert_eq!(over_mesh.state, over_fhir.state, "{ods}");
        assert_eq!(over_mesh.cohort, over_fhir.cohort, "{ods}");
        if over_mesh.cohort > 0 {
            compared += 1;
        }
    }
    assert!(compared > 0, "a MESH practice took part: {last_two:?}");
    assert_eq!(mixed.mesh_practices, last_two);
    // Which practice a dual registration is excluded at depends on which
    // is read first, so exclusions and contacts compare region-wide.
    assert_eq!(mixed.cohort, fhir.cohort);
    assert_eq!(mixed.excluded, fhir.excluded);
    // The CSV has no letter preference: those patients get a text.
    assert_eq!(mixed.sent + mixed.letters, fhir.sent + fhir.letters);
}

#[tokio::test]
async fn client_tls_is_configurable_and_required_by_a_tls_sandbox() {
    drop(sandbox().await); // installs the sandbox if needed
    let certs = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/mesh.sh");
    let made = std::process::Command::new(script)
        .arg("certs")
        .arg(certs.path())
        .status()
        .expect("infra/mesh.sh runs");
    assert!(made.success(), "infra/mesh.sh certs failed");
    let sandbox = MeshSandbox::start_with(
        &MeshSandbox::default_venv(),
        &[HUB, PRACTICE],
        Some(SandboxTls {
            dir: certs.path().to_path_buf(),
        }),
    )
    .await
    .expect("mesh-sandbox starts with TLS");
    assert!(sandbox.base_url().starts_with("https://"));

    // The mailbox's certificate and MESH's CA: the whole protocol works.
    let hub = sandbox.client(HUB).unwrap();
    hub.handshake().await.expect("handshake over mutual TLS");
    let sent = small_chunks(&sandbox, PRACTICE, 100)
        .send_message(&message(HUB, EXTRACT_WORKFLOW, &[b'x'; 250]))
        .await
        .expect("chunked send over TLS");
    assert_eq!(hub.download(&sent).await.unwrap().chunks, 3);

    // No client certificate: the sandbox refuses the connection.
    let mut no_certificate = sandbox.config(HUB);
    no_certificate.tls.client_identity_pem = None;
    let refused = MeshClient::new(no_certificate)
        .unwrap()
        .handshake()
        .await
        .unwrap_err();
    assert!(matches!(refused, MeshError::Transport { .. }), "{refused}");

    // Without MESH's CA the server's certificate is not trusted.
    let mut public_roots = sandbox.config(HUB);
    public_roots.tls.ca_pem = None;
    let untrusted = MeshClient::new(public_roots)
        .unwrap()
        .handshake()
        .await
        .unwrap_err();
    assert!(
        matches!(untrusted, MeshError::Transport { .. }),
        "{untrusted}"
    );

    // Unreadable PEM is a configuration error naming the part, not a panic.
    let mut unreadable = sandbox.config(HUB);
    unreadable.tls.client_identity_pem = Some(SecretString::from("not a certificate"));
    match MeshClient::new(unreadable) {
        Err(MeshError::Config(problem)) => assert!(problem.contains("client certificate")),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
