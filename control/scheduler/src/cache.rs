//! The scheduler's view of the cluster: nodes with what is requested on them, the pods
//! assigned (or assumed: chosen, binding in flight) to them, and indexes the affinity and
//! spread plugins need (pods by label, existing pods' anti-affinity terms by label).
//!
//! Assumed pods count against their node from the moment the scheduler picks it, so a
//! binding in flight can never let a second pod take the same room; the informer's view of
//! the bound pod replaces the assumption, a failed binding forgets it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint};
use skiff_api::selector::{LabelSelector, Requirement};

use crate::resources::{Resources, pod_requests};

/// A compiled pod (anti-)affinity term.
#[derive(Debug, Clone)]
pub struct Term {
    pub selector: LabelSelector,
    /// Namespaces whose pods the term looks at; `None`: all of them.
    pub namespaces: Option<Vec<String>>,
    pub topology_key: String,
    pub weight: i64,
}

impl Term {
    /// Compiles `t` as written in a pod of namespace `ns`. A selector that does not parse
    /// matches nothing (admission rejects those).
    pub fn compile(t: &PodAffinityTerm, ns: &str, weight: i64) -> Term {
        let selector = t
            .label_selector
            .as_ref()
            .and_then(|s| LabelSelector::from_k8s(s).ok())
            .unwrap_or(LabelSelector {
                requirements: vec![Requirement::Exists(String::new())],
            });
        let listed = t.namespaces.clone().unwrap_or_default();
        let namespaces = match &t.namespace_selector {
            // `namespaceSelector: {}` selects every namespace.
            Some(sel)
                if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty()) =>
            {
                None
            }
            _ if listed.is_empty() => Some(vec![ns.to_string()]),
            _ => Some(listed),
        };
        Term {
            selector,
            namespaces,
            topology_key: t.topology_key.clone(),
            weight,
        }
    }

    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|n| n.iter().any(|x| x == namespace))
            && self.selector.matches(labels)
    }

    /// A `key=value` the selector requires (for index lookups), if any.
    pub fn index_key(&self) -> Option<String> {
        self.selector.requirements.iter().find_map(|r| match r {
            Requirement::Equals(k, v) => Some(format!("{k}={v}")),
            Requirement::In(k, vs) if vs.len() == 1 => Some(format!("{k}={}", vs[0])),
            _ => None,
        })
    }
}

/// A pod as the scheduler tracks it once it has a node.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Shared with the cache's index of pods.
    pub key: Arc<str>,
    pub uid: Box<str>,
    /// Interned by the cache, as are `labels` (the pods of one workload share one map) and
    /// `node`: every pod is one of these.
    pub namespace: Arc<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub node: Arc<str>,
    pub requests: Resources,
    pub non_zero: Resources,
    /// Its required anti-affinity terms (other pods must keep away from it).
    pub required_anti: Vec<Term>,
    pub host_ports: Vec<(String, i32)>,
    pub assumed: bool,
    /// Position of its node in the cache (None while the node is unknown).
    pub node_idx: Option<usize>,
}

impl PodInfo {
    pub fn new(pod: &Pod, node: &str) -> PodInfo {
        let m = &pod.metadata;
        let namespace = m.namespace.as_deref().unwrap_or("default");
        let no_spec = k8s_openapi::api::core::v1::PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&no_spec);
        let required_anti = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|terms| {
                terms
                    .iter()
                    .map(|t| Term::compile(t, namespace, 1))
                    .collect()
            })
            .unwrap_or_default();
        PodInfo {
            key: format!("{namespace}/{}", m.name.as_deref().unwrap_or_default()).into(),
            uid: m.uid.as_deref().unwrap_or_default().into(),
            namespace: namespace.into(),
            labels: Arc::new(m.labels.clone().unwrap_or_default()),
            node: node.into(),
            requests: pod_requests(spec, false),
            non_zero: pod_requests(spec, true),
            required_anti,
            host_ports: host_ports(spec),
            assumed: false,
            node_idx: None,
        }
    }
}

/// The host ports a pod's containers claim, as `(protocol, port)`.
pub fn host_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<(String, i32)> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port
                .filter(|h| *h > 0)
                .map(|h| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), h))
        })
        .collect()
}

/// A node and what is on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    /// Slots of the pods on it.
    pub pods: FxHashSet<usize>,
    pub host_ports: Vec<(String, i32)>,
}

impl NodeInfo {
    fn new(node: &Node) -> NodeInfo {
        let mut n = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            allocatable: Resources::default(),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: FxHashSet::default(),
            host_ports: Vec::new(),
        };
        n.update(node);
        n
    }

    fn update(&mut self, node: &Node) {
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let status = node.status.as_ref();
        self.allocatable = Resources::from_list(
            status
                .and_then(|s| s.allocatable.as_ref())
                .or(status.and_then(|s| s.capacity.as_ref())),
        );
    }
}

/// Nodes, placed pods and indexes. Guarded by one lock in the scheduler. Pods live in
/// slots and nodes in a vector, so the per-pod precomputation walks integers and fast
/// hashes instead of string keys.
#[derive(Default)]
pub struct Cache {
    /// Nodes in a stable order (sampling walks it from a rotating start).
    nodes: Vec<NodeInfo>,
    /// Node name -> position in `nodes`.
    index: FxHashMap<String, usize>,
    /// Label key -> value -> how many nodes carry it (topology domains).
    domains: FxHashMap<String, FxHashMap<String, usize>>,
    /// Placed pods by slot; `slots` maps `namespace/name` to its slot.
    pods: Vec<Option<PodInfo>>,
    slots: FxHashMap<Arc<str>, usize>,
    free: Vec<usize>,
    /// Slots of pods whose node the cache does not know (yet), by node name.
    waiting: FxHashMap<Arc<str>, FxHashSet<usize>>,
    /// `key=value` -> slots of pods carrying that label.
    by_label: FxHashMap<String, FxHashSet<usize>>,
    /// Existing pods' required anti-affinity terms, as (slot, term index): by a
    /// `key=value` their selector requires, or (no such requirement) in `anti_any`.
    anti_by_label: FxHashMap<String, Vec<(usize, usize)>>,
    anti_any: Vec<(usize, usize)>,
    /// Placed pods' label maps, one per distinct map.
    interned: FxHashSet<Arc<BTreeMap<String, String>>>,
    /// Placed pods' namespaces and node names, one of each.
    names: FxHashSet<Arc<str>>,
    /// Bumped on every change (lets tests and callers notice progress).
    pub generation: u64,
}

impl Cache {
    /// Every node, in sampling order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The values of the node label `key` (the domains of that topology key).
    pub fn domains(&self, key: &str) -> impl Iterator<Item = &str> {
        self.domains
            .get(key)
            .into_iter()
            .flat_map(|m| m.keys().map(String::as_str))
    }

    fn count_labels(&mut self, labels: &BTreeMap<String, String>, add: bool) {
        for (k, v) in labels {
            let per = self.domains.entry(k.clone()).or_default();
            if add {
                *per.entry(v.clone()).or_default() += 1;
            } else if let Some(n) = per.get_mut(v) {
                *n -= 1;
                if *n == 0 {
                    per.remove(v);
                }
            }
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    pub fn upsert_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.generation += 1;
        if let Some(&i) = self.index.get(&name) {
            let old = std::mem::take(&mut self.nodes[i].labels);
            self.count_labels(&old, false);
            self.nodes[i].update(node);
            let labels = self.nodes[i].labels.clone();
            self.count_labels(&labels, true);
            return;
        }
        let i = self.nodes.len();
        let mut info = NodeInfo::new(node);
        // Pods seen before their node count from the start.
        for slot in self.waiting.remove(name.as_str()).unwrap_or_default() {
            if let Some(p) = self.pods[slot].as_mut() {
                info.requested.add(&p.requests);
                info.non_zero_requested.add(&p.non_zero);
                info.pods.insert(slot);
                info.host_ports.extend(p.host_ports.iter().cloned());
                p.node_idx = Some(i);
            }
        }
        let labels = info.labels.clone();
        self.index.insert(name, i);
        self.nodes.push(info);
        self.count_labels(&labels, true);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.generation += 1;
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let gone = self.nodes.swap_remove(i);
        self.count_labels(&gone.labels, false);
        // Its pods stay accounted until their deletion shows up, against no node.
        for slot in &gone.pods {
            if let Some(p) = self.pods[*slot].as_mut() {
                p.node_idx = None;
            }
        }
        if !gone.pods.is_empty() {
            self.waiting
                .insert(gone.name.as_str().into(), gone.pods.clone());
        }
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
            let slots: Vec<usize> = moved.pods.iter().copied().collect();
            for slot in slots {
                if let Some(p) = self.pods[slot].as_mut() {
                    p.node_idx = Some(i);
                }
            }
        }
    }

    /// The placed (or assumed) pod `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodInfo> {
        self.slots.get(key).and_then(|s| self.pods[*s].as_ref())
    }

    pub fn pod_count(&self) -> usize {
        self.slots.len()
    }

    /// The shared copy of a namespace or node name.
    fn name(&mut self, name: &Arc<str>) -> Arc<str> {
        match self.names.get(name) {
            Some(same) => same.clone(),
            None => {
                self.names.insert(name.clone());
                name.clone()
            }
        }
    }

    /// Adds or replaces a placed pod (an assumed one included).
    pub fn add_pod(&mut self, mut info: PodInfo) {
        self.remove_pod(&info.key.clone());
        self.generation += 1;
        match self.interned.get(&*info.labels) {
            Some(same) => info.labels = same.clone(),
            None => {
                self.interned.insert(info.labels.clone());
            }
        }
        info.namespace = self.name(&info.namespace);
        info.node = self.name(&info.node);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.pods.push(None);
                self.pods.len() - 1
            }
        };
        info.node_idx = self.index.get(&*info.node).copied();
        match info.node_idx {
            Some(i) => {
                let n = &mut self.nodes[i];
                n.requested.add(&info.requests);
                n.non_zero_requested.add(&info.non_zero);
                n.pods.insert(slot);
                n.host_ports.extend(info.host_ports.iter().cloned());
            }
            None => {
                self.waiting
                    .entry(info.node.clone())
                    .or_default()
                    .insert(slot);
            }
        }
        for (k, v) in info.labels.iter() {
            self.by_label
                .entry(format!("{k}={v}"))
                .or_default()
                .insert(slot);
        }
        for (i, t) in info.required_anti.iter().enumerate() {
            match t.index_key() {
                Some(k) => self.anti_by_label.entry(k).or_default().push((slot, i)),
                None => self.anti_any.push((slot, i)),
            }
        }
        self.slots.insert(info.key.clone(), slot);
        self.pods[slot] = Some(info);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<PodInfo> {
        let slot = self.slots.remove(key)?;
        let info = self.pods[slot].take()?;
        self.free.push(slot);
        self.generation += 1;
        // Held by the interner and this pod alone: the last pod with these labels.
        if Arc::strong_count(&info.labels) <= 2 {
            self.interned.remove(&*info.labels);
        }
        if info.node_idx.is_none()
            && let Some(w) = self.waiting.get_mut(&info.node)
        {
            w.remove(&slot);
            if w.is_empty() {
                self.waiting.remove(&info.node);
            }
        }
        if let Some(i) = info.node_idx {
            let n = &mut self.nodes[i];
            n.requested.sub(&info.requests);
            n.non_zero_requested.sub(&info.non_zero);
            n.pods.remove(&slot);
            for hp in &info.host_ports {
                if let Some(i) = n.host_ports.iter().position(|x| x == hp) {
                    n.host_ports.swap_remove(i);
                }
            }
        }
        for (k, v) in info.labels.iter() {
            let lk = format!("{k}={v}");
            if let Some(set) = self.by_label.get_mut(&lk) {
                set.remove(&slot);
                if set.is_empty() {
                    self.by_label.remove(&lk);
                }
            }
        }
        for t in &info.required_anti {
            match t.index_key() {
                Some(k) => {
                    if let Some(v) = self.anti_by_label.get_mut(&k) {
                        v.retain(|(p, _)| *p != slot);
                        if v.is_empty() {
                            self.anti_by_label.remove(&k);
                        }
                    }
                }
                None => self.anti_any.retain(|(p, _)| *p != slot),
            }
        }
        Some(info)
    }

    /// Pods that `term` selects (candidates from the label index when it can be used).
    pub fn matching_pods<'a>(
        &'a self,
        term: &'a Term,
    ) -> Box<dyn Iterator<Item = &'a PodInfo> + 'a> {
        match term.index_key() {
            Some(k) => Box::new(
                self.by_label
                    .get(&k)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| self.pods[*s].as_ref())
                    .filter(move |p| term.matches(&p.namespace, &p.labels)),
            ),
            None => Box::new(
                self.pods
                    .iter()
                    .flatten()
                    .filter(move |p| term.matches(&p.namespace, &p.labels)),
            ),
        }
    }

    /// Existing pods' required anti-affinity terms that may select a pod with `labels`:
    /// (pod, term).
    pub fn anti_terms_for<'a, 'l>(
        &'a self,
        labels: &'l BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a PodInfo, &'a Term)> + use<'a, 'l> {
        labels
            .iter()
            .flat_map(move |(k, v)| {
                self.anti_by_label
                    .get(&format!("{k}={v}"))
                    .into_iter()
                    .flatten()
            })
            .chain(self.anti_any.iter())
            .filter_map(move |(slot, i)| {
                let p = self.pods[*slot].as_ref()?;
                Some((p, p.required_anti.get(*i)?))
            })
    }

    /// The topology value of the node a pod is on, for `key`.
    pub fn domain_of(&self, pod: &PodInfo, key: &str) -> Option<&str> {
        pod.node_idx
            .and_then(|i| self.nodes[i].labels.get(key))
            .map(String::as_str)
    }

    /// The topology value of `node` for `key`.
    pub fn domain(&self, node: &str, key: &str) -> Option<&str> {
        self.node(node)
            .and_then(|n| n.labels.get(key))
            .map(String::as_str)
    }
}

/// Shared handle to the cache.
pub type SharedCache = Arc<parking_lot::RwLock<Cache>>;
