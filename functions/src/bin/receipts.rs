//! The receipts function: GOV.UK Notify delivery-status callbacks, behind a
//! public API Gateway route checked with our bearer token.

use hub_core::handlers::receipts::handle_delivery_callback;
use lambda_http::{service_fn, Body, Error, Request, Response};

#[tokio::main]
async fn main() -> Result<(), Error> {
    functions::lambda::init_tracing();
    let wired = functions::wiring::hub_from_env().await?;
    let (hub, token) = (&wired.hub, &wired.callback_token);
    lambda_http::run(service_fn(|request: Request| async move {
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let status = handle_delivery_callback(
            hub,
            authorization,
            request.body(),
            token,
            hub_adapters::notify::parse_callback,
        )
        .await;
        Ok::<_, Error>(Response::builder().status(status).body(Body::Empty)?)
    }))
    .await
}
