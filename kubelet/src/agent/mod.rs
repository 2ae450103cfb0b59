//! The node agent (`skiff node`): thread-per-core on io_uring.
//!
//! One tokio-uring executor per core; each pod lives on the core its UID hashes to (its
//! worker, its log pumps, its status writes), with a spawner connection and an API client
//! per core, so nothing on the pod path is shared across cores. Core 0 also registers the
//! Node, renews its Lease, reports node status and runs the pod informer (field selector
//! `spec.nodeName=<node>`), handing each pod event to its core over a channel.
//!
//! Stopping the agent leaves containers running: the spawner keeps them (and their log
//! pipes), and the next agent on the same data dir adopts them.

pub mod dataplane;
pub mod events;
pub mod inbox;
pub mod logs;
pub mod node;
pub mod pod;
pub mod probe;
pub mod purge;
pub mod server;
pub mod volumes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use skiff_client::Client;
use skiff_client::informer::{Event, Informer};
use skiff_dataplane::netns::Netns;
use skiff_dataplane::podnet::PodNetwork;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::image::ImageStore;
use crate::runtime::cgroup::Hierarchy;
use crate::runtime::client::Runtime;
use pod::{PodMsg, PodWorker};

/// How a node agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// API server address (`host:port`).
    pub api_server: String,
    /// Pods' state, images, layers.
    pub data_dir: PathBuf,
    /// Container logs (`/var/log/pods` in Kubernetes).
    pub log_dir: PathBuf,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// Connect pods to the node's network through `podnet` (veth, IPAM, routes); without
    /// it a pod gets a namespace with loopback only.
    pub pod_network: bool,
    /// The node's network namespace (default: the agent's own).
    pub node_netns: Option<PathBuf>,
    /// The node's cgroup2 directory the data plane's socket programs are attached to.
    pub cgroup2: Option<PathBuf>,
    /// Parent of pod cgroups under each hierarchy.
    pub cgroup_parent: String,
    pub cluster_dns: Option<Ipv4Addr>,
    pub cores: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub backoff_reset: Duration,
    pub lease_period: Duration,
    pub status_period: Duration,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// Where the node's API (logs, exec) listens; its port is advertised in the Node's
    /// daemon endpoints. None: not served.
    pub serve_addr: Option<std::net::SocketAddr>,
    /// The port actually bound (set by `Agent::start`).
    pub serve_port: u16,
    /// Run containers through this OCI runtime (crun, runc) instead of Skiff's own.
    pub oci_runtime: Option<PathBuf>,
    /// Run the node's eBPF data plane in this process (needs `cgroup2`).
    pub dataplane: Option<dataplane::DataplaneOptions>,
    /// The Node's `Hostname` address (default: the node name), as kubelet's
    /// --hostname-override.
    pub hostname: Option<String>,
}

impl AgentConfig {
    /// Kubernetes' defaults for everything not named.
    pub fn new(node_name: &str, api_server: &str, data_dir: &Path) -> AgentConfig {
        AgentConfig {
            node_name: node_name.to_string(),
            api_server: api_server.to_string(),
            data_dir: data_dir.to_path_buf(),
            log_dir: data_dir.join("logs"),
            node_ip: Ipv4Addr::LOCALHOST,
            pod_cidr: Ipv4Net::new(Ipv4Addr::new(198, 18, 1, 0), 24).unwrap_or_default(),
            pod_network: false,
            node_netns: None,
            cgroup2: None,
            cgroup_parent: format!("skiff/{node_name}"),
            cluster_dns: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            lease_period: Duration::from_secs(10),
            status_period: Duration::from_secs(60),
            log_max_bytes: 10 << 20,
            log_max_files: 5,
            serve_addr: None,
            serve_port: 0,
            oci_runtime: None,
            dataplane: None,
            hostname: None,
        }
    }
}

/// What every core shares (read-only after start).
pub struct Shared {
    pub cfg: AgentConfig,
    pub images: ImageStore,
    pub podnet: Option<Arc<PodNetwork>>,
    pub dataplane: Option<dataplane::NodeDataplane>,
    pub hierarchy: Hierarchy,
}

/// One core's handles.
pub struct Core {
    pub shared: Arc<Shared>,
    pub runtime: Runtime,
    pub client: Client,
}

pub(crate) enum CoreMsg {
    Pod(Arc<Pod>),
    Gone(String),
    /// Run a command in a container of a pod on this core.
    Exec {
        uid: String,
        container: String,
        call: server::ExecCall,
        reply: server::ExecReply,
    },
    Stop,
}

/// A running node agent.
pub struct Agent {
    cores: Vec<inbox::Mailer<CoreMsg>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Marks a directory whose subdirectories (one per pod) are unrelated trees as the top of
/// directory hierarchies (`chattr +T`), so that ext4's Orlov allocator spreads them over
/// block groups instead of packing every pod's inodes into the parent's group. On ext4
/// without a journal an inode freed in the last 60 to 300 s is not reused and every
/// allocation in its group walks past it (`recently_deleted`); with pods created and
/// removed all day in one group, each new file cost up to 0.3 ms (measured: 15 µs with
/// the flag, 50 to 340 µs without). Other filesystems ignore the hint or refuse it, which
/// is fine.
pub fn top_of_hierarchies(dir: &Path) {
    /// `FS_TOPDIR_FL` from linux/fs.h (not in the libc crate).
    const FS_TOPDIR_FL: libc::c_long = 0x0002_0000;
    let Ok(f) = std::fs::File::open(dir) else {
        return;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`, which outlives the call; `fd`
    // is open for the duration.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) } != 0
        || flags & FS_TOPDIR_FL != 0
    {
        return;
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one long from `flags`; `fd` is open for the duration.
    let _ = unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags) };
}

pub(crate) fn shard(uid: &str, cores: usize) -> usize {
    (skiff_dataplane::hash::fnv1a(uid.bytes()) as usize) % cores.max(1)
}

impl Agent {
    /// Starts the agent's cores. The spawner must already run (`runtime::spawner::start`,
    /// called before any thread existed).
    pub fn start(mut cfg: AgentConfig, spawner_socket: &Path) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        for d in [cfg.data_dir.join("pods"), cfg.log_dir.clone()] {
            std::fs::create_dir_all(&d)?;
            top_of_hierarchies(&d);
        }
        let listener = match cfg.serve_addr {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|e| anyhow::anyhow!("serving the node API on {addr}: {e}"))?;
                l.set_nonblocking(true)?;
                cfg.serve_port = l.local_addr()?.port();
                Some(l)
            }
            None => None,
        };
        let mut listener = listener;
        let images = ImageStore::open(&cfg.data_dir.join("images"))?;
        let hierarchy = Hierarchy::detect()?;
        let podnet = if cfg.pod_network {
            let node = match &cfg.node_netns {
                Some(p) => Netns::open(p)?,
                None => Netns::current()?,
            };
            Some(Arc::new(PodNetwork::new(
                node,
                cfg.pod_cidr,
                &cfg.data_dir,
            )?))
        } else {
            None
        };
        let dataplane = match &cfg.dataplane {
            Some(opts) => {
                let cgroup2 = cfg.cgroup2.clone().ok_or_else(|| {
                    anyhow::anyhow!("the data plane needs the node's cgroup2 directory")
                })?;
                Some(dataplane::NodeDataplane::start(
                    dataplane::NodeInfo {
                        name: cfg.node_name.clone(),
                        ip: cfg.node_ip,
                        pod_cidr: cfg.pod_cidr,
                        netns: cfg.node_netns.clone(),
                        cgroup2,
                        api_server: cfg.api_server.clone(),
                    },
                    opts.clone(),
                    podnet.clone(),
                )?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            images,
            podnet,
            dataplane,
            hierarchy,
        });
        let n = cfg.cores.max(1);
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = inbox::inbox()?;
            senders.push(tx);
            receivers.push(rx);
        }
        let mut threads = Vec::new();
        for (i, inbox) in receivers.into_iter().enumerate() {
            let shared = shared.clone();
            let socket = spawner_socket.to_path_buf();
            let all = senders.clone();
            let listener = if i == 0 { listener.take() } else { None };
            let t = std::thread::Builder::new()
                .name(format!("skiff-core-{i}"))
                .spawn(move || {
                    tokio_uring::start(async move {
                        let mut rx = match inbox.open() {
                            Ok(rx) => rx,
                            Err(e) => {
                                tracing::error!(core = i, error = %e, "core cannot open its inbox");
                                return;
                            }
                        };
                        let core = match connect_core(shared, &socket) {
                            Ok(c) => Rc::new(c),
                            Err(e) => {
                                tracing::error!(core = i, error = %e, "core cannot start");
                                return;
                            }
                        };
                        let _control = (i == 0)
                            .then(|| tokio_uring::spawn(control(core.clone(), all, listener)));
                        let mut pods: HashMap<String, UnboundedSender<PodMsg>> = HashMap::new();
                        let mut workers = Vec::new();
                        while let Some(msg) = rx.recv().await {
                            match msg {
                                CoreMsg::Pod(p) => {
                                    let uid = p.metadata.uid.clone().unwrap_or_default();
                                    if let Some(tx) = pods.get(&uid)
                                        && tx.send(PodMsg::Update(p.clone())).is_ok()
                                    {
                                        continue;
                                    }
                                    let (tx, prx) = unbounded_channel();
                                    let w = PodWorker::new(core.clone(), p, tx.clone());
                                    workers.push(tokio_uring::spawn(w.run(prx)));
                                    pods.insert(uid, tx);
                                }
                                CoreMsg::Gone(uid) => {
                                    if let Some(tx) = pods.remove(&uid) {
                                        let _ = tx.send(PodMsg::Gone);
                                    }
                                }
                                CoreMsg::Exec {
                                    uid,
                                    container,
                                    call,
                                    reply,
                                } => match pods.get(&uid) {
                                    Some(tx) => {
                                        let _ = tx.send(PodMsg::Exec {
                                            container,
                                            call,
                                            reply,
                                        });
                                    }
                                    None => {
                                        let _ = reply
                                            .try_send(Err("the pod is not running here".into()));
                                    }
                                },
                                CoreMsg::Stop => break,
                            }
                        }
                        for tx in pods.values() {
                            let _ = tx.send(PodMsg::Detach);
                        }
                        for w in workers {
                            let _ = w.await;
                        }
                    })
                })?;
            threads.push(t);
        }
        Ok(Agent {
            cores: senders,
            threads,
        })
    }

    /// Stops the agent; containers keep running for the next agent to adopt.
    pub fn stop(self) {
        for tx in &self.cores {
            let _ = tx.send(CoreMsg::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn connect_core(shared: Arc<Shared>, socket: &Path) -> anyhow::Result<Core> {
    let runtime = Runtime::connect(socket)?;
    let client = Client::connect_lazy(&shared.cfg.api_server)?;
    Ok(Core {
        shared,
        runtime,
        client,
    })
}

/// Core 0's extra duties: the Node, its Lease and status, and the pod informer.
async fn control(
    core: Rc<Core>,
    cores: Vec<inbox::Mailer<CoreMsg>>,
    listener: Option<std::net::TcpListener>,
) {
    let cfg = &core.shared.cfg;
    loop {
        match node::register(&core.client, cfg).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the node; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if let Err(e) = node::renew_lease(&core.client, cfg).await {
        tracing::warn!(error = %e, "cannot renew the node lease");
    }
    let n = cores.len();
    let all_cores = cores.clone();
    let params =
        skiff_client::ListParams::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let _informer = Informer::new(core.client.api::<Pod>(""), params)
        .on_event(move |ev| {
            let (pod, gone) = match ev {
                Event::Added(p) => (p.clone(), false),
                Event::Updated { new, .. } => (new.clone(), false),
                Event::Deleted(p) => (p.clone(), true),
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let msg = if gone {
                CoreMsg::Gone(uid.clone())
            } else {
                CoreMsg::Pod(pod)
            };
            let _ = cores[shard(&uid, n)].send(msg);
        })
        .start();
    // Pods a previous agent was running that no longer exist in the API (deleted while no
    // agent watched): nothing will ever send them to a worker, so clean them up here.
    _informer.reader.wait_synced().await;
    let known: std::collections::HashSet<String> = _informer
        .reader
        .list()
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    if let Err(e) = cleanup_orphans(&core, &known).await {
        tracing::warn!(error = %e, "cannot clean up orphaned pods");
    }
    if let Some(l) = listener {
        let svc = server::NodeService {
            shared: core.shared.clone(),
            log_dir: cfg.log_dir.clone(),
            pods: _informer.reader.clone(),
            cores: all_cores,
        };
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(async move {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                    if let Err(e) = tonic::transport::Server::builder()
                        .add_service(skiff_api::proto::node_server::NodeServer::new(svc))
                        .serve_with_incoming(incoming)
                        .await
                    {
                        tracing::error!(error = %e, "node API stopped");
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot serve the node API"),
        }
    }
    let mut lease = tokio::time::interval(cfg.lease_period);
    let mut status = tokio::time::interval(cfg.status_period);
    lease.tick().await;
    status.tick().await;
    loop {
        tokio::select! {
            _ = lease.tick() => {
                if let Err(e) = node::renew_lease(&core.client, cfg).await {
                    tracing::warn!(error = %e, "cannot renew the node lease");
                }
                // The node controller marks a node it has not heard from Unknown; once
                // heard again, the agent posts its own view at once (as the kubelet does
                // when the API's node status differs from its own).
                match node::reported_ready(&core.client, cfg).await {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Err(e) = node::heartbeat(&core.client, cfg).await {
                            tracing::warn!(error = %e, "cannot report node status");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read the node's status"),
                }
            }
            _ = status.tick() => {
                if let Err(e) = node::heartbeat(&core.client, cfg).await {
                    tracing::warn!(error = %e, "cannot report node status");
                }
            }
        }
    }
}

/// Removes what is left of pods the API no longer has: their containers (adopted from
/// the spawner, then killed), sandbox namespaces, volumes, network, cgroups, logs and
/// directories.
async fn cleanup_orphans(
    core: &Core,
    known: &std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    let cfg = &core.shared.cfg;
    let pods = cfg.data_dir.join("pods");
    let Ok(rd) = std::fs::read_dir(&pods) else {
        return Ok(());
    };
    for entry in rd.flatten() {
        let uid = entry.file_name().to_string_lossy().to_string();
        let uid_owned = uid.clone();
        if known.contains(&uid) {
            continue;
        }
        let dir = entry.path();
        tracing::info!(uid = %uid, "cleaning up a pod the API no longer has");
        let ids: Vec<String> = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| {
                v["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["running"][0].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let (live, _) = core.runtime.adopt(ids).await?;
            for mut c in live {
                let _ = c.signal(libc::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            }
        }
        let shared = core.shared.clone();
        let log_dir = cfg.log_dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let rel = PathBuf::from(&shared.cfg.cgroup_parent).join(format!("pod{uid}"));
            crate::runtime::cgroup::remove_tree(
                &shared.hierarchy,
                &rel,
                shared.cfg.cgroup2.as_deref(),
            );
            volumes::PodVolumes::teardown(&dir)?;
            if let Some(pn) = &shared.podnet {
                pn.remove(&uid)?;
            }
            if let Some(sb) = crate::runtime::sandbox::Sandbox::existing(&dir) {
                sb.remove()?;
            }
            purge::unmount_under(&dir)?;
            std::fs::remove_dir_all(&dir)?;
            if let Ok(logs) = std::fs::read_dir(&log_dir) {
                for l in logs.flatten() {
                    if l.file_name()
                        .to_string_lossy()
                        .ends_with(&format!("_{uid}"))
                    {
                        let _ = std::fs::remove_dir_all(l.path());
                    }
                }
            }
            Ok(())
        })
        .await??;
        // After the pod network removed the veth (the namespace takes it along).
        core.runtime.release_sandbox(&uid_owned).await?;
    }
    Ok(())
}
