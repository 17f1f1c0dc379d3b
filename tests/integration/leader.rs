//! Two replicas with leader election: exactly one writes; the other takes over when the leader
//! dies (lease expiry) or shuts down (release); no duplicate entries either way.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::ConfigMap};
use k8s_workload_registrar::model::{EntrySpec, Selector, Selectors};
use kube::Api;

use crate::{
    registrar::{Registrar, metric_value},
    stack::{Stack, free_port},
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
    // A planned hand-over is news, not a problem: logged at info.
    let log = a.proc.log_text();
    let stopped: Vec<&str> = log.lines().filter(|l| l.contains("Stopped leading.")).collect();
    assert!(!stopped.is_empty() && stopped.iter().all(|l| l.contains(" INFO ")), "{stopped:?}");
    eventually("reg-b to lead", Duration::from_secs(30), || async { is_leader(&b).await.then_some(()) })
        .await;
    let rec = record(cms.get("spire-k8s-registrar-leader-election").await.unwrap());
    assert!(rec["holderIdentity"].as_str().unwrap().starts_with("reg-b_"), "{rec}");
    pod("a", "p1").on("n1").sa("p1").create(&k).await;
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;
}

/// A leader's write in flight to a frozen SPIRE server must not land after another replica has
/// taken over: write RPCs end within `lease_duration − renew_deadline` (the client cancels the
/// stream), the deposed leader is gone (killed, so its connection is closed too), and the
/// server, once thawed, finds the request cancelled. The new leader then has nothing stale to
/// clean up. (The settled re-read for writes that do land late is tested below.)
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
    // Two more anti-entropy checks of the new leader (resync every 2 s): a late write by the old
    // leader would have left p2's entry behind for them to find and delete.
    let checks = |m: &str| metric_value(m, "registrar_anti_entropy_checks_total", &[]).unwrap_or(0.0);
    let start = checks(&b.metrics().await);
    eventually("two more checks", Duration::from_secs(60), || async {
        (checks(&b.metrics().await) >= start + 2.0).then_some(())
    })
    .await;
    let m = b.metrics().await;
    let deleted = metric_value(&m, "registrar_entry_ops_total", &[("op", "delete")]).unwrap_or(0.0);
    assert_eq!(deleted, 0.0, "the new leader had to delete a late write of the old one");
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;
}

/// What a late write of the previous leader looks like to the new one: an owned entry appearing
/// after its promotion read. Once the epoch has settled (lease − renew deadline + 1 s = 6 s), the
/// new leader re-reads and deletes it, with the periodic resync an hour away, so only the
/// post-promotion re-read can do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_repairs_writes_that_land_after_its_promotion() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "a").await;
    create_node(&k, "n1").await;
    pod("a", "p1").on("n1").sa("p1").create(&k).await;
    let extra = format!("{ELECTION}leader_election_resource_lock = \"leases\"\n");
    let start = |name: &'static str| {
        let (stack, extra) = (&stack, &extra);
        async move {
            let metrics_port = free_port();
            let config = stack.dir.path().join(format!("{name}.conf"));
            let text = crate::registrar::base_config(stack, "c", metrics_port, extra)
                .replace("resync_interval = \"2s\"", "resync_interval = \"1h\"");
            std::fs::write(&config, text).unwrap();
            Registrar::start_with_config(stack, name, config, metrics_port, &[]).await
        }
    };
    let a = start("reg-a").await;
    eventually("reg-a leads", Duration::from_secs(30), || async { is_leader(&a).await.then_some(()) }).await;
    let b = start("reg-b").await;
    b.wait_ready().await;
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;

    let passes = |m: &str| metric_value(m, "registrar_reconcile_duration_seconds_count", &[]).unwrap_or(0.0);
    let before = passes(&b.metrics().await);
    // A graceful stop releases the lock: reg-b leads within a retry period and re-reads node n1.
    assert_eq!(a.proc.terminate(Duration::from_secs(20)).await, Some(0));
    eventually("reg-b leads and has read n1", Duration::from_secs(30), || async {
        (is_leader(&b).await && passes(&b.metrics().await) > before).then_some(())
    })
    .await;
    spire
        .create_entries(&[EntrySpec {
            spiffe_id: id("/ns/a/sa/gone"),
            parent_id: id("/spire-k8s-registrar/c/node/n1"),
            selectors: Selectors::from([Selector::k8s("ns:a"), Selector::k8s("pod-name:gone")]),
            dns_names: vec![],
            federates_with: BTreeSet::new(),
            downstream: false,
            managed: Default::default(),
        }])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    converge(&spire, expected(&["n1"], &[("n1", "p1")])).await;
    let deleted = metric_value(&b.metrics().await, "registrar_entry_ops_total", &[("op", "delete")]);
    assert_eq!(deleted, Some(1.0), "reg-b deletes exactly the late entry");
}
