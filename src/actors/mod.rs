//! The supervised actor system (ractor). See `README.md` § Architecture for the tree.
//!
//! * [`registrar`]: root supervisor and router (one-for-one restarts with a budget);
//! * [`watcher`]: one per watched kind, feeds the shared cluster cache;
//! * [`shard`]: one per node, owns that node's entries;
//! * [`spire_pool`]: SPIRE client workers, fenced by leadership;
//! * [`leader`]: leader election.

pub mod leader;
pub mod registrar;
pub mod shard;
pub mod spire_pool;
pub mod watcher;
pub mod webhook_root;

use std::sync::{Arc, RwLock};

use ractor::ActorRef;

/// A late-bound reference to the SPIRE pool: the registrar swaps in the new pool when it
/// restarts a failed one, and every shard sees it on its next call.
#[derive(Clone)]
pub struct PoolHandle(Arc<RwLock<ActorRef<spire_pool::PoolMsg>>>);

impl PoolHandle {
    pub fn new(pool: ActorRef<spire_pool::PoolMsg>) -> Self {
        Self(Arc::new(RwLock::new(pool)))
    }

    pub fn get(&self) -> ActorRef<spire_pool::PoolMsg> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, pool: ActorRef<spire_pool::PoolMsg>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = pool;
    }
}
