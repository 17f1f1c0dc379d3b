//! `Task`: hosts one long-running future — an HTTPS server, a kube-runtime `Controller`, a watch
//! loop — as a supervised child, so it is restarted like any other actor.
//!
//! * Owns: the running future (made by its factory on every start) and its shutdown signal.
//! * Receives: `Ended` from its own future; `Fail` (fault injection).
//! * Messages: nobody.
//!
//! # Guarantees
//! * A future that ends on its own (returns, errors or panics) makes the actor fail, so its
//!   supervisor restarts it with a fresh future (one-for-one).
//! * Stopping the actor signals the future's shutdown and waits up to `drain` for it to finish
//!   (servers drain connections, controllers finish the reconcile in flight), then aborts it.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::{sync::oneshot, task::JoinHandle};

/// Resolves when the hosted future should stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;
/// Makes the hosted future; called on every (re)start.
pub type TaskFactory =
    Arc<dyn Fn(Shutdown) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
pub struct TaskArgs {
    pub name: &'static str,
    pub factory: TaskFactory,
    pub drain: Duration,
}

impl TaskArgs {
    pub fn new<F, Fut>(name: &'static str, drain: Duration, factory: F) -> Self
    where
        F: Fn(Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self { name, drain, factory: Arc::new(move |shutdown| Box::pin(factory(shutdown))) }
    }
}

pub enum TaskMsg {
    /// The hosted future finished (it should not have): the actor fails.
    Ended(Result<(), String>),
    /// Test-only fault injection: the actor fails and is restarted.
    #[cfg(feature = "fault-injection")]
    Fail,
}

pub struct Task;

/// Aborts the task when dropped: a helper task that lives exactly as long as its owner.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct TaskState {
    name: &'static str,
    drain: Duration,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Actor for Task {
    type Msg = TaskMsg;
    type State = TaskState;
    type Arguments = TaskArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TaskMsg>,
        args: TaskArgs,
    ) -> Result<TaskState, ActorProcessingErr> {
        let (stop, stopped) = oneshot::channel::<()>();
        let future = (args.factory)(Box::pin(async {
            let _ = stopped.await;
        }));
        let handle = tokio::spawn(async move {
            // A panic ends the future as well: report it instead of vanishing.
            let result = match tokio::spawn(future).await {
                Ok(r) => r,
                Err(e) => Err(format!("panicked: {e}")),
            };
            let _ = myself.cast(TaskMsg::Ended(result));
        });
        Ok(TaskState { name: args.name, drain: args.drain, stop: Some(stop), handle: Some(handle) })
    }

    async fn post_stop(&self, _: ActorRef<TaskMsg>, state: &mut TaskState) -> Result<(), ActorProcessingErr> {
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut handle) = state.handle.take()
            && tokio::time::timeout(state.drain, &mut handle).await.is_err()
        {
            tracing::warn!(task = state.name, "Did not stop within its drain time; aborted.");
            handle.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<TaskMsg>,
        msg: TaskMsg,
        state: &mut TaskState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TaskMsg::Ended(result) => {
                // The future is done; nothing to signal or wait for.
                state.stop = None;
                state.handle = None;
                Err(format!(
                    "{} ended unexpectedly: {}",
                    state.name,
                    result.err().unwrap_or_else(|| "returned".into())
                )
                .into())
            }
            #[cfg(feature = "fault-injection")]
            TaskMsg::Fail => Err(format!("fault injected into {}", state.name).into()),
        }
    }
}
