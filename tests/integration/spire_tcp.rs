//! The TCP path to the real spire-server: mutual TLS with an X509-SVID that a real spire-agent
//! (join-token attested, unix workload attestor) issues to this test process.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_workload_registrar::{
    model::{EntrySpec, Selector, Selectors},
    spire::{Error, ListFilter, SpireClient, SvidSource},
};
use tonic::Code;

use crate::{
    stack::{Proc, Spire, TRUST_DOMAIN, bin},
    util::*,
};

const JOIN_TOKEN_PLUGIN: &str = r#"NodeAttestor "join_token" {
        plugin_data {}
    }"#;
pub const AGENT_ID: &str = "spiffe://example.org/agent/test";
const REGISTRAR_ID: &str = "spiffe://example.org/registrar";
const SVID_WAIT: Duration = Duration::from_secs(60);

/// spire-server with the join-token attestor, and one spire-agent attested with a token.
/// Field order is drop order: the agent stops before the server, the temp dir goes last.
pub struct TcpStack {
    agent: Proc,
    pub spire: Spire,
    agent_socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TcpStack {
    pub async fn start() -> TcpStack {
        // Short path: unix socket paths must stay under ~107 bytes.
        let dir = tempfile::Builder::new().prefix("kwr-").tempdir_in("/tmp").expect("temp dir");
        let spire = Spire::start_with(dir.path(), JOIN_TOKEN_PLUGIN).await;

        let out = spire.cli(&["token", "generate", "-spiffeID", AGENT_ID, "-ttl", "600"]);
        assert!(out.status.success(), "token generate: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let token = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Token:"))
            .unwrap_or_else(|| panic!("no token in {stdout:?}"))
            .trim()
            .to_string();

        let agent_dir = dir.path().join("agent");
        std::fs::create_dir_all(agent_dir.join("data")).unwrap();
        let out = spire.cli(&["bundle", "show"]);
        assert!(out.status.success(), "bundle show: {}", String::from_utf8_lossy(&out.stderr));
        let bundle = agent_dir.join("bundle.pem");
        std::fs::write(&bundle, &out.stdout).unwrap();

        let agent_socket = agent_dir.join("api.sock");
        let conf = format!(
            r#"agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{sock}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{TRUST_DOMAIN}"
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
            data = agent_dir.join("data").display(),
            port = spire.bind_port,
            sock = agent_socket.display(),
            bundle = bundle.display(),
        );
        let conf_path = agent_dir.join("agent.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let agent = Proc::spawn(
            "spire-agent",
            &bin("spire-agent"),
            &["run", "-config", &conf_path.display().to_string(), "-joinToken", &token],
            &agent_dir,
        );
        let stack = TcpStack { agent, spire, agent_socket, dir };
        stack.wait_agent_healthy().await;
        stack
    }

    async fn wait_agent_healthy(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = std::process::Command::new(bin("spire-agent"))
                .args(["healthcheck", "-socketPath"])
                .arg(&self.agent_socket)
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            self.agent.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "spire-agent not healthy\n{}",
                self.agent.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.spire.bind_port)
    }

    /// The selector that matches this test process under the unix workload attestor.
    fn uid_selector(&self) -> String {
        // The temp dir was created by this process, so it is owned by its effective uid.
        format!("unix:uid:{}", std::fs::metadata(self.dir.path()).unwrap().uid())
    }

    /// `entry create` (or `entry update` of `existing`) for this process's SPIFFE ID.
    fn registrar_entry(&self, existing: Option<&str>, admin: bool, extra: &[&str]) -> String {
        let selector = self.uid_selector();
        let mut args = match existing {
            Some(id) => vec!["entry", "update", "-entryID", id],
            None => vec!["entry", "create"],
        };
        args.extend(["-parentID", AGENT_ID, "-spiffeID", REGISTRAR_ID, "-selector", &selector]);
        if admin {
            args.push("-admin");
        }
        args.extend(extra);
        let out = self.spire.cli(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let entries = self.spire.cli_entries();
        let entry = entries.iter().find(|e| e["spiffe_id"]["path"] == "/registrar").expect("registrar entry");
        assert_eq!(entry["admin"].as_bool().unwrap_or(false), admin, "{entry}");
        entry["id"].as_str().unwrap().to_string()
    }

    pub fn agent_socket(&self) -> &Path {
        &self.agent_socket
    }
}

fn spec(path: &str) -> EntrySpec {
    EntrySpec {
        spiffe_id: id(path),
        parent_id: id("/reg/node/n1"),
        selectors: Selectors::from([Selector::k8s("ns:t"), Selector::k8s("pod-name:tcp")]),
        dns_names: vec!["tcp.t.svc".into()],
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_svid_from_the_agent_creates_lists_and_deletes_over_tcp() {
    let stack = TcpStack::start().await;
    // A short SVID lifetime so that the agent rotates it during the test.
    stack.registrar_entry(None, true, &["-x509SVIDTTL", "30"]);

    let client = SpireClient::tcp_mtls(&stack.address(), stack.agent_socket(), SVID_WAIT).await.unwrap();

    let wanted = spec("/w/tcp");
    let created = client.create_entries(std::slice::from_ref(&wanted)).await.unwrap().remove(0).unwrap();
    assert_eq!(created.spec, wanted);
    let by_id = ListFilter { by_spiffe_id: Some(id("/w/tcp")), ..Default::default() };
    assert_eq!(client.list_entries(&by_id).await.unwrap(), vec![created.clone()]);
    // Independent proof through the admin socket: SPIRE holds exactly that.
    let shown = stack.spire.cli_entries();
    let e = shown.iter().find(|e| e["spiffe_id"]["path"] == "/w/tcp").expect("entry in SPIRE");
    assert_eq!(e["id"], created.id.as_str());
    assert_eq!(e["parent_id"]["path"], "/reg/node/n1");
    assert_eq!(e["dns_names"], serde_json::json!(["tcp.t.svc"]));
    // `token generate -spiffeID` made an entry too: the agent's alias, parent the join token.
    assert_eq!(client.count_entries().await.unwrap(), 3, "the agent's and the registrar's, and /w/tcp");

    let deleted = client.delete_entries(std::slice::from_ref(&created.id)).await.unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    assert!(client.list_entries(&by_id).await.unwrap().is_empty());
    assert!(!stack.spire.cli_entries().iter().any(|e| e["spiffe_id"]["path"] == "/w/tcp"));

    // Rotation: the source keeps the latest SVID, and new connections present it.
    let source = SvidSource::start(stack.agent_socket());
    let first = source.wait_first(SVID_WAIT).await.unwrap();
    assert_eq!(first.spiffe_id.to_string(), REGISTRAR_ID);
    let rotated = eventually("the agent rotates the 30 s SVID", Duration::from_secs(60), || async {
        source.current().filter(|s| s.cert_chain[0] != first.cert_chain[0])
    })
    .await;
    assert!(source.updates() >= 2);
    assert_eq!(rotated.spiffe_id.to_string(), REGISTRAR_ID);
    let fresh = SpireClient::tcp_mtls_with(&stack.address(), source.clone()).unwrap();
    assert_eq!(fresh.count_entries().await.unwrap(), 2);
    // The first client, whose source rotated too, keeps working.
    assert_eq!(client.count_entries().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_admin_is_denied_until_its_entry_says_admin() {
    let stack = TcpStack::start().await;

    // No entry yet: the agent issues nothing, and start-up fails with the agent's reason.
    let err = SpireClient::tcp_mtls(&stack.address(), stack.agent_socket(), Duration::from_secs(3))
        .await
        .err()
        .expect("no SVID without a registration entry");
    assert!(matches!(err, Error::WorkloadApi(_)), "{err}");
    assert!(err.to_string().contains("PermissionDenied"), "{err}");

    let entry_id = stack.registrar_entry(None, false, &[]);
    let client = SpireClient::tcp_mtls(&stack.address(), stack.agent_socket(), SVID_WAIT).await.unwrap();
    match client.list_entries(&ListFilter::default()).await {
        Err(Error::Rpc { method: "ListEntries", code: Code::PermissionDenied, .. }) => {}
        other => panic!("a non-admin SVID must get PERMISSION_DENIED, got {other:?}"),
    }
    match client.create_entries(&[spec("/w/denied")]).await {
        Err(Error::Rpc { code: Code::PermissionDenied, .. }) => {}
        other => panic!("a non-admin SVID must get PERMISSION_DENIED, got {other:?}"),
    }

    // The same SVID (same SPIFFE ID) becomes admin once its entry says so.
    stack.registrar_entry(Some(&entry_id), true, &[]);
    let listed = eventually("the server sees the admin flag", SVID_WAIT, || async {
        client.list_entries(&ListFilter::default()).await.ok()
    })
    .await;
    let ids: BTreeSet<String> = listed.iter().map(|e| e.spec.spiffe_id.to_string()).collect();
    assert_eq!(ids, BTreeSet::from([AGENT_ID.to_string(), REGISTRAR_ID.to_string()]));
}

/// The registrar binary itself on the TCP path: `server_address` + `agent_socket_path`, its
/// SVID from the agent, its writes over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrar_binary_registers_pods_over_tcp() {
    let stack = TcpStack::start().await;
    // The registrar runs as this process's uid, so the same entry makes it an admin caller.
    stack.registrar_entry(None, true, &[]);
    let kube = crate::stack::Kube::start(stack.dir.path(), Default::default()).await;
    let k = kube.client().await;
    create_namespace(&k, "tcp").await;
    create_node(&k, "n1").await;
    pod("tcp", "web").on("n1").sa("web").create(&k).await;

    let metrics_port = crate::stack::free_port();
    let config = stack.dir.path().join("registrar.conf");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_address = \"{}\"\nagent_socket_path = \"{}\"\ncluster = \"c\"\n\
             mode = \"reconcile\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n",
            stack.address(),
            stack.agent_socket().display()
        ),
    )
    .unwrap();
    let kubeconfig = kube.kubeconfig.display().to_string();
    let reg = Proc::spawn_env(
        "registrar",
        Path::new(env!("CARGO_BIN_EXE_k8s-workload-registrar")),
        &["-config", &config.display().to_string()],
        stack.dir.path(),
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let admin = stack.spire.client();
    let mut expected = vec![
        want(
            "spiffe://example.org/spire-k8s-registrar/c/node/n1",
            "spiffe://example.org/spire/server",
            &["k8s_psat:cluster:c", "k8s_psat:agent_node_name:n1"],
        ),
        want(
            "spiffe://example.org/ns/tcp/sa/web",
            "spiffe://example.org/spire-k8s-registrar/c/node/n1",
            &["k8s:ns:tcp", "k8s:pod-name:web"],
        ),
    ];
    expected.sort();
    eventually("the registrar's entries over TCP", Duration::from_secs(90), || async {
        reg.assert_running();
        (reconcile_shown(&admin).await == expected).then_some(())
    })
    .await;
    assert!(reg.log_text().contains("credentials from the agent socket"), "{}", reg.log_tail());
}

/// The SPIFFE IDs the agent's Workload API serves to this process (`spire-agent api fetch`).
fn served_to_me(stack: &TcpStack) -> BTreeSet<String> {
    let out = std::process::Command::new(bin("spire-agent"))
        .args(["api", "fetch", "x509", "-output", "json", "-socketPath"])
        .arg(stack.agent_socket())
        .output()
        .unwrap();
    if !out.status.success() {
        return BTreeSet::new(); // "no identity issued" while nothing matches
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let svids = v.get("svids").and_then(|s| s.as_array()).cloned().unwrap_or_default();
    svids.iter().filter_map(|s| s["spiffe_id"].as_str().map(String::from)).collect()
}

/// The node-alias hijack, end to end with a real agent: SPIRE authorizes an agent recursively
/// over entry IDs, so a workload entry whose SPIFFE ID is another node's alias would hand this
/// node's agent the other node's SVIDs. Neither a pod's annotation nor a tenant's SpiffeID may
/// create one (crd mode here; reconcile and webhook share the same rule, `identity::workload_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_never_served_another_nodes_svids() {
    let stack = TcpStack::start().await;
    let kube = crate::stack::Kube::start(stack.dir.path(), Default::default()).await;
    let k = kube.client().await;
    crate::crd::install_crd(&k).await;
    create_namespace(&k, "shop").await;
    create_node(&k, "n1").await;
    create_node(&k, "n2").await;
    let (alias1, alias2) = (
        "spiffe://example.org/k8s-workload-registrar/c1/node/n1",
        "spiffe://example.org/k8s-workload-registrar/c1/node/n2",
    );
    let me = stack.uid_selector();
    let cli = |args: &[&str]| {
        let out = stack.spire.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // The join-token agent plays node n1: an entry with n1's alias ID, parented to the agent.
    cli(&["entry", "create", "-parentID", AGENT_ID, "-spiffeID", alias1, "-selector", "unix:uid:424242"]);
    // A workload on each node that this process would match.
    cli(&["entry", "create", "-parentID", alias1, "-spiffeID", "spiffe://example.org/w1", "-selector", &me]);
    cli(&["entry", "create", "-parentID", alias2, "-spiffeID", "spiffe://example.org/w2", "-selector", &me]);
    let w1 = "spiffe://example.org/w1".to_string();
    let w2 = "spiffe://example.org/w2".to_string();
    eventually("the agent serves n1's workload", SVID_WAIT, || async {
        served_to_me(&stack).contains(&w1).then_some(())
    })
    .await;
    assert!(!served_to_me(&stack).contains(&w2), "n2's workload is not n1's agent's to serve");

    // The registrar (crd mode, IDs from an annotation) with a pod on n1 that claims n2's alias,
    // and a tenant SpiffeID that tries the same in the pod-SpiffeID shape.
    pod("shop", "hijack")
        .on("n1")
        .annotation("spiffe.io/id", "k8s-workload-registrar/c1/node/n2")
        .create(&k)
        .await;
    let metrics_port = crate::stack::free_port();
    let config = stack.dir.path().join("registrar.conf");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"c1\"\nmode = \"crd\"\n\
             pod_annotation = \"spiffe.io/id\"\nadd_svc_dns_name = false\nresync_interval = \"2s\"\n\
             metrics_bind_addr = \"127.0.0.1:{metrics_port}\"\n",
            stack.spire.socket.display()
        ),
    )
    .unwrap();
    let kubeconfig = kube.kubeconfig.display().to_string();
    let reg = Proc::spawn_env(
        "registrar",
        Path::new(env!("CARGO_BIN_EXE_k8s-workload-registrar")),
        &["-config", &config.display().to_string()],
        stack.dir.path(),
        &[("KUBECONFIG", kubeconfig.as_str()), ("POD_NAMESPACE", "default")],
    );
    let api: kube::Api<k8s_workload_registrar::crd::resource::SpiffeID> =
        kube::Api::namespaced(k.clone(), "shop");
    let evil = serde_json::from_value(serde_json::json!({
        "apiVersion": "spiffeid.spiffe.io/v1beta1", "kind": "SpiffeID", "metadata": {"name": "evil"},
        "spec": {"parentId": alias1, "spiffeId": alias2,
                 "selector": {"namespace": "shop", "podUid": "x", "nodeName": "n1"}},
    }))
    .unwrap();
    api.create(&kube::api::PostParams::default(), &evil).await.unwrap();
    // Both are processed (refused with a reason)...
    let events: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::namespaced(k.clone(), "shop");
    for name in ["hijack", "evil"] {
        let event = eventually(&format!("an Event on {name}"), Duration::from_secs(60), || async {
            reg.assert_running();
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|e| e.involved_object.name.as_deref() == Some(name))
        })
        .await;
        assert_eq!(event.reason.as_deref(), Some("ReservedIdentity"), "{name}");
    }
    // ... and the agent has synced since (a new n1 workload is served): still no n2 SVID.
    cli(&["entry", "create", "-parentID", alias1, "-spiffeID", "spiffe://example.org/w1b", "-selector", &me]);
    let w1b = "spiffe://example.org/w1b".to_string();
    let served = eventually("the agent synced again", SVID_WAIT, || async {
        let s = served_to_me(&stack);
        s.contains(&w1b).then_some(s)
    })
    .await;
    assert!(!served.contains(&w2), "n1's agent was served n2's workload: {served:?}");
    let aliases = stack.spire.cli_entries();
    let hijacking = aliases.iter().filter(|e| {
        e["spiffe_id"]["path"] == "/k8s-workload-registrar/c1/node/n2"
            && e["parent_id"]["path"] != "/spire/server"
    });
    assert_eq!(hijacking.count(), 0, "no workload entry holds n2's alias");

    // The check can fail: the entry the registrar refused to write does hand n2's SVIDs over.
    cli(&["entry", "create", "-parentID", alias1, "-spiffeID", alias2, "-selector", "unix:uid:424243"]);
    eventually("the hijack works when the entry exists", SVID_WAIT, || async {
        served_to_me(&stack).contains(&w2).then_some(())
    })
    .await;
    drop(reg);
}
