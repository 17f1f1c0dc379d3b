//! Pod / Node (/ EndpointSlice) → SpiffeID: keeps the SpiffeIDs this registrar derives from the
//! cluster equal to what [`PodRules`] wants.
//!
//! Level-triggered: reflector stores of Pods, Nodes, SpiffeIDs (and EndpointSlices with
//! `add_svc_dns_name`) feed one loop that, after any change (debounced) and every
//! `resync_interval`, compares every desired SpiffeID with the stored ones and writes only the
//! differences (server-side apply as `k8s-workload-registrar`, explicit deletes). A full pass is
//! O(pods) in memory and writes nothing when nothing changed; for very large clusters a per-object
//! work queue would be cheaper (not done yet).
//!
//! * Owned SpiffeIDs: a controller owner reference to a v1 Pod or Node. Others with the same name
//!   are never touched (logged once).
//! * A SpiffeID is deleted when its pod is gone, terminal, unscheduled, in a disabled namespace, or
//!   no longer yields an identity; its node's when the node is gone. Deletion is explicit (the
//!   garbage collector would also do it through the owner reference); the SpiffeID's finalizer
//!   removes the SPIRE entry.
//! * Writes only while this replica leads.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, future};
use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;

use super::{
    pods::PodRules,
    projection::{Projection, our_owner, project},
    resource::SpiffeID,
};
use crate::{
    k8s::events::{EventSink, Reason},
    leadership::LeadershipRx,
    readiness::{Reachability, Readiness},
};

pub const FIELD_MANAGER: &str = "k8s-workload-registrar";

pub struct SyncCtx {
    pub client: kube::Client,
    pub rules: PodRules,
    /// Where node SpiffeIDs live (the registrar's own namespace).
    pub own_namespace: String,
    pub add_svc_dns_name: bool,
    pub leadership: LeadershipRx,
    pub events: EventSink,
    pub resync_interval: Duration,
    /// Synced once every store listed; converged for an epoch after a pass as its leader.
    pub readiness: Readiness,
}

fn drive<K>(
    api: Api<K>,
    notify: Arc<tokio::sync::Notify>,
    kube: Reachability,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default()).backoff(crate::k8s::backoff::WatchBackoff::default()),
    );
    let task = tokio::spawn(stream.for_each(move |ev| {
        kube.observe(&ev);
        if let Err(e) = ev {
            tracing::warn!(error = %e, "Watch error (retrying).");
        }
        notify.notify_one();
        future::ready(())
    }));
    (reader, task)
}

use kube::runtime::reflector::reflector;

/// Runs until `shutdown` resolves.
pub async fn run(ctx: Arc<SyncCtx>, shutdown: impl std::future::Future<Output = ()>) {
    let notify = Arc::new(tokio::sync::Notify::new());
    let c = &ctx.client;
    let kube = || ctx.readiness.kube.clone();
    let (pods, t1) = drive(Api::<Pod>::all(c.clone()), notify.clone(), kube());
    let (nodes, t2) = drive(Api::<Node>::all(c.clone()), notify.clone(), kube());
    let (sids, t3) = drive(Api::<SpiffeID>::all(c.clone()), notify.clone(), kube());
    let mut tasks = vec![t1, t2, t3];
    let slices = if ctx.add_svc_dns_name {
        let (s, t) = drive(Api::<EndpointSlice>::all(c.clone()), notify.clone(), kube());
        tasks.push(t);
        Some(s)
    } else {
        None
    };
    let work = async {
        let _ = pods.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        let _ = sids.wait_until_ready().await;
        if let Some(s) = &slices {
            let _ = s.wait_until_ready().await;
        }
        ctx.readiness.set_synced();
        let mut reported = HashSet::new();
        let mut leadership = ctx.leadership.clone();
        loop {
            let now = *leadership.borrow_and_update();
            if now.leading {
                sync_once(&ctx, &pods, &nodes, &sids, slices.as_ref(), &mut reported).await;
                ctx.readiness.set_converged(now.epoch);
            }
            tokio::select! {
                _ = notify.notified() => {}
                // A promotion starts a pass at once.
                _ = leadership.changed() => {}
                _ = tokio::time::sleep(ctx.resync_interval) => {}
            }
            // Debounce bursts of changes into one pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = work => {}
    }
    for t in tasks {
        t.abort();
    }
}

async fn sync_once(
    ctx: &SyncCtx,
    pods: &Store<Pod>,
    nodes: &Store<Node>,
    sids: &Store<SpiffeID>,
    slices: Option<&Store<EndpointSlice>>,
    reported: &mut HashSet<(String, String)>,
) {
    // Forget reports about pods and names that no longer exist, so the set stays bounded.
    let live: HashSet<String> = pods
        .state()
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .chain(sids.state().iter().map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())))
        .collect();
    reported.retain(|(key, _)| live.contains(key));
    let slices = slices.map(|s| s.state());
    let Projection { want, problems, created } =
        project(&ctx.rules, &ctx.own_namespace, &pods.state(), &nodes.state(), slices.as_deref());
    for (f, e) in problems {
        let msg = e.to_string();
        if reported.insert((f.uid.clone(), msg.clone())) {
            tracing::warn!(namespace = %f.namespace, pod = %f.name, error = %msg, "Pod gets no SpiffeID.");
            metrics::counter!("registrar_invalid_identity_total", "reason" => e.metric_label()).increment(1);
            ctx.events.pod_warning(&f.namespace, &f.name, &f.uid, Reason::of_identity(&e), msg);
        }
    }

    let existing: BTreeMap<(String, String), Arc<SpiffeID>> = sids
        .state()
        .into_iter()
        .filter_map(|s| Some(((s.metadata.namespace.clone()?, s.metadata.name.clone()?), s)))
        .collect();
    // Before any SpiffeID is written, so the controller finds them when it writes the entry.
    super::registrations::awaiting(created.into_iter().filter_map(|(key, uid, created)| {
        let has_entry =
            existing.get(&key).and_then(|s| s.status.as_ref()).is_some_and(|s| s.entry_id.is_some());
        (!has_entry).then_some((uid, created))
    }));
    for (key, s) in &existing {
        if our_owner(s).is_some() && !want.contains_key(key) && s.metadata.deletion_timestamp.is_none() {
            let api: Api<SpiffeID> = Api::namespaced(ctx.client.clone(), &key.0);
            metrics::counter!("registrar_spiffeid_writes_total", "op" => "delete").increment(1);
            match api.delete(&key.1, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(namespace = %key.0, name = %key.1, "SpiffeID deleted (its pod or node is gone).")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "Could not delete SpiffeID.")
                }
            }
        }
    }
    for (key, w) in want {
        if let Some(s) = existing.get(&key) {
            let Some(o) = our_owner(s) else {
                if reported.insert((key.0.clone() + "/" + &key.1, "collision".into())) {
                    tracing::warn!(namespace = %key.0, name = %key.1, "A SpiffeID of this name exists and is not ours; leaving it alone.");
                }
                continue;
            };
            if s.metadata.deletion_timestamp.is_some() {
                continue; // recreated once the old one is gone
            }
            if s.spec == w.spec && o.uid == w.owner.uid && s.labels().get(w.label.0) == Some(&w.label.1) {
                continue;
            }
        }
        let obj = json!({
            "apiVersion": "spiffeid.spiffe.io/v1beta1",
            "kind": "SpiffeID",
            "metadata": {
                "name": key.1,
                "namespace": key.0,
                "labels": { w.label.0: w.label.1 },
                "ownerReferences": [w.owner],
            },
            "spec": w.spec,
        });
        let api: Api<SpiffeID> = Api::namespaced(ctx.client.clone(), &key.0);
        metrics::counter!("registrar_spiffeid_writes_total", "op" => "apply").increment(1);
        match api.patch(&key.1, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await {
            Ok(_) => {
                tracing::info!(namespace = %key.0, name = %key.1, spiffe_id = %w.spec.spiffe_id, "SpiffeID applied.")
            }
            Err(e) => {
                tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "Could not apply SpiffeID.")
            }
        }
    }
}
