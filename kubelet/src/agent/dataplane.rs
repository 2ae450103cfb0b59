//! The node's eBPF data plane, in the agent's process (kube-proxy's and the CNI's work):
//! the socket load balancer on the node's cgroup2 directory, XDP NodePort on the uplink,
//! Services and EndpointSlices synced from the API server, the pod program on every pod
//! veth (attached when the pod's network is plumbed, detached at teardown), and routes to
//! the other nodes' pod CIDRs through their InternalIP.
//!
//! It runs on a thread of its own with a current-thread tokio runtime; pod workers reach
//! it through a channel and wait for the attachment before their containers start, so no
//! packet of a pod passes before its program is in place.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use parking_lot::Mutex;
use skiff_client::informer::{Event, Informer};
use skiff_client::{Client, ListParams};
use skiff_dataplane::maps::NodeConfig;
use skiff_dataplane::netns::Netns;
use skiff_dataplane::podnet::{PodInterface, PodNetwork};
use skiff_dataplane::{
    DataPlane, Frontend, LoadBalancer, ServiceCounters, ServiceSync, TcLink, XdpAttach,
};

/// How the data plane attaches.
#[derive(Debug, Clone)]
pub struct DataplaneOptions {
    /// The node's uplink (in the node's namespace): XDP NodePort attaches there.
    pub uplink: Option<String>,
    /// Generic (skb) XDP, for veth uplinks.
    pub xdp_generic: bool,
}

enum Msg {
    Attach {
        uid: String,
        iface: PodInterface,
        reply: std_mpsc::Sender<Result<(), String>>,
    },
    Detach {
        uid: String,
    },
    Stop,
}

/// The running data plane; stops (detaching everything) when dropped.
pub struct NodeDataplane {
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    lb: Arc<Mutex<LoadBalancer>>,
}

impl Drop for NodeDataplane {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the data plane needs to know about its node.
pub struct NodeInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub netns: Option<PathBuf>,
    pub cgroup2: PathBuf,
    pub api_server: String,
}

impl NodeDataplane {
    /// Loads and attaches the programs, then syncs in the background. Returns once the
    /// programs are attached (errors name what failed).
    pub fn start(
        node: NodeInfo,
        opts: DataplaneOptions,
        podnet: Option<Arc<PodNetwork>>,
    ) -> anyhow::Result<NodeDataplane> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<Arc<Mutex<LoadBalancer>>, String>>();
        let thread =
            std::thread::Builder::new()
                .name("skiff-dataplane".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let netns = match &node.netns {
                            Some(p) => Netns::open(p),
                            None => Netns::current(),
                        };
                        let netns = match netns {
                            Ok(n) => n,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("node namespace: {e}")));
                                return;
                            }
                        };
                        let mut dp = match attach(&node, &opts, &netns) {
                            Ok(dp) => dp,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        let lb = match dp.load_balancer().map_err(|e| e.to_string()).and_then(
                            |mut lb| {
                                lb.set_node(NodeConfig::new(
                                    node.ip,
                                    node.pod_cidr.network(),
                                    node.pod_cidr.prefix_len(),
                                ))
                                .map_err(|e| e.to_string())?;
                                Ok(lb)
                            },
                        ) {
                            Ok(lb) => Arc::new(Mutex::new(lb)),
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("service maps: {e}")));
                                return;
                            }
                        };
                        let client = match Client::connect_lazy(&node.api_server) {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return;
                            }
                        };
                        let sync = ServiceSync::start(&client, lb.clone(), Some(node.ip));
                        let _routes = podnet.map(|pn| routes(&client, &node.name, pn));
                        let _ = ready_tx.send(Ok(lb.clone()));
                        // Each pod's program link and address.
                        let mut links: HashMap<String, (TcLink, Ipv4Addr)> = HashMap::new();
                        while let Some(msg) = rx.recv().await {
                            match msg {
                                Msg::Attach { uid, iface, reply } => {
                                    if let Some((old, ip)) = links.remove(&uid) {
                                        let _ = dp.detach_tc(old);
                                        let _ = lb.lock().remove_local_pod(ip);
                                    }
                                    let r = netns
                                        .run(|| dp.attach_tc(&iface.host_veth))
                                        .map_err(|e| e.to_string())
                                        .and_then(|r| r.map_err(|e| e.to_string()))
                                        .and_then(|link| {
                                            links.insert(uid, (link, iface.ip));
                                            lb.lock()
                                                .add_local_pod(iface.ip, iface.local_pod())
                                                .map_err(|e| e.to_string())
                                        });
                                    let _ = reply.send(r);
                                }
                                Msg::Detach { uid } => {
                                    if let Some((link, ip)) = links.remove(&uid) {
                                        let _ = dp.detach_tc(link);
                                        let _ = lb.lock().remove_local_pod(ip);
                                    }
                                }
                                Msg::Stop => break,
                            }
                        }
                        drop(sync);
                        for (_, (link, _)) in links {
                            let _ = dp.detach_tc(link);
                        }
                        drop(dp);
                    });
                })?;
        match ready_rx.recv() {
            Ok(Ok(lb)) => Ok(NodeDataplane {
                tx,
                thread: Some(thread),
                lb,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                anyhow::bail!("data plane: {e}")
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("data plane: its thread ended before attaching")
            }
        }
    }

    /// Every programmed frontend with its service port's counters (`skiff dataplane
    /// stats`), read from the kernel's maps.
    pub fn counters(&self) -> Result<Vec<(Frontend, ServiceCounters)>, String> {
        self.lb
            .lock()
            .frontend_counters()
            .map_err(|e| e.to_string())
    }

    /// Attaches the pod program to a pod's veth (host side) and registers the pod for
    /// XDP's direct path; blocks until done.
    pub fn attach_pod(&self, uid: &str, iface: &PodInterface) -> Result<(), String> {
        let (reply, rx) = std_mpsc::channel();
        self.tx
            .send(Msg::Attach {
                uid: uid.to_string(),
                iface: iface.clone(),
                reply,
            })
            .map_err(|_| "the data plane stopped".to_string())?;
        rx.recv()
            .map_err(|_| "the data plane stopped".to_string())?
    }

    pub fn detach_pod(&self, uid: &str) {
        let _ = self.tx.send(Msg::Detach {
            uid: uid.to_string(),
        });
    }
}

fn attach(node: &NodeInfo, opts: &DataplaneOptions, netns: &Netns) -> Result<DataPlane, String> {
    let mut dp = DataPlane::load().map_err(|e| format!("loading the eBPF programs: {e}"))?;
    std::fs::create_dir_all(&node.cgroup2)
        .map_err(|e| format!("cgroup2 {}: {e}", node.cgroup2.display()))?;
    dp.attach_cgroup(&node.cgroup2)
        .map_err(|e| format!("socket load balancer on {}: {e}", node.cgroup2.display()))?;
    if let Some(dev) = &opts.uplink {
        let mode = if opts.xdp_generic {
            XdpAttach::Generic
        } else {
            XdpAttach::Native
        };
        netns
            .run(|| dp.attach_xdp(dev, mode))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("XDP on the uplink {dev}: {e}"))?;
    }
    Ok(dp)
}

/// Routes to every other node's pod CIDR through its InternalIP, as nodes come.
fn routes(
    client: &Client,
    me: &str,
    pn: Arc<PodNetwork>,
) -> skiff_client::informer::InformerHandle<Node> {
    let me = me.to_string();
    let done: Mutex<HashSet<(Ipv4Net, Ipv4Addr)>> = Mutex::default();
    Informer::new(client.api::<Node>(""), ListParams::default())
        .on_event(move |e| {
            let (Event::Added(n) | Event::Updated { new: n, .. }) = e else {
                return;
            };
            if n.metadata.name.as_deref() == Some(me.as_str()) {
                return;
            }
            let cidr = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .and_then(|c| c.parse::<Ipv4Net>().ok());
            let ip = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|x| x.type_ == "InternalIP"))
                .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
            let (Some(cidr), Some(ip)) = (cidr, ip) else {
                return;
            };
            if !done.lock().insert((cidr, ip)) {
                return;
            }
            if let Err(e) = pn.route_to_node(cidr, ip) {
                tracing::warn!(node = ?n.metadata.name, %cidr, %ip, error = %e, "cannot route to a node's pods");
            }
        })
        .start()
}
