//! The SpiffeID validating webhook (`webhook_enabled = true`): the API server asks it before a
//! SpiffeID is created or its spec changed, and it answers with [`Policy::entry`] — the same
//! rules the controller runs again before every write, so the webhook is a fast, visible "no" and
//! never the only line of defence. Pure decision ([`decide`]); served by `webhook::server` on
//! `webhook_port` at `webhook::handler::SPIFFEID_PATH`, on every replica (not leader-gated: it
//! writes nothing).
//!
//! * CREATE: denied with the first rule the spec breaks (the message names the field).
//! * UPDATE: judged like CREATE when the spec changes; metadata-only updates (finalizers, labels,
//!   owner references) are allowed, so a SpiffeID that predates the webhook can still get or lose
//!   its finalizer and be deleted.
//! * DELETE, CONNECT, other kinds: allowed.
//!
//! Unlike the pod webhook, no client certificate is required (as the original's): the answer
//! has no side effects, so a caller other than the API server learns nothing it could not read.

use std::sync::Arc;

use super::{policy::Policy, resource::SpiffeID};
use crate::webhook::{Admit, Operation, Request, Verdict};

/// What the webhook answers for `req`.
pub fn decide(policy: &Policy, req: &Request) -> Verdict {
    if req.group != "spiffeid.spiffe.io" || req.kind != "SpiffeID" {
        return Verdict::Allow;
    }
    let (Operation::Create | Operation::Update) = req.operation else {
        return Verdict::Allow;
    };
    let Some(object) = &req.object else {
        return Verdict::Deny("request without an object".into());
    };
    let new: SpiffeID = match serde_json::from_value(object.clone()) {
        Ok(s) => s,
        Err(e) => return Verdict::Deny(format!("object is not a valid SpiffeID: {e}")),
    };
    if req.operation == Operation::Update {
        let old = req.old_object.as_ref().and_then(|o| serde_json::from_value::<SpiffeID>(o.clone()).ok());
        if old.is_some_and(|old| old.spec == new.spec) {
            return Verdict::Allow;
        }
    }
    let namespace = new.metadata.namespace.clone().filter(|n| !n.is_empty()).unwrap_or(req.namespace.clone());
    match policy.entry(&namespace, &new.spec) {
        Ok(_) => Verdict::Allow,
        Err(e) => {
            metrics::counter!("registrar_invalid_identity_total", "reason" => e.metric_label()).increment(1);
            tracing::info!(namespace, name = %req.name, error = %e, "SpiffeID denied.");
            Verdict::Deny(format!("k8s-workload-registrar: {e}"))
        }
    }
}

/// The `Admit` function the HTTP handler calls.
pub fn admit(policy: Policy) -> Admit {
    let policy = Arc::new(policy);
    Arc::new(move |req| {
        let verdict = decide(&policy, &req);
        Box::pin(async move { verdict })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::id::TrustDomain;

    fn policy() -> Policy {
        Policy {
            trust_domain: TrustDomain::parse("example.org").unwrap(),
            cluster: "c1".into(),
            own_namespace: Some("spire".into()),
        }
    }

    fn request(operation: Operation, spec: serde_json::Value, old: Option<serde_json::Value>) -> Request {
        let object = |spec: serde_json::Value| {
            json!({"apiVersion": "spiffeid.spiffe.io/v1beta1", "kind": "SpiffeID",
                   "metadata": {"name": "x", "namespace": "shop"}, "spec": spec})
        };
        Request {
            uid: "u".into(),
            operation,
            group: "spiffeid.spiffe.io".into(),
            kind: "SpiffeID".into(),
            namespace: "shop".into(),
            name: "x".into(),
            object: Some(object(spec)),
            old_object: old.map(object),
            dry_run: false,
        }
    }

    fn good() -> serde_json::Value {
        json!({"parentId": "spiffe://example.org/spire/agent/x", "spiffeId": "spiffe://example.org/web",
               "selector": {"namespace": "shop"}})
    }

    fn hostile() -> serde_json::Value {
        json!({"parentId": "spiffe://example.org/spire/server", "spiffeId": "spiffe://example.org/web",
               "selector": {"namespace": "shop"}})
    }

    #[test]
    fn creates_and_spec_changes_follow_the_policy() {
        assert_eq!(decide(&policy(), &request(Operation::Create, good(), None)), Verdict::Allow);
        let Verdict::Deny(msg) = decide(&policy(), &request(Operation::Create, hostile(), None)) else {
            panic!("hostile create allowed")
        };
        assert!(msg.starts_with("k8s-workload-registrar: spec.parentId"), "{msg}");
        assert!(matches!(
            decide(&policy(), &request(Operation::Update, hostile(), Some(good()))),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn metadata_only_updates_deletes_and_other_kinds_are_allowed() {
        assert_eq!(
            decide(&policy(), &request(Operation::Update, hostile(), Some(hostile()))),
            Verdict::Allow
        );
        assert_eq!(decide(&policy(), &request(Operation::Delete, hostile(), None)), Verdict::Allow);
        let mut pod = request(Operation::Create, hostile(), None);
        (pod.group, pod.kind) = (String::new(), "Pod".into());
        assert_eq!(decide(&policy(), &pod), Verdict::Allow);
        let mut junk = request(Operation::Create, json!({"parentId": 5}), None);
        junk.object = Some(json!({"spec": 5}));
        assert!(matches!(decide(&policy(), &junk), Verdict::Deny(m) if m.contains("not a valid SpiffeID")));
    }
}
