//! `Root`: a supervision-only root. It knows its children only as [`ChildSpec`]s (a name, how to
//! start it, and optional stop and fault-injection hooks), so one root serves every mode that is
//! built from it (crd mode today; see the README's architecture section for the rest).
//!
//! * Owns: its children, started in list order, and the restart budget.
//! * Receives: `Shutdown` and (`fault-injection` builds) `Inject`.
//! * Messages: its children only through their spec's hooks.
//!
//! # Guarantees
//! * One-for-one: a child that fails (error, panic, or an unplanned stop) is restarted alone
//!   from its spec; the others keep running. More than [`RestartBudget::standard`] restarts
//!   within its window make the root fail, and the process exits non-zero; so does a child
//!   supervisor that exhausted its own budget ([`BudgetExhausted`] is escalated, not restarted).
//! * Ordered shutdown: children stop in reverse start order, each after its `before_stop` hook
//!   (the Leader's releases the lock), so sources and servers stop before the writers they feed,
//!   and the SPIRE pool (started first) stops last.
//! * No handler awaits anything long except shutdown: restarts are spawns, hooks are bounded by
//!   their own timeouts.

use std::{future::Future, pin::Pin, sync::Arc};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};

use super::{BudgetExhausted, RestartBudget};

/// Names of the children a tree was built with that accept fault injection.
pub fn fault_targets(specs: &[ChildSpec]) -> Vec<&'static str> {
    specs.iter().filter(|s| s.fail.is_some()).map(|s| s.name).collect()
}

/// A boxed future, as the hooks return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Starts the child linked to the supervisor cell it is given.
pub type StartFn = Arc<dyn Fn(ActorCell) -> BoxFuture<Result<ActorCell, SpawnErr>> + Send + Sync>;
/// Runs against the child's current cell.
pub type HookFn = Arc<dyn Fn(ActorCell) -> BoxFuture<()> + Send + Sync>;
/// Fault injection into the child's current cell, with the target's argument (`worker:1`, ...).
pub type FailFn = Arc<dyn Fn(ActorCell, String) -> BoxFuture<()> + Send + Sync>;

/// How the root starts, stops and (in tests) fails one child.
#[derive(Clone)]
pub struct ChildSpec {
    /// A bounded name: the `actor` label of `registrar_actor_restarts_total` and the
    /// fault-injection target.
    pub name: &'static str,
    pub start: StartFn,
    pub before_stop: Option<HookFn>,
    pub fail: Option<FailFn>,
}

impl ChildSpec {
    /// A child started by `start(supervisor)`.
    pub fn new<F, Fut>(name: &'static str, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self { name, start: Arc::new(move |sup| Box::pin(start(sup))), before_stop: None, fail: None }
    }

    /// Adds a hook run before the child is stopped on shutdown.
    pub fn before_stop<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.before_stop = Some(Arc::new(move |cell| Box::pin(hook(cell))));
        self
    }

    /// Adds the fault-injection hook (`POST /debug/fail/<target>`; see `app`).
    pub fn fail<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ActorCell, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.fail = Some(Arc::new(move |cell, arg| Box::pin(hook(cell, arg))));
        self
    }
}

pub enum RootMsg {
    /// Stops every child in reverse start order (after its `before_stop` hook), then replies.
    Shutdown(RpcReplyPort<()>),
    /// Fault injection into the child named `child` (its `fail` hook, given `arg`).
    #[cfg(feature = "fault-injection")]
    Inject { child: String, arg: String },
}

pub struct Root;

pub struct RootState {
    /// In start order, with the current cell of each (`None` once stopped on purpose).
    children: Vec<(ChildSpec, Option<ActorCell>)>,
    restarts: RestartBudget,
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Vec<ChildSpec>;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        specs: Vec<ChildSpec>,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut children = Vec::with_capacity(specs.len());
        for spec in specs {
            crate::metrics::restartable(spec.name);
            let cell = (spec.start)(myself.get_cell()).await?;
            children.push((spec, Some(cell)));
        }
        Ok(RootState { children, restarts: RestartBudget::standard() })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Shutdown(reply) => {
                for (spec, cell) in state.children.iter_mut().rev() {
                    // Taken first, so the stop is not mistaken for a failure.
                    let Some(cell) = cell.take() else { continue };
                    if let Some(hook) = &spec.before_stop {
                        hook(cell.clone()).await;
                    }
                    cell.stop_and_wait(Some("shutdown".into()), Some(std::time::Duration::from_secs(20)))
                        .await
                        .ok();
                }
                let _ = reply.send(());
            }
            #[cfg(feature = "fault-injection")]
            RootMsg::Inject { child, arg } => {
                let target = state.children.iter().find(|(spec, _)| spec.name == child);
                if let Some((spec, Some(cell))) = target
                    && let Some(hook) = &spec.fail
                {
                    tracing::warn!(actor = child, arg, "Injecting a fault (test hook).");
                    hook(cell.clone(), arg).await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (dead, why) = match evt {
            // A child supervisor that gave up: escalate (see `BudgetExhausted`).
            SupervisionEvent::ActorFailed(_, err) if err.downcast_ref::<BudgetExhausted>().is_some() => {
                return Err(err);
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_string()))
            }
            _ => return Ok(()),
        };
        let Some((spec, slot)) = state
            .children
            .iter_mut()
            .find(|(_, cell)| cell.as_ref().is_some_and(|c| c.get_id() == dead.get_id()))
        else {
            return Ok(()); // stopped on purpose, or not ours
        };
        metrics::counter!("registrar_actor_restarts_total", "actor" => spec.name).increment(1);
        tracing::warn!(actor = spec.name, error = %why, "Actor stopped; restarting it.");
        state.restarts.spend(&why)?;
        *slot = Some((spec.start)(myself.get_cell()).await?);
        Ok(())
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    /// A child that fails on any message and counts its starts and stops.
    struct Probe;

    struct ProbeArgs {
        starts: Arc<AtomicUsize>,
        stops: Arc<std::sync::Mutex<Vec<&'static str>>>,
        name: &'static str,
    }

    impl Actor for Probe {
        type Msg = ();
        type State = ProbeArgs;
        type Arguments = ProbeArgs;

        async fn pre_start(&self, _: ActorRef<()>, args: ProbeArgs) -> Result<ProbeArgs, ActorProcessingErr> {
            args.starts.fetch_add(1, Ordering::SeqCst);
            Ok(args)
        }

        async fn post_stop(&self, _: ActorRef<()>, state: &mut ProbeArgs) -> Result<(), ActorProcessingErr> {
            state.stops.lock().unwrap().push(state.name);
            Ok(())
        }

        async fn handle(&self, _: ActorRef<()>, _: (), _: &mut ProbeArgs) -> Result<(), ActorProcessingErr> {
            Err("probe fails on request".into())
        }
    }

    fn probe(
        name: &'static str,
        starts: Arc<AtomicUsize>,
        stops: Arc<std::sync::Mutex<Vec<&'static str>>>,
    ) -> ChildSpec {
        ChildSpec::new(name, move |sup| {
            let args = ProbeArgs { starts: starts.clone(), stops: stops.clone(), name };
            async move { Ok(Actor::spawn_linked(None, Probe, args, sup).await?.0.get_cell()) }
        })
        .fail(|cell, _| async move {
            let _ = cell.send_message::<()>(());
        })
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn a_failed_child_is_restarted_alone_and_shutdown_runs_in_reverse_order() {
        let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stops = Arc::new(std::sync::Mutex::new(Vec::new()));
        let specs = vec![probe("first", a.clone(), stops.clone()), probe("second", b.clone(), stops.clone())];
        let (root, done) = Actor::spawn(None, Root, specs).await.unwrap();
        assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (1, 1));

        root.cast(RootMsg::Inject { child: "second".into(), arg: String::new() }).unwrap();
        until("second restarted", || b.load(Ordering::SeqCst) == 2).await;
        assert_eq!(a.load(Ordering::SeqCst), 1, "the other child is untouched");

        stops.lock().unwrap().clear();
        root.call(RootMsg::Shutdown, None).await.unwrap();
        assert_eq!(*stops.lock().unwrap(), ["second", "first"]);
        root.stop(None);
        done.await.unwrap();
        assert_eq!(b.load(Ordering::SeqCst), 2, "a planned stop is not restarted");
    }
}
