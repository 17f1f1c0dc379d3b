//! CRD mode: SpiffeID custom resources (`spiffeid.spiffe.io/v1beta1`) are the source of truth;
//! each maps to exactly one SPIRE entry (see [`controller`]).
//!
//! * core, pure: [`resource`] (the type), [`convert`] (SpiffeID → `EntrySpec`, validation),
//!   [`template`] (the identity / DNS-name template subset);
//! * shell: [`controller`] (kube-runtime controller, leader-gated writes), [`run`] (wiring).
//!
//! * [`pods`] (pure) and [`sync`] (shell): Pod / Node (/ EndpointSlice) → SpiffeID, with
//!   `pod_controller` (and `add_svc_dns_name`).
//!
//! Not yet implemented: the SpiffeID validating webhook (`webhook_enabled`); start-up logs a
//! warning when it is enabled.

pub mod controller;
pub mod convert;
pub mod pods;
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

use ractor::Actor;

use crate::{
    actors::leader::{Leader, LeaderArgs, LeaderMsg},
    app::Error,
    config::{self, Config, CrdConfig},
    election::{ElectionConfig, LockKind},
    http,
    k8s::events::EventSink,
    leadership::{self, Leadership},
    spire::SpireClient,
};

/// Runs CRD mode until `shutdown` resolves.
pub async fn run(
    cfg: &Config,
    cc: &CrdConfig,
    client: kube::Client,
    spire: SpireClient,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let own_ns = own_namespace();
    if cc.pod_controller && own_ns.is_none() {
        return Err(Error::Election(
            "pod_controller needs the registrar's namespace for node SpiffeIDs: set POD_NAMESPACE (Downward API) or run in-cluster"
                .into(),
        ));
    }
    if cc.webhook_enabled {
        tracing::warn!("webhook_enabled: the SpiffeID validating webhook is not supported yet; ignored.");
    }

    let mut _always_leading_tx = None;
    let mut leader = None;
    let leadership = if cc.leader_election.enabled {
        let (tx, rx) = tokio::sync::watch::channel(Leadership::default());
        let namespace = match &cc.leader_election.namespace {
            Some(ns) => ns.clone(),
            None => own_namespace().ok_or_else(|| {
                Error::Election(
                    "needs a namespace for its lock: set leader_election_namespace, POD_NAMESPACE, or run in-cluster"
                        .into(),
                )
            })?,
        };
        let election = ElectionConfig {
            lock: match cc.leader_election.lock {
                config::LockKind::Leases => LockKind::Leases,
                config::LockKind::ConfigMaps => LockKind::ConfigMaps,
            },
            namespace,
            name: "k8s-workload-registrar-crd-leader-election".into(),
            identity: identity(),
            ..ElectionConfig::default()
        };
        election.validate().map_err(|e| Error::Election(e.to_string()))?;
        let (actor, done) =
            Actor::spawn(None, Leader, LeaderArgs { client: client.clone(), config: election, tx })
                .await
                .map_err(|e| Error::Spawn(e.to_string()))?;
        leader = Some((actor, done));
        rx
    } else {
        let (tx, rx) = leadership::always_leading();
        _always_leading_tx = Some(tx);
        rx
    };

    let (stop_sync, sync_stopped) = tokio::sync::oneshot::channel::<()>();
    if let (true, Some(own_namespace)) = (cc.pod_controller, own_ns) {
        let rules = pods::PodRules {
            trust_domain: cfg.trust_domain.clone(),
            cluster: cfg.cluster.clone(),
            identity: pods::IdentityRule::from_config(cc.identity_template.as_deref(), &cfg.id_source),
            identity_template_label: cc.identity_template_label.clone(),
            dns_name_templates: cc.dns_name_templates.clone(),
            context: cc.context.clone(),
            disabled_namespaces: cfg.disabled_namespaces.clone(),
        };
        let sctx = Arc::new(sync::SyncCtx {
            client: client.clone(),
            rules,
            own_namespace,
            add_svc_dns_name: cc.add_svc_dns_name,
            leadership: leadership.clone(),
            events: EventSink::new(client.clone(), "k8s-workload-registrar"),
            resync_interval: cc.resync_interval,
        });
        tokio::spawn(sync::run(sctx, async {
            let _ = sync_stopped.await;
        }));
    }
    let ctx = Arc::new(controller::Ctx::new(
        client,
        spire,
        cfg.trust_domain.clone(),
        leadership,
        cc.resync_interval,
    ));
    let (stop_ctrl, ctrl_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut ctrl = tokio::spawn(controller::run(ctx, async {
        let _ = ctrl_stopped.await;
    }));

    let alive = Arc::new(AtomicBool::new(true));
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = cc.metrics_addr {
        let listener = http::bind(addr).await.map_err(Error::Listen)?;
        let health = http::Health { alive: alive.clone(), ready, metrics, inject: None };
        tokio::spawn(http::serve(listener, http::router(health), async {
            let _ = http_stopped.await;
        }));
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    }
    tracing::info!(cluster = %cfg.cluster, trust_domain = %cfg.trust_domain, "Registrar started in crd mode.");

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("Shutting down.");
            let _ = stop_ctrl.send(());
            let _ = stop_sync.send(());
            let _ = tokio::time::timeout(Duration::from_secs(20), &mut ctrl).await;
            Ok(())
        }
        _ = &mut ctrl => {
            alive.store(false, Ordering::SeqCst);
            Err(Error::ActorSystemStopped)
        }
    };
    if let Some((actor, done)) = leader {
        let _ = actor.call(LeaderMsg::Release, Some(Duration::from_secs(10))).await;
        actor.stop(Some("shutdown".into()));
        let _ = done.await;
    }
    let _ = stop_http.send(());
    result
}

/// `POD_NAMESPACE` (Downward API) or the in-cluster service-account namespace file.
fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()).or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// `<pod or host name>_<random>`, so two replicas never share an election identity.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "registrar".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}_{:x}{:08x}", std::process::id(), nanos)
}
