//! Strict reading of request bodies: a body must have exactly the shape of
//! the type it is read as, and every refusal names the field.

use super::HttpError;
use crate::handlers::api::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The request body as bytes, at most [`super::MAX_BODY`] of them (the
/// router's body limit); a longer one is a 413 in the shared error shape.
#[derive(Debug, Clone)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, HttpError> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(HttpError::PayloadTooLarge)
            }
            Err(rejection) => Err(ApiError::field(
                "body",
                format!("could not be read: {}", rejection.body_text()),
            )
            .into()),
        }
    }
}

/// A JSON body read strictly as `T` (see [`from_json`]), whatever its
/// content type says.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Serialize> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, HttpError> {
        let RawBody(body) = RawBody::from_request(request, state).await?;
        Ok(Self(parse_body(&body)?))
    }
}

/// Parses a JSON body; a syntax error names the position.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field("body", "is required: a JSON object"));
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::field("body", format!("is not valid JSON: {error}")))
}

/// Reads a request type out of JSON; an error names the field by its path
/// (`target.postcodes[0]`). The body must have exactly the shape the type
/// reads: serde would also take an array for a struct, or ignore a stray
/// field beside an enum's tag.
pub fn from_json<T: DeserializeOwned + Serialize>(value: Value) -> Result<T, ApiError> {
    let read: T = serde_path_to_error::deserialize(&value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), named) {
            (".", Some(name)) => name.to_string(),
            (".", None) => "body".to_string(),
            (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
                path.to_string()
            }
            (path, Some(name)) => format!("{path}.{name}"),
            (path, None) => path.to_string(),
        };
        let message = match message.split_once(", expected struct ") {
            Some((head, _)) => format!("{head}, expected a JSON object"),
            None => message,
        };
        ApiError::field(&field, message)
    })?;
    let echo = serde_json::to_value(&read).map_err(|error| {
        ApiError::Internal(anyhow::anyhow!("request not serialisable: {error}"))
    })?;
    match stray(&value, &echo, "") {
        Some((field, message)) => Err(ApiError::field(&field, message)),
        None => Ok(read),
    }
}

/// The first place where `input` has more, or another shape, than what
/// was read from it (`echo`).
fn stray(input: &Value, echo: &Value, path: &str) -> Option<(String, String)> {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (input, echo) {
        (Value::Object(input), Value::Object(echo)) => {
            input.iter().find_map(|(key, value)| match echo.get(key) {
                Some(read) => stray(value, read, &at(key)),
                None => Some((at(key), "unknown field".to_string())),
            })
        }
        (_, Value::Object(_)) => Some((
            if path.is_empty() {
                "body".into()
            } else {
                path.to_string()
            },
            "must be a JSON object".to_string(),
        )),
        (Value::Array(input), Value::Array(echo)) => input
            .iter()
            .zip(echo)
            .enumerate()
            .find_map(|(i, (value, read))| stray(value, read, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// [`parse_json`], then [`from_json`].
pub fn parse_body<T: DeserializeOwned + Serialize>(body: &[u8]) -> Result<T, ApiError> {
    from_json(parse_json(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::api::{CreateCampaignRequest, PracticeRequest};

    #[test]
    fn json_errors_name_the_field() {
        let error = parse_body::<CreateCampaignRequest>(b"{\"name\": 1}").unwrap_err();
        assert_eq!(error.body()["field"], "name");
        let error = parse_body::<CreateCampaignRequest>(b"{\"nme\": \"x\"}").unwrap_err();
        assert_eq!(error.body()["field"], "nme");
        let error =
            parse_body::<CreateCampaignRequest>(br#"{"target": {"min_agee": 1}}"#).unwrap_err();
        assert_eq!(error.body()["field"], "target.min_agee");
        let error = parse_body::<CreateCampaignRequest>(br#"{"target": {}}"#).unwrap_err();
        assert_eq!(error.body()["field"], "name");
        let error = parse_body::<CreateCampaignRequest>(
            br#"{"name":"a","message":"b","optout_deadline":"c","justification":"d","target":{"postcodes":[1]}}"#,
        )
        .unwrap_err();
        assert_eq!(error.body()["field"], "target.postcodes[0]");
        let error = parse_body::<CreateCampaignRequest>(b"{\"name\": ").unwrap_err();
        assert_eq!(error.body()["field"], "body");
        assert!(error.body()["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1 column")));
        let error = parse_body::<CreateCampaignRequest>(b"[]").unwrap_err();
        assert!(error.body()["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("expected a JSON object")));
        let error = parse_body::<CreateCampaignRequest>(b"{}").unwrap_err();
        assert_eq!(error.body()["field"], "name");
    }

    #[test]
    fn bodies_must_have_the_shape_of_the_type() {
        let base = r#""name":"a","message":"b","optout_deadline":"c","justification":"d""#;
        let ok = format!(r#"{{{base},"target":{{"min_age":null}}}}"#);
        assert!(parse_body::<CreateCampaignRequest>(ok.as_bytes()).is_ok());
        let array = format!(r#"{{{base},"target":[null, null]}}"#);
        let error = parse_body::<CreateCampaignRequest>(array.as_bytes()).unwrap_err();
        assert_eq!(error.body()["field"], "target");
        let stray = br#"{"ods":"G85001","name":"n","notice_email":"a@b.c","connection":{"kind":"simulated","x":1}}"#;
        let error = parse_body::<PracticeRequest>(stray).unwrap_err();
        assert_eq!(error.body()["field"], "connection.x");
    }
}
