//! The Helm chart (`deploy/helm/k8s-workload-registrar`) against a real `helm` and a real
//! kube-apiserver: it lints and renders for every topology × mode, what it renders is accepted by
//! the API server (server-side apply) in a namespace enforcing Pod Security `restricted`, Pods
//! made from its pod templates are admitted there, and the registrar — authenticated as the
//! rendered ServiceAccount, holding only the rendered RBAC, reading the rendered config — registers
//! pods in every mode. The plain manifests in `deploy/manifests/` are exactly its output.

use std::{path::PathBuf, process::Command, time::Duration};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Event};
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{
    registrar::Registrar,
    stack::{Kube, Stack, bin, free_port},
    util::*,
};

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/k8s-workload-registrar");
/// With this release name the chart's objects are all called `k8s-workload-registrar`.
pub const RELEASE: &str = "k8s-workload-registrar";
pub const TOPOLOGIES: [&str; 2] = ["standalone", "sidecar"];
pub const MODES: [&str; 3] = ["webhook", "reconcile", "crd"];

fn helm(args: &[&str]) -> std::process::Output {
    Command::new(bin("helm")).args(args).output().expect("run helm")
}

/// `--set` arguments that every render needs for `mode` (webhook mode cannot render without the
/// CA of its serving certificate).
fn required_sets(mode: &str) -> Vec<String> {
    let mut sets = vec![format!("mode={mode}")];
    if mode == "webhook" {
        sets.push("webhook.caBundle=Q0E=".into());
    }
    sets
}

/// `helm template` of the chart; panics with helm's message when it fails.
pub fn render(release: &str, ns: &str, sets: &[String]) -> Vec<Value> {
    let out = try_render(release, ns, sets);
    out.unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"))
}

fn try_render(release: &str, ns: &str, sets: &[String]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", release, CHART, "--namespace", ns];
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = helm(&args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| format!("{e}\n{text}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// What a registrar run outside the cluster needs of a render: its ServiceAccount, RBAC and (crd
/// mode) CRD; nothing that would run or route anything.
pub fn access(docs: &[Value]) -> Vec<Value> {
    const KINDS: [&str; 6] = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "CustomResourceDefinition",
    ];
    docs.iter().filter(|d| d["kind"].as_str().is_some_and(|k| KINDS.contains(&k))).cloned().collect()
}

/// The registrar's config file from the rendered ConfigMap.
pub fn rendered_config(docs: &[Value]) -> String {
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["registrar.conf"].is_string())
        .and_then(|d| d["data"]["registrar.conf"].as_str())
        .expect("a ConfigMap with registrar.conf")
        .to_string()
}

/// Server-side applies `docs` (CustomResourceDefinitions first, then waits until they are
/// established), as `kubectl apply --server-side` would.
pub async fn apply(client: &kube::Client, docs: &[Value]) {
    let (crds, rest): (Vec<&Value>, Vec<&Value>) =
        docs.iter().partition(|d| d["kind"] == "CustomResourceDefinition");
    for doc in &crds {
        apply_one(client, doc).await;
    }
    for doc in &crds {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let api: Api<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = Api::all(client.clone());
        eventually("the CRD to be established", Duration::from_secs(30), || async {
            let crd = api.get(name).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
    }
    for doc in rest {
        apply_one(client, doc).await;
    }
}

async fn apply_one(client: &kube::Client, doc: &Value) {
    let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", doc["apiVersion"].as_str().unwrap()),
    };
    let gvk = GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap());
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discovery of {gvk:?}: {e}"));
    let name = doc["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), doc["metadata"]["namespace"].as_str().unwrap(), &resource)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(name, &PatchParams::apply("kwr-chart-test").force(), &Patch::Apply(doc))
        .await
        .unwrap_or_else(|e| panic!("server-side apply of {} {name}: {e}", gvk.kind));
}

/// A namespace in which the API server enforces Pod Security `restricted` on every Pod.
pub async fn create_restricted_namespace(client: &kube::Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }}
    }))
    .unwrap();
    Api::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// A Pod with the spec of a rendered Deployment's or StatefulSet's pod template (volume claim
/// templates become the claims the StatefulSet controller would make).
fn pod_from_template(workload: &Value) -> Value {
    let name = workload["metadata"]["name"].as_str().unwrap();
    let mut spec = workload["spec"]["template"]["spec"].clone();
    if let Some(claims) = workload["spec"]["volumeClaimTemplates"].as_array() {
        let volumes = spec["volumes"].as_array_mut().unwrap();
        for claim in claims {
            let claim = claim["metadata"]["name"].as_str().unwrap();
            volumes.push(
                json!({"name": claim, "persistentVolumeClaim": {"claimName": format!("{claim}-{name}-0")}}),
            );
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{name}-from-template"),
            "namespace": workload["metadata"]["namespace"],
            "labels": workload["spec"]["template"]["metadata"]["labels"],
        },
        "spec": spec,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_for_every_topology_and_mode_and_refuses_bad_values() {
    for topology in TOPOLOGIES {
        for mode in MODES {
            let mut args = vec!["lint".to_string(), CHART.to_string(), "--strict".into()];
            for s in required_sets(mode).into_iter().chain([format!("topology={topology}")]) {
                args.extend(["--set".into(), s]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = helm(&args);
            assert!(
                out.status.success(),
                "helm {args:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Values that cannot work fail the render with the key that is wrong.
    let refused = |sets: &[&str], key: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = try_render(RELEASE, "spire", &sets).expect_err("render must fail");
        assert!(err.contains(key), "{sets:?} fails without naming {key}: {err}");
    };
    refused(&["topology=daemonset"], "topology");
    refused(&["mode=webhooks"], "mode");
    refused(&["mode=webhook"], "webhook.caBundle");
    refused(&["topology=sidecar", "replicas=2"], "sidecar.spireServer.datastore.type");
    refused(&["replicas=2", "leaderElection.enabled=false"], "leaderElection.enabled");
    refused(&["podLabel=a", "podAnnotation=b"], "podLabel");
    refused(&["standalone.agentSocket.csiDriver="], "standalone.agentSocket");
    refused(&["mode=crd", "dryRun=true"], "dryRun");
    refused(&["mode=crd", "entries.hint=kwr"], "entries");
    // dryRun and the managed entry fields reach the config, which the registrar accepts.
    let sets = ["mode=reconcile", "dryRun=true", "entries.hint=kwr/prod", "entries.x509SvidTtl=1h"];
    let docs = render(RELEASE, "spire", &sets.map(String::from));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("registrar.conf");
    std::fs::write(&conf, rendered_config(&docs)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_k8s-workload-registrar"))
        .args(["validate", "-config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["dry_run"], true, "{effective}");
    assert_eq!(
        effective["managed"],
        serde_json::json!({"x509_svid_ttl": 3600, "jwt_svid_ttl": 0, "hint": "kwr/prod"})
    );
    // The sidecar's rendered server.conf passes the real spire-server's own check (HCL syntax and
    // the server section; plugin settings are only checked when a server starts in a cluster).
    let docs = render(RELEASE, "spire", &["topology=sidecar".into()]);
    let server_conf = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["server.conf"].is_string())
        .and_then(|d| d["data"]["server.conf"].as_str())
        .expect("spire-server's ConfigMap")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(&path, &server_conf).unwrap();
    let out = Command::new(bin("spire-server")).args(["validate", "-config"]).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{server_conf}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&path, server_conf.replace("example.org", "Not A Domain")).unwrap();
    let out = Command::new(bin("spire-server")).args(["validate", "-config"]).arg(&path).output().unwrap();
    assert!(!out.status.success(), "spire-server validate accepts anything");

    // The PodMonitor renders when asked for (applying it needs the Prometheus Operator's CRD).
    let docs = render(RELEASE, "spire", &["metrics.podMonitor.enabled=true".into()]);
    let monitor = docs.iter().find(|d| d["kind"] == "PodMonitor").expect("a PodMonitor");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
}

/// Every topology × mode, applied to the real API server in a namespace that enforces Pod
/// Security `restricted`; a Pod made from each rendered pod template is admitted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_applies_and_its_pods_pass_restricted_pod_security() {
    let dir = tempfile::Builder::new().prefix("kwr-chart-").tempdir_in("/tmp").unwrap();
    let kube = Kube::start(dir.path(), Default::default()).await;
    let k = kube.client().await;

    // The control: this API server does enforce the level (an unhardened pod is refused).
    create_restricted_namespace(&k, "control").await;
    let bare: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "k8s-workload-registrar:0.1.0"}]},
    }))
    .unwrap();
    let err = Api::namespaced(k.clone(), "control").create(&PostParams::default(), &bare).await.unwrap_err();
    assert!(err.to_string().contains("violates PodSecurity \"restricted:latest\""), "{err}");

    for topology in TOPOLOGIES {
        for mode in MODES {
            let ns = format!("{topology}-{mode}");
            create_restricted_namespace(&k, &ns).await;
            let mut sets = required_sets(mode);
            sets.push(format!("topology={topology}"));
            if topology == "sidecar" {
                // Two spire-servers need a shared datastore (the chart refuses sqlite3 for them).
                sets.extend([
                    "replicas=2".into(),
                    "sidecar.spireServer.datastore.type=postgres".into(),
                    "sidecar.spireServer.datastore.connectionString=dbname=spire host=db".into(),
                ]);
            }
            if mode == "crd" {
                sets.extend(["crd.webhook.enabled=true".into(), "crd.webhook.certSecretName=certs".into()]);
                sets.push("crd.webhook.caBundle=Q0E=".into());
            }
            // One release per namespace, so cluster-scoped names differ too.
            let docs = render(&format!("r-{ns}"), &ns, &sets);
            apply(&k, &docs).await;

            let workloads: Vec<&Value> =
                docs.iter().filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet").collect();
            assert_eq!(workloads.len(), 1, "{ns}: one workload");
            let expected = if topology == "standalone" { "Deployment" } else { "StatefulSet" };
            assert_eq!(workloads[0]["kind"], expected, "{ns}");
            let containers = workloads[0]["spec"]["template"]["spec"]["containers"].as_array().unwrap();
            let registrar = containers.iter().find(|c| c["name"] == "k8s-workload-registrar").unwrap();
            assert!(registrar["livenessProbe"].is_object(), "{ns}: a liveness probe");
            // In the sidecar topology the pod's readiness must be spire-server's alone.
            assert_eq!(
                registrar["readinessProbe"].is_object(),
                topology == "standalone",
                "{ns}: readiness probe"
            );
            let pod = pod_from_template(workloads[0]);
            apply(&k, std::slice::from_ref(&pod)).await;
            let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
            for kind in
                ["ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
            {
                assert!(kinds.contains(&kind), "{ns}: no {kind} in {kinds:?}");
            }
            assert!(
                kinds.contains(&"PodDisruptionBudget"),
                "{ns}: replicas 2 come with a PodDisruptionBudget"
            );
            assert_eq!(kinds.contains(&"ValidatingWebhookConfiguration"), mode != "reconcile", "{ns}");
            assert_eq!(kinds.contains(&"CustomResourceDefinition"), mode == "crd", "{ns}");
        }
    }
}

/// Renders the sidecar topology for `mode` into namespace `spire` and applies its RBAC (and
/// CRD); returns the config with the container paths mapped to the test stack's, and a
/// kubeconfig of the rendered ServiceAccount.
/// `remap` replaces further container paths (a prefix → a local one).
pub async fn install_for_local_run(
    stack: &Stack,
    mode: &str,
    metrics_port: u16,
    sets: &[String],
    remap: &[(&str, String)],
) -> (PathBuf, PathBuf) {
    let k = stack.kube.client().await;
    create_namespace(&k, "spire").await;
    let mut all = required_sets(mode);
    all.extend([
        "topology=sidecar".into(),
        format!("metrics.port={metrics_port}"),
        "resyncInterval=2s".into(),
        "logFormat=text".into(),
    ]);
    all.extend(sets.iter().cloned());
    let docs = render(RELEASE, "spire", &all);
    apply(&k, &access(&docs)).await;
    let mut config = rendered_config(&docs)
        .replace("/tmp/spire-server/private/api.sock", &stack.spire.socket.display().to_string());
    for (from, to) in remap {
        config = config.replace(from, to);
    }
    let path = stack.dir.path().join(format!("chart-{mode}.conf"));
    std::fs::write(&path, config).unwrap();
    let kubeconfig = stack.kube.service_account_kubeconfig("spire", RELEASE, "127.0.0.1").await;
    (path, kubeconfig)
}

pub async fn start_as_rendered(
    stack: &Stack,
    name: &str,
    config: PathBuf,
    port: u16,
    kubeconfig: &std::path::Path,
) -> Registrar {
    let kubeconfig = kubeconfig.display().to_string();
    Registrar::start_with_config(
        stack,
        name,
        config,
        port,
        &[("KUBECONFIG", kubeconfig.as_str()), ("POD_NAMESPACE", "spire")],
    )
    .await
}

fn assert_no_permission_missing(reg: &Registrar) {
    assert!(!reg.proc.log_text().contains("forbidden"), "a permission is missing:\n{}", reg.proc.log_tail());
}

/// Reconcile mode with the chart's RBAC and config: watches, elects with a Lease, records Events
/// and registers pods; the identity really is restricted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_and_config_register_pods_in_reconcile_mode() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "apps").await;
    create_node(&k, "n1").await;
    pod("apps", "web").on("n1").sa("web").create(&k).await;
    pod("apps", "bad")
        .on("n1")
        .sa("bad")
        .annotation("spiffe.io/federatesWith", "not a domain")
        .create(&k)
        .await;
    // The chart's default cluster is `production`; the shared helpers expect `c`.
    let port = free_port();
    let (config, kubeconfig) = install_for_local_run(
        &stack,
        "reconcile",
        port,
        &["cluster=c".into(), "reconcile.addPodDnsNames=true".into()],
        &[],
    )
    .await;
    let reg = start_as_rendered(&stack, "reg", config, port, &kubeconfig).await;
    reg.wait_ready().await;
    converge(&spire, vec![node_entry("c", "n1"), pod_entry("c", "n1", "apps", "web", "/ns/apps/sa/web")])
        .await;

    let lease = Api::<Lease>::namespaced(k.clone(), "spire")
        .get("spire-k8s-registrar-leader-election")
        .await
        .unwrap();
    assert!(lease.spec.unwrap().holder_identity.unwrap().starts_with("reg_"));
    let events: Api<Event> = Api::namespaced(k.clone(), "apps");
    eventually("an Event recorded with the chart's permissions", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.involved_object.name.as_deref() == Some("bad"))
    })
    .await;
    assert_no_permission_missing(&reg);

    // The identity really is restricted: it may not, for example, create namespaces, nor update
    // a lease other than its own.
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let restricted =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap())
            .unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "nope"}})).unwrap();
    let err = Api::all(restricted.clone()).create(&PostParams::default(), &ns).await.unwrap_err().to_string();
    assert!(err.contains("forbidden"), "{err}");
    let other: Lease = serde_json::from_value(json!({"metadata": {"name": "someone-elses"}})).unwrap();
    Api::<Lease>::namespaced(k.clone(), "spire").create(&PostParams::default(), &other).await.unwrap();
    let err = Api::<Lease>::namespaced(restricted, "spire")
        .replace("someone-elses", &PostParams::default(), &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("forbidden"), "{err}");
}

/// CRD mode with the chart's RBAC, CRD and config: node and pod SpiffeIDs, their entries, a Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_and_config_register_pods_in_crd_mode() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "apps").await;
    let node_uid = create_node(&k, "n1").await;
    let web_uid = pod("apps", "web").on("n1").sa("web").create(&k).await.metadata.uid.unwrap();
    let port = free_port();
    let (config, kubeconfig) = install_for_local_run(&stack, "crd", port, &["cluster=c1".into()], &[]).await;
    let reg = start_as_rendered(&stack, "crd", config, port, &kubeconfig).await;
    let web = crd_pod_entry("c1", "n1", "apps", &web_uid, "/ns/apps/sa/web", &["web"]);
    converge(&spire, vec![crd_node_entry("c1", "n1", &node_uid), web]).await;
    Api::<Lease>::namespaced(k.clone(), "spire")
        .get("k8s-workload-registrar-crd-leader-election")
        .await
        .expect("the crd-mode lock");
    assert_no_permission_missing(&reg);
}

/// `deploy/manifests/` is exactly what `deploy/render-manifests.sh` renders from the chart now.
#[test]
fn committed_manifests_are_the_charts_output() {
    let out = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new("bash")
        .arg(root.join("deploy/render-manifests.sh"))
        .arg(out.path())
        .env("HELM", bin("helm"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for topology in TOPOLOGIES {
        for mode in MODES {
            let name = format!("{topology}-{mode}.yaml");
            let fresh = std::fs::read_to_string(out.path().join(&name)).unwrap();
            let committed = std::fs::read_to_string(root.join("deploy/manifests").join(&name))
                .unwrap_or_else(|e| panic!("deploy/manifests/{name}: {e}"));
            assert!(fresh == committed, "deploy/manifests/{name} is stale: run deploy/render-manifests.sh");
        }
    }
}
