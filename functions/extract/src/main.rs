//! The extract function: SQS-triggered; see shared::handlers.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::run_sqs_function(1).await
}
