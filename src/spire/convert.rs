//! Conversions between the generated SPIRE wire types and the registrar's model types.
//!
//! Only the fields the registrar sets are carried over; all others are left at their zero value,
//! which SPIRE reads as "server default" (TTLs) or "off" (admin, store_svid, ...).

use std::collections::BTreeSet;

use super::proto::types;
use crate::{
    id::{SpiffeId, TrustDomain},
    model::{Entry, EntrySpec, Managed, Selector},
};

pub fn id_to_proto(id: &SpiffeId) -> types::Spiffeid {
    types::Spiffeid { trust_domain: id.trust_domain().to_string(), path: id.path().to_string() }
}

pub fn id_from_proto(id: Option<&types::Spiffeid>) -> Result<SpiffeId, String> {
    let id = id.ok_or("missing SPIFFE ID")?;
    let td = TrustDomain::parse(&id.trust_domain).map_err(|e| e.to_string())?;
    SpiffeId::from_path(&td, &id.path).map_err(|e| e.to_string())
}

pub fn selector_to_proto(s: &Selector) -> types::Selector {
    types::Selector { r#type: s.kind.clone(), value: s.value.clone() }
}

pub fn spec_to_proto(id: &str, spec: &EntrySpec) -> types::Entry {
    types::Entry {
        id: id.to_string(),
        spiffe_id: Some(id_to_proto(&spec.spiffe_id)),
        parent_id: Some(id_to_proto(&spec.parent_id)),
        selectors: spec.selectors.iter().map(selector_to_proto).collect(),
        federates_with: spec.federates_with.iter().cloned().collect(),
        dns_names: spec.dns_names.clone(),
        downstream: spec.downstream,
        x509_svid_ttl: spec.managed.x509_svid_ttl,
        jwt_svid_ttl: spec.managed.jwt_svid_ttl,
        hint: spec.managed.hint.clone(),
        ..Default::default()
    }
}

/// The fields an update writes: exactly those of [`EntrySpec`], so fields the registrar does not
/// manage (`admin`, `store_svid`, `expires_at`, …, set by an operator) are left alone.
pub fn managed_mask() -> types::EntryMask {
    types::EntryMask {
        spiffe_id: true,
        parent_id: true,
        selectors: true,
        federates_with: true,
        dns_names: true,
        downstream: true,
        x509_svid_ttl: true,
        jwt_svid_ttl: true,
        hint: true,
        ..Default::default()
    }
}

pub fn entry_from_proto(e: &types::Entry) -> Result<Entry, super::Error> {
    let bad = |reason: String| super::Error::BadEntry { id: e.id.clone(), reason };
    let spec = EntrySpec {
        spiffe_id: id_from_proto(e.spiffe_id.as_ref()).map_err(|r| bad(format!("spiffe_id: {r}")))?,
        parent_id: id_from_proto(e.parent_id.as_ref()).map_err(|r| bad(format!("parent_id: {r}")))?,
        selectors: e.selectors.iter().map(|s| Selector::new(&s.r#type, &s.value)).collect(),
        dns_names: e.dns_names.clone(),
        // SPIRE returns bare names, but accept the prefixed form too so equality stays exact.
        federates_with: e
            .federates_with
            .iter()
            .map(|td| td.strip_prefix("spiffe://").unwrap_or(td).to_string())
            .collect::<BTreeSet<_>>(),
        downstream: e.downstream,
        managed: Managed {
            x509_svid_ttl: e.x509_svid_ttl,
            jwt_svid_ttl: e.jwt_svid_ttl,
            hint: e.hint.clone(),
        },
    };
    Ok(Entry { id: e.id.clone(), spec })
}
