//! Patient data never reaches a log line: a whole demo run is logged at the
//! most verbose level and searched for every NHS number, mobile number and
//! surname in the region.

use hub_core::domain::{NhsNumber, UkMobile};
use hub_local::demo::{self, DemoOptions, Quiet};
use hub_testkit::logs::CapturedLogs;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_demo_logs_no_patient_data() {
    let captured = CapturedLogs::default();
    let writer = captured.clone();
    // Everything of ours at the most verbose level; libraries at info, as in
    // production.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,hub_core=trace,hub_adapters=trace,hub_sim=trace,hub_local=trace,hub_tests=trace",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // Two practices on the MESH route (CSV extracts through mesh-sandbox),
    // so its adapter's logs are searched too.
    let installed =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/mesh.sh"))
            .arg("install")
            .status()
            .expect("infra/mesh.sh runs");
    assert!(installed.success(), "infra/mesh.sh install failed");
    let options = DemoOptions {
        practices: 5,
        patients: 4_000,
        seed: 99,
        external: hub_local::External {
            mesh_practices: 2,
            ..Default::default()
        },
        ..DemoOptions::default()
    };
    let mut config = options.stack_config();
    config.visibility_timeout = std::time::Duration::from_secs(2);
    config.hub.stale_after = chrono::Duration::seconds(5);
    config.hub.send_deadline = std::time::Duration::from_secs(2);
    let stack = hub_local::LocalStack::start(config).await.expect("stack");
    // Faults make the error paths log too.
    stack.gateways[0].inject_server_errors(30);
    stack.gateways[1].inject_rate_limit_burst(30);
    let down = stack.estate.practices()[2].ods.clone();
    stack.estate.set_down(&down, Some(1));
    let report = demo::drive(&stack, &options, &Quiet, std::time::Instant::now())
        .await
        .expect("demo");
    assert!(report.sent > 1_000);
    let log = captured.text();
    assert!(log.lines().count() > 40, "the run was logged");
    assert!(log.contains("will retry"), "the fault paths were logged");
    assert!(
        log.contains("MESH extract received"),
        "the MESH route was logged"
    );

    let mut leaks = Vec::new();
    for patient in stack.estate.all_patients() {
        let nhs = patient.nhs_number.expose();
        if nhs.len() >= 9 && log.contains(nhs.as_str()) {
            leaks.push("an NHS number");
        }
        if let Ok(valid) = NhsNumber::parse(nhs) {
            if log.contains(&valid.formatted()) {
                leaks.push("a formatted NHS number");
            }
        }
        if let Some(raw) = patient.mobile.expose() {
            if raw.len() >= 10 && log.contains(raw.as_str()) {
                leaks.push("a mobile as recorded");
            }
            if let Ok(mobile) = UkMobile::parse(raw) {
                if log.contains(mobile.e164()) || log.contains(&mobile.national()) {
                    leaks.push("a mobile number");
                }
            }
        }
        let surname = patient.family_name.expose();
        // Whole words only, so a surname like "Hill" is not found inside "Hillside".
        let found = log
            .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
            .any(|word| !surname.is_empty() && word == surname);
        if found {
            leaks.push("a surname");
        }
        if let Some(postcode) = patient.postcode.expose().get(..) {
            if postcode.len() >= 6 && log.contains(postcode) {
                leaks.push("a postcode");
            }
        }
    }
    leaks.sort();
    leaks.dedup();
    assert!(
        leaks.is_empty(),
        "patient data found in the logs: {leaks:?}"
    );
}
