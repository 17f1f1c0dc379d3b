//! `Leader`: this replica's candidate in a client-go compatible leader election.
//!
//! * Owns: the lock object's I/O ([`ResourceLock`]), the last observed lock record and when it
//!   last changed (our monotonic clock), the instant of our last successful renewal, and the
//!   sending side of the leadership watch channel ([`LeadershipTx`]).
//! * Receives: `Tick` (self-scheduled: one acquire/renew round each `retry_period`, jittered by
//!   1.2 while following), `Release` (from the registrar on graceful shutdown), `Fail` (fault
//!   injection).
//! * Messages: nobody. It publishes [`Leadership`] on the watch channel, which the registrar and
//!   the SPIRE pool's workers read (the workers immediately before every write).
//!
//! The decision of each round is [`election::decide`](crate::election::decide); this file is the
//! loop, the clock and the publication.
//!
//! # Guarantees
//!
//! * Epochs: every transition to leading publishes `epoch = current + 1`, read from the channel
//!   itself, so a Leader restarted by its supervisor (same channel) continues monotonically and
//!   writes computed under an earlier tenure stay refused.
//! * A deposed leader stops at once: `leading: false` (same epoch) is published *before* anything
//!   else when a renewal has not succeeded within `renew_deadline` (the lease duration, if
//!   shorter) of the start of the last successful one, when a write gets `409 Conflict`, when a
//!   read shows another holder (or no lock object), on `Release`, and when the actor stops for any
//!   reason — `post_stop`, and the state's `Drop` for failures, panics and kills (ractor skips
//!   `post_stop` then).
//! * The deadline is enforced on time even if the API server hangs: every lock request is bounded
//!   by it, and the next `Tick` is scheduled no later than it.
//! * Why that is safe: the deadline is measured from the *start* of the last successful write,
//!   which is no later than the moment any follower observed that write, and `renew_deadline <
//!   lease_duration`; so we stop leading before any follower may take over (assuming our clocks
//!   run at similar rates; their offsets do not matter).
//! * A replica that starts (or restarts) publishes `leading: false` if the channel said leading:
//!   it cannot know when the lock was last renewed.
//! * Followers write nothing. Every write is fenced by `resourceVersion` (see
//!   [`crate::election`]).

use std::{
    hash::BuildHasher,
    time::{Duration, SystemTime},
};

use k8s_openapi::jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::{
    election::{
        Decision, ElectionConfig, ElectionError, JITTER_FACTOR, LeaderRecord, ResourceLock, decide,
        lease_valid, release_record,
    },
    leadership::{Leadership, LeadershipTx},
};

pub enum LeaderMsg {
    /// Run one acquire/renew round; each round schedules the next.
    Tick,
    /// Graceful shutdown: stop leading, release the lock (holder `""`) if we hold it, reply, and
    /// run no further rounds.
    Release(RpcReplyPort<()>),
    /// Test-only fault injection: the handler returns `Err`, so the actor fails (and steps down).
    #[cfg(feature = "fault-injection")]
    Fail,
}

pub struct LeaderArgs {
    pub client: kube::Client,
    pub config: ElectionConfig,
    /// Where leadership is published; the same channel across restarts of this actor.
    pub tx: LeadershipTx,
}

pub struct Leader;

/// The record as last read or written (client-go's `observedRecord` / `observedTime`).
struct Observed {
    /// The last record read or written; the basis of the next decision.
    record: LeaderRecord,
    /// The last record *read*: a read that differs from it restarts the lease clock.
    raw: Option<LeaderRecord>,
    /// When `record` last changed, on our monotonic clock.
    at: Instant,
    /// The object's version from the last read or our last write: the fence of the next update.
    resource_version: String,
}

pub struct LeaderState {
    config: ElectionConfig,
    tx: LeadershipTx,
    lock: ResourceLock,
    /// `None` when the lock object was absent at the last read (or never read).
    observed: Option<Observed>,
    /// Invariant: `Some(start of the last successful write)` exactly while we have published
    /// `leading: true`.
    renewed_at: Option<Instant>,
    /// Set by `Release`: no more rounds.
    released: bool,
    /// xorshift state for the retry jitter.
    rng: u64,
}

impl LeaderState {
    fn leading(&self) -> bool {
        self.renewed_at.is_some()
    }

    /// The instant we must have stopped leading by, unless a renewal succeeds first.
    fn deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|t| t + self.config.renew_deadline.min(self.config.lease_duration))
    }

    /// Lock requests end by our leading deadline; a candidate's within `renew_deadline` (if it
    /// wins, it leads from the request's start, so a later answer would be of little use).
    fn io_deadline(&self) -> Instant {
        self.deadline().unwrap_or_else(|| Instant::now() + self.config.renew_deadline)
    }

    fn step_down(&mut self, reason: &str) {
        self.stop_leading(reason, false);
    }

    /// `planned`: a graceful shutdown handing the lock over, logged at info; any other loss of
    /// leadership is a warning.
    fn stop_leading(&mut self, reason: &str, planned: bool) {
        if self.renewed_at.take().is_none() {
            return;
        }
        let epoch = self.tx.borrow().epoch;
        self.tx.send_replace(Leadership { leading: false, epoch });
        metrics::gauge!("registrar_is_leader").set(0.0);
        let lock = self.lock.describe();
        if planned {
            tracing::info!(leader = %self.config.identity, epoch, lock, reason, "Stopped leading.");
        } else {
            tracing::warn!(leader = %self.config.identity, epoch, lock, reason, "Stopped leading.");
        }
    }

    fn check_deadline(&mut self, now: Instant) {
        if self.deadline().is_some_and(|d| now >= d) {
            self.step_down("the lock was not renewed within the renew deadline");
        }
    }

    /// A write that started at `started` succeeded: lead (a new epoch) or keep leading.
    fn renewed(&mut self, started: Instant) {
        if self.renewed_at.replace(started).is_some() {
            return;
        }
        let epoch = self.tx.borrow().epoch + 1;
        self.tx.send_replace(Leadership { leading: true, epoch });
        metrics::gauge!("registrar_is_leader").set(1.0);
        tracing::info!(leader = %self.config.identity, epoch, lock = self.lock.describe(), "Became the leader.");
    }

    /// client-go: the lease clock restarts only when the record read differs from the last read.
    fn observe_read(&mut self, got: Option<(LeaderRecord, String)>, now: Instant) {
        let Some((record, resource_version)) = got else {
            self.observed = None;
            return;
        };
        if let Some(o) = &mut self.observed
            && o.raw.as_ref() == Some(&record)
        {
            o.resource_version = resource_version;
            return;
        }
        let previous = self.observed.as_ref().map(|o| o.record.holder_identity.as_str());
        if previous != Some(record.holder_identity.as_str())
            && !record.holder_identity.is_empty()
            && !record.held_by(&self.config.identity)
        {
            tracing::info!(leader = %record.holder_identity, lock = self.lock.describe(), "Observed a new leader.");
        }
        self.observed = Some(Observed { raw: Some(record.clone()), record, at: now, resource_version });
    }

    fn observe_write(&mut self, record: LeaderRecord, resource_version: String) {
        let raw = self.observed.take().and_then(|o| o.raw);
        self.observed = Some(Observed { record, raw, at: Instant::now(), resource_version });
    }

    fn decide(&self, now: Instant) -> Decision {
        decide(
            &self.config.identity,
            self.config.lease_duration_seconds(),
            self.observed.as_ref().map(|o| (&o.record, o.at)),
            now,
            wall_now(),
        )
    }

    /// One acquire/renew round.
    async fn round(&mut self) {
        self.check_deadline(Instant::now());
        if self.leading() {
            if self.fast_renew().await {
                return;
            }
            self.check_deadline(Instant::now());
        }
        self.slow_round().await;
        self.check_deadline(Instant::now());
    }

    /// client-go's fast path: a leader renews on the record and version it wrote last, without
    /// a read. Returns whether it renewed.
    async fn fast_renew(&mut self) -> bool {
        let now = Instant::now();
        let Some(o) = &self.observed else { return false };
        if !o.record.held_by(&self.config.identity) || !lease_valid(&o.record, o.at, now) {
            return false;
        }
        let Decision::Update(record) = self.decide(now) else { return false };
        let rv = o.resource_version.clone();
        let started = Instant::now();
        let deadline = self.io_deadline();
        match bounded(deadline, &self.config, self.lock.update(&record, &rv)).await {
            Ok(rv) => {
                self.observe_write(record, rv);
                self.renewed(started);
                true
            }
            Err(e) if e.is_conflict() => {
                self.step_down("the lock changed under us (409 conflict)");
                false
            }
            Err(e) => {
                tracing::warn!(leader = %self.config.identity, error = %e, "Could not renew the leader lock; re-reading it.");
                false
            }
        }
    }

    /// Read the lock, decide, and write if the decision says so.
    async fn slow_round(&mut self) {
        let deadline = self.io_deadline();
        let got = match bounded(deadline, &self.config, self.lock.get()).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(identity = %self.config.identity, error = %e, "Could not read the leader lock.");
                return;
            }
        };
        let now = Instant::now();
        self.observe_read(got, now);
        if !self.observed.as_ref().is_some_and(|o| o.record.held_by(&self.config.identity)) {
            self.step_down("the lock names another holder, or is gone");
        }
        let decision = self.decide(now);
        let started = Instant::now();
        let deadline = self.io_deadline();
        let (record, written) = match decision {
            Decision::Wait { holder } => {
                tracing::debug!(leader = %holder, "The lock is held by another replica; following.");
                return;
            }
            Decision::Create(record) => {
                let written = bounded(deadline, &self.config, self.lock.create(&record)).await;
                (record, written)
            }
            Decision::Update(record) => {
                let rv = self.observed.as_ref().map(|o| o.resource_version.clone()).unwrap_or_default();
                let written = bounded(deadline, &self.config, self.lock.update(&record, &rv)).await;
                (record, written)
            }
        };
        match written {
            Ok(rv) => {
                self.observe_write(record, rv);
                self.renewed(started);
            }
            Err(e) if e.is_conflict() => {
                self.step_down("another replica wrote the lock first (409 conflict)");
                tracing::debug!(identity = %self.config.identity, "Lost a race for the leader lock.");
            }
            Err(e) => {
                tracing::warn!(identity = %self.config.identity, error = %e, "Could not write the leader lock.")
            }
        }
    }

    /// client-go `release()`: if the record we know names us, write holder `""` with a one-second
    /// lease, fenced like any update, so a follower may take over at once.
    async fn release(&mut self) {
        let Some(o) = &self.observed else { return };
        if !o.record.held_by(&self.config.identity) {
            return;
        }
        let record = release_record(&o.record, wall_now());
        let rv = o.resource_version.clone();
        let deadline = Instant::now() + self.config.renew_deadline;
        match bounded(deadline, &self.config, self.lock.update(&record, &rv)).await {
            Ok(rv) => {
                self.observe_write(record, rv);
                tracing::info!(identity = %self.config.identity, lock = self.lock.describe(), "Released the leader lock.");
            }
            Err(e) => tracing::warn!(
                identity = %self.config.identity, error = %e,
                "Could not release the leader lock; followers take over when it expires."
            ),
        }
    }

    /// `retry_period * (1 + r * 1.2)`, r uniform in [0, 1) (client-go's `wait.Jitter`).
    fn jittered_retry(&mut self) -> Duration {
        // xorshift64: cheap, and good enough to spread candidates apart.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let r = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        self.config.retry_period.mul_f64(1.0 + r * JITTER_FACTOR)
    }

    /// The next round: every `retry_period` while leading, jittered while following, and never
    /// later than our leading deadline, so a missed renewal deposes us on time.
    fn schedule_next(&mut self, myself: &ActorRef<LeaderMsg>) {
        if self.released {
            return;
        }
        let mut wait = if self.leading() { self.config.retry_period } else { self.jittered_retry() };
        if let Some(d) = self.deadline() {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        myself.send_after(wait, || LeaderMsg::Tick);
    }
}

impl Drop for LeaderState {
    /// A failed, panicked or killed actor gets no `post_stop`; this still stops writers at once.
    fn drop(&mut self) {
        self.step_down("the leader actor stopped");
    }
}

/// The wall-clock time written into the record (`renewTime`, `acquireTime`). Informational:
/// expiry is judged on the monotonic clock. Tests run on tokio's paused clock, so there the wall
/// clock is derived from it; otherwise every renewal within one real second would write the
/// same (whole-second) ConfigMap record, which observers rightly treat as "not renewed".
fn wall_now() -> Timestamp {
    #[cfg(not(test))]
    {
        Timestamp::now()
    }
    #[cfg(test)]
    {
        static BASE: std::sync::OnceLock<(Timestamp, Instant)> = std::sync::OnceLock::new();
        let (wall, mono) = *BASE.get_or_init(|| (Timestamp::now(), Instant::now()));
        let elapsed = Instant::now().saturating_duration_since(mono);
        wall.checked_add(elapsed).unwrap_or(wall)
    }
}

/// Runs a lock request, giving up at `deadline`.
async fn bounded<T>(
    deadline: Instant,
    config: &ElectionConfig,
    request: impl Future<Output = Result<T, ElectionError>>,
) -> Result<T, ElectionError> {
    tokio::time::timeout_at(deadline, request)
        .await
        .unwrap_or_else(|_| Err(ElectionError::Timeout(config.describe())))
}

impl Actor for Leader {
    type Msg = LeaderMsg;
    type State = LeaderState;
    type Arguments = LeaderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LeaderMsg>,
        args: LeaderArgs,
    ) -> Result<LeaderState, ActorProcessingErr> {
        args.config.validate()?;
        let current = *args.tx.borrow();
        if current.leading {
            args.tx.send_replace(Leadership { leading: false, epoch: current.epoch });
            tracing::warn!(
                leader = %args.config.identity, epoch = current.epoch,
                "Leader election restarted while leading; not leading until the lock is renewed."
            );
        }
        metrics::gauge!("registrar_is_leader").set(0.0);
        let nanos =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        // Never zero (xorshift's fixed point); differs between replicas and restarts.
        let rng = std::collections::hash_map::RandomState::new().hash_one((&args.config.identity, nanos)) | 1;
        Ok(LeaderState {
            lock: ResourceLock::new(args.client, &args.config),
            config: args.config,
            tx: args.tx,
            observed: None,
            renewed_at: None,
            released: false,
            rng,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<LeaderMsg>,
        _state: &mut LeaderState,
    ) -> Result<(), ActorProcessingErr> {
        // The first round at once, like client-go.
        myself.cast(LeaderMsg::Tick)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<LeaderMsg>,
        msg: LeaderMsg,
        state: &mut LeaderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaderMsg::Tick if state.released => {}
            LeaderMsg::Tick => {
                state.round().await;
                state.schedule_next(&myself);
            }
            LeaderMsg::Release(reply) => {
                state.released = true;
                // Writers stop before the lock is given away.
                state.stop_leading("released on shutdown", true);
                state.release().await;
                let _ = reply.send(());
            }
            #[cfg(feature = "fault-injection")]
            LeaderMsg::Fail => return Err("fault injected into the leader".into()),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LeaderMsg>,
        state: &mut LeaderState,
    ) -> Result<(), ActorProcessingErr> {
        state.step_down("the leader actor stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ractor::rpc::CallResult;
    use tokio::{sync::watch, task::JoinHandle, time::sleep};

    use super::*;
    use crate::election::{
        LockKind,
        fake::{FakeApi, Mode},
    };

    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/reg-leader-election";
    const CM_PATH: &str = "/api/v1/namespaces/ns/configmaps/reg-leader-election";

    fn config(lock: LockKind, identity: &str) -> ElectionConfig {
        ElectionConfig {
            lock,
            namespace: "ns".into(),
            name: "reg-leader-election".into(),
            identity: identity.into(),
            ..ElectionConfig::default()
        }
    }

    type Rx = watch::Receiver<Leadership>;

    struct Candidate {
        actor: ActorRef<LeaderMsg>,
        done: JoinHandle<()>,
        tx: LeadershipTx,
        rx: Rx,
        identity: String,
    }

    async fn spawn(api: &FakeApi, lock: LockKind, identity: &str, tx: LeadershipTx) -> Candidate {
        let rx = tx.subscribe();
        let args = LeaderArgs { client: api.client(), config: config(lock, identity), tx: tx.clone() };
        let (actor, done) = Actor::spawn(None, Leader, args).await.unwrap();
        Candidate { actor, done, tx, rx, identity: identity.into() }
    }

    async fn candidate(api: &FakeApi, lock: LockKind, identity: &str) -> Candidate {
        spawn(api, lock, identity, watch::channel(Leadership::default()).0).await
    }

    impl Candidate {
        fn now(&self) -> Leadership {
            *self.rx.borrow()
        }

        async fn wait_for(&mut self, within: Duration, pred: impl FnMut(&Leadership) -> bool) -> Leadership {
            let got = tokio::time::timeout(within, self.rx.wait_for(pred)).await.map(|g| *g.unwrap());
            got.unwrap_or_else(|_| panic!("{}: timed out; now {:?}", self.identity, self.now()))
        }

        async fn stop(self) -> (LeadershipTx, Rx) {
            self.actor.stop(None);
            self.done.await.unwrap();
            (self.tx, self.rx)
        }
    }

    fn holder(api: &FakeApi, lock: LockKind) -> String {
        let obj = match lock {
            LockKind::Leases => api.object(LEASE_PATH).unwrap(),
            LockKind::ConfigMaps => api.object(CM_PATH).unwrap(),
        };
        match lock {
            LockKind::Leases => obj["spec"]["holderIdentity"].as_str().unwrap().to_string(),
            LockKind::ConfigMaps => {
                LeaderRecord::from_annotation(
                    obj["metadata"]["annotations"][crate::election::LEADER_ANNOTATION].as_str().unwrap(),
                )
                .unwrap()
                .holder_identity
            }
        }
    }

    fn transitions(api: &FakeApi) -> i64 {
        api.object(LEASE_PATH).unwrap()["spec"]["leaseTransitions"].as_i64().unwrap()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    async fn one_leader_and_failover(lock: LockKind) {
        let api = FakeApi::new();
        let a = candidate(&api, lock, "a").await;
        let b = candidate(&api, lock, "b").await;
        sleep(S(5)).await;
        let (la, lb) = (a.now(), b.now());
        assert!(la.leading ^ lb.leading, "exactly one leads: a {la:?}, b {lb:?}");
        let (leader, mut follower) = if la.leading { (a, b) } else { (b, a) };
        assert_eq!(leader.now(), Leadership { leading: true, epoch: 1 });
        assert_eq!(holder(&api, lock), leader.identity);

        // A stable leader keeps leading in the same epoch; the follower never writes.
        sleep(S(60)).await;
        assert_eq!(leader.now(), Leadership { leading: true, epoch: 1 });
        assert_eq!(follower.now(), Leadership::default());
        let writes = api.writes();
        assert!(writes.len() > 20, "the leader renews every retry period: {}", writes.len());
        assert!(writes.iter().all(|w| w.holder == leader.identity), "only the leader writes");

        // The leader dies without releasing: its writers stop at once; the follower waits a full
        // lease after the last renewal it saw, then takes over.
        let last_renewal = api.writes().last().unwrap().at;
        let identity = leader.identity.clone();
        let (tx, _) = leader.stop().await;
        assert_eq!(*tx.borrow(), Leadership { leading: false, epoch: 1 });
        let took = follower.wait_for(S(30), |l| l.leading).await;
        assert_eq!(took.epoch, 1);
        let first = api.writes().into_iter().find(|w| w.holder == follower.identity).unwrap();
        assert!(first.at >= last_renewal + S(15), "took over before the lease expired");
        assert!(first.at <= last_renewal + S(15 + 2 * 5), "took over late");
        assert_eq!(holder(&api, lock), follower.identity);

        // The old leader comes back (a supervisor restart: same channel) and follows; when the
        // new leader goes too, it leads again in the next epoch of its channel.
        let mut back = spawn(&api, lock, &identity, tx).await;
        sleep(S(20)).await;
        assert_eq!(back.now(), Leadership { leading: false, epoch: 1 });
        follower.stop().await;
        let l = back.wait_for(S(40), |l| l.leading).await;
        assert_eq!(l.epoch, 2);
        if lock == LockKind::Leases {
            assert_eq!(transitions(&api), 2);
        }
        back.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn lease_lock_one_leader_and_failover_after_expiry() {
        one_leader_and_failover(LockKind::Leases).await;
    }

    #[tokio::test(start_paused = true)]
    async fn configmap_lock_one_leader_and_failover_after_expiry() {
        one_leader_and_failover(LockKind::ConfigMaps).await;
    }

    async fn deposed_on_time(failure: Mode) {
        let api = FakeApi::new();
        let mut a = candidate(&api, LockKind::Leases, "a").await;
        a.wait_for(S(1), |l| l.leading).await;
        sleep(S(7)).await;
        api.set_mode(failure);
        let last_renewal = api.writes().last().unwrap().at;
        let l = a.wait_for(S(20), |l| !l.leading).await;
        assert_eq!(l.epoch, 1, "stepping down keeps the epoch");
        let deposed = Instant::now();
        assert!(deposed <= last_renewal + S(10), "{failure:?}: still leading past the renew deadline");
        assert!(deposed + S(2) >= last_renewal + S(10), "{failure:?}: deposed too early");

        // The API server recovers; the record still names us, so we renew it (no transition)
        // and lead again in a new epoch.
        api.set_mode(Mode::Up);
        let l = a.wait_for(S(20), |l| l.leading).await;
        assert_eq!(l.epoch, 2);
        assert_eq!(transitions(&api), 0);
        a.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_depose_the_leader_within_the_renew_deadline() {
        deposed_on_time(Mode::Down).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_api_server_deposes_the_leader_within_the_renew_deadline() {
        deposed_on_time(Mode::Hang).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_deposes_at_once_and_a_valid_foreign_lease_is_respected() {
        let api = FakeApi::new();
        let mut a = candidate(&api, LockKind::Leases, "a").await;
        a.wait_for(S(1), |l| l.leading).await;
        // Someone else takes the lock behind our back.
        let mut lease = api.object(LEASE_PATH).unwrap();
        lease["spec"]["holderIdentity"] = "intruder".into();
        api.put(LEASE_PATH, lease);
        let taken = Instant::now();
        let l = a.wait_for(S(3), |l| !l.leading).await;
        assert_eq!(l.epoch, 1);
        assert!(Instant::now() <= taken + S(2), "deposed at the next renewal");
        // We now observe the intruder's lease and wait it out (15 s from when we saw it).
        let before = api.writes().len();
        sleep(S(12)).await;
        assert_eq!(api.writes().len(), before, "a follower writes nothing");
        let l = a.wait_for(S(15), |l| l.leading).await;
        assert_eq!(l.epoch, 2);
        assert_eq!(holder(&api, LockKind::Leases), "a");
        assert_eq!(transitions(&api), 1);
        a.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn release_hands_over_at_once() {
        let api = FakeApi::new();
        let mut a = candidate(&api, LockKind::ConfigMaps, "a").await;
        a.wait_for(S(1), |l| l.leading).await;
        let mut b = candidate(&api, LockKind::ConfigMaps, "b").await;
        sleep(S(10)).await;
        assert!(!b.now().leading);

        let released = a.actor.call(LeaderMsg::Release, Some(S(5))).await.unwrap();
        assert!(matches!(released, CallResult::Success(())));
        assert_eq!(a.now(), Leadership { leading: false, epoch: 1 });
        assert_eq!(holder(&api, LockKind::ConfigMaps), "");
        let since = Instant::now();
        b.wait_for(S(10), |l| l.leading).await;
        assert!(
            Instant::now() <= since + S(5),
            "the follower waited for expiry instead of taking a released lock"
        );
        // The released candidate runs no more rounds.
        sleep(S(60)).await;
        assert!(api.writes().iter().skip_while(|w| w.holder != "b").all(|w| w.holder == "b"));
        assert!(!a.now().leading);
        a.stop().await;
        b.stop().await;
    }

    #[cfg(feature = "fault-injection")]
    #[tokio::test(start_paused = true)]
    async fn a_failed_leader_steps_down_and_its_restart_continues_the_epochs() {
        let api = FakeApi::new();
        let mut a = candidate(&api, LockKind::Leases, "a").await;
        a.wait_for(S(1), |l| l.leading).await;
        a.actor.cast(LeaderMsg::Fail).unwrap();
        // ractor skips post_stop on failure; the state's Drop still steps down.
        let Candidate { actor, done, tx, rx, .. } = a;
        done.await.unwrap();
        assert_eq!(actor.get_status(), ractor::ActorStatus::Stopped);
        assert_eq!(*rx.borrow(), Leadership { leading: false, epoch: 1 });

        let mut again = spawn(&api, LockKind::Leases, "a", tx).await;
        let l = again.wait_for(S(5), |l| l.leading).await;
        assert_eq!(l.epoch, 2);
        assert_eq!(transitions(&api), 0, "same identity: the tenure continues in the record");
        again.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_while_the_channel_says_leading_steps_down_first() {
        let api = FakeApi::new();
        // Another (say, killed) instance left "leading" on the channel; the lock names someone else.
        api.put(
            LEASE_PATH,
            serde_json::json!({"metadata": {"name": "reg-leader-election"},
                               "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15}}),
        );
        let (tx, _) = watch::channel(Leadership { leading: true, epoch: 4 });
        let mut a = spawn(&api, LockKind::Leases, "a", tx).await;
        assert_eq!(a.now(), Leadership { leading: false, epoch: 4 });
        let l = a.wait_for(S(25), |l| l.leading).await;
        assert_eq!(l.epoch, 5);
        a.stop().await;
    }
}
