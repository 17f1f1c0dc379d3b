//! Black-box tests against real components: etcd, kube-apiserver and spire-server built from the
//! Go module proxy (see `stack`). One test binary with modules keeps link times down.

mod chaos;
mod chart;
mod cli;
mod crd;
mod image;
mod leader;
mod plan;
mod prometheus;
mod reconcile;
mod registrar;
mod resilience;
mod spire_client;
mod spire_tcp;
mod stack;
mod stack_test;
mod util;
mod webhook;
