//! What a SpiffeID may ask for: the trust boundary of CRD mode. Pure; the controller runs it
//! before every write (so a SpiffeID created while no validating webhook was registered still gets
//! no entry), and the SpiffeID validating webhook is to run the same function.
//!
//! # Rules, in order
//! 1. The spec must convert ([`convert::entry_spec`]): both IDs in our trust domain (exact), valid
//!    DNS names and federated trust domains (never our own), at least one selector.
//! 2. A workload entry (parent ≠ `spiffe://<td>/spire/server`) may not take a reserved identity
//!    (`identity::workload_id`: `/spire`, `/k8s-workload-registrar`, `/spire-k8s-registrar`).
//! 3. SpiffeIDs outside the registrar's own namespace belong to tenants. They may not
//!    * use the `cluster` or `agent_node_uid` selectors (node attestation selectors: the entry
//!      would become a node alias);
//!    * set `downstream` (a CA for the whole trust domain);
//!    * use a parent equal to or under `/spire/server` (a node-alias entry);
//!    * use a parent under a registrar prefix (`/k8s-workload-registrar`, `/spire-k8s-registrar`),
//!      except the one shape the registrar itself writes
//!      for pods: the alias `k8s-workload-registrar/<cluster>/node/<N>` of the node `N` named by
//!      `selector.nodeName`, with `selector.podUid` set (so the entry matches one pod on that node
//!      and is served by that node's agent only);
//!    * select another namespace: `selector.namespace` must be set to the SpiffeID's own
//!      namespace, and an `arbitrary` selector `ns:<x>` must name it too.
//! 4. In the registrar's own namespace (node SpiffeIDs live there) everything rule 1 and 2 allow
//!    is allowed, as in the original.

use super::{
    convert::{SpecError, entry_spec},
    pods::node_alias,
    resource::SpiffeIdSpec,
};
use crate::{
    id::{SpiffeId, TrustDomain},
    identity::{check_not_reserved, is_registrar_id},
    model::EntrySpec,
};

/// The settings the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub trust_domain: TrustDomain,
    pub cluster: String,
    /// The registrar's namespace; `None` when unknown, and then every namespace is a tenant's.
    pub own_namespace: Option<String>,
}

impl Policy {
    /// The entry the SpiffeID `spec` in `namespace` stands for, or the first rule it breaks.
    pub fn entry(&self, namespace: &str, spec: &SpiffeIdSpec) -> Result<EntrySpec, SpecError> {
        let entry = entry_spec(spec, &self.trust_domain)?;
        let server = self.trust_domain.server_id();
        if entry.parent_id != server {
            check_not_reserved(&entry.spiffe_id, None).map_err(SpecError::SpiffeId)?;
        }
        if self.own_namespace.as_deref() == Some(namespace) {
            return Ok(entry);
        }
        let refuse = |field: &'static str, value: &str, why: &'static str| SpecError::NotAllowed {
            field,
            value: value.to_string(),
            why,
        };
        let sel = &spec.selector;
        if let Some(v) = sel.cluster.as_deref().filter(|v| !v.is_empty()) {
            return Err(refuse("selector.cluster", v, ONLY_REGISTRAR));
        }
        if let Some(v) = sel.agent_node_uid.as_deref().filter(|v| !v.is_empty()) {
            return Err(refuse("selector.agent_node_uid", v, ONLY_REGISTRAR));
        }
        if spec.downstream {
            return Err(refuse("downstream", "true", "is only allowed in the registrar's namespace"));
        }
        if entry.parent_id.is_under(&server) {
            return Err(refuse(
                "parentId",
                &spec.parent_id,
                "makes a node-alias entry; only the registrar may",
            ));
        }
        if is_registrar_id(&entry.parent_id) && !self.is_pod_shape(&entry.parent_id, spec) {
            return Err(refuse(
                "parentId",
                &spec.parent_id,
                "is reserved; a node-alias parent is only allowed as the alias of selector.nodeName \
                 with selector.podUid set",
            ));
        }
        match sel.namespace.as_deref() {
            Some(ns) if ns == namespace => {}
            other => {
                return Err(refuse(
                    "selector.namespace",
                    other.unwrap_or_default(),
                    "must be set to the SpiffeID's own namespace",
                ));
            }
        }
        for a in &sel.arbitrary {
            if let Some(ns) = a.strip_prefix("ns:")
                && ns != namespace
            {
                return Err(refuse("selector.arbitrary", a, "selects another namespace"));
            }
        }
        Ok(entry)
    }

    /// True when `parent` is the alias of the node named by `selector.nodeName` and the entry is
    /// pinned to one pod: the shape the registrar writes for pods.
    fn is_pod_shape(&self, parent: &SpiffeId, spec: &SpiffeIdSpec) -> bool {
        let (Some(node), Some(uid)) = (spec.selector.node_name.as_deref(), spec.selector.pod_uid.as_deref())
        else {
            return false;
        };
        !uid.is_empty()
            && node_alias(&self.trust_domain, &self.cluster, node).is_ok_and(|alias| &alias == parent)
    }
}

const ONLY_REGISTRAR: &str = "is a node attestation selector; only the registrar's namespace may use it";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::resource::Selector;

    fn policy() -> Policy {
        Policy {
            trust_domain: TrustDomain::parse("example.org").unwrap(),
            cluster: "c1".into(),
            own_namespace: Some("spire".into()),
        }
    }

    /// What the registrar writes for pod `shop/web` on node n1.
    fn pod_spec() -> SpiffeIdSpec {
        SpiffeIdSpec {
            parent_id: "spiffe://example.org/k8s-workload-registrar/c1/node/n1".into(),
            spiffe_id: "spiffe://example.org/ns/shop/sa/web".into(),
            selector: Selector {
                namespace: Some("shop".into()),
                pod_uid: Some("u1".into()),
                node_name: Some("n1".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// What the registrar writes for node n1 (in its own namespace).
    fn node_spec() -> SpiffeIdSpec {
        SpiffeIdSpec {
            parent_id: "spiffe://example.org/spire/server".into(),
            spiffe_id: "spiffe://example.org/k8s-workload-registrar/c1/node/n1".into(),
            selector: Selector {
                cluster: Some("c1".into()),
                agent_node_uid: Some("nu".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn what_the_registrar_writes_is_allowed() {
        assert!(policy().entry("shop", &pod_spec()).is_ok());
        assert!(policy().entry("spire", &node_spec()).is_ok());
        // A tenant's own manual SpiffeID with an ordinary parent.
        let mut manual = pod_spec();
        manual.parent_id = "spiffe://example.org/spire/agent/k8s_psat/c1/x".into();
        manual.selector = Selector {
            namespace: Some("shop".into()),
            arbitrary: vec!["ns:shop".into()],
            ..Default::default()
        };
        assert!(policy().entry("shop", &manual).is_ok());
    }

    #[test]
    fn tenants_cannot_write_what_only_the_registrar_may() {
        type Edit = fn(&mut SpiffeIdSpec);
        let table: Vec<(&str, Edit, &str)> = vec![
            ("node alias in a tenant namespace", |s| *s = node_spec(), "selector.cluster"),
            ("agent node uid", |s| s.selector.agent_node_uid = Some("nu".into()), "selector.agent_node_uid"),
            ("cluster selector", |s| s.selector.cluster = Some("c1".into()), "selector.cluster"),
            ("downstream", |s| s.downstream = true, "downstream"),
            ("server parent", |s| s.parent_id = "spiffe://example.org/spire/server".into(), "parentId"),
            (
                "another node's alias as parent",
                |s| s.parent_id = "spiffe://example.org/k8s-workload-registrar/c1/node/n2".into(),
                "parentId",
            ),
            ("node alias parent without a pod uid", |s| s.selector.pod_uid = None, "parentId"),
            (
                "cluster ID as parent",
                |s| s.parent_id = "spiffe://example.org/k8s-workload-registrar/c1/node".into(),
                "parentId",
            ),
            (
                "reconcile alias as parent",
                |s| s.parent_id = "spiffe://example.org/spire-k8s-registrar/c1/node/n1".into(),
                "parentId",
            ),
            ("another namespace", |s| s.selector.namespace = Some("bank".into()), "selector.namespace"),
            ("no namespace", |s| s.selector.namespace = None, "selector.namespace"),
            ("arbitrary namespace", |s| s.selector.arbitrary = vec!["ns:bank".into()], "selector.arbitrary"),
            (
                "a node alias as identity",
                |s| s.spiffe_id = "spiffe://example.org/k8s-workload-registrar/c1/node/n2".into(),
                "spiffeId",
            ),
            ("SPIRE's namespace", |s| s.spiffe_id = "spiffe://example.org/spire/agent/x".into(), "spiffeId"),
        ];
        for (what, edit, field) in table {
            let mut spec = pod_spec();
            edit(&mut spec);
            let err = policy().entry("shop", &spec).unwrap_err();
            assert_eq!(err.field(), field, "{what}: {err}");
            assert_eq!(err.metric_label(), "reserved_id", "{what}: {err}");
            assert!(err.to_string().starts_with(&format!("spec.{field}")), "{what}: {err}");
        }
    }

    #[test]
    fn reserved_identities_are_refused_even_in_the_registrars_namespace() {
        let mut spec = pod_spec();
        spec.spiffe_id = "spiffe://example.org/k8s-workload-registrar/c1/node/n2".into();
        assert_eq!(policy().entry("spire", &spec).unwrap_err().metric_label(), "reserved_id");
        // Without a known own namespace, every namespace is a tenant's.
        let unknown = Policy { own_namespace: None, ..policy() };
        assert!(unknown.entry("spire", &node_spec()).is_err());
    }
}
