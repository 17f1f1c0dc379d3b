//! What the SpiffeID controller does with one SpiffeID's entry. Pure.
//!
//! # Ownership that cannot be forged
//! A SpiffeID owns exactly one entry ID, derived from its UID ([`entry_id`]; the API server sets
//! UIDs, tenants cannot), and created with that ID (SPIRE ≥ 1.8 honours client-chosen IDs). The
//! controller reads, updates and deletes only that ID. `status.entryId` is a report for humans and
//! is never believed: a forged or restored value names an entry the controller will not touch.
//! A crash between creating the entry and writing the status leaves nothing to repair: the next
//! pass finds the entry under its ID.
//!
//! # Rules ([`plan`])
//! 1. Our entry exists and equals the desired spec (every field, DNS names as a set) → keep.
//! 2. Another entry (any other ID) has the same SPIFFE ID, parent and selectors → conflict: we
//!    never adopt it; our own entry, if any, is stale and is deleted.
//! 3. Our entry exists and differs → update it in place.
//! 4. No entry of ours → create it under our ID.

use crate::model::{Entry, EntrySpec};

/// The entry ID a SpiffeID with this UID owns, or `None` when the UID cannot be one (SPIRE
/// allows at most 255 characters of `[A-Za-z0-9._-]`; API-server UIDs always fit).
pub fn entry_id(uid: &str) -> Option<String> {
    let ok = !uid.is_empty()
        && uid.len() <= 200
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then(|| format!("spiffeid-{uid}"))
}

/// The one thing to do for a SpiffeID's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPlan {
    Keep,
    /// `other` is the ID of the entry that is not ours; `delete_own` when our stale entry exists.
    Conflict {
        other: String,
        delete_own: bool,
    },
    Update(Entry),
    Create(Entry),
}

/// The plan for the SpiffeID owning `own_id`: `own` is the entry under that ID (if any), `same_id`
/// the entries with the desired SPIFFE ID (any owner).
pub fn plan(own_id: &str, desired: &EntrySpec, own: Option<&Entry>, same_id: &[Entry]) -> EntryPlan {
    if own.is_some_and(|e| e.spec.same_as(desired)) {
        return EntryPlan::Keep;
    }
    let similar = same_id.iter().find(|e| {
        e.id != own_id
            && e.spec.spiffe_id == desired.spiffe_id
            && e.spec.parent_id == desired.parent_id
            && e.spec.selectors == desired.selectors
    });
    let ours = Entry { id: own_id.to_string(), spec: desired.clone() };
    match (own, similar) {
        (_, Some(other)) => EntryPlan::Conflict { other: other.id.clone(), delete_own: own.is_some() },
        (Some(_), None) => EntryPlan::Update(ours),
        (None, None) => EntryPlan::Create(ours),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        id::SpiffeId,
        model::{Selector, Selectors},
    };

    fn spec(path: &str) -> EntrySpec {
        EntrySpec {
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/k8s-workload-registrar/c1/node/n1").unwrap(),
            selectors: Selectors::from([Selector::k8s("ns:shop")]),
            dns_names: vec!["a.shop".into()],
            federates_with: BTreeSet::new(),
            downstream: false,
            managed: Default::default(),
        }
    }

    fn entry(id: &str, spec: EntrySpec) -> Entry {
        Entry { id: id.into(), spec }
    }

    #[test]
    fn entry_ids_derive_from_the_uid() {
        assert_eq!(entry_id("0b3c-11").as_deref(), Some("spiffeid-0b3c-11"));
        for bad in ["", "a/b", "a b", &"x".repeat(201)] {
            assert_eq!(entry_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn table() {
        let want = spec("/ns/shop/sa/web");
        let mut changed = want.clone();
        changed.dns_names = vec!["b.shop".into()];
        let mut reordered = want.clone();
        reordered.dns_names = vec!["a.shop".into()];
        let ours = entry("spiffeid-u1", want.clone());
        let stale = entry("spiffeid-u1", changed.clone());
        let theirs = entry("hand-made", changed.clone());
        let same_id_other_parent = {
            let mut s = want.clone();
            s.parent_id = SpiffeId::parse("spiffe://example.org/elsewhere").unwrap();
            entry("other-parent", s)
        };
        let cases: Vec<(&str, Option<&Entry>, Vec<Entry>, EntryPlan)> = vec![
            ("ours, equal", Some(&ours), vec![ours.clone(), theirs.clone()], EntryPlan::Keep),
            ("absent", None, vec![], EntryPlan::Create(ours.clone())),
            (
                "absent, unrelated same ID",
                None,
                vec![same_id_other_parent.clone()],
                EntryPlan::Create(ours.clone()),
            ),
            ("ours differs", Some(&stale), vec![stale.clone()], EntryPlan::Update(ours.clone())),
            (
                "someone else's similar entry",
                None,
                vec![theirs.clone()],
                EntryPlan::Conflict { other: "hand-made".into(), delete_own: false },
            ),
            (
                "ours differs and someone else's is similar",
                Some(&stale),
                vec![stale.clone(), theirs.clone()],
                EntryPlan::Conflict { other: "hand-made".into(), delete_own: true },
            ),
        ];
        for (what, own, same, expected) in cases {
            assert_eq!(plan("spiffeid-u1", &want, own, &same), expected, "{what}");
        }
        // DNS-name order alone is no change.
        assert_eq!(plan("spiffeid-u1", &reordered, Some(&ours), &[]), EntryPlan::Keep);
    }
}
