//! Process-wide progress of the writers, for two gauges no single one can set:
//! `registrar_owned_entries{kind}` (the entries this replica manages, by `node`, `cluster`,
//! `pod`) and `registrar_last_converged_timestamp_seconds` (the last time a scope finished a
//! pass while every scope's last pass had succeeded: with periodic resyncs it keeps advancing
//! while everything is in order, and stops when some scope keeps failing).
//!
//! Owns: one [`Progress`] behind a mutex, keyed by scope: a shard's (node name, or webhook
//! mode's cluster shard) or, in crd mode, one per SpiffeID (`spiffeid:<uid>`, holding its one
//! entry). Receives: [`report`] after each sync or reconcile, [`fail`] when one failed, and
//! [`forget`] when a shard stops or a SpiffeID is gone or no longer ours to write. Messages:
//! nobody; it sets gauges. A restarted shard reports under the same scope, so nothing is counted
//! twice. Followers report nothing owned: only the leader manages entries.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

/// Entries of one shard, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owned {
    /// Node-alias entries (parent: the server).
    pub node: u64,
    /// Webhook mode's cluster entry.
    pub cluster: u64,
    /// Pod entries.
    pub pod: u64,
}

impl Owned {
    pub const KINDS: [&str; 3] = ["node", "cluster", "pod"];

    fn values(self) -> [u64; 3] {
        [self.node, self.cluster, self.pod]
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Scope {
    owned: Owned,
    converged: bool,
}

/// The pure core: what every scope last reported, with running totals so that a report costs
/// O(log scopes) — crd mode reports once per SpiffeID reconcile, with a scope per SpiffeID.
#[derive(Debug, Default)]
pub struct Progress {
    scopes: BTreeMap<String, Scope>,
    totals: Owned,
    /// Scopes whose last report was not converged.
    failing: usize,
}

impl Progress {
    /// Records `scope`'s latest report; returns the totals over all scopes and whether every
    /// scope's last report was converged.
    pub fn report(&mut self, scope: &str, owned: Owned, converged: bool) -> (Owned, bool) {
        let new = Scope { owned, converged };
        let old = match self.scopes.get_mut(scope) {
            Some(s) => Some(std::mem::replace(s, new)),
            None => {
                self.scopes.insert(scope.to_string(), new);
                None
            }
        };
        if let Some(old) = old {
            self.remove(old);
        }
        self.add(new);
        self.totals()
    }

    /// `scope` failed: what it last held is still the best count, but it is not converged.
    pub fn fail(&mut self, scope: &str) -> (Owned, bool) {
        let owned = self.scopes.get(scope).map(|s| s.owned).unwrap_or_default();
        self.report(scope, owned, false)
    }

    /// Drops a stopped scope; returns the new totals.
    pub fn forget(&mut self, scope: &str) -> (Owned, bool) {
        if let Some(old) = self.scopes.remove(scope) {
            self.remove(old);
        }
        self.totals()
    }

    fn add(&mut self, s: Scope) {
        self.totals.node += s.owned.node;
        self.totals.cluster += s.owned.cluster;
        self.totals.pod += s.owned.pod;
        self.failing += usize::from(!s.converged);
    }

    fn remove(&mut self, s: Scope) {
        self.totals.node -= s.owned.node;
        self.totals.cluster -= s.owned.cluster;
        self.totals.pod -= s.owned.pod;
        self.failing -= usize::from(!s.converged);
    }

    fn totals(&self) -> (Owned, bool) {
        (self.totals, self.failing == 0)
    }
}

fn global() -> MutexGuard<'static, Progress> {
    static PROGRESS: Mutex<Progress> = Mutex::new(Progress {
        scopes: BTreeMap::new(),
        totals: Owned { node: 0, cluster: 0, pod: 0 },
        failing: 0,
    });
    PROGRESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn publish((owned, all_converged): (Owned, bool), finished_ok: bool) {
    for (kind, value) in Owned::KINDS.into_iter().zip(owned.values()) {
        metrics::gauge!("registrar_owned_entries", "kind" => kind).set(value as f64);
    }
    if finished_ok && all_converged {
        let now = crate::metrics::now_unix_ms() as f64 / 1000.0;
        metrics::gauge!("registrar_last_converged_timestamp_seconds").set(now);
    }
}

/// A shard finished a sync (`converged`: it succeeded and nothing is left to write) holding
/// `owned` entries.
pub fn report(scope: &str, owned: Owned, converged: bool) {
    let totals = global().report(scope, owned, converged);
    publish(totals, converged);
}

/// A scope failed; it keeps its last count (see [`Progress::fail`]).
pub fn fail(scope: &str) {
    let totals = global().fail(scope);
    publish(totals, false);
}

/// A shard stopped (its node is gone): its entries are no longer this replica's.
pub fn forget(scope: &str) {
    let totals = global().forget(scope);
    publish(totals, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_over_scopes_and_a_restarted_shard_replaces_its_report() {
        let mut p = Progress::default();
        let one = Owned { node: 1, cluster: 0, pod: 3 };
        assert_eq!(p.report("n1", one, true), (one, true));
        let (t, all) = p.report("n2", Owned { node: 1, cluster: 0, pod: 2 }, true);
        assert_eq!((t.node, t.pod, all), (2, 5, true));
        // n1 restarted and reports again: replaced, not added.
        let (t, _) = p.report("n1", one, true);
        assert_eq!((t.node, t.pod), (2, 5));
        // n2 fails: not every scope converged.
        let (t, all) = p.report("n2", Owned { node: 1, cluster: 0, pod: 2 }, false);
        assert_eq!((t.pod, all), (5, false));
        let (t, all) = p.forget("n2");
        assert_eq!((t, all), (one, true));
        // A failure keeps the count; the next success clears it.
        assert_eq!(p.fail("n1"), (one, false));
        assert_eq!(p.report("n1", one, true), (one, true));
        // Unknown scopes: forgetting is a no-op, failing counts as failing with nothing held.
        assert_eq!(p.forget("n9"), (one, true));
        assert_eq!(p.fail("n9"), (one, false));
        assert_eq!(p.forget("n9"), (one, true));
    }
}
