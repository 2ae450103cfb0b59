//! The service table: programs services and their backends into the BPF maps.
//!
//! The unit is one service port (`LbService`): its frontends (ClusterIP:port, and later
//! node address:NodePort) and its endpoints. `apply` diffs against what was programmed
//! before and writes only what changed. A changed backend set is written under a new
//! generation and published by one update of each frontend entry, so a program sees the
//! old set or the new one, never an empty or partial one (see maps.h). Terminating
//! endpoints keep their backend entry (existing flows finish) but get no slot (no new
//! flows), unless no ready endpoint is left: then serving terminating endpoints take the
//! slots, as kube-proxy does (KEP-1669). No usable endpoint at all programs a count of 0,
//! which the programs turn into a rejection.
//!
//! Backend and service ids are allocated round-robin and reused only after the whole id
//! space went by, so a stale flow or affinity entry never points at a recycled id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray};

use crate::maglev::{self, MaglevBackend};
use crate::maps::{
    self, AffinityKey, AffinityValue, BACKEND_F_TERMINATING, Backend, CtKey, CtValue, LocalPod,
    MAGLEV_SERVICES, MAGLEV_SIZE, MAX_BACKENDS, MAX_SERVICES, NodeConfig, Proto, SVC_F_AFFINITY,
    SVC_SCOPE_NODEPORT, SlotKey, SockFlowValue, SockRevnatKey, SvcKey, SvcStats, SvcValue,
};

/// One way a service port is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// `maps::SVC_SCOPE_*`.
    pub scope: u8,
}

/// One endpoint of a service port, with its EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A service port as the data plane programs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LbService {
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("BPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("all {0} {1} ids are in use")]
    Exhausted(u32, &'static str),
    #[error("service port {service}: frontends mix protocols {first:?} and {other:?}")]
    MixedProtocols {
        service: String,
        first: Proto,
        other: Proto,
    },
}

/// A removal's result with "no such key" as success (aya reports a missing key on removal
/// as the system call's ENOENT).
fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> LbError {
    move |source| LbError::Map { map, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BackendAddr {
    addr: Ipv4Addr,
    port: u16,
    proto: Proto,
}

#[derive(Debug)]
struct BackendState {
    id: u32,
    terminating: bool,
    users: u32,
}

#[derive(Debug)]
struct ServiceState {
    id: u32,
    generation: u16,
    value: SvcValue,
    frontends: BTreeSet<Frontend>,
    /// Backends in slot order.
    slots: Vec<BackendAddr>,
    /// Every backend this service references (slots and terminating ones).
    backends: BTreeSet<BackendAddr>,
    /// Index of its Maglev table pair, when it has a NodePort frontend.
    maglev: Option<u32>,
}

/// Round-robin id allocation over `0..limit`, skipping ids in use.
#[derive(Debug)]
struct Ids {
    next: u32,
    limit: u32,
    used: BTreeSet<u32>,
    what: &'static str,
}

impl Ids {
    fn new(first: u32, limit: u32, what: &'static str) -> Self {
        Ids {
            next: first,
            limit,
            used: BTreeSet::new(),
            what,
        }
    }

    fn take(&mut self) -> Result<u32, LbError> {
        if self.used.len() as u32 >= self.limit {
            return Err(LbError::Exhausted(self.limit, self.what));
        }
        loop {
            let id = self.next;
            self.next = (self.next + 1) % self.limit;
            if self.used.insert(id) {
                return Ok(id);
            }
        }
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// Counters of one service port, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}

/// The programmed services of one node's BPF maps.
pub struct LoadBalancer {
    services_map: BpfHashMap<MapData, SvcKey, SvcValue>,
    slots_map: BpfHashMap<MapData, SlotKey, u32>,
    backends_map: BpfHashMap<MapData, u32, Backend>,
    sock_flows: BpfHashMap<MapData, SockRevnatKey, SockFlowValue>,
    affinity: BpfHashMap<MapData, AffinityKey, AffinityValue>,
    stats: PerCpuArray<MapData, SvcStats>,
    ct: BpfHashMap<MapData, CtKey, CtValue>,
    maglev_map: Array<MapData, u32>,
    node: Array<MapData, NodeConfig>,
    local_pods: BpfHashMap<MapData, u32, LocalPod>,
    services: HashMap<String, ServiceState>,
    backends: BTreeMap<BackendAddr, BackendState>,
    service_ids: Ids,
    backend_ids: Ids,
    maglev_ids: Ids,
    /// Backends removed by the change being applied, whose flows are still to purge.
    gone: BTreeSet<u32>,
    /// Map writes done so far (for tests and benchmarks: "only what changed").
    pub writes: u64,
}

impl LoadBalancer {
    /// Takes the service maps out of a loaded BPF object.
    pub fn new(mut take: impl FnMut(&'static str) -> Option<Map>) -> Result<Self, LbError> {
        let mut get = |name: &'static str| take(name).ok_or(LbError::MissingMap(name));
        Ok(LoadBalancer {
            services_map: BpfHashMap::try_from(get(maps::SERVICES)?)
                .map_err(map_err(maps::SERVICES))?,
            slots_map: BpfHashMap::try_from(get(maps::SLOTS)?).map_err(map_err(maps::SLOTS))?,
            backends_map: BpfHashMap::try_from(get(maps::BACKENDS)?)
                .map_err(map_err(maps::BACKENDS))?,
            sock_flows: BpfHashMap::try_from(get(maps::SOCK_FLOWS)?)
                .map_err(map_err(maps::SOCK_FLOWS))?,
            affinity: BpfHashMap::try_from(get(maps::AFFINITY)?)
                .map_err(map_err(maps::AFFINITY))?,
            stats: PerCpuArray::try_from(get(maps::SVC_STATS)?)
                .map_err(map_err(maps::SVC_STATS))?,
            ct: BpfHashMap::try_from(get(maps::CT)?).map_err(map_err(maps::CT))?,
            maglev_map: Array::try_from(get(maps::MAGLEV)?).map_err(map_err(maps::MAGLEV))?,
            node: Array::try_from(get(maps::NODE)?).map_err(map_err(maps::NODE))?,
            local_pods: BpfHashMap::try_from(get(maps::LOCAL_PODS)?)
                .map_err(map_err(maps::LOCAL_PODS))?,
            services: HashMap::new(),
            backends: BTreeMap::new(),
            // Service id 0 is never used, so a zeroed value is never a live service.
            service_ids: Ids::new(1, MAX_SERVICES, "service"),
            backend_ids: Ids::new(1, MAX_BACKENDS, "backend"),
            maglev_ids: Ids::new(0, MAGLEV_SERVICES, "Maglev table"),
            gone: BTreeSet::new(),
            writes: 0,
        })
    }

    /// Programs `name` (one service port) as `svc` says, writing only what changed.
    pub fn apply(&mut self, name: &str, svc: &LbService) -> Result<(), LbError> {
        let proto = svc.frontends.first().map(|f| f.proto).unwrap_or(Proto::Tcp);
        if let Some(f) = svc.frontends.iter().find(|f| f.proto != proto) {
            return Err(LbError::MixedProtocols {
                service: name.to_string(),
                first: proto,
                other: f.proto,
            });
        }
        if svc.frontends.is_empty() {
            return self.remove(name);
        }

        // Desired backends and slots.
        let mut wanted: BTreeMap<BackendAddr, bool> = BTreeMap::new();
        for e in &svc.endpoints {
            if !(e.ready || e.serving) {
                continue;
            }
            let addr = BackendAddr {
                addr: e.addr,
                port: e.port,
                proto,
            };
            let terminating = e.terminating || !e.ready;
            let t = wanted.entry(addr).or_insert(terminating);
            *t &= terminating;
        }
        let mut slots: Vec<BackendAddr> = wanted
            .iter()
            .filter(|(_, t)| !**t)
            .map(|(a, _)| *a)
            .collect();
        if slots.is_empty() {
            // No ready endpoint: serving-but-terminating ones take new flows (KEP-1669).
            slots = wanted.keys().copied().collect();
        }
        let slots = &slots[..slots.len().min(u16::MAX as usize)];

        // Backend entries first, so slots never name a missing backend.
        for (addr, terminating) in &wanted {
            self.hold_backend(*addr, *terminating)?;
        }

        let flags = if svc.affinity_timeout.is_some() {
            SVC_F_AFFINITY
        } else {
            0
        };
        let (id, old_generation, old_slots, old_frontends, old_backends, old_value, old_maglev) =
            match self.services.remove(name) {
                Some(s) => (
                    s.id,
                    Some(s.generation),
                    s.slots,
                    s.frontends,
                    s.backends,
                    Some(s.value),
                    s.maglev,
                ),
                None => (
                    self.service_ids.take()?,
                    None,
                    Vec::new(),
                    BTreeSet::new(),
                    BTreeSet::new(),
                    None,
                    None,
                ),
            };

        let slots_changed = old_generation.is_none() || old_slots.as_slice() != slots;
        let generation = match old_generation {
            Some(g) if slots_changed => g.wrapping_add(1),
            Some(g) => g,
            None => 0,
        };
        // A NodePort frontend needs a Maglev table, written for the generation it will be
        // read under (a new generation's table goes to the half not in use).
        let nodeport = svc.frontends.iter().any(|f| f.scope == SVC_SCOPE_NODEPORT);
        let maglev = match (nodeport, old_maglev) {
            (true, Some(m)) => Some(m),
            (true, None) => Some(self.maglev_ids.take()?),
            (false, old) => {
                if let Some(m) = old {
                    self.maglev_ids.release(m);
                }
                None
            }
        };
        if let Some(m) = maglev
            && (slots_changed || old_maglev.is_none())
        {
            self.write_maglev(m, generation, slots)?;
        }
        if slots_changed {
            for (i, b) in slots.iter().enumerate() {
                let backend_id = self.backends[b].id;
                let key = SlotKey {
                    svc_id: id,
                    generation,
                    slot: i as u16,
                };
                self.slots_map
                    .insert(key, backend_id, 0)
                    .map_err(map_err(maps::SLOTS))?;
                self.writes += 1;
            }
        }
        let value = SvcValue {
            id,
            count: slots.len() as u16,
            generation,
            flags,
            affinity_timeout: svc.affinity_timeout.unwrap_or(0),
            maglev: maglev.map_or(0, |m| m + 1),
        };
        let frontends: BTreeSet<Frontend> = svc.frontends.iter().copied().collect();
        for f in &frontends {
            if old_value == Some(value) && old_frontends.contains(f) {
                continue;
            }
            self.services_map
                .insert(SvcKey::new(f.addr, f.port, f.proto, f.scope), value, 0)
                .map_err(map_err(maps::SERVICES))?;
            self.writes += 1;
        }
        for f in old_frontends.difference(&frontends) {
            self.remove_key(SvcKey::new(f.addr, f.port, f.proto, f.scope))?;
        }
        if slots_changed && let Some(old) = old_generation {
            self.remove_slots(id, old, old_slots.len())?;
        }
        if old_value
            .is_some_and(|v| v.flags != flags || v.affinity_timeout != value.affinity_timeout)
        {
            self.purge_affinity(id)?;
        }

        let backends: BTreeSet<BackendAddr> = wanted.keys().copied().collect();
        for gone in old_backends.difference(&backends) {
            self.release_backend(*gone)?;
        }
        // hold_backend counted every wanted backend once more; drop the old holds.
        for kept in old_backends.intersection(&backends) {
            if let Some(b) = self.backends.get_mut(kept) {
                b.users -= 1;
            }
        }
        self.services.insert(
            name.to_string(),
            ServiceState {
                id,
                generation,
                value,
                frontends,
                slots: slots.to_vec(),
                backends,
                maglev,
            },
        );
        self.purge_gone();
        Ok(())
    }

    /// Sets this node's address and pod CIDR (NodePort destination, SNAT source, and what
    /// counts as a local backend).
    pub fn set_node(&mut self, node: NodeConfig) -> Result<(), LbError> {
        self.node.set(0, node, 0).map_err(map_err(maps::NODE))
    }

    /// Registers a pod of this node: NodePort traffic for `ip` goes straight into its
    /// veth (see `LocalPod`).
    pub fn add_local_pod(&mut self, ip: Ipv4Addr, pod: LocalPod) -> Result<(), LbError> {
        self.writes += 1;
        self.local_pods
            .insert(u32::from(ip).to_be(), pod, 0)
            .map_err(map_err(maps::LOCAL_PODS))
    }

    /// Forgets a pod of this node (its veth is gone or going); unknown addresses are fine.
    pub fn remove_local_pod(&mut self, ip: Ipv4Addr) -> Result<(), LbError> {
        absent_ok(self.local_pods.remove(&u32::from(ip).to_be())).map_err(map_err(maps::LOCAL_PODS))
    }

    fn write_maglev(
        &mut self,
        index: u32,
        generation: u16,
        slots: &[BackendAddr],
    ) -> Result<(), LbError> {
        let backends: Vec<MaglevBackend> = slots
            .iter()
            .map(|b| MaglevBackend {
                addr: b.addr,
                port: b.port,
            })
            .collect();
        let table = maglev::table(&backends, MAGLEV_SIZE);
        let base = (2 * index + u32::from(generation & 1)) * MAGLEV_SIZE;
        for (i, &owner) in table.iter().enumerate() {
            let id = self.backends[&slots[owner as usize]].id;
            self.maglev_map
                .set(base + i as u32, id, 0)
                .map_err(map_err(maps::MAGLEV))?;
        }
        Ok(())
    }

    /// Removes every entry of `name`; a no-op for an unknown name.
    pub fn remove(&mut self, name: &str) -> Result<(), LbError> {
        let Some(s) = self.services.remove(name) else {
            return Ok(());
        };
        for f in &s.frontends {
            self.remove_key(SvcKey::new(f.addr, f.port, f.proto, f.scope))?;
        }
        self.remove_slots(s.id, s.generation, s.slots.len())?;
        for b in &s.backends {
            self.release_backend(*b)?;
        }
        self.purge_affinity(s.id)?;
        if let Some(m) = s.maglev {
            self.maglev_ids.release(m);
        }
        // Counters start from zero for whoever gets the id next.
        let zero = aya::maps::PerCpuValues::try_from(vec![SvcStats::default(); num_cpus()])
            .map_err(|e| map_err(maps::SVC_STATS)(MapError::from(e)))?;
        self.stats
            .set(s.id, zero, 0)
            .map_err(map_err(maps::SVC_STATS))?;
        self.service_ids.release(s.id);
        self.purge_gone();
        Ok(())
    }

    /// Names of the programmed service ports.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// The counters of a programmed service port.
    pub fn counters(&self, name: &str) -> Result<Option<ServiceCounters>, LbError> {
        let Some(s) = self.services.get(name) else {
            return Ok(None);
        };
        let per_cpu = self.stats.get(&s.id, 0).map_err(map_err(maps::SVC_STATS))?;
        Ok(Some(per_cpu.iter().fold(
            ServiceCounters::default(),
            |acc, c| ServiceCounters {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
                connections: acc.connections + c.connections,
            },
        )))
    }

    /// Every frontend in the kernel's maps with its service port's counters (summed over
    /// CPUs), sorted: what `skiff dataplane stats` shows.
    pub fn frontend_counters(
        &self,
    ) -> Result<Vec<(Frontend, ServiceCounters)>, crate::stats::StatsError> {
        crate::stats::frontends(&self.services_map, &self.stats)
    }

    /// What the kernel's maps say: each frontend and the backends in its current slots
    /// (sorted). Read back from the maps, not from this struct's bookkeeping.
    #[allow(clippy::type_complexity)]
    pub fn dump(&self) -> Result<BTreeMap<Frontend, Vec<(Ipv4Addr, u16)>>, LbError> {
        let mut out = BTreeMap::new();
        for entry in self.services_map.iter() {
            let (k, v) = entry.map_err(map_err(maps::SERVICES))?;
            let proto = match k.proto {
                6 => Proto::Tcp,
                _ => Proto::Udp,
            };
            let frontend = Frontend {
                addr: Ipv4Addr::from(u32::from_be(k.addr)),
                port: u16::from_be(k.port),
                proto,
                scope: k.scope,
            };
            let mut backends = Vec::new();
            for slot in 0..v.count {
                let key = SlotKey {
                    svc_id: v.id,
                    generation: v.generation,
                    slot,
                };
                let id = self.slots_map.get(&key, 0).map_err(map_err(maps::SLOTS))?;
                let b = self
                    .backends_map
                    .get(&id, 0)
                    .map_err(map_err(maps::BACKENDS))?;
                backends.push((b.ip(), u16::from_be(b.port)));
            }
            backends.sort();
            out.insert(frontend, backends);
        }
        Ok(out)
    }

    /// How many entries the service, slot and backend maps hold (read from the kernel).
    pub fn entries(&self) -> Result<(usize, usize, usize), LbError> {
        Ok((
            self.services_map.keys().count(),
            self.slots_map.keys().count(),
            self.backends_map.keys().count(),
        ))
    }

    fn remove_key(&mut self, key: SvcKey) -> Result<(), LbError> {
        self.writes += 1;
        absent_ok(self.services_map.remove(&key)).map_err(map_err(maps::SERVICES))
    }

    fn remove_slots(&mut self, svc_id: u32, generation: u16, count: usize) -> Result<(), LbError> {
        for slot in 0..count {
            let key = SlotKey {
                svc_id,
                generation,
                slot: slot as u16,
            };
            self.writes += 1;
            absent_ok(self.slots_map.remove(&key)).map_err(map_err(maps::SLOTS))?;
        }
        Ok(())
    }

    /// Adds one user to a backend, creating or updating its map entry as needed.
    fn hold_backend(&mut self, addr: BackendAddr, terminating: bool) -> Result<(), LbError> {
        let flags = if terminating {
            BACKEND_F_TERMINATING
        } else {
            0
        };
        let (id, write) = match self.backends.get_mut(&addr) {
            Some(b) => {
                b.users += 1;
                // Terminating wins only when every user sees it terminating; a backend
                // shared by services is terminating for all of them at once anyway.
                let write = b.terminating != terminating;
                b.terminating = terminating;
                (b.id, write)
            }
            None => {
                let id = self.backend_ids.take()?;
                self.backends.insert(
                    addr,
                    BackendState {
                        id,
                        terminating,
                        users: 1,
                    },
                );
                (id, true)
            }
        };
        if write {
            self.backends_map
                .insert(id, Backend::new(addr.addr, addr.port, addr.proto, flags), 0)
                .map_err(map_err(maps::BACKENDS))?;
            self.writes += 1;
        }
        Ok(())
    }

    /// Drops one user of a backend; the last one removes it and the socket flows using it.
    fn release_backend(&mut self, addr: BackendAddr) -> Result<(), LbError> {
        let Some(b) = self.backends.get_mut(&addr) else {
            return Ok(());
        };
        b.users -= 1;
        if b.users > 0 {
            return Ok(());
        }
        let id = b.id;
        self.backends.remove(&addr);
        self.writes += 1;
        absent_ok(self.backends_map.remove(&id)).map_err(map_err(maps::BACKENDS))?;
        self.gone.insert(id);
        Ok(())
    }

    /// Removes the socket flows and conntrack entries of the backends removed by the last
    /// change (one pass over each map however many went), then frees their ids: their flows
    /// are chosen again.
    fn purge_gone(&mut self) {
        if self.gone.is_empty() {
            return;
        }
        let gone = std::mem::take(&mut self.gone);
        remove_where(&mut self.sock_flows, |v| gone.contains(&v.backend_id));
        remove_where(&mut self.ct, |v| gone.contains(&v.backend_id));
        for id in gone {
            self.backend_ids.release(id);
        }
    }

    fn purge_affinity(&mut self, svc_id: u32) -> Result<(), LbError> {
        let stale: Vec<AffinityKey> = self
            .affinity
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.svc_id == svc_id)
            .collect();
        for k in stale {
            let _ = self.affinity.remove(&k);
        }
        Ok(())
    }
}

/// Deletes every entry of `map` whose value matches (one pass; entries that vanish
/// meanwhile, as LRU ones do, are fine).
fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    matches: impl Fn(&V) -> bool,
) {
    let stale: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| matches(v))
        .map(|(k, _)| k)
        .collect();
    for k in stale {
        let _ = map.remove(&k);
    }
}

fn num_cpus() -> usize {
    aya::util::nr_cpus().map(|n| n.max(1)).unwrap_or(1)
}
