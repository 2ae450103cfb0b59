//! The spawner process: creates containers with `clone3` and reaps them with
//! `IORING_OP_WAITID`.
//!
//! [`start`] must run while the calling process has one thread (it checks). It forks
//! twice, so the spawner is re-parented away from the agent and never becomes the agent's
//! zombie; the spawner starts its own session (a Ctrl-C to the agent does not reach it),
//! listens on `<state dir>/spawner.sock` and serves every connection of every agent
//! thread. It exits when no agent is connected and no container is left; while containers
//! run it stays, so a restarted agent re-adopts them ([`Request::Adopt`]).
//!
//! One io_uring carries the whole event loop: a poll on the listening socket and on each
//! connection, and one `WAITID` per container on its pidfd (each child reaped on its own,
//! never a catch-all wait).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use io_uring::{IoUring, opcode, types};
use nix::cmsg_space;
use nix::sched::CloneFlags;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    accept4, recvmsg, sendmsg,
};
use seccompiler::BpfProgram;
use serde::{Deserialize, Serialize};

use super::{ContainerSpec, ExitStatus};

/// Largest message on the socket.
pub(crate) const MAX_MESSAGE: usize = 256 * 1024;
/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 64;

/// Agent -> spawner.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Descriptors sent along: the container's stdio (indices in the spec).
    Create(Box<ContainerSpec>),
    /// Take over the named containers from a previous agent connection.
    Adopt(Vec<String>),
    /// The sandbox (network, IPC and UTS namespaces) of a pod: the one held already, or,
    /// unless `find_only`, new ones whose UTS namespace is named `hostname`.
    Sandbox {
        pod: String,
        hostname: String,
        find_only: bool,
    },
    /// Let go of a pod's sandbox (the namespaces end with their last process).
    ReleaseSandbox(String),
}

/// Spawner -> agent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Descriptors: the pidfd, then the error pipe's read end.
    Created {
        id: String,
        pid: i32,
    },
    Failed {
        id: String,
        error: String,
    },
    Exited {
        id: String,
        status: ExitStatus,
    },
    /// Descriptors: per `live` entry, in order, its pidfd then its kept descriptors
    /// (the entry's third field counts them).
    Adopted {
        live: Vec<(String, i32, usize)>,
        exited: Vec<(String, ExitStatus)>,
    },
    /// The paths of a pod's namespaces (net, ipc, uts) as the spawner holds them, `None`
    /// for a `find_only` request of a sandbox it does not hold.
    Sandbox {
        pod: String,
        result: Result<Option<[PathBuf; 3]>, String>,
    },
}

/// The socket path of the spawner serving `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("spawner.sock")
}

/// A running spawner: its socket, and one connection held for as long as this value lives
/// (the spawner stays while any connection or container does).
#[derive(Debug)]
pub struct SpawnerHandle {
    path: PathBuf,
    _keepalive: OwnedFd,
}

impl SpawnerHandle {
    pub fn socket(&self) -> &Path {
        &self.path
    }
}

/// Starts the spawner for `state_dir` unless one already serves it (left running by a
/// previous agent with containers still alive). Call before the process starts any
/// thread.
pub fn start(state_dir: &Path) -> std::io::Result<SpawnerHandle> {
    let path = socket_path(state_dir);
    std::fs::create_dir_all(state_dir)?;
    if let Ok(fd) = connect_seqpacket(&path) {
        return Ok(SpawnerHandle {
            path,
            _keepalive: fd,
        });
    }
    let threads = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "the spawner must be started before any thread exists (this process has {threads})"
        )));
    }
    let filters = super::seccomp::default_profile()
        .map_err(|e| std::io::Error::other(format!("seccomp profile: {e}")))?;
    let _ = std::fs::remove_file(&path);
    let sock = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    nix::sys::socket::bind(sock.as_raw_fd(), &UnixAddr::new(&path)?)
        .map_err(|e| std::io::Error::other(format!("binding {}: {e}", path.display())))?;
    nix::sys::socket::listen(&sock, nix::sys::socket::Backlog::new(128)?)?;

    // SAFETY: this process has exactly one thread (checked above), so the child is a
    // complete copy and may run arbitrary code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(sock);
            // The intermediate child exits at once; reap it.
            nix::sys::wait::waitpid(child, None)?;
            // The listener exists already, so this connection is queued even if the
            // spawner has not reached its loop yet.
            Ok(SpawnerHandle {
                _keepalive: connect_seqpacket(&path)?,
                path,
            })
        }
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setsid();
            // SAFETY: still single-threaded (a fresh fork of a single-threaded process).
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => {
                    // Not the agent's stdio: whoever waits for the agent's output to end
                    // must not wait for the spawner too.
                    detach_stdio(&state_dir.join("spawner.log"));
                    // Who to stop when the node is purged (`skiff down`).
                    let _ = std::fs::write(
                        state_dir.join("spawner.pid"),
                        std::process::id().to_string(),
                    );
                    let code = match serve(sock, filters, state_dir.to_path_buf()) {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("skiff spawner: {e}");
                            1
                        }
                    };
                    // SAFETY: leave without running the agent's destructors or atexit hooks.
                    unsafe { libc::_exit(code) }
                }
                // SAFETY: as above.
                _ => unsafe { libc::_exit(0) },
            }
        }
    }
}

fn detach_stdio(log: &Path) {
    let null = std::fs::File::open("/dev/null");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log);
    // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
    unsafe {
        if let Ok(n) = &null {
            libc::dup2(n.as_raw_fd(), 0);
        }
        if let Ok(o) = &out {
            libc::dup2(o.as_raw_fd(), 1);
            libc::dup2(o.as_raw_fd(), 2);
        }
    }
}

pub(crate) fn connect_seqpacket(path: &Path) -> std::io::Result<OwnedFd> {
    let sock = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

/// Sends one message with descriptors.
pub(crate) fn send(sock: RawFd, msg: &impl Serialize, fds: &[RawFd]) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if body.len() > MAX_MESSAGE {
        return Err(std::io::Error::other("message too large"));
    }
    let iov = [IoSlice::new(&body)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and its descriptors; `Ok(None)` at end of stream.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(
    sock: RawFd,
    buf: &mut [u8],
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut space = cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed this descriptor for us.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..len])
        .map_err(|e| std::io::Error::other(format!("bad message: {e}")))?;
    Ok(Some((msg, fds)))
}

const TAG_LISTEN: u64 = 1 << 62;
const TAG_CONN: u64 = 2 << 62;
const TAG_CHILD: u64 = 3 << 62;
const TAG_MASK: u64 = 3 << 62;

struct Child {
    id: String,
    pid: i32,
    /// What the spawner waits on: the container itself, or the OCI runtime's `run`.
    pidfd: OwnedFd,
    /// With an OCI runtime, the container process's own pidfd (what an adopting agent
    /// signals, as the first agent did).
    target: Option<OwnedFd>,
    owner: Option<u64>,
    info: Box<libc::siginfo_t>,
    kept: Vec<OwnedFd>,
    /// Created by an OCI runtime: (binary, state root, id) for `delete` after the exit.
    oci: Option<(PathBuf, PathBuf, String)>,
}

struct Spawner {
    ring: IoUring,
    listener: OwnedFd,
    conns: HashMap<u64, OwnedFd>,
    children: HashMap<u64, Child>,
    /// Exits of containers whose agent connection had gone.
    unclaimed: Vec<(String, ExitStatus)>,
    next: u64,
    ever_connected: bool,
    filters: Vec<BpfProgram>,
    buf: Vec<u8>,
    state_dir: PathBuf,
    /// Pods' namespaces (net, ipc, uts), kept alive by these descriptors.
    sandboxes: HashMap<String, [OwnedFd; 3]>,
    /// The spawner's own namespaces, returned to after creating a sandbox.
    home: [OwnedFd; 3],
}

/// The namespaces a sandbox holds, with their `/proc/self/ns` names.
const SANDBOX_NAMESPACES: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

fn open_namespaces(proc_dir: &str) -> std::io::Result<[OwnedFd; 3]> {
    let open = |name: &str| -> std::io::Result<OwnedFd> {
        Ok(std::fs::File::open(format!("{proc_dir}/ns/{name}"))?.into())
    };
    Ok([
        open(SANDBOX_NAMESPACES[0].0)?,
        open(SANDBOX_NAMESPACES[1].0)?,
        open(SANDBOX_NAMESPACES[2].0)?,
    ])
}

fn serve(listener: OwnedFd, filters: Vec<BpfProgram>, state_dir: PathBuf) -> std::io::Result<()> {
    // SAFETY: setting dispositions in this single-threaded process: children must not be
    // reaped automatically, and a vanished agent must not kill us with SIGPIPE.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // Stopping the agent (its signals often reach the whole group) must not orphan
        // the containers: the spawner leaves on its own once no agent and no container
        // is left; `skiff down` kills it outright.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::prctl(
            libc::PR_SET_NAME,
            c"skiff-spawner".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let mut s = Spawner {
        ring: IoUring::new(256)?,
        listener,
        conns: HashMap::new(),
        children: HashMap::new(),
        unclaimed: Vec::new(),
        next: 1,
        ever_connected: false,
        filters,
        buf: vec![0; MAX_MESSAGE],
        state_dir,
        sandboxes: HashMap::new(),
        home: open_namespaces("/proc/self")?,
    };
    s.arm_poll(s.listener.as_raw_fd(), TAG_LISTEN)?;
    loop {
        if s.ever_connected && s.conns.is_empty() && s.children.is_empty() && s.sandboxes.is_empty()
        {
            return Ok(());
        }
        match s.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        let done: Vec<(u64, i32)> = s
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (data, res) in done {
            match data & TAG_MASK {
                TAG_LISTEN => s.accept()?,
                TAG_CONN => s.readable(data & !TAG_MASK)?,
                TAG_CHILD => s.reaped(data & !TAG_MASK, res),
                _ => {}
            }
        }
    }
}

impl Spawner {
    fn push(&mut self, entry: io_uring::squeue::Entry) -> std::io::Result<()> {
        // SAFETY: every buffer an entry points to (siginfo boxes) lives in `children` until
        // the entry's completion has been taken.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn arm_poll(&mut self, fd: RawFd, data: u64) -> std::io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(data);
        self.push(e)
    }

    fn accept(&mut self) -> std::io::Result<()> {
        loop {
            match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new descriptor we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    let id = self.next;
                    self.next += 1;
                    self.arm_poll(fd.as_raw_fd(), TAG_CONN | id)?;
                    self.conns.insert(id, fd);
                    self.ever_connected = true;
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.arm_poll(self.listener.as_raw_fd(), TAG_LISTEN)
    }

    fn readable(&mut self, conn: u64) -> std::io::Result<()> {
        loop {
            let Some(fd) = self.conns.get(&conn).map(|f| f.as_raw_fd()) else {
                return Ok(());
            };
            let mut buf = std::mem::take(&mut self.buf);
            let got = recv::<Request>(fd, &mut buf);
            self.buf = buf;
            match got {
                Ok(Some((req, fds))) => self.handle(conn, req, fds),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return self.arm_poll(fd, TAG_CONN | conn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // End of stream or a broken connection: its containers wait for adoption.
                Ok(None) | Err(_) => {
                    self.conns.remove(&conn);
                    for c in self.children.values_mut() {
                        if c.owner == Some(conn) {
                            c.owner = None;
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    fn reply(&mut self, conn: u64, msg: &Reply, fds: &[RawFd]) {
        if let Some(fd) = self.conns.get(&conn)
            && let Err(e) = send(fd.as_raw_fd(), msg, fds)
            // A connection that went away is noticed (and its containers released) by
            // the poll on it.
            && !matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET))
        {
            eprintln!("skiff spawner: reply to connection {conn}: {e}");
        }
    }

    fn handle(&mut self, conn: u64, req: Request, fds: Vec<OwnedFd>) {
        match req {
            Request::Create(spec) => {
                let id = spec.id.clone();
                // A command inside a running container is always Skiff's own exec, whatever
                // runtime created the container.
                let created = if spec.oci_runtime.is_some() && spec.exec_in.is_none() {
                    self.create_oci(conn, &spec, fds)
                } else {
                    self.create(conn, &spec, fds)
                };
                match created {
                    Ok((pid, pidfd, errpipe)) => self.reply(
                        conn,
                        &Reply::Created { id, pid },
                        &[pidfd.as_raw_fd(), errpipe.as_raw_fd()],
                    ),
                    Err(e) => self.reply(
                        conn,
                        &Reply::Failed {
                            id,
                            error: e.to_string(),
                        },
                        &[],
                    ),
                }
            }
            Request::Adopt(ids) => {
                let mut live = Vec::new();
                let mut pidfds = Vec::new();
                for c in self.children.values_mut() {
                    if ids.contains(&c.id) {
                        c.owner = Some(conn);
                        live.push((c.id.clone(), c.pid, c.kept.len()));
                        pidfds.push(c.target.as_ref().unwrap_or(&c.pidfd).as_raw_fd());
                        pidfds.extend(c.kept.iter().map(|f| f.as_raw_fd()));
                    }
                }
                let (exited, keep) = std::mem::take(&mut self.unclaimed)
                    .into_iter()
                    .partition(|(id, _)| ids.contains(id));
                self.unclaimed = keep;
                self.reply(conn, &Reply::Adopted { live, exited }, &pidfds);
            }
            Request::Sandbox {
                pod,
                hostname,
                find_only,
            } => {
                let result = self
                    .sandbox(&pod, &hostname, find_only)
                    .map_err(|e| e.to_string());
                self.reply(conn, &Reply::Sandbox { pod, result }, &[]);
            }
            Request::ReleaseSandbox(pod) => {
                self.sandboxes.remove(&pod);
            }
        }
    }

    /// A pod's namespaces, created on first use. The spawner is single-threaded: it steps
    /// into new namespaces with `unshare`, keeps descriptors of them, and goes back to its
    /// own with `setns`; no thread, process, file or mount per pod. The namespaces are
    /// handed out as `/proc/<spawner>/fd/<n>` paths, which containers (ours and OCI
    /// runtimes') and the pod network open like any namespace file.
    fn sandbox(
        &mut self,
        pod: &str,
        hostname: &str,
        find_only: bool,
    ) -> std::io::Result<Option<[PathBuf; 3]>> {
        if !self.sandboxes.contains_key(pod) {
            if find_only {
                return Ok(None);
            }
            // Only this single-threaded process moves, and it goes back to its own
            // namespaces below whatever happens in between.
            let flags = SANDBOX_NAMESPACES
                .iter()
                .fold(CloneFlags::empty(), |f, (_, flag)| f | *flag);
            nix::sched::unshare(flags)?;
            let made = nix::unistd::sethostname(hostname)
                .map_err(std::io::Error::from)
                .and_then(|()| open_namespaces("/proc/self"));
            for (home, (name, flag)) in self.home.iter().zip(SANDBOX_NAMESPACES) {
                if let Err(e) = nix::sched::setns(home, flag) {
                    // Every later container would start in a pod's namespace: stop here.
                    eprintln!("skiff spawner: cannot return to its own {name} namespace: {e}");
                    std::process::abort();
                }
            }
            self.sandboxes.insert(pod.to_string(), made?);
        }
        let me = std::process::id();
        Ok(self.sandboxes.get(pod).map(|fds| {
            fds.each_ref()
                .map(|fd| PathBuf::from(format!("/proc/{me}/fd/{}", fd.as_raw_fd())))
        }))
    }

    /// Clones the container process; returns its pid, a pidfd for the agent and the read
    /// end of its error pipe.
    fn create(
        &mut self,
        conn: u64,
        spec: &ContainerSpec,
        mut fds: Vec<OwnedFd>,
    ) -> std::io::Result<(i32, OwnedFd, OwnedFd)> {
        if self.children.values().any(|c| c.id == spec.id) {
            return Err(std::io::Error::other(format!(
                "container {} already exists",
                spec.id
            )));
        }
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut flags = libc::CLONE_PIDFD | libc::CLONE_NEWPID | libc::CLONE_NEWNS;
        if spec.exec_in.is_some() {
            // Joins the container's namespaces itself (and forks into its pid namespace).
            flags = libc::CLONE_PIDFD;
        } else if spec.netns.is_none() {
            flags |= libc::CLONE_NEWNET;
        }
        if spec.exec_in.is_none() && spec.ipcns.is_none() {
            flags |= libc::CLONE_NEWIPC;
        }
        if spec.exec_in.is_none() && spec.utsns.is_none() {
            flags |= libc::CLONE_NEWUTS;
        }
        let mut pidfd: RawFd = -1;
        // SAFETY: clone_args is plain data; zeroed is a valid starting value.
        let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
        args.flags = flags as u64;
        args.pidfd = &mut pidfd as *mut RawFd as u64;
        args.exit_signal = libc::SIGCHLD as u64;
        // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this
        // single-threaded process and runs `child::run`, which never returns.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut libc::clone_args,
                std::mem::size_of::<libc::clone_args>(),
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            drop(err_r);
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            super::child::run(spec, &raw, err_w.as_raw_fd(), &self.filters);
        }
        drop(err_w);
        let mut kept = Vec::new();
        for i in spec.keep.iter().rev() {
            if *i < fds.len() {
                kept.push(fds.remove(*i));
            }
        }
        kept.reverse();
        drop(fds);
        // SAFETY: CLONE_PIDFD stored a new descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let for_agent = pidfd.try_clone()?;
        let key = self.next;
        self.next += 1;
        // SAFETY: siginfo_t is plain data; zeroed is valid.
        let mut info: Box<libc::siginfo_t> = Box::new(unsafe { std::mem::zeroed() });
        let entry = opcode::WaitId::new(
            libc::P_PIDFD,
            pidfd.as_fd().as_raw_fd() as libc::id_t,
            libc::WEXITED,
        )
        .infop(&mut *info as *mut libc::siginfo_t)
        .build()
        .user_data(TAG_CHILD | key);
        self.children.insert(
            key,
            Child {
                id: spec.id.clone(),
                pid: pid as i32,
                pidfd,
                target: None,
                owner: Some(conn),
                info,
                kept,
                oci: None,
            },
        );
        self.push(entry)?;
        Ok((pid as i32, for_agent, err_r))
    }

    /// `<runtime> run` as a child of the spawner: it creates the container, waits for it
    /// and exits with its status, so reaping it (through `IORING_OP_WAITID`, like a native
    /// container) gives the container's exit code. The agent gets a pidfd of the
    /// container process itself (from the runtime's pid file) to signal it and exec in it.
    fn create_oci(
        &mut self,
        conn: u64,
        spec: &ContainerSpec,
        fds: Vec<OwnedFd>,
    ) -> std::io::Result<(i32, OwnedFd, OwnedFd)> {
        use std::process::Stdio;
        let (Some(bin), Some(bundle)) = (&spec.oci_runtime, &spec.oci_bundle) else {
            return Err(std::io::Error::other("OCI runtime without a bundle"));
        };
        if self.children.values().any(|c| c.id == spec.id) {
            return Err(std::io::Error::other(format!(
                "container {} already exists",
                spec.id
            )));
        }
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let root = self.state_dir.join("oci").join(name);
        std::fs::create_dir_all(&root)?;
        let pid_file = bundle.join("container.pid");
        let log = bundle.join("runtime.log");
        let stdio = |i: Option<usize>| -> std::io::Result<Stdio> {
            match i.and_then(|i| fds.get(i)) {
                Some(fd) => Ok(Stdio::from(fd.try_clone()?)),
                None => Ok(Stdio::null()),
            }
        };
        let runner = super::oci::command(bin, &root)
            .arg("--log")
            .arg(&log)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&spec.id)
            .stdin(Stdio::null())
            .stdout(stdio(spec.stdout)?)
            .stderr(stdio(spec.stderr)?)
            .spawn()?;
        let runner_pid = runner.id() as i32;
        drop(runner);
        // SAFETY: pidfd_open takes a pid and flags; the runner is our child.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, runner_pid, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pidfd_open returned a new descriptor we own.
        let runner_fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        // The container exists once the runtime wrote its pid (or the runtime failed).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let pid = loop {
            if let Ok(s) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = s.trim().parse::<i32>()
            {
                break pid;
            }
            // SAFETY: siginfo_t is plain data; zeroed is valid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child, without reaping (WNOWAIT), not blocking.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    runner_fd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: reading the pid the kernel filled in (0 while still running).
            if r == 0 && unsafe { info.si_pid() } != 0 {
                // SAFETY: reap it now; its failure is the container's.
                unsafe {
                    libc::waitid(
                        libc::P_PIDFD,
                        runner_fd.as_raw_fd() as libc::id_t,
                        &mut info,
                        libc::WEXITED,
                    )
                };
                let detail = std::fs::read_to_string(&log).unwrap_or_default();
                let last = detail.lines().last().unwrap_or("").to_string();
                return Err(std::io::Error::other(format!(
                    "{} run failed: {last}",
                    bin.display()
                )));
            }
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{} wrote no pid in 10 s",
                    bin.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        // The node's cgroup2 subtree (socket load balancing) is not the runtime's business.
        for procs in &spec.cgroup_procs {
            if procs.starts_with("/sys/fs/cgroup/unified") {
                let _ = std::fs::write(procs, pid.to_string());
            }
        }
        // SAFETY: pidfd_open takes a pid and flags.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pidfd_open returned a new descriptor we own.
        let for_agent = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        drop(err_w);
        let key = self.next;
        self.next += 1;
        // SAFETY: siginfo_t is plain data; zeroed is valid.
        let mut info: Box<libc::siginfo_t> = Box::new(unsafe { std::mem::zeroed() });
        let entry = opcode::WaitId::new(
            libc::P_PIDFD,
            runner_fd.as_raw_fd() as libc::id_t,
            libc::WEXITED,
        )
        .infop(&mut *info as *mut libc::siginfo_t)
        .build()
        .user_data(TAG_CHILD | key);
        let mut kept = Vec::new();
        let mut fds = fds;
        for i in spec.keep.iter().rev() {
            if *i < fds.len() {
                kept.push(fds.remove(*i));
            }
        }
        kept.reverse();
        self.children.insert(
            key,
            Child {
                id: spec.id.clone(),
                pid,
                pidfd: runner_fd,
                target: Some(for_agent.try_clone()?),
                owner: Some(conn),
                info,
                kept,
                oci: Some((bin.clone(), root, spec.id.clone())),
            },
        );
        self.push(entry)?;
        Ok((pid, for_agent, err_r))
    }

    fn reaped(&mut self, key: u64, res: i32) {
        let Some(child) = self.children.remove(&key) else {
            return;
        };
        if let Some((bin, root, id)) = &child.oci {
            let _ = super::oci::command(bin, root)
                .args(["delete", "-f", id])
                .status();
        }
        let status = if res < 0 {
            eprintln!(
                "skiff spawner: waitid({}) failed: {}",
                child.pid,
                std::io::Error::from_raw_os_error(-res)
            );
            ExitStatus::Signaled(libc::SIGKILL)
        } else {
            // SAFETY: the kernel filled this siginfo for a CLD_* event.
            let (code, st) = unsafe { (child.info.si_code, child.info.si_status()) };
            if code == libc::CLD_EXITED {
                ExitStatus::Exited(st)
            } else {
                ExitStatus::Signaled(st)
            }
        };
        let msg = Reply::Exited {
            id: child.id.clone(),
            status,
        };
        match child.owner {
            Some(conn) if self.conns.contains_key(&conn) => self.reply(conn, &msg, &[]),
            _ => self.unclaimed.push((child.id, status)),
        }
    }
}
