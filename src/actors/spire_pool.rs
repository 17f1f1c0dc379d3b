//! `SpirePool`: a small pool of `SpireWorker` actors, each owning one SPIRE client (one HTTP/2
//! channel), that perform the registrar's SPIRE reads and writes.
//!
//! * Owns: the workers and the round-robin cursor. Supervises the workers: a worker that fails
//!   is replaced on its own; requests it was handling fail back to their caller (the reply port
//!   is dropped), which retries.
//! * Receives: `List`, `Get` and `Apply` from shards, the registrar and crd mode's SpiffeID
//!   controller; `Fail` (fault injection).
//! * Messages nobody: replies go straight from the worker to the caller's reply port.
//!
//! # Fencing
//! Every `Apply` carries a [`Fence`]. Leader-gated writers send `Fence::Epoch` with the leadership
//! epoch under which their ops were computed: a worker checks the current
//! [`Leadership`](crate::leadership::Leadership) immediately before each batch call and refuses
//! the rest of the ops once this replica is no longer leading in that epoch, so a deposed
//! leader's queued writes never reach SPIRE. Webhook admissions send `Fence::Admission`: every
//! replica answers admissions, so they are the one unfenced writer; they run concurrently, each
//! in its own task on the pool's client, never queued behind anti-entropy work.

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::{
    diff::EntryOp,
    leadership::LeadershipRx,
    model::Entry,
    spire::{ItemError, ListFilter, SpireClient},
};

/// What a write must satisfy to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Only while this replica leads in this epoch (checked before every batch).
    Epoch(u64),
    /// An admission answer: sent by whichever replica the API server asked (see the header).
    Admission,
}

/// Why an `Apply` did not run (or stopped part-way).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error("not the leader in epoch {0}; write refused")]
    Fenced(u64),
    #[error("{0}")]
    Spire(String),
}

/// What happened to one op of an `Apply`, in op order.
#[derive(Debug, Clone)]
pub enum OpOutcome {
    Created(Entry),
    Updated(Entry),
    Deleted(String),
    /// SPIRE refused this op (per item); the op is handed back so the caller can tell which.
    Failed {
        op: EntryOp,
        error: ItemError,
    },
}

pub type ApplyReply = Result<Vec<OpOutcome>, ApplyError>;

pub enum PoolMsg {
    List(ListFilter, RpcReplyPort<Result<Vec<Entry>, String>>),
    /// The entry with this ID, `None` when there is none.
    Get(String, RpcReplyPort<Result<Option<Entry>, String>>),
    Apply {
        ops: Vec<EntryOp>,
        fence: Fence,
        reply: RpcReplyPort<ApplyReply>,
    },
    /// A read for an admission: answered concurrently, like admission writes.
    AdmissionList(ListFilter, RpcReplyPort<Result<Vec<Entry>, String>>),
    /// Test-only fault injection: `None` fails the pool itself, `Some(i)` worker `i`.
    #[cfg(feature = "fault-injection")]
    Fail(Option<usize>),
}

pub struct PoolArgs {
    pub client: SpireClient,
    pub leadership: LeadershipRx,
    pub workers: usize,
}

pub struct SpirePool;

pub struct PoolState {
    args_client: SpireClient,
    leadership: LeadershipRx,
    workers: Vec<ActorRef<WorkerMsg>>,
    next: usize,
}

impl PoolState {
    fn pick(&mut self) -> ActorRef<WorkerMsg> {
        self.next = (self.next + 1) % self.workers.len();
        self.workers[self.next].clone()
    }
}

async fn spawn_worker(
    pool: &ActorRef<PoolMsg>,
    client: &SpireClient,
    leadership: &LeadershipRx,
) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
    let (worker, _) = Actor::spawn_linked(
        None,
        SpireWorker,
        WorkerArgs { client: client.clone(), leadership: leadership.clone() },
        pool.get_cell(),
    )
    .await?;
    Ok(worker)
}

impl Actor for SpirePool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let mut workers = Vec::new();
        for _ in 0..args.workers.max(1) {
            workers.push(spawn_worker(&myself, &args.client, &args.leadership).await?);
        }
        Ok(PoolState { args_client: args.client, leadership: args.leadership, workers, next: 0 })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::List(filter, reply) => state.pick().cast(WorkerMsg::List(filter, reply))?,
            PoolMsg::Get(id, reply) => state.pick().cast(WorkerMsg::Get(id, reply))?,
            PoolMsg::Apply { ops, fence: Fence::Epoch(epoch), reply } => {
                state.pick().cast(WorkerMsg::Apply { ops, epoch, reply })?
            }
            PoolMsg::Apply { ops, fence: Fence::Admission, reply } => {
                let (client, leadership) = (state.args_client.clone(), state.leadership.clone());
                tokio::spawn(async move {
                    let _ = reply.send(apply(&client, &leadership, ops, Fence::Admission).await);
                });
            }
            PoolMsg::AdmissionList(filter, reply) => {
                let client = state.args_client.clone();
                tokio::spawn(async move {
                    let _ = reply.send(client.list_entries(&filter).await.map_err(|e| e.to_string()));
                });
            }
            #[cfg(feature = "fault-injection")]
            PoolMsg::Fail(None) => return Err("fault injected into the SPIRE pool".into()),
            #[cfg(feature = "fault-injection")]
            PoolMsg::Fail(Some(i)) => {
                if let Some(w) = state.workers.get(i % state.workers.len().max(1)) {
                    w.cast(WorkerMsg::Fail)?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        evt: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let dead = match &evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::warn!(actor = "spire_worker", error = %err, "SPIRE worker failed; restarting it.");
                Some(cell.get_id())
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => Some(cell.get_id()),
            _ => None,
        };
        if let Some(id) = dead
            && let Some(i) = state.workers.iter().position(|w| w.get_id() == id)
        {
            metrics::counter!("registrar_actor_restarts_total", "actor" => "spire_worker").increment(1);
            state.workers[i] = spawn_worker(&myself, &state.args_client, &state.leadership).await?;
        }
        Ok(())
    }
}

// === SpireWorker ===

pub enum WorkerMsg {
    List(ListFilter, RpcReplyPort<Result<Vec<Entry>, String>>),
    Get(String, RpcReplyPort<Result<Option<Entry>, String>>),
    Apply {
        ops: Vec<EntryOp>,
        epoch: u64,
        reply: RpcReplyPort<ApplyReply>,
    },
    #[cfg(feature = "fault-injection")]
    Fail,
}

pub struct WorkerArgs {
    client: SpireClient,
    leadership: LeadershipRx,
}

/// One SPIRE client; handles one request at a time.
pub struct SpireWorker;

impl Actor for SpireWorker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::List(filter, reply) => {
                let result = state.client.list_entries(&filter).await.map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            WorkerMsg::Get(id, reply) => {
                let _ = reply.send(state.client.get_entry(&id).await.map_err(|e| e.to_string()));
            }
            WorkerMsg::Apply { ops, epoch, reply } => {
                let _ = reply.send(apply(&state.client, &state.leadership, ops, Fence::Epoch(epoch)).await);
            }
            #[cfg(feature = "fault-injection")]
            WorkerMsg::Fail => return Err("fault injected into a SPIRE worker".into()),
        }
        Ok(())
    }
}

/// Why a write under `fence` may not be sent now, if it may not.
fn refusal(leadership: &LeadershipRx, fence: Fence) -> Option<ApplyError> {
    match fence {
        Fence::Epoch(epoch) => {
            let now = *leadership.borrow();
            (!(now.leading && now.epoch == epoch)).then_some(ApplyError::Fenced(epoch))
        }
        Fence::Admission => None,
    }
}

/// Deletes first (they can only reduce conflicts), then updates, then creates; each kind in
/// batches, with the fencing check before every batch.
async fn apply(
    client: &SpireClient,
    leadership: &LeadershipRx,
    ops: Vec<EntryOp>,
    fence: Fence,
) -> ApplyReply {
    let start = Instant::now();
    let mut deletes = Vec::new();
    let mut updates = Vec::new();
    let mut creates = Vec::new();
    let mut creates_with_ids = Vec::new();
    for op in ops {
        match op {
            EntryOp::Delete { id } => deletes.push(id),
            EntryOp::Update { id, spec } => updates.push(Entry { id, spec }),
            EntryOp::Create(spec) => creates.push(spec),
            EntryOp::CreateWithId { id, spec } => creates_with_ids.push(Entry { id, spec }),
        }
    }
    let mut out = Vec::new();
    let spire_err = |e: crate::spire::Error| ApplyError::Spire(e.to_string());
    if !deletes.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        for (id, r) in deletes.iter().zip(client.delete_entries(&deletes).await.map_err(spire_err)?) {
            out.push(match r {
                Ok(()) => OpOutcome::Deleted(id.clone()),
                Err(error) => OpOutcome::Failed { op: EntryOp::Delete { id: id.clone() }, error },
            });
        }
    }
    if !updates.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        for (entry, r) in updates.iter().zip(client.update_entries(&updates).await.map_err(spire_err)?) {
            out.push(match r {
                Ok(e) => OpOutcome::Updated(e),
                Err(error) => {
                    let op = EntryOp::Update { id: entry.id.clone(), spec: entry.spec.clone() };
                    OpOutcome::Failed { op, error }
                }
            });
        }
    }
    if !creates.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        for (spec, r) in creates.iter().zip(client.create_entries(&creates).await.map_err(spire_err)?) {
            out.push(match r {
                Ok(e) => OpOutcome::Created(e),
                Err(error) => OpOutcome::Failed { op: EntryOp::Create(spec.clone()), error },
            });
        }
    }
    if !creates_with_ids.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        let results = client.create_entries_with_ids(&creates_with_ids).await.map_err(spire_err)?;
        for (entry, r) in creates_with_ids.iter().zip(results) {
            out.push(match r {
                Ok(e) => OpOutcome::Created(e),
                Err(error) => {
                    let op = EntryOp::CreateWithId { id: entry.id.clone(), spec: entry.spec.clone() };
                    OpOutcome::Failed { op, error }
                }
            });
        }
    }
    for o in &out {
        let (op, outcome) = match o {
            OpOutcome::Created(_) => ("create", "ok"),
            OpOutcome::Updated(_) => ("update", "ok"),
            OpOutcome::Deleted(_) => ("delete", "ok"),
            OpOutcome::Failed { op, .. } => (op.verb(), "failed"),
        };
        metrics::counter!("registrar_entry_ops_total", "op" => op, "outcome" => outcome).increment(1);
    }
    metrics::histogram!("registrar_apply_duration_seconds").record(start.elapsed().as_secs_f64());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        id::{SpiffeId, TrustDomain},
        leadership::Leadership,
        model::{EntrySpec, Selector},
    };

    fn spec() -> EntrySpec {
        let td = TrustDomain::parse("example.org").unwrap();
        EntrySpec {
            spiffe_id: SpiffeId::from_path(&td, "/w").unwrap(),
            parent_id: SpiffeId::from_path(&td, "/reg/c/node/n1").unwrap(),
            selectors: BTreeSet::from([Selector::k8s("ns:a")]),
            dns_names: vec![],
            federates_with: BTreeSet::new(),
            downstream: false,
        }
    }

    /// A client whose every call would fail with UNAVAILABLE: if `apply` reached SPIRE, the
    /// error would be `Spire(..)`, not `Fenced`.
    fn unreachable_client() -> SpireClient {
        SpireClient::unix("/nonexistent/kwr-test.sock")
            .unwrap()
            .with_timeout(std::time::Duration::from_millis(50))
    }

    #[tokio::test]
    async fn writes_are_refused_without_leadership_in_the_same_epoch() {
        let (tx, rx) = tokio::sync::watch::channel(Leadership { leading: false, epoch: 3 });
        let ops = vec![EntryOp::Create(spec()), EntryOp::Delete { id: "x".into() }];
        // Not leading.
        assert!(matches!(
            apply(&unreachable_client(), &rx, ops.clone(), Fence::Epoch(3)).await,
            Err(ApplyError::Fenced(3))
        ));
        // Leading again, but in a newer epoch: ops computed under epoch 3 are stale.
        tx.send(Leadership { leading: true, epoch: 4 }).unwrap();
        assert!(matches!(
            apply(&unreachable_client(), &rx, ops.clone(), Fence::Epoch(3)).await,
            Err(ApplyError::Fenced(3))
        ));
        // The current epoch passes the fence (and then fails at the unreachable server).
        assert!(matches!(
            apply(&unreachable_client(), &rx, ops, Fence::Epoch(4)).await,
            Err(ApplyError::Spire(_))
        ));
    }
}
