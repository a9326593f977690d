//! The practice-notices function: SQS-triggered; see shared::handlers.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::run_sqs_function(4).await
}
