//! Start-up check that the SPIRE server stores the entry fields the configuration asks the
//! registrar to manage (`jwt_svid_ttl`, `entry_hint`: newer than the rest of the Entry API). An
//! older server silently drops fields it does not know, so without this check every resync would
//! see a difference and update every entry again, forever.
//!
//! The check writes one probe entry that no agent can be served — parented to an ID no agent
//! has, with a selector no workload matches — reads back what the server stored, and deletes it.
//! It runs only when such a field is set; a server that cannot be reached is not a verdict (the
//! registrar starts and retries as usual), a server that dropped a field is (start-up fails
//! naming the key).

use super::{SpireClient, client::CreateResult};
use crate::{
    id::{SpiffeId, TrustDomain},
    model::{EntrySpec, Managed, Selector},
};

/// The probe entry for `cluster`'s registrar with the `managed` fields.
pub fn probe_spec(td: &TrustDomain, cluster: &str, managed: &Managed) -> Option<EntrySpec> {
    let base = SpiffeId::from_path(td, "/k8s-workload-registrar").ok()?;
    Some(EntrySpec {
        spiffe_id: base.join(&[cluster, "field-probe"]).ok()?,
        parent_id: base.join(&[cluster, "field-probe-parent"]).ok()?,
        selectors: [Selector::new("unix", "uid:4294967295")].into(),
        dns_names: Vec::new(),
        federates_with: Default::default(),
        downstream: false,
        managed: managed.clone(),
    })
}

/// The configuration keys whose values the server did not store (`sent` → `stored`).
pub fn dropped_fields(sent: &Managed, stored: &Managed) -> Vec<&'static str> {
    // Named as the configuration names them: the entry's `hint` is the key `entry_hint`.
    sent.differing(stored).into_iter().map(|f| if f == "hint" { "entry_hint" } else { f }).collect()
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the SPIRE server does not store {fields:?} on entries (too old a SPIRE: `hint` needs 1.9, `jwt_svid_ttl` 1.6); remove those keys or upgrade the server"
    )]
    Unsupported { fields: Vec<&'static str> },
}

/// Runs the check when `managed` sets a field older servers may not store.
pub async fn check(
    client: &SpireClient,
    td: &TrustDomain,
    cluster: &str,
    managed: &Managed,
) -> Result<(), ProbeError> {
    if managed.hint.is_empty() && managed.jwt_svid_ttl == 0 {
        return Ok(());
    }
    let Some(spec) = probe_spec(td, cluster, managed) else { return Ok(()) };
    let created = match client.create_entries_detailed(std::slice::from_ref(&spec)).await {
        Ok(mut r) => r.pop(),
        Err(e) => {
            tracing::warn!(error = %e, "Could not check which entry fields the SPIRE server stores; going on.");
            return Ok(());
        }
    };
    let Some(Ok(CreateResult { entry, .. })) = created else {
        tracing::warn!(result = ?created, "The SPIRE server refused the field-probe entry; going on.");
        return Ok(());
    };
    if let Err(e) = client.delete_entries(std::slice::from_ref(&entry.id)).await {
        tracing::warn!(entry_id = %entry.id, error = %e, "Could not delete the field-probe entry.");
    }
    match dropped_fields(&spec.managed, &entry.spec.managed) {
        fields if fields.is_empty() => Ok(()),
        fields => Err(ProbeError::Unsupported { fields }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_names_the_keys_whose_values_were_dropped() {
        let sent = Managed { x509_svid_ttl: 3600, jwt_svid_ttl: 300, hint: "kwr".into() };
        assert!(dropped_fields(&sent, &sent).is_empty());
        let old_server = Managed { x509_svid_ttl: 3600, jwt_svid_ttl: 0, hint: String::new() };
        assert_eq!(dropped_fields(&sent, &old_server), ["jwt_svid_ttl", "entry_hint"]);
        let td = TrustDomain::parse("example.org").unwrap();
        let probe = probe_spec(&td, "c1", &sent).unwrap();
        assert_eq!(probe.spiffe_id.to_string(), "spiffe://example.org/k8s-workload-registrar/c1/field-probe");
        // No agent is served it: its parent is no agent's ID, under no node path of ours.
        assert_eq!(
            probe.parent_id.to_string(),
            "spiffe://example.org/k8s-workload-registrar/c1/field-probe-parent"
        );
    }
}
