//! Who may write to SPIRE right now. The `Leader` actor publishes a [`Leadership`] on a
//! `tokio::sync::watch` channel; every writer reads it immediately before each SPIRE write
//! (fencing), so a deposed leader's queued writes are refused at once.
//!
//! Without leader election the registrar is always leading with epoch 1.

/// The current leadership state of this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// True while this replica holds the lock (and its lease has not expired locally).
    pub leading: bool,
    /// Incremented on every transition to leading; writes computed under an older epoch are
    /// refused even if this replica leads again by the time they run.
    pub epoch: u64,
}

pub type LeadershipTx = tokio::sync::watch::Sender<Leadership>;
pub type LeadershipRx = tokio::sync::watch::Receiver<Leadership>;

/// A channel for a registrar without leader election: leading from the start.
pub fn always_leading() -> (LeadershipTx, LeadershipRx) {
    tokio::sync::watch::channel(Leadership { leading: true, epoch: 1 })
}
