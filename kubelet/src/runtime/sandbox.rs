//! A pod's shared network, IPC and UTS namespaces, so containers of the pod can join them
//! whatever order they start and restart in.
//!
//! The spawner creates and holds them (`Runtime::sandbox`): a descriptor per namespace in
//! the process that already outlives the agent, handed out as `/proc/<spawner>/fd/<n>`
//! paths. No file, mount or process per pod (Kubernetes keeps them with a "pause"
//! container): the host's mount table stays the same size however many pods run, and
//! every container's new mount namespace copies that table.
//!
//! Earlier versions bind-mounted the namespaces on `ns-net`, `ns-ipc` and `ns-uts` in
//! the pod's directory; a pod left that way by an older agent is still found
//! ([`Sandbox::existing`]) and released ([`Sandbox::remove`]).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

/// The namespace paths of one pod.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
    /// Held by the spawner (else bind mounts in the pod's directory).
    pub held: bool,
}

impl Sandbox {
    /// The sandbox of the spawner's paths (net, ipc, uts).
    pub fn held([net, ipc, uts]: [PathBuf; 3]) -> Sandbox {
        Sandbox {
            net,
            ipc,
            uts,
            held: true,
        }
    }

    /// The bind-mounted sandbox an older agent left in `dir`, if its namespaces are still
    /// there.
    pub fn existing(dir: &Path) -> Option<Sandbox> {
        let sb = Sandbox {
            net: dir.join("ns-net"),
            ipc: dir.join("ns-ipc"),
            uts: dir.join("ns-uts"),
            held: false,
        };
        (is_nsfs(&sb.net) && is_nsfs(&sb.ipc) && is_nsfs(&sb.uts)).then_some(sb)
    }

    /// Releases a bind-mounted sandbox (the namespaces go when the last container in them
    /// does). A held one is released through the spawner instead: nothing to do here.
    pub fn remove(&self) -> std::io::Result<()> {
        if self.held {
            return Ok(());
        }
        for f in [&self.net, &self.ipc, &self.uts] {
            match umount2(f.as_path(), MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether `path` is a namespace file (a live bind mount of one).
fn is_nsfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == 0x6e73_6673)
        .unwrap_or(false)
}
