//! Kubernetes objects → the SPIRE entries they should have. Pure: plain-data inputs (the `k8s`
//! layer converts kube objects into [`PodInfo`], [`NodeInfo`] and [`EndpointSliceInfo`]), no I/O,
//! no logging; every rejected value comes back as an [`IdentityError`] or a [`DnsError`] warning so
//! the shell can log it, record an Event on the object and count it.
//!
//! # Reconcile mode
//!
//! * Root ID `spiffe://<td>/<controller_name>/<cluster>/node`. No entry is made for the root.
//! * One node-alias entry per Node: SPIFFE ID `<root>/<node>`, parent `spiffe://<td>/spire/server`,
//!   selectors `k8s_psat:cluster:<cluster>` and `k8s_psat:agent_node_name:<node>`.
//! * One entry per Pod that is scheduled (has a node), not terminal (phase Succeeded/Failed), in an
//!   enabled namespace and, in label/annotation mode, carries that label/annotation: parent
//!   `<root>/<node>`, selectors `k8s:ns:<ns>` and `k8s:pod-name:<name>`, federation from the
//!   `spiffe.io/federatesWith` annotation, DNS names (see the `dns` submodule) when
//!   `pod_dns_zone` is set.
//! * Ownership: an entry is ours when its parent is strictly under the root (a pod entry) or its
//!   parent is the server and its SPIFFE ID is strictly under the root (a node-alias entry). The
//!   first segment below the root names the node, which routes the entry to its shard.
//!
//! # Webhook mode
//!
//! * One cluster entry `spiffe://<td>/k8s-workload-registrar/<cluster>/node`, parent the server,
//!   selector `k8s_psat:cluster:<cluster>`.
//! * One entry per Pod in an enabled namespace (that carries the label/annotation, in those modes):
//!   parent the cluster entry, same selectors, SPIFFE ID and federation as reconcile mode, no DNS.
//!
//! # SPIFFE ID of a pod (both modes)
//!
//! * Service-account mode: `/ns/<namespace>/sa/<service account>`.
//! * Label/annotation mode: the value is the path ([`workload_id`]: several segments allowed, one
//!   leading `/` tolerated, every segment validated). An invalid value is an error, never a
//!   partial ID.
//! * Reserved identities ([`workload_id`] module): no pod ID may equal or lie under `/spire`,
//!   `/k8s-workload-registrar`, `/spire-k8s-registrar` or `/<controller_name>`; such a pod gets no
//!   entry (webhook mode: the admission is denied) and an error saying why.
//!
//! # Federation
//!
//! `spiffe.io/federatesWith` is split on `,`; pieces are trimmed, empty pieces dropped, duplicates
//! removed; each must parse as a trust domain (`example.org` or `spiffe://example.org`, stored
//! bare) other than our own, else the pod gets no entry and an error naming the piece.

mod dns;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
pub mod workload_id;

pub use workload_id::{check_not_reserved, is_registrar_id, workload_id};

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use crate::{
    id::{DnsError, IdError, SpiffeId, TrustDomain, validate_segment},
    model::{EntrySpec, Managed, Selector, Selectors},
};

/// The pod annotation listing the trust domains a workload federates with.
pub const FEDERATES_WITH_ANNOTATION: &str = "spiffe.io/federatesWith";

/// First path segment of the webhook-mode cluster entry (fixed; webhook mode has no
/// `controller_name`).
const WEBHOOK_PREFIX: &str = "k8s-workload-registrar";

/// Where a pod's SPIFFE ID path comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    /// `/ns/<namespace>/sa/<service account>`.
    ServiceAccount,
    /// The value of this label; pods without it get no entry.
    Label(String),
    /// The value of this annotation; pods without it get no entry.
    Annotation(String),
}

/// What the registrar needs to know about a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.nodeName`; `None` (or empty) until the pod is scheduled.
    pub node_name: Option<String>,
    /// `spec.serviceAccountName`.
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `status.podIP`; `None` (or empty) until assigned.
    pub pod_ip: Option<String>,
    /// Phase `Succeeded` or `Failed`: the pod will never run again, so it needs no entry.
    pub terminal: bool,
    /// `spec.hostname` (usually empty); CRD-mode templates may use it.
    pub hostname: String,
    /// `metadata.creationTimestamp` in milliseconds since the Unix epoch, for the registration
    /// latency metric only (never part of an identity).
    pub created_unix_ms: Option<i64>,
}

impl PodInfo {
    /// The node of a pod that should hold an identity now: scheduled and not terminal (the
    /// eligibility rule of every mode that parents entries to nodes). A draining pod is still
    /// eligible: it can renew its SVID until it is gone.
    pub fn running_on(&self) -> Option<&str> {
        non_empty(self.node_name.as_deref()).filter(|_| !self.terminal)
    }
}

/// The pod labels and annotations the rules read. A cached pod keeps only these: a real pod's
/// metadata can be kilobytes (`kubectl.kubernetes.io/last-applied-configuration` holds the whole
/// manifest) and tenants choose its size.
///
/// Invariant: [`Naming`]'s rules give the same result for a pod and for that pod after
/// [`MetadataKeys::keep`] (a rule that reads a new key must add it here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataKeys {
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
}

impl MetadataKeys {
    /// The pairs of `map` whose key is one of `keys`.
    pub fn keep(keys: &[String], map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
        let Some(map) = map else { return BTreeMap::new() };
        keys.iter().filter_map(|k| map.get_key_value(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// What the registrar needs to know about a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub uid: String,
}

/// What the registrar needs to know about an EndpointSlice (for DNS names only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    pub namespace: String,
    /// The `kubernetes.io/service-name` label: the Service this slice belongs to.
    pub service_name: String,
    /// All endpoints, ready or not (the original used ready and not-ready addresses alike).
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub hostname: Option<String>,
    /// `targetRef.name` when `targetRef.kind == "Pod"`, else `None`.
    pub target_pod: Option<String>,
}

/// The settings that decide names. Call [`Naming::validate`] once at start-up; after it succeeds
/// the root and cluster IDs can always be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    pub trust_domain: TrustDomain,
    pub cluster: String,
    pub controller_name: String,
    pub id_source: IdSource,
    /// Pods in these namespaces never get entries (and lose the ones they have).
    pub disabled_namespaces: BTreeSet<String>,
    /// `Some(zone)` when pod DNS names are enabled (`add_pod_dns_names`).
    pub pod_dns_zone: Option<String>,
    /// TTLs and hint set on every entry (`x509_svid_ttl`, `jwt_svid_ttl`, `entry_hint`).
    pub managed: Managed,
}

/// The object an [`IdentityError`] is about, so the shell can attach an Event to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectRef {
    Pod { namespace: String, name: String },
    Node { name: String },
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
            Self::Node { name } => write!(f, "node {name}"),
        }
    }
}

/// The field of an object whose value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Label(String),
    Annotation(String),
    Namespace,
    ServiceAccount,
    Name,
    NodeName,
    /// The result of `identity_template` (crd mode).
    IdentityTemplate,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(key) => write!(f, "label {key:?}"),
            Self::Annotation(key) => write!(f, "annotation {key:?}"),
            Self::Namespace => f.write_str("namespace"),
            Self::ServiceAccount => f.write_str("service account"),
            Self::Name => f.write_str("name"),
            Self::NodeName => f.write_str("node name"),
            Self::IdentityTemplate => f.write_str("identity_template result"),
        }
    }
}

/// Why an object gets no entry although it should have one. The message names the object, the
/// field and the value, and ends with the reason, so it can be used verbatim as an Event message.
/// Boxed so that `Result`s stay small; see [`IdentityError::kind`] for the details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct IdentityError(Box<IdentityErrorKind>);

/// The cases of [`IdentityError`]. The reason is part of the message rather than a `source()`, so
/// error-chain reporters do not print it twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityErrorKind {
    #[error("{object}: {field} value {value:?}: {reason}")]
    InvalidId { object: ObjectRef, field: Field, value: String, reason: IdError },
    #[error("{object}: annotation \"spiffe.io/federatesWith\" lists {piece:?}: {reason}")]
    InvalidFederation { object: ObjectRef, piece: String, reason: IdError },
    #[error(
        "{object}: annotation \"spiffe.io/federatesWith\" lists {piece:?}, our own trust domain \
         (SPIRE rejects it)"
    )]
    FederatesWithOwnTrustDomain { object: ObjectRef, piece: String },
    /// A template could not be rendered for this pod (crd mode; start-up checks make this rare).
    #[error("{object}: {key}: {reason}")]
    Template { object: ObjectRef, key: &'static str, reason: String },
    /// A setting (`cluster`, `controller_name`) that must be a SPIFFE ID path segment is not.
    #[error("setting {key} value {value:?}: {reason}")]
    InvalidSetting { key: &'static str, value: String, reason: IdError },
}

impl From<IdentityErrorKind> for IdentityError {
    fn from(kind: IdentityErrorKind) -> Self {
        Self(Box::new(kind))
    }
}

impl IdentityError {
    pub fn kind(&self) -> &IdentityErrorKind {
        &self.0
    }

    /// The object to record an Event on; `None` for configuration errors.
    pub fn object(&self) -> Option<&ObjectRef> {
        match self.kind() {
            IdentityErrorKind::InvalidId { object, .. }
            | IdentityErrorKind::InvalidFederation { object, .. }
            | IdentityErrorKind::FederatesWithOwnTrustDomain { object, .. }
            | IdentityErrorKind::Template { object, .. } => Some(object),
            IdentityErrorKind::InvalidSetting { .. } => None,
        }
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self.kind() {
            IdentityErrorKind::InvalidId { reason: IdError::Reserved { .. }, .. } => "reserved_id",
            IdentityErrorKind::InvalidId { .. } | IdentityErrorKind::Template { .. } => "invalid_id",
            IdentityErrorKind::InvalidFederation { .. } => "invalid_federation",
            IdentityErrorKind::FederatesWithOwnTrustDomain { .. } => "federates_with_self",
            IdentityErrorKind::InvalidSetting { .. } => "invalid_setting",
        }
    }
}

/// A pod's desired entry plus the DNS names that were dropped because SPIRE would reject them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub spec: EntrySpec,
    /// Each rejected name with the reason; the entry is still made without them.
    pub rejected_dns_names: Vec<DnsError>,
}

/// The selectors that identify a pod's entry in reconcile and webhook modes.
pub fn pod_selectors(namespace: &str, name: &str) -> Selectors {
    Selectors::from([Selector::k8s(format!("ns:{namespace}")), Selector::k8s(format!("pod-name:{name}"))])
}

impl Naming {
    /// Checks that the root and cluster IDs can be built (the original aborted start-up with
    /// "Unable to determine root ID").
    pub fn validate(&self) -> Result<(), IdentityError> {
        self.root_id()?;
        self.webhook_cluster_id()?;
        Ok(())
    }

    /// `spiffe://<td>/spire/server`.
    pub fn server_id(&self) -> SpiffeId {
        self.trust_domain.server_id()
    }

    /// True when pods in `namespace` get no entries.
    pub fn is_disabled(&self, namespace: &str) -> bool {
        self.disabled_namespaces.contains(namespace)
    }

    // ---------------------------------------------------------------- reconcile mode

    /// `spiffe://<td>/<controller_name>/<cluster>/node`: the prefix of every reconcile-mode ID.
    pub fn root_id(&self) -> Result<SpiffeId, IdentityError> {
        let controller = setting("controller_name", &self.controller_name)?;
        let cluster = setting("cluster", &self.cluster)?;
        self.id_from_settings(&[controller, cluster, "node"])
    }

    /// The node-alias entry of a Node. Every node gets one; namespaces play no part.
    pub fn node_entry(&self, node: &NodeInfo) -> Result<EntrySpec, IdentityError> {
        let spiffe_id =
            self.root_id()?.join(&[&node.name]).map_err(|reason| IdentityErrorKind::InvalidId {
                object: ObjectRef::Node { name: node.name.clone() },
                field: Field::Name,
                value: node.name.clone(),
                reason,
            })?;
        Ok(EntrySpec {
            spiffe_id,
            parent_id: self.server_id(),
            selectors: Selectors::from([
                Selector::psat(format!("cluster:{}", self.cluster)),
                Selector::psat(format!("agent_node_name:{}", node.name)),
            ]),
            dns_names: Vec::new(),
            federates_with: BTreeSet::new(),
            downstream: false,
            managed: self.managed.clone(),
        })
    }

    /// The entry a Pod should have, or `None` when it should have none. Rejected DNS names are
    /// dropped silently; use [`Naming::pod_entry_with_warnings`] to report them.
    pub fn pod_entry(
        &self,
        pod: &PodInfo,
        slices: &[EndpointSliceInfo],
    ) -> Result<Option<EntrySpec>, IdentityError> {
        Ok(self.pod_entry_with_warnings(pod, slices)?.map(|desired| desired.spec))
    }

    /// [`Naming::pod_entry`], plus the DNS names it dropped and why.
    pub fn pod_entry_with_warnings(
        &self,
        pod: &PodInfo,
        slices: &[EndpointSliceInfo],
    ) -> Result<Option<Desired>, IdentityError> {
        if self.is_disabled(&pod.namespace) {
            return Ok(None);
        }
        let Some(node) = pod.running_on() else {
            return Ok(None);
        };
        let Some(spiffe_id) = self.pod_spiffe_id(pod)? else {
            return Ok(None);
        };
        let parent_id = self.root_id()?.join(&[node]).map_err(|reason| IdentityErrorKind::InvalidId {
            object: pod_ref(pod),
            field: Field::NodeName,
            value: node.to_string(),
            reason,
        })?;
        let federates_with = self.federates_with(pod)?;
        let (dns_names, rejected_dns_names) =
            match (self.pod_dns_zone.as_deref(), non_empty(pod.pod_ip.as_deref())) {
                (Some(zone), Some(ip)) => dns::pod_dns_names(pod, ip, zone, slices),
                _ => (Vec::new(), Vec::new()),
            };
        let spec = EntrySpec {
            spiffe_id,
            parent_id,
            selectors: pod_selectors(&pod.namespace, &pod.name),
            dns_names,
            federates_with,
            downstream: false,
            managed: self.managed.clone(),
        };
        Ok(Some(Desired { spec, rejected_dns_names }))
    }

    /// True when the registrar owns `entry` in reconcile mode: its parent is strictly under the
    /// root (a pod entry), or its parent is the server and its SPIFFE ID is strictly under the
    /// root (a node-alias entry). Comparisons are segment-wise and need the exact trust domain.
    ///
    /// Invariant: `owns(e) == node_of(e).is_some()`. An entry parented to the root itself is not
    /// ours: we never make one, and no node shard could be responsible for it.
    pub fn owns(&self, entry: &EntrySpec) -> bool {
        self.node_of(entry).is_some()
    }

    /// The node an owned entry belongs to (the first segment below the root of its parent, or of
    /// its SPIFFE ID for node-alias entries); `None` for entries we do not own.
    ///
    /// Entries we made have exactly one segment below the root. A deeper one (made by hand under
    /// our root) is routed by its first segment, so that node's shard finds it undesired and
    /// deletes it.
    pub fn node_of(&self, entry: &EntrySpec) -> Option<String> {
        let root = self.root_id().ok()?;
        if let Some(node) = first_segment_below(&entry.parent_id, &root) {
            return Some(node.to_string());
        }
        if entry.parent_id == self.server_id() {
            return first_segment_below(&entry.spiffe_id, &root).map(str::to_string);
        }
        None
    }

    // ---------------------------------------------------------------- webhook mode

    /// `spiffe://<td>/k8s-workload-registrar/<cluster>/node`: the one parent of every webhook-mode
    /// pod entry.
    pub fn webhook_cluster_id(&self) -> Result<SpiffeId, IdentityError> {
        let cluster = setting("cluster", &self.cluster)?;
        self.id_from_settings(&[WEBHOOK_PREFIX, cluster, "node"])
    }

    /// The cluster entry: every agent of the cluster matches it, so every agent may fetch every
    /// webhook-mode workload SVID (the documented weakness of webhook mode).
    pub fn webhook_cluster_entry(&self) -> Result<EntrySpec, IdentityError> {
        Ok(EntrySpec {
            spiffe_id: self.webhook_cluster_id()?,
            parent_id: self.server_id(),
            selectors: Selectors::from([Selector::psat(format!("cluster:{}", self.cluster))]),
            dns_names: Vec::new(),
            federates_with: BTreeSet::new(),
            downstream: false,
            managed: self.managed.clone(),
        })
    }

    /// The webhook-mode entry of a Pod, or `None` when it should have none (disabled namespace,
    /// missing label/annotation). The node plays no part, and there are no DNS names.
    pub fn webhook_pod_entry(&self, pod: &PodInfo) -> Result<Option<EntrySpec>, IdentityError> {
        if self.is_disabled(&pod.namespace) {
            return Ok(None);
        }
        let Some(spiffe_id) = self.pod_spiffe_id(pod)? else {
            return Ok(None);
        };
        Ok(Some(EntrySpec {
            spiffe_id,
            parent_id: self.webhook_cluster_id()?,
            selectors: pod_selectors(&pod.namespace, &pod.name),
            dns_names: Vec::new(),
            federates_with: self.federates_with(pod)?,
            downstream: false,
            managed: self.managed.clone(),
        }))
    }

    /// True when the registrar owns `entry` in webhook mode: a pod entry (parent is the cluster
    /// ID) or the cluster entry itself.
    pub fn webhook_owns(&self, entry: &EntrySpec) -> bool {
        let Ok(cluster_id) = self.webhook_cluster_id() else {
            return false;
        };
        entry.parent_id == cluster_id
            || (entry.spiffe_id == cluster_id && entry.parent_id == self.server_id())
    }

    /// The labels and annotations [`Naming`]'s rules read: the ID source's key, if any, and the
    /// federation annotation.
    pub fn metadata_keys(&self) -> MetadataKeys {
        let mut keys =
            MetadataKeys { labels: Vec::new(), annotations: vec![FEDERATES_WITH_ANNOTATION.to_string()] };
        match &self.id_source {
            IdSource::ServiceAccount => {}
            IdSource::Label(key) => keys.labels.push(key.clone()),
            IdSource::Annotation(key) => keys.annotations.push(key.clone()),
        }
        keys
    }

    // ---------------------------------------------------------------- shared rules

    /// The pod's SPIFFE ID, `None` when label/annotation mode finds no such key on the pod. The
    /// value rule and the reserved-identity rule are [`workload_id`]'s, shared by every mode.
    fn pod_spiffe_id(&self, pod: &PodInfo) -> Result<Option<SpiffeId>, IdentityError> {
        let invalid = |field: Field, value: &str, reason: IdError| -> IdentityError {
            IdentityErrorKind::InvalidId { object: pod_ref(pod), field, value: value.to_string(), reason }
                .into()
        };
        let controller = Some(self.controller_name.as_str());
        let (field, value) = match &self.id_source {
            IdSource::ServiceAccount => {
                validate_segment(&pod.namespace, &pod.namespace)
                    .map_err(|reason| invalid(Field::Namespace, &pod.namespace, reason))?;
                validate_segment(&pod.service_account, &pod.service_account)
                    .map_err(|reason| invalid(Field::ServiceAccount, &pod.service_account, reason))?;
                let segments = ["ns", &pod.namespace, "sa", &pod.service_account];
                let id = SpiffeId::from_segments(&self.trust_domain, &segments)
                    .and_then(|id| workload_id::check_not_reserved(&id, controller).map(|()| id))
                    .map_err(|reason| invalid(Field::ServiceAccount, &pod.service_account, reason))?;
                return Ok(Some(id));
            }
            IdSource::Label(key) => match pod.labels.get(key) {
                Some(value) => (Field::Label(key.clone()), value),
                None => return Ok(None),
            },
            IdSource::Annotation(key) => match pod.annotations.get(key) {
                Some(value) => (Field::Annotation(key.clone()), value),
                None => return Ok(None),
            },
        };
        workload_id(&self.trust_domain, value, controller)
            .map(Some)
            .map_err(|reason| invalid(field, value, reason))
    }

    /// The trust domains named by the pod's federation annotation (bare names, de-duplicated).
    fn federates_with(&self, pod: &PodInfo) -> Result<BTreeSet<String>, IdentityError> {
        federates_with(pod, &self.trust_domain)
    }

    /// `spiffe://<td>/<segments>` from segments already checked by [`setting`] (or literals), so
    /// the error case cannot happen in practice.
    fn id_from_settings(&self, segments: &[&str]) -> Result<SpiffeId, IdentityError> {
        let id = SpiffeId::from_segments(&self.trust_domain, segments).map_err(|reason| {
            IdentityErrorKind::InvalidSetting { key: "cluster", value: self.cluster.clone(), reason }
        })?;
        Ok(id)
    }
}

/// The trust domains named by a pod's `spiffe.io/federatesWith` annotation, for a workload in
/// trust domain `own` (the federation rule of every mode; see the module header).
pub fn federates_with(pod: &PodInfo, own: &TrustDomain) -> Result<BTreeSet<String>, IdentityError> {
    let Some(value) = pod.annotations.get(FEDERATES_WITH_ANNOTATION) else {
        return Ok(BTreeSet::new());
    };
    let mut domains = BTreeSet::new();
    for piece in value.split(',').map(str::trim).filter(|piece| !piece.is_empty()) {
        let td = TrustDomain::parse(piece).map_err(|reason| IdentityErrorKind::InvalidFederation {
            object: pod_ref(pod),
            piece: piece.to_string(),
            reason,
        })?;
        if &td == own {
            return Err(IdentityErrorKind::FederatesWithOwnTrustDomain {
                object: pod_ref(pod),
                piece: piece.to_string(),
            }
            .into());
        }
        domains.insert(td.as_str().to_string());
    }
    Ok(domains)
}

/// The object reference of a pod, for errors about it.
pub fn pod_ref(pod: &PodInfo) -> ObjectRef {
    ObjectRef::Pod { namespace: pod.namespace.clone(), name: pod.name.clone() }
}

/// Validates a setting that becomes one path segment.
fn setting<'a>(key: &'static str, value: &'a str) -> Result<&'a str, IdentityError> {
    validate_segment(value, value).map_err(|reason| IdentityErrorKind::InvalidSetting {
        key,
        value: value.to_string(),
        reason,
    })?;
    Ok(value)
}

/// The first path segment of `id` below `root`, if `id` is strictly under `root`.
fn first_segment_below<'a>(id: &'a SpiffeId, root: &SpiffeId) -> Option<&'a str> {
    if !id.is_under(root) || id == root {
        return None;
    }
    // is_under guarantees `root.path()` is a prefix followed by '/'.
    id.path().get(root.path().len() + 1..)?.split('/').next()
}

/// Kubernetes leaves optional strings empty as often as it omits them; treat both as absent.
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}
