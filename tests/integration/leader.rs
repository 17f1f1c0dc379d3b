//! Two replicas with leader election: exactly one writes; the other takes over when the leader
//! dies (lease expiry) or shuts down (release); no duplicate entries either way.

use std::time::Duration;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::ConfigMap};
use kube::Api;

use crate::{
    registrar::{Registrar, metric_value},
    stack::Stack,
    util::*,
};

fn expected(nodes: &[&str], pods: &[(&str, &str)]) -> Vec<Shown> {
    let mut v: Vec<Shown> = nodes.iter().map(|n| node_entry("c", n)).collect();
    v.extend(pods.iter().map(|(node, p)| pod_entry("c", node, "a", p, &format!("/ns/a/sa/{p}"))));
    v
}

async fn writes(r: &Registrar) -> f64 {
    let m = r.metrics().await;
    ["create", "update", "delete"]
        .iter()
        .map(|op| metric_value(&m, "registrar_entry_ops_total", &[("op", op)]).unwrap_or(0.0))
        .sum()
}

async fn is_leader(r: &Registrar) -> bool {
    metric_value(&r.metrics().await, "registrar_is_leader", &[]) == Some(1.0)
}

const ELECTION: &str = "leader_election = true\nleader_election_namespace = \"default\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lock_gives_one_writer_and_failover() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "a").await;
    create_node(&k, "n1").await;
    pod("a", "p1").on("n1").sa("p1").create(&k).await;
    let extra = format!("{ELECTION}leader_election_resource_lock = \"leases\"\n");
    let a = Registrar::start(&stack, "reg-a", "c", &extra).await;
    let b = Registrar::start(&stack, "reg-b", "c", &extra).await;
    a.wait_ready().await;
    b.wait_ready().await;
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;

    let leases: Api<Lease> = Api::namespaced(k.clone(), "default");
    let holder = eventually("a lease holder", Duration::from_secs(30), || async {
        let l = leases.get_opt("spire-k8s-registrar-leader-election").await.ok()??;
        let spec = l.spec?;
        assert_eq!(spec.lease_duration_seconds, Some(15));
        spec.holder_identity.filter(|h| !h.is_empty())
    })
    .await;
    let (leader, follower) = if holder.starts_with("reg-a_") { (a, b) } else { (b, a) };
    assert!(holder.starts_with("reg-a_") || holder.starts_with("reg-b_"), "{holder}");
    assert!(is_leader(&leader).await);
    assert!(!is_leader(&follower).await);
    assert_eq!(writes(&follower).await, 0.0, "the follower wrote to SPIRE");

    // The leader dies without releasing: the follower takes over after the lease expires.
    leader.proc.kill();
    eventually("the follower to lead", Duration::from_secs(60), || async {
        is_leader(&follower).await.then_some(())
    })
    .await;
    let lease = leases.get("spire-k8s-registrar-leader-election").await.unwrap().spec.unwrap();
    assert!(lease.holder_identity.unwrap().starts_with(if holder.starts_with("reg-a_") {
        "reg-b_"
    } else {
        "reg-a_"
    }));
    assert!(lease.lease_transitions.unwrap_or(0) >= 1);
    pod("a", "p2").on("n1").sa("p2").create(&k).await;
    converge(&spire, expected(&["n1"], &[("n1", "p1"), ("n1", "p2")])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_lock_releases_on_sigterm() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "a").await;
    create_node(&k, "n1").await;
    // configmaps is the default lock
    let a = Registrar::start(&stack, "reg-a", "c", ELECTION).await;
    a.wait_ready().await;
    eventually("reg-a to lead", Duration::from_secs(30), || async { is_leader(&a).await.then_some(()) })
        .await;
    let b = Registrar::start(&stack, "reg-b", "c", ELECTION).await;
    b.wait_ready().await;
    converge(&spire, expected(&["n1"], &[])).await;

    let cms: Api<ConfigMap> = Api::namespaced(k.clone(), "default");
    let record = |cm: ConfigMap| -> serde_json::Value {
        let ann = cm.metadata.annotations.unwrap_or_default();
        serde_json::from_str(&ann["control-plane.alpha.kubernetes.io/leader"]).unwrap()
    };
    let rec = record(cms.get("spire-k8s-registrar-leader-election").await.unwrap());
    assert!(rec["holderIdentity"].as_str().unwrap().starts_with("reg-a_"), "{rec}");
    assert_eq!(rec["leaseDurationSeconds"], 15);
    assert!(rec["renewTime"].is_string() && rec["acquireTime"].is_string(), "{rec}");

    // Graceful shutdown releases the lock, so reg-b takes over well before the lease would expire.
    assert_eq!(a.proc.terminate(Duration::from_secs(20)).await, Some(0));
    eventually("reg-b to lead", Duration::from_secs(30), || async { is_leader(&b).await.then_some(()) })
        .await;
    let rec = record(cms.get("spire-k8s-registrar-leader-election").await.unwrap());
    assert!(rec["holderIdentity"].as_str().unwrap().starts_with("reg-b_"), "{rec}");
    pod("a", "p1").on("n1").sa("p1").create(&k).await;
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;
}

/// A leader's write in flight to a frozen SPIRE server must not land after another replica has
/// taken over: write RPCs end within `lease_duration − renew_deadline` (the client cancels the
/// stream), the deposed leader is gone, and the server, once thawed, finds the request cancelled.
/// The new leader then has nothing stale to clean up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_to_a_frozen_server_does_not_land_after_a_takeover() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "a").await;
    create_node(&k, "n1").await;
    pod("a", "p1").on("n1").sa("p1").create(&k).await;
    let extra = format!("{ELECTION}leader_election_resource_lock = \"leases\"\n");
    let a = Registrar::start(&stack, "reg-a", "c", &extra).await;
    eventually("reg-a leads", Duration::from_secs(30), || async { is_leader(&a).await.then_some(()) }).await;
    let b = Registrar::start(&stack, "reg-b", "c", &extra).await;
    b.wait_ready().await;
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;

    // Freeze SPIRE, then give the leader a write to make: it is sent and hangs.
    stack.spire.signal("-STOP");
    pod("a", "p2").on("n1").sa("p2").create(&k).await;
    eventually("the leader's write to time out", Duration::from_secs(60), || async {
        metric_value(&a.metrics().await, "registrar_sync_failures_total", &[]).filter(|v| *v >= 1.0)
    })
    .await;
    // The pod goes again, and so does the leader; the follower takes over while SPIRE is frozen.
    delete_pod(&k, "a", "p2").await;
    a.proc.kill();
    eventually("reg-b leads", Duration::from_secs(60), || async { is_leader(&b).await.then_some(()) }).await;
    stack.spire.signal("-CONT");

    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;
    // Two more anti-entropy passes of the new leader (resync every 2 s): a late write by the old
    // leader would have left p2's entry behind for them to delete.
    let passes = |m: &str| metric_value(m, "registrar_reconcile_duration_seconds_count", &[]).unwrap_or(0.0);
    let start = passes(&b.metrics().await);
    eventually("two more passes", Duration::from_secs(60), || async {
        (passes(&b.metrics().await) >= start + 2.0).then_some(())
    })
    .await;
    let m = b.metrics().await;
    let deleted = metric_value(&m, "registrar_entry_ops_total", &[("op", "delete")]).unwrap_or(0.0);
    assert_eq!(deleted, 0.0, "the new leader had to delete a late write of the old one");
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;
}
