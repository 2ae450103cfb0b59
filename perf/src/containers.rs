//! Container create+start+delete: Skiff's spawner against crun and runc (Debian's), on
//! the same busybox rootfs, in the same run, one after the other for each container.
//!
//! Every runtime does the same work for a `/bin/true` container: new pid, mount, network,
//! IPC and UTS namespaces; cgroups with memory, cpu and pids limits (v1 on this machine);
//! proc, a tmpfs /dev with devpts, shm and mqueue, read-only sysfs; masked and read-only
//! kernel paths; Kubernetes' default capabilities; no_new_privs; the same seccomp
//! deny-list; then the program runs and exits and everything is removed. Skiff also mounts
//! an overlayfs (the rootfs is an image layer it must not write); crun and runc get the
//! directory itself as a read-only root. The peers run as `crun run` / `runc run` (create,
//! start, wait, delete in one invocation: their cheapest way).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use skiff_kubelet::runtime::cgroup::{Cgroup, Hierarchy, Resources};
use skiff_kubelet::runtime::client::Runtime;
use skiff_kubelet::runtime::{ContainerSpec, DEFAULT_CAPABILITIES, ExitStatus};

use crate::report::Measurement;
use crate::{Mode, tempdir};

const MEMORY_LIMIT: u64 = 64 << 20;
const PIDS_LIMIT: u64 = 1024;

/// Writes the busybox rootfs (with the mount points an OCI runtime needs) into `dir`.
pub fn busybox_rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let layer = skiff_kubelet::image::build::busybox_layer(Path::new("/bin/busybox"))?;
    skiff_kubelet::image::layer::unpack(&layer[..], &rootfs)?;
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    Ok(rootfs)
}

/// The `/bin/true` container both sides run: Skiff's spec, and the same spec as an OCI
/// bundle (the node agent's own translation) with the same limits for the peers.
fn true_spec(rootfs: &Path) -> ContainerSpec {
    ContainerSpec {
        layers: vec![rootfs.to_path_buf()],
        argv: vec!["/bin/true".into()],
        env: vec!["PATH=/bin".into()],
        capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        hostname: "bench".into(),
        seccomp: true,
        ..Default::default()
    }
}

fn oci_config(rootfs: &Path, cgroups_path: &str) -> serde_json::Value {
    let spec = ContainerSpec {
        readonly_rootfs: true,
        ..true_spec(rootfs)
    };
    let mut cfg = skiff_kubelet::runtime::oci::config(&spec, rootfs, cgroups_path);
    cfg["linux"]["resources"] = json!({
        "memory": {"limit": MEMORY_LIMIT},
        "cpu": {"shares": 1024},
        "pids": {"limit": PIDS_LIMIT}
    });
    cfg
}

fn which(bin: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// A peer runtime's state root (`--root`), laid out like Skiff's container directories
/// (the top of unrelated hierarchies): on this machine's ext4 without a journal, a root
/// that shares its block group with recently deleted inodes makes every file the runtime
/// creates slow, which would be the filesystem's cost, not the runtime's.
fn peer_state_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path)?;
    skiff_kubelet::agent::top_of_hierarchies(path);
    Ok(path.to_path_buf())
}

/// One `crun run` / `runc run` of the bundle; its wall time.
fn peer_once(bin: &Path, state: &Path, bundle: &Path, id: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    // In a mount namespace of its own without the cgroup2 mount (crun refuses this
    // machine's "hybrid" cgroups): the unshare and umount are counted in the peer's time.
    let mut cmd = skiff_kubelet::runtime::oci::command(bin, state);
    let out = cmd
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "{} run failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(d)
}

/// `crun run` of a `/bin/true` container on `rootfs`, `n` times; wall times in ms.
pub fn crun_run_times(rootfs: &Path, dir: &Path, n: usize) -> anyhow::Result<Vec<f64>> {
    let Some(bin) = which("crun") else {
        bail!("crun is not installed (cargo xtask setup installs it)");
    };
    let bundle = dir.join("bundle-crun");
    std::fs::create_dir_all(&bundle)?;
    let parent = format!("skiff-bench-{}", std::process::id());
    let config = oci_config(rootfs, &format!("/{parent}/crun-alone"));
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    let state = peer_state_dir(&dir.join("state-crun"))?;
    peer_once(&bin, &state, &bundle, "warm")?;
    let mut out = Vec::new();
    for i in 0..n {
        out.push(peer_once(&bin, &state, &bundle, &format!("alone{i}"))?.as_secs_f64() * 1e3);
    }
    if let Ok(h) = Hierarchy::detect() {
        skiff_kubelet::runtime::cgroup::remove_tree(&h, Path::new(&parent), None);
    }
    Ok(out)
}

/// `n` `crun run`s of the `/bin/true` container started at once (a bundle and a cgroup
/// each, one read-only rootfs); each one's time from the start of the burst to its exit,
/// in ms, in the order they were started.
pub fn crun_burst_times(rootfs: &Path, dir: &Path, n: usize) -> anyhow::Result<Vec<f64>> {
    let Some(bin) = which("crun") else {
        bail!("crun is not installed (cargo xtask setup installs it)");
    };
    let parent = format!("skiff-bench-{}-burst", std::process::id());
    let state = peer_state_dir(&dir.join("state-crun-burst"))?;
    let mut bundles = Vec::with_capacity(n);
    for i in 0..n {
        let bundle = dir.join(format!("burst-{i}"));
        std::fs::create_dir_all(&bundle)?;
        let config = oci_config(rootfs, &format!("/{parent}/b{i}"));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;
        bundles.push(bundle);
    }
    let t = Instant::now();
    let mut waiters = Vec::with_capacity(n);
    for (i, bundle) in bundles.iter().enumerate() {
        let mut child = skiff_kubelet::runtime::oci::command(&bin, &state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(format!("burst{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", bin.display()))?;
        waiters.push(std::thread::spawn(move || {
            child.wait().map(|status| (status, t.elapsed()))
        }));
    }
    let mut out = Vec::with_capacity(n);
    let mut failed = None;
    for w in waiters {
        match w.join() {
            Ok(Ok((status, d))) if status.success() => out.push(d.as_secs_f64() * 1e3),
            Ok(Ok((status, _))) => failed = Some(format!("{} run: {status}", bin.display())),
            Ok(Err(e)) => failed = Some(format!("waiting for {}: {e}", bin.display())),
            Err(_) => failed = Some("a waiting thread panicked".into()),
        }
    }
    if let Ok(h) = Hierarchy::detect() {
        skiff_kubelet::runtime::cgroup::remove_tree(&h, Path::new(&parent), None);
    }
    for b in bundles {
        let _ = std::fs::remove_dir_all(b);
    }
    if let Some(e) = failed {
        bail!("{e}");
    }
    Ok(out)
}

struct SkiffSide {
    runtime: Runtime,
    hierarchy: Hierarchy,
    rootfs: PathBuf,
    dir: PathBuf,
    cgroup_parent: PathBuf,
}

impl SkiffSide {
    /// create + start + wait + delete of one container.
    async fn once(&self, i: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let id = format!("b{i}");
        let run = self.dir.join(&id);
        for d in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(run.join(d))?;
        }
        let cgroup = Cgroup::create(
            &self.hierarchy,
            &self.cgroup_parent.join(&id),
            None,
            &Resources {
                cpu_request_milli: Some(1000),
                memory_limit: Some(MEMORY_LIMIT),
                pids_limit: Some(PIDS_LIMIT),
                ..Default::default()
            },
        )?;
        let spec = ContainerSpec {
            id: id.clone(),
            upper: run.join("upper"),
            work: run.join("work"),
            rootfs: run.join("rootfs"),
            cgroup_procs: cgroup.procs_files(),
            ..true_spec(&self.rootfs)
        };
        let mut c = self.runtime.create(&spec, &[]).await?;
        c.started().await?;
        let st = c.wait().await?;
        cgroup.remove(Duration::from_secs(2))?;
        std::fs::remove_dir_all(&run)?;
        let d = t.elapsed();
        if st != ExitStatus::Exited(0) {
            bail!("skiff container ended {st:?}");
        }
        Ok(d)
    }
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() {
        return 0.0;
    }
    let i = ((xs.len() as f64 - 1.0) * p).round() as usize;
    xs[i.min(xs.len() - 1)]
}

/// Runs the comparison; `spawner` is the socket of a spawner this process started before
/// its threads.
pub fn create_start_delete(mode: Mode, spawner: &Path) -> anyhow::Result<Vec<Measurement>> {
    let rounds = match mode {
        Mode::Quick => 10,
        Mode::Full => 200,
    };
    let dir =
        tempdir::Dir(std::env::temp_dir().join(format!("skiff-bench-ctr-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let rootfs = busybox_rootfs(&dir.0)?;
    let hierarchy = Hierarchy::detect()?;
    let parent = format!("skiff-bench-{}", std::process::id());
    let mut peers: Vec<(&str, PathBuf, PathBuf)> = Vec::new();
    for name in ["crun", "runc"] {
        let Some(bin) = which(name) else {
            bail!("{name} is not installed (cargo xtask setup installs it)");
        };
        let bundle = dir.0.join(format!("bundle-{name}"));
        std::fs::create_dir_all(&bundle)?;
        let config = oci_config(&rootfs, &format!("/{parent}/{name}"));
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        peers.push((name, bin, bundle));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Laid out as the node agent lays out its pods: a directory of container trees marked
    // as the top of unrelated hierarchies.
    let skiff_dir = dir.0.join("skiff");
    std::fs::create_dir_all(&skiff_dir)?;
    skiff_kubelet::agent::top_of_hierarchies(&skiff_dir);
    let side = SkiffSide {
        runtime: rt.block_on(async { Runtime::connect(spawner) })?,
        hierarchy: hierarchy.clone(),
        rootfs: rootfs.clone(),
        dir: skiff_dir,
        cgroup_parent: PathBuf::from(&parent).join("skiff"),
    };
    let mut skiff = Vec::new();
    let mut peer_times: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let result = (|| -> anyhow::Result<()> {
        // Warm-up: page cache, binaries, cgroup parents.
        rt.block_on(side.once(usize::MAX))?;
        for (name, bin, bundle) in &peers {
            peer_once(
                bin,
                &peer_state_dir(&dir.0.join(format!("state-{name}")))?,
                bundle,
                "warm",
            )?;
        }
        for i in 0..rounds {
            skiff.push(rt.block_on(side.once(i))?.as_secs_f64() * 1e3);
            for (k, (name, bin, bundle)) in peers.iter().enumerate() {
                let d = peer_once(
                    bin,
                    &dir.0.join(format!("state-{name}")),
                    bundle,
                    &format!("{name}{i}"),
                )?;
                peer_times[k].push(d.as_secs_f64() * 1e3);
            }
        }
        Ok(())
    })();
    skiff_kubelet::runtime::cgroup::remove_tree(&hierarchy, Path::new(&parent), None);
    result?;
    let mut out = Vec::new();
    for (k, (name, _, _)) in peers.iter().enumerate() {
        for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
            let goal = if *name == "crun" && label == "p50" {
                ">= 2x faster than crun"
            } else {
                ""
            };
            let mut m = Measurement::lower_better(
                &format!("container create+start+delete {label} (/bin/true, {rounds} sequential)"),
                percentile(skiff.clone(), p),
                percentile(peer_times[k].clone(), p),
                "ms",
                &format!("{name} run"),
                goal,
            );
            m.note = "same rootfs; Skiff adds an overlayfs mount".into();
            out.push(m);
        }
    }
    Ok(out)
}
