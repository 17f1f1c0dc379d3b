//! Webhook mode against the real stack: kube-apiserver calls the registrar's
//! ValidatingAdmissionWebhook over HTTPS, presenting a client certificate configured through its
//! AdmissionConfiguration; entries appear and vanish in the real spire-server.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use base64::Engine;
use k8s_openapi::api::{admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::Pod};
use kube::{Api, api::PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    registrar::{Registrar, metric_value},
    stack::{KubeOptions, Stack, certs::TestCa, free_port},
    util::*,
};

const CLUSTER_NODE: &str = "spiffe://example.org/k8s-workload-registrar/wc/node";

struct Pki {
    ca: TestCa,
    /// Removed when the test ends, like the stack's own temp dir.
    dir: tempfile::TempDir,
}

impl Pki {
    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A stack whose API server presents `client` certs to webhooks.
async fn webhook_stack() -> (Stack, Pki) {
    let dir = tempfile::Builder::new().prefix("kwr-wh-").tempdir_in("/tmp").unwrap();
    let pki = Pki { ca: TestCa::new("registrar webhook ca"), dir };
    let (client_cert, client_key) = pki.ca.leaf("kube-apiserver", &[], true);
    let kubeconfig = pki.write(
        "webhook-kubeconfig.yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate-data: {}\n    \
             client-key-data: {}\n",
            b64(&client_cert),
            b64(&client_key)
        ),
    );
    let admission = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n\
         - name: ValidatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    \
         kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
        kubeconfig.display()
    );
    let stack = Stack::start_with(KubeOptions { admission_config: Some(admission) }).await;
    (stack, pki)
}

/// Starts the registrar in webhook mode and registers it with the API server.
async fn start_registrar(stack: &Stack, pki: &Pki, name: &str, port: u16, extra: &str) -> Registrar {
    start_registrar_env(stack, pki, name, port, extra, &[]).await
}

async fn start_registrar_env(
    stack: &Stack,
    pki: &Pki,
    name: &str,
    port: u16,
    extra: &str,
    env: &[(&str, &str)],
) -> Registrar {
    let (cert, key) = pki.ca.leaf("registrar", &["127.0.0.1", "localhost"], false);
    let cert = pki.write(&format!("{name}-server.pem"), &cert);
    let key = pki.write(&format!("{name}-server-key.pem"), &key);
    let ca = pki.write("ca.pem", &pki.ca.cert_pem);
    let metrics_port = free_port();
    let config = stack.dir.path().join(format!("{name}.conf"));
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{sock}\"\ncluster = \"wc\"\nlog_level = \"debug\"\n\
             addr = \"127.0.0.1:{port}\"\ncert_path = \"{cert}\"\nkey_path = \"{key}\"\ncacert_path = \"{ca}\"\n\
             metrics_addr = \"127.0.0.1:{metrics_port}\"\nresync_interval = \"2s\"\n{extra}\n",
            sock = stack.spire.socket.display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.display(),
        ),
    )
    .unwrap();
    let r = Registrar::start_with_config(stack, name, config, metrics_port, env).await;
    r.proc.wait_for_port(port, Duration::from_secs(30)).await;
    r
}

async fn register_webhook(stack: &Stack, pki: &Pki, port: u16, failure_policy: &str) {
    let k = stack.kube.client().await;
    let cfg: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "k8s-workload-registrar-webhook"},
        "webhooks": [{
            "name": "k8s-workload-registrar.spire.svc",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate"), "caBundle": b64(&pki.ca.cert_pem)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "DELETE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": failure_policy,
            "sideEffects": "NoneOnDryRun",
            "admissionReviewVersions": ["v1", "v1beta1"],
            "timeoutSeconds": 10,
        }],
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(k).create(&PostParams::default(), &cfg).await.unwrap();
}

fn cluster_entry() -> Shown {
    want(CLUSTER_NODE, "spiffe://example.org/spire/server", &["k8s_psat:cluster:wc"])
}

fn pod_entry(ns: &str, pod: &str, path: &str) -> Shown {
    want(
        &format!("spiffe://example.org{path}"),
        CLUSTER_NODE,
        &[&format!("k8s:ns:{ns}"), &format!("k8s:pod-name:{pod}")],
    )
}

/// POSTs `body` to the webhook over TLS, with or without a client certificate.
async fn post_review(pki: &Pki, port: u16, body: &str, client_cert: bool) -> Result<(u16, String), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if client_cert {
        let (cert, key) = pki.ca.leaf("kube-apiserver", &[], true);
        let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let req = format!(
        "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no response: {text:?}"))?;
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_creates_and_deletes_entries() {
    let (stack, pki) = webhook_stack().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    let port = free_port();
    let reg =
        start_registrar(&stack, &pki, "wh", port, "pod_label = \"spiffe.io/id\"\nlog_format = \"json\"")
            .await;
    register_webhook(&stack, &pki, port, "Fail").await;
    create_namespace(&k, "apps").await;
    converge(&spire, vec![cluster_entry()]).await;
    let m = reg.metrics().await;
    for (operation, outcome) in [("update", "denied"), ("invalid", "bad_request"), ("create", "error")] {
        let v = metric_value(&m, "webhook_requests_total", &[("operation", operation), ("outcome", outcome)]);
        assert_eq!(v, Some(0.0), "{operation}/{outcome} exists at 0 before any request: {m}");
    }
    assert_eq!(metric_value(&m, "webhook_tls_handshake_failures_total", &[("reason", "timeout")]), Some(0.0));
    // Only pods created in a later second than the registrar's start count for the latency
    // (creationTimestamp has whole seconds): a sleep for the clock's resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The API server reaches the webhook (with its client certificate) on every pod create.
    pod("apps", "web").label("spiffe.io/id", "web").create(&k).await;
    pod("apps", "nolabel").create(&k).await;
    pod("kube-system", "dns").label("spiffe.io/id", "dns").create(&k).await; // disabled namespace
    // Admission is synchronous: the entry exists as soon as the create returned.
    assert_eq!(all_shown(&spire).await, {
        let mut v = vec![cluster_entry(), pod_entry("apps", "web", "/web")];
        v.sort();
        v
    });
    // The admission recorded web's registration latency; once the cluster shard has seen the
    // pod too (its create answered "already exists"), it is still recorded once.
    eventually("the cluster shard's pass over web", Duration::from_secs(30), || async {
        let m = reg.metrics().await;
        metric_value(&m, "registrar_entry_ops_total", &[("op", "create"), ("outcome", "exists")])
            .filter(|v| *v >= 1.0)
    })
    .await;
    let m = reg.metrics().await;
    assert_eq!(metric_value(&m, "registrar_registration_latency_seconds_count", &[]), Some(1.0), "{m}");
    assert_eq!(
        metric_value(&m, "registrar_entry_ops_total", &[("op", "create"), ("outcome", "ok")]),
        Some(2.0)
    );

    // A dry-run create changes nothing.
    let p: Pod =
        serde_json::from_value(json!({"metadata": {"name": "dry", "labels": {"spiffe.io/id": "dry"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(k.clone(), "apps");
    pods.create(&PostParams { dry_run: true, ..Default::default() }, &p).await.unwrap();
    // An invalid identity is denied with the reason (empty label value: no valid path segment).
    let bad: Pod =
        serde_json::from_value(json!({"metadata": {"name": "bad", "labels": {"spiffe.io/id": ""}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap();
    let err = pods.create(&PostParams::default(), &bad).await.unwrap_err().to_string();
    assert!(err.contains("denied") && err.contains("spiffe.io/id"), "{err}");
    // So is a reserved identity: `/k8s-workload-registrar` holds the cluster entry every agent
    // matches, and `/spire` is SPIRE's own.
    for (name, value) in [("alias", "k8s-workload-registrar"), ("server", "spire")] {
        let hostile: Pod =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"spiffe.io/id": value}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
            .unwrap();
        let err = pods.create(&PostParams::default(), &hostile).await.unwrap_err().to_string();
        assert!(err.contains("denied") && err.contains("is reserved"), "{err}");
    }
    // An entry SPIRE refuses for good (no bundle for the federated trust domain) is denied with
    // SPIRE's reason, not answered with HTTP 500.
    let fed: Pod =
        serde_json::from_value(json!({"metadata": {"name": "fed", "labels": {"spiffe.io/id": "fed"},
        "annotations": {"spiffe.io/federatesWith": "nobundle.org"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap();
    let err = pods.create(&PostParams::default(), &fed).await.unwrap_err().to_string();
    assert!(err.contains("denied") && err.contains("federated bundle"), "{err}");
    assert_eq!(all_shown(&spire).await.len(), 2);
    let metrics = reg.metrics().await;
    assert_eq!(
        metric_value(&metrics, "registrar_invalid_identity_total", &[("reason", "reserved_id")]),
        Some(2.0)
    );

    // Deleting the pod removes its entry. Admission is synchronous, so it is gone as soon as the
    // delete returned (no cluster-shard pass can have stood in for it).
    delete_pod(&k, "apps", "web").await;
    assert_eq!(all_shown(&spire).await, vec![cluster_entry()]);
    // Both admissions' writes, and the cluster shard's, have their audit lines.
    let audit = audit_lines(&reg.proc.log_text());
    let has = |op: &str, object: &str, reason: &str| {
        audit.iter().any(|l| {
            l["op"] == op
                && l["object"] == object
                && l["reason"] == reason
                && l["spiffe_id"].as_str().is_some()
                && l["parent_id"].as_str().is_some()
                && l["entry_id"].as_str().is_some()
        })
    };
    assert!(has("create", "pod apps/web", "admitted"), "{audit:#?}");
    assert!(has("delete", "pod apps/web", "pod_deleted"), "{audit:#?}");
    assert!(has("create", "cluster wc", "new"), "{audit:#?}");
    assert_eq!(audit.len(), 3, "the shard's create that SPIRE answered 'exists' wrote nothing: {audit:#?}");

    // A client without a certificate is refused.
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CONNECT",
                    "namespace": "apps", "name": "x"}}).to_string();
    assert!(
        post_review(&pki, port, &review, false).await.is_err(),
        "a client without certificate got an answer"
    );
    let (code, body) = post_review(&pki, port, &review, true).await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"uid\":\"u1\"") && body.contains("\"allowed\":true"), "{body}");

    let m = reg.metrics().await;
    assert!(metric_value(&m, "webhook_requests_total", &[]).unwrap() >= 4.0, "{m}");

    // SPIRE down: the webhook answers with an error well within the API server's 10 s timeout,
    // and failurePolicy (Fail here) decides — the create is refused with the reason.
    stack.spire.kill();
    let p: Pod =
        serde_json::from_value(json!({"metadata": {"name": "late", "labels": {"spiffe.io/id": "late"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap();
    let err = pods.create(&PostParams::default(), &p).await.unwrap_err().to_string();
    // Had the webhook not answered in time, the API server would report its own timeout; the
    // registrar's reason in the error proves the answer came in time.
    assert!(err.contains("SPIRE"), "{err}");
    let m = reg.metrics().await;
    assert!(metric_value(&m, "webhook_requests_total", &[("outcome", "error")]).unwrap() >= 1.0, "{m}");
    assert!(reg.proc.log_text().contains("failurePolicy"), "a log line says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_name_reuse_and_downtime_are_repaired() {
    let (stack, pki) = webhook_stack().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    let port = free_port();
    let reg = start_registrar(&stack, &pki, "wh", port, "").await;
    // Ignore: pods can be deleted while the webhook is down (the cluster shard cleans up after).
    register_webhook(&stack, &pki, port, "Ignore").await;
    create_namespace(&k, "db").await;

    // StatefulSet-style: web-0 is deleted and recreated with the same name; a late DELETE
    // admission of the old incarnation must not remove the new pod's entry.
    let old = pod("db", "web-0").sa("db").create(&k).await;
    converge(&spire, vec![cluster_entry(), pod_entry("db", "web-0", "/ns/db/sa/db")]).await;
    delete_pod(&k, "db", "web-0").await;
    let new = pod("db", "web-0").sa("db").create(&k).await;
    assert_ne!(old.metadata.uid, new.metadata.uid);
    let late_delete = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "late", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "DELETE",
                    "namespace": "db", "name": "web-0", "oldObject": old}}).to_string();
    let entry_id = |entries: &[k8s_workload_registrar::model::Entry]| {
        entries
            .iter()
            .find(|e| shown(&e.spec) == pod_entry("db", "web-0", "/ns/db/sa/db"))
            .map(|e| e.id.clone())
    };
    let before = entry_id(&all_entries(&spire).await).expect("web-0 has an entry");
    let (code, body) = post_review(&pki, port, &late_delete, true).await.unwrap();
    assert_eq!(code, 200, "{body}");
    // The very same entry is still there (not deleted and recreated by the cluster shard).
    assert_eq!(entry_id(&all_entries(&spire).await), Some(before));

    // Downtime: the registrar stops; a pod is deleted and another created meanwhile.
    pod("db", "keep").sa("keep").create(&k).await;
    pod("db", "gone").sa("gone").create(&k).await;
    converge(
        &spire,
        vec![
            cluster_entry(),
            pod_entry("db", "web-0", "/ns/db/sa/db"),
            pod_entry("db", "keep", "/ns/db/sa/keep"),
            pod_entry("db", "gone", "/ns/db/sa/gone"),
        ],
    )
    .await;
    reg.proc.kill();
    delete_pod(&k, "db", "gone").await;
    pod("db", "new").sa("new").create(&k).await;
    let _reg = start_registrar(&stack, &pki, "wh2", port, "").await;
    converge(
        &spire,
        vec![
            cluster_entry(),
            pod_entry("db", "web-0", "/ns/db/sa/db"),
            pod_entry("db", "keep", "/ns/db/sa/keep"),
            pod_entry("db", "new", "/ns/db/sa/new"),
        ],
    )
    .await;
}

/// The chart's webhook-mode RBAC and config (`deploy/helm`), run as its ServiceAccount: admissions
/// write entries, and the cluster shard — which lists pods with only those permissions — removes
/// a stale one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_and_config_serve_webhook_mode() {
    let (stack, pki) = webhook_stack().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "apps").await;
    let (cert, key) = pki.ca.leaf("registrar", &["127.0.0.1", "localhost"], false);
    pki.write("server.pem", &cert);
    pki.write("server-key.pem", &key);
    pki.write("ca.pem", &pki.ca.cert_pem);
    let (port, metrics_port) = (free_port(), free_port());
    let (config, kubeconfig) = crate::chart::install_for_local_run(
        &stack,
        "webhook",
        metrics_port,
        &["cluster=wc".into(), format!("webhook.port={port}")],
        &[("/run/spire/webhook/", format!("{}/", pki.dir.path().display()))],
    )
    .await;
    let reg = crate::chart::start_as_rendered(&stack, "wh", config, metrics_port, &kubeconfig).await;
    reg.proc.wait_for_port(port, Duration::from_secs(30)).await;
    register_webhook(&stack, &pki, port, "Fail").await;
    // A stale entry under the cluster entry, for a pod that does not exist: only the cluster shard,
    // which lists pods with the chart's permissions, can remove it.
    let stale = spire
        .create_entries(&[k8s_workload_registrar::model::EntrySpec {
            spiffe_id: id("/ns/apps/sa/ghost"),
            parent_id: id("/k8s-workload-registrar/wc/node"),
            selectors: k8s_workload_registrar::identity::pod_selectors("apps", "ghost"),
            dns_names: vec![],
            federates_with: Default::default(),
            downstream: false,
            managed: Default::default(),
        }])
        .await
        .unwrap();
    assert!(stale[0].is_ok());
    pod("apps", "web").sa("web").create(&k).await;
    converge(&spire, vec![cluster_entry(), pod_entry("apps", "web", "/ns/apps/sa/web")]).await;
    delete_pod(&k, "apps", "web").await;
    converge(&spire, vec![cluster_entry()]).await;
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(k.clone(), "spire")
        .get("k8s-workload-registrar-webhook-leader-election")
        .await
        .unwrap();
    assert!(lease.spec.unwrap().holder_identity.unwrap().starts_with("wh_"));
    assert!(!reg.proc.log_text().contains("forbidden"), "a permission is missing:\n{}", reg.proc.log_tail());
}

/// Webhook mode under a seeded schedule (as `chaos::*`): pods come and go through admissions
/// while children fail, SPIRE restarts and the registrar is killed (admissions then go
/// unanswered: `failurePolicy: Ignore`, and the cluster shard repairs); in the end the entries are
/// exactly the cluster entry plus one per live pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_random_churn_and_faults_converge_exactly() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_2026);
    let rounds: u64 = std::env::var("CHAOS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    eprintln!("chaos: CHAOS_SEED={seed} CHAOS_ROUNDS={rounds}");
    let mut state = seed | 1;
    let mut below = |n: usize| {
        // xorshift64*, as in `chaos.rs`.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    };
    let (mut stack, pki) = webhook_stack().await;
    let k = stack.kube.client().await;
    let port = free_port();
    let mut reg = start_registrar(&stack, &pki, "wh", port, "").await;
    register_webhook(&stack, &pki, port, "Ignore").await;
    create_namespace(&k, "chaos").await;
    let mut pods: BTreeMap<String, String> = BTreeMap::new(); // pod → service account
    let (mut next_id, mut runs) = (0, 1);
    for round in 0..rounds {
        for _ in 0..4 {
            match below(8) {
                0..=2 => {
                    let (name, sa) = (format!("p{next_id}"), format!("sa{}", below(3)));
                    next_id += 1;
                    pod("chaos", &name).sa(&sa).create(&k).await;
                    pods.insert(name, sa);
                }
                3 if !pods.is_empty() => {
                    let name = pods.keys().nth(below(pods.len())).unwrap().clone();
                    delete_pod(&k, "chaos", &name).await;
                    pods.remove(&name);
                }
                4 | 5 => {
                    let targets = ["shard:cluster", "pods", "spire_pool", "admission_server", "http"];
                    reg.inject(targets[below(targets.len())]).await;
                }
                6 => stack.spire.restart().await,
                7 => {
                    reg.proc.kill();
                    runs += 1;
                    reg = start_registrar(&stack, &pki, &format!("wh{runs}"), port, "").await;
                }
                _ => {}
            }
        }
        eprintln!("chaos: round {round}: {} pods", pods.len());
    }
    let mut expected = vec![cluster_entry()];
    expected.extend(pods.iter().map(|(name, sa)| pod_entry("chaos", name, &format!("/ns/chaos/sa/{sa}"))));
    reg.wait_ready().await;
    converge(&stack.spire.client(), expected).await;
    reg.proc.assert_running();
}

/// A webhook-mode registrar started over the original's entries (the cluster entry, pod entries
/// under it) adopts them without a write, keeping their IDs, and removes only what the original
/// left behind: the entry of a pod deleted while no webhook ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_of_the_original_webhook_entries_writes_only_the_differences() {
    let (stack, pki) = webhook_stack().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "apps").await;
    pod("apps", "web").label("spiffe.io/id", "web").create(&k).await;
    pod("apps", "api").label("spiffe.io/id", "api").create(&k).await;
    let cluster_id = "spiffe://example.org/k8s-workload-registrar/wc/node";
    let create = |id: &str, parent: &str, selectors: &[&str]| {
        crate::plan::cli_create(&stack.spire, id, parent, selectors, &[])
    };
    let mut kept = vec![
        create(cluster_id, "spiffe://example.org/spire/server", &["k8s_psat:cluster:wc"]),
        create("spiffe://example.org/web", cluster_id, &["k8s:ns:apps", "k8s:pod-name:web"]),
        create("spiffe://example.org/api", cluster_id, &["k8s:ns:apps", "k8s:pod-name:api"]),
    ];
    kept.sort();
    create("spiffe://example.org/gone", cluster_id, &["k8s:ns:apps", "k8s:pod-name:gone"]);

    let port = free_port();
    let reg = start_registrar(
        &stack,
        &pki,
        "takeover",
        port,
        "pod_label = \"spiffe.io/id\"\nlog_format = \"json\"",
    )
    .await;
    // The stale entry goes once it has been undesired for the cluster shard's delete grace.
    converge(
        &spire,
        vec![cluster_entry(), pod_entry("apps", "web", "/web"), pod_entry("apps", "api", "/api")],
    )
    .await;
    let mut ids: Vec<String> = all_entries(&spire).await.into_iter().map(|e| e.id).collect();
    ids.sort();
    assert_eq!(ids, kept, "adopted entries keep the original's IDs");
    // The shard logs the delete once SPIRE answered: a moment after SPIRE shows it.
    let audit = eventually("the stale entry's audit line", Duration::from_secs(30), || async {
        let audit = audit_lines(&reg.proc.log_text());
        (!audit.is_empty()).then_some(audit)
    })
    .await;
    let m = reg.metrics().await;
    let ops = |op: &str, outcome: &str| {
        metric_value(&m, "registrar_entry_ops_total", &[("op", op), ("outcome", outcome)])
    };
    assert_eq!(
        (ops("create", "ok"), ops("update", "ok"), ops("delete", "ok")),
        (Some(0.0), Some(0.0), Some(1.0)),
        "{m}"
    );
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(
        (&audit[0]["op"], &audit[0]["object"], &audit[0]["reason"]),
        (&"delete".into(), &"pod apps/gone".into(), &"pod_gone".into())
    );
}
