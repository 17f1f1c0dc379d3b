//! The webhooks' HTTP surface: exactly `POST <path>` with a JSON AdmissionReview body, where the
//! path is [`POD_PATH`] (webhook mode) or [`SPIFFEID_PATH`] (crd mode's SpiffeID webhook).
//!
//! Checks run in the original registrar's order — path (404 `Not found`), method (405
//! `Expected POST`), `Content-Type` (400 `Expected JSON content`), then the body (413 above
//! [`MAX_BODY_BYTES`], 400 for anything [`review::parse`] rejects) — and only then is the request
//! handed to [`Admit`]. Its [`Verdict`] becomes a 200 review (allowed or denied, same apiVersion,
//! echoed uid) or, for [`Verdict::Error`], an HTTP 500 so the API server applies the webhook's
//! `failurePolicy`.
//!
//! Every request, good or bad, is counted in `webhook_requests_total{operation, outcome}` and
//! timed in `webhook_request_duration_seconds{operation, outcome}`; both labels are closed sets.

use std::{panic::AssertUnwindSafe, time::Instant};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request as HttpRequest, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::{FutureExt, StreamExt};

use super::{Admit, Operation, Verdict, review};

/// Largest accepted request body. A review carries the object and, for UPDATE, the old object
/// too; Kubernetes caps a stored object at about 1.5 MiB, so twice that plus the envelope fits.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The pod webhook's path (webhook mode).
pub const POD_PATH: &str = "/validate";
/// The SpiffeID validating webhook's path (crd mode), as the original served it.
pub const SPIFFEID_PATH: &str = "/validate-spiffeid-spiffe-io-v1beta1-spiffeid";

/// The pod webhook router: [`POD_PATH`] answered by `admit`, everything else 404.
pub fn router(admit: Admit) -> Router {
    router_at(POD_PATH, admit)
}

/// A webhook router answering `path` with `admit`, everything else 404.
///
/// All paths go through one handler (rather than a `route` plus axum's own fallback and 405)
/// so that the status texts are ours and every request is counted the same way.
pub fn router_at(path: &'static str, admit: Admit) -> Router {
    Router::new().fallback(validate).with_state((path, admit))
}

async fn validate(State((path, admit)): State<(&'static str, Admit)>, req: HttpRequest) -> Response {
    let start = Instant::now();
    let (operation, outcome, response) = decide(path, &admit, req).await;
    metrics::counter!("webhook_requests_total", "operation" => operation, "outcome" => outcome).increment(1);
    metrics::histogram!("webhook_request_duration_seconds", "operation" => operation, "outcome" => outcome)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Handles one request; returns the `operation` and `outcome` metric labels with the response.
async fn decide(path: &str, admit: &Admit, req: HttpRequest) -> (&'static str, &'static str, Response) {
    let bad = |status: StatusCode, message: String| {
        tracing::debug!(%status, %message, "rejected webhook request");
        ("invalid", "bad_request", (status, message).into_response())
    };
    // `uri().path()` excludes the query: the API server calls `/validate?timeout=10s`.
    if req.uri().path() != path {
        return bad(StatusCode::NOT_FOUND, "Not found".into());
    }
    if req.method() != Method::POST {
        return bad(StatusCode::METHOD_NOT_ALLOWED, "Expected POST".into());
    }
    if !is_json(req.headers()) {
        return bad(StatusCode::BAD_REQUEST, "Expected JSON content".into());
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body larger than {MAX_BODY_BYTES} bytes"),
            );
        }
        Err(BodyError::Read(e)) => return bad(StatusCode::BAD_REQUEST, format!("Unable to read body: {e}")),
    };
    let (api, request) = match review::parse(&body) {
        Ok(parsed) => parsed,
        Err(message) => return bad(StatusCode::BAD_REQUEST, message),
    };
    let operation = operation_label(request.operation);
    let uid = request.uid.clone();
    // A panic in the admission code must not take the connection down without an answer: it
    // becomes a 500 like any other failure, and the API server applies the failurePolicy.
    let verdict =
        AssertUnwindSafe(async { admit(request).await }).catch_unwind().await.unwrap_or_else(|_| {
            tracing::error!(%uid, "admission panicked");
            Verdict::Error("admission panicked".into())
        });
    match verdict {
        Verdict::Allow => {
            (operation, "allowed", Json(review::response(api, &uid, true, None)).into_response())
        }
        Verdict::Deny(message) => {
            (operation, "denied", Json(review::response(api, &uid, false, Some(&message))).into_response())
        }
        Verdict::Error(message) => (
            operation,
            "error",
            (StatusCode::INTERNAL_SERVER_ERROR, format!("Internal error occurred: {message}"))
                .into_response(),
        ),
    }
}

fn operation_label(op: Operation) -> &'static str {
    match op {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Connect => "connect",
    }
}

/// `Content-Type` is `application/json`, optionally with a `charset=utf-8` parameter (JSON is
/// UTF-8 by definition, and some clients say so); anything else is not an AdmissionReview.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = value.split(';');
    parts.next().map(str::trim) == Some("application/json")
        && parts.all(|p| p.trim().eq_ignore_ascii_case("charset=utf-8"))
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads the body, refusing it as soon as it is known to exceed `limit` (from `Content-Length`
/// before reading anything, or while streaming when the length is not declared).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::webhook::{
        Request,
        review::tests::{V1_CREATE, V1BETA1_DELETE, edited},
    };

    type Seen = Arc<Mutex<Vec<Request>>>;

    /// An `Admit` that records every request and answers `verdict`.
    fn fake(verdict: Verdict) -> (Admit, Seen) {
        let seen: Seen = Arc::default();
        let recorder = seen.clone();
        let admit: Admit = Arc::new(move |req| {
            recorder.lock().unwrap().push(req);
            let verdict = verdict.clone();
            Box::pin(async move { verdict })
        });
        (admit, seen)
    }

    fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> http::Request<Body> {
        let mut req = http::Request::builder().method(Method::POST).uri(path);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        req.body(body.into()).unwrap()
    }

    fn review(body: &str) -> http::Request<Body> {
        post("/validate?timeout=10s", Some("application/json"), body.to_string())
    }

    async fn call(admit: Admit, req: http::Request<Body>) -> (StatusCode, Option<String>, Vec<u8>) {
        let resp = router(admit).oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec();
        (status, ct, body)
    }

    /// Calls with an `Admit` that must not be reached, returning status and text body.
    async fn rejected(req: http::Request<Body>) -> (StatusCode, String) {
        let (admit, seen) = fake(Verdict::Allow);
        let (status, _, body) = call(admit, req).await;
        assert!(seen.lock().unwrap().is_empty(), "admit was called");
        (status, String::from_utf8(body).unwrap())
    }

    #[tokio::test]
    async fn allow_answers_200_with_the_request_uid() {
        let (admit, seen) = fake(Verdict::Allow);
        let (status, ct, body) = call(admit, review(V1_CREATE)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some("application/json"));
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}})
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.operation, Operation::Create);
        assert_eq!(
            (req.namespace.as_str(), req.name.as_str(), req.kind.as_str()),
            ("default", "web-0", "Pod")
        );
        assert!(!req.dry_run);
    }

    #[tokio::test]
    async fn deny_answers_200_not_allowed_in_the_request_version() {
        let (admit, seen) = fake(Verdict::Deny("pod has no service account".into()));
        let (status, _, body) = call(admit, review(V1BETA1_DELETE)).await;
        assert_eq!(status, StatusCode::OK);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                   "response": {"uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816", "allowed": false,
                                "status": {"code": 403, "message": "pod has no service account"}}})
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].operation, Operation::Delete);
        assert!(seen[0].dry_run);
        assert!(seen[0].object.is_none() && seen[0].old_object.is_some());
    }

    #[tokio::test]
    async fn error_answers_500() {
        let (admit, seen) = fake(Verdict::Error("SPIRE unavailable".into()));
        let (status, _, body) = call(admit, review(V1_CREATE)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, b"Internal error occurred: SPIRE unavailable");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn admission_panic_answers_500() {
        let admit: Admit = Arc::new(|_| Box::pin(async { panic!("boom") }));
        let (status, _, body) = call(admit, review(V1_CREATE)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, b"Internal error occurred: admission panicked");
        // Also when the call itself (not the future) panics.
        let admit: Admit = Arc::new(|_| panic!("boom"));
        assert_eq!(call(admit, review(V1_CREATE)).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn wrong_path_is_404() {
        for path in ["/", "/validate/", "/mutate", "/VALIDATE", "/validate/x"] {
            let got = rejected(post(path, Some("application/json"), V1_CREATE)).await;
            assert_eq!(got, (StatusCode::NOT_FOUND, "Not found".into()), "{path}");
        }
        // The path is checked before the method.
        let req = http::Request::builder().uri("/x").body(Body::empty()).unwrap();
        assert_eq!(rejected(req).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn other_methods_are_405() {
        for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD] {
            let req = http::Request::builder()
                .method(method.clone())
                .uri("/validate")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(V1_CREATE))
                .unwrap();
            let (status, body) = rejected(req).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            if method != Method::HEAD {
                assert_eq!(body, "Expected POST");
            }
        }
    }

    #[tokio::test]
    async fn content_type_must_be_json() {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/json-patch+json"),
            Some("application/jsonx"),
            Some("application/yaml"),
            Some("application/json; charset=latin1"),
            Some("application/json; charset=utf-8; x=y"),
        ] {
            let got = rejected(post("/validate", ct, V1_CREATE)).await;
            assert_eq!(got, (StatusCode::BAD_REQUEST, "Expected JSON content".into()), "{ct:?}");
        }
        for ct in ["application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8"] {
            let (admit, _) = fake(Verdict::Allow);
            assert_eq!(call(admit, post("/validate", Some(ct), V1_CREATE)).await.0, StatusCode::OK, "{ct}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        // Streamed with its length known from the body, and with a declared Content-Length.
        let (status, _) = rejected(review(&" ".repeat(MAX_BODY_BYTES + 1))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let mut req = review("{}");
        req.headers_mut().insert(header::CONTENT_LENGTH, (MAX_BODY_BYTES + 1).into());
        assert_eq!(rejected(req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        // Exactly at the limit the body is read (and here rejected as malformed instead).
        let (status, body) = rejected(review(&" ".repeat(MAX_BODY_BYTES))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.starts_with("Malformed JSON body: EOF"), "{body}");
    }

    #[tokio::test]
    async fn malformed_reviews_are_400() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "Malformed JSON body: expected ident"),
            (b"\xff\xfe".to_vec(), "Malformed JSON body: "),
            (edited(V1_CREATE, "/kind", None), "Malformed JSON body: missing kind"),
            (
                edited(V1_CREATE, "/apiVersion", Some(json!("admission.k8s.io/v2"))),
                "Unsupported group version kind: admission.k8s.io/v2/AdmissionReview",
            ),
            (edited(V1_CREATE, "/request", None), "Malformed JSON body: missing request"),
            (edited(V1_CREATE, "/request/uid", None), "Malformed JSON body: missing request.uid"),
            (
                edited(V1_CREATE, "/request/operation", Some(json!("PATCH"))),
                "Malformed JSON body: unknown request.operation \"PATCH\"",
            ),
        ];
        for (body, want) in cases {
            let (status, text) = rejected(post("/validate", Some("application/json"), body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{want}");
            assert!(text.starts_with(want), "got {text:?}, want prefix {want:?}");
        }
    }

    #[test]
    fn requests_are_counted_with_bounded_labels() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            futures::executor::block_on(async {
                let (admit, _) = fake(Verdict::Allow);
                call(admit, review(V1_CREATE)).await;
                let (admit, _) = fake(Verdict::Deny("no".into()));
                call(admit, review(V1BETA1_DELETE)).await;
                let (admit, _) = fake(Verdict::Error("down".into()));
                call(admit.clone(), review(V1_CREATE)).await;
                call(admit, post("/nope", None, "")).await;
            })
        });
        let text = handle.render();
        for line in [
            r#"webhook_requests_total{operation="create",outcome="allowed"} 1"#,
            r#"webhook_requests_total{operation="delete",outcome="denied"} 1"#,
            r#"webhook_requests_total{operation="create",outcome="error"} 1"#,
            r#"webhook_requests_total{operation="invalid",outcome="bad_request"} 1"#,
            r#"webhook_request_duration_seconds_count{operation="create",outcome="allowed"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
