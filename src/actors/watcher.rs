//! `Watcher`: one per resource kind (Pods, Nodes, EndpointSlices). Runs a kube-runtime watcher
//! (list + watch with backoff, no streaming lists), strips each object to the core's plain data
//! (of a pod's labels and annotations, only the keys the rules read), keeps the shared
//! [`ClusterCache`] current, and tells the registrar which nodes changed.
//!
//! * Owns: the watch stream task (aborted when the actor stops) and its relist buffer (of
//!   stripped objects: each listed object is stripped as it arrives).
//! * Messages: its supervisor, through [`WatchEvent`] only (a `DerivedActorRef`: the watcher
//!   knows nothing else of it).
//!
//! # Guarantees
//! * After a (re)list, objects missing from the new list are removed from the cache, so deletes
//!   missed while the stream was down (or while this actor was restarting) are not lost.
//! * If the stream ends, the actor fails and its supervisor restarts it, which relists.

use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::{
    identity::{EndpointSliceInfo, MetadataKeys, NodeInfo, PodInfo},
    k8s::{cache::ClusterCache, convert},
    readiness::Reachability,
};
use ractor::DerivedActorRef;

/// The kinds the registrar watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchKind {
    Pods,
    Nodes,
    EndpointSlices,
}

impl WatchKind {
    pub fn label(self) -> &'static str {
        match self {
            WatchKind::Pods => "pods",
            WatchKind::Nodes => "nodes",
            WatchKind::EndpointSlices => "endpointslices",
        }
    }
}

/// What a watcher tells its supervisor.
#[derive(Debug)]
pub enum WatchEvent {
    /// Objects on these nodes changed (or the nodes themselves).
    NodesTouched(std::collections::BTreeSet<String>),
    /// Something every node's entries may depend on changed (an EndpointSlice, a relist).
    AllNodesTouched,
    /// The first list of this kind is in the cache.
    Synced(WatchKind),
    /// Some pod changed, scheduled or not (webhook mode's cluster shard needs every one).
    PodsChanged,
}

/// A stripped object or a change, as produced by the stream task.
pub enum Delta {
    Pod(Box<PodInfo>),
    PodGone { namespace: String, name: String },
    Pods(Vec<PodInfo>),
    Node(NodeInfo),
    NodeGone(String),
    Nodes(Vec<NodeInfo>),
    Slice(String, EndpointSliceInfo),
    SliceGone { namespace: String, name: String },
    Slices(Vec<(String, EndpointSliceInfo)>),
}

pub enum WatcherMsg {
    Delta(Delta),
    StreamEnded,
    /// Test-only fault injection.
    #[cfg(feature = "fault-injection")]
    Fail,
}

#[derive(Clone)]
pub struct WatcherArgs {
    pub kind: WatchKind,
    pub client: kube::Client,
    pub cache: ClusterCache,
    /// Where change notices go (the registrar).
    pub notify: DerivedActorRef<WatchEvent>,
    /// Told of every watch error and every answer, for `/readyz`.
    pub kube: Reachability,
    /// The pod labels and annotations the rules read; the cache keeps no others.
    pub pod_keys: MetadataKeys,
}

pub struct Watcher;

pub struct WatcherState {
    args: WatcherArgs,
    task: JoinHandle<()>,
    synced: bool,
}

impl Actor for Watcher {
    type Msg = WatcherMsg;
    type State = WatcherState;
    type Arguments = WatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WatcherMsg>,
        args: WatcherArgs,
    ) -> Result<WatcherState, ActorProcessingErr> {
        let (client, kube, pod_keys) = (&args.client, args.kube.clone(), args.pod_keys.clone());
        let task = match args.kind {
            WatchKind::Pods => spawn_stream(
                args.kind,
                client,
                kube,
                myself,
                Strip::<Pod, PodInfo> {
                    one: Box::new(move |p| convert::cached_pod_info(p, &pod_keys)),
                    applied: |p| Delta::Pod(Box::new(p)),
                    gone: |p| {
                        Some(Delta::PodGone {
                            namespace: p.metadata.namespace.clone()?,
                            name: p.metadata.name.clone()?,
                        })
                    },
                    listed: Delta::Pods,
                },
            ),
            WatchKind::Nodes => spawn_stream(
                args.kind,
                client,
                kube,
                myself,
                Strip::<Node, NodeInfo> {
                    one: Box::new(convert::node_info),
                    applied: Delta::Node,
                    gone: |n| n.metadata.name.clone().map(Delta::NodeGone),
                    listed: Delta::Nodes,
                },
            ),
            WatchKind::EndpointSlices => spawn_stream(
                args.kind,
                client,
                kube,
                myself,
                Strip::<EndpointSlice, (String, EndpointSliceInfo)> {
                    one: Box::new(|s| Some((s.metadata.name.clone()?, convert::slice_info(s)?))),
                    applied: |(name, s)| Delta::Slice(name, s),
                    gone: |s| {
                        Some(Delta::SliceGone {
                            namespace: s.metadata.namespace.clone()?,
                            name: s.metadata.name.clone()?,
                        })
                    },
                    listed: Delta::Slices,
                },
            ),
        };
        Ok(WatcherState { args, task, synced: false })
    }

    async fn post_stop(
        &self,
        _: ActorRef<WatcherMsg>,
        state: &mut WatcherState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<WatcherMsg>,
        msg: WatcherMsg,
        state: &mut WatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let kind = state.args.kind;
        match msg {
            WatcherMsg::Delta(delta) => {
                metrics::counter!("registrar_objects_processed_total", "kind" => kind.label()).increment(1);
                let relist = matches!(delta, Delta::Pods(_) | Delta::Nodes(_) | Delta::Slices(_));
                apply(&state.args, delta)?;
                if relist && !state.synced {
                    state.synced = true;
                    state.args.notify.send_message(WatchEvent::Synced(kind))?;
                }
            }
            WatcherMsg::StreamEnded => return Err(format!("{} watch stream ended", kind.label()).into()),
            #[cfg(feature = "fault-injection")]
            WatcherMsg::Fail => {
                return Err(format!("fault injected into the {} watcher", kind.label()).into());
            }
        }
        Ok(())
    }
}

fn apply(args: &WatcherArgs, delta: Delta) -> Result<(), ActorProcessingErr> {
    let cache = &args.cache;
    if matches!(delta, Delta::Pod(_) | Delta::PodGone { .. } | Delta::Pods(_)) {
        args.notify.send_message(WatchEvent::PodsChanged)?;
    }
    let touched: BTreeSet<String> = match delta {
        Delta::Pod(p) => cache.upsert_pod(*p),
        Delta::PodGone { namespace, name } => cache.remove_pod(&namespace, &name),
        Delta::Pods(ps) => cache.replace_pods(ps),
        Delta::Node(n) => {
            let name = n.name.clone();
            cache.upsert_node(n);
            BTreeSet::from([name])
        }
        Delta::NodeGone(name) => {
            cache.remove_node(&name);
            BTreeSet::from([name])
        }
        Delta::Nodes(ns) => cache.replace_nodes(ns),
        Delta::Slice(name, s) => {
            let ns = s.namespace.clone();
            cache.upsert_slice(&name, s);
            cache.nodes_with_pods_in(&ns)
        }
        Delta::SliceGone { namespace, name } => {
            cache.remove_slice(&namespace, &name);
            cache.nodes_with_pods_in(&namespace)
        }
        Delta::Slices(ss) => {
            cache.replace_slices(ss);
            args.notify.send_message(WatchEvent::AllNodesTouched)?;
            BTreeSet::new()
        }
    };
    if !touched.is_empty() {
        args.notify.send_message(WatchEvent::NodesTouched(touched))?;
    }
    Ok(())
}

/// One object to the core's plain data (a closure: pods need the metadata keys to keep).
type Convert<K, T> = Box<dyn Fn(&K) -> Option<T> + Send>;

/// How one kind's objects become the core's plain data. Every object is stripped the moment it
/// arrives, including each object of a (re)list, so the full objects of a list are never held
/// at once (the relist buffer holds only stripped data).
struct Strip<K, T> {
    /// The fields the core reads; `None` for objects it ignores (e.g. a pod without a name).
    one: Convert<K, T>,
    applied: fn(T) -> Delta,
    gone: fn(&K) -> Option<Delta>,
    /// A complete (re)list, in one step (see `ClusterCache`'s replace functions).
    listed: fn(Vec<T>) -> Delta,
}

fn spawn_stream<K, T>(
    kind: WatchKind,
    client: &kube::Client,
    kube: Reachability,
    myself: ActorRef<WatcherMsg>,
    strip: Strip<K, T>,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
    T: Send + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    // The kind's series exist from the start (at 0), so that rate() and alerts see them before
    // the first event or error.
    metrics::counter!("registrar_objects_processed_total", "kind" => kind.label()).increment(0);
    metrics::counter!("registrar_watch_errors_total", "kind" => kind.label()).increment(0);
    tokio::spawn(async move {
        // Classic list+watch (no streaming lists); after errors `WatchBackoff` retries within 2 s.
        let mut stream = watcher(api, watcher::Config::default())
            .backoff(crate::k8s::backoff::WatchBackoff::default())
            .boxed();
        let mut relist: Vec<T> = Vec::new();
        while let Some(event) = stream.next().await {
            kube.observe(&event);
            let delta = match event {
                Ok(watcher::Event::Init) => {
                    relist = Vec::new();
                    None
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    relist.extend((strip.one)(&obj));
                    None
                }
                Ok(watcher::Event::InitDone) => Some((strip.listed)(std::mem::take(&mut relist))),
                Ok(watcher::Event::Apply(obj)) => (strip.one)(&obj).map(strip.applied),
                Ok(watcher::Event::Delete(obj)) => (strip.gone)(&obj),
                Err(e) => {
                    let kind = kind.label();
                    tracing::warn!(kind, error = %e, "Watch error; retrying.");
                    metrics::counter!("registrar_watch_errors_total", "kind" => kind).increment(1);
                    None
                }
            };
            if let Some(delta) = delta
                && myself.cast(WatcherMsg::Delta(delta)).is_err()
            {
                return;
            }
        }
        let _ = myself.cast(WatcherMsg::StreamEnded);
    })
}
