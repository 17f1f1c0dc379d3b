//! `NodeShard`: one per node; owns the SPIRE entries of that node — its node-alias entry and the
//! entries of the pods scheduled on it (all parented to the node's alias ID).
//!
//! * Owns: `actual`, its last known copy of those entries in SPIRE (`None` = unknown, read it
//!   before the next diff), and the set of identity problems already reported as Events.
//! * Reads: the shared [`ClusterCache`] (pods on this node, the node, EndpointSlices).
//! * Messages: the SPIRE pool (`List`, `Apply`); its supervisor, through [`ShardEvent`] only (a
//!   `DerivedActorRef`).
//!
//! Desired state: if the node exists in the cache, its node entry plus one entry per pod on it
//! that should have one (see `identity`); if the node does not exist, nothing — so deleting a node
//! removes its alias entry and every pod entry under it.
//!
//! # Guarantees
//! * A (re)started shard has no `actual`; it reads its entries from SPIRE (filtered by parent ID
//!   and by its alias ID, never a full list) before it writes anything, so it converges from
//!   whatever state SPIRE is in.
//! * A sync with nothing changed makes no write call (the diff is empty).
//! * An anti-entropy snapshot that agrees with what the shard knows costs one digest comparison:
//!   no diff, unless one is owed (a `Sync` it skipped for the snapshot queued behind it, or a
//!   held delete). Every cache change that touches the scope sends a `Sync`, so the last diff
//!   is still current.
//! * Followers compute nothing and write nothing; writes carry the leadership epoch.
//! * A failed write or read forgets `actual` and retries with backoff, re-reading SPIRE first —
//!   except a write SPIRE refuses for good (`ItemError::is_permanent`: an invalid entry, a
//!   federated trust domain without a bundle): that spec gets one Event on its pod and is not sent
//!   again while it stays desired unchanged; the node's other entries are unaffected.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::POOL_WAIT;
use super::spire_pool::{Fence, OpOutcome, PoolMsg};
use crate::{
    diff::{EntryOp, diff},
    identity::{IdentityError, Naming},
    k8s::{
        cache::ClusterCache,
        events::{EventSink, Reason},
    },
    leadership::LeadershipRx,
    model::{Entry, EntrySpec},
    spire::{ItemError, ListFilter},
};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub enum ShardMsg {
    /// Recompute desired state and write the difference (cheap when nothing changed).
    Sync,
    /// Anti-entropy: forget `actual`, re-read it from SPIRE, then sync.
    Resync,
    /// Anti-entropy from the registrar's listing begun at `taken_at`: the sorted digests
    /// (`model::digests`) of this shard's owned entries as they were then. If they disagree with
    /// what the shard knows, it re-reads its entries, unless a write of this shard returned since
    /// `taken_at` (then the listing may be the older picture; see the handler). If they agree
    /// and the shard owes no diff, it computes nothing (see `ShardState::owed`).
    Snapshot { taken_at: std::time::Instant, digests: Vec<u64> },
    /// Test-only fault injection: the handler fails, the supervisor restarts the shard.
    #[cfg(feature = "fault-injection")]
    Fail,
}

pub use crate::scope::{CLUSTER, ShardMode};

/// How long an owned entry must stay undesired before the cluster shard deletes it.
pub const DELETE_GRACE: Duration = Duration::from_secs(10);

/// What a shard tells its supervisor.
#[derive(Debug)]
pub enum ShardEvent {
    /// A sync finished; `empty` when the shard owns no entries any more.
    Synced { node: String, empty: bool },
}

/// Sync/Resync messages queued for one shard and not yet started. Senders `add` before they
/// cast; the shard takes one as it starts each. Every change also moves the process-wide total
/// behind the `registrar_queue_depth` gauge, so the gauge is exact at every moment; a shard
/// that goes away is `retire`d, so its leftovers never linger in the total. A shard skips a
/// `Sync` while more work is queued behind it: a burst of pod events for one node costs one
/// diff, not one per event.
#[derive(Clone, Default)]
pub struct Pending(Arc<AtomicUsize>);

static QUEUED: AtomicUsize = AtomicUsize::new(0);

fn total_changed(f: impl Fn(usize) -> usize) {
    let before = QUEUED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(f(n))).unwrap_or(0);
    metrics::gauge!("registrar_queue_depth").set(f(before) as f64);
}

impl Pending {
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        total_changed(|n| n + 1);
    }

    /// Marks one queued message as started; returns how many are still queued behind it.
    fn take_one(&self) -> usize {
        let before = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_sub(1)));
        if before.unwrap_or(0) > 0 {
            total_changed(|n| n.saturating_sub(1));
        }
        before.unwrap_or(0).saturating_sub(1)
    }

    /// The shard is gone: whatever it had queued will never run.
    pub fn retire(&self) {
        let left = self.0.swap(0, Ordering::SeqCst);
        total_changed(|n| n.saturating_sub(left));
    }
}

/// Casts `msg` to `shard`, counting it as queued work.
pub fn enqueue(shard: &ActorRef<ShardMsg>, pending: &Pending, msg: ShardMsg) {
    pending.add();
    if shard.cast(msg).is_err() {
        pending.take_one();
    }
}

/// Everything a shard needs, cloned from the registrar; cheap handles only.
#[derive(Clone)]
pub struct ShardArgs {
    /// The node this shard owns, or [`CLUSTER`] in [`ShardMode::Cluster`].
    pub node: String,
    pub mode: ShardMode,
    /// The node's owned entries from the registrar's initial read, when this shard is started
    /// by it; `None` makes the shard read its own entries first.
    pub initial: Option<Vec<Entry>>,
    pub naming: std::sync::Arc<Naming>,
    pub cache: ClusterCache,
    pub pool: super::PoolHandle,
    pub leadership: LeadershipRx,
    pub events: EventSink,
    /// Where the shard reports (the registrar).
    pub notify: ractor::DerivedActorRef<ShardEvent>,
    pub pending: Pending,
}

pub struct NodeShard;

pub struct ShardState {
    args: ShardArgs,
    actual: Option<Vec<Entry>>,
    reported: HashSet<String>,
    /// Desired specs SPIRE refused for good (see `ItemError::is_permanent`): not sent again while
    /// they stay desired unchanged. Pruned to the desired set on every sync, so it stays bounded.
    rejected: HashSet<EntrySpec>,
    /// Cluster mode: owned entries found undesired, with when that was first seen.
    suspects: HashMap<String, std::time::Instant>,
    backoff: Duration,
    retry_scheduled: bool,
    /// When the last write returned: a listing begun before then may not show it.
    last_write: Option<std::time::Instant>,
    /// The last snapshot was older than this shard's knowledge and was not used.
    stale_snapshot: bool,
    /// A `Sync` was skipped for work queued behind it, and no diff has run since. Invariant:
    /// when this is false, SPIRE agreeing with `actual` means desired state was last diffed
    /// against the cluster as it is now (every cache change that touches this scope sends a
    /// `Sync`), so an agreeing snapshot needs no diff: at 2,000 nodes that spares 2,000
    /// recomputations of every pod's entry per resync interval.
    owed: bool,
    /// UIDs of pods whose registration latency was recorded (once per pod); pruned to the
    /// shard's pods on every sync.
    registered: HashSet<String>,
    /// Pods created after this process started whose latency is not recorded yet, by namespace
    /// and name: (uid, creation ms). Rebuilt from the pods each sync reads (`track_registrations`).
    awaiting: HashMap<(String, String), (String, i64)>,
    /// The entries this shard held after its last successful sync (for `progress`).
    owned: crate::progress::Owned,
}

impl Actor for NodeShard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        mut args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        // Start converging right away; a restarted shard therefore rebuilds itself unasked.
        enqueue(&myself, &args.pending, ShardMsg::Sync);
        Ok(ShardState {
            actual: args.initial.take(),
            args,
            reported: HashSet::new(),
            rejected: HashSet::new(),
            suspects: HashMap::new(),
            backoff: Duration::from_millis(500),
            retry_scheduled: false,
            last_write: None,
            stale_snapshot: false,
            owed: false,
            registered: HashSet::new(),
            awaiting: HashMap::new(),
            owned: Default::default(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ShardMsg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        // A stopped shard's node is gone (or the tree is shutting down); a restarted one
        // reports again under the same scope.
        crate::progress::forget(&state.args.node);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Sync => {
                // More work is queued behind this one; let the last of it do the diff.
                if state.args.pending.take_one() == 0 {
                    sync(&myself, state).await;
                } else {
                    state.owed = true;
                }
            }
            ShardMsg::Resync => {
                state.args.pending.take_one();
                state.retry_scheduled = false;
                state.actual = None;
                sync(&myself, state).await;
            }
            ShardMsg::Snapshot { taken_at, digests } => {
                state.args.pending.take_one();
                // Shards handle one message at a time, so every write this shard sent has
                // returned by now. One that returned after the listing began may be missing
                // from it (or shown undone): then what the shard knows is newer than the
                // listing, and a disagreement proves nothing. It keeps its own knowledge once,
                // and re-reads its own entries if the next listing disagrees and is stale too
                // (a busy node still gets anti-entropy).
                let agrees = state.actual.as_ref().is_some_and(|a| crate::model::digests(a) == digests);
                let stale = state.last_write.is_some_and(|w| w >= taken_at);
                let check = match (agrees, stale, state.stale_snapshot) {
                    (true, _, _) => {
                        state.stale_snapshot = false;
                        "agreed"
                    }
                    (false, true, false) => {
                        state.stale_snapshot = true;
                        "stale"
                    }
                    // SPIRE changed behind this shard's back (or twice unclear): read it.
                    (false, _, _) => {
                        state.actual = None;
                        state.stale_snapshot = false;
                        "disagreed"
                    }
                };
                metrics::counter!("registrar_anti_entropy_checks_total", "result" => check).increment(1);
                // Held deletes (cluster mode) wait for a later diff, which this is the clock of.
                let idle = agrees && !state.owed && state.suspects.is_empty();
                if idle && state.args.leadership.borrow().leading {
                    // In sync, as the last diff left it: still a successful pass for `progress`
                    // (`registrar_last_converged_timestamp_seconds` keeps advancing).
                    crate::progress::report(&state.args.node, state.owned, true);
                    return Ok(());
                }
                sync(&myself, state).await;
            }
            #[cfg(feature = "fault-injection")]
            ShardMsg::Fail => return Err(format!("fault injected into shard {}", state.args.node).into()),
        }
        Ok(())
    }
}

/// Desired entries for this shard's scope (`scope`), reporting (once per distinct problem) pods
/// whose identity cannot be formed.
async fn desired(state: &mut ShardState) -> Vec<EntrySpec> {
    let a = &state.args;
    let d = match a.mode {
        ShardMode::PerNode => crate::scope::for_node(&a.naming, &a.cache, &a.node),
        ShardMode::Cluster => crate::scope::for_cluster(&a.naming, &a.cache),
    };
    track_registrations(state, &d.pods);
    for (pod, e) in d.problems {
        report(state, &pod.namespace, &pod.name, &pod.uid, e).await;
    }
    d.specs
}

async fn report(state: &mut ShardState, namespace: &str, name: &str, uid: &str, e: IdentityError) {
    let msg = e.to_string();
    // One log line, one count and one Event per distinct problem, not one per sync (a resync
    // must not make the counter climb for a pod that stays the same).
    if state.reported.insert(format!("{uid}|{msg}")) {
        metrics::counter!("registrar_invalid_identity_total", "reason" => e.metric_label()).increment(1);
        tracing::warn!(namespace, pod = name, error = %msg, "Pod gets no SPIFFE identity.");
        state.args.events.pod_warning(namespace, name, uid, Reason::of_identity(&e), msg);
    }
}

/// The namespace and name of the pod a pod entry is for (`k8s:ns:` + `k8s:pod-name:`); `None`
/// for node-alias and cluster entries.
fn pod_of(spec: &EntrySpec) -> Option<(&str, &str)> {
    let selector = |prefix: &str| {
        spec.selectors.iter().filter(|s| s.kind == "k8s").find_map(|s| s.value.strip_prefix(prefix))
    };
    Some((selector("ns:")?, selector("pod-name:")?))
}

/// From the pods a sync read: forgets recorded pods that are gone, and notes the ones still
/// waiting for their first entry (created after this process started, not recorded yet).
fn track_registrations(state: &mut ShardState, pods: &[crate::identity::PodInfo]) {
    let live: HashSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
    state.registered.retain(|uid| live.contains(uid.as_str()));
    let started = crate::metrics::started_unix_ms();
    state.awaiting = pods
        .iter()
        .filter(|p| !state.registered.contains(&p.uid))
        .filter_map(|p| {
            let created = p.created_unix_ms.filter(|&c| crate::metrics::counts_for_latency(c, started))?;
            Some(((p.namespace.clone(), p.name.clone()), (p.uid.clone(), created)))
        })
        .collect();
}

/// `registrar_registration_latency_seconds` for each awaiting pod whose entry SPIRE just
/// confirmed, once per pod (`metrics::registration_latency`).
fn observe_registrations(state: &mut ShardState, outcomes: &[OpOutcome]) {
    for o in outcomes {
        let OpOutcome::Created(e) = o else { continue };
        let Some((ns, name)) = pod_of(&e.spec) else { continue };
        let Some((uid, created)) = state.awaiting.remove(&(ns.to_string(), name.to_string())) else {
            continue;
        };
        if !state.registered.contains(&uid) && crate::metrics::observe_registration(Some(created)) {
            state.registered.insert(uid);
        }
    }
}

/// One audit line per write SPIRE confirmed (`audit`); `before` is what the shard held when
/// it computed the ops (the old fields of updates and deletes).
fn audit_writes(state: &ShardState, before: &[Entry], outcomes: &[OpOutcome]) {
    use crate::audit::{self, Op, Reason};
    let old: HashMap<&str, &EntrySpec> =
        match outcomes.iter().any(|o| matches!(o, OpOutcome::Updated(_) | OpOutcome::Deleted(_))) {
            true => before.iter().map(|e| (e.id.as_str(), &e.spec)).collect(),
            false => HashMap::new(),
        };
    let node_gone =
        state.args.mode == ShardMode::PerNode && state.args.cache.node(&state.args.node).is_none();
    for o in outcomes {
        match o {
            OpOutcome::Created(e) => {
                audit::written(Op::Create, &e.id, &e.spec, &audit::object_of(&e.spec), Reason::New, &[])
            }
            OpOutcome::Updated(e) => {
                let changed = old.get(e.id.as_str()).map(|o| o.differing(&e.spec)).unwrap_or_default();
                audit::written(
                    Op::Update,
                    &e.id,
                    &e.spec,
                    &audit::object_of(&e.spec),
                    Reason::Changed,
                    &changed,
                )
            }
            OpOutcome::Deleted(id) => {
                let Some(spec) = old.get(id.as_str()) else { continue };
                let object = audit::object_of(spec);
                let reason =
                    audit::why_deleted(&object, node_gone, |ns, name| state.args.cache.pod(ns, name));
                audit::written(Op::Delete, id, spec, &object, reason, &[])
            }
            OpOutcome::Existed(_) | OpOutcome::Failed { .. } => {}
        }
    }
}

/// One log line, metric increment and Event (on the pod the entry is for) for an entry SPIRE
/// refused for good; the caller stops sending it.
async fn report_refusal(state: &mut ShardState, op: &EntryOp, error: &ItemError) {
    let Some(spec) = op.spec() else { return };
    let msg = format!("SPIRE refused to {} the entry {}: {}", op.verb(), spec.spiffe_id, error.message);
    tracing::warn!(node = %state.args.node, spiffe_id = %spec.spiffe_id, error = %error,
        "SPIRE refused an entry for good; not retried until it changes.");
    metrics::counter!("registrar_invalid_identity_total", "reason" => "spire_rejected").increment(1);
    let Some((namespace, name)) = pod_of(spec) else { return };
    let uid = state
        .args
        .cache
        .pods_on(&state.args.node)
        .into_iter()
        .find(|p| p.namespace == namespace && p.name == name)
        .map(|p| p.uid)
        .unwrap_or_default();
    state.args.events.pod_warning(namespace, name, &uid, Reason::SpireRejected, msg);
}

async fn read_actual(args: &ShardArgs) -> Result<Vec<Entry>, String> {
    // The shard's anchor: the parent of its pod entries and the SPIFFE ID of its one entry
    // parented to the server (the node's alias, or webhook mode's cluster entry).
    let anchor = match args.mode {
        ShardMode::PerNode => {
            let root = args.naming.root_id().map_err(|e| e.to_string())?;
            root.join(&[&args.node]).map_err(|e| e.to_string())?
        }
        ShardMode::Cluster => args.naming.webhook_cluster_id().map_err(|e| e.to_string())?,
    };
    let by = |f: ListFilter| args.pool.list(f, POOL_WAIT);
    let mut entries = by(ListFilter { by_parent_id: Some(anchor.clone()), ..Default::default() }).await?;
    let own = by(ListFilter { by_spiffe_id: Some(anchor), ..Default::default() }).await?;
    entries.extend(own.into_iter().filter(|e| e.spec.parent_id == args.naming.server_id()));
    // Only entries this shard owns; ownership is exact (see `Naming::owns`, `webhook_owns`).
    entries.retain(|e| match args.mode {
        ShardMode::PerNode => args.naming.node_of(&e.spec).as_deref() == Some(args.node.as_str()),
        ShardMode::Cluster => args.naming.webhook_owns(&e.spec),
    });
    Ok(entries)
}

async fn sync(myself: &ActorRef<ShardMsg>, state: &mut ShardState) {
    state.owed = false;
    let leadership = *state.args.leadership.borrow();
    if !leadership.leading {
        // Followers keep nothing that could go stale: a promotion re-seeds every shard.
        state.actual = None;
        state.owned = Default::default();
        crate::progress::forget(&state.args.node);
        return;
    }
    let start = std::time::Instant::now();
    let actual = match state.actual.take() {
        Some(a) => a,
        None => match read_actual(&state.args).await {
            Ok(a) => a,
            Err(e) => return retry_later(myself, state, &e),
        },
    };
    let mut ops = plan(state, &actual).await;
    if ops.is_empty() {
        state.actual = Some(actual);
        finish(state, start);
        return;
    }
    // Bounded start-up: at most `WRITERS` shards hold computed writes at once. A shard that has
    // to wait does not keep its ops meanwhile (at start, every shard is here at once) and plans
    // again once admitted, from the cluster as it is then.
    let _turn = match state.args.pool.try_admit() {
        Some(turn) => turn,
        None => {
            drop(ops);
            metrics::counter!("registrar_write_turn_waits_total").increment(1);
            let turn = state.args.pool.admit().await;
            ops = plan(state, &actual).await;
            if ops.is_empty() {
                state.actual = Some(actual);
                finish(state, start);
                return;
            }
            turn
        }
    };
    tracing::debug!(node = %state.args.node, ops = ops.len(), "Writing entry changes.");
    let reply = state
        .args
        .pool
        .call(|reply| PoolMsg::Apply { ops, fence: Fence::Epoch(leadership.epoch), reply }, POOL_WAIT)
        .await;
    // Whatever the outcome (a failed call may still have written some of it).
    state.last_write = Some(std::time::Instant::now());
    let outcomes = match reply {
        Ok(Ok(outcomes)) => outcomes,
        Ok(Err(e)) => return retry_later(myself, state, &e.to_string()),
        Err(e) => return retry_later(myself, state, &e.to_string()),
    };
    observe_registrations(state, &outcomes);
    audit_writes(state, &actual, &outcomes);
    let mut next = actual;
    let mut failed = false;
    let mut refused = Vec::new();
    for o in outcomes {
        match o {
            // ALREADY_EXISTS hands back an entry we may already hold; keep IDs unique.
            OpOutcome::Created(e) | OpOutcome::Existed(e) => {
                next.retain(|x| x.id != e.id);
                next.push(e);
            }
            OpOutcome::Updated(e) => {
                next.retain(|x| x.id != e.id);
                next.push(e);
            }
            OpOutcome::Deleted(id) => next.retain(|x| x.id != id),
            OpOutcome::Failed { op, error } if error.is_permanent() && op.spec().is_some() => {
                refused.push((op, error));
            }
            OpOutcome::Failed { op, error } => {
                failed = true;
                tracing::warn!(node = %state.args.node, op = op.verb(), error = %error, "SPIRE rejected an entry change.");
            }
        }
    }
    for (op, error) in refused {
        report_refusal(state, &op, &error).await;
        if let Some(spec) = op.spec() {
            state.rejected.insert(spec.clone());
        }
    }
    if failed {
        // Some change did not land; re-read SPIRE later rather than trusting a partial picture.
        return retry_later(myself, state, "some entry changes failed");
    }
    state.actual = Some(next);
    finish(state, start);
}

/// The writes that turn `actual` into this scope's desired state, less what SPIRE refused for
/// good and (cluster mode) deletions still in their grace period.
async fn plan(state: &mut ShardState, actual: &[Entry]) -> Vec<EntryOp> {
    let want = desired(state).await;
    // A spec SPIRE refused for good is not sent again until the object (so the spec) changes.
    state.rejected.retain(|spec| want.contains(spec));
    let mut ops = diff(&want, actual);
    // The ops copy what they need; keeping `want` alive while they wait for the pool would hold
    // every desired spec twice.
    drop(want);
    ops.retain(|op| op.spec().is_none_or(|spec| !state.rejected.contains(spec)));
    if state.args.mode == ShardMode::Cluster {
        hold_young_deletes(&mut ops, &mut state.suspects);
    }
    ops
}

/// Cluster mode's deletion policy: a delete goes out only once its entry has been undesired for
/// [`DELETE_GRACE`]; suspects that became desired again are forgotten.
fn hold_young_deletes(ops: &mut Vec<EntryOp>, suspects: &mut HashMap<String, std::time::Instant>) {
    let now = std::time::Instant::now();
    let undesired: HashSet<String> = ops
        .iter()
        .filter_map(|op| matches!(op, EntryOp::Delete { .. }).then(|| op.entry_id()).flatten())
        .map(str::to_string)
        .collect();
    suspects.retain(|id, _| undesired.contains(id));
    for id in &undesired {
        suspects.entry(id.clone()).or_insert(now);
    }
    ops.retain(|op| match op {
        EntryOp::Delete { id } => {
            suspects.get(id).is_some_and(|since| now.duration_since(*since) >= DELETE_GRACE)
        }
        _ => true,
    });
}

fn finish(state: &mut ShardState, start: std::time::Instant) {
    state.backoff = Duration::from_millis(500);
    if let Some(actual) = &state.actual {
        let server = state.args.naming.server_id();
        let mut owned = crate::progress::Owned::default();
        for e in actual {
            match (e.spec.parent_id == server, state.args.mode) {
                (true, ShardMode::PerNode) => owned.node += 1,
                (true, ShardMode::Cluster) => owned.cluster += 1,
                (false, _) => owned.pod += 1,
            }
        }
        state.owned = owned;
    }
    crate::progress::report(&state.args.node, state.owned, true);
    metrics::histogram!("registrar_reconcile_duration_seconds").record(start.elapsed().as_secs_f64());
    let empty = state.actual.as_ref().is_some_and(Vec::is_empty);
    let _ = state.args.notify.send_message(ShardEvent::Synced { node: state.args.node.clone(), empty });
}

fn retry_later(myself: &ActorRef<ShardMsg>, state: &mut ShardState, why: &str) {
    tracing::warn!(node = %state.args.node, error = why, retry_in = ?state.backoff, "Node sync failed; will retry.");
    metrics::counter!("registrar_sync_failures_total").increment(1);
    crate::progress::fail(&state.args.node);
    state.actual = None;
    if !state.retry_scheduled {
        state.retry_scheduled = true;
        state.args.pending.add();
        myself.send_after(state.backoff, || ShardMsg::Resync);
    }
    state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> EntryOp {
        EntryOp::Create(crate::model::sample_spec())
    }

    #[test]
    fn cluster_deletes_wait_for_the_grace_period_and_are_forgotten_when_desired_again() {
        let mut suspects = HashMap::new();
        let delete = |id: &str| EntryOp::Delete { id: id.into() };
        let mut ops = vec![delete("a"), create()];
        hold_young_deletes(&mut ops, &mut suspects);
        assert_eq!(ops, vec![create()], "a fresh suspect is held, other ops pass");
        assert!(suspects.contains_key("a"));

        // Old enough: it goes out.
        suspects.insert("a".into(), std::time::Instant::now() - DELETE_GRACE);
        let mut ops = vec![delete("a")];
        hold_young_deletes(&mut ops, &mut suspects);
        assert_eq!(ops, vec![delete("a")]);

        // Desired again (no delete for it): forgotten, so a later delete starts a new grace.
        let mut ops = vec![create()];
        hold_young_deletes(&mut ops, &mut suspects);
        assert!(suspects.is_empty());
        let mut ops = vec![delete("a")];
        hold_young_deletes(&mut ops, &mut suspects);
        assert!(ops.is_empty(), "{ops:?}");
    }
}
