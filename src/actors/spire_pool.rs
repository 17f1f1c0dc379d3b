//! `SpirePool`: a small pool of `SpireWorker` actors, each owning one SPIRE client (one HTTP/2
//! channel), that perform the registrar's SPIRE reads and writes.
//!
//! * Owns: the workers and the request queues. Supervises the workers: a worker that fails is
//!   replaced on its own; the request it was handling fails back to its caller (the reply port
//!   is dropped), which retries.
//! * Receives: `List`, `Survey`, `Get` and `Apply` from shards, the registrar and crd mode's SpiffeID
//!   controller; `WorkerDone` from its workers; `Fail` (fault injection).
//! * Messages its workers, one request each at a time; replies go straight from the worker to
//!   the caller's reply port.
//!
//! # Queues
//! Requests wait in the pool, not in worker mailboxes, and go to whichever worker is idle.
//! Writes and point reads (`Apply`, `Get`: event-driven work) go first; listings (`List`:
//! anti-entropy and start-up reads) run on at most all workers but one, so a write never waits
//! behind a resync's reads. Queued writes of one epoch are handed to a worker together (up to
//! `COMBINED_MAX` ops), so batches fill across callers: two nodes of 51 entries each go as
//! 50 + 50 + 2, not 50 + 1 + 50 + 1; each caller still gets the outcomes of exactly its own ops. Every caller has at most one request outstanding (shards are
//! sequential), so the queues' depth is bounded by the number of callers, and a request whose
//! caller gave up waiting is dropped unsent rather than run late.
//!
//! # Fencing
//! Every `Apply` carries a [`Fence`]. Leader-gated writers send `Fence::Epoch` with the leadership
//! epoch under which their ops were computed: a worker checks the current
//! [`Leadership`](crate::leadership::Leadership) immediately before each batch call and refuses
//! the rest of the ops once this replica is no longer leading in that epoch, so a deposed
//! leader's queued writes never reach SPIRE. Webhook admissions send `Fence::Admission`: every
//! replica answers admissions, so they are the one unfenced writer; they run concurrently, each
//! in its own task on the pool's client, never queued behind anti-entropy work.

use std::{collections::VecDeque, time::Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort, SupervisionEvent};

use crate::{
    diff::EntryOp,
    leadership::LeadershipRx,
    model::{Entry, EntrySpec},
    spire::{ItemError, ListFilter, SpireClient, client::CREATE_BATCH},
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
    /// A create SPIRE answered with ALREADY_EXISTS and its "similar" entry: nothing was written
    /// (for instance a pod entry an admission wrote before the cluster shard saw the pod).
    Existed(Entry),
    Updated(Entry),
    Deleted(String),
    /// SPIRE refused this op (per item); the op is handed back so the caller can tell which.
    Failed {
        op: EntryOp,
        error: ItemError,
    },
}

impl OpOutcome {
    fn created(c: crate::spire::client::CreateResult) -> Self {
        if c.existed { OpOutcome::Existed(c.entry) } else { OpOutcome::Created(c.entry) }
    }
}

pub type ApplyReply = Result<Vec<OpOutcome>, ApplyError>;

/// Which shard scope owns an entry (`None`: not the registrar's); `scope::owner_scope`.
pub type ScopeOf = std::sync::Arc<dyn Fn(&EntrySpec) -> Option<String> + Send + Sync>;

/// Every owned entry in SPIRE as a digest, by scope: scope → the sorted [`Entry::digest`]s of
/// its entries. About 8 bytes an entry, where the entries themselves are ~700.
pub type Survey = std::collections::HashMap<String, Vec<u64>>;

pub enum PoolMsg {
    List(ListFilter, RpcReplyPort<Result<Vec<Entry>, String>>),
    /// Anti-entropy's listing of every entry, kept only as digests ([`Survey`]).
    Survey(ScopeOf, RpcReplyPort<Result<Survey, String>>),
    /// The entry with this ID, `None` when there is none.
    Get(String, RpcReplyPort<Result<Option<Entry>, String>>),
    Apply {
        ops: Vec<EntryOp>,
        fence: Fence,
        reply: RpcReplyPort<ApplyReply>,
    },
    /// A read for an admission: answered concurrently, like admission writes.
    AdmissionList(ListFilter, RpcReplyPort<Result<Vec<Entry>, String>>),
    /// From a worker: its request is answered; it is idle.
    WorkerDone(WorkerDone),
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

/// A worker's report to the pool (through a `DerivedActorRef`: workers know nothing else of it).
#[derive(Debug)]
pub struct WorkerDone(ActorId);

impl From<WorkerDone> for PoolMsg {
    fn from(d: WorkerDone) -> Self {
        PoolMsg::WorkerDone(d)
    }
}

impl TryFrom<PoolMsg> for WorkerDone {
    type Error = ();
    fn try_from(m: PoolMsg) -> Result<Self, ()> {
        match m {
            PoolMsg::WorkerDone(d) => Ok(d),
            _ => Err(()),
        }
    }
}

/// The most ops handed to a worker as one combined write (see `Queues::fill`).
const COMBINED_MAX: usize = 10 * CREATE_BATCH;

/// Which queue a request waits in (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `Apply` and `Get`: event-driven work, first.
    Urgent,
    /// `List`, `Survey`: anti-entropy and start-up reads.
    Background,
}

impl Class {
    fn label(self) -> &'static str {
        match self {
            Class::Urgent => "write",
            Class::Background => "read",
        }
    }
}

/// The two queues and the rule for what an idle worker takes next.
struct Queues<T> {
    urgent: VecDeque<T>,
    background: VecDeque<T>,
}

impl<T> Default for Queues<T> {
    fn default() -> Self {
        Self { urgent: VecDeque::new(), background: VecDeque::new() }
    }
}

impl<T> Queues<T> {
    fn push(&mut self, class: Class, t: T) {
        match class {
            Class::Urgent => self.urgent.push_back(t),
            Class::Background => self.background.push_back(t),
        }
    }

    /// The next request for an idle worker: urgent ones first, in arrival order; background ones
    /// only while fewer than `background_limit` of them run.
    fn pop(&mut self, background_running: usize, background_limit: usize) -> Option<(Class, T)> {
        if let Some(t) = self.urgent.pop_front() {
            return Some((Class::Urgent, t));
        }
        if background_running < background_limit {
            return self.background.pop_front().map(|t| (Class::Background, t));
        }
        None
    }

    fn len(&self, class: Class) -> usize {
        match class {
            Class::Urgent => self.urgent.len(),
            Class::Background => self.background.len(),
        }
    }
}

impl Queues<WorkerMsg> {
    /// Adds the writes queued right behind `parts` under the same epoch, up to [`COMBINED_MAX`]
    /// ops in all; callers that gave up are left out. Combining never costs calls
    /// (⌈(a + b) / 50⌉ ≤ ⌈a / 50⌉ + ⌈b / 50⌉) and fills the batches that separate writes leave
    /// half empty; the cap bounds how long the first caller waits for its answer (ten batches).
    fn fill(&mut self, mut parts: Vec<Part>, epoch: u64) -> Vec<Part> {
        parts.retain(|p| !p.reply.is_closed());
        let mut total: usize = parts.iter().map(|p| p.ops.len()).sum();
        let cap = COMBINED_MAX;
        while let Some(WorkerMsg::Apply { parts: next, epoch: e }) = self.urgent.front() {
            let len: usize = next.iter().map(|p| p.ops.len()).sum();
            if *e != epoch || total + len > cap {
                break;
            }
            if let Some(WorkerMsg::Apply { parts: next, .. }) = self.urgent.pop_front() {
                total += len;
                parts.extend(next.into_iter().filter(|p| !p.reply.is_closed()));
            }
        }
        parts
    }
}

struct Slot {
    worker: ActorRef<WorkerMsg>,
    /// The class of the request it is handling, if any.
    running: Option<Class>,
}

pub struct PoolState {
    args_client: SpireClient,
    leadership: LeadershipRx,
    workers: Vec<Slot>,
    queues: Queues<WorkerMsg>,
}

impl PoolState {
    /// Hands queued requests to idle workers until one of them runs out.
    fn dispatch(&mut self) -> Result<(), ActorProcessingErr> {
        let limit = self.workers.len().saturating_sub(1).max(1);
        while let Some(slot) = self.workers.iter().position(|s| s.running.is_none()) {
            let running = self.workers.iter().filter(|s| s.running == Some(Class::Background)).count();
            let Some((class, msg)) = self.queues.pop(running, limit) else { break };
            if msg.abandoned() {
                tracing::debug!(
                    class = class.label(),
                    "Dropping a SPIRE request whose caller stopped waiting."
                );
                continue;
            }
            let msg = match msg {
                WorkerMsg::Apply { parts, epoch } => {
                    WorkerMsg::Apply { parts: self.queues.fill(parts, epoch), epoch }
                }
                other => other,
            };
            self.workers[slot].worker.cast(msg)?;
            self.workers[slot].running = Some(class);
        }
        for class in [Class::Urgent, Class::Background] {
            metrics::gauge!("registrar_pool_queue_depth", "class" => class.label())
                .set(self.queues.len(class) as f64);
        }
        Ok(())
    }
}

async fn spawn_worker(
    pool: &ActorRef<PoolMsg>,
    client: &SpireClient,
    leadership: &LeadershipRx,
) -> Result<Slot, ActorProcessingErr> {
    let (worker, _) = Actor::spawn_linked(
        None,
        SpireWorker,
        WorkerArgs { client: client.clone(), leadership: leadership.clone(), done: pool.get_derived() },
        pool.get_cell(),
    )
    .await?;
    Ok(Slot { worker, running: None })
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
        crate::metrics::restartable("spire_worker");
        for _ in 0..args.workers.max(1) {
            workers.push(spawn_worker(&myself, &args.client, &args.leadership).await?);
        }
        Ok(PoolState {
            args_client: args.client,
            leadership: args.leadership,
            workers,
            queues: Queues::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::List(filter, reply) => {
                state.queues.push(Class::Background, WorkerMsg::List(filter, reply))
            }
            PoolMsg::Survey(scope_of, reply) => {
                state.queues.push(Class::Background, WorkerMsg::Survey(scope_of, reply))
            }
            PoolMsg::Get(id, reply) => state.queues.push(Class::Urgent, WorkerMsg::Get(id, reply)),
            PoolMsg::Apply { ops, fence: Fence::Epoch(epoch), reply } => {
                state.queues.push(Class::Urgent, WorkerMsg::Apply { parts: vec![Part { ops, reply }], epoch })
            }
            PoolMsg::WorkerDone(WorkerDone(id)) => {
                if let Some(slot) = state.workers.iter_mut().find(|s| s.worker.get_id() == id) {
                    slot.running = None;
                }
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
                    w.worker.cast(WorkerMsg::Fail)?;
                }
            }
        }
        state.dispatch()
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
            && let Some(i) = state.workers.iter().position(|w| w.worker.get_id() == id)
        {
            metrics::counter!("registrar_actor_restarts_total", "actor" => "spire_worker").increment(1);
            state.workers[i] = spawn_worker(&myself, &state.args_client, &state.leadership).await?;
        }
        state.dispatch()
    }
}

// === SpireWorker ===

/// Lists every entry, keeping of each owned one only its scope's digest (page by page: the
/// listing is never held whole).
async fn survey(
    client: &SpireClient,
    scope_of: &(dyn Fn(&EntrySpec) -> Option<String> + Send + Sync),
) -> Result<Survey, String> {
    let mut out = Survey::new();
    client
        .for_each_entry(&ListFilter::default(), |e| {
            if let Some(scope) = scope_of(&e.spec) {
                out.entry(scope).or_default().push(e.digest());
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    out.values_mut().for_each(|d| d.sort_unstable());
    Ok(out)
}

/// One caller's ops in a combined write, and where their outcomes go.
pub struct Part {
    ops: Vec<EntryOp>,
    reply: RpcReplyPort<ApplyReply>,
}

pub enum WorkerMsg {
    List(ListFilter, RpcReplyPort<Result<Vec<Entry>, String>>),
    Survey(ScopeOf, RpcReplyPort<Result<Survey, String>>),
    Get(String, RpcReplyPort<Result<Option<Entry>, String>>),
    /// The writes of one or more callers, all computed under `epoch`, sent as one.
    Apply {
        parts: Vec<Part>,
        epoch: u64,
    },
    #[cfg(feature = "fault-injection")]
    Fail,
}

impl WorkerMsg {
    /// The caller stopped waiting (timed out or went away): nobody would read the answer.
    fn abandoned(&self) -> bool {
        match self {
            WorkerMsg::List(_, r) => r.is_closed(),
            WorkerMsg::Survey(_, r) => r.is_closed(),
            WorkerMsg::Get(_, r) => r.is_closed(),
            WorkerMsg::Apply { parts, .. } => parts.iter().all(|p| p.reply.is_closed()),
            #[cfg(feature = "fault-injection")]
            WorkerMsg::Fail => false,
        }
    }
}

pub struct WorkerArgs {
    client: SpireClient,
    leadership: LeadershipRx,
    /// Told after every request, so the pool can hand it the next one.
    done: DerivedActorRef<WorkerDone>,
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
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::List(filter, reply) => {
                let result = state.client.list_entries(&filter).await.map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            WorkerMsg::Survey(scope_of, reply) => {
                let _ = reply.send(survey(&state.client, &*scope_of).await);
            }
            WorkerMsg::Get(id, reply) => {
                let _ = reply.send(state.client.get_entry(&id).await.map_err(|e| e.to_string()));
            }
            WorkerMsg::Apply { parts, epoch } => {
                apply_parts(&state.client, &state.leadership, parts, epoch).await;
            }
            #[cfg(feature = "fault-injection")]
            WorkerMsg::Fail => return Err("fault injected into a SPIRE worker".into()),
        }
        // A pool that is gone (shutting down) needs no report.
        let _ = state.done.send_message(WorkerDone(myself.get_id()));
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

/// Runs several callers' ops as one write and answers each caller with its own outcomes (in
/// the same order `apply` gives them); an error of the whole write goes to every caller.
async fn apply_parts(client: &SpireClient, leadership: &LeadershipRx, parts: Vec<Part>, epoch: u64) {
    let mut owners = Vec::new();
    let mut ops = Vec::new();
    let mut replies = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        owners.extend(std::iter::repeat_n(i, part.ops.len()));
        ops.extend(part.ops);
        replies.push(part.reply);
    }
    match apply_indexed(client, leadership, ops, Fence::Epoch(epoch)).await {
        Ok(outcomes) => {
            let mut per_part: Vec<Vec<OpOutcome>> = replies.iter().map(|_| Vec::new()).collect();
            for (idx, outcome) in outcomes {
                per_part[owners[idx]].push(outcome);
            }
            for (reply, outcomes) in replies.into_iter().zip(per_part) {
                let _ = reply.send(Ok(outcomes));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
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
    Ok(apply_indexed(client, leadership, ops, fence).await?.into_iter().map(|(_, o)| o).collect())
}

/// [`apply`], each outcome tagged with the position of its op in `ops`.
async fn apply_indexed(
    client: &SpireClient,
    leadership: &LeadershipRx,
    ops: Vec<EntryOp>,
    fence: Fence,
) -> Result<Vec<(usize, OpOutcome)>, ApplyError> {
    let start = Instant::now();
    let mut deletes = Vec::new();
    let mut updates = Vec::new();
    let mut creates = Vec::new();
    let mut creates_with_ids = Vec::new();
    // Where each kind's ops sit in `ops`, in the kind's order.
    let (mut at_delete, mut at_update, mut at_create, mut at_create_id) = (vec![], vec![], vec![], vec![]);
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            EntryOp::Delete { id } => {
                deletes.push(id);
                at_delete.push(i);
            }
            EntryOp::Update { id, spec } => {
                updates.push(Entry { id, spec });
                at_update.push(i);
            }
            EntryOp::Create(spec) => {
                creates.push(spec);
                at_create.push(i);
            }
            EntryOp::CreateWithId { id, spec } => {
                creates_with_ids.push(Entry { id, spec });
                at_create_id.push(i);
            }
        }
    }
    let mut out = Vec::new();
    let spire_err = |e: crate::spire::Error| ApplyError::Spire(e.to_string());
    if !deletes.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        let results = client.delete_entries(&deletes).await.map_err(spire_err)?;
        for ((id, r), &i) in deletes.iter().zip(results).zip(&at_delete) {
            out.push((
                i,
                match r {
                    Ok(()) => OpOutcome::Deleted(id.clone()),
                    Err(error) => OpOutcome::Failed { op: EntryOp::Delete { id: id.clone() }, error },
                },
            ));
        }
    }
    if !updates.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        let results = client.update_entries(&updates).await.map_err(spire_err)?;
        for ((entry, r), &i) in updates.iter().zip(results).zip(&at_update) {
            out.push((
                i,
                match r {
                    Ok(e) => OpOutcome::Updated(e),
                    Err(error) => {
                        let op = EntryOp::Update { id: entry.id.clone(), spec: entry.spec.clone() };
                        OpOutcome::Failed { op, error }
                    }
                },
            ));
        }
    }
    if !creates.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        let results = client.create_entries_detailed(&creates).await.map_err(spire_err)?;
        for ((spec, r), &i) in creates.iter().zip(results).zip(&at_create) {
            out.push((
                i,
                match r {
                    Ok(c) => OpOutcome::created(c),
                    Err(error) => OpOutcome::Failed { op: EntryOp::Create(spec.clone()), error },
                },
            ));
        }
    }
    if !creates_with_ids.is_empty() {
        if let Some(refused) = refusal(leadership, fence) {
            return Err(refused);
        }
        let results = client.create_entries_with_ids_detailed(&creates_with_ids).await.map_err(spire_err)?;
        for ((entry, r), &i) in creates_with_ids.iter().zip(results).zip(&at_create_id) {
            out.push((
                i,
                match r {
                    Ok(c) => OpOutcome::created(c),
                    Err(error) => {
                        let op = EntryOp::CreateWithId { id: entry.id.clone(), spec: entry.spec.clone() };
                        OpOutcome::Failed { op, error }
                    }
                },
            ));
        }
    }
    for (_, o) in &out {
        let (op, outcome) = match o {
            OpOutcome::Created(_) => ("create", "ok"),
            OpOutcome::Existed(_) => ("create", "exists"),
            OpOutcome::Updated(_) => ("update", "ok"),
            OpOutcome::Deleted(_) => ("delete", "ok"),
            OpOutcome::Failed { op, .. } => (op.verb(), "failed"),
        };
        // A dry run's writes were not sent: counted apart, so the two can be compared.
        match client.is_dry_run() {
            false => metrics::counter!("registrar_entry_ops_total", "op" => op, "outcome" => outcome),
            true => metrics::counter!("registrar_dry_run_ops_total", "op" => op, "outcome" => outcome),
        }
        .increment(1);
    }
    metrics::histogram!("registrar_apply_duration_seconds").record(start.elapsed().as_secs_f64());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{leadership::Leadership, model::sample_spec};

    /// A client whose every call would fail with UNAVAILABLE: if `apply` reached SPIRE, the
    /// error would be `Spire(..)`, not `Fenced`.
    fn unreachable_client() -> SpireClient {
        SpireClient::unix("/nonexistent/kwr-test.sock")
            .unwrap()
            .with_timeout(std::time::Duration::from_millis(50))
    }

    #[test]
    fn writes_go_first_and_reads_never_take_the_last_worker() {
        let mut q = Queues::default();
        q.push(Class::Background, "resync n1");
        q.push(Class::Background, "resync n2");
        q.push(Class::Urgent, "create p1");
        q.push(Class::Urgent, "create p2");
        // Two workers: reads may use one of them.
        assert_eq!(q.pop(0, 1), Some((Class::Urgent, "create p1")));
        assert_eq!(q.pop(0, 1), Some((Class::Urgent, "create p2")));
        assert_eq!(q.pop(0, 1), Some((Class::Background, "resync n1")));
        // One read runs: the other worker stays free for the next write.
        assert_eq!(q.pop(1, 1), None);
        q.push(Class::Urgent, "delete p3");
        assert_eq!(q.pop(1, 1), Some((Class::Urgent, "delete p3")));
        assert_eq!(q.pop(0, 1), Some((Class::Background, "resync n2")));
        assert_eq!(q.pop(0, 1), None);
        assert_eq!((q.len(Class::Urgent), q.len(Class::Background)), (0, 0));
    }

    fn part(n: usize) -> (Part, tokio::sync::oneshot::Receiver<ApplyReply>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ops = (0..n).map(|i| EntryOp::Delete { id: format!("e{i}") }).collect();
        (Part { ops, reply: tx.into() }, rx)
    }

    fn queue_write(q: &mut Queues<WorkerMsg>, p: Part, epoch: u64) {
        q.push(Class::Urgent, WorkerMsg::Apply { parts: vec![p], epoch });
    }

    #[test]
    fn queued_writes_of_one_epoch_are_combined_up_to_the_cap() {
        let mut q = Queues::default();
        let (a, _ra) = part(51);
        let (b, _rb) = part(49);
        let (c, _rc) = part(400);
        let (d, _rd) = part(10);
        queue_write(&mut q, b, 1);
        queue_write(&mut q, c, 1);
        queue_write(&mut q, d, 1);
        // 51 + 49 + 400 = COMBINED_MAX; the 10 behind them wait for the next worker.
        let parts = q.fill(vec![a], 1);
        assert_eq!(parts.iter().map(|p| p.ops.len()).collect::<Vec<_>>(), vec![51, 49, 400]);
        assert_eq!(q.len(Class::Urgent), 1);

        // Small writes share one batch; another epoch's write is never mixed in.
        let mut q = Queues::default();
        let (x, _rx) = part(1);
        let (y, _ry) = part(2);
        let (gone, rgone) = part(3);
        drop(rgone);
        let (other, _ro) = part(1);
        queue_write(&mut q, y, 7);
        queue_write(&mut q, gone, 7);
        queue_write(&mut q, other, 8);
        let parts = q.fill(vec![x], 7);
        assert_eq!(
            parts.iter().map(|p| p.ops.len()).collect::<Vec<_>>(),
            vec![1, 2],
            "the abandoned part is left out"
        );
        assert_eq!(q.len(Class::Urgent), 1, "epoch 8's write waits for its own turn");
    }

    #[tokio::test]
    async fn writes_are_refused_without_leadership_in_the_same_epoch() {
        let (tx, rx) = tokio::sync::watch::channel(Leadership { leading: false, epoch: 3 });
        let ops = vec![EntryOp::Create(sample_spec()), EntryOp::Delete { id: "x".into() }];
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
