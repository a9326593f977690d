//! The staff flow through the built `hub` binary against `hub local serve`:
//! every request SigV4-signed by the CLI and verified by the server.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

mod support;

const HUB: &str = env!("CARGO_BIN_EXE_hub");
const REGION: &str = "eu-west-2";

struct Identity {
    key: &'static str,
    secret: &'static str,
    arn: &'static str,
}

const ALICE: Identity = Identity {
    key: "AKIDLOCALALICE",
    secret: "alice-local-secret",
    arn: "arn:aws:iam::000000000000:user/alice",
};
const BOB: Identity = Identity {
    key: "AKIDLOCALBOB",
    secret: "bob-local-secret",
    arn: "arn:aws:iam::000000000000:user/bob",
};
const MALLORY: Identity = Identity {
    key: "AKIDMALLORY",
    secret: "mallory-secret",
    arn: "arn:aws:iam::000000000000:user/mallory",
};

/// `hub local serve` on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
    address: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = dir.path().join("local-credentials.toml");
        std::fs::write(
            &credentials,
            format!(
                "[[identity]]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\narn = \"{}\"\n",
                ALICE.key, ALICE.secret, ALICE.arn
            ),
        )
        .expect("credentials file");
        let bob = format!("{}:{}:{}", BOB.key, BOB.secret, BOB.arn);
        let (child, url) = support::local_serve(&[
            "--practices",
            "4",
            "--patients",
            "3000",
            "--seed",
            "7",
            "--rate",
            "4000",
            "--credentials",
            credentials.to_str().expect("path"),
            "--identity",
            &bob,
        ]);
        let address = url.trim_start_matches("http://").to_string();
        Self {
            child,
            url,
            address,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `hub ARGS` as `who`, with only the environment the test gives it.
    fn hub(&self, who: &Identity, args: &[&str]) -> Run {
        let empty = self.path("empty");
        std::fs::write(&empty, "").expect("empty file");
        let output = Command::new(HUB)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("HUB_ENDPOINT", &self.url)
            .env("AWS_ACCESS_KEY_ID", who.key)
            .env("AWS_SECRET_ACCESS_KEY", who.secret)
            .env("AWS_REGION", REGION)
            .env("AWS_CONFIG_FILE", &empty)
            .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .output()
            .expect("hub runs");
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!(
            "$ hub {} -> {}\n{}{}",
            args.join(" "),
            run.code,
            run.stdout,
            run.stderr
        );
        run
    }

    fn json(&self, who: &Identity, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let run = self.hub(who, &all);
        assert_eq!(run.code, 0, "{}", run.stderr);
        serde_json::from_str(&run.stdout).expect("JSON on stdout")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

const CAMPAIGN: &str = r#"
name = "Heatwave alert"
message = "NHS South East London: ((first_name)), a level 4 heat-health alert applies. Advice: https://www.nhs.uk/live-well/"
optout_deadline = "+2h"
justification = "Level 4 heat-health alert issued by UKHSA for London"
postal_fallback = true

[target]
min_age = 16
"#;

#[test]
fn a_staff_members_first_campaign() {
    let server = Server::start();

    // GIVEN the registry, updated from a CSV
    let practices = server.json(&ALICE, &["practices", "list"]);
    let ods: Vec<String> = practices["practices"]
        .as_array()
        .expect("practices")
        .iter()
        .map(|p| p["ods"].as_str().expect("ods").to_string())
        .collect();
    assert_eq!(ods.len(), 4);
    // What each GP system holds (the estate's list sizes).
    let held_in_gp: Vec<u64> = practices["practices"]
        .as_array()
        .expect("practices")
        .iter()
        .map(|p| p["list_size"].as_u64().expect("list size"))
        .collect();
    let csv = server.path("practices.csv");
    write(
        &csv,
        &format!(
            "ods,name,notice_email,dsa_signed,list_size\n\
             {},\"Lewisham Medical Centre, Ladywell\",manager@example.nhs.uk,2026-01-15,\"1,234\"\n\
             {},Catford Surgery,catford@example.nhs.uk,2025-06-01,900\n",
            ods[0], ods[1]
        ),
    );
    let run = server.hub(
        &ALICE,
        &["practices", "import", csv.to_str().expect("path")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // (new notice addresses and DSAs wait for a second registry admin)
    assert!(run.stdout.contains("2 changes"), "{}", run.stdout);
    let unchanged = server.json(&BOB, &["practices", "list"]);
    assert_ne!(
        unchanged["practices"][0]["notice_email"],
        "manager@example.nhs.uk"
    );
    assert_eq!(
        unchanged["pending_changes"].as_array().map(Vec::len),
        Some(2)
    );
    let own = server.hub(&ALICE, &["practices", "approve", &ods[0], "--yes"]);
    assert_eq!(own.code, 3, "{}", own.stderr);
    for practice in &ods[..2] {
        let run = server.hub(&BOB, &["practices", "approve", practice, "--yes"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let audit = server.json(&BOB, &["practices", "audit"]);
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "practice_change_approved")
            .count(),
        2,
        "{actions:?}"
    );
    let practices = server.json(&BOB, &["practices", "list"]);
    let first = &practices["practices"][0];
    assert_eq!(first["name"], "Lewisham Medical Centre, Ladywell");
    assert_eq!(first["list_size"], 1234);
    assert_eq!(first["dsa_signed"], "2026-01-15");
    // AND a CSV without GP-system columns keeps each practice's connection
    assert_eq!(first["connection"]["kind"], "fhir", "{first}");
    let run = server.hub(&ALICE, &["practices", "set", &ods[3], "--list-size", "777"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // WHEN alice previews and creates a campaign
    let file = server.path("campaign.toml");
    write(&file, CAMPAIGN);
    let file = file.to_str().expect("path");
    let preview = server.hub(&ALICE, &["campaign", "create", "--file", file, "--dry-run"]);
    assert_eq!(preview.code, 0, "{}", preview.stderr);
    for wanted in [
        "The message as a patient sees it",
        "GSM-7",
        "fragment",
        "Estimated cohort",
        "Lewisham Medical Centre, Ladywell",
        "Opt-out deadline",
        "target",
        "Estimated SMS cost: £",
    ] {
        assert!(preview.stdout.contains(wanted), "preview shows {wanted:?}");
    }
    let declined = server.hub(&ALICE, &["campaign", "create", "--file", file]);
    assert_eq!(declined.code, 1, "no answer, no campaign");
    assert_eq!(
        server.json(&ALICE, &["campaign", "list"])["campaigns"],
        json!([])
    );
    let created = server.hub(&ALICE, &["campaign", "create", "--file", file, "--yes"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(created.stdout.contains("Estimated SMS cost"));
    let id = created
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Created campaign "))
        .and_then(|rest| rest.split(' ').next())
        .expect("the new campaign's id")
        .to_string();

    // THEN the creator cannot approve it; a second person can
    let own = server.hub(&ALICE, &["campaign", "approve", &id, "--yes"]);
    assert_eq!(own.code, 3);
    assert!(own.stderr.contains("different person"), "{}", own.stderr);
    // (shown what they approve, and asked: no answer is no)
    let blind = server.hub(&BOB, &["campaign", "approve", &id]);
    assert_eq!(blind.code, 1, "{}", blind.stderr);
    assert!(
        blind.stdout.contains("The message as a patient sees it")
            && blind.stdout.contains("Estimated cohort")
            && blind.stdout.contains("(version 0)"),
        "{}",
        blind.stdout
    );
    let approved = server.hub(&BOB, &["campaign", "approve", &id, "--yes"]);
    assert_eq!(approved.code, 0, "{}", approved.stderr);

    // AND a practice that replied by email is opted out by staff
    let opted = server.hub(&BOB, &["campaign", "opt-out", &id, &ods[1]]);
    assert_eq!(opted.code, 0, "{}", opted.stderr);
    let bad = server.hub(&BOB, &["campaign", "opt-out", &id, "G8500"]);
    assert_eq!(bad.code, 3);
    assert!(bad.stderr.contains("ods:"), "{}", bad.stderr);

    // AND the deadline is brought forward, and the campaign watched to the end
    // by one person with a reason and a second who approves it
    let alone = server.hub(&ALICE, &["campaign", "deadline", &id, "now"]);
    assert_eq!(alone.code, 3, "{}", alone.stderr);
    assert!(alone.stderr.contains("reason"), "{}", alone.stderr);
    let asked = server.hub(
        &ALICE,
        &[
            "campaign",
            "deadline",
            &id,
            "now",
            "--reason",
            "the alert was upgraded",
        ],
    );
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    assert!(asked.stdout.contains("second person"), "{}", asked.stdout);
    let own = server.hub(&ALICE, &["campaign", "approve-deadline", &id, "--yes"]);
    assert_eq!(own.code, 3, "{}", own.stderr);
    // (the request and the refusal are in the campaign's audit export)
    let export = server.hub(&BOB, &["campaign", "audit", &id, "--csv"]);
    assert_eq!(export.code, 0, "{}", export.stderr);
    assert!(
        export.stdout.starts_with("at,actor,action,detail"),
        "{}",
        export.stdout
    );
    assert!(
        export.stdout.contains("deadline_change_requested"),
        "{}",
        export.stdout
    );
    let moved = server.hub(
        &BOB,
        &[
            "campaign",
            "approve-deadline",
            &id,
            "--emergency-override",
            "--reason",
            "upgraded alert: cannot wait",
            "--yes",
        ],
    );
    assert_eq!(moved.code, 0, "{}", moved.stderr);

    // AND a practice whose GP system returns far fewer patients than the
    // list size now on record (set above) is held, shown with what to do,
    // and proceeded with by staff
    let expected_held: Vec<&String> = [(0, 1234u64), (3, 777)]
        .into_iter()
        .filter(|(n, size)| held_in_gp[*n] * 2 < *size)
        .map(|(n, _)| &ods[n])
        .collect();
    let started = std::time::Instant::now();
    loop {
        let report = server.json(&ALICE, &["campaign", "report", &id]);
        let held = report["suspect_practices"].as_array().map_or(0, Vec::len);
        if held == expected_held.len() && report["state"] != "opt_out_window" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "practices held: {report}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for ods in &expected_held {
        let shown = server.hub(&ALICE, &["campaign", "show", &id]);
        assert!(
            shown.stdout.contains(&format!("HELD {ods} (held since ")),
            "{}",
            shown.stdout
        );
        let decided = server.hub(&BOB, &["campaign", "extraction", &id, ods, "proceed"]);
        assert_eq!(decided.code, 0, "{}", decided.stderr);
        assert!(
            decided.stdout.contains("Decision proceed recorded"),
            "{}",
            decided.stdout
        );
    }
    let watched = server.hub(
        &ALICE,
        &[
            "campaign",
            "watch",
            &id,
            "--interval",
            "0.3",
            "--max-wait",
            "120",
        ],
    );
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    assert!(watched.stdout.contains("completed"), "{}", watched.stdout);

    let report = server.json(&ALICE, &["campaign", "report", &id]);
    assert_eq!(report["state"], "completed");
    assert_eq!(report["adds_up"], true);
    assert_eq!(report["opted_out_practices"], json!([ods[1]]));
    assert_eq!(report["patient_data_remaining"], 0);
    assert!(report["totals"]["sent"].as_u64().is_some_and(|n| n > 100));
    let csv = server.hub(&ALICE, &["campaign", "report", &id, "--csv"]);
    assert_eq!(csv.code, 0);
    let rows: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(rows.len(), 5, "header and one row per practice");
    assert!(rows[0].starts_with("ods,name,state,cohort,sent"));
    let table = server.hub(&ALICE, &["campaign", "report", &id]);
    assert!(table.stdout.contains("every patient accounted for"));
    assert!(table.stdout.contains(": yes"));

    let audit = server.json(&BOB, &["campaign", "audit", &id]);
    let events: Vec<(String, String)> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["actor"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (action, actor) in [
        ("campaign_created", ALICE.arn),
        ("campaign_approved", BOB.arn),
        ("practice_opted_out", BOB.arn),
        ("deadline_changed", BOB.arn),
        ("patient_data_purged", "hub"),
    ] {
        assert!(
            events.contains(&(action.to_string(), actor.to_string())),
            "{action} by {actor} in {events:?}"
        );
    }
    // AND the evidence export, readable and as JSON, holds the record and
    // none of the estate's patient data
    let readable = server.hub(&ALICE, &["campaign", "evidence", &id]);
    assert_eq!(readable.code, 0, "{}", readable.stderr);
    for wanted in [
        "Evidence for campaign",
        ALICE.arn,
        BOB.arn,
        "practice_opted_out",
        "Opt-outs",
        ods[1].as_str(),
        "every patient accounted for: yes",
        "items deleted",
        "remaining now 0",
    ] {
        assert!(
            readable.stdout.contains(wanted),
            "evidence shows {wanted:?}"
        );
    }
    let evidence = server.json(&ALICE, &["campaign", "evidence", &id]);
    assert_eq!(evidence["approved_by"], BOB.arn);
    assert_eq!(evidence["opt_outs"][0]["ods"], ods[1].as_str());
    assert_eq!(evidence["patient_data"]["items_remaining"], 0);
    // `hub local serve --practices 4 --patients 3000 --seed 7` generated this estate.
    let estate = hub_sim::GpEstate::generate(hub_sim::RegionSpec {
        practices: 4,
        patients: 3_000,
        seed: 7,
    });
    let json_text = evidence.to_string();
    for text in [readable.stdout.as_str(), json_text.as_str()] {
        let leaks = patient_data_in(text, &estate);
        assert!(leaks.is_empty(), "patient data in the evidence: {leaks:?}");
    }

    for args in [
        vec!["campaign", "list"],
        vec!["campaign", "show", id.as_str()],
        vec!["campaign", "audit", id.as_str()],
    ] {
        let run = server.hub(&ALICE, &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains(&id) || run.stdout.contains("campaign_created"));
    }
    let shown = server.json(&ALICE, &["campaign", "show", &id]);
    assert_eq!(shown["practices"].as_array().map(Vec::len), Some(4));

    // AND a finished campaign cannot be cancelled
    let cancel = server.hub(&ALICE, &["campaign", "cancel", &id, "--reason", "test"]);
    assert_eq!(cancel.code, 3);
}

#[test]
fn bad_input_and_bad_configuration_have_their_own_exit_codes() {
    let server = Server::start();
    let csv = server.path("bad.csv");
    write(
        &csv,
        "ods,name,notice_email\nG85001,Good Surgery,good@example.nhs.uk\nNOPE,Bad Surgery,not-an-email\n",
    );
    let run = server.hub(
        &ALICE,
        &["practices", "import", csv.to_str().expect("path")],
    );
    assert_eq!(run.code, 3, "a refused row is a refusal");
    assert!(run.stdout.contains("line 3"), "{}", run.stdout);
    assert!(run.stdout.contains("ods:"), "{}", run.stdout);
    // (a changed notice address waits for a second registry admin)
    assert!(run.stdout.contains("1 change"), "{}", run.stdout);
    let listed = server.json(&ALICE, &["practices", "list"]);
    assert!(listed["pending_changes"]
        .as_array()
        .expect("pending changes")
        .iter()
        .any(|c| c["proposed"]["name"] == "Good Surgery"));

    let file = server.path("wrong.toml");
    write(
        &file,
        "name = \"\"\nmessage = \"Hi\"\noptout_deadline = \"tomorrow\"\njustification = \"short\"\n",
    );
    let run = server.hub(
        &ALICE,
        &[
            "campaign",
            "create",
            "--file",
            file.to_str().expect("path"),
            "--yes",
        ],
    );
    assert_eq!(run.code, 3);
    for field in ["name:", "optout_deadline:", "justification:"] {
        assert!(
            run.stderr.contains(field),
            "{field} named in {}",
            run.stderr
        );
    }
    let run = server.hub(
        &ALICE,
        &["campaign", "create", "--file", "/nonexistent.toml"],
    );
    assert_eq!(run.code, 2);
    let run = server.hub(&ALICE, &["campaign", "frobnicate"]);
    assert_eq!(run.code, 2);
    let run = server.hub(&ALICE, &["campaign", "show", "0123456789ab"]);
    assert_eq!(run.code, 3, "not found is a refusal");
    let run = server.hub(
        &ALICE,
        &["--endpoint", "http://127.0.0.1:9", "campaign", "list"],
    );
    assert_eq!(run.code, 4, "an unreachable hub is a failure");
    let run = server.hub(&MALLORY, &["campaign", "list"]);
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("403"), "{}", run.stderr);
}

/// What of the estate's patient data appears in `text`: NHS numbers,
/// mobiles, postcodes and surnames (whole words, practice names taken out
/// first: a practice may be named after its GP).
fn patient_data_in(text: &str, estate: &hub_sim::GpEstate) -> Vec<&'static str> {
    let mut text = text.to_string();
    for practice in estate.practices() {
        text = text.replace(&practice.name, "");
    }
    let words: std::collections::HashSet<&str> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .collect();
    let mut found = Vec::new();
    for patient in estate.all_patients() {
        let nhs = patient.nhs_number.expose();
        if nhs.len() >= 9 && text.contains(nhs.as_str()) {
            found.push("an NHS number");
        }
        if let Some(mobile) = patient.mobile.expose() {
            let digits: String = mobile.chars().filter(char::is_ascii_digit).collect();
            if digits.len() >= 10 && (text.contains(mobile.as_str()) || text.contains(&digits[1..]))
            {
                found.push("a mobile number");
            }
        }
        let postcode = patient.postcode.expose();
        if postcode.len() >= 6 && text.contains(postcode.as_str()) {
            found.push("a postcode");
        }
        let surname = patient.family_name.expose();
        if !surname.is_empty() && words.contains(surname.as_str()) {
            found.push("a surname");
        }
    }
    found.sort();
    found.dedup();
    found
}

/// One raw HTTP/1.1 request; the status and body of the answer.
fn raw(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream.write_all(body).expect("send body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// What is tried: a label, the path, the headers and the body.
type Attempt<'a> = (&'a str, &'a str, Vec<(String, String)>, Vec<u8>);

/// SigV4 headers for a request, signed as `who` at `time` for `region`.
fn signature(
    address: &str,
    who: &Identity,
    method: &str,
    path: &str,
    body: &[u8],
    time: SystemTime,
    region: &str,
) -> Vec<(String, String)> {
    let identity = Credentials::new(who.key, who.secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("execute-api")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .expect("params")
        .into();
    let url = format!("http://{address}{path}");
    let signable =
        SignableRequest::new(method, &url, std::iter::empty(), SignableBody::Bytes(body))
            .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
    let mut request = http::Request::builder()
        .method(method)
        .uri(&url)
        .body(())
        .expect("request");
    instructions.apply_to_request_http1x(&mut request);
    request
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().expect("ascii").to_string()))
        .collect()
}

#[test]
fn unsigned_forged_expired_or_unknown_requests_change_nothing() {
    let server = Server::start();
    let file = server.path("campaign.toml");
    write(&file, CAMPAIGN);
    let created = server.json(
        &ALICE,
        &[
            "campaign",
            "create",
            "--file",
            file.to_str().expect("path"),
            "--yes",
        ],
    );
    let id = created["campaign"]["id"].as_str().expect("id").to_string();
    let approve = format!("/campaigns/{id}/approve");
    let create_body = json!({
        "name": "Forged",
        "message": "Forged message",
        "optout_deadline": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        "justification": "Nobody authorised this one",
    })
    .to_string()
    .into_bytes();
    let now = SystemTime::now();
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let address = server.address.as_str();
    let sign_as = |who: &Identity, path: &str, body: &[u8], time, region| {
        signature(address, who, "POST", path, body, time, region)
    };
    let wrong_secret = Identity {
        key: BOB.key,
        secret: "guessed",
        arn: BOB.arn,
    };
    let attempts: Vec<Attempt> = vec![
        ("unsigned approve", approve.as_str(), vec![], vec![]),
        ("unsigned create", "/campaigns", vec![], create_body.clone()),
        (
            "test identity header without --insecure-test-identity",
            approve.as_str(),
            vec![("x-hub-test-identity".to_string(), BOB.arn.to_string())],
            vec![],
        ),
        (
            "bad signature",
            approve.as_str(),
            sign_as(&wrong_secret, &approve, b"", now, REGION),
            vec![],
        ),
        (
            "unknown key",
            approve.as_str(),
            sign_as(&MALLORY, &approve, b"", now, REGION),
            vec![],
        ),
        (
            "expired",
            approve.as_str(),
            sign_as(&BOB, &approve, b"", now - minutes(6), REGION),
            vec![],
        ),
        (
            "from the future",
            approve.as_str(),
            sign_as(&BOB, &approve, b"", now + minutes(6), REGION),
            vec![],
        ),
        (
            "other region",
            approve.as_str(),
            sign_as(&BOB, &approve, b"", now, "us-east-1"),
            vec![],
        ),
        (
            "signed for another path",
            approve.as_str(),
            sign_as(&BOB, &format!("/campaigns/{id}/cancel"), b"", now, REGION),
            vec![],
        ),
        (
            "body changed after signing",
            "/campaigns",
            sign_as(&BOB, "/campaigns", b"{}", now, REGION),
            create_body.clone(),
        ),
    ];
    for (what, path, headers, body) in &attempts {
        let (status, answer) = raw(address, "POST", path, headers, body);
        assert_eq!(status, 403, "{what}: {answer}");
        assert_eq!(answer["code"], "forbidden", "{what}");
    }

    // Nothing changed: one campaign, still pending, audited once.
    let listed = server.json(&ALICE, &["campaign", "list"]);
    assert_eq!(listed["campaigns"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["campaigns"][0]["state"], "pending_approval");
    let audit = server.json(&ALICE, &["campaign", "audit", &id]);
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(1));

    // The same raw request, signed properly by bob, is accepted.
    let body = br#"{"version":0}"#;
    let headers = sign_as(&BOB, &approve, body, SystemTime::now(), REGION);
    let (status, answer) = raw(address, "POST", &approve, &headers, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["approved_by"], BOB.arn);
}
