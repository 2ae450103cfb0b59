//! The node lifecycle controller: a node whose kubelet stopped renewing its Lease (and
//! posting status) for `grace_period` gets its conditions set to Unknown
//! ("Kubelet stopped posting node status."), its pods marked not Ready (so endpoints drop
//! them), and the `node.kubernetes.io/unreachable` taints (`not-ready` when the kubelet
//! reports Ready=False). Taint-based eviction then deletes pods that do not tolerate a
//! NoExecute taint, or once their `tolerationSeconds` ran out; their controllers replace
//! them elsewhere. A node that comes back loses the taints. Periods are configurable so
//! tests run in seconds (Kubernetes: monitor 5 s, grace 40 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use parking_lot::Mutex;
use serde_json::json;
use skiff_api::ApiError;
use skiff_api::selector::tolerates;
use skiff_client::events::{Recorder, now, reference};
use skiff_client::informer::Reader;
use skiff_client::{Client, DeleteParams};

use crate::util::is_active;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The index of pods by node name.
pub const BY_NODE: &str = "node";

pub fn node_index(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .into_iter()
        .collect()
}

#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    pub monitor_period: Duration,
    pub grace_period: Duration,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
        }
    }
}

pub struct NodeLifecycleController {
    pub client: Client,
    pub nodes: Reader<Node>,
    pub leases: Reader<Lease>,
    pub pods: Reader<Pod>,
    pub cfg: NodeLifecycleConfig,
    pub recorder: Recorder,
    /// When this controller first saw each node (the heartbeat of a node never heard from).
    first_seen: Mutex<HashMap<String, i64>>,
}

fn millis_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ready_status(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

fn is_ours(t: &Taint) -> bool {
    (t.key == UNREACHABLE || t.key == NOT_READY)
        && (t.effect == "NoExecute" || t.effect == "NoSchedule")
}

impl NodeLifecycleController {
    pub fn new(
        client: Client,
        nodes: Reader<Node>,
        leases: Reader<Lease>,
        pods: Reader<Pod>,
        cfg: NodeLifecycleConfig,
        recorder: Recorder,
    ) -> NodeLifecycleController {
        NodeLifecycleController {
            client,
            nodes,
            leases,
            pods,
            cfg,
            recorder,
            first_seen: Mutex::default(),
        }
    }

    /// Runs the monitor loop until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !(self.nodes.has_synced() && self.leases.has_synced() && self.pods.has_synced()) {
                continue;
            }
            for node in self.nodes.list() {
                if let Err(e) = self.monitor(&node).await {
                    tracing::debug!(node = ?node.metadata.name, error = %e, "node monitor failed");
                }
                if let Err(e) = self.evict(&node).await {
                    tracing::debug!(node = ?node.metadata.name, error = %e, "taint eviction failed");
                }
            }
        }
    }

    /// The latest sign of life: Lease renewal or Ready heartbeat, in ms.
    fn last_heartbeat(&self, node: &Node) -> i64 {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = self
            .leases
            .get(&format!("{LEASE_NAMESPACE}/{name}"))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.as_millisecond())
            });
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0.as_millisecond()));
        let seen = *self
            .first_seen
            .lock()
            .entry(name)
            .or_insert_with(millis_now);
        lease.into_iter().chain(ready).max().unwrap_or(seen)
    }

    async fn monitor(&self, node: &Node) -> Result<(), ApiError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut ready = ready_status(node).unwrap_or_else(|| "Unknown".into());
        let silent = millis_now() - self.last_heartbeat(node);
        if silent > self.cfg.grace_period.as_millis() as i64 && ready != "Unknown" {
            // The kubelet stopped posting: every condition it owns becomes Unknown.
            let conditions: Vec<serde_json::Value> = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                        "message": "Kubelet stopped posting node status.",
                        "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now()})
                })
                .collect();
            self.client
                .api::<Node>("")
                .patch_status(&name, &json!({"status": {"conditions": conditions}}))
                .await?;
            self.recorder.record(
                reference(node),
                "Normal",
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            );
            ready = "Unknown".into();
            self.mark_pods_not_ready(&name).await;
        }
        // Taints follow the Ready condition.
        let mut taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let key = match ready.as_str() {
            "True" => None,
            "False" => Some(NOT_READY),
            _ => Some(UNREACHABLE),
        };
        let before = taints.clone();
        taints.retain(|t| !is_ours(t) || Some(t.key.as_str()) == key);
        if let Some(k) = key {
            for effect in ["NoSchedule", "NoExecute"] {
                if !taints.iter().any(|t| t.key == k && t.effect == effect) {
                    taints.push(Taint {
                        key: k.into(),
                        effect: effect.into(),
                        time_added: (effect == "NoExecute").then(now),
                        value: None,
                    });
                }
            }
        }
        if taints != before {
            let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"taints": taints}});
            crate::util::unless_gone_or_changed(
                self.client.api::<Node>("").patch(&name, &patch).await,
            )?;
        }
        Ok(())
    }

    async fn mark_pods_not_ready(&self, node: &str) {
        for p in self.pods.by_index(BY_NODE, node) {
            if !is_active(&p) {
                continue;
            }
            let mut conditions: Vec<serde_json::Value> = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| serde_json::to_value(c).unwrap_or_default())
                .collect();
            let mut changed = false;
            for c in conditions.iter_mut() {
                if c["type"] == "Ready" && c["status"] != "False" {
                    c["status"] = "False".into();
                    c["reason"] = "NodeNotReady".into();
                    c["lastTransitionTime"] = json!(now());
                    changed = true;
                }
            }
            if !changed {
                continue;
            }
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            if let Err(e) = self
                .client
                .api::<Pod>(&ns)
                .patch_status(&name, &json!({"status": {"conditions": conditions}}))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "cannot mark pod not ready");
            }
        }
    }

    /// Deletes the node's pods whose tolerations of its NoExecute taints ran out.
    async fn evict(&self, node: &Node) -> Result<(), ApiError> {
        let taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if taints.is_empty() {
            return Ok(());
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let now_ms = millis_now();
        for p in self.pods.by_index(BY_NODE, &name) {
            if !is_active(&p) {
                continue;
            }
            let tolerations = p
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            // The earliest moment any taint's toleration expires (None: tolerated forever).
            let mut deadline: Option<i64> = None;
            let mut evict_now = false;
            for t in &taints {
                let matching: Vec<_> = tolerations.iter().filter(|tol| tolerates(tol, t)).collect();
                if matching.is_empty() {
                    evict_now = true;
                    break;
                }
                // The smallest tolerationSeconds among matching tolerations; any without
                // one tolerates forever only if none has a limit.
                let secs = matching
                    .iter()
                    .filter_map(|tol| tol.toleration_seconds)
                    .min();
                if let Some(s) = secs {
                    let added = t
                        .time_added
                        .as_ref()
                        .map_or(now_ms, |x| x.0.as_millisecond());
                    let d = added + s.max(0) * 1000;
                    deadline = Some(deadline.map_or(d, |x: i64| x.min(d)));
                }
            }
            if evict_now || deadline.is_some_and(|d| d <= now_ms) {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let pname = p.metadata.name.clone().unwrap_or_default();
                self.recorder.record(
                    reference(&*p),
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {ns}/{pname}"),
                );
                crate::util::unless_gone_or_changed(
                    self.client
                        .api::<Pod>(&ns)
                        .delete(
                            &pname,
                            &DeleteParams {
                                precondition_uid: p.metadata.uid.clone().unwrap_or_default(),
                                ..Default::default()
                            },
                        )
                        .await,
                )?;
            }
        }
        Ok(())
    }
}
