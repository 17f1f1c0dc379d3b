//! The supervised actor system (ractor). See `README.md` § Architecture for the tree.
//!
//! * [`registrar`]: root supervisor and router (one-for-one restarts with a budget);
//! * [`watcher`]: one per watched kind, feeds the shared cluster cache;
//! * [`shard`]: one per node, owns that node's entries;
//! * [`spire_pool`]: SPIRE client workers, fenced by leadership;
//! * [`leader`]: leader election;
//! * [`root`]: the supervision-only root built from child specs (crd mode);
//! * [`task`]: hosts a long-running future (server, controller) as a supervised child.

pub mod leader;
pub mod registrar;
pub mod root;
pub mod shard;
pub mod spire_pool;
pub mod task;
pub mod watcher;

use std::{
    collections::VecDeque,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use ractor::ActorRef;

use crate::{model, spire};

/// How long a caller waits for a pool answer, time in the queue included. Not a tuning knob:
/// each caller has at most one request queued, so the queues' depth bounds the wait, and every
/// RPC has its own deadline (`spire::client`); this only ends a wait on a pool that stopped
/// answering altogether. A shorter bound would make callers give up on requests that are merely
/// queued behind a large start-up, and queue them again at the back.
pub const POOL_WAIT: Duration = Duration::from_secs(600);

/// How many shards may have writes computed and waiting in (or running on) the pool at once.
/// Enough queued callers for the pool to fill its combined writes (`spire_pool::COMBINED_MAX`,
/// ten nodes' worth) on every worker with the next ones ready; few enough that a start-up at
/// 100k pods holds a few thousand pending ops, not every desired entry at once (the ops of
/// 2,000 nodes waiting together were the largest part of peak memory).
pub const WRITERS: usize = 64;

/// A late-bound reference to the SPIRE pool: the pool's supervisor swaps in the new pool when
/// it restarts a failed one, and every caller sees it on its next call. Unset until the pool has
/// started (callers then get "unavailable", like during a pool restart). Also the shards' write
/// admission ([`PoolHandle::admit`]), which outlives pool restarts.
#[derive(Clone)]
pub struct PoolHandle {
    pool: Arc<RwLock<Option<ActorRef<spire_pool::PoolMsg>>>>,
    writers: Arc<tokio::sync::Semaphore>,
}

impl Default for PoolHandle {
    fn default() -> Self {
        Self { pool: Default::default(), writers: Arc::new(tokio::sync::Semaphore::new(WRITERS)) }
    }
}

/// A shard's turn to write (see [`PoolHandle::admit`]); the turn ends when this is dropped.
pub struct WriteTurn(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// Why a call to the pool produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error("SPIRE pool unavailable: {0}")]
    Unavailable(String),
    #[error("SPIRE pool did not answer in time")]
    Timeout,
}

impl PoolHandle {
    pub fn new(pool: ActorRef<spire_pool::PoolMsg>) -> Self {
        let handle = Self::default();
        handle.set(pool);
        handle
    }

    /// A turn to write now, if one of the [`WRITERS`] turns is free.
    pub fn try_admit(&self) -> Option<WriteTurn> {
        self.writers.clone().try_acquire_owned().ok().map(WriteTurn)
    }

    /// Waits (first come, first served) for a turn to write. A caller that waited should compute
    /// its writes afresh: the cluster may have changed meanwhile.
    pub async fn admit(&self) -> WriteTurn {
        // The semaphore is never closed.
        WriteTurn(self.writers.clone().acquire_owned().await.expect("write admission is never closed"))
    }

    pub fn get(&self) -> Option<ActorRef<spire_pool::PoolMsg>> {
        self.pool.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, pool: ActorRef<spire_pool::PoolMsg>) {
        *self.pool.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    }

    /// The entries matching `filter` (paged by the worker), or why there is no answer.
    pub async fn list(
        &self,
        filter: spire::ListFilter,
        timeout: Duration,
    ) -> Result<Vec<model::Entry>, String> {
        self.call(|reply| spire_pool::PoolMsg::List(filter, reply), timeout)
            .await
            .map_err(|e| e.to_string())?
    }

    /// Every owned entry in SPIRE as a digest, by the scope `scope_of` names (anti-entropy).
    pub async fn survey(
        &self,
        scope_of: spire_pool::ScopeOf,
        timeout: Duration,
    ) -> Result<spire_pool::Survey, String> {
        self.call(|reply| spire_pool::PoolMsg::Survey(scope_of, reply), timeout)
            .await
            .map_err(|e| e.to_string())?
    }

    /// Calls the current pool and waits up to `timeout` for its answer.
    pub async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<T>) -> spire_pool::PoolMsg,
        timeout: Duration,
    ) -> Result<T, PoolError> {
        let pool = self.get().ok_or_else(|| PoolError::Unavailable("not started".into()))?;
        match pool.call(msg, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            Ok(ractor::rpc::CallResult::Timeout) => Err(PoolError::Timeout),
            Ok(ractor::rpc::CallResult::SenderError) => Err(PoolError::Unavailable("request dropped".into())),
            Err(e) => Err(PoolError::Unavailable(e.to_string())),
        }
    }
}

/// Erlang-style restart intensity for a supervisor: at most `max` restarts within `window`.
/// Beyond that the supervisor fails (escalates), and the process exits non-zero so Kubernetes
/// restarts the pod — restarting forever would hide a crash loop behind a live process.
pub struct RestartBudget {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// The budget both root supervisors use: 30 restarts per minute.
    pub fn standard() -> Self {
        Self { max: 30, window: Duration::from_secs(60), recent: VecDeque::new() }
    }

    /// Records one restart; `Err` once the budget is exhausted.
    pub fn spend(&mut self, why: &str) -> Result<(), BudgetExhausted> {
        let now = Instant::now();
        self.recent.push_back(now);
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.recent.pop_front();
        }
        if self.recent.len() > self.max {
            Err(BudgetExhausted { max: self.max, window: self.window, last: why.to_string() })
        } else {
            Ok(())
        }
    }
}

/// A supervisor gave up. Its own supervisor escalates at once rather than restarting it (a
/// crash loop below must end the process, not be multiplied by every level of the tree).
#[derive(Debug, thiserror::Error)]
#[error("restart budget exhausted ({max} in {window:?}); last: {last}")]
pub struct BudgetExhausted {
    pub max: usize,
    pub window: Duration,
    pub last: String,
}

#[cfg(test)]
mod tests {
    use super::{PoolHandle, RestartBudget, WRITERS};

    #[tokio::test]
    async fn write_turns_are_bounded_shared_and_handed_on() {
        let pool = PoolHandle::default();
        let clone = pool.clone();
        let turns: Vec<_> = (0..WRITERS).map(|_| clone.try_admit().expect("a free turn")).collect();
        assert!(pool.try_admit().is_none(), "clones share the {WRITERS} turns");
        let (first, second) = (
            tokio::spawn({
                let p = pool.clone();
                async move { p.admit().await }
            }),
            tokio::spawn({
                let p = pool.clone();
                async move { p.admit().await }
            }),
        );
        tokio::task::yield_now().await;
        assert!(!first.is_finished() && !second.is_finished(), "waiters wait while every turn is taken");
        drop(turns);
        let (a, b) = (first.await.unwrap(), second.await.unwrap());
        assert!(pool.try_admit().is_some(), "a turn comes back when dropped");
        drop((a, b));
    }

    #[test]
    fn the_budget_allows_max_restarts_then_escalates() {
        let mut b = RestartBudget::standard();
        for _ in 0..30 {
            assert!(b.spend("boom").is_ok());
        }
        let err = b.spend("boom").unwrap_err().to_string();
        assert!(err.contains("restart budget exhausted") && err.contains("boom"), "{err}");
    }
}
