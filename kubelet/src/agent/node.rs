//! The Node object and its Lease: registration with capacity and allocatable from the
//! machine and the agent's cgroup, addresses, pod CIDR and conditions; the Lease renewed
//! every `lease_period` (10 s by default) in `kube-node-lease`, as the kubelet does.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Namespace, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::{ApiError, Reason};
use skiff_client::Client;

use super::AgentConfig;

/// Memory the kubelet keeps back from allocatable (its default hard eviction threshold).
const EVICTION_RESERVE: u64 = 100 << 20;
/// Pods per node (the kubelet's default maxPods).
pub const MAX_PODS: u32 = 110;

fn meminfo_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// The memory limit of the agent's own (v1 or v2) cgroup, if it has one.
fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if ctrl.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if ctrl.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(file)
            && let Ok(n) = v.trim().parse::<u64>()
            // v1 reports "no limit" as a huge page-rounded number.
            && n < (1 << 60)
        {
            return Some(n);
        }
    }
    None
}

/// Capacity: CPUs, memory (the machine's, or the agent's cgroup limit when lower), pods.
pub fn capacity() -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut mem = meminfo_total();
    if let Some(limit) = cgroup_memory_limit() {
        mem = mem.min(limit);
    }
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(format!("{}Ki", mem / 1024))),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
    ])
}

fn allocatable(cap: &BTreeMap<String, Quantity>) -> BTreeMap<String, Quantity> {
    let mut a = cap.clone();
    if let Some(m) = cap
        .get("memory")
        .and_then(|q| skiff_api::validation::parse_quantity(&q.0))
    {
        let left = (m as u64).saturating_sub(EVICTION_RESERVE);
        a.insert("memory".into(), Quantity(format!("{}Ki", left / 1024)));
    }
    a
}

use skiff_client::events::{micro_now, now};

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now()),
        last_transition_time: Some(now()),
    }
}

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The Node as this agent reports it.
pub fn node_object(cfg: &AgentConfig) -> Node {
    let cap = capacity();
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.node_name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cfg.pod_cidr.to_string()),
            pod_cidrs: Some(vec![cfg.pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(allocatable(&cap)),
            capacity: Some(cap),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: cfg.node_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: cfg
                        .hostname
                        .clone()
                        .unwrap_or_else(|| cfg.node_name.clone()),
                },
            ]),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "skiff node agent is posting ready status",
                ),
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                container_runtime_version: format!("skiff://{}", env!("CARGO_PKG_VERSION")),
                kubelet_version: format!("v1.34.0-skiff.{}", env!("CARGO_PKG_VERSION")),
                kube_proxy_version: String::new(),
                kernel_version: kernel_version(),
                operating_system: "linux".into(),
                os_image: "Skiff".into(),
                machine_id: std::fs::read_to_string("/etc/machine-id")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                system_uuid: String::new(),
                ..Default::default()
            }),
            daemon_endpoints: (cfg.serve_port > 0).then(|| NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(cfg.serve_port),
                }),
            }),
            ..Default::default()
        }),
    }
}

/// Creates the Node, or takes over an existing one (a restarted agent) and reports its
/// status afresh.
pub async fn register(client: &Client, cfg: &AgentConfig) -> Result<Node, ApiError> {
    let nodes = client.api::<Node>("");
    let desired = node_object(cfg);
    match nodes.get_opt(&cfg.node_name).await? {
        None => match nodes.create(&desired).await {
            Ok(n) => {
                // Status is a sub-resource: create ignores it.
                let mut n = n;
                n.status = desired.status.clone();
                nodes.update_status(&n).await
            }
            Err(e) => Err(e),
        },
        Some(mut existing) => {
            existing.status = desired.status;
            let mut spec = existing.spec.take().unwrap_or_default();
            spec.pod_cidr = Some(cfg.pod_cidr.to_string());
            spec.pod_cidrs = Some(vec![cfg.pod_cidr.to_string()]);
            existing.spec = Some(spec);
            let mut labels = existing.metadata.labels.take().unwrap_or_default();
            labels.extend(desired.metadata.labels.unwrap_or_default());
            existing.metadata.labels = Some(labels);
            let updated = nodes.update(&existing).await?;
            let mut u = updated;
            u.status = existing.status;
            nodes.update_status(&u).await
        }
    }
}

/// Refreshes the heartbeat times of the node's conditions.
pub async fn heartbeat(client: &Client, cfg: &AgentConfig) -> Result<(), ApiError> {
    let nodes = client.api::<Node>("");
    let mut n = nodes.get(&cfg.node_name).await?;
    let fresh = node_object(cfg).status.unwrap_or_default();
    let mut status = n.status.take().unwrap_or_default();
    // Keep transition times of conditions whose status did not change.
    let old = status.conditions.take().unwrap_or_default();
    let conds = fresh
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if let Some(o) = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = o.last_transition_time.clone();
            }
            c
        })
        .collect();
    status.conditions = Some(conds);
    status.capacity = fresh.capacity;
    status.allocatable = fresh.allocatable;
    n.status = Some(status);
    nodes.update_status(&n).await.map(|_| ())
}

/// Whether the API shows this node Ready=True.
pub async fn reported_ready(client: &Client, cfg: &AgentConfig) -> Result<bool, ApiError> {
    let n = client.api::<Node>("").get(&cfg.node_name).await?;
    Ok(n.status
        .and_then(|s| s.conditions)
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(client: &Client, cfg: &AgentConfig) -> Result<(), ApiError> {
    let leases = client.api::<Lease>("kube-node-lease");
    let spec = LeaseSpec {
        holder_identity: Some(cfg.node_name.clone()),
        // Renewed every quarter of its duration, as the kubelet does (10 s of 40 s).
        lease_duration_seconds: Some((cfg.lease_period.as_secs_f64() * 4.0).ceil().max(1.0) as i32),
        renew_time: Some(micro_now()),
        ..Default::default()
    };
    match leases.get_opt(&cfg.node_name).await? {
        Some(mut l) => {
            l.spec = Some(spec);
            leases.update(&l).await.map(|_| ())
        }
        None => {
            let namespaces = client.api::<Namespace>("");
            if namespaces.get_opt("kube-node-lease").await?.is_none() {
                let ns = Namespace {
                    metadata: ObjectMeta {
                        name: Some("kube-node-lease".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                match namespaces.create(&ns).await {
                    Ok(_) => {}
                    Err(e) if e.reason == Reason::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.node_name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases.create(&lease).await.map(|_| ())
        }
    }
}
