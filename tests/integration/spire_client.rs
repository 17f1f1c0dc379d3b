//! Our SPIRE Entry API client against the real spire-server.

use std::collections::BTreeSet;

use k8s_workload_registrar::{
    model::{Entry, EntrySpec, Selector, Selectors},
    spire::ListFilter,
};
use tonic::Code;

use crate::{
    stack::{Spire, set_bundle},
    util::*,
};

fn spec(path: &str, parent: &str, pod: &str) -> EntrySpec {
    EntrySpec {
        spiffe_id: id(path),
        parent_id: id(parent),
        selectors: Selectors::from([Selector::k8s("ns:t"), Selector::k8s(format!("pod-name:{pod}"))]),
        dns_names: vec![],
        federates_with: BTreeSet::new(),
        downstream: false,
        managed: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_paging_and_per_item_errors() {
    let dir = tempfile::Builder::new().prefix("kwr-").tempdir_in("/tmp").unwrap();
    let spire = Spire::start(dir.path()).await;
    let c = spire.client();

    // Create, read back, update, delete.
    let a = spec("/w/a", "/reg/node/n1", "a");
    let created = c.create_entries(std::slice::from_ref(&a)).await.unwrap().remove(0).unwrap();
    assert_eq!(created.spec, a);
    let mut changed = created.clone();
    changed.spec.dns_names = vec!["a.t.svc".into(), "a.t".into()];
    let updated = c.update_entries(std::slice::from_ref(&changed)).await.unwrap().remove(0).unwrap();
    assert_eq!(updated.id, created.id, "update keeps the id");
    // SPIRE answers a write with the DNS names sorted but lists them in the order written;
    // everything else comes back exactly as written.
    assert_eq!(updated.spec.dns_names, vec!["a.t".to_string(), "a.t.svc".to_string()]);
    assert!(updated.spec.same_as(&changed.spec));
    let got =
        c.list_entries(&ListFilter { by_spiffe_id: Some(id("/w/a")), ..Default::default() }).await.unwrap();
    assert_eq!(got, vec![changed.clone()]);

    // ALREADY_EXISTS returns the existing entry.
    let again = c.create_entries(std::slice::from_ref(&a)).await.unwrap().remove(0).unwrap();
    assert_eq!(again.id, created.id);

    // Per-item errors: an invalid DNS name is rejected by the server for that item only.
    let mut bad = spec("/w/bad", "/reg/node/n1", "bad");
    bad.dns_names = vec!["inner.*.wildcard.example".into()];
    let good = spec("/w/good", "/reg/node/n1", "good");
    let results = c.create_entries(&[bad, good.clone()]).await.unwrap();
    let err = results[0].clone().unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert!(err.message.contains("DNS"), "{err}");
    assert_eq!(results[1].clone().unwrap().spec, good);

    // Federation: refused without a bundle (per item), accepted with one.
    let mut fed = spec("/w/fed", "/reg/node/n1", "fed");
    fed.federates_with = BTreeSet::from(["other.org".to_string()]);
    let r = c.create_entries(std::slice::from_ref(&fed)).await.unwrap().remove(0);
    assert!(r.is_err(), "federation without a bundle must fail: {r:?}");
    set_bundle(&spire, dir.path(), "other.org");
    let r = c.create_entries(std::slice::from_ref(&fed)).await.unwrap().remove(0).unwrap();
    assert_eq!(r.spec.federates_with, fed.federates_with);

    // Delete: missing IDs count as deleted.
    let res = c.delete_entries(&[created.id.clone(), "no-such-entry".into()]).await.unwrap();
    assert!(res.iter().all(Result::is_ok), "{res:?}");
    assert!(
        c.list_entries(&ListFilter { by_spiffe_id: Some(id("/w/a")), ..Default::default() })
            .await
            .unwrap()
            .is_empty()
    );

    // Listing spans several pages (page size 1000) and returns every entry exactly once.
    const MANY: usize = 2203;
    let many: Vec<EntrySpec> =
        (0..MANY).map(|i| spec(&format!("/many/{i}"), "/reg/node/n2", &format!("p{i}"))).collect();
    let results = c.create_entries(&many).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let listed: Vec<Entry> = c
        .list_entries(&ListFilter { by_parent_id: Some(id("/reg/node/n2")), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(listed.len(), MANY);
    let ids: BTreeSet<&str> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), MANY, "no entry listed twice");
    let wanted: BTreeSet<EntrySpec> = many.into_iter().collect();
    assert_eq!(listed.into_iter().map(|e| e.spec).collect::<BTreeSet<_>>(), wanted);
    assert_eq!(c.count_entries().await.unwrap() as usize, MANY + 2, "the many, plus /w/good and /w/fed");
    // A selector filter: SPIRE filters after each SQL page, so matches spread over the pages
    // come back in short pages, and the listing must still find all of them.
    let spread: Vec<EntrySpec> = [0, MANY / 2, MANY - 1]
        .iter()
        .map(|i| spec(&format!("/spread/{i}"), "/reg/node/n3", "shared"))
        .collect();
    let mut all: Vec<EntrySpec> =
        (0..MANY).map(|i| spec(&format!("/fill/{i}"), "/reg/node/n3", &format!("f{i}"))).collect();
    all[0] = spread[0].clone();
    all[MANY / 2] = spread[1].clone();
    all[MANY - 1] = spread[2].clone();
    assert!(c.create_entries(&all).await.unwrap().iter().all(Result::is_ok));
    let shared = vec![Selector::k8s("ns:t"), Selector::k8s("pod-name:shared")];
    let found =
        c.list_entries(&ListFilter { by_selectors: Some(shared), ..Default::default() }).await.unwrap();
    assert_eq!(
        found.into_iter().map(|e| e.spec).collect::<BTreeSet<_>>(),
        spread.into_iter().collect::<BTreeSet<_>>()
    );
}
