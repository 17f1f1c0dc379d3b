//! Metric names and their descriptions, in one place. Labels are bounded: kind, method,
//! outcome, op, actor, reason — never pod names or UIDs.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub fn describe() {
    describe_gauge!("registrar_build_info", "Always 1; the version label is the running build's.");
    metrics::gauge!("registrar_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!("registrar_objects_processed_total", "Watch events applied, by kind.");
    describe_counter!("registrar_entry_ops_total", "SPIRE entry writes, by op and outcome.");
    describe_histogram!(
        "registrar_spire_call_duration_seconds",
        "SPIRE API call latency, by method and outcome."
    );
    describe_histogram!("registrar_reconcile_duration_seconds", "Duration of one node shard sync.");
    describe_histogram!("registrar_apply_duration_seconds", "Duration of one batch of SPIRE writes.");
    describe_gauge!("registrar_shards", "Node shards running.");
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

/// Creates the series of [`ENTRY_OPS`] × [`ENTRY_OUTCOMES`], [`INVALID_IDENTITY_REASONS`] and the
/// unlabelled counters, at 0.
pub fn preinitialise() {
    for op in ENTRY_OPS {
        for outcome in ENTRY_OUTCOMES {
            metrics::counter!("registrar_entry_ops_total", "op" => op, "outcome" => outcome).increment(0);
        }
    }
    for reason in INVALID_IDENTITY_REASONS {
        metrics::counter!("registrar_invalid_identity_total", "reason" => reason).increment(0);
    }
    metrics::counter!("registrar_sync_failures_total").increment(0);
}
