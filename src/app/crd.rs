//! CRD mode's children, in start order (after the pool and the Leader, which `app::run` adds):
//! the SpiffeID → entry controller, the Pod/Node → SpiffeID projector (`pod_controller`) and the
//! SpiffeID validating webhook (`webhook_enabled`), each hosted as a supervised `Task`.

use std::{sync::Arc, time::Duration};

use super::{Error, ModeTree, Shared, clone_listener, own_namespace, task_child};
use crate::{
    config::{Config, CrdConfig},
    crd::{admission, controller, pods, policy::Policy, sync},
    k8s::events::EventSink,
    webhook::{handler, server},
};

fn webhook_files(cc: &CrdConfig) -> server::TlsFiles {
    server::TlsFiles {
        cert: cc.webhook_cert_dir.join("tls.crt"),
        key: cc.webhook_cert_dir.join("tls.key"),
        ca: None,
    }
}

/// With `webhook_enabled`, the SpiffeID webhook's certificate and key load (errors name the file).
pub(super) fn preflight(cc: &CrdConfig) -> Result<(), Error> {
    if cc.webhook_enabled {
        server::load(&webhook_files(cc))?;
    }
    Ok(())
}

/// What a SpiffeID may ask for (also what `plan` uses).
pub(crate) fn policy(cfg: &Config, own_namespace: Option<String>) -> Policy {
    Policy { trust_domain: cfg.trust_domain.clone(), cluster: cfg.cluster.clone(), own_namespace }
}

/// The projector's rules (also what `plan` uses).
pub(crate) fn rules(cfg: &Config, cc: &CrdConfig) -> pods::PodRules {
    pods::PodRules {
        trust_domain: cfg.trust_domain.clone(),
        cluster: cfg.cluster.clone(),
        identity: pods::IdentityRule::from_config(cc.identity_template.as_deref(), &cfg.id_source),
        identity_template_label: cc.identity_template_label.clone(),
        dns_name_templates: cc.dns_name_templates.clone(),
        context: cc.context.clone(),
        disabled_namespaces: cfg.disabled_namespaces.clone(),
    }
}

pub(super) async fn tree(cfg: &Config, cc: &CrdConfig, shared: &Shared) -> Result<ModeTree, Error> {
    let own_ns = own_namespace();
    if cc.pod_controller && own_ns.is_none() {
        return Err(Error::Config(
            "pod_controller needs the registrar's namespace for node SpiffeIDs: set POD_NAMESPACE (Downward API) or run in-cluster"
                .into(),
        ));
    }
    let policy = policy(cfg, own_ns.clone());
    let mut children = Vec::new();

    let ctx = Arc::new(
        controller::Ctx::new(
            shared.client.clone(),
            shared.pool.clone(),
            policy.clone(),
            shared.leadership.clone(),
            cc.resync_interval,
        )
        .with_settle(shared.settle),
    );
    // With the projector, its first pass as leader is the convergence signal; without, the
    // controller's synced cache is.
    let controller_readiness = (!cc.pod_controller).then(|| shared.readiness.clone());
    children.push(task_child("spiffeid_controller", Duration::from_secs(20), move |shutdown| {
        let (ctx, readiness) = (ctx.clone(), controller_readiness.clone());
        async move {
            controller::run(ctx, shutdown, readiness).await;
            Ok(())
        }
    }));

    if let (true, Some(own_namespace)) = (cc.pod_controller, own_ns) {
        let rules = rules(cfg, cc);
        let sctx = Arc::new(sync::SyncCtx {
            client: shared.client.clone(),
            rules,
            own_namespace,
            add_svc_dns_name: cc.add_svc_dns_name,
            leadership: shared.leadership.clone(),
            events: EventSink::new(shared.client.clone(), "k8s-workload-registrar"),
            resync_interval: cc.resync_interval,
            readiness: shared.readiness.clone(),
        });
        children.push(task_child("spiffeid_projector", Duration::from_secs(10), move |shutdown| {
            let sctx = sctx.clone();
            async move {
                sync::run(sctx, shutdown).await;
                Ok(())
            }
        }));
    }

    if cc.webhook_enabled {
        // The port is taken before anything is written anywhere (the files were checked).
        let files = webhook_files(cc);
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], cc.webhook_port));
        let listener = Arc::new(server::bind(addr).await?.into_std().map_err(Error::Listen)?);
        let router = handler::router_at(handler::SPIFFEID_PATH, admission::admit(policy));
        tracing::info!(%addr, path = handler::SPIFFEID_PATH, "Serving the SpiffeID validating webhook.");
        children.push(task_child("spiffeid_webhook", server::DRAIN_TIMEOUT, move |shutdown| {
            let (listener, files, router) = (listener.clone(), files.clone(), router.clone());
            async move {
                let listener = clone_listener(&listener)?;
                server::serve(listener, files, router, shutdown).await.map_err(|e| e.to_string())
            }
        }));
    }
    Ok(ModeTree { children, fault_route: |_| None })
}
