//! A pod's shared network, IPC and UTS namespaces, kept alive by bind mounts on files in
//! the pod's directory (as `ip netns` does), so containers of the pod can join them
//! whatever order they start and restart in, and a restarted agent finds them again.
//! Kubernetes keeps them alive with a "pause" container; a bind mount costs no process.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The namespace files of one pod.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

impl Sandbox {
    /// Creates the namespaces (the UTS one with `hostname`) under `dir`. Idempotent: an
    /// existing sandbox (agent restart) is reused.
    pub fn create(dir: &Path, hostname: &str) -> std::io::Result<Sandbox> {
        let sb = Sandbox {
            net: dir.join("ns-net"),
            ipc: dir.join("ns-ipc"),
            uts: dir.join("ns-uts"),
        };
        if is_nsfs(&sb.net) && is_nsfs(&sb.ipc) && is_nsfs(&sb.uts) {
            return Ok(sb);
        }
        std::fs::create_dir_all(dir)?;
        for f in [&sb.net, &sb.ipc, &sb.uts] {
            let _ = umount2(f.as_path(), MntFlags::MNT_DETACH);
            std::fs::write(f, b"")?;
        }
        let hostname = hostname.to_string();
        let (net, ipc, uts) = (sb.net.clone(), sb.ipc.clone(), sb.uts.clone());
        // unshare on a short-lived thread: only that thread moves into the new namespaces.
        std::thread::spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_NEWNET
                    | nix::sched::CloneFlags::CLONE_NEWIPC
                    | nix::sched::CloneFlags::CLONE_NEWUTS,
            )?;
            nix::unistd::sethostname(&hostname)?;
            for (src, dst) in [
                ("/proc/thread-self/ns/net", &net),
                ("/proc/thread-self/ns/ipc", &ipc),
                ("/proc/thread-self/ns/uts", &uts),
            ] {
                mount(
                    Some(src),
                    dst.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| {
                    std::io::Error::other(format!("bind {src} on {}: {e}", dst.display()))
                })?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| std::io::Error::other("sandbox thread panicked"))??;
        Ok(sb)
    }

    /// The sandbox a previous agent left in `dir`, if its namespaces are still there.
    pub fn existing(dir: &Path) -> Option<Sandbox> {
        let sb = Sandbox {
            net: dir.join("ns-net"),
            ipc: dir.join("ns-ipc"),
            uts: dir.join("ns-uts"),
        };
        (is_nsfs(&sb.net) && is_nsfs(&sb.ipc) && is_nsfs(&sb.uts)).then_some(sb)
    }

    /// Releases the namespaces (they go when the last container in them does).
    pub fn remove(&self) -> std::io::Result<()> {
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
