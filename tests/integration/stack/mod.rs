//! The real test stack: etcd + kube-apiserver + spire-server, started on loopback with per-stack
//! free ports and a temp dir, stopped (every child killed) when the `Stack` is dropped — also when
//! the test panics, because `Drop` runs during unwinding.
//!
//! Binaries come from `tests/testbin/build.sh`, which builds them once per machine from the Go
//! module proxy into `~/.cache/k8s-workload-registrar/testbin` (under a lock) and prints their
//! paths; later runs reuse them.

pub mod certs;
mod process;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use k8s_workload_registrar::spire::SpireClient;
pub use process::Proc;

pub const TRUST_DOMAIN: &str = "example.org";

/// How often a component is restarted on a new port after losing a free-port race.
const PORT_ATTEMPTS: usize = 5;

/// Paths of the cached real binaries, built on first use.
pub fn testbin() -> &'static HashMap<String, PathBuf> {
    static BINS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BINS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbin/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run tests/testbin/build.sh");
        assert!(out.status.success(), "tests/testbin/build.sh failed ({}); see its output above", out.status);
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect()
    })
}

pub fn bin(name: &str) -> PathBuf {
    testbin().get(name).unwrap_or_else(|| panic!("testbin did not report {name}")).clone()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("addr").port()
}

/// A running kube-apiserver with its etcd.
pub struct Kube {
    pub kubeconfig: PathBuf,
    _apiserver: Proc,
    _etcd: Proc,
    /// The API server's command line and working dir, for `restart_apiserver`.
    args: Vec<String>,
    dir: PathBuf,
}

/// Options for the API server a test needs.
#[derive(Default, Clone)]
pub struct KubeOptions {
    /// `--admission-control-config-file` contents (webhook client-certificate set-up).
    pub admission_config: Option<String>,
}

impl Kube {
    pub async fn start(dir: &Path, opts: KubeOptions) -> Kube {
        let dir = dir.join("kube");
        std::fs::create_dir_all(&dir).unwrap();
        let (etcd, etcd_url) = start_etcd(&dir).await;
        let pki = certs::write_kube_pki(&dir);
        let token = "admin-token-for-tests".to_string();
        std::fs::write(dir.join("tokens.csv"), format!("{token},admin,admin,\"system:masters\"\n")).unwrap();
        let admission = opts.admission_config.as_ref().map(|cfg| {
            let path = dir.join("admission-config.yaml");
            std::fs::write(&path, cfg).unwrap();
            path
        });
        let mut etcd = Some(etcd);
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut args = vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", dir.display()),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer=https://127.0.0.1:{port}"),
                format!("--service-account-key-file={}", pki.sa_pub.display()),
                format!("--service-account-signing-key-file={}", pki.sa_key.display()),
                format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                "--endpoint-reconciler-type=none".into(),
                "--enable-priority-and-fairness=false".into(),
            ];
            if let Some(path) = &admission {
                args.push(format!("--admission-control-config-file={}", path.display()));
            }
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let apiserver = Proc::spawn("kube-apiserver", &bin("kube-apiserver"), &arg_refs, &dir);
            let url = format!("https://127.0.0.1:{port}");
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, kubeconfig_yaml(&url, &pki.ca_pem, &token)).unwrap();
            let kube = Kube {
                kubeconfig,
                _apiserver: apiserver,
                _etcd: etcd.take().unwrap(),
                args,
                dir: dir.clone(),
            };
            match kube.try_wait_ready().await {
                Ok(()) => return kube,
                Err(_) if kube._apiserver.lost_port_race() => {
                    // Keep etcd for the next attempt; only the API server lost its port.
                    let Kube { _etcd, _apiserver, .. } = kube;
                    drop(_apiserver);
                    etcd = Some(_etcd);
                }
                Err(log) => panic!("kube-apiserver did not become ready\n{log}"),
            }
        }
        panic!("kube-apiserver lost the race for a free port {PORT_ATTEMPTS} times");
    }

    /// Kills kube-apiserver; etcd keeps the data for `restart_apiserver`.
    pub fn stop_apiserver(&self) {
        self._apiserver.kill();
    }

    /// Starts kube-apiserver again with the same flags and port, and waits until it is ready.
    pub async fn restart_apiserver(&mut self) {
        self._apiserver.kill();
        let arg_refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self._apiserver = Proc::spawn("kube-apiserver", &bin("kube-apiserver"), &arg_refs, &self.dir);
        self.wait_ready().await;
    }

    /// A kubeconfig that authenticates as the ServiceAccount `ns/name` with a token from the
    /// TokenRequest API, as a pod of that account would; `host` replaces `127.0.0.1` in the
    /// server URL (`localhost` makes a client resolve a name).
    pub async fn service_account_kubeconfig(&self, ns: &str, name: &str, host: &str) -> PathBuf {
        use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
        let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client().await, ns);
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "spec": {"audiences": [], "expirationSeconds": 3600}
        }))
        .unwrap();
        let token = accounts
            .create_token_request(name, &Default::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"))
            .status
            .expect("token status")
            .token;
        let admin = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let text: String = admin
            .lines()
            .map(|l| match l.trim_start().strip_prefix("token: ") {
                Some(_) => format!("    token: {token}"),
                None => l.replace("https://127.0.0.1:", &format!("https://{host}:")),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = self.dir.join(format!("kubeconfig-{ns}-{name}-{host}"));
        std::fs::write(&path, text + "\n").unwrap();
        path
    }

    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).expect("kube client")
    }

    /// The admin's client configuration.
    pub async fn config(&self) -> kube::Config {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("kubeconfig")
    }

    async fn wait_ready(&self) {
        if let Err(log) = self.try_wait_ready().await {
            panic!("kube-apiserver did not become ready\n{log}");
        }
    }

    /// Waits for `/readyz` and the default namespace; `Err` with the log if the server exits.
    async fn try_wait_ready(&self) -> Result<(), String> {
        let client = self.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => break,
                other => {
                    if self._apiserver.try_exit_code().is_some() {
                        return Err(self._apiserver.log_tail());
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "not ready after 120s: {other:?}\n{}",
                            self._apiserver.log_tail()
                        ));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // The default namespace and RBAC bootstrap objects appear shortly after /readyz.
        let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        for _ in 0..100 {
            if ns.get_opt("default").await.ok().flatten().is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err("namespace default never appeared".into())
    }
}

/// etcd on free loopback ports, retried when it loses a port race.
async fn start_etcd(dir: &Path) -> (Proc, String) {
    for _ in 0..PORT_ATTEMPTS {
        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let _ = std::fs::remove_dir_all(dir.join("etcd"));
        let etcd = Proc::spawn(
            "etcd",
            &bin("etcd"),
            &[
                "--name=default",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            dir,
        );
        match etcd.try_wait_for_port(etcd_port, Duration::from_secs(30)).await {
            Ok(()) => return (etcd, etcd_url),
            Err(_) if etcd.lost_port_race() => continue,
            Err(log) => panic!("etcd did not start\n{log}"),
        }
    }
    panic!("etcd lost the race for a free port {PORT_ATTEMPTS} times");
}

fn kubeconfig_yaml(url: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
        ca = encode(ca_pem.as_bytes())
    )
}

/// A running spire-server with its admin socket, trust domain `example.org`, sqlite datastore
/// and memory key manager.
pub struct Spire {
    pub socket: PathBuf,
    /// The TCP port (agents, and mTLS clients) on 127.0.0.1.
    pub bind_port: u16,
    /// spire-server's Prometheus endpoint on 127.0.0.1, when started with telemetry.
    #[allow(dead_code)] // read by benches/scale.rs, which shares this module through #[path]
    pub telemetry_port: Option<u16>,
    dir: PathBuf,
    proc: Proc,
}

impl Spire {
    pub async fn start(dir: &Path) -> Spire {
        Self::start_with(dir, "").await
    }

    /// Like `start`, with `extra_plugins` (HCL plugin blocks, e.g. a `NodeAttestor`) added to
    /// the `plugins` section.
    pub async fn start_with(dir: &Path, extra_plugins: &str) -> Spire {
        Self::start_opts(dir, extra_plugins, false).await
    }

    /// Like `start`, with spire-server's own Prometheus telemetry on `telemetry_port` (for
    /// counting the calls it served, e.g. `spire_server_rpc_entry_v1_entry_list_entries`).
    #[allow(dead_code)] // used by benches/scale.rs
    pub async fn start_with_telemetry(dir: &Path) -> Spire {
        Self::start_opts(dir, "", true).await
    }

    async fn start_opts(dir: &Path, extra_plugins: &str, telemetry: bool) -> Spire {
        let dir = dir.join("spire");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let socket = dir.join("api.sock");
        for _ in 0..PORT_ATTEMPTS {
            let bind_port = free_port();
            let telemetry_port = telemetry.then(free_port);
            let telemetry_block = telemetry_port
                .map(|p| format!("telemetry {{\n    Prometheus {{\n        host = \"127.0.0.1\"\n        port = {p}\n    }}\n}}\n"))
                .unwrap_or_default();
            let conf = format!(
                r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{bind_port}"
    socket_path = "{sock}"
    trust_domain = "{TRUST_DOMAIN}"
    data_dir = "{data}"
    log_level = "INFO"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    {extra_plugins}
}}
{telemetry_block}"#,
                sock = socket.display(),
                data = dir.join("data").display(),
            );
            std::fs::write(dir.join("server.conf"), conf).unwrap();
            let proc = Self::spawn(&dir);
            let spire = Spire { socket: socket.clone(), bind_port, telemetry_port, dir: dir.clone(), proc };
            match spire.try_wait_healthy().await {
                Ok(()) => return spire,
                Err(_) if spire.proc.lost_port_race() => continue,
                Err(log) => panic!("spire-server did not start\n{log}"),
            }
        }
        panic!("spire-server lost the race for a free port {PORT_ATTEMPTS} times");
    }

    fn spawn(dir: &Path) -> Proc {
        Proc::spawn(
            "spire-server",
            &bin("spire-server"),
            &["run", "-config", &dir.join("server.conf").display().to_string()],
            dir,
        )
    }

    /// Stops the server (SIGKILL) and starts it again on the same datastore and socket.
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::spawn(&self.dir);
        self.wait_healthy().await;
    }

    /// Stops the server (SIGKILL); `restart` brings it back.
    pub fn kill(&self) {
        self.proc.kill();
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections stay open, nothing answers.
    pub fn signal(&self, signal: &str) {
        let out =
            std::process::Command::new("kill").args([signal, &self.proc.pid().to_string()]).output().unwrap();
        assert!(out.status.success(), "kill {signal}: {}", String::from_utf8_lossy(&out.stderr));
    }

    async fn wait_healthy(&self) {
        if let Err(log) = self.try_wait_healthy().await {
            panic!("spire-server did not become healthy\n{log}");
        }
    }

    /// Waits until the server is healthy; `Err` with its log if it exits first.
    async fn try_wait_healthy(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = std::process::Command::new(bin("spire-server"))
                .args(["healthcheck", "-socketPath"])
                .arg(&self.socket)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if self.proc.try_exit_code().is_some() {
                return Err(self.proc.log_tail());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("not healthy after 60s\n{}", self.proc.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn client(&self) -> SpireClient {
        SpireClient::unix(&self.socket).expect("spire client")
    }

    /// Runs the real `spire-server` CLI against this server's admin socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .expect("run spire-server CLI")
    }

    /// Creates a "hand-made" entry with SPIRE's own CLI (parent `spiffe://example.org/spire/agent/x`,
    /// SPIFFE ID `spiffe://example.org/hand/made`, one `selector`): an entry the registrar does
    /// not own and must never touch.
    pub fn create_hand_made_entry(&self, selector: &str) {
        let out = self.cli(&[
            "entry",
            "create",
            "-parentID",
            "spiffe://example.org/spire/agent/x",
            "-spiffeID",
            "spiffe://example.org/hand/made",
            "-selector",
            selector,
        ]);
        assert!(out.status.success(), "entry create: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// All entries as the CLI shows them (`entry show -output json`), proving what SPIRE holds
    /// independently of our own client.
    pub fn cli_entries(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["entry", "show", "-output", "json"]);
        assert!(out.status.success(), "entry show failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("entry show json");
        let v = if let serde_json::Value::Array(mut a) = v { a.remove(0) } else { v };
        v["entries"].as_array().cloned().unwrap_or_default()
    }
}

/// etcd + kube-apiserver + spire-server in one temp dir.
pub struct Stack {
    pub kube: Kube,
    pub spire: Spire,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(KubeOptions::default()).await
    }

    pub async fn start_with(opts: KubeOptions) -> Stack {
        // Short path: unix socket paths must stay under ~107 bytes.
        let dir = tempfile::Builder::new().prefix("kwr-").tempdir_in("/tmp").expect("temp dir");
        let (kube, spire) = tokio::join!(Kube::start(dir.path(), opts), Spire::start(dir.path()));
        Stack { kube, spire, dir }
    }
}

/// `spire-server bundle set` for a made-up foreign trust domain `td`, so entries may federate
/// with it (SPIRE refuses `federates_with` without a bundle).
pub fn set_bundle(spire: &Spire, dir: &Path, td: &str) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.subject_alt_names = vec![rcgen::SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
    let key = rcgen::KeyPair::generate().unwrap();
    let path = dir.join(format!("{td}.pem"));
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    let out =
        spire.cli(&["bundle", "set", "-id", &format!("spiffe://{td}"), "-path", &path.display().to_string()]);
    assert!(out.status.success(), "bundle set: {}", String::from_utf8_lossy(&out.stderr));
}
