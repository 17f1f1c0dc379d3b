//! `Registrar`: the shard supervisor and router of reconcile and webhook modes, a child of the
//! `Root` (which also holds the `SpirePool` and the `Leader`). Reconcile mode: one shard per node
//! (watchers of pods, nodes, EndpointSlices); webhook mode: one cluster-wide shard (`CLUSTER`,
//! a pod watcher) that replaces the old backstop.
//!
//! * Owns: its children — one `Watcher` per kind, one `NodeShard` per node — and their restart
//!   budget.
//! * Receives: change notices from watchers, `ShardSynced` from shards, leadership changes, the
//!   resync timer, and fault-injection requests.
//! * Messages: shards (`Sync`, `Resync`), the pool (`List` for the initial read, through the
//!   shared [`PoolHandle`]).
//!
//! # Supervision
//! One-for-one: a child that fails (error or panic) is restarted alone, with the same arguments;
//! the others keep running. A restarted watcher relists, a restarted shard re-reads its entries
//! from SPIRE. More than [`RestartBudget::standard`] restarts within its window escalate: the
//! registrar fails, and its supervisor (the `Root`) restarts it with a fresh set of children, or
//! itself gives up and the process exits non-zero.
//!
//! # Start and promotion
//! Once every watcher has listed and this replica leads, the registrar reads all entries once
//! (paged, in a task: the registrar keeps handling its children meanwhile), hands each node's
//! owned entries to its new shard, and from then on work is incremental. Nodes that have entries
//! but no Node object get a shard too; it deletes them. A read that returns after leadership
//! moved on is dropped. With leader election, once the epoch has *settled* (the previous
//! leader's last writes are over at SPIRE, `leadership::settled_epochs`), every shard re-reads
//! its entries, so a write that landed after our initial read is repaired at once rather than at
//! the next resync.
//!
//! # Anti-entropy
//! Once per `resync_interval` the leader lists every entry once (paged, in a task) and hands each
//! shard the digests of its owned entries (`PoolMsg::Survey`: ~8 bytes an entry, never a second
//! copy of every entry): idle cost O(entries / page size) calls per interval, not O(nodes). A
//! shard whose knowledge agrees does nothing; one that disagrees re-reads its own entries
//! (filtered) and repairs them. A shard whose last write returned after the listing began keeps
//! its own, newer knowledge (and re-reads if the next listing disagrees and is stale for it
//! too), so a stale page never overwrites what a write taught it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use super::{
    POOL_WAIT, PoolHandle, RestartBudget,
    shard::{CLUSTER, NodeShard, Pending, ShardArgs, ShardEvent, ShardMode, ShardMsg, enqueue},
    spire_pool::{ScopeOf, Survey},
    watcher::{WatchEvent, WatchKind, Watcher, WatcherArgs, WatcherMsg},
};
use crate::{
    identity::Naming,
    k8s::{cache::ClusterCache, events::EventSink},
    leadership::{Leadership, LeadershipRx, settled_epochs},
    model::Entry,
    readiness::Readiness,
    spire::ListFilter,
};

/// Which child a fault-injection request targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultTarget {
    Watcher(WatchKind),
    Shard(String),
}

impl FaultTarget {
    /// `pods`, `nodes`, `endpointslices` or `shard:<node>`.
    pub fn parse(target: &str) -> Option<Self> {
        Some(match target {
            "pods" => FaultTarget::Watcher(WatchKind::Pods),
            "nodes" => FaultTarget::Watcher(WatchKind::Nodes),
            "endpointslices" => FaultTarget::Watcher(WatchKind::EndpointSlices),
            _ => FaultTarget::Shard(target.strip_prefix("shard:")?.to_string()),
        })
    }
}

pub enum RegistrarMsg {
    /// From a watcher (which knows only `WatchEvent`).
    Watch(WatchEvent),
    /// From a shard (which knows only `ShardEvent`).
    Shard(ShardEvent),
    Leadership(Leadership),
    ResyncTick,
    /// Writes of leaders before `epoch` are over at SPIRE (see `settled_epochs`).
    Settled(u64),
    /// The periodic listing of every entry as digests, begun at `taken_at` (done by a task).
    AntiEntropyRead {
        epoch: u64,
        taken_at: std::time::Instant,
        survey: Result<Survey, String>,
    },
    Bootstrap,
    /// The initial full read for `epoch`, done by a task so the registrar keeps handling its
    /// children (and their failures) meanwhile.
    BootstrapRead {
        epoch: u64,
        entries: Result<Vec<Entry>, String>,
    },
    #[cfg(feature = "fault-injection")]
    Inject(FaultTarget),
    /// Graceful shutdown: stop every child, then reply.
    Shutdown(ractor::RpcReplyPort<()>),
}

impl From<WatchEvent> for RegistrarMsg {
    fn from(e: WatchEvent) -> Self {
        RegistrarMsg::Watch(e)
    }
}

impl TryFrom<RegistrarMsg> for WatchEvent {
    type Error = ();
    fn try_from(m: RegistrarMsg) -> Result<Self, ()> {
        match m {
            RegistrarMsg::Watch(e) => Ok(e),
            _ => Err(()),
        }
    }
}

impl From<ShardEvent> for RegistrarMsg {
    fn from(e: ShardEvent) -> Self {
        RegistrarMsg::Shard(e)
    }
}

impl TryFrom<RegistrarMsg> for ShardEvent {
    type Error = ();
    fn try_from(m: RegistrarMsg) -> Result<Self, ()> {
        match m {
            RegistrarMsg::Shard(e) => Ok(e),
            _ => Err(()),
        }
    }
}

#[derive(Clone)]
pub struct RegistrarArgs {
    /// Per node (reconcile) or one cluster-wide shard (webhook).
    pub mode: ShardMode,
    pub naming: Arc<Naming>,
    pub client: kube::Client,
    /// The SPIRE pool, a sibling under the `Root`.
    pub pool: PoolHandle,
    pub cache: ClusterCache,
    pub leadership: LeadershipRx,
    pub watch_slices: bool,
    pub resync_interval: Duration,
    pub events: EventSink,
    /// `/readyz`: synced once every watcher listed; converged for an epoch once its initial read
    /// has been handed to the shards.
    pub readiness: Readiness,
    /// With leader election: when an epoch's predecessors' writes are over, every shard re-reads
    /// (see [`settled_epochs`]).
    pub settle: Option<Duration>,
}

pub struct Registrar;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildKind {
    Watcher(WatchKind),
    Shard,
}

impl ChildKind {
    fn label(self) -> &'static str {
        match self {
            ChildKind::Watcher(k) => k.label(),
            ChildKind::Shard => "shard",
        }
    }
}

pub struct RegistrarState {
    args: RegistrarArgs,
    watchers: BTreeMap<WatchKind, ActorRef<WatcherMsg>>,
    synced: BTreeSet<WatchKind>,
    shards: BTreeMap<String, (ActorRef<ShardMsg>, Pending)>,
    children: HashMap<ActorId, (ChildKind, Option<String>)>,
    restarts: RestartBudget,
    /// The epoch whose initial read has been done; shards only exist for work in that epoch.
    bootstrapped: Option<u64>,
    /// The epoch whose initial read is in flight (at most one at a time).
    reading: Option<u64>,
    leadership_task: JoinHandle<()>,
    settle_task: Option<JoinHandle<()>>,
    /// An anti-entropy listing is in flight (at most one at a time).
    anti_entropy: bool,
    /// Shards of this epoch's initial read that have not finished a sync yet. While any has
    /// not, resync ticks are skipped (at most [`MAX_SKIPPED_TICKS`] in a row): they would list
    /// every entry while the shards are still writing what they read a moment ago — a snapshot
    /// no busy shard may use (it wrote since), taking a SPIRE worker from the writes.
    converging: BTreeSet<String>,
    skipped_ticks: u32,
}

/// Resync ticks skipped in a row while shards converge, before a listing is made anyway (a
/// shard that cannot finish must not hold anti-entropy back for good).
const MAX_SKIPPED_TICKS: u32 = 3;

impl RegistrarState {
    fn kinds(&self) -> Vec<WatchKind> {
        if self.args.mode == ShardMode::Cluster {
            return vec![WatchKind::Pods];
        }
        let mut k = vec![WatchKind::Nodes, WatchKind::Pods];
        if self.args.watch_slices {
            k.push(WatchKind::EndpointSlices);
        }
        k
    }

    fn shard_args(
        &self,
        myself: &ActorRef<RegistrarMsg>,
        node: &str,
        initial: Option<Vec<Entry>>,
    ) -> ShardArgs {
        ShardArgs {
            node: node.to_string(),
            mode: self.args.mode,
            initial,
            naming: self.args.naming.clone(),
            cache: self.args.cache.clone(),
            pool: self.args.pool.clone(),
            leadership: self.args.leadership.clone(),
            events: self.args.events.clone(),
            notify: myself.get_derived(),
            pending: Pending::default(),
        }
    }

    /// Owned entries by the scope (node, or `CLUSTER`) of the shard that owns them; entries of
    /// no shard (hand-made, other clusters') are left out.
    fn by_scope(&self, entries: Vec<Entry>) -> BTreeMap<String, Vec<Entry>> {
        let mut out: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in entries {
            if let Some(scope) = crate::scope::owner_scope(self.args.mode, &self.args.naming, &e.spec) {
                out.entry(scope).or_default().push(e);
            }
        }
        out
    }

    /// Queues `msg()` for every shard in `nodes` (all shards when `None`).
    fn poke(&self, nodes: Option<&BTreeSet<String>>, msg: impl Fn() -> ShardMsg) {
        for (node, (shard, pending)) in &self.shards {
            if nodes.is_none_or(|n| n.contains(node)) {
                enqueue(shard, pending, msg());
            }
        }
    }
}

async fn spawn_watcher(
    myself: &ActorRef<RegistrarMsg>,
    state: &mut RegistrarState,
    kind: WatchKind,
) -> Result<(), ActorProcessingErr> {
    let args = WatcherArgs {
        kind,
        client: state.args.client.clone(),
        cache: state.args.cache.clone(),
        notify: myself.get_derived(),
        kube: state.args.readiness.kube.clone(),
        pod_keys: state.args.naming.metadata_keys(),
    };
    let (w, _) = Actor::spawn_linked(None, Watcher, args, myself.get_cell()).await?;
    state.children.insert(w.get_id(), (ChildKind::Watcher(kind), None));
    state.watchers.insert(kind, w);
    Ok(())
}

async fn spawn_shard(
    myself: &ActorRef<RegistrarMsg>,
    state: &mut RegistrarState,
    node: &str,
    initial: Option<Vec<Entry>>,
) -> Result<ActorRef<ShardMsg>, ActorProcessingErr> {
    let args = state.shard_args(myself, node, initial);
    let pending = args.pending.clone();
    let (s, _) = Actor::spawn_linked(None, NodeShard, args, myself.get_cell()).await?;
    state.children.insert(s.get_id(), (ChildKind::Shard, Some(node.to_string())));
    state.shards.insert(node.to_string(), (s.clone(), pending));
    metrics::gauge!("registrar_shards").set(state.shards.len() as f64);
    Ok(s)
}

impl Actor for Registrar {
    type Msg = RegistrarMsg;
    type State = RegistrarState;
    type Arguments = RegistrarArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RegistrarMsg>,
        args: RegistrarArgs,
    ) -> Result<RegistrarState, ActorProcessingErr> {
        let mut rx = args.leadership.clone();
        let me = myself.clone();
        let leadership_task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let l = *rx.borrow_and_update();
                if me.cast(RegistrarMsg::Leadership(l)).is_err() {
                    return;
                }
            }
        });
        let settle_task = args.settle.map(|settle| {
            let (rx, me) = (args.leadership.clone(), myself.clone());
            tokio::spawn(async move {
                let mut settled = std::pin::pin!(settled_epochs(rx, settle));
                while let Some(epoch) = settled.next().await {
                    if me.cast(RegistrarMsg::Settled(epoch)).is_err() {
                        return;
                    }
                }
            })
        });
        let mut state = RegistrarState {
            args,
            watchers: BTreeMap::new(),
            synced: BTreeSet::new(),
            shards: BTreeMap::new(),
            children: HashMap::new(),
            restarts: RestartBudget::standard(),
            bootstrapped: None,
            reading: None,
            leadership_task,
            settle_task,
            anti_entropy: false,
            converging: BTreeSet::new(),
            skipped_ticks: 0,
        };
        for kind in state.kinds() {
            crate::metrics::restartable(ChildKind::Watcher(kind).label());
            spawn_watcher(&myself, &mut state, kind).await?;
        }
        crate::metrics::restartable(ChildKind::Shard.label());
        myself.send_interval(state.args.resync_interval, || RegistrarMsg::ResyncTick);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<RegistrarMsg>,
        state: &mut RegistrarState,
    ) -> Result<(), ActorProcessingErr> {
        state.leadership_task.abort();
        if let Some(t) = &state.settle_task {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RegistrarMsg>,
        msg: RegistrarMsg,
        state: &mut RegistrarState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistrarMsg::Watch(WatchEvent::PodsChanged) => {
                metrics::gauge!("registrar_pods").set(state.args.cache.pod_count() as f64);
                if state.args.mode == ShardMode::Cluster && state.bootstrapped.is_some() {
                    match state.shards.contains_key(CLUSTER) {
                        true => state.poke(Some(&BTreeSet::from([CLUSTER.to_string()])), || ShardMsg::Sync),
                        false => {
                            spawn_shard(&myself, state, CLUSTER, None).await?;
                        }
                    }
                }
            }
            RegistrarMsg::Watch(WatchEvent::NodesTouched(_)) if state.args.mode == ShardMode::Cluster => {}
            RegistrarMsg::Watch(WatchEvent::NodesTouched(nodes)) => {
                if state.bootstrapped.is_none() {
                    return Ok(()); // the initial read will cover every node
                }
                for node in &nodes {
                    if !state.shards.contains_key(node) {
                        // A new shard syncs on start; no extra message needed.
                        spawn_shard(&myself, state, node, None).await?;
                    } else {
                        state.poke(Some(&BTreeSet::from([node.clone()])), || ShardMsg::Sync);
                    }
                }
                metrics::gauge!("registrar_pods").set(state.args.cache.pod_count() as f64);
            }
            RegistrarMsg::Watch(WatchEvent::AllNodesTouched) => state.poke(None, || ShardMsg::Sync),
            RegistrarMsg::Watch(WatchEvent::Synced(kind)) => {
                tracing::info!(kind = kind.label(), "Initial list done.");
                state.synced.insert(kind);
                maybe_bootstrap(&myself, state).await;
            }
            RegistrarMsg::Leadership(l) => {
                tracing::info!(leading = l.leading, epoch = l.epoch, "Leadership changed.");
                if l.leading {
                    maybe_bootstrap(&myself, state).await;
                } else {
                    state.bootstrapped = None;
                }
            }
            RegistrarMsg::Bootstrap => maybe_bootstrap(&myself, state).await,
            RegistrarMsg::BootstrapRead { epoch, entries } => {
                if state.reading == Some(epoch) {
                    state.reading = None;
                }
                bootstrap_read(&myself, state, epoch, entries).await;
            }
            RegistrarMsg::Shard(ShardEvent::Synced { node, empty }) => {
                state.converging.remove(&node);
                if state.args.mode == ShardMode::PerNode && empty && state.args.cache.node(&node).is_none() {
                    // The node is gone and so are its entries: the shard has nothing left to own.
                    if let Some((shard, pending)) = state.shards.remove(&node) {
                        pending.retire();
                        state.children.remove(&shard.get_id());
                        shard.stop(Some("node deleted".into()));
                        metrics::gauge!("registrar_shards").set(state.shards.len() as f64);
                    }
                }
            }
            RegistrarMsg::ResyncTick => start_anti_entropy(&myself, state),
            RegistrarMsg::AntiEntropyRead { epoch, taken_at, survey } => {
                state.anti_entropy = false;
                anti_entropy_read(&myself, state, epoch, taken_at, survey).await;
            }
            RegistrarMsg::Settled(epoch) => {
                let l = *state.args.leadership.borrow();
                if !(l.leading && l.epoch == epoch) {
                    return Ok(()); // deposed meanwhile: nothing of ours to repair
                }
                if state.bootstrapped == Some(epoch) {
                    tracing::info!(
                        epoch,
                        "Earlier leaders' writes are over; every shard re-reads its entries."
                    );
                    state.poke(None, || ShardMsg::Resync);
                } else {
                    // The initial read is still to come or in flight (and may have started
                    // before now): re-read once it has been handed out.
                    myself.send_after(Duration::from_secs(1), move || RegistrarMsg::Settled(epoch));
                }
            }
            RegistrarMsg::Shutdown(reply) => {
                // Forget the children first so their termination is not mistaken for a crash.
                state.children.clear();
                myself.stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(20))).await;
                let _ = reply.send(());
            }
            #[cfg(feature = "fault-injection")]
            RegistrarMsg::Inject(target) => {
                tracing::warn!(?target, "Injecting a fault (test hook).");
                match target {
                    FaultTarget::Watcher(k) => {
                        if let Some(w) = state.watchers.get(&k) {
                            w.cast(WatcherMsg::Fail)?;
                        }
                    }
                    FaultTarget::Shard(n) => {
                        if let Some((s, _)) = state.shards.get(&n) {
                            s.cast(ShardMsg::Fail)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RegistrarMsg>,
        evt: SupervisionEvent,
        state: &mut RegistrarState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_string()))
            }
            _ => return Ok(()),
        };
        // Children we stopped on purpose were removed from `children` first.
        let Some((kind, node)) = state.children.remove(&cell.get_id()) else { return Ok(()) };
        metrics::counter!("registrar_actor_restarts_total", "actor" => kind.label()).increment(1);
        tracing::warn!(actor = kind.label(), node = node.as_deref(), error = %why, "Actor stopped; restarting it.");
        state.restarts.spend(&why)?;
        match kind {
            ChildKind::Watcher(k) => {
                state.watchers.remove(&k);
                spawn_watcher(&myself, state, k).await?;
            }
            ChildKind::Shard => {
                if let Some(node) = node {
                    if let Some((_, pending)) = state.shards.remove(&node) {
                        pending.retire();
                    }
                    spawn_shard(&myself, state, &node, None).await?;
                }
            }
        }
        Ok(())
    }
}

/// Anti-entropy, once per `resync_interval` while leading: one paged listing of every entry
/// (O(entries / page size) calls, however many nodes), in a task.
fn start_anti_entropy(myself: &ActorRef<RegistrarMsg>, state: &mut RegistrarState) {
    let l = *state.args.leadership.borrow();
    if !l.leading || state.bootstrapped != Some(l.epoch) || state.anti_entropy {
        return;
    }
    if !state.converging.is_empty() && state.skipped_ticks < MAX_SKIPPED_TICKS {
        state.skipped_ticks += 1;
        tracing::debug!(
            converging = state.converging.len(),
            "Shards still converging; anti-entropy listing skipped."
        );
        return;
    }
    state.skipped_ticks = 0;
    state.anti_entropy = true;
    let (pool, me, epoch) = (state.args.pool.clone(), myself.clone(), l.epoch);
    let (mode, naming) = (state.args.mode, state.args.naming.clone());
    let scope_of: ScopeOf = Arc::new(move |spec| crate::scope::owner_scope(mode, &naming, spec));
    tokio::spawn(async move {
        let taken_at = std::time::Instant::now();
        let survey = pool.survey(scope_of, POOL_WAIT).await;
        let _ = me.cast(RegistrarMsg::AntiEntropyRead { epoch, taken_at, survey });
    });
}

/// Hands every shard the digests of its owned entries from the listing (`ShardMsg::Snapshot`:
/// a shard whose knowledge disagrees re-reads its own entries, unless it wrote since
/// `taken_at`). Owned entries of a scope with no shard get one, which reads and deletes them.
async fn anti_entropy_read(
    myself: &ActorRef<RegistrarMsg>,
    state: &mut RegistrarState,
    epoch: u64,
    taken_at: std::time::Instant,
    survey: Result<Survey, String>,
) {
    let l = *state.args.leadership.borrow();
    if !(l.leading && l.epoch == epoch) || state.bootstrapped != Some(epoch) {
        return;
    }
    let mut by_scope = match survey {
        Ok(s) => s,
        Err(why) => {
            // The next tick tries again; until then every shard keeps what it knows.
            tracing::warn!(error = %why, "Anti-entropy listing of SPIRE entries failed.");
            return;
        }
    };
    for (node, (shard, pending)) in &state.shards {
        let digests = by_scope.remove(node).unwrap_or_default();
        enqueue(shard, pending, ShardMsg::Snapshot { taken_at, digests });
    }
    for (node, digests) in by_scope {
        tracing::info!(
            node,
            entries = digests.len(),
            "Owned entries of a scope without a shard; deleting them."
        );
        if let Err(e) = spawn_shard(myself, state, &node, None).await {
            tracing::error!(node, error = %e, "Could not start node shard.");
        }
    }
}

/// The one full read at start and on promotion; see the module docs. The read runs in a task
/// and comes back as `BootstrapRead`.
async fn maybe_bootstrap(myself: &ActorRef<RegistrarMsg>, state: &mut RegistrarState) {
    let l = *state.args.leadership.borrow();
    let all_synced = state.kinds().iter().all(|k| state.synced.contains(k));
    if !all_synced {
        return;
    }
    if !l.leading {
        // A follower is ready as soon as its caches are warm: it could take over at once.
        state.args.readiness.set_synced();
        return;
    }
    if state.bootstrapped == Some(l.epoch) || state.reading == Some(l.epoch) {
        return;
    }
    state.reading = Some(l.epoch);
    let (pool, me, epoch) = (state.args.pool.clone(), myself.clone(), l.epoch);
    tokio::spawn(async move {
        let entries = pool.list(ListFilter::default(), POOL_WAIT).await;
        let _ = me.cast(RegistrarMsg::BootstrapRead { epoch, entries });
    });
}

/// Hands the initial read's entries to new shards (or makes running ones re-read).
async fn bootstrap_read(
    myself: &ActorRef<RegistrarMsg>,
    state: &mut RegistrarState,
    epoch: u64,
    entries: Result<Vec<Entry>, String>,
) {
    let l = *state.args.leadership.borrow();
    if !(l.leading && l.epoch == epoch) || state.bootstrapped == Some(epoch) {
        return; // leadership moved on while we read (a promotion starts a new read), or done
    }
    let entries = match entries {
        Ok(e) => e,
        Err(why) => {
            tracing::warn!(error = %why, "Initial read of SPIRE entries failed; retrying in 2s.");
            myself.send_after(Duration::from_secs(2), || RegistrarMsg::Bootstrap);
            return;
        }
    };
    let mut by_node = state.by_scope(entries);
    let mode = state.args.mode;
    let mut nodes: BTreeSet<String> = match mode {
        ShardMode::PerNode => state.args.cache.node_names(),
        ShardMode::Cluster => BTreeSet::from([CLUSTER.to_string()]),
    };
    nodes.extend(by_node.keys().cloned());
    state.converging = nodes.clone();
    state.skipped_ticks = 0;
    tracing::info!(
        nodes = nodes.len(),
        owned_entries = by_node.values().map(Vec::len).sum::<usize>(),
        "Initial read done."
    );
    for node in nodes {
        match state.shards.get(&node) {
            // A shard that already runs (we were a follower) re-reads its own entries: the
            // list above may predate its latest writes.
            Some((shard, pending)) => enqueue(shard, pending, ShardMsg::Resync),
            None => {
                let initial = by_node.remove(&node).unwrap_or_default();
                if let Err(e) = spawn_shard(myself, state, &node, Some(initial)).await {
                    tracing::error!(node, error = %e, "Could not start node shard.");
                }
            }
        }
    }
    state.bootstrapped = Some(epoch);
    state.args.readiness.set_synced();
    state.args.readiness.set_converged(epoch);
}
