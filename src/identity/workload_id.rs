//! A workload's SPIFFE ID from a label, annotation or template value, and the reserved-identity
//! rule. Pure; shared by every mode (reconcile and webhook through [`super::Naming`], crd through
//! `crd::pods` and `crd::policy`).
//!
//! # The value rule
//! The value is the path: it may hold several `/`-separated segments (`services/payment/v1`); one
//! leading `/` is tolerated; every segment must be non-empty, not `.`/`..` and only
//! `[A-Za-z0-9._-]`. So a trailing `/`, a leading `//` or a `spiffe://` prefix are errors, never a
//! partial or rewritten ID.
//!
//! # The reserved-identity rule
//! A workload entry's SPIFFE ID may not equal or lie under:
//! * `/spire` (SPIRE's own namespace: the server, agents);
//! * `/k8s-workload-registrar` and `/spire-k8s-registrar` (the node-alias and cluster IDs of every
//!   mode of every registrar, for any cluster: a SPIRE server may be shared by several clusters);
//! * `/<controller_name>` (reconcile mode's configurable node-alias root), when configured.
//!
//! Why: SPIRE authorizes an agent recursively over entry IDs: it is served every entry whose parent
//! is the SPIFFE ID of an entry it is already served. A workload entry whose ID equals another
//! node's alias (or the webhook cluster ID) therefore hands its own node's agent every SVID
//! parented to that alias. Node-alias entries themselves (parent = the server) are not workload
//! entries and are checked by their own rules.

use crate::id::{IdError, SpiffeId, TrustDomain, validate_segment};

/// The first path segments that belong to registrars in every mode, whatever the configuration.
pub const REGISTRAR_PREFIXES: [&str; 2] = ["k8s-workload-registrar", "spire-k8s-registrar"];

/// Errors with [`IdError::Reserved`] when `id` equals or lies under a reserved prefix (see the
/// module header). `controller_name` is reconcile mode's root segment, if configured.
pub fn check_not_reserved(id: &SpiffeId, controller_name: Option<&str>) -> Result<(), IdError> {
    let first = first_segment(id);
    let reserved = first == "spire" || REGISTRAR_PREFIXES.contains(&first) || controller_name == Some(first);
    if reserved {
        return Err(IdError::Reserved { id: id.to_string(), prefix: format!("/{first}") });
    }
    Ok(())
}

/// True when `id` lies under a registrar prefix ([`REGISTRAR_PREFIXES`]): a node alias, a cluster
/// ID, or something made by hand in a registrar's namespace.
pub fn is_registrar_id(id: &SpiffeId) -> bool {
    REGISTRAR_PREFIXES.contains(&first_segment(id))
}

fn first_segment(id: &SpiffeId) -> &str {
    id.path().trim_start_matches('/').split('/').next().unwrap_or_default()
}

/// The workload SPIFFE ID a label/annotation/template value stands for (the value rule), refused
/// when it is reserved.
pub fn workload_id(
    td: &TrustDomain,
    value: &str,
    controller_name: Option<&str>,
) -> Result<SpiffeId, IdError> {
    let path = value.strip_prefix('/').unwrap_or(value);
    if path.is_empty() {
        return Err(IdError::EmptyPath(value.to_string()));
    }
    if path.ends_with('/') {
        return Err(IdError::TrailingSlash(value.to_string()));
    }
    let segments: Vec<&str> = path.split('/').collect();
    // Validate with the whole value as context so the message shows where the bad segment is.
    for segment in &segments {
        validate_segment(segment, value)?;
    }
    let id = SpiffeId::from_segments(td, &segments)?;
    check_not_reserved(&id, controller_name)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn values_become_paths() {
        for (value, path) in
            [("a", "/a"), ("/a", "/a"), ("services/pay/v1", "/services/pay/v1"), ("spirex", "/spirex")]
        {
            assert_eq!(workload_id(&td(), value, Some("reg")).unwrap().path(), path, "{value:?}");
        }
        for bad in ["", "/", "a/", "//a", "a//b", "spiffe://example.org/a", "./a", "a/..", "a b", "é"] {
            assert!(workload_id(&td(), bad, None).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn reserved_prefixes_are_refused_equal_or_below() {
        let reserved = [
            ("spire", "/spire"),
            ("spire/server", "/spire"),
            ("spire/agent/k8s_psat/c1/x", "/spire"),
            ("k8s-workload-registrar/c1/node", "/k8s-workload-registrar"),
            ("k8s-workload-registrar/other-cluster/node/n2", "/k8s-workload-registrar"),
            ("spire-k8s-registrar/c1/node/n2", "/spire-k8s-registrar"),
            ("my-reg/c1/node/n2", "/my-reg"),
            ("/my-reg", "/my-reg"),
        ];
        for (value, prefix) in reserved {
            let err = workload_id(&td(), value, Some("my-reg")).unwrap_err();
            assert!(matches!(&err, IdError::Reserved { prefix: p, .. } if p == prefix), "{value:?}: {err}");
        }
        // Only whole segments count, and the controller name only when configured.
        for free in
            ["spire-agent/x", "k8s-workload-registrar2/c1", "my-regx/c1", "ns/spire/sa/x", "my-reg/c1"]
        {
            let controller = if free.starts_with("my-reg/") { None } else { Some("my-reg") };
            assert!(workload_id(&td(), free, controller).is_ok(), "{free:?} should be allowed");
        }
    }
}
