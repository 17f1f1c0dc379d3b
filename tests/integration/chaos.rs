//! The chaos harness (see `chaos/README.md`): random cluster churn interleaved with faults —
//! actor failures, SPIRE server restarts, registrar kills — then exact convergence.
//!
//! Seeded and repeatable: `CHAOS_SEED` picks the schedule (printed on failure), `CHAOS_ROUNDS`
//! its length. CI runs the default seed; `chaos/run.sh` runs many.

use std::collections::{BTreeMap, BTreeSet};

use crate::{registrar::Registrar, stack::Stack, util::*};

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
    let seed = env_or("CHAOS_SEED", 0x5eed_2026);
    let rounds = env_or("CHAOS_ROUNDS", 8);
    eprintln!("chaos: CHAOS_SEED={seed} CHAOS_ROUNDS={rounds}");
    let mut rng = Rng(seed | 1);
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
