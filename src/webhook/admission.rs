//! What pod admissions do to SPIRE in webhook mode.
//!
//! * CREATE of a pod outside disabled namespaces: create its entry (parent = the cluster entry,
//!   selectors `k8s:ns` + `k8s:pod-name`); an existing identical entry counts as success. A pod
//!   whose label/annotation cannot form a valid SPIFFE ID is **denied with the reason** (the
//!   original answered HTTP 500 with no useful message).
//! * DELETE: remove the entries we own with exactly that pod's selectors — unless a pod of that
//!   name with a *different* UID exists by now: that is a new incarnation (StatefulSet name
//!   reuse) that needs the entry, so a late DELETE of the old one must not remove it.
//! * `dryRun` requests, other operations, other kinds and disabled namespaces: allowed, nothing
//!   written.
//! * An entry SPIRE refuses for good (`ItemError::is_permanent`, e.g. a federated trust domain
//!   without a bundle): **denied with SPIRE's reason**.
//! * SPIRE unavailable or slow: an error answer within `call_timeout`, so the API server applies
//!   the webhook's `failurePolicy` well inside its own timeout; logged and counted.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use super::{Admit, Operation, Request, Verdict};
use crate::{
    actors::{
        PoolHandle,
        spire_pool::{ApplyReply, Fence, OpOutcome, PoolMsg},
    },
    audit::{self, Object, Op, Reason},
    diff::EntryOp,
    identity::{Naming, pod_selectors},
    k8s::convert,
    model::Entry,
    spire::ListFilter,
};

/// The admission logic with its outside world.
pub struct Admission {
    pub naming: Arc<Naming>,
    /// SPIRE, through the pool: admissions are its `Fence::Admission` writers, answered
    /// concurrently.
    pub pool: PoolHandle,
    /// Used on DELETE to tell a new incarnation of a pod from the one being deleted.
    pub pods: Option<kube::Client>,
}

impl Admission {
    /// The `Admit` function the HTTP handler calls.
    pub fn into_admit(self) -> Admit {
        let this = Arc::new(self);
        Arc::new(move |req| {
            let this = this.clone();
            Box::pin(async move { this.decide(req).await })
        })
    }

    pub async fn decide(&self, req: Request) -> Verdict {
        if !req.group.is_empty() || req.kind != "Pod" {
            tracing::debug!(kind = %req.kind, "Not a pod; allowed untouched.");
            return Verdict::Allow;
        }
        if self.naming.is_disabled(&req.namespace) {
            return Verdict::Allow;
        }
        let verdict = match req.operation {
            Operation::Create => self.create(&req).await,
            Operation::Delete => self.delete(&req).await,
            Operation::Update | Operation::Connect => Verdict::Allow,
        };
        if let Verdict::Error(e) = &verdict {
            tracing::warn!(namespace = %req.namespace, pod = %req.name, error = %e,
                "Admission could not reach a decision; the webhook's failurePolicy applies.");
        }
        verdict
    }

    async fn create(&self, req: &Request) -> Verdict {
        let Some(object) = &req.object else {
            return Verdict::Deny("CREATE request without an object".into());
        };
        let mut pod: Pod = match serde_json::from_value(object.clone()) {
            Ok(p) => p,
            Err(e) => return Verdict::Deny(format!("object is not a valid Pod: {e}")),
        };
        // Objects of namespaced creates may lack metadata.namespace/name; the request has them.
        if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
            pod.metadata.namespace = Some(req.namespace.clone());
        }
        if pod.metadata.name.as_deref().unwrap_or("").is_empty() {
            pod.metadata.name = Some(req.name.clone());
        }
        let Some(info) = convert::pod_info(&pod) else {
            return Verdict::Deny("pod has no name".into());
        };
        let spec = match self.naming.webhook_pod_entry(&info) {
            Ok(Some(spec)) => spec,
            Ok(None) => return Verdict::Allow,
            Err(e) => {
                metrics::counter!("registrar_invalid_identity_total", "reason" => e.metric_label())
                    .increment(1);
                return Verdict::Deny(format!("k8s-workload-registrar: {e}"));
            }
        };
        if req.dry_run {
            return Verdict::Allow;
        }
        match self.apply(vec![EntryOp::Create(spec.clone())]).await {
            Ok(mut results) => match results.pop() {
                Some(OpOutcome::Created(entry)) => {
                    // The API server stamps creationTimestamp before validating admission.
                    crate::metrics::observe_registration(info.created_unix_ms);
                    let object = Object::Pod { namespace: info.namespace.clone(), name: info.name.clone() };
                    audit::written(Op::Create, &entry.id, &entry.spec, &object, Reason::Admitted, &[]);
                    Verdict::Allow
                }
                // A retried admission, or an entry another writer made first: the goal is reached.
                Some(OpOutcome::Existed(entry)) => {
                    tracing::debug!(namespace = %info.namespace, pod = %info.name, entry_id = %entry.id,
                        "Entry already in SPIRE.");
                    Verdict::Allow
                }
                Some(OpOutcome::Failed { error: item, .. }) => {
                    if item.is_permanent() {
                        // No retry can fix it: tell the user why, rather than HTTP 500.
                        metrics::counter!("registrar_invalid_identity_total", "reason" => "spire_rejected")
                            .increment(1);
                        return Verdict::Deny(format!(
                            "k8s-workload-registrar: SPIRE refused the entry {}: {}",
                            spec.spiffe_id, item.message
                        ));
                    }
                    Verdict::Error(format!("SPIRE rejected the entry for {}: {item}", spec.spiffe_id))
                }
                _ => Verdict::Error("SPIRE returned no result".into()),
            },
            Err(e) => Verdict::Error(format!("SPIRE unavailable: {e}")),
        }
    }

    /// Writes through the pool under `Fence::Admission`.
    async fn apply(&self, ops: Vec<EntryOp>) -> Result<Vec<OpOutcome>, String> {
        let reply: ApplyReply = self
            .pool
            .call(|reply| PoolMsg::Apply { ops, fence: Fence::Admission, reply }, POOL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        reply.map_err(|e| e.to_string())
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<Entry>, String> {
        self.pool
            .call(|reply| PoolMsg::AdmissionList(filter, reply), POOL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?
    }

    async fn delete(&self, req: &Request) -> Verdict {
        if req.dry_run {
            return Verdict::Allow;
        }
        let old_uid = req
            .old_object
            .as_ref()
            .and_then(|o| o.pointer("/metadata/uid"))
            .and_then(|u| u.as_str())
            .unwrap_or_default()
            .to_string();
        if let Some(client) = &self.pods
            && !old_uid.is_empty()
        {
            let api: Api<Pod> = Api::namespaced(client.clone(), &req.namespace);
            match api.get_opt(&req.name).await {
                Ok(Some(current)) if current.metadata.uid.as_deref().is_some_and(|u| u != old_uid) => {
                    tracing::info!(namespace = %req.namespace, pod = %req.name,
                        "DELETE of an earlier incarnation; the current pod keeps its entry.");
                    return Verdict::Allow;
                }
                Ok(_) => {}
                // Not knowing is no reason to block a delete; the cluster shard repairs mistakes.
                Err(e) => tracing::warn!(error = %e, "Could not read the pod; deleting its entry anyway."),
            }
        }
        let selectors: Vec<_> = pod_selectors(&req.namespace, &req.name).iter().cloned().collect();
        let filter = ListFilter { by_selectors: Some(selectors), ..Default::default() };
        let entries = match self.list(filter).await {
            Ok(e) => e,
            Err(e) => return Verdict::Error(format!("SPIRE unavailable: {e}")),
        };
        // Only our own entries: a hand-made entry with the same selectors is not ours to remove.
        let owned: Vec<Entry> = entries.into_iter().filter(|e| self.naming.webhook_owns(&e.spec)).collect();
        if owned.is_empty() {
            return Verdict::Allow;
        }
        let ops = owned.iter().map(|e| EntryOp::Delete { id: e.id.clone() }).collect();
        match self.apply(ops).await {
            Ok(results) => {
                let object = Object::Pod { namespace: req.namespace.clone(), name: req.name.clone() };
                let mut failed = Vec::new();
                for (entry, result) in owned.iter().zip(&results) {
                    match result {
                        OpOutcome::Deleted(id) => {
                            audit::written(Op::Delete, id, &entry.spec, &object, Reason::PodDeleted, &[])
                        }
                        OpOutcome::Failed { error, .. } => failed.push(error.to_string()),
                        _ => {}
                    }
                }
                if failed.is_empty() {
                    Verdict::Allow
                } else {
                    Verdict::Error(format!("deleting entries failed: {}", failed.join("; ")))
                }
            }
            Err(e) => Verdict::Error(format!("SPIRE unavailable: {e}")),
        }
    }
}

/// How long one SPIRE call of an admission may take (the pool's client deadline in webhook mode);
/// below the API server's default webhook timeout (10 s), so an unavailable SPIRE yields an
/// answer rather than a timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// How long an admission waits for the pool's answer (one call, with its retries).
const POOL_TIMEOUT: Duration = Duration::from_secs(8);
