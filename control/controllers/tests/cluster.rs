//! The scheduler and the controller manager against a real API server (embedded store in a
//! temp dir) with hollow nodes standing in for kubelets: ReplicaSets converge, rolling
//! updates keep enough pods ready, rollback restores the template, garbage collection in
//! all three modes, namespace cascade, EndpointSlices, node failure and eviction, leader
//! election, and scheduling that never double-books a node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use skiff_apiserver::watch_cache::CacheOptions;
use skiff_apiserver::{Config, LocalServer};
use skiff_client::informer::Informer;
use skiff_client::{Client, DeleteParams, ListParams};
use skiff_controllers::nodelifecycle::NodeLifecycleConfig;
use skiff_controllers::{ControllerManager, ManagerConfig};
use skiff_hollow::{HollowConfig, HollowNodes};
use skiff_scheduler::{Scheduler, SchedulerConfig};
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

struct Cluster {
    client: Client,
    hollow: HollowNodes,
    _controllers: ControllerManager,
    _scheduler: Scheduler,
    _informers: skiff_controllers::SharedHandles,
    _server: LocalServer,
    _dir: tempfile::TempDir,
}

async fn server() -> (Client, LocalServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("store");
    let config = Config {
        cache: CacheOptions {
            bookmark_interval: Duration::from_millis(200),
            ..CacheOptions::default()
        },
        ..Config::default()
    };
    let server = LocalServer::start(Arc::new(store), config)
        .await
        .expect("API server");
    let client = Client::connect(&server.address).await.expect("connect");
    (client, server, dir)
}

fn manager_config(identity: &str) -> ManagerConfig {
    ManagerConfig {
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_period: Duration::from_millis(300),
        node_lifecycle: NodeLifecycleConfig {
            monitor_period: Duration::from_millis(300),
            grace_period: Duration::from_secs(3),
        },
        ..ManagerConfig::default()
    }
}

async fn cluster(nodes: usize, pods_per_node: u32) -> Cluster {
    let (client, server, dir) = server().await;
    let hollow = HollowNodes::start(
        &client,
        HollowConfig {
            count: nodes,
            pods: pods_per_node,
            cpu: "4".into(),
            memory: "8Gi".into(),
            lease_period: Duration::from_millis(500),
            ..HollowConfig::default()
        },
    )
    .await
    .expect("hollow nodes");
    // As in `skiff server`: the scheduler and the controllers call the API server
    // in-process and share the pod and node caches (the leader-election test below runs
    // managers over gRPC on their own informers). The test and the nodes use gRPC.
    let own = Client::local(
        skiff_apiserver::local::api(server.registry.clone()),
        &server.address,
    );
    let shared = skiff_controllers::start_shared_informers(&own);
    let scheduler =
        Scheduler::start_shared(own.clone(), SchedulerConfig::default(), &shared.informers);
    let controllers = ControllerManager::start_shared(
        own.clone(),
        manager_config("test-manager"),
        shared.informers.clone(),
    );
    Cluster {
        client,
        hollow,
        _informers: shared,
        _controllers: controllers,
        _scheduler: scheduler,
        _server: server,
        _dir: dir,
    }
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn deployment(name: &str, replicas: i32, extra: Value) -> Deployment {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "busybox:v1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}}}]},
            },
        },
    });
    merge(&mut d, extra);
    from(d)
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

async fn pods(c: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    c.api::<Pod>(ns)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

fn running_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && skiff_controllers::util::is_ready(p)
}

async fn wait_available(c: &Client, ns: &str, name: &str, replicas: i32) -> Deployment {
    eventually(
        "deployment available",
        Duration::from_secs(30),
        async || {
            let d = c.api::<Deployment>(ns).get(name).await.ok()?;
            let s = d.status.clone()?;
            (s.available_replicas == Some(replicas)
                && s.updated_replicas == Some(replicas)
                && s.replicas == Some(replicas)
                && s.observed_generation == d.metadata.generation)
                .then_some(d)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_converges_after_pods_are_deleted() {
    let c = cluster(3, 110).await;
    let rs: ReplicaSet = from(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "cache"},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "cache"}},
            "template": {"metadata": {"labels": {"app": "cache"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }));
    c.client
        .api::<ReplicaSet>("default")
        .create(&rs)
        .await
        .expect("create rs");
    let first = eventually("5 running pods", Duration::from_secs(20), async || {
        let ps = pods(&c.client, "default", "app=cache").await;
        (ps.iter().filter(|p| running_ready(p)).count() == 5).then_some(ps)
    })
    .await;
    assert!(first.iter().all(|p| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| n.starts_with("hollow-"))
    }));
    let api = c.client.api::<Pod>("default");
    let gone: HashSet<String> = first[..2]
        .iter()
        .map(|p| p.metadata.uid.clone().expect("uid"))
        .collect();
    for p in &first[..2] {
        api.delete(
            p.metadata.name.as_deref().expect("name"),
            &DeleteParams::default(),
        )
        .await
        .expect("delete pod");
    }
    eventually("replacements", Duration::from_secs(20), async || {
        let ps = pods(&c.client, "default", "app=cache").await;
        let live: Vec<&Pod> = ps.iter().filter(|p| running_ready(p)).collect();
        (live.len() == 5
            && ps.len() == 5
            && live
                .iter()
                .all(|p| !gone.contains(p.metadata.uid.as_deref().unwrap_or_default())))
        .then_some(())
    })
    .await;
    // The controller writes the status after it sees the replacements become
    // ready, so the status catches up with the pods shortly after.
    eventually("status 5/5/5", Duration::from_secs(20), async || {
        let rs = c
            .client
            .api::<ReplicaSet>("default")
            .get("cache")
            .await
            .ok()?;
        let s = rs.status?;
        ((s.replicas, s.ready_replicas, s.available_replicas) == (5, Some(5), Some(5)))
            .then_some(())
    })
    .await;
    // Scale down: the surplus goes, and stays gone.
    c.client
        .api::<ReplicaSet>("default")
        .patch("cache", &json!({"spec": {"replicas": 2}}))
        .await
        .expect("scale");
    eventually("2 pods", Duration::from_secs(20), async || {
        (pods(&c.client, "default", "app=cache").await.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_enough_pods_ready_and_rollback_restores_the_template() {
    let c = cluster(3, 110).await;
    let api = c.client.api::<Deployment>("default");
    let replicas = 6;
    let d = deployment(
        "web",
        replicas,
        json!({"spec": {"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}}}),
    );
    api.create(&d).await.expect("create");
    wait_available(&c.client, "default", "web", replicas).await;

    // Count ready pods of the deployment at every pod event during the rollout.
    let min_ready = Arc::new(AtomicI64::new(i64::MAX));
    let max_active = Arc::new(AtomicI64::new(0));
    let informer = {
        let (min_ready, max_active) = (min_ready.clone(), max_active.clone());
        let active: Arc<parking_lot::Mutex<HashSet<String>>> = Arc::default();
        let ready: Arc<parking_lot::Mutex<HashMap<String, bool>>> = Arc::default();
        Informer::new(
            c.client.api::<Pod>("default"),
            ListParams::default().labels("app=web"),
        )
        .on_event(move |e| {
            let mut r = ready.lock();
            match e {
                skiff_client::informer::Event::Added(p)
                | skiff_client::informer::Event::Updated { new: p, .. } => {
                    r.insert(
                        p.metadata.name.clone().unwrap_or_default(),
                        running_ready(p),
                    );
                }
                skiff_client::informer::Event::Deleted(p) => {
                    r.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
            }
            let n = r.values().filter(|x| **x).count() as i64;
            min_ready.fetch_min(n, Ordering::Relaxed);
            let mut a = active.lock();
            match e {
                skiff_client::informer::Event::Added(p)
                | skiff_client::informer::Event::Updated { new: p, .. }
                    if p.metadata.deletion_timestamp.is_none() =>
                {
                    a.insert(p.metadata.name.clone().unwrap_or_default());
                }
                skiff_client::informer::Event::Added(p)
                | skiff_client::informer::Event::Updated { new: p, .. }
                | skiff_client::informer::Event::Deleted(p) => {
                    a.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
            }
            max_active.fetch_max(a.len() as i64, Ordering::Relaxed);
        })
        .start()
    };
    informer.reader.wait_synced().await;
    min_ready.store(i64::MAX, Ordering::Relaxed);
    let before = api.get("web").await.expect("get");
    let old_template = before.spec.clone().expect("spec").template;
    let mut next = before.clone();
    next.spec
        .as_mut()
        .expect("spec")
        .template
        .spec
        .as_mut()
        .expect("pod spec")
        .containers[0]
        .image = Some("busybox:v2".into());
    api.update(&next).await.expect("update template");
    let done = wait_available(&c.client, "default", "web", replicas).await;
    let low = min_ready.load(Ordering::Relaxed);
    assert!(low < i64::MAX, "no pod event seen during the rollout");
    assert!(
        low >= (replicas - 1) as i64,
        "ready pods dropped to {low} (< replicas - maxUnavailable)"
    );
    let high = max_active.load(Ordering::Relaxed);
    assert!(
        high <= (replicas + 1) as i64,
        "{high} pods at once (> replicas + maxSurge)"
    );
    assert_eq!(
        done.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("2")
    );
    let live = pods(&c.client, "default", "app=web").await;
    let live: Vec<&Pod> = live
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), replicas as usize);
    assert!(live.iter().all(|p| {
        p.spec.as_ref().expect("spec").containers[0]
            .image
            .as_deref()
            == Some("busybox:v2")
    }));
    let (_, hist) = skiff_controllers::deployment::history(&c.client, "default", "web")
        .await
        .expect("history");
    assert_eq!(hist.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        hist[0].1.spec.as_ref().and_then(|s| s.replicas),
        Some(0),
        "old set scaled to zero"
    );

    // Undo: revision 1's template comes back as revision 3, reusing its ReplicaSet.
    let to = skiff_controllers::deployment::rollback(&c.client, "default", "web", 0)
        .await
        .expect("undo");
    assert_eq!(to, 1);
    let back = wait_available(&c.client, "default", "web", replicas).await;
    assert_eq!(back.spec.expect("spec").template, old_template);
    let (_, hist) = skiff_controllers::deployment::history(&c.client, "default", "web")
        .await
        .expect("history");
    assert_eq!(hist.len(), 2, "the old set was reused, not duplicated");
    assert_eq!(hist.last().map(|(r, _)| *r), Some(3));
    assert_eq!(
        hist.last().and_then(|(_, s)| s
            .spec
            .as_ref()?
            .template
            .as_ref()?
            .spec
            .as_ref()?
            .containers[0]
            .image
            .clone()),
        Some("busybox:v1".into())
    );
    let e = skiff_controllers::deployment::rollback(&c.client, "default", "web", 9)
        .await
        .expect_err("no such revision");
    assert!(
        e.message.contains("unable to find specified revision 9"),
        "{e}"
    );
    drop(informer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_replaces_all_pods_at_once() {
    let c = cluster(2, 110).await;
    let api = c.client.api::<Deployment>("default");
    api.create(&deployment(
        "batch",
        3,
        json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}),
    ))
    .await
    .expect("create");
    wait_available(&c.client, "default", "batch", 3).await;
    api.patch(
        "batch",
        &json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}}),
    )
    .await
    .expect("update");
    let d = wait_available(&c.client, "default", "batch", 3).await;
    assert_eq!(
        d.status
            .and_then(|s| s.conditions)
            .map(|c| c.iter().any(|x| x.type_ == "Progressing"
                && x.reason.as_deref() == Some("NewReplicaSetAvailable"))),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_background_foreground_and_orphan() {
    let c = cluster(2, 110).await;
    let api = c.client.api::<Deployment>("default");
    for name in ["bg", "fg", "orphan"] {
        api.create(&deployment(name, 2, json!({})))
            .await
            .expect("create");
    }
    for name in ["bg", "fg", "orphan"] {
        wait_available(&c.client, "default", name, 2).await;
    }
    let sets = |app: &'static str| {
        let client = c.client.clone();
        async move {
            client
                .api::<ReplicaSet>("default")
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .expect("list")
                .items
        }
    };
    // Background: the Deployment goes at once, its ReplicaSet and pods follow.
    api.delete("bg", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("bg dependents gone", Duration::from_secs(20), async || {
        (sets("bg").await.is_empty() && pods(&c.client, "default", "app=bg").await.is_empty())
            .then_some(())
    })
    .await;
    // Foreground: the Deployment stays (with its finalizer) until its dependents are gone.
    let (obj, removed) = api
        .delete(
            "fg",
            &DeleteParams {
                propagation_policy: "Foreground".into(),
                ..Default::default()
            },
        )
        .await
        .expect("delete fg");
    assert!(!removed);
    assert!(
        obj.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    eventually(
        "fg gone after its dependents",
        Duration::from_secs(20),
        async || {
            let gone = api.get_opt("fg").await.ok()?.is_none();
            if !gone {
                return None;
            }
            assert!(
                sets("fg").await.is_empty(),
                "owner went before its ReplicaSet"
            );
            Some(())
        },
    )
    .await;
    // Orphan: the ReplicaSet stays, without its owner reference.
    api.delete(
        "orphan",
        &DeleteParams {
            propagation_policy: "Orphan".into(),
            ..Default::default()
        },
    )
    .await
    .expect("delete orphan");
    eventually("orphan owner gone", Duration::from_secs(20), async || {
        api.get_opt("orphan").await.ok()?.is_none().then_some(())
    })
    .await;
    let left = sets("orphan").await;
    assert_eq!(left.len(), 1);
    assert!(
        left[0]
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pods(&c.client, "default", "app=orphan").await.len(),
        2,
        "orphaned pods stay"
    );
    // A dependent of a ConfigMap goes with it too (any tracked kind can own).
    let cm: ConfigMap = from(json!({"metadata": {"name": "owner"}, "data": {"a": "1"}}));
    let owner = c
        .client
        .api::<ConfigMap>("default")
        .create(&cm)
        .await
        .expect("cm");
    let dep: ConfigMap = from(
        json!({"metadata": {"name": "dep", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
        "name": "owner", "uid": owner.metadata.uid}]}}),
    );
    c.client
        .api::<ConfigMap>("default")
        .create(&dep)
        .await
        .expect("dep");
    c.client
        .api::<ConfigMap>("default")
        .delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    eventually(
        "dependent configmap gone",
        Duration::from_secs(10),
        async || {
            c.client
                .api::<ConfigMap>("default")
                .get_opt("dep")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_cascades() {
    let c = cluster(2, 110).await;
    let ns: Namespace = from(json!({"metadata": {"name": "team-a"}}));
    c.client.api::<Namespace>("").create(&ns).await.expect("ns");
    c.client
        .api::<Deployment>("team-a")
        .create(&deployment("app", 3, json!({})))
        .await
        .expect("deploy");
    let cm: ConfigMap = from(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}}));
    c.client
        .api::<ConfigMap>("team-a")
        .create(&cm)
        .await
        .expect("cm");
    wait_available(&c.client, "team-a", "app", 3).await;
    c.client
        .api::<Namespace>("")
        .delete("team-a", &DeleteParams::default())
        .await
        .expect("delete ns");
    eventually("namespace removed", Duration::from_secs(30), async || {
        c.client
            .api::<Namespace>("")
            .get_opt("team-a")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    for plural in ["pods", "deployments", "replicasets", "configmaps"] {
        let l = c
            .client
            .list(plural, "team-a", &ListParams::default())
            .await
            .expect("list");
        assert!(l.items.is_empty(), "{plural} left in a deleted namespace");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_ready_and_terminating_pods() {
    let c = cluster(2, 110).await;
    c.client
        .api::<Deployment>("default")
        .create(&deployment("api", 3, json!({})))
        .await
        .expect("deploy");
    let svc: Service = from(
        json!({"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
    let svc = c
        .client
        .api::<Service>("default")
        .create(&svc)
        .await
        .expect("svc");
    wait_available(&c.client, "default", "api", 3).await;
    let slices = || async {
        c.client
            .api::<EndpointSlice>("default")
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await
            .expect("slices")
            .items
    };
    let slice = eventually("3 ready endpoints", Duration::from_secs(20), async || {
        let s = slices().await;
        (s.len() == 1
            && s[0].endpoints.len() == 3
            && s[0]
                .endpoints
                .iter()
                .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)))
        .then(|| s[0].clone())
    })
    .await;
    assert_eq!(
        slice.ports.as_ref().expect("ports")[0].port,
        Some(8080),
        "named target port resolved"
    );
    assert_eq!(
        slice.metadata.owner_references.as_ref().expect("owner")[0].uid,
        svc.metadata.uid.clone().expect("uid")
    );
    assert!(slice.endpoints.iter().all(|e| {
        e.node_name
            .as_deref()
            .is_some_and(|n| n.starts_with("hollow-"))
    }));
    // Scale to 1: the removed pods leave the slice once gone (hollow kubelets finish them).
    c.client
        .api::<Deployment>("default")
        .patch("api", &json!({"spec": {"replicas": 1}}))
        .await
        .expect("scale");
    eventually("1 endpoint", Duration::from_secs(20), async || {
        let s = slices().await;
        (s.len() == 1 && s[0].endpoints.len() == 1).then_some(())
    })
    .await;
    // Deleting the Service takes its slices with it.
    c.client
        .api::<Service>("default")
        .delete("api", &DeleteParams::default())
        .await
        .expect("delete svc");
    eventually("slices gone", Duration::from_secs(20), async || {
        slices().await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_not_ready_and_its_pods_are_replaced_elsewhere() {
    let c = cluster(3, 110).await;
    let d = deployment(
        "svc",
        6,
        json!({"spec": {"template": {"spec": {"tolerations": [
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}]}}}}),
    );
    c.client
        .api::<Deployment>("default")
        .create(&d)
        .await
        .expect("deploy");
    wait_available(&c.client, "default", "svc", 6).await;
    let ps = pods(&c.client, "default", "app=svc").await;
    let victim = ps[0]
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("bound");
    let on_victim = ps
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(victim.as_str()))
        .count();
    assert!(on_victim > 0);
    c.hollow.kill(&victim);
    let node =
        eventually(
            "node unknown and tainted",
            Duration::from_secs(20),
            async || {
                let n = c.client.api::<Node>("").get(&victim).await.ok()?;
                let ready = n
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "Ready")?
                    .status
                    .clone();
                let tainted =
                    n.spec.as_ref()?.taints.as_ref()?.iter().any(|t| {
                        t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                    });
                (ready == "Unknown" && tainted).then_some(n)
            },
        )
        .await;
    assert!(
        node.spec
            .and_then(|s| s.taints)
            .expect("taints")
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule")
    );
    // Its pods are evicted after their 1 s toleration and replaced on the live nodes.
    eventually(
        "6 ready pods on live nodes",
        Duration::from_secs(30),
        async || {
            let ps = pods(&c.client, "default", "app=svc").await;
            let live: Vec<&Pod> = ps.iter().filter(|p| running_ready(p)).collect();
            let elsewhere = live.iter().all(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(victim.as_str())
            });
            let evicted = ps
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(victim.as_str())
                })
                .all(|p| p.metadata.deletion_timestamp.is_some());
            (live.len() == 6 && elsewhere && evicted).then_some(())
        },
    )
    .await;
    // Back to life: Ready again, taints gone (the hollow node's lease renewals resume and
    // its status heartbeat is refreshed by re-registration).
    c.hollow.revive(&victim);
    c.client
        .api::<Node>("")
        .patch_status(&victim, &json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": skiff_client::events::now(), "lastTransitionTime": skiff_client::events::now()}]}}))
        .await
        .expect("kubelet posts Ready");
    eventually("taints removed", Duration::from_secs(20), async || {
        let n = c.client.api::<Node>("").get(&victim).await.ok()?;
        n.spec
            .as_ref()?
            .taints
            .as_ref()
            .is_none_or(|t| t.is_empty())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_never_double_books_and_reports_why() {
    let c = cluster(3, 10).await;
    let api = c.client.api::<Pod>("default");
    // 40 pods at once for 3 nodes x 10 pods.
    let creates = (0..40).map(|i| {
        let p: Pod = from(
            json!({"metadata": {"name": format!("p{i}"), "labels": {"batch": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        );
        let api = api.clone();
        async move { api.create(&p).await.expect("create pod") }
    });
    futures::future::join_all(creates).await;
    let (bound, pending) = eventually(
        "30 bound, 10 reported unschedulable",
        Duration::from_secs(30),
        async || {
            let ps = pods(&c.client, "default", "batch=x").await;
            let bound: Vec<&Pod> = ps
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .collect();
            let pending: Vec<&Pod> = ps
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                        })
                })
                .collect();
            (bound.len() == 30 && pending.len() == 10).then(|| {
                let mut per: BTreeMap<String, usize> = BTreeMap::new();
                for p in &bound {
                    *per.entry(
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_default(),
                    )
                    .or_default() += 1;
                }
                (
                    per,
                    pending.iter().map(|p| (*p).clone()).collect::<Vec<Pod>>(),
                )
            })
        },
    )
    .await;
    assert!(bound.values().all(|n| *n == 10), "{bound:?}");
    let message = pending[0]
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.message.clone());
    assert_eq!(
        message.as_deref(),
        Some("0/3 nodes are available: 3 Too many pods.")
    );
    // Room frees up: a pending pod is scheduled.
    let victim = pods(&c.client, "default", "batch=x")
        .await
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .expect("a bound pod");
    api.delete(
        victim.metadata.name.as_deref().expect("name"),
        &DeleteParams::default(),
    )
    .await
    .expect("delete");
    eventually(
        "a pending pod takes the room",
        Duration::from_secs(30),
        async || {
            let ps = pods(&c.client, "default", "batch=x").await;
            let bound = ps
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                })
                .count();
            (bound == 30 && ps.len() == 39).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_controller_manager_leads_and_another_takes_over() {
    let (client, _server, _dir) = server().await;
    let a = ControllerManager::start(client.clone(), manager_config("a"));
    let mut a_leads = a.leading.clone();
    tokio::time::timeout(Duration::from_secs(10), a_leads.wait_for(|l| *l))
        .await
        .expect("a leads")
        .expect("watch");
    let b = ControllerManager::start(client.clone(), manager_config("b"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!*b.leading.borrow(), "two leaders");
    drop(a);
    let mut b_leads = b.leading.clone();
    tokio::time::timeout(Duration::from_secs(10), b_leads.wait_for(|l| *l))
        .await
        .expect("b takes over")
        .expect("watch");
    let lease = client
        .api::<k8s_openapi::api::coordination::v1::Lease>("kube-system")
        .get("skiff-controller-manager")
        .await
        .expect("lease");
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
}
