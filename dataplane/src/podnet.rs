//! Pod networking: each pod's network namespace joined to its node by a veth pair.
//!
//! The pod gets an address from the node's pod CIDR as a /32 on `eth0` (whose hardware
//! address follows from it, `pod_mac`), and a default route through 169.254.1.1, a
//! link-local gateway that exists only as a permanent neighbour entry pointing at the host
//! side of the veth: the node routes for the pod, no bridge, no ARP proxying. The node has
//! a /32 route per pod over its veth and one route per other node's pod CIDR through that
//! node's address on the underlay.
//!
//! Addresses come from the node's allocation table (`ipam`), kept in the state directory:
//! two allocations never get the same address, and a restarted agent finds every
//! allocation where it left it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::ipam::Ipam;
use crate::netlink::{LOOPBACK, Netlink, NetlinkError};
use crate::netns::{Netns, sysctl};

/// The pods' default gateway: link-local, resolved by a static neighbour entry.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("pod network state in {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod CIDR {0} has no free address")]
    Exhausted(Ipv4Net),
    #[error("{0}")]
    Namespace(#[from] std::io::Error),
}

/// A pod as the network sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub ip: Ipv4Addr,
    /// The host side of the pod's veth, in the node's namespace.
    pub host_veth: String,
    /// Its interface index there.
    pub host_ifindex: u32,
    /// Its hardware address.
    pub host_mac: [u8; 6],
    /// The hardware address of the pod's `eth0`.
    pub mac: [u8; 6],
}

impl PodInterface {
    /// The pod as XDP's direct path needs it (`LoadBalancer::add_local_pod`).
    pub fn local_pod(&self) -> crate::maps::LocalPod {
        crate::maps::LocalPod {
            ifindex: self.host_ifindex,
            mac: self.mac,
            host_mac: self.host_mac,
        }
    }
}

/// The hardware address a pod's `eth0` gets: 0a:58 and its IPv4 address (locally
/// administered, unicast), so that it follows from the address alone.
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

fn mac6(mac: &[u8], what: &str) -> Result<[u8; 6], PodNetError> {
    mac.try_into().map_err(|_| {
        PodNetError::Namespace(std::io::Error::other(format!(
            "{what} has a {}-byte hardware address",
            mac.len()
        )))
    })
}

/// One node's pod network.
pub struct PodNetwork {
    node: Netns,
    cidr: Ipv4Net,
    ipam: Ipam,
}

impl PodNetwork {
    /// The pod network of the node whose namespace is `node`, handing out `cidr`, keeping
    /// its allocations in `state_dir`. Enables forwarding in the node's namespace.
    pub fn new(node: Netns, cidr: Ipv4Net, state_dir: &Path) -> Result<Self, PodNetError> {
        let ipam = Ipam::open(state_dir, cidr).map_err(|source| PodNetError::State {
            path: state_dir.join("ipam.table"),
            source,
        })?;
        node.run(|| sysctl("net/ipv4/ip_forward", "1"))??;
        Ok(PodNetwork { node, cidr, ipam })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Connects the pod `id` whose namespace is `pod`; idempotent for the same id. Blocks;
    /// from async code it runs on a thread of its own (see [`PodNetwork::add_blocking`]).
    pub fn add(&self, id: &str, pod: &Netns) -> Result<PodInterface, PodNetError> {
        off_runtime(|| self.add_blocking(id, pod))
    }

    /// [`PodNetwork::add`] on the calling thread, which must be allowed to block and must
    /// not be running async code (a `spawn_blocking` task, a plain thread): it drives the
    /// netlink requests on a runtime of its own.
    pub fn add_blocking(&self, id: &str, pod: &Netns) -> Result<PodInterface, PodNetError> {
        let ip = self.allocate(id)?;
        let host_veth = host_veth_name(id);
        let result = self.plumb(&host_veth, ip, pod);
        if result.is_err() {
            let _ = self.del_host_veth(&host_veth);
            self.release(ip);
        }
        let (host_ifindex, host_mac) = result?;
        Ok(PodInterface {
            ip,
            host_veth,
            host_ifindex,
            host_mac,
            mac: pod_mac(ip),
        })
    }

    /// The interface of pod `id` as an earlier agent plumbed it, read from the kernel
    /// (the pod's own `eth0` for its hardware address); `None` if it holds no address.
    /// Blocks, like [`PodNetwork::add`].
    pub fn interface(&self, id: &str, pod: &Netns) -> Result<Option<PodInterface>, PodNetError> {
        let Some(ip) = self
            .allocations()?
            .into_iter()
            .find_map(|(ip, owner)| (owner == id).then_some(ip))
        else {
            return Ok(None);
        };
        let host_veth = host_veth_name(id);
        let read = || {
            here()?.block_on(async {
                let node = self.node.within(Netlink::open)??;
                let inside = pod.within(Netlink::open)??;
                let (host_ifindex, host_mac) = node.index_and_mac(&host_veth).await?;
                let mac = inside.mac("eth0").await?;
                Ok(PodInterface {
                    ip,
                    host_ifindex,
                    host_mac: mac6(&host_mac, &host_veth)?,
                    mac: mac6(&mac, "the pod's eth0")?,
                    host_veth: host_veth.clone(),
                })
            })
        };
        off_runtime(read).map(Some)
    }

    /// Creates and addresses the pod's veth; returns the host side's index and address.
    ///
    /// Eleven requests and no visit to the node's namespace: the host end is created up,
    /// links are named by index (the pod's `lo` has the same one everywhere), and the host
    /// end's `accept_local` is set over netlink.
    fn plumb(
        &self,
        host_veth: &str,
        ip: Ipv4Addr,
        pod: &Netns,
    ) -> Result<(u32, [u8; 6]), PodNetError> {
        // Each netlink socket is opened inside its namespace (`within`) and keeps acting
        // there; both are driven on this thread. No thread per namespace.
        here()?.block_on(async {
            let node = self.node.within(Netlink::open)??;
            let create = || {
                node.add_veth(
                    host_veth,
                    "eth0",
                    Some(pod),
                    "eth0",
                    Some(pod_mac(ip)),
                    true,
                )
            };
            match create().await {
                // Left by an attempt that failed half-way: start over.
                Err(e) if e.exists() => {
                    node.del_link(host_veth).await?;
                    create().await?;
                }
                r => r?,
            }
            let inside = pod.within(Netlink::open)??;
            let (index, mac) = node.index_and_mac(host_veth).await?;
            // Replies of NodePort flows leave the pod with the node's own address as their
            // source once TC has translated them back: accept that instead of dropping it
            // as a martian. Set on this link alone (the node's namespace may be the host's).
            node.set_accept_local(index).await?;
            node.add_route_at(ip, 32, None, Some(index)).await?;
            inside.set_up_at(LOOPBACK).await?;
            let eth0 = inside.index("eth0").await?;
            inside.set_up_at(eth0).await?;
            // GRO gives the pod's end a NAPI context: XDP on the node can then redirect
            // NodePort traffic straight into the pod instead of through the node's stack.
            // (Set while the link is up: only then does the host end learn that it may
            // take redirected frames.)
            pod.within(|| crate::ethtool::set_gro("eth0", true))??;
            inside.add_address_at(eth0, ip, 32).await?;
            inside.add_neighbour(eth0, GATEWAY, &mac).await?;
            inside
                .add_route_at(Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY), Some(eth0))
                .await?;
            Ok((index, mac6(&mac, host_veth)?))
        })
    }

    /// Disconnects the pod `id`: its veth (and with it its route) and its address go. A
    /// pod that is not connected is not an error. Blocks, like
    /// [`PodNetwork::add_blocking`]: call it outside async code.
    pub fn remove(&self, id: &str) -> Result<(), PodNetError> {
        self.del_host_veth(&host_veth_name(id))?;
        self.ipam
            .release_owner(id)
            .map_err(|source| self.state_error(source))
    }

    /// Routes another node's pod CIDR through that node's underlay address.
    pub fn route_to_node(&self, cidr: Ipv4Net, via: Ipv4Addr) -> Result<(), PodNetError> {
        self.node.block_on(async {
            let nl = Netlink::open()?;
            nl.add_route(cidr.network(), cidr.prefix_len(), Some(via), None)
                .await
        })??;
        Ok(())
    }

    /// Every allocated address and the pod holding it.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, PodNetError> {
        self.ipam
            .allocations()
            .map_err(|source| self.state_error(source))
    }

    /// The address of pod `id`: the one it already holds, or the first free one.
    fn allocate(&self, id: &str) -> Result<Ipv4Addr, PodNetError> {
        self.ipam
            .allocate(id)
            .map_err(|source| self.state_error(source))?
            .ok_or(PodNetError::Exhausted(self.cidr))
    }

    fn release(&self, ip: Ipv4Addr) {
        let _ = self.ipam.release(ip);
    }

    /// Deletes a pod's host-side veth, on this thread (see `here`).
    fn del_host_veth(&self, host_veth: &str) -> Result<(), PodNetError> {
        here()?.block_on(async {
            let nl = self.node.within(Netlink::open)??;
            nl.del_link(host_veth).await?;
            Ok(())
        })
    }

    fn state_error(&self, source: std::io::Error) -> PodNetError {
        PodNetError::State {
            path: self.ipam.path().to_path_buf(),
            source,
        }
    }
}

/// Runs `f` (which blocks, driving netlink on a runtime of its own) here, or on a thread
/// of its own when the caller is async code.
fn off_runtime<T: Send>(
    f: impl FnOnce() -> Result<T, PodNetError> + Send,
) -> Result<T, PodNetError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| s.spawn(f).join())
        .map_err(|_| PodNetError::Namespace(std::io::Error::other("pod network panicked")))?
}

/// A runtime on the calling thread for one call's netlink requests: the thread must be
/// allowed to block and must not be running async code.
fn here() -> Result<tokio::runtime::Runtime, PodNetError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The host-side veth of a pod: `sk` + 12 hex digits of a hash of its id (link names are
/// at most 15 bytes; the peer's temporary name adds one).
pub fn host_veth_name(id: &str) -> String {
    // Stable across runs and versions, so a restarted agent finds its veths.
    let h = crate::hash::fnv1a(id.bytes());
    format!("sk{:012x}", h & 0xffff_ffff_ffff)
}
