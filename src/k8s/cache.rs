//! The registrar's shared view of the cluster: stripped pods (indexed by node), nodes and
//! EndpointSlices. Watchers are the only writers; shards read it when they compute desired state.
//!
//! # Guarantees
//! * A key is present exactly when the last event the watcher applied said the object exists;
//!   after a relist, objects missing from the new list are removed (`replace_*`).
//! * A relist is one step for readers (the new state is swapped in under one write lock).
//! * Readers get owned copies, never references held across awaits.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, RwLock},
};

use crate::identity::{EndpointSliceInfo, NodeInfo, PodInfo};

type PodKey = (String, String);

#[derive(Default)]
struct Inner {
    pods: HashMap<PodKey, PodInfo>,
    pods_by_node: HashMap<String, BTreeSet<PodKey>>,
    nodes: BTreeMap<String, NodeInfo>,
    /// (namespace, slice name) → slice
    slices: HashMap<(String, String), EndpointSliceInfo>,
}

impl Inner {
    /// Removes a pod and its index entry (dropping empty per-node sets, so deleted nodes leave
    /// nothing behind); returns the node it was on.
    fn detach_pod(&mut self, key: &PodKey) -> Option<String> {
        let node = self.pods.remove(key)?.node_name?;
        if let Some(set) = self.pods_by_node.get_mut(&node) {
            set.remove(key);
            if set.is_empty() {
                self.pods_by_node.remove(&node);
            }
        }
        Some(node)
    }
}

/// Cheap to clone; all clones share one cache.
#[derive(Clone, Default)]
pub struct ClusterCache {
    inner: Arc<RwLock<Inner>>,
}

impl ClusterCache {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces a pod; returns the nodes whose desired state may have changed
    /// (the old and the new node).
    pub fn upsert_pod(&self, pod: PodInfo) -> BTreeSet<String> {
        let mut inner = self.write();
        let key = (pod.namespace.clone(), pod.name.clone());
        let mut touched: BTreeSet<String> = inner.detach_pod(&key).into_iter().collect();
        if let Some(n) = &pod.node_name {
            inner.pods_by_node.entry(n.clone()).or_default().insert(key.clone());
            touched.insert(n.clone());
        }
        inner.pods.insert(key, pod);
        touched
    }

    /// Removes a pod; returns its node if it had one.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> BTreeSet<String> {
        let key = (namespace.to_string(), name.to_string());
        self.write().detach_pod(&key).into_iter().collect()
    }

    /// Replaces all pods after a (re)list, in one step: the new state is built off-lock and
    /// swapped in under one write lock, so a reader sees the old pods or the new ones, never a
    /// half-filled cache (which would make a shard delete live pods' entries). Returns the nodes
    /// whose pods changed; a relist that changes nothing touches no node.
    pub fn replace_pods(&self, pods: Vec<PodInfo>) -> BTreeSet<String> {
        let mut new_pods: HashMap<PodKey, PodInfo> = HashMap::with_capacity(pods.len());
        let mut by_node: HashMap<String, BTreeSet<PodKey>> = HashMap::new();
        for p in pods {
            let key = (p.namespace.clone(), p.name.clone());
            if let Some(n) = &p.node_name {
                by_node.entry(n.clone()).or_default().insert(key.clone());
            }
            new_pods.insert(key, p);
        }
        let mut inner = self.write();
        let mut touched = BTreeSet::new();
        let nodes: BTreeSet<&String> = inner.pods_by_node.keys().chain(by_node.keys()).collect();
        for node in nodes {
            let (old, new) = (inner.pods_by_node.get(node), by_node.get(node));
            let same = old == new
                && old.is_none_or(|keys| keys.iter().all(|k| inner.pods.get(k) == new_pods.get(k)));
            if !same {
                touched.insert(node.clone());
            }
        }
        inner.pods = new_pods;
        inner.pods_by_node = by_node;
        touched
    }

    /// Every pod (webhook mode's one cluster-wide shard).
    pub fn all_pods(&self) -> Vec<PodInfo> {
        self.read().pods.values().cloned().collect()
    }

    /// The pod `namespace`/`name`, if the cache has it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.read().pods.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub fn pods_on(&self, node: &str) -> Vec<PodInfo> {
        let inner = self.read();
        inner
            .pods_by_node
            .get(node)
            .map(|keys| keys.iter().filter_map(|k| inner.pods.get(k).cloned()).collect())
            .unwrap_or_default()
    }

    pub fn upsert_node(&self, node: NodeInfo) {
        self.write().nodes.insert(node.name.clone(), node);
    }

    pub fn remove_node(&self, name: &str) {
        self.write().nodes.remove(name);
    }

    /// Replaces all nodes after a (re)list; returns the names of nodes before and after.
    pub fn replace_nodes(&self, nodes: Vec<NodeInfo>) -> BTreeSet<String> {
        let mut inner = self.write();
        let mut touched: BTreeSet<String> = inner.nodes.keys().cloned().collect();
        inner.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        touched.extend(inner.nodes.keys().cloned());
        touched
    }

    pub fn node(&self, name: &str) -> Option<NodeInfo> {
        self.read().nodes.get(name).cloned()
    }

    pub fn node_names(&self) -> BTreeSet<String> {
        self.read().nodes.keys().cloned().collect()
    }

    pub fn upsert_slice(&self, name: &str, slice: EndpointSliceInfo) {
        self.write().slices.insert((slice.namespace.clone(), name.to_string()), slice);
    }

    pub fn remove_slice(&self, namespace: &str, name: &str) {
        self.write().slices.remove(&(namespace.to_string(), name.to_string()));
    }

    pub fn replace_slices(&self, slices: Vec<(String, EndpointSliceInfo)>) {
        self.write().slices = slices.into_iter().map(|(name, s)| ((s.namespace.clone(), name), s)).collect();
    }

    /// Slices of one namespace (DNS names only ever come from the pod's own namespace).
    pub fn slices_in(&self, namespace: &str) -> Vec<EndpointSliceInfo> {
        self.read().slices.iter().filter(|((ns, _), _)| ns == namespace).map(|(_, s)| s.clone()).collect()
    }

    /// Nodes that run at least one pod in `namespace`.
    pub fn nodes_with_pods_in(&self, namespace: &str) -> BTreeSet<String> {
        self.read()
            .pods
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|(_, p)| p.node_name.clone())
            .collect()
    }

    pub fn pod_count(&self) -> usize {
        self.read().pods.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, node: Option<&str>) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            node_name: node.map(Into::into),
            service_account: "default".into(),
            ..Default::default()
        }
    }

    fn names(pods: Vec<PodInfo>) -> Vec<String> {
        let mut v: Vec<String> = pods.into_iter().map(|p| p.name).collect();
        v.sort();
        v
    }

    #[test]
    fn pods_are_indexed_by_node_and_moves_touch_both_nodes() {
        let c = ClusterCache::default();
        assert_eq!(c.upsert_pod(pod("a", "p1", None)), BTreeSet::new(), "unscheduled pods touch no node");
        assert_eq!(c.upsert_pod(pod("a", "p1", Some("n1"))), BTreeSet::from(["n1".to_string()]));
        c.upsert_pod(pod("a", "p2", Some("n1")));
        assert_eq!(names(c.pods_on("n1")), ["p1", "p2"]);
        let touched = c.upsert_pod(pod("a", "p1", Some("n2")));
        assert_eq!(touched, BTreeSet::from(["n1".to_string(), "n2".to_string()]));
        assert_eq!(names(c.pods_on("n1")), ["p2"]);
        assert_eq!(c.remove_pod("a", "p2"), BTreeSet::from(["n1".to_string()]));
        assert!(c.pods_on("n1").is_empty());
        assert!(!c.read().pods_by_node.contains_key("n1"), "empty per-node sets are dropped");
        assert_eq!(c.remove_pod("a", "gone"), BTreeSet::new());
        assert_eq!(c.pod_count(), 1);
    }

    #[test]
    fn a_relist_replaces_everything_and_reports_every_affected_node() {
        let c = ClusterCache::default();
        c.upsert_pod(pod("a", "old", Some("n1")));
        let touched = c.replace_pods(vec![pod("a", "new", Some("n2"))]);
        assert_eq!(touched, BTreeSet::from(["n1".to_string(), "n2".to_string()]));
        assert!(c.pods_on("n1").is_empty(), "a pod missing from the relist is gone");
        assert_eq!(names(c.pods_on("n2")), ["new"]);
        c.upsert_node(NodeInfo { name: "n1".into(), uid: "u1".into() });
        let touched = c.replace_nodes(vec![NodeInfo { name: "n2".into(), uid: "u2".into() }]);
        assert_eq!(touched, BTreeSet::from(["n1".to_string(), "n2".to_string()]));
        assert!(c.node("n1").is_none());
        assert_eq!(c.node_names(), BTreeSet::from(["n2".to_string()]));
        assert_eq!(c.nodes_with_pods_in("a"), BTreeSet::from(["n2".to_string()]));
    }

    #[test]
    fn a_relist_that_changes_nothing_touches_nothing_and_one_change_touches_its_node() {
        let c = ClusterCache::default();
        let pods = vec![pod("a", "p1", Some("n1")), pod("a", "p2", Some("n2")), pod("a", "p3", None)];
        c.replace_pods(pods.clone());
        assert_eq!(c.replace_pods(pods.clone()), BTreeSet::new());
        let mut changed = pods;
        changed[1].labels.insert("l".into(), "v".into());
        assert_eq!(c.replace_pods(changed), BTreeSet::from(["n2".to_string()]));
    }

    #[test]
    fn readers_never_see_a_half_done_relist() {
        let c = ClusterCache::default();
        let pods: Vec<PodInfo> = (0..200).map(|i| pod("a", &format!("p{i}"), Some("n1"))).collect();
        c.replace_pods(pods.clone());
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    assert_eq!(c.pods_on("n1").len(), 200, "a reader saw a partial cache");
                }
            })
        };
        for _ in 0..200 {
            c.replace_pods(pods.clone());
        }
        reader.join().unwrap();
    }
}
