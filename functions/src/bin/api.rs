//! The api function: the staff API's router (hub_core::http) behind API Gateway.

use functions::lambda::{api_gateway, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let wired = functions::wiring::hub_from_env().await?;
    lambda_http::run(api_gateway(hub_core::http::router(wired.hub))).await
}
