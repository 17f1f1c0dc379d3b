//! Registration latency in crd mode, where no single component sees both ends: the projector
//! (`sync`) knows when a pod was created, the SpiffeID controller when the pod's entry was first
//! written. The projector hands the creation times over here, the controller takes them.
//!
//! Owns: the pods created after this process started whose SpiffeID has no entry yet
//! (`status.entryId` unset), by pod UID → creation ms, behind a mutex. Receives: [`awaiting`]
//! from each projector pass (replacing the set, so it stays bounded by the pods in flight) and
//! [`registered`] from the controller. Messages: nobody; records
//! `registrar_registration_latency_seconds`. Both run only on the leader. A SpiffeID that is
//! not a pod's (manual, node) has no `podUid` label, or one that matches nothing here, and is
//! not counted.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, MutexGuard},
};

fn global() -> MutexGuard<'static, HashMap<String, i64>> {
    static AWAITING: LazyLock<Mutex<HashMap<String, i64>>> = LazyLock::new(Mutex::default);
    AWAITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The pods a projector pass found still waiting for their first entry: UID and creation ms.
/// Pods that may predate this process are dropped (`metrics::counts_for_latency`).
pub fn awaiting(pods: impl IntoIterator<Item = (String, i64)>) {
    let started = crate::metrics::started_unix_ms();
    let fresh: HashMap<String, i64> =
        pods.into_iter().filter(|&(_, c)| crate::metrics::counts_for_latency(c, started)).collect();
    *global() = fresh;
}

/// The first entry of the pod `uid`'s SpiffeID was just written: records its latency, once.
/// Returns whether it was recorded.
pub fn registered(uid: &str) -> bool {
    let created = global().remove(uid);
    created.is_some() && crate::metrics::observe_registration(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_created_after_start_is_recorded_once_and_older_ones_never() {
        let started = crate::metrics::started_unix_ms();
        let later = started - started.rem_euclid(1000) + 1000;
        awaiting([("new".to_string(), later), ("old".to_string(), started - 5000)]);
        assert!(!registered("old"), "may predate the process");
        assert!(registered("new"));
        assert!(!registered("new"), "once");
        // A pass that no longer lists a pod (its entry exists, or it is gone) forgets it.
        awaiting([("a".to_string(), later)]);
        awaiting([]);
        assert!(!registered("a"));
    }
}
