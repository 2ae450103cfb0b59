//! Test support for the data plane: private network namespaces and cgroup2 directories.
//!
//! A `Netns` is held only by a file descriptor (no /run/netns entry), so it disappears with
//! the test even when the test fails. A `Cgroup2` is a unique directory under the cgroup2
//! mount, removed on drop after this process has moved back to where it was.

#![allow(dead_code)]

pub mod api;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A network namespace created for one test, with `lo` up.
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    pub fn new() -> Netns {
        let fd = std::thread::spawn(|| {
            // SAFETY: unshare only changes this (fresh, short-lived) thread's namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            let fd: OwnedFd = File::open("/proc/thread-self/ns/net")
                .expect("ns file")
                .into();
            set_up("lo");
            fd
        })
        .join()
        .expect("netns thread");
        Netns { fd }
    }

    /// Runs `f` on a thread inside this namespace (sockets it creates live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("thread in netns")
        })
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) {
        // SAFETY: setns with a namespace fd we own; affects only the calling thread.
        let rc = unsafe { libc::setns(self.fd.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

/// Sets a link of the calling thread's namespace up, through rtnetlink.
fn set_up(name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use futures::TryStreamExt;
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(conn);
        let link = handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .expect("link get")
            .expect("link exists");
        handle
            .link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(link.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .expect("link up");
    });
}

/// A unique cgroup2 directory for one test.
pub struct Cgroup2 {
    pub path: PathBuf,
}

impl Cgroup2 {
    pub fn new(tag: &str) -> Cgroup2 {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = Path::new(CGROUP2_ROOT).join(format!(
            "skiff-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).expect("create cgroup2 dir");
        Cgroup2 { path }
    }

    /// Runs `f` with this whole process in the cgroup: sockets created meanwhile belong to
    /// it (and so get its BPF programs). The process moves back afterwards.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let home = current_cgroup();
        move_self(&self.path);
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        move_self(&home);
        match out {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn current_cgroup() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line");
    Path::new(CGROUP2_ROOT).join(rel.trim_start_matches('/'))
}

fn move_self(dir: &Path) {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .unwrap_or_else(|e| panic!("move into {}: {e}", dir.display()));
}
