//! The Kubernetes client every mode uses, built in one place so that all of its requests are
//! measured: `registrar_kube_requests_total{verb,outcome}` and
//! `registrar_kube_request_duration_seconds{verb,outcome}` (to the response headers; a watch
//! counts once, when it starts). Labels are bounded: the verb is derived from the HTTP method and
//! the path's shape (never a name), the outcome from the status class.

use std::{
    task::{Context, Poll},
    time::Instant,
};

use axum::http::{Method, Request, Response, StatusCode, Uri};
use futures::future::BoxFuture;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for `config` (or, when `None`, `KUBECONFIG` or the in-cluster configuration),
/// with request metrics.
pub async fn build(config: Option<kube::Config>) -> Result<kube::Client, Error> {
    let config = match config {
        Some(c) => c,
        None => kube::Config::infer().await.map_err(|e| Error::Config(e.to_string()))?,
    };
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&MetricsLayer).build())
}

/// The Kubernetes verb of a request, as in the API server's audit log: `get`, `list`, `watch`,
/// `create`, `update`, `patch`, `delete`, `deletecollection`; `other` for anything else
/// (discovery, non-resource paths).
pub fn verb(method: &Method, uri: &Uri) -> &'static str {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() > 2 => &segments[2..],
        Some(&"apis") if segments.len() > 3 => &segments[3..],
        _ => return "other",
    };
    // `namespaces/<ns>/<resource>...`, but `namespaces/<ns>` alone is the Namespace itself.
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" { &rest[2..] } else { rest };
    let collection = rest.len() == 1;
    let watch = uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *method {
        Method::GET if watch => "watch",
        Method::GET if collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// `ok` for 2xx; `not_found` and `conflict` (expected answers the registrar handles);
/// `client_error`, `server_error` otherwise.
pub fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        404 => "not_found",
        409 => "conflict",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

#[derive(Debug, Clone, Copy)]
struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics(inner)
    }
}

#[derive(Debug, Clone)]
struct Metrics<S>(S);

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Metrics<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let verb = verb(req.method(), req.uri());
        let start = Instant::now();
        let response = self.0.call(req);
        Box::pin(async move {
            let result = response.await;
            let outcome = match &result {
                Ok(r) => outcome(r.status()),
                Err(_) => "error",
            };
            metrics::counter!("registrar_kube_requests_total", "verb" => verb, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("registrar_kube_request_duration_seconds", "verb" => verb, "outcome" => outcome)
                .record(start.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_come_from_the_method_and_the_paths_shape() {
        let v = |m: Method, uri: &str| verb(&m, &uri.parse().unwrap());
        assert_eq!(v(Method::GET, "/api/v1/pods?limit=500"), "list");
        assert_eq!(v(Method::GET, "/api/v1/pods?watch=true&resourceVersion=5"), "watch");
        assert_eq!(v(Method::GET, "/api/v1/namespaces/spire/pods"), "list");
        assert_eq!(v(Method::GET, "/api/v1/namespaces/spire/pods/p"), "get");
        assert_eq!(v(Method::GET, "/api/v1/namespaces/spire"), "get", "the Namespace object");
        assert_eq!(v(Method::GET, "/api/v1/namespaces"), "list");
        assert_eq!(v(Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/spire/leases/l"), "update");
        assert_eq!(v(Method::POST, "/apis/events.k8s.io/v1/namespaces/a/events"), "create");
        assert_eq!(
            v(Method::PATCH, "/apis/spiffeid.spiffe.io/v1beta1/namespaces/a/spiffeids/x/status"),
            "patch"
        );
        assert_eq!(v(Method::DELETE, "/apis/spiffeid.spiffe.io/v1beta1/namespaces/a/spiffeids/x"), "delete");
        assert_eq!(
            v(Method::DELETE, "/apis/spiffeid.spiffe.io/v1beta1/namespaces/a/spiffeids"),
            "deletecollection"
        );
        assert_eq!(v(Method::GET, "/apis"), "other");
        assert_eq!(v(Method::GET, "/version"), "other");
    }

    #[test]
    fn outcomes_are_status_classes() {
        assert_eq!(outcome(StatusCode::OK), "ok");
        assert_eq!(outcome(StatusCode::CREATED), "ok");
        assert_eq!(outcome(StatusCode::NOT_FOUND), "not_found");
        assert_eq!(outcome(StatusCode::CONFLICT), "conflict");
        assert_eq!(outcome(StatusCode::FORBIDDEN), "client_error");
        assert_eq!(outcome(StatusCode::SERVICE_UNAVAILABLE), "server_error");
    }
}
