//! `plan`: what a converged registrar would change in SPIRE, computed from the same rules and
//! the same diff as the running registrar, and shown before anything is written. Pure: a
//! snapshot of the cluster (a [`ClusterCache`]) and of the owned entries in, a [`Plan`] out; the
//! shell that reads them is `app::plan`.
//!
//! # Rules
//! 1. The scopes are the shards a registrar would run: every node with its owned entries and
//!    every scope that owns entries in SPIRE (reconcile: a node that is gone still has its
//!    entries to delete), or the one cluster scope (webhook mode).
//! 2. Each scope's desired entries are `scope::for_node` / `scope::for_cluster`, its changes
//!    `diff::diff` — exactly what a shard would write, without the cluster shard's delete grace
//!    (a plan shows where the registrar converges to).
//! 3. crd mode ([`for_spiffeids`]): the SpiffeIDs as the projector would leave them, each one's
//!    entry as the SpiffeID controller would write it (`crd::policy`, `crd::plan`); scopes are
//!    namespaces; a SpiffeID the projector would create has no entry ID yet.
//! 4. Every change says why (`audit::Reason`), updates which fields change (old → new).
//! 5. Changes are listed by scope, then by object, then create, update, delete.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

use serde_json::json;

use crate::{
    audit::{self, Object, Op, Reason},
    crd::{
        plan::{EntryPlan, entry_id, plan as crd_plan},
        policy::Policy,
        projection::Projection,
        resource::SpiffeID,
    },
    diff::{EntryOp, diff},
    identity::Naming,
    k8s::cache::ClusterCache,
    model::{Entry, EntrySpec},
    scope::{self, CLUSTER, ShardMode},
};

/// One change a converged registrar would make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The shard scope: a node name, or `cluster`.
    pub scope: String,
    pub op: Op,
    /// The entry's ID (`None` for a create: SPIRE assigns it).
    pub entry_id: Option<String>,
    pub object: Object,
    pub reason: Reason,
    /// The entry as it is in SPIRE (updates, deletes).
    pub old: Option<EntrySpec>,
    /// The entry as it would be (creates, updates).
    pub new: Option<EntrySpec>,
    /// Updates: the fields that differ.
    pub changed: Vec<&'static str>,
}

/// Everything `plan` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// What a scope is: `node`, `cluster` or (crd mode) `namespace`.
    pub scope_kind: &'static str,
    pub changes: Vec<Change>,
    /// Owned entries already as desired.
    pub unchanged: usize,
    /// Pods that get no entry because their identity cannot be formed: `ns/name: reason`.
    pub problems: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// The plan of reconcile (`ShardMode::PerNode`) or webhook (`ShardMode::Cluster`) mode, from
/// the cluster in `cache` and the entries in SPIRE (all of them; the ones no scope owns are
/// left out, as the registrar leaves them alone).
pub fn for_cluster(mode: ShardMode, naming: &Naming, cache: &ClusterCache, entries: Vec<Entry>) -> Plan {
    let mut owned: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        if let Some(s) = scope::owner_scope(mode, naming, &e.spec) {
            owned.entry(s).or_default().push(e);
        }
    }
    let scopes: BTreeSet<String> = match mode {
        ShardMode::PerNode => cache.node_names().into_iter().chain(owned.keys().cloned()).collect(),
        ShardMode::Cluster => BTreeSet::from([CLUSTER.to_string()]),
    };
    let mut plan = Plan {
        scope_kind: match mode {
            ShardMode::PerNode => "node",
            ShardMode::Cluster => "cluster",
        },
        ..Plan::default()
    };
    for s in scopes {
        let actual = owned.remove(&s).unwrap_or_default();
        let desired = match mode {
            ShardMode::PerNode => scope::for_node(naming, cache, &s),
            ShardMode::Cluster => scope::for_cluster(naming, cache),
        };
        for (pod, e) in &desired.problems {
            plan.problems.push(format!("{}/{}: {e}", pod.namespace, pod.name));
        }
        let ops = diff(&desired.specs, &actual);
        let node_gone = mode == ShardMode::PerNode && cache.node(&s).is_none();
        let touched = ops.iter().filter(|op| !matches!(op, EntryOp::Create(_))).count();
        plan.unchanged += actual.len() - touched;
        let mut changes = describe(&s, ops, &actual, |object| {
            audit::why_deleted(object, node_gone, |ns, name| cache.pod(ns, name))
        });
        // Readable and stable: by object within a scope, then by op.
        changes.sort_by_cached_key(|c| (c.object.to_string(), c.op as u8));
        plan.changes.extend(changes);
    }
    plan
}

/// The plan of crd mode: the SpiffeIDs there are (`sids`) as the projector would leave them
/// (`projection`, with `pod_controller`), each SpiffeID's entry as the controller would write it
/// (`crd::policy`, `crd::plan`), against the entries in SPIRE. `why_gone` explains why the
/// projector deletes a SpiffeID it owns (from its owner reference). Scopes are namespaces.
pub fn for_spiffeids(
    policy: &Policy,
    projection: Option<Projection>,
    sids: &[std::sync::Arc<SpiffeID>],
    entries: Vec<Entry>,
    why_gone: impl Fn(&OwnerReference) -> Reason,
) -> Plan {
    let mut plan = Plan { scope_kind: "namespace", ..Plan::default() };
    let mut by_spiffe: HashMap<String, Vec<Entry>> = HashMap::new();
    for e in &entries {
        by_spiffe.entry(e.spec.spiffe_id.to_string()).or_default().push(e.clone());
    }
    let by_id: HashMap<String, Entry> = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
    let (want, problems) = match projection {
        Some(p) => (Some(p.want), p.problems),
        None => (None, Vec::new()),
    };
    for (pod, e) in problems {
        plan.problems.push(format!("pod {}/{}: {e}", pod.namespace, pod.name));
    }
    let mut seen = BTreeSet::new();
    for sid in sids {
        let (ns, name, uid) =
            (sid.namespace().unwrap_or_default(), sid.name_any(), sid.uid().unwrap_or_default());
        let key = (ns.clone(), name.clone());
        seen.insert(key.clone());
        let object = Object::SpiffeId { namespace: ns.clone(), name: name.clone() };
        let own = entry_id(&uid).and_then(|id| by_id.get(&id));
        let ours = crate::crd::projection::our_owner(sid);
        let wanted = want.as_ref().and_then(|w| w.get(&key));
        let gone = match (&want, ours) {
            _ if sid.metadata.deletion_timestamp.is_some() => Some(Reason::SpiffeIdDeleted),
            (Some(_), Some(owner)) if wanted.is_none() => Some(why_gone(owner)),
            _ => None,
        };
        if let Some(reason) = gone {
            if let Some(e) = own {
                plan.changes.push(delete(&ns, e, object, reason));
            }
            continue;
        }
        let spec = match (wanted, ours) {
            (Some(w), Some(_)) => &w.spec,
            _ => &sid.spec,
        };
        entry_change(&mut plan, policy, &ns, object, entry_id(&uid), spec, own, &by_spiffe);
    }
    for (key, w) in want.iter().flatten() {
        if seen.contains(key) {
            continue;
        }
        // A SpiffeID the projector would create: its UID, so its entry's ID, is not known yet.
        let object = Object::SpiffeId { namespace: key.0.clone(), name: key.1.clone() };
        entry_change(&mut plan, policy, &key.0, object, None, &w.spec, None, &by_spiffe);
    }
    plan.changes.sort_by_cached_key(|c| (c.scope.clone(), c.object.to_string(), c.op as u8));
    plan
}

fn delete(scope: &str, e: &Entry, object: Object, reason: Reason) -> Change {
    Change {
        scope: scope.to_string(),
        op: Op::Delete,
        entry_id: Some(e.id.clone()),
        object,
        reason,
        old: Some(e.spec.clone()),
        new: None,
        changed: Vec::new(),
    }
}

/// The change (if any) the SpiffeID controller makes for one SpiffeID's entry.
#[allow(clippy::too_many_arguments)]
fn entry_change(
    plan: &mut Plan,
    policy: &Policy,
    ns: &str,
    object: Object,
    own_id: Option<String>,
    spec: &crate::crd::resource::SpiffeIdSpec,
    own: Option<&Entry>,
    by_spiffe: &HashMap<String, Vec<Entry>>,
) {
    let desired = match policy.entry(ns, spec) {
        Ok(d) => d,
        Err(e) => {
            match own {
                Some(e) => plan.changes.push(delete(ns, e, object, Reason::InvalidSpec)),
                None => plan.problems.push(format!("{object}: {e}")),
            }
            return;
        }
    };
    let same_id = by_spiffe.get(&desired.spiffe_id.to_string()).cloned().unwrap_or_default();
    let Some(own_id) = own_id else {
        let conflict = same_id
            .iter()
            .find(|e| e.spec.parent_id == desired.parent_id && e.spec.selectors == desired.selectors);
        match conflict {
            Some(other) => plan.problems.push(format!("{object}: conflicts with entry {}", other.id)),
            None => plan.changes.push(Change {
                scope: ns.to_string(),
                op: Op::Create,
                entry_id: None,
                object,
                reason: Reason::New,
                old: None,
                new: Some(desired),
                changed: Vec::new(),
            }),
        }
        return;
    };
    match crd_plan(&own_id, &desired, own, &same_id) {
        EntryPlan::Keep => plan.unchanged += 1,
        EntryPlan::Create(e) => plan.changes.push(Change {
            scope: ns.to_string(),
            op: Op::Create,
            entry_id: Some(e.id),
            object,
            reason: Reason::New,
            old: None,
            new: Some(e.spec),
            changed: Vec::new(),
        }),
        EntryPlan::Update(e) => {
            let old = own.map(|o| o.spec.clone());
            let changed = old.as_ref().map(|o| o.differing(&e.spec)).unwrap_or_default();
            plan.changes.push(Change {
                scope: ns.to_string(),
                op: Op::Update,
                entry_id: Some(e.id),
                object,
                reason: Reason::Changed,
                old,
                new: Some(e.spec),
                changed,
            });
        }
        EntryPlan::Conflict { other, delete_own } => {
            plan.problems.push(format!("{object}: conflicts with entry {other}"));
            if let (true, Some(e)) = (delete_own, own) {
                plan.changes.push(delete(ns, e, object, Reason::Conflict));
            }
        }
    }
}

/// The ops of one scope as changes; `why_deleted` explains deletes.
pub fn describe(
    scope: &str,
    ops: Vec<EntryOp>,
    actual: &[Entry],
    why_deleted: impl Fn(&Object) -> Reason,
) -> Vec<Change> {
    // By ID: webhook mode's one scope holds every pod's entry.
    let by_id: HashMap<&str, &EntrySpec> = actual.iter().map(|e| (e.id.as_str(), &e.spec)).collect();
    let old = |id: &str| by_id.get(id).map(|spec| (*spec).clone());
    ops.into_iter()
        .filter_map(|op| {
            let change = match op {
                EntryOp::Create(spec) | EntryOp::CreateWithId { spec, .. } => Change {
                    scope: scope.to_string(),
                    op: Op::Create,
                    entry_id: None,
                    object: audit::object_of(&spec),
                    reason: Reason::New,
                    old: None,
                    new: Some(spec),
                    changed: Vec::new(),
                },
                EntryOp::Update { id, spec } => {
                    let before = old(&id)?;
                    Change {
                        scope: scope.to_string(),
                        op: Op::Update,
                        object: audit::object_of(&spec),
                        reason: Reason::Changed,
                        changed: before.differing(&spec),
                        entry_id: Some(id),
                        old: Some(before),
                        new: Some(spec),
                    }
                }
                EntryOp::Delete { id } => {
                    let before = old(&id)?;
                    let object = audit::object_of(&before);
                    Change {
                        scope: scope.to_string(),
                        op: Op::Delete,
                        reason: why_deleted(&object),
                        object,
                        entry_id: Some(id),
                        old: Some(before),
                        new: None,
                        changed: Vec::new(),
                    }
                }
            };
            Some(change)
        })
        .collect()
}

/// One field's value as shown in a plan.
fn field(spec: &EntrySpec, name: &str) -> String {
    let list = |v: Vec<String>| if v.is_empty() { "-".to_string() } else { v.join(",") };
    match name {
        "spiffe_id" => spec.spiffe_id.to_string(),
        "parent_id" => spec.parent_id.to_string(),
        "selectors" => list(spec.selectors.iter().map(|s| format!("{}:{}", s.kind, s.value)).collect()),
        "dns_names" => list(spec.sorted_dns_names()),
        "federates_with" => list(spec.federates_with.iter().cloned().collect()),
        "downstream" => spec.downstream.to_string(),
        "x509_svid_ttl" => format!("{}s", spec.managed.x509_svid_ttl),
        "jwt_svid_ttl" => format!("{}s", spec.managed.jwt_svid_ttl),
        "hint" => {
            if spec.managed.hint.is_empty() {
                "-".into()
            } else {
                format!("{:?}", spec.managed.hint)
            }
        }
        _ => String::new(),
    }
}

/// The plan as text for a terminal: changes grouped by scope, one line each, updates with
/// their fields old → new, then a summary line.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let mut scope: Option<&str> = None;
    for c in &plan.changes {
        if scope != Some(c.scope.as_str()) {
            let title = match plan.scope_kind {
                "cluster" => "cluster".to_string(),
                kind => format!("{kind} {}", c.scope),
            };
            out.push_str(&format!("{title}:\n"));
            scope = Some(&c.scope);
        }
        let spec = c.new.as_ref().or(c.old.as_ref()).expect("a change has a spec");
        let sign = match c.op {
            Op::Create => '+',
            Op::Update => '~',
            Op::Delete => '-',
        };
        let id = c.entry_id.as_deref().map(|id| format!(" [{id}]")).unwrap_or_default();
        out.push_str(&format!(
            "  {sign} {:<6} {}{id}  ({}; {})\n",
            c.op.as_str(),
            spec.spiffe_id,
            c.object,
            c.reason
        ));
        if let (Some(old), Some(new)) = (&c.old, &c.new) {
            for f in &c.changed {
                out.push_str(&format!("      {f}: {} -> {}\n", field(old, f), field(new, f)));
            }
        }
    }
    if !plan.problems.is_empty() {
        out.push_str("without an entry:\n");
        for p in &plan.problems {
            out.push_str(&format!("  ! {p}\n"));
        }
    }
    let count = |op: Op| plan.changes.iter().filter(|c| c.op == op).count();
    out.push_str(&format!(
        "Plan: {} to create, {} to update, {} to delete, {} unchanged.\n",
        count(Op::Create),
        count(Op::Update),
        count(Op::Delete),
        plan.unchanged
    ));
    out
}

fn spec_json(spec: &EntrySpec) -> serde_json::Value {
    json!({
        "spiffe_id": spec.spiffe_id.to_string(),
        "parent_id": spec.parent_id.to_string(),
        "selectors": spec.selectors.iter().map(|s| format!("{}:{}", s.kind, s.value)).collect::<Vec<_>>(),
        "dns_names": spec.sorted_dns_names(),
        "federates_with": spec.federates_with,
        "downstream": spec.downstream,
        "x509_svid_ttl": spec.managed.x509_svid_ttl,
        "jwt_svid_ttl": spec.managed.jwt_svid_ttl,
        "hint": spec.managed.hint,
    })
}

/// The plan as JSON (`-output json`): `changes` (each with `scope`, `op`, `entry_id`,
/// `object`, `reason`, `old`, `new`, `changed`), `unchanged`, `problems` and `summary`.
pub fn render_json(plan: &Plan) -> serde_json::Value {
    let count = |op: Op| plan.changes.iter().filter(|c| c.op == op).count();
    json!({
        "changes": plan.changes.iter().map(|c| json!({
            "scope": c.scope,
            "op": c.op.as_str(),
            "entry_id": c.entry_id,
            "object": c.object.to_string(),
            "reason": c.reason.as_str(),
            "old": c.old.as_ref().map(spec_json),
            "new": c.new.as_ref().map(spec_json),
            "changed": c.changed,
        })).collect::<Vec<_>>(),
        "unchanged": plan.unchanged,
        "problems": plan.problems,
        "summary": {"create": count(Op::Create), "update": count(Op::Update), "delete": count(Op::Delete)},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{NodeInfo, PodInfo};

    fn cluster() -> (Naming, ClusterCache) {
        let naming = Naming::test();
        let cache = ClusterCache::default();
        cache.upsert_node(NodeInfo { name: "n1".into(), uid: "u1".into() });
        cache.upsert_pod(PodInfo::test("apps", "web").on_node("n1"));
        (naming, cache)
    }

    fn desired(naming: &Naming, cache: &ClusterCache) -> Vec<Entry> {
        let d = scope::for_node(naming, cache, "n1");
        d.specs.into_iter().enumerate().map(|(i, spec)| Entry { id: format!("e{i}"), spec }).collect()
    }

    #[test]
    fn crd_mode_follows_the_projection_to_each_spiffeids_entry() {
        use crate::crd::{
            pods::PodRules,
            projection::{Want, owner},
            resource::SpiffeIdSpec,
        };
        let td = crate::id::TrustDomain::parse("example.org").unwrap();
        let policy =
            Policy { trust_domain: td.clone(), cluster: "c1".into(), own_namespace: Some("default".into()) };
        let rules = PodRules {
            trust_domain: td,
            cluster: "c1".into(),
            identity: crate::crd::pods::IdentityRule::from_config(
                None,
                &crate::identity::IdSource::ServiceAccount,
            ),
            identity_template_label: None,
            dns_name_templates: Vec::new(),
            context: Default::default(),
            disabled_namespaces: Default::default(),
        };
        let node_spec = |n: &str, uid: &str| rules.node(n, uid).unwrap();
        let sid = |ns: &str, name: &str, uid: &str, spec: SpiffeIdSpec, owned_by: Option<(&str, &str)>| {
            let mut s = SpiffeID::new(name, spec);
            s.metadata.namespace = Some(ns.into());
            s.metadata.uid = Some(uid.into());
            s.metadata.owner_references = owned_by.map(|(kind, uid)| vec![owner("v1", kind, name, uid)]);
            std::sync::Arc::new(s)
        };
        let n1 = sid("default", "n1", "s1", node_spec("n1", "u1"), Some(("Node", "u1")));
        let n2 = sid("default", "n2", "s2", node_spec("n2", "u2"), Some(("Node", "u2")));
        let mut reserved = node_spec("x", "u9");
        reserved.spiffe_id = "spiffe://example.org/spire/x".into();
        reserved.parent_id = "spiffe://example.org/somewhere".into();
        let manual = sid("shop", "x", "s3", reserved, None);
        let entry = |s: &SpiffeID| Entry {
            id: entry_id(s.metadata.uid.as_deref().unwrap()).unwrap(),
            spec: policy.entry(s.metadata.namespace.as_deref().unwrap(), &s.spec).unwrap(),
        };
        let entries = vec![entry(&n1), entry(&n2)];
        let want = |n: &str, uid: &str| Want {
            spec: node_spec(n, uid),
            label: ("nodeUid", uid.into()),
            owner: owner("v1", "Node", n, uid),
        };
        let projection = Projection {
            want: BTreeMap::from([
                (("default".into(), "n1".into()), want("n1", "u1")),
                (("default".into(), "n3".into()), want("n3", "u3")),
            ]),
            ..Projection::default()
        };
        let plan = for_spiffeids(&policy, Some(projection), &[n1, n2, manual], entries, |_| Reason::NodeGone);
        let got: Vec<_> =
            plan.changes.iter().map(|c| (c.op, c.object.to_string(), c.reason, c.entry_id.clone())).collect();
        assert_eq!(
            got,
            [
                (
                    Op::Delete,
                    "spiffeid default/n2".to_string(),
                    Reason::NodeGone,
                    Some("spiffeid-s2".to_string())
                ),
                (Op::Create, "spiffeid default/n3".to_string(), Reason::New, None),
            ]
        );
        assert_eq!(plan.unchanged, 1);
        assert!(
            plan.problems.len() == 1 && plan.problems[0].starts_with("spiffeid shop/x: "),
            "{:?}",
            plan.problems
        );
        assert!(render_text(&plan).starts_with("namespace default:\n"), "{}", render_text(&plan));
    }

    #[test]
    fn a_converged_cluster_has_an_empty_plan() {
        let (naming, cache) = cluster();
        let entries = desired(&naming, &cache);
        let plan = for_cluster(ShardMode::PerNode, &naming, &cache, entries);
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.unchanged, 2);
        assert!(render_text(&plan).ends_with("Plan: 0 to create, 0 to update, 0 to delete, 2 unchanged.\n"));
    }

    #[test]
    fn creates_updates_and_deletes_say_what_and_why() {
        let (naming, cache) = cluster();
        let mut entries = desired(&naming, &cache);
        // The pod's entry in SPIRE lacks a DNS name the registrar would not set: an update.
        entries[1].spec.dns_names = vec!["stale.example".into()];
        // A node that is gone still has its alias entry: a delete, because the node is gone.
        cache.upsert_node(NodeInfo { name: "n2".into(), uid: "u2".into() });
        let gone = scope::for_node(&naming, &cache, "n2").specs.remove(0);
        cache.remove_node("n2");
        entries.push(Entry { id: "old".into(), spec: gone });
        // A hand-made entry is nobody's: not in the plan.
        let mut hand = entries[0].spec.clone();
        hand.spiffe_id = crate::id::SpiffeId::parse("spiffe://example.org/hand").unwrap();
        hand.parent_id = crate::id::SpiffeId::parse("spiffe://example.org/spire/agent/x").unwrap();
        entries.push(Entry { id: "hand".into(), spec: hand });
        // A new pod: a create.
        cache.upsert_pod(PodInfo::test("apps", "api").on_node("n1"));

        let plan = for_cluster(ShardMode::PerNode, &naming, &cache, entries);
        let ops: Vec<_> = plan
            .changes
            .iter()
            .map(|c| (c.scope.as_str(), c.op, c.object.to_string(), c.reason, c.changed.clone()))
            .collect();
        assert_eq!(
            ops,
            [
                ("n1", Op::Create, "pod apps/api".to_string(), Reason::New, vec![]),
                ("n1", Op::Update, "pod apps/web".to_string(), Reason::Changed, vec!["dns_names"]),
                ("n2", Op::Delete, "node n2".to_string(), Reason::NodeGone, vec![]),
            ]
        );
        assert_eq!(plan.unchanged, 1, "n1's alias");
        let text = render_text(&plan);
        assert!(text.contains("node n1:\n  + create spiffe://example.org/ns/apps/sa/default"), "{text}");
        assert!(text.contains("      dns_names: stale.example -> -\n"), "{text}");
        assert!(
            text.contains("node n2:\n  - delete spiffe://example.org/spire-k8s-registrar/demo/node/n2 [old]"),
            "{text}"
        );
        let json = render_json(&plan);
        assert_eq!(json["summary"], json!({"create": 1, "update": 1, "delete": 1}));
        assert_eq!(json["changes"][1]["old"]["dns_names"], json!(["stale.example"]));
        assert_eq!(json["changes"][2]["reason"], "node_gone");
    }
}
