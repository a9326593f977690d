//! The api function: the staff API's router (hub_core::http) behind API Gateway.

use functions::lambda::{api_gateway, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let hub = functions::wiring::hub_from_env(functions::wiring::Function::Api).await?;
    lambda_http::run(api_gateway(hub_core::http::router(hub))).await
}
