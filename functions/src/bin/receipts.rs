//! The receipts function: GOV.UK Notify delivery-status callbacks, behind a
//! public API Gateway route checked with our bearer token.

use functions::lambda::{api_gateway, init_tracing};
use hub_core::http::receipts_router;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let wired = functions::wiring::hub_from_env().await?;
    let router = receipts_router(
        wired.hub,
        wired.callback_token,
        hub_adapters::notify::parse_callback,
    );
    lambda_http::run(api_gateway(router)).await
}
