//! Wiring of a running registrar, one path for every mode: builds the SPIRE client, the
//! Kubernetes client (`k8s::client`, with request metrics; from the given `kube::Config` or else
//! `KUBECONFIG` / in-cluster) and leader election from a validated [`Config`],
//! asks the mode for its children ([`reconcile`], [`webhook`], [`crd`]), adds the ones every mode
//! has (the SPIRE pool first, the Leader, the HTTP endpoint last), starts them under one
//! [`Root`], and runs until `shutdown` resolves (ordered shutdown: the children in reverse start
//! order) or the tree gives up.
//!
//! The outside world is injected (`kube::Config`, shutdown future) so the binary, the demo and
//! tests share this one code path.

mod crd;
pub mod plan;
mod reconcile;
mod webhook;

use std::{
    future::Future,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorRef};

use crate::{
    actors::{
        PoolHandle,
        leader::{Leader, LeaderArgs, LeaderMsg},
        root::{ChildSpec, Root, RootMsg},
        spire_pool::{PoolArgs, SpirePool},
        task::{Task, TaskArgs},
    },
    config::{self, Config, Mode, ServerAddress},
    election::{ElectionConfig, LockKind},
    http,
    leadership::{self, Leadership, LeadershipRx, LeadershipTx},
    readiness::Readiness,
    spire::SpireClient,
};

/// Why the registrar could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPIRE client: {0}")]
    Spire(#[from] crate::spire::Error),
    #[error("unable to determine root ID: {0}")]
    Naming(#[from] crate::identity::IdentityError),
    #[error("building the Kubernetes client (-kubeconfig, KUBECONFIG or in-cluster): {0}")]
    KubeClient(#[from] crate::k8s::client::Error),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Election(String),
    #[error("{0}")]
    Config(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("starting the actor system: {0}")]
    Spawn(String),
    #[error("the actor system stopped (restart budget exhausted; see the log above)")]
    ActorSystemStopped,
    #[error("webhook: {0}")]
    Webhook(#[from] crate::webhook::Error),
}

/// The process-wide Prometheus recorder, installed on first use (a process can only have one;
/// the lock makes concurrent first callers — e.g. several registrars in the demo — safe).
pub fn metrics_handle() -> Result<PrometheusHandle, Error> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        .map_err(|e| Error::Metrics(e.to_string()))?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("registrar_registration_latency_seconds".into()),
            &crate::metrics::REGISTRATION_BUCKETS,
        )
        .map_err(|e| Error::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    crate::metrics::describe();
    crate::metrics::preinitialise();
    let upkeep = handle.clone();
    // Without periodic upkeep the exporter's histogram buffers grow without bound.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    *slot = Some(handle.clone());
    Ok(handle)
}

/// How long start-up waits for the registrar's own X509-SVID from the agent (TCP path).
const FIRST_SVID_TIMEOUT: Duration = Duration::from_secs(60);

/// What a mode adds to the tree, and how the shared parts are set up for it.
struct ModeTree {
    /// The mode's own children, in start order (after the pool and the Leader).
    children: Vec<ChildSpec>,
    /// Maps a `POST /debug/fail/<target>` target to (child, argument) for this mode's children.
    fault_route: fn(&str) -> Option<(&'static str, String)>,
}

/// Slack on top of the write budget for scheduling and the server's own clock.
const SETTLE_MARGIN: Duration = Duration::from_secs(1);

/// The shared parts a mode builds its children from.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub pool: PoolHandle,
    pub leadership: LeadershipRx,
    /// `/readyz`; the mode sets synced and converged (see `readiness`).
    pub readiness: Readiness,
    /// With leader election: how long after a promotion the writes of earlier leaders are over
    /// at SPIRE, so leader-gated writers re-read then (see `leadership::settled_epochs`).
    pub settle: Option<Duration>,
}

/// Runs the registrar described by `cfg` until `shutdown` resolves (then stops gracefully:
/// children in reverse start order, the Leader releasing its lock) or the tree fails.
pub async fn run(
    cfg: &Config,
    kube_config: Option<kube::Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = metrics_handle()?;
    // Files named in the configuration are checked before anything connects anywhere.
    match &cfg.mode {
        Mode::Webhook(wc) => webhook::preflight(wc)?,
        Mode::Crd(cc) => crd::preflight(cc)?,
        Mode::Reconcile(_) => {}
    }
    let mut spire = spire_client(&cfg.server).await?;
    let client = crate::k8s::client::build(kube_config).await?;
    let mut lock_name = match &cfg.mode {
        Mode::Reconcile(rc) => format!("{}-leader-election", rc.controller_name),
        Mode::Crd(_) => "k8s-workload-registrar-crd-leader-election".into(),
        Mode::Webhook(_) => "k8s-workload-registrar-webhook-leader-election".into(),
    };
    if !cfg.dry_run {
        // A server too old for a configured field would drop it and be updated forever.
        crate::spire::probe::check(&spire, &cfg.trust_domain, &cfg.cluster, &cfg.managed)
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
    }
    if cfg.dry_run {
        // A shadow beside a real registrar must never take the real one's lock (it would stop
        // the real writer), so it elects among dry runs only.
        lock_name.push_str("-dry-run");
        spire = spire.dry_run();
        crate::audit::set_dry_run();
        tracing::warn!(lock = %lock_name,
            "dry_run = true: nothing is written to SPIRE; the writes this registrar would make are logged and counted in registrar_dry_run_ops_total.");
    }
    let election = match cfg.mode.leader_election() {
        Some(le) if le.enabled => Some(election_config(le.lock, le.namespace.as_deref(), lock_name)?),
        Some(_) => None,
        // Webhook mode has no election keys: its cluster shard elects a leader whenever it knows
        // its namespace.
        None => match own_namespace() {
            Some(ns) => Some(election_config(config::LockKind::Leases, Some(&ns), lock_name)?),
            None => {
                tracing::warn!(
                    "No namespace known (POD_NAMESPACE); the cluster shard runs without leader election."
                );
                None
            }
        },
    };
    // A write fence-checked while leading must be over before another replica can lead.
    let write_budget = election.as_ref().map(|c| c.lease_duration.saturating_sub(c.renew_deadline));
    let Writers { election, leadership, _keep_alive } = writers(election);
    if election.is_none() {
        // Without election this replica is the only writer for its whole life.
        metrics::gauge!("registrar_is_leader").set(1.0);
    }
    let readiness = Readiness::new(leadership.clone(), spire.reachability());
    let shared = Shared {
        client: client.clone(),
        pool: PoolHandle::default(),
        leadership: leadership.clone(),
        readiness: readiness.clone(),
        settle: write_budget.map(|b| b + SETTLE_MARGIN),
    };
    // Webhook mode: short per-call deadlines, so admissions answer inside the API server's timeout.
    let pool_client = match &cfg.mode {
        Mode::Webhook(_) => spire.clone().with_timeout(crate::webhook::admission::CALL_TIMEOUT),
        _ => spire.clone(),
    };
    let pool_client = match write_budget {
        Some(budget) => pool_client.with_write_budget(budget),
        None => pool_client,
    };
    let mut specs = vec![pool_child(pool_client, leadership.clone(), shared.pool.clone())];
    if let Some((config, tx)) = election {
        specs.push(leader_child(LeaderArgs { client: client.clone(), config, tx }));
    }
    let mode = match &cfg.mode {
        Mode::Reconcile(rc) => reconcile::tree(cfg, rc, &shared)?,
        Mode::Webhook(wc) => webhook::tree(cfg, wc, &shared).await?,
        Mode::Crd(cc) => crd::tree(cfg, cc, &shared).await?,
    };
    specs.extend(mode.children);
    let alive = Arc::new(AtomicBool::new(true));
    let root_ref: Arc<OnceLock<ActorRef<RootMsg>>> = Arc::default();
    if let Some(addr) = cfg.mode.metrics_addr() {
        let listener = http::bind(addr).await.map_err(Error::Listen)?;
        let health = http::Health {
            alive: alive.clone(),
            ready: readiness,
            metrics,
            inject: injector(root_ref.clone(), mode.fault_route, {
                let mut names = crate::actors::root::fault_targets(&specs);
                names.push("http");
                names
            }),
        };
        specs.push(http_child(listener, health)?);
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    }
    let (root, root_done) = Actor::spawn(None, Root, specs).await.map_err(|e| Error::Spawn(e.to_string()))?;
    let _ = root_ref.set(root.clone());
    tracing::info!(mode = cfg.mode.name(), cluster = %cfg.cluster, trust_domain = %cfg.trust_domain, "Registrar started.");

    let mut root_done = std::pin::pin!(root_done);
    tokio::select! {
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
    }
}

/// The SPIRE pool: the one SPIRE client of the tree, started first so it stops last; a restart
/// is swapped into the shared handle.
fn pool_child(spire: SpireClient, leadership: LeadershipRx, pool: PoolHandle) -> ChildSpec {
    let spec = ChildSpec::new("spire_pool", move |sup| {
        let (pool, args) =
            (pool.clone(), PoolArgs { client: spire.clone(), leadership: leadership.clone(), workers: 2 });
        async move {
            let (actor, _) = Actor::spawn_linked(None, SpirePool, args, sup).await?;
            pool.set(actor.clone());
            Ok(actor.get_cell())
        }
    });
    #[cfg(feature = "fault-injection")]
    let spec = spec.fail(|cell, arg| async move {
        let which = arg.strip_prefix("worker:").and_then(|i| i.parse().ok());
        use crate::actors::spire_pool::PoolMsg;
        let _ = ActorRef::<PoolMsg>::from(cell).cast(PoolMsg::Fail(which));
    });
    spec
}

/// The Leader; on shutdown it releases the lock before it stops, so a follower takes over at once.
fn leader_child(args: LeaderArgs) -> ChildSpec {
    let spec = ChildSpec::new("leader", move |sup| {
        let args =
            LeaderArgs { client: args.client.clone(), config: args.config.clone(), tx: args.tx.clone() };
        async move { Ok(Actor::spawn_linked(None, Leader, args, sup).await?.0.get_cell()) }
    })
    .before_stop(|cell| async move {
        let leader = ActorRef::<LeaderMsg>::from(cell);
        if leader.call(LeaderMsg::Release, Some(Duration::from_secs(10))).await.is_err() {
            tracing::warn!("Could not release the leader lock; followers take over after it expires.");
        }
    });
    #[cfg(feature = "fault-injection")]
    let spec = spec.fail(|cell, _| async move {
        let _ = ActorRef::<LeaderMsg>::from(cell).cast(LeaderMsg::Fail);
    });
    spec
}

/// `/metrics`, `/healthz`, `/readyz` (and `/debug/fail/*`) as a supervised child.
fn http_child(listener: tokio::net::TcpListener, health: http::Health) -> Result<ChildSpec, Error> {
    let listener = Arc::new(listener.into_std().map_err(Error::Listen)?);
    let router = http::router(health);
    Ok(task_child("http", Duration::from_secs(5), move |shutdown| {
        let (listener, router) = (listener.clone(), router.clone());
        async move {
            let listener = clone_listener(&listener)?;
            http::serve(listener, router, shutdown).await.map_err(|e| e.to_string())
        }
    }))
}

/// A tokio listener on a clone of `listener`'s socket: each (re)start of a server serves the
/// socket bound once at start, so a taken port fails start-up and a restart cannot lose it.
pub(crate) fn clone_listener(listener: &std::net::TcpListener) -> Result<tokio::net::TcpListener, String> {
    let std = listener.try_clone().map_err(|e| e.to_string())?;
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpListener::from_std(std).map_err(|e| e.to_string())
}

/// A child hosting one long-running future (see `actors::task`).
pub(crate) fn task_child<F, Fut>(name: &'static str, drain: Duration, factory: F) -> ChildSpec
where
    F: Fn(crate::actors::task::Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let args = TaskArgs::new(name, drain, factory);
    let spec = ChildSpec::new(name, move |sup| {
        let args = args.clone();
        async move { Ok(Actor::spawn_linked(None, Task, args, sup).await?.0.get_cell()) }
    });
    #[cfg(feature = "fault-injection")]
    let spec = spec.fail(|cell, _| async move {
        let _ = ActorRef::<crate::actors::task::TaskMsg>::from(cell).cast(crate::actors::task::TaskMsg::Fail);
    });
    spec
}

/// `POST /debug/fail/<target>`: a child's name (`spire_pool`, `leader`, `http`, ...), `pool`,
/// `worker:<i>`, or what the mode routes (reconcile: `pods`, `nodes`, `endpointslices`,
/// `shard:<node>`).
#[cfg(feature = "fault-injection")]
fn injector(
    root: Arc<OnceLock<ActorRef<RootMsg>>>,
    route: fn(&str) -> Option<(&'static str, String)>,
    names: Vec<&'static str>,
) -> Option<http::Injector> {
    Some(Arc::new(move |target: &str| {
        let (child, arg) = match target {
            "pool" => ("spire_pool".to_string(), String::new()),
            t if t.starts_with("worker:") => ("spire_pool".to_string(), t.to_string()),
            t if names.contains(&t) => (t.to_string(), String::new()),
            t => match route(t) {
                Some((child, arg)) => (child.to_string(), arg),
                None => return Err(format!("unknown fault target {t:?} (known: {})", names.join(", "))),
            },
        };
        let root = root.get().ok_or("not started yet")?;
        root.cast(RootMsg::Inject { child, arg }).map_err(|e| e.to_string())
    }))
}

#[cfg(not(feature = "fault-injection"))]
fn injector(
    _: Arc<OnceLock<ActorRef<RootMsg>>>,
    _: fn(&str) -> Option<(&'static str, String)>,
    _: Vec<&'static str>,
) -> Option<http::Injector> {
    None
}

/// The SPIRE client for `server`: the admin socket, or TCP with mutual TLS and the SVID the
/// agent at `agent_socket_path` issues to us.
async fn spire_client(server: &ServerAddress) -> Result<SpireClient, Error> {
    Ok(match server {
        ServerAddress::Unix { path } => SpireClient::unix(path)?,
        ServerAddress::Tcp { address, agent_socket_path } => {
            SpireClient::tcp_mtls(address, agent_socket_path, FIRST_SVID_TIMEOUT).await?
        }
    })
}

/// A validated election config for the lock `name`, in `namespace` or else our own namespace.
pub(crate) fn election_config(
    lock: config::LockKind,
    namespace: Option<&str>,
    name: String,
) -> Result<ElectionConfig, Error> {
    let namespace = match namespace {
        Some(ns) => ns.to_string(),
        None => own_namespace().ok_or_else(|| {
            Error::Election(
                "needs a namespace for its lock: set leader_election_namespace, POD_NAMESPACE, or run in-cluster"
                    .into(),
            )
        })?,
    };
    let election = ElectionConfig {
        lock: match lock {
            config::LockKind::Leases => LockKind::Leases,
            config::LockKind::ConfigMaps => LockKind::ConfigMaps,
        },
        namespace,
        name,
        identity: identity(),
        ..ElectionConfig::default()
    };
    election.validate().map_err(|e| Error::Election(e.to_string()))?;
    tracing::info!(identity = %election.identity, lock = ?election.lock, namespace = %election.namespace,
        name = %election.name, "Leader election on.");
    Ok(election)
}

/// Who may write to SPIRE. With an election config: a channel that starts "not leading" and
/// that the `Leader` actor drives (`election`). Without: a channel that says "leading" forever;
/// `_keep_alive` holds its sender, so receivers never see it closed.
pub(crate) struct Writers {
    pub election: Option<(ElectionConfig, LeadershipTx)>,
    pub leadership: LeadershipRx,
    pub _keep_alive: Option<LeadershipTx>,
}

pub(crate) fn writers(election: Option<ElectionConfig>) -> Writers {
    match election {
        Some(config) => {
            let (tx, rx) = tokio::sync::watch::channel(Leadership::default());
            Writers { election: Some((config, tx)), leadership: rx, _keep_alive: None }
        }
        None => {
            let (tx, rx) = leadership::always_leading();
            Writers { election: None, leadership: rx, _keep_alive: Some(tx) }
        }
    }
}

/// The namespace for the leader lock: `POD_NAMESPACE` (Downward API) or the in-cluster
/// service-account namespace file.
pub(crate) fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()).or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// `<pod or host name>_<random>`, as client-go users do, so two replicas never share an identity.
pub(crate) fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "registrar".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}_{:x}{:08x}", std::process::id(), nanos)
}
