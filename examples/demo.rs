//! `cargo run --example demo`: the registrar on a local embedded stack, no cluster needed.
//!
//! Starts etcd, kube-apiserver and spire-server on loopback (built once per machine by
//! `tests/testbin/build.sh`), runs three registrars in reconcile mode — service-account IDs,
//! label IDs and annotation IDs, each under its own `cluster` — creates example nodes and pods,
//! and prints the SPIRE entries that appear. `--wait` keeps everything running until Ctrl-C so
//! you can poke at it with kubectl and the spire-server CLI.

#[path = "../tests/integration/stack/mod.rs"]
#[allow(dead_code)]
mod stack;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_workload_registrar::{app, config, spire::ListFilter};
use kube::{Api, api::PostParams};
use serde_json::json;

const REGISTRARS: [(&str, &str); 3] = [
    ("demo", ""),
    ("demo-label", "pod_label = \"spiffe.io/spiffe-id\""),
    ("demo-annotation", "pod_annotation = \"spiffe.io/spiffe-id\""),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wait = std::env::args().any(|a| a == "--wait");
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("Starting etcd, kube-apiserver and spire-server (the first run builds them; see README)...");
    let stack = stack::Stack::start().await;
    // After start-up, so the readiness polling's expected failures stay quiet.
    k8s_workload_registrar::telemetry::init("warn", false, None)?;
    let client = stack.kube.client().await;
    println!("  kubeconfig:   {}", stack.kube.kubeconfig.display());
    println!("  SPIRE socket: {}", stack.spire.socket.display());
    stack::set_bundle(&stack.spire, stack.dir.path(), "partner.example");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (cluster, extra) in REGISTRARS {
        let text = format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"{cluster}\"\n\
             mode = \"reconcile\"\nmetrics_addr = \"0\"\n{extra}\n",
            stack.spire.socket.display()
        );
        let cfg = config::parse(&text)?;
        let kube_config = stack.kube.config().await;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = app::run(&cfg, Some(kube_config), shutdown).await {
                eprintln!("registrar for cluster {cluster} failed: {e}");
            }
        }));
        println!(
            "Registrar running: cluster {cluster:?} {}",
            if extra.is_empty() { "(service-account IDs)" } else { extra }
        );
    }

    println!("Creating nodes and pods...");
    for name in ["shop"] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    }
    for name in ["node-a", "node-b"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await?;
    }
    let pods = [
        ("frontend", "node-a", "web", json!({}), json!({"spiffe.io/spiffe-id": "shop/frontend"})),
        (
            "checkout",
            "node-b",
            "payments",
            json!({"spiffe.io/spiffe-id": "checkout"}),
            json!({"spiffe.io/federatesWith": "partner.example"}),
        ),
        ("worker", "node-b", "batch", json!({}), json!({})),
    ];
    for (name, node, sa, labels, annotations) in pods {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app", "image": "busybox"}]},
        }))?;
        Api::<Pod>::namespaced(client.clone(), "shop").create(&PostParams::default(), &pod).await?;
    }

    // 3 registrars × 2 node entries, 3 service-account entries, 1 label entry, 1 annotation entry.
    let spire = stack.spire.client();
    let expected = 6 + 3 + 1 + 1;
    let mut entries = Vec::new();
    for _ in 0..120 {
        entries = spire.list_entries(&ListFilter::default()).await?;
        if entries.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut by_parent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &entries {
        let s = &e.spec;
        let mut line = format!(
            "{}  [{}]",
            s.spiffe_id,
            s.selectors.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
        );
        if !s.federates_with.is_empty() {
            line.push_str(&format!("  federates with {:?}", s.federates_with));
        }
        by_parent.entry(s.parent_id.to_string()).or_default().push(line);
    }
    println!("\nSPIRE entries ({}):", entries.len());
    for (parent, mut lines) in by_parent {
        lines.sort();
        println!("  parent {parent}");
        for l in lines {
            println!("    {l}");
        }
    }
    if entries.len() != expected {
        eprintln!("\nexpected {expected} entries, found {}", entries.len());
    }
    if wait {
        println!(
            "\nRunning until Ctrl-C. Try: {} entry show -socketPath {}",
            stack::bin("spire-server").display(),
            stack.spire.socket.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if entries.len() != expected {
        return Err("the demo did not produce the expected entries".into());
    }
    Ok(())
}
