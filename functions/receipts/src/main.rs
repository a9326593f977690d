//! The receipts function: GOV.UK Notify delivery-status callbacks, behind a
//! public API Gateway route checked with our bearer token.

use lambda_http::{service_fn, Body, Error, Request, Response};
use shared::handlers::receipts::handle_notify_callback;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::lambda::init_tracing();
    let wired = shared::wiring::hub_from_env().await?;
    let (hub, token) = (&wired.hub, &wired.callback_token);
    lambda_http::run(service_fn(|request: Request| async move {
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let status = handle_notify_callback(hub, authorization, request.body(), token).await;
        Ok::<_, Error>(Response::builder().status(status).body(Body::Empty)?)
    }))
    .await
}
