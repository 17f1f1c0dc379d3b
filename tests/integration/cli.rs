//! The binary's command line as an operator meets it: `--help`, `--version`, `validate`, clear
//! errors for broken configs, metrics/health endpoints, and graceful shutdown on SIGTERM.

use std::{process::Command, time::Duration};

use crate::{
    registrar::{Registrar, metric_value},
    stack::Stack,
    util::*,
};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_k8s-workload-registrar"))
}

#[test]
fn help_and_version() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("-config") && help.contains("validate") && help.contains("trust_domain"), "{help}");
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains(env!("CARGO_PKG_VERSION")));
    let out = bin().arg("--bogus").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn validate_prints_effective_config_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.conf");
    std::fs::write(
        &good,
        r#"log_level = "info"
trust_domain = "example.org"
server_socket_path = "/tmp/spire-server/private/api.sock"
cluster = "production"
mode = "reconcile"
leader_election = true
add_pod_dns_names = false
disabled_namespaces = ["kube-system", "kube-public", "spire-system"]
"#,
    )
    .unwrap();
    let out = bin().args(["validate", "-config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trust_domain"], "example.org");
    assert_eq!(v["cluster"], "production");
    let text = v.to_string();
    assert!(text.contains("spire-k8s-registrar"), "defaults filled in: {text}");
    assert!(text.contains("cluster.local"), "defaults filled in: {text}");

    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "trust_domain = \"example.org\"\nclustr = \"x\"\nserver_socket_path = \"/s\"\n")
        .unwrap();
    for args in [vec!["validate", "-config"], vec!["-config"]] {
        let out = bin().args(&args).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("clustr") && err.contains("did you mean \"cluster\""), "{err}");
    }
    let out = bin().args(["-config", "/nonexistent/registrar.conf"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/registrar.conf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_graceful_shutdown() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    create_namespace(&k, "m").await;
    create_node(&k, "n1").await;
    pod("m", "p").on("n1").create(&k).await;
    let log_file = stack.dir.path().join("registrar.log.json");
    let extra = format!("log_path = \"{}\"\nlog_format = \"json\"\n", log_file.display());
    let reg = Registrar::start(&stack, "reg", "c", &extra).await;
    assert_eq!(reg.get("/healthz").await.0, 200);
    reg.wait_ready().await;
    converge(
        &stack.spire.client(),
        vec![
            want(
                "spiffe://example.org/spire-k8s-registrar/c/node/n1",
                "spiffe://example.org/spire/server",
                &["k8s_psat:cluster:c", "k8s_psat:agent_node_name:n1"],
            ),
            want(
                "spiffe://example.org/ns/m/sa/default",
                "spiffe://example.org/spire-k8s-registrar/c/node/n1",
                &["k8s:ns:m", "k8s:pod-name:p"],
            ),
        ],
    )
    .await;
    // A pod created now is registered, and its latency (creation → entry in SPIRE) recorded;
    // the pod that existed before the registrar started is not counted.
    // creationTimestamp has whole seconds, and only seconds after the registrar's start count: a
    // sleep for the clock's resolution, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pod("m", "late").on("n1").sa("late").create(&k).await;
    eventually("the late pod's registration latency", Duration::from_secs(30), || async {
        let m = reg.metrics().await;
        metric_value(&m, "registrar_registration_latency_seconds_count", &[]).filter(|c| *c >= 1.0)
    })
    .await;
    let m = reg.metrics().await;
    assert_eq!(metric_value(&m, "registrar_registration_latency_seconds_count", &[]), Some(1.0), "{m}");
    let sum = metric_value(&m, "registrar_registration_latency_seconds_sum", &[]).unwrap();
    assert!((0.0..30.0).contains(&sum), "latency {sum} s");
    assert!(
        metric_value(&m, "registrar_registration_latency_seconds_bucket", &[("le", "300")]) == Some(1.0),
        "the registration buckets reach minutes: {m}"
    );
    // Its Kubernetes requests, by verb and outcome (the pod and node watchers list, then watch).
    assert!(
        metric_value(&m, "registrar_kube_requests_total", &[("verb", "list"), ("outcome", "ok")]).unwrap()
            >= 2.0
    );
    assert!(
        metric_value(&m, "registrar_kube_requests_total", &[("verb", "watch"), ("outcome", "ok")]).unwrap()
            >= 2.0
    );
    assert!(
        metric_value(&m, "registrar_kube_request_duration_seconds_count", &[("verb", "list")]).unwrap()
            >= 2.0,
        "{m}"
    );
    // What this replica manages, and when it last was in sync everywhere (resyncs every 2 s).
    assert_eq!(metric_value(&m, "registrar_owned_entries", &[("kind", "node")]), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "registrar_owned_entries", &[("kind", "pod")]), Some(2.0), "p and late");
    assert_eq!(metric_value(&m, "registrar_owned_entries", &[("kind", "cluster")]), Some(0.0));
    let converged = metric_value(&m, "registrar_last_converged_timestamp_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now - converged < 30.0 && converged <= now + 1.0, "converged at {converged}, now {now}");
    // Every sample line parses as `name{labels} value`.
    for line in m.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
    }
    assert_eq!(
        metric_value(&m, "registrar_entry_ops_total", &[("op", "create"), ("outcome", "ok")]),
        Some(3.0),
        "the node's, p's and late's"
    );
    assert!(metric_value(&m, "registrar_objects_processed_total", &[("kind", "pods")]).unwrap() >= 1.0);
    assert!(
        metric_value(
            &m,
            "registrar_spire_call_duration_seconds_count",
            &[("method", "BatchCreateEntry"), ("outcome", "ok")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric_value(&m, "registrar_reconcile_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(metric_value(&m, "registrar_shards", &[]), Some(1.0));
    assert_eq!(
        metric_value(&m, "registrar_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    // Series that exist before anything happened to them, at 0.
    assert_eq!(
        metric_value(&m, "registrar_entry_ops_total", &[("op", "delete"), ("outcome", "failed")]),
        Some(0.0)
    );
    assert_eq!(metric_value(&m, "registrar_invalid_identity_total", &[("reason", "reserved_id")]), Some(0.0));
    assert_eq!(metric_value(&m, "registrar_watch_errors_total", &[("kind", "nodes")]), Some(0.0));
    for result in ["agreed", "stale", "disagreed"] {
        let checks = metric_value(&m, "registrar_anti_entropy_checks_total", &[("result", result)]);
        assert!(checks.is_some(), "no anti-entropy series {result}: {m}");
    }
    for actor in ["registrar", "spire_pool", "http", "spire_worker", "pods", "nodes", "shard"] {
        let restarts = metric_value(&m, "registrar_actor_restarts_total", &[("actor", actor)]);
        assert_eq!(restarts, Some(0.0), "{actor}: {m}");
    }
    // The process metrics Prometheus users expect, with their types.
    assert!(metric_value(&m, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(metric_value(&m, "process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert!(metric_value(&m, "process_open_fds", &[]).unwrap() >= 3.0);
    assert!(m.contains("# TYPE process_cpu_seconds_total counter"), "{m}");
    assert_eq!(metric_value(&m, "registrar_is_leader", &[]), Some(1.0), "no election: always the writer");
    // Resyncs (every 2 s here) queue work briefly; between them nothing is queued.
    eventually("an empty queue", Duration::from_secs(10), || async {
        (metric_value(&reg.metrics().await, "registrar_queue_depth", &[]) == Some(0.0)).then_some(())
    })
    .await;
    // Labels stay bounded: no pod or node names in any series.
    assert!(!m.contains("\"p\"") && !m.contains("n1"), "unbounded label values in metrics:\n{m}");

    let code = reg.proc.terminate(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "SIGTERM exits cleanly\n{}", reg.proc.log_tail());
    // log_path + log_format = "json": one JSON object per line in the file; log_level = "debug"
    // (the test config's) lets debug lines through and nothing below.
    let text = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    // Flat: the message and the event's fields at the top level, beside timestamp and level.
    assert!(lines.iter().any(|l| l["message"] == "Shutting down."), "{text}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(), "{l}");
        assert!(
            l.get("fields").is_none() && l.get("span").is_none() && l.get("spans").is_none(),
            "nested: {l}"
        );
    }
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"), "log_level = debug is honoured");
    assert!(lines.iter().all(|l| l["level"] != "TRACE"), "log_level = debug is honoured");
    // ... for this crate only: the HTTP/2 and Kubernetes clients stay at warn.
    for l in lines.iter().filter(|l| l["level"] == "DEBUG" || l["level"] == "INFO") {
        let target = l["target"].as_str().unwrap_or_default();
        assert!(target.starts_with("k8s_workload_registrar"), "a dependency logs below warn: {l}");
    }
    // A planned shutdown is not a warning.
    assert!(!lines.iter().any(|l| l["level"] == "WARN" && l["message"] == "Stopped leading."), "{text}");
}

/// What `kubectl logs` shows is plain text (stderr is not a terminal), and an unreachable
/// SPIRE socket is named in the error; `--help | head -1` and friends do not panic when the
/// reader closes the pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_logs_are_plain_text_and_name_the_spire_socket() {
    let stack = Stack::start().await;
    let port = crate::stack::free_port();
    let config = stack.dir.path().join("nosock.conf");
    let socket = stack.dir.path().join("no-such-dir").join("api.sock");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"c\"\nmode = \"reconcile\"\n\
             log_level = \"debug\"\nmetrics_addr = \"127.0.0.1:{port}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let reg = Registrar::start_with_config(&stack, "nosock", config, port, &[]).await;
    let k = stack.kube.client().await;
    create_node(&k, "n1").await;
    eventually("an error naming the socket", Duration::from_secs(60), || async {
        let log = reg.proc.log_text();
        (log.contains("spire-server socket") && log.contains(&socket.display().to_string())).then_some(())
    })
    .await;
    let log = reg.proc.log_text();
    assert!(!log.contains('\u{1b}'), "ANSI escapes in piped logs:\n{}", reg.proc.log_tail());

    for args in [&["--help"][..], &["--version"][..]] {
        let mut child = bin()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before reading a byte, as `head` does after its first line.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("panicked"), "{args:?}: {:?} {err}", out.status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_start_up_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("webhook.conf");
    let missing = dir.path().join("missing-cert.pem");
    std::fs::write(
        &conf,
        format!(
            "trust_domain = \"example.org\"\ncluster = \"c\"\nserver_socket_path = \"/nonexistent/api.sock\"\n\
             addr = \"127.0.0.1:0\"\ncert_path = \"{}\"\nkey_path = \"{}\"\ncacert_path = \"{}\"\nmetrics_addr = \"0\"\n",
            missing.display(),
            dir.path().join("key.pem").display(),
            dir.path().join("ca.pem").display()
        ),
    )
    .unwrap();
    let out = bin().args(["-config"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing-cert.pem") && err.contains("cert_path"), "{err}");
}

/// `-kubeconfig FILE` wins over `KUBECONFIG`, and `-expandEnv` fills `$VAR`/`${VAR}` in the
/// config file from the environment (SPIRE's convention), for `validate` and for a real run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_flag_and_expand_env() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    create_namespace(&k, "e").await;
    create_node(&k, "n1").await;
    pod("e", "p").on("n1").sa("s").create(&k).await;
    let port = crate::stack::free_port();
    let config = stack.dir.path().join("env.conf");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"$KWR_TEST_SOCKET\"\ncluster = \"${{KWR_TEST_CLUSTER}}\"\n\
             mode = \"reconcile\"\nmetrics_addr = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let socket = stack.spire.socket.display().to_string();
    let env = [("KWR_TEST_CLUSTER", "fromenv"), ("KWR_TEST_SOCKET", socket.as_str())];

    let out = bin().args(["validate", "-expandEnv", "-config"]).arg(&config).envs(env).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["cluster"], "fromenv", "{effective}");
    // Without the flag the text is taken literally (and `$KWR_TEST_SOCKET` is no socket).
    let out = bin().args(["validate", "-config"]).arg(&config).envs(env).output().unwrap();
    let literal = String::from_utf8_lossy(&out.stdout);
    assert!(!literal.contains("fromenv"), "{literal}");

    let kubeconfig = stack.kube.kubeconfig.display().to_string();
    let config_arg = config.display().to_string();
    let reg = crate::stack::Proc::spawn_env(
        "env-registrar",
        std::path::Path::new(env!("CARGO_BIN_EXE_k8s-workload-registrar")),
        &["-config", &config_arg, "-kubeconfig", &kubeconfig, "-expandEnv"],
        stack.dir.path(),
        &[env[0], env[1], ("KUBECONFIG", "/nonexistent/kubeconfig")],
    );
    converge(
        &stack.spire.client(),
        vec![node_entry("fromenv", "n1"), pod_entry("fromenv", "n1", "e", "p", "/ns/e/sa/s")],
    )
    .await;
    reg.assert_running();
}
