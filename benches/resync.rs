//! Anti-entropy cost against a real spire-server, side by side in one run, as ratios.
//!
//! The original registrar found stale entries by listing **every** entry in SPIRE every 10 s;
//! this registrar lists every entry once per `resync_interval` (60 s) and hands each shard its
//! own, and a shard that must re-read alone makes two filtered reads (by parent ID, by alias ID).
//! Both are measured here on the same server and data:
//!
//! * `full list`: one paged `ListEntries` of all entries (the original's poll, our anti-entropy);
//! * `one node`: one shard's own re-read (restart, promotion, a write during the listing);
//! * `all nodes`: per-node reads for every node (how periodic resyncs worked before).
//!
//! `cargo bench --bench resync` runs the full size (100 nodes × 50 pods); under `cargo test` it
//! runs a small smoke size so the benchmark itself stays working. Timings are wall-clock on a
//! shared machine: read the ratios, not the absolute numbers.

#[path = "../tests/integration/stack/mod.rs"]
#[allow(dead_code)]
mod stack;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use k8s_workload_registrar::{
    id::{SpiffeId, TrustDomain},
    model::{EntrySpec, Selector, Selectors},
    spire::{ListFilter, SpireClient},
};

fn spec(td: &TrustDomain, node: usize, pod: usize) -> EntrySpec {
    EntrySpec {
        spiffe_id: SpiffeId::from_path(td, &format!("/ns/bench/sa/sa{pod}")).unwrap(),
        parent_id: SpiffeId::from_path(td, &format!("/spire-k8s-registrar/bench/node/n{node}")).unwrap(),
        selectors: Selectors::from([
            Selector::k8s("ns:bench"),
            Selector::k8s(format!("pod-name:n{node}-p{pod}")),
        ]),
        dns_names: vec![],
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    }
}

fn node_spec(td: &TrustDomain, node: usize) -> EntrySpec {
    EntrySpec {
        spiffe_id: SpiffeId::from_path(td, &format!("/spire-k8s-registrar/bench/node/n{node}")).unwrap(),
        parent_id: td.server_id(),
        selectors: Selectors::from([
            Selector::psat("cluster:bench"),
            Selector::psat(format!("agent_node_name:n{node}")),
        ]),
        dns_names: vec![],
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    }
}

async fn per_node_read(c: &SpireClient, td: &TrustDomain, node: usize) -> usize {
    let alias = SpiffeId::from_path(td, &format!("/spire-k8s-registrar/bench/node/n{node}")).unwrap();
    let pods = c
        .list_entries(&ListFilter { by_parent_id: Some(alias.clone()), ..Default::default() })
        .await
        .unwrap();
    let me = c.list_entries(&ListFilter { by_spiffe_id: Some(alias), ..Default::default() }).await.unwrap();
    pods.len() + me.len()
}

/// Median of `rounds` runs of `f`.
async fn median<F, Fut>(rounds: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (nodes, pods_per_node, rounds) = if full { (100, 50, 9) } else { (4, 5, 3) };
    let dir = tempfile::Builder::new().prefix("kwr-bench-").tempdir_in("/tmp").unwrap();
    let spire = stack::Spire::start(dir.path()).await;
    let c = spire.client();
    let td = TrustDomain::parse("example.org").unwrap();
    let mut specs: Vec<EntrySpec> = (0..nodes).map(|n| node_spec(&td, n)).collect();
    specs.extend(
        (0..nodes).flat_map(|n| (0..pods_per_node).map(move |p| (n, p))).map(|(n, p)| spec(&td, n, p)),
    );
    for chunk in specs.chunks(500) {
        assert!(c.create_entries(chunk).await.unwrap().iter().all(Result::is_ok));
    }
    let total = specs.len();

    let full_list = median(rounds, || async {
        assert_eq!(c.list_entries(&ListFilter::default()).await.unwrap().len(), total);
    })
    .await;
    let one_node = median(rounds, || async {
        assert_eq!(per_node_read(&c, &td, nodes / 2).await, pods_per_node + 1);
    })
    .await;
    let all_nodes = median(rounds, || async {
        let mut n = 0;
        for node in 0..nodes {
            n += per_node_read(&c, &td, node).await;
        }
        assert_eq!(n, total);
    })
    .await;

    println!("resync bench: {nodes} nodes x {pods_per_node} pods = {total} entries, median of {rounds}");
    println!("  full list (original, every 10 s):  {full_list:>10.2?}");
    println!(
        "  one node (ours, per event/repair): {one_node:>10.2?}   ratio full/one   = {:.1}x",
        ratio(full_list, one_node)
    );
    println!(
        "  all nodes (ours, periodic resync): {all_nodes:>10.2?}   ratio all/full   = {:.2}x",
        ratio(all_nodes, full_list)
    );
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
