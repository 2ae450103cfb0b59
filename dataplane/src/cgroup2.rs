//! cgroup2 directories for the socket-level load balancer.
//!
//! The socket programs attach to a node's directory under the cgroup2 mount; every socket
//! created by a process inside that subtree is load-balanced by that node's maps, so the
//! nodes of a local cluster that share one kernel stay independent. On this machine the
//! cgroup2 mount (`/sys/fs/cgroup/unified`) has no controllers: it only scopes BPF.

use std::path::{Path, PathBuf};

/// Where the cgroup2 hierarchy is mounted here (beside the v1 controllers).
pub const MOUNT: &str = "/sys/fs/cgroup/unified";

/// A cgroup2 directory.
#[derive(Debug)]
pub struct Cgroup2 {
    pub path: PathBuf,
}

impl Cgroup2 {
    /// Creates (or reuses) the directory.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(path)?;
        Ok(Cgroup2 {
            path: path.to_path_buf(),
        })
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn add_process(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    /// Runs `f` with this whole process inside the cgroup, then moves it back: the
    /// sockets `f` creates stay in this cgroup. For tests and benchmarks, which play the
    /// part of a pod's process.
    pub fn run_as_member<T>(&self, f: impl FnOnce() -> T) -> std::io::Result<T> {
        let home = current()?;
        self.add_process(std::process::id())?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        std::fs::write(home.join("cgroup.procs"), std::process::id().to_string())?;
        match out {
            Ok(v) => Ok(v),
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Removes the directory (it must have no processes left).
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir(&self.path)
    }
}

/// The cgroup2 directory of the calling process.
pub fn current() -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| std::io::Error::other("no cgroup2 line in /proc/self/cgroup"))?;
    Ok(Path::new(MOUNT).join(rel.trim_start_matches('/')))
}
