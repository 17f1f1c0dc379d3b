//! CRD mode: SpiffeID custom resources (`spiffeid.spiffe.io/v1beta1`) are the source of truth;
//! each maps to exactly one SPIRE entry (see [`controller`]).
//!
//! * core, pure: [`resource`] (the type), [`convert`] (SpiffeID → `EntrySpec`), [`policy`] (what
//!   a SpiffeID may ask for: the trust boundary), [`plan`] (entry ownership and the write to
//!   make), [`pods`] (Pod / Node → SpiffeID), [`template`] (the identity / DNS-name template
//!   subset);
//! * shell: [`controller`] (SpiffeID → entry, leader-gated writes), [`sync`] (Pod / Node /
//!   EndpointSlice → SpiffeID, with `pod_controller` and `add_svc_dns_name`), [`run`] (wiring).
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

use ractor::Actor;

use crate::{
    actors::leader::{Leader, LeaderArgs, LeaderMsg},
    app::{self, Error},
    config::{Config, CrdConfig},
    http,
    k8s::events::EventSink,
    spire::SpireClient,
    webhook::{handler, server},
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
            Some((server::bind(addr).await?, files, addr))
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
    let mut leader = None;
    if let Some((config, tx)) = election {
        let args = LeaderArgs { client: client.clone(), config, tx };
        leader = Some(Actor::spawn(None, Leader, args).await.map_err(|e| Error::Spawn(e.to_string()))?);
    }

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
    let ctx = Arc::new(controller::Ctx::new(client, spire, policy.clone(), leadership, cc.resync_interval));
    let (stop_ctrl, ctrl_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut ctrl = tokio::spawn(controller::run(ctx, async {
        let _ = ctrl_stopped.await;
    }));

    let (stop_webhook, webhook_stopped) = tokio::sync::oneshot::channel::<()>();
    let webhook_server = webhook.map(|(listener, files, addr)| {
        tracing::info!(%addr, path = handler::SPIFFEID_PATH, "Serving the SpiffeID validating webhook.");
        let router = handler::router_at(handler::SPIFFEID_PATH, admission::admit(policy));
        tokio::spawn(server::serve(listener, files, router, async {
            let _ = webhook_stopped.await;
        }))
    });

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
    let _ = stop_webhook.send(());
    if let Some(server) = webhook_server {
        let _ = server.await;
    }
    if let Some((actor, done)) = leader {
        let _ = actor.call(LeaderMsg::Release, Some(Duration::from_secs(10))).await;
        actor.stop(Some("shutdown".into()));
        let _ = done.await;
    }
    let _ = stop_http.send(());
    result
}
