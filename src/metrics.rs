//! Metric names and their descriptions, in one place. Labels are bounded: kind, method,
//! outcome, op, actor, reason — never pod names or UIDs.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub fn describe() {
    describe_gauge!("registrar_build_info", "Always 1; the version label is the running build's.");
    metrics::gauge!("registrar_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!("registrar_objects_processed_total", "Watch events applied, by kind.");
    describe_histogram!(
        "registrar_registration_latency_seconds",
        "Pod creation (creationTimestamp, whole seconds) to its entry confirmed in SPIRE, for pods created after this process started."
    );
    describe_counter!("registrar_entry_ops_total", "SPIRE entry writes, by op and outcome.");
    describe_counter!(
        "registrar_dry_run_ops_total",
        "dry_run = true: the SPIRE entry writes the registrar would have made (none sent), by op and outcome."
    );
    describe_histogram!(
        "registrar_spire_call_duration_seconds",
        "SPIRE API call latency, by method and outcome."
    );
    describe_histogram!("registrar_reconcile_duration_seconds", "Duration of one node shard sync.");
    describe_histogram!("registrar_apply_duration_seconds", "Duration of one batch of SPIRE writes.");
    describe_gauge!("registrar_shards", "Node shards running.");
    describe_counter!("registrar_kube_requests_total", "Kubernetes API requests, by verb and outcome.");
    describe_histogram!(
        "registrar_kube_request_duration_seconds",
        "Kubernetes API request latency to the response headers (a watch: its start), by verb and outcome."
    );
    describe_gauge!(
        "registrar_owned_entries",
        "SPIRE entries this replica manages (0 on followers), by kind: node, cluster, pod."
    );
    describe_gauge!(
        "registrar_last_converged_timestamp_seconds",
        "Unix time a shard last finished a sync while every shard's last sync had succeeded."
    );
    describe_gauge!(
        "registrar_pool_queue_depth",
        "SPIRE requests waiting for an idle pool worker, by class (write, read)."
    );
    describe_gauge!("registrar_queue_depth", "Shard sync/resync requests queued and not yet started.");
    describe_gauge!("registrar_pods", "Pods in the cache.");
    describe_counter!("registrar_actor_restarts_total", "Actor restarts after a failure, by actor kind.");
    describe_gauge!("registrar_is_leader", "1 while this replica holds the leader lock.");
    describe_counter!(
        "registrar_invalid_identity_total",
        "Objects whose identity could not be formed, by reason."
    );
    describe_counter!("registrar_sync_failures_total", "Node syncs that failed and were retried.");
    describe_counter!(
        "registrar_anti_entropy_checks_total",
        "Shards' checks of their entries against a periodic listing, by result: agreed, stale (the listing predates a write), disagreed (re-read and repaired)."
    );
    describe_counter!(
        "registrar_write_turn_waits_total",
        "Node syncs that had writes but waited for one of the bounded write turns (start-up, mass changes)."
    );
    describe_counter!(
        "registrar_spiffeid_writes_total",
        "SpiffeID writes (crd mode), by op: apply, delete, status, finalizer."
    );
    describe_counter!("registrar_watch_errors_total", "Kubernetes watch errors (retried with backoff).");
    describe_counter!("webhook_requests_total", "Admission requests, by operation and outcome.");
    describe_histogram!(
        "webhook_request_duration_seconds",
        "Admission request latency, by operation and outcome."
    );
    describe_counter!(
        "webhook_tls_handshake_failures_total",
        "Webhook TLS handshakes that failed, by reason."
    );
    describe_counter!(
        "webhook_certificate_reloads_total",
        "Webhook serving-certificate reloads, by outcome."
    );
}

/// Label values of the counters whose series exist from the start, at 0 (a counter that
/// appears only after its first increment hides the first rise from `rate()` and `increase()`).
/// Watch counters are created per watched kind by the watcher itself.
pub const ENTRY_OPS: [&str; 3] = ["create", "update", "delete"];
pub const ENTRY_OUTCOMES: [&str; 2] = ["ok", "failed"];
pub const INVALID_IDENTITY_REASONS: [&str; 7] = [
    "reserved_id",
    "invalid_id",
    "invalid_federation",
    "federates_with_self",
    "invalid_setting",
    "spire_rejected",
    "entry_conflict",
];

/// Results of `registrar_anti_entropy_checks_total` (see `actors::shard`).
pub const ANTI_ENTROPY_RESULTS: [&str; 3] = ["agreed", "stale", "disagreed"];

/// Creates `registrar_actor_restarts_total{actor}` at 0 for an actor kind a supervisor may
/// restart (each supervisor, at start, for the kinds it supervises).
pub fn restartable(actor: &'static str) {
    metrics::counter!("registrar_actor_restarts_total", "actor" => actor).increment(0);
}

/// Operations and outcomes of `webhook_requests_total`: a request that is no AdmissionReview
/// is (`invalid`, `bad_request`); a review is its operation × (`allowed`, `denied`, `error`).
pub const WEBHOOK_OPERATIONS: [&str; 4] = ["create", "update", "delete", "connect"];
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["allowed", "denied", "error"];

/// Creates the webhook server's counters at 0 (called when a webhook server starts).
pub fn preinitialise_webhook() {
    metrics::counter!("webhook_requests_total", "operation" => "invalid", "outcome" => "bad_request")
        .increment(0);
    for operation in WEBHOOK_OPERATIONS {
        for outcome in WEBHOOK_OUTCOMES {
            metrics::counter!("webhook_requests_total", "operation" => operation, "outcome" => outcome)
                .increment(0);
        }
    }
    for reason in ["error", "timeout"] {
        metrics::counter!("webhook_tls_handshake_failures_total", "reason" => reason).increment(0);
    }
    for outcome in ["ok", "error"] {
        metrics::counter!("webhook_certificate_reloads_total", "outcome" => outcome).increment(0);
    }
}

/// Ops of `registrar_spiffeid_writes_total` (crd mode).
pub const SPIFFEID_WRITE_OPS: [&str; 4] = ["apply", "delete", "status", "finalizer"];

/// Creates the series of [`ENTRY_OPS`] × [`ENTRY_OUTCOMES`], [`INVALID_IDENTITY_REASONS`] and the
/// unlabelled counters, at 0.
pub fn preinitialise() {
    started_unix_ms();
    for op in ENTRY_OPS {
        for outcome in ENTRY_OUTCOMES {
            metrics::counter!("registrar_entry_ops_total", "op" => op, "outcome" => outcome).increment(0);
        }
    }
    // A create SPIRE answered with ALREADY_EXISTS: nothing written.
    metrics::counter!("registrar_entry_ops_total", "op" => "create", "outcome" => "exists").increment(0);
    for reason in INVALID_IDENTITY_REASONS {
        metrics::counter!("registrar_invalid_identity_total", "reason" => reason).increment(0);
    }
    metrics::counter!("registrar_sync_failures_total").increment(0);
    for result in ANTI_ENTROPY_RESULTS {
        metrics::counter!("registrar_anti_entropy_checks_total", "result" => result).increment(0);
    }
    metrics::counter!("registrar_write_turn_waits_total").increment(0);
    for kind in crate::progress::Owned::KINDS {
        metrics::gauge!("registrar_owned_entries", "kind" => kind).set(0.0);
    }
}

/// Buckets of `registrar_registration_latency_seconds`: from sub-second (the timestamp has
/// whole seconds, so 1 s is the useful resolution) to the minutes of a stuck pipeline.
pub const REGISTRATION_BUCKETS: [f64; 11] = [0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Milliseconds since the Unix epoch now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// When this process started counting registrations (the first call; `preinitialise` makes it
/// the start-up).
pub fn started_unix_ms() -> i64 {
    static STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(now_unix_ms)
}

/// The registration latency of a pod created at `created_ms` whose entry was confirmed at
/// `now_ms`, in seconds; `None` for pods that may have been created before `started_ms` (their
/// age is not a latency of this process) or have no timestamp. The API server's clock may be ahead of
/// ours: that gives 0, not a negative latency.
pub fn registration_latency(created_ms: Option<i64>, now_ms: i64, started_ms: i64) -> Option<f64> {
    let created = created_ms?;
    counts_for_latency(created, started_ms).then(|| (now_ms - created).max(0) as f64 / 1000.0)
}

/// Records in `registrar_registration_latency_seconds` that the entry of an object created at
/// `created_ms` was confirmed by SPIRE just now, if it counts (see [`registration_latency`]).
/// The callers make sure it is once per object: the shards by pod UID, admissions by answering
/// each pod's CREATE once, the SpiffeID controller by its first entry write.
pub fn observe_registration(created_ms: Option<i64>) -> bool {
    let seconds = registration_latency(created_ms, now_unix_ms(), started_unix_ms());
    if let Some(s) = seconds {
        metrics::histogram!("registrar_registration_latency_seconds").record(s);
    }
    seconds.is_some()
}

/// Whether a pod created at `created_ms` surely came after a process started at `started_ms`.
/// creationTimestamp has whole seconds: a pod stamped with the second we started in may be
/// older than us, so only later seconds count.
pub fn counts_for_latency(created_ms: i64, started_ms: i64) -> bool {
    created_ms >= started_ms - started_ms.rem_euclid(1000) + 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_latency_counts_pods_created_since_start() {
        let start = 1_000_500;
        assert_eq!(registration_latency(Some(1_002_000), 1_003_250, start), Some(1.25));
        assert_eq!(registration_latency(Some(1_001_000), 1_001_800, start), Some(0.8), "the next second");
        // Stamped with the second of the start: maybe older than this process, not counted.
        assert_eq!(registration_latency(Some(1_000_000), 1_000_800, start), None);
        assert_eq!(registration_latency(Some(999_000), 1_003_000, start), None, "older than this process");
        assert_eq!(registration_latency(None, 1_003_000, start), None);
        assert_eq!(
            registration_latency(Some(1_005_000), 1_004_000, start),
            Some(0.0),
            "API server clock ahead"
        );
    }
}
