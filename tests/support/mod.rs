//! Runs the real `skiff` binary: a server process on a free loopback port over a temp data
//! dir, and CLI invocations against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

pub struct Server {
    pub child: Child,
    pub address: String,
    pub dir: PathBuf,
}

impl Server {
    /// Starts `skiff server` on `dir` (the API alone: no scheduler or controllers, so
    /// what the CLI prints does not race them) and waits for it to listen.
    pub fn start(dir: &Path) -> Server {
        let mut child = Command::new(SKIFF)
            .args([
                "server",
                "--no-scheduler",
                "--no-controllers",
                "--no-write-config",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir)
            .env("SKIFF_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skiff server");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let address = loop {
            assert!(Instant::now() < deadline, "server did not start");
            let line = lines.next().expect("server output").expect("utf8");
            if let Some(rest) = line.strip_prefix("skiff server listening on ") {
                break rest.split_whitespace().next().expect("address").to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server {
            child,
            address,
            dir: dir.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `skiff <args>` against this server; `stdin` is fed if given.
    pub fn skiff(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_skiff(
            &self.address,
            Some(&self.dir.join("client-config")),
            args,
            stdin,
        )
    }
}

/// Runs `skiff --server <address> <args>` (with its client config at `config`, when
/// given); `stdin` is fed if given, else it reads /dev/null.
pub fn run_skiff(
    address: &str,
    config: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut cmd = Command::new(SKIFF);
    cmd.arg("--server").arg(address).args(args);
    if let Some(config) = config {
        cmd.env("SKIFF_CONFIG", config);
    }
    cmd.env("SKIFF_LOG", "error");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn skiff");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("skiff output")
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// stdout and stderr of a run, with its exit code, as one text for golden comparison.
pub fn transcript(out: &Output) -> String {
    let mut t = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        t.push_str("[stderr]\n");
        t.push_str(&err);
    }
    t.push_str(&format!("[exit {}]\n", out.status.code().unwrap_or(-1)));
    t
}
