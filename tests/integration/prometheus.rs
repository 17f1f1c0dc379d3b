//! `deploy/prometheus/` against a real Prometheus and promtool (built from the Go module proxy
//! like the other test binaries): the alert rules pass `promtool check rules` and their unit
//! tests; a Prometheus with the shipped scrape config discovers the registrar's pod through the
//! real kube-apiserver, scrapes it, evaluates the shipped rules without errors, and its query API
//! returns the registrar's leader gauge, build info and a non-empty registration-latency
//! histogram; every query of the shipped dashboard is valid PromQL there.

use std::{path::Path, process::Command, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{
    registrar::Registrar,
    stack::{Proc, Stack, bin, free_port},
    util::*,
};

fn shipped(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus").join(name)
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let out =
        Command::new(bin("promtool")).args(["check", "rules"]).arg(shipped("rules.yaml")).output().unwrap();
    assert!(out.status.success(), "promtool check rules:\n{}", text(&out));
    let out = Command::new(bin("promtool"))
        .args(["test", "rules", "rules-test.yaml"])
        .current_dir(shipped(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
    // The unit tests can fail: a rule with a wrong threshold does not pass them.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(shipped("rules.yaml")).unwrap().replace(") > 30", ") > 300");
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    std::fs::copy(shipped("rules-test.yaml"), dir.path().join("rules-test.yaml")).unwrap();
    let out = Command::new(bin("promtool"))
        .args(["test", "rules", "rules-test.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a broken rule passed its unit tests:\n{}", text(&out));
}

/// GET `path` on Prometheus's HTTP API; the parsed JSON body of a 200 answer.
async fn api(port: u16, path: &str) -> Option<Value> {
    let (code, body) = crate::registrar::http_request(port, "GET", path).await;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The samples of an instant query, or `None` while Prometheus has none.
async fn query(port: u16, q: &str) -> Option<Vec<Value>> {
    let v = api(port, &format!("/api/v1/query?query={}", encode(q))).await?;
    let result = v["data"]["result"].as_array()?.clone();
    (!result.is_empty()).then_some(result)
}

fn sample_value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_with_the_shipped_config_scrapes_the_registrar() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    create_namespace(&k, "spire").await;
    create_namespace(&k, "apps").await;
    create_node(&k, "n1").await;
    let reg = Registrar::start(&stack, "reg", "c", "").await;
    reg.wait_ready().await;

    // The registrar's own pod as Kubernetes would show it: its metrics port named `metrics`, an
    // IP (loopback here, where the process listens).
    let pods: Api<Pod> = Api::namespaced(k.clone(), "spire");
    let me: Pod = serde_json::from_value(json!({
        "metadata": {"name": "k8s-workload-registrar-0",
                     "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": reg.metrics_port.to_string()}},
        "spec": {"containers": [{"name": "k8s-workload-registrar", "image": "k8s-workload-registrar:0.1.0",
                                 "ports": [{"name": "metrics", "containerPort": reg.metrics_port}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &me).await.unwrap();
    let status =
        json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}});
    pods.patch_status("k8s-workload-registrar-0", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    // A pod registered while Prometheus watches (its creation second after the registrar's start).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pod("apps", "web").on("n1").sa("web").create(&k).await;

    // The shipped scrape job, with what a cluster provides implicitly: the API server's
    // credentials for discovery (in-cluster there), a short interval, and the shipped rules.
    let scrape: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(shipped("scrape.yaml")).unwrap()).unwrap();
    let mut job = scrape["scrape_configs"][0].clone();
    job["kubernetes_sd_configs"][0]["kubeconfig_file"] = json!(stack.kube.kubeconfig.display().to_string());
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [shipped("rules.yaml").display().to_string()],
        "scrape_configs": [job],
    });
    let dir = stack.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    // JSON is YAML.
    std::fs::write(dir.join("prometheus.yml"), config.to_string()).unwrap();
    let port = free_port();
    let prometheus = Proc::spawn(
        "prometheus",
        &bin("prometheus"),
        &[
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &dir,
    );

    let leader =
        eventually("Prometheus has scraped registrar_is_leader", Duration::from_secs(60), || async {
            prometheus.assert_running();
            query(port, "registrar_is_leader{job=\"k8s-workload-registrar\"}").await
        })
        .await;
    assert_eq!(sample_value(&leader[0]), 1.0);
    assert_eq!(
        leader[0]["metric"]["pod"], "k8s-workload-registrar-0",
        "the shipped relabelling names the pod"
    );
    let build = query(port, "registrar_build_info").await.expect("registrar_build_info");
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    let latency = eventually("a registration latency observation", Duration::from_secs(60), || async {
        let s = query(port, "registrar_registration_latency_seconds_count").await?;
        (sample_value(&s[0]) >= 1.0).then_some(s)
    })
    .await;
    assert!(sample_value(&latency[0]) >= 1.0);
    let buckets = query(port, "count(registrar_registration_latency_seconds_bucket)").await.unwrap();
    assert_eq!(sample_value(&buckets[0]), 12.0, "the histogram's buckets (11 and +Inf)");

    // The shipped rules evaluate on real data without errors, and once an evaluation has seen
    // the scraped leader the no-leader alert is inactive (an evaluation before the first scrape
    // may have made it pending: nothing was scraped yet).
    let rules = eventually("the rules evaluated on the scraped data", Duration::from_secs(30), || async {
        let v = api(port, "/api/v1/rules").await?;
        let rules: Vec<Value> = v["data"]["groups"][0]["rules"].as_array()?.clone();
        let no_leader = rules.iter().find(|r| r["name"] == "RegistrarNoLeader")?;
        (no_leader["state"] == "inactive").then_some(rules)
    })
    .await;
    assert_eq!(rules.len(), 8);
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {} does not evaluate: {r}", r["name"]);
        assert!(r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")), "{r}");
    }

    // Every query of the dashboard is valid PromQL (Prometheus answers `success`).
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(shipped("dashboard.json")).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let v = api(port, &format!("/api/v1/query?query={}", encode(expr))).await;
            assert_eq!(
                v.as_ref().map(|v| v["status"].clone()),
                Some(json!("success")),
                "{}: {expr}",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 13);
    // The dashboard's leader panel shows this replica.
    assert_eq!(
        sample_value(
            &query(port, "sum(registrar_is_leader{job=\"k8s-workload-registrar\"})").await.unwrap()[0]
        ),
        1.0
    );
}
