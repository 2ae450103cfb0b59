//! Scheduling throughput end to end through the API, as kube-scheduler's scheduler_perf
//! measures it: hollow nodes register with the real `skiff server`, the pods are created
//! (pending), then Skiff's scheduler starts and binds them; throughput is pods bound per
//! second between the first and the last binding seen on a watch. Four workloads:
//! resources only, required node affinity, required pod anti-affinity, hard topology
//! spread. Every run checks what it measured (all bound; anti-affinity and spread hold).
//!
//! The scheduler runs where `skiff server` runs it: in the API server's process, calling it
//! in-process (scheduler_perf, the peer's harness, likewise runs kube-apiserver and the
//! scheduler in one process); the hollow nodes and the measuring watch are gRPC clients.
//! The basic workload is measured a second time with the scheduler in its own process over
//! gRPC, as `skiff scheduler` runs it.
//!
//! The peer figures are kube-scheduler's published scheduler_perf minimum throughputs at
//! 5,000 nodes (kube-scheduler is not packaged for this machine and cannot be fetched).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use skiff_client::{Client, ListParams, RawEvent};
use skiff_hollow::{HollowConfig, HollowNodes};
use skiff_scheduler::{Scheduler, SchedulerConfig};

use crate::report::Measurement;
use crate::{Mode, SkiffServer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Basic,
    NodeAffinity,
    PodAntiAffinity,
    TopologySpread,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Basic,
        Workload::NodeAffinity,
        Workload::PodAntiAffinity,
        Workload::TopologySpread,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Basic => "basic",
            Workload::NodeAffinity => "node affinity",
            Workload::PodAntiAffinity => "pod anti-affinity",
            Workload::TopologySpread => "topology spread",
        }
    }

    /// kube-scheduler's scheduler_perf threshold at 5,000 nodes (pods/s).
    fn peer(self) -> f64 {
        match self {
            Workload::Basic => 270.0,
            Workload::NodeAffinity => 220.0,
            Workload::PodAntiAffinity => 60.0,
            Workload::TopologySpread => 85.0,
        }
    }

    fn goal(self) -> &'static str {
        match self {
            Workload::Basic => ">= 10,000 pods/s",
            Workload::PodAntiAffinity => ">= 1,000 pods/s",
            _ => "",
        }
    }
}

/// Where the scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In the API server's process over the in-process API (`skiff server`).
    InServer,
    /// In its own process, over gRPC (`skiff scheduler`).
    OwnProcess,
}

/// The API server of one run: in this process (for an in-process scheduler) or a
/// `skiff server` child.
enum Host {
    InProcess {
        server: skiff_apiserver::LocalServer,
        _dir: crate::tempdir::Dir,
    },
    Child(SkiffServer),
}

impl Host {
    async fn start(placement: Placement) -> anyhow::Result<Host> {
        Ok(match placement {
            Placement::OwnProcess => {
                Host::Child(SkiffServer::start(&["--no-scheduler", "--no-controllers"])?)
            }
            Placement::InServer => {
                let dir = crate::tempdir::Dir::new("skiff-bench-sched")?;
                let store = skiff_store::embedded::EmbeddedStore::open(
                    &dir.0,
                    skiff_store::embedded::EmbeddedOptions::default(),
                )?;
                let server = skiff_apiserver::LocalServer::start(
                    std::sync::Arc::new(store),
                    skiff_apiserver::Config::default(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("API server: {e}"))?;
                Host::InProcess { server, _dir: dir }
            }
        })
    }

    fn address(&self) -> &str {
        match self {
            Host::InProcess { server, .. } => &server.address,
            Host::Child(s) => &s.address,
        }
    }

    /// The scheduler's client: in-process when the server is, else gRPC like the rest.
    fn scheduler_client(&self, grpc: &Client) -> Client {
        match self {
            Host::InProcess { server, .. } => Client::local(
                skiff_apiserver::local::api(server.registry.clone()),
                &server.address,
            ),
            Host::Child(_) => grpc.clone(),
        }
    }
}

/// What the measurement reads of a pod event.
#[derive(serde::Deserialize)]
struct Placed {
    metadata: PlacedMeta,
    spec: PlacedSpec,
}

#[derive(serde::Deserialize)]
struct PlacedMeta {
    name: String,
}

#[derive(serde::Deserialize)]
struct PlacedSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

/// Pods per group of the affinity workloads (each group spreads or repels on its own).
const GROUPS: usize = 10;

fn pod(w: Workload, i: usize) -> Value {
    let group = format!("grp-{}", i % GROUPS);
    let mut spec = json!({
        "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
    });
    match w {
        Workload::Basic => {}
        Workload::NodeAffinity => {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "hollow.skiff.dev/group", "operator": "In", "values": ["g0"]}]}]}}});
        }
        Workload::PodAntiAffinity => {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"group": group}}, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        Workload::TopologySpread => {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"group": group}}}]);
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i}"), "namespace": "default", "labels": {"group": group}},
        "spec": spec})
}

/// Creates `n` pods with `inflight` requests at a time.
async fn create_pods(c: &Client, w: Workload, n: usize, inflight: usize) -> anyhow::Result<()> {
    let api = c.api::<Pod>("default");
    let mut stream = futures::stream::iter((0..n).map(|i| {
        let api = api.clone();
        async move {
            let p: Pod = serde_json::from_value(pod(w, i))?;
            api.create(&p).await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(inflight);
    while let Some(r) = stream.next().await {
        r?;
    }
    Ok(())
}

/// One workload: the throughput, after checking every pod was bound where it may be.
pub async fn run(mode: Mode, w: Workload, placement: Placement) -> anyhow::Result<Measurement> {
    let (nodes, pods) = match mode {
        Mode::Quick => (100, 600),
        Mode::Full => (5_000, 10_000),
    };
    let server = Host::start(placement).await?;
    let client = Client::connect(server.address())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hollow = HollowNodes::start(
        &client,
        HollowConfig {
            count: nodes,
            run_pods: false,
            zones: 10,
            groups: 2,
            ..HollowConfig::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("hollow nodes: {e}"))?;
    create_pods(&client, w, pods, 128).await?;
    let list = client
        .api::<Pod>("default")
        .list(&ListParams {
            limit: 1,
            ..ListParams::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Raw events, read only as far as name and node (the measurement should not cost the
    // machine a full decode of every pod).
    let mut watch = client
        .watch(
            "pods",
            "default",
            &ListParams::default(),
            &list.resource_version,
            false,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let scheduler = Scheduler::start(server.scheduler_client(&client), SchedulerConfig::default());
    let mut bound: HashMap<String, String> = HashMap::new();
    let (mut first, mut last) = (None, Instant::now());
    let deadline = Instant::now()
        + match mode {
            Mode::Quick => Duration::from_secs(60),
            Mode::Full => Duration::from_secs(600),
        };
    while bound.len() < pods {
        let next = tokio::time::timeout_at(deadline.into(), watch.next()).await;
        let Ok(Some(ev)) = next else {
            anyhow::bail!(
                "{}: only {} of {pods} pods bound before the deadline",
                w.name(),
                bound.len()
            );
        };
        if let RawEvent::Modified(bytes) = ev.map_err(|e| anyhow::anyhow!("{e}"))?
            && let Ok(p) = serde_json::from_slice::<Placed>(&bytes)
            && let Some(node) = p.spec.node_name
            && bound.insert(p.metadata.name, node).is_none()
        {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
        }
    }
    let elapsed = last.duration_since(first.unwrap_or(last));
    let rate = (pods - 1) as f64 / elapsed.as_secs_f64().max(1e-9);
    drop(scheduler);
    check(w, &bound, nodes)?;
    drop(hollow);
    drop(client);
    drop(server);
    let (how, goal) = match placement {
        Placement::InServer => ("", w.goal()),
        Placement::OwnProcess => (", scheduler in its own process over gRPC", ""),
    };
    Ok(Measurement::higher_better(
        &format!(
            "Scheduling throughput, {}{how} ({} nodes, {} pods, bound through the API)",
            w.name(),
            nodes,
            pods
        ),
        rate,
        w.peer(),
        "pods/s",
        "kube-scheduler scheduler_perf threshold at 5,000 nodes (published)",
        goal,
    ))
}

/// What the workload promises held for every pod.
fn check(w: Workload, bound: &HashMap<String, String>, nodes: usize) -> anyhow::Result<()> {
    let group = |pod: &str| {
        pod.trim_start_matches("p-")
            .parse::<usize>()
            .map(|i| i % GROUPS)
            .unwrap_or(0)
    };
    let node_index = |n: &str| {
        n.rsplit('-')
            .next()
            .and_then(|d| d.parse::<usize>().ok())
            .unwrap_or(0)
    };
    match w {
        Workload::Basic => {}
        Workload::NodeAffinity => {
            // Group g0 is every even node.
            if let Some((p, n)) = bound.iter().find(|(_, n)| node_index(n) % 2 != 0) {
                anyhow::bail!("node affinity broken: {p} on {n}");
            }
        }
        Workload::PodAntiAffinity => {
            let mut seen: HashSet<(usize, &str)> = HashSet::new();
            for (p, n) in bound {
                if !seen.insert((group(p), n.as_str())) {
                    anyhow::bail!(
                        "anti-affinity broken: two pods of group {} on {n}",
                        group(p)
                    );
                }
            }
        }
        Workload::TopologySpread => {
            let mut counts: BTreeMap<(usize, usize), i64> = BTreeMap::new();
            for (p, n) in bound {
                *counts.entry((group(p), node_index(n) % 10)).or_default() += 1;
            }
            let zones = nodes.min(10);
            for g in 0..GROUPS {
                let per: Vec<i64> = (0..zones)
                    .map(|z| counts.get(&(g, z)).copied().unwrap_or(0))
                    .collect();
                let (min, max) = (
                    per.iter().min().copied().unwrap_or(0),
                    per.iter().max().copied().unwrap_or(0),
                );
                if max - min > 1 {
                    anyhow::bail!("spread broken for group {g}: {per:?}");
                }
            }
        }
    }
    Ok(())
}

/// Every workload.
pub async fn throughput(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    // For profiling runs only: SKIFF_BENCH_WORKLOADS=anti,spread (names' first words).
    let only = std::env::var("SKIFF_BENCH_WORKLOADS").ok();
    let wanted = |w: Workload| {
        only.as_deref().is_none_or(|o| {
            o.split(',')
                .any(|x| w.name().split(' ').any(|word| word.starts_with(x)))
        })
    };
    let mut out = Vec::new();
    for w in Workload::ALL.into_iter().filter(|w| wanted(*w)) {
        out.push(run(mode, w, Placement::InServer).await?);
    }
    if wanted(Workload::Basic) {
        out.push(run(mode, Workload::Basic, Placement::OwnProcess).await?);
    }
    Ok(out)
}
