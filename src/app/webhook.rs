//! Webhook mode's children: the registrar with one cluster-wide shard (the cluster entry and
//! every pod's entry; it replaced the backstop) and the admission server (a `Task`). The pool,
//! the Leader (whenever the registrar's namespace is known) and the HTTP endpoint are added by
//! `app::run`; both children reach SPIRE through the pool.
//!
//! Admissions are the one unfenced writer: every replica answers them (see `webhook::admission`).

use std::sync::Arc;

use super::{Error, ModeTree, Shared, clone_listener, task_child};
use crate::{
    actors::{registrar::RegistrarArgs, shard::ShardMode},
    config::{Config, WebhookConfig},
    identity::Naming,
    k8s::{cache::ClusterCache, events::EventSink},
    webhook::{admission, handler, server},
};

fn tls_files(wc: &WebhookConfig) -> server::TlsFiles {
    server::TlsFiles {
        cert: wc.cert_path.clone(),
        key: wc.key_path.clone(),
        ca: (!wc.insecure_skip_client_verification).then(|| wc.cacert_path.clone()),
    }
}

/// The serving certificate, key and client CA load (errors name the file).
pub(super) fn preflight(wc: &WebhookConfig) -> Result<(), Error> {
    server::load(&tls_files(wc))?;
    Ok(())
}

/// Webhook mode's identity rules, validated (also what `plan` uses).
pub(crate) fn naming(cfg: &Config) -> Result<Naming, Error> {
    let naming = Naming {
        trust_domain: cfg.trust_domain.clone(),
        cluster: cfg.cluster.clone(),
        controller_name: "spire-k8s-registrar".into(),
        id_source: cfg.id_source.clone(),
        disabled_namespaces: cfg.disabled_namespaces.clone(),
        pod_dns_zone: None,
        managed: cfg.managed.clone(),
    };
    naming.validate()?;
    Ok(naming)
}

pub(super) async fn tree(cfg: &Config, wc: &WebhookConfig, shared: &Shared) -> Result<ModeTree, Error> {
    let naming = Arc::new(naming(cfg)?);
    let files = tls_files(wc);
    // Fail fast on a taken port, before anything is written anywhere (the files were checked).
    if wc.insecure_skip_client_verification {
        tracing::warn!(
            "insecure_skip_client_verification = true: ANY client that reaches {} can create and delete SPIRE \
             entries through this webhook. Use it only for testing.",
            wc.addr
        );
    }
    let listener = Arc::new(server::bind(wc.addr).await?.into_std().map_err(Error::Listen)?);

    // One cluster-wide shard keeps the cluster entry and every pod's entry (leader-gated, as
    // the backstop of the original design did): it repairs what admissions alone cannot — pods
    // deleted or created while the webhook was down, deletes that never completed.
    let registrar = super::reconcile::registrar_child(RegistrarArgs {
        mode: ShardMode::Cluster,
        naming: naming.clone(),
        client: shared.client.clone(),
        pool: shared.pool.clone(),
        cache: ClusterCache::default(),
        leadership: shared.leadership.clone(),
        watch_slices: false,
        resync_interval: wc.resync_interval,
        events: EventSink::new(shared.client.clone(), "k8s-workload-registrar"),
        readiness: shared.readiness.clone(),
        settle: shared.settle,
    });
    let admit = admission::Admission { naming, pool: shared.pool.clone(), pods: Some(shared.client.clone()) }
        .into_admit();
    let router = handler::router(admit);
    tracing::info!(addr = %wc.addr, cluster = %cfg.cluster, "Serving /validate.");
    let server = task_child("admission_server", server::DRAIN_TIMEOUT, move |shutdown| {
        let (listener, files, router) = (listener.clone(), files.clone(), router.clone());
        async move {
            let listener = clone_listener(&listener)?;
            server::serve(listener, files, router, shutdown).await.map_err(|e| e.to_string())
        }
    });
    Ok(ModeTree { children: vec![registrar, server], fault_route: super::reconcile::fault_route })
}
