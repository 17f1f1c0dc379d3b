//! Small helpers shared by the integration tests.

use std::{future::Future, time::Duration};

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_workload_registrar::{
    id::{SpiffeId, TrustDomain},
    model::{Entry, EntrySpec, Selector},
    spire::{ListFilter, SpireClient},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

pub fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

pub fn id(path: &str) -> SpiffeId {
    SpiffeId::from_path(&td(), path).unwrap()
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// Creates Node `name`; returns its UID (crd mode's node entries carry it).
pub async fn create_node(client: &kube::Client, name: &str) -> String {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let created = Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap();
    created.metadata.uid.expect("the API server gives every object a UID")
}

pub async fn delete_node(client: &kube::Client, name: &str) {
    Api::<Node>::all(client.clone()).delete(name, &DeleteParams::default()).await.unwrap();
}

/// A pod as a test describes it; `create` sends it to the API server.
pub struct PodBuilder {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

pub fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder {
        namespace: namespace.into(),
        name: name.into(),
        node: None,
        service_account: "default".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    }
}

impl PodBuilder {
    pub fn on(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }
    pub fn sa(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
    pub async fn create(self, client: &kube::Client) -> Pod {
        let mut spec = json!({"serviceAccountName": self.service_account,
                              "containers": [{"name": "c", "image": "busybox"}]});
        if let Some(n) = &self.node {
            spec["nodeName"] = json!(n);
        }
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": self.name, "labels": self.labels, "annotations": self.annotations},
            "spec": spec,
        }))
        .unwrap();
        Api::<Pod>::namespaced(client.clone(), &self.namespace)
            .create(&PostParams::default(), &p)
            .await
            .unwrap()
    }
}

pub async fn delete_pod(client: &kube::Client, namespace: &str, name: &str) {
    // Grace period 0: no kubelet runs here to finish a graceful termination.
    let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    Api::<Pod>::namespaced(client.clone(), namespace).delete(name, &dp).await.unwrap();
}

pub async fn patch_pod_labels(client: &kube::Client, namespace: &str, name: &str, labels: serde_json::Value) {
    let patch = json!({"metadata": {"labels": labels}});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

pub async fn patch_pod_status(client: &kube::Client, namespace: &str, name: &str, status: serde_json::Value) {
    let patch = json!({"status": status});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The comparable part of an entry: what a user checks in `spire-server entry show`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shown {
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<String>,
    pub dns_names: Vec<String>,
    pub federates_with: Vec<String>,
}

pub fn shown(spec: &EntrySpec) -> Shown {
    Shown {
        spiffe_id: spec.spiffe_id.to_string(),
        parent_id: spec.parent_id.to_string(),
        selectors: spec.selectors.iter().map(Selector::to_string).collect(),
        dns_names: spec.dns_names.clone(),
        federates_with: spec.federates_with.iter().cloned().collect(),
    }
}

pub fn want(spiffe_id: &str, parent_id: &str, selectors: &[&str]) -> Shown {
    let mut selectors: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
    selectors.sort();
    Shown {
        spiffe_id: spiffe_id.into(),
        parent_id: parent_id.into(),
        selectors,
        dns_names: vec![],
        federates_with: vec![],
    }
}

/// Reconcile mode's node-alias entry for `node` of `cluster` (default controller name).
pub fn node_entry(cluster: &str, node: &str) -> Shown {
    want(
        &format!("spiffe://example.org/spire-k8s-registrar/{cluster}/node/{node}"),
        "spiffe://example.org/spire/server",
        &[&format!("k8s_psat:cluster:{cluster}"), &format!("k8s_psat:agent_node_name:{node}")],
    )
}

/// Reconcile mode's entry for pod `ns/pod` on `node` with SPIFFE ID path `id_path`.
pub fn pod_entry(cluster: &str, node: &str, ns: &str, pod: &str, id_path: &str) -> Shown {
    want(
        &format!("spiffe://example.org{id_path}"),
        &format!("spiffe://example.org/spire-k8s-registrar/{cluster}/node/{node}"),
        &[&format!("k8s:ns:{ns}"), &format!("k8s:pod-name:{pod}")],
    )
}

/// Every entry in SPIRE, as a sorted list (duplicates stay visible).
pub async fn all_entries(spire: &SpireClient) -> Vec<Entry> {
    let mut v = spire.list_entries(&ListFilter::default()).await.unwrap();
    v.sort_by_key(|e| shown(&e.spec));
    v
}

pub async fn all_shown(spire: &SpireClient) -> Vec<Shown> {
    all_entries(spire).await.iter().map(|e| shown(&e.spec)).collect()
}

/// The entries reconcile mode writes with its default `controller_name` (ID or parent under
/// `/spire-k8s-registrar/`), sorted; a test's own entries (an agent's alias, an admin entry) are
/// left out.
pub async fn reconcile_shown(spire: &SpireClient) -> Vec<Shown> {
    let ours = |s: &Shown| {
        s.spiffe_id.contains("/spire-k8s-registrar/") || s.parent_id.contains("/spire-k8s-registrar/")
    };
    all_shown(spire).await.into_iter().filter(ours).collect()
}

/// Waits until SPIRE holds exactly `expected` (as a multiset), and returns the entries.
pub async fn converge(spire: &SpireClient, expected: Vec<Shown>) -> Vec<Entry> {
    converge_within(spire, expected, Duration::from_secs(60)).await
}

/// `converge` with a deadline of the caller's (for bounds a user would notice, not for speed).
pub async fn converge_within(spire: &SpireClient, mut expected: Vec<Shown>, within: Duration) -> Vec<Entry> {
    expected.sort();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let entries = all_entries(spire).await;
        let got: Vec<Shown> = entries.iter().map(|e| shown(&e.spec)).collect();
        if got == expected {
            return entries;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("SPIRE did not converge within {within:?}.\nexpected: {expected:#?}\ngot: {got:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Kubernetes Events recorded on the object `ns/name` so far.
pub async fn events_on(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Vec<k8s_openapi::api::core::v1::Event> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&Default::default()).await.unwrap();
    list.items.into_iter().filter(|e| e.involved_object.name.as_deref() == Some(name)).collect()
}

/// Waits for an Event on the object `ns/name` and returns the first.
pub async fn event_on(client: &kube::Client, ns: &str, name: &str) -> k8s_openapi::api::core::v1::Event {
    eventually(&format!("an Event on {ns}/{name}"), Duration::from_secs(30), || async {
        events_on(client, ns, name).await.into_iter().next()
    })
    .await
}

/// CRD mode's node-alias entry of `node` (uid `node_uid`) in `cluster`.
pub fn crd_node_entry(cluster: &str, node: &str, node_uid: &str) -> Shown {
    want(
        &format!("spiffe://example.org/k8s-workload-registrar/{cluster}/node/{node}"),
        "spiffe://example.org/spire/server",
        &[&format!("k8s_psat:cluster:{cluster}"), &format!("k8s_psat:agent_node_uid:{node_uid}")],
    )
}

/// CRD mode's entry of the pod with uid `pod_uid` in `ns` on `node`, ID path `id_path`, with
/// `dns_names`.
pub fn crd_pod_entry(
    cluster: &str,
    node: &str,
    ns: &str,
    pod_uid: &str,
    id_path: &str,
    dns_names: &[&str],
) -> Shown {
    let mut e = want(
        &format!("spiffe://example.org{id_path}"),
        &format!("spiffe://example.org/k8s-workload-registrar/{cluster}/node/{node}"),
        &[&format!("k8s:pod-uid:{pod_uid}"), &format!("k8s:ns:{ns}"), &format!("k8s:node-name:{node}")],
    );
    e.dns_names = dns_names.iter().map(|d| d.to_string()).collect();
    e
}

/// The audit lines (`k8s_workload_registrar::audit`, one per SPIRE write) of a JSON log.
pub fn audit_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "k8s_workload_registrar::audit")
        .collect()
}
