//! `k8s-workload-registrar plan` and `dry_run = true` against the real kube-apiserver and
//! spire-server: both show exactly the changes a registrar then makes, and write nothing.

use std::{collections::BTreeSet, process::Command, time::Duration};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};

use crate::{
    registrar::{Registrar, http_request, metric_value},
    stack::{Kube, KubeOptions, Spire, Stack, set_bundle},
    util::*,
};

/// spire-server's own count of entry write RPCs (its telemetry), independent of our client.
async fn spire_writes(spire: &Spire) -> f64 {
    let (_, body) = http_request(spire.telemetry_port.expect("telemetry"), "GET", "/metrics").await;
    ["batch_create_entry", "batch_update_entry", "batch_delete_entry"]
        .iter()
        .map(|m| metric_value(&body, &format!("spire_server_rpc_entry_v1_entry_{m}"), &[]).unwrap_or(0.0))
        .sum()
}

/// Runs `plan` with `config`; returns the exit code and stdout.
fn plan(stack: &Stack, config: &std::path::Path, output: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_k8s-workload-registrar"))
        .args(["plan", "-config"])
        .arg(config)
        .arg("-kubeconfig")
        .arg(&stack.kube.kubeconfig)
        .args(["-output", output])
        // The registrar's namespace (node SpiffeIDs live there in crd mode), as the tests' registrars.
        .env("POD_NAMESPACE", "default")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("ERROR"), "{stderr}");
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap())
}

/// (op, object, reason) of each change of a JSON plan.
fn changes(json: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("op"), s("object"), s("reason"))
        })
        .collect()
}

/// (op, object, reason) of a registrar's audit lines, all with `dry_run` = `dry_run`.
fn audited(reg: &Registrar, dry_run: bool) -> BTreeSet<(String, String, String)> {
    audit_lines(&reg.proc.log_text())
        .iter()
        .inspect(|l| assert_eq!(l["dry_run"], dry_run, "{l}"))
        .filter_map(|l| Some(triple(l["op"].as_str()?, l["object"].as_str()?, l["reason"].as_str()?)))
        .collect()
}

fn triple(op: &str, object: &str, reason: &str) -> (String, String, String) {
    (op.into(), object.into(), reason.into())
}

async fn stack_with_spire_telemetry() -> Stack {
    let dir = tempfile::Builder::new().prefix("kwr-").tempdir_in("/tmp").expect("temp dir");
    let (kube, spire) = tokio::join!(
        Kube::start(dir.path(), KubeOptions::default()),
        Spire::start_with_telemetry(dir.path())
    );
    Stack { kube, spire, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_exactly_what_reconcile_mode_then_writes_and_writes_nothing() {
    let stack = stack_with_spire_telemetry().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    set_bundle(&stack.spire, stack.dir.path(), "other.org");
    stack.spire.create_hand_made_entry("unix:uid:0");
    create_namespace(&k, "shop").await;
    create_node(&k, "n1").await;
    create_node(&k, "n2").await;
    pod("shop", "web").on("n1").sa("web").create(&k).await;
    pod("shop", "api").on("n2").sa("api").annotation("spiffe.io/federatesWith", "other.org").create(&k).await;

    // A registrar converges, then stops; the cluster changes while none runs.
    let config = {
        let reg = Registrar::start(&stack, "first", "c1", "").await;
        reg.wait_ready().await;
        eventually("first convergence", Duration::from_secs(30), || async {
            (all_shown(&spire).await.len() == 5).then_some(())
        })
        .await;
        assert_eq!(reg.proc.terminate(Duration::from_secs(20)).await, Some(0));
        stack.dir.path().join("first.conf")
    };
    pod("shop", "new").on("n1").sa("new").create(&k).await;
    create_node(&k, "n3").await;
    Api::<Pod>::namespaced(k.clone(), "shop")
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"spiffe.io/federatesWith": null}}}),
            ),
        )
        .await
        .unwrap();
    delete_pod(&k, "shop", "web").await;

    // The plan: exactly those four changes, each with its reason; exit status 3.
    let before = (all_shown(&spire).await, spire_writes(&stack.spire).await);
    let events: Api<Event> = Api::all(k.clone());
    let events_before = events.list(&ListParams::default()).await.unwrap().items.len();
    let (code, out) = plan(&stack, &config, "json");
    assert_eq!(code, 3, "changes pending: {out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let expected = BTreeSet::from([
        triple("create", "pod shop/new", "new"),
        triple("create", "node n3", "new"),
        triple("update", "pod shop/api", "changed"),
        triple("delete", "pod shop/web", "pod_gone"),
    ]);
    assert_eq!(changes(&json), expected, "{json:#}");
    let update = json["changes"].as_array().unwrap().iter().find(|c| c["op"] == "update").unwrap();
    assert_eq!(update["changed"], serde_json::json!(["federates_with"]));
    assert_eq!(update["old"]["federates_with"], serde_json::json!(["other.org"]));
    assert_eq!(update["new"]["federates_with"], serde_json::json!([]));
    assert!(update["entry_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(json["unchanged"], 2, "n1's and n2's aliases; the hand-made entry is not ours");
    // The text form, grouped by node.
    let (code, text) = plan(&stack, &config, "text");
    assert_eq!(code, 3);
    assert!(text.contains("node n1:\n"), "{text}");
    assert!(text.contains("+ create spiffe://example.org/ns/shop/sa/new"), "{text}");
    assert!(text.contains("federates_with: other.org -> -"), "{text}");
    assert!(text.contains("(pod shop/web; pod_gone)"), "{text}");
    assert!(text.ends_with("Plan: 2 to create, 1 to update, 1 to delete, 2 unchanged.\n"), "{text}");
    // Nothing was written: not to SPIRE (its own telemetry counts no write call), not to
    // Kubernetes (no Event, no Lease).
    assert_eq!((all_shown(&spire).await, spire_writes(&stack.spire).await), before);
    assert_eq!(events.list(&ListParams::default()).await.unwrap().items.len(), events_before);
    // (the API server keeps its own Leases in kube-system; a registrar's lock would be here)
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(k.clone(), "default");
    assert!(leases.list(&ListParams::default()).await.unwrap().items.is_empty());

    // A dry run (`dry_run = true`) shadows: it logs and counts exactly the planned writes,
    // sends none, and does not repeat them after resyncs re-read SPIRE.
    let shadow = Registrar::start(&stack, "shadow", "c1", "log_format = \"json\"\ndry_run = true\n").await;
    shadow.wait_ready().await;
    eventually("the dry run's would-be writes", Duration::from_secs(30), || async {
        (audited(&shadow, true) == expected).then_some(())
    })
    .await;
    let lists = |m: &str| {
        metric_value(m, "registrar_spire_call_duration_seconds_count", &[("method", "ListEntries")])
            .unwrap_or(0.0)
    };
    let listed = lists(&shadow.metrics().await);
    eventually("two more anti-entropy listings (resync_interval = 2s)", Duration::from_secs(30), || async {
        (lists(&shadow.metrics().await) >= listed + 2.0).then_some(())
    })
    .await;
    let m = shadow.metrics().await;
    assert_eq!(audit_lines(&shadow.proc.log_text()).len(), 4, "each write once, even after resyncs");
    let would = |op: &str| metric_value(&m, "registrar_dry_run_ops_total", &[("op", op), ("outcome", "ok")]);
    assert_eq!((would("create"), would("update"), would("delete")), (Some(2.0), Some(1.0), Some(1.0)), "{m}");
    assert_eq!(metric_value(&m, "registrar_entry_ops_total", &[]), Some(0.0), "{m}");
    assert_eq!((all_shown(&spire).await, spire_writes(&stack.spire).await), before, "the dry run wrote");
    assert_eq!(shadow.proc.terminate(Duration::from_secs(20)).await, Some(0));

    // A registrar started now makes exactly the planned writes (its audit lines), as many as
    // the dry run counted, and then the plan is empty (exit 0).
    let reg = Registrar::start(&stack, "second", "c1", "log_format = \"json\"\n").await;
    reg.wait_ready().await;
    eventually("the planned writes", Duration::from_secs(30), || async {
        (audited(&reg, false) == expected).then_some(())
    })
    .await;
    let m = reg.metrics().await;
    let did = |op: &str| metric_value(&m, "registrar_entry_ops_total", &[("op", op), ("outcome", "ok")]);
    assert_eq!((did("create"), did("update"), did("delete")), (Some(2.0), Some(1.0), Some(1.0)), "{m}");
    let (code, text) = plan(&stack, &config, "text");
    assert_eq!(code, 0, "{text}");
    assert_eq!(text, "Plan: 0 to create, 0 to update, 0 to delete, 5 unchanged.\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_in_webhook_mode_covers_pods_admitted_while_no_webhook_ran() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "apps").await;
    pod("apps", "web").label("spiffe.io/id", "web").create(&k).await;
    pod("apps", "nolabel").create(&k).await;
    let bad = pod("apps", "bad").label("spiffe.io/id", "").create(&k).await;
    let config = stack.dir.path().join("wh.conf");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"wc\"\nmode = \"webhook\"\n\
             pod_label = \"spiffe.io/id\"\n",
            stack.spire.socket.display()
        ),
    )
    .unwrap();
    let (code, out) = plan(&stack, &config, "json");
    assert_eq!(code, 3, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        changes(&json),
        BTreeSet::from([triple("create", "cluster wc", "new"), triple("create", "pod apps/web", "new")]),
        "{json:#}"
    );
    let web = json["changes"].as_array().unwrap().iter().find(|c| c["object"] == "pod apps/web").unwrap();
    assert_eq!(web["new"]["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(web["new"]["parent_id"], "spiffe://example.org/k8s-workload-registrar/wc/node");
    assert_eq!(web["new"]["selectors"], serde_json::json!(["k8s:ns:apps", "k8s:pod-name:web"]));
    // The pod whose label cannot form an ID is named, with the reason.
    let problems = json["problems"].as_array().unwrap();
    assert!(problems.len() == 1 && problems[0].as_str().unwrap().starts_with("apps/bad: "), "{problems:?}");
    assert!(bad.metadata.uid.is_some());
    assert!(all_shown(&spire).await.is_empty(), "plan wrote to SPIRE");
}

/// `spire-server entry create` with the given fields; returns the new entry's ID.
pub fn cli_create(
    spire: &Spire,
    spiffe_id: &str,
    parent_id: &str,
    selectors: &[&str],
    extra: &[&str],
) -> String {
    let mut args = vec!["entry", "create", "-spiffeID", spiffe_id, "-parentID", parent_id, "-output", "json"];
    for s in selectors {
        args.extend(["-selector", s]);
    }
    args.extend(extra);
    let out = spire.cli(&args);
    assert!(out.status.success(), "entry create: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["results"][0]["entry"]["id"].as_str().expect("created entry id").to_string()
}

/// A registrar started over entries the original Go registrar wrote (reconcile mode's shapes)
/// adopts the ones that match without a single write, and changes only what differs — which
/// `plan` shows beforehand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_of_the_original_registrars_entries_writes_only_the_differences() {
    let stack = stack_with_spire_telemetry().await;
    let k = stack.kube.client().await;
    set_bundle(&stack.spire, stack.dir.path(), "other.org");
    create_namespace(&k, "shop").await;
    create_node(&k, "n1").await;
    pod("shop", "web").on("n1").sa("web").create(&k).await;
    pod("shop", "api").on("n1").sa("api").annotation("spiffe.io/federatesWith", "other.org").create(&k).await;
    // The original's entries: the node alias, and the pods' entries under it — api's without the
    // federation its annotation asks for (the original did not compare federates_with).
    let td = "spiffe://example.org";
    let alias = format!("{td}/spire-k8s-registrar/c1/node/n1");
    let ids = [
        cli_create(
            &stack.spire,
            &alias,
            &format!("{td}/spire/server"),
            &["k8s_psat:cluster:c1", "k8s_psat:agent_node_name:n1"],
            &[],
        ),
        cli_create(
            &stack.spire,
            &format!("{td}/ns/shop/sa/web"),
            &alias,
            &["k8s:ns:shop", "k8s:pod-name:web"],
            &[],
        ),
        cli_create(
            &stack.spire,
            &format!("{td}/ns/shop/sa/api"),
            &alias,
            &["k8s:ns:shop", "k8s:pod-name:api"],
            &[],
        ),
    ];
    let config = stack.dir.path().join("takeover.conf");
    std::fs::write(&config, crate::registrar::base_config(&stack, "c1", 0, "")).unwrap();

    let (code, out) = plan(&stack, &config, "json");
    assert_eq!(code, 3, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(changes(&json), BTreeSet::from([triple("update", "pod shop/api", "changed")]), "{json:#}");
    assert_eq!(json["changes"][0]["changed"], serde_json::json!(["federates_with"]));
    assert_eq!(json["changes"][0]["entry_id"], ids[2].as_str());
    assert_eq!(json["unchanged"], 2);

    let writes = spire_writes(&stack.spire).await;
    let reg = Registrar::start(&stack, "takeover", "c1", "log_format = \"json\"\n").await;
    reg.wait_ready().await;
    let spire = stack.spire.client();
    eventually("api's federation synced", Duration::from_secs(30), || async {
        let api = all_entries(&spire).await.into_iter().find(|e| e.id == ids[2])?;
        (api.spec.federates_with.len() == 1).then_some(())
    })
    .await;
    // Exactly one write call (the update), no entry re-created: the IDs are the original's.
    let (code, text) = plan(&stack, &config, "text");
    assert_eq!((code, text.as_str()), (0, "Plan: 0 to create, 0 to update, 0 to delete, 3 unchanged.\n"));
    assert_eq!(spire_writes(&stack.spire).await, writes + 1.0);
    let mut now: Vec<String> = all_entries(&spire).await.into_iter().map(|e| e.id).collect();
    now.sort();
    let mut before = ids.to_vec();
    before.sort();
    assert_eq!(now, before);
    // Its audit line follows SPIRE's answer by a moment.
    let expected = BTreeSet::from([triple("update", "pod shop/api", "changed")]);
    eventually("the update's audit line", Duration::from_secs(30), || async {
        (!audited(&reg, false).is_empty()).then_some(())
    })
    .await;
    assert_eq!(audited(&reg, false), expected);
}

/// crd mode: the plan follows both steps a registrar takes — pods and nodes to SpiffeIDs (the
/// projector), SpiffeIDs to entries (the controller) — and names each entry by its SpiffeID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_in_crd_mode_follows_pods_through_spiffeids_to_entries() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    crate::crd::install_crd(&k).await;
    create_namespace(&k, "shop").await;
    create_node(&k, "n1").await;
    pod("shop", "web").on("n1").sa("web").create(&k).await;
    pod("shop", "api").on("n1").sa("api").create(&k).await;
    let config = stack.dir.path().join("crd-plan.conf");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"c1\"\nmode = \"crd\"\n",
            stack.spire.socket.display()
        ),
    )
    .unwrap();
    // Nothing there yet: three SpiffeIDs would be made, each with its entry.
    let (code, out) = plan(&stack, &config, "json");
    assert_eq!(code, 3, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first = BTreeSet::from([
        triple("create", "spiffeid default/n1", "new"),
        triple("create", "spiffeid shop/api", "new"),
        triple("create", "spiffeid shop/web", "new"),
    ]);
    assert_eq!(changes(&json), first, "{json:#}");
    let web =
        json["changes"].as_array().unwrap().iter().find(|c| c["object"] == "spiffeid shop/web").unwrap();
    assert_eq!(web["new"]["spiffe_id"], "spiffe://example.org/ns/shop/sa/web");
    assert_eq!(web["scope"], "shop");

    // A registrar converges and stops; then a pod goes (no garbage collector runs in this test
    // cluster, so its SpiffeID stays until a registrar deletes it).
    let reg = crate::crd::start_crd(&stack, "crd-first", "log_format = \"json\"\n").await;
    eventually("three entries", Duration::from_secs(30), || async {
        (all_shown(&spire).await.len() == 3).then_some(())
    })
    .await;
    let (code, text) = plan(&stack, &config, "text");
    assert_eq!((code, text.as_str()), (0, "Plan: 0 to create, 0 to update, 0 to delete, 3 unchanged.\n"));
    assert_eq!(reg.proc.terminate(Duration::from_secs(20)).await, Some(0));
    delete_pod(&k, "shop", "api").await;
    let (code, out) = plan(&stack, &config, "json");
    assert_eq!(code, 3, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        changes(&json),
        BTreeSet::from([triple("delete", "spiffeid shop/api", "pod_gone")]),
        "{json:#}"
    );
    let before = all_shown(&spire).await;
    assert_eq!(before.len(), 3, "plan wrote");
    // The next registrar does exactly that.
    let reg = crate::crd::start_crd(&stack, "crd-second", "log_format = \"json\"\n").await;
    eventually("api's entry gone", Duration::from_secs(30), || async {
        (all_shown(&spire).await.len() == 2).then_some(())
    })
    .await;
    let ops: BTreeSet<(String, String)> =
        audited(&reg, false).into_iter().map(|(op, object, _)| (op, object)).collect();
    assert_eq!(ops, BTreeSet::from([("delete".to_string(), "spiffeid shop/api".to_string())]));
}
