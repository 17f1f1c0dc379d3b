//! The shipped RBAC (`deploy/reconcile/rbac.yaml`) is enough: the registrar, authenticated as
//! the `spire/spire-server` ServiceAccount with only those permissions, watches, elects a leader
//! with a Lease, records Events and registers pods.

use std::time::Duration;

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Event, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};

use crate::{
    registrar::{Registrar, base_config},
    stack::{Stack, free_port},
    util::*,
};

/// Creates the RBAC objects (and ServiceAccounts) of a multi-document YAML manifest from
/// `deploy/`; other kinds (Deployments, Services, ...) are skipped — nothing would run them here.
pub async fn apply(client: &kube::Client, manifest: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let pp = PostParams::default();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let ns = doc.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("default").to_string();
        let c = client.clone();
        match doc["kind"].as_str().unwrap() {
            "ServiceAccount" => {
                let o: ServiceAccount = serde_json::from_value(doc).unwrap();
                Api::namespaced(c, &ns).create(&pp, &o).await.unwrap();
            }
            "ClusterRole" => {
                let o: ClusterRole = serde_json::from_value(doc).unwrap();
                Api::all(c).create(&pp, &o).await.unwrap();
            }
            "ClusterRoleBinding" => {
                let o: ClusterRoleBinding = serde_json::from_value(doc).unwrap();
                Api::all(c).create(&pp, &o).await.unwrap();
            }
            "Role" => {
                let o: Role = serde_json::from_value(doc).unwrap();
                Api::namespaced(c, &ns).create(&pp, &o).await.unwrap();
            }
            "RoleBinding" => {
                let o: RoleBinding = serde_json::from_value(doc).unwrap();
                Api::namespaced(c, &ns).create(&pp, &o).await.unwrap();
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_reconcile_rbac_is_sufficient() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "spire").await;
    create_namespace(&k, "apps").await;
    apply(&k, "deploy/reconcile/rbac.yaml").await;
    create_node(&k, "n1").await;
    pod("apps", "web").on("n1").sa("web").create(&k).await;
    pod("apps", "bad")
        .on("n1")
        .sa("bad")
        .annotation("spiffe.io/federatesWith", "not a domain")
        .create(&k)
        .await;

    let metrics_port = free_port();
    let config = stack.dir.path().join("rbac.conf");
    let extra = "leader_election = true\nleader_election_resource_lock = \"leases\"\n";
    std::fs::write(&config, base_config(&stack, "c", metrics_port, extra)).unwrap();
    let kubeconfig = stack.kube.registrar_kubeconfig.display().to_string();
    let reg = Registrar::start_with_config(
        &stack,
        "reg",
        config,
        metrics_port,
        &[("KUBECONFIG", kubeconfig.as_str()), ("POD_NAMESPACE", "spire")],
    )
    .await;
    reg.wait_ready().await;
    converge(&spire, vec![node_entry("c", "n1"), pod_entry("c", "n1", "apps", "web", "/ns/apps/sa/web")])
        .await;

    let lease = Api::<Lease>::namespaced(k.clone(), "spire")
        .get("spire-k8s-registrar-leader-election")
        .await
        .unwrap();
    assert!(lease.spec.unwrap().holder_identity.unwrap().starts_with("reg_"));
    let events: Api<Event> = Api::namespaced(k.clone(), "apps");
    eventually("an Event recorded with the shipped permissions", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.involved_object.name.as_deref() == Some("bad"))
    })
    .await;
    assert!(!reg.proc.log_text().contains("forbidden"), "a permission is missing:\n{}", reg.proc.log_tail());

    // The identity really is restricted: it may not, for example, create namespaces.
    let kc = kube::config::Kubeconfig::read_from(&stack.kube.registrar_kubeconfig).unwrap();
    let restricted =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap())
            .unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "nope"}})).unwrap();
    let err = Api::all(restricted).create(&PostParams::default(), &ns).await.unwrap_err().to_string();
    assert!(err.contains("forbidden"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_crd_rbac_is_sufficient() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    crate::crd::install_crd(&k).await;
    create_namespace(&k, "spire").await;
    create_namespace(&k, "apps").await;
    apply(&k, "deploy/crd/rbac.yaml").await;
    let node_uid = create_node(&k, "n1").await;
    let web_uid = pod("apps", "web").on("n1").sa("web").create(&k).await.metadata.uid.unwrap();

    let port = free_port();
    let config = stack.dir.path().join("crd-rbac.conf");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"c1\"\nmode = \"crd\"\n\
             metrics_bind_addr = \"127.0.0.1:{port}\"\nresync_interval = \"2s\"\nleader_election = true\n\
             leader_election_resource_lock = \"leases\"\n",
            stack.spire.socket.display()
        ),
    )
    .unwrap();
    let kubeconfig = stack.kube.registrar_kubeconfig.display().to_string();
    let reg = Registrar::start_with_config(
        &stack,
        "crd",
        config,
        port,
        &[("KUBECONFIG", kubeconfig.as_str()), ("POD_NAMESPACE", "spire")],
    )
    .await;
    let web = crd_pod_entry("c1", "n1", "apps", &web_uid, "/ns/apps/sa/web", &["web"]);
    converge(&spire, vec![crd_node_entry("c1", "n1", &node_uid), web]).await;
    assert!(!reg.proc.log_text().contains("forbidden"), "a permission is missing:\n{}", reg.proc.log_tail());
}
