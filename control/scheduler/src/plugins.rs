//! kube-scheduler's default filter and score plugins over the cache.
//!
//! `Cycle::new` is PreFilter: it compiles what the pod asks for and gathers, once per pod,
//! everything the per-node checks need (domains holding pods its anti-affinity rejects,
//! domains where existing pods' anti-affinity rejects it, pod counts per spread domain),
//! reading the counts the cache keeps per term (`PodTerms` names the terms, for
//! `Cache::prepare`). `Cycle::filter` then costs a few lookups per node, so filtering runs
//! in parallel over a sample of nodes as kube-scheduler does.
//!
//! Filters, in kube-scheduler's order (the first failing one names the node's reason):
//! NodeUnschedulable, NodeName, TaintToleration, NodeAffinity (nodeSelector and required
//! affinity), NodePorts, NodeResourcesFit, PodTopologySpread, InterPodAffinity.
//! Scores with the default weights: NodeResourcesFit (least allocated) 1,
//! NodeResourcesBalancedAllocation 1, NodeAffinity (preferred) 2, TaintToleration
//! (PreferNoSchedule) 3, InterPodAffinity (preferred) 2, PodTopologySpread (ScheduleAnyway)
//! 2; each normalized to 0..=100 first.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashSet as HashSet;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use skiff_api::selector::LabelSelector;

use crate::cache::{Cache, DomainCounts, NodeInfo, Term, host_ports};
use crate::resources::{Resources, pod_requests};

pub const MAX_NODE_SCORE: i64 = 100;

/// Why a node does not fit (kube-scheduler's wording; counted per reason in the message).
pub mod reason {
    pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
    pub const NODE_NAME: &str = "node(s) didn't match the requested node name";
    pub const NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
    pub const NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
    pub const TOO_MANY_PODS: &str = "Too many pods";
    pub const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
    pub const SPREAD_MISSING_LABEL: &str =
        "node(s) didn't match pod topology spread constraints (missing required label)";
    pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
    pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
    pub const EXISTING_ANTI_AFFINITY: &str =
        "node(s) didn't satisfy existing pods anti-affinity rules";
}

/// A compiled required node selector term (ORed with its siblings).
#[derive(Debug, Clone)]
struct NodeTerm {
    labels: Vec<NodeSelectorRequirement>,
    fields: Vec<NodeSelectorRequirement>,
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

impl NodeTerm {
    fn compile(t: &NodeSelectorTerm) -> NodeTerm {
        NodeTerm {
            labels: t.match_expressions.clone().unwrap_or_default(),
            fields: t.match_fields.clone().unwrap_or_default(),
        }
    }

    fn matches(&self, node: &NodeInfo) -> bool {
        // A term with no requirement matches no node (as in Kubernetes).
        if self.labels.is_empty() && self.fields.is_empty() {
            return false;
        }
        self.labels
            .iter()
            .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
            && self.fields.iter().all(|r| {
                r.key == "metadata.name" && requirement_matches(r, Some(node.name.as_str()))
            })
    }
}

/// A compiled topology spread constraint.
#[derive(Debug)]
struct SpreadTerm {
    max_skew: i64,
    hard: bool,
    /// Which pods it counts over which key; `None`: no label selector, no pods.
    term: Option<Term>,
    key: String,
}

/// A topology spread constraint with its counts.
#[derive(Debug)]
struct Spread<'c> {
    max_skew: i64,
    key: String,
    hard: bool,
    self_match: i64,
    /// Matching pods per domain.
    counts: Cow<'c, DomainCounts>,
    /// The smallest count over the domains of the nodes that pass the pod's node affinity.
    min: i64,
}

/// The inter-pod terms of a pod (required and preferred pod affinity and anti-affinity,
/// topology spread, kube-scheduler's default spread for controlled pods), compiled once.
#[derive(Debug, Default)]
pub struct PodTerms {
    anti: Vec<Term>,
    affinity: Vec<Term>,
    /// Weight (negative for anti-affinity) and term.
    preferred: Vec<(i64, Term)>,
    spreads: Vec<SpreadTerm>,
}

impl PodTerms {
    pub fn compile(pod: &Pod) -> PodTerms {
        let no_spec = PodSpec::default();
        let spec: &PodSpec = pod.spec.as_ref().unwrap_or(&no_spec);
        let m = &pod.metadata;
        let ns = m.namespace.as_deref().unwrap_or("default");
        let affinity = spec.affinity.as_ref();
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let aff = affinity.and_then(|a| a.pod_affinity.as_ref());
        let required = |terms: Option<&Vec<k8s_openapi::api::core::v1::PodAffinityTerm>>| {
            terms
                .into_iter()
                .flatten()
                .map(|t| Term::compile(t, ns))
                .collect::<Vec<_>>()
        };
        let preferred =
            |list: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>, sign: i64| {
                list.into_iter()
                    .flatten()
                    .map(move |w| {
                        (
                            w.weight as i64 * sign,
                            Term::compile(&w.pod_affinity_term, ns),
                        )
                    })
                    .collect::<Vec<_>>()
            };
        let mut terms = PodTerms {
            anti: required(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            affinity: required(aff.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred: preferred(
                aff.and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
                1,
            ),
            spreads: Vec::new(),
        };
        terms.preferred.extend(preferred(
            anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            -1,
        ));
        let labels = m.labels.as_ref();
        let owned = m
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true));
        let defaults;
        let constraints = match &spec.topology_spread_constraints {
            Some(c) if !c.is_empty() => c,
            // kube-scheduler's system defaults for pods a controller owns: spread softly
            // over hosts (maxSkew 3) and zones (maxSkew 5), selecting the pod's siblings
            // (Skiff approximates the owners' selectors with the pod's own labels).
            _ if owned && labels.is_some_and(|l| !l.is_empty()) => {
                let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: labels.cloned(),
                    ..Default::default()
                };
                defaults = [
                    ("kubernetes.io/hostname", 3),
                    ("topology.kubernetes.io/zone", 5),
                ]
                .map(|(key, skew)| {
                    k8s_openapi::api::core::v1::TopologySpreadConstraint {
                        max_skew: skew,
                        topology_key: key.into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(selector.clone()),
                        ..Default::default()
                    }
                });
                &defaults.to_vec()
            }
            _ => return terms,
        };
        for c in constraints {
            let term = c.label_selector.as_ref().map(|s| Term {
                selector: LabelSelector::from_k8s(s).unwrap_or_default(),
                namespaces: Some(vec![ns.to_string()]),
                topology_key: c.topology_key.clone(),
            });
            terms.spreads.push(SpreadTerm {
                max_skew: c.max_skew.max(1) as i64,
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                term,
                key: c.topology_key.clone(),
            });
        }
        terms
    }

    /// Every term whose selected pods a cycle counts per domain.
    pub fn terms(&self) -> impl Iterator<Item = &Term> {
        self.anti
            .iter()
            .chain(&self.affinity)
            .chain(self.preferred.iter().map(|(_, t)| t))
            .chain(self.spreads.iter().filter_map(|s| s.term.as_ref()))
    }
}

/// One pod's scheduling cycle: what it asks for, and the per-pod precomputation.
pub struct Cycle<'c> {
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub non_zero: Resources,
    node_name: Option<String>,
    node_selector: BTreeMap<String, String>,
    required_affinity: Option<Vec<NodeTerm>>,
    preferred_affinity: Vec<(i64, NodeTerm)>,
    tolerations: Vec<Toleration>,
    host_ports: Vec<(String, i32)>,
    /// Incoming pod's required anti-affinity: per term (topology key), the domains holding
    /// matching pods.
    anti_domains: Vec<(String, Cow<'c, DomainCounts>)>,
    /// Existing pods' anti-affinity that rejects it: per term (topology key), the domains
    /// its owners are in.
    existing_anti: Vec<(&'c str, &'c DomainCounts)>,
    /// Required affinity: per term, the domains holding matching pods; `None` when no pod
    /// matches anywhere and the pod matches its own term (the first pod of a group).
    affinity_domains: Vec<(String, Option<Cow<'c, DomainCounts>>)>,
    /// Preferred (anti-)affinity: topology key, weight, matching pods per domain.
    preferred_pods: Vec<(String, i64, Cow<'c, DomainCounts>)>,
    spreads: Vec<Spread<'c>>,
}

/// A node's topology domains as the inter-pod (anti-)affinity filters ask for them. The
/// terms mostly share one key (kubernetes.io/hostname): the last one looked up is kept.
struct Domains<'n, 'k> {
    node: &'n NodeInfo,
    last: Option<(&'k str, Option<&'n str>)>,
}

impl<'n, 'k> Domains<'n, 'k> {
    /// Whether the node's domain for `key` is one of `domains`.
    fn within(&mut self, key: &'k str, domains: &DomainCounts) -> bool {
        let value = match self.last {
            Some((k, v)) if k == key => v,
            _ => {
                let v = self.node.labels.get(key).map(String::as_str);
                self.last = Some((key, v));
                v
            }
        };
        value.is_some_and(|d| domains.contains_key(d))
    }
}

/// Why a node does not fit a pod: one reason, or several (resources).
#[derive(Debug)]
pub enum Unfit {
    One(Cow<'static, str>),
    Many(Vec<Cow<'static, str>>),
}

/// Whether `tolerations` tolerate `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations
        .iter()
        .any(|t| skiff_api::selector::tolerates(t, taint))
}

impl<'c> Cycle<'c> {
    /// PreFilter: compiles `pod` and precomputes against `cache`, given the pod's
    /// inter-pod `terms` (their counts are the cache's when `Cache::prepare` saw them, else
    /// taken now by walking the pods they select).
    pub fn new(pod: &Pod, terms: PodTerms, cache: &'c Cache) -> Cycle<'c> {
        let no_spec = PodSpec::default();
        let spec: &PodSpec = pod.spec.as_ref().unwrap_or(&no_spec);
        let m = &pod.metadata;
        let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
        let labels = m.labels.clone().unwrap_or_default();
        let node_affinity = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref());
        let required_affinity = node_affinity
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| {
                s.node_selector_terms
                    .iter()
                    .map(NodeTerm::compile)
                    .collect()
            });
        let preferred_affinity = node_affinity
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|p| {
                p.iter()
                    .map(|t| (t.weight as i64, NodeTerm::compile(&t.preference)))
                    .collect()
            })
            .unwrap_or_default();
        let mut cycle = Cycle {
            key: format!("{namespace}/{}", m.name.as_deref().unwrap_or_default()),
            namespace,
            labels,
            requests: pod_requests(spec, false),
            non_zero: pod_requests(spec, true),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_affinity,
            preferred_affinity,
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            host_ports: host_ports(spec),
            anti_domains: Vec::new(),
            existing_anti: Vec::new(),
            affinity_domains: Vec::new(),
            preferred_pods: Vec::new(),
            spreads: Vec::new(),
        };
        cycle.prefilter_affinity(&terms, cache);
        cycle.prefilter_spread(terms.spreads, cache);
        cycle
    }

    fn prefilter_affinity(&mut self, terms: &PodTerms, cache: &'c Cache) {
        for term in &terms.anti {
            let domains = cache.selected(term);
            self.anti_domains.push((term.topology_key.clone(), domains));
        }
        for term in &terms.affinity {
            let domains = cache.selected(term);
            let domains = if domains.is_empty() && term.matches(&self.namespace, &self.labels) {
                None
            } else {
                Some(domains)
            };
            self.affinity_domains
                .push((term.topology_key.clone(), domains));
        }
        // Existing pods whose required anti-affinity selects this pod.
        let (ns, labels) = (&self.namespace, &self.labels);
        let existing: Vec<(&'c str, &'c DomainCounts)> = cache
            .existing_anti(ns, labels)
            .map(|(term, domains)| (term.topology_key.as_str(), domains))
            .collect();
        self.existing_anti = existing;
        for (weight, term) in &terms.preferred {
            self.preferred_pods
                .push((term.topology_key.clone(), *weight, cache.selected(term)));
        }
    }

    fn prefilter_spread(&mut self, spreads: Vec<SpreadTerm>, cache: &'c Cache) {
        let restricted = !self.node_selector.is_empty() || self.required_affinity.is_some();
        for c in spreads {
            let counts = match &c.term {
                Some(term) => cache.selected(term),
                None => Cow::Owned(DomainCounts::default()),
            };
            let count = |d: &str| counts.get(d).copied().unwrap_or(0) as i64;
            // Domains: every node that passes the pod's node affinity (nodeAffinityPolicy
            // Honor) and has the key.
            let min = if restricted {
                let mut eligible: HashSet<&str> = HashSet::default();
                for n in cache.nodes() {
                    if self.node_affinity_ok(n)
                        && let Some(d) = n.labels.get(&c.key)
                    {
                        eligible.insert(d.as_str());
                    }
                }
                eligible.into_iter().map(count).min().unwrap_or(0)
            } else if counts.len() < cache.domain_count(&c.key) {
                // Every node qualifies, and some domain holds none of the pods.
                0
            } else {
                counts.values().copied().min().unwrap_or(0) as i64
            };
            let self_match = c
                .term
                .as_ref()
                .is_some_and(|t| t.matches(&self.namespace, &self.labels));
            self.spreads.push(Spread {
                max_skew: c.max_skew,
                key: c.key,
                hard: c.hard,
                self_match: i64::from(self_match),
                counts,
                min,
            });
        }
    }

    fn node_affinity_ok(&self, node: &NodeInfo) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
            && self
                .required_affinity
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }

    /// The node's untolerated NoSchedule/NoExecute taint, if any.
    fn untolerated<'a>(&self, node: &'a NodeInfo) -> Option<&'a Taint> {
        node.taints.iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute")
                && !tolerated(&self.tolerations, t)
        })
    }

    /// Runs the filters on `node`: `Ok` or the reasons it does not fit.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Unfit> {
        let fail = |r: &'static str| Err(Unfit::One(Cow::Borrowed(r)));
        if node.unschedulable {
            let t = Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !tolerated(&self.tolerations, &t) {
                return fail(reason::UNSCHEDULABLE);
            }
        }
        if let Some(n) = &self.node_name
            && *n != node.name
        {
            return fail(reason::NODE_NAME);
        }
        if let Some(t) = self.untolerated(node) {
            return Err(Unfit::One(Cow::Owned(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            ))));
        }
        if !self.node_affinity_ok(node) {
            return fail(reason::NODE_AFFINITY);
        }
        if self
            .host_ports
            .iter()
            .any(|hp| node.host_ports.contains(hp))
        {
            return fail(reason::NODE_PORTS);
        }
        let mut insufficient: Vec<Cow<'static, str>> = Vec::new();
        let (a, r, q) = (&node.allocatable, &node.requested, &self.requests);
        if r.pods + 1 > a.pods {
            insufficient.push(reason::TOO_MANY_PODS.into());
        }
        if q.milli_cpu > 0 && r.milli_cpu + q.milli_cpu > a.milli_cpu {
            insufficient.push("Insufficient cpu".into());
        }
        if q.memory > 0 && r.memory + q.memory > a.memory {
            insufficient.push("Insufficient memory".into());
        }
        if q.ephemeral_storage > 0
            && r.ephemeral_storage + q.ephemeral_storage > a.ephemeral_storage
        {
            insufficient.push("Insufficient ephemeral-storage".into());
        }
        if !insufficient.is_empty() {
            return Err(Unfit::Many(insufficient));
        }
        for s in self.spreads.iter().filter(|s| s.hard) {
            let Some(d) = node.labels.get(&s.key) else {
                return fail(reason::SPREAD_MISSING_LABEL);
            };
            let count = s.counts.get(d.as_str()).copied().unwrap_or(0) as i64;
            if count + s.self_match - s.min > s.max_skew {
                return fail(reason::SPREAD);
            }
        }
        let mut labels = Domains { node, last: None };
        for (key, domains) in &self.affinity_domains {
            if domains.as_ref().is_some_and(|d| !labels.within(key, d)) {
                return fail(reason::AFFINITY);
            }
        }
        for (key, d) in &self.anti_domains {
            if labels.within(key, d) {
                return fail(reason::ANTI_AFFINITY);
            }
        }
        for (key, d) in &self.existing_anti {
            if labels.within(key, d) {
                return fail(reason::EXISTING_ANTI_AFFINITY);
            }
        }
        Ok(())
    }

    /// Raw scores before normalization: preferred node affinity weight, untolerated
    /// PreferNoSchedule taints, preferred pod (anti-)affinity weight, soft-spread count.
    fn raw_scores(&self, node: &NodeInfo) -> [i64; 4] {
        let affinity: i64 = self
            .preferred_affinity
            .iter()
            .filter(|(_, t)| t.matches(node))
            .map(|(w, _)| *w)
            .sum();
        let taints = node
            .taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&self.tolerations, t))
            .count() as i64;
        let pods: i64 = self
            .preferred_pods
            .iter()
            .map(|(key, weight, by)| {
                node.labels
                    .get(key)
                    .and_then(|d| by.get(d.as_str()))
                    .map_or(0, |n| *n as i64 * weight)
            })
            .sum();
        let spread: i64 = self
            .spreads
            .iter()
            .filter(|s| !s.hard)
            .map(|s| {
                node.labels
                    .get(&s.key)
                    .and_then(|d| s.counts.get(d.as_str()))
                    .map_or(0, |n| *n as i64)
            })
            .sum();
        [affinity, taints, pods, spread]
    }

    /// Whether a plugin other than the two resource scores can tell `nodes` apart: a
    /// preferred (anti-)affinity term, a soft spread, or a taint on some node. Otherwise
    /// those plugins give every node the same score.
    fn differs_beyond_resources(&self, nodes: &[&NodeInfo]) -> bool {
        !self.preferred_affinity.is_empty()
            || !self.preferred_pods.is_empty()
            || self.spreads.iter().any(|s| !s.hard)
            || nodes.iter().any(|n| !n.taints.is_empty())
    }

    /// Scores the feasible `nodes`; returns their weighted totals in the same order.
    pub fn score(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        if self.differs_beyond_resources(nodes) {
            return self.score_all(nodes);
        }
        // What score_all computes when every raw score is 0: no preferred-affinity or
        // preferred-pod points, full taint-toleration and spread points.
        let same = 3 * MAX_NODE_SCORE + 2 * MAX_NODE_SCORE;
        nodes
            .iter()
            .map(|n| resource_scores(n, &self.non_zero) + same)
            .collect()
    }

    /// [`Cycle::score`] running every plugin on every node.
    pub fn score_all(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        let raw: Vec<[i64; 4]> = nodes.iter().map(|n| self.raw_scores(n)).collect();
        let col = |i: usize| raw.iter().map(move |r| r[i]);
        let (aff_max, taint_max) = (col(0).max().unwrap_or(0), col(1).max().unwrap_or(0));
        let (pod_min, pod_max) = (col(2).min().unwrap_or(0), col(2).max().unwrap_or(0));
        let (spread_min, spread_max) = (col(3).min().unwrap_or(0), col(3).max().unwrap_or(0));
        nodes
            .iter()
            .zip(&raw)
            .map(|(n, r)| {
                let affinity = if aff_max > 0 {
                    r[0] * MAX_NODE_SCORE / aff_max
                } else {
                    0
                };
                let taint = if taint_max > 0 {
                    MAX_NODE_SCORE - r[1] * MAX_NODE_SCORE / taint_max
                } else {
                    MAX_NODE_SCORE
                };
                let pods = if pod_max > pod_min {
                    (r[2] - pod_min) * MAX_NODE_SCORE / (pod_max - pod_min)
                } else {
                    0
                };
                let spread = if spread_max > spread_min {
                    MAX_NODE_SCORE
                        - (r[3] - spread_min) * MAX_NODE_SCORE / (spread_max - spread_min)
                } else {
                    MAX_NODE_SCORE
                };
                resource_scores(n, &self.non_zero)
                    + 2 * affinity
                    + 3 * taint
                    + 2 * pods
                    + 2 * spread
            })
            .collect()
    }
}

fn fraction(requested: i64, allocatable: i64) -> f64 {
    if allocatable <= 0 {
        1.0
    } else {
        (requested as f64 / allocatable as f64).min(1.0)
    }
}

/// NodeResourcesFit's LeastAllocated (free share of CPU and memory after placing the pod)
/// plus NodeResourcesBalancedAllocation (CPU and memory shares close to each other), from
/// the same two shares.
fn resource_scores(n: &NodeInfo, pod: &Resources) -> i64 {
    let cpu = fraction(
        n.non_zero_requested.milli_cpu + pod.milli_cpu,
        n.allocatable.milli_cpu,
    );
    let mem = fraction(
        n.non_zero_requested.memory + pod.memory,
        n.allocatable.memory,
    );
    let least = ((((1.0 - cpu) + (1.0 - mem)) / 2.0) * MAX_NODE_SCORE as f64) as i64;
    let balanced = ((1.0 - (cpu - mem).abs() / 2.0) * MAX_NODE_SCORE as f64) as i64;
    least + balanced
}

/// kube-scheduler's failure message: "0/5 nodes are available: 2 Insufficient cpu, 3
/// node(s) had untolerated taint {k: v}." (reasons counted, sorted as strings).
pub fn fit_error(total: usize, reasons: &HashMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}
