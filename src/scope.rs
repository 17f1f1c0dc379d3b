//! What one shard scope should hold in SPIRE, from the cluster cache: the desired entries of a
//! node (reconcile mode) or of the whole cluster (webhook mode). Pure over a cache snapshot; the
//! one home of this rule for the shards (`actors::shard`) and `plan`.
//!
//! * A node scope: if the node exists, its node-alias entry plus one entry per pod on it that
//!   should have one (`identity`); if the node is gone, nothing.
//! * The cluster scope: the cluster entry plus one entry per non-terminal pod that should have
//!   one.
//!
//! Pods whose identity cannot be formed are returned as problems for the caller to report.
//! Which scope an entry in SPIRE belongs to is [`owner_scope`] (entries of no scope are not the
//! registrar's: hand-made, other clusters').

use std::collections::HashMap;

use crate::{
    identity::{EndpointSliceInfo, IdentityError, Naming, PodInfo},
    k8s::cache::ClusterCache,
    model::EntrySpec,
};

/// What a shard owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMode {
    /// Reconcile mode: one shard per node (its node-alias entry and its pods' entries).
    PerNode,
    /// Webhook mode: one shard, [`CLUSTER`], for the cluster entry and every pod's entry.
    /// Its deletions wait `actors::shard::DELETE_GRACE`: an admission writes a pod's entry
    /// before the API server has stored the pod, so an entry can be briefly ahead of the watch.
    Cluster,
}

/// The name of webhook mode's one shard.
pub const CLUSTER: &str = "cluster";

/// The scope (node name, or [`CLUSTER`]) of the shard that owns `entry`; `None` for entries
/// the registrar does not own.
pub fn owner_scope(mode: ShardMode, naming: &Naming, entry: &EntrySpec) -> Option<String> {
    match mode {
        ShardMode::PerNode => naming.node_of(entry),
        ShardMode::Cluster => naming.webhook_owns(entry).then(|| CLUSTER.to_string()),
    }
}

/// The desired state of one scope.
#[derive(Debug, Default)]
pub struct Desired {
    pub specs: Vec<EntrySpec>,
    /// Pods that get no entry because their identity cannot be formed.
    pub problems: Vec<(PodInfo, IdentityError)>,
    /// The pods read for this scope (for registration-latency bookkeeping).
    pub pods: Vec<PodInfo>,
}

/// Reconcile mode: the node `node`'s alias entry and its pods' entries.
pub fn for_node(naming: &Naming, cache: &ClusterCache, node: &str) -> Desired {
    let mut out = Desired::default();
    let Some(info) = cache.node(node) else { return out };
    match naming.node_entry(&info) {
        Ok(spec) => out.specs.push(spec),
        Err(e) => tracing::warn!(node, error = %e, "Node gets no entry."),
    }
    // Slices are looked up once per namespace, not once per pod.
    let mut slices_by_ns: HashMap<String, Vec<EndpointSliceInfo>> = HashMap::new();
    let pods = cache.pods_on(node);
    for pod in &pods {
        let slices: &[EndpointSliceInfo] = if naming.pod_dns_zone.is_some() {
            slices_by_ns.entry(pod.namespace.clone()).or_insert_with(|| cache.slices_in(&pod.namespace))
        } else {
            &[]
        };
        match naming.pod_entry_with_warnings(pod, slices) {
            Ok(Some(d)) => {
                for rejected in &d.rejected_dns_names {
                    tracing::debug!(namespace = %pod.namespace, pod = %pod.name, reason = %rejected, "DNS name dropped.");
                }
                out.specs.push(d.spec);
            }
            Ok(None) => {}
            Err(e) => out.problems.push((pod.clone(), e)),
        }
    }
    out.pods = pods;
    out
}

/// Webhook mode: the cluster entry and every running pod's entry.
pub fn for_cluster(naming: &Naming, cache: &ClusterCache) -> Desired {
    let mut out = Desired::default();
    match naming.webhook_cluster_entry() {
        Ok(spec) => out.specs.push(spec),
        Err(e) => tracing::warn!(error = %e, "No cluster entry."),
    }
    let pods = cache.all_pods();
    for pod in pods.iter().filter(|p| !p.terminal) {
        match naming.webhook_pod_entry(pod) {
            Ok(Some(spec)) => out.specs.push(spec),
            Ok(None) => {}
            Err(e) => out.problems.push((pod.clone(), e)),
        }
    }
    out.pods = pods;
    out
}
