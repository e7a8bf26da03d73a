//! The API's own extractors for query strings, path parameters and JSON bodies: a request they
//! refuse gets the API's JSON error (`{"code", "message"}`, 400) naming the part and the field and
//! what was expected, never quoting the input (axum's own rejections are text/plain and quote it).

use axum::extract::rejection::PathRejection;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::api::error;
use crate::base::parse_error::without_values;

/// A query string deserialized into `T`; refused with code `invalid_query`.
pub struct ApiQuery<T>(pub T);

/// Path parameters deserialized into `T`; refused with code `invalid_path`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(ApiQuery).map_err(|e| {
            let field = field_path(e.path(), &e.inner().to_string());
            let expected = expectation(&e.into_inner().to_string());
            error(StatusCode::BAD_REQUEST, "invalid_query", format!("the query string's `{field}` {expected}"))
        })
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let message = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key } => {
                        format!("the path's `{key}` is not accepted; expected UTF-8 text")
                    }
                    ErrorKind::ParseErrorAtKey { key, expected_type, .. } => {
                        format!("the path's `{key}` is not accepted; expected {expected_type}")
                    }
                    ErrorKind::ParseErrorAtIndex { expected_type, .. }
                    | ErrorKind::ParseError { expected_type, .. } => {
                        format!("the path is not accepted; expected {expected_type}")
                    }
                    ErrorKind::DeserializeError { key, .. } => format!("the path's `{key}` is not accepted"),
                    _ => "the path is not accepted".to_string(),
                };
                Err(error(StatusCode::BAD_REQUEST, "invalid_path", message))
            }
            Err(_) => Err(error(StatusCode::BAD_REQUEST, "invalid_path", "the path is not accepted")),
        }
    }
}

/// A JSON body as `T`; `shape` says what the body should look like (e.g. `{"slot": "taxonomy"}`).
/// Refused with code `invalid_body`, naming the field by its path in the body.
pub fn json_body<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Response> {
    let refused = |message: String| error(StatusCode::BAD_REQUEST, "invalid_body", message);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Ok(value) => match deserializer.end() {
            Ok(()) => Ok(value),
            Err(e) => Err(refused(format!(
                "the body has more after its JSON value (line {}, column {}); expected {shape}",
                e.line(),
                e.column()
            ))),
        },
        Err(e) => {
            let field = field_path(e.path(), &e.inner().to_string());
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let expected = expectation(&inner.to_string());
                    let place = if field == "." { "the body".to_string() } else { format!("the body's `{field}`") };
                    Err(refused(format!("{place} {expected} (the body should be {shape})")))
                }
                _ => Err(refused(format!(
                    "the body is not JSON (line {}, column {}); expected {shape}",
                    inner.line(),
                    inner.column()
                ))),
            }
        }
    }
}

/// Where in the input the error is, as `a.b.0`; for an unknown field, where that field is (its name
/// is the input's).
fn field_path(path: &serde_path_to_error::Path, message: &str) -> String {
    let segments: Vec<String> = path.iter().map(ToString::to_string).collect();
    let keep = if message.starts_with("unknown field") { segments.len().saturating_sub(1) } else { segments.len() };
    if keep == 0 {
        ".".to_string()
    } else {
        segments[..keep].join(".")
    }
}

/// What a serde error says was wrong and what was expected, without the input it quotes (the
/// project's `without_values`; an unknown field's name is the input's, so it goes too).
fn expectation(message: &str) -> String {
    // serde_json adds the position; the caller says where instead.
    let message = message.rsplit_once(" at line ").map_or(message, |(text, _)| text);
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("lacks the required field {field}");
    }
    if message.starts_with("unknown field") {
        return match message.rsplit_once(", expected ") {
            Some((_, expected)) => format!("has a field that is not accepted; expected {expected}"),
            None => "has a field that is not accepted".to_string(),
        };
    }
    format!("is not accepted: {}", without_values(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        verdict: Verdict,
        limit: Option<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Verdict {
        Right,
    }

    async fn message(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        serde_json::from_slice(&bytes).expect("a JSON error")
    }

    #[tokio::test]
    async fn bad_bodies_name_the_field_and_never_quote_the_input() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"verdict": "SECRET-1"}"#, "the body's `verdict` is not accepted: unknown variant, expected `right`"),
            (
                br#"{"verdict": "right", "limit": "SECRET-1"}"#,
                "`limit` is not accepted: invalid type: string, expected u32",
            ),
            (br#"{"verdict": "right", "SECRET-1": 1}"#, "has a field that is not accepted"),
            (br#"{"limit": 1}"#, "lacks the required field `verdict`"),
            (br#"{"verdict": "SECRET-1"#, "the body is not JSON (line 1, column"),
        ];
        for (body, expected) in cases {
            let refused = json_body::<Body>(body, "{\"verdict\": ...}").expect_err("refused");
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
            let answer = message(refused).await;
            assert_eq!(answer["code"], "invalid_body", "{answer}");
            let text = answer["message"].as_str().expect("a message");
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains("SECRET"), "the input is quoted: {text}");
        }
    }

    #[tokio::test]
    async fn bad_query_strings_name_the_field_and_never_quote_the_input() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Query {
            limit: Option<u32>,
        }
        let request = axum::http::Request::builder().uri("/x?limit=SECRET-1").body(()).expect("request");
        let (mut parts, ()) = request.into_parts();
        let refused = match ApiQuery::<Query>::from_request_parts(&mut parts, &()).await {
            Ok(_) => panic!("a word is not a number"),
            Err(refused) => refused,
        };
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let answer = message(refused).await;
        assert_eq!(answer["code"], "invalid_query", "{answer}");
        let text = answer["message"].as_str().expect("a message");
        assert!(text.contains("`limit`") && !text.contains("SECRET"), "{text}");
    }
}
