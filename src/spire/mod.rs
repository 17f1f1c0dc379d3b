//! The SPIRE side: a client of SPIRE's Entry API (`spire.api.server.entry.v1`) that speaks in
//! the registrar's own types (`model::EntrySpec`, `model::Entry`).
//!
//! * [`proto`]: generated code from our own `.proto` files;
//! * [`convert`]: wire types ⇄ model types;
//! * [`client`]: connection (admin Unix socket, or TCP with mutual TLS), paged lists, batched
//!   writes with per-item results, retries on `UNAVAILABLE`, per-call timeouts, call metrics;
//! * [`dry_run`]: the overlay that answers writes in `dry_run = true` mode (pure);
//! * [`probe`]: the start-up check that the server stores the configured entry fields;
//! * [`workload`]: the registrar's own X509-SVID from the agent's Workload API (TCP path);
//! * [`tls`]: the rustls client configuration for the TCP path (SPIFFE server authentication).

pub mod client;
pub mod convert;
pub mod dry_run;
pub mod probe;
pub mod proto;
pub mod tls;
pub mod workload;

pub use client::{ItemError, ListFilter, SpireClient};
pub use workload::SvidSource;

/// Errors of the SPIRE boundary. Per-item failures of batch calls are not errors of the call;
/// they come back as [`ItemError`]s next to the successful items.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid SPIRE server address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("SPIRE {method} failed: {code:?}: {message}")]
    Rpc { method: &'static str, code: tonic::Code, message: String },
    #[error("SPIRE returned an entry the registrar cannot read (id {id:?}): {reason}")]
    BadEntry { id: String, reason: String },
    #[error("SPIRE {method} returned {got} results for {sent} items")]
    ResultCount { method: &'static str, sent: usize, got: usize },
    #[error("SPIFFE Workload API: {0}")]
    WorkloadApi(String),
}

impl Error {
    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Address { .. } => "config",
            Error::Rpc { code: tonic::Code::Unavailable, .. } => "unavailable",
            Error::Rpc { code: tonic::Code::DeadlineExceeded, .. } => "timeout",
            Error::Rpc { .. } => "rpc",
            Error::BadEntry { .. } | Error::ResultCount { .. } => "protocol",
            Error::WorkloadApi(_) => "credentials",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
