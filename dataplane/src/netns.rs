//! Network namespaces, held by file descriptor, and running code inside one.
//!
//! A namespace belongs to a thread, not a process: work inside one runs on a short-lived
//! thread that has `setns`'d into it (netlink sockets opened there act on that namespace;
//! TCP/UDP sockets created there live there), or, for a short synchronous call such as
//! opening a socket, on the calling thread moved in and back (`within`). A `Netns` is only a descriptor: nothing is
//! left in /run/netns, and the namespace goes when the last descriptor and process do.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// A network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// Creates a namespace (with only `lo`, down).
    pub fn create() -> std::io::Result<Netns> {
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this short-lived thread, which ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Netns {
                fd: File::open("/proc/thread-self/ns/net")?.into(),
            })
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    }

    /// Creates a namespace for a node without an uplink: loopback up, with `ip`/32 on it as
    /// the node's own address.
    pub fn create_with_loopback_address(ip: std::net::Ipv4Addr) -> std::io::Result<Netns> {
        let ns = Self::create()?;
        ns.block_on(async {
            let nl = crate::netlink::Netlink::open()?;
            nl.set_up("lo").await?;
            nl.add_address("lo", ip, 32).await
        })?
        .map_err(std::io::Error::other)?;
        Ok(ns)
    }

    /// Opens an existing namespace (`/proc/PID/ns/net`, `/run/netns/NAME`, ...).
    pub fn open(path: &Path) -> std::io::Result<Netns> {
        Ok(Netns {
            fd: File::open(path)?.into(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> std::io::Result<Netns> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Another descriptor of the same namespace.
    pub fn try_clone(&self) -> std::io::Result<Netns> {
        Ok(Netns {
            fd: self.fd.try_clone()?,
        })
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: setns with a namespace descriptor we own; affects the calling thread only.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on the calling thread moved into this namespace for the call, and moves
    /// the thread back afterwards (a panic included). For short synchronous work: opening
    /// a socket (it stays in this namespace), an ioctl, a sysctl; no thread is started.
    pub fn within<T>(&self, f: impl FnOnce() -> T) -> std::io::Result<T> {
        /// Moves the thread back to the namespace it came from when dropped.
        struct Back(File);
        impl Drop for Back {
            fn drop(&mut self) {
                // SAFETY: setns with a namespace descriptor this guard holds open; affects
                // the calling thread only.
                if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    // A pooled thread would go on in a pod's namespace, and everything it
                    // did later would land there: stop instead.
                    eprintln!(
                        "cannot return to the thread's own network namespace: {}",
                        std::io::Error::last_os_error()
                    );
                    std::process::abort();
                }
            }
        }
        let back = Back(File::open("/proc/thread-self/ns/net")?);
        self.enter()?;
        let out = f();
        drop(back);
        Ok(out)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| std::io::Error::other("thread in namespace panicked"))?
        })
    }

    /// Runs a future to completion on a thread inside this namespace (a current-thread
    /// runtime of its own: netlink connections opened there act on this namespace).
    pub fn block_on<F: Future + Send>(&self, fut: F) -> std::io::Result<F::Output>
    where
        F::Output: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
        })?
    }
}

impl Netns {
    /// Keeps this namespace alive beyond its descriptors by bind-mounting it on `path` (an
    /// empty file is created), as `ip netns add` does; `Netns::open(path)` finds it again.
    pub fn persist(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::create(path)?;
        let source = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let c = |s: &str| {
            std::ffi::CString::new(s).map_err(|_| std::io::Error::other("path with a NUL byte"))
        };
        let (src, dst) = (c(&source)?, c(&path.to_string_lossy())?);
        // SAFETY: both arguments are valid NUL-terminated strings; a bind mount of our own
        // namespace descriptor onto a file we just created.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(())
    }

    /// Undoes `persist`: the namespace goes once nothing else holds it. A path that is not
    /// mounted (or gone) is not an error.
    pub fn forget(path: &Path) -> std::io::Result<()> {
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| std::io::Error::other("path with a NUL byte"))?;
        // SAFETY: a valid NUL-terminated path; MNT_DETACH unmounts lazily.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                return Err(e);
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Writes a sysctl of the calling thread's network namespace (`net/ipv4/ip_forward`, ...).
pub fn sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}
