//! The `SpiffeID` custom resource (`spiffeid.spiffe.io/v1beta1`), wire-compatible with the
//! original registrar's CRD. The schema is hand-written in the chart
//! (`deploy/helm/k8s-workload-registrar/files/spiffeid-crd.yaml`; schemars is not a dependency),
//! so the derive runs with `schema = "disabled"`.

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Finalizer on every SpiffeID: its SPIRE entry is deleted before the object goes.
pub const FINALIZER: &str = "finalizers.spiffeid.spiffe.io";
/// Label on pod-derived SpiffeIDs.
pub const POD_UID_LABEL: &str = "podUid";
/// Label on node-derived SpiffeIDs.
pub const NODE_UID_LABEL: &str = "nodeUid";

#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[kube(
    group = "spiffeid.spiffe.io",
    version = "v1beta1",
    kind = "SpiffeID",
    plural = "spiffeids",
    singular = "spiffeid",
    namespaced,
    status = "SpiffeIdStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeIdSpec {
    pub parent_id: String,
    pub spiffe_id: String,
    pub selector: Selector,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub downstream: bool,
}

/// Which workloads the entry matches; every set member becomes one SPIRE selector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, rename = "agent_node_uid", skip_serializing_if = "Option::is_none")]
    pub agent_node_uid: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_label: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arbitrary: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeIdStatus {
    /// The SPIRE entry this SpiffeID owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    /// Why no entry exists (invalid spec, conflict), or absent when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
