//! Runs the real `k8s-workload-registrar` binary against a test stack, and talks to its HTTP
//! endpoint with a tiny HTTP/1.1 client (no extra dependency).

use std::{path::PathBuf, time::Duration};

use crate::stack::{Proc, Stack, free_port};

pub struct Registrar {
    pub proc: Proc,
    pub metrics_port: u16,
}

/// The config every test registrar starts from; `extra` is appended (HCL).
pub fn base_config(stack: &Stack, cluster: &str, metrics_port: u16, extra: &str) -> String {
    format!(
        "trust_domain = \"example.org\"\nserver_socket_path = \"{sock}\"\ncluster = \"{cluster}\"\n\
         mode = \"reconcile\"\nlog_level = \"debug\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
         resync_interval = \"2s\"\n{extra}\n",
        sock = stack.spire.socket.display()
    )
}

impl Registrar {
    pub async fn start(stack: &Stack, name: &str, cluster: &str, extra: &str) -> Registrar {
        for _ in 0..5 {
            let metrics_port = free_port();
            let config = stack.dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, base_config(stack, cluster, metrics_port, extra)).unwrap();
            let kubeconfig = stack.kube.kubeconfig.display().to_string();
            let proc = spawn(stack, name, &config, &kubeconfig, &[]);
            // Parallel tests pick free ports independently; retry if another one took ours.
            match proc.try_wait_for_port(metrics_port, Duration::from_secs(30)).await {
                Ok(()) => return Registrar { proc, metrics_port },
                Err(_) if proc.lost_port_race() => continue,
                Err(log) => panic!("registrar did not start\n{log}"),
            }
        }
        panic!("the registrar lost the race for a free port 5 times");
    }

    pub async fn start_with_config(
        stack: &Stack,
        name: &str,
        config: PathBuf,
        metrics_port: u16,
        env: &[(&str, &str)],
    ) -> Registrar {
        let kubeconfig = stack.kube.kubeconfig.display().to_string();
        let proc = spawn(stack, name, &config, &kubeconfig, env);
        let r = Registrar { proc, metrics_port };
        r.proc.wait_for_port(metrics_port, Duration::from_secs(30)).await;
        r
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_request(self.metrics_port, "GET", path).await
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.proc.assert_running();
            let (code, body) = self.get("/readyz").await;
            if code == 200 {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("registrar not ready after 60s: {code} {body:?}\n{}", self.proc.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics").await;
        assert_eq!(code, 200);
        body
    }

    pub async fn inject(&self, target: &str) {
        // While the `http` child itself restarts (after a fault injected into it), a connection
        // can be accepted by the stopping server and closed unanswered: retry those (code 0).
        for _ in 0..50 {
            let (code, body) =
                http_request(self.metrics_port, "POST", &format!("/debug/fail/{target}")).await;
            if code != 0 {
                assert_eq!(
                    code, 200,
                    "fault injection into {target} (needs --features fault-injection): {body}"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("fault injection into {target}: no answer\n{}", self.proc.log_tail());
    }
}

fn spawn(
    stack: &Stack,
    name: &str,
    config: &std::path::Path,
    kubeconfig: &str,
    env: &[(&str, &str)],
) -> Proc {
    let mut all_env = vec![("KUBECONFIG", kubeconfig), ("POD_NAMESPACE", "default"), ("POD_NAME", name)];
    all_env.extend_from_slice(env);
    Proc::spawn_env(
        name,
        std::path::Path::new(env!("CARGO_BIN_EXE_k8s-workload-registrar")),
        &["-config", &config.display().to_string()],
        stack.dir.path(),
        &all_env,
    )
}

/// Sum of the samples of `name` whose label set contains every `labels` pair.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

/// One request to 127.0.0.1:`port`; the status and the body (status 0 when nothing answers).
/// HTTP/1.0, so the body comes whole (never chunked) and ends with the connection.
pub async fn http_request(port: u16, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let req = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}
