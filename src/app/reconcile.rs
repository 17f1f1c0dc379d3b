//! Reconcile mode's children: the `Registrar` (watchers per kind and one shard per node; see
//! `actors::registrar`). The pool, the Leader and the HTTP endpoint are added by `app::run`.

use std::{sync::Arc, time::Duration};

use ractor::{Actor, ActorRef};

use super::{Error, ModeTree, Shared};
use crate::{
    actors::{
        registrar::{FaultTarget, Registrar, RegistrarArgs, RegistrarMsg},
        root::ChildSpec,
        shard::ShardMode,
    },
    config::{Config, ReconcileConfig},
    identity::Naming,
    k8s::{cache::ClusterCache, events::EventSink},
};

/// Reconcile mode's identity rules, validated (also what `plan` uses).
pub(crate) fn naming(cfg: &Config, rc: &ReconcileConfig) -> Result<Naming, Error> {
    let naming = Naming {
        trust_domain: cfg.trust_domain.clone(),
        cluster: cfg.cluster.clone(),
        controller_name: rc.controller_name.clone(),
        id_source: cfg.id_source.clone(),
        disabled_namespaces: cfg.disabled_namespaces.clone(),
        pod_dns_zone: rc.add_pod_dns_names.then(|| rc.cluster_dns_zone.clone()),
        managed: cfg.managed.clone(),
    };
    naming.validate()?;
    Ok(naming)
}

pub(super) fn tree(cfg: &Config, rc: &ReconcileConfig, shared: &Shared) -> Result<ModeTree, Error> {
    let naming = Arc::new(naming(cfg, rc)?);
    let args = RegistrarArgs {
        mode: ShardMode::PerNode,
        naming,
        client: shared.client.clone(),
        pool: shared.pool.clone(),
        cache: ClusterCache::default(),
        leadership: shared.leadership.clone(),
        watch_slices: rc.add_pod_dns_names,
        resync_interval: rc.resync_interval,
        events: EventSink::new(shared.client.clone(), &rc.controller_name),
        readiness: shared.readiness.clone(),
        settle: shared.settle,
    };
    let registrar = registrar_child(args);
    Ok(ModeTree { children: vec![registrar], fault_route })
}

/// The registrar (shard supervisor) as a child; shared by reconcile and webhook modes.
pub(super) fn registrar_child(args: RegistrarArgs) -> ChildSpec {
    let registrar = ChildSpec::new("registrar", move |sup| {
        let args = args.clone();
        async move { Ok(Actor::spawn_linked(None, Registrar, args, sup).await?.0.get_cell()) }
    })
    .before_stop(|cell| async move {
        // Stops watchers and shards in order before the registrar itself goes.
        let _ = ActorRef::<RegistrarMsg>::from(cell)
            .call(RegistrarMsg::Shutdown, Some(Duration::from_secs(30)))
            .await;
    });
    #[cfg(feature = "fault-injection")]
    let registrar = registrar.fail(|cell, arg| async move {
        if let Some(target) = FaultTarget::parse(&arg) {
            let _ = ActorRef::<RegistrarMsg>::from(cell).cast(RegistrarMsg::Inject(target));
        }
    });
    registrar
}

/// `pods`, `nodes`, `endpointslices`, `shard:<node>` go to the registrar.
pub(super) fn fault_route(target: &str) -> Option<(&'static str, String)> {
    FaultTarget::parse(target).map(|_| ("registrar", target.to_string()))
}
