//! The scheduler's view of the cluster: nodes with what is requested on them, the pods
//! assigned (or assumed: chosen, binding in flight) to them, and indexes the affinity and
//! spread plugins need (pods by label, existing pods' anti-affinity terms by label).
//!
//! Assumed pods count against their node from the moment the scheduler picks it, so a
//! binding in flight can never let a second pod take the same room; the informer's view of
//! the bound pod replaces the assumption, a failed binding forgets it.
//!
//! Inter-pod terms are counted per topology domain as pods come and go (`Terms`): every
//! distinct required anti-affinity term of a placed pod with the domains its owners are
//! in, and, for each term a scheduling cycle asked about (`Cache::prepare`), the placed pods
//! it selects per domain. A cycle then reads counts instead of walking a workload's pods,
//! so PreFilter costs O(distinct terms), not O(pods of the group).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint};
use skiff_api::selector::{LabelSelector, Requirement};

use crate::resources::{Resources, pod_requests};

/// A compiled pod (anti-)affinity or spread term: which pods, counted over which domains.
/// Equal terms (the pods of one workload) share their counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    pub selector: LabelSelector,
    /// Namespaces whose pods the term looks at; `None`: all of them.
    pub namespaces: Option<Vec<String>>,
    pub topology_key: String,
}

/// Placed pods per topology domain (a node label's value); no zero entries.
pub type DomainCounts = FxHashMap<Box<str>, u32>;

impl Term {
    /// Compiles `t` as written in a pod of namespace `ns`. A selector that does not parse
    /// matches nothing (admission rejects those).
    pub fn compile(t: &PodAffinityTerm, ns: &str) -> Term {
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
        self.index_label().map(|(k, v)| format!("{k}={v}"))
    }

    /// A label (key, value) every pod the selector matches carries, if any.
    fn index_label(&self) -> Option<(&str, &str)> {
        self.selector.requirements.iter().find_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            Requirement::In(k, vs) if vs.len() == 1 => Some((k.as_str(), vs[0].as_str())),
            _ => None,
        })
    }
}

/// How many terms keep counts of the pods they select before all those counts are dropped
/// (to be rebuilt on demand): bounds what workloads long gone cost every pod change.
const MAX_TRACKED: usize = 4096;

/// One distinct term and its counts.
#[derive(Debug)]
struct TermEntry {
    term: Term,
    /// Placed pods whose required anti-affinity has this term, and their domains.
    owners: u32,
    owner_domains: DomainCounts,
    /// Placed pods the term selects, per domain: kept from the first cycle that asks.
    selected: Option<DomainCounts>,
}

/// The distinct terms, indexed by a label their selector requires.
#[derive(Debug, Default)]
struct Terms {
    entries: Vec<Option<TermEntry>>,
    ids: FxHashMap<Term, usize>,
    free: Vec<usize>,
    /// Label key -> value -> terms requiring it; terms requiring no single label.
    by_label: FxHashMap<String, FxHashMap<String, Vec<usize>>>,
    unindexed: Vec<usize>,
    /// Entries with `selected` counts.
    tracked: usize,
}

fn bump(counts: &mut DomainCounts, domain: &str, delta: i32) {
    match counts.get_mut(domain) {
        Some(n) if delta < 0 => {
            *n -= 1;
            if *n == 0 {
                counts.remove(domain);
            }
        }
        Some(n) => *n += 1,
        None if delta > 0 => {
            counts.insert(domain.into(), 1);
        }
        None => {}
    }
}

impl Terms {
    fn entry(&self, term: &Term) -> Option<&TermEntry> {
        self.ids.get(term).and_then(|i| self.entries[*i].as_ref())
    }

    /// The entry of `term`, made if new.
    fn intern(&mut self, term: &Term) -> usize {
        if let Some(&id) = self.ids.get(term) {
            return id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.entries.push(None);
            self.entries.len() - 1
        });
        match term.index_label() {
            Some((k, v)) => self
                .by_label
                .entry(k.to_string())
                .or_default()
                .entry(v.to_string())
                .or_default()
                .push(id),
            None => self.unindexed.push(id),
        }
        self.ids.insert(term.clone(), id);
        self.entries[id] = Some(TermEntry {
            term: term.clone(),
            owners: 0,
            owner_domains: DomainCounts::default(),
            selected: None,
        });
        id
    }

    /// Drops the entry `id` when nothing keeps it.
    fn release(&mut self, id: usize) {
        let Some(e) = self.entries[id].as_ref() else {
            return;
        };
        if e.owners > 0 || e.selected.is_some() {
            return;
        }
        let Some(e) = self.entries[id].take() else {
            return;
        };
        self.ids.remove(&e.term);
        self.free.push(id);
        match e.term.index_label() {
            Some((k, v)) => {
                if let Some(values) = self.by_label.get_mut(k) {
                    if let Some(ids) = values.get_mut(v) {
                        ids.retain(|x| *x != id);
                        if ids.is_empty() {
                            values.remove(v);
                        }
                    }
                    if values.is_empty() {
                        self.by_label.remove(k);
                    }
                }
            }
            None => self.unindexed.retain(|x| *x != id),
        }
    }

    /// The terms that may select a pod with `labels`.
    fn candidates<'a, 'l>(
        by_label: &'a FxHashMap<String, FxHashMap<String, Vec<usize>>>,
        unindexed: &'a [usize],
        labels: &'l BTreeMap<String, String>,
    ) -> impl Iterator<Item = usize> + use<'a, 'l> {
        labels
            .iter()
            .filter_map(|(k, v)| by_label.get(k)?.get(v))
            .flatten()
            .chain(unindexed)
            .copied()
    }

    /// Counts (`delta` 1) or uncounts (-1) `pod` in its domains on a node with
    /// `node_labels`: as an owner of its anti-affinity terms, and in every tracked term
    /// that selects it.
    fn count(&mut self, pod: &PodInfo, node_labels: &BTreeMap<String, String>, delta: i32) {
        for &id in &pod.anti_ids {
            if let Some(e) = self.entries[id].as_mut()
                && let Some(d) = node_labels.get(&e.term.topology_key)
            {
                bump(&mut e.owner_domains, d, delta);
            }
        }
        if self.tracked == 0 {
            return;
        }
        let entries = &mut self.entries;
        for id in Self::candidates(&self.by_label, &self.unindexed, &pod.labels) {
            if let Some(e) = entries[id].as_mut()
                && let Some(selected) = e.selected.as_mut()
                && e.term.matches(&pod.namespace, &pod.labels)
                && let Some(d) = node_labels.get(&e.term.topology_key)
            {
                bump(selected, d, delta);
            }
        }
    }

    /// Forgets every term's `selected` counts.
    fn untrack_all(&mut self) {
        for id in 0..self.entries.len() {
            if let Some(e) = self.entries[id].as_mut() {
                e.selected = None;
            }
            self.release(id);
        }
        self.tracked = 0;
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
    /// Their entries in the cache's term table, set when the cache takes the pod.
    pub(crate) anti_ids: Vec<usize>,
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
            .map(|terms| terms.iter().map(|t| Term::compile(t, namespace)).collect())
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
            anti_ids: Vec::new(),
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
    /// Distinct inter-pod terms with their per-domain counts.
    terms: Terms,
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
            let old = self.nodes[i].labels.clone();
            self.nodes[i].update(node);
            if self.nodes[i].labels != old {
                self.count_labels(&old, false);
                let labels = self.nodes[i].labels.clone();
                self.count_labels(&labels, true);
                // Its pods moved domains.
                for &slot in &self.nodes[i].pods {
                    if let Some(p) = self.pods[slot].as_ref() {
                        self.terms.count(p, &old, -1);
                        self.terms.count(p, &labels, 1);
                    }
                }
            }
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
        for &slot in &info.pods {
            if let Some(p) = self.pods[slot].as_ref() {
                self.terms.count(p, &info.labels, 1);
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
        // Its pods stay accounted until their deletion shows up, against no node (and so
        // in no domain).
        for slot in &gone.pods {
            if let Some(p) = self.pods[*slot].as_mut() {
                p.node_idx = None;
                self.terms.count(p, &gone.labels, -1);
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
        info.anti_ids = info
            .required_anti
            .iter()
            .map(|t| {
                let id = self.terms.intern(t);
                if let Some(e) = self.terms.entries[id].as_mut() {
                    e.owners += 1;
                }
                id
            })
            .collect();
        if let Some(i) = info.node_idx {
            self.terms.count(&info, &self.nodes[i].labels, 1);
        }
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
            self.terms.count(&info, &self.nodes[i].labels, -1);
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
        for &id in &info.anti_ids {
            if let Some(e) = self.terms.entries[id].as_mut() {
                e.owners -= 1;
            }
            self.terms.release(id);
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

    /// Existing pods' required anti-affinity terms that select a pod of `namespace` with
    /// `labels`: each distinct term once, with the domains its owners are in.
    pub fn existing_anti<'a, 'l>(
        &'a self,
        namespace: &'l str,
        labels: &'l BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a Term, &'a DomainCounts)> + use<'a, 'l> {
        Terms::candidates(&self.terms.by_label, &self.terms.unindexed, labels).filter_map(
            move |id| {
                let e = self.terms.entries[id].as_ref()?;
                (!e.owner_domains.is_empty() && e.term.matches(namespace, labels))
                    .then_some((&e.term, &e.owner_domains))
            },
        )
    }

    /// The placed pods `term` selects, per domain of its topology key: the kept counts
    /// when `prepare` tracked the term, else counted now.
    pub fn selected(&self, term: &Term) -> Cow<'_, DomainCounts> {
        match self.terms.entry(term).and_then(|e| e.selected.as_ref()) {
            Some(c) => Cow::Borrowed(c),
            None => Cow::Owned(self.count_selected(term)),
        }
    }

    fn count_selected(&self, term: &Term) -> DomainCounts {
        let mut counts = DomainCounts::default();
        for p in self.matching_pods(term) {
            if let Some(d) = self.domain_of(p, &term.topology_key) {
                bump(&mut counts, d, 1);
            }
        }
        counts
    }

    /// Keeps counts of the pods each of `terms` selects from now on (a scheduling cycle is
    /// about to ask for them).
    pub fn prepare<'t>(&mut self, terms: impl IntoIterator<Item = &'t Term>) {
        for term in terms {
            if self.terms.entry(term).is_some_and(|e| e.selected.is_some()) {
                continue;
            }
            if self.terms.tracked >= MAX_TRACKED {
                self.terms.untrack_all();
            }
            let counts = self.count_selected(term);
            let id = self.terms.intern(term);
            if let Some(e) = self.terms.entries[id].as_mut() {
                e.selected = Some(counts);
                self.terms.tracked += 1;
            }
        }
    }

    /// How many domains the node label `key` has.
    pub fn domain_count(&self, key: &str) -> usize {
        self.domains.get(key).map_or(0, FxHashMap::len)
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
