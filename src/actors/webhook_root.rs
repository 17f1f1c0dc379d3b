//! `WebhookRoot`: the root supervisor of webhook mode. Its children are the `Leader` (when a
//! namespace for the lock is known) and the reconcile `Backstop`; the admission handler itself
//! runs on the HTTP server and needs no actor.
//!
//! One-for-one restarts with the same budget as the reconcile-mode registrar: more than
//! [`RestartBudget::standard`] restarts within its window fail this actor, and the process exits
//! non-zero.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, rpc::CallResult};

use super::{
    RestartBudget,
    leader::{Leader, LeaderArgs, LeaderMsg},
};
use crate::webhook::backstop::{Backstop, BackstopArgs, BackstopMsg};

pub enum WebhookRootMsg {
    /// Test-only fault injection: `"backstop"` or `"leader"`.
    Inject(String),
    /// Graceful shutdown: release the lock, stop the children, reply.
    Shutdown(RpcReplyPort<()>),
}

pub struct WebhookRootArgs {
    pub backstop: BackstopArgs,
    pub leader: Option<LeaderArgs>,
}

pub struct WebhookRoot;

pub struct WebhookRootState {
    args: WebhookRootArgs,
    backstop: Option<ActorRef<BackstopMsg>>,
    leader: Option<ActorRef<LeaderMsg>>,
    restarts: RestartBudget,
    stopping: bool,
}

async fn spawn_backstop(
    myself: &ActorRef<WebhookRootMsg>,
    state: &mut WebhookRootState,
) -> Result<(), ActorProcessingErr> {
    let (b, _) = Actor::spawn_linked(None, Backstop, state.args.backstop.clone(), myself.get_cell()).await?;
    state.backstop = Some(b);
    Ok(())
}

async fn spawn_leader(
    myself: &ActorRef<WebhookRootMsg>,
    state: &mut WebhookRootState,
) -> Result<(), ActorProcessingErr> {
    if let Some(args) = &state.args.leader {
        let args =
            LeaderArgs { client: args.client.clone(), config: args.config.clone(), tx: args.tx.clone() };
        let (l, _) = Actor::spawn_linked(None, Leader, args, myself.get_cell()).await?;
        state.leader = Some(l);
    }
    Ok(())
}

impl Actor for WebhookRoot {
    type Msg = WebhookRootMsg;
    type State = WebhookRootState;
    type Arguments = WebhookRootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WebhookRootMsg>,
        args: WebhookRootArgs,
    ) -> Result<WebhookRootState, ActorProcessingErr> {
        let mut state = WebhookRootState {
            args,
            backstop: None,
            leader: None,
            restarts: RestartBudget::standard(),
            stopping: false,
        };
        spawn_leader(&myself, &mut state).await?;
        spawn_backstop(&myself, &mut state).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<WebhookRootMsg>,
        msg: WebhookRootMsg,
        state: &mut WebhookRootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WebhookRootMsg::Inject(target) => match target.as_str() {
                "backstop" => {
                    if let Some(b) = &state.backstop {
                        b.cast(BackstopMsg::Fail)?;
                    }
                }
                "leader" => {
                    if let Some(l) = &state.leader {
                        l.cast(LeaderMsg::Fail)?;
                    }
                }
                other => tracing::warn!(target = other, "Unknown fault target."),
            },
            WebhookRootMsg::Shutdown(reply) => {
                state.stopping = true;
                if let Some(l) = state.leader.take() {
                    let released = l.call(LeaderMsg::Release, Some(Duration::from_secs(5))).await;
                    if !matches!(released, Ok(CallResult::Success(()))) {
                        tracing::warn!("Could not release the leader lock; it expires on its own.");
                    }
                }
                myself.stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10))).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<WebhookRootMsg>,
        evt: SupervisionEvent,
        state: &mut WebhookRootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        state.restarts.spend(&why)?;
        let id = cell.get_id();
        if state.backstop.as_ref().is_some_and(|b| b.get_id() == id) {
            metrics::counter!("registrar_actor_restarts_total", "actor" => "backstop").increment(1);
            tracing::warn!(actor = "backstop", error = %why, "Actor stopped; restarting it.");
            spawn_backstop(&myself, state).await?;
        } else if state.leader.as_ref().is_some_and(|l| l.get_id() == id) {
            metrics::counter!("registrar_actor_restarts_total", "actor" => "leader").increment(1);
            tracing::warn!(actor = "leader", error = %why, "Actor stopped; restarting it.");
            spawn_leader(&myself, state).await?;
        }
        Ok(())
    }
}
