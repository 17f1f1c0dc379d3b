//! Pod / Node → desired SpiffeID spec (the original's pod and node controllers, 3.3-3.5). Pure.
//! The rules shared with the other modes (value → SPIFFE ID, reserved identities, eligibility,
//! federation) are `identity`'s; errors are `identity::IdentityError`s like in every mode.
//!
//! Deliberate differences from the original: every field is kept up to date (not only
//! `spiffeId`); a pod that loses its label/annotation, or whose identity becomes invalid, loses
//! its SpiffeID; DNS names are validated (invalid ones dropped) and de-duplicated; federation
//! domains are validated, and an invalid one yields no SpiffeID.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    resource::{Selector, SpiffeIdSpec},
    template::{PodFields, render},
};
use crate::{
    id::{IdError, SpiffeId, TrustDomain, validate_dns_name},
    identity::{
        Field, IdSource, IdentityError, IdentityErrorKind, PodInfo, federates_with, pod_ref, workload_id,
    },
};

/// First path segment of CRD-mode node IDs (fixed, as in the original).
pub const PREFIX: &str = "k8s-workload-registrar";
/// The default identity template when neither a template nor a label/annotation is configured.
pub const DEFAULT_IDENTITY_TEMPLATE: &str = "ns/{{.Pod.Namespace}}/sa/{{.Pod.ServiceAccount}}";

/// Where a pod's SPIFFE ID path comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityRule {
    Template(String),
    Label(String),
    Annotation(String),
}

impl IdentityRule {
    /// The rule the original derived from `identity_template`, `pod_label` and `pod_annotation`.
    pub fn from_config(template: Option<&str>, id_source: &IdSource) -> Self {
        match (template, id_source) {
            (Some(t), _) => IdentityRule::Template(t.to_string()),
            (None, IdSource::Label(l)) => IdentityRule::Label(l.clone()),
            (None, IdSource::Annotation(a)) => IdentityRule::Annotation(a.clone()),
            (None, IdSource::ServiceAccount) => IdentityRule::Template(DEFAULT_IDENTITY_TEMPLATE.into()),
        }
    }
}

/// Everything the pod rules need from the configuration.
#[derive(Debug, Clone)]
pub struct PodRules {
    pub trust_domain: TrustDomain,
    pub cluster: String,
    pub identity: IdentityRule,
    /// Template mode only: pods must carry this label with value `true` (case-insensitive).
    pub identity_template_label: Option<String>,
    pub dns_name_templates: Vec<String>,
    pub context: BTreeMap<String, String>,
    pub disabled_namespaces: BTreeSet<String>,
}

/// CRD mode's node-alias ID: `spiffe://<td>/k8s-workload-registrar/<cluster>/node/<node>`.
pub fn node_alias(td: &TrustDomain, cluster: &str, node: &str) -> Result<SpiffeId, IdError> {
    SpiffeId::from_segments(td, &[PREFIX, cluster, "node", node])
}

/// The desired spec plus the DNS names that were dropped as invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPod {
    pub spec: SpiffeIdSpec,
    pub dropped_dns_names: Vec<String>,
}

/// The fields a template may reference.
pub fn template_fields(pod: &PodInfo) -> PodFields {
    PodFields {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        uid: pod.uid.clone(),
        service_account: pod.service_account.clone(),
        hostname: pod.hostname.clone(),
        node_name: pod.node_name.clone().unwrap_or_default(),
    }
}

impl PodRules {
    pub fn node_id(&self, node: &str) -> Result<SpiffeId, IdError> {
        node_alias(&self.trust_domain, &self.cluster, node)
    }

    /// The SpiffeID a pod should have, `None` when it should have none (disabled namespace,
    /// unscheduled, terminal, no label/annotation, template label missing). The value, reserved
    /// identity, eligibility and federation rules are `identity`'s, shared with every mode.
    /// `service_names` are `<svc>.<ns>.svc` names appended to the DNS names.
    pub fn pod(&self, pod: &PodInfo, service_names: &[String]) -> Result<Option<DesiredPod>, IdentityError> {
        if self.disabled_namespaces.contains(&pod.namespace) {
            return Ok(None);
        }
        let Some(node) = pod.running_on() else {
            return Ok(None);
        };
        let fields = template_fields(pod);
        let render = |key: &'static str, template: &str| {
            render(template, &fields, &self.context).map_err(|e| -> IdentityError {
                IdentityErrorKind::Template { object: pod_ref(pod), key, reason: e.to_string() }.into()
            })
        };
        let (field, value) = match &self.identity {
            IdentityRule::Label(l) => match pod.labels.get(l) {
                Some(v) => (Field::Label(l.clone()), v.clone()),
                None => return Ok(None),
            },
            IdentityRule::Annotation(a) => match pod.annotations.get(a) {
                Some(v) => (Field::Annotation(a.clone()), v.clone()),
                None => return Ok(None),
            },
            IdentityRule::Template(t) => {
                if let Some(label) = &self.identity_template_label
                    && !pod.labels.get(label).is_some_and(|v| v.eq_ignore_ascii_case("true"))
                {
                    return Ok(None);
                }
                (Field::IdentityTemplate, render("identity_template", t)?)
            }
        };
        let invalid = |field: Field, value: &str, reason: IdError| -> IdentityError {
            IdentityErrorKind::InvalidId { object: pod_ref(pod), field, value: value.to_string(), reason }
                .into()
        };
        let spiffe_id =
            workload_id(&self.trust_domain, &value, None).map_err(|reason| invalid(field, &value, reason))?;
        let parent_id = self.node_id(node).map_err(|reason| invalid(Field::NodeName, node, reason))?;
        let mut dns_names = Vec::new();
        let mut dropped_dns_names = Vec::new();
        for t in &self.dns_name_templates {
            // As the original: spaces are removed from DNS templates before rendering.
            let t: String = t.chars().filter(|c| *c != ' ').collect();
            let rendered = render("dns_name_templates", &t)?;
            push_dns(&mut dns_names, &mut dropped_dns_names, &rendered);
        }
        for s in service_names {
            push_dns(&mut dns_names, &mut dropped_dns_names, s);
        }
        let federates_with = federates_with(pod, &self.trust_domain)?;
        let spec = SpiffeIdSpec {
            parent_id: parent_id.to_string(),
            spiffe_id: spiffe_id.to_string(),
            selector: Selector {
                pod_uid: Some(pod.uid.clone()),
                namespace: Some(pod.namespace.clone()),
                node_name: Some(node.to_string()),
                ..Default::default()
            },
            dns_names,
            federates_with: federates_with.into_iter().collect(),
            downstream: false,
        };
        Ok(Some(DesiredPod { spec, dropped_dns_names }))
    }

    /// A node's SpiffeID: `spiffe://<td>/k8s-workload-registrar/<cluster>/node/<node>`, parent
    /// the server, selectors cluster + agent node UID.
    pub fn node(&self, name: &str, uid: &str) -> Result<SpiffeIdSpec, IdError> {
        Ok(SpiffeIdSpec {
            parent_id: self.trust_domain.server_id().to_string(),
            spiffe_id: self.node_id(name)?.to_string(),
            selector: Selector {
                cluster: Some(self.cluster.clone()),
                agent_node_uid: Some(uid.to_string()),
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

fn push_dns(names: &mut Vec<String>, dropped: &mut Vec<String>, raw: &str) {
    match validate_dns_name(raw) {
        Ok(n) if !names.contains(&n) => names.push(n),
        Ok(_) => {}
        Err(_) => dropped.push(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::FEDERATES_WITH_ANNOTATION;

    fn rules(identity: IdentityRule) -> PodRules {
        PodRules {
            trust_domain: TrustDomain::parse("example.org").unwrap(),
            cluster: "c1".into(),
            identity,
            identity_template_label: None,
            dns_name_templates: vec!["{{.Pod.Name}}".into(), "{{ .Pod.Name }}".into(), "{{.Pod.UID}}".into()],
            context: BTreeMap::from([("Region".into(), "eu".into())]),
            disabled_namespaces: BTreeSet::from(["kube-system".to_string()]),
        }
    }

    fn pod() -> PodInfo {
        PodInfo {
            name: "web-1".into(),
            namespace: "shop".into(),
            uid: "u_1".into(),
            service_account: "web-sa".into(),
            node_name: Some("n1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn default_template_pod() {
        let r = rules(IdentityRule::from_config(None, &IdSource::ServiceAccount));
        let d = r.pod(&pod(), &["web.shop.svc".into()]).unwrap().unwrap();
        assert_eq!(d.spec.spiffe_id, "spiffe://example.org/ns/shop/sa/web-sa");
        assert_eq!(d.spec.parent_id, "spiffe://example.org/k8s-workload-registrar/c1/node/n1");
        assert_eq!(d.spec.selector.pod_uid.as_deref(), Some("u_1"));
        assert_eq!(d.spec.selector.namespace.as_deref(), Some("shop"));
        assert_eq!(d.spec.selector.node_name.as_deref(), Some("n1"));
        assert_eq!(d.spec.dns_names, ["web-1", "web.shop.svc"]);
        assert_eq!(d.dropped_dns_names, ["u_1"]);
    }

    #[test]
    fn no_spiffeid_cases() {
        let r = rules(IdentityRule::Label("spiffe.io/id".into()));
        assert_eq!(r.pod(&pod(), &[]), Ok(None), "label missing");
        let mut p = pod();
        p.labels.insert("spiffe.io/id".into(), "services/pay/v1".into());
        assert_eq!(r.pod(&p, &[]).unwrap().unwrap().spec.spiffe_id, "spiffe://example.org/services/pay/v1");
        let mut t = p.clone();
        t.terminal = true;
        assert_eq!(r.pod(&t, &[]), Ok(None), "terminal");
        let mut u = p.clone();
        u.node_name = None;
        assert_eq!(r.pod(&u, &[]), Ok(None), "unscheduled");
        let mut d = p.clone();
        d.namespace = "kube-system".into();
        assert_eq!(r.pod(&d, &[]), Ok(None), "disabled namespace");
        let mut bad = p.clone();
        bad.labels.insert("spiffe.io/id".into(), "a//b".into());
        assert!(matches!(r.pod(&bad, &[]).unwrap_err().kind(), IdentityErrorKind::InvalidId { .. }));
        for hostile in
            ["k8s-workload-registrar/c1/node/n2", "spire/server", "/k8s-workload-registrar/c1/node"]
        {
            bad.labels.insert("spiffe.io/id".into(), hostile.into());
            let err = r.pod(&bad, &[]).unwrap_err();
            assert_eq!(err.metric_label(), "reserved_id", "{err}");
            assert!(err.to_string().starts_with("pod shop/web-1: label \"spiffe.io/id\" value"), "{err}");
        }
        let tmpl = rules(IdentityRule::Template("spire/{{.Pod.Name}}".into()));
        assert_eq!(tmpl.pod(&pod(), &[]).unwrap_err().metric_label(), "reserved_id");

        let mut gated = rules(IdentityRule::Template("r/{{.Context.Region}}/{{.Pod.Name}}".into()));
        gated.identity_template_label = Some("spiffe.io/spiffe-id".into());
        assert_eq!(gated.pod(&pod(), &[]), Ok(None), "template label missing");
        let mut on = pod();
        on.labels.insert("spiffe.io/spiffe-id".into(), "TRUE".into());
        assert_eq!(gated.pod(&on, &[]).unwrap().unwrap().spec.spiffe_id, "spiffe://example.org/r/eu/web-1");
    }

    #[test]
    fn federation_annotation() {
        let r = rules(IdentityRule::Template(DEFAULT_IDENTITY_TEMPLATE.into()));
        let mut p = pod();
        p.annotations.insert(FEDERATES_WITH_ANNOTATION.into(), " b.org ,a.org,b.org,".into());
        assert_eq!(r.pod(&p, &[]).unwrap().unwrap().spec.federates_with, ["a.org", "b.org"]);
        p.annotations.insert(FEDERATES_WITH_ANNOTATION.into(), "example.org".into());
        assert_eq!(r.pod(&p, &[]).unwrap_err().metric_label(), "federates_with_self");
        p.annotations.insert(FEDERATES_WITH_ANNOTATION.into(), "Bad Domain".into());
        assert_eq!(r.pod(&p, &[]).unwrap_err().metric_label(), "invalid_federation");
    }

    #[test]
    fn node_spiffeid() {
        let r = rules(IdentityRule::Template(DEFAULT_IDENTITY_TEMPLATE.into()));
        let s = r.node("n1", "uid-1").unwrap();
        assert_eq!(s.spiffe_id, "spiffe://example.org/k8s-workload-registrar/c1/node/n1");
        assert_eq!(s.parent_id, "spiffe://example.org/spire/server");
        assert_eq!(s.selector.cluster.as_deref(), Some("c1"));
        assert_eq!(s.selector.agent_node_uid.as_deref(), Some("uid-1"));
    }
}
