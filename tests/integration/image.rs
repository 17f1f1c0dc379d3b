//! The container image (`deploy/image`), run by a real podman: a static binary in an otherwise
//! empty image with a numeric non-root user, which — with the chart's standalone config — finds
//! kube-apiserver by a name in /etc/hosts and spire-server by a Service name that only DNS
//! knows, fetches its SVID from a real spire-agent through the mounted Workload API socket,
//! dials spire-server over mutual TLS and registers pods.
//!
//! `tests/run.sh` builds the image before the tests (`deploy/image/build.sh`); run alone, the
//! first test to need it builds it (a release build, several minutes).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use crate::{
    chart::{self, RELEASE},
    spire_tcp::{AGENT_ID, TcpStack},
    stack::{Kube, free_port},
    util::*,
};

/// The tag `tests/run.sh` builds; `KWR_IMAGE` overrides it.
const DEFAULT_IMAGE: &str = "localhost/k8s-workload-registrar:test";
/// The image's user (deploy/image/Dockerfile).
const IMAGE_UID: u32 = 65532;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The containers.conf these machines need (tests/testbin/podman.sh), unless one is set.
fn containers_conf() -> &'static str {
    static CONF: OnceLock<String> = OnceLock::new();
    CONF.get_or_init(|| {
        if let Ok(c) = std::env::var("CONTAINERS_CONF") {
            return c;
        }
        let out = Command::new("bash").arg(root().join("tests/testbin/podman.sh")).output().unwrap();
        assert!(out.status.success(), "podman set-up: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).env("CONTAINERS_CONF", containers_conf()).output().expect("run podman")
}

/// The image's tag, built once if it does not exist yet.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = std::env::var("KWR_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string());
        if !podman(&["image", "exists", &tag]).status.success() {
            eprintln!("image: {tag} not built yet; building it (release build)");
            let out = Command::new("bash")
                .arg(root().join("deploy/image/build.sh"))
                .arg(&tag)
                .env("CONTAINERS_CONF", containers_conf())
                .output()
                .unwrap();
            assert!(out.status.success(), "deploy/image/build.sh: {}", String::from_utf8_lossy(&out.stderr));
        }
        tag
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A detached container, removed when dropped.
struct Container(String);

impl Container {
    fn logs(&self) -> String {
        text(&podman(&["logs", &self.0]))
    }

    fn assert_running(&self) {
        let out = podman(&["inspect", "--format", "{{.State.Running}}", &self.0]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true", "container exited:\n{}", self.logs());
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "2", &self.0]);
    }
}

/// A DNS server for the container (`podman run --dns`): answers A queries for names under
/// `.svc.cluster.local` with 127.0.0.1, as cluster DNS would for a Service, and records every
/// name asked for. Anything else is NXDOMAIN; AAAA gets an empty answer.
struct ClusterDns {
    addr: Ipv4Addr,
    asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterDns {
    async fn start() -> ClusterDns {
        // resolv.conf has no port: port 53 on a loopback address of this test's own.
        let pid = std::process::id();
        let addr = Ipv4Addr::new(127, 53, (pid >> 8) as u8, (pid as u8).max(2));
        let socket = tokio::net::UdpSocket::bind((addr, 53)).await.expect("bind a DNS port (needs root)");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if let Some((name, reply)) = Self::answer(&buf[..n]) {
                    log.lock().unwrap().push(name);
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        ClusterDns { addr, asked, task }
    }

    /// The reply to one query (RFC 1035 §4.1), or `None` for a malformed packet.
    fn answer(query: &[u8]) -> Option<(String, Vec<u8>)> {
        let mut labels = Vec::new();
        let mut i = 12;
        while *query.get(i)? != 0 {
            let len = query[i] as usize;
            labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).into_owned());
            i += len + 1;
        }
        let question = query.get(12..i + 5)?;
        let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
        let name = labels.join(".");
        let service = name.ends_with(".svc.cluster.local");
        let mut reply = query[..2].to_vec();
        let rcode = if service { 0 } else { 3 };
        let answers = u16::from(service && qtype == 1);
        reply.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1, 0, answers as u8, 0, 0, 0, 0]);
        reply.extend_from_slice(question);
        if answers == 1 {
            // Name pointer to the question, type A, class IN, TTL 30, 4 bytes of address.
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
        }
        Some((name, reply))
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[test]
fn image_is_one_static_binary_run_as_a_numeric_non_root_user() {
    let image = image();
    let out = podman(&["run", "--rm", image, "--version"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(env!("CARGO_PKG_VERSION")), "{}", text(&out));

    let out =
        podman(&["image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", image]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{IMAGE_UID}:{IMAGE_UID} [\"/usr/local/bin/k8s-workload-registrar\"]")
    );
    // Nothing else is in it: no shell to run.
    let out = podman(&["run", "--rm", "--entrypoint", "/bin/sh", image, "-c", "true"]);
    assert!(!out.status.success(), "the image has a shell: {}", text(&out));
    // Symbols are stripped and it is small (a debug build would be hundreds of MB).
    let out = podman(&["image", "inspect", "--format", "{{.Size}}", image]);
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(size < 40 << 20, "image is {size} bytes");
}

/// The image as the chart's standalone topology runs it, against the real stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_with_the_charts_standalone_config_registers_pods() {
    let image = image();
    let stack = TcpStack::start().await;
    // The registrar's admin entry: the container's processes run as the image's user.
    let admin_id = format!("spiffe://example.org/ns/spire/sa/{RELEASE}");
    let selector = format!("unix:uid:{IMAGE_UID}");
    let out = stack.spire.cli(&[
        "entry",
        "create",
        "-parentID",
        AGENT_ID,
        "-spiffeID",
        &admin_id,
        "-selector",
        &selector,
        "-admin",
    ]);
    assert!(out.status.success(), "entry create: {}", String::from_utf8_lossy(&out.stderr));

    let kube = Kube::start(stack.dir.path(), Default::default()).await;
    let k = kube.client().await;
    create_namespace(&k, "spire").await;
    create_namespace(&k, "apps").await;
    create_node(&k, "n1").await;
    pod("apps", "web").on("n1").sa("web").create(&k).await;

    // The chart's standalone config; only the addresses differ from a cluster's: spire-server by
    // a Service name that only (our) DNS resolves, kube-apiserver as `localhost`, which the
    // container's /etc/hosts resolves.
    let dns = ClusterDns::start().await;
    let server_name = "spire-server.spire.svc.cluster.local";
    let metrics_port = free_port();
    let docs = chart::render(
        RELEASE,
        "spire",
        &[
            "topology=standalone".into(),
            "mode=reconcile".into(),
            "cluster=c".into(),
            format!("standalone.serverAddress={server_name}:{}", stack.spire.bind_port),
            "standalone.agentSocket.socketName=api.sock".into(),
            format!("metrics.port={metrics_port}"),
        ],
    );
    chart::apply(&k, &chart::access(&docs)).await;
    let config: PathBuf = stack.dir.path().join("image-registrar.conf");
    std::fs::write(&config, chart::rendered_config(&docs)).unwrap();
    let kubeconfig = kube.service_account_kubeconfig("spire", RELEASE, "localhost").await;
    let agent_dir = stack.agent_socket().parent().unwrap().to_path_buf();

    let name = format!("kwr-image-{}", std::process::id());
    let mount = |from: &Path, to: &str| format!("{}:{to}:ro", from.display());
    let out = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--dns",
        &dns.addr.to_string(),
        // As the chart's securityContext: read-only root, no capabilities, no privilege gain.
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &mount(&config, "/run/spire/registrar/registrar.conf"),
        "-v",
        &mount(&agent_dir, "/run/spire/agent-sockets"),
        "-v",
        &mount(&kubeconfig, "/run/kube/config"),
        "-e",
        "KUBECONFIG=/run/kube/config",
        "-e",
        "POD_NAMESPACE=spire",
        "-e",
        "POD_NAME=kwr-image",
        image,
    ]);
    assert!(out.status.success(), "podman run: {}", text(&out));
    let container = Container(name);

    let admin = stack.spire.client();
    let expected = {
        let mut v = vec![node_entry("c", "n1"), pod_entry("c", "n1", "apps", "web", "/ns/apps/sa/web")];
        v.sort();
        v
    };
    eventually("the image's entries in SPIRE", Duration::from_secs(90), || async {
        container.assert_running();
        (reconcile_shown(&admin).await == expected).then_some(())
    })
    .await;
    let (code, body) = crate::registrar::http_request(metrics_port, "GET", "/readyz").await;
    assert_eq!(code, 200, "{body}\n{}", container.logs());
    let logs = container.logs();
    assert!(logs.contains("credentials from the agent socket"), "{logs}");
    assert!(
        dns.asked().iter().any(|n| n == server_name),
        "spire-server was not looked up in DNS: {:?}",
        dns.asked()
    );
    assert!(!logs.contains("forbidden"), "a permission is missing:\n{logs}");
    // Event-driven too: a pod created now gets its entry.
    pod("apps", "db").on("n1").sa("db").create(&k).await;
    eventually("the second pod's entry", Duration::from_secs(30), || async {
        let all = all_entries(&admin).await;
        all.iter().any(|e| e.spec.spiffe_id.to_string().ends_with("/ns/apps/sa/db")).then_some(())
    })
    .await;
}
