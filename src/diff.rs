//! Desired entries vs the entries SPIRE has → the writes that make SPIRE equal to desired. Pure.
//!
//! The caller passes as `actual` only entries it owns, of one scope (e.g. one node), so anything in
//! `actual` that is not desired is stale and gets deleted.
//!
//! Rules, per selector set (the identity key of a pod or node):
//!
//! 1. A desired spec with an equal actual entry ([`EntrySpec::same_as`]: every field, DNS names as
//!    a set, since SPIRE returns them sorted) keeps it.
//! 2. Otherwise, if the group has actual entries left, the one with the smallest entry ID is
//!    updated to the desired spec (an update keeps the entry ID, so agents never see the identity
//!    vanish).
//! 3. Otherwise the desired spec is created.
//! 4. Every actual entry not kept or updated is deleted: duplicates, and entries whose selector set
//!    matches no desired spec.
//!
//! Several desired specs sharing a selector set follow the same rules, each matched to a distinct
//! actual entry. Desired is treated as a set: specs that are `same_as` each other count once.
//!
//! # Guarantees
//!
//! * Applying the ops to `actual` yields exactly the desired set: none missing, none stale, no
//!   duplicates.
//! * No ops when `actual` already equals `desired` (a resync with nothing changed writes nothing).
//! * Only IDs present in `actual` are updated or deleted, each at most once.
//! * The output is deterministic: deletes (by ID), then updates (by ID), then creates (by spec).
//!   Deletes come first so that a create never collides with a stale "similar" entry.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Entry, EntrySpec, Selectors};

/// One write to SPIRE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOp {
    Create(EntrySpec),
    /// Create under a client-chosen ID (SPIRE ≥ 1.8). Never produced by [`diff`]: CRD mode's
    /// controller uses it for the entry a SpiffeID owns (see `crd::plan`).
    CreateWithId {
        id: String,
        spec: EntrySpec,
    },
    /// Full replacement of entry `id`'s fields with `spec`.
    Update {
        id: String,
        spec: EntrySpec,
    },
    Delete {
        id: String,
    },
}

impl EntryOp {
    /// A bounded label for metrics and logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Create(_) | Self::CreateWithId { .. } => "create",
            Self::Update { .. } => "update",
            Self::Delete { .. } => "delete",
        }
    }

    /// The spec a create or update writes; `None` for deletes.
    pub fn spec(&self) -> Option<&EntrySpec> {
        match self {
            Self::Create(spec) | Self::CreateWithId { spec, .. } | Self::Update { spec, .. } => Some(spec),
            Self::Delete { .. } => None,
        }
    }

    /// The SPIRE entry ID this op touches; `None` for creates with a server-chosen ID.
    pub fn entry_id(&self) -> Option<&str> {
        match self {
            Self::Create(_) => None,
            Self::CreateWithId { id, .. } | Self::Update { id, .. } | Self::Delete { id } => Some(id),
        }
    }
}

/// The ops that turn `actual` into `desired`. See the module docs for the rules and guarantees.
/// Precondition: entry IDs in `actual` are unique (SPIRE assigns them).
pub fn diff(desired: &[EntrySpec], actual: &[Entry]) -> Vec<EntryOp> {
    // Both sides grouped by selector set; within a group desired is a sorted set and actual is
    // sorted by entry ID, which makes every choice below deterministic.
    let mut groups: BTreeMap<&Selectors, (BTreeSet<&EntrySpec>, Vec<&Entry>)> = BTreeMap::new();
    for spec in desired {
        groups.entry(&spec.selectors).or_default().0.insert(spec);
    }
    for entry in actual {
        groups.entry(&entry.spec.selectors).or_default().1.push(entry);
    }

    let (mut deletes, mut updates, mut creates) = (Vec::new(), Vec::new(), Vec::new());
    for (_, (wanted, mut have)) in groups {
        // Specs that differ only in DNS-name order are one entry to SPIRE; keep the smallest
        // of each such class (in `Ord` order, so the choice does not depend on input order).
        let mut kept: Vec<&EntrySpec> = Vec::new();
        for spec in wanted {
            if !kept.iter().any(|k| k.same_as(spec)) {
                kept.push(spec);
            }
        }
        let wanted = kept;
        have.sort_by(|a, b| a.id.cmp(&b.id));
        // Rule 1: keep exact matches. Equality is exact, so greedy matching keeps as many entries
        // as possible; among identical duplicates the smallest ID is kept.
        let mut unmatched = Vec::new();
        for spec in wanted {
            match have.iter().position(|entry| entry.spec.same_as(spec)) {
                Some(i) => {
                    have.remove(i);
                }
                None => unmatched.push(spec),
            }
        }
        // Rules 2-4: the leftovers pair up in order (smallest ID first), then the rest is created
        // or deleted.
        let mut have = have.into_iter();
        for spec in unmatched {
            match have.next() {
                Some(entry) => updates.push(EntryOp::Update { id: entry.id.clone(), spec: spec.clone() }),
                None => creates.push(spec.clone()),
            }
        }
        deletes.extend(have.map(|entry| entry.id.clone()));
    }

    deletes.sort();
    updates.sort_by(|a, b| a.entry_id().cmp(&b.entry_id()));
    creates.sort();
    let deletes = deletes.into_iter().map(|id| EntryOp::Delete { id });
    deletes.chain(updates).chain(creates.into_iter().map(EntryOp::Create)).collect()
}

#[cfg(test)]
mod tests {
    use crate::model::Selector;
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::id::{SpiffeId, TrustDomain};

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").expect("valid trust domain")
    }

    fn id(path: &str) -> SpiffeId {
        SpiffeId::from_path(&td(), path).expect("valid path")
    }

    /// The entry of pod `pod` on node `n1` with workload ID `/w/<workload>`.
    fn spec(pod: &str, workload: &str) -> EntrySpec {
        EntrySpec {
            spiffe_id: id(&format!("/w/{workload}")),
            parent_id: id("/reg/c/node/n1"),
            selectors: Selectors::from([
                Selector::k8s("ns:default"),
                Selector::k8s(format!("pod-name:{pod}")),
            ]),
            dns_names: vec![],
            federates_with: BTreeSet::new(),
            downstream: false,
            managed: Default::default(),
        }
    }

    fn entry(entry_id: &str, spec: EntrySpec) -> Entry {
        Entry { id: entry_id.to_string(), spec }
    }

    fn update(entry_id: &str, spec: EntrySpec) -> EntryOp {
        EntryOp::Update { id: entry_id.to_string(), spec }
    }

    fn delete(entry_id: &str) -> EntryOp {
        EntryOp::Delete { id: entry_id.to_string() }
    }

    #[test]
    fn nothing_to_do_when_actual_equals_desired() {
        assert_eq!(diff(&[], &[]), vec![]);
        let desired = [spec("a", "x"), spec("b", "y")];
        let actual = [entry("2", spec("b", "y")), entry("1", spec("a", "x"))];
        assert_eq!(diff(&desired, &actual), vec![]);
    }

    #[test]
    fn missing_entries_are_created() {
        assert_eq!(diff(&[spec("a", "x")], &[]), vec![EntryOp::Create(spec("a", "x"))]);
    }

    #[test]
    fn entries_matching_no_desired_selectors_are_deleted() {
        let actual = [entry("1", spec("a", "x")), entry("2", spec("gone", "x"))];
        assert_eq!(diff(&[spec("a", "x")], &actual), vec![delete("2")]);
        assert_eq!(diff(&[], &actual), vec![delete("1"), delete("2")]);
    }

    #[test]
    fn an_exact_match_is_kept_and_the_rest_of_its_group_deleted() {
        // The exact match is kept even though a differing entry has a smaller ID.
        let actual = [entry("1", spec("a", "old")), entry("2", spec("a", "x")), entry("3", spec("a", "x"))];
        assert_eq!(diff(&[spec("a", "x")], &actual), vec![delete("1"), delete("3")]);
    }

    #[test]
    fn without_an_exact_match_the_smallest_id_is_updated() {
        let actual =
            [entry("b", spec("a", "old")), entry("a", spec("a", "older")), entry("c", spec("a", "x2"))];
        assert_eq!(
            diff(&[spec("a", "x")], &actual),
            vec![delete("b"), delete("c"), update("a", spec("a", "x"))]
        );
    }

    #[test]
    fn every_field_is_compared() {
        let base = spec("a", "x");
        let changed = [
            EntrySpec { spiffe_id: id("/w/y"), ..base.clone() },
            EntrySpec { parent_id: id("/reg/c/node/n2"), ..base.clone() },
            EntrySpec { dns_names: vec!["ab.cd".into()], ..base.clone() },
            EntrySpec { federates_with: BTreeSet::from(["b.org".to_string()]), ..base.clone() },
            EntrySpec { downstream: true, ..base.clone() },
        ];
        for new in changed {
            assert_eq!(diff(std::slice::from_ref(&new), &[entry("1", base.clone())]), vec![update("1", new)]);
        }
        // DNS name order does not matter: SPIRE returns names sorted, whatever order we wrote,
        // so an order-only difference must not cause a write on every resync.
        let ordered = EntrySpec { dns_names: vec!["ab.cd".into(), "ef.gh".into()], ..base.clone() };
        let reversed = EntrySpec { dns_names: vec!["ef.gh".into(), "ab.cd".into()], ..base };
        assert_eq!(diff(std::slice::from_ref(&ordered), &[entry("1", reversed)]), vec![]);
    }

    #[test]
    fn desired_specs_sharing_a_selector_set_get_distinct_entries() {
        let desired = [spec("a", "x"), spec("a", "y"), spec("a", "z")];
        // "y" is kept; "x" and "z" take the remaining entries in ID order; "4" is surplus.
        let actual = [
            entry("1", spec("a", "old")),
            entry("2", spec("a", "y")),
            entry("3", spec("a", "older")),
            entry("4", spec("a", "oldest")),
        ];
        assert_eq!(
            diff(&desired, &actual),
            vec![delete("4"), update("1", spec("a", "x")), update("3", spec("a", "z"))]
        );
        // Too few entries: the rest are created.
        assert_eq!(
            diff(&desired, &[entry("1", spec("a", "old"))]),
            vec![
                update("1", spec("a", "x")),
                EntryOp::Create(spec("a", "y")),
                EntryOp::Create(spec("a", "z"))
            ]
        );
    }

    #[test]
    fn identical_desired_specs_count_once() {
        let desired = [spec("a", "x"), spec("a", "x")];
        assert_eq!(diff(&desired, &[]), vec![EntryOp::Create(spec("a", "x"))]);
        assert_eq!(diff(&desired, &[entry("1", spec("a", "x"))]), vec![]);
    }

    #[test]
    fn output_is_deletes_then_updates_then_creates_each_sorted() {
        let desired = [spec("d", "x"), spec("c", "x"), spec("b", "new"), spec("a", "new")];
        let actual = [
            entry("z", spec("gone2", "x")),
            entry("y", spec("b", "old")),
            entry("x", spec("gone1", "x")),
            entry("w", spec("a", "old")),
        ];
        assert_eq!(
            diff(&desired, &actual),
            vec![
                delete("x"),
                delete("z"),
                update("w", spec("a", "new")),
                update("y", spec("b", "new")),
                EntryOp::Create(spec("c", "x")),
                EntryOp::Create(spec("d", "x")),
            ]
        );
        let op = update("w", spec("a", "new"));
        assert_eq!((op.verb(), op.entry_id()), ("update", Some("w")));
        assert_eq!(EntryOp::Create(spec("a", "x")).entry_id(), None);
    }

    // ------------------------------------------------------------------ properties

    /// Specs drawn from a small domain so that selector sets collide and specs often differ in
    /// one field only.
    fn arb_spec() -> impl Strategy<Value = EntrySpec> {
        (
            0..4u8,
            0..3u8,
            0..2u8,
            prop::collection::vec(0..3u8, 0..3),
            prop::collection::btree_set(0..2u8, 0..2),
            any::<bool>(),
        )
            .prop_map(|(pod, workload, node, dns, federation, downstream)| EntrySpec {
                spiffe_id: id(&format!("/w/{workload}")),
                parent_id: id(&format!("/reg/c/node/n{node}")),
                selectors: Selectors::from([Selector::k8s(format!("pod-name:p{pod}"))]),
                dns_names: dns.into_iter().map(|d| format!("d{d}.example")).collect(),
                federates_with: federation.into_iter().map(|f| format!("td{f}.org")).collect(),
                downstream,
                managed: Default::default(),
            })
    }

    /// Actual entries with unique IDs, in arbitrary order.
    fn arb_actual() -> impl Strategy<Value = Vec<Entry>> {
        prop::collection::vec(arb_spec(), 0..8)
            .prop_map(|specs| {
                specs.into_iter().enumerate().map(|(i, s)| entry(&format!("e{i:02}"), s)).collect()
            })
            .prop_shuffle()
    }

    fn entries_from(specs: &[EntrySpec]) -> Vec<Entry> {
        specs.iter().enumerate().map(|(i, s)| entry(&format!("e{i:02}"), s.clone())).collect()
    }

    /// `spec` with its DNS names sorted: equal normalized specs are `same_as` each other.
    fn normalized(spec: &EntrySpec) -> EntrySpec {
        let mut s = spec.clone();
        s.dns_names.sort();
        s
    }

    /// What SPIRE would hold after the ops; panics on an op that touches a missing ID.
    fn apply(actual: &[Entry], ops: &[EntryOp]) -> Vec<Entry> {
        let mut store: BTreeMap<String, EntrySpec> =
            actual.iter().map(|e| (e.id.clone(), e.spec.clone())).collect();
        for (n, op) in ops.iter().enumerate() {
            match op {
                EntryOp::Create(spec) => {
                    store.insert(format!("new{n:03}"), spec.clone());
                }
                EntryOp::CreateWithId { .. } => panic!("diff never creates with an ID"),
                EntryOp::Update { id, spec } => {
                    assert!(store.insert(id.clone(), spec.clone()).is_some(), "update of unknown {id}");
                }
                EntryOp::Delete { id } => {
                    assert!(store.remove(id).is_some(), "delete of unknown {id}");
                }
            }
        }
        store.into_iter().map(|(id, spec)| Entry { id, spec }).collect()
    }

    proptest! {
        #[test]
        fn applying_the_diff_yields_exactly_the_desired_set(
            desired in prop::collection::vec(arb_spec(), 0..8),
            actual in arb_actual(),
        ) {
            let after = apply(&actual, &diff(&desired, &actual));
            let mut specs: Vec<EntrySpec> = after.iter().map(|e| normalized(&e.spec)).collect();
            specs.sort();
            let mut wanted: Vec<EntrySpec> = desired.iter().map(normalized).collect();
            wanted.sort();
            wanted.dedup();
            prop_assert_eq!(specs, wanted);
        }

        #[test]
        fn no_ops_when_actual_is_built_from_desired(desired in prop::collection::vec(arb_spec(), 0..8)) {
            let mut set: Vec<EntrySpec> = desired.iter().map(normalized).collect();
            set.sort();
            set.dedup();
            prop_assert_eq!(diff(&set, &entries_from(&set)), vec![]);
        }

        #[test]
        fn ops_touch_only_actual_ids_each_once(
            desired in prop::collection::vec(arb_spec(), 0..8),
            actual in arb_actual(),
        ) {
            let ids: BTreeSet<&str> = actual.iter().map(|e| e.id.as_str()).collect();
            let ops = diff(&desired, &actual);
            let touched: Vec<&str> = ops.iter().filter_map(EntryOp::entry_id).collect();
            let unique: BTreeSet<&str> = touched.iter().copied().collect();
            prop_assert_eq!(unique.len(), touched.len());
            prop_assert!(unique.is_subset(&ids));
        }

        #[test]
        fn diff_is_idempotent_and_deterministic(
            desired in prop::collection::vec(arb_spec(), 0..8),
            actual in arb_actual(),
        ) {
            let ops = diff(&desired, &actual);
            let (mut desired_rev, mut actual_rev) = (desired.clone(), actual.clone());
            desired_rev.reverse();
            actual_rev.reverse();
            prop_assert_eq!(&ops, &diff(&desired_rev, &actual_rev));
            let after = apply(&actual, &ops);
            prop_assert_eq!(diff(&desired, &after), vec![]);
        }
    }
}
