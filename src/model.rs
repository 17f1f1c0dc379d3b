//! The registrar's view of a SPIRE registration entry: what it wants (`EntrySpec`) and what SPIRE
//! has (`Entry`). Pure data; the conversion to and from the wire types lives in `spire::convert`.

use std::{collections::BTreeSet, fmt};

use crate::id::SpiffeId;

/// A SPIRE selector such as `k8s:ns:default` (`kind` = `k8s`, `value` = `ns:default`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub kind: String,
    pub value: String,
}

impl Selector {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self { kind: kind.into(), value: value.into() }
    }

    /// `k8s:<value>`
    pub fn k8s(value: impl Into<String>) -> Self {
        Self::new("k8s", value)
    }

    /// `k8s_psat:<value>`
    pub fn psat(value: impl Into<String>) -> Self {
        Self::new("k8s_psat", value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Every field of an entry the registrar sets. [`EntrySpec::same_as`] is true exactly when SPIRE
/// needs no write to turn one into the other; this is what makes a no-change resync write nothing.
///
/// Invariants (upheld by the constructors in `identity`): `dns_names` are valid, trimmed and
/// de-duplicated (SPIRE reports them in varying order, so equality ignores their order); `federates_with`
/// holds bare, valid trust-domain names.
/// Entry fields the operator sets for every entry the registrar writes (config `x509_svid_ttl`,
/// `jwt_svid_ttl`, `entry_hint`); `0` and `""` leave SPIRE's defaults. Compared like every other
/// field, so a changed setting converges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Managed {
    /// Seconds; 0 = the server's default.
    pub x509_svid_ttl: i32,
    /// Seconds; 0 = the server's default.
    pub jwt_svid_ttl: i32,
    /// Shown by `spire-server entry show` (SPIRE ≥ 1.9).
    pub hint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntrySpec {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: BTreeSet<Selector>,
    pub dns_names: Vec<String>,
    pub federates_with: BTreeSet<String>,
    pub downstream: bool,
    pub managed: Managed,
}

/// A small valid entry (`/w` under `/p`, selector `k8s:ns:a`) for unit tests that need one whose
/// content does not matter.
#[cfg(test)]
pub(crate) fn sample_spec() -> EntrySpec {
    let td = crate::id::TrustDomain::parse("example.org").unwrap();
    EntrySpec {
        spiffe_id: SpiffeId::from_path(&td, "/w").unwrap(),
        parent_id: SpiffeId::from_path(&td, "/p").unwrap(),
        selectors: BTreeSet::from([Selector::k8s("ns:a")]),
        dns_names: Vec::new(),
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    }
}

impl EntrySpec {
    /// True when SPIRE needs no write to turn `self` into `other`: every field equal, DNS names
    /// compared as a set. SPIRE (1.13) answers a create or update with the DNS names sorted but
    /// lists them in the order written, so comparing their order would cause needless writes.
    pub fn same_as(&self, other: &EntrySpec) -> bool {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        self.spiffe_id == other.spiffe_id
            && self.parent_id == other.parent_id
            && self.selectors == other.selectors
            && self.federates_with == other.federates_with
            && self.downstream == other.downstream
            && sorted(&self.dns_names) == sorted(&other.dns_names)
            && self.managed == other.managed
    }
}

/// An entry as it exists in SPIRE: its server-assigned ID plus the fields we compare.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub id: String,
    pub spec: EntrySpec,
}
