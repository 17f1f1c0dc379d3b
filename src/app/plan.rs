//! `k8s-workload-registrar plan`: reads the cluster and SPIRE with the same configuration as a
//! running registrar and computes `crate::plan` — writing nothing anywhere. Only list calls are
//! made: the Kubernetes objects the mode watches (paged) and every SPIRE entry (paged, through
//! the same `SpireClient`); no Lease, Event, SpiffeID or entry is written.

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::ListParams};

use super::Error;
use crate::{
    config::{Config, Mode},
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
        Mode::Crd(_) => {
            return Err(Error::Config(
                "plan does not support crd mode yet: compare SpiffeIDs (kubectl get spiffeids -A) with \
                 `spire-server entry show` instead"
                    .into(),
            ));
        }
    };
    let client = crate::k8s::client::build(kube_config).await?;
    let spire = super::spire_client(&cfg.server).await?;
    let cache = ClusterCache::default();
    let pods: Vec<Pod> = list_all(Api::all(client.clone())).await?;
    cache.replace_pods(pods.iter().filter_map(convert::pod_info).collect());
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
