//! CRD mode end to end: SpiffeID resources → SPIRE entries, against real kube-apiserver + etcd
//! and spire-server. The CRD comes from the chart (`deploy/helm/k8s-workload-registrar/files/spiffeid-crd.yaml`) (the stack has no
//! controller-manager, so finalizers and deletions are observed exactly as the registrar leaves
//! them).

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_workload_registrar::crd::resource::{FINALIZER, SpiffeID};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{
    registrar::{Registrar, metric_value},
    stack::{Stack, free_port, set_bundle},
    util::*,
};

/// Creates the SpiffeID CRD from the shipped manifest and waits until it is served.
pub async fn install_crd(client: &kube::Client) {
    let yaml = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/helm/k8s-workload-registrar/files/spiffeid-crd.yaml"
    ))
    .unwrap();
    let req = http::Request::post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        .header("Content-Type", "application/yaml")
        .body(yaml)
        .unwrap();
    client.request_text(req).await.expect("create the SpiffeID CRD");
    let api: Api<SpiffeID> = Api::all(client.clone());
    eventually("the SpiffeID CRD is served", Duration::from_secs(30), || async {
        api.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
}

pub async fn start_crd(stack: &Stack, name: &str, extra: &str) -> Registrar {
    let port = free_port();
    let config = stack.dir.path().join(format!("{name}.conf"));
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{sock}\"\ncluster = \"c1\"\nmode = \"crd\"\n\
             log_level = \"debug\"\nmetrics_bind_addr = \"127.0.0.1:{port}\"\nresync_interval = \"2s\"\n{extra}\n",
            sock = stack.spire.socket.display()
        ),
    )
    .unwrap();
    let reg = Registrar::start_with_config(stack, name, config, port, &[]).await;
    reg.wait_ready().await;
    reg
}

fn spiffe_id(name: &str, spec: serde_json::Value) -> SpiffeID {
    serde_json::from_value(json!({
        "apiVersion": "spiffeid.spiffe.io/v1beta1",
        "kind": "SpiffeID",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffeids_map_to_entries() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    set_bundle(&stack.spire, stack.dir.path(), "other.org");
    // A hand-made entry must survive everything below, even one that looks like a SpiffeID's.
    stack.spire.create_hand_made_entry("k8s:ns:hand");
    let hand_made =
        want("spiffe://example.org/hand/made", "spiffe://example.org/spire/agent/x", &["k8s:ns:hand"]);

    let _reg = start_crd(&stack, "crd1", "pod_controller = false\nadd_svc_dns_name = false").await;
    let api: Api<SpiffeID> = Api::namespaced(k.clone(), "default");
    api.create(
        &PostParams::default(),
        &spiffe_id(
            "web",
            json!({
                "parentId": "spiffe://example.org/spire/agent/x",
                "spiffeId": "spiffe://example.org/web",
                "selector": {"namespace": "shop", "podLabel": {"app": "web"}, "arbitrary": ["sa:web"]},
                "dnsNames": ["web.shop.svc"],
            }),
        ),
    )
    .await
    .unwrap();
    let mut web = want(
        "spiffe://example.org/web",
        "spiffe://example.org/spire/agent/x",
        &["k8s:ns:shop", "k8s:pod-label:app:web", "k8s:sa:web"],
    );
    web.dns_names = vec!["web.shop.svc".into()];
    let entries = converge(&spire, vec![hand_made.clone(), web.clone()]).await;
    let entry_id = entries.iter().find(|e| e.spec.spiffe_id.path() == "/web").unwrap().id.clone();
    let obj = eventually("status.entryId", Duration::from_secs(30), || async {
        let o = api.get("web").await.ok()?;
        (o.status.as_ref()?.entry_id.as_deref() == Some(entry_id.as_str())).then_some(o)
    })
    .await;
    assert!(obj.metadata.finalizers.unwrap_or_default().iter().any(|f| f == FINALIZER));

    // A spec change, federatesWith included, updates the entry in place.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"federatesWith": ["other.org"], "dnsNames": ["web.shop.svc", "web"]}})),
    )
    .await
    .unwrap();
    web.federates_with = vec!["other.org".into()];
    web.dns_names = vec!["web".into(), "web.shop.svc".into()];
    let mut sorted_web = web.clone();
    sorted_web.dns_names.sort();
    let sorted_web = &sorted_web;
    let entries = eventually("entry updated", Duration::from_secs(60), || async {
        let entries = all_entries(&spire).await;
        let e = entries.iter().find(|e| e.spec.spiffe_id.path() == "/web")?;
        let mut got = shown(&e.spec);
        got.dns_names.sort();
        (&got == sorted_web && entries.len() == 2).then_some(entries)
    })
    .await;
    assert!(entries.iter().any(|e| e.id == entry_id), "updated in place, same entry ID");

    // Hostile SpiffeIDs: no entry, a Warning Event naming the field, status.error; others proceed.
    for (name, spec, field) in [
        (
            "evil",
            json!({"parentId": "spiffe://example.org/spire/agent/x", "spiffeId": "spiffe://example.org.evil/x",
                   "selector": {"namespace": "evil"}}),
            "spec.spiffeId",
        ),
        (
            "reserved",
            json!({"parentId": "spiffe://example.org/spire/agent/x", "spiffeId": "spiffe://example.org/spire/server",
                   "selector": {"namespace": "evil"}}),
            "spec.spiffeId",
        ),
        (
            "empty-selector",
            json!({"parentId": "spiffe://example.org/spire/agent/x", "spiffeId": "spiffe://example.org/e", "selector": {}}),
            "spec.selector",
        ),
        (
            "steal",
            json!({"parentId": "spiffe://example.org/spire/agent/x", "spiffeId": "spiffe://example.org/hand/made",
                   "selector": {"namespace": "hand"}}),
            "already exists",
        ),
    ] {
        api.create(&PostParams::default(), &spiffe_id(name, spec)).await.unwrap();
        let events: Api<Event> = Api::namespaced(k.clone(), "default");
        let event =
            eventually(&format!("a Warning Event on SpiffeID {name}"), Duration::from_secs(30), || async {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find(|e| e.involved_object.name.as_deref() == Some(name))
            })
            .await;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert!(event.message.unwrap_or_default().contains(field), "{name}");
        let status = api.get(name).await.unwrap().status.unwrap_or_default();
        assert!(status.entry_id.is_none() && status.error.unwrap_or_default().contains(field), "{name}");
    }
    let other = api
        .create(
            &PostParams::default(),
            &spiffe_id(
                "other",
                json!({"parentId": "spiffe://example.org/spire/agent/x", "spiffeId": "spiffe://example.org/other",
                       "selector": {"podUid": "u1"}}),
            ),
        )
        .await
        .unwrap();
    let other_entry =
        want("spiffe://example.org/other", "spiffe://example.org/spire/agent/x", &["k8s:pod-uid:u1"]);
    assert!(other.metadata.uid.is_some());

    // Deleting a SpiffeID deletes its entry, then the finalizer goes and so does the object.
    api.delete("web", &DeleteParams::default()).await.unwrap();
    converge(&spire, vec![hand_made.clone(), other_entry.clone()]).await;
    eventually("SpiffeID web gone", Duration::from_secs(30), || async {
        matches!(api.get("web").await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;
    // Deleting the hostile ones removes nothing else (the hand-made entry stays).
    for name in ["evil", "reserved", "empty-selector", "steal"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("hostile SpiffeIDs gone", Duration::from_secs(30), || async {
        (api.list(&ListParams::default()).await.ok()?.items.len() == 1).then_some(())
    })
    .await;
    converge(&spire, vec![hand_made.clone(), other_entry]).await;

    // An entry deleted behind the registrar's back is recreated, under the same ID: the ID derives
    // from the SpiffeID's UID, which is what makes ownership unforgeable.
    let id = api.get("other").await.unwrap().status.unwrap().entry_id.unwrap();
    assert_eq!(id, format!("spiffeid-{}", other.metadata.uid.clone().unwrap()));
    spire.delete_entries(std::slice::from_ref(&id)).await.unwrap();
    assert!(spire.get_entry(&id).await.unwrap().is_none());
    eventually("entry recreated", Duration::from_secs(30), || async {
        spire.get_entry(&id).await.ok()?.map(|_| ())
    })
    .await;
    assert_eq!(all_entries(&spire).await.len(), 2);

    // Changing a spec so it collides with the hand-made entry drops our (now stale) entry and
    // reports the conflict; the hand-made entry is untouched.
    api.patch(
        "other",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"spiffeId": "spiffe://example.org/hand/made",
                                      "selector": {"podUid": null, "namespace": "hand"}}})),
    )
    .await
    .unwrap();
    converge(&spire, vec![hand_made]).await;
    eventually("conflict in status", Duration::from_secs(30), || async {
        let s = api.get("other").await.ok()?.status?;
        (s.entry_id.is_none() && s.error?.contains("already exists")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_nodes_get_spiffeids() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    set_bundle(&stack.spire, stack.dir.path(), "other.org");
    create_namespace(&k, "shop").await;
    let node_uid = create_node(&k, "n1").await;
    let web = pod("shop", "web")
        .on("n1")
        .sa("web-sa")
        .annotation("spiffe.io/federatesWith", "other.org")
        .create(&k)
        .await;
    let web_uid = web.metadata.uid.clone().unwrap();
    pod("shop", "pending").sa("x").create(&k).await; // unscheduled: no SpiffeID
    pod("kube-system", "dns").on("n1").create(&k).await; // disabled namespace
    // A pod in the registrar's namespace named like a node: both get their SpiffeID.
    let twin = pod("default", "n1").on("n1").sa("twin").create(&k).await;
    let twin_uid = twin.metadata.uid.clone().unwrap();

    let reg = start_crd(&stack, "crd2", "log_format = \"json\"\n").await;
    let node_entry = crd_node_entry("c1", "n1", &node_uid);
    let mut web_entry = crd_pod_entry("c1", "n1", "shop", &web_uid, "/ns/shop/sa/web-sa", &["web"]);
    web_entry.federates_with = vec!["other.org".into()];
    let twin_entry = crd_pod_entry("c1", "n1", "default", &twin_uid, "/ns/default/sa/twin", &["n1"]);
    converge(&spire, vec![node_entry.clone(), web_entry.clone(), twin_entry]).await;
    // What it manages, and that every SpiffeID's last reconcile succeeded just now.
    let m = eventually("owned entries counted", Duration::from_secs(30), || async {
        let m = reg.metrics().await;
        let pods = metric_value(&m, "registrar_owned_entries", &[("kind", "pod")]);
        (pods == Some(2.0)).then_some(m)
    })
    .await;
    assert_eq!(metric_value(&m, "registrar_owned_entries", &[("kind", "node")]), Some(1.0), "{m}");
    let converged = metric_value(&m, "registrar_last_converged_timestamp_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now - converged < 30.0 && converged <= now + 1.0, "converged at {converged}, now {now}");
    // Pods that predate the registrar are no registration latency.
    let latencies = metric_value(&m, "registrar_registration_latency_seconds_count", &[]).unwrap_or(0.0);
    assert_eq!(latencies, 0.0, "{m}");
    assert_eq!(metric_value(&m, "registrar_spiffeid_writes_total", &[("op", "delete")]), Some(0.0), "{m}");
    let twin_sid =
        Api::<SpiffeID>::namespaced(k.clone(), "default").get(&format!("pod-{twin_uid}")).await.unwrap();
    assert_eq!(twin_sid.metadata.labels.unwrap_or_default().get("podUid"), Some(&twin_uid));
    delete_pod(&k, "default", "n1").await;
    converge(&spire, vec![node_entry.clone(), web_entry.clone()]).await;

    let shop: Api<SpiffeID> = Api::namespaced(k.clone(), "shop");
    let sid = shop.get("web").await.unwrap();
    let web_sid_uid = sid.metadata.uid.clone().unwrap();
    assert_eq!(sid.metadata.labels.unwrap_or_default().get("podUid"), Some(&web_uid));
    let owner = &sid.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Pod", "web", web_uid.as_str())
    );
    assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(false)));
    let own: Api<SpiffeID> = Api::namespaced(k.clone(), "default");
    let node_sid = own.get("n1").await.unwrap();
    assert_eq!(node_sid.metadata.labels.unwrap_or_default().get("nodeUid"), Some(&node_uid));

    // A changed annotation reaches the SpiffeID and the entry (the original only synced spiffeId).
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(k.clone(), "shop")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"spiffe.io/federatesWith": null}}})),
        )
        .await
        .unwrap();
    web_entry.federates_with = vec![];
    converge(&spire, vec![node_entry.clone(), web_entry.clone()]).await;
    // A terminal pod loses its SpiffeID and entry.
    // A pod created now counts for the latency: creationTimestamp has whole seconds, and only
    // seconds after the registrar's start count (a sleep for the clock's resolution).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let job = pod("shop", "job").on("n1").sa("job").create(&k).await;
    let job_entry =
        crd_pod_entry("c1", "n1", "shop", &job.metadata.uid.unwrap(), "/ns/shop/sa/job", &["job"]);
    converge(&spire, vec![node_entry.clone(), web_entry.clone(), job_entry]).await;
    // Its latency, pod creation → entry, once (the pod → SpiffeID → entry pipeline).
    eventually("the job pod's registration latency", Duration::from_secs(30), || async {
        let m = reg.metrics().await;
        metric_value(&m, "registrar_registration_latency_seconds_count", &[]).filter(|c| *c >= 1.0)
    })
    .await;
    let m = reg.metrics().await;
    assert_eq!(metric_value(&m, "registrar_registration_latency_seconds_count", &[]), Some(1.0), "{m}");
    assert!(metric_value(&m, "registrar_registration_latency_seconds_sum", &[]).unwrap() < 30.0);
    patch_pod_status(&k, "shop", "job", json!({"phase": "Succeeded"})).await;
    converge(&spire, vec![node_entry.clone(), web_entry.clone()]).await;

    // A Service selecting the pod (its EndpointSlice) adds <svc>.<ns>.svc.
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "websvc-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "websvc"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web", "uid": web_uid}}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(k.clone(), "shop").create(&PostParams::default(), &slice).await.unwrap();
    web_entry.dns_names = vec!["web".into(), "websvc.shop.svc".into()];
    converge(&spire, vec![node_entry.clone(), web_entry.clone()]).await;

    // Pod deleted → SpiffeID and entry gone; node deleted → likewise.
    delete_pod(&k, "shop", "web").await;
    converge(&spire, vec![node_entry]).await;
    eventually("pod SpiffeID gone", Duration::from_secs(30), || async {
        matches!(shop.get("web").await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;
    // The controller's writes have their audit lines, named by SpiffeID.
    let audit = audit_lines(&reg.proc.log_text());
    let find = |op: &str, reason: &str| {
        audit
            .iter()
            .find(|l| l["op"] == op && l["object"] == "spiffeid shop/web" && l["reason"] == reason)
            .unwrap_or_else(|| panic!("no audit line {op} {reason} in {audit:#?}"))
    };
    assert_eq!(find("create", "new")["spiffe_id"], "spiffe://example.org/ns/shop/sa/web-sa");
    assert_eq!(find("update", "changed")["changed"], "federates_with");
    let deleted = find("delete", "spiffeid_deleted");
    assert_eq!(deleted["entry_id"], format!("spiffeid-{web_sid_uid}"), "{deleted}");
    delete_node(&k, "n1").await;
    converge(&spire, vec![]).await;
    eventually("node SpiffeID gone", Duration::from_secs(30), || async {
        matches!(own.get("n1").await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;
}

/// Every write a CRD-mode replica made: SPIRE entry ops and SpiffeID writes.
/// Every SPIRE call (reads included: a follower computes nothing, so it reads nothing either),
/// every entry op and every SpiffeID write a CRD-mode replica made.
async fn crd_writes(r: &Registrar) -> f64 {
    let m = r.metrics().await;
    let entry_ops = metric_value(&m, "registrar_entry_ops_total", &[]).unwrap_or(0.0);
    let spire_calls = metric_value(&m, "registrar_spire_call_duration_seconds_count", &[]).unwrap_or(0.0);
    let sid_writes = metric_value(&m, "registrar_spiffeid_writes_total", &[]).unwrap_or(0.0);
    entry_ops + spire_calls + sid_writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_gives_one_writer_and_failover() {
    use k8s_openapi::api::coordination::v1::Lease;

    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    create_namespace(&k, "shop").await;
    let node_uid = create_node(&k, "n1").await;
    let election =
        "leader_election = true\nleader_election_resource_lock = \"leases\"\nadd_svc_dns_name = false";
    let a = start_crd(&stack, "crd3a", election).await;
    let leases: Api<Lease> = Api::namespaced(k.clone(), "default");
    let lease_name = "k8s-workload-registrar-crd-leader-election";
    eventually("crd3a leads", Duration::from_secs(30), || async {
        let holder = leases.get_opt(lease_name).await.ok()??.spec?.holder_identity?;
        holder.starts_with("crd3a_").then_some(())
    })
    .await;
    let b = start_crd(&stack, "crd3b", election).await;

    // Work for both replicas: pods (projector) and a hand-written SpiffeID (controller).
    let web = pod("shop", "web").on("n1").sa("web").create(&k).await;
    let api: Api<SpiffeID> = Api::namespaced(k.clone(), "shop");
    let agent = "spiffe://example.org/spire/agent/x";
    api.create(
        &PostParams::default(),
        &spiffe_id("a", json!({"parentId": agent, "spiffeId": "spiffe://example.org/a", "selector": {"namespace": "shop"}})),
    )
    .await
    .unwrap();
    let node_entry = crd_node_entry("c1", "n1", &node_uid);
    let web_entry =
        crd_pod_entry("c1", "n1", "shop", &web.metadata.uid.unwrap(), "/ns/shop/sa/web", &["web"]);
    let a_entry = want("spiffe://example.org/a", agent, &["k8s:ns:shop"]);
    converge(&spire, vec![node_entry.clone(), web_entry.clone(), a_entry.clone()]).await;
    assert!(crd_writes(&a).await > 0.0, "the leader wrote");
    assert_eq!(crd_writes(&b).await, 0.0, "the follower called SPIRE or wrote SpiffeIDs");

    // The leader dies without releasing: the follower takes over after the lease expires and
    // handles what changed meanwhile.
    a.proc.kill();
    api.create(
        &PostParams::default(),
        &spiffe_id("b", json!({"parentId": agent, "spiffeId": "spiffe://example.org/b", "selector": {"namespace": "shop"}})),
    )
    .await
    .unwrap();
    let b_entry = want("spiffe://example.org/b", agent, &["k8s:ns:shop"]);
    converge(&spire, vec![node_entry, web_entry, a_entry, b_entry]).await;
    let holder = leases.get(lease_name).await.unwrap().spec.unwrap().holder_identity.unwrap_or_default();
    assert!(holder.starts_with("crd3b_"), "{holder}");
    assert!(crd_writes(&b).await > 0.0, "the new leader wrote");
    // Once the old leader's writes are over (lease − renew deadline + 1 s after the promotion),
    // the new one reconciles every SpiffeID again, repairing any write that landed late.
    eventually("the new leader's settled pass", Duration::from_secs(30), || async {
        b.proc.log_text().contains("reconciling every SpiffeID again").then_some(())
    })
    .await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_children_are_restarted_alone_and_work_continues() {
    let mut stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    create_namespace(&k, "shop").await;
    let reg = start_crd(
        &stack,
        "crd8",
        "pod_controller = false\nleader_election = true\nleader_election_resource_lock = \"leases\"",
    )
    .await;
    let api: Api<SpiffeID> = Api::namespaced(k.clone(), "shop");
    let agent = "spiffe://example.org/spire/agent/x";
    let mut expected = Vec::new();
    for (i, child) in ["spiffeid_controller", "spire_pool", "leader"].into_iter().enumerate() {
        reg.inject(child).await;
        eventually(&format!("{child} restarted"), Duration::from_secs(30), || async {
            let m = reg.metrics().await;
            (metric_value(&m, "registrar_actor_restarts_total", &[("actor", child)]) == Some(1.0))
                .then_some(())
        })
        .await;
        let name = format!("after-{i}");
        api.create(
            &PostParams::default(),
            &spiffe_id(
                &name,
                json!({"parentId": agent, "spiffeId": format!("spiffe://example.org/{name}"),
                "selector": {"namespace": "shop"}}),
            ),
        )
        .await
        .unwrap();
        expected.push(want(&format!("spiffe://example.org/{name}"), agent, &["k8s:ns:shop"]));
        converge(&spire, expected.clone()).await;
        reg.proc.assert_running();
    }
    let m = reg.metrics().await;
    assert_eq!(
        metric_value(&m, "registrar_actor_restarts_total", &[]),
        Some(3.0),
        "each child restarted alone"
    );
    let (code, body) = crate::registrar::http_request(reg.metrics_port, "POST", "/debug/fail/nonsense").await;
    assert!(code >= 400 && body.contains("unknown fault target"), "{code} {body}");

    // Readiness means the same as in the other modes: a leader that cannot reach SPIRE (the
    // controller re-checks every SpiffeID each resync) is not ready until SPIRE is back.
    stack.spire.kill();
    let body = eventually("/readyz to turn 503", Duration::from_secs(60), || async {
        let (code, body) = reg.get("/readyz").await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(body, "SPIRE server unreachable");
    stack.spire.restart().await;
    reg.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_take_identities_that_are_not_theirs() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    create_namespace(&k, "shop").await;
    let node_uid = create_node(&k, "n1").await;
    stack.spire.create_hand_made_entry("k8s:ns:shop");
    let hand_made =
        want("spiffe://example.org/hand/made", "spiffe://example.org/spire/agent/x", &["k8s:ns:shop"]);
    let hand_made_id = all_entries(&spire).await.pop().unwrap().id;

    // A pod claiming another node's alias (the node-alias hijack) gets no SpiffeID; its
    // neighbour does. The registrar's namespace is "default" (POD_NAMESPACE).
    let web = pod("shop", "web").on("n1").annotation("spiffe.io/id", "web").create(&k).await;
    pod("shop", "hijack")
        .on("n1")
        .annotation("spiffe.io/id", "k8s-workload-registrar/c1/node/n2")
        .create(&k)
        .await;
    let reg = start_crd(&stack, "crd4", "pod_annotation = \"spiffe.io/id\"\nadd_svc_dns_name = false").await;
    let shop: Api<SpiffeID> = Api::namespaced(k.clone(), "shop");

    // Tenant SpiffeIDs asking for what only the registrar may write.
    let agent = "spiffe://example.org/spire/agent/x";
    let hostile = [
        (
            "alias",
            json!({"parentId": "spiffe://example.org/spire/server",
            "spiffeId": "spiffe://example.org/k8s-workload-registrar/c1/node/n2",
            "selector": {"cluster": "c1", "agent_node_uid": "x"}}),
            "spec.selector.cluster",
        ),
        (
            "cluster-sel",
            json!({"parentId": agent, "spiffeId": "spiffe://example.org/a",
            "selector": {"namespace": "shop", "cluster": "c1"}}),
            "spec.selector.cluster",
        ),
        (
            "other-ns",
            json!({"parentId": agent, "spiffeId": "spiffe://example.org/b",
            "selector": {"namespace": "kube-system"}}),
            "spec.selector.namespace",
        ),
        (
            "arbitrary-ns",
            json!({"parentId": agent, "spiffeId": "spiffe://example.org/c",
            "selector": {"namespace": "shop", "arbitrary": ["ns:kube-system"]}}),
            "spec.selector.arbitrary",
        ),
        (
            "ca",
            json!({"parentId": agent, "spiffeId": "spiffe://example.org/d", "downstream": true,
            "selector": {"namespace": "shop"}}),
            "spec.downstream",
        ),
        (
            "under-alias",
            json!({"parentId": "spiffe://example.org/k8s-workload-registrar/c1/node/n1",
            "spiffeId": "spiffe://example.org/e", "selector": {"namespace": "shop"}}),
            "spec.parentId",
        ),
    ];
    for (name, spec, _) in &hostile {
        shop.create(&PostParams::default(), &spiffe_id(name, spec.clone())).await.unwrap();
    }
    // A forger points status.entryId at the hand-made entry; the controller must never touch it.
    let forger = shop
        .create(
            &PostParams::default(),
            &spiffe_id(
                "forger",
                json!({"parentId": agent, "spiffeId": "spiffe://example.org/forger",
                "selector": {"namespace": "shop", "podName": "forger"}}),
            ),
        )
        .await
        .unwrap();
    let forger_entry_id = format!("spiffeid-{}", forger.metadata.uid.unwrap());
    let forged = json!({"status": {"entryId": hand_made_id}});
    shop.patch_status("forger", &PatchParams::default(), &Patch::Merge(&forged)).await.unwrap();

    let node_entry = crd_node_entry("c1", "n1", &node_uid);
    let web_entry = crd_pod_entry("c1", "n1", "shop", &web.metadata.uid.unwrap(), "/web", &["web"]);
    let forger_want = want("spiffe://example.org/forger", agent, &["k8s:ns:shop", "k8s:pod-name:forger"]);
    let expected = vec![hand_made.clone(), node_entry.clone(), web_entry.clone(), forger_want.clone()];
    converge(&spire, expected.clone()).await;
    assert!(spire.get_entry(&forger_entry_id).await.unwrap().is_some(), "the forger's own entry");

    let event = event_on(&k, "shop", "hijack").await;
    assert_eq!(event.reason.as_deref(), Some("ReservedIdentity"));
    assert!(event.message.unwrap_or_default().contains("is reserved"));
    assert!(matches!(shop.get("hijack").await, Err(kube::Error::Api(e)) if e.code == 404));
    for (name, _, field) in &hostile {
        let event = event_on(&k, "shop", name).await;
        assert_eq!(event.reason.as_deref(), Some("ReservedIdentity"), "{name}");
        assert!(event.message.unwrap_or_default().starts_with(field), "{name}: {field}");
        let status = shop.get(name).await.unwrap().status.unwrap_or_default();
        assert!(status.entry_id.is_none() && status.error.unwrap_or_default().starts_with(field), "{name}");
    }
    let metrics = reg.metrics().await;
    let reserved = metric_value(&metrics, "registrar_invalid_identity_total", &[("reason", "reserved_id")]);
    assert_eq!(reserved, Some((hostile.len() + 1) as f64), "one count per object, not per pass");
    // The status reports the entry the forger really owns.
    eventually("forger status corrected", Duration::from_secs(30), || async {
        let s = shop.get("forger").await.ok()?.status?;
        (s.entry_id.as_deref() == Some(forger_entry_id.as_str())).then_some(())
    })
    .await;

    // Forge again, then make the forger's spec invalid and finally delete it: the hand-made entry
    // survives every step, and only the forger's own entry goes.
    shop.patch_status("forger", &PatchParams::default(), &Patch::Merge(&forged)).await.unwrap();
    shop.patch(
        "forger",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"selector": {"namespace": "bank"}}})),
    )
    .await
    .unwrap();
    let without_forger = vec![hand_made.clone(), node_entry.clone(), web_entry.clone()];
    converge(&spire, without_forger.clone()).await;
    // With the registrar stopped nothing corrects the forged status before the finalizer runs.
    drop(reg);
    shop.patch_status("forger", &PatchParams::default(), &Patch::Merge(&forged)).await.unwrap();
    shop.delete("forger", &DeleteParams::default()).await.unwrap();
    let _reg =
        start_crd(&stack, "crd4b", "pod_annotation = \"spiffe.io/id\"\nadd_svc_dns_name = false").await;
    eventually("forger gone", Duration::from_secs(30), || async {
        matches!(shop.get("forger").await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;
    converge(&spire, without_forger).await;
    assert!(spire.get_entry(&hand_made_id).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_rejections_are_reported_once_and_not_retried() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    create_namespace(&k, "shop").await;
    let reg = start_crd(&stack, "crd5", "pod_controller = false").await;
    let shop: Api<SpiffeID> = Api::namespaced(k.clone(), "shop");
    let agent = "spiffe://example.org/spire/agent/x";
    // No bundle for nobundle.org: SPIRE refuses the entry, and no retry can change that.
    shop.create(
        &PostParams::default(),
        &spiffe_id(
            "nobundle",
            json!({"parentId": agent, "spiffeId": "spiffe://example.org/nb",
            "selector": {"namespace": "shop"}, "federatesWith": ["nobundle.org"]}),
        ),
    )
    .await
    .unwrap();
    let event = event_on(&k, "shop", "nobundle").await;
    assert_eq!(event.reason.as_deref(), Some("SpireRejected"));
    assert!(event.message.unwrap_or_default().contains("federated bundle"));

    // Two further resync periods' worth of work for the controller: an entry deleted behind its
    // back, recreated twice. Meanwhile the rejected SpiffeID must not be tried again.
    let ok = shop
        .create(
            &PostParams::default(),
            &spiffe_id(
                "ok",
                json!({"parentId": agent, "spiffeId": "spiffe://example.org/ok",
                "selector": {"namespace": "shop"}}),
            ),
        )
        .await
        .unwrap();
    let ok_id = format!("spiffeid-{}", ok.metadata.uid.unwrap());
    for _ in 0..2 {
        eventually("ok entry exists", Duration::from_secs(30), || async {
            spire.get_entry(&ok_id).await.ok()?.map(|_| ())
        })
        .await;
        spire.delete_entries(std::slice::from_ref(&ok_id)).await.unwrap();
    }
    eventually("ok entry recreated", Duration::from_secs(30), || async {
        spire.get_entry(&ok_id).await.ok()?.map(|_| ())
    })
    .await;
    let metrics = reg.metrics().await;
    let creates = metric_value(
        &metrics,
        "registrar_spire_call_duration_seconds_count",
        &[("method", "BatchCreateEntry")],
    );
    assert_eq!(creates, Some(4.0), "1 refused create + 3 creates of the ok entry, no retries");
    assert_eq!(
        metric_value(&metrics, "registrar_invalid_identity_total", &[("reason", "spire_rejected")]),
        Some(1.0)
    );
    let on_nobundle = events_on(&k, "shop", "nobundle").await;
    assert_eq!(on_nobundle.len(), 1);
    assert!(on_nobundle[0].series.is_none() && on_nobundle[0].count.unwrap_or(1) == 1, "{on_nobundle:?}");
    let status = shop.get("nobundle").await.unwrap().status.unwrap_or_default();
    assert!(status.entry_id.is_none() && status.error.unwrap_or_default().contains("federated bundle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffeid_webhook_denies_what_the_controller_refuses() {
    use base64::Engine;
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;

    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    create_namespace(&k, "shop").await;
    // The serving certificate the API server must trust (the caBundle of the shipped manifest).
    let ca = crate::stack::certs::TestCa::new("spiffeid webhook ca");
    let (cert, key) = ca.leaf("registrar", &["127.0.0.1"], false);
    let cert_dir = stack.dir.path().join("serving-certs");
    std::fs::create_dir(&cert_dir).unwrap();
    std::fs::write(cert_dir.join("tls.crt"), cert).unwrap();
    std::fs::write(cert_dir.join("tls.key"), key).unwrap();
    let port = free_port();
    let reg = start_crd(
        &stack,
        "crd6",
        &format!(
            "pod_controller = false\nwebhook_enabled = true\nwebhook_port = {port}\nwebhook_cert_dir = \"{}\"",
            cert_dir.display()
        ),
    )
    .await;
    reg.proc.wait_for_port(port, Duration::from_secs(30)).await;

    // The chart's ValidatingWebhookConfiguration, pointed at this registrar (no Services here).
    let sets =
        ["mode=crd", "crd.webhook.enabled=true", "crd.webhook.certSecretName=c", "crd.webhook.caBundle=Q0E="];
    let docs = crate::chart::render(crate::chart::RELEASE, "spire", &sets.map(String::from));
    let mut vwc = docs.into_iter().find(|d| d["kind"] == "ValidatingWebhookConfiguration").unwrap();
    let path = vwc["webhooks"][0]["clientConfig"]["service"]["path"].as_str().unwrap().to_string();
    vwc["webhooks"][0]["clientConfig"] = json!({
        "url": format!("https://127.0.0.1:{port}{path}"),
        "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem),
    });
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(vwc).unwrap();
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(k.clone());
    configs.create(&PostParams::default(), &vwc).await.unwrap();

    let shop: Api<SpiffeID> = Api::namespaced(k.clone(), "shop");
    let agent = "spiffe://example.org/spire/agent/x";
    let hostile = |name: &str| {
        spiffe_id(
            name,
            json!({"parentId": "spiffe://example.org/spire/server",
            "spiffeId": "spiffe://example.org/k8s-workload-registrar/c1/node/n2",
            "selector": {"cluster": "c1", "agent_node_uid": "x"}}),
        )
    };
    let dry = PostParams { dry_run: true, ..Default::default() };
    // The API server picks the configuration up asynchronously; a dry run tells when.
    eventually("the webhook is consulted", Duration::from_secs(30), || async {
        shop.create(&dry, &hostile("probe")).await.is_err().then_some(())
    })
    .await;

    let denied = [
        ("alias", hostile("alias"), "spec.selector.cluster"),
        (
            "bank",
            spiffe_id(
                "bank",
                json!({"parentId": agent, "spiffeId": "spiffe://example.org/b",
            "selector": {"namespace": "bank"}}),
            ),
            "spec.selector.namespace",
        ),
        (
            "ca",
            spiffe_id(
                "ca",
                json!({"parentId": agent, "spiffeId": "spiffe://example.org/c", "downstream": true,
            "selector": {"namespace": "shop"}}),
            ),
            "spec.downstream",
        ),
        (
            "spire",
            spiffe_id(
                "spire",
                json!({"parentId": agent, "spiffeId": "spiffe://example.org/spire/x",
            "selector": {"namespace": "shop"}}),
            ),
            "spec.spiffeId",
        ),
    ];
    for (name, obj, field) in &denied {
        let err = shop.create(&PostParams::default(), obj).await.unwrap_err().to_string();
        assert!(err.contains("denied") && err.contains(field), "{name}: {err}");
    }
    let good = spiffe_id(
        "good",
        json!({"parentId": agent, "spiffeId": "spiffe://example.org/good",
        "selector": {"namespace": "shop"}}),
    );
    shop.create(&PostParams::default(), &good).await.unwrap();
    let good_entry = want("spiffe://example.org/good", agent, &["k8s:ns:shop"]);
    converge(&spire, vec![good_entry.clone()]).await;
    // A spec change into hostile territory is denied; a metadata-only update is not.
    let err = shop
        .patch("good", &PatchParams::default(), &Patch::Merge(json!({"spec": {"downstream": true}})))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("denied") && err.contains("spec.downstream"), "{err}");
    shop.patch(
        "good",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await
    .unwrap();
    let metrics = reg.metrics().await;
    assert!(
        metric_value(&metrics, "webhook_requests_total", &[("operation", "create"), ("outcome", "denied")])
            .unwrap_or_default()
            >= denied.len() as f64
    );

    // With the webhook unregistered the API server admits a hostile SpiffeID, and the controller
    // refuses it all the same: no entry, status.error, an Event.
    configs.delete(crate::chart::RELEASE, &DeleteParams::default()).await.unwrap();
    eventually("the webhook is no longer consulted", Duration::from_secs(30), || async {
        shop.create(&dry, &hostile("probe")).await.is_ok().then_some(())
    })
    .await;
    shop.create(&PostParams::default(), &hostile("late")).await.unwrap();
    let event = event_on(&k, "shop", "late").await;
    assert_eq!(event.reason.as_deref(), Some("ReservedIdentity"));
    let status = shop.get("late").await.unwrap().status.unwrap_or_default();
    assert!(status.error.unwrap_or_default().starts_with("spec.selector.cluster"));
    converge(&spire, vec![good_entry]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_template_refuses_to_start_and_keeps_every_entry() {
    let stack = Stack::start().await;
    let k = stack.kube.client().await;
    let spire = stack.spire.client();
    install_crd(&k).await;
    create_namespace(&k, "shop").await;
    create_node(&k, "n1").await;
    pod("shop", "web").on("n1").sa("web").create(&k).await;
    let reg = start_crd(&stack, "crd7", "add_svc_dns_name = false").await;
    let before = eventually("node and pod entries", Duration::from_secs(60), || async {
        let entries = all_entries(&spire).await;
        (entries.len() == 2).then_some(entries)
    })
    .await;
    drop(reg);

    // Restarted with a template that cannot yield a workload ID for any pod (a trailing '/'),
    // the registrar refuses to start, naming the key, and touches nothing.
    let config = stack.dir.path().join("bad.conf");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_socket_path = \"{}\"\ncluster = \"c1\"\nmode = \"crd\"\n\
             add_svc_dns_name = false\nidentity_template = \"ns/{{{{.Pod.Namespace}}}}/\"\n",
            stack.spire.socket.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_k8s-workload-registrar"))
        .args(["-config"])
        .arg(&config)
        .env("KUBECONFIG", &stack.kube.kubeconfig)
        .env("POD_NAMESPACE", "default")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("identity_template") && err.contains("must not end with '/'"), "{err}");
    assert_eq!(all_entries(&spire).await, before, "every entry untouched, same IDs");
    let sids = Api::<SpiffeID>::all(k.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(sids.items.len(), 2, "the pod's and the node's SpiffeIDs are still there");
}
