//! Loads the BPF object and attaches its programs.
//!
//! Programs stay attached while the `DataPlane` lives: aya detaches every link when the
//! program is dropped, so dropping the `DataPlane` (also on a panic) leaves nothing behind.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::tc::{self, TcAttachType};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp,
    XdpMode,
};
use aya::{Ebpf, EbpfError};

use crate::lb::{LbError, LoadBalancer};

/// The compiled object (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_BPF_OBJECT"));

/// The socket-level load balancer's programs, attached together to a cgroup.
const SOCK_PROGRAMS: [&str; 4] = [
    "skiff_connect4",
    "skiff_sendmsg4",
    "skiff_recvmsg4",
    "skiff_getpeername4",
];

/// XDP on the node's uplink (north-south).
const XDP_NODEPORT: &str = "skiff_xdp_nodeport";
/// XDP_PASS, for the far end of a veth whose near end transmits with XDP.
const XDP_PASS: &str = "skiff_xdp_pass";
/// TC on the host side of pod veths.
const TC_POD: &str = "skiff_tc_pod";

/// Where on the uplink's receive path the NodePort program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpAttach {
    /// In the driver, before any socket buffer exists: the mode for physical NICs.
    #[default]
    Native,
    /// On the socket buffer (generic XDP). On a veth uplink this is the cheaper one: the
    /// native path copies every frame out of its socket buffer first (measured: 356k vs
    /// 294k packets/s through a NodePort, `cargo xtask bench nodeport`).
    Generic,
}

impl From<XdpAttach> for XdpMode {
    fn from(m: XdpAttach) -> Self {
        match m {
            XdpAttach::Native => XdpMode::Driver,
            XdpAttach::Generic => XdpMode::Skb,
        }
    }
}

/// What a program did with a packet run through it (`run_xdp`, `run_tc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketVerdict {
    /// The program's return value (XDP_PASS = 2, XDP_TX = 3, ...; TC_ACT_OK = 0, ...).
    pub action: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("loading the BPF object: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("BPF object has no program or map {0}")]
    MissingProgram(&'static str),
    #[error("pinning map {name}: {message}")]
    Pin { name: &'static str, message: String },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{interface}: setting accept_local: {source}")]
    Sysctl {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lb(#[from] LbError),
}

/// A pod program's attachment (see `DataPlane::attach_tc`).
pub type TcLink = aya::programs::tc::SchedClassifierLinkId;

/// One node's BPF programs and maps.
pub struct DataPlane {
    ebpf: Ebpf,
    cgroup: Option<PathBuf>,
}

impl DataPlane {
    /// Loads the object: creates this node's maps and loads (verifies) every program.
    pub fn load() -> Result<Self, DataPlaneError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| DataPlaneError::Load(Box::new(e)))?;
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(DataPlaneError::MissingProgram(name))?
                .try_into()
                .map_err(|e| program_err(name, e))?;
            program.load().map_err(|e| program_err(name, e))?;
        }
        for name in [XDP_NODEPORT, XDP_PASS] {
            let xdp: &mut Xdp = program(&mut ebpf, name)?;
            xdp.load().map_err(|e| program_err(name, e))?;
        }
        let tc: &mut SchedClassifier = program(&mut ebpf, TC_POD)?;
        tc.load().map_err(|e| program_err(TC_POD, e))?;
        Ok(DataPlane { ebpf, cgroup: None })
    }

    /// Attaches the NodePort program to the node's uplink. The interface is looked up in
    /// the calling thread's network namespace.
    pub fn attach_xdp(&mut self, interface: &str, mode: XdpAttach) -> Result<(), DataPlaneError> {
        // Packets the program translates but hands to the stack (no neighbour entry yet
        // for XDP_TX) carry this node's address as their source: accept them rather than
        // drop them as martians, so the stack forwards them (and resolves the neighbour).
        crate::netns::sysctl(&format!("net/ipv4/conf/{interface}/accept_local"), "1").map_err(
            |source| DataPlaneError::Sysctl {
                interface: interface.to_string(),
                source,
            },
        )?;
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_NODEPORT)?;
        xdp.attach(interface, mode.into())
            .map_err(|e| program_err(XDP_NODEPORT, e))?;
        Ok(())
    }

    /// Attaches an XDP_PASS program to the far end of the uplink's veth (in the calling
    /// thread's namespace): a veth hands frames sent with XDP_TX only to a peer running XDP.
    pub fn attach_xdp_pass(&mut self, interface: &str) -> Result<(), DataPlaneError> {
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_PASS)?;
        xdp.attach(interface, XdpMode::Driver)
            .map_err(|e| program_err(XDP_PASS, e))?;
        Ok(())
    }

    /// Attaches the pod program to the ingress of a pod veth's host side (packets leaving
    /// the pod). The interface is looked up in the calling thread's network namespace.
    pub fn attach_tc(&mut self, interface: &str) -> Result<TcLink, DataPlaneError> {
        // Kernels before 6.6 need a clsact qdisc; with TCX (aya's default since) this
        // reports that it already exists or is not needed.
        let _ = tc::qdisc_add_clsact(interface);
        let tc: &mut SchedClassifier = program(&mut self.ebpf, TC_POD)?;
        // A cls_bpf filter on the clsact qdisc rather than a TCX link: a TCX attach waits
        // for an RCU grace period under the RTNL lock, which serialized pod starts on a
        // node (~20 ms each, ~1.5 s for 50 pods at once); the filter goes with its veth.
        tc.attach_with_options(
            interface,
            TcAttachType::Ingress,
            tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
        )
        .map_err(|e| program_err(TC_POD, e))
    }

    /// Detaches a pod program attached by `attach_tc` (its interface may be gone already).
    pub fn detach_tc(&mut self, link: TcLink) -> Result<(), DataPlaneError> {
        let tc: &mut SchedClassifier = program(&mut self.ebpf, TC_POD)?;
        tc.detach(link).map_err(|e| program_err(TC_POD, e))
    }

    /// Runs the NodePort program on one packet (BPF_PROG_TEST_RUN), against this node's
    /// maps. For tests and for `skiff dataplane` diagnostics.
    pub fn run_xdp(&mut self, packet: &[u8]) -> Result<PacketVerdict, DataPlaneError> {
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_NODEPORT)?;
        run(xdp, XDP_NODEPORT, packet)
    }

    /// Runs the pod program on one packet (BPF_PROG_TEST_RUN).
    pub fn run_tc(&mut self, packet: &[u8]) -> Result<PacketVerdict, DataPlaneError> {
        let tc: &mut SchedClassifier = program(&mut self.ebpf, TC_POD)?;
        run(tc, TC_POD, packet)
    }

    /// Attaches the socket-level load balancer to a cgroup2 directory: every socket created
    /// by a process in that subtree is load-balanced by this node's maps.
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<(), DataPlaneError> {
        let cgroup = File::open(path).map_err(|source| DataPlaneError::Cgroup {
            path: path.to_path_buf(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(DataPlaneError::MissingProgram(name))?
                .try_into()
                .map_err(|e| program_err(name, e))?;
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| program_err(name, e))?;
        }
        self.cgroup = Some(path.to_path_buf());
        Ok(())
    }

    /// The cgroup the socket programs are attached to.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// Pins the service and counter maps in `dir` (a bpffs) for `skiff dataplane stats`.
    pub fn pin_for_readers(&self, dir: &Path) -> Result<(), DataPlaneError> {
        for name in crate::stats::PINNED {
            let map = self
                .ebpf
                .map(name)
                .ok_or(DataPlaneError::MissingProgram(name))?;
            map.pin(dir.join(name)).map_err(|e| DataPlaneError::Pin {
                name,
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Takes the service maps into a `LoadBalancer` (once).
    pub fn load_balancer(&mut self) -> Result<LoadBalancer, DataPlaneError> {
        Ok(LoadBalancer::new(|name| self.ebpf.take_map(name))?)
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DataPlaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataPlaneError::MissingProgram(name))?
        .try_into()
        .map_err(|e| program_err(name, e))
}

fn run<P>(program: &P, name: &'static str, packet: &[u8]) -> Result<PacketVerdict, DataPlaneError>
where
    for<'b> P: TestRun<Opts<'b> = TestRunOptions<'b>, Result = aya::programs::TestRunResult>,
{
    // Room for programs that grow the packet (encapsulation, ICMP replies).
    let mut out = vec![0u8; packet.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .map_err(|e| program_err(name, e))?;
    out.truncate(result.data_size_out as usize);
    Ok(PacketVerdict {
        action: result.return_value,
        packet: out,
    })
}

fn program_err(name: &'static str, e: ProgramError) -> DataPlaneError {
    DataPlaneError::Program {
        name,
        source: Box::new(e),
    }
}
