//! Starts a real etcd server (Debian's `etcd-server`) on free loopback ports with its own
//! data directory, for tests and benchmarks; stops it and removes the directory on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd process.
pub struct EtcdServer {
    child: Child,
    data_dir: PathBuf,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd (durable, default settings) and waits until it answers.
    pub fn start() -> std::io::Result<Self> {
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "etcd not found: install Debian's etcd-server (cargo xtask setup)",
                )
            })?;
        let client = free_port()?;
        let peer = free_port()?;
        let data_dir =
            std::env::temp_dir().join(format!("skiff-etcd-{}-{}", std::process::id(), client));
        let _ = std::fs::remove_dir_all(&data_dir);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(binary)
            .args(["--name", "skiff-test", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("skiff-test={peer_url}")])
            .args(["--log-level", "error"])
            .env("ETCD_UNSUPPORTED_ARCH", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = EtcdServer {
            child,
            data_dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "etcd exited at start: {status}"
                )));
            }
            if healthy(client) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "etcd did not become healthy within 20 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id (benchmarks read its RSS).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// etcd's `/health` endpoint answers `{"health":"true"}` once it serves requests.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
