//! Hollow nodes, as KWOK makes them: Nodes that register, renew their Lease every lease
//! period and report pods bound to them as Running and Ready, without starting anything.
//! They let the control plane (scheduler, controllers, API server, watch cache) be
//! measured at Kubernetes' published limits on one machine, and controller tests run
//! against nodes that behave like kubelets.
//!
//! A hollow pod's IP is a label, never routed: addresses are handed out from 198.18.0.0/15
//! in order (they repeat past 131,072 pods).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::RwLock;
use serde_json::json;
use skiff_api::ApiError;
use skiff_api::Reason;
use skiff_client::events::{micro_now, now};
use skiff_client::informer::{Event, Informer, InformerHandle};
use skiff_client::{Api, Client, DeleteParams, ListParams};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";

#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// Node names are `<prefix><i>`.
    pub prefix: String,
    pub count: usize,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub lease_period: Duration,
    /// Zones to spread nodes over (`topology.kubernetes.io/zone=zone-<i % zones>`).
    pub zones: usize,
    /// Status writes and deletions in flight at once.
    pub concurrency: usize,
    /// Report bound pods Running (false: leave them as the scheduler bound them, as
    /// scheduler benchmarks do).
    pub run_pods: bool,
    /// Label nodes `hollow.skiff.dev/group=g<i % groups>`.
    pub groups: usize,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig {
            prefix: "hollow-".into(),
            count: 1,
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            lease_period: Duration::from_secs(10),
            zones: 3,
            concurrency: 64,
            run_pods: true,
            groups: 2,
        }
    }
}

/// Counters for benchmarks and tests.
#[derive(Debug, Default)]
pub struct HollowStats {
    pub pods_started: AtomicU64,
    pub pods_removed: AtomicU64,
    pub lease_renewals: AtomicU64,
}

/// Running hollow nodes; they stop (and stop heartbeating) when dropped.
pub struct HollowNodes {
    pub names: Vec<String>,
    pub stats: Arc<HollowStats>,
    stopped: Arc<RwLock<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _pods: Option<InformerHandle<Pod>>,
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn node_object(cfg: &HollowConfig, name: &str, i: usize) -> Node {
    let resources = BTreeMap::from([
        ("cpu".to_string(), cfg.cpu.clone()),
        ("memory".to_string(), cfg.memory.clone()),
        ("pods".to_string(), cfg.pods.to_string()),
    ]);
    let ready = json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "hollow node is posting ready status",
        "lastHeartbeatTime": now(), "lastTransitionTime": now()});
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": format!("zone-{}", i % cfg.zones.max(1)),
            "type": "hollow",
            "hollow.skiff.dev/group": format!("g{}", i % cfg.groups.max(1)),
        }},
        "spec": {},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [ready],
            "addresses": [{"type": "InternalIP", "address": pod_ip(i as u32).to_string()}],
            "nodeInfo": {"kubeletVersion": "skiff-hollow", "operatingSystem": "linux",
                "architecture": "amd64", "containerRuntimeVersion": "hollow://0",
                "kernelVersion": "", "osImage": "", "kubeProxyVersion": "", "machineID": "",
                "systemUUID": "", "bootID": ""},
        },
    }))
    .unwrap_or_default()
}

/// The `n`-th address of 198.18.0.0/15 (wrapping).
fn pod_ip(n: u32) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    Ipv4Addr::from(base + (n % (1 << 17)))
}

async fn register(nodes: &Api<Node>, obj: &Node) -> Result<(), ApiError> {
    match nodes.create(obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == Reason::AlreadyExists => {
            let name = obj.metadata.name.as_deref().unwrap_or_default();
            let status = serde_json::to_value(&obj.status).unwrap_or_default();
            nodes
                .patch_status(name, &json!({"status": status}))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

async fn renew(leases: &Api<Lease>, name: &str) -> Result<(), ApiError> {
    let spec = LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some(40),
        renew_time: Some(micro_now()),
        ..Default::default()
    };
    match leases
        .patch(name, &json!({"spec": {"renewTime": micro_now()}}))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.reason == Reason::NotFound => leases
            .create(&Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(spec),
            })
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

impl HollowNodes {
    /// Registers the nodes, starts their heartbeats and pod handling. Returns once every
    /// node is registered.
    pub async fn start(client: &Client, cfg: HollowConfig) -> Result<HollowNodes, ApiError> {
        let names: Vec<String> = (0..cfg.count)
            .map(|i| format!("{}{i}", cfg.prefix))
            .collect();
        let nodes = client.api::<Node>("");
        let sem = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
        let mut joins = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (nodes, obj, sem) = (nodes.clone(), node_object(&cfg, name, i), sem.clone());
            joins.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                register(&nodes, &obj).await
            }));
        }
        for j in joins {
            j.await
                .map_err(|e| ApiError::internal(format!("registration task: {e}")))??;
        }
        let stats = Arc::new(HollowStats::default());
        let stopped: Arc<RwLock<HashSet<String>>> = Arc::default();
        let mut tasks = Vec::new();
        // Leases: every node once per period, spread evenly over it.
        {
            let leases = client.api::<Lease>(LEASE_NAMESPACE);
            let (names, stats, stopped, period, sem) = (
                names.clone(),
                stats.clone(),
                stopped.clone(),
                cfg.lease_period,
                sem.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let step = period / (names.len().max(1) as u32);
                let mut tick = tokio::time::interval(step.max(Duration::from_micros(100)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut i = 0usize;
                loop {
                    tick.tick().await;
                    let name = names[i % names.len()].clone();
                    i += 1;
                    if stopped.read().contains(&name) {
                        continue;
                    }
                    let (leases, stats, sem) = (leases.clone(), stats.clone(), sem.clone());
                    tokio::spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        match renew(&leases, &name).await {
                            Ok(()) => {
                                stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                tracing::debug!(node = %name, error = %e, "lease renewal failed")
                            }
                        }
                    });
                }
            }));
        }
        // Node name -> its InternalIP (the hostIP of its pods), as registered.
        let mine: Arc<HashMap<String, String>> = Arc::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), pod_ip(i as u32).to_string()))
                .collect(),
        );
        let next_ip = Arc::new(AtomicU32::new(1 << 10));
        let pods = cfg.run_pods.then(|| {
            let (client, stats, stopped, sem) =
                (client.clone(), stats.clone(), stopped.clone(), sem.clone());
            Informer::new(client.api::<Pod>(""), ListParams::default())
                .on_event(move |e| {
                    let (Event::Added(p) | Event::Updated { new: p, .. }) = e else {
                        return;
                    };
                    let Some(node) = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .filter(|n| mine.contains_key(*n))
                    else {
                        return;
                    };
                    if stopped.read().contains(node) {
                        return;
                    }
                    let ns = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let api = client.api::<Pod>(&ns);
                    let (stats, sem) = (stats.clone(), sem.clone());
                    if p.metadata.deletion_timestamp.is_some() {
                        let uid = p.metadata.uid.clone();
                        tokio::spawn(async move {
                            let _permit = sem.acquire_owned().await;
                            let params = DeleteParams {
                                grace_period_seconds: Some(0),
                                precondition_uid: uid.unwrap_or_default(),
                                ..Default::default()
                            };
                            if api.delete(&name, &params).await.is_ok() {
                                stats.pods_removed.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        return;
                    }
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    if phase == Some("Running") {
                        return;
                    }
                    let ip = pod_ip(next_ip.fetch_add(1, Ordering::Relaxed));
                    let host_ip = mine.get(node).cloned().unwrap_or_default();
                    let containers: Vec<serde_json::Value> = p
                        .spec
                        .as_ref()
                        .map(|s| s.containers.as_slice())
                        .unwrap_or_default()
                        .iter()
                        .map(|c| json!({"name": c.name, "image": c.image, "imageID": "",
                            "ready": true, "started": true, "restartCount": 0,
                            "state": {"running": {"startedAt": now()}}}))
                        .collect();
                    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now()});
                    let patch = json!({"status": {
                        "phase": "Running",
                        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
                        "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                        "hostIP": host_ip, "startTime": now(),
                        "containerStatuses": containers,
                    }});
                    tokio::spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        match api.patch_status(&name, &patch).await {
                            Ok(_) => {
                                stats.pods_started.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tracing::debug!(pod = %name, error = %e, "hollow status write failed"),
                        }
                    });
                })
                .start()
        });
        Ok(HollowNodes {
            names,
            stats,
            stopped,
            tasks,
            _pods: pods,
        })
    }

    /// Stops one node as a dead kubelet would: no more lease renewals, pods left as they
    /// are.
    pub fn kill(&self, name: &str) {
        self.stopped.write().insert(name.to_string());
    }

    /// Brings a killed node back.
    pub fn revive(&self, name: &str) {
        self.stopped.write().remove(name);
    }
}
