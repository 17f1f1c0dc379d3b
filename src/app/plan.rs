//! `k8s-workload-registrar plan`: reads the cluster and SPIRE with the same configuration as a
//! running registrar and computes `crate::plan` — writing nothing anywhere. Only list calls are
//! made: the Kubernetes objects the mode watches (paged; crd mode: SpiffeIDs, and the pods,
//! nodes and EndpointSlices the projector reads) and every SPIRE entry (paged, through the same
//! `SpireClient`); no Lease, Event, SpiffeID or entry is written.

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Api, api::ListParams};

use super::Error;
use crate::{
    audit::Reason,
    config::{Config, Mode},
    crd::{projection::project, resource::SpiffeID},
    k8s::{cache::ClusterCache, convert},
    plan::{self, Plan},
    scope::ShardMode,
    spire::ListFilter,
};

/// Page size of the Kubernetes lists (the watchers' initial lists page the same way).
const PAGE: u32 = 500;

/// Computes the plan of `cfg` against the cluster reached through `kube_config` (or
/// `KUBECONFIG` / in-cluster) and the configured SPIRE server.
pub async fn run(cfg: &Config, kube_config: Option<kube::Config>) -> Result<Plan, Error> {
    let (mode, naming, slices) = match &cfg.mode {
        Mode::Reconcile(rc) => (ShardMode::PerNode, super::reconcile::naming(cfg, rc)?, rc.add_pod_dns_names),
        Mode::Webhook(_) => (ShardMode::Cluster, super::webhook::naming(cfg)?, false),
        Mode::Crd(cc) => return crd(cfg, cc, kube_config).await,
    };
    let client = crate::k8s::client::build(kube_config).await?;
    let spire = super::spire_client(&cfg.server).await?;
    let cache = ClusterCache::default();
    let pods: Vec<Pod> = list_all(Api::all(client.clone())).await?;
    let keys = naming.metadata_keys();
    cache.replace_pods(pods.iter().filter_map(|p| convert::cached_pod_info(p, &keys)).collect());
    if mode == ShardMode::PerNode {
        let nodes: Vec<Node> = list_all(Api::all(client.clone())).await?;
        cache.replace_nodes(nodes.iter().filter_map(convert::node_info).collect());
    }
    if slices {
        let all: Vec<EndpointSlice> = list_all(Api::all(client.clone())).await?;
        cache.replace_slices(
            all.iter().filter_map(|s| Some((s.metadata.name.clone()?, convert::slice_info(s)?))).collect(),
        );
    }
    let entries = spire.list_entries(&ListFilter::default()).await?;
    Ok(plan::for_cluster(mode, &naming, &cache, entries))
}

/// crd mode: SpiffeIDs (and, with `pod_controller`, the pods, nodes and EndpointSlices the
/// projector reads) and every entry.
async fn crd(
    cfg: &Config,
    cc: &crate::config::CrdConfig,
    kube_config: Option<kube::Config>,
) -> Result<Plan, Error> {
    let own_ns = super::own_namespace();
    if cc.pod_controller && own_ns.is_none() {
        return Err(Error::Config(
            "pod_controller needs the registrar's namespace for node SpiffeIDs: set POD_NAMESPACE".into(),
        ));
    }
    let client = crate::k8s::client::build(kube_config).await?;
    let spire = super::spire_client(&cfg.server).await?;
    let sids: Vec<SpiffeID> = list_all(Api::all(client.clone())).await?;
    let sids: Vec<Arc<SpiffeID>> = sids.into_iter().map(Arc::new).collect();
    let mut pods: Vec<Arc<Pod>> = Vec::new();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    let projection = match (&own_ns, cc.pod_controller) {
        (Some(own), true) => {
            pods = list_all::<Pod>(Api::all(client.clone())).await?.into_iter().map(Arc::new).collect();
            nodes = list_all::<Node>(Api::all(client.clone())).await?.into_iter().map(Arc::new).collect();
            let slices: Option<Vec<Arc<EndpointSlice>>> = match cc.add_svc_dns_name {
                true => Some(list_all(Api::all(client.clone())).await?.into_iter().map(Arc::new).collect()),
                false => None,
            };
            let rules = super::crd::rules(cfg, cc);
            Some(project(&rules, own, &pods, &nodes, slices.as_deref()))
        }
        _ => None,
    };
    let entries = spire.list_entries(&ListFilter::default()).await?;
    let policy = super::crd::policy(cfg, own_ns);
    // Why the projector would delete a SpiffeID it owns: what is left of its owner.
    let why_gone = |owner: &OwnerReference| {
        let uid = |o: &ObjectMeta| o.uid.as_deref() == Some(owner.uid.as_str());
        match owner.kind.as_str() {
            "Node" if !nodes.iter().any(|n| uid(&n.metadata)) => Reason::NodeGone,
            "Pod" => match pods.iter().find(|p| uid(&p.metadata)) {
                None => Reason::PodGone,
                Some(p) if convert::pod_info(p).is_some_and(|i| i.terminal) => Reason::PodFinished,
                Some(_) => Reason::NotEligible,
            },
            _ => Reason::NotEligible,
        }
    };
    Ok(plan::for_spiffeids(&policy, projection, &sids, entries, why_gone))
}

/// Every object of a kind, listed in pages.
async fn list_all<K>(api: Api<K>) -> Result<Vec<K>, Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}
