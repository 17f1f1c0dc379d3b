//! What `/readyz` means, the same in every mode: this replica's caches have synced and, while it
//! leads, its first convergence pass for the current epoch has been done; and neither SPIRE nor
//! the API server has been failing for longer than [`UNREACHABLE_AFTER`].
//!
//! * Owns: the flags the modes set ([`Readiness::set_synced`], [`Readiness::set_converged`]) and
//!   the outage clocks the SPIRE client and the watchers feed ([`Reachability`]).
//! * Pure decision: [`decide`]; the state is shared atomics so every writer is lock-free.
//!
//! A follower does not talk to SPIRE, so only the API server's reachability counts for it; an
//! outage is noticed by the next call that fails (resyncs call SPIRE every `resync_interval`).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::leadership::{Leadership, LeadershipRx};

/// How long calls may fail in a row before the replica reports itself unready.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(15);

/// When a dependency started failing (no success since); `None` while it answers.
#[derive(Clone, Default)]
pub struct Reachability(Arc<Mutex<Option<Instant>>>);

impl Reachability {
    pub fn ok(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn failed(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
    }

    /// Records the outcome of one call.
    pub fn observe<T, E>(&self, outcome: &Result<T, E>) {
        match outcome {
            Ok(_) => self.ok(),
            Err(_) => self.failed(),
        }
    }

    /// How long it has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).map(|since| since.elapsed())
    }
}

/// The readiness state of one replica.
#[derive(Clone)]
pub struct Readiness {
    synced: Arc<AtomicBool>,
    /// The epoch whose first convergence pass is done (0: none).
    converged: Arc<AtomicU64>,
    leadership: LeadershipRx,
    pub spire: Reachability,
    pub kube: Reachability,
}

/// The inputs of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub synced: bool,
    pub leadership: Leadership,
    pub converged_epoch: u64,
    pub spire_failing_for: Option<Duration>,
    pub kube_failing_for: Option<Duration>,
}

/// `Ok` when ready, else why not (the body of the 503).
pub fn decide(f: &Facts) -> Result<(), &'static str> {
    let down = |d: Option<Duration>| d.is_some_and(|d| d >= UNREACHABLE_AFTER);
    if !f.synced {
        return Err("caches not synced");
    }
    if down(f.kube_failing_for) {
        return Err("Kubernetes API server unreachable");
    }
    if f.leadership.leading {
        if f.converged_epoch != f.leadership.epoch {
            return Err("leading; first convergence pass not done");
        }
        if down(f.spire_failing_for) {
            return Err("SPIRE server unreachable");
        }
    }
    Ok(())
}

impl Readiness {
    pub fn new(leadership: LeadershipRx, spire: Reachability) -> Self {
        Self {
            synced: Arc::default(),
            converged: Arc::default(),
            leadership,
            spire,
            kube: Reachability::default(),
        }
    }

    /// The mode's caches (watchers, reflectors) have listed once.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// The first convergence pass as leader in `epoch` is done.
    pub fn set_converged(&self, epoch: u64) {
        self.converged.store(epoch, Ordering::SeqCst);
    }

    pub fn facts(&self) -> Facts {
        Facts {
            synced: self.synced.load(Ordering::SeqCst),
            leadership: *self.leadership.borrow(),
            converged_epoch: self.converged.load(Ordering::SeqCst),
            spire_failing_for: self.spire.failing_for(),
            kube_failing_for: self.kube.failing_for(),
        }
    }

    pub fn check(&self) -> Result<(), &'static str> {
        decide(&self.facts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            synced: true,
            leadership: Leadership { leading: true, epoch: 3 },
            converged_epoch: 3,
            spire_failing_for: None,
            kube_failing_for: None,
        }
    }

    #[test]
    fn table() {
        type Edit = fn(&mut Facts);
        let cases: Vec<(&str, Edit, Result<(), &str>)> = vec![
            ("leader, converged, all answering", |_| {}, Ok(())),
            ("not synced", |f| f.synced = false, Err("caches not synced")),
            (
                "promoted, first pass pending",
                |f| f.converged_epoch = 2,
                Err("leading; first convergence pass not done"),
            ),
            ("SPIRE failing briefly", |f| f.spire_failing_for = Some(UNREACHABLE_AFTER / 2), Ok(())),
            (
                "SPIRE down",
                |f| f.spire_failing_for = Some(UNREACHABLE_AFTER),
                Err("SPIRE server unreachable"),
            ),
            (
                "API server down",
                |f| f.kube_failing_for = Some(UNREACHABLE_AFTER),
                Err("Kubernetes API server unreachable"),
            ),
            (
                "follower, SPIRE down",
                |f| {
                    f.leadership = Leadership { leading: false, epoch: 3 };
                    f.spire_failing_for = Some(UNREACHABLE_AFTER);
                    f.converged_epoch = 0;
                },
                Ok(()),
            ),
        ];
        for (what, edit, want) in cases {
            let mut f = facts();
            edit(&mut f);
            assert_eq!(decide(&f), want, "{what}");
        }
    }

    #[test]
    fn reachability_remembers_when_the_failures_began() {
        let r = Reachability::default();
        assert_eq!(r.failing_for(), None);
        r.failed();
        let first = r.failing_for().unwrap();
        r.failed();
        assert!(r.failing_for().unwrap() >= first, "a second failure does not restart the clock");
        r.ok();
        assert_eq!(r.failing_for(), None);
    }
}
