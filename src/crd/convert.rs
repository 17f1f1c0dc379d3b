//! SpiffeID spec → the SPIRE entry it stands for. Pure; every rejection names the field.

use std::collections::BTreeSet;

use super::resource::{Selector as CrdSelector, SpiffeIdSpec};
use crate::{
    id::{DnsError, IdError, SpiffeId, TrustDomain, validate_dns_name},
    model::{EntrySpec, Selector, Selectors},
};

/// Why a SpiffeID gets no entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.spiffeId: {0}")]
    SpiffeId(IdError),
    #[error("spec.parentId: {0}")]
    ParentId(IdError),
    #[error("spec.spiffeId: {0:?} is reserved for SPIRE itself (/spire/...)")]
    Reserved(String),
    #[error("spec.dnsNames: {0}")]
    DnsName(DnsError),
    #[error("spec.federatesWith: {0}")]
    FederatesWith(IdError),
    #[error("spec.federatesWith: {0:?} is this registrar's own trust domain (SPIRE rejects it)")]
    FederatesWithSelf(String),
    /// A field asks for what only the registrar may write (see `crd::policy`).
    #[error("spec.{field}: {value:?} {why}")]
    NotAllowed { field: &'static str, value: String, why: &'static str },
    #[error("spec.selector: no selector is set (the entry would match nothing)")]
    EmptySelector,
}

impl SpecError {
    /// A short, bounded reason for metrics and Event reasons.
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::SpiffeId(IdError::Reserved { .. }) | SpecError::Reserved(_) => "spiffeId",
            SpecError::SpiffeId(_) => "spiffeId",
            SpecError::ParentId(_) => "parentId",
            SpecError::DnsName(_) => "dnsNames",
            SpecError::FederatesWith(_) | SpecError::FederatesWithSelf(_) => "federatesWith",
            SpecError::EmptySelector => "selector",
            SpecError::NotAllowed { field, .. } => field,
        }
    }

    /// True when the spec asks for a reserved identity or for what only the registrar may write
    /// (as opposed to a malformed value).
    pub fn is_reserved(&self) -> bool {
        matches!(
            self,
            SpecError::Reserved(_)
                | SpecError::SpiffeId(IdError::Reserved { .. })
                | SpecError::NotAllowed { .. }
        )
    }

    /// A bounded label for metrics; the same set as `identity::IdentityError::metric_label`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            _ if self.is_reserved() => "reserved_id",
            SpecError::FederatesWith(_) => "invalid_federation",
            SpecError::FederatesWithSelf(_) => "federates_with_self",
            _ => "invalid_id",
        }
    }
}

/// SPIRE selectors for a SpiffeID selector, as the original mapped them (3.1).
pub fn selectors(sel: &CrdSelector) -> Selectors {
    let mut out = Vec::new();
    let mut add = |s: Selector| out.push(s);
    let non_empty = |v: &Option<String>| v.as_deref().filter(|v| !v.is_empty()).map(str::to_string);
    if let Some(v) = non_empty(&sel.cluster) {
        add(Selector::psat(format!("cluster:{v}")));
    }
    if let Some(v) = non_empty(&sel.agent_node_uid) {
        add(Selector::psat(format!("agent_node_uid:{v}")));
    }
    for (k, v) in &sel.pod_label {
        add(Selector::k8s(format!("pod-label:{k}:{v}")));
    }
    let simple = [
        ("pod-name", &sel.pod_name),
        ("pod-uid", &sel.pod_uid),
        ("ns", &sel.namespace),
        ("sa", &sel.service_account),
        ("container-name", &sel.container_name),
        ("container-image", &sel.container_image),
        ("node-name", &sel.node_name),
    ];
    for (kind, value) in simple {
        if let Some(v) = non_empty(value) {
            add(Selector::k8s(format!("{kind}:{v}")));
        }
    }
    for a in sel.arbitrary.iter().filter(|a| !a.is_empty()) {
        add(Selector::k8s(a.clone()));
    }
    out.into_iter().collect()
}

/// The entry a SpiffeID stands for, or why it gets none. Both IDs must be in `td` (exact
/// comparison); the SPIFFE ID may not be reserved (`/spire/...`); every DNS name and federated
/// trust domain must be valid (trimmed and de-duplicated); at least one selector must be set.
pub fn entry_spec(spec: &SpiffeIdSpec, td: &TrustDomain) -> Result<EntrySpec, SpecError> {
    let spiffe_id = SpiffeId::parse_in(spec.spiffe_id.trim(), td).map_err(SpecError::SpiffeId)?;
    if spiffe_id.path() == "/spire" || spiffe_id.path().starts_with("/spire/") {
        return Err(SpecError::Reserved(spiffe_id.to_string()));
    }
    let parent_id = SpiffeId::parse_in(spec.parent_id.trim(), td).map_err(SpecError::ParentId)?;
    let mut dns_names = Vec::new();
    for name in &spec.dns_names {
        let name = validate_dns_name(name).map_err(SpecError::DnsName)?;
        if !dns_names.contains(&name) {
            dns_names.push(name);
        }
    }
    let mut federates_with = BTreeSet::new();
    for d in &spec.federates_with {
        let domain = TrustDomain::parse(d.trim()).map_err(SpecError::FederatesWith)?;
        if &domain == td {
            return Err(SpecError::FederatesWithSelf(d.clone()));
        }
        federates_with.insert(domain.to_string());
    }
    let selectors = selectors(&spec.selector);
    if selectors.is_empty() {
        return Err(SpecError::EmptySelector);
    }
    Ok(EntrySpec {
        spiffe_id,
        parent_id,
        selectors,
        dns_names,
        federates_with,
        downstream: spec.downstream,
        managed: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn spec() -> SpiffeIdSpec {
        SpiffeIdSpec {
            parent_id: "spiffe://example.org/k8s-workload-registrar/c1/node/n1".into(),
            spiffe_id: "spiffe://example.org/ns/shop/sa/web".into(),
            selector: CrdSelector {
                namespace: Some("shop".into()),
                pod_uid: Some("u1".into()),
                node_name: Some("n1".into()),
                ..Default::default()
            },
            dns_names: vec!["web.shop.svc".into(), " web.shop.svc ".into(), "web".into()],
            federates_with: vec!["other.org".into(), " other.org".into()],
            downstream: true,
        }
    }

    #[test]
    fn converts_every_field() {
        let e = entry_spec(&spec(), &td()).unwrap();
        assert_eq!(e.spiffe_id.to_string(), "spiffe://example.org/ns/shop/sa/web");
        assert_eq!(e.parent_id.to_string(), "spiffe://example.org/k8s-workload-registrar/c1/node/n1");
        let sel: Vec<String> = e.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(sel, ["k8s:node-name:n1", "k8s:ns:shop", "k8s:pod-uid:u1"]);
        assert_eq!(e.dns_names, ["web.shop.svc", "web"]);
        assert_eq!(e.federates_with.iter().collect::<Vec<_>>(), ["other.org"]);
        assert!(e.downstream);
    }

    #[test]
    fn maps_every_selector() {
        let sel = CrdSelector {
            cluster: Some("c1".into()),
            agent_node_uid: Some("nu".into()),
            pod_label: BTreeMap::from([("app".into(), "web".into())]),
            pod_name: Some("p".into()),
            pod_uid: Some("u".into()),
            namespace: Some("ns".into()),
            service_account: Some("sa".into()),
            container_image: Some("img".into()),
            container_name: Some("cn".into()),
            node_name: Some("n".into()),
            arbitrary: vec!["custom:thing".into(), String::new()],
        };
        let got: BTreeSet<String> = selectors(&sel).iter().map(ToString::to_string).collect();
        let want: BTreeSet<String> = [
            "k8s_psat:cluster:c1",
            "k8s_psat:agent_node_uid:nu",
            "k8s:pod-label:app:web",
            "k8s:pod-name:p",
            "k8s:pod-uid:u",
            "k8s:ns:ns",
            "k8s:sa:sa",
            "k8s:container-image:img",
            "k8s:container-name:cn",
            "k8s:node-name:n",
            "k8s:custom:thing",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rejects_hostile_specs() {
        type Edit = fn(&mut SpiffeIdSpec);
        let table: Vec<(Edit, &str)> = vec![
            (|s| s.spiffe_id = "spiffe://example.org.evil/x".into(), "spiffeId"),
            (|s| s.spiffe_id = "spiffe://evil.org/x".into(), "spiffeId"),
            (|s| s.spiffe_id = "example.org/x".into(), "spiffeId"),
            (|s| s.spiffe_id = "spiffe://example.org/spire/server".into(), "spiffeId"),
            (|s| s.spiffe_id = "spiffe://example.org/spire".into(), "spiffeId"),
            (|s| s.parent_id = "spiffe://example.org.evil/spire/server".into(), "parentId"),
            (|s| s.dns_names = vec!["bad_name".into()], "dnsNames"),
            (|s| s.federates_with = vec!["Not A Domain".into()], "federatesWith"),
            (|s| s.federates_with = vec!["spiffe://example.org".into()], "federatesWith"),
            (|s| s.selector = CrdSelector::default(), "selector"),
            (
                |s| s.selector = CrdSelector { namespace: Some(String::new()), ..Default::default() },
                "selector",
            ),
        ];
        for (edit, field) in table {
            let mut s = spec();
            edit(&mut s);
            let err = entry_spec(&s, &td()).unwrap_err();
            assert_eq!(err.field(), field, "{s:?}: {err}");
            assert!(err.to_string().starts_with(&format!("spec.{field}")), "{err}");
        }
        // A path that merely starts with "spire" is not reserved.
        let mut s = spec();
        s.spiffe_id = "spiffe://example.org/spirex".into();
        assert!(entry_spec(&s, &td()).is_ok());
    }
}
