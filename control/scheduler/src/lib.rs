//! Skiff's scheduler (kube-scheduler's design): informers feed a cache of nodes and placed
//! pods; pending pods wait in a priority queue with backoff and an unschedulable pool; one
//! scheduling thread takes a pod, filters a sample of nodes in parallel (rayon), scores
//! the feasible ones with kube-scheduler's default plugins and weights, *assumes* the pod
//! on the best node in the cache, and hands the binding to the async runtime, so the next
//! pod is scheduled while bindings are in flight (the API server's group commit writes
//! concurrent bindings together). When nothing fits, the pod gets a `FailedScheduling`
//! event and a `PodScheduled=False` condition naming the reasons, as kube-scheduler words
//! them.

pub mod cache;
pub mod plugins;
pub mod queue;
pub mod resources;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use rayon::prelude::*;
use skiff_api::Reason;
use skiff_client::events::{Recorder, reference};
use skiff_client::informer::{Event, Informer, InformerHandle, key_of};
use skiff_client::{Client, ListParams};

use cache::{Cache, PodInfo, SharedCache};
use plugins::{Cycle, fit_error};
use queue::{Outcome, Queue};

/// The scheduler's name in `spec.schedulerName` (pods naming another are left alone).
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Filtering goes parallel from this many nodes on.
const PARALLEL_FROM: usize = 256;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub name: String,
    /// Share of nodes to look at per pod; `None`: kube-scheduler's adaptive default
    /// (50% minus 1% per 125 nodes, at least 5%, at least 100 nodes).
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
    /// Record a `Scheduled` event per bound pod (kube-scheduler does).
    pub scheduled_events: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            name: DEFAULT_SCHEDULER.into(),
            percentage_of_nodes_to_score: None,
            bind_concurrency: 256,
            scheduled_events: true,
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub scheduled: AtomicU64,
    pub unschedulable: AtomicU64,
    pub bind_errors: AtomicU64,
}

/// A running scheduler; stops when dropped.
pub struct Scheduler {
    pub cache: SharedCache,
    pub queue: Arc<Queue>,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _nodes: InformerHandle<Node>,
    _pods: InformerHandle<Pod>,
}

fn responsible(pod: &Pod, name: &str) -> bool {
    let spec = pod.spec.as_ref();
    let wanted = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_SCHEDULER);
    wanted == name
}

fn assigned(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// How many feasible nodes to find before scoring (kube-scheduler's
/// numFeasibleNodesToFind).
pub fn nodes_to_find(total: usize, percentage: Option<u32>) -> usize {
    const MIN_NODES: usize = 100;
    if total < MIN_NODES {
        return total;
    }
    let pct = match percentage {
        Some(p) if p > 0 => p.min(100) as usize,
        _ => (50usize.saturating_sub(total / 125)).max(5),
    };
    (total * pct / 100).max(MIN_NODES)
}

/// Why a pod does not fit anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub total: usize,
    pub reasons: HashMap<String, usize>,
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&fit_error(self.total, &self.reasons))
    }
}

#[derive(Default)]
struct Found {
    feasible: Vec<usize>,
    reasons: HashMap<String, usize>,
    looked: usize,
}

impl Found {
    fn merge(mut self, o: Found) -> Found {
        self.feasible.extend(o.feasible);
        for (r, n) in o.reasons {
            *self.reasons.entry(r).or_default() += n;
        }
        self.looked += o.looked;
        self
    }
}

/// One scheduling decision for `pod` against `cache`: the node, or why none fits.
/// `start` rotates where sampling begins, so every node gets its turn.
pub fn schedule_one(
    cache: &Cache,
    pod: &Pod,
    start: &mut usize,
    percentage: Option<u32>,
) -> Result<String, FitError> {
    let total = cache.order.len();
    if total == 0 {
        return Err(FitError {
            total,
            reasons: HashMap::new(),
        });
    }
    let cycle = Cycle::new(pod, cache);
    let want = nodes_to_find(total, percentage);
    let found_count = AtomicUsize::new(0);
    let first = *start % total;
    let check = |mut acc: Found, i: usize| {
        if found_count.load(Ordering::Relaxed) >= want {
            return acc;
        }
        let idx = (first + i) % total;
        let Some(node) = cache.nodes.get(&cache.order[idx]) else {
            return acc;
        };
        acc.looked += 1;
        match cycle.filter(node) {
            Ok(()) => {
                found_count.fetch_add(1, Ordering::Relaxed);
                acc.feasible.push(i);
            }
            Err(rs) => {
                for r in rs {
                    *acc.reasons.entry(r).or_default() += 1;
                }
            }
        }
        acc
    };
    let mut found = if total >= PARALLEL_FROM {
        (0..total)
            .into_par_iter()
            .with_min_len(64)
            .fold(Found::default, check)
            .reduce(Found::default, Found::merge)
    } else {
        (0..total).fold(Found::default(), check)
    };
    *start = (first + found.looked) % total;
    if found.feasible.is_empty() {
        return Err(FitError {
            total,
            reasons: found.reasons,
        });
    }
    found.feasible.sort_unstable();
    found.feasible.truncate(want);
    let nodes: Vec<_> = found
        .feasible
        .iter()
        .filter_map(|i| cache.nodes.get(&cache.order[(first + i) % total]))
        .collect();
    if nodes.len() == 1 {
        return Ok(nodes[0].name.clone());
    }
    let scores = cycle.score(&nodes);
    // Highest score; ties broken uniformly at random (reservoir sampling).
    let mut best = 0;
    let mut ties = 0u32;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
            ties = 1;
        } else if *s == scores[best] {
            ties += 1;
            if rand::random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    Ok(nodes[best].name.clone())
}

impl Scheduler {
    /// Starts the informers and the scheduling thread. Call inside a tokio runtime.
    pub fn start(client: Client, cfg: SchedulerConfig) -> Scheduler {
        let cache: SharedCache = Arc::default();
        let queue = Arc::new(Queue::new());
        let stats = Arc::new(Stats::default());
        let nodes = {
            let (cache, queue) = (cache.clone(), queue.clone());
            Informer::new(client.api::<Node>(""), ListParams::default())
                .on_event(move |e| match e {
                    Event::Added(n) | Event::Updated { new: n, .. } => {
                        cache.write().upsert_node(n);
                        queue.move_all_to_active();
                    }
                    Event::Deleted(n) => {
                        cache
                            .write()
                            .remove_node(n.metadata.name.as_deref().unwrap_or_default());
                    }
                })
                .start()
        };
        let pods = {
            let (cache, queue, name) = (cache.clone(), queue.clone(), cfg.name.clone());
            Informer::new(client.api::<Pod>(""), ListParams::default())
                .on_event(move |e| match e {
                    Event::Added(p) | Event::Updated { new: p, .. } => {
                        let key = key_of(&**p);
                        match assigned(p) {
                            Some(node) if terminal(p) => {
                                let _ = node;
                                if cache.write().remove_pod(&key).is_some() {
                                    queue.move_all_to_active();
                                }
                                queue.remove(&key);
                            }
                            Some(node) => {
                                cache.write().add_pod(PodInfo::new(p, node));
                                queue.remove(&key);
                            }
                            None if p.metadata.deletion_timestamp.is_some() => queue.remove(&key),
                            None if responsible(p, &name) => {
                                let assumed =
                                    cache.read().pods.get(&key).is_some_and(|i| i.assumed);
                                if !assumed {
                                    queue.add(&key, p.clone());
                                }
                            }
                            None => {}
                        }
                    }
                    Event::Deleted(p) => {
                        let key = key_of(&**p);
                        queue.remove(&key);
                        if cache.write().remove_pod(&key).is_some() {
                            queue.move_all_to_active();
                        }
                    }
                })
                .start()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let ctx = Context {
                client: client.clone(),
                recorder: Recorder::new(client, &cfg.name, None),
                cache: cache.clone(),
                queue: queue.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                rt: tokio::runtime::Handle::current(),
                binds: Arc::new(tokio::sync::Semaphore::new(cfg.bind_concurrency.max(1))),
                cfg,
                node_reader: nodes.reader.clone(),
                pod_reader: pods.reader.clone(),
            };
            std::thread::Builder::new()
                .name("skiff-scheduler".into())
                .spawn(move || ctx.run())
                .ok()
        };
        if thread.is_none() {
            tracing::error!("cannot start the scheduling thread");
        }
        Scheduler {
            cache,
            queue,
            stats,
            stop,
            thread,
            _nodes: nodes,
            _pods: pods,
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Context {
    client: Client,
    recorder: Recorder,
    cache: SharedCache,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
    binds: Arc<tokio::sync::Semaphore>,
    cfg: SchedulerConfig,
    node_reader: skiff_client::informer::Reader<Node>,
    pod_reader: skiff_client::informer::Reader<Pod>,
}

impl Context {
    fn run(self) {
        // Schedule against a synced view only.
        while !(self.node_reader.has_synced() && self.pod_reader.has_synced()) {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut start = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            let Some((key, pod)) = self.queue.pop(Duration::from_millis(500)) else {
                continue;
            };
            if self.cache.read().pods.contains_key(&key) {
                // Already placed (bound meanwhile, or assumed).
                self.queue.done(&key, Outcome::Done);
                continue;
            }
            let decision = {
                let cache = self.cache.read();
                schedule_one(
                    &cache,
                    &pod,
                    &mut start,
                    self.cfg.percentage_of_nodes_to_score,
                )
            };
            match decision {
                Ok(node) => {
                    let info = Cycle::new(&pod, &Cache::default()).placed(&pod, &node);
                    self.cache.write().add_pod(info);
                    let Ok(permit) = self.rt.block_on(self.binds.clone().acquire_owned()) else {
                        return;
                    };
                    self.rt.spawn(bind(
                        self.client.clone(),
                        self.recorder.clone(),
                        self.cache.clone(),
                        self.queue.clone(),
                        self.stats.clone(),
                        self.cfg.scheduled_events,
                        key,
                        pod,
                        node,
                        permit,
                    ));
                }
                Err(fit) => {
                    self.stats.unschedulable.fetch_add(1, Ordering::Relaxed);
                    self.queue.done(&key, Outcome::Unschedulable);
                    self.rt.spawn(report_unschedulable(
                        self.client.clone(),
                        self.recorder.clone(),
                        pod,
                        fit.to_string(),
                    ));
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn bind(
    client: Client,
    recorder: Recorder,
    cache: SharedCache,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    events: bool,
    key: String,
    pod: Arc<Pod>,
    node: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match client.bind(ns, name, &node).await {
        Ok(_) => {
            stats.scheduled.fetch_add(1, Ordering::Relaxed);
            queue.done(&key, Outcome::Done);
            if events {
                recorder.record(
                    reference(&*pod),
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node}"),
                );
            }
        }
        Err(e) => {
            stats.bind_errors.fetch_add(1, Ordering::Relaxed);
            {
                let mut c = cache.write();
                if c.pods.get(&key).is_some_and(|p| p.assumed) {
                    c.remove_pod(&key);
                }
            }
            let gone = e.reason == Reason::NotFound
                || (e.reason == Reason::Conflict && e.message.contains("already assigned"));
            if gone {
                queue.done(&key, Outcome::Done);
            } else {
                tracing::info!(pod = %key, %node, error = %e, "binding failed; retrying");
                recorder.record(
                    reference(&*pod),
                    "Warning",
                    "FailedScheduling",
                    &format!("Binding rejected: {e}"),
                );
                queue.done(&key, Outcome::Retry);
            }
        }
    }
}

/// The pod's `PodScheduled=False` condition and a `FailedScheduling` event (once per
/// distinct message).
async fn report_unschedulable(client: Client, recorder: Recorder, pod: Arc<Pod>, message: String) {
    let same = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.message.as_deref() == Some(message.as_str())
        });
    if same {
        return;
    }
    recorder.record(reference(&*pod), "Warning", "FailedScheduling", &message);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null,
        "lastTransitionTime": skiff_client::events::now(),
    }]}});
    if let Err(e) = client.api::<Pod>(ns).patch_status(name, &patch).await {
        tracing::debug!(pod = name, error = %e, "cannot report the pod unschedulable");
    }
}
