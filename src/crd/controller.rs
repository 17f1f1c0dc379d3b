//! SpiffeID → SPIRE entry controller (kube-runtime `Controller`, all namespaces).
//!
//! * Every SpiffeID carries the finalizer [`FINALIZER`]; deleting the object deletes its entry,
//!   then the finalizer is removed.
//! * Ownership ([`super::plan`]): a SpiffeID owns the entry whose ID derives from its UID, and the
//!   controller reads, updates and deletes only that one; `status.entryId` is a report, never
//!   proof. It never adopts an existing entry with the same parent, SPIFFE ID and selectors
//!   (hand-made or another SpiffeID's): that SpiffeID gets an `EntryConflict` Event and
//!   `status.error` instead (a deliberate difference from the original, which shared such entries).
//! * Every field is compared (`EntrySpec::same_as`), so any spec change reaches SPIRE.
//! * The trust boundary ([`super::policy`]) runs before every write: a spec that is invalid, takes
//!   a reserved identity or asks for what only the registrar may write gets no entry, a Warning
//!   Event naming the field and `status.error`; other SpiffeIDs are unaffected.
//! * A spec SPIRE refuses for good (`INVALID_ARGUMENT`, a federated trust domain without a bundle)
//!   gets one `SpireRejected` Event and is not retried until its spec changes. Transient failures
//!   retry after a few seconds.
//! * Writes happen only while this replica leads; followers requeue and wait.
//! * Each SpiffeID is re-checked every `resync_interval` (an entry deleted behind our back is
//!   recreated).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        finalizer::{self, finalizer},
        watcher,
    },
};
use serde_json::json;

use super::{
    plan::{EntryPlan, entry_id, plan},
    policy::Policy,
    resource::{FINALIZER, POD_UID_LABEL, SpiffeID},
};
use crate::{
    actors::{
        POOL_WAIT, PoolHandle,
        spire_pool::{ApplyError, Fence, OpOutcome, PoolMsg},
        task::AbortOnDrop,
    },
    audit,
    diff::EntryOp,
    k8s::events::{EventSink, Reason},
    leadership::{LeadershipRx, settled_epochs},
    model::Entry,
    progress::Owned,
    readiness::Readiness,
    spire::{ItemError, ListFilter},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPIRE: {0}")]
    Spire(String),
    /// This replica stopped leading (or led again in a newer epoch) since the reconcile began:
    /// its writes were refused by the pool. Not a failure; the new leader takes over.
    #[error("not the leader in epoch {0}; write refused")]
    Fenced(u64),
    #[error("SPIRE refused {op}: {reason}")]
    Item { op: &'static str, reason: String },
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

pub struct Ctx {
    pub client: kube::Client,
    /// The only way to SPIRE: reads, and writes fenced by the leadership epoch.
    pub pool: PoolHandle,
    pub policy: Policy,
    pub leadership: LeadershipRx,
    pub events: EventSink,
    pub resync_interval: Duration,
    /// With leader election: every SpiffeID is reconciled again once a promotion has settled
    /// (the previous leader's writes are over at SPIRE; `leadership::settled_epochs`).
    pub settle: Option<Duration>,
    /// Entry IDs whose spec SPIRE refused for good, with the SpiffeID generation refused.
    rejected: Mutex<HashMap<String, i64>>,
}

impl Ctx {
    pub fn new(
        client: kube::Client,
        pool: PoolHandle,
        policy: Policy,
        leadership: LeadershipRx,
        resync_interval: Duration,
    ) -> Self {
        let events = EventSink::new(client.clone(), "k8s-workload-registrar");
        Self {
            client,
            pool,
            policy,
            leadership,
            events,
            resync_interval,
            settle: None,
            rejected: Mutex::default(),
        }
    }

    pub fn with_settle(mut self, settle: Option<Duration>) -> Self {
        self.settle = settle;
        self
    }

    async fn get(&self, id: &str) -> Result<Option<Entry>, Error> {
        let id = id.to_string();
        self.pool
            .call(|r| PoolMsg::Get(id, r), POOL_WAIT)
            .await
            .map_err(|e| Error::Spire(e.to_string()))?
            .map_err(Error::Spire)
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<Entry>, Error> {
        self.pool.list(filter, POOL_WAIT).await.map_err(Error::Spire)
    }

    /// One write, sent only while this replica still leads in `epoch` (the pool checks
    /// immediately before the call). `Ok(Err(item))` is SPIRE's per-item refusal.
    async fn write(&self, op: EntryOp, epoch: u64) -> Result<Result<Option<Entry>, ItemError>, Error> {
        let reply = self
            .pool
            .call(|reply| PoolMsg::Apply { ops: vec![op], fence: Fence::Epoch(epoch), reply }, POOL_WAIT)
            .await
            .map_err(|e| Error::Spire(e.to_string()))?;
        match reply {
            Err(ApplyError::Fenced(epoch)) => Err(Error::Fenced(epoch)),
            Err(ApplyError::Spire(e)) => Err(Error::Spire(e)),
            Ok(outcomes) => match outcomes.into_iter().next() {
                Some(OpOutcome::Created(e) | OpOutcome::Existed(e) | OpOutcome::Updated(e)) => {
                    Ok(Ok(Some(e)))
                }
                Some(OpOutcome::Deleted(_)) => Ok(Ok(None)),
                Some(OpOutcome::Failed { error, .. }) => Ok(Err(error)),
                None => Err(Error::Spire("no result".into())),
            },
        }
    }

    /// Deletes `entry` (the SpiffeID `obj`'s own) and audits it with `reason`.
    async fn delete(
        &self,
        entry: &Entry,
        obj: &SpiffeID,
        reason: audit::Reason,
        epoch: u64,
    ) -> Result<(), Error> {
        self.write(EntryOp::Delete { id: entry.id.clone() }, epoch)
            .await?
            .map_err(|e| Error::Item { op: "delete", reason: e.to_string() })?;
        audit::written(audit::Op::Delete, &entry.id, &entry.spec, &object(obj), reason, &[]);
        Ok(())
    }
}

const RETRY: Duration = Duration::from_secs(3);

/// Runs the SpiffeID controller until `shutdown` resolves. With `readiness` (when no projector
/// reports convergence), it is synced once the controller's cache has listed every SpiffeID, and
/// converged for every epoch this replica leads in from then on.
pub async fn run(
    ctx: Arc<Ctx>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    readiness: Option<Readiness>,
) {
    for op in crate::metrics::SPIFFEID_WRITE_OPS {
        metrics::counter!("registrar_spiffeid_writes_total", "op" => op).increment(0);
    }
    let api: Api<SpiffeID> = Api::all(ctx.client.clone());
    let mut controller = Controller::new(api, watcher::Config::default());
    if let Some(settle) = ctx.settle {
        let settled = settled_epochs(ctx.leadership.clone(), settle).map(|epoch| {
            tracing::info!(epoch, "Earlier leaders' writes are over; reconciling every SpiffeID again.");
        });
        controller = controller.reconcile_all_on(settled);
    }
    let _reporter = readiness.map(|r| {
        let (store, mut leadership) = (controller.store(), ctx.leadership.clone());
        AbortOnDrop(tokio::spawn(async move {
            // `wait_until_ready` wakes only its last poller, and the controller's runner polls it
            // too: ask again every half second instead of waiting once.
            while tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready()).await.is_err() {}
            r.set_synced();
            loop {
                let now = *leadership.borrow_and_update();
                if now.leading {
                    r.set_converged(now.epoch);
                }
                if leadership.changed().await.is_err() {
                    return;
                }
            }
        }))
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            |obj, err, _| {
                match err {
                    Error::Fenced(epoch) => {
                        crate::progress::forget(&scope(&obj));
                        tracing::debug!(epoch, "Leadership changed mid-reconcile; writes refused.")
                    }
                    err => {
                        crate::progress::fail(&scope(&obj));
                        tracing::warn!(namespace = ?obj.namespace(), name = %obj.name_any(), error = %err,
                            "SpiffeID reconcile failed; retrying.")
                    }
                }
                Action::requeue(RETRY)
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(obj: Arc<SpiffeID>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // Every SPIRE write below carries this epoch; the pool refuses it once we no longer lead in
    // it, however long the reconcile takes (DESIGN invariant 3).
    let leadership = *ctx.leadership.borrow();
    if !leadership.leading {
        // Followers manage no entries (`progress`).
        crate::progress::forget(&scope(&obj));
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let epoch = leadership.epoch;
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<SpiffeID> = Api::namespaced(ctx.client.clone(), &ns);
    // The finalizer helper adds our finalizer, or removes it after cleanup: a SpiffeID write.
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    if has_finalizer == obj.metadata.deletion_timestamp.is_some() {
        metrics::counter!("registrar_spiffeid_writes_total", "op" => "finalizer").increment(1);
    }
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(o) => apply(&api, o, &ctx, epoch).await,
            finalizer::Event::Cleanup(o) => cleanup(o, &ctx, epoch).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

async fn cleanup(obj: Arc<SpiffeID>, ctx: &Ctx, epoch: u64) -> Result<Action, Error> {
    // Only the entry this object provably owns; `status.entryId` is never believed (see `plan`).
    if let Some(id) = entry_id(&obj.uid().unwrap_or_default())
        && let Some(entry) = ctx.get(&id).await?
    {
        ctx.delete(&entry, &obj, audit::Reason::SpiffeIdDeleted, epoch).await?;
    }
    crate::progress::forget(&scope(&obj));
    Ok(Action::await_change())
}

/// Records why the SpiffeID has no entry: one log line, metric increment and Event per distinct
/// problem (a status that already says so means it was reported).
async fn refuse(
    api: &Api<SpiffeID>,
    obj: &SpiffeID,
    ctx: &Ctx,
    reason: Reason,
    metric: &'static str,
    msg: String,
) -> Result<(), Error> {
    // Nothing left to write for it: converged, holding no entry (the Event and the metric tell).
    crate::progress::report(&scope(obj), Default::default(), true);
    let status = obj.status.clone().unwrap_or_default();
    if status.error.as_deref() == Some(msg.as_str()) && status.entry_id.is_none() {
        return Ok(());
    }
    tracing::warn!(namespace = ?obj.namespace(), name = %obj.name_any(), error = %msg, "SpiffeID gets no entry.");
    metrics::counter!("registrar_invalid_identity_total", "reason" => metric).increment(1);
    warn(ctx, obj, reason, msg.clone());
    set_status(api, &obj.name_any(), None, Some(&msg)).await
}

async fn apply(api: &Api<SpiffeID>, obj: Arc<SpiffeID>, ctx: &Ctx, epoch: u64) -> Result<Action, Error> {
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    let status = obj.status.clone().unwrap_or_default();
    let Some(own_id) = entry_id(&obj.uid().unwrap_or_default()) else {
        return Err(Error::Item { op: "read", reason: "object has no usable UID".into() });
    };
    if let Some(claimed) = status.entry_id.as_deref().filter(|c| *c != own_id) {
        tracing::warn!(namespace = %ns, %name, claimed, entry_id = %own_id,
            "status.entryId names an entry this SpiffeID does not own; ignored (and left untouched).");
    }
    let desired = match ctx.policy.entry(&ns, &obj.spec) {
        Ok(d) => d,
        Err(e) => {
            // Our own entry (if any) no longer stands for a valid spec.
            if let Some(entry) = ctx.get(&own_id).await? {
                ctx.delete(&entry, &obj, audit::Reason::InvalidSpec, epoch).await?;
            }
            let reason = if e.is_reserved() { Reason::ReservedIdentity } else { Reason::InvalidIdentity };
            refuse(api, &obj, ctx, reason, e.metric_label(), e.to_string()).await?;
            return Ok(Action::await_change());
        }
    };
    // A spec SPIRE refused for good is not retried until the spec changes (or a restart).
    let generation = obj.metadata.generation.unwrap_or_default();
    if ctx.rejected.lock().expect("not poisoned").get(&own_id) == Some(&generation) {
        return Ok(Action::await_change());
    }
    let own = ctx.get(&own_id).await?;
    let same_id =
        ctx.list(ListFilter { by_spiffe_id: Some(desired.spiffe_id.clone()), ..Default::default() }).await?;
    let written = match plan(&own_id, &desired, own.as_ref(), &same_id) {
        EntryPlan::Keep => None,
        EntryPlan::Conflict { other, delete_own } => {
            if delete_own && let Some(entry) = &own {
                ctx.delete(entry, &obj, audit::Reason::Conflict, epoch).await?;
            }
            let msg = format!(
                "an entry with the same spiffeId, parentId and selectors already exists (id {other}) and is not owned by this SpiffeID"
            );
            refuse(api, &obj, ctx, Reason::EntryConflict, "entry_conflict", msg).await?;
            return Ok(Action::requeue(ctx.resync_interval));
        }
        EntryPlan::Update(Entry { id, spec }) => {
            Some(("update", ctx.write(EntryOp::Update { id, spec }, epoch).await?))
        }
        EntryPlan::Create(Entry { id, spec }) => {
            Some(("create", ctx.write(EntryOp::CreateWithId { id, spec }, epoch).await?))
        }
    };
    match written {
        None => {}
        Some((op, Ok(Some(entry)))) if entry.id == own_id => {
            if op == "create"
                && status.entry_id.is_none()
                && let Some(pod_uid) = obj.labels().get(POD_UID_LABEL)
            {
                // A pod's first entry (a later re-create, of an entry deleted behind our back, is
                // not a registration latency).
                super::registrations::registered(pod_uid);
            }
            let (op, reason, changed) = match (op, &own) {
                ("update", Some(old)) => {
                    (audit::Op::Update, audit::Reason::Changed, old.spec.differing(&entry.spec))
                }
                _ => (audit::Op::Create, audit::Reason::New, Vec::new()),
            };
            audit::written(op, &entry.id, &entry.spec, &object(&obj), reason, &changed);
        }
        Some((_, Ok(Some(entry)))) => {
            // ALREADY_EXISTS with someone else's similar entry (created since our read).
            let msg = format!(
                "an entry with the same spiffeId, parentId and selectors already exists (id {}) and is not owned by this SpiffeID",
                entry.id
            );
            refuse(api, &obj, ctx, Reason::EntryConflict, "entry_conflict", msg).await?;
            return Ok(Action::requeue(ctx.resync_interval));
        }
        Some((op, Err(e))) if e.is_permanent() => {
            ctx.rejected.lock().expect("not poisoned").insert(own_id.clone(), generation);
            let msg = format!("SPIRE refused to {op} the entry: {}", e.message);
            refuse(api, &obj, ctx, Reason::SpireRejected, "spire_rejected", msg).await?;
            return Ok(Action::await_change());
        }
        Some((op, Err(e))) => return Err(Error::Item { op, reason: e.to_string() }),
        Some((op, Ok(None))) => return Err(Error::Item { op, reason: "no entry in the answer".into() }),
    }
    ctx.rejected.lock().expect("not poisoned").remove(&own_id);
    let held = if desired.parent_id == ctx.policy.trust_domain.server_id() {
        Owned { node: 1, ..Owned::default() }
    } else {
        Owned { pod: 1, ..Owned::default() }
    };
    crate::progress::report(&scope(&obj), held, true);
    if status.entry_id.as_deref() != Some(own_id.as_str()) || status.error.is_some() {
        set_status(api, &name, Some(&own_id), None).await?;
    }
    Ok(Action::requeue(ctx.resync_interval))
}

/// The object of this SpiffeID's audit lines.
fn object(obj: &SpiffeID) -> audit::Object {
    audit::Object::SpiffeId { namespace: obj.namespace().unwrap_or_default(), name: obj.name_any() }
}

/// This SpiffeID's `progress` scope: one entry at most, keyed by UID (a re-created SpiffeID of
/// the same name is another object).
fn scope(obj: &SpiffeID) -> String {
    format!("spiffeid:{}", obj.uid().unwrap_or_default())
}

async fn set_status(
    api: &Api<SpiffeID>,
    name: &str,
    entry_id: Option<&str>,
    error: Option<&str>,
) -> Result<(), Error> {
    let patch = json!({ "status": { "entryId": entry_id, "error": error } });
    metrics::counter!("registrar_spiffeid_writes_total", "op" => "status").increment(1);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

fn warn(ctx: &Ctx, obj: &SpiffeID, reason: Reason, note: String) {
    ctx.events.warning(&obj.object_ref(&()), reason, note);
}
