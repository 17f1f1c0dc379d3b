//! CRD mode: SpiffeID custom resources (`spiffeid.spiffe.io/v1beta1`) are the source of truth;
//! each maps to exactly one SPIRE entry (see [`controller`]).
//!
//! * core, pure: [`resource`] (the type), [`convert`] (SpiffeID → `EntrySpec`), [`policy`] (what
//!   a SpiffeID may ask for: the trust boundary), [`plan`] (entry ownership and the write to
//!   make), [`pods`] (Pod / Node → SpiffeID), [`template`] (the identity / DNS-name template
//!   subset);
//! * shell: [`controller`] (SpiffeID → entry, writes through the fenced SPIRE pool), [`sync`]
//!   (Pod / Node / EndpointSlice → SpiffeID, with `pod_controller` and `add_svc_dns_name`),
//!   [`run`] (wiring: one supervised `actors::root::Root` with the pool, the Leader, and the
//!   controller, projector and webhook server as `actors::task::Task` children).
//!
//! * [`admission`] (pure): the SpiffeID validating webhook (`webhook_enabled`), served over HTTPS
//!   on `webhook_port` with `tls.crt`/`tls.key` from `webhook_cert_dir`.

pub mod admission;
pub mod controller;
pub mod convert;
pub mod plan;
pub mod pods;
pub mod policy;
pub mod resource;
pub mod sync;
pub mod template;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ractor::{Actor, ActorRef};

use crate::{
    actors::{
        PoolHandle,
        leader::{Leader, LeaderArgs, LeaderMsg},
        root::{ChildSpec, Root, RootMsg},
        spire_pool::{PoolArgs, PoolMsg, SpirePool},
        task::{Task, TaskArgs},
    },
    app::{self, Error},
    config::{Config, CrdConfig},
    http,
    k8s::events::EventSink,
    leadership::LeadershipRx,
    spire::SpireClient,
    webhook::{handler, server},
};

/// Runs CRD mode until `shutdown` resolves: one supervised tree (see [`children`]), the HTTP
/// endpoint, and an ordered shutdown.
pub async fn run(
    cfg: &Config,
    cc: &CrdConfig,
    client: kube::Client,
    spire: SpireClient,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let own_ns = app::own_namespace();
    if cc.pod_controller && own_ns.is_none() {
        return Err(Error::Election(
            "pod_controller needs the registrar's namespace for node SpiffeIDs: set POD_NAMESPACE (Downward API) or run in-cluster"
                .into(),
        ));
    }
    let policy = policy::Policy {
        trust_domain: cfg.trust_domain.clone(),
        cluster: cfg.cluster.clone(),
        own_namespace: own_ns.clone(),
    };
    // The SpiffeID webhook's files and port are checked before anything is written anywhere.
    let webhook = match cc.webhook_enabled {
        true => {
            let files = server::TlsFiles {
                cert: cc.webhook_cert_dir.join("tls.crt"),
                key: cc.webhook_cert_dir.join("tls.key"),
                ca: None,
            };
            server::load(&files)?;
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], cc.webhook_port));
            let listener = server::bind(addr).await?.into_std().map_err(Error::Listen)?;
            Some(Webhook { listener: Arc::new(listener), files, addr, policy: policy.clone() })
        }
        false => None,
    };
    let le = &cc.leader_election;
    let election = match le.enabled {
        true => Some(app::election_config(
            le.lock,
            le.namespace.as_deref(),
            "k8s-workload-registrar-crd-leader-election".into(),
        )?),
        false => None,
    };
    let app::Writers { election, leadership, _keep_alive } = app::writers(election);
    if election.is_none() {
        // Without election this replica is the only writer for its whole life.
        metrics::gauge!("registrar_is_leader").set(1.0);
    }
    let parts = Parts { cfg, cc, client, spire, leadership, election, own_ns, policy, webhook };
    let specs = children(parts);
    let names: Vec<&'static str> = specs.iter().filter(|s| s.fail.is_some()).map(|s| s.name).collect();
    let (root, root_done) = Actor::spawn(None, Root, specs).await.map_err(|e| Error::Spawn(e.to_string()))?;

    let alive = Arc::new(AtomicBool::new(true));
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = cc.metrics_addr {
        let listener = http::bind(addr).await.map_err(Error::Listen)?;
        let health = http::Health { alive: alive.clone(), ready, metrics, inject: injector(&root, names) };
        tokio::spawn(http::serve(listener, http::router(health), async {
            let _ = http_stopped.await;
        }));
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    }
    tracing::info!(cluster = %cfg.cluster, trust_domain = %cfg.trust_domain, "Registrar started in crd mode.");

    let mut root_done = std::pin::pin!(root_done);
    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("Shutting down.");
            let _ = root.call(RootMsg::Shutdown, Some(Duration::from_secs(60))).await;
            root.stop(Some("shutdown".into()));
            let _ = (&mut root_done).await;
            Ok(())
        }
        _ = &mut root_done => {
            alive.store(false, Ordering::SeqCst);
            Err(Error::ActorSystemStopped)
        }
    };
    let _ = stop_http.send(());
    result
}

struct Webhook {
    /// Bound once at start (so a taken port fails start-up); each (re)start of the server
    /// serves a clone of it.
    listener: Arc<std::net::TcpListener>,
    files: server::TlsFiles,
    addr: std::net::SocketAddr,
    policy: policy::Policy,
}

struct Parts<'a> {
    cfg: &'a Config,
    cc: &'a CrdConfig,
    client: kube::Client,
    spire: SpireClient,
    leadership: LeadershipRx,
    election: Option<(crate::election::ElectionConfig, crate::leadership::LeadershipTx)>,
    own_ns: Option<String>,
    policy: policy::Policy,
    webhook: Option<Webhook>,
}

/// CRD mode's children, in start order (shutdown runs in reverse): the SPIRE pool (the only SPIRE
/// client; writes fenced by the leadership epoch), the Leader, the SpiffeID → entry controller,
/// the Pod/Node → SpiffeID projector, and the SpiffeID validating webhook.
fn children(p: Parts<'_>) -> Vec<ChildSpec> {
    let mut specs = Vec::new();
    let pool = PoolHandle::default();
    {
        let (pool, spire, leadership) = (pool.clone(), p.spire.clone(), p.leadership.clone());
        specs.push(
            ChildSpec::new("spire_pool", move |sup| {
                let (pool, args) = (
                    pool.clone(),
                    PoolArgs { client: spire.clone(), leadership: leadership.clone(), workers: 2 },
                );
                async move {
                    let (actor, _) = Actor::spawn_linked(None, SpirePool, args, sup).await?;
                    pool.set(actor.clone());
                    Ok(actor.get_cell())
                }
            })
            .fail(|cell| async move {
                let _ = ActorRef::<PoolMsg>::from(cell).cast(PoolMsg::Fail(None));
            }),
        );
    }
    if let Some((config, tx)) = p.election {
        let client = p.client.clone();
        specs.push(
            ChildSpec::new("leader", move |sup| {
                let args = LeaderArgs { client: client.clone(), config: config.clone(), tx: tx.clone() };
                async move { Ok(Actor::spawn_linked(None, Leader, args, sup).await?.0.get_cell()) }
            })
            .before_stop(|cell| async move {
                let leader = ActorRef::<LeaderMsg>::from(cell);
                if leader.call(LeaderMsg::Release, Some(Duration::from_secs(10))).await.is_err() {
                    tracing::warn!(
                        "Could not release the leader lock; followers take over after it expires."
                    );
                }
            })
            .fail(|cell| async move {
                let _ = ActorRef::<LeaderMsg>::from(cell).cast(LeaderMsg::Fail);
            }),
        );
    }
    let ctx = Arc::new(controller::Ctx::new(
        p.client.clone(),
        pool,
        p.policy.clone(),
        p.leadership.clone(),
        p.cc.resync_interval,
    ));
    specs.push(task("spiffeid_controller", Duration::from_secs(20), move |shutdown| {
        let ctx = ctx.clone();
        async move {
            controller::run(ctx, shutdown).await;
            Ok(())
        }
    }));
    if let (true, Some(own_namespace)) = (p.cc.pod_controller, p.own_ns) {
        let rules = pods::PodRules {
            trust_domain: p.cfg.trust_domain.clone(),
            cluster: p.cfg.cluster.clone(),
            identity: pods::IdentityRule::from_config(p.cc.identity_template.as_deref(), &p.cfg.id_source),
            identity_template_label: p.cc.identity_template_label.clone(),
            dns_name_templates: p.cc.dns_name_templates.clone(),
            context: p.cc.context.clone(),
            disabled_namespaces: p.cfg.disabled_namespaces.clone(),
        };
        let sctx = Arc::new(sync::SyncCtx {
            client: p.client.clone(),
            rules,
            own_namespace,
            add_svc_dns_name: p.cc.add_svc_dns_name,
            leadership: p.leadership.clone(),
            events: EventSink::new(p.client.clone(), "k8s-workload-registrar"),
            resync_interval: p.cc.resync_interval,
        });
        specs.push(task("spiffeid_projector", Duration::from_secs(10), move |shutdown| {
            let sctx = sctx.clone();
            async move {
                sync::run(sctx, shutdown).await;
                Ok(())
            }
        }));
    }
    if let Some(w) = p.webhook {
        tracing::info!(addr = %w.addr, path = handler::SPIFFEID_PATH, "Serving the SpiffeID validating webhook.");
        let router = handler::router_at(handler::SPIFFEID_PATH, admission::admit(w.policy));
        specs.push(task("spiffeid_webhook", server::DRAIN_TIMEOUT, move |shutdown| {
            let (listener, files, router) = (w.listener.clone(), w.files.clone(), router.clone());
            async move {
                let std = listener.try_clone().map_err(|e| e.to_string())?;
                std.set_nonblocking(true).map_err(|e| e.to_string())?;
                let listener = tokio::net::TcpListener::from_std(std).map_err(|e| e.to_string())?;
                server::serve(listener, files, router, shutdown).await.map_err(|e| e.to_string())
            }
        }));
    }
    specs
}

/// A child hosting one long-running future (see `actors::task`).
fn task<F, Fut>(name: &'static str, drain: Duration, factory: F) -> ChildSpec
where
    F: Fn(crate::actors::task::Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let args = TaskArgs::new(name, drain, factory);
    ChildSpec::new(name, move |sup| {
        let args = args.clone();
        async move { Ok(Actor::spawn_linked(None, Task, args, sup).await?.0.get_cell()) }
    })
    .fail(|cell| async move {
        #[cfg(feature = "fault-injection")]
        let _ = ActorRef::<crate::actors::task::TaskMsg>::from(cell).cast(crate::actors::task::TaskMsg::Fail);
        #[cfg(not(feature = "fault-injection"))]
        let _ = cell;
    })
}

/// `POST /debug/fail/<child>` for the children that have a fault hook.
#[cfg(feature = "fault-injection")]
fn injector(root: &ActorRef<RootMsg>, names: Vec<&'static str>) -> Option<http::Injector> {
    let root = root.clone();
    Some(Arc::new(move |target: &str| {
        if !names.contains(&target) {
            return Err(format!("unknown fault target {target:?} (known: {})", names.join(", ")));
        }
        root.cast(RootMsg::Inject(target.to_string())).map_err(|e| e.to_string())
    }))
}

#[cfg(not(feature = "fault-injection"))]
fn injector(_: &ActorRef<RootMsg>, _: Vec<&'static str>) -> Option<http::Injector> {
    None
}
