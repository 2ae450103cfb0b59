//! The agent's side of the spawner socket: create containers, learn of their exits,
//! signal them through their pidfds. One [`Runtime`] per executor thread (each has its own
//! connection, so no lock is shared across cores on the start path).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::spawner::{MAX_MESSAGE, Reply, Request, connect_seqpacket, recv, send};
use super::{ContainerSpec, ExitStatus, RuntimeError};

type Created = Result<(i32, OwnedFd, OwnedFd), RuntimeError>;
type AdoptReply = (
    Vec<(String, i32, OwnedFd, Vec<OwnedFd>)>,
    Vec<(String, ExitStatus)>,
);

#[derive(Default)]
struct Waiters {
    creates: HashMap<String, oneshot::Sender<Created>>,
    exits: HashMap<String, oneshot::Sender<ExitStatus>>,
    adopt: Option<oneshot::Sender<AdoptReply>>,
    sandboxes: HashMap<String, oneshot::Sender<SandboxReply>>,
    closed: Option<String>,
}

type SandboxReply = Result<Option<[PathBuf; 3]>, String>;

/// Registers a descriptor with the tokio reactor.
fn register(fd: OwnedFd, interest: Interest) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and keeps referring to the same description for as long
    // as the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// A connection to the spawner.
#[derive(Clone)]
pub struct Runtime {
    sock: Arc<AsyncFd<OwnedFd>>,
    waiters: Arc<Mutex<Waiters>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

fn lock(w: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    /// Connects to the spawner at `socket`; must run inside a tokio runtime (a reader task
    /// is spawned on it).
    pub fn connect(socket: &Path) -> Result<Runtime, RuntimeError> {
        let fd = connect_seqpacket(socket)
            .map_err(|e| RuntimeError::io(format!("connecting to {}", socket.display()), e))?;
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| RuntimeError::io("spawner socket", e.into()))?;
        let sock = Arc::new(
            register(fd, Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| RuntimeError::io("spawner socket", e))?,
        );
        let rt = Runtime {
            sock,
            waiters: Arc::default(),
        };
        let reader = rt.clone();
        tokio::spawn(async move { reader.read_loop().await });
        Ok(rt)
    }

    async fn read_loop(self) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let why = loop {
            let mut guard = match self.sock.readable().await {
                Ok(g) => g,
                Err(e) => break e.to_string(),
            };
            match guard.try_io(|s| recv::<Reply>(s.as_raw_fd(), &mut buf)) {
                Err(_would_block) => continue,
                Ok(Ok(Some((reply, fds)))) => self.dispatch(reply, fds),
                Ok(Ok(None)) => break "the spawner closed the connection".to_string(),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => break e.to_string(),
            }
        };
        let mut w = lock(&self.waiters);
        w.closed = Some(why.clone());
        for (_, tx) in w.creates.drain() {
            let _ = tx.send(Err(RuntimeError::Spawner(why.clone())));
        }
        w.exits.clear();
        w.adopt = None;
        for (_, tx) in w.sandboxes.drain() {
            let _ = tx.send(Err(why.clone()));
        }
    }

    fn dispatch(&self, reply: Reply, fds: Vec<OwnedFd>) {
        let mut w = lock(&self.waiters);
        match reply {
            Reply::Created { id, pid } => {
                let mut fds = fds.into_iter();
                let r = match (fds.next(), fds.next()) {
                    (Some(pidfd), Some(errpipe)) => Ok((pid, pidfd, errpipe)),
                    _ => Err(RuntimeError::Spawner("reply without descriptors".into())),
                };
                if let Some(tx) = w.creates.remove(&id) {
                    let _ = tx.send(r);
                }
            }
            Reply::Failed { id, error } => {
                w.exits.remove(&id);
                if let Some(tx) = w.creates.remove(&id) {
                    let _ = tx.send(Err(RuntimeError::Create(error)));
                }
            }
            Reply::Exited { id, status } => {
                if let Some(tx) = w.exits.remove(&id) {
                    let _ = tx.send(status);
                }
            }
            Reply::Adopted { live, exited } => {
                let mut fds = fds.into_iter();
                let live = live
                    .into_iter()
                    .filter_map(|(id, pid, n)| {
                        let pidfd = fds.next()?;
                        let kept = fds.by_ref().take(n).collect();
                        Some((id, pid, pidfd, kept))
                    })
                    .collect();
                if let Some(tx) = w.adopt.take() {
                    let _ = tx.send((live, exited));
                }
            }
            Reply::Sandbox { pod, result } => {
                if let Some(tx) = w.sandboxes.remove(&pod) {
                    let _ = tx.send(result);
                }
            }
        }
    }

    async fn send(&self, req: &Request, fds: &[RawFd]) -> Result<(), RuntimeError> {
        loop {
            let mut guard = self
                .sock
                .writable()
                .await
                .map_err(|e| RuntimeError::io("spawner socket", e))?;
            match guard.try_io(|s| send(s.as_raw_fd(), req, fds)) {
                Err(_would_block) => continue,
                Ok(r) => return r.map_err(|e| RuntimeError::io("sending to the spawner", e)),
            }
        }
    }

    /// Creates and starts a container. `stdio` holds the descriptors the spec's
    /// `stdin`/`stdout`/`stderr` indices refer to. Returns once the process exists; call
    /// [`Container::started`] to learn whether its program was executed.
    pub async fn create(
        &self,
        spec: &ContainerSpec,
        stdio: &[BorrowedFd<'_>],
    ) -> Result<Container, RuntimeError> {
        let (ctx, crx) = oneshot::channel();
        let (etx, erx) = oneshot::channel();
        {
            let mut w = lock(&self.waiters);
            if let Some(why) = &w.closed {
                return Err(RuntimeError::Spawner(why.clone()));
            }
            w.creates.insert(spec.id.clone(), ctx);
            w.exits.insert(spec.id.clone(), etx);
        }
        let raw: Vec<RawFd> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = self
            .send(&Request::Create(Box::new(spec.clone())), &raw)
            .await
        {
            let mut w = lock(&self.waiters);
            w.creates.remove(&spec.id);
            w.exits.remove(&spec.id);
            return Err(e);
        }
        let (pid, pidfd, errpipe) = crx
            .await
            .map_err(|_| RuntimeError::Spawner("connection closed".into()))??;
        Ok(Container {
            id: spec.id.clone(),
            pid,
            pidfd,
            errpipe: Some(errpipe),
            exit: Some(erx),
            status: None,
            kept: Vec::new(),
        })
    }

    /// The namespaces (net, ipc, uts) the spawner holds for `pod`, created (with the UTS
    /// namespace named `hostname`) unless `find_only`. They stay until
    /// [`Runtime::release_sandbox`], across agent restarts.
    pub async fn sandbox(
        &self,
        pod: &str,
        hostname: &str,
        find_only: bool,
    ) -> Result<Option<[PathBuf; 3]>, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut w = lock(&self.waiters);
            if let Some(why) = &w.closed {
                return Err(RuntimeError::Spawner(why.clone()));
            }
            w.sandboxes.insert(pod.to_string(), tx);
        }
        let req = Request::Sandbox {
            pod: pod.to_string(),
            hostname: hostname.to_string(),
            find_only,
        };
        if let Err(e) = self.send(&req, &[]).await {
            lock(&self.waiters).sandboxes.remove(pod);
            return Err(e);
        }
        rx.await
            .map_err(|_| RuntimeError::Spawner("connection closed".into()))?
            .map_err(RuntimeError::Create)
    }

    /// Lets go of `pod`'s namespaces; they end with the last process in them.
    pub async fn release_sandbox(&self, pod: &str) -> Result<(), RuntimeError> {
        self.send(&Request::ReleaseSandbox(pod.to_string()), &[])
            .await
    }

    /// Takes over containers a previous agent started (by id); returns the ones still
    /// running and the exit status of those that ended meanwhile.
    pub async fn adopt(
        &self,
        ids: Vec<String>,
    ) -> Result<(Vec<Container>, Vec<(String, ExitStatus)>), RuntimeError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).adopt = Some(tx);
        // Register exit waiters before asking, so no exit can slip between.
        let mut erxs = HashMap::new();
        {
            let mut w = lock(&self.waiters);
            for id in &ids {
                let (etx, erx) = oneshot::channel();
                w.exits.insert(id.clone(), etx);
                erxs.insert(id.clone(), erx);
            }
        }
        self.send(&Request::Adopt(ids), &[]).await?;
        let (live, exited) = rx
            .await
            .map_err(|_| RuntimeError::Spawner("connection closed".into()))?;
        let mut w = lock(&self.waiters);
        let containers = live
            .into_iter()
            .filter_map(|(id, pid, pidfd, kept)| {
                let erx = erxs.remove(&id)?;
                Some(Container {
                    id,
                    pid,
                    pidfd,
                    errpipe: None,
                    exit: Some(erx),
                    status: None,
                    kept,
                })
            })
            .collect();
        for id in erxs.keys() {
            w.exits.remove(id);
        }
        Ok((containers, exited))
    }
}

/// A container process.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// Its pid in the agent's pid namespace.
    pub pid: i32,
    pidfd: OwnedFd,
    errpipe: Option<OwnedFd>,
    exit: Option<oneshot::Receiver<ExitStatus>>,
    status: Option<ExitStatus>,
    kept: Vec<OwnedFd>,
}

impl Container {
    /// The descriptors the spawner kept for this container (an adopted one's log pipes).
    pub fn take_kept(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.kept)
    }

    /// The exit notification, for a task of its own (then [`Container::wait`] is no
    /// longer available).
    pub fn take_exit(&mut self) -> Option<oneshot::Receiver<ExitStatus>> {
        self.exit.take()
    }

    /// Waits until the program was executed (`Ok`) or the container failed before
    /// (`Err` with `CreateContainerError` or `RunContainerError` as its reason).
    pub async fn started(&mut self) -> Result<(), RuntimeError> {
        let Some(pipe) = self.errpipe.take() else {
            return Ok(());
        };
        nix::fcntl::fcntl(
            &pipe,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| RuntimeError::io("error pipe", e.into()))?;
        let pipe =
            register(pipe, Interest::READABLE).map_err(|e| RuntimeError::io("error pipe", e))?;
        let mut msg = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = pipe
                .readable()
                .await
                .map_err(|e| RuntimeError::io("error pipe", e))?;
            match guard
                .try_io(|p| nix::unistd::read(p.get_ref(), &mut buf).map_err(std::io::Error::from))
            {
                Err(_would_block) => continue,
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => msg.extend_from_slice(&buf[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(RuntimeError::io("error pipe", e)),
            }
        }
        match msg.split_first() {
            None => Ok(()),
            Some((b'E', rest)) => Err(RuntimeError::Exec(String::from_utf8_lossy(rest).into())),
            Some((_, rest)) => Err(RuntimeError::Create(String::from_utf8_lossy(rest).into())),
        }
    }

    /// Sends a signal through the pidfd (never to a recycled pid).
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with our pidfd and no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // Already gone (exited, not yet reaped or reaped): nothing to signal.
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Waits for the process to end (reaped by the spawner).
    pub async fn wait(&mut self) -> Result<ExitStatus, RuntimeError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let rx = self
            .exit
            .as_mut()
            .ok_or_else(|| RuntimeError::Spawner("exit already observed".into()))?;
        // By reference: a caller's timeout that drops this future loses nothing.
        let s = rx
            .await
            .map_err(|_| RuntimeError::Spawner("spawner connection lost".into()))?;
        self.exit = None;
        self.status = Some(s);
        Ok(s)
    }

    /// The exit status, if it has been observed.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(rx) = self.exit.as_mut()
            && let Ok(s) = rx.try_recv()
        {
            self.status = Some(s);
            self.exit = None;
        }
        self.status
    }

    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}
