//! Process-wide progress of the shards, for two gauges no single shard can set:
//! `registrar_owned_entries{kind}` (the entries this replica manages, by `node`, `cluster`,
//! `pod`) and `registrar_last_converged_timestamp_seconds` (the last time a shard finished a sync
//! while every shard's last sync had succeeded: with periodic resyncs it keeps advancing while
//! everything is in order, and stops when some shard keeps failing).
//!
//! Owns: one [`Progress`] behind a mutex, keyed by shard scope (node name, or webhook mode's
//! cluster shard). Receives: [`report`] from shards after each sync (and [`forget`] when a shard
//! stops). Messages: nobody; it sets gauges. A restarted shard reports under the same scope, so
//! nothing is counted twice. Followers report nothing owned: only the leader manages entries.

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

#[derive(Debug, Default)]
struct Scope {
    owned: Owned,
    converged: bool,
}

/// The pure core: what every shard last reported.
#[derive(Debug, Default)]
pub struct Progress {
    scopes: BTreeMap<String, Scope>,
}

impl Progress {
    /// Records `scope`'s latest sync; returns the totals over all scopes and whether every
    /// scope's last sync succeeded.
    pub fn report(&mut self, scope: &str, owned: Owned, converged: bool) -> (Owned, bool) {
        let s = self.scopes.entry(scope.to_string()).or_default();
        s.owned = owned;
        s.converged = converged;
        self.totals()
    }

    /// Drops a stopped shard's scope; returns the new totals.
    pub fn forget(&mut self, scope: &str) -> (Owned, bool) {
        self.scopes.remove(scope);
        self.totals()
    }

    fn totals(&self) -> (Owned, bool) {
        let mut t = Owned::default();
        for s in self.scopes.values() {
            t.node += s.owned.node;
            t.cluster += s.owned.cluster;
            t.pod += s.owned.pod;
        }
        (t, self.scopes.values().all(|s| s.converged))
    }
}

fn global() -> MutexGuard<'static, Progress> {
    static PROGRESS: Mutex<Progress> = Mutex::new(Progress { scopes: BTreeMap::new() });
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
    }
}
