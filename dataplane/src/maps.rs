//! Rust mirrors of the map keys and values in `ebpf-programs/include/maps.h`.
//!
//! Addresses and ports are stored in network byte order, as in C; the constructors take
//! host values and convert, so callers never think about byte order. The test at the end
//! checks every struct's size and field offsets against the BTF of the compiled object.

use std::net::Ipv4Addr;

/// Names of the maps in the BPF object.
pub const SERVICES: &str = "skiff_services";
pub const SLOTS: &str = "skiff_slots";
pub const BACKENDS: &str = "skiff_backends";
pub const SOCK_REVNAT: &str = "skiff_sock_revnat";
pub const SOCK_FLOWS: &str = "skiff_sock_flows";
pub const AFFINITY: &str = "skiff_affinity";
pub const SVC_STATS: &str = "skiff_svc_stats";
pub const CT: &str = "skiff_ct";
pub const FRAGS: &str = "skiff_frags";
pub const MAGLEV: &str = "skiff_maglev";
pub const NODE: &str = "skiff_node";
pub const LOCAL_PODS: &str = "skiff_local_pods";

/// Maglev table size compiled into the programs (`SKIFF_MAGLEV_SIZE`).
pub const MAGLEV_SIZE: u32 = 16381;
/// Services that can have Maglev tables (`SKIFF_MAGLEV_SERVICES`).
pub const MAGLEV_SERVICES: u32 = 64;

/// Largest service id + 1 (size of the counters array).
pub const MAX_SERVICES: u32 = 65536;
/// Most backends (and backend ids).
pub const MAX_BACKENDS: u32 = 65536;

pub const SVC_SCOPE_CLUSTER: u8 = 0;
pub const SVC_SCOPE_NODEPORT: u8 = 1;
pub const SVC_F_AFFINITY: u32 = 0x1;
pub const BACKEND_F_TERMINATING: u8 = 0x1;
pub const CT_DIR_FORWARD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// IP protocol numbers as the kernel uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: a #[repr(C)] struct of plain integers with explicit padding fields: every
        // bit pattern is valid and there are no implicit padding bytes.
        unsafe impl aya::Pod for $t {}
    )*};
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SvcKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

impl SvcKey {
    pub fn new(addr: Ipv4Addr, port: u16, proto: Proto, scope: u8) -> Self {
        SvcKey {
            addr: u32::from(addr).to_be(),
            port: port.to_be(),
            proto: proto as u8,
            scope,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcValue {
    pub id: u32,
    pub count: u16,
    pub generation: u16,
    pub flags: u32,
    pub affinity_timeout: u32,
    /// 1 + index of the service's Maglev table pair; 0 = none.
    pub maglev: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SlotKey {
    pub svc_id: u32,
    pub generation: u16,
    pub slot: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

impl Backend {
    pub fn new(addr: Ipv4Addr, port: u16, proto: Proto, flags: u8) -> Self {
        Backend {
            addr: u32::from(addr).to_be(),
            port: port.to_be(),
            proto: proto as u8,
            flags,
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.addr))
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SockRevnatKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockRevnatValue {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockFlowValue {
    pub backend_id: u32,
    pub svc_id: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub client: u64,
    pub svc_id: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcStats {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtValue {
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub svc_id: u32,
    pub addr: u32,
    pub addr2: u32,
    pub port: u16,
    pub port2: u16,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FragValue {
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeConfig {
    pub addr: u32,
    pub pod_cidr: u32,
    pub pod_cidr_mask: u32,
    pub flags: u32,
}

impl NodeConfig {
    /// This node's address and pod CIDR (`prefix` bits).
    pub fn new(addr: Ipv4Addr, pod_cidr: Ipv4Addr, prefix: u8) -> Self {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        NodeConfig {
            addr: u32::from(addr).to_be(),
            pod_cidr: (u32::from(pod_cidr) & mask).to_be(),
            pod_cidr_mask: mask.to_be(),
            flags: 0,
        }
    }
}

/// A pod on this node, by address (`skiff_local_pods`): where XDP hands its traffic.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalPod {
    /// The host side of the pod's veth.
    pub ifindex: u32,
    /// The pod's `eth0`.
    pub mac: [u8; 6],
    /// The host side of its veth.
    pub host_mac: [u8; 6],
}

pod!(
    LocalPod,
    CtKey,
    CtValue,
    FragKey,
    FragValue,
    NodeConfig,
    SvcKey,
    SvcValue,
    SlotKey,
    Backend,
    SockRevnatKey,
    SockRevnatValue,
    SockFlowValue,
    AffinityKey,
    AffinityValue,
    SvcStats
);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    use super::*;

    /// (size, field -> byte offset) of every struct in the object's BTF, via bpftool.
    fn c_layouts() -> HashMap<String, (usize, HashMap<String, usize>)> {
        let out = Command::new("bpftool")
            .args([
                "btf",
                "dump",
                "file",
                env!("SKIFF_BPF_OBJECT"),
                "format",
                "raw",
            ])
            .output()
            .expect("bpftool runs (cargo xtask setup installs it)");
        assert!(out.status.success(), "bpftool: {out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut layouts = HashMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.split_once("] STRUCT '").map(|(_, r)| r) {
                let (name, tail) = rest.split_once('\'').expect("quoted name");
                let size = tail
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("size="))
                    .and_then(|s| s.parse().ok())
                    .expect("size");
                layouts.insert(name.to_string(), (size, HashMap::new()));
                current = Some(name.to_string());
            } else if line.starts_with('\t') {
                if let Some(name) = &current {
                    let field = line.trim().split('\'').nth(1).expect("field name");
                    let bits: usize = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("bits_offset="))
                        .and_then(|s| s.parse().ok())
                        .expect("offset");
                    layouts
                        .get_mut(name)
                        .expect("struct seen")
                        .1
                        .insert(field.to_string(), bits / 8);
                }
            } else {
                current = None;
            }
        }
        layouts
    }

    macro_rules! check {
        ($layouts:expr, $t:ty, $c:literal, [$($f:ident),*]) => {{
            let (size, fields) = $layouts.get($c).unwrap_or_else(|| panic!("struct {} in BTF", $c));
            assert_eq!(size_of::<$t>(), *size, "size of {}", $c);
            let mut n = 0;
            $(
                assert_eq!(
                    Some(&offset_of!($t, $f)),
                    fields.get(stringify!($f)),
                    "offset of {}.{}", $c, stringify!($f)
                );
                n += 1;
            )*
            assert_eq!(n, fields.len(), "every field of {} mirrored", $c);
        }};
    }

    #[test]
    fn structs_match_the_c_side() {
        let l = c_layouts();
        check!(l, SvcKey, "svc_key", [addr, port, proto, scope]);
        check!(
            l,
            SvcValue,
            "svc_value",
            [id, count, generation, flags, affinity_timeout, maglev]
        );
        check!(
            l,
            CtKey,
            "ct_key",
            [saddr, daddr, sport, dport, proto, dir, pad]
        );
        check!(
            l,
            CtValue,
            "ct_value",
            [
                last_seen_ns,
                backend_id,
                svc_id,
                addr,
                addr2,
                port,
                port2,
                pad
            ]
        );
        check!(l, FragKey, "frag_key", [saddr, daddr, id, proto, pad]);
        check!(l, FragValue, "frag_value", [saddr, daddr]);
        check!(
            l,
            NodeConfig,
            "node_config",
            [addr, pod_cidr, pod_cidr_mask, flags]
        );
        check!(l, SlotKey, "slot_key", [svc_id, generation, slot]);
        check!(l, Backend, "backend", [addr, port, proto, flags]);
        check!(
            l,
            SockRevnatKey,
            "sock_revnat_key",
            [cookie, addr, port, pad]
        );
        check!(l, SockRevnatValue, "sock_revnat_value", [addr, port, pad]);
        check!(l, SockFlowValue, "sock_flow_value", [backend_id, svc_id]);
        check!(l, AffinityKey, "affinity_key", [client, svc_id, pad]);
        check!(
            l,
            AffinityValue,
            "affinity_value",
            [last_used_ns, backend_id, pad]
        );
        check!(l, SvcStats, "svc_stats", [packets, bytes, connections]);
        check!(l, LocalPod, "local_pod", [ifindex, mac, host_mac]);
    }

    #[test]
    fn constructors_store_network_order() {
        let k = SvcKey::new(Ipv4Addr::new(198, 19, 0, 10), 80, Proto::Tcp, 0);
        assert_eq!(k.addr.to_ne_bytes(), [198, 19, 0, 10]);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        let b = Backend::new(Ipv4Addr::new(198, 18, 1, 2), 8080, Proto::Udp, 0);
        assert_eq!(b.ip(), Ipv4Addr::new(198, 18, 1, 2));
    }
}
