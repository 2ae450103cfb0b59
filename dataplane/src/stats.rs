//! Per-service counters: read from a data plane's own maps (the node agent serves them
//! through the API server), or, for the standalone `skiff dataplane`, from other processes:
//! it pins its service and counter maps in a bpffs of its own (`/run/skiff/bpf/<node>`),
//! and `skiff dataplane stats` reads them from there. The bpffs is mounted by the data
//! plane and unmounted when it stops, which releases the pins: nothing outlives the
//! process.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray};

use crate::lb::{Frontend, ServiceCounters};
use crate::maps::{self, Proto, SvcKey, SvcStats, SvcValue};

/// Where a node's data plane pins its maps.
pub fn pin_dir(node: &str) -> PathBuf {
    Path::new("/run/skiff/bpf").join(node)
}

/// The maps pinned for readers.
pub const PINNED: [&str; 2] = [maps::SERVICES, maps::SVC_STATS];

/// A bpffs mounted for one data plane; unmounted (releasing its pins) on drop.
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    pub fn mount(path: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let target = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: NUL-terminated strings that outlive the call; no mount data.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(BpfFs {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path we mounted.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("no data plane is running for this node ({path}: {source})")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("reading {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Every programmed frontend of the node whose maps are pinned in `dir`, with its
/// service's counters (summed over CPUs).
pub fn read(dir: &Path) -> Result<Vec<(Frontend, ServiceCounters)>, StatsError> {
    let open = |name: &'static str| {
        let path = dir.join(name);
        MapData::from_pin(&path).map_err(|source| StatsError::NotRunning { path, source })
    };
    let services: BpfHashMap<MapData, SvcKey, SvcValue> =
        BpfHashMap::try_from(Map::HashMap(open(maps::SERVICES)?)).map_err(|source| {
            StatsError::Map {
                map: maps::SERVICES,
                source,
            }
        })?;
    let stats: PerCpuArray<MapData, SvcStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(maps::SVC_STATS)?)).map_err(|source| {
            StatsError::Map {
                map: maps::SVC_STATS,
                source,
            }
        })?;
    frontends(&services, &stats)
}

/// Every frontend in a services map, with its service's counters from the counters map
/// (summed over CPUs), sorted.
pub fn frontends(
    services: &BpfHashMap<MapData, SvcKey, SvcValue>,
    stats: &PerCpuArray<MapData, SvcStats>,
) -> Result<Vec<(Frontend, ServiceCounters)>, StatsError> {
    let mut out = Vec::new();
    for entry in services.iter() {
        let (k, v) = entry.map_err(|source| StatsError::Map {
            map: maps::SERVICES,
            source,
        })?;
        let per_cpu = stats.get(&v.id, 0).map_err(|source| StatsError::Map {
            map: maps::SVC_STATS,
            source,
        })?;
        let c = per_cpu
            .iter()
            .fold(ServiceCounters::default(), |a, c| ServiceCounters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                connections: a.connections + c.connections,
            });
        let frontend = Frontend {
            addr: Ipv4Addr::from(u32::from_be(k.addr)),
            port: u16::from_be(k.port),
            proto: if k.proto == 6 { Proto::Tcp } else { Proto::Udp },
            scope: k.scope,
        };
        out.push((frontend, c));
    }
    out.sort_by_key(|(f, _)| *f);
    Ok(out)
}

/// A frontend and its counters as the node API carries them.
pub fn to_proto(
    f: &Frontend,
    c: &ServiceCounters,
) -> skiff_client::skiff_api::proto::FrontendCounters {
    skiff_client::skiff_api::proto::FrontendCounters {
        address: f.addr.to_string(),
        port: f.port.into(),
        protocol: match f.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
        .into(),
        node_port: f.scope == maps::SVC_SCOPE_NODEPORT,
        packets: c.packets,
        bytes: c.bytes,
        connections: c.connections,
    }
}
