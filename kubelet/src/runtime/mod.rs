//! Skiff's own container runtime.
//!
//! Containers are created by a small single-threaded **spawner** process (`spawner`),
//! forked when the node agent starts and before any runtime thread exists: cloning from a
//! multi-threaded process is unsafe (another thread may hold the allocator's lock). The
//! agent talks to it over a `SOCK_SEQPACKET` Unix socket (`client`): a request carries a
//! [`ContainerSpec`] as JSON and the container's stdio descriptors; the reply carries a
//! pidfd and an error pipe that reaches end-of-file when `execve` succeeded (or carries
//! the reason it did not). The spawner is the containers' parent: it reaps each one
//! individually through `IORING_OP_WAITID` and sends the exit status to the connection
//! that owns the container. It outlives a restarted agent, so running containers are
//! re-adopted instead of killed.
//!
//! In the child (`child`): new pid and mount namespaces (and UTS/IPC unless the pod shares
//! them), joined to the pod's network namespace, cgroups joined, overlayfs rootfs over the
//! image layers, `/proc`, minimal `/dev`, read-only `/sys`, bind mounts, `pivot_root`,
//! masked and read-only kernel paths, user and groups, Kubernetes' default capabilities,
//! `no_new_privs`, the default seccomp profile (`seccomp`), then `execve`.

pub mod cgroup;
mod child;
pub mod client;
pub mod oci;
pub mod sandbox;
pub mod seccomp;
pub mod spawner;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the spawner needs to start one container. Paths are host paths.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique id (the agent's name for this run of the container).
    pub id: String,
    /// Image layer directories, topmost first (overlayfs `lowerdir` order).
    pub layers: Vec<PathBuf>,
    /// Writable layer and overlayfs work dir (same filesystem, both empty at first start).
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Empty directory the rootfs is mounted on, inside the container's mount namespace
    /// only (nothing is left on the host when the container goes).
    pub rootfs: PathBuf,
    /// Program and arguments (`argv[0]` is searched in `PATH` when it has no `/`).
    pub argv: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Working directory inside the container (`/` when empty).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Capability names (`CAP_CHOWN`, ...) the process keeps.
    pub capabilities: Vec<String>,
    /// Hostname when the container gets its own UTS namespace.
    pub hostname: String,
    /// Namespaces to join (`/proc/PID/ns/net`, bind-mounted namespace files, ...); a
    /// missing one means a new namespace of that kind.
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// `cgroup.procs` files (one per v1 controller, or one v2 directory's) the process
    /// joins before anything else, so everything it does is accounted.
    pub cgroup_procs: Vec<PathBuf>,
    pub mounts: Vec<Mount>,
    /// Rootfs mounted read-only (`readOnlyRootFilesystem`).
    pub readonly_rootfs: bool,
    /// Apply the default seccomp profile (Kubernetes' `RuntimeDefault`).
    pub seccomp: bool,
    /// Stdio: index into the descriptors sent with the request, or /dev/null.
    pub stdin: Option<usize>,
    pub stdout: Option<usize>,
    pub stderr: Option<usize>,
    /// Stdin is a pseudo-terminal's far end: it becomes the process's controlling terminal
    /// (in a session of its own).
    #[serde(default)]
    pub tty: bool,
    /// Descriptors (indices) the spawner holds while the container lives and hands to
    /// whoever adopts it: the read ends of the log pipes, so a restarted agent keeps
    /// reading what the container writes.
    pub keep: Vec<usize>,
    /// Run the program inside the running container whose process is this pid (its
    /// namespaces, root and cgroups) instead of creating a container: `exec`, exec probes,
    /// preStop hooks. `layers`, mounts and namespace paths are ignored then.
    pub exec_in: Option<i32>,
    /// Hand the container to this OCI runtime binary (crun, runc) instead: the bundle
    /// directory holds `config.json`, whose root the agent has mounted.
    pub oci_runtime: Option<PathBuf>,
    pub oci_bundle: Option<PathBuf>,
}

/// A bind mount (or tmpfs when `source` is empty) into the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub readonly: bool,
    /// The source is a file (the target is created as a file, not a directory).
    pub file: bool,
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The exit code Kubernetes reports (128 + signal for a signalled process).
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// A pseudo-terminal for a container's or an exec's stdio: (master, far end), both
/// close-on-exec (the far end reaches the process through the spawner, never by
/// inheritance), of `rows` x `cols` when given.
pub fn pty(size: Option<(u16, u16)>) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let ws = size.map(|(rows, cols)| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(ws.as_ref(), None)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    Ok((pty.master, pty.slave))
}

/// Mounts `spec`'s overlayfs (its layers, topmost first, under its upper and work dirs)
/// on `spec.rootfs`, in the calling process's mount namespace.
///
/// `volatile`: the overlay never syncs its upper filesystem (without it, every container's
/// exit waits for a writeback of the node's disk and a cache flush when the last
/// reference to the mount goes). A writable layer is used by one container run and
/// dropped with it, and no container survives a crash of the node, so nothing is lost
/// that Kubernetes would keep.
pub(crate) fn mount_overlay(spec: &ContainerSpec) -> Result<(), String> {
    if spec.layers.is_empty() {
        return Err("image has no layers".into());
    }
    let lower: Vec<String> = spec
        .layers
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        lower.join(":"),
        spec.upper.display(),
        spec.work.display()
    );
    // The kernel takes one page of mount options.
    if opts.len() >= 4000 {
        return Err(format!("overlay options too long ({} layers)", lower.len()));
    }
    nix::mount::mount(
        Some("overlay"),
        &spec.rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting rootfs (overlay): {e}"))
}

/// Kernel interfaces hidden from containers (runc's and containerd's defaults).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Kernel interfaces containers see read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Kubernetes' (containerd's) default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Errors of the runtime. `CreateContainerError` and `RunContainerError` are the reasons a
/// pod reports for `Create` and `Exec` failures respectively.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("spawner: {0}")]
    Spawner(String),
    #[error("{0}")]
    Create(String),
    #[error("{0}")]
    Exec(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    /// The Kubernetes reason for a container that could not start.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::Exec(_) => "RunContainerError",
            _ => "CreateContainerError",
        }
    }
}
