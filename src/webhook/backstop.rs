//! `Backstop`: webhook mode's periodic reconcile. Admission alone cannot see pods deleted while
//! the webhook was down, deletes that never completed, or pods created while it was down; this
//! actor compares all pods with the entries we own under the cluster entry and repairs the
//! difference. Leader-gated: only the replica that leads writes.
//!
//! * Owns: the set of entries found stale in the previous pass (`suspects`).
//! * Reads: Pods (one list per pass), SPIRE entries under the cluster entry.
//! * Messages nobody; driven by its own timer.
//!
//! # Guarantees
//! * Missing entries are created and wrong ones updated in the pass that finds them.
//! * An entry is deleted only if two consecutive passes found it stale, so an entry an admission
//!   created for a pod the API server has not persisted yet (admission runs first) survives.
//! * SPIRE is read before the pods, for the same reason.

use std::{collections::HashSet, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::{
    diff::{EntryOp, diff},
    identity::Naming,
    k8s::convert,
    leadership::LeadershipRx,
    model::{Entry, EntrySpec},
    readiness::Readiness,
    spire::{ItemError, ListFilter, SpireClient},
};

pub enum BackstopMsg {
    Tick,
    /// Test-only fault injection.
    #[cfg(feature = "fault-injection")]
    Fail,
}

#[derive(Clone)]
pub struct BackstopArgs {
    pub naming: Arc<Naming>,
    pub spire: SpireClient,
    pub client: kube::Client,
    pub leadership: LeadershipRx,
    pub interval: Duration,
    /// Converged for an epoch once a pass as its leader succeeded; told of pod-list outcomes.
    pub readiness: Readiness,
}

pub struct Backstop;

pub struct BackstopState {
    args: BackstopArgs,
    suspects: HashSet<String>,
    /// Desired specs SPIRE refused for good; not sent again while they stay desired unchanged.
    rejected: HashSet<EntrySpec>,
}

impl Actor for Backstop {
    type Msg = BackstopMsg;
    type State = BackstopState;
    type Arguments = BackstopArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BackstopMsg>,
        args: BackstopArgs,
    ) -> Result<BackstopState, ActorProcessingErr> {
        myself.send_interval(args.interval, || BackstopMsg::Tick);
        myself.cast(BackstopMsg::Tick)?;
        Ok(BackstopState { args, suspects: HashSet::new(), rejected: HashSet::new() })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BackstopMsg>,
        msg: BackstopMsg,
        state: &mut BackstopState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackstopMsg::Tick => {
                if let Err(e) = pass(state).await {
                    metrics::counter!("registrar_sync_failures_total").increment(1);
                    tracing::warn!(error = %e, "Backstop pass failed; the next one retries.");
                }
            }
            #[cfg(feature = "fault-injection")]
            BackstopMsg::Fail => return Err("fault injected into the backstop".into()),
        }
        Ok(())
    }
}

async fn owned_entries(args: &BackstopArgs) -> Result<Vec<Entry>, String> {
    let cluster_id = args.naming.webhook_cluster_id().map_err(|e| e.to_string())?;
    let mut entries = args
        .spire
        .list_entries(&ListFilter { by_parent_id: Some(cluster_id.clone()), ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    let cluster = args
        .spire
        .list_entries(&ListFilter { by_spiffe_id: Some(cluster_id), ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    entries.extend(cluster);
    entries.retain(|e| args.naming.webhook_owns(&e.spec));
    Ok(entries)
}

async fn pass(state: &mut BackstopState) -> Result<(), String> {
    let args = &state.args;
    let leadership = *args.leadership.borrow();
    if !leadership.leading {
        state.suspects.clear();
        return Ok(());
    }
    let start = std::time::Instant::now();
    let actual = owned_entries(args).await?;
    let pods = Api::<Pod>::all(args.client.clone()).list(&ListParams::default()).await;
    match &pods {
        Ok(_) => args.readiness.kube.ok(),
        Err(_) => args.readiness.kube.failed(),
    }
    let pods = pods.map_err(|e| e.to_string())?;
    let mut desired = vec![args.naming.webhook_cluster_entry().map_err(|e| e.to_string())?];
    for pod in pods.items.iter().filter_map(convert::pod_info) {
        if pod.terminal {
            continue;
        }
        match args.naming.webhook_pod_entry(&pod) {
            Ok(Some(spec)) => desired.push(spec),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "Pod gets no entry."),
        }
    }
    state.rejected.retain(|spec| desired.contains(spec));
    let mut ops = diff(&desired, &actual);
    ops.retain(|op| op.spec().is_none_or(|spec| !state.rejected.contains(spec)));
    let mut deletes = Vec::new();
    let mut updates = Vec::new();
    let mut creates = Vec::new();
    let mut suspects = HashSet::new();
    for op in ops {
        match op {
            EntryOp::Delete { id } => {
                if state.suspects.contains(&id) {
                    deletes.push(id.clone());
                }
                suspects.insert(id);
            }
            EntryOp::Update { id, spec } => updates.push(Entry { id, spec }),
            EntryOp::Create(spec) => creates.push(spec),
            EntryOp::CreateWithId { .. } => {} // never produced by diff
        }
    }
    state.suspects = suspects;
    // Fencing: stop if leadership changed while we computed.
    let fenced = || {
        let now = *args.leadership.borrow();
        !(now.leading && now.epoch == leadership.epoch)
    };
    let count = |op: &'static str, results: &[bool]| {
        let ok = results.iter().filter(|r| **r).count() as u64;
        metrics::counter!("registrar_entry_ops_total", "op" => op, "outcome" => "ok").increment(ok);
        metrics::counter!("registrar_entry_ops_total", "op" => op, "outcome" => "failed")
            .increment(results.len() as u64 - ok);
    };
    if !deletes.is_empty() && !fenced() {
        let r = args.spire.delete_entries(&deletes).await.map_err(|e| e.to_string())?;
        count("delete", &r.iter().map(Result::is_ok).collect::<Vec<_>>());
        tracing::info!(entries = deletes.len(), "Backstop removed entries of pods that are gone.");
        for id in &deletes {
            state.suspects.remove(id);
        }
    }
    // A spec SPIRE refuses for good is logged once and not sent again until it changes.
    let mut refused = |spec: &EntrySpec, r: &Result<Entry, ItemError>| {
        if let Err(e) = r
            && e.is_permanent()
            && state.rejected.insert(spec.clone())
        {
            tracing::warn!(spiffe_id = %spec.spiffe_id, error = %e, "SPIRE refused an entry for good; not retried until it changes.");
        }
    };
    if !updates.is_empty() && !fenced() {
        let r = args.spire.update_entries(&updates).await.map_err(|e| e.to_string())?;
        count("update", &r.iter().map(Result::is_ok).collect::<Vec<_>>());
        updates.iter().zip(&r).for_each(|(e, r)| refused(&e.spec, r));
    }
    if !creates.is_empty() && !fenced() {
        let r = args.spire.create_entries(&creates).await.map_err(|e| e.to_string())?;
        count("create", &r.iter().map(Result::is_ok).collect::<Vec<_>>());
        creates.iter().zip(&r).for_each(|(spec, r)| refused(spec, r));
        tracing::info!(entries = creates.len(), "Backstop created missing entries.");
    }
    metrics::histogram!("registrar_reconcile_duration_seconds").record(start.elapsed().as_secs_f64());
    args.readiness.set_converged(leadership.epoch);
    Ok(())
}
