//! k8s-workload-registrar keeps a SPIRE server's registration entries equal to what a Kubernetes
//! cluster's workloads should have.
//!
//! Module map (functional core first, then the shell that does I/O):
//!
//! * core, pure and synchronous: [`id`] (SPIFFE IDs, trust domains, DNS names), [`model`]
//!   (entries), [`config`] (HCL → typed `Config`), [`identity`] (objects → desired entries),
//!   [`diff`] (desired vs actual → ops), [`audit`] (what a write was and why: one log line each);
//! * shell: [`spire`] (gRPC client of SPIRE's Entry API), [`k8s`] (watchers, leader election,
//!   events), [`actors`] (the supervised ractor system), [`http`] (`/metrics`, `/healthz`,
//!   `/readyz`), [`telemetry`] (logging).

pub mod actors;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod crd;
pub mod diff;
pub mod election;
pub mod http;
pub mod id;
pub mod identity;
pub mod k8s;
pub mod leadership;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod process_metrics;
pub mod progress;
pub mod readiness;
pub mod scope;
pub mod spire;
pub mod telemetry;
pub mod webhook;
