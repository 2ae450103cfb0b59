//! Skiff's controller manager (kube-controller-manager's controllers over shared
//! informers): ReplicaSet, Deployment, EndpointSlice, node lifecycle (with taint-based
//! eviction), namespace deletion and garbage collection. One instance is active at a time:
//! the manager holds the `kube-system/skiff-controller-manager` Lease, renews it, and
//! stops its controllers if it loses it.
//!
//! Each controller is a work queue of keys fed by informer handlers and drained by a few
//! worker tasks; a key is never processed by two workers at once, and a failed sync is
//! retried with backoff.

pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod leader;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod util;
pub mod workqueue;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_client::events::Recorder;
use skiff_client::informer::{Event, Feed, Informer, InformerHandle, SharedInformers};
use skiff_client::{Client, ListParams};

use nodelifecycle::NodeLifecycleConfig;
use workqueue::{WorkQueue, run_workers};

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This manager's identity in the leader Lease.
    pub identity: String,
    /// Take the leader Lease before running (false: run at once, alone).
    pub leader_elect: bool,
    pub lease_duration: Duration,
    pub renew_period: Duration,
    /// Workers per controller.
    pub workers: usize,
    pub node_lifecycle: NodeLifecycleConfig,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            identity: format!("skiff-{}", std::process::id()),
            leader_elect: true,
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(2),
            workers: 5,
            node_lifecycle: NodeLifecycleConfig::default(),
        }
    }
}

/// The controllers while they run; they stop when this is dropped.
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    queues: Vec<Arc<WorkQueue>>,
    _informers: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for q in &self.queues {
            q.shutdown();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn boxed<K: Send + Sync + 'static>(h: InformerHandle<K>) -> Box<dyn std::any::Any + Send + Sync> {
    Box::new(h)
}

/// The pod informer the controllers read (with their indexes; compact: at 150,000 pods a
/// typed cache would take ~1.5 GB), for a process to share with its other components.
pub fn pod_informer(client: &Client) -> Informer<Pod> {
    use util::{BY_CONTROLLER, BY_NAMESPACE, controller_index, namespace_index};
    Informer::new(client.api::<Pod>(""), ListParams::default())
        .compact()
        .index(BY_NAMESPACE, namespace_index)
        .index(BY_CONTROLLER, controller_index)
        .index(util::BY_LABEL, util::label_index)
        .index(nodelifecycle::BY_NODE, nodelifecycle::node_index)
}

/// The informers `skiff server` shares between its scheduler and its controllers, running
/// while this lives.
pub struct SharedHandles {
    pub informers: SharedInformers,
    _pods: InformerHandle<Pod>,
    _nodes: InformerHandle<Node>,
}

/// Starts the pod informer (the controllers' indexes) and the node informer to share.
pub fn start_shared_informers(client: &Client) -> SharedHandles {
    let pods = pod_informer(client).start();
    let nodes = Informer::new(client.api::<Node>(""), ListParams::default()).start();
    SharedHandles {
        informers: SharedInformers {
            pods: Some(pods.reader.clone()),
            nodes: Some(nodes.reader.clone()),
        },
        _pods: pods,
        _nodes: nodes,
    }
}

/// Starts every controller (no leader election); returns once their informers synced.
pub async fn run_controllers(
    client: &Client,
    cfg: &ManagerConfig,
    shared: &SharedInformers,
) -> Running {
    use util::{BY_CONTROLLER, BY_NAMESPACE, controller_index, namespace_index};
    let all = ListParams::default();
    // Readers first (controllers hold them), handlers once the controllers exist.
    let pods_feed = Feed::new(shared.pods.as_ref(), || pod_informer(client));
    let pods_reader = pods_feed.reader.clone();
    let nodes = Feed::new(shared.nodes.as_ref(), || {
        Informer::new(client.api::<Node>(""), all.clone())
    });
    let nodes_reader = nodes.reader.clone();
    // Compact caches throughout (a decode per read): at 10,000 Deployments the typed
    // ReplicaSets, Deployments, Services and EndpointSlices alone took ~400 MB.
    let sets = Informer::new(client.api::<ReplicaSet>(""), all.clone())
        .compact()
        .index(BY_NAMESPACE, namespace_index)
        .index(BY_CONTROLLER, controller_index)
        .index(util::BY_LABEL, util::label_index);
    let deployments = Informer::new(client.api::<Deployment>(""), all.clone())
        .compact()
        .index(BY_NAMESPACE, namespace_index);
    let services = Informer::new(client.api::<Service>(""), all.clone())
        .compact()
        .index(BY_NAMESPACE, namespace_index)
        .index(endpointslice::BY_SELECTOR, endpointslice::selector_index);
    let slices = Informer::new(client.api::<EndpointSlice>(""), all.clone())
        .compact()
        .index(endpointslice::BY_SERVICE, endpointslice::service_index);
    let configmaps = Informer::new(client.api::<ConfigMap>(""), all.clone()).compact();
    let secrets = Informer::new(client.api::<Secret>(""), all.clone()).compact();
    let leases = Informer::new(
        client.api::<Lease>(nodelifecycle::LEASE_NAMESPACE),
        all.clone(),
    );
    let namespaces = Informer::new(client.api::<Namespace>(""), all.clone());

    let q = || WorkQueue::new();
    let (rs_q, d_q, es_q, gc_q, ns_q) = (q(), q(), q(), q(), q());
    let rs = Arc::new(replicaset::ReplicaSetController {
        client: client.clone(),
        sets: sets.reader(),
        pods: pods_reader.clone(),
        queue: rs_q.clone(),
        expectations: Default::default(),
        recorder: Recorder::new(client.clone(), "replicaset-controller", None),
    });
    let dc = Arc::new(deployment::DeploymentController {
        client: client.clone(),
        deployments: deployments.reader(),
        sets: sets.reader(),
        pods: pods_reader.clone(),
        queue: d_q.clone(),
        recorder: Recorder::new(client.clone(), "deployment-controller", None),
    });
    let es = Arc::new(endpointslice::EndpointSliceController {
        client: client.clone(),
        services: services.reader(),
        pods: pods_reader.clone(),
        slices: slices.reader(),
        queue: es_q.clone(),
        pending: Default::default(),
    });
    let gc = Arc::new(gc::GarbageCollector::new(client.clone(), gc_q.clone()));
    let nc = Arc::new(namespace::NamespaceController {
        client: client.clone(),
        namespaces: namespaces.reader(),
        queue: ns_q.clone(),
    });
    let nl = Arc::new(nodelifecycle::NodeLifecycleController::new(
        client.clone(),
        nodes_reader.clone(),
        leases.reader(),
        pods_reader.clone(),
        cfg.node_lifecycle.clone(),
        Recorder::new(client.clone(), "node-controller", None),
    ));

    let on_pod = {
        let (rs, dc, es, gc) = (rs.clone(), dc.clone(), es.clone(), gc.clone());
        move |e: &Event<Pod>| {
            rs.on_pod(e);
            dc.on_pod(e);
            es.on_pod(e);
            gc.on_event("pods", e);
        }
    };
    let pods = pods_feed.subscribe(on_pod);

    let sets = {
        let (rs, dc, gc) = (rs.clone(), dc.clone(), gc.clone());
        sets.on_event(move |e| {
            rs.on_set(e);
            dc.on_set(e);
            gc.on_event("replicasets", e);
        })
    };
    let deployments = {
        let (dc, gc) = (dc.clone(), gc.clone());
        deployments.on_event(move |e| {
            dc.on_deployment(e);
            gc.on_event("deployments", e);
        })
    };
    let services = {
        let (es, gc) = (es.clone(), gc.clone());
        services.on_event(move |e| {
            es.on_service(e);
            gc.on_event("services", e);
        })
    };
    let slices = {
        let (es, gc) = (es.clone(), gc.clone());
        slices.on_event(move |e| {
            es.on_slice(e);
            gc.on_event("endpointslices", e);
        })
    };
    let configmaps = {
        let gc = gc.clone();
        configmaps.on_event(move |e| gc.on_event("configmaps", e))
    };
    let secrets = {
        let gc = gc.clone();
        secrets.on_event(move |e| gc.on_event("secrets", e))
    };
    let namespaces = {
        let nc = nc.clone();
        namespaces.on_event(move |e| nc.on_namespace(e))
    };
    let handles: Vec<Box<dyn std::any::Any + Send + Sync>> = vec![
        Box::new(pods),
        Box::new(nodes),
        boxed(sets.start()),
        boxed(deployments.start()),
        boxed(services.start()),
        boxed(slices.start()),
        boxed(configmaps.start()),
        boxed(secrets.start()),
        boxed(leases.start()),
        boxed(namespaces.start()),
    ];
    // Work only against synced caches.
    rs.pods.wait_synced().await;
    rs.sets.wait_synced().await;
    dc.deployments.wait_synced().await;
    es.services.wait_synced().await;
    es.slices.wait_synced().await;
    nc.namespaces.wait_synced().await;

    let w = cfg.workers.max(1);
    let mut tasks = Vec::new();
    tasks.extend(run_workers("replicaset", rs_q.clone(), w, move |k| {
        rs.clone().sync(k)
    }));
    tasks.extend(run_workers("deployment", d_q.clone(), w, move |k| {
        dc.clone().sync(k)
    }));
    tasks.extend(run_workers("endpointslice", es_q.clone(), w, move |k| {
        es.clone().sync(k)
    }));
    tasks.extend(run_workers(
        "garbagecollector",
        gc_q.clone(),
        w * 2,
        move |k| gc.clone().sync(k),
    ));
    tasks.extend(run_workers("namespace", ns_q.clone(), 2, move |k| {
        nc.clone().sync(k)
    }));
    tasks.push(tokio::spawn(nl.run()));
    Running {
        tasks,
        queues: vec![rs_q, d_q, es_q, gc_q, ns_q],
        _informers: handles,
    }
}

/// The controller manager: elects itself through the Lease, then runs the controllers
/// while it holds it. Stops when dropped.
pub struct ControllerManager {
    task: tokio::task::JoinHandle<()>,
    pub leading: tokio::sync::watch::Receiver<bool>,
}

impl Drop for ControllerManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ControllerManager {
    pub fn start(client: Client, cfg: ManagerConfig) -> ControllerManager {
        Self::start_shared(client, cfg, SharedInformers::default())
    }

    /// Like [`ControllerManager::start`], reading the process's shared informers where given.
    pub fn start_shared(
        client: Client,
        cfg: ManagerConfig,
        shared: SharedInformers,
    ) -> ControllerManager {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            if !cfg.leader_elect {
                let _running = run_controllers(&client, &cfg, &shared).await;
                tx.send_replace(true);
                std::future::pending::<()>().await;
            }
            let elector = leader::Elector::new(
                client.clone(),
                "kube-system",
                "skiff-controller-manager",
                &cfg.identity,
                cfg.lease_duration,
            );
            loop {
                elector.acquire(cfg.renew_period).await;
                tracing::info!(identity = %cfg.identity, "became the controller-manager leader");
                let running = run_controllers(&client, &cfg, &shared).await;
                tx.send_replace(true);
                elector.hold(cfg.renew_period).await;
                tracing::warn!(identity = %cfg.identity, "lost the controller-manager lease; stopping controllers");
                tx.send_replace(false);
                drop(running);
            }
        });
        ControllerManager { task, leading: rx }
    }
}
