//! Proves the test stack is real: objects round-trip through kube-apiserver + etcd, and entries
//! round-trip through spire-server (checked with both our client and SPIRE's own CLI).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_workload_registrar::{
    id::{SpiffeId, TrustDomain},
    model::{EntrySpec, Selector, Selectors},
    spire::ListFilter,
};
use kube::{Api, api::PostParams};
use serde_json::json;

use crate::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_is_real() {
    let stack = Stack::start().await;
    let client = stack.kube.client().await;

    // Kubernetes: namespace, node and pod written to etcd and read back.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "stack-test"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": "node-a", "labels": {"zone": "z1"}}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "stack-test");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "serviceAccountName": "web-sa",
                 "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    assert_eq!(namespaces.get("stack-test").await.unwrap().metadata.name.as_deref(), Some("stack-test"));
    let got_node = nodes.get("node-a").await.unwrap();
    assert_eq!(got_node.metadata.labels.unwrap()["zone"], "z1");
    let got = pods.get("web").await.unwrap();
    let spec = got.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(spec.service_account_name.as_deref(), Some("web-sa"));
    assert!(got.metadata.uid.is_some(), "the API server assigns a uid");
    assert!(got.metadata.resource_version.is_some(), "etcd assigns a resourceVersion");

    // SPIRE: create, list (ours and the CLI), delete.
    let spire = stack.spire.client();
    let td = TrustDomain::parse("example.org").unwrap();
    let spec = EntrySpec {
        spiffe_id: SpiffeId::from_path(&td, "/ns/stack-test/sa/web-sa").unwrap(),
        parent_id: SpiffeId::from_path(&td, "/test/node/node-a").unwrap(),
        selectors: Selectors::from([Selector::k8s("ns:stack-test"), Selector::k8s("pod-name:web")]),
        dns_names: vec!["web.stack-test.svc".into()],
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    };
    let created = spire.create_entries(std::slice::from_ref(&spec)).await.unwrap();
    let created = created.into_iter().next().unwrap().expect("entry created");
    assert_eq!(created.spec, spec);
    assert!(!created.id.is_empty());

    let listed = spire
        .list_entries(&ListFilter { by_parent_id: Some(spec.parent_id.clone()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(listed, vec![created.clone()]);

    let cli = stack.spire.cli_entries();
    assert_eq!(cli.len(), 1, "{cli:?}");
    assert_eq!(cli[0]["id"], created.id.as_str());
    assert_eq!(cli[0]["spiffe_id"]["path"], "/ns/stack-test/sa/web-sa");
    assert_eq!(cli[0]["parent_id"]["path"], "/test/node/node-a");
    assert_eq!(cli[0]["dns_names"][0], "web.stack-test.svc");

    let deleted = spire.delete_entries(std::slice::from_ref(&created.id)).await.unwrap();
    assert!(deleted[0].is_ok());
    assert!(stack.spire.cli_entries().is_empty());
}
