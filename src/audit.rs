//! The audit trail: one `info` line per SPIRE entry write, the same in every mode, so an
//! operator can answer "who wrote this entry, and why" from the logs alone.
//!
//! Each line has the message `Entry created.`, `Entry updated.` or `Entry deleted.` and the
//! fields `op` (`create`, `update`, `delete`), `entry_id`, `spiffe_id`, `parent_id`, `object`
//! (the Kubernetes object the entry stands for: `pod <ns>/<name>`, `node <name>`,
//! `cluster <name>`, `spiffeid <ns>/<name>`) and `reason` (a closed set, [`Reason`]); an update
//! adds `changed` (the fields that differ, `EntrySpec::differing`: the entry's own and the
//! managed `x509_svid_ttl`, `jwt_svid_ttl`, `hint`).
//!
//! Pure description ([`object_of`], [`why_deleted`]) plus [`written`], which
//! logs. Called by every writer once SPIRE confirmed the write: the node and cluster shards, pod
//! admissions and the SpiffeID controller. A create SPIRE answered with ALREADY_EXISTS wrote
//! nothing and is not audited.
//!
//! With `dry_run = true` ([`set_dry_run`], process-wide like the configuration it comes from)
//! the same lines say `Entry would be created.` (…updated, …deleted) and carry `dry_run=true`:
//! nothing was sent.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

static DRY_RUN: AtomicBool = AtomicBool::new(false);

/// This process runs with `dry_run = true`: audit lines say what would have been written.
pub fn set_dry_run() {
    DRY_RUN.store(true, Ordering::Relaxed);
}

use crate::{identity::PodInfo, model::EntrySpec};

/// Why an entry was written. Bounded: safe as a metric label too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Desired and not in SPIRE.
    New,
    /// In SPIRE with other field values than desired.
    Changed,
    /// Its pod no longer exists.
    PodGone,
    /// Its pod reached a terminal phase (Succeeded or Failed).
    PodFinished,
    /// Its node no longer exists (the node's alias and every pod entry under it).
    NodeGone,
    /// The object still exists but no longer yields this entry: a label or annotation removed
    /// or changed, its namespace disabled, its identity now invalid.
    NotEligible,
    /// Owned by the registrar and not desired by anything it knows of.
    NotDesired,
    /// A pod CREATE admission (webhook mode).
    Admitted,
    /// A pod DELETE admission (webhook mode).
    PodDeleted,
    /// Its SpiffeID was deleted (crd mode).
    SpiffeIdDeleted,
    /// Its SpiffeID's spec became invalid or reserved (crd mode).
    InvalidSpec,
    /// Another entry with the same SPIFFE ID, parent and selectors exists (crd mode).
    Conflict,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Changed => "changed",
            Reason::PodGone => "pod_gone",
            Reason::PodFinished => "pod_finished",
            Reason::NodeGone => "node_gone",
            Reason::NotEligible => "not_eligible",
            Reason::NotDesired => "not_desired",
            Reason::Admitted => "admitted",
            Reason::PodDeleted => "pod_deleted",
            Reason::SpiffeIdDeleted => "spiffeid_deleted",
            Reason::InvalidSpec => "invalid_spec",
            Reason::Conflict => "conflict",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Kubernetes object an entry stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Pod {
        namespace: String,
        name: String,
    },
    Node(String),
    Cluster(String),
    SpiffeId {
        namespace: String,
        name: String,
    },
    /// No selector names an object (an entry written from a SpiffeID is named by the caller).
    Unknown,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
            Object::Node(name) => write!(f, "node {name}"),
            Object::Cluster(name) => write!(f, "cluster {name}"),
            Object::SpiffeId { namespace, name } => write!(f, "spiffeid {namespace}/{name}"),
            Object::Unknown => f.write_str("-"),
        }
    }
}

/// The object an entry the registrar writes stands for, from its selectors: `k8s:ns` +
/// `k8s:pod-name` (a pod's entry), `k8s_psat:agent_node_name` (a node's alias),
/// `k8s_psat:cluster` alone (webhook mode's cluster entry).
pub fn object_of(spec: &EntrySpec) -> Object {
    let find = |kind: &str, prefix: &str| {
        spec.selectors.iter().filter(|s| s.kind == kind).find_map(|s| s.value.strip_prefix(prefix))
    };
    if let (Some(namespace), Some(name)) = (find("k8s", "ns:"), find("k8s", "pod-name:")) {
        return Object::Pod { namespace: namespace.to_string(), name: name.to_string() };
    }
    if let Some(node) = find("k8s_psat", "agent_node_name:") {
        return Object::Node(node.to_string());
    }
    match find("k8s_psat", "cluster:") {
        Some(cluster) => Object::Cluster(cluster.to_string()),
        None => Object::Unknown,
    }
}

/// Why a shard deletes an owned entry standing for `object`: `node_gone` when the shard's node
/// is gone (reconcile mode), else from what the cache says about the entry's pod.
pub fn why_deleted(
    object: &Object,
    node_gone: bool,
    pod: impl FnOnce(&str, &str) -> Option<PodInfo>,
) -> Reason {
    if node_gone {
        return Reason::NodeGone;
    }
    match object {
        Object::Pod { namespace, name } => match pod(namespace, name) {
            None => Reason::PodGone,
            Some(p) if p.terminal => Reason::PodFinished,
            Some(_) => Reason::NotEligible,
        },
        _ => Reason::NotDesired,
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Logs one audit line for a write SPIRE confirmed. `spec` is the entry as written (for a
/// delete: as it was); `changed` is for updates (`EntrySpec::differing`).
pub fn written(op: Op, entry_id: &str, spec: &EntrySpec, object: &Object, reason: Reason, changed: &[&str]) {
    let dry_run = DRY_RUN.load(Ordering::Relaxed);
    let message = match (op, dry_run) {
        (Op::Create, false) => "Entry created.",
        (Op::Update, false) => "Entry updated.",
        (Op::Delete, false) => "Entry deleted.",
        (Op::Create, true) => "Entry would be created.",
        (Op::Update, true) => "Entry would be updated.",
        (Op::Delete, true) => "Entry would be deleted.",
    };
    let (op, spiffe_id, parent_id) = (op.as_str(), &spec.spiffe_id, &spec.parent_id);
    if changed.is_empty() {
        tracing::info!(target: "k8s_workload_registrar::audit", op, entry_id, %spiffe_id, %parent_id,
            object = %object, reason = reason.as_str(), dry_run, "{message}");
    } else {
        let changed = changed.join(",");
        tracing::info!(target: "k8s_workload_registrar::audit", op, entry_id, %spiffe_id, %parent_id,
            object = %object, reason = reason.as_str(), changed, dry_run, "{message}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{Selector, sample_spec};

    fn with(selectors: &[(&str, &str)]) -> EntrySpec {
        EntrySpec {
            selectors: selectors.iter().map(|(k, v)| Selector::new(*k, *v)).collect(),
            ..sample_spec()
        }
    }

    #[test]
    fn the_object_comes_from_the_selectors_the_registrar_writes() {
        let pod = with(&[("k8s", "ns:apps"), ("k8s", "pod-name:web")]);
        assert_eq!(object_of(&pod).to_string(), "pod apps/web");
        let node = with(&[("k8s_psat", "cluster:c1"), ("k8s_psat", "agent_node_name:n1")]);
        assert_eq!(object_of(&node).to_string(), "node n1");
        assert_eq!(object_of(&with(&[("k8s_psat", "cluster:c1")])).to_string(), "cluster c1");
        assert_eq!(object_of(&with(&[("k8s", "ns:apps")])), Object::Unknown);
        assert_eq!(object_of(&with(&[("unix", "pod-name:x"), ("k8s", "ns:a")])), Object::Unknown);
    }

    #[test]
    fn changed_fields_name_every_difference_and_ignore_dns_order() {
        let old = EntrySpec { dns_names: vec!["a".into(), "b".into()], ..sample_spec() };
        let same = EntrySpec { dns_names: vec!["b".into(), "a".into()], ..old.clone() };
        assert!(old.differing(&same).is_empty());
        let new = EntrySpec {
            dns_names: vec!["a".into()],
            federates_with: BTreeSet::from(["other.org".to_string()]),
            downstream: true,
            ..old.clone()
        };
        assert_eq!(old.differing(&new), ["dns_names", "federates_with", "downstream"]);
        let mut managed = old.clone();
        managed.managed.x509_svid_ttl = 3600;
        managed.managed.hint = "kwr".into();
        assert_eq!(old.differing(&managed), ["x509_svid_ttl", "hint"]);
        let moved = with(&[("k8s", "ns:b")]);
        assert_eq!(sample_spec().differing(&moved), ["selectors"]);
    }

    #[test]
    fn deletes_are_explained_by_what_is_left_of_the_object() {
        let pod = Object::Pod { namespace: "a".into(), name: "p".into() };
        let info = |terminal| Some(PodInfo { terminal, ..PodInfo::test("a", "p") });
        assert_eq!(why_deleted(&pod, false, |_, _| None), Reason::PodGone);
        assert_eq!(why_deleted(&pod, false, |_, _| info(true)), Reason::PodFinished);
        assert_eq!(why_deleted(&pod, false, |_, _| info(false)), Reason::NotEligible);
        assert_eq!(why_deleted(&pod, true, |_, _| info(false)), Reason::NodeGone);
        assert_eq!(why_deleted(&Object::Node("n1".into()), false, |_, _| None), Reason::NotDesired);
    }
}
