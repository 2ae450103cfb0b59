//! Skiff's data plane: kube-proxy replaced by eBPF.
//!
//! The C programs in `ebpf-programs/` are compiled into one BPF object by the build
//! (`build.rs`, clang-19) and embedded here. One `DataPlane` per node loads that object
//! (so all its programs share one set of maps), attaches the socket-level load balancer to
//! the node's cgroup2 subtree, and hands the maps to a `LoadBalancer` that programs
//! services. `sync` feeds it from the API server (Services and EndpointSlices through
//! informers). `maps` mirrors the C structs; `maglev` builds the consistent-hash tables.

pub mod cgroup2;
pub mod ethtool;
pub mod hash;
pub mod ipam;
pub mod lb;
pub mod loader;
pub mod localnet;
pub mod maglev;
pub mod maps;
pub mod netlink;
pub mod netns;
pub mod podnet;
pub mod stats;
pub mod sync;

pub use lb::{Endpoint, Frontend, LbError, LbService, LoadBalancer, ServiceCounters};
pub use loader::{DataPlane, DataPlaneError, PacketVerdict, TcLink, XdpAttach};
pub use maps::Proto;
pub use sync::ServiceSync;
