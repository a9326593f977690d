//! Requests to the routers as the tests write them, sent with
//! `tower::ServiceExt::oneshot`, and their answers.

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use hub_core::domain::StaffId;
use hub_core::http::Caller;
use serde_json::Value;
use tower::ServiceExt;

/// A request to a router; the caller is what the authentication in front
/// of it would have found.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    pub method: String,
    /// With the query string, e.g. `/campaigns?dry_run=true`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub caller: Option<StaffId>,
}

impl ApiRequest {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_string(),
            path: path.to_string(),
            ..Self::default()
        }
    }

    /// A JSON body.
    pub fn json(mut self, body: &Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self
    }

    pub fn caller(mut self, caller: &StaffId) -> Self {
        self.caller = Some(caller.clone());
        self
    }

    pub fn into_http(self) -> Request<Body> {
        let mut request = Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str());
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(caller) = self.caller {
            request = request.extension(Caller(caller));
        }
        request
            .body(Body::from(self.body))
            .expect("a valid request")
    }
}

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub async fn read(response: axum::response::Response) -> Self {
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("the whole body");
        Self {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, if it is JSON.
    pub fn json_body(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends one request through `router`.
pub async fn send(router: &axum::Router, request: ApiRequest) -> ApiResponse {
    let response = router
        .clone()
        .oneshot(request.into_http())
        .await
        .unwrap_or_else(|never| match never {});
    ApiResponse::read(response).await
}
