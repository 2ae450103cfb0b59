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

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use rayon::prelude::*;
use skiff_api::Reason;
use skiff_client::events::{Recorder, reference};
use skiff_client::informer::{Event, Feed, Informer, SharedInformers, Subscription, key_of};
use skiff_client::{Client, ListParams};

use cache::{Cache, PodInfo, SharedCache};
use plugins::{Cycle, PodTerms, Unfit, fit_error};
use queue::{Outcome, Queue};
use rustc_hash::FxHashMap;

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
    /// Bindings waiting or in flight at once (the scheduling thread waits beyond that).
    pub bind_concurrency: usize,
    /// Most bindings per BindBatch call.
    pub bind_batch: usize,
    /// Record a `Scheduled` event per bound pod (kube-scheduler does).
    pub scheduled_events: bool,
    /// Threads filtering nodes in parallel (1: the scheduling thread alone). The default
    /// leaves half the cores to the API server the scheduler shares the machine with:
    /// on 2 cores, fanning ~500 cheap node checks out to another thread costs more in
    /// wake-ups than it saves (measured: 26 us per pod alone, ~80 us with rayon).
    pub parallelism: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            name: DEFAULT_SCHEDULER.into(),
            percentage_of_nodes_to_score: None,
            bind_concurrency: 2048,
            bind_batch: 256,
            parallelism: (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2)
                .clamp(1, 16),
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
    binder: tokio::task::JoinHandle<()>,
    _nodes: Subscription<Node>,
    _pods: Subscription<Pod>,
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

/// Nodes filtered per parallel step: kube-scheduler checks nodes in parallel and stops once
/// it found enough; Skiff walks the sample in chunks, each filtered in parallel, and stops
/// after the chunk that completes the count.
const CHUNK: usize = 256;

/// One scheduling decision for `pod` against `cache`: the node, or why none fits.
/// `start` rotates where sampling begins, so every node gets its turn. The cache starts
/// keeping counts for the pod's inter-pod terms (`Cache::prepare`).
pub fn schedule_one(
    cache: &mut Cache,
    pod: &Pod,
    start: &mut usize,
    percentage: Option<u32>,
) -> Result<String, FitError> {
    schedule_with(cache, pod, start, percentage, None)
}

/// `schedule_one`, filtering chunks of nodes in parallel on `pool` when given.
pub fn schedule_with(
    cache: &mut Cache,
    pod: &Pod,
    start: &mut usize,
    percentage: Option<u32>,
    pool: Option<&rayon::ThreadPool>,
) -> Result<String, FitError> {
    let terms = PodTerms::compile(pod);
    cache.prepare(terms.terms());
    schedule_prepared(cache, pod, terms, start, percentage, pool)
}

/// `schedule_with` on a cache that `prepare` saw the pod's `terms` (else their counts are
/// taken by walking the pods they select).
fn schedule_prepared(
    cache: &Cache,
    pod: &Pod,
    terms: PodTerms,
    start: &mut usize,
    percentage: Option<u32>,
    pool: Option<&rayon::ThreadPool>,
) -> Result<String, FitError> {
    let nodes = cache.nodes();
    let total = nodes.len();
    if total == 0 {
        return Err(FitError {
            total,
            reasons: HashMap::new(),
        });
    }
    let cycle = Cycle::new(pod, terms, cache);
    let want = nodes_to_find(total, percentage);
    let first = *start % total;
    let mut feasible: Vec<usize> = Vec::with_capacity(want.min(total));
    let mut reasons: FxHashMap<Cow<'static, str>, usize> = FxHashMap::default();
    let mut looked = 0usize;
    let check = |i: usize| -> Result<usize, Unfit> {
        let idx = if first + i < total {
            first + i
        } else {
            first + i - total
        };
        cycle.filter(&nodes[idx]).map(|()| idx)
    };
    let mut take = |r: Result<usize, Unfit>, feasible: &mut Vec<usize>| match r {
        Ok(idx) => feasible.push(idx),
        Err(Unfit::One(r)) => *reasons.entry(r).or_default() += 1,
        Err(Unfit::Many(rs)) => {
            for r in rs {
                *reasons.entry(r).or_default() += 1;
            }
        }
    };
    match pool {
        Some(pool) if total >= PARALLEL_FROM => {
            while looked < total && feasible.len() < want {
                let end = (looked + CHUNK).min(total);
                let results: Vec<Result<usize, Unfit>> =
                    pool.install(|| (looked..end).into_par_iter().map(check).collect());
                for r in results {
                    looked += 1;
                    take(r, &mut feasible);
                    if feasible.len() >= want {
                        break;
                    }
                }
            }
        }
        _ => {
            while looked < total && feasible.len() < want {
                take(check(looked), &mut feasible);
                looked += 1;
            }
        }
    }
    *start = (first + looked) % total;
    if feasible.is_empty() {
        let reasons = reasons
            .into_iter()
            .map(|(r, n)| (r.into_owned(), n))
            .collect();
        return Err(FitError { total, reasons });
    }
    let candidates: Vec<&cache::NodeInfo> = feasible.iter().map(|i| &nodes[*i]).collect();
    if candidates.len() == 1 {
        return Ok(candidates[0].name.clone());
    }
    let scores = cycle.score(&candidates);
    // Highest score; ties broken uniformly at random (one draw among the tied).
    let top = scores.iter().copied().max().unwrap_or(0);
    let ties = scores.iter().filter(|s| **s == top).count();
    let pick = rand::Rng::random_range(&mut rand::rng(), 0..ties.max(1));
    let best = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == top)
        .nth(pick)
        .map_or(0, |(i, _)| i);
    Ok(candidates[best].name.clone())
}

impl Scheduler {
    /// Starts the informers and the scheduling thread. Call inside a tokio runtime.
    pub fn start(client: Client, cfg: SchedulerConfig) -> Scheduler {
        Self::start_shared(client, cfg, &SharedInformers::default())
    }

    /// Like [`Scheduler::start`], listening to the process's shared informers where given.
    pub fn start_shared(
        client: Client,
        cfg: SchedulerConfig,
        shared: &SharedInformers,
    ) -> Scheduler {
        let cache: SharedCache = Arc::default();
        let queue = Arc::new(Queue::new());
        let stats = Arc::new(Stats::default());
        let nodes = {
            let (cache, queue) = (cache.clone(), queue.clone());
            Feed::new(shared.nodes.as_ref(), || {
                Informer::new(client.api::<Node>(""), ListParams::default())
            })
            .subscribe(move |e| match e {
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
        };
        let pods = {
            let (cache, queue, name) = (cache.clone(), queue.clone(), cfg.name.clone());
            // The scheduler reads placed pods from its own cache, never from the informer's:
            // a compact informer costs it ~2 KB per pod instead of ~10.
            Feed::new(shared.pods.as_ref(), || {
                Informer::new(client.api::<Pod>(""), ListParams::default()).compact()
            })
            .subscribe(move |e| match e {
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
                            // A bound pod's node, labels and requests do not change
                            // with its status updates (the bulk of pod events): only
                            // a new placement, or one that replaces an assumption,
                            // touches the cache.
                            let known = cache.read().pod(&key).is_some_and(|i| {
                                !i.assumed
                                    && *i.node == *node
                                    && *i.uid == *p.metadata.uid.as_deref().unwrap_or_default()
                                    && Some(&*i.labels) == p.metadata.labels.as_ref()
                            });
                            if !known {
                                cache.write().add_pod(PodInfo::new(p, node));
                            }
                            queue.remove(&key);
                        }
                        None if p.metadata.deletion_timestamp.is_some() => queue.remove(&key),
                        None if responsible(p, &name) => {
                            let assumed = cache.read().pod(&key).is_some_and(|i| i.assumed);
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
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (bind_tx, bind_rx) = tokio::sync::mpsc::channel(cfg.bind_concurrency.max(1));
        let binder = tokio::spawn(binder(
            bind_rx,
            Binder {
                client: client.clone(),
                recorder: Recorder::new(client.clone(), &cfg.name, None),
                cache: cache.clone(),
                queue: queue.clone(),
                stats: stats.clone(),
                events: cfg.scheduled_events,
            },
            cfg.bind_batch.max(1),
        ));
        let thread = {
            let ctx = Context {
                client: client.clone(),
                recorder: Recorder::new(client, &cfg.name, None),
                cache: cache.clone(),
                queue: queue.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                rt: tokio::runtime::Handle::current(),
                binds: bind_tx,
                cfg,
                node_reader: nodes.reader().clone(),
                pod_reader: pods.reader().clone(),
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
            binder,
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
        self.binder.abort();
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
    binds: tokio::sync::mpsc::Sender<BindJob>,
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
        let pool = (self.cfg.parallelism > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.cfg.parallelism)
                    .thread_name(|i| format!("skiff-filter-{i}"))
                    .build()
                    .ok()
            })
            .flatten();
        while !self.stop.load(Ordering::Relaxed) {
            let Some((key, pod)) = self.queue.pop(Duration::from_millis(500)) else {
                continue;
            };
            if self.cache.read().pod(&key).is_some() {
                // Already placed (bound meanwhile, or assumed).
                self.queue.done(&key, Outcome::Done);
                continue;
            }
            let decision = {
                // Counting starts under the write lock; the decision reads.
                let terms = PodTerms::compile(&pod);
                let mut cache = self.cache.write();
                cache.prepare(terms.terms());
                let cache = parking_lot::RwLockWriteGuard::downgrade(cache);
                schedule_prepared(
                    &cache,
                    &pod,
                    terms,
                    &mut start,
                    self.cfg.percentage_of_nodes_to_score,
                    pool.as_ref(),
                )
            };
            match decision {
                Ok(node) => {
                    let mut info = PodInfo::new(&pod, &node);
                    info.assumed = true;
                    self.cache.write().add_pod(info);
                    // Waits when too many bindings are pending (backpressure).
                    if self
                        .binds
                        .blocking_send(BindJob { key, pod, node })
                        .is_err()
                    {
                        return;
                    }
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

/// A binding the scheduling thread decided.
struct BindJob {
    key: String,
    pod: Arc<Pod>,
    node: String,
}

struct Binder {
    client: Client,
    recorder: Recorder,
    cache: SharedCache,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    events: bool,
}

/// Sends bindings in batches: whatever waits is taken at once (up to `max`), so under
/// load each call carries many bindings and at low load none waits for company.
async fn binder(mut rx: tokio::sync::mpsc::Receiver<BindJob>, b: Binder, max: usize) {
    let b = Arc::new(b);
    // A few batches in flight keep the API server's group commit busy.
    let inflight = Arc::new(tokio::sync::Semaphore::new(4));
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let b = b.clone();
        tokio::spawn(async move {
            let _permit = permit;
            b.bind(jobs).await;
        });
    }
}

impl Binder {
    async fn bind(&self, jobs: Vec<BindJob>) {
        let req: Vec<(String, String, String)> = jobs
            .iter()
            .map(|j| {
                (
                    j.pod
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    j.pod.metadata.name.clone().unwrap_or_default(),
                    j.node.clone(),
                )
            })
            .collect();
        let results = match self.client.bind_batch(&req).await {
            Ok(r) => r,
            Err(e) => vec![Err(e); jobs.len()],
        };
        for ((job, (ns, name, node)), result) in jobs.into_iter().zip(req).zip(results) {
            self.done(job, &ns, &name, &node, result);
        }
    }

    fn done(
        &self,
        job: BindJob,
        ns: &str,
        name: &str,
        node: &str,
        result: Result<(), skiff_api::ApiError>,
    ) {
        let BindJob { key, pod, .. } = job;
        match result {
            Ok(()) => {
                self.stats.scheduled.fetch_add(1, Ordering::Relaxed);
                self.queue.done(&key, Outcome::Done);
                if self.events {
                    self.recorder.record(
                        reference(&*pod),
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{name} to {node}"),
                    );
                }
            }
            Err(e) => {
                self.stats.bind_errors.fetch_add(1, Ordering::Relaxed);
                {
                    let mut c = self.cache.write();
                    if c.pod(&key).is_some_and(|p| p.assumed) {
                        c.remove_pod(&key);
                    }
                }
                let gone = e.reason == Reason::NotFound
                    || (e.reason == Reason::Conflict && e.message.contains("already assigned"));
                if gone {
                    self.queue.done(&key, Outcome::Done);
                } else {
                    tracing::info!(pod = %key, %node, error = %e, "binding failed; retrying");
                    self.recorder.record(
                        reference(&*pod),
                        "Warning",
                        "FailedScheduling",
                        &format!("Binding rejected: {e}"),
                    );
                    self.queue.done(&key, Outcome::Retry);
                }
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
