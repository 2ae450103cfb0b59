//! The scheduler's view of the cluster: nodes with what is requested on them, the pods
//! assigned (or assumed: chosen, binding in flight) to them, and indexes the affinity and
//! spread plugins need (pods by label, existing pods' anti-affinity terms by label).
//!
//! Assumed pods count against their node from the moment the scheduler picks it, so a
//! binding in flight can never let a second pod take the same room; the informer's view of
//! the bound pod replaces the assumption, a failed binding forgets it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

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
    pub key: String,
    pub uid: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node: String,
    pub requests: Resources,
    pub non_zero: Resources,
    /// Its required anti-affinity terms (other pods must keep away from it).
    pub required_anti: Vec<Term>,
    pub host_ports: Vec<(String, i32)>,
    pub assumed: bool,
}

impl PodInfo {
    pub fn new(pod: &Pod, node: &str) -> PodInfo {
        let m = &pod.metadata;
        let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
        let spec = pod.spec.clone().unwrap_or_default();
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
                    .map(|t| Term::compile(t, &namespace, 1))
                    .collect()
            })
            .unwrap_or_default();
        PodInfo {
            key: format!("{namespace}/{}", m.name.as_deref().unwrap_or_default()),
            uid: m.uid.clone().unwrap_or_default(),
            namespace,
            labels: m.labels.clone().unwrap_or_default(),
            node: node.to_string(),
            requests: pod_requests(&spec, false),
            non_zero: pod_requests(&spec, true),
            required_anti,
            host_ports: host_ports(&spec),
            assumed: false,
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
    pub pods: HashSet<String>,
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
            pods: HashSet::new(),
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

/// Nodes, placed pods and indexes. Guarded by one lock in the scheduler.
#[derive(Default)]
pub struct Cache {
    pub nodes: HashMap<String, NodeInfo>,
    /// Node names in a stable order for sampling.
    pub order: Vec<String>,
    pub pods: HashMap<String, PodInfo>,
    /// `key=value` -> pods carrying that label.
    pub by_label: HashMap<String, HashSet<String>>,
    /// Existing pods' required anti-affinity terms: by a `key=value` their selector
    /// requires, or (no such requirement) in `anti_any`. Values are (pod key, term index).
    pub anti_by_label: HashMap<String, Vec<(String, usize)>>,
    pub anti_any: Vec<(String, usize)>,
    /// Bumped on every change (lets tests and callers notice progress).
    pub generation: u64,
}

impl Cache {
    pub fn upsert_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.generation += 1;
        match self.nodes.get_mut(&name) {
            Some(n) => n.update(node),
            None => {
                self.order.push(name.clone());
                self.nodes.insert(name, NodeInfo::new(node));
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        self.generation += 1;
        if self.nodes.remove(name).is_some() {
            self.order.retain(|n| n != name);
        }
        // Its pods stay accounted until their deletion shows up; they no longer match a
        // node, so nothing is scheduled against them.
    }

    /// Adds or replaces a placed pod (an assumed one included).
    pub fn add_pod(&mut self, info: PodInfo) {
        self.remove_pod(&info.key.clone());
        self.generation += 1;
        if let Some(n) = self.nodes.get_mut(&info.node) {
            n.requested.add(&info.requests);
            n.non_zero_requested.add(&info.non_zero);
            n.pods.insert(info.key.clone());
            n.host_ports.extend(info.host_ports.iter().cloned());
        }
        for (k, v) in &info.labels {
            self.by_label
                .entry(format!("{k}={v}"))
                .or_default()
                .insert(info.key.clone());
        }
        for (i, t) in info.required_anti.iter().enumerate() {
            match t.index_key() {
                Some(k) => self
                    .anti_by_label
                    .entry(k)
                    .or_default()
                    .push((info.key.clone(), i)),
                None => self.anti_any.push((info.key.clone(), i)),
            }
        }
        self.pods.insert(info.key.clone(), info);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<PodInfo> {
        let info = self.pods.remove(key)?;
        self.generation += 1;
        if let Some(n) = self.nodes.get_mut(&info.node) {
            n.requested.sub(&info.requests);
            n.non_zero_requested.sub(&info.non_zero);
            n.pods.remove(key);
            for hp in &info.host_ports {
                if let Some(i) = n.host_ports.iter().position(|x| x == hp) {
                    n.host_ports.swap_remove(i);
                }
            }
        }
        for (k, v) in &info.labels {
            let lk = format!("{k}={v}");
            if let Some(set) = self.by_label.get_mut(&lk) {
                set.remove(key);
                if set.is_empty() {
                    self.by_label.remove(&lk);
                }
            }
        }
        for t in &info.required_anti {
            match t.index_key() {
                Some(k) => {
                    if let Some(v) = self.anti_by_label.get_mut(&k) {
                        v.retain(|(p, _)| p != key);
                        if v.is_empty() {
                            self.anti_by_label.remove(&k);
                        }
                    }
                }
                None => self.anti_any.retain(|(p, _)| p != key),
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
                    .filter_map(|p| self.pods.get(p))
                    .filter(move |p| term.matches(&p.namespace, &p.labels)),
            ),
            None => Box::new(
                self.pods
                    .values()
                    .filter(move |p| term.matches(&p.namespace, &p.labels)),
            ),
        }
    }

    /// The topology value of `node` for `key`.
    pub fn domain(&self, node: &str, key: &str) -> Option<&str> {
        self.nodes
            .get(node)
            .and_then(|n| n.labels.get(key))
            .map(String::as_str)
    }
}

/// Shared handle to the cache.
pub type SharedCache = Arc<parking_lot::RwLock<Cache>>;
