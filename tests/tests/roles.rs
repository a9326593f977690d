//! Roles from the caller's IAM identity: every staff operation against
//! every role (and none), through the router the api function serves.

use hub_core::domain::{AccessPolicy, AuditEvent, CampaignId, Role};
use hub_local::LocalStack;
use hub_tests::requests::{send, ApiRequest, ApiResponse};
use hub_tests::*;
use serde_json::{json, Value};
use std::sync::Arc;

const ACCOUNT: &str = "111122223333";

fn sso(permission_set: &str, user: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_{permission_set}_5f1e2d3c/{user}")
}

/// One caller per role, one with none, and a self-named session of a role
/// that does hold the requester role.
fn callers() -> Vec<(&'static str, String, Option<Role>)> {
    vec![
        (
            "requester",
            sso("HubRequester", "rita@nhs.net"),
            Some(Role::Requester),
        ),
        (
            "approver",
            sso("HubApprover", "arthur@nhs.net"),
            Some(Role::Approver),
        ),
        (
            "registry_admin",
            format!("arn:aws:iam::{ACCOUNT}:user/regina"),
            Some(Role::RegistryAdmin),
        ),
        (
            "auditor",
            sso("HubAuditor", "audrey@nhs.net"),
            Some(Role::Auditor),
        ),
        (
            "nobody",
            format!("arn:aws:iam::{ACCOUNT}:user/nobody"),
            None,
        ),
    ]
}

fn policy() -> AccessPolicy {
    AccessPolicy::parse(
        "requester=AWSReservedSSO_HubRequester_*,hub-automation;\
         approver=AWSReservedSSO_HubApprover_*;\
         registry_admin=user/regina;\
         auditor=AWSReservedSSO_HubAuditor_*",
    )
    .expect("policy")
}

struct Operation {
    method: &'static str,
    path: String,
    body: Option<Value>,
    allowed: &'static [Role],
    /// Refusals name this.
    needed: &'static str,
}

const ANY: &[Role] = &Role::ALL;

fn operations(id: &CampaignId, ods: &str) -> Vec<Operation> {
    let create = json!({
        "name": "Heatwave alert",
        "message": "NHS: a heat-health alert applies. See https://www.nhs.uk/",
        "optout_deadline": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
        "justification": "Level 4 heat-health alert for the region",
    });
    let any = "a staff role";
    let op = |method, path: String, body, allowed, needed| Operation {
        method,
        path,
        body,
        allowed,
        needed,
    };
    vec![
        op("GET", "/campaigns".into(), None, ANY, any),
        op(
            "POST",
            "/campaigns".into(),
            Some(create.clone()),
            &[Role::Requester],
            "the requester role",
        ),
        op(
            "POST",
            "/campaigns?dry_run=true".into(),
            Some(create),
            &[Role::Requester],
            "the requester role",
        ),
        op("GET", format!("/campaigns/{id}"), None, ANY, any),
        op("GET", format!("/campaigns/{id}/report"), None, ANY, any),
        op("GET", format!("/campaigns/{id}/audit"), None, ANY, any),
        op("GET", format!("/campaigns/{id}/evidence"), None, ANY, any),
        op("GET", "/practices".into(), None, ANY, any),
        op("GET", "/practices/audit".into(), None, ANY, any),
        op(
            "POST",
            format!("/campaigns/{id}/opt-outs"),
            Some(json!({ "ods": ods })),
            &[Role::Requester, Role::Approver],
            "the requester or approver role",
        ),
        op(
            "POST",
            format!("/campaigns/{id}/deadline"),
            Some(json!({
                "optout_deadline": (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339(),
            })),
            &[Role::Requester, Role::Approver],
            "the requester or approver role",
        ),
        op(
            "POST",
            format!("/campaigns/{id}/deadline/approve"),
            Some(json!({
                "optout_deadline": (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339(),
            })),
            &[Role::Approver],
            "the approver role",
        ),
        op(
            "PUT",
            format!("/practices/{ods}"),
            Some(json!({
                "ods": ods,
                "name": "Renamed Surgery",
                "notice_email": "attacker@evil.example",
            })),
            &[Role::RegistryAdmin],
            "the registry_admin role",
        ),
        op(
            "POST",
            format!("/practices/{ods}/approve"),
            Some(json!({ "change_id": "000000000000" })),
            &[Role::RegistryAdmin],
            "the registry_admin role",
        ),
        op(
            "POST",
            format!("/campaigns/{id}/extraction-decisions"),
            Some(json!({ "ods": ods, "decision": "proceed" })),
            &[Role::Approver],
            "the approver role",
        ),
        op(
            "POST",
            format!("/campaigns/{id}/cancel"),
            Some(json!({ "reason": "stood down by the incident lead" })),
            &[Role::Requester, Role::Approver],
            "the requester or approver role",
        ),
    ]
}

async fn call(stack: &LocalStack, who: &str, op: &Operation) -> ApiResponse {
    let mut request =
        ApiRequest::new(op.method, &op.path).caller(&hub_core::domain::StaffId::new(who));
    if let Some(body) = &op.body {
        request = request.json(body);
    }
    send(&hub_core::http::router(stack.hub.clone()), request).await
}

/// Everything a refused request must leave alone.
async fn snapshot(stack: &LocalStack, id: &CampaignId) -> Value {
    let hub = &stack.hub;
    json!({
        "campaigns": hub.store.list_campaigns().await.expect("campaigns"),
        "participations": hub.store.list_participations(id).await.expect("participations"),
        "practices": hub.store.list_practices().await.expect("practices"),
    })
}

async fn refusals(stack: &LocalStack, id: &CampaignId) -> Vec<AuditEvent> {
    let hub = &stack.hub;
    let mut events = hub.store.list_audit(id).await.expect("audit");
    events.extend(hub.store.list_hub_audit().await.expect("hub audit"));
    events.retain(|e| e.action == "access_refused");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_is_refused_for_every_role_that_lacks_it() {
    let mut config = config(2, 200, 41);
    config.hub.access = policy();
    let stack = Arc::new(LocalStack::start(config).await.expect("stack"));
    let ods = stack.estate.practices()[0].ods.to_string();
    let requester = sso("HubRequester", "rita@nhs.net");
    let approver = sso("HubApprover", "arthur@nhs.net");

    // GIVEN a campaign created and approved through the API by two people
    let create = &operations(&CampaignId::new(), &ods)[1];
    let created = call(&stack, &requester, create).await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let id = CampaignId::parse(
        created.json_body().expect("JSON")["campaign"]["id"]
            .as_str()
            .expect("id"),
    )
    .expect("campaign id");
    let approve = ApiRequest::new("POST", &format!("/campaigns/{id}/approve"))
        .caller(&hub_core::domain::StaffId::new(&approver))
        .json(&json!({ "version": 0 }));
    let approved = send(&hub_core::http::router(stack.hub.clone()), approve).await;
    assert_eq!(
        approved.status,
        200,
        "{}",
        String::from_utf8_lossy(&approved.body)
    );
    // (the notices go out in the background: wait, so they are not a change)
    hub_local::demo::wait_until(std::time::Duration::from_secs(30), || async {
        let parts = stack.hub.store.list_participations(&id).await?;
        Ok(!parts.is_empty() && parts.iter().all(|p| p.notice_sent_at.is_some()))
    })
    .await
    .expect("notices sent");

    let mut operations = operations(&id, &ods);
    operations.insert(
        4,
        Operation {
            method: "POST",
            path: format!("/campaigns/{id}/approve"),
            body: Some(json!({ "version": 0 })),
            allowed: &[Role::Approver],
            needed: "the approver role",
        },
    );
    for op in &operations {
        for (label, who, role) in callers() {
            if role.is_some_and(|r| op.allowed.contains(&r)) {
                continue;
            }
            // WHEN a caller without the role asks
            let before = snapshot(&stack, &id).await;
            let audited = refusals(&stack, &id).await.len();
            let response = call(&stack, &who, op).await;

            // THEN a 403 names the missing role, nothing changed, and the
            // refusal is audited with who asked
            assert_eq!(
                response.status,
                403,
                "{label} {} {}: {}",
                op.method,
                op.path,
                String::from_utf8_lossy(&response.body)
            );
            let body = response.json_body().expect("JSON error");
            assert_eq!(body["code"], "forbidden");
            let message = body["message"].as_str().expect("message");
            assert!(
                message.contains(op.needed) && message.contains(&who),
                "{label} {} {}: {message}",
                op.method,
                op.path
            );
            assert_eq!(
                snapshot(&stack, &id).await,
                before,
                "{label} {} {}",
                op.method,
                op.path
            );
            let events = refusals(&stack, &id).await;
            assert_eq!(
                events.len(),
                audited + 1,
                "{label} {} {}",
                op.method,
                op.path
            );
            let event = events
                .iter()
                .find(|e| {
                    e.actor == who
                        && e.detail["method"] == op.method
                        && e.detail["path"] == op.path.split('?').next().unwrap_or_default()
                })
                .expect("the refusal is audited");
            assert_eq!(
                event.detail["needed"]
                    .as_str()
                    .map(|n| n.contains(op.needed)),
                Some(true)
            );
        }
    }

    // AND every operation is allowed for a role that holds it (the last,
    // cancel, ends the campaign)
    for op in &operations {
        let role = op.allowed[0];
        let (_, who, _) = callers()
            .into_iter()
            .find(|(_, _, r)| *r == Some(role))
            .expect("a caller with the role");
        if op.path.ends_with("/approve") {
            // Approved already, or nothing waiting: the state machine, not
            // the role, refuses.
            continue;
        }
        let response = call(&stack, &who, op).await;
        if op.path.ends_with("/extraction-decisions") {
            // No practice is held: the role is accepted and the state
            // machine answers.
            assert_eq!(response.status, 409, "{role} {} {}", op.method, op.path);
            continue;
        }
        assert!(
            response.status < 300,
            "{role} {} {}: {} {}",
            op.method,
            op.path,
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_self_named_session_is_not_a_person() {
    let mut config = config(2, 200, 42);
    config.hub.access = policy();
    let stack = LocalStack::start(config).await.expect("stack");
    let session = format!("arn:aws:sts::{ACCOUNT}:assumed-role/hub-automation/arthur@nhs.net");
    let create = &operations(&CampaignId::new(), "A00000")[1];
    let before = stack.hub.store.list_campaigns().await.expect("campaigns");
    let response = call(&stack, &session, create).await;
    assert_eq!(response.status, 403);
    let message = response.json_body().expect("JSON")["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(message.contains("not a person"), "{message}");
    assert_eq!(
        stack.hub.store.list_campaigns().await.expect("campaigns"),
        before
    );
    let refusals = stack.hub.store.list_hub_audit().await.expect("audit");
    assert!(refusals.iter().any(|e| e.action == "access_refused"
        && e.actor == session
        && e.detail["missing"] == "person"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_person_in_two_permission_sets_cannot_approve_their_own_campaign() {
    let mut config = config(2, 200, 43);
    config.hub.access = policy();
    let stack = LocalStack::start(config).await.expect("stack");
    let router = hub_core::http::router(stack.hub.clone());
    let create = &operations(&CampaignId::new(), "A00000")[1];
    let created = call(&stack, &sso("HubRequester", "rita@nhs.net"), create).await;
    assert_eq!(created.status, 201);
    let id = created.json_body().expect("JSON")["campaign"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    // The same Identity Center user, signed in with the approver permission
    // set (Identity Center names the session after the user).
    let same_person = sso("HubApprover", "Rita@nhs.net");
    let response = send(
        &router,
        ApiRequest::new("POST", &format!("/campaigns/{id}/approve"))
            .caller(&hub_core::domain::StaffId::new(&same_person))
            .json(&json!({ "version": 0 })),
    )
    .await;
    assert_eq!(
        response.status,
        403,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(String::from_utf8_lossy(&response.body).contains("different person"));
    let campaign = stack
        .hub
        .store
        .get_campaign(&CampaignId::parse(&id).expect("id"))
        .await
        .expect("read")
        .expect("campaign");
    assert_eq!(
        campaign.state,
        hub_core::domain::CampaignState::PendingApproval
    );
    assert_eq!(
        campaign.created_by.as_str(),
        format!("identity-center:{ACCOUNT}:rita@nhs.net")
    );
}
