//! Pod / Node (/ EndpointSlice) → the SpiffeIDs the projector keeps ([`project`]), and which
//! SpiffeIDs are its own ([`our_owner`]). Pure, over a snapshot of the objects; shared by the
//! projector (`sync`) and `plan`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Pod},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::ResourceExt;

use super::{
    pods::PodRules,
    resource::{NODE_UID_LABEL, POD_UID_LABEL, SpiffeID, SpiffeIdSpec},
};
use crate::k8s::convert;

/// One desired SpiffeID.
#[derive(Debug, Clone)]
pub struct Want {
    pub spec: SpiffeIdSpec,
    pub label: (&'static str, String),
    pub owner: OwnerReference,
}

/// What the projector wants, from a snapshot of pods, nodes and slices ([`project`]).
#[derive(Debug, Default)]
pub struct Projection {
    /// Every SpiffeID it derives, by (namespace, name).
    pub want: BTreeMap<(String, String), Want>,
    /// Pods whose identity cannot be formed.
    pub problems: Vec<(crate::identity::PodInfo, crate::identity::IdentityError)>,
    /// Pods that get a SpiffeID, by its key, with their UID and creation ms (`registrations`).
    pub created: Vec<((String, String), String, i64)>,
}

/// The SpiffeIDs `rules` derive from these pods and nodes (and EndpointSlices, with
/// `add_svc_dns_name`). Pure: the one home of this rule for the projector and `plan`.
pub fn project(
    rules: &PodRules,
    own_namespace: &str,
    pods: &[Arc<Pod>],
    nodes: &[Arc<Node>],
    slices: Option<&[Arc<EndpointSlice>]>,
) -> Projection {
    let mut out = Projection::default();
    // Node SpiffeIDs are named after their node in our namespace; a pod there with a node's name
    // gets its SpiffeID under `pod-<uid>` instead, so both exist (the original let one replace
    // the other). Node names win because every pod on the node depends on the node's alias.
    let node_names: HashSet<String> = nodes.iter().filter_map(|n| n.metadata.name.clone()).collect();
    for pod in pods {
        let Some(f) = convert::pod_info(pod) else { continue };
        let svc = match slices {
            Some(s) if f.running_on().is_some() => service_names(s, &f.namespace, &f.uid),
            _ => Vec::new(),
        };
        match rules.pod(&f, &svc) {
            Ok(Some(d)) => {
                if !d.dropped_dns_names.is_empty() {
                    tracing::debug!(namespace = %f.namespace, pod = %f.name, dropped = ?d.dropped_dns_names, "Invalid DNS names dropped.");
                }
                let name = if f.namespace == own_namespace && node_names.contains(&f.name) {
                    format!("pod-{}", f.uid)
                } else {
                    f.name.clone()
                };
                if let Some(created) = f.created_unix_ms {
                    out.created.push(((f.namespace.clone(), name.clone()), f.uid.clone(), created));
                }
                out.want.insert(
                    (f.namespace.clone(), name),
                    Want {
                        spec: d.spec,
                        label: (POD_UID_LABEL, f.uid.clone()),
                        owner: owner("v1", "Pod", &f.name, &f.uid),
                    },
                );
            }
            Ok(None) => {}
            Err(e) => out.problems.push((f, e)),
        }
    }
    for node in nodes {
        let (Some(name), Some(uid)) = (node.metadata.name.clone(), node.metadata.uid.clone()) else {
            continue;
        };
        match rules.node(&name, &uid) {
            Ok(spec) => {
                out.want.insert(
                    (own_namespace.to_string(), name.clone()),
                    Want {
                        spec,
                        label: (NODE_UID_LABEL, uid.clone()),
                        owner: owner("v1", "Node", &name, &uid),
                    },
                );
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "Node gets no SpiffeID."),
        }
    }
    out
}

pub fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }
}

/// The controller owner reference of a SpiffeID we manage, if any.
pub fn our_owner(s: &SpiffeID) -> Option<&OwnerReference> {
    s.metadata.owner_references.as_ref()?.iter().find(|o| {
        o.controller == Some(true) && o.api_version == "v1" && (o.kind == "Pod" || o.kind == "Node")
    })
}

fn service_names(slices: &[Arc<EndpointSlice>], ns: &str, uid: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in slices {
        if s.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        let Some(svc) = s.labels().get("kubernetes.io/service-name") else { continue };
        let selected = s.endpoints.iter().any(|e| {
            e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
                && e.target_ref
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("Pod") && r.uid.as_deref() == Some(uid))
        });
        let name = format!("{svc}.{ns}.svc");
        if selected && !out.contains(&name) {
            out.push(name);
        }
    }
    out.sort();
    out
}
