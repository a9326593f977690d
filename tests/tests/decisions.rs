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
