//! SpiffeID → SPIRE entry controller (kube-runtime `Controller`, all namespaces).
//!
//! * Every SpiffeID carries the finalizer [`FINALIZER`]; deleting the object deletes the entry
//!   recorded in `status.entryId`, then the finalizer is removed.
//! * Ownership: the controller only updates or deletes the entry recorded in the SpiffeID's
//!   status (which it created). It never adopts an existing entry with the same parent, SPIFFE ID
//!   and selectors (hand-made or another SpiffeID's): that SpiffeID gets a Warning Event and
//!   `status.error` instead (a deliberate difference from the original, which shared such entries).
//! * Every field is compared ([`EntrySpec::same_as`]), so any spec change reaches SPIRE.
//! * An invalid spec gets no entry, a Warning Event naming the field and `status.error`; other
//!   SpiffeIDs are unaffected. Transient failures retry after a few seconds.
//! * Writes happen only while this replica leads; followers requeue and wait.
//! * Each SpiffeID is re-checked every `resync_interval` (an entry deleted behind our back is
//!   recreated).

use std::{sync::Arc, time::Duration};

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
use tonic::Code;

use super::{
    convert::entry_spec,
    resource::{FINALIZER, SpiffeID},
};
use crate::{
    id::TrustDomain,
    k8s::events::EventSink,
    leadership::LeadershipRx,
    model::Entry,
    spire::{ListFilter, SpireClient},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPIRE: {0}")]
    Spire(#[from] crate::spire::Error),
    #[error("SPIRE refused {op}: {reason}")]
    Item { op: &'static str, reason: String },
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

pub struct Ctx {
    pub client: kube::Client,
    pub spire: SpireClient,
    pub trust_domain: TrustDomain,
    pub leadership: LeadershipRx,
    pub events: EventSink,
    pub resync_interval: Duration,
}

impl Ctx {
    pub fn new(
        client: kube::Client,
        spire: SpireClient,
        trust_domain: TrustDomain,
        leadership: LeadershipRx,
        resync_interval: Duration,
    ) -> Self {
        let events = EventSink::new(client.clone(), "k8s-workload-registrar");
        Self { client, spire, trust_domain, leadership, events, resync_interval }
    }
}

const RETRY: Duration = Duration::from_secs(3);

/// Runs the SpiffeID controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Ctx>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<SpiffeID> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            |_, err, _| {
                tracing::warn!(error = %err, "SpiffeID reconcile failed; retrying.");
                Action::requeue(RETRY)
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(obj: Arc<SpiffeID>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !ctx.leadership.borrow().leading {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<SpiffeID> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(o) => apply(&api, o, &ctx).await,
            finalizer::Event::Cleanup(o) => cleanup(o, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

async fn cleanup(obj: Arc<SpiffeID>, ctx: &Ctx) -> Result<Action, Error> {
    if let Some(id) = obj.status.as_ref().and_then(|s| s.entry_id.clone()) {
        delete_entry(ctx, &id).await?;
        tracing::info!(namespace = ?obj.namespace(), name = %obj.name_any(), entry_id = %id, "Finalized SpiffeID; entry deleted.");
    }
    Ok(Action::await_change())
}

async fn delete_entry(ctx: &Ctx, id: &str) -> Result<(), Error> {
    for r in ctx.spire.delete_entries(&[id.to_string()]).await? {
        r.map_err(|e| Error::Item { op: "delete", reason: e.to_string() })?;
    }
    Ok(())
}

async fn apply(api: &Api<SpiffeID>, obj: Arc<SpiffeID>, ctx: &Ctx) -> Result<Action, Error> {
    let name = obj.name_any();
    let status = obj.status.clone().unwrap_or_default();
    let current = status.entry_id.clone();
    let desired = match entry_spec(&obj.spec, &ctx.trust_domain) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            if let Some(id) = &current {
                delete_entry(ctx, id).await?;
            }
            if current.is_some() || status.error.as_deref() != Some(msg.as_str()) {
                tracing::warn!(namespace = ?obj.namespace(), %name, error = %msg, "Invalid SpiffeID; no entry.");
                metrics::counter!("registrar_invalid_identity_total", "reason" => "spiffeid").increment(1);
                warn(ctx, &obj, "InvalidSpiffeID", msg.clone()).await;
                set_status(api, &name, None, Some(&msg)).await?;
            }
            return Ok(Action::await_change());
        }
    };
    let same_id = ctx
        .spire
        .list_entries(&ListFilter { by_spiffe_id: Some(desired.spiffe_id.clone()), ..Default::default() })
        .await?;
    if let Some(id) = &current
        && same_id.iter().any(|e| &e.id == id && e.spec.same_as(&desired))
    {
        if status.error.is_some() {
            set_status(api, &name, Some(id), None).await?;
        }
        return Ok(Action::requeue(ctx.resync_interval));
    }
    // Never adopt an entry we did not create.
    if let Some(other) = same_id.iter().find(|e| {
        Some(&e.id) != current.as_ref()
            && e.spec.parent_id == desired.parent_id
            && e.spec.selectors == desired.selectors
    }) {
        let msg = format!(
            "an entry with the same spiffeId, parentId and selectors already exists (id {}) and is not owned by this SpiffeID",
            other.id
        );
        if let Some(id) = &current {
            // Our entry is stale (the spec moved onto someone else's entry): remove it.
            delete_entry(ctx, id).await?;
        }
        if status.error.as_deref() != Some(msg.as_str()) || current.is_some() {
            warn(ctx, &obj, "EntryConflict", msg.clone()).await;
            set_status(api, &name, None, Some(&msg)).await?;
        }
        return Ok(Action::requeue(ctx.resync_interval));
    }
    if let Some(id) = &current {
        let entry = Entry { id: id.clone(), spec: desired.clone() };
        match ctx.spire.update_entries(std::slice::from_ref(&entry)).await?.pop() {
            Some(Ok(_)) => {
                tracing::info!(%name, entry_id = %id, "Entry updated.");
                if status.error.is_some() {
                    set_status(api, &name, Some(id), None).await?;
                }
                return Ok(Action::requeue(ctx.resync_interval));
            }
            Some(Err(e)) if e.code == Code::NotFound => {
                tracing::info!(%name, entry_id = %id, "Recorded entry is gone; creating a new one.");
            }
            Some(Err(e)) if e.code == Code::AlreadyExists => {
                // The new spec collides with an entry we do not own: our old entry is stale.
                delete_entry(ctx, id).await?;
                let msg = format!(
                    "an entry with the same spiffeId, parentId and selectors already exists and is not owned by this SpiffeID: {e}"
                );
                warn(ctx, &obj, "EntryConflict", msg.clone()).await;
                set_status(api, &name, None, Some(&msg)).await?;
                return Ok(Action::requeue(ctx.resync_interval));
            }
            Some(Err(e)) => return Err(Error::Item { op: "update", reason: e.to_string() }),
            None => return Err(Error::Item { op: "update", reason: "no result".into() }),
        }
    }
    match ctx.spire.create_entries(std::slice::from_ref(&desired)).await?.pop() {
        Some(Ok(entry)) => {
            tracing::info!(namespace = ?obj.namespace(), %name, entry_id = %entry.id, spiffe_id = %desired.spiffe_id, "Entry created.");
            set_status(api, &name, Some(&entry.id), None).await?;
            Ok(Action::requeue(ctx.resync_interval))
        }
        Some(Err(e)) => Err(Error::Item { op: "create", reason: e.to_string() }),
        None => Err(Error::Item { op: "create", reason: "no result".into() }),
    }
}

async fn set_status(
    api: &Api<SpiffeID>,
    name: &str,
    entry_id: Option<&str>,
    error: Option<&str>,
) -> Result<(), Error> {
    let patch = json!({ "status": { "entryId": entry_id, "error": error } });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn warn(ctx: &Ctx, obj: &SpiffeID, reason: &str, note: String) {
    ctx.events.warning(&obj.object_ref(&()), reason, note).await;
}
