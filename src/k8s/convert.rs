//! Kubernetes objects → the identity core's plain data. Only the fields the core reads are
//! kept, which is also what keeps the caches small (no managedFields, specs or statuses).

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};

use crate::identity::{EndpointSliceInfo, MetadataKeys, NodeInfo, PodInfo, SliceEndpoint};

/// A pod with every label and annotation, for one-off reads (an admission review, a crd
/// projection pass).
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    pod_with(pod, meta.labels.clone().unwrap_or_default(), meta.annotations.clone().unwrap_or_default())
}

/// A pod as the cache holds it: only the labels and annotations the rules read (`keys`, from
/// [`crate::identity::Naming::metadata_keys`]), so a tenant's large metadata costs nothing.
pub fn cached_pod_info(pod: &Pod, keys: &MetadataKeys) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let labels = MetadataKeys::keep(&keys.labels, meta.labels.as_ref());
    pod_with(pod, labels, MetadataKeys::keep(&keys.annotations, meta.annotations.as_ref()))
}

fn pod_with(
    pod: &Pod,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Option<PodInfo> {
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
        labels,
        annotations,
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_cache_keeps_only_the_metadata_the_rules_read() {
        let big = "x".repeat(64 * 1024);
        let pod = Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("web".into()),
                labels: map(&[("app", "web"), ("spiffe.io/id", "pay")]),
                annotations: map(&[
                    ("kubectl.kubernetes.io/last-applied-configuration", &big),
                    ("spiffe.io/federatesWith", "a.org"),
                ]),
                ..Default::default()
            },
            ..Default::default()
        };
        let keys = MetadataKeys {
            labels: vec!["spiffe.io/id".into(), "absent".into()],
            annotations: vec!["spiffe.io/federatesWith".into()],
        };
        let cached = cached_pod_info(&pod, &keys).unwrap();
        assert_eq!(Some(cached.labels), map(&[("spiffe.io/id", "pay")]));
        assert_eq!(Some(cached.annotations), map(&[("spiffe.io/federatesWith", "a.org")]));
        // One-off reads see everything.
        let full = pod_info(&pod).unwrap();
        assert_eq!((full.labels.len(), full.annotations.len()), (2, 2));
        assert_eq!(
            PodInfo { labels: Default::default(), annotations: Default::default(), ..full },
            PodInfo {
                labels: Default::default(),
                annotations: Default::default(),
                ..cached_pod_info(&pod, &keys).unwrap()
            }
        );
    }
}
