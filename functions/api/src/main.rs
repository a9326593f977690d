//! The api function: the staff router (shared::http) behind API Gateway.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::run_http_function(false).await
}
