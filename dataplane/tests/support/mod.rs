//! Test support for the data plane: private network namespaces and cgroup2 directories.
//!
//! A `Netns` is held only by a file descriptor (no /run/netns entry), so it disappears with
//! the test even when the test fails. A `Cgroup2` is a unique directory under the cgroup2
//! mount, removed on drop after this process has moved back to where it was.

#![allow(dead_code)]

pub mod api;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

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

/// A unique cgroup2 directory for one test, removed on drop.
pub struct Cgroup2 {
    pub path: PathBuf,
    inner: skiff_dataplane::cgroup2::Cgroup2,
}

impl Cgroup2 {
    pub fn new(tag: &str) -> Cgroup2 {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = Path::new(skiff_dataplane::cgroup2::MOUNT).join(format!(
            "skiff-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let inner = skiff_dataplane::cgroup2::Cgroup2::create(&path).expect("create cgroup2 dir");
        Cgroup2 { path, inner }
    }

    /// Runs `f` with this whole process in the cgroup: sockets created meanwhile belong to
    /// it (and so get its BPF programs). The process moves back afterwards.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        self.inner.run_as_member(f).expect("move between cgroups")
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        let _ = self.inner.remove();
    }
}
