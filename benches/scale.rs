//! Scale against the real stack (etcd + kube-apiserver + spire-server), with the floor measured
//! in the same run and every figure printed next to it as a ratio.
//!
//! 1. `floor`: a fresh spire-server gets the very entries a converged registrar writes (node
//!    aliases + one entry per pod), created directly with `BatchCreateEntry` (50 per batch, two
//!    calls in flight: what one client can get out of the server).
//! 2. `cold`: another fresh spire-server; the registrar starts against the cluster that already
//!    holds every pod; time from its start until SPIRE holds every entry.
//! 3. `steady`: pods created one by one, spread over 1.5 resync intervals (so a resync falls in
//!    the window); time from each create call until its entry is in SPIRE (p50/p99/max). Its
//!    floor: after the registrar stopped, single-entry creates sent directly to the same server.
//!
//! "In SPIRE" is read from spire-server's own telemetry, the datastore's count of committed
//! entry creates, polled the same way in every phase: asking the datastore itself (CountEntries
//! reads every entry, ~230 ms at 10k; a filtered ListEntries per poll) would load the server
//! only while ours runs, not while the floor does. Each phase then checks the entries themselves
//! once, untimed.
//! 4. `idle`: nothing changes for two resync intervals; ListEntries calls per minute, counted by
//!    spire-server's own telemetry.
//! 5. peak RSS of the registrar (VmHWM).
//!
//! `cargo bench --bench scale` runs 10,000 pods on 200 nodes in one namespace (`-- --pods N` for
//! other sizes: N/50 nodes; `-- --namespaces K` spreads the pods over K namespaces; `-- --resync
//! S` for the resync interval in seconds, default 60; `-- --annotation-bytes B` gives every pod an
//! annotation of B bytes that no rule reads, as real pods carry); `cargo test`
//! runs a smoke size so the benchmark itself keeps working. Wall-clock figures on a shared
//! machine: read the ratios.
//!
//! `SCALE_PROFILER="heaptrack -o /tmp/kwr"` runs the registrar under that command (its words,
//! then the registrar's own command line); RSS and CPU are still the registrar's own, and it
//! gets SIGTERM at the end so the profiler can write its data. Timings under a profiler are the
//! profiler's, not ours.

#[path = "../tests/integration/stack/mod.rs"]
#[allow(dead_code)]
mod stack;

// For its HTTP client and Prometheus text reader (`http_request`, `metric_value`).
#[path = "../tests/integration/registrar.rs"]
#[allow(dead_code)]
mod registrar;

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_workload_registrar::{
    id::{SpiffeId, TrustDomain},
    model::{EntrySpec, Selector, Selectors},
    spire::{ListFilter, SpireClient},
};
use kube::{Api, api::PostParams};
use serde_json::json;

const CLUSTER: &str = "bench";
const PODS_PER_NODE: usize = 50;

struct Size {
    pods: usize,
    nodes: usize,
    /// Pods are spread round-robin over this many namespaces.
    namespaces: usize,
    resync: Duration,
    steady_pods: usize,
    /// Each pod carries an annotation of this many bytes that no rule reads (as a
    /// `kubectl.kubernetes.io/last-applied-configuration` would).
    annotation_bytes: usize,
}

impl Size {
    fn from_args() -> Size {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .map(|v| v.parse::<u64>().unwrap())
        };
        if !args.iter().any(|a| a == "--bench") {
            return Size {
                pods: 200,
                nodes: 4,
                namespaces: 1,
                resync: Duration::from_secs(2),
                steady_pods: 20,
                annotation_bytes: 1024,
            };
        }
        let pods = value("--pods").unwrap_or(10_000) as usize;
        Size {
            pods,
            nodes: pods.div_ceil(PODS_PER_NODE),
            namespaces: value("--namespaces").unwrap_or(1).max(1) as usize,
            resync: Duration::from_secs(value("--resync").unwrap_or(60)),
            steady_pods: 200,
            annotation_bytes: value("--annotation-bytes").unwrap_or(0) as usize,
        }
    }
}

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn node_name(n: usize) -> String {
    format!("n{n}")
}

/// The namespace of pod `p` (and of the `p`-th steady-state pod).
fn ns_of(size: &Size, p: usize) -> String {
    format!("bench{}", p % size.namespaces)
}

/// The entries a converged registrar holds for the cluster (service-account identities), node by
/// node (its alias, then its pods), the order the registrar's shards write them in: SPIRE's
/// create cost depends on the order (at 100k pods in 100 namespaces, node by node took half the
/// time of all aliases first and the pods in name order), and the floor must be the best of them.
fn desired(size: &Size) -> Vec<EntrySpec> {
    let td = td();
    let aliases = (0..size.nodes).map(|n| EntrySpec {
        spiffe_id: alias(n),
        parent_id: td.server_id(),
        selectors: Selectors::from([
            Selector::psat(format!("cluster:{CLUSTER}")),
            Selector::psat(format!("agent_node_name:{}", node_name(n))),
        ]),
        dns_names: vec![],
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    });
    let mut pods: Vec<Vec<EntrySpec>> = vec![Vec::new(); size.nodes];
    for p in 0..size.pods {
        pods[p % size.nodes].push(pod_entry(
            &ns_of(size, p),
            &format!("sa{p}"),
            &format!("p{p}"),
            p % size.nodes,
        ));
    }
    aliases.zip(pods).flat_map(|(alias, pods)| std::iter::once(alias).chain(pods)).collect()
}

/// The SPIFFE ID of node `n`'s alias entry.
fn alias(n: usize) -> SpiffeId {
    SpiffeId::from_path(&td(), &format!("/spire-k8s-registrar/{CLUSTER}/node/{}", node_name(n))).unwrap()
}

/// The entry of pod `pod` (service account `sa`) in `ns` on node `n`, as the registrar writes it.
fn pod_entry(ns: &str, sa: &str, pod: &str, n: usize) -> EntrySpec {
    EntrySpec {
        spiffe_id: SpiffeId::from_path(&td(), &format!("/ns/{ns}/sa/{sa}")).unwrap(),
        parent_id: alias(n),
        selectors: Selectors::from([
            Selector::k8s(format!("ns:{ns}")),
            Selector::k8s(format!("pod-name:{pod}")),
        ]),
        dns_names: vec![],
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    }
}

async fn create_pod(pods: &Api<Pod>, name: &str, sa: &str, node: &str, annotation_bytes: usize) {
    let annotations = match annotation_bytes {
        0 => json!({}),
        n => json!({"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(n)}),
    };
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
}

async fn populate(client: &kube::Client, size: &Size) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for i in 0..size.namespaces {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns_of(size, i)}})).unwrap();
        namespaces.create(&PostParams::default(), &ns).await.unwrap();
    }
    let nodes: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..size.nodes)
        .for_each_concurrent(16, |n| {
            let nodes = nodes.clone();
            async move {
                let node: Node = serde_json::from_value(json!({"metadata": {"name": node_name(n)}})).unwrap();
                nodes.create(&PostParams::default(), &node).await.unwrap();
            }
        })
        .await;
    futures::stream::iter(0..size.pods)
        .for_each_concurrent(32, |p| {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_of(size, p));
            let (nodes, bytes) = (size.nodes, size.annotation_bytes);
            async move {
                create_pod(&pods, &format!("p{p}"), &format!("sa{p}"), &node_name(p % nodes), bytes).await
            }
        })
        .await;
}

/// Creates `specs` directly (batches of 50, two calls in flight) on a fresh server; the time
/// until its telemetry counts them all, measured like ours.
async fn floor(spire: &stack::Spire, specs: &[EntrySpec]) -> Commits {
    let client = spire.client();
    let start = Instant::now();
    let create = futures::stream::iter(specs.chunks(50)).for_each_concurrent(2, |chunk| {
        let client = &client;
        async move {
            let results = client.create_entries(chunk).await.unwrap();
            assert!(results.iter().all(Result::is_ok));
        }
    });
    let ((), took) = tokio::join!(
        create,
        wait_for_creates(spire, specs.len(), Some(specs.len()), start, FLOOR_TIMEOUT, POLL)
    );
    check_count(&client, specs.len()).await;
    took
}

const FLOOR_TIMEOUT: Duration = Duration::from_secs(3600);

/// Entry creates spire-server's datastore committed (its own telemetry: no load on the
/// datastore, unlike asking it).
async fn committed_creates(spire: &stack::Spire) -> usize {
    let port = spire.telemetry_port.expect("spire-server started with telemetry");
    prom_counter(port, "spire_server_datastore_registration_entry_create", &[("status", "OK")]).await as usize
}

/// When the first and the last of `want` creates were committed, since a phase's start.
#[derive(Clone, Copy)]
struct Commits {
    first: Duration,
    all: Duration,
}

/// Polls the server's telemetry every `poll` until `want` creates are committed.
///
/// spire-server's Prometheus sink can lose the very first increments of a series when two
/// creates commit at once (both make the series; one is kept): with two calls in flight from the
/// first moment, a phase's count can stop one or two short. So when `holds` is given and the
/// count is within [`LOST`] of `want`, CountEntries (at most every 250 ms, and only then: it reads
/// every entry) decides whether SPIRE holds `holds` entries, which ends the wait as well.
async fn wait_for_creates(
    spire: &stack::Spire,
    want: usize,
    holds: Option<usize>,
    start: Instant,
    timeout: Duration,
    poll: Duration,
) -> Commits {
    let client = spire.client();
    let mut first = None;
    let mut counted_at: Option<Instant> = None;
    loop {
        let n = committed_creates(spire).await;
        if n > 0 && first.is_none() {
            first = Some(start.elapsed());
        }
        if n >= want {
            let all = start.elapsed();
            return Commits { first: first.unwrap_or(all), all };
        }
        if let Some(holds) = holds
            && n + LOST >= want
            && counted_at.is_none_or(|t| t.elapsed() >= Duration::from_millis(250))
        {
            let at = start.elapsed();
            counted_at = Some(Instant::now());
            if client.count_entries().await.unwrap_or(0) as usize >= holds {
                return Commits { first: first.unwrap_or(at), all: at };
            }
        }
        assert!(start.elapsed() < timeout, "only {n} of {want} entries after {timeout:?}");
        tokio::time::sleep(poll).await;
    }
}

/// How many creates spire-server's telemetry may miss (see [`wait_for_creates`]).
const LOST: usize = 2;

/// Polling a whole phase: a 20 ms resolution is plenty against tens of seconds.
const POLL: Duration = Duration::from_millis(20);

/// spire-server's count of answered ListEntries calls.
const LISTS: &str = "spire_server_rpc_entry_v1_entry_list_entries";

/// One steady-state entry committed: polled every 2 ms, for up to 2 minutes.
async fn wait_for_steady(spire: &stack::Spire, want: usize, start: Instant) -> Duration {
    let (timeout, poll) = (Duration::from_secs(120), Duration::from_millis(2));
    wait_for_creates(spire, want, None, start, timeout, poll).await.all
}

/// The steady-state floor: `n` single-entry creates sent directly, one at a time, to the server
/// that holds the converged entries (the registrar stopped), each timed like a pod's entry.
async fn steady_floor(spire: &stack::Spire, size: &Size, n: usize) -> Vec<Duration> {
    let client = spire.client();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let spec = pod_entry(&ns_of(size, i), &format!("direct{i}"), &format!("direct{i}"), 0);
        let before = committed_creates(spire).await;
        let t = Instant::now();
        assert!(client.create_entries(&[spec]).await.unwrap().iter().all(Result::is_ok));
        out.push(wait_for_steady(spire, before + 1, t).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.sort();
    out
}

/// SPIRE holds exactly `want` entries (no duplicates, nothing deleted and re-created).
async fn check_count(client: &SpireClient, want: usize) {
    let n = client.count_entries().await.unwrap() as usize;
    assert_eq!(n, want, "SPIRE holds {n} entries, {want} desired");
}

fn start_registrar(dir: &Path, kube: &stack::Kube, spire: &stack::Spire, resync: Duration) -> Registrar {
    let config = dir.join("registrar.conf");
    let port = stack::free_port();
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{sock}\"\ncluster = \"{CLUSTER}\"\n\
             mode = \"reconcile\"\nmetrics_addr = \"127.0.0.1:{port}\"\n\
             resync_interval = \"{secs}s\"\n",
            sock = spire.socket.display(),
            secs = resync.as_secs(),
        ),
    )
    .unwrap();
    let kubeconfig = kube.kubeconfig.display().to_string();
    let bin = env!("CARGO_BIN_EXE_k8s-workload-registrar");
    let config = config.display().to_string();
    let profiler = std::env::var("SCALE_PROFILER").unwrap_or_default();
    let mut words: Vec<&str> = profiler.split_whitespace().collect();
    let program = if words.is_empty() { bin } else { words.remove(0) };
    if !profiler.is_empty() {
        words.push(bin);
    }
    words.extend(["-config", config.as_str()]);
    let proc = stack::Proc::spawn_env(
        "registrar",
        Path::new(program),
        &words,
        dir,
        &[("KUBECONFIG", kubeconfig.as_str()), ("POD_NAMESPACE", "default"), ("POD_NAME", "bench")],
    );
    let pid = if profiler.is_empty() { proc.pid() } else { profiled_pid(&config) };
    Registrar { proc, pid, metrics_port: port }
}

/// The registrar process (under `SCALE_PROFILER`, the profiler's child, not the profiler).
struct Registrar {
    proc: stack::Proc,
    pid: u32,
    metrics_port: u16,
}

impl Registrar {
    /// Stops the registrar; under a profiler gracefully first (SIGTERM, then waits for it to
    /// exit), so the profiler's data is complete.
    fn stop(&self) {
        if self.pid != self.proc.pid() {
            let _ = std::process::Command::new("kill").arg(self.pid.to_string()).status();
            let gone = Instant::now() + Duration::from_secs(120);
            while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < gone {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.proc.kill();
    }
}

/// The pid of the registrar started with `config` (found by its command line).
fn profiled_pid(config: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let argv: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_ours = argv.first().is_some_and(|a| a.ends_with(b"k8s-workload-registrar"));
            if is_ours && argv.contains(&config.as_bytes()) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no registrar process started under SCALE_PROFILER");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of the series of counter `name` with `labels` in the Prometheus text served on `port`.
async fn prom_counter(port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = registrar::http_request(port, "GET", "/metrics").await;
    registrar::metric_value(&body, name, labels).unwrap_or(0.0)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of process `pid` so far (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let size = Size::from_args();
    let dir = tempfile::Builder::new().prefix("kwr-scale-").tempdir_in("/tmp").unwrap();
    let floor_dir = dir.path().join("floor");
    std::fs::create_dir_all(&floor_dir).unwrap();
    let (kube, floor_spire) = tokio::join!(
        stack::Kube::start(dir.path(), stack::KubeOptions::default()),
        stack::Spire::start_with_telemetry(&floor_dir),
    );
    let client = kube.client().await;
    let t = Instant::now();
    populate(&client, &size).await;
    let populated = t.elapsed();
    let specs = desired(&size);
    let total = specs.len();

    // 1. The floor, on its own server.
    let floor_time = floor(&floor_spire, &specs).await;
    drop(floor_spire);

    // 2. Cold convergence.
    let ours_dir = dir.path().join("ours");
    std::fs::create_dir_all(&ours_dir).unwrap();
    let spire = stack::Spire::start_with_telemetry(&ours_dir).await;
    let spire_client = spire.client();
    let start = Instant::now();
    let registrar = start_registrar(&ours_dir, &kube, &spire, size.resync);
    let cold = wait_for_creates(
        &spire,
        total,
        Some(total),
        start,
        Duration::from_secs(600 + size.pods as u64 / 20),
        POLL,
    )
    .await;
    check_count(&spire_client, total).await;
    let after_cold_kib = vm_hwm_kib(registrar.pid);
    let telemetry = spire.telemetry_port.unwrap();
    let cold_creates =
        prom_counter(telemetry, "spire_server_rpc_entry_v1_entry_batch_create_entry", &[]).await;
    let cold_cpu = cpu_seconds(registrar.pid);
    // Seconds spent in BatchCreateEntry calls, summed over the calls: divided by the cold time,
    // how many were in flight on average (the floor keeps two in flight throughout).
    let create_busy = prom_counter(
        registrar.metrics_port,
        "registrar_spire_call_duration_seconds_sum",
        &[("method", "BatchCreateEntry")],
    )
    .await;

    // 3. Steady state, with a resync inside the window.
    let gap = size.resync.mul_f64(1.5) / size.steady_pods as u32;
    let mut latencies = Vec::with_capacity(size.steady_pods);
    // Samples during which a ListEntries call of the registrar (its anti-entropy listing) ended.
    let mut during_listing = Vec::new();
    // How long the pod create call itself took (kube-apiserver and etcd: the part of each sample
    // no registrar can shorten).
    let mut create_calls = Vec::with_capacity(size.steady_pods);
    // The rest of each sample: watch delivery, the registrar and SPIRE's own create.
    let mut after_create = Vec::with_capacity(size.steady_pods);
    for i in 0..size.steady_pods {
        let sa = format!("steady{i}");
        let ns = ns_of(&size, i);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let id = SpiffeId::from_path(&td(), &format!("/ns/{ns}/sa/{sa}")).unwrap();
        let lists_before = prom_counter(telemetry, LISTS, &[]).await;
        let before = committed_creates(&spire).await;
        let t = Instant::now();
        create_pod(&pods, &format!("steady{i}"), &sa, &node_name(i % size.nodes), size.annotation_bytes)
            .await;
        let call = t.elapsed();
        create_calls.push(call);
        let took = wait_for_steady(&spire, before + 1, t).await;
        after_create.push(took.saturating_sub(call));
        // Read before this sample's own check below (a ListEntries call, too).
        if prom_counter(telemetry, LISTS, &[]).await > lists_before {
            during_listing.push(took);
        }
        let filter = ListFilter { by_spiffe_id: Some(id), ..Default::default() };
        assert_eq!(spire_client.list_entries(&filter).await.unwrap().len(), 1, "one entry for steady{i}");
        latencies.push(took);
        tokio::time::sleep(gap.saturating_sub(took)).await;
    }
    latencies.sort();
    create_calls.sort();
    after_create.sort();
    let total = total + size.steady_pods;
    check_count(&spire_client, total).await;

    // 4. Idle: two resync intervals with nothing changing.
    let writes = ["batch_create_entry", "batch_update_entry", "batch_delete_entry"]
        .map(|m| format!("spire_server_rpc_entry_v1_entry_{m}"));
    let count_writes = || async {
        let mut n = 0.0;
        for w in &writes {
            n += prom_counter(telemetry, w, &[]).await;
        }
        n
    };
    let (lists0, writes0) = (prom_counter(telemetry, LISTS, &[]).await, count_writes().await);
    let cpu0 = cpu_seconds(registrar.pid);
    let window = size.resync * 2;
    tokio::time::sleep(window).await;
    let idle_lists = prom_counter(telemetry, LISTS, &[]).await - lists0;
    let idle_writes = count_writes().await - writes0;
    let per_minute = idle_lists * 60.0 / window.as_secs_f64();
    let idle_cpu = cpu_seconds(registrar.pid) - cpu0;
    let hwm_kib = vm_hwm_kib(registrar.pid);
    // A pool call that timed out (or any other failed sync) is retried, and counted here.
    let sync_failures = prom_counter(registrar.metrics_port, "registrar_sync_failures_total", &[]).await;
    let turn_waits = prom_counter(registrar.metrics_port, "registrar_write_turn_waits_total", &[]).await;
    registrar.stop();
    let direct = steady_floor(&spire, &size, size.steady_pods).await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "scale bench: {} pods on {} nodes in {} namespace(s) ({} entries), a {}-byte annotation per pod, resync {:?}; cluster populated in {:.1?}",
        size.pods,
        size.nodes,
        size.namespaces,
        specs.len(),
        size.annotation_bytes,
        size.resync,
        populated
    );
    let (floor_all, cold_all) = (floor_time.all, cold.all);
    println!(
        "  floor (direct BatchCreateEntry, 50 x 2):  {floor_all:>10.2?}   (first entry after {:.2?})",
        floor_time.first
    );
    println!(
        "  cold convergence (ours):                  {cold_all:>10.2?}   ratio cold/floor = {:.2}x   (first entry after {:.2?}: start, leader lock, initial lists and read)",
        cold_all.as_secs_f64() / floor_all.as_secs_f64().max(1e-9),
        cold.first
    );
    println!(
        "    BatchCreateEntry calls: {cold_creates} (floor: {}), {:.2} in flight on average (floor: 2); registrar CPU {cold_cpu:.1} s",
        specs.len().div_ceil(50),
        create_busy / cold_all.as_secs_f64().max(1e-9)
    );
    let p = |l: &[Duration], q: f64| ms(percentile(l, q));
    println!(
        "  steady pod -> entry ({} pods):           p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        size.steady_pods,
        p(&latencies, 0.5),
        p(&latencies, 0.99),
        ms(*latencies.last().unwrap())
    );
    println!(
        "    the pod create call (kube-apiserver + etcd): p50 {:.0} ms, p99 {:.0} ms; after it returned (watch, registrar, SPIRE): p50 {:.0} ms, p99 {:.0} ms",
        p(&create_calls, 0.5),
        p(&create_calls, 0.99),
        p(&after_create, 0.5),
        p(&after_create, 0.99)
    );
    during_listing.sort();
    println!(
        "    {} of them while a listing page was answered: max {:.0} ms",
        during_listing.len(),
        during_listing.last().map_or(0.0, |d| ms(*d))
    );
    println!(
        "    floor: direct one-entry creates on that server: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; ratio p50 {:.2}x, p99 {:.2}x",
        p(&direct, 0.5),
        p(&direct, 0.99),
        ms(*direct.last().unwrap()),
        p(&latencies, 0.5) / p(&direct, 0.5).max(1e-9),
        p(&latencies, 0.99) / p(&direct, 0.99).max(1e-9)
    );
    println!(
        "  idle ({window:?}): {idle_lists} ListEntries calls = {per_minute:.1}/min (one listing per interval: {} pages), {idle_writes} writes; registrar CPU {idle_cpu:.2} s",
        total.div_ceil(k8s_workload_registrar::spire::client::PAGE_SIZE as usize)
    );
    println!(
        "  peak RSS (VmHWM): {:.1} MiB after cold convergence, {:.1} MiB at the end",
        after_cold_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    println!(
        "  registrar: {sync_failures} failed syncs (pool-call timeouts among them), {turn_waits} write-turn waits"
    );
    assert_eq!(idle_writes, 0.0, "an idle registrar wrote to SPIRE");
}
