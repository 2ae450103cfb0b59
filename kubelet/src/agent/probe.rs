//! Probes and lifecycle handlers: exec (inside the container, through the spawner),
//! httpGet and tcpSocket (from the node to the pod's IP, as the kubelet probes; from
//! inside the pod's network namespace to 127.0.0.1 on a node without pod networking).
//!
//! Kubernetes' defaults: initialDelaySeconds 0, periodSeconds 10, timeoutSeconds 1,
//! successThreshold 1, failureThreshold 3; an httpGet succeeds on a status from 200 to
//! 399.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container as K8sContainer, ExecAction, HTTPGetAction, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::proto::ExecOutput;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::ContainerSpec;
use crate::runtime::client::Runtime;

/// The three kinds of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Where a probe or hook runs.
#[derive(Clone)]
pub struct Target {
    pub runtime: Runtime,
    /// The container's process (for exec).
    pub pid: i32,
    /// Identity, capabilities, env and cgroups of exec'd commands.
    pub exec_template: ContainerSpec,
    pub pod_ip: Option<Ipv4Addr>,
    /// The pod's network namespace (probes from inside it when there is no pod IP).
    pub netns: Option<PathBuf>,
    /// The node's network namespace when the agent does not run in it: probes to the pod
    /// IP leave from there, as they would from the node.
    pub node_netns: Option<PathBuf>,
    pub container: K8sContainer,
}

/// The settings of a probe with Kubernetes' defaults applied.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(p: &Probe) -> Timing {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// A handler: what a probe or a lifecycle hook does.
pub enum Handler<'a> {
    Exec(&'a ExecAction),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
}

pub fn probe_handler(p: &Probe) -> Option<Handler<'_>> {
    if let Some(e) = &p.exec {
        Some(Handler::Exec(e))
    } else if let Some(h) = &p.http_get {
        Some(Handler::Http(h))
    } else {
        p.tcp_socket.as_ref().map(Handler::Tcp)
    }
}

fn port(target: &Target, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => target
            .container
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// Runs a handler once within `timeout`; `Err` carries the failure as the kubelet words it.
pub async fn run(target: &Target, handler: &Handler<'_>, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_inner(target, handler)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {}s", timeout.as_secs())),
    }
}

async fn run_inner(target: &Target, handler: &Handler<'_>) -> Result<(), String> {
    match handler {
        Handler::Exec(e) => {
            let argv = e.command.clone().unwrap_or_default();
            let (code, output) = exec(target, &argv).await?;
            if code == 0 {
                Ok(())
            } else {
                Err(format!(
                    "command {argv:?} exited with {code}: {}",
                    output.trim_end()
                ))
            }
        }
        Handler::Http(h) => {
            let port = port(target, &h.port)?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let scheme = h.scheme.as_deref().unwrap_or("HTTP");
            if scheme != "HTTP" {
                return Err(format!("scheme {scheme} is not supported (HTTP only)"));
            }
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n"
            );
            let mut has_host = false;
            for hd in h.http_headers.iter().flatten() {
                has_host |= hd.name.eq_ignore_ascii_case("host");
                req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
            }
            let host_ip = h.host.clone();
            let req_host = move |ip: &str| {
                if has_host {
                    String::new()
                } else {
                    format!("Host: {ip}:{port}\r\n")
                }
            };
            let status = connect_and(target, host_ip, port, move |ip, mut s| {
                let req = format!("{req}{}\r\n", req_host(&ip));
                async move {
                    s.write_all(req.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut buf = vec![0u8; 256];
                    let mut got = 0;
                    while got < 12 {
                        let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let line = String::from_utf8_lossy(&buf[..got]).to_string();
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse::<u16>().ok())
                        .ok_or_else(|| {
                            format!("bad HTTP response {:?}", line.lines().next().unwrap_or(""))
                        })
                }
            })
            .await?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            }
        }
        Handler::Tcp(t) => {
            let port = port(target, &t.port)?;
            connect_and(target, t.host.clone(), port, |_, _| async { Ok(()) }).await
        }
    }
}

/// Connects to the pod (or `host`) and hands the stream to `f`.
async fn connect_and<T, F, Fut>(
    target: &Target,
    host: Option<String>,
    port: u16,
    f: F,
) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(String, tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send,
{
    let explicit = host.filter(|h| !h.is_empty());
    match (explicit, target.pod_ip, &target.netns) {
        (Some(h), _, _) => {
            let s = tokio::net::TcpStream::connect((h.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            f(h, s).await
        }
        (None, Some(ip), _) => {
            let addr = SocketAddr::new(IpAddr::V4(ip), port);
            match &target.node_netns {
                Some(node) => in_netns(node, addr, f).await,
                None => {
                    let s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
                    f(ip.to_string(), s).await
                }
            }
        }
        (None, None, Some(netns)) => {
            // No pod IP on this node: probe from inside the pod's network namespace.
            in_netns(netns, SocketAddr::from(([127, 0, 0, 1], port)), f).await
        }
        (None, None, None) => Err("the pod has no network to probe".into()),
    }
}

/// Connects to `addr` from inside the network namespace at `netns` (on a thread of its
/// own) and runs `f` there.
async fn in_netns<T, F, Fut>(netns: &std::path::Path, addr: SocketAddr, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(String, tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send,
{
    let ns = skiff_dataplane::netns::Netns::open(netns).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        ns.block_on(async move {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("dial tcp {addr}: {e}"))?;
            f(addr.ip().to_string(), s).await
        })
        .map_err(|e| e.to_string())?
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Runs `argv` inside the container; returns its exit code and its output (first 10 KiB).
pub async fn exec(target: &Target, argv: &[String]) -> Result<(i32, String), String> {
    exec_limited(target, argv, 10 * 1024).await
}

/// A command run in the target container's namespaces with its identity and limits:
/// stdout is the first passed descriptor, stderr and stdin the ones given (by index).
fn exec_spec(
    target: &Target,
    argv: &[String],
    stderr: Option<usize>,
    stdin: Option<usize>,
) -> ContainerSpec {
    let mut spec = target.exec_template.clone();
    spec.id = format!("{}-exec-{}", spec.id, uuid_suffix());
    spec.argv = argv.to_vec();
    spec.exec_in = Some(target.pid);
    spec.stdout = Some(0);
    spec.stderr = stderr;
    spec.stdin = stdin;
    spec.tty = false;
    spec.keep = Vec::new();
    spec
}

/// [`exec`] keeping up to `limit` bytes of output.
pub async fn exec_limited(
    target: &Target,
    argv: &[String],
    limit: u64,
) -> Result<(i32, String), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let spec = exec_spec(target, argv, Some(0), None);
    let mut c = target
        .runtime
        .create(&spec, &[std::os::fd::AsFd::as_fd(&w)])
        .await
        .map_err(|e| e.to_string())?;
    drop(w);
    let reader = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut f = std::fs::File::from(r);
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, limit), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    if let Err(e) = c.started().await {
        let _ = c.wait().await;
        return Err(e.to_string());
    }
    let status = c.wait().await.map_err(|e| e.to_string())?;
    let out = reader.await.unwrap_or_default();
    Ok((status.code(), out))
}

/// Runs `call` in the target container (`kubectl exec`), streaming its output into `out`
/// as it writes it (stdout and stderr apart, or the terminal's output with a tty), then its
/// exit code. The channel is bounded: a reader that falls behind holds the command's writes
/// back, and one that goes away closes its output.
pub async fn exec_streaming(
    target: &Target,
    call: super::server::ExecCall,
    out: super::server::ExecReply,
) {
    let run = async {
        let ExecParts {
            spec,
            fds,
            feed,
            pumps,
        } = match call.tty {
            None => exec_on_pipes(target, call)?,
            Some(size) => exec_on_terminal(target, call, size)?,
        };
        let mut c = target
            .runtime
            .create(&spec, &fds.iter().map(|f| f.as_fd()).collect::<Vec<_>>())
            .await
            .map_err(|e| e.to_string())?;
        // The command's ends of its pipes or terminal are the command's alone now: the
        // readers see their end when it (and whatever it started) is gone.
        drop(fds);
        if let Some(feed) = feed {
            tokio::task::spawn_blocking(feed);
        }
        let pumps: Vec<_> = pumps
            .into_iter()
            .map(|(r, stream)| {
                let out = out.clone();
                tokio::task::spawn_blocking(move || pump(r, stream, &out))
            })
            .collect();
        if let Err(e) = c.started().await {
            let _ = c.wait().await;
            return Err(e.to_string());
        }
        let status = c.wait().await.map_err(|e| e.to_string())?;
        for p in pumps {
            let _ = p.await;
        }
        Ok(status.code())
    };
    let last = run.await.map(|code| ExecOutput {
        done: true,
        exit_code: code,
        ..Default::default()
    });
    let _ = out.send(last).await;
}

/// An exec ready to create.
struct ExecParts {
    spec: ContainerSpec,
    /// The command's ends, sent with the spec.
    fds: Vec<OwnedFd>,
    /// What feeds its input, run on a blocking thread.
    feed: Option<Box<dyn FnOnce() + Send>>,
    /// The readers of its output, with their stream numbers.
    pumps: Vec<(OwnedFd, i32)>,
}

/// Without a terminal: stdout and stderr through a pipe each, stdin through a third when
/// asked for (the end of the input closes it).
fn exec_on_pipes(target: &Target, call: super::server::ExecCall) -> Result<ExecParts, String> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string());
    let ((out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?);
    let mut fds = vec![out_w, err_w];
    let mut feed: Option<Box<dyn FnOnce() + Send>> = None;
    let stdin = match call.input.filter(|_| call.stdin) {
        Some(mut rx) => {
            let (r, w) = pipe()?;
            fds.push(r);
            feed = Some(Box::new(move || {
                let mut w = std::fs::File::from(w);
                while let Some(m) = rx.blocking_recv() {
                    if std::io::Write::write_all(&mut w, &m.stdin).is_err() {
                        break;
                    }
                }
            }));
            Some(2)
        }
        None => None,
    };
    let spec = exec_spec(target, &call.command, Some(1), stdin);
    Ok(ExecParts {
        spec,
        fds,
        feed,
        pumps: vec![(out_r, 1), (err_r, 2)],
    })
}

/// On a pseudo-terminal of `size`: the command's stdin, stdout and stderr are its far end
/// (and its controlling terminal); the input's sizes resize it, its stdin chunks are typed
/// into it; everything the command writes comes back as stream 1.
fn exec_on_terminal(
    target: &Target,
    call: super::server::ExecCall,
    size: skiff_api::proto::TerminalSize,
) -> Result<ExecParts, String> {
    let ws = winsize(&size);
    let (master, slave) =
        crate::runtime::pty(Some((ws.ws_row, ws.ws_col))).map_err(|e| e.to_string())?;
    let reader = master.try_clone().map_err(|e| e.to_string())?;
    let mut feed: Option<Box<dyn FnOnce() + Send>> = None;
    if let Some(mut rx) = call.input {
        let stdin = call.stdin;
        feed = Some(Box::new(move || {
            let mut w = std::fs::File::from(master);
            while let Some(m) = rx.blocking_recv() {
                if let Some(size) = m.resize {
                    let ws = winsize(&size);
                    // SAFETY: TIOCSWINSZ reads one winsize, which lives across the call.
                    unsafe { libc::ioctl(w.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
                if stdin
                    && !m.stdin.is_empty()
                    && std::io::Write::write_all(&mut w, &m.stdin).is_err()
                {
                    break;
                }
            }
        }));
    }
    let mut spec = exec_spec(target, &call.command, Some(0), Some(0));
    spec.tty = true;
    Ok(ExecParts {
        spec,
        fds: vec![slave],
        feed,
        pumps: vec![(reader, 1)],
    })
}

fn winsize(size: &skiff_api::proto::TerminalSize) -> libc::winsize {
    let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
    libc::winsize {
        ws_row: clamp(size.height),
        ws_col: clamp(size.width),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Copies one of an exec's pipes into its output channel until the end of the pipe or of
/// the channel.
fn pump(r: OwnedFd, stream: i32, out: &super::server::ExecReply) {
    let mut f = std::fs::File::from(r);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let chunk = ExecOutput {
                    output: bytes::Bytes::copy_from_slice(&buf[..n]),
                    stream,
                    ..Default::default()
                };
                if out.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
