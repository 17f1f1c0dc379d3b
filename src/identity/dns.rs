//! Reconcile-mode pod DNS names (`add_pod_dns_names`), exactly as the original computed them, then
//! filtered by SPIRE's DNS-name rule.
//!
//! With zone `Z`, `munge(ip)` = the IP with `.` and `:` replaced by `-`, and the four "search
//! path" forms of a prefix `P` in namespace `N` being `P.N.svc.Z`, `P.N.svc`, `P.N`, `P`:
//!
//! 1. First `<munge(pod IP)>.<ns>.pod.<Z>` (the SVID's common name), then `<munge(pod IP)>.<ns>.pod`.
//! 2. Then, sorted byte-wise and de-duplicated, from every EndpointSlice in the pod's namespace
//!    with an endpoint whose target is this pod (by name), for its Service `S` in namespace `N`
//!    (skipped if `S` or `N` is empty or dotted): the four forms of `S`; and for each endpoint
//!    targeting the pod, if its hostname is non-empty and dot-free the four forms of
//!    `<hostname>.S`, otherwise the four forms of `<munge(address)>.S` for each address and, if the
//!    pod name is dot-free, the four forms of `<pod name>.S`.
//! 3. Finally every name SPIRE would reject is dropped (and reported), and duplicates are removed
//!    keeping the first occurrence, so the result is valid, trimmed and unique, in order.

use std::collections::BTreeSet;

use super::{EndpointSliceInfo, PodInfo};
use crate::id::{DnsError, validate_dns_name};

/// The pod's DNS names and the rejected candidates. `ip` is the pod's IP, `zone` the DNS zone.
pub(super) fn pod_dns_names(
    pod: &PodInfo,
    ip: &str,
    zone: &str,
    slices: &[EndpointSliceInfo],
) -> (Vec<String>, Vec<DnsError>) {
    let pod_ip = munge(ip);
    let first = [format!("{pod_ip}.{}.pod.{zone}", pod.namespace), format!("{pod_ip}.{}.pod", pod.namespace)];

    let mut service_names = BTreeSet::new();
    for slice in slices.iter().filter(|slice| slice.namespace == pod.namespace) {
        let (service, namespace) = (&slice.service_name, &slice.namespace);
        if !is_single_label(service) || !is_single_label(namespace) {
            continue;
        }
        let mut targeting = slice
            .endpoints
            .iter()
            .filter(|ep| ep.target_pod.as_deref() == Some(pod.name.as_str()))
            .peekable();
        if targeting.peek().is_none() {
            continue;
        }
        let mut add = |prefix: &str| {
            service_names.extend([
                format!("{prefix}.{namespace}.svc.{zone}"),
                format!("{prefix}.{namespace}.svc"),
                format!("{prefix}.{namespace}"),
                prefix.to_string(),
            ]);
        };
        add(service);
        for endpoint in targeting {
            match endpoint.hostname.as_deref().filter(|host| is_single_label(host)) {
                Some(host) => add(&format!("{host}.{service}")),
                None => {
                    for address in &endpoint.addresses {
                        add(&format!("{}.{service}", munge(address)));
                    }
                    if is_single_label(&pod.name) {
                        add(&format!("{}.{service}", pod.name));
                    }
                }
            }
        }
    }

    let mut names = Vec::new();
    let mut seen = BTreeSet::new();
    let mut rejected = Vec::new();
    for candidate in first.into_iter().chain(service_names) {
        match validate_dns_name(&candidate) {
            Ok(name) => {
                if seen.insert(name.clone()) {
                    names.push(name);
                }
            }
            Err(err) => rejected.push(err),
        }
    }
    (names, rejected)
}

/// An IP as a DNS label: IPv4 dots and IPv6 colons become `-`.
fn munge(ip: &str) -> String {
    ip.replace(['.', ':'], "-")
}

/// Non-empty and dot-free: usable as one label of a name the original would build.
fn is_single_label(value: &str) -> bool {
    !value.is_empty() && !value.contains('.')
}
