//! The optout-link function: the practice's opt-out link behind a public
//! API Gateway route; only the public routes (hub_core::http), every other
//! path a 404.

use functions::lambda::{api_gateway, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let hub = functions::wiring::hub_from_env(functions::wiring::Function::OptoutLink).await?;
    lambda_http::run(api_gateway(hub_core::http::public_router(hub))).await
}
