//! The purge function: SQS messages (a campaign finished or was cancelled)
//! and the daily safety-net sweep from EventBridge Scheduler, with the
//! watchdog (`hub_core::handlers::watchdog`).

use aws_lambda_events::event::sqs::SqsEvent;
use functions::lambda::{InvocationError, Redelivery};
use hub_core::handlers::{purge, watchdog, Hub};
use hub_core::ports::QueueName;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

async fn handle(
    hub: &Hub,
    redelivery: &Redelivery,
    event: Value,
) -> Result<Value, InvocationError> {
    if event.get("Records").is_some() {
        let event: SqsEvent =
            serde_json::from_value(event).map_err(|source| InvocationError::Unreadable {
                expected: "an SQS event",
                source,
            })?;
        let response = functions::lambda::handle_sqs_redelivering(
            hub,
            QueueName::Purge,
            event,
            2,
            redelivery,
            &functions::metrics::Metrics::process(),
        )
        .await?;
        return Ok(serde_json::json!(response));
    }
    // The watchdog runs with every sweep, and on its own when a schedule
    // sends `{"action": "watchdog"}`.
    let run = watchdog::watchdog(hub).await?;
    if event.get("action").and_then(Value::as_str) == Some("watchdog") {
        return Ok(serde_json::json!({ "watchdog": format!("{run:?}") }));
    }
    let purged = purge::purge_sweep(hub).await?;
    tracing::info!(purged, "daily purge sweep");
    Ok(serde_json::json!({ "purged_campaigns": purged, "watchdog": format!("{run:?}") }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    functions::lambda::init_tracing();
    let hub = functions::wiring::hub_from_env(functions::wiring::Function::Purge).await?;
    let hub = &hub;
    let redelivery = &functions::wiring::redelivery_from_env(QueueName::Purge).await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        handle(hub, redelivery, event.payload).await
    }))
    .await
}
