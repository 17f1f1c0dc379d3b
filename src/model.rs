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

/// A set of selectors, kept as a sorted, de-duplicated slice: every entry holds one (often of
/// two selectors), and a `BTreeSet` spends a whole 11-slot node on that, about 450 bytes an
/// entry more than the selectors themselves (the registrar holds every owned entry, and an
/// anti-entropy listing a second copy). Equality, order and hashing are the set's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selectors(Box<[Selector]>);

impl Selectors {
    pub fn iter(&self) -> std::slice::Iter<'_, Selector> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, s: &Selector) -> bool {
        self.0.binary_search(s).is_ok()
    }
}

impl FromIterator<Selector> for Selectors {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        let mut v: Vec<Selector> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        Selectors(v.into_boxed_slice())
    }
}

impl<const N: usize> From<[Selector; N]> for Selectors {
    fn from(a: [Selector; N]) -> Self {
        a.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Selectors {
    type Item = &'a Selector;
    type IntoIter = std::slice::Iter<'a, Selector>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

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

/// Every field of an entry the registrar sets. [`EntrySpec::same_as`] is true exactly when SPIRE
/// needs no write to turn one into the other; this is what makes a no-change resync write nothing.
///
/// Invariants (upheld by the constructors in `identity`): `dns_names` are valid, trimmed and
/// de-duplicated (SPIRE reports them in varying order, so equality ignores their order); `federates_with`
/// holds bare, valid trust-domain names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntrySpec {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: Selectors,
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
        selectors: Selectors::from([Selector::k8s("ns:a")]),
        dns_names: Vec::new(),
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    }
}

impl Managed {
    /// The fields that differ from `other`, in a fixed order.
    pub fn differing(&self, other: &Managed) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.x509_svid_ttl != other.x509_svid_ttl {
            out.push("x509_svid_ttl");
        }
        if self.jwt_svid_ttl != other.jwt_svid_ttl {
            out.push("jwt_svid_ttl");
        }
        if self.hint != other.hint {
            out.push("hint");
        }
        out
    }
}

impl EntrySpec {
    /// True when SPIRE needs no write to turn `self` into `other` ([`EntrySpec::differing`] is
    /// empty).
    pub fn same_as(&self, other: &EntrySpec) -> bool {
        self.differing(other).is_empty()
    }

    /// The fields SPIRE would change to turn `self` into `other`, in a fixed order: the entry's
    /// own, then the managed ones ([`Managed::differing`]). DNS names are compared as a set:
    /// SPIRE (1.13) answers a create or update with them sorted but lists them in the order
    /// written, so comparing their order would cause needless writes.
    pub fn differing(&self, other: &EntrySpec) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.spiffe_id != other.spiffe_id {
            out.push("spiffe_id");
        }
        if self.parent_id != other.parent_id {
            out.push("parent_id");
        }
        if self.selectors != other.selectors {
            out.push("selectors");
        }
        if self.sorted_dns_names() != other.sorted_dns_names() {
            out.push("dns_names");
        }
        if self.federates_with != other.federates_with {
            out.push("federates_with");
        }
        if self.downstream != other.downstream {
            out.push("downstream");
        }
        out.extend(self.managed.differing(&other.managed));
        out
    }

    /// The DNS names in sorted order (they are a set; see [`EntrySpec::differing`]).
    pub fn sorted_dns_names(&self) -> Vec<String> {
        let mut v = self.dns_names.clone();
        v.sort();
        v
    }
}

/// An entry as it exists in SPIRE: its server-assigned ID plus the fields we compare.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub id: String,
    pub spec: EntrySpec,
}

impl Entry {
    /// A 64-bit fingerprint of the entry as the diff sees it: equal for two entries with the
    /// same ID whose specs are [`EntrySpec::same_as`] each other (so DNS names count as a set),
    /// different (but for a 2^-64 chance) when a write would be needed to turn one into the
    /// other. Anti-entropy compares these instead of holding a second copy of every entry.
    /// Stable within a process only (never stored or sent).
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        let s = &self.spec;
        self.id.hash(&mut h);
        s.spiffe_id.hash(&mut h);
        s.parent_id.hash(&mut h);
        s.selectors.hash(&mut h);
        s.sorted_dns_names().hash(&mut h);
        s.federates_with.hash(&mut h);
        s.downstream.hash(&mut h);
        s.managed.hash(&mut h);
        h.finish()
    }
}

/// The sorted [`Entry::digest`]s of `entries`: two sets of entries need no write to agree
/// exactly when these are equal (but for digest collisions).
pub fn digests<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<u64> {
    let mut d: Vec<u64> = entries.into_iter().map(Entry::digest).collect();
    d.sort_unstable();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_see_what_the_diff_sees() {
        let e = Entry { id: "a".into(), spec: sample_spec() };
        let with = |f: &dyn Fn(&mut Entry)| {
            let mut x = e.clone();
            f(&mut x);
            x.digest()
        };
        let mut dns = e.clone();
        dns.spec.dns_names = vec!["b.example".into(), "a.example".into()];
        let mut dns_reordered = dns.clone();
        dns_reordered.spec.dns_names.reverse();
        assert_eq!(dns.digest(), dns_reordered.digest(), "DNS names are a set");
        assert_ne!(dns.digest(), e.digest());
        let td = crate::id::TrustDomain::parse("example.org").unwrap();
        let changes: [&dyn Fn(&mut Entry); 8] = [
            &|x| x.id = "b".into(),
            &|x| x.spec.spiffe_id = SpiffeId::from_path(&td, "/other").unwrap(),
            &|x| x.spec.parent_id = SpiffeId::from_path(&td, "/other").unwrap(),
            &|x| x.spec.selectors = Selectors::from([Selector::k8s("ns:b")]),
            &|x| x.spec.federates_with = BTreeSet::from(["other.org".to_string()]),
            &|x| x.spec.downstream = true,
            &|x| x.spec.managed.x509_svid_ttl = 60,
            &|x| x.spec.managed.hint = "h".into(),
        ];
        for (i, change) in changes.iter().enumerate() {
            assert_ne!(with(*change), e.digest(), "change {i} must change the digest");
        }
        let (a, b) = (e.clone(), Entry { id: "b".into(), spec: sample_spec() });
        assert_eq!(digests([&a, &b]), digests([&b, &a]), "order does not count");
    }

    #[test]
    fn selectors_are_a_set() {
        let (a, b) = (Selector::k8s("ns:a"), Selector::k8s("pod-name:p"));
        let ab = Selectors::from([a.clone(), b.clone()]);
        assert_eq!(ab, Selectors::from([b.clone(), a.clone(), b.clone()]), "order and repeats do not count");
        assert_eq!(ab.len(), 2);
        assert!(ab.contains(&b) && !ab.contains(&Selector::k8s("ns:b")));
        assert_eq!(ab.iter().collect::<Vec<_>>(), [&a, &b], "iterated in order");
        assert_ne!(ab, Selectors::from([a.clone()]));
        // Ordered like the BTreeSet it replaces (lexicographic over the sorted elements).
        let as_set = |s: &Selectors| s.iter().cloned().collect::<BTreeSet<_>>();
        let c = Selectors::from([Selector::k8s("ns:b")]);
        assert_eq!(ab.cmp(&c), as_set(&ab).cmp(&as_set(&c)));
        assert!(Selectors::default().is_empty());
    }
}
