//! Leader election, client-go compatible: the pure acquire/renew decision ([`decide`]) and the
//! thin I/O on the lock object ([`ResourceLock`]). The [`Leader`](crate::actors::leader) actor
//! runs the loop and publishes the resulting [`Leadership`](crate::leadership::Leadership).
//!
//! The lock is one Kubernetes object holding a [`LeaderRecord`], stored either as a
//! `coordination.k8s.io/v1` Lease's spec (`leases`) or, as client-go's removed ConfigMap lock wrote
//! it, as JSON in the ConfigMap annotation [`LEADER_ANNOTATION`] (`configmaps`, the default).
//! Either way `kubectl get` shows operators the same record client-go would have written.
//!
//! Rules (client-go `tryAcquireOrRenew`, `tools/leaderelection/leaderelection.go`):
//!
//! 1. No lock object: create it, naming us.
//! 2. A non-empty holder other than us whose lease is still valid: wait.
//! 3. Otherwise write ourselves as holder. Renewing (the record already names us) keeps
//!    `acquireTime` and the transition count; a takeover sets `acquireTime = now` and adds one
//!    transition. An empty holder (a released lock) is free at once.
//!
//! A lease is valid while `observed_time + leaseDurationSeconds > now`, where `observed_time` is
//! the instant on *our* monotonic clock at which the record we read last changed. `renewTime` is
//! informational, so clock skew between replicas does not matter.
//!
//! # Guarantees
//!
//! * Fencing: every [`ResourceLock::update`] is a PUT carrying the `resourceVersion` of the
//!   object version the decision was made on, and is refused (never sent) without one. Of several
//!   candidates acting on the same version, the API server lets exactly one write succeed; the
//!   others get `409 Conflict` ([`ElectionError::Conflict`]). A create that races another create
//!   gets `409 AlreadyExists`, reported the same way.
//! * [`decide`] never overwrites another holder's valid lease (property-tested below).
//! * Followers write nothing: [`Decision::Wait`] performs no I/O.

use std::time::Duration;

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::ConfigMap,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The ConfigMap annotation client-go's ConfigMap lock kept its record in.
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// client-go's `JitterFactor`: candidates retry every `retry_period * (1 + rand * 1.2)`, and the
/// renew deadline must exceed `1.2 * retry_period`.
pub const JITTER_FACTOR: f64 = 1.2;

/// Errors of leader election: configuration and lock I/O.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("invalid leader election settings: {0}")]
    Config(String),
    /// `409`: the object changed since we read it (update), or someone created it first (create).
    #[error("the lock {0} was written by someone else (409 conflict)")]
    Conflict(String),
    #[error("the lock {0} holds an unreadable leader record: {1}")]
    BadRecord(String, #[source] serde_json::Error),
    #[error("the lock {0} has no resourceVersion; refusing an unfenced write")]
    NoResourceVersion(String),
    #[error("kubernetes API, lock {0}: {1}")]
    Kube(String, #[source] kube::Error),
    /// The request did not finish before the caller's deadline (see the `Leader` actor).
    #[error("the lock {0} did not answer in time")]
    Timeout(String),
}

impl ElectionError {
    /// True for `409 Conflict` / `AlreadyExists`: another writer won the race.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_))
    }
}

pub type Result<T, E = ElectionError> = std::result::Result<T, E>;

/// Which kind of object holds the lock record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockKind {
    /// A `coordination.k8s.io/v1` Lease; the record is its spec.
    Leases,
    /// A ConfigMap; the record is JSON in the [`LEADER_ANNOTATION`] annotation.
    #[default]
    ConfigMaps,
}

impl LockKind {
    /// The resource's plural name, as `kubectl` and RBAC spell it.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Leases => "leases",
            Self::ConfigMaps => "configmaps",
        }
    }
}

/// Leader-election settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    pub lock: LockKind,
    /// Namespace of the lock object.
    pub namespace: String,
    /// Name of the lock object (`<controller_name>-leader-election`).
    pub name: String,
    /// This replica's identity; must be unique among candidates (client-go uses
    /// `<hostname>_<random>`).
    pub identity: String,
    /// How long followers wait, after they last saw the record change, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Default for ElectionConfig {
    /// client-go's defaults for core components: 15 s / 10 s / 2 s, ConfigMap lock. Namespace,
    /// name and identity are empty and must be filled in ([`ElectionConfig::validate`] says so).
    fn default() -> Self {
        Self {
            lock: LockKind::default(),
            namespace: String::new(),
            name: String::new(),
            identity: String::new(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl ElectionConfig {
    /// client-go's validation: `lease_duration > renew_deadline > 1.2 * retry_period`, each at
    /// least one second, and a non-empty lock name, namespace and identity.
    ///
    /// The ordering is what makes a lease safe: the leader gives up `renew_deadline` after its
    /// last successful renewal, strictly before any follower may take over (`lease_duration` after
    /// it observed that renewal).
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(ElectionError::Config(m));
        for (key, value) in
            [("namespace", &self.namespace), ("name", &self.name), ("identity", &self.identity)]
        {
            if value.is_empty() {
                return err(format!("the lock {key} is empty"));
            }
        }
        for (key, value) in [
            ("lease_duration", self.lease_duration),
            ("renew_deadline", self.renew_deadline),
            ("retry_period", self.retry_period),
        ] {
            if value < Duration::from_secs(1) {
                return err(format!("{key} must be at least 1s, got {value:?}"));
            }
        }
        if self.lease_duration.as_secs() > i32::MAX as u64 {
            return err(format!("lease_duration {:?} is too long", self.lease_duration));
        }
        if self.lease_duration <= self.renew_deadline {
            return err(format!(
                "lease_duration ({:?}) must be greater than renew_deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return err(format!(
                "renew_deadline ({:?}) must be greater than {JITTER_FACTOR} * retry_period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written to the record (whole seconds, like client-go).
    pub fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// `kind/namespace/name`, for logs and errors.
    pub fn describe(&self) -> String {
        format!("{}/{}/{}", self.lock.resource(), self.namespace, self.name)
    }
}

/// client-go's `LeaderElectionRecord`: who holds the lock, for how long, since when.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderRecord {
    /// Empty when the lock is free (released).
    pub holder_identity: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<Timestamp>,
    /// Informational only: expiry is judged by observed time (see the module docs).
    pub renew_time: Option<Timestamp>,
    /// `leaseTransitions` on a Lease, `leaderTransitions` in the ConfigMap annotation.
    pub leader_transitions: i32,
}

/// The record as JSON in the ConfigMap annotation, field for field as client-go wrote it
/// (`metav1.Time`: RFC 3339 in whole seconds, `null` when unset).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnnotationRecord {
    #[serde(default)]
    holder_identity: String,
    #[serde(default)]
    lease_duration_seconds: i32,
    #[serde(default)]
    acquire_time: Option<Time>,
    #[serde(default)]
    renew_time: Option<Time>,
    #[serde(default)]
    leader_transitions: i32,
}

impl LeaderRecord {
    /// Reads a Lease spec; absent fields read as zero values, like client-go's
    /// `LeaseSpecToLeaseLock`.
    pub fn from_lease_spec(spec: &LeaseSpec) -> Self {
        Self {
            holder_identity: spec.holder_identity.clone().unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            leader_transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// Writes the record's fields into a Lease spec, leaving the coordinated-election fields
    /// (`strategy`, `preferredHolder`) as they were. The holder is written even when empty
    /// (`""`, not absent), as client-go does on release.
    pub fn write_lease_spec(&self, spec: &mut LeaseSpec) {
        spec.holder_identity = Some(self.holder_identity.clone());
        spec.lease_duration_seconds = Some(self.lease_duration_seconds);
        spec.acquire_time = self.acquire_time.map(MicroTime);
        spec.renew_time = self.renew_time.map(MicroTime);
        spec.lease_transitions = Some(self.leader_transitions);
    }

    /// Parses the ConfigMap annotation's JSON.
    pub fn from_annotation(json: &str) -> Result<Self, serde_json::Error> {
        let r: AnnotationRecord = serde_json::from_str(json)?;
        Ok(Self {
            holder_identity: r.holder_identity,
            lease_duration_seconds: r.lease_duration_seconds,
            acquire_time: r.acquire_time.map(|t| t.0),
            renew_time: r.renew_time.map(|t| t.0),
            leader_transitions: r.leader_transitions,
        })
    }

    /// The ConfigMap annotation's JSON, e.g. `{"holderIdentity":"a","leaseDurationSeconds":15,
    /// "acquireTime":"2025-01-02T03:04:05Z","renewTime":"2025-01-02T03:04:07Z","leaderTransitions":1}`.
    pub fn to_annotation(&self) -> String {
        let r = AnnotationRecord {
            holder_identity: self.holder_identity.clone(),
            lease_duration_seconds: self.lease_duration_seconds,
            acquire_time: self.acquire_time.map(Time),
            renew_time: self.renew_time.map(Time),
            leader_transitions: self.leader_transitions,
        };
        // Serializing a struct of strings, integers and timestamps cannot fail.
        serde_json::to_string(&r).unwrap_or_default()
    }

    /// True when `identity` holds this record.
    pub fn held_by(&self, identity: &str) -> bool {
        self.holder_identity == identity
    }
}

/// What one acquire/renew round should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The lock object does not exist: create it with this record.
    Create(LeaderRecord),
    /// Write this record (renewal or takeover) with a PUT fenced by the observed
    /// `resourceVersion`.
    Update(LeaderRecord),
    /// Someone else holds a valid lease: write nothing this round.
    Wait { holder: String },
}

/// True while a record observed (last changed) at `observed_at` is still valid at `now`:
/// `observed_at + leaseDurationSeconds > now`, on our monotonic clock.
pub fn lease_valid(record: &LeaderRecord, observed_at: Instant, now: Instant) -> bool {
    let secs = u64::try_from(record.lease_duration_seconds).unwrap_or(0);
    observed_at + Duration::from_secs(secs) > now
}

/// The acquire/renew decision, exactly as client-go's `tryAcquireOrRenew` makes it.
///
/// * `observed`: the record as last seen or written, and the instant it last changed; `None` when
///   the lock object does not exist.
/// * `now`: our monotonic clock; `wall_now`: the timestamp written as `renewTime` (and
///   `acquireTime` on takeover).
///
/// Whether we are the incumbent is read off the record (client-go's `IsLeader()` is "the observed
/// record names us"), not passed in: a restarted actor with the same identity continues the same
/// tenure in the record, while the actor still starts a new leadership epoch.
pub fn decide(
    identity: &str,
    lease_duration_seconds: i32,
    observed: Option<(&LeaderRecord, Instant)>,
    now: Instant,
    wall_now: Timestamp,
) -> Decision {
    let ours = |acquire_time, leader_transitions| LeaderRecord {
        holder_identity: identity.to_string(),
        lease_duration_seconds,
        acquire_time: Some(acquire_time),
        renew_time: Some(wall_now),
        leader_transitions,
    };
    let Some((old, observed_at)) = observed else {
        return Decision::Create(ours(wall_now, 0));
    };
    if old.held_by(identity) {
        // Renewal: keep the tenure's start and count. (client-go copies the old acquireTime even
        // when it is unset; we fill it in so the record always says since when we lead.)
        return Decision::Update(ours(old.acquire_time.unwrap_or(wall_now), old.leader_transitions));
    }
    if !old.holder_identity.is_empty() && lease_valid(old, observed_at, now) {
        return Decision::Wait { holder: old.holder_identity.clone() };
    }
    Decision::Update(ours(wall_now, old.leader_transitions.saturating_add(1)))
}

/// The record written on graceful release (client-go `release()`): no holder, a one-second
/// lease, times set to now, transitions kept. Candidates treat an empty holder as free at once.
pub fn release_record(old: &LeaderRecord, wall_now: Timestamp) -> LeaderRecord {
    LeaderRecord {
        holder_identity: String::new(),
        lease_duration_seconds: 1,
        acquire_time: Some(wall_now),
        renew_time: Some(wall_now),
        leader_transitions: old.leader_transitions,
    }
}

// === Lock I/O ===

/// The lock object on the API server: `get`, `create` and fenced `update` of the record.
///
/// Keeps the object from the last read or write so that an update changes only the record and
/// preserves everything else on the object (labels, owner references, other annotations, the
/// Lease's coordinated-election fields), like client-go's lock implementations.
///
/// RBAC: `get`, `create`, `update` on the lock's resource in its namespace.
pub struct ResourceLock {
    what: String,
    name: String,
    target: Target,
}

enum Target {
    Lease { api: Api<Lease>, last: Option<Lease> },
    ConfigMap { api: Api<ConfigMap>, last: Option<ConfigMap> },
}

impl ResourceLock {
    pub fn new(client: kube::Client, config: &ElectionConfig) -> Self {
        let target = match config.lock {
            LockKind::Leases => Target::Lease { api: Api::namespaced(client, &config.namespace), last: None },
            LockKind::ConfigMaps => {
                Target::ConfigMap { api: Api::namespaced(client, &config.namespace), last: None }
            }
        };
        Self { what: config.describe(), name: config.name.clone(), target }
    }

    /// `kind/namespace/name`.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// The current record and the object's `resourceVersion`; `None` when the object does not
    /// exist. An object without a record (a ConfigMap without the annotation, a Lease with an
    /// empty spec) reads as an empty, hence free, record.
    pub async fn get(&mut self) -> Result<Option<(LeaderRecord, String)>> {
        let what = &self.what;
        let kube_err = |e| ElectionError::Kube(what.clone(), e);
        match &mut self.target {
            Target::Lease { api, last } => {
                let Some(lease) = api.get_opt(&self.name).await.map_err(kube_err)? else {
                    *last = None;
                    return Ok(None);
                };
                let record = lease.spec.as_ref().map(LeaderRecord::from_lease_spec).unwrap_or_default();
                let rv = version_of(&lease.metadata, what)?;
                *last = Some(lease);
                Ok(Some((record, rv)))
            }
            Target::ConfigMap { api, last } => {
                let Some(cm) = api.get_opt(&self.name).await.map_err(kube_err)? else {
                    *last = None;
                    return Ok(None);
                };
                let record = match cm.metadata.annotations.as_ref().and_then(|a| a.get(LEADER_ANNOTATION)) {
                    Some(json) => LeaderRecord::from_annotation(json)
                        .map_err(|e| ElectionError::BadRecord(what.clone(), e))?,
                    None => LeaderRecord::default(),
                };
                let rv = version_of(&cm.metadata, what)?;
                *last = Some(cm);
                Ok(Some((record, rv)))
            }
        }
    }

    /// Creates the lock object holding `record`; returns its `resourceVersion`.
    pub async fn create(&mut self, record: &LeaderRecord) -> Result<String> {
        let what = &self.what;
        let meta = ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() };
        match &mut self.target {
            Target::Lease { api, last } => {
                let mut lease = Lease { metadata: meta, spec: Some(LeaseSpec::default()) };
                record.write_lease_spec(lease.spec.get_or_insert_with(LeaseSpec::default));
                let created =
                    api.create(&PostParams::default(), &lease).await.map_err(|e| api_err(what, e))?;
                let rv = version_of(&created.metadata, what)?;
                *last = Some(created);
                Ok(rv)
            }
            Target::ConfigMap { api, last } => {
                let mut cm = ConfigMap { metadata: meta, ..ConfigMap::default() };
                cm.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(LEADER_ANNOTATION.to_string(), record.to_annotation());
                let created = api.create(&PostParams::default(), &cm).await.map_err(|e| api_err(what, e))?;
                let rv = version_of(&created.metadata, what)?;
                *last = Some(created);
                Ok(rv)
            }
        }
    }

    /// Replaces the record with a PUT that carries `resource_version` (from the read the decision
    /// was made on, or from our own last write); returns the new `resourceVersion`. A
    /// concurrent writer makes this fail with [`ElectionError::Conflict`].
    pub async fn update(&mut self, record: &LeaderRecord, resource_version: &str) -> Result<String> {
        let what = &self.what;
        if resource_version.is_empty() {
            return Err(ElectionError::NoResourceVersion(what.clone()));
        }
        let pp = PostParams::default();
        match &mut self.target {
            Target::Lease { api, last } => {
                let mut lease = last.clone().unwrap_or_else(|| Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: None,
                });
                lease.metadata.resource_version = Some(resource_version.to_string());
                lease.metadata.managed_fields = None;
                record.write_lease_spec(lease.spec.get_or_insert_with(LeaseSpec::default));
                let written = api.replace(&self.name, &pp, &lease).await.map_err(|e| api_err(what, e))?;
                let rv = version_of(&written.metadata, what)?;
                *last = Some(written);
                Ok(rv)
            }
            Target::ConfigMap { api, last } => {
                let mut cm = last.clone().unwrap_or_else(|| ConfigMap {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    ..ConfigMap::default()
                });
                cm.metadata.resource_version = Some(resource_version.to_string());
                cm.metadata.managed_fields = None;
                cm.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(LEADER_ANNOTATION.to_string(), record.to_annotation());
                let written = api.replace(&self.name, &pp, &cm).await.map_err(|e| api_err(what, e))?;
                let rv = version_of(&written.metadata, what)?;
                *last = Some(written);
                Ok(rv)
            }
        }
    }
}

fn api_err(what: &str, e: kube::Error) -> ElectionError {
    match &e {
        kube::Error::Api(s) if s.is_conflict() || s.is_already_exists() => {
            ElectionError::Conflict(what.to_string())
        }
        _ => ElectionError::Kube(what.to_string(), e),
    }
}

/// The object's `resourceVersion`: without one no later update could be fenced.
fn version_of(meta: &ObjectMeta, what: &str) -> Result<String> {
    match meta.resource_version.as_deref() {
        Some(rv) if !rv.is_empty() => Ok(rv.to_string()),
        _ => Err(ElectionError::NoResourceVersion(what.to_string())),
    }
}

// === A fake API server for tests ===

/// An in-memory API server for Leases and ConfigMaps behind a real [`kube::Client`]: GET, POST
/// (409 `AlreadyExists` on a duplicate) and PUT (409 `Conflict` unless the body's
/// `resourceVersion` is the stored one), with a switch to make it fail or hang. Shared with the
/// `Leader` actor's tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::{
        collections::BTreeMap,
        convert::Infallible,
        sync::{Arc, Mutex, MutexGuard},
    };

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    /// How the fake answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        Up,
        /// Every request fails with 500.
        Down,
        /// Every request hangs forever.
        Hang,
    }

    /// One write the fake accepted: method, the holder it named, and when.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Write {
        pub method: Method,
        pub holder: String,
        pub at: tokio::time::Instant,
    }

    struct State {
        objects: BTreeMap<String, Value>,
        next_rv: u64,
        mode: Mode,
        writes: Vec<Write>,
    }

    #[derive(Clone)]
    pub struct FakeApi(Arc<Mutex<State>>);

    impl FakeApi {
        pub fn new() -> Self {
            Self(Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                next_rv: 1,
                mode: Mode::Up,
                writes: Vec::new(),
            })))
        }

        fn lock(&self) -> MutexGuard<'_, State> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub fn client(&self) -> kube::Client {
            let me = self.clone();
            let svc = tower::service_fn(move |req: Request<Body>| {
                let me = me.clone();
                async move { Ok::<_, Infallible>(me.serve(req).await) }
            });
            kube::Client::new(svc, "default")
        }

        pub fn set_mode(&self, mode: Mode) {
            self.lock().mode = mode;
        }

        /// The stored object at an API path, e.g. `/api/v1/namespaces/ns/configmaps/name`.
        pub fn object(&self, path: &str) -> Option<Value> {
            self.lock().objects.get(path).cloned()
        }

        /// Stores an object as if someone else had written it (a new resourceVersion).
        pub fn put(&self, path: &str, mut obj: Value) {
            let mut st = self.lock();
            let rv = st.next_rv.to_string();
            st.next_rv += 1;
            obj["metadata"]["resourceVersion"] = json!(rv);
            st.objects.insert(path.to_string(), obj);
        }

        pub fn writes(&self) -> Vec<Write> {
            self.lock().writes.clone()
        }

        async fn serve(&self, req: Request<Body>) -> Response<Body> {
            let mode = self.lock().mode;
            match mode {
                Mode::Up => {}
                Mode::Down => return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
                Mode::Hang => futures::future::pending::<()>().await,
            }
            let (parts, body) = req.into_parts();
            let path = parts.uri.path().to_string();
            let body: Value = match body.collect_bytes().await {
                Ok(b) if b.is_empty() => Value::Null,
                Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest"),
            };
            let mut st = self.lock();
            match parts.method {
                Method::GET => match st.objects.get(&path) {
                    Some(obj) => ok(StatusCode::OK, obj),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                },
                Method::POST => {
                    let name = body["metadata"]["name"].as_str().unwrap_or_default();
                    let key = format!("{path}/{name}");
                    if st.objects.contains_key(&key) {
                        return status(StatusCode::CONFLICT, "AlreadyExists");
                    }
                    st.store(&parts.method, key, body, StatusCode::CREATED)
                }
                Method::PUT => {
                    let Some(stored) = st.objects.get(&path) else {
                        return status(StatusCode::NOT_FOUND, "NotFound");
                    };
                    if body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                        return status(StatusCode::CONFLICT, "Conflict");
                    }
                    st.store(&parts.method, path, body, StatusCode::OK)
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            }
        }
    }

    impl State {
        fn store(
            &mut self,
            method: &Method,
            key: String,
            mut obj: Value,
            code: StatusCode,
        ) -> Response<Body> {
            obj["metadata"]["resourceVersion"] = json!(self.next_rv.to_string());
            self.next_rv += 1;
            let holder = match obj["spec"]["holderIdentity"].as_str() {
                Some(h) => h.to_string(),
                None => obj["metadata"]["annotations"][super::LEADER_ANNOTATION]
                    .as_str()
                    .and_then(|j| super::LeaderRecord::from_annotation(j).ok())
                    .map(|r| r.holder_identity)
                    .unwrap_or_default(),
            };
            self.writes.push(Write { method: method.clone(), holder, at: tokio::time::Instant::now() });
            let resp = ok(code, &obj);
            self.objects.insert(key, obj);
            resp
        }
    }

    fn ok(code: StatusCode, obj: &Value) -> Response<Body> {
        let mut resp = Response::new(Body::from(obj.to_string().into_bytes()));
        *resp.status_mut() = code;
        resp
    }

    fn status(code: StatusCode, reason: &str) -> Response<Body> {
        let s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code.as_u16(),
        });
        ok(code, &s)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::{fake::FakeApi, *};

    const ME: &str = "me";
    const LEASE: i32 = 15;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rec(holder: &str, dur: i32, transitions: i32) -> LeaderRecord {
        LeaderRecord {
            holder_identity: holder.to_string(),
            lease_duration_seconds: dur,
            acquire_time: Some(ts("2025-01-01T00:00:00Z")),
            renew_time: Some(ts("2025-01-01T00:00:10Z")),
            leader_transitions: transitions,
        }
    }

    fn mine(acquire: Timestamp, now: Timestamp, transitions: i32) -> LeaderRecord {
        LeaderRecord {
            holder_identity: ME.to_string(),
            lease_duration_seconds: LEASE,
            acquire_time: Some(acquire),
            renew_time: Some(now),
            leader_transitions: transitions,
        }
    }

    #[test]
    fn decision_table() {
        let t0 = Instant::now();
        let wall = ts("2025-06-01T12:00:00Z");
        let old_acquire = ts("2025-01-01T00:00:00Z");
        let s = Duration::from_secs;
        // (case, observed record, seconds since it last changed, expected)
        let cases: Vec<(&str, Option<LeaderRecord>, u64, Decision)> = vec![
            ("absent lock: create", None, 0, Decision::Create(mine(wall, wall, 0))),
            (
                "other holder, valid lease: wait",
                Some(rec("other", 15, 3)),
                14,
                Decision::Wait { holder: "other".into() },
            ),
            (
                "other holder, just observed: wait",
                Some(rec("other", 15, 3)),
                0,
                Decision::Wait { holder: "other".into() },
            ),
            (
                "other holder, lease ends exactly now: take over",
                Some(rec("other", 15, 3)),
                15,
                Decision::Update(mine(wall, wall, 4)),
            ),
            (
                "other holder, expired: take over",
                Some(rec("other", 15, 3)),
                60,
                Decision::Update(mine(wall, wall, 4)),
            ),
            (
                "other holder, its own duration counts",
                Some(rec("other", 30, 3)),
                20,
                Decision::Wait { holder: "other".into() },
            ),
            (
                "released (empty holder): take over at once",
                Some(rec("", 1, 3)),
                0,
                Decision::Update(mine(wall, wall, 4)),
            ),
            (
                "empty holder, long lease: still free",
                Some(rec("", 3600, 0)),
                0,
                Decision::Update(mine(wall, wall, 1)),
            ),
            (
                "ours, valid: renew keeps acquire and count",
                Some(rec(ME, 15, 7)),
                2,
                Decision::Update(mine(old_acquire, wall, 7)),
            ),
            (
                "ours, expired: still a renewal",
                Some(rec(ME, 15, 7)),
                100,
                Decision::Update(mine(old_acquire, wall, 7)),
            ),
            (
                "zero record (no annotation): take over",
                Some(LeaderRecord::default()),
                0,
                Decision::Update(mine(wall, wall, 1)),
            ),
        ];
        for (case, observed, ago, want) in cases {
            let now = t0 + s(100);
            let got = decide(ME, LEASE, observed.as_ref().map(|r| (r, now - s(ago))), now, wall);
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn renewal_fills_in_a_missing_acquire_time() {
        let wall = ts("2025-06-01T12:00:00Z");
        let old = LeaderRecord { acquire_time: None, ..rec(ME, 15, 2) };
        let now = Instant::now();
        assert_eq!(decide(ME, LEASE, Some((&old, now)), now, wall), Decision::Update(mine(wall, wall, 2)));
    }

    #[test]
    fn release_frees_the_lock_and_keeps_the_count() {
        let wall = ts("2025-06-01T12:00:00Z");
        let r = release_record(&rec(ME, 15, 5), wall);
        assert_eq!(
            r,
            LeaderRecord {
                holder_identity: String::new(),
                lease_duration_seconds: 1,
                acquire_time: Some(wall),
                renew_time: Some(wall),
                leader_transitions: 5
            }
        );
        // Another candidate may take it at once, counting a transition.
        let now = Instant::now();
        assert!(
            matches!(decide("b", LEASE, Some((&r, now)), now, wall), Decision::Update(u) if u.leader_transitions == 6)
        );
    }

    #[test]
    fn validate_follows_client_go() {
        let ok = ElectionConfig {
            namespace: "ns".into(),
            name: "n".into(),
            identity: "i".into(),
            ..Default::default()
        };
        ok.validate().unwrap();
        assert_eq!(ok.lease_duration_seconds(), 15);
        let s = Duration::from_secs;
        let bad = [
            ElectionConfig { identity: String::new(), ..ok.clone() },
            ElectionConfig { namespace: String::new(), ..ok.clone() },
            ElectionConfig { lease_duration: s(10), ..ok.clone() },
            ElectionConfig { renew_deadline: s(16), ..ok.clone() },
            ElectionConfig { renew_deadline: Duration::from_millis(2400), ..ok.clone() },
            ElectionConfig { retry_period: Duration::from_millis(500), ..ok.clone() },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(ElectionError::Config(_))), "{c:?}");
        }
        ElectionConfig { lease_duration: s(3), renew_deadline: s(2), retry_period: s(1), ..ok }
            .validate()
            .unwrap();
    }

    #[test]
    fn annotation_json_is_client_gos() {
        let r = mine(ts("2025-01-02T03:04:05.678Z"), ts("2025-01-02T03:04:07Z"), 2);
        let json = r.to_annotation();
        assert_eq!(
            json,
            r#"{"holderIdentity":"me","leaseDurationSeconds":15,"acquireTime":"2025-01-02T03:04:05Z","renewTime":"2025-01-02T03:04:07Z","leaderTransitions":2}"#
        );
        // As client-go wrote it, including a zero (null) time and fields we do not know.
        let go = r#"{"holderIdentity":"","leaseDurationSeconds":1,"acquireTime":null,"renewTime":"2025-01-02T03:04:07+00:00","leaderTransitions":4,"strategy":""}"#;
        let parsed = LeaderRecord::from_annotation(go).unwrap();
        assert_eq!(
            parsed,
            LeaderRecord {
                holder_identity: String::new(),
                lease_duration_seconds: 1,
                acquire_time: None,
                renew_time: Some(ts("2025-01-02T03:04:07Z")),
                leader_transitions: 4
            }
        );
        assert!(LeaderRecord::from_annotation("not json").is_err());
    }

    #[test]
    fn lease_spec_round_trip_keeps_coordination_fields() {
        let mut spec = LeaseSpec { strategy: Some("OldestEmulationVersion".into()), ..Default::default() };
        let r = mine(ts("2025-01-02T03:04:05.123456Z"), ts("2025-01-02T03:04:07Z"), 1);
        r.write_lease_spec(&mut spec);
        assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(LeaderRecord::from_lease_spec(&spec), r);
        release_record(&r, ts("2025-01-02T03:04:09Z")).write_lease_spec(&mut spec);
        assert_eq!(spec.holder_identity.as_deref(), Some(""), "released holder is \"\", not absent");
        assert_eq!(LeaderRecord::from_lease_spec(&LeaseSpec::default()), LeaderRecord::default());
    }

    fn config(lock: LockKind) -> ElectionConfig {
        ElectionConfig {
            lock,
            namespace: "ns".into(),
            name: "reg-leader-election".into(),
            identity: ME.into(),
            ..Default::default()
        }
    }

    async fn lock_io_round_trip(lock: LockKind, path: &str) {
        let api = FakeApi::new();
        let cfg = config(lock);
        let mut a = ResourceLock::new(api.client(), &cfg);
        let mut b = ResourceLock::new(api.client(), &cfg);
        assert_eq!(a.get().await.unwrap(), None);
        let wall = Timestamp::now();
        let r1 = mine(wall, wall, 0);
        let rv1 = a.create(&r1).await.unwrap();
        // A racing create loses with a conflict.
        assert!(b.create(&rec("b", 15, 0)).await.unwrap_err().is_conflict());
        let (got, rv) = b.get().await.unwrap().unwrap();
        assert_eq!(rv, rv1);
        assert_eq!(got.holder_identity, ME);
        // Two writers acting on the same version: exactly one wins.
        let rv2 = a.update(&mine(wall, wall, 0), &rv1).await.unwrap();
        assert_ne!(rv2, rv1);
        assert!(b.update(&rec("b", 15, 1), &rv).await.unwrap_err().is_conflict());
        assert!(a.update(&rec(ME, 15, 0), "").await.is_err(), "unfenced writes are refused");
        let (got, _) = b.get().await.unwrap().unwrap();
        assert_eq!(got.holder_identity, ME);
        assert!(api.object(path).is_some(), "{path}");
    }

    #[tokio::test]
    async fn lease_lock_io() {
        lock_io_round_trip(
            LockKind::Leases,
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/reg-leader-election",
        )
        .await;
    }

    #[tokio::test]
    async fn configmap_lock_io_keeps_other_annotations_and_data() {
        let path = "/api/v1/namespaces/ns/configmaps/reg-leader-election";
        lock_io_round_trip(LockKind::ConfigMaps, path).await;

        let api = FakeApi::new();
        api.put(
            path,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "reg-leader-election", "namespace": "ns", "annotations": {"keep": "me"}},
                   "data": {"k": "v"}}),
        );
        let mut l = ResourceLock::new(api.client(), &config(LockKind::ConfigMaps));
        let (r, rv) = l.get().await.unwrap().unwrap();
        assert_eq!(r, LeaderRecord::default(), "no annotation reads as a free lock");
        let wall = ts("2025-01-02T03:04:05Z");
        l.update(&mine(wall, wall, 1), &rv).await.unwrap();
        let obj = api.object(path).unwrap();
        assert_eq!(obj["metadata"]["annotations"]["keep"], "me");
        assert_eq!(obj["data"]["k"], "v");
        let stored: serde_json::Value =
            serde_json::from_str(obj["metadata"]["annotations"][LEADER_ANNOTATION].as_str().unwrap())
                .unwrap();
        assert_eq!(
            stored,
            json!({"holderIdentity": "me", "leaseDurationSeconds": 15, "acquireTime": "2025-01-02T03:04:05Z",
                   "renewTime": "2025-01-02T03:04:05Z", "leaderTransitions": 1})
        );
    }

    #[tokio::test]
    async fn unreadable_annotation_is_an_error_not_a_free_lock() {
        let path = "/api/v1/namespaces/ns/configmaps/reg-leader-election";
        let api = FakeApi::new();
        api.put(
            path,
            json!({"metadata": {"name": "reg-leader-election", "annotations": {LEADER_ANNOTATION: "{"}}}),
        );
        let mut l = ResourceLock::new(api.client(), &config(LockKind::ConfigMaps));
        assert!(matches!(l.get().await, Err(ElectionError::BadRecord(..))));
    }

    fn holder() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), Just(ME.to_string()), Just("other".to_string()), "[a-z]{1,8}"]
    }

    proptest! {
        /// Never overwrite another holder's valid lease; always write ourselves otherwise.
        #[test]
        fn never_takes_a_valid_foreign_lease(
            h in holder(), dur in 0i32..60, ago in 0u64..120, transitions in 0i32..1000, exists in any::<bool>(),
        ) {
            let now = Instant::now() + Duration::from_secs(1000);
            let wall = ts("2025-06-01T12:00:00Z");
            let old = rec(&h, dur, transitions);
            let observed_at = now - Duration::from_secs(ago);
            let d = decide(ME, LEASE, exists.then_some((&old, observed_at)), now, wall);
            let foreign_valid = exists && !h.is_empty() && h != ME && ago < dur as u64;
            match d {
                Decision::Wait { holder } => {
                    prop_assert!(foreign_valid);
                    prop_assert_eq!(holder, h);
                }
                Decision::Create(r) | Decision::Update(r) => {
                    prop_assert!(!foreign_valid);
                    prop_assert_eq!(&r.holder_identity, ME);
                    prop_assert_eq!(r.lease_duration_seconds, LEASE);
                    prop_assert_eq!(r.renew_time, Some(wall));
                }
            }
        }

        /// Transitions count holder changes: kept on renewal, +1 on takeover, 0 on create.
        #[test]
        fn transitions_count_holder_changes(h in holder(), ago in 0u64..120, transitions in 0i32..1000) {
            let now = Instant::now() + Duration::from_secs(1000);
            let wall = ts("2025-06-01T12:00:00Z");
            let old = rec(&h, 15, transitions);
            match decide(ME, LEASE, Some((&old, now - Duration::from_secs(ago))), now, wall) {
                Decision::Update(r) if h == ME => {
                    prop_assert_eq!(r.leader_transitions, transitions);
                    prop_assert_eq!(r.acquire_time, old.acquire_time);
                }
                Decision::Update(r) => {
                    prop_assert_eq!(r.leader_transitions, transitions + 1);
                    prop_assert_eq!(r.acquire_time, Some(wall));
                }
                Decision::Wait { .. } => prop_assert!(h != ME && !h.is_empty()),
                Decision::Create(_) => prop_assert!(false, "the lock exists"),
            }
        }
    }
}
