//! The Kubernetes side: turning API objects into the core's plain data ([`convert`]), the shared
//! in-memory view of the cluster the shards read ([`cache`]), Kubernetes Events ([`events`]), and
//! how watches retry ([`backoff`]).

pub mod backoff;
pub mod cache;
pub mod client;
pub mod convert;
pub mod events;

/// Errors of the Kubernetes boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("kubernetes client configuration: {0}")]
    Config(String),
}
