use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::id::validate_dns_name;

fn id(uri: &str) -> SpiffeId {
    SpiffeId::parse(uri).expect("valid test ID")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn label_mode() -> Naming {
    Naming::test().with_id_source(IdSource::Label("spiffe.io/id".to_string()))
}

fn annotation_mode() -> Naming {
    Naming::test().with_id_source(IdSource::Annotation("spiffe.io/id".to_string()))
}

fn entry(naming: &Naming, pod: &PodInfo) -> Result<Option<EntrySpec>, IdentityError> {
    naming.pod_entry(pod, &[])
}

// ------------------------------------------------------------------ root and node entries

#[test]
fn root_id_is_controller_cluster_node() {
    assert_eq!(Naming::test().root_id().unwrap(), id("spiffe://example.org/spire-k8s-registrar/demo/node"));
    assert!(Naming::test().validate().is_ok());
}

#[test]
fn invalid_cluster_or_controller_name_is_a_setting_error() {
    let bad_cluster = Naming { cluster: "a/b".to_string(), ..Naming::test() };
    let err = bad_cluster.validate().unwrap_err();
    assert_eq!(err.metric_label(), "invalid_setting");
    assert!(err.to_string().starts_with("setting cluster value \"a/b\": "), "{err}");
    assert!(err.object().is_none());

    let bad_controller = Naming { controller_name: String::new(), ..Naming::test() };
    assert!(matches!(
        bad_controller.root_id().map_err(|err| err.kind().clone()),
        Err(IdentityErrorKind::InvalidSetting { key: "controller_name", .. })
    ));
    // Nothing is owned when no root can be built, so nothing is ever deleted.
    let pod_entry = Naming::test().pod_entry(&PodInfo::test("default", "web").on_node("n1"), &[]);
    assert!(!bad_controller.owns(&pod_entry.unwrap().unwrap()));
}

#[test]
fn node_entry_is_parented_to_the_server() {
    let spec = Naming::test().node_entry(&NodeInfo::test("n1")).unwrap();
    assert_eq!(
        spec,
        EntrySpec {
            spiffe_id: id("spiffe://example.org/spire-k8s-registrar/demo/node/n1"),
            parent_id: id("spiffe://example.org/spire/server"),
            selectors: Selectors::from([
                Selector::psat("cluster:demo"),
                Selector::psat("agent_node_name:n1"),
            ]),
            dns_names: vec![],
            federates_with: BTreeSet::new(),
            downstream: false,
            managed: Default::default()
        }
    );
}

#[test]
fn node_names_that_are_not_segments_are_rejected() {
    for bad in ["", "a/b", "..", "n 1"] {
        let err = Naming::test().node_entry(&NodeInfo::test(bad)).unwrap_err();
        assert!(
            matches!(err.kind(), IdentityErrorKind::InvalidId { object: ObjectRef::Node { name }, field: Field::Name, .. } if name == bad),
            "{bad:?}: {err}"
        );
    }
    let err = Naming::test().pod_entry(&PodInfo::test("default", "web").on_node("a/b"), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pod default/web: node name value \"a/b\": path segment \"a/b\" may only contain letters, digits, \
         '.', '-' and '_'"
    );
}

// ------------------------------------------------------------------ pod entries

#[test]
fn service_account_mode_pod_entry() {
    let pod = PodInfo::test("default", "web").on_node("n1").with_sa("web-sa");
    let spec = entry(&Naming::test(), &pod).unwrap().unwrap();
    assert_eq!(
        spec,
        EntrySpec {
            spiffe_id: id("spiffe://example.org/ns/default/sa/web-sa"),
            parent_id: id("spiffe://example.org/spire-k8s-registrar/demo/node/n1"),
            selectors: Selectors::from([Selector::k8s("ns:default"), Selector::k8s("pod-name:web")]),
            dns_names: vec![],
            federates_with: BTreeSet::new(),
            downstream: false,
            managed: Default::default()
        }
    );
    assert_eq!(spec.selectors, pod_selectors("default", "web"));
}

#[test]
fn pods_that_get_no_entry() {
    let scheduled = || PodInfo::test("default", "web").on_node("n1");
    let cases: Vec<(&str, Naming, PodInfo)> = vec![
        ("disabled namespace", Naming::test(), PodInfo::test("kube-system", "dns").on_node("n1")),
        ("not scheduled", Naming::test(), PodInfo::test("default", "web")),
        ("empty node name", Naming::test(), PodInfo::test("default", "web").on_node("")),
        ("terminal", Naming::test(), scheduled().terminal()),
        ("label missing", label_mode(), scheduled().with_annotation("spiffe.io/id", "a")),
        ("annotation missing", annotation_mode(), scheduled().with_label("spiffe.io/id", "a")),
        // Terminal and disabled win over an invalid value: no Event for a pod that needs no entry.
        ("terminal, bad label", label_mode(), scheduled().with_label("spiffe.io/id", "a//b").terminal()),
    ];
    for (what, naming, pod) in cases {
        assert_eq!(entry(&naming, &pod), Ok(None), "{what}");
    }
}

#[test]
fn label_and_annotation_values_may_hold_several_segments() {
    let cases = [
        ("payment", "spiffe://example.org/payment"),
        ("services/payment/v1", "spiffe://example.org/services/payment/v1"),
        ("/services/payment", "spiffe://example.org/services/payment"),
        ("ENV/my_work-load.1", "spiffe://example.org/ENV/my_work-load.1"),
    ];
    for (value, expected) in cases {
        let pod = PodInfo::test("default", "web").on_node("n1");
        let by_label = entry(&label_mode(), &pod.clone().with_label("spiffe.io/id", value)).unwrap();
        assert_eq!(by_label.unwrap().spiffe_id, id(expected), "label {value:?}");
        let by_annotation = entry(&annotation_mode(), &pod.with_annotation("spiffe.io/id", value)).unwrap();
        assert_eq!(by_annotation.unwrap().spiffe_id, id(expected), "annotation {value:?}");
    }
}

#[test]
fn invalid_label_values_are_errors_naming_pod_field_and_value() {
    for bad in ["", "/", "//a", "a//b", "a/", "./a", "a/..", "a b", "é", "a\\b", "a?b", "spiffe://x/y"] {
        let pod = PodInfo::test("default", "web").on_node("n1").with_label("spiffe.io/id", bad);
        let err = entry(&label_mode(), &pod).unwrap_err();
        assert_eq!(err.metric_label(), "invalid_id");
        assert_eq!(
            err.object(),
            Some(&ObjectRef::Pod { namespace: "default".to_string(), name: "web".to_string() })
        );
        let prefix = format!("pod default/web: label \"spiffe.io/id\" value {bad:?}: ");
        assert!(err.to_string().starts_with(&prefix), "{err}");
    }
    let pod = PodInfo::test("default", "web").on_node("n1").with_label("spiffe.io/id", "a//b");
    assert_eq!(
        entry(&label_mode(), &pod).unwrap_err().to_string(),
        "pod default/web: label \"spiffe.io/id\" value \"a//b\": path segment \"\" is empty (in \"a//b\")"
    );
    let pod = PodInfo::test("default", "web").on_node("n1").with_annotation("spiffe.io/id", "a/..");
    assert_eq!(
        entry(&annotation_mode(), &pod).unwrap_err().to_string(),
        "pod default/web: annotation \"spiffe.io/id\" value \"a/..\": path segment \"..\" may not be '.' or '..'"
    );
}

#[test]
fn reserved_identities_are_refused_in_reconcile_and_webhook_modes() {
    // The node-alias hijack: a pod on n1 claiming n2's alias (or the webhook cluster ID, or any
    // SPIRE ID) would hand n1's agent every SVID parented to it.
    let hostile = [
        "spire-k8s-registrar/demo/node/n2",
        "/spire-k8s-registrar/demo/node",
        "k8s-workload-registrar/demo/node",
        "k8s-workload-registrar/other/node/n9",
        "spire/server",
        "spire/agent/k8s_psat/demo/uid",
    ];
    for value in hostile {
        let pod = PodInfo::test("default", "web").on_node("n1").with_annotation("spiffe.io/id", value);
        let err = entry(&annotation_mode(), &pod).unwrap_err();
        assert_eq!(err.metric_label(), "reserved_id", "{value:?}");
        assert!(err.to_string().starts_with("pod default/web: annotation \"spiffe.io/id\" value"), "{err}");
        assert!(err.to_string().contains("is reserved"), "{err}");
        let err = annotation_mode().webhook_pod_entry(&pod).unwrap_err();
        assert_eq!(err.metric_label(), "reserved_id", "webhook {value:?}");
    }
    // A custom controller name is reserved as well.
    let custom = Naming { controller_name: "my-reg".into(), ..annotation_mode() };
    let pod =
        PodInfo::test("default", "web").on_node("n1").with_annotation("spiffe.io/id", "my-reg/demo/node/n2");
    assert_eq!(entry(&custom, &pod).unwrap_err().metric_label(), "reserved_id");
}

#[test]
fn invalid_service_account_is_an_error() {
    let pod = PodInfo::test("default", "web").on_node("n1").with_sa("");
    let err = entry(&Naming::test(), &pod).unwrap_err();
    assert!(matches!(err.kind(), IdentityErrorKind::InvalidId { field: Field::ServiceAccount, .. }), "{err}");
}

#[test]
fn federation_is_trimmed_deduplicated_and_bare() {
    let pod = PodInfo::test("default", "web")
        .on_node("n1")
        .with_annotation(FEDERATES_WITH_ANNOTATION, " b.org, spiffe://c.org,,b.org , ,a.org");
    let spec = entry(&Naming::test(), &pod).unwrap().unwrap();
    assert_eq!(spec.federates_with, BTreeSet::from(["a.org", "b.org", "c.org"].map(String::from)));

    let empty =
        PodInfo::test("default", "web").on_node("n1").with_annotation(FEDERATES_WITH_ANNOTATION, " , ");
    assert!(entry(&Naming::test(), &empty).unwrap().unwrap().federates_with.is_empty());
}

#[test]
fn invalid_federation_pieces_are_errors_naming_the_piece() {
    let pod = |value: &str| {
        PodInfo::test("default", "web").on_node("n1").with_annotation(FEDERATES_WITH_ANNOTATION, value)
    };
    let err = entry(&Naming::test(), &pod("a.org, Bad.Org")).unwrap_err();
    assert_eq!(err.metric_label(), "invalid_federation");
    assert!(
        err.to_string()
            .starts_with("pod default/web: annotation \"spiffe.io/federatesWith\" lists \"Bad.Org\": "),
        "{err}"
    );
    for own in ["example.org", "spiffe://example.org", " example.org "] {
        let err = entry(&Naming::test(), &pod(own)).unwrap_err();
        assert!(
            matches!(err.kind(), IdentityErrorKind::FederatesWithOwnTrustDomain { .. }),
            "{own:?}: {err}"
        );
    }
    // Webhook mode applies the same rules.
    assert!(Naming::test().webhook_pod_entry(&pod("example.org")).is_err());
}

// ------------------------------------------------------------------ DNS names

#[test]
fn dns_names_match_the_reference_example() {
    let naming = Naming::test().with_dns_zone("cluster.local");
    let pod = PodInfo::test("bar", "foo").on_node("n1").with_ip("123.123.123.124");
    let slices = [EndpointSliceInfo::test("bar", "foo-svc").with_endpoint("123.123.123.123", "foo")];
    let spec = naming.pod_entry(&pod, &slices).unwrap().unwrap();
    assert_eq!(
        spec.dns_names,
        strings(&[
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
        ])
    );
}

#[test]
fn no_dns_names_without_zone_or_ip() {
    let slices = [EndpointSliceInfo::test("bar", "foo-svc").with_endpoint("10.0.0.1", "foo")];
    let with_ip = PodInfo::test("bar", "foo").on_node("n1").with_ip("10.0.0.2");
    assert!(Naming::test().pod_entry(&with_ip, &slices).unwrap().unwrap().dns_names.is_empty());
    let zoned = Naming::test().with_dns_zone("cluster.local");
    for pod in
        [PodInfo::test("bar", "foo").on_node("n1"), PodInfo::test("bar", "foo").on_node("n1").with_ip("")]
    {
        assert!(zoned.pod_entry(&pod, &slices).unwrap().unwrap().dns_names.is_empty());
    }
}

#[test]
fn dns_names_from_hostnames_ipv6_and_unrelated_slices() {
    let naming = Naming::test().with_dns_zone("k8s.local");
    let pod = PodInfo::test("ns1", "db-0").on_node("n1").with_ip("fd00::2");
    let slices = [
        // A hostname replaces the address and pod-name forms.
        EndpointSliceInfo::test("ns1", "db").with_named_endpoint("fd00::2", "db-0", "db-0"),
        // Dotted service, other namespace, endpoint of another pod: all ignored.
        EndpointSliceInfo::test("ns1", "a.b").with_endpoint("fd00::2", "db-0"),
        EndpointSliceInfo::test("other", "db2").with_endpoint("fd00::2", "db-0"),
        EndpointSliceInfo::test("ns1", "web").with_endpoint("fd00::3", "web-0"),
        // A dotted hostname falls back to address and pod-name forms.
        EndpointSliceInfo::test("ns1", "raw").with_named_endpoint("fd00::2", "x.y", "db-0"),
    ];
    let spec = naming.pod_entry(&pod, &slices).unwrap().unwrap();
    assert_eq!(
        spec.dns_names,
        strings(&[
            "fd00--2.ns1.pod.k8s.local",
            "fd00--2.ns1.pod",
            "db",
            "db-0.db",
            "db-0.db.ns1",
            "db-0.db.ns1.svc",
            "db-0.db.ns1.svc.k8s.local",
            "db-0.raw",
            "db-0.raw.ns1",
            "db-0.raw.ns1.svc",
            "db-0.raw.ns1.svc.k8s.local",
            "db.ns1",
            "db.ns1.svc",
            "db.ns1.svc.k8s.local",
            "fd00--2.raw",
            "fd00--2.raw.ns1",
            "fd00--2.raw.ns1.svc",
            "fd00--2.raw.ns1.svc.k8s.local",
            "raw",
            "raw.ns1",
            "raw.ns1.svc",
            "raw.ns1.svc.k8s.local",
        ])
    );
}

#[test]
fn dns_names_spire_rejects_are_dropped_and_reported() {
    let naming = Naming::test().with_dns_zone("cluster.local");
    let long_name = "p".repeat(64);
    let pod = PodInfo::test("bar", &long_name).on_node("n1").with_ip("10.0.0.1");
    let slices = [
        // Split slices of one Service: names appear once.
        EndpointSliceInfo::test("bar", "svc").with_endpoint("10.0.0.1", &long_name),
        EndpointSliceInfo::test("bar", "svc").with_endpoint("10.0.0.1", &long_name),
        // A one-letter Service yields one-letter labels, which SPIRE rejects.
        EndpointSliceInfo::test("bar", "s").with_named_endpoint("10.0.0.1", "h1", &long_name),
    ];
    let desired = naming.pod_entry_with_warnings(&pod, &slices).unwrap().unwrap();
    assert_eq!(
        desired.spec.dns_names,
        strings(&[
            "10-0-0-1.bar.pod.cluster.local",
            "10-0-0-1.bar.pod",
            "10-0-0-1.svc",
            "10-0-0-1.svc.bar",
            "10-0-0-1.svc.bar.svc",
            "10-0-0-1.svc.bar.svc.cluster.local",
            "svc",
            "svc.bar",
            "svc.bar.svc",
            "svc.bar.svc.cluster.local",
        ])
    );
    let rejected: Vec<String> = desired
        .rejected_dns_names
        .iter()
        .map(|err| match err {
            DnsError::BadLabel { name, .. } => name.clone(),
            other => other.to_string(),
        })
        .collect();
    let mut expected: Vec<String> = ["h1.s", "h1.s.bar", "h1.s.bar.svc", "h1.s.bar.svc.cluster.local", "s"]
        .into_iter()
        .map(String::from)
        .chain(
            ["", ".bar", ".bar.svc", ".bar.svc.cluster.local"].map(|rest| format!("{long_name}.svc{rest}")),
        )
        .chain(["s.bar", "s.bar.svc", "s.bar.svc.cluster.local"].map(String::from))
        .collect();
    expected.sort();
    assert_eq!(rejected, expected);
    // pod_entry is the same entry without the report.
    assert_eq!(naming.pod_entry(&pod, &slices).unwrap().unwrap(), desired.spec);
}

// ------------------------------------------------------------------ ownership

#[test]
fn reconcile_ownership_is_segment_wise_and_exact() {
    let naming = Naming::test();
    let pod = naming.pod_entry(&PodInfo::test("default", "web").on_node("n1"), &[]).unwrap().unwrap();
    let node = naming.node_entry(&NodeInfo::test("n2")).unwrap();
    assert!(naming.owns(&pod));
    assert_eq!(naming.node_of(&pod).as_deref(), Some("n1"));
    assert!(naming.owns(&node));
    assert_eq!(naming.node_of(&node).as_deref(), Some("n2"));

    let with = |spiffe: &str, parent: &str| EntrySpec {
        spiffe_id: id(spiffe),
        parent_id: id(parent),
        ..pod.clone()
    };
    let root = "spiffe://example.org/spire-k8s-registrar/demo/node";
    let server = "spiffe://example.org/spire/server";
    let not_ours = [
        ("hand-made workload", with("spiffe://example.org/app", "spiffe://example.org/agent/x")),
        ("hand-made node alias", with("spiffe://example.org/nodes/x", server)),
        ("parent is the root itself", with("spiffe://example.org/app", root)),
        ("string prefix only", with("spiffe://example.org/app", &format!("{root}s/n1"))),
        (
            "other trust domain",
            with("spiffe://example.org/app", "spiffe://example.org.evil/spire-k8s-registrar/demo/node/n1"),
        ),
        ("alias whose ID is the root", with(root, server)),
        ("alias not parented to the server", with(&format!("{root}/n1"), "spiffe://example.org/spire/other")),
        (
            "webhook-mode pod entry",
            naming.webhook_pod_entry(&PodInfo::test("default", "web")).unwrap().unwrap(),
        ),
        ("webhook cluster entry", naming.webhook_cluster_entry().unwrap()),
    ];
    for (what, spec) in not_ours {
        assert!(!naming.owns(&spec), "{what}");
        assert_eq!(naming.node_of(&spec), None, "{what}");
    }
    // Deeper entries under our root are ours and routed by their first segment (then deleted).
    let deep = with("spiffe://example.org/app", &format!("{root}/n3/extra"));
    assert_eq!(naming.node_of(&deep).as_deref(), Some("n3"));
    let deep_alias = with(&format!("{root}/n4/extra"), server);
    assert_eq!(naming.node_of(&deep_alias).as_deref(), Some("n4"));
}

// ------------------------------------------------------------------ webhook mode

#[test]
fn webhook_cluster_entry_and_pod_entries() {
    let naming = Naming::test();
    let cluster = naming.webhook_cluster_entry().unwrap();
    assert_eq!(cluster.spiffe_id, id("spiffe://example.org/k8s-workload-registrar/demo/node"));
    assert_eq!(cluster.parent_id, id("spiffe://example.org/spire/server"));
    assert_eq!(cluster.selectors, Selectors::from([Selector::psat("cluster:demo")]));
    assert!(naming.webhook_owns(&cluster));

    // No node needed; no DNS names even when a zone is configured.
    let pod = PodInfo::test("default", "web")
        .with_ip("10.0.0.1")
        .with_annotation(FEDERATES_WITH_ANNOTATION, "a.org");
    let spec = naming.clone().with_dns_zone("cluster.local").webhook_pod_entry(&pod).unwrap().unwrap();
    assert_eq!(
        spec,
        EntrySpec {
            spiffe_id: id("spiffe://example.org/ns/default/sa/default"),
            parent_id: cluster.spiffe_id.clone(),
            selectors: pod_selectors("default", "web"),
            dns_names: vec![],
            federates_with: BTreeSet::from(["a.org".to_string()]),
            downstream: false,
            managed: Default::default()
        }
    );
    assert!(naming.webhook_owns(&spec));
    assert!(!naming.webhook_owns(&naming.node_entry(&NodeInfo::test("n1")).unwrap()));
    let reconcile_pod =
        naming.pod_entry(&PodInfo::test("default", "web").on_node("n1"), &[]).unwrap().unwrap();
    assert!(!naming.webhook_owns(&reconcile_pod));

    assert_eq!(naming.webhook_pod_entry(&PodInfo::test("kube-system", "dns")), Ok(None));
    assert_eq!(label_mode().webhook_pod_entry(&PodInfo::test("default", "web")), Ok(None));
    let labelled = PodInfo::test("default", "web").with_label("spiffe.io/id", "team/app");
    assert_eq!(
        label_mode().webhook_pod_entry(&labelled).unwrap().unwrap().spiffe_id,
        id("spiffe://example.org/team/app")
    );
    assert!(label_mode().webhook_pod_entry(&labelled.with_label("spiffe.io/id", "a//b")).is_err());
}

// ------------------------------------------------------------------ properties

/// A valid path segment: allowed characters, not `.` or `..`.
fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}[a-z0-9]"
}

fn ipv4() -> impl Strategy<Value = String> {
    any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}"))
}

prop_compose! {
    fn scheduled_pod()(
        namespace in dns_label(),
        name in dns_label(),
        node in dns_label(),
        ip in ipv4(),
        label in proptest::option::of(prop::collection::vec(segment(), 1..4)),
    ) -> PodInfo {
        let pod = PodInfo::test(&namespace, &name).on_node(&node).with_ip(&ip);
        match label {
            Some(segments) => pod.with_label("spiffe.io/id", &segments.join("/")),
            None => pod,
        }
    }
}

fn slices_for(pod: &PodInfo) -> impl Strategy<Value = Vec<EndpointSliceInfo>> + use<> {
    let (namespace, name, ip) =
        (pod.namespace.clone(), pod.name.clone(), pod.pod_ip.clone().unwrap_or_default());
    let slice = (dns_label(), proptest::option::of(dns_label()), any::<bool>()).prop_map(
        move |(service, hostname, targets_pod)| {
            let target = if targets_pod { name.clone() } else { format!("{name}-other") };
            match hostname {
                Some(host) => {
                    EndpointSliceInfo::test(&namespace, &service).with_named_endpoint(&ip, &host, &target)
                }
                None => EndpointSliceInfo::test(&namespace, &service).with_endpoint(&ip, &target),
            }
        },
    );
    prop::collection::vec(slice, 0..4)
}

fn pod_with_slices() -> impl Strategy<Value = (PodInfo, Vec<EndpointSliceInfo>)> {
    scheduled_pod().prop_flat_map(|pod| {
        let slices = slices_for(&pod);
        (Just(pod), slices)
    })
}

/// Metadata keys a pod may carry: the ones the rules read and others.
fn metadata_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("spiffe.io/id".to_string()),
        Just(FEDERATES_WITH_ANNOTATION.to_string()),
        Just("kubectl.kubernetes.io/last-applied-configuration".to_string()),
        "[a-z]{1,6}",
    ]
}

fn metadata_value() -> impl Strategy<Value = String> {
    prop_oneof![segment(), Just("a.org, b.org".to_string()), Just("example.org".to_string()), "[ -~]{0,12}"]
}

proptest! {
    #[test]
    fn rules_read_only_the_metadata_keys_they_name(
        pod in scheduled_pod(),
        labels in prop::collection::btree_map(metadata_key(), metadata_value(), 0..4),
        annotations in prop::collection::btree_map(metadata_key(), metadata_value(), 0..4),
    ) {
        let mut pod = pod;
        pod.labels.extend(labels);
        pod.annotations.extend(annotations);
        for naming in [Naming::test(), label_mode(), annotation_mode()] {
            let keys = naming.metadata_keys();
            let kept = PodInfo {
                labels: MetadataKeys::keep(&keys.labels, Some(&pod.labels)),
                annotations: MetadataKeys::keep(&keys.annotations, Some(&pod.annotations)),
                ..pod.clone()
            };
            prop_assert_eq!(naming.pod_entry_with_warnings(&kept, &[]), naming.pod_entry_with_warnings(&pod, &[]));
        }
    }

    #[test]
    fn values_of_valid_segments_build_ids(segments in prop::collection::vec(segment(), 1..5), lead in any::<bool>()) {
        let value = format!("{}{}", if lead { "/" } else { "" }, segments.join("/"));
        let pod = PodInfo::test("default", "web").on_node("n1").with_label("spiffe.io/id", &value);
        let spec = entry(&label_mode(), &pod).unwrap().unwrap();
        prop_assert_eq!(spec.spiffe_id.path(), format!("/{}", segments.join("/")));
        prop_assert_eq!(spec.spiffe_id.trust_domain(), &label_mode().trust_domain);
    }

    #[test]
    fn values_with_a_foreign_char_are_rejected(
        before in "[A-Za-z0-9._/-]{0,10}",
        bad in any::<char>().prop_filter("outside the allowed set", |c| !(c.is_ascii_alphanumeric() || "._-/".contains(*c))),
        after in "[A-Za-z0-9._/-]{0,10}",
    ) {
        let value = format!("{before}{bad}{after}");
        let pod = PodInfo::test("default", "web").on_node("n1").with_label("spiffe.io/id", &value);
        let is_invalid_id = entry(&label_mode(), &pod).is_err_and(|err| matches!(err.kind(), IdentityErrorKind::InvalidId { .. }));
        prop_assert!(is_invalid_id);
    }

    #[test]
    fn pod_entries_are_owned_valid_and_deterministic((pod, slices) in pod_with_slices(), labelled in any::<bool>()) {
        let naming = if labelled { label_mode() } else { Naming::test() }.with_dns_zone("cluster.local");
        let first = naming.pod_entry_with_warnings(&pod, &slices).unwrap();
        prop_assert_eq!(&first, &naming.pod_entry_with_warnings(&pod, &slices).unwrap());
        let Some(desired) = first else {
            prop_assert!(labelled && !pod.labels.contains_key("spiffe.io/id"));
            return Ok(());
        };
        let spec = desired.spec;
        prop_assert!(naming.owns(&spec));
        prop_assert_eq!(naming.node_of(&spec), pod.node_name.clone());
        prop_assert_eq!(&spec.selectors, &pod_selectors(&pod.namespace, &pod.name));
        prop_assert!(spec.parent_id.is_under(&naming.root_id().unwrap()));
        let unique: BTreeSet<&String> = spec.dns_names.iter().collect();
        prop_assert_eq!(unique.len(), spec.dns_names.len());
        for name in &spec.dns_names {
            let revalidated = validate_dns_name(name);
            prop_assert_eq!(revalidated.as_ref(), Ok(name));
        }
        let ip_name = format!("{}.{}.pod.cluster.local", pod.pod_ip.clone().unwrap_or_default().replace('.', "-"), pod.namespace);
        prop_assert_eq!(spec.dns_names.first(), Some(&ip_name));
    }
}
