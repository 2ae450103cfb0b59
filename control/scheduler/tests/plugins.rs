//! The filter and score plugins against an in-memory cache: unit cases per plugin and
//! property tests (requests never overcommitted, taints respected, anti-affinity never
//! violated, spread skew within maxSkew).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use proptest::prelude::*;
use serde_json::{Value, json};
use skiff_scheduler::cache::{Cache, NodeInfo, PodInfo};
use skiff_scheduler::plugins::reason;
use skiff_scheduler::plugins::{Cycle, PodTerms};
use skiff_scheduler::{FitError, nodes_to_find, schedule_one};

fn node(name: &str, cpu: &str, mem: &str, pods: u32, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods.to_string()}},
    });
    merge(&mut n, extra);
    serde_json::from_value(n).expect("node")
}

fn pod(name: &str, cpu: &str, mem: &str, extra: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "labels": {}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": mem}}}]},
    });
    merge(&mut p, extra);
    serde_json::from_value(p).expect("pod")
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Schedules `pod` and, when it fits, assumes it there (as the scheduler does).
fn place(cache: &mut Cache, p: &Pod, start: &mut usize) -> Result<String, FitError> {
    let n = schedule_one(cache, p, start, None)?;
    cache.add_pod(PodInfo::new(p, &n));
    Ok(n)
}

fn message(e: FitError) -> String {
    e.to_string()
}

#[test]
fn resources_fit_and_the_failure_message_counts_reasons() {
    let mut c = Cache::default();
    for i in 0..3 {
        c.upsert_node(&node(&format!("n{i}"), "1", "1Gi", 110, json!({})));
    }
    for i in 0..2 {
        c.upsert_node(&node(
            &format!("t{i}"),
            "8",
            "8Gi",
            110,
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ));
    }
    let mut start = 0;
    let big = pod("big", "2", "100Mi", json!({}));
    let err = schedule_one(&mut c, &big, &mut start, None).expect_err("nothing fits");
    assert_eq!(
        message(err),
        "0/5 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}, 3 Insufficient cpu."
    );
    let tolerant = pod(
        "big",
        "2",
        "100Mi",
        json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}),
    );
    let n = schedule_one(&mut c, &tolerant, &mut start, None).expect("fits a tainted node");
    assert!(n.starts_with('t'), "{n}");
    // Pods count: a node full of pods says so.
    let mut c = Cache::default();
    c.upsert_node(&node("n0", "8", "8Gi", 1, json!({})));
    place(&mut c, &pod("a", "100m", "1Mi", json!({})), &mut start).expect("first");
    let err = schedule_one(
        &mut c,
        &pod("b", "100m", "1Mi", json!({})),
        &mut start,
        None,
    )
    .expect_err("full");
    assert_eq!(
        message(err),
        format!("0/1 nodes are available: 1 {}.", reason::TOO_MANY_PODS)
    );
    assert_eq!(
        message(
            schedule_one(
                &mut Cache::default(),
                &pod("x", "1", "1", json!({})),
                &mut start,
                None
            )
            .expect_err("no nodes")
        ),
        "0/0 nodes are available."
    );
}

#[test]
fn unschedulable_nodes_and_node_affinity() {
    let mut c = Cache::default();
    c.upsert_node(&node(
        "cordoned",
        "4",
        "4Gi",
        110,
        json!({"spec": {"unschedulable": true}}),
    ));
    c.upsert_node(&node(
        "ssd",
        "4",
        "4Gi",
        110,
        json!({"metadata": {"labels": {"disk": "ssd", "zone": "a"}}}),
    ));
    c.upsert_node(&node(
        "hdd",
        "4",
        "4Gi",
        110,
        json!({"metadata": {"labels": {"disk": "hdd", "zone": "b"}}}),
    ));
    let mut start = 0;
    let sel = pod(
        "p",
        "1",
        "1Mi",
        json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
    );
    assert_eq!(
        schedule_one(&mut c, &sel, &mut start, None).expect("ssd"),
        "ssd"
    );
    let none = pod(
        "p",
        "1",
        "1Mi",
        json!({"spec": {"nodeSelector": {"disk": "nvme"}}}),
    );
    assert_eq!(
        message(schedule_one(&mut c, &none, &mut start, None).expect_err("no nvme")),
        format!(
            "0/3 nodes are available: 1 {}, 2 {}.",
            reason::UNSCHEDULABLE,
            reason::NODE_AFFINITY
        )
    );
    let req = pod(
        "p",
        "1",
        "1Mi",
        json!({"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}
        ]}}}}}),
    );
    for _ in 0..10 {
        assert_eq!(
            schedule_one(&mut c, &req, &mut start, None).expect("b"),
            "hdd"
        );
    }
    let fields = pod(
        "p",
        "1",
        "1Mi",
        json!({"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ssd"]}]}
        ]}}}}}),
    );
    assert_eq!(
        schedule_one(&mut c, &fields, &mut start, None).expect("by name"),
        "ssd"
    );
    let preferred = pod(
        "p",
        "1",
        "1Mi",
        json!({"spec": {"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}
        ]}}}}),
    );
    for _ in 0..10 {
        assert_eq!(
            schedule_one(&mut c, &preferred, &mut start, None).expect("preferred"),
            "ssd"
        );
    }
    // A cordoned node takes a pod that tolerates it.
    let mut only = Cache::default();
    only.upsert_node(&node(
        "cordoned",
        "4",
        "4Gi",
        110,
        json!({"spec": {"unschedulable": true}}),
    ));
    let tol = pod(
        "p",
        "1",
        "1Mi",
        json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}}),
    );
    assert_eq!(
        schedule_one(&mut only, &tol, &mut start, None).expect("tolerated"),
        "cordoned"
    );
}

#[test]
fn prefer_no_schedule_taints_and_least_allocated_spread_load() {
    let mut c = Cache::default();
    c.upsert_node(&node(
        "soft",
        "4",
        "4Gi",
        110,
        json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
    ));
    c.upsert_node(&node("plain", "4", "4Gi", 110, json!({})));
    let mut start = 0;
    assert_eq!(
        schedule_one(&mut c, &pod("p", "1", "1Mi", json!({})), &mut start, None).expect("fits"),
        "plain"
    );
    // Equal nodes: pods alternate as load builds.
    let mut c = Cache::default();
    c.upsert_node(&node("a", "4", "4Gi", 110, json!({})));
    c.upsert_node(&node("b", "4", "4Gi", 110, json!({})));
    let mut count: HashMap<String, usize> = HashMap::new();
    for i in 0..8 {
        let n = place(
            &mut c,
            &pod(&format!("p{i}"), "500m", "256Mi", json!({})),
            &mut start,
        )
        .expect("fits");
        *count.entry(n).or_default() += 1;
    }
    assert_eq!(count.get("a"), Some(&4), "{count:?}");
    assert_eq!(count.get("b"), Some(&4), "{count:?}");
}

#[test]
fn pod_affinity_co_locates_and_the_first_pod_of_a_group_may_go_anywhere() {
    let mut c = Cache::default();
    for (n, z) in [("n0", "a"), ("n1", "a"), ("n2", "b")] {
        c.upsert_node(&node(
            n,
            "8",
            "8Gi",
            110,
            json!({"metadata": {"labels": {"zone": z}}}),
        ));
    }
    let mut start = 0;
    let member = |name: &str| {
        pod(
            name,
            "100m",
            "1Mi",
            json!({"metadata": {"labels": {"app": "db"}},
            "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}}}),
        )
    };
    let first = place(&mut c, &member("db-0"), &mut start).expect("first of its group");
    let zone = c.node(&first).expect("node").labels["zone"].clone();
    for i in 1..10 {
        let n = place(&mut c, &member(&format!("db-{i}")), &mut start).expect("fits");
        assert_eq!(c.node(&n).expect("node").labels["zone"], zone);
    }
    // A pod that needs a group which does not exist (and is not itself in it) fits nowhere.
    let lonely = pod(
        "x",
        "100m",
        "1Mi",
        json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}}}),
    );
    assert_eq!(
        message(schedule_one(&mut c, &lonely, &mut start, None).expect_err("no cache pods")),
        format!("0/3 nodes are available: 3 {}.", reason::AFFINITY)
    );
}

#[test]
fn existing_pods_anti_affinity_keeps_newcomers_away() {
    let mut c = Cache::default();
    c.upsert_node(&node("n0", "8", "8Gi", 110, json!({})));
    c.upsert_node(&node("n1", "8", "8Gi", 110, json!({})));
    let mut start = 0;
    let loner = pod(
        "loner",
        "100m",
        "1Mi",
        json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"team": "noisy"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
    );
    let at = place(&mut c, &loner, &mut start).expect("fits");
    for i in 0..6 {
        let noisy = pod(
            &format!("noisy-{i}"),
            "100m",
            "1Mi",
            json!({"metadata": {"labels": {"team": "noisy"}}}),
        );
        assert_ne!(place(&mut c, &noisy, &mut start).expect("fits"), at);
    }
}

#[test]
fn sampling_looks_at_a_share_of_large_clusters() {
    assert_eq!(nodes_to_find(50, None), 50);
    assert_eq!(nodes_to_find(1000, None), 420);
    assert_eq!(nodes_to_find(5000, None), 500);
    assert_eq!(nodes_to_find(5000, Some(100)), 5000);
    // And the rotation reaches every node: with 2,000 equal nodes, 100 pods of a sampled
    // 1,000-node pass still land only on feasible nodes.
    let mut c = Cache::default();
    for i in 0..2000 {
        c.upsert_node(&node(&format!("n{i:04}"), "1", "1Gi", 110, json!({})));
    }
    let mut start = 0;
    for i in 0..100 {
        place(
            &mut c,
            &pod(&format!("p{i}"), "1", "1Mi", json!({})),
            &mut start,
        )
        .expect("fits");
    }
    assert!(
        c.nodes()
            .iter()
            .all(|n| n.requested.milli_cpu <= n.allocatable.milli_cpu)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the mix, no node is ever given more than it has, and a pod is refused only
    /// when no node has room for it.
    #[test]
    fn requests_are_never_overcommitted(
        nodes in prop::collection::vec((1u32..8, 1u32..8, 1u32..20), 1..12),
        pods in prop::collection::vec((0u32..3000, 0u32..3000), 1..80),
    ) {
        let mut c = Cache::default();
        for (i, (cpu, mem, n)) in nodes.iter().enumerate() {
            c.upsert_node(&node(&format!("n{i}"), &cpu.to_string(), &format!("{mem}Gi"), *n, json!({})));
        }
        let mut start = 0;
        for (i, (cpu, mem)) in pods.iter().enumerate() {
            let p = pod(&format!("p{i}"), &format!("{cpu}m"), &format!("{mem}Mi"), json!({}));
            let fits_somewhere = c.nodes().iter().any(|n| {
                n.requested.pods < n.allocatable.pods
                    && n.requested.milli_cpu + *cpu as i64 <= n.allocatable.milli_cpu
                    && n.requested.memory + ((*mem as i64) << 20) <= n.allocatable.memory
            });
            let placed = place(&mut c, &p, &mut start);
            prop_assert_eq!(placed.is_ok(), fits_somewhere, "{:?}", placed);
        }
        for n in c.nodes().iter() {
            prop_assert!(n.requested.milli_cpu <= n.allocatable.milli_cpu);
            prop_assert!(n.requested.memory <= n.allocatable.memory);
            prop_assert!(n.requested.pods <= n.allocatable.pods);
        }
    }

    /// NoSchedule taints hold off every pod that does not tolerate them.
    #[test]
    fn taints_are_respected(tainted in prop::collection::vec(any::<bool>(), 1..10), tolerate in any::<bool>()) {
        let mut c = Cache::default();
        for (i, t) in tainted.iter().enumerate() {
            let extra = if *t { json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}) } else { json!({}) };
            c.upsert_node(&node(&format!("n{i}"), "64", "64Gi", 500, extra));
        }
        let tol = if tolerate { json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}) } else { json!({}) };
        let mut start = 0;
        for i in 0..20 {
            match place(&mut c, &pod(&format!("p{i}"), "100m", "1Mi", tol.clone()), &mut start) {
                Ok(n) => {
                    let idx: usize = n[1..].parse().expect("index");
                    prop_assert!(tolerate || !tainted[idx]);
                }
                Err(_) => prop_assert!(!tolerate && tainted.iter().all(|t| *t)),
            }
        }
    }

    /// Required anti-affinity on the hostname: never two of a kind on one node, and the
    /// rest are refused once every node has one.
    #[test]
    fn anti_affinity_is_never_violated(nodes in 1usize..8, replicas in 1usize..12) {
        let mut c = Cache::default();
        for i in 0..nodes {
            c.upsert_node(&node(&format!("n{i}"), "64", "64Gi", 500, json!({})));
        }
        let mut start = 0;
        let mut used = std::collections::HashSet::new();
        for i in 0..replicas {
            let p = pod(&format!("web-{i}"), "100m", "1Mi", json!({"metadata": {"labels": {"app": "web"}},
                "spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}));
            match place(&mut c, &p, &mut start) {
                Ok(n) => prop_assert!(used.insert(n)),
                Err(e) => {
                    prop_assert_eq!(used.len(), nodes);
                    prop_assert!(e.to_string().contains(reason::ANTI_AFFINITY), "{}", e);
                }
            }
        }
    }

    /// Topology spread with DoNotSchedule keeps every zone within maxSkew.
    #[test]
    fn spread_skew_stays_within_max_skew(zones in 2usize..5, per_zone in 1usize..4, replicas in 1usize..30, max_skew in 1i32..3) {
        let mut c = Cache::default();
        for z in 0..zones {
            for k in 0..per_zone {
                c.upsert_node(&node(&format!("n{z}-{k}"), "64", "64Gi", 500, json!({"metadata": {"labels": {"zone": format!("z{z}")}}})));
            }
        }
        let mut start = 0;
        let mut counts = vec![0i32; zones];
        for i in 0..replicas {
            let p = pod(&format!("web-{i}"), "100m", "1Mi", json!({"metadata": {"labels": {"app": "web"}},
                "spec": {"topologySpreadConstraints": [{"maxSkew": max_skew, "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}));
            let n = place(&mut c, &p, &mut start).expect("always fits somewhere");
            let z: usize = c.node(&n).expect("node").labels["zone"][1..].parse().expect("zone");
            counts[z] += 1;
            let (min, max) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
            prop_assert!(max - min <= max_skew, "{:?}", counts);
        }
    }
}

#[test]
fn replicas_of_a_controller_spread_over_hosts_by_default() {
    // Requests too small to move the resource scores: only the default spreading decides.
    let mut c = Cache::default();
    for n in ["a", "b", "c"] {
        c.upsert_node(&node(n, "64", "256Gi", 110, json!({})));
    }
    let mut start = 0;
    let mut count: HashMap<String, usize> = HashMap::new();
    for i in 0..9 {
        let p = pod(
            &format!("web-{i}"),
            "1m",
            "1Ki",
            json!({"metadata": {"labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]}}),
        );
        *count
            .entry(place(&mut c, &p, &mut start).expect("fits"))
            .or_default() += 1;
    }
    assert!(count.values().all(|n| *n == 3), "{count:?}");
}

#[test]
fn parallel_filtering_finds_the_same_feasible_nodes() {
    let mut c = Cache::default();
    for i in 0..1200 {
        let extra = if i % 3 == 0 {
            json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})
        } else {
            json!({})
        };
        c.upsert_node(&node(&format!("n{i:04}"), "4", "8Gi", 110, extra));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let (mut a, mut b) = (0, 0);
    for i in 0..50 {
        let p = pod(&format!("p{i}"), "100m", "1Mi", json!({}));
        let seq = skiff_scheduler::schedule_with(&mut c, &p, &mut a, None, None).expect("fits");
        let par =
            skiff_scheduler::schedule_with(&mut c, &p, &mut b, None, Some(&pool)).expect("fits");
        for n in [&seq, &par] {
            let idx: usize = n[1..].parse().expect("index");
            assert!(!idx.is_multiple_of(3), "a tainted node was chosen: {n}");
        }
        assert_eq!(a, b, "both walk the same sample");
    }
    let none = pod("big", "64", "1Mi", json!({}));
    let e1 =
        skiff_scheduler::schedule_with(&mut c, &none, &mut a, None, None).expect_err("too big");
    let e2 = skiff_scheduler::schedule_with(&mut c, &none, &mut b, None, Some(&pool))
        .expect_err("too big");
    assert_eq!(e1, e2);
    assert_eq!(
        e1.to_string(),
        "0/1200 nodes are available: 400 node(s) had untolerated taint {k: }, 800 Insufficient cpu."
    );
}

#[test]
fn pods_seen_before_their_node_count_once_it_comes_and_after_it_goes_and_returns() {
    let mut c = Cache::default();
    let p = pod("early", "3", "1Gi", json!({}));
    c.add_pod(PodInfo::new(&p, "late"));
    c.upsert_node(&node("late", "4", "8Gi", 110, json!({})));
    assert_eq!(c.node("late").expect("node").requested.milli_cpu, 3000);
    let mut start = 0;
    let err = schedule_one(&mut c, &pod("x", "2", "1Mi", json!({})), &mut start, None)
        .expect_err("the early pod holds the room");
    assert!(err.to_string().contains("Insufficient cpu"), "{err}");
    c.remove_node("late");
    c.upsert_node(&node("late", "4", "8Gi", 110, json!({})));
    assert_eq!(c.node("late").expect("node").requested.milli_cpu, 3000);
    c.remove_pod("default/early");
    assert_eq!(c.node("late").expect("node").requested.milli_cpu, 0);
}

#[test]
fn ties_are_broken_among_every_best_node() {
    let mut c = Cache::default();
    for n in ["a", "b", "c"] {
        c.upsert_node(&node(n, "4", "4Gi", 110, json!({})));
    }
    // "c" is busier, so only "a" and "b" tie for the best score.
    c.add_pod(PodInfo::new(&pod("busy", "2", "2Gi", json!({})), "c"));
    let p = pod("p", "100m", "64Mi", json!({}));
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut start = 0;
    for _ in 0..300 {
        let n = schedule_one(&mut c, &p, &mut start, None).expect("fits");
        *count.entry(n).or_default() += 1;
    }
    assert_eq!(count.get("c"), None, "{count:?}");
    // Each of the two gets ~150 of 300 draws; below 75 has odds under 1e-18.
    assert!(count.get("a").is_some_and(|n| *n >= 75), "{count:?}");
    assert!(count.get("b").is_some_and(|n| *n >= 75), "{count:?}");
}

proptest! {
    /// The score without preferred terms, soft spreads or taints is what running every
    /// plugin gives.
    #[test]
    fn resource_only_scoring_equals_every_plugin(
        nodes in proptest::collection::vec((1u32..64, 1u32..64, 0u32..8), 1..12),
        request in (0u32..4000, 0u32..4096),
        tainted in proptest::option::of(0usize..12),
    ) {
        let mut c = Cache::default();
        for (i, (cpu, gib, busy)) in nodes.iter().enumerate() {
            let extra = if tainted == Some(i) {
                json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}})
            } else {
                json!({})
            };
            let name = format!("n{i}");
            c.upsert_node(&node(&name, &cpu.to_string(), &format!("{gib}Gi"), 110, extra));
            for b in 0..*busy {
                let p = pod(&format!("b{i}-{b}"), "300m", "500Mi", json!({}));
                c.add_pod(PodInfo::new(&p, &name));
            }
        }
        let p = pod("p", &format!("{}m", request.0), &format!("{}Mi", request.1), json!({}));
        let terms = PodTerms::compile(&p);
        c.prepare(terms.terms());
        let cycle = Cycle::new(&p, terms, &c);
        let all: Vec<&NodeInfo> = c.nodes().iter().collect();
        prop_assert_eq!(cycle.score(&all), cycle.score_all(&all));
    }
}
