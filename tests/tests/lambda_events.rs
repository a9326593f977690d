//! The Lambda glue, driven with JSON event fixtures as Lambda delivers them.

use aws_lambda_events::event::sqs::SqsEvent;
use functions::lambda::{handle_sqs, sqs_messages};
use hub_core::domain::CampaignId;
use hub_core::http::Caller;
use hub_core::ports::QueueName;
use hub_local::LocalStack;
use hub_tests::config;
use tower::ServiceExt;

fn fixture() -> SqsEvent {
    serde_json::from_str(include_str!("../data/sqs_event.json")).expect("fixture parses")
}

#[test]
fn sqs_records_become_messages_with_their_receive_count() {
    let messages = sqs_messages(fixture()).expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].id, "11d6ee51-4cc7-4302-9e22-7cd8afdaadf5");
    assert_eq!(messages[0].receive_count, 3);
    assert_eq!(messages[1].receive_count, 1);
}

#[test]
fn a_record_without_an_id_fails_the_whole_batch() {
    let mut event = fixture();
    event.records[1].message_id = None;
    assert!(sqs_messages(event).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_failed_message_ids_are_reported() {
    // GIVEN a batch with a purge of an unknown campaign and an unparseable body
    let stack = LocalStack::start(config(2, 100, 5)).await.expect("stack");
    let response = handle_sqs(&stack.hub, QueueName::Purge, fixture(), 4)
        .await
        .expect("handled");
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // THEN both are failures (unknown campaign, unknown job) and nothing is skipped
    assert_eq!(failed.len(), 2, "{failed:?}");
    let json = serde_json::to_value(&response).expect("serialises");
    assert!(json["batchItemFailures"][0]["itemIdentifier"].is_string());

    // AND a batch of one good message reports nothing
    let (id, event) = cancelled_campaigns_purge(&stack).await;
    let response = handle_sqs(&stack.hub, QueueName::Purge, event, 4)
        .await
        .expect("handled");
    assert!(response.batch_item_failures.is_empty());
    let campaign = stack.hub.campaign(&id).await.expect("campaign");
    assert!(campaign.purged_at.is_some(), "the purge ran");
}

/// A cancelled campaign, and an SQS event of one message: its purge job.
async fn cancelled_campaigns_purge(stack: &LocalStack) -> (CampaignId, SqsEvent) {
    let created = hub_core::handlers::api::create_campaign(
        &stack.hub,
        &hub_tests::alice(),
        &hub_tests::request("Stay safe: www.nhs.uk"),
    )
    .await
    .expect("campaign");
    let id = created.campaign.id;
    hub_core::handlers::api::cancel(&stack.hub, &hub_tests::bob(), &id, "test")
        .await
        .expect("cancelled");
    let mut event = fixture();
    event.records.truncate(1);
    event.records[0].body = Some(format!("{{\"job\":\"purge\",\"campaign\":\"{id}\"}}"));
    (id, event)
}

/// The API Gateway (REST) fixture with `body` as its body.
fn api_gateway_event(body: &str) -> lambda_http::Request {
    let event = include_str!("../data/apigw_create_campaign.json")
        .replace("\"BODY\"", &serde_json::to_string(body).expect("quoted"));
    lambda_http::request::from_str(&event).expect("API Gateway event parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_refuses_the_jobs_of_another_queue() {
    // GIVEN a cancelled campaign whose purge job arrives at the send function
    let stack = LocalStack::start(config(2, 100, 7)).await.expect("stack");
    let (id, event) = cancelled_campaigns_purge(&stack).await;
    let response = handle_sqs(&stack.hub, QueueName::Send, event.clone(), 4)
        .await
        .expect("handled");
    // THEN it is reported failed and the purge did not run
    assert_eq!(response.batch_item_failures.len(), 1);
    let campaign = stack.hub.campaign(&id).await.expect("campaign");
    assert!(
        campaign.purged_at.is_none(),
        "the send function ran a purge"
    );
    // AND the purge function runs it
    let response = handle_sqs(&stack.hub, QueueName::Purge, event, 4)
        .await
        .expect("handled");
    assert!(response.batch_item_failures.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_gateway_request_reaches_the_router_as_its_iam_caller() {
    let stack = LocalStack::start(config(2, 100, 6)).await.expect("stack");
    let body = serde_json::to_string(&hub_tests::request("Stay safe: www.nhs.uk")).expect("json");
    // lambda_http puts the stage in front of the path; the router matches
    // the resource path.
    assert_eq!(api_gateway_event(&body).uri().path(), "/prod/campaigns");
    let request = functions::lambda::from_api_gateway(api_gateway_event(&body));
    assert_eq!(request.uri().path(), "/campaigns");
    let caller =
        "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_HubRequester_0a1b2c3d/alice@nhs.net";
    assert_eq!(
        request
            .extensions()
            .get::<Caller>()
            .map(|Caller(c)| c.as_str()),
        Some(caller)
    );

    let service = functions::lambda::api_gateway(hub_core::http::router(stack.hub.clone()));
    let response = service
        .oneshot(api_gateway_event(&body))
        .await
        .unwrap_or_else(|never| match never {});
    let response = hub_tests::requests::ApiResponse::read(response).await;
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let campaigns = stack.hub.store.list_campaigns().await.expect("list");
    assert_eq!(campaigns.len(), 1);
    assert_eq!(
        campaigns[0].created_by.as_str(),
        "identity-center:123456789012:alice@nhs.net",
        "the audit names the person behind the IAM caller"
    );
}

#[test]
fn invocation_errors_reach_lambda_typed_with_their_causes() {
    use functions::lambda::InvocationError;
    use hub_core::handlers::JobError;
    use hub_core::ports::StoreError;
    use lambda_runtime::Diagnostic;
    let wrong: Diagnostic = InvocationError::WrongEvent("a purge action").into();
    assert_eq!(wrong.error_type, "WrongEvent");
    assert_eq!(
        wrong.error_message,
        "this function does not take a purge action"
    );
    let gone: Diagnostic =
        InvocationError::Job(JobError::Store(StoreError::NotFound("campaign x".into()))).into();
    assert_eq!(gone.error_type, "NotRetryable");
    let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let busy: Diagnostic = InvocationError::Job(JobError::Store(StoreError::unavailable_because(
        "Query on DynamoDB",
        io,
    )))
    .into();
    assert_eq!(busy.error_type, "Retryable");
    assert_eq!(
        busy.error_message, "store: store unavailable: Query on DynamoDB: timed out",
        "the cause is kept"
    );
}
