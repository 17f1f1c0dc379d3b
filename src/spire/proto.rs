//! Generated gRPC code for the SPIRE APIs in `proto/`. The module nesting mirrors the protobuf
//! packages because prost's generated cross-package paths (`super::super::...`) rely on it.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod spire {
    pub mod api {
        pub mod types {
            tonic::include_proto!("spire.api.types");
        }
        pub mod server {
            pub mod entry {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.entry.v1");
                }
            }
        }
    }
}

/// The SPIFFE Workload API (agent side). Its protobuf package is empty, as upstream's, so that the
/// gRPC path is `/SpiffeWorkloadAPI/...`; prost names the output of the empty package `_.rs`.
pub mod workload {
    tonic::include_proto!("_");
}

pub use spire::api::{server::entry::v1 as entry, types};
