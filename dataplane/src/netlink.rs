//! The link, address and route operations the pod network needs, over rtnetlink, acting
//! on the network namespace of the thread that opened the `Netlink` (see `netns`).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
pub use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::Netns;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no link named {0}")]
    NoLink(String),
}

impl NetlinkError {
    /// The error of a request on a link given by index, told by the link's name.
    fn naming(self, name: &str) -> NetlinkError {
        match self {
            NetlinkError::Request { what, source } => NetlinkError::Request {
                what: format!("{what} ({name})"),
                source,
            },
            e => e,
        }
    }

    /// Whether the request failed because what it creates exists already.
    pub fn exists(&self) -> bool {
        matches!(self, NetlinkError::Request { source: rtnetlink::Error::NetlinkError(e), .. }
            if e.raw_code() == -libc::EEXIST)
    }
}

/// The loopback link's index, the same in every network namespace.
pub const LOOPBACK: u32 = 1;

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// A netlink connection in the calling thread's network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; must be called inside a tokio runtime.
    pub fn open() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The link `name`.
    async fn link(&self, name: &str) -> Result<LinkMessage, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(NetlinkError::NoLink(name.to_string())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                Err(NetlinkError::NoLink(name.to_string()))
            }
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    /// Index of the link `name`.
    pub async fn index(&self, name: &str) -> Result<u32, NetlinkError> {
        Ok(self.link(name).await?.header.index)
    }

    /// The hardware address of the link `name`.
    pub async fn mac(&self, name: &str) -> Result<Vec<u8>, NetlinkError> {
        Ok(self.index_and_mac(name).await?.1)
    }

    /// The index and hardware address of the link `name`, in one request.
    pub async fn index_and_mac(&self, name: &str) -> Result<(u32, Vec<u8>), NetlinkError> {
        let link = self.link(name).await?;
        let index = link.header.index;
        link.attributes
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => Some((index, mac)),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::NoLink(format!("{name} (no hardware address)")))
    }

    /// A permanent neighbour entry: `ip` is at `mac` on the link with index `index`.
    pub async fn add_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: &[u8],
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, ip.into())
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add neighbour {ip} on link {index}")))
    }

    /// Names of every link in the namespace.
    pub async fn links(&self) -> Result<Vec<String>, NetlinkError> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(req("list links"))? {
            out.extend(l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Whether the link `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool, NetlinkError> {
        match self.index(name).await {
            Ok(_) => Ok(true),
            Err(NetlinkError::NoLink(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        self.set_up_at(self.index(name).await?)
            .await
            .map_err(|e| e.naming(name))
    }

    /// Sets the link with index `index` up (`LOOPBACK` is every namespace's `lo`).
    pub async fn set_up_at(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("set link {index} up")))
    }

    /// Lets the link with index `index` accept packets whose source is one of this
    /// namespace's own addresses (`net.ipv4.conf.<link>.accept_local`), by netlink: no
    /// visit to the namespace, no other link touched.
    pub async fn set_accept_local(&self, index: u32) -> Result<(), NetlinkError> {
        let mut conf = InetDevConf::default();
        conf.accept_local = 1;
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req(format!("set accept_local on link {index}")))
    }

    /// Creates a veth pair. With `peer_ns` the peer is created in that namespace as
    /// `peer_name` (else here as `peer`); `peer_mac` gives it its hardware address. With
    /// `up` this end is up from the start (the kernel configures its flags as it creates
    /// it: no request afterwards); the peer cannot be: the kernel brings it up before the
    /// pair is joined, and refuses.
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: Option<&Netns>,
        peer_name: &str,
        peer_mac: Option<[u8; 6]>,
        up: bool,
    ) -> Result<(), NetlinkError> {
        // The peer is created in its namespace under its final name: moving a link between
        // namespaces afterwards waits for an RCU grace period (~15 ms here), creating it
        // there does not.
        let peer = if peer_ns.is_some() { peer_name } else { peer };
        let mut msg = if up {
            LinkVeth::new(name, peer).up().build()
        } else {
            LinkVeth::new(name, peer).build()
        };
        for attr in msg.attributes.iter_mut() {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos.iter_mut() {
                    if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) = info {
                        if let Some(ns) = peer_ns {
                            p.attributes
                                .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
                        }
                        if let Some(mac) = peer_mac {
                            p.attributes.push(LinkAttribute::Address(mac.to_vec()));
                        }
                    }
                }
            }
        }
        let whose = if peer_ns.is_some() {
            " (peer in its namespace)"
        } else {
            ""
        };
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(req(format!("add veth {name}/{peer}{whose}")))
    }

    pub async fn add_bridge(&self, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(req(format!("add bridge {name}")))
    }

    /// Enslaves `name` to `bridge`.
    pub async fn set_master(&self, name: &str, bridge: &str) -> Result<(), NetlinkError> {
        let (index, master) = (self.index(name).await?, self.index(bridge).await?);
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(master).build())
            .execute()
            .await
            .map_err(req(format!("attach {name} to {bridge}")))
    }

    /// Deletes a link (a veth's peer goes with it); a missing link is not an error.
    pub async fn del_link(&self, name: &str) -> Result<(), NetlinkError> {
        let index = match self.index(name).await {
            Ok(i) => i,
            Err(NetlinkError::NoLink(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.handle.link().del(index).execute().await {
            // Gone meanwhile (a veth goes with its peer's namespace): as good as deleted.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            r => r.map_err(req(format!("delete link {name}"))),
        }
    }

    pub async fn add_address(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.add_address_at(self.index(name).await?, addr, prefix)
            .await
            .map_err(|e| e.naming(name))
    }

    /// [`Netlink::add_address`] on the link with index `index`.
    pub async fn add_address_at(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, addr.into(), prefix)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add {addr}/{prefix} to link {index}")))
    }

    /// A route to `dst/prefix`: through `via` (a gateway) and/or out of `dev`.
    pub async fn add_route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        via: Option<Ipv4Addr>,
        dev: Option<&str>,
    ) -> Result<(), NetlinkError> {
        let index = match dev {
            Some(dev) => Some(self.index(dev).await?),
            None => None,
        };
        self.add_route_at(dst, prefix, via, index).await
    }

    /// [`Netlink::add_route`] out of the link with index `dev`.
    pub async fn add_route_at(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        via: Option<Ipv4Addr>,
        dev: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, prefix);
        if let Some(index) = dev {
            b = b.output_interface(index);
        }
        match via {
            Some(gw) => b = b.gateway(gw),
            None => b = b.scope(RouteScope::Link),
        }
        if via.is_some() && dev.is_some() {
            b = b.onlink();
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(req(format!("add route {dst}/{prefix}")))
    }

    /// An `unreachable` route: traffic to `dst/prefix` gets an ICMP error, never a path out.
    pub async fn add_unreachable(&self, dst: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .kind(RouteType::Unreachable)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add unreachable {dst}/{prefix}")))
    }

    /// Deletes the route to `dst/prefix`; a missing route is not an error.
    pub async fn del_route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        kind: RouteType,
    ) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .kind(kind)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(req(format!("delete route {dst}/{prefix}"))(e)),
        }
    }
}
