//! Test support for the data plane: private network namespaces and cgroup2 directories.
//!
//! A `Netns` is held only by a file descriptor (no /run/netns entry), so it disappears with
//! the test even when the test fails. A `Cgroup2` is a unique directory under the cgroup2
//! mount, removed on drop after this process has moved back to where it was.

#![allow(dead_code)]

pub mod api;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A network namespace created for one test, with `lo` up (panics instead of returning
/// errors, as tests want).
pub struct Netns {
    pub inner: skiff_dataplane::netns::Netns,
}

impl Netns {
    pub fn new() -> Netns {
        let inner = skiff_dataplane::netns::Netns::create().expect("create netns");
        inner
            .block_on(async {
                let nl = skiff_dataplane::netlink::Netlink::open()?;
                nl.set_up("lo").await
            })
            .expect("thread in netns")
            .expect("lo up");
        Netns { inner }
    }

    /// Runs `f` on a thread inside this namespace (sockets it creates live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.inner.run(f).expect("thread in netns")
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) {
        self.inner.enter().expect("setns");
    }
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
