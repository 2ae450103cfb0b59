//! A local cluster's network on one machine: node "hosts" that are network namespaces,
//! joined by a bridge that lives in a namespace of its own (the underlay), on
//! 198.18.0.0/15. Nothing is created in the root namespace: no route leads off the machine
//! from any of these namespaces, and they all vanish with their descriptors.
//!
//! Layout (node i, counting from 0):
//! - underlay 198.18.0.0/24: node i at 198.18.0.(10 + i) on its `eth0`; outside hosts
//!   (test clients) at 198.18.0.(200 + k);
//! - pod CIDR of node i: 198.18.(1 + i).0/24; each node routes the others' pod CIDRs
//!   through their underlay address;
//! - the service CIDR 198.19.0.0/16 is `unreachable` in every node: a packet to a service
//!   that was not translated gets an ICMP error, never a path.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::Netns;

pub const UNDERLAY_PREFIX: u8 = 24;
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
const BRIDGE: &str = "br0";

/// The underlay: a namespace holding the bridge every host plugs into.
pub struct Underlay {
    pub ns: Netns,
}

/// One host on the underlay.
pub struct Host {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// The host's end of its underlay link (`eth0` in its namespace).
    pub uplink: String,
    /// The underlay's end of that link (a bridge port in the underlay namespace).
    pub port: String,
}

/// A node: a host with a pod CIDR.
pub struct NodeHost {
    pub host: Host,
    pub name: String,
    pub pod_cidr: Ipv4Net,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalNetError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Underlay {
    pub fn create() -> Result<Self, LocalNetError> {
        let ns = Netns::create()?;
        ns.block_on(async {
            let nl = Netlink::open()?;
            nl.set_up("lo").await?;
            nl.add_bridge(BRIDGE).await?;
            nl.set_up(BRIDGE).await
        })??;
        Ok(Underlay { ns })
    }

    /// Plugs a new host namespace into the bridge at `ip`.
    pub fn host(&self, port: &str, ip: Ipv4Addr) -> Result<Host, LocalNetError> {
        let ns = Netns::create()?;
        self.ns.block_on(async {
            let nl = Netlink::open()?;
            nl.add_veth(port, &format!("{port}x"), Some(&ns), "eth0", None, false)
                .await?;
            nl.set_master(port, BRIDGE).await?;
            nl.set_up(port).await
        })??;
        ns.block_on(async {
            let nl = Netlink::open()?;
            nl.set_up("lo").await?;
            // A veth passes "checksum to be completed" packets on as they are; a
            // physical uplink completes them in hardware, so a node's XDP program sees
            // full checksums, updates them and may send the packet straight back out.
            // On a veth underlay that holds only if senders complete checksums.
            crate::ethtool::set_tx_checksum_offload("eth0", false)?;
            nl.set_up("eth0").await?;
            nl.add_address("eth0", ip, UNDERLAY_PREFIX).await
        })??;
        Ok(Host {
            ns,
            ip,
            uplink: "eth0".into(),
            port: port.to_string(),
        })
    }

    /// Node `i`: its host, pod CIDR, and the unreachable service CIDR.
    pub fn node(&self, i: u8) -> Result<NodeHost, LocalNetError> {
        let host = self.host(&format!("node{i}"), node_ip(i))?;
        host.ns.block_on(async {
            let nl = Netlink::open()?;
            nl.add_unreachable(SERVICE_CIDR.0, SERVICE_CIDR.1).await
        })??;
        Ok(NodeHost {
            host,
            name: format!("node-{i}"),
            pod_cidr: pod_cidr(i),
        })
    }

    /// An outside host `k` (a client that is not part of the cluster).
    pub fn outside(&self, k: u8) -> Result<Host, LocalNetError> {
        self.host(&format!("out{k}"), Ipv4Addr::new(198, 18, 0, 200 + k))
    }
}

/// Underlay address of node `i`.
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i)
}

/// Pod CIDR of node `i`.
pub fn pod_cidr(i: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 18, 1 + i, 0), 24).expect("valid /24")
}
