//! Benchmarks of the control plane, each run against its peer on the same machine in the
//! same invocation and reported as a ratio: durable writes and API latency against etcd
//! (through etcd-client, the way kube-apiserver writes), watch fan-out against etcd watches.
//!
//! The Skiff side is always the real `skiff server` binary in its own process, as etcd is.
//! The data-plane benchmarks (`dataplane`) run Skiff's eBPF programs and kube-proxy's
//! iptables rules in the same network namespaces, one after the other.

pub mod cluster;
pub mod containers;
pub mod control;
pub mod dataplane;
pub mod pods;
pub mod report;
pub mod scheduling;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Size of a benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Seconds: what the test suite runs so no benchmark rots.
    Quick,
    /// The published numbers.
    Full,
}

/// Set by full benchmark runs: figures must come from the release build.
static RELEASE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on [`skiff_bin`] gives the release build (or `$SKIFF_BIN`), never a debug one:
/// a full run measured against a debug server would publish void figures.
pub fn require_release_build() {
    RELEASE_ONLY.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Finds the `skiff` binary: `$SKIFF_BIN`, else the newest of the release and debug builds
/// in the target dir (only the release one after [`require_release_build`]).
pub fn skiff_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SKIFF_BIN") {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    if RELEASE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        let release = target.join("release").join("skiff");
        if release.exists() {
            return Ok(release);
        }
        bail!(
            "a full benchmark run needs the release build: cargo build --release --bin skiff \
             (or set SKIFF_BIN)"
        );
    }
    // The newest build: the one the test run or the bench just made.
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("skiff"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    if let Some((_, p)) = newest {
        return Ok(p);
    }
    bail!(
        "the skiff binary is not built (cargo build --release --bin skiff) and SKIFF_BIN is not set"
    )
}

/// A `skiff server` process on a free loopback port over a temp data dir.
pub struct SkiffServer {
    child: Child,
    pub address: String,
    _dir: tempdir::Dir,
}

pub(crate) mod tempdir {
    /// A temp directory removed on drop (kept dependency-free).
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        /// A new, empty directory under the temp dir, unique to this call (process, counter
        /// and clock: a directory a killed earlier process with the same pid left is not
        /// reused).
        pub fn new(prefix: &str) -> std::io::Result<Dir> {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let d = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir(&d)?;
            Ok(Dir(d))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Reads a starting `skiff server`'s stderr until it says where it listens (30 s at most).
pub(crate) fn server_address(lines: &mut std::io::Lines<impl BufRead>) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            bail!("skiff server did not start");
        }
        let Some(line) = lines.next() else {
            bail!("skiff server exited at start")
        };
        if let Some(rest) = line?.strip_prefix("skiff server listening on ") {
            return Ok(rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string());
        }
    }
}

impl SkiffServer {
    pub fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempdir::Dir::new("skiff-bench")?;
        let mut child = Command::new(skiff_bin()?)
            .args([
                "server",
                "--no-write-config",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir.0)
            .args(extra)
            .env("SKIFF_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting skiff server")?;
        let stderr = child.stderr.take().context("server stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let address = server_address(&mut lines)?;
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(SkiffServer {
            child,
            address,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SkiffServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set of `pid` once it stops moving: sampled every 100 ms until three
/// samples in a row agree within 16 KiB (or 5 s pass), so that a sample is not taken in
/// the middle of work the process is still finishing; both peers' memory is read this
/// way. (It did not narrow Skiff's idle-watcher spread: that comes from elsewhere.)
pub async fn settled_rss_bytes(pid: u32) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut last = rss_bytes(pid);
    let mut agreeing = 1;
    while agreeing < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = rss_bytes(pid);
        agreeing = if now.abs_diff(last) <= 16 << 10 {
            agreeing + 1
        } else {
            1
        };
        last = now;
    }
    last
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU time a process's live threads have run so far (from each thread's `schedstat`).
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Waits (up to 15 s) until the machine is quiet: less than 10% of its CPU time busy over
/// 100 ms. Latency measurements start from there, so the kernel's asynchronous clean-up of
/// an earlier run (a namespace with 10,000 services' rules going away) does not land in
/// the next run's figures, whichever peer that is.
pub fn settle() {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Ok(a) = cpu_stat(None) else { return };
        std::thread::sleep(Duration::from_millis(100));
        let Ok(b) = cpu_stat(None) else { return };
        if (b.busy - a.busy) * 10 < (b.total - a.total).max(1) {
            return;
        }
    }
}

/// CPU time from `/proc/stat`, in jiffies (USER_HZ, 10 ms on Linux).
#[derive(Debug, Clone, Copy)]
pub struct CpuStat {
    /// Everything but idle and iowait.
    pub busy: u64,
    pub total: u64,
    /// Softirq time (sampled at ticks on a kernel without IRQ time accounting).
    pub softirq: u64,
    /// Time in the kernel: system calls, interrupts and softirqs.
    pub kernel: u64,
}

/// The whole machine's CPU time (`cpu` None) or one CPU's.
pub fn cpu_stat(cpu: Option<usize>) -> anyhow::Result<CpuStat> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = cpu.map_or_else(|| "cpu".to_string(), |c| format!("cpu{c}"));
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no {name} line"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok(CpuStat {
        busy: total - idle,
        total,
        softirq: v.get(6).copied().unwrap_or(0),
        kernel: [2, 5, 6].iter().filter_map(|&i| v.get(i)).sum(),
    })
}

/// The median of some runs.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One line describing this machine for the results table.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores {cpu}, Linux {}", kernel.trim())
}
