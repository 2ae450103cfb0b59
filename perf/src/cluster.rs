//! End-to-end pod startup on a real local cluster (`skiff up`: two node namespaces, node
//! agents with Skiff's runtime and eBPF data plane, the API server with the scheduler and
//! controllers): a Deployment of 100 replicas is created, and each pod's startup latency
//! is measured as Kubernetes' pod-startup SLI defines it: from the pod's creation to all
//! its containers reported started, both observed on one watch. Three Deployments run one
//! after another on the cluster (each deleted, and its pods gone, before the next); the
//! figures are the medians of the runs' p50 and p99. The peer figure is Kubernetes' SLO
//! (p99 <= 5 s for stateless pods, images present).
//!
//! The control plane at Kubernetes' published limits with hollow nodes: 5,000 nodes
//! renewing Leases every 10 s, 10,000 Services each with a Deployment, 150,000 pods bound
//! by the scheduler and reported Running; then the RSS of `skiff server` and the p99 of API
//! calls made while the heartbeats go on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use serde_json::json;
use skiff_client::{Client, DeleteParams, ListParams, RawEvent};

use crate::report::Measurement;
use crate::{Mode, SkiffServer, rss_bytes, skiff_bin};

/// A `skiff up` cluster of this benchmark; `skiff down --purge` on drop.
struct Up {
    name: String,
    data: PathBuf,
    address: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(bin) = skiff_bin() {
            let _ = Command::new(bin)
                .args(["down", "--name", &self.name, "--data-dir"])
                .arg(&self.data)
                .arg("--purge")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[derive(serde::Deserialize)]
struct Seen {
    metadata: SeenMeta,
    spec: Option<SeenSpec>,
    status: Option<SeenStatus>,
}

#[derive(serde::Deserialize)]
struct SeenSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(serde::Deserialize)]
struct SeenMeta {
    name: String,
}

#[derive(serde::Deserialize)]
struct SeenStatus {
    phase: Option<String>,
    #[serde(rename = "containerStatuses")]
    containers: Option<Vec<SeenContainer>>,
}

#[derive(serde::Deserialize)]
struct SeenContainer {
    started: Option<bool>,
}

fn started(s: &Seen) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.phase.as_deref() == Some("Running")
            && st
                .containers
                .as_ref()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.started == Some(true)))
    })
}

/// Pod startup latency of a Deployment's replicas on a real 2-node cluster.
pub async fn pod_startup(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let replicas: usize = match mode {
        Mode::Quick => 10,
        Mode::Full => 100,
    };
    let dir = std::env::temp_dir().join(format!("skiff-bench-up-{}", std::process::id()));
    let up = Up {
        name: format!("bench{}", std::process::id() % 100_000),
        data: dir.join("cluster"),
        address: format!("127.0.0.1:{}", free_port()?),
    };
    let out = Command::new(skiff_bin()?)
        .args(["up", "--no-demo", "--no-write-config", "--name", &up.name])
        .arg("--data-dir")
        .arg(&up.data)
        .args(["--listen", &up.address])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "skiff up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let c = Client::connect(&up.address)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let repeats = match mode {
        Mode::Quick => 1,
        Mode::Full => 3,
    };
    let (mut p50s, mut p99s, mut alls, mut binds, mut cpus, mut kernels) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for run in 0..repeats {
        crate::settle();
        let r = one_deployment(&c, &format!("startup-{run}"), replicas).await?;
        p50s.push(r.p50);
        p99s.push(r.p99);
        alls.push(r.all);
        binds.push(r.bind_p50);
        cpus.push(r.cpu_ms_per_pod);
        kernels.push(r.kernel_ms_per_pod);
    }
    // One row per percentile: the median over the runs, each run's value in the note.
    let row = |what: &str, per_run: &[f64], goal: &str| {
        let mut m = Measurement::lower_better(
            &format!(
                "Pod startup {what}, Deployment of {replicas} on a 2-node `skiff up` cluster (creation -> containers started, on a watch)"
            ),
            crate::median(per_run.to_vec()),
            5000.0,
            "ms",
            "Kubernetes pod startup SLO (published)",
            goal,
        );
        let runs: Vec<String> = per_run.iter().map(|x| format!("{x:.0}")).collect();
        m.note = format!("{what} per run {} ms", runs.join(", "));
        m
    };
    let mut p50 = row("p50", &p50s, "");
    p50.note = format!(
        "median of {repeats} Deployments one after another on one cluster; all {replicas} running {:.2} s after the Deployment was created; creation -> bound p50 {:.1} ms; machine CPU per pod {:.1} ms, {:.1} ms of it in the kernel; {}",
        crate::median(alls),
        crate::median(binds),
        crate::median(cpus),
        crate::median(kernels),
        p50.note
    );
    let p99 = row("p99", &p99s, "p99 <= 100 ms");
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![p50, p99])
}

/// What one Deployment's start looked like.
struct StartupRun {
    p50: f64,
    p99: f64,
    /// Seconds from the create until the last pod started.
    all: f64,
    bind_p50: f64,
    /// The whole machine's busy CPU time over that span, per pod, and the kernel's part.
    cpu_ms_per_pod: f64,
    kernel_ms_per_pod: f64,
}

/// Creates Deployment `name` of `replicas`, measures each pod from its creation to its
/// containers started (both seen on one watch), then deletes it and waits until its pods
/// are gone, so the next run starts on an empty cluster.
async fn one_deployment(c: &Client, name: &str, replicas: usize) -> anyhow::Result<StartupRun> {
    let pods = c.api::<Pod>("default");
    let selector = format!("app={name}");
    let list = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut watch = c
        .watch(
            "pods",
            "default",
            &ListParams::default().labels(&selector),
            &list.resource_version,
            false,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c",
                    "image": "skiff.local/busybox:1.36", "command": ["sleep", "3600"],
                    "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}}},
    }))?;
    let cpu0 = crate::cpu_stat(None)?;
    let t0 = Instant::now();
    c.api::<Deployment>("default")
        .create(&d)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut done: std::collections::HashSet<String> = Default::default();
    let mut bound: std::collections::HashSet<String> = Default::default();
    let mut to_bind: Vec<f64> = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let verbose = std::env::var_os("SKIFF_BENCH_VERBOSE").is_some();
    while latencies.len() < replicas {
        let Ok(Some(ev)) = tokio::time::timeout_at(deadline.into(), watch.next()).await else {
            anyhow::bail!("only {} of {replicas} pods started", latencies.len());
        };
        let (RawEvent::Added(b) | RawEvent::Modified(b)) =
            ev.map_err(|e| anyhow::anyhow!("{e}"))?
        else {
            continue;
        };
        let s: Seen = serde_json::from_slice(&b)?;
        let now = Instant::now();
        if verbose {
            let phase = s
                .status
                .as_ref()
                .and_then(|x| x.phase.clone())
                .unwrap_or_default();
            eprintln!(
                "{:8.1} ms {} node={:?} phase={phase} started={}",
                t0.elapsed().as_secs_f64() * 1000.0,
                s.metadata.name,
                s.spec.as_ref().and_then(|x| x.node_name.clone()),
                started(&s)
            );
        }
        let at = *created.entry(s.metadata.name.clone()).or_insert(now);
        if s.spec.as_ref().and_then(|x| x.node_name.as_ref()).is_some()
            && bound.insert(s.metadata.name.clone())
        {
            to_bind.push(now.duration_since(at).as_secs_f64() * 1000.0);
        }
        if started(&s) && done.insert(s.metadata.name) {
            latencies.push(now.duration_since(at).as_secs_f64() * 1000.0);
        }
    }
    let all = t0.elapsed().as_secs_f64();
    let cpu1 = crate::cpu_stat(None)?;
    // Jiffies (USER_HZ, 10 ms) to milliseconds per pod.
    let per_pod = |j: u64| j as f64 * 10.0 / replicas as f64;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    to_bind.sort_by(|a, b| a.total_cmp(b));
    let bind_p50 = to_bind.get(to_bind.len() / 2).copied().unwrap_or(0.0);
    let run = StartupRun {
        p50: pct(0.50),
        p99: pct(0.99),
        all,
        bind_p50,
        cpu_ms_per_pod: per_pod(cpu1.busy - cpu0.busy),
        kernel_ms_per_pod: per_pod(cpu1.kernel - cpu0.kernel),
    };
    c.api::<Deployment>("default")
        .delete(name, &DeleteParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let gone_by = Instant::now() + Duration::from_secs(120);
    loop {
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .items
            .len();
        if left == 0 {
            break;
        }
        if Instant::now() > gone_by {
            anyhow::bail!("{left} pods of {name} still there 120 s after its deletion");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(run)
}

/// The control plane at scale with hollow nodes.
pub async fn at_scale(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let (nodes, services, per_service) = match mode {
        Mode::Quick => (50, 20, 5),
        Mode::Full => (5_000, 10_000, 15),
    };
    let pods = services * per_service;
    let server = SkiffServer::start(&[])?;
    let c = Client::connect(&server.address)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hollow = skiff_hollow::HollowNodes::start(
        &c,
        skiff_hollow::HollowConfig {
            count: nodes,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("hollow nodes: {e}"))?;
    let t0 = Instant::now();
    let mut creates = futures::stream::iter((0..services).map(|i| {
        let c = c.clone();
        async move {
            let name = format!("svc-{i}");
            let svc: Service = serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}))?;
            c.api::<Service>("default").create(&svc).await?;
            let d: Deployment = serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"replicas": per_service, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}}))?;
            c.api::<Deployment>("default").create(&d).await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32);
    while let Some(r) = creates.next().await {
        r?;
    }
    // Wait until every pod runs (hollow kubelets report them).
    let deadline = Instant::now()
        + match mode {
            Mode::Quick => Duration::from_secs(120),
            Mode::Full => Duration::from_secs(1800),
        };
    loop {
        let started = hollow
            .stats
            .pods_started
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        if started >= pods {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {started} of {pods} pods running before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let setup = t0.elapsed().as_secs_f64();
    // API calls while 5,000 nodes heartbeat: reads and writes, one at a time.
    let calls = match mode {
        Mode::Quick => 200,
        Mode::Full => 3_000,
    };
    let mut reads = Histogram::<u64>::new(3)?;
    let mut writes = Histogram::<u64>::new(3)?;
    let cms = c.api::<ConfigMap>("default");
    let pod_names: Vec<String> = (0..services.min(200)).map(|i| format!("svc-{i}")).collect();
    for i in 0..calls {
        let t = Instant::now();
        c.api::<Deployment>("default")
            .get(&pod_names[i % pod_names.len()])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        reads.record(t.elapsed().as_micros() as u64)?;
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("probe-{i}")}, "data": {"k": "v"}}),
        )?;
        let t = Instant::now();
        cms.create(&cm).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        writes.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        cms.delete(&format!("probe-{i}"), &DeleteParams::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        writes.record(t.elapsed().as_micros() as u64)?;
    }
    let rss = rss_bytes(server.pid()) as f64 / (1024.0 * 1024.0 * 1024.0);
    let renewals = hollow
        .stats
        .lease_renewals
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(hollow);
    drop(server);
    let scale = format!("{nodes} hollow nodes, {pods} pods, {services} services");
    let mut m_rss = Measurement::lower_better(
        &format!("`skiff server` RSS ({scale}; scheduler and controllers in-process)"),
        rss,
        2.0,
        "GiB",
        "goal (no kube-apiserver on this machine to run)",
        "<= 2 GiB",
    );
    m_rss.note = format!("setup {setup:.0} s; {renewals} lease renewals");
    let slo = "Kubernetes mutating API call SLO p99 (published)";
    let m_w = Measurement::lower_better(
        &format!("API create/delete p99 while {nodes} nodes heartbeat ({scale})"),
        writes.value_at_quantile(0.99) as f64 / 1000.0,
        1000.0,
        "ms",
        slo,
        "p99 <= 100 ms",
    );
    let m_r = Measurement::lower_better(
        &format!("API get p99 while {nodes} nodes heartbeat ({scale})"),
        reads.value_at_quantile(0.99) as f64 / 1000.0,
        1000.0,
        "ms",
        "Kubernetes read-only API call SLO p99 (published)",
        "p99 <= 100 ms",
    );
    Ok(vec![m_rss, m_w, m_r])
}
