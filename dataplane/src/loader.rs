//! Loads the BPF object and attaches its programs.
//!
//! Programs stay attached while the `DataPlane` lives: aya detaches every link when the
//! program is dropped, so dropping the `DataPlane` (also on a panic) leaves nothing behind.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError};
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
    #[error("BPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lb(#[from] LbError),
}

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
        Ok(DataPlane { ebpf, cgroup: None })
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

    /// Takes the service maps into a `LoadBalancer` (once).
    pub fn load_balancer(&mut self) -> Result<LoadBalancer, DataPlaneError> {
        Ok(LoadBalancer::new(|name| self.ebpf.take_map(name))?)
    }
}

fn program_err(name: &'static str, e: ProgramError) -> DataPlaneError {
    DataPlaneError::Program {
        name,
        source: Box::new(e),
    }
}
