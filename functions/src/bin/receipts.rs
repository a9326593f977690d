//! The receipts function: GOV.UK Notify delivery-status callbacks, behind a
//! public API Gateway route checked with our bearer token.

use functions::lambda::{api_gateway, init_tracing};
use functions::wiring::{callback_token, hub_with_secrets, secrets_from_env, Function};
use hub_core::http::receipts_router;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let secrets = secrets_from_env().await;
    let token = callback_token(secrets.as_ref()).await?;
    let hub = hub_with_secrets(Function::Receipts, secrets).await?;
    let router = receipts_router(hub, token, hub_adapters::notify::parse_callback);
    lambda_http::run(api_gateway(router)).await
}
