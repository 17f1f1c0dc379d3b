//! Test builders for the identity inputs: `PodInfo::test("ns", "web").on_node("n1")`.

use std::collections::BTreeSet;

use super::{EndpointSliceInfo, IdSource, Naming, NodeInfo, PodInfo, SliceEndpoint};
use crate::id::TrustDomain;

impl Naming {
    /// Trust domain `example.org`, cluster `demo`, controller `spire-k8s-registrar`,
    /// service-account IDs, `kube-system` disabled, no DNS names.
    pub(crate) fn test() -> Self {
        Self {
            trust_domain: TrustDomain::parse("example.org").expect("valid trust domain"),
            cluster: "demo".to_string(),
            controller_name: "spire-k8s-registrar".to_string(),
            id_source: IdSource::ServiceAccount,
            disabled_namespaces: BTreeSet::from(["kube-system".to_string()]),
            pod_dns_zone: None,
            managed: Default::default(),
        }
    }

    pub(crate) fn with_id_source(mut self, source: IdSource) -> Self {
        self.id_source = source;
        self
    }

    pub(crate) fn with_dns_zone(mut self, zone: &str) -> Self {
        self.pod_dns_zone = Some(zone.to_string());
        self
    }
}

impl PodInfo {
    /// An unscheduled pod with service account `default` and uid `uid-<name>`.
    pub(crate) fn test(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: format!("uid-{name}"),
            service_account: "default".to_string(),
            ..Self::default()
        }
    }

    pub(crate) fn on_node(mut self, node: &str) -> Self {
        self.node_name = Some(node.to_string());
        self
    }

    pub(crate) fn with_sa(mut self, service_account: &str) -> Self {
        self.service_account = service_account.to_string();
        self
    }

    pub(crate) fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub(crate) fn with_annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub(crate) fn with_ip(mut self, ip: &str) -> Self {
        self.pod_ip = Some(ip.to_string());
        self
    }

    pub(crate) fn terminal(mut self) -> Self {
        self.terminal = true;
        self
    }
}

impl NodeInfo {
    pub(crate) fn test(name: &str) -> Self {
        Self { name: name.to_string(), uid: format!("uid-{name}") }
    }
}

impl EndpointSliceInfo {
    /// A slice of Service `service` with no endpoints yet.
    pub(crate) fn test(namespace: &str, service: &str) -> Self {
        Self { namespace: namespace.to_string(), service_name: service.to_string(), endpoints: Vec::new() }
    }

    /// Adds an endpoint with one address that targets pod `target`.
    pub(crate) fn with_endpoint(mut self, address: &str, target: &str) -> Self {
        self.endpoints.push(SliceEndpoint {
            addresses: vec![address.to_string()],
            hostname: None,
            target_pod: Some(target.to_string()),
        });
        self
    }

    /// Adds an endpoint with a hostname (as for StatefulSet pods) that targets pod `target`.
    pub(crate) fn with_named_endpoint(mut self, address: &str, hostname: &str, target: &str) -> Self {
        self.endpoints.push(SliceEndpoint {
            addresses: vec![address.to_string()],
            hostname: Some(hostname.to_string()),
            target_pod: Some(target.to_string()),
        });
        self
    }
}
