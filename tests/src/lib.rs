//! Helpers for the end-to-end tests: a small embedded stack per test, a
//! campaign driven to its deadline, and the invariants every run must keep.

pub mod requests;

use hub_core::domain::pacing::RateUnit;
use hub_core::domain::{
    CampaignId, CampaignState, ContactPreference, NhsNumber, ParticipationState, StaffId, UkMobile,
};
use hub_core::handlers::api::{self, CreateCampaignRequest, TargetRequest};
use hub_core::handlers::report::CampaignReport;
use hub_core::handlers::HubConfig;
use hub_local::demo::wait_until;
use hub_local::{LocalStack, LocalStackConfig};
use hub_sim::{GatewayConfig, RegionSpec};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub fn alice() -> StaffId {
    StaffId::new("arn:aws:iam::000000000000:user/alice")
}

pub fn bob() -> StaffId {
    StaffId::new("arn:aws:iam::000000000000:user/bob")
}

/// Logs to the test's output when `RUST_LOG` is set (for debugging).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A fast configuration: short timeouts so redelivery happens in seconds.
pub fn config(practices: usize, patients: u64, seed: u64) -> LocalStackConfig {
    init_logs();
    let gateway = |i: u64| GatewayConfig {
        name: format!("sim-sms-{i}"),
        rate_per_second: 4_000.0,
        unit: RateUnit::Requests,
        latency: Duration::from_millis(1),
        latency_max: Duration::ZERO,
        failure_rate: 0.0,
        daily_limit: None,
        delivery_failure_rate: 0.05,
        receipt_delay: Duration::from_millis(20),
        seed: seed + i,
    };
    LocalStackConfig {
        transport: hub_local::Transport::Http,
        external: Default::default(),
        database: None,
        hub: HubConfig {
            chunk_size: 100,
            send_batch: 20,
            receipt_window: chrono::Duration::milliseconds(500),
            stale_after: chrono::Duration::seconds(5),
            send_deadline: Duration::from_secs(2),
            access: hub_core::domain::AccessPolicy::open(),
            local_gp_urls: true,
            ..HubConfig::default()
        },
        region: RegionSpec {
            practices,
            patients,
            seed,
        },
        sms_gateways: vec![gateway(1), gateway(2)],
        postal_gateway: GatewayConfig {
            name: "sim-post".into(),
            rate_per_second: 0.0,
            unit: RateUnit::Parts,
            ..GatewayConfig::new("sim-post")
        },
        visibility_timeout: Duration::from_secs(2),
        max_receive_count: 5,
        poll_interval: Duration::from_millis(10),
    }
}

pub fn request(message: &str) -> CreateCampaignRequest {
    CreateCampaignRequest {
        name: "Heatwave alert".into(),
        message: message.into(),
        target: TargetRequest::default(),
        optout_deadline: (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
        justification: "Level 4 heat-health alert for the region".into(),
        postal_fallback: true,
        one_message_per_mobile: false,
    }
}

/// Creates and approves a campaign and waits for every practice notice.
pub async fn create_and_approve(stack: &LocalStack, request: &CreateCampaignRequest) -> CampaignId {
    let hub = &stack.hub;
    let created = api::create_campaign(hub, &alice(), request)
        .await
        .expect("create");
    let id = created.campaign.id;
    api::approve(hub, &bob(), &id).await.expect("approve");
    wait_until(Duration::from_secs(30), || async {
        let parts = hub.store.list_participations(&id).await?;
        Ok(!parts.is_empty() && parts.iter().all(|p| p.notice_sent_at.is_some()))
    })
    .await
    .expect("notices sent");
    id
}

/// Brings the deadline forward to now, so the scheduler fires it.
pub async fn fire_deadline_now(stack: &LocalStack, id: &CampaignId) {
    hub_local::demo::bring_deadline_forward_now(&stack.hub, &alice(), &bob(), id)
        .await
        .expect("deadline moved");
}

pub async fn wait_for_state(
    stack: &LocalStack,
    id: &CampaignId,
    state: CampaignState,
    limit: Duration,
) -> CampaignReport {
    wait_until(limit, || async {
        Ok(stack.hub.campaign(id).await?.state == state)
    })
    .await
    .unwrap_or_else(|_| panic!("campaign did not reach {state} in {limit:?}"));
    api::report(&stack.hub, id).await.expect("report")
}

/// Waits up to `limit` for the campaign to complete, checks that its
/// report keeps the promises ([`assert_invariants`]) and returns it.
pub async fn completed_and_sound(
    stack: &Arc<LocalStack>,
    id: &CampaignId,
    limit: Duration,
) -> CampaignReport {
    let report = wait_for_state(stack, id, CampaignState::Completed, limit).await;
    assert_invariants(stack, &report).await;
    report
}

/// The promises of DESIGN.md, checked against the simulators' ground truth.
pub async fn assert_invariants(stack: &Arc<LocalStack>, report: &CampaignReport) {
    assert!(
        report.adds_up,
        "cohort = sent + letters + excluded: {:?}",
        report.totals
    );
    for practice in &report.practices {
        assert_eq!(
            practice.cohort,
            practice.sent + practice.letters + practice.excluded,
            "practice {} adds up",
            practice.ods
        );
    }
    assert_eq!(stack.duplicate_sends(), 0, "nobody got the campaign twice");
    assert_eq!(
        stack.texts_sent() as u64,
        report.totals.sent,
        "every accepted text is counted once"
    );

    // Who may be texted: the eligible patients of participating practices.
    let participating: HashSet<_> = report
        .practices
        .iter()
        .filter(|p| p.state == ParticipationState::Extracted)
        .map(|p| p.ods.clone())
        .collect();
    let mut eligible = HashSet::new();
    let mut forbidden = HashSet::new();
    for practice in stack.estate.practices() {
        for patient in stack.estate.patients(&practice.ods) {
            let Some(mobile) = patient
                .mobile
                .expose()
                .as_deref()
                .and_then(|m| UkMobile::parse(m).ok())
            else {
                continue;
            };
            let may = participating.contains(&practice.ods)
                && !patient.deceased
                && patient.contact_preference != ContactPreference::NoTelephoneContact
                && NhsNumber::parse(patient.nhs_number.expose()).is_ok();
            if may {
                eligible.insert(mobile);
            } else {
                forbidden.insert(mobile);
            }
        }
    }
    let mut wrongly_texted = 0;
    for mobile in forbidden.difference(&eligible) {
        wrongly_texted += stack
            .gateways
            .iter()
            .map(|g| g.sent_to(mobile))
            .sum::<usize>();
    }
    assert_eq!(
        wrongly_texted, 0,
        "no opted-out practice's patient, deceased patient, SMS opt-out or invalid record is texted"
    );
}

pub async fn assert_purged(stack: &LocalStack, id: &CampaignId) {
    let campaign = stack.hub.campaign(id).await.expect("campaign");
    assert!(campaign.purged_at.is_some(), "purge recorded");
    assert_eq!(stack.hub.patients.count_all().await.expect("count"), 0);
    let audit = stack.hub.store.list_audit(id).await.expect("audit");
    assert!(
        audit.iter().any(|e| e.action == "patient_data_purged"),
        "the purge is audited"
    );
}
