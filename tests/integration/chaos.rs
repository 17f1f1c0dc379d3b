//! The chaos harness (see `chaos/README.md`): random cluster churn interleaved with faults —
//! actor failures, SPIRE server restarts, registrar kills — then exact convergence.
//!
//! Seeded and repeatable: `CHAOS_SEED` picks the schedule (printed on failure), `CHAOS_ROUNDS`
//! its length. CI runs the default seed; `chaos/run.sh` runs many.

use std::collections::{BTreeMap, BTreeSet};

use crate::{registrar::Registrar, stack::Stack, util::*};

/// The chaos knobs: `CHAOS_SEED` and `CHAOS_ROUNDS`.
fn schedule() -> (Rng, u64) {
    let seed = env_or("CHAOS_SEED", 0x5eed_2026);
    let rounds = env_or("CHAOS_ROUNDS", 8);
    eprintln!("chaos: CHAOS_SEED={seed} CHAOS_ROUNDS={rounds}");
    (Rng(seed | 1), rounds)
}

/// xorshift64*: tiny, deterministic, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_churn_and_faults_converge_exactly() {
    let (mut rng, rounds) = schedule();
    let mut stack = Stack::start().await;
    let k = stack.kube.client().await;
    create_namespace(&k, "chaos").await;

    // The model: what exists in Kubernetes.
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut pods: BTreeMap<String, String> = BTreeMap::new(); // pod → node
    let mut next_id = 0;
    for n in ["n0", "n1"] {
        create_node(&k, n).await;
        nodes.insert(n.to_string());
    }
    let mut reg = Registrar::start(&stack, "reg", "c", "").await;
    let mut registrar_runs = 1;

    for round in 0..rounds {
        for _ in 0..4 {
            match rng.below(10) {
                0..=3 if !nodes.is_empty() => {
                    let node = nodes.iter().nth(rng.below(nodes.len())).unwrap().clone();
                    let name = format!("p{next_id}");
                    next_id += 1;
                    pod("chaos", &name).on(&node).sa(&format!("sa{}", rng.below(3))).create(&k).await;
                    pods.insert(name, node);
                }
                4 if !pods.is_empty() => {
                    let name = pods.keys().nth(rng.below(pods.len())).unwrap().clone();
                    delete_pod(&k, "chaos", &name).await;
                    pods.remove(&name);
                }
                5 => {
                    let name = format!("node{next_id}");
                    next_id += 1;
                    create_node(&k, &name).await;
                    nodes.insert(name);
                }
                6 if nodes.len() > 1 => {
                    let name = nodes.iter().nth(rng.below(nodes.len())).unwrap().clone();
                    delete_node(&k, &name).await;
                    nodes.remove(&name);
                }
                7 => {
                    let targets = ["pods", "nodes", "pool", "worker:0", "worker:1"];
                    let mut target = targets[rng.below(targets.len())].to_string();
                    if rng.below(2) == 0 && !nodes.is_empty() {
                        target = format!("shard:{}", nodes.iter().nth(rng.below(nodes.len())).unwrap());
                    }
                    reg.inject(&target).await;
                }
                8 => stack.spire.restart().await,
                9 => {
                    reg.proc.kill();
                    registrar_runs += 1;
                    reg = Registrar::start(&stack, &format!("reg{registrar_runs}"), "c", "").await;
                }
                _ => {}
            }
        }
        eprintln!("chaos: round {round}: {} nodes, {} pods", nodes.len(), pods.len());
    }

    let mut expected: Vec<Shown> = nodes.iter().map(|n| node_entry("c", n)).collect();
    let live = stack.spire.client();
    // Pods on deleted nodes keep existing in Kubernetes (no garbage collector here) but get no entry.
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(k.clone(), "chaos");
    for (name, node) in &pods {
        if !nodes.contains(node) {
            continue;
        }
        let p = api.get(name).await.unwrap();
        let sa = p.spec.unwrap().service_account_name.unwrap();
        expected.push(pod_entry("c", node, "chaos", name, &format!("/ns/chaos/sa/{sa}")));
    }
    reg.wait_ready().await;
    converge(&live, expected).await;
    reg.proc.assert_running();
}

/// CRD mode under the same kind of schedule: pods, nodes and hand-written SpiffeIDs come and go
/// while children fail, SPIRE restarts and the registrar is killed; in the end the entries are
/// exactly the desired ones and every SpiffeID reports the entry it owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_random_churn_and_faults_converge_exactly() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use k8s_workload_registrar::crd::resource::SpiffeID;
    use kube::{
        Api,
        api::{DeleteParams, ListParams, PostParams},
    };

    let (mut rng, rounds) = schedule();
    let mut stack = Stack::start().await;
    let k = stack.kube.client().await;
    crate::crd::install_crd(&k).await;
    create_namespace(&k, "chaos").await;
    let start = |stack: &Stack, name: String| {
        let config = stack.dir.path().join(format!("{name}.conf"));
        let port = crate::stack::free_port();
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"c\"\nmode = \"crd\"\n\
                 metrics_bind_addr = \"127.0.0.1:{port}\"\nresync_interval = \"2s\"\nadd_svc_dns_name = false\n",
                stack.spire.socket.display()
            ),
        )
        .unwrap();
        (config, port, name)
    };
    let agent = "spiffe://example.org/spire/agent/x";
    let manual_api: Api<SpiffeID> = Api::namespaced(k.clone(), "chaos");
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut pods: BTreeSet<String> = BTreeSet::new();
    let mut manual: BTreeSet<String> = BTreeSet::new();
    let mut next_id = 0;
    for n in ["n0", "n1"] {
        create_node(&k, n).await;
        nodes.insert(n.to_string());
    }
    let (config, port, name) = start(&stack, "crd-chaos".into());
    let mut reg = Registrar::start_with_config(&stack, &name, config, port, &[]).await;
    let mut runs = 1;

    for round in 0..rounds {
        for _ in 0..4 {
            match rng.below(11) {
                0..=2 => {
                    let node = nodes.iter().nth(rng.below(nodes.len())).unwrap().clone();
                    let name = format!("p{next_id}");
                    next_id += 1;
                    pod("chaos", &name).on(&node).sa(&format!("sa{}", rng.below(3))).create(&k).await;
                    pods.insert(name);
                }
                3 if !pods.is_empty() => {
                    let name = pods.iter().nth(rng.below(pods.len())).unwrap().clone();
                    delete_pod(&k, "chaos", &name).await;
                    pods.remove(&name);
                }
                4 => {
                    let name = format!("m{next_id}");
                    next_id += 1;
                    let sid: SpiffeID = serde_json::from_value(serde_json::json!({
                        "apiVersion": "spiffeid.spiffe.io/v1beta1", "kind": "SpiffeID",
                        "metadata": {"name": name},
                        "spec": {"parentId": agent, "spiffeId": format!("spiffe://example.org/{name}"),
                                 "selector": {"namespace": "chaos", "podName": name}},
                    }))
                    .unwrap();
                    manual_api.create(&PostParams::default(), &sid).await.unwrap();
                    manual.insert(name);
                }
                5 if !manual.is_empty() => {
                    let name = manual.iter().nth(rng.below(manual.len())).unwrap().clone();
                    manual_api.delete(&name, &DeleteParams::default()).await.unwrap();
                    manual.remove(&name);
                }
                6 => {
                    let name = format!("node{next_id}");
                    next_id += 1;
                    create_node(&k, &name).await;
                    nodes.insert(name);
                }
                7 if nodes.len() > 1 => {
                    let name = nodes.iter().nth(rng.below(nodes.len())).unwrap().clone();
                    delete_node(&k, &name).await;
                    nodes.remove(&name);
                }
                8 => {
                    let targets =
                        ["spire_pool", "worker:0", "spiffeid_controller", "spiffeid_projector", "http"];
                    reg.inject(targets[rng.below(targets.len())]).await;
                }
                9 => stack.spire.restart().await,
                10 => {
                    reg.proc.kill();
                    runs += 1;
                    let (config, port, name) = start(&stack, format!("crd-chaos{runs}"));
                    reg = Registrar::start_with_config(&stack, &name, config, port, &[]).await;
                }
                _ => {}
            }
        }
        eprintln!(
            "chaos: round {round}: {} nodes, {} pods, {} SpiffeIDs by hand",
            nodes.len(),
            pods.len(),
            manual.len()
        );
    }

    // Desired: an alias per node; an entry per pod (no garbage collector here, so pods of deleted
    // nodes stay, and so do their entries, parented to the gone alias); one per hand-made SpiffeID.
    let mut expected = Vec::new();
    for n in &nodes {
        let uid = Api::<Node>::all(k.clone()).get(n).await.unwrap().metadata.uid.unwrap();
        expected.push(crd_node_entry("c", n, &uid));
    }
    let pod_api: Api<Pod> = Api::namespaced(k.clone(), "chaos");
    for name in &pods {
        let p = pod_api.get(name).await.unwrap();
        let spec = p.spec.unwrap();
        let (sa, node) = (spec.service_account_name.unwrap(), spec.node_name.unwrap());
        let uid = p.metadata.uid.unwrap();
        expected.push(crd_pod_entry("c", &node, "chaos", &uid, &format!("/ns/chaos/sa/{sa}"), &[name]));
    }
    for name in &manual {
        expected.push(want(
            &format!("spiffe://example.org/{name}"),
            agent,
            &["k8s:ns:chaos", &format!("k8s:pod-name:{name}")],
        ));
    }
    reg.wait_ready().await;
    let live = stack.spire.client();
    converge(&live, expected).await;
    // Every SpiffeID reports exactly the entry it owns.
    eventually("every SpiffeID's status names its own entry", std::time::Duration::from_secs(60), || async {
        let all = Api::<SpiffeID>::all(k.clone()).list(&ListParams::default()).await.ok()?;
        all.items
            .iter()
            .all(|s| {
                let own = format!("spiffeid-{}", s.metadata.uid.as_deref().unwrap_or_default());
                s.metadata.deletion_timestamp.is_some()
                    || s.status.as_ref().and_then(|st| st.entry_id.as_deref()) == Some(own.as_str())
            })
            .then_some(())
    })
    .await;
    reg.proc.assert_running();
}
