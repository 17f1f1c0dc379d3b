//! Reconcile mode end to end: the real registrar binary against real kube-apiserver + etcd and
//! spire-server. Every assertion is on what SPIRE holds (or what Kubernetes shows), as a user
//! would check it.

use std::time::Duration;

use kube::Api;

use crate::{
    registrar::{Registrar, metric_value},
    stack::{Stack, set_bundle},
    util::*,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_follow_pods_and_nodes() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "shop").await;
    create_namespace(&k, "quiet").await;
    create_node(&k, "n1").await;
    create_node(&k, "n2").await;
    pod("shop", "web").on("n1").sa("web-sa").create(&k).await;
    pod("shop", "api")
        .on("n2")
        .sa("api-sa")
        .annotation("spiffe.io/federatesWith", " other.org ,other.org,")
        .create(&k)
        .await;
    pod("shop", "pending").sa("x").create(&k).await; // not scheduled: no entry yet
    pod("kube-system", "dns").on("n1").create(&k).await; // disabled namespace by default
    // A hand-made entry that is not ours must survive everything below.
    stack.spire.create_hand_made_entry("unix:uid:0");
    // federation needs a bundle for other.org in SPIRE
    set_bundle(&stack.spire, stack.dir.path(), "other.org");

    let reg = Registrar::start(&stack, "reg", "c1", "log_format = \"json\"\n").await;
    reg.wait_ready().await;
    let hand_made =
        want("spiffe://example.org/hand/made", "spiffe://example.org/spire/agent/x", &["unix:uid:0"]);
    let mut api = pod_entry("c1", "n2", "shop", "api", "/ns/shop/sa/api-sa");
    api.federates_with = vec!["other.org".into()];
    let entries = converge(
        &spire,
        vec![
            node_entry("c1", "n1"),
            node_entry("c1", "n2"),
            pod_entry("c1", "n1", "shop", "web", "/ns/shop/sa/web-sa"),
            api.clone(),
            hand_made.clone(),
        ],
    )
    .await;
    // The CLI (SPIRE's own view) agrees on the exact fields.
    let cli = stack.spire.cli_entries();
    assert_eq!(cli.len(), entries.len());
    let web = cli.iter().find(|e| e["spiffe_id"]["path"] == "/ns/shop/sa/web-sa").expect("web entry in CLI");
    assert_eq!(web["parent_id"]["path"], "/spire-k8s-registrar/c1/node/n1");
    assert_eq!(web["x509_svid_ttl"], 0, "registrar leaves TTLs to the server default");
    assert_eq!(web["admin"], false);

    // Scheduling the pending pod gives it an entry.
    delete_pod(&k, "shop", "pending").await;
    pod("shop", "pending").on("n2").sa("late").create(&k).await;
    // A terminal pod loses its entry; deleting a pod removes its entry.
    patch_pod_status(&k, "shop", "web", serde_json::json!({"phase": "Succeeded"})).await;
    converge(
        &spire,
        vec![
            node_entry("c1", "n1"),
            node_entry("c1", "n2"),
            api.clone(),
            pod_entry("c1", "n2", "shop", "pending", "/ns/shop/sa/late"),
            hand_made.clone(),
        ],
    )
    .await;
    delete_pod(&k, "shop", "pending").await;
    // A changed annotation updates the entry in place.
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(k.clone(), "shop")
        .patch(
            "api",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"spiffe.io/federatesWith": null}}}),
            ),
        )
        .await
        .unwrap();
    api.federates_with = vec![];
    converge(&spire, vec![node_entry("c1", "n1"), node_entry("c1", "n2"), api.clone(), hand_made.clone()])
        .await;
    // Deleting a node removes its alias entry and the entries of its pods.
    delete_node(&k, "n2").await;
    converge(&spire, vec![node_entry("c1", "n1"), hand_made.clone()]).await;

    // Every write has its audit line: what, which entry, for which object, and why. A shard logs
    // it once SPIRE answered, so the last lines may follow what SPIRE shows by a moment.
    let audit = eventually("the node deletion's audit lines", Duration::from_secs(30), || async {
        let audit = audit_lines(&reg.proc.log_text());
        let n2_deletes = audit.iter().filter(|l| l["op"] == "delete" && l["reason"] == "node_gone").count();
        (n2_deletes == 2).then_some(audit)
    })
    .await;
    let find = |op: &str, object: &str, reason: &str| {
        audit
            .iter()
            .find(|l| l["op"] == op && l["object"] == object && l["reason"] == reason)
            .unwrap_or_else(|| panic!("no audit line {op} {object} {reason} in {audit:#?}"))
    };
    let created = find("create", "pod shop/web", "new");
    assert_eq!(created["message"], "Entry created.");
    assert_eq!(created["spiffe_id"], "spiffe://example.org/ns/shop/sa/web-sa");
    assert_eq!(created["parent_id"], "spiffe://example.org/spire-k8s-registrar/c1/node/n1");
    assert!(created["entry_id"].as_str().is_some_and(|id| !id.is_empty()), "{created}");
    find("create", "node n1", "new");
    let updated = find("update", "pod shop/api", "changed");
    assert_eq!(
        (&updated["message"], &updated["changed"]),
        (&"Entry updated.".into(), &"federates_with".into())
    );
    assert_eq!(find("delete", "pod shop/web", "pod_finished")["message"], "Entry deleted.");
    find("delete", "pod shop/pending", "pod_gone");
    find("delete", "node n2", "node_gone");
    find("delete", "pod shop/api", "node_gone");
    // One line per write: as many as the entry ops SPIRE confirmed.
    let metrics = reg.metrics().await;
    let ok_ops: f64 = ["create", "update", "delete"]
        .iter()
        .map(|op| {
            metric_value(&metrics, "registrar_entry_ops_total", &[("op", op), ("outcome", "ok")]).unwrap()
        })
        .sum();
    assert_eq!(audit.len() as f64, ok_ops, "{audit:#?}");
    assert!(audit.iter().all(|l| l["level"] == "INFO"), "{audit:#?}");

    let metrics = reg.metrics().await;
    assert!(
        metric_value(&metrics, "registrar_entry_ops_total", &[("op", "create"), ("outcome", "ok")]).unwrap()
            >= 5.0
    );
    assert!(
        metric_value(&metrics, "registrar_entry_ops_total", &[("op", "delete"), ("outcome", "ok")]).unwrap()
            >= 3.0
    );
    assert!(
        metric_value(&metrics, "registrar_spire_call_duration_seconds_count", &[("method", "ListEntries")])
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_changes_replace_entries_and_bad_values_get_events() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "apps").await;
    create_node(&k, "n1").await;
    pod("apps", "pay").on("n1").label("spiffe.io/id", "payment").create(&k).await;
    pod("apps", "nolabel").on("n1").create(&k).await;
    pod("apps", "bad").on("n1").label("spiffe.io/id", "ok").create(&k).await;

    let reg = Registrar::start(&stack, "reg", "c2", "pod_label = \"spiffe.io/id\"").await;
    reg.wait_ready().await;
    converge(
        &spire,
        vec![
            node_entry("c2", "n1"),
            pod_entry("c2", "n1", "apps", "pay", "/payment"),
            pod_entry("c2", "n1", "apps", "bad", "/ok"),
        ],
    )
    .await;

    // Changing the label replaces the entry. An empty value (the only label value that cannot
    // be a path segment) removes the entry and raises an Event; other pods are unaffected.
    patch_pod_labels(&k, "apps", "pay", serde_json::json!({"spiffe.io/id": "payment.v2"})).await;
    patch_pod_labels(&k, "apps", "bad", serde_json::json!({"spiffe.io/id": ""})).await;
    converge(&spire, vec![node_entry("c2", "n1"), pod_entry("c2", "n1", "apps", "pay", "/payment.v2")]).await;
    let event = event_on(&k, "apps", "bad").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.message.unwrap_or_default().contains("spiffe.io/id"));
    // Removing the label removes the entry.
    patch_pod_labels(&k, "apps", "pay", serde_json::json!({"spiffe.io/id": null})).await;
    converge(&spire, vec![node_entry("c2", "n1")]).await;
    drop(reg);

    // Annotation mode: multi-segment values work; an invalid value yields no entry and an Event.
    let reg = Registrar::start(&stack, "reg2", "c3", "pod_annotation = \"spiffe.io/spiffe-id\"").await;
    pod("apps", "multi").on("n1").annotation("spiffe.io/spiffe-id", "services/payment/v1").create(&k).await;
    pod("apps", "broken").on("n1").annotation("spiffe.io/spiffe-id", "a//b").create(&k).await;
    // The node-alias hijack: a pod on n1 claiming n2's alias would give n1's agent n2's SVIDs.
    pod("apps", "hijack")
        .on("n1")
        .annotation("spiffe.io/spiffe-id", "spire-k8s-registrar/c3/node/n2")
        .create(&k)
        .await;
    reg.wait_ready().await;
    let mut expected = vec![node_entry("c2", "n1")];
    expected.push(node_entry("c3", "n1"));
    expected.push(pod_entry("c3", "n1", "apps", "multi", "/services/payment/v1"));
    converge(&spire, expected).await;
    let event = event_on(&k, "apps", "broken").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let msg = event.message.unwrap_or_default();
    assert!(msg.contains("spiffe.io/spiffe-id") && msg.contains("a//b"), "event message: {msg}");
    let event = event_on(&k, "apps", "hijack").await;
    assert_eq!(event.reason.as_deref(), Some("ReservedIdentity"));
    let msg = event.message.unwrap_or_default();
    assert!(
        msg.contains("spire-k8s-registrar/c3/node/n2") && msg.contains("is reserved"),
        "event message: {msg}"
    );
    let metrics = reg.metrics().await;
    assert!(
        metric_value(&metrics, "registrar_invalid_identity_total", &[("reason", "invalid_id")]).unwrap()
            >= 1.0
    );
    assert_eq!(
        metric_value(&metrics, "registrar_invalid_identity_total", &[("reason", "reserved_id")]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_from_pod_ip_and_endpointslices() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "bar").await;
    create_node(&k, "n1").await;
    let created = pod("bar", "foo").on("n1").sa("foo").create(&k).await;
    patch_pod_status(&k, "bar", "foo", serde_json::json!({"podIP": "123.123.123.124", "phase": "Running"}))
        .await;
    let reg = Registrar::start(&stack, "reg", "c", "add_pod_dns_names = true").await;
    reg.wait_ready().await;
    let mut with_ip = pod_entry("c", "n1", "bar", "foo", "/ns/bar/sa/foo");
    with_ip.dns_names =
        vec!["123-123-123-124.bar.pod.cluster.local".into(), "123-123-123-124.bar.pod".into()];
    converge(&spire, vec![node_entry("c", "n1"), with_ip.clone()]).await;

    // A Service's EndpointSlice that targets the pod adds the service names (the reference's
    // 14-name example).
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "foo-svc-abc12", "labels": {"kubernetes.io/service-name": "foo-svc"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["123.123.123.123"],
                       "targetRef": {"kind": "Pod", "name": "foo", "namespace": "bar", "uid": created.metadata.uid}}],
        "ports": [{"port": 80}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(k.clone(), "bar").create(&Default::default(), &slice).await.unwrap();
    let entries = eventually("service DNS names on the entry", Duration::from_secs(60), || async {
        let all = all_entries(&spire).await;
        all.into_iter()
            .find(|e| e.spec.spiffe_id.path() == "/ns/bar/sa/foo")
            .filter(|e| e.spec.dns_names.len() == 14)
    })
    .await;
    let mut got = entries.spec.dns_names.clone();
    got.sort();
    let mut want = vec![
        "123-123-123-124.bar.pod.cluster.local",
        "123-123-123-124.bar.pod",
        "123-123-123-123.foo-svc",
        "123-123-123-123.foo-svc.bar",
        "123-123-123-123.foo-svc.bar.svc",
        "123-123-123-123.foo-svc.bar.svc.cluster.local",
        "foo-svc",
        "foo-svc.bar",
        "foo-svc.bar.svc",
        "foo-svc.bar.svc.cluster.local",
        "foo.foo-svc",
        "foo.foo-svc.bar",
        "foo.foo-svc.bar.svc",
        "foo.foo-svc.bar.svc.cluster.local",
    ];
    want.sort();
    assert_eq!(got, want);
    // Deleting the slice removes the service names again.
    Api::<EndpointSlice>::namespaced(k.clone(), "bar")
        .delete("foo-svc-abc12", &Default::default())
        .await
        .unwrap();
    converge(&spire, vec![node_entry("c", "n1"), with_ip]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_namespace_removes_its_entries() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "team").await;
    create_node(&k, "n1").await;
    pod("team", "p").on("n1").sa("s").create(&k).await;
    let reg = Registrar::start(&stack, "reg", "c", "").await;
    converge(&spire, vec![node_entry("c", "n1"), pod_entry("c", "n1", "team", "p", "/ns/team/sa/s")]).await;
    assert_eq!(reg.proc.terminate(Duration::from_secs(20)).await, Some(0));
    // The same cluster, restarted with the namespace disabled: the pod loses its entry.
    let _reg = Registrar::start(&stack, "reg2", "c", "disabled_namespaces = [\"team\"]").await;
    converge(&spire, vec![node_entry("c", "n1")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_rejections_are_reported_once_and_not_retried() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "apps").await;
    create_node(&k, "n1").await;
    // A valid trust domain SPIRE has no bundle for: no retry can make this entry acceptable.
    pod("apps", "fed")
        .on("n1")
        .sa("fed")
        .annotation("spiffe.io/federatesWith", "nobundle.org")
        .create(&k)
        .await;
    pod("apps", "web").on("n1").sa("web").create(&k).await;
    let reg = Registrar::start(&stack, "reg", "c1", "").await;
    reg.wait_ready().await;
    let web = pod_entry("c1", "n1", "apps", "web", "/ns/apps/sa/web");
    let entries = converge(&spire, vec![node_entry("c1", "n1"), web.clone()]).await;
    let event = event_on(&k, "apps", "fed").await;
    assert_eq!(event.reason.as_deref(), Some("SpireRejected"));
    assert!(event.message.unwrap_or_default().contains("federated bundle"));

    // Two anti-entropy passes of the node's shard (each repairs an entry deleted behind its
    // back); meanwhile the refused entry must not be sent again.
    let web_id = entries.iter().find(|e| e.spec.spiffe_id.path() == "/ns/apps/sa/web").unwrap().id.clone();
    let mut gone = web_id;
    for _ in 0..2 {
        spire.delete_entries(std::slice::from_ref(&gone)).await.unwrap();
        let entries = converge(&spire, vec![node_entry("c1", "n1"), web.clone()]).await;
        gone = entries.iter().find(|e| e.spec.spiffe_id.path() == "/ns/apps/sa/web").unwrap().id.clone();
    }
    let metrics = reg.metrics().await;
    let failed =
        metric_value(&metrics, "registrar_entry_ops_total", &[("op", "create"), ("outcome", "failed")]);
    assert_eq!(failed, Some(1.0), "the refused create was sent once");
    assert_eq!(
        metric_value(&metrics, "registrar_invalid_identity_total", &[("reason", "spire_rejected")]),
        Some(1.0)
    );
    let on_fed = events_on(&k, "apps", "fed").await;
    assert_eq!(on_fed.len(), 1);
    assert!(on_fed[0].series.is_none() && on_fed[0].count.unwrap_or(1) == 1, "{on_fed:?}");

    // Once the pod's spec changes (the annotation goes), it gets its entry.
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(k.clone(), "apps")
        .patch(
            "fed",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"spiffe.io/federatesWith": null}}}),
            ),
        )
        .await
        .unwrap();
    converge(
        &spire,
        vec![node_entry("c1", "n1"), web, pod_entry("c1", "n1", "apps", "fed", "/ns/apps/sa/fed")],
    )
    .await;
}

/// `x509_svid_ttl`, `jwt_svid_ttl` and `entry_hint` reach every entry, a changed setting
/// converges on restart as an update of just those fields, and fields the registrar does not
/// manage (here `admin`, set by an operator) are left alone by its updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_fields_converge_on_restart_and_others_are_left_alone() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    create_namespace(&k, "shop").await;
    create_node(&k, "n1").await;
    pod("shop", "web").on("n1").sa("web").create(&k).await;
    let web_of = |entries: &[serde_json::Value]| {
        entries.iter().find(|e| e["spiffe_id"]["path"] == "/ns/shop/sa/web").cloned()
    };
    let shown = |ttl: i64, jwt: i64, hint: &'static str| {
        let spire = &stack.spire;
        move || async move {
            let entries = spire.cli_entries();
            let all_set = entries.len() == 2
                && entries
                    .iter()
                    .all(|e| e["x509_svid_ttl"] == ttl && e["jwt_svid_ttl"] == jwt && e["hint"] == hint);
            all_set.then_some(entries)
        }
    };

    let extra = "x509_svid_ttl = \"1h\"\njwt_svid_ttl = \"5m\"\nentry_hint = \"kwr/c1\"\n";
    let reg = Registrar::start(&stack, "first", "c1", extra).await;
    reg.wait_ready().await;
    let entries =
        eventually("TTLs and hint on every entry", Duration::from_secs(30), shown(3600, 300, "kwr/c1")).await;
    assert_eq!(reg.proc.terminate(Duration::from_secs(20)).await, Some(0));

    // An operator marks the pod's entry admin (a field the registrar does not manage).
    let web = web_of(&entries).expect("web's entry");
    let id = web["id"].as_str().unwrap().to_string();
    let out = stack.spire.cli(&[
        "entry",
        "update",
        "-entryID",
        &id,
        "-spiffeID",
        "spiffe://example.org/ns/shop/sa/web",
        "-parentID",
        "spiffe://example.org/spire-k8s-registrar/c1/node/n1",
        "-selector",
        "k8s:ns:shop",
        "-selector",
        "k8s:pod-name:web",
        "-x509SVIDTTL",
        "3600",
        "-jwtSVIDTTL",
        "300",
        "-hint",
        "kwr/c1",
        "-admin",
    ]);
    assert!(out.status.success(), "entry update: {}", String::from_utf8_lossy(&out.stderr));

    // Restarted with other settings: every entry is updated to them, in place (same IDs), and
    // the admin flag survives.
    let extra = "x509_svid_ttl = \"2h\"\nentry_hint = \"kwr/c1/v2\"\nlog_format = \"json\"\n";
    let reg = Registrar::start(&stack, "second", "c1", extra).await;
    let entries = eventually("the new settings", Duration::from_secs(30), shown(7200, 0, "kwr/c1/v2")).await;
    let web = web_of(&entries).unwrap();
    assert_eq!(web["id"], id.as_str(), "updated in place");
    assert_eq!(web["admin"], true, "a field the registrar does not manage was reset: {web}");
    let audit = eventually("two audited updates", Duration::from_secs(30), || async {
        let a = audit_lines(&reg.proc.log_text());
        (a.len() == 2).then_some(a)
    })
    .await;
    for l in &audit {
        assert_eq!((&l["op"], &l["reason"]), (&"update".into(), &"changed".into()), "{l}");
        assert_eq!(l["changed"], "x509_svid_ttl,jwt_svid_ttl,hint", "{l}");
    }
}

/// Two clusters (two registrars with different `cluster` values) on one SPIRE server never
/// touch each other's entries: every write of each is under its own cluster's path, and each
/// keeps its entries through the other's start-up, resyncs and deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_one_spire_server_never_touch_each_others_entries() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    create_namespace(&k, "shop").await;
    create_node(&k, "n1").await;
    pod("shop", "web").on("n1").sa("web").create(&k).await;
    pod("shop", "api").on("n1").sa("api").create(&k).await;
    let json = "log_format = \"json\"\n";
    let east = Registrar::start(&stack, "east", "east", json).await;
    let c1 = |c: &str| {
        vec![
            node_entry(c, "n1"),
            pod_entry(c, "n1", "shop", "web", "/ns/shop/sa/web"),
            pod_entry(c, "n1", "shop", "api", "/ns/shop/sa/api"),
        ]
    };
    converge(&spire, c1("east")).await;
    let east_ids: Vec<String> = {
        let mut v: Vec<String> = all_entries(&spire).await.into_iter().map(|e| e.id).collect();
        v.sort();
        v
    };
    // The second cluster's registrar (here on the same API server, which makes the overlap
    // complete: the same nodes, pods and SPIFFE IDs) adds its own entries beside them.
    let west = Registrar::start(&stack, "west", "west", json).await;
    converge(&spire, [c1("east"), c1("west")].concat()).await;
    let mut still: Vec<String> = all_entries(&spire)
        .await
        .into_iter()
        .filter(|e| {
            e.spec.parent_id.to_string().contains("/east/") || e.spec.spiffe_id.to_string().contains("/east/")
        })
        .map(|e| e.id)
        .collect();
    still.sort();
    assert_eq!(still, east_ids, "east's entries were re-written");
    // A pod goes: each removes its own entry.
    delete_pod(&k, "shop", "api").await;
    let mut rest = [c1("east"), c1("west")].concat();
    rest.retain(|e| !e.spiffe_id.ends_with("/sa/api"));
    converge(&spire, rest).await;
    for (reg, cluster) in [(&east, "east"), (&west, "west")] {
        let audit = audit_lines(&reg.proc.log_text());
        assert!(!audit.is_empty());
        for l in &audit {
            let under =
                |k: &str| l[k].as_str().unwrap().contains(&format!("/spire-k8s-registrar/{cluster}/"));
            assert!(under("parent_id") || under("spiffe_id"), "{cluster} wrote outside its path: {l}");
        }
    }
}
