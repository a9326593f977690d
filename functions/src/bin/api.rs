//! The api function: the staff router (hub_core::http) behind API Gateway.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::lambda::run_http_function(false).await
}
