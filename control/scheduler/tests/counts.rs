//! The cache's per-term counts (`Cache::prepare`, `selected`, `existing_anti`) against a
//! brute-force recount after every step of random histories: pods placed and removed,
//! pods seen before their node, nodes relabelled, removed and re-added, terms prepared
//! midway, and terms with and without a label the index can use.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use proptest::prelude::*;
use serde_json::json;
use skiff_api::selector::{LabelSelector, Requirement};
use skiff_scheduler::cache::{Cache, PodInfo, Term};

const NODES: usize = 6;
const GROUPS: usize = 3;

fn node(i: usize, zone: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("n{i}"), "labels": {
            "kubernetes.io/hostname": format!("n{i}"), "zone": format!("z{zone}")}},
        "status": {"allocatable": {"cpu": "64", "memory": "64Gi", "pods": "500"}},
    }))
    .expect("node")
}

fn anti_term(group: usize) -> serde_json::Value {
    json!({"labelSelector": {"matchLabels": {"group": format!("g{group}")}}, "topologyKey": "zone"})
}

fn pod(i: usize, group: usize, anti: bool) -> Pod {
    let mut p = json!({
        "metadata": {"name": format!("p{i}"), "namespace": "default",
            "labels": {"group": format!("g{group}")}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    if anti {
        p["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [anti_term(group)]}});
    }
    serde_json::from_value(p).expect("pod")
}

/// The terms the test tracks: per group, by zone and by host (indexed by `group=gN`), and
/// one the index cannot narrow (`group` exists).
fn terms() -> Vec<Term> {
    let mut out = Vec::new();
    for g in 0..GROUPS {
        for key in ["zone", "kubernetes.io/hostname"] {
            out.push(Term {
                selector: LabelSelector {
                    requirements: vec![Requirement::Equals("group".into(), format!("g{g}"))],
                },
                namespaces: Some(vec!["default".into()]),
                topology_key: key.into(),
            });
        }
    }
    out.push(Term {
        selector: LabelSelector {
            requirements: vec![Requirement::Exists("group".into())],
        },
        namespaces: None,
        topology_key: "zone".into(),
    });
    out
}

#[derive(Debug, Clone)]
enum Op {
    /// Pod index, group, node index (NODES.. are nodes that never exist), anti-affinity.
    AddPod(usize, usize, usize, bool),
    RemovePod(usize),
    /// Node index, zone.
    UpsertNode(usize, usize),
    RemoveNode(usize),
    Prepare,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..24, 0..GROUPS, 0..NODES + 1, any::<bool>())
            .prop_map(|(p, g, n, a)| Op::AddPod(p, g, n, a)),
        2 => (0usize..24).prop_map(Op::RemovePod),
        2 => (0..NODES, 0usize..3).prop_map(|(n, z)| Op::UpsertNode(n, z)),
        1 => (0..NODES).prop_map(Op::RemoveNode),
        1 => Just(Op::Prepare),
    ]
}

/// The model: pods (group, node, anti) and nodes (zone).
#[derive(Default)]
struct Model {
    pods: BTreeMap<usize, (usize, usize, bool)>,
    nodes: BTreeMap<usize, usize>,
}

impl Model {
    fn domain(&self, node: usize, key: &str) -> Option<String> {
        let zone = self.nodes.get(&node)?;
        Some(match key {
            "zone" => format!("z{zone}"),
            _ => format!("n{node}"),
        })
    }

    fn selected(&self, term: &Term) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for (group, node, _) in self.pods.values() {
            let labels = BTreeMap::from([("group".to_string(), format!("g{group}"))]);
            if term.matches("default", &labels)
                && let Some(d) = self.domain(*node, &term.topology_key)
            {
                *out.entry(d).or_default() += 1;
            }
        }
        out
    }

    /// Per group whose pods have anti-affinity: the zones those pods are in.
    fn existing_anti(&self, group: usize) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for (g, node, anti) in self.pods.values() {
            if *anti
                && *g == group
                && let Some(d) = self.domain(*node, "zone")
            {
                *out.entry(d).or_default() += 1;
            }
        }
        out
    }
}

fn sorted(c: &skiff_scheduler::cache::DomainCounts) -> BTreeMap<String, u32> {
    c.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn kept_counts_equal_a_recount_after_every_change(ops in prop::collection::vec(op(), 1..80)) {
        let mut cache = Cache::default();
        let mut model = Model::default();
        let terms = terms();
        // The host terms are tracked from the start, the zone terms from the first Prepare.
        cache.prepare(terms.iter().filter(|t| t.topology_key != "zone"));
        for op in ops {
            match op {
                Op::AddPod(i, g, n, anti) => {
                    cache.add_pod(PodInfo::new(&pod(i, g, anti), &format!("n{n}")));
                    model.pods.insert(i, (g, n, anti));
                }
                Op::RemovePod(i) => {
                    let had = cache.remove_pod(&format!("default/p{i}")).is_some();
                    prop_assert_eq!(had, model.pods.remove(&i).is_some());
                }
                Op::UpsertNode(n, z) => {
                    cache.upsert_node(&node(n, z));
                    model.nodes.insert(n, z);
                }
                Op::RemoveNode(n) => {
                    cache.remove_node(&format!("n{n}"));
                    model.nodes.remove(&n);
                }
                Op::Prepare => cache.prepare(&terms),
            }
            for t in &terms {
                prop_assert_eq!(sorted(&cache.selected(t)), model.selected(t), "{:?}", t);
            }
            for g in 0..GROUPS {
                let labels = BTreeMap::from([("group".to_string(), format!("g{g}"))]);
                let found: Vec<_> = cache.existing_anti("default", &labels).collect();
                let want = model.existing_anti(g);
                if want.is_empty() {
                    prop_assert!(found.is_empty(), "group {}: {:?}", g, found);
                } else {
                    prop_assert_eq!(found.len(), 1);
                    prop_assert_eq!(&found[0].0.topology_key, "zone");
                    prop_assert_eq!(sorted(found[0].1), want);
                }
                // Another namespace's pods are not what these terms keep away.
                prop_assert_eq!(cache.existing_anti("other", &labels).count(), 0);
            }
        }
    }
}

#[test]
fn counts_stay_right_when_too_many_terms_were_tracked_and_all_are_dropped() {
    let mut cache = Cache::default();
    cache.upsert_node(&node(0, 0));
    cache.upsert_node(&node(1, 1));
    let by_group = |g: usize| Term {
        selector: LabelSelector {
            requirements: vec![Requirement::Equals("group".into(), format!("g{g}"))],
        },
        namespaces: Some(vec!["default".into()]),
        topology_key: "zone".into(),
    };
    cache.add_pod(PodInfo::new(&pod(0, 0, false), "n0"));
    // More distinct terms than the cache keeps counts for: it drops them all once and
    // starts again, and every answer stays right through it.
    for g in 0..5000 {
        cache.prepare([&by_group(g)]);
        if g % 1000 == 0 {
            cache.add_pod(PodInfo::new(&pod(g + 1, 0, false), "n1"));
        }
    }
    let counts = sorted(&cache.selected(&by_group(0)));
    assert_eq!(
        counts,
        BTreeMap::from([("z0".to_string(), 1), ("z1".to_string(), 5)])
    );
    cache.prepare([&by_group(0)]);
    cache.add_pod(PodInfo::new(&pod(9999, 0, false), "n0"));
    assert_eq!(
        sorted(&cache.selected(&by_group(0))),
        BTreeMap::from([("z0".to_string(), 2), ("z1".to_string(), 5)])
    );
}

#[test]
fn a_removed_pod_added_again_counts_once() {
    let mut cache = Cache::default();
    cache.upsert_node(&node(0, 0));
    cache.add_pod(PodInfo::new(&pod(1, 0, true), "n0"));
    let again = cache.remove_pod("default/p1").expect("placed");
    cache.add_pod(again.clone());
    cache.add_pod(again);
    let labels = BTreeMap::from([("group".to_string(), "g0".to_string())]);
    let found: Vec<_> = cache.existing_anti("default", &labels).collect();
    assert_eq!(found.len(), 1);
    assert_eq!(sorted(found[0].1), BTreeMap::from([("z0".to_string(), 1)]));
    cache.remove_pod("default/p1");
    assert_eq!(cache.existing_anti("default", &labels).count(), 0);
}
