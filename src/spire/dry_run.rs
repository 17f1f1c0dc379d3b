//! `dry_run = true`: the writes a registrar would make are answered from an in-memory
//! [`Overlay`] instead of being sent, and every read shows them — so the registrar behaves as if
//! its writes had landed (it does not retry them, nor count them twice), while SPIRE stays
//! untouched. Pure; `SpireClient` consults it (see `SpireClient::dry_run`).
//!
//! # Guarantees
//! * No write RPC is sent; reads are real, with the overlay applied on top: entries "deleted"
//!   are hidden, "updated" ones show their new fields, "created" ones appear (with IDs
//!   `dry-run-<n>` unless the writer chose one).
//! * A create of an entry SPIRE (or the overlay) already has — same SPIFFE ID, parent and
//!   selectors — is answered like SPIRE's ALREADY_EXISTS, with that entry.
//! * The overlay holds at most the registrar's pending changes, so it stays bounded.
//!
//! # Caveat
//! A listing filtered by parent or selectors is filtered by the server on the real fields: an
//! entry "updated" into the filter's range does not show up in it.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::client::{CreateResult, ListFilter};
use crate::model::{Entry, EntrySpec};

#[derive(Debug, Default)]
pub struct Overlay {
    created: BTreeMap<String, Entry>,
    updated: HashMap<String, EntrySpec>,
    deleted: HashSet<String>,
    next: u64,
}

/// Whether `spec` is one of the entries `filter` asks for (the filters SPIRE applies, ANDed).
pub fn matches(filter: &ListFilter, spec: &EntrySpec) -> bool {
    filter.by_parent_id.as_ref().is_none_or(|p| *p == spec.parent_id)
        && filter.by_spiffe_id.as_ref().is_none_or(|s| *s == spec.spiffe_id)
        && filter.by_selectors.as_ref().is_none_or(|want| {
            want.len() == spec.selectors.len() && want.iter().all(|s| spec.selectors.contains(s))
        })
}

/// Same parent, SPIFFE ID and selectors: what SPIRE calls a similar entry.
fn similar(a: &EntrySpec, b: &EntrySpec) -> bool {
    a.spiffe_id == b.spiffe_id && a.parent_id == b.parent_id && a.selectors == b.selectors
}

impl Overlay {
    /// A create under `id` (or a new `dry-run-<n>` ID); `existing` are the entries with the
    /// spec's SPIFFE ID as the registrar would read them (overlay applied).
    pub fn create(&mut self, id: Option<&str>, spec: EntrySpec, existing: &[Entry]) -> CreateResult {
        if let Some(e) = existing.iter().find(|e| similar(&e.spec, &spec)) {
            return CreateResult { entry: e.clone(), existed: true };
        }
        let id = match id.filter(|id| !id.is_empty()) {
            Some(id) => id.to_string(),
            None => {
                self.next += 1;
                format!("dry-run-{}", self.next)
            }
        };
        self.deleted.remove(&id);
        let entry = Entry { id: id.clone(), spec };
        self.created.insert(id, entry.clone());
        CreateResult { entry, existed: false }
    }

    pub fn update(&mut self, entry: &Entry) {
        match self.created.get_mut(&entry.id) {
            Some(c) => c.spec = entry.spec.clone(),
            None => {
                self.updated.insert(entry.id.clone(), entry.spec.clone());
            }
        }
    }

    pub fn delete(&mut self, id: &str) {
        if self.created.remove(id).is_none() {
            self.updated.remove(id);
            self.deleted.insert(id.to_string());
        }
    }

    /// A listing: the server's answer `real` to `filter`, as it would be after the overlay's
    /// writes.
    pub fn view(&self, real: Vec<Entry>, filter: &ListFilter) -> Vec<Entry> {
        let mut out: Vec<Entry> = real
            .into_iter()
            .filter(|e| !self.deleted.contains(&e.id) && !self.created.contains_key(&e.id))
            .map(|mut e| {
                if let Some(spec) = self.updated.get(&e.id) {
                    e.spec = spec.clone();
                }
                e
            })
            .filter(|e| matches(filter, &e.spec))
            .collect();
        out.extend(self.created.values().filter(|e| matches(filter, &e.spec)).cloned());
        out
    }

    /// A point read: the server's answer `real` for `id`, after the overlay's writes.
    pub fn get(&self, id: &str, real: Option<Entry>) -> Option<Entry> {
        if let Some(e) = self.created.get(id) {
            return Some(e.clone());
        }
        if self.deleted.contains(id) {
            return None;
        }
        real.map(|mut e| {
            if let Some(spec) = self.updated.get(id) {
                e.spec = spec.clone();
            }
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Selector, sample_spec};

    #[test]
    fn reads_show_the_writes_that_were_not_sent() {
        let mut o = Overlay::default();
        let real = vec![Entry { id: "a".into(), spec: sample_spec() }];
        let other = EntrySpec { selectors: [Selector::k8s("ns:b")].into(), ..sample_spec() };
        let all = ListFilter::default();

        // Creating what exists is ALREADY_EXISTS with that entry; a new one gets an ID.
        let again = o.create(None, sample_spec(), &o.view(real.clone(), &all));
        assert!(again.existed && again.entry.id == "a");
        let made = o.create(None, other.clone(), &o.view(real.clone(), &all));
        assert!(!made.existed && made.entry.id == "dry-run-1");
        assert_eq!(o.view(real.clone(), &all).len(), 2);
        // An update shows; a delete hides.
        let mut changed = real[0].clone();
        changed.spec.dns_names = vec!["x".into()];
        o.update(&changed);
        assert_eq!(o.get("a", Some(real[0].clone())), Some(changed.clone()));
        o.delete("a");
        assert_eq!(o.get("a", Some(real[0].clone())), None);
        assert_eq!(o.view(real.clone(), &all), vec![made.entry.clone()]);
        // Deleting a pretend entry forgets it; a client-chosen ID is kept.
        o.delete("dry-run-1");
        assert!(o.view(real.clone(), &all).is_empty());
        let with_id = o.create(Some("spiffeid-u1"), other.clone(), &[]);
        assert_eq!(with_id.entry.id, "spiffeid-u1");
        // Filters apply to pretend entries too.
        let by_sel = ListFilter { by_selectors: Some(vec![Selector::k8s("ns:b")]), ..Default::default() };
        assert_eq!(o.view(vec![], &by_sel).len(), 1);
        let by_other = ListFilter { by_selectors: Some(vec![Selector::k8s("ns:c")]), ..Default::default() };
        assert!(o.view(vec![], &by_other).is_empty());
    }
}
