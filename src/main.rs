//! The `k8s-workload-registrar` binary: argument parsing, wiring, and process lifetime
//! (signals, exit codes). Everything else lives in the library.

use std::{
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, bail};
use k8s_workload_registrar::{
    actors::registrar::{FaultTarget, Registrar, RegistrarArgs, RegistrarMsg},
    cli::{self, Command},
    config::{self, Config, LogFormat, Mode, ReconcileConfig, ServerAddress},
    election::{ElectionConfig, LockKind},
    http,
    identity::Naming,
    k8s::{cache::ClusterCache, events::EventSink},
    leadership::{self, Leadership},
    spire::SpireClient,
};
use ractor::{Actor, ActorRef};

fn main() -> ExitCode {
    let command = match cli::parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("k8s-workload-registrar {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Validate { config } => match config::load(&config) {
            Ok(cfg) => {
                println!("{}", cfg.to_json());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            match run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Registrar stopped with an error.");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[tokio::main]
async fn run(cfg: Config) -> anyhow::Result<()> {
    k8s_workload_registrar::telemetry::init(
        cfg.log_level.as_filter(),
        cfg.log_format == LogFormat::Json,
        cfg.log_path.as_deref(),
    )?;
    // One TLS crypto provider for the whole process (ring); see README § Dependencies.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &cfg.mode {
        Mode::Reconcile(rc) => run_reconcile(&cfg, rc).await,
        Mode::Webhook(_) => bail!("mode \"webhook\" is not available in this build yet; use mode = \"reconcile\""),
        Mode::Crd(_) => bail!("mode \"crd\" is not available in this build yet; use mode = \"reconcile\""),
    }
}

fn metrics_recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])?
        .install_recorder()
        .context("installing the metrics recorder")?;
    k8s_workload_registrar::metrics::describe();
    let upkeep = handle.clone();
    // Without periodic upkeep the exporter's histogram buffers grow without bound.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

async fn run_reconcile(cfg: &Config, rc: &ReconcileConfig) -> anyhow::Result<()> {
    let metrics = metrics_recorder()?;
    let spire = match &cfg.server {
        ServerAddress::Unix { path } => SpireClient::unix(path)?,
        ServerAddress::Tcp { address, .. } => bail!(
            "server_address {address:?}: the TCP/mTLS path (agent-issued SVID) is not available in this build \
             yet; run beside the SPIRE server and use its admin socket (server_socket_path)"
        ),
    };
    let naming = Arc::new(Naming {
        trust_domain: cfg.trust_domain.clone(),
        cluster: cfg.cluster.clone(),
        controller_name: rc.controller_name.clone(),
        id_source: cfg.id_source.clone(),
        disabled_namespaces: cfg.disabled_namespaces.clone(),
        pod_dns_zone: rc.add_pod_dns_names.then(|| rc.cluster_dns_zone.clone()),
    });
    naming.validate().context("unable to determine root ID")?;
    let client = kube::Client::try_default().await.context("building the Kubernetes client (KUBECONFIG or in-cluster)")?;

    let (election, leadership) = if rc.leader_election.enabled {
        let (tx, rx) = tokio::sync::watch::channel(Leadership::default());
        let namespace = match &rc.leader_election.namespace {
            Some(ns) => ns.clone(),
            None => own_namespace().context(
                "leader_election needs a namespace for its lock: set leader_election_namespace, POD_NAMESPACE, \
                 or run in-cluster",
            )?,
        };
        let election = ElectionConfig {
            lock: match rc.leader_election.lock {
                config::LockKind::Leases => LockKind::Leases,
                config::LockKind::ConfigMaps => LockKind::ConfigMaps,
            },
            namespace,
            name: format!("{}-leader-election", rc.controller_name),
            identity: identity(),
            ..ElectionConfig::default()
        };
        election.validate()?;
        tracing::info!(identity = %election.identity, lock = ?election.lock, namespace = %election.namespace, name = %election.name, "Leader election on.");
        (Some((election, tx)), rx)
    } else {
        let (tx, rx) = leadership::always_leading();
        std::mem::forget(tx); // keep the channel open for the life of the process
        (None, rx)
    };

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
        Actor::spawn(None, Registrar, args).await.context("starting the registrar actor system")?;
    tracing::info!(cluster = %cfg.cluster, trust_domain = %cfg.trust_domain, "Registrar started in reconcile mode.");

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = rc.metrics_addr {
        let listener = http::bind(addr).await?;
        let health = http::Health { alive: alive.clone(), ready, metrics, inject: injector(&registrar) };
        tokio::spawn(http::serve(listener, http::router(health), async {
            let _ = http_stopped.await;
        }));
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    }

    let result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("Shutting down.");
            let _ = registrar.call(RegistrarMsg::Shutdown, Some(Duration::from_secs(30))).await;
            registrar.stop(Some("shutdown".into()));
            let _ = registrar_done.await;
            Ok(())
        }
        _ = registrar_done_wait(&registrar) => {
            alive.store(false, std::sync::atomic::Ordering::SeqCst);
            Err(anyhow::anyhow!("the actor system stopped (restart budget exhausted; see the log above)"))
        }
    };
    let _ = stop_http.send(());
    result
}

/// Resolves when the registrar actor has stopped for any reason.
async fn registrar_done_wait(registrar: &ActorRef<RegistrarMsg>) {
    loop {
        if matches!(registrar.get_status(), ractor::ActorStatus::Stopped | ractor::ActorStatus::Stopping) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(feature = "fault-injection")]
type Injector = Option<Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>>;

#[cfg(feature = "fault-injection")]
fn injector(registrar: &ActorRef<RegistrarMsg>) -> Injector {
    use k8s_workload_registrar::actors::watcher::WatchKind;
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
fn injector(_: &ActorRef<RegistrarMsg>) -> Option<Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>> {
    let _ = FaultTarget::Pool; // the type is part of the library API either way
    None
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The namespace for the leader lock: `POD_NAMESPACE` (Downward API) or the in-cluster
/// service-account namespace file.
fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()).or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// `<hostname>_<random>`, like client-go users do, so two replicas never share an identity.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "registrar".to_string());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{host}_{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}
