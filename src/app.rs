//! Wiring of a running registrar: builds the SPIRE client, the Kubernetes client (unless one is
//! injected), leader election, the actor system and the HTTP endpoint from a validated
//! [`Config`], and runs until `shutdown` resolves or the actor system gives up.
//!
//! The outside world is injected (`kube::Client`, shutdown future) so the binary, the demo and
//! tests share this one code path. Every `Config` field of the selected mode is used here or
//! rejected with a clear error; nothing is silently ignored.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorRef};

use crate::{
    actors::registrar::{FaultTarget, Registrar, RegistrarArgs, RegistrarMsg},
    actors::{
        leader::LeaderArgs,
        webhook_root::{WebhookRoot, WebhookRootArgs, WebhookRootMsg},
    },
    config::{self, Config, Mode, ReconcileConfig, ServerAddress, WebhookConfig},
    election::{ElectionConfig, LockKind},
    http,
    identity::Naming,
    k8s::{cache::ClusterCache, events::EventSink},
    leadership::{self, Leadership, LeadershipRx, LeadershipTx},
    spire::SpireClient,
    webhook::{admission, backstop::BackstopArgs, handler, server},
};

/// Why the registrar could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPIRE client: {0}")]
    Spire(#[from] crate::spire::Error),
    #[error("unable to determine root ID: {0}")]
    Naming(#[from] crate::identity::IdentityError),
    #[error("building the Kubernetes client (KUBECONFIG or in-cluster): {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Election(String),
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
    #[error("creating the cluster entry {id}: {reason}")]
    ClusterEntry { id: String, reason: String },
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
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    crate::metrics::describe();
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

/// Runs the registrar described by `cfg` until `shutdown` resolves (then stops gracefully:
/// releases the leader lock, stops every actor) or the actor system fails.
pub async fn run(
    cfg: &Config,
    client: Option<kube::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    match &cfg.mode {
        Mode::Reconcile(rc) => run_reconcile(cfg, rc, client, shutdown).await,
        Mode::Webhook(wc) => run_webhook(cfg, wc, client, shutdown).await,
        Mode::Crd(cc) => {
            let metrics = metrics_handle()?;
            let spire = spire_client(&cfg.server).await?;
            let client = kube_client(client).await?;
            crate::crd::run(cfg, cc, client, spire, metrics, shutdown).await
        }
    }
}

async fn run_reconcile(
    cfg: &Config,
    rc: &ReconcileConfig,
    client: Option<kube::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = metrics_handle()?;
    let spire = spire_client(&cfg.server).await?;
    let naming = Arc::new(Naming {
        trust_domain: cfg.trust_domain.clone(),
        cluster: cfg.cluster.clone(),
        controller_name: rc.controller_name.clone(),
        id_source: cfg.id_source.clone(),
        disabled_namespaces: cfg.disabled_namespaces.clone(),
        pod_dns_zone: rc.add_pod_dns_names.then(|| rc.cluster_dns_zone.clone()),
    });
    naming.validate()?;
    let client = kube_client(client).await?;
    let le = &rc.leader_election;
    let election = match le.enabled {
        true => Some(election_config(
            le.lock,
            le.namespace.as_deref(),
            format!("{}-leader-election", rc.controller_name),
        )?),
        false => None,
    };
    let Writers { election, leadership, _keep_alive } = writers(election);

    let ready = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    let args = RegistrarArgs {
        naming,
        client: client.clone(),
        spire,
        cache: ClusterCache::default(),
        leadership,
        election,
        watch_slices: rc.add_pod_dns_names,
        resync_interval: rc.resync_interval,
        pool_workers: 2,
        events: EventSink::new(client, &rc.controller_name),
        ready: ready.clone(),
    };
    let (registrar, registrar_done) =
        Actor::spawn(None, Registrar, args).await.map_err(|e| Error::Spawn(e.to_string()))?;
    tracing::info!(cluster = %cfg.cluster, trust_domain = %cfg.trust_domain, "Registrar started in reconcile mode.");

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = rc.metrics_addr {
        let listener = http::bind(addr).await.map_err(Error::Listen)?;
        let health = http::Health { alive: alive.clone(), ready, metrics, inject: injector(&registrar) };
        tokio::spawn(http::serve(listener, http::router(health), async {
            let _ = http_stopped.await;
        }));
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    }

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("Shutting down.");
            let _ = registrar.call(RegistrarMsg::Shutdown, Some(Duration::from_secs(30))).await;
            registrar.stop(Some("shutdown".into()));
            let _ = registrar_done.await;
            Ok(())
        }
        _ = stopped(&registrar) => {
            alive.store(false, Ordering::SeqCst);
            Err(Error::ActorSystemStopped)
        }
    };
    let _ = stop_http.send(());
    result
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

/// The injected Kubernetes client, or one from `KUBECONFIG` / in-cluster configuration.
async fn kube_client(client: Option<kube::Client>) -> Result<kube::Client, Error> {
    Ok(match client {
        Some(c) => c,
        None => kube::Client::try_default().await?,
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

/// Resolves when the registrar actor has stopped for any reason.
async fn stopped<M: ractor::Message>(registrar: &ActorRef<M>) {
    while !matches!(registrar.get_status(), ractor::ActorStatus::Stopped | ractor::ActorStatus::Stopping) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Injector = Option<http::Injector>;

/// `POST /debug/fail/{target}`: `pods`, `nodes`, `endpointslices`, `pool`, `leader`,
/// `shard:<node>`, `worker:<index>`.
#[cfg(feature = "fault-injection")]
fn injector(registrar: &ActorRef<RegistrarMsg>) -> Injector {
    use crate::actors::watcher::WatchKind;
    let r = registrar.clone();
    Some(Arc::new(move |target: &str| {
        let t = match target.split_once(':') {
            Some(("shard", node)) => FaultTarget::Shard(node.to_string()),
            Some(("worker", i)) => FaultTarget::SpireWorker(i.parse().map_err(|_| "bad worker index")?),
            _ => match target {
                "pods" => FaultTarget::Watcher(WatchKind::Pods),
                "nodes" => FaultTarget::Watcher(WatchKind::Nodes),
                "endpointslices" => FaultTarget::Watcher(WatchKind::EndpointSlices),
                "pool" => FaultTarget::Pool,
                "leader" => FaultTarget::Leader,
                other => return Err(format!("unknown fault target {other:?}")),
            },
        };
        r.cast(RegistrarMsg::Inject(t)).map_err(|e| e.to_string())
    }))
}

#[cfg(not(feature = "fault-injection"))]
fn injector(_: &ActorRef<RegistrarMsg>) -> Injector {
    let _ = FaultTarget::Pool; // part of the library API either way
    None
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

/// Webhook mode: the cluster entry at start, the admission webhook over HTTPS, and the
/// leader-gated reconcile backstop (see `webhook`).
async fn run_webhook(
    cfg: &Config,
    wc: &WebhookConfig,
    client: Option<kube::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = metrics_handle()?;
    // Short per-call deadline: admissions must answer inside the API server's timeout.
    let spire = spire_client(&cfg.server).await?.with_timeout(admission::CALL_TIMEOUT);
    let naming = Arc::new(Naming {
        trust_domain: cfg.trust_domain.clone(),
        cluster: cfg.cluster.clone(),
        controller_name: "spire-k8s-registrar".into(),
        id_source: cfg.id_source.clone(),
        disabled_namespaces: cfg.disabled_namespaces.clone(),
        pod_dns_zone: None,
    });
    naming.validate()?;
    let files = server::TlsFiles {
        cert: wc.cert_path.clone(),
        key: wc.key_path.clone(),
        ca: (!wc.insecure_skip_client_verification).then(|| wc.cacert_path.clone()),
    };
    // Fail fast on bad files, before anything is written anywhere.
    server::load(&files)?;
    if wc.insecure_skip_client_verification {
        tracing::warn!(
            "insecure_skip_client_verification = true: ANY client that reaches {} can create and delete SPIRE \
             entries through this webhook. Use it only for testing.",
            wc.addr
        );
    }
    let listener = server::bind(wc.addr).await?;
    let client = kube_client(client).await?;

    // The one cluster-wide node entry every agent of the cluster matches.
    let cluster_entry = naming.webhook_cluster_entry()?;
    match spire.create_entries(std::slice::from_ref(&cluster_entry)).await?.pop() {
        Some(Ok(e)) => {
            tracing::info!(spiffe_id = %e.spec.spiffe_id, entry_id = %e.id, "Cluster entry in place.")
        }
        Some(Err(item)) => {
            return Err(Error::ClusterEntry {
                id: cluster_entry.spiffe_id.to_string(),
                reason: item.to_string(),
            });
        }
        None => {
            return Err(Error::ClusterEntry {
                id: cluster_entry.spiffe_id.to_string(),
                reason: "no result".into(),
            });
        }
    }

    // The backstop writes only on the leader; replicas coordinate through a Lease when they
    // know their namespace (in-cluster), otherwise this replica assumes it is alone.
    let election = match own_namespace() {
        Some(ns) => Some(election_config(
            config::LockKind::Leases,
            Some(&ns),
            "k8s-workload-registrar-webhook-leader-election".into(),
        )?),
        None => {
            tracing::warn!("No namespace known (POD_NAMESPACE); the backstop runs without leader election.");
            None
        }
    };
    let Writers { election, leadership, _keep_alive } = writers(election);
    let leader = election.map(|(config, tx)| LeaderArgs { client: client.clone(), config, tx });
    let backstop = BackstopArgs {
        naming: naming.clone(),
        spire: spire.clone(),
        client: client.clone(),
        leadership,
        interval: wc.resync_interval,
    };
    let (root, root_done) = Actor::spawn(None, WebhookRoot, WebhookRootArgs { backstop, leader })
        .await
        .map_err(|e| Error::Spawn(e.to_string()))?;

    let alive = Arc::new(AtomicBool::new(true));
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = wc.metrics_addr {
        let listener = http::bind(addr).await.map_err(Error::Listen)?;
        let health = http::Health { alive: alive.clone(), ready, metrics, inject: webhook_injector(&root) };
        tokio::spawn(http::serve(listener, http::router(health), async {
            let _ = http_stopped.await;
        }));
    }
    let admit = admission::Admission { naming, spire, pods: Some(client) }.into_admit();
    let (stop_webhook, webhook_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, files, handler::router(admit), async {
        let _ = webhook_stopped.await;
    }));
    tracing::info!(addr = %wc.addr, cluster = %cfg.cluster, "Registrar started in webhook mode; serving /validate.");

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("Shutting down.");
            Ok(())
        }
        _ = stopped(&root) => {
            alive.store(false, Ordering::SeqCst);
            Err(Error::ActorSystemStopped)
        }
    };
    let _ = stop_webhook.send(());
    let _ = server.await;
    let _ = root.call(WebhookRootMsg::Shutdown, Some(Duration::from_secs(20))).await;
    root.stop(Some("shutdown".into()));
    let _ = root_done.await;
    let _ = stop_http.send(());
    result
}

#[cfg(feature = "fault-injection")]
fn webhook_injector(root: &ActorRef<WebhookRootMsg>) -> Injector {
    let r = root.clone();
    Some(Arc::new(move |target: &str| {
        r.cast(WebhookRootMsg::Inject(target.to_string())).map_err(|e| e.to_string())
    }))
}

#[cfg(not(feature = "fault-injection"))]
fn webhook_injector(_: &ActorRef<WebhookRootMsg>) -> Injector {
    None
}
