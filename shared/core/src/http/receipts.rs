//! The providers' delivery callbacks: `POST /receipts/{provider}`, public
//! but checked with our bearer token. The receipts function serves this
//! router on AWS, the local stack on loopback.

use super::{build, operation, RawBody, Verb};
use crate::handlers::receipts::handle_delivery_callback;
use crate::handlers::Hub;
use crate::ports::DeliveryReceipt;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use secrecy::SecretString;
use std::sync::Arc;

/// The delivery callbacks, checked against `token` and read with `parse`
/// (the provider's callback parser, which lives with its adapter).
pub fn receipts_router<P, E>(hub: Hub, token: SecretString, parse: P) -> Router
where
    P: Fn(&[u8]) -> Result<DeliveryReceipt, E> + Clone + Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let token = Arc::new(token);
    let callback = move |State(hub): State<Hub>, headers: HeaderMap, RawBody(body): RawBody| {
        let token = token.clone();
        let parse = parse.clone();
        async move {
            let authorization = headers
                .get(AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            let status = handle_delivery_callback(&hub, authorization, &body, &token, parse).await;
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    };
    build(vec![operation(
        "/receipts/{provider}",
        Verb::Post,
        true,
        callback,
    )])
    .with_state(hub)
}
