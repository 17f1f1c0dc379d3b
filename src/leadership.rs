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

/// When the writes of every earlier leader are over at the SPIRE server: this replica has led in
/// an epoch for `settle` (the write budget, `lease_duration − renew_deadline`, plus a margin).
///
/// Why it is enough: a write RPC carries a deadline of at most the write budget, and gRPC
/// servers cancel a call once its deadline passes, so every write the server had received by our
/// promotion is committed or dead `settle` later. A leader that re-reads its entries at that
/// moment sees them all and repairs what it must. (A write the server receives only later, e.g.
/// one buffered while the server was frozen, is bounded the same way from its receipt and left
/// to the periodic anti-entropy pass.)
///
/// Yields each epoch at most once, only if this replica still leads in it by then; ends when the
/// Leader's channel closes.
pub fn settled_epochs(
    rx: LeadershipRx,
    settle: std::time::Duration,
) -> impl futures::Stream<Item = u64> + Send + 'static {
    futures::stream::unfold((rx, 0u64), move |(mut rx, last)| async move {
        loop {
            let now = *rx.borrow_and_update();
            if now.leading && now.epoch > last {
                let deadline = tokio::time::sleep(settle);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => {
                            let then = *rx.borrow();
                            if then.leading && then.epoch == now.epoch {
                                return Some((now.epoch, (rx, now.epoch)));
                            }
                            break;
                        }
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                            let then = *rx.borrow_and_update();
                            if !(then.leading && then.epoch == now.epoch) {
                                break; // deposed, or promoted again: start over for the new epoch
                            }
                        }
                    }
                }
                continue;
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    const SETTLE: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn an_epoch_settles_after_the_write_budget_once() {
        let (tx, rx) = tokio::sync::watch::channel(Leadership { leading: false, epoch: 0 });
        let mut settled = Box::pin(settled_epochs(rx, SETTLE));
        let start = tokio::time::Instant::now();
        tx.send(Leadership { leading: true, epoch: 1 }).unwrap();
        assert_eq!(settled.next().await, Some(1));
        assert!(start.elapsed() >= SETTLE, "settled early: {:?}", start.elapsed());
        // An unrelated republish of the same state yields nothing more.
        tx.send(Leadership { leading: true, epoch: 1 }).unwrap();
        assert!(tokio::time::timeout(SETTLE * 3, settled.next()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_or_replaced_epoch_never_settles() {
        let (tx, rx) = tokio::sync::watch::channel(Leadership { leading: true, epoch: 1 });
        let mut settled = Box::pin(settled_epochs(rx, SETTLE));
        let task = tokio::spawn(async move { settled.next().await });
        tokio::time::sleep(SETTLE / 2).await;
        tx.send(Leadership { leading: false, epoch: 1 }).unwrap();
        tokio::time::sleep(SETTLE / 2).await;
        tx.send(Leadership { leading: true, epoch: 2 }).unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(task.await.unwrap(), Some(2), "epoch 1 was lost; only epoch 2 settles");
        assert!(start.elapsed() >= SETTLE);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_with_the_leader() {
        let (tx, rx) = tokio::sync::watch::channel(Leadership { leading: false, epoch: 0 });
        let mut settled = Box::pin(settled_epochs(rx, SETTLE));
        drop(tx);
        assert_eq!(settled.next().await, None);
    }
}
