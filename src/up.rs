//! `skiff up` / `skiff down`: a local cluster on this machine. The control plane (`skiff
//! server` with its scheduler and controllers) listens on loopback; each node is a network
//! namespace "host" on an underlay bridge (198.18.0.0/15, no route off the machine) run by
//! a `skiff node` with its eBPF data plane in-process; a `client` namespace on the same
//! underlay stands for the world outside the cluster. The root namespace gets an
//! `unreachable` route for the whole cluster range.
//!
//! Namespaces outlive `skiff up` as bind mounts under /run/skiff/<cluster>/netns (as `ip
//! netns` keeps them); `skiff down` stops the agents, removes everything their pods left
//! (processes, mounts, cgroups), stops the server and unmounts the namespaces, which takes
//! their links and XDP programs with them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use skiff_client::{Client, ListParams};
use skiff_dataplane::localnet::{Underlay, node_ip, pod_cidr};
use skiff_dataplane::netns::Netns;

/// The whole local cluster range, `unreachable` from the root namespace.
const CLUSTER_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
const IMAGE: &str = "skiff.local/busybox:1.36";
const DEMO: &str = include_str!("../examples/demo.yaml");

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The cluster's name (several can run side by side).
    #[arg(long, default_value = "local")]
    pub name: String,
    /// Where the cluster keeps its state and logs (default: /var/lib/skiff/<name>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the API server.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub nodes: u8,
    /// Do not apply the demo manifest.
    #[arg(long)]
    pub no_demo: bool,
    /// How long a silent node stays Ready.
    #[arg(long, default_value = "10s", value_parser = crate::server::parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How long pods stay on a NotReady node before they are evicted.
    #[arg(long, default_value_t = 30)]
    pub default_toleration_seconds: i64,
    /// Container runtime of the nodes: skiff, crun, runc.
    #[arg(long, default_value = "skiff")]
    pub runtime: String,
    /// Do not write the client config file (skiff commands then need --server).
    #[arg(long)]
    pub no_write_config: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[arg(long, default_value = "local")]
    pub name: String,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also delete the cluster's stored state.
    #[arg(long)]
    pub purge: bool,
}

fn data_dir(name: &str, given: &Option<PathBuf>) -> PathBuf {
    given
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/skiff").join(name))
}

/// Where local clusters keep their runtime state (namespace mounts).
const RUN_ROOT: &str = "/run/skiff/clusters";

fn run_dir(name: &str) -> PathBuf {
    PathBuf::from(RUN_ROOT).join(name)
}

fn netns_path(name: &str, host: &str) -> PathBuf {
    run_dir(name).join("netns").join(host)
}

fn node_name(i: u8) -> String {
    format!("node-{i}")
}

fn cgroup_parent(cluster: &str, node: &str) -> String {
    format!("skiff/{cluster}-{node}")
}

fn cgroup2_dir(cluster: &str, node: &str) -> PathBuf {
    PathBuf::from(skiff_dataplane::cgroup2::MOUNT)
        .join("skiff")
        .join(cluster)
        .join(node)
}

fn running_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn spawn(args: &[String], log: &Path, pid_file: &Path) -> anyhow::Result<u32> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    let child = std::os::unix::process::CommandExt::process_group(
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out),
        0,
    )
    .spawn()
    .with_context(|| format!("starting skiff {}", args.first().map_or("", |a| a.as_str())))?;
    std::fs::write(pid_file, child.id().to_string())?;
    Ok(child.id())
}

/// Stops the process in `pid_file` (SIGTERM, then SIGKILL after `grace`).
fn stop(pid_file: &Path, grace: Duration) -> Option<i32> {
    let pid = running_pid(pid_file)?;
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(pid_file);
    Some(pid)
}

/// The underlay, the nodes' and the client's namespaces, created once and kept by mounts.
fn network(name: &str, nodes: u8) -> anyhow::Result<()> {
    Netns::current()?
        .block_on(async {
            let nl = skiff_dataplane::netlink::Netlink::open()?;
            nl.add_unreachable(CLUSTER_RANGE.0, CLUSTER_RANGE.1).await
        })?
        .context("adding the unreachable route for 198.18.0.0/15 in the root namespace")?;
    let underlay_path = netns_path(name, "underlay");
    if underlay_path.exists() {
        return Ok(());
    }
    let underlay = Underlay::create().context("creating the underlay namespace")?;
    underlay.ns.persist(&underlay_path)?;
    for i in 0..nodes {
        let node = underlay
            .node(i)
            .with_context(|| format!("creating node {i}'s namespace"))?;
        node.host.ns.persist(&netns_path(name, &node_name(i)))?;
    }
    let client = underlay
        .outside(0)
        .context("creating the client namespace")?;
    client.ns.persist(&netns_path(name, "client"))?;
    Ok(())
}

fn start_nodes(args: &UpArgs, data: &Path) -> anyhow::Result<()> {
    let layout = data.join("busybox-image");
    if !layout.join("index.json").exists() {
        skiff_kubelet::image::build::busybox_image(
            &layout,
            IMAGE,
            Path::new(skiff_kubelet::image::build::BUSYBOX),
        )
        .with_context(|| {
            format!(
                "building the demo image from {} (Debian package busybox-static)",
                skiff_kubelet::image::build::BUSYBOX
            )
        })?;
    }
    for i in 0..args.nodes {
        let node = node_name(i);
        let dir = data.join("nodes").join(&node);
        let pid_file = data.join(format!("{node}.pid"));
        if running_pid(&pid_file).is_some() {
            continue;
        }
        skiff_kubelet::image::ImageStore::open(&dir.join("images"))?
            .import(&layout)
            .with_context(|| format!("importing the demo image on {node}"))?;
        let cidr = pod_cidr(i);
        let flags: Vec<String> = vec![
            "--server".into(),
            args.listen.clone(),
            "node".into(),
            "--name".into(),
            node.clone(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--node-ip".into(),
            node_ip(i).to_string(),
            "--pod-cidr".into(),
            cidr.to_string(),
            "--pod-network".into(),
            "--netns".into(),
            netns_path(&args.name, &node).display().to_string(),
            "--cgroup2".into(),
            cgroup2_dir(&args.name, &node).display().to_string(),
            "--cgroup-parent".into(),
            cgroup_parent(&args.name, &node),
            "--dataplane".into(),
            "--uplink".into(),
            "eth0".into(),
            "--xdp-mode".into(),
            "generic".into(),
            // The node API listens on loopback in the root namespace (the API server cannot
            // reach the node namespaces) and is advertised as the Node's Hostname address.
            "--serve".into(),
            "127.0.0.1:0".into(),
            "--hostname-override".into(),
            "127.0.0.1".into(),
            "--runtime".into(),
            args.runtime.clone(),
            "--cores".into(),
            "1".into(),
            // Renewed every quarter of the grace period: a live node never looks silent.
            "--node-lease-duration".into(),
            format!("{}ms", args.node_monitor_grace_period.as_millis()),
        ];
        let pid = spawn(&flags, &data.join(format!("{node}.log")), &pid_file)?;
        eprintln!(
            "started {node} (pid {pid}): {} on the underlay, pods in {cidr}",
            node_ip(i)
        );
    }
    Ok(())
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let data = data_dir(&args.name, &args.data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let server_pid = data.join("server.pid");
    if running_pid(&server_pid).is_none() {
        let flags: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            data.join("store").display().to_string(),
            "--listen".into(),
            args.listen.clone(),
            "--no-write-config".into(),
            "--kubelet-preferred-address-types".into(),
            "Hostname,InternalIP".into(),
            "--node-monitor-grace-period".into(),
            format!("{}ms", args.node_monitor_grace_period.as_millis()),
            "--default-toleration-seconds".into(),
            args.default_toleration_seconds.to_string(),
        ];
        let pid = spawn(&flags, &data.join("server.log"), &server_pid)?;
        eprintln!(
            "started skiff server (pid {pid}), log: {}",
            data.join("server.log").display()
        );
    } else {
        eprintln!("skiff server already running");
    }
    let client = wait_for(
        "the API server",
        Duration::from_secs(20),
        async || match Client::connect(&args.listen).await {
            Ok(c) if c.version().await.is_ok() => Some(c),
            _ => None,
        },
    )
    .await
    .with_context(|| format!("see {}", data.join("server.log").display()))?;
    if !args.no_write_config {
        crate::config::save(&crate::config::ClientConfig {
            server: args.listen.clone(),
        })?;
    }
    network(&args.name, args.nodes)?;
    start_nodes(&args, &data)?;
    let n = args.nodes as usize;
    wait_for(
        &format!("{n} Ready nodes"),
        Duration::from_secs(30),
        async || {
            let nodes = client
                .api::<Node>("")
                .list(&ListParams::default())
                .await
                .ok()?;
            (nodes.items.iter().filter(|x| node_ready(x)).count() >= n).then_some(())
        },
    )
    .await
    .with_context(|| format!("see {}/node-*.log", data.display()))?;
    println!();
    println!(
        "Skiff cluster {:?} is up: API server at {}, {n} node(s) on 198.18.0.0/24.",
        args.name, args.listen
    );
    if args.no_demo {
        return Ok(());
    }
    let demo = data.join("demo.yaml");
    std::fs::write(&demo, DEMO)?;
    crate::cli::apply(&client, &[demo.display().to_string()], "default", false).await?;
    let deployments = client.api::<Deployment>("default");
    wait_for(
        "the demo Deployment to be available",
        Duration::from_secs(90),
        async || {
            let d = deployments.get("web").await.ok()?;
            let s = d.status?;
            (s.available_replicas == Some(3) && s.updated_replicas == Some(3)).then_some(())
        },
    )
    .await
    .with_context(|| format!("see {}/node-*.log and `skiff get pods`", data.display()))?;
    let svc = client.api::<Service>("default").get("web").await?;
    let spec = svc.spec.unwrap_or_default();
    let cluster_ip = spec.cluster_ip.unwrap_or_default();
    let node_port = spec
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .and_then(|p| p.node_port)
        .unwrap_or_default();
    let pod = client
        .api::<Pod>("default")
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .unwrap_or_else(|| "<pod>".into());
    let client_ns = netns_path(&args.name, "client");
    println!(
        "The demo is serving: deployment/web (3 x busybox httpd) behind service/web \
         (ClusterIP {cluster_ip}:80, NodePort {node_port})."
    );
    println!();
    println!("Try:");
    println!("  skiff get nodes,pods -o wide");
    println!(
        "  skiff exec {pod} -- wget -qO- http://{cluster_ip}/        # the ClusterIP, from a pod"
    );
    println!(
        "  nsenter --net={} busybox wget -qO- http://{}:{node_port}/   # the NodePort, from outside",
        client_ns.display(),
        node_ip(0)
    );
    println!("  skiff logs {pod}");
    println!("  skiff scale deployment web --replicas 5");
    println!("  skiff rollout status deployment web");
    println!("  skiff down                                   # removes everything");
    Ok(())
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let data = data_dir(&args.name, &args.data_dir);
    let mut nodes: Vec<String> = std::fs::read_dir(data.join("nodes"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    for node in &nodes {
        if let Some(pid) = stop(&data.join(format!("{node}.pid")), Duration::from_secs(5)) {
            println!("stopped {node} (pid {pid})");
        }
        let purged = skiff_kubelet::agent::purge::purge(
            &data.join("nodes").join(node),
            &cgroup_parent(&args.name, node),
            Some(&cgroup2_dir(&args.name, node)),
        )
        .with_context(|| format!("removing what {node}'s pods left"))?;
        if purged.pods + purged.processes + purged.mounts > 0 {
            println!(
                "removed {node}'s pods: {} pod(s), {} process(es), {} mount(s)",
                purged.pods, purged.processes, purged.mounts
            );
        }
        let _ = std::fs::remove_dir(cgroup2_dir(&args.name, node));
    }
    match stop(&data.join("server.pid"), Duration::from_secs(10)) {
        Some(pid) => println!("stopped skiff server (pid {pid})"),
        None => println!("no skiff server of cluster {:?} is running", args.name),
    }
    let netns_dir = run_dir(&args.name).join("netns");
    if let Ok(rd) = std::fs::read_dir(&netns_dir) {
        for e in rd.flatten() {
            Netns::forget(&e.path())
                .with_context(|| format!("unmounting {}", e.path().display()))?;
        }
    }
    let _ = std::fs::remove_dir_all(run_dir(&args.name));
    let cg = PathBuf::from(skiff_dataplane::cgroup2::MOUNT).join("skiff");
    let _ = std::fs::remove_dir(cg.join(&args.name));
    let _ = std::fs::remove_dir(&cg); // only when no other cluster uses it
    // The unreachable route stays while another local cluster runs.
    let others = std::fs::read_dir(RUN_ROOT)
        .map(|rd| rd.flatten().count())
        .unwrap_or(0);
    if others == 0 {
        Netns::current()?
            .block_on(async {
                let nl = skiff_dataplane::netlink::Netlink::open()?;
                nl.del_route(
                    CLUSTER_RANGE.0,
                    CLUSTER_RANGE.1,
                    skiff_dataplane::netlink::RouteType::Unreachable,
                )
                .await
            })?
            .context("removing the unreachable route of 198.18.0.0/15")?;
    }
    if args.purge {
        std::fs::remove_dir_all(&data).ok();
        println!("removed {}", data.display());
    }
    Ok(())
}
