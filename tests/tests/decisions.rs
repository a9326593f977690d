//! Decisions that reach patients: replay-safe creates, and two people on
//! every change of the opt-out window.

use hub_core::domain::StaffId;
use hub_core::http;
use hub_local::LocalStack;
use hub_tests::requests::{send, ApiRequest, ApiResponse};
use hub_tests::*;
use serde_json::{json, Value};

fn create_body(name: &str) -> Value {
    json!({
        "name": name,
        "message": "NHS: a heat-health alert applies. See https://www.nhs.uk/",
        "optout_deadline": "2099-01-01T00:00:00Z",
        "justification": "Level 4 heat-health alert for the region",
    })
}

async fn create(stack: &LocalStack, who: &StaffId, key: &str, body: &Value) -> ApiResponse {
    let mut request = ApiRequest::new("POST", "/campaigns").caller(who).json(body);
    request.headers.push(("idempotency-key".into(), key.into()));
    send(&http::router(stack.hub.clone()), request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_create_returns_the_first_campaign() {
    let mut config = config(2, 100, 51);
    config.hub.max_deadline_ahead = chrono::Duration::days(365 * 100);
    let stack = LocalStack::start(config).await.expect("stack");
    let key = "6f1c2a9e-4d4b-4c47-9a53-0d2f5e7b8c11";
    let body = create_body("Heatwave alert");

    // GIVEN a create with an idempotency key
    let first = create(&stack, &alice(), key, &body).await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let first_id = first.json_body().expect("JSON")["campaign"]["id"].clone();

    // WHEN the same signed request is sent again
    let again = create(&stack, &alice(), key, &body).await;

    // THEN the answer is the first campaign, and only one exists
    assert_eq!(again.status, 201);
    assert_eq!(again.json_body().expect("JSON")["campaign"]["id"], first_id);
    assert_eq!(again.headers[http::REPLAYED], "true");
    assert!(first.headers.get(http::REPLAYED).is_none());
    let campaigns = stack.hub.store.list_campaigns().await.expect("list");
    assert_eq!(campaigns.len(), 1);
    let audit = stack
        .hub
        .store
        .list_audit(&campaigns[0].id)
        .await
        .expect("audit");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "campaign_created")
            .count(),
        1
    );

    // AND the key used for a different campaign is a conflict, not a replay
    let other = create(&stack, &alice(), key, &create_body("Another alert")).await;
    assert_eq!(
        other.status,
        409,
        "{}",
        String::from_utf8_lossy(&other.body)
    );
    // AND another person's key is their own
    let bobs = create(&stack, &bob(), key, &body).await;
    assert_eq!(bobs.status, 201);
    assert_ne!(bobs.json_body().expect("JSON")["campaign"]["id"], first_id);
    // AND a key that is not one is refused, naming the header
    let bad = create(&stack, &alice(), "short", &body).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json_body().expect("JSON")["field"], "Idempotency-Key");
    assert_eq!(
        stack.hub.store.list_campaigns().await.expect("list").len(),
        2
    );
}

fn carol() -> StaffId {
    StaffId::new("arn:aws:iam::000000000000:user/carol")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_creator_alone_cannot_shorten_the_opt_out_window() {
    use hub_core::handlers::api::{self, ApiError};
    let mut config = config(3, 300, 52);
    config.hub.min_optout_window = chrono::Duration::minutes(30);
    let stack = LocalStack::start(config).await.expect("stack");
    let hub = &stack.hub;

    // GIVEN a campaign changed after creation: the approval must name the
    // version it saw
    let created = api::create_campaign(hub, &alice(), &request("NHS: heat alert. See www.nhs.uk"))
        .await
        .expect("create");
    let id = created.campaign.id.clone();
    let later = (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
    let moved = api::reschedule_deadline(hub, &alice(), &id, &later, None)
        .await
        .expect("a pending campaign's deadline moves at once");
    assert!(moved.version > created.campaign.version);
    let stale = api::approve_seen(hub, &bob(), &id, Some(created.campaign.version)).await;
    assert!(matches!(stale, Err(ApiError::Conflict(_))), "{stale:?}");
    api::approve_seen(hub, &bob(), &id, Some(moved.version))
        .await
        .expect("the version seen is approved");
    // (asking again re-derives the schedule and notices: retry-safe)
    api::approve(hub, &bob(), &id).await.expect("approve again");
    hub_local::demo::wait_until(std::time::Duration::from_secs(30), || async {
        let parts = hub.store.list_participations(&id).await?;
        Ok(!parts.is_empty() && parts.iter().all(|p| p.notice_sent_at.is_some()))
    })
    .await
    .expect("notices sent");
    let deadline = hub.campaign(&id).await.expect("campaign").optout_deadline;
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();

    // WHEN the creator alone brings it forward: no reason, no change
    let unreasoned = api::reschedule_deadline(hub, &alice(), &id, &soon, None).await;
    assert!(
        matches!(&unreasoned, Err(ApiError::Validation(e)) if e[0].field == "reason"),
        "{unreasoned:?}"
    );
    // with a reason, it waits for a second person
    let asked = api::reschedule_deadline(hub, &alice(), &id, &soon, Some("the alert was upgraded"))
        .await
        .expect("asked");
    assert_eq!(asked.optout_deadline, deadline, "unchanged until approved");
    let to = asked.deadline_change.expect("waiting").to;
    let own =
        api::approve_deadline_change(hub, &alice(), &id, &to.to_rfc3339(), true, Some("x")).await;
    assert!(matches!(own, Err(ApiError::Forbidden(_))), "{own:?}");

    // THEN a second person approves only what was asked ...
    let other_time = (to + chrono::Duration::minutes(1)).to_rfc3339();
    let differs = api::approve_deadline_change(hub, &bob(), &id, &other_time, false, None).await;
    assert!(matches!(differs, Err(ApiError::Conflict(_))), "{differs:?}");
    // ... never sooner than the minimum after the notices ...
    let too_soon =
        api::approve_deadline_change(hub, &bob(), &id, &to.to_rfc3339(), false, None).await;
    assert!(
        matches!(&too_soon, Err(ApiError::Conflict(m)) if m.contains("emergency override")),
        "{too_soon:?}"
    );
    let no_reason =
        api::approve_deadline_change(hub, &bob(), &id, &to.to_rfc3339(), true, None).await;
    assert!(
        matches!(no_reason, Err(ApiError::Validation(_))),
        "{no_reason:?}"
    );
    assert_eq!(
        hub.campaign(&id).await.expect("campaign").optout_deadline,
        deadline
    );

    // ... a deadline past the minimum is approved without an override ...
    let fair = (chrono::Utc::now() + chrono::Duration::minutes(45)).to_rfc3339();
    let asked = api::reschedule_deadline(
        hub,
        &carol(),
        &id,
        &fair,
        Some("agreed at the incident call"),
    )
    .await
    .expect("asked");
    let to = asked.deadline_change.expect("waiting").to;
    let approved = api::approve_deadline_change(hub, &bob(), &id, &to.to_rfc3339(), false, None)
        .await
        .expect("approved");
    assert_eq!(approved.optout_deadline, to);
    assert!(approved.deadline_change.is_none());

    // ... and sooner only with an emergency override and its reason
    let asked = api::reschedule_deadline(
        hub,
        &alice(),
        &id,
        &chrono::Utc::now().to_rfc3339(),
        Some("casualties rising"),
    )
    .await
    .expect("asked");
    let to = asked.deadline_change.expect("waiting").to;
    api::approve_deadline_change(
        hub,
        &bob(),
        &id,
        &to.to_rfc3339(),
        true,
        Some("cannot wait"),
    )
    .await
    .expect("override");
    wait_for_state(
        &stack,
        &id,
        hub_core::domain::CampaignState::Completed,
        std::time::Duration::from_secs(120),
    )
    .await;

    let audit = hub.store.list_audit(&id).await.expect("audit");
    let changes: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "deadline_changed")
        .collect();
    assert_eq!(changes.len(), 3, "one before approval, two approved");
    assert_eq!(changes[1].actor, bob().as_str());
    assert_eq!(changes[1].detail["requested_by"], carol().as_str());
    assert_eq!(changes[1].detail["emergency_override"], false);
    assert_eq!(changes[2].detail["emergency_override"], true);
    assert_eq!(changes[2].detail["reason"], "casualties rising");
    assert_eq!(changes[2].detail["override_reason"], "cannot wait");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "deadline_change_requested")
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_changes_that_reach_patients_need_a_second_person() {
    use hub_core::handlers::api::{self, ApiError, PracticeRequest, PracticeSaved};
    use hub_core::ports::GpConnection;
    let mut config = config(2, 100, 53);
    // As deployed: GP systems must be public https addresses.
    config.hub.local_gp_urls = false;
    let stack = LocalStack::start(config).await.expect("stack");
    let hub = &stack.hub;
    let ods = stack.estate.practices()[0].ods.clone();
    let before = hub
        .store
        .get_practice(&ods)
        .await
        .expect("read")
        .expect("practice");
    let request = |email: &str, url: &str| PracticeRequest {
        ods: ods.to_string(),
        name: before.name.clone(),
        notice_email: email.into(),
        dsa_signed: before.dsa_signed.map(|d| d.to_string()),
        connection: Some(GpConnection::Fhir {
            base_url: url.into(),
            bulk_export: false,
            secret: None,
            patient_search: Default::default(),
            link_base: None,
        }),
        list_size: before.list_size,
    };

    // GIVEN a registry admin pointing the practice somewhere internal: refused
    let internal = api::put_practice(
        hub,
        &alice(),
        &request("attacker@evil.example", "http://169.254.169.254/"),
    )
    .await;
    assert!(
        matches!(&internal, Err(ApiError::Validation(e)) if e[0].field == "connection.base_url"),
        "{internal:?}"
    );

    // WHEN they change its notice address and GP system
    let saved = api::put_practice(
        hub,
        &alice(),
        &request(
            "new-manager@example.nhs.uk",
            "https://gp.example.nhs.uk/fhir",
        ),
    )
    .await
    .expect("asked");
    let PracticeSaved::AwaitingApproval(change) = saved else {
        panic!("a change reaching patients is saved at once: {saved:?}");
    };
    assert_eq!(change.fields, ["notice_email", "connection"]);

    // THEN nothing changes until a second person approves what was asked
    assert_eq!(
        hub.store.get_practice(&ods).await.expect("read"),
        Some(before.clone())
    );
    let own = api::approve_practice_change(hub, &alice(), &ods, &change.change_id).await;
    assert!(matches!(own, Err(ApiError::Forbidden(_))), "{own:?}");
    let other = api::approve_practice_change(hub, &bob(), &ods, "000000000000").await;
    assert!(matches!(other, Err(ApiError::Conflict(_))), "{other:?}");
    let approved = api::approve_practice_change(hub, &bob(), &ods, &change.change_id)
        .await
        .expect("approved");
    assert_eq!(approved.notice_email, "new-manager@example.nhs.uk");
    assert_eq!(
        hub.store.get_practice(&ods).await.expect("read"),
        Some(approved)
    );
    assert!(api::pending_practice_changes(hub)
        .await
        .expect("pending")
        .is_empty());

    // AND the old notice address is told
    let told: Vec<_> = stack
        .gateways
        .iter()
        .chain(std::iter::once(&stack.postal))
        .flat_map(|g| g.emails())
        .filter(|(to, subject, _)| {
            *to == before.notice_email && subject.contains("Notice address changed")
        })
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    let audit = hub.store.list_hub_audit().await.expect("audit");
    let approval = audit
        .iter()
        .find(|e| e.action == "practice_change_approved")
        .expect("audited");
    assert_eq!(approval.actor, bob().as_str());
    assert_eq!(approval.detail["requested_by"], alice().as_str());
    assert_eq!(approval.detail["old_notice_address_told"], true);
    // (an approved change cannot be approved twice)
    let again = api::approve_practice_change(hub, &bob(), &ods, &change.change_id).await;
    assert!(matches!(again, Err(ApiError::Conflict(_))), "{again:?}");
}

/// Practice notices sent so far: (to, subject, reference).
fn notices(stack: &LocalStack) -> Vec<(String, String, String)> {
    stack
        .gateways
        .iter()
        .chain(std::iter::once(&stack.postal))
        .flat_map(|g| g.emails())
        .filter(|(_, subject, _)| subject.starts_with("Emergency SMS to your patients"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bringing_the_deadline_forward_tells_each_practice_once() {
    use hub_core::handlers::api;
    use std::time::Duration;
    let stack = LocalStack::start(config(3, 150, 53)).await.expect("stack");
    let hub = &stack.hub;
    let id = create_and_approve(&stack, &request("NHS: heat alert. See www.nhs.uk")).await;
    hub_local::demo::wait_until(Duration::from_secs(30), || async {
        let parts = hub.store.list_participations(&id).await?;
        Ok(!parts.is_empty() && parts.iter().all(|p| p.notice_sent_at.is_some()))
    })
    .await
    .expect("notices sent");
    let first = notices(&stack);
    assert_eq!(first.len(), 3, "{first:?}");

    // GIVEN one practice opted out, and the deadline moved later (no new
    // notice: the link outlives it)
    let opted_out = hub.store.list_participations(&id).await.expect("parts")[0]
        .ods
        .clone();
    api::record_opt_out(hub, bob().as_str(), &id, opted_out.as_str())
        .await
        .expect("opted out");
    let later = (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
    api::reschedule_deadline(hub, &alice(), &id, &later, None)
        .await
        .expect("later");

    // WHEN a second person approves bringing it forward
    let sooner = (chrono::Utc::now() + chrono::Duration::minutes(90)).to_rfc3339();
    let asked =
        api::reschedule_deadline(hub, &alice(), &id, &sooner, Some("the alert was upgraded"))
            .await
            .expect("asked");
    let to = asked.deadline_change.expect("waiting").to;
    api::approve_deadline_change(
        hub,
        &bob(),
        &id,
        &to.to_rfc3339(),
        true,
        Some("cannot wait"),
    )
    .await
    .expect("approved");

    // THEN each practice still in gets one new notice naming the new
    // deadline; the one that opted out gets none
    hub_local::demo::wait_until(Duration::from_secs(30), || async {
        Ok(notices(&stack).len() >= 5)
    })
    .await
    .expect("new notices sent");
    let parts = hub.store.list_participations(&id).await.expect("parts");
    for part in &parts {
        let expected = (part.ods != opted_out).then_some(to);
        let told = part.notice_deadline.filter(|d| *d == to);
        assert_eq!(told, expected, "{}: {part:?}", part.ods);
    }
    let updates: Vec<_> = notices(&stack)
        .into_iter()
        .filter(|(_, subject, _)| subject.contains("brought forward"))
        .collect();
    assert_eq!(updates.len(), 2, "{updates:?}");

    // AND asking again (a retried approval, a redelivered job) sends no
    // more: the notices are derived from the stored state
    let campaign = hub.campaign(&id).await.expect("campaign");
    api::arrange_window(hub, &campaign).await.expect("again");
    for part in &parts {
        hub.queue
            .send(&[hub_core::ports::Job::Notice {
                campaign: id.clone(),
                ods: part.ods.clone(),
            }])
            .await
            .expect("queued");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(notices(&stack).len(), 5, "no notice twice");
    let audit = hub.store.list_audit(&id).await.expect("audit");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "practice_notified_of_earlier_deadline")
            .count(),
        2
    );
}
