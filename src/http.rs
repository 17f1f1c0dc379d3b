//! The operational HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process and its
//! actor system are alive) and `/readyz` (see `readiness`: caches synced, first convergence pass
//! done while leading, SPIRE and the API server answering). With the `fault-injection` feature it also serves
//! `POST /debug/fail/{target}` for the chaos and integration tests.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

/// Fault injection hook (test builds only): target name → result.
pub type Injector = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the endpoints report on.
#[derive(Clone)]
pub struct Health {
    pub alive: Arc<AtomicBool>,
    pub ready: crate::readiness::Readiness,
    pub metrics: PrometheusHandle,
    pub inject: Option<Injector>,
}

pub fn router(health: Health) -> Router {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                let process = crate::process_metrics::read().map(|r| crate::process_metrics::render(&r));
                h.metrics.render() + &process.unwrap_or_default()
            }),
        )
        .route(
            "/healthz",
            get(|State(h): State<Health>| async move { flag(&h.alive, "ok", "actor system stopped") }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                match h.ready.check() {
                    Ok(()) => (StatusCode::OK, "ok"),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        );
    #[cfg(feature = "fault-injection")]
    let router = router.route(
        "/debug/fail/{target}",
        axum::routing::post(
            |State(h): State<Health>, axum::extract::Path(target): axum::extract::Path<String>| async move {
                match h.inject.as_ref().map(|f| f(&target)) {
                    Some(Ok(())) => (StatusCode::OK, "injected".to_string()),
                    Some(Err(e)) => (StatusCode::BAD_REQUEST, e),
                    None => (StatusCode::NOT_FOUND, "no fault injection here".to_string()),
                }
            },
        ),
    );
    router.with_state(health)
}

fn flag(f: &AtomicBool, ok: &'static str, not_ok: &'static str) -> (StatusCode, &'static str) {
    if f.load(Ordering::SeqCst) { (StatusCode::OK, ok) } else { (StatusCode::SERVICE_UNAVAILABLE, not_ok) }
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Binds the metrics address, with an error that names it.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on metrics_addr {addr}: {e}")))
}
