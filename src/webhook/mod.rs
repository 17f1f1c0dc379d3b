//! Webhook mode: a ValidatingAdmissionWebhook for pods, served over HTTPS with client-certificate
//! verification, that creates a pod's SPIRE entry on CREATE and removes it on DELETE. What
//! admission alone cannot do (pods deleted while the webhook was down, deletes that never
//! completed) is repaired by the leader-gated cluster shard (`actors::shard`, `ShardMode::Cluster`).
//!
//! * [`review`]: AdmissionReview (v1 and v1beta1) parsing and response building — pure;
//! * [`server`]: TLS (rustls, ring) with optional client-certificate verification and
//!   certificate reload, serving an axum router;
//! * [`handler`]: the `/validate` HTTP route: path, method and content-type checks, then
//!   [`Admit`];
//! * [`admission`]: what CREATE and DELETE do to SPIRE.

pub mod admission;
pub mod handler;
pub mod review;
pub mod server;

use std::{future::Future, pin::Pin, sync::Arc};

/// The admission operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

/// The parts of an AdmissionReview request the registrar acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub uid: String,
    pub operation: Operation,
    /// `request.kind` (the object's group/version/kind), e.g. group "" and kind "Pod".
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub object: Option<serde_json::Value>,
    pub old_object: Option<serde_json::Value>,
    pub dry_run: bool,
}

/// What the webhook answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `allowed: true`.
    Allow,
    /// `allowed: false` with this message (shown to the user by kubectl).
    Deny(String),
    /// HTTP 500 with this message: the API server then applies the webhook's `failurePolicy`.
    Error(String),
}

/// Decides a request (and performs its side effects). Implemented by [`admission::Admission`]
/// and by fakes in tests.
pub type Admit = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Verdict> + Send>> + Send + Sync>;

/// Errors of the webhook boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unable to load server keypair (cert_path {cert}, key_path {key}): {reason}")]
    Keypair { cert: String, key: String, reason: String },
    #[error("unable to read cacert file {path}: {reason}")]
    CaCert { path: String, reason: String },
    #[error("unable to listen on addr {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Tls(String),
}
