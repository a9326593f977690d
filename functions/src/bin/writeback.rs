//! The writeback function: SQS-triggered; see hub_core::handlers.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::lambda::run_sqs_function(hub_core::ports::QueueName::Writeback, 4).await
}
