//! Kubernetes objects → the identity core's plain data. Only the fields the core reads are
//! kept, which is also what keeps the caches small (no managedFields, specs or statuses).

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};

use crate::identity::{EndpointSliceInfo, NodeInfo, PodInfo, SliceEndpoint};

pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    Some(PodInfo {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        uid: meta.uid.clone().unwrap_or_default(),
        node_name: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        pod_ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
        terminal: matches!(phase, Some("Succeeded" | "Failed")),
        hostname: spec.and_then(|s| s.hostname.clone()).unwrap_or_default(),
        created_unix_ms: meta.creation_timestamp.as_ref().map(|t| t.0.as_millisecond()),
    })
}

pub fn node_info(node: &Node) -> Option<NodeInfo> {
    Some(NodeInfo { name: node.metadata.name.clone()?, uid: node.metadata.uid.clone().unwrap_or_default() })
}

pub fn slice_info(slice: &EndpointSlice) -> Option<EndpointSliceInfo> {
    let meta = &slice.metadata;
    // The owning Service's name is in this well-known label; slices without it are not
    // managed for a Service and yield no service DNS names.
    let service_name = meta.labels.as_ref()?.get("kubernetes.io/service-name")?.clone();
    Some(EndpointSliceInfo {
        namespace: meta.namespace.clone()?,
        service_name,
        endpoints: slice
            .endpoints
            .iter()
            .map(|e| SliceEndpoint {
                addresses: e.addresses.clone(),
                hostname: e.hostname.clone().filter(|h| !h.is_empty()),
                target_pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
            })
            .collect(),
    })
}
