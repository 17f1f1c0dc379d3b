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
    actors::{
        PoolHandle,
        spire_pool::{Fence, OpOutcome, PoolMsg},
    },
    diff::{EntryOp, diff},
    identity::Naming,
    k8s::convert,
    leadership::LeadershipRx,
    model::{Entry, EntrySpec},
    readiness::Readiness,
    spire::ListFilter,
};

/// Long enough for a pass against a slow server; the pool's workers bound each RPC themselves.
const POOL_TIMEOUT: Duration = Duration::from_secs(60);

pub enum BackstopMsg {
    Tick,
    /// Test-only fault injection.
    #[cfg(feature = "fault-injection")]
    Fail,
}

#[derive(Clone)]
pub struct BackstopArgs {
    pub naming: Arc<Naming>,
    /// SPIRE, through the pool (writes fenced by the leadership epoch).
    pub pool: PoolHandle,
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
    let list = |filter: ListFilter| async move {
        args.pool.call(|reply| PoolMsg::List(filter, reply), POOL_TIMEOUT).await.map_err(|e| e.to_string())?
    };
    let mut entries =
        list(ListFilter { by_parent_id: Some(cluster_id.clone()), ..Default::default() }).await?;
    entries.extend(list(ListFilter { by_spiffe_id: Some(cluster_id), ..Default::default() }).await?);
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
    // Deletes wait for a second pass (see the header); the pool applies the rest in order,
    // fenced by the epoch this pass was computed in.
    let mut writes = Vec::new();
    let mut suspects = HashSet::new();
    for op in ops {
        match op {
            EntryOp::Delete { id } => {
                if state.suspects.contains(&id) {
                    writes.push(EntryOp::Delete { id: id.clone() });
                }
                suspects.insert(id);
            }
            other => writes.push(other),
        }
    }
    state.suspects = suspects;
    if !writes.is_empty() {
        let fence = Fence::Epoch(leadership.epoch);
        let outcomes = args
            .pool
            .call(|reply| PoolMsg::Apply { ops: writes, fence, reply }, POOL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for outcome in outcomes {
            match outcome {
                OpOutcome::Deleted(id) => {
                    state.suspects.remove(&id);
                    tracing::info!(entry_id = %id, "Backstop removed the entry of a pod that is gone.");
                }
                OpOutcome::Created(e) => {
                    tracing::info!(entry_id = %e.id, spiffe_id = %e.spec.spiffe_id, "Backstop created a missing entry.")
                }
                OpOutcome::Updated(_) => {}
                // A spec SPIRE refuses for good is logged once and not sent again until it changes.
                OpOutcome::Failed { op, error } => {
                    if let Some(spec) = op.spec()
                        && error.is_permanent()
                        && state.rejected.insert(spec.clone())
                    {
                        tracing::warn!(spiffe_id = %spec.spiffe_id, error = %error,
                            "SPIRE refused an entry for good; not retried until it changes.");
                    }
                }
            }
        }
    }
    metrics::histogram!("registrar_reconcile_duration_seconds").record(start.elapsed().as_secs_f64());
    args.readiness.set_converged(leadership.epoch);
    Ok(())
}
