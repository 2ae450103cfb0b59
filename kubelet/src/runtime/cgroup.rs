//! Container cgroups: cpu, memory and pids limits on cgroup v1 (one hierarchy per
//! controller, as on this machine) or v2 (one hierarchy, where its controllers are
//! enabled), plus the node's cgroup2 subtree the data plane's socket programs watch.
//!
//! Kubernetes' conversions: a CPU request of `m` millicores is `cpu.shares = m*1024/1000`
//! (at least 2) or, on v2, `cpu.weight = 1 + (shares-2)*9999/262142`; a CPU limit is a CFS
//! quota of `m*100` us per 100 ms period.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroups live on this machine.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// One mount per controller under this directory (`cpu/`, `memory/`, `pids/`, ...).
    V1(PathBuf),
    /// A cgroup2 mount with the controllers enabled.
    V2(PathBuf),
}

const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];

/// Every v1 hierarchy mounted under `root` (an OCI runtime creates its cgroups in all of
/// them, `name=systemd` included, so removal looks at all of them).
fn v1_hierarchies(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name() != "unified" && e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

impl Hierarchy {
    /// Finds the hierarchy: cgroup2 with controllers when `/sys/fs/cgroup` is one,
    /// otherwise the v1 controller mounts.
    pub fn detect() -> std::io::Result<Hierarchy> {
        let root = Path::new("/sys/fs/cgroup");
        if let Ok(ctrl) = std::fs::read_to_string(root.join("cgroup.controllers"))
            && ctrl.split_whitespace().any(|c| c == "memory")
        {
            return Ok(Hierarchy::V2(root.to_path_buf()));
        }
        if root.join("memory").is_dir() {
            return Ok(Hierarchy::V1(root.to_path_buf()));
        }
        Err(std::io::Error::other(
            "no usable cgroup hierarchy: neither cgroup2 with the memory controller nor a v1 \
             memory controller under /sys/fs/cgroup",
        ))
    }
}

/// Limits of one container (Kubernetes' resources, converted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU request in millicores.
    pub cpu_request_milli: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_limit_milli: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    pub pids_limit: Option<u64>,
}

const CFS_PERIOD_US: u64 = 100_000;

/// One cgroup (a directory per v1 controller, or one v2 directory), plus the node's
/// cgroup2 subtree directory when the data plane uses one.
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    rel: PathBuf,
    unified: Option<PathBuf>,
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", dir.join(file).display()),
        )
    })
}

impl Cgroup {
    /// Creates (or reuses) the cgroup at `rel` (e.g. `skiff/node-1/pod<uid>/<id>`) and sets
    /// its limits. `unified_base` is the node's cgroup2 directory the socket-level load
    /// balancer is attached to; the container joins `<unified_base>/<rel>` as well.
    pub fn create(
        hierarchy: &Hierarchy,
        rel: &Path,
        unified_base: Option<&Path>,
        res: &Resources,
    ) -> std::io::Result<Cgroup> {
        let cg = Cgroup {
            hierarchy: hierarchy.clone(),
            rel: rel.to_path_buf(),
            unified: unified_base.map(|b| b.join(rel)),
        };
        match hierarchy {
            Hierarchy::V1(root) => {
                for c in V1_CONTROLLERS {
                    std::fs::create_dir_all(root.join(c).join(rel))?;
                }
            }
            Hierarchy::V2(root) => {
                // Enable the controllers down the path.
                let mut dir = root.clone();
                for comp in rel.components() {
                    let avail = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
                    let want: Vec<String> = ["cpu", "memory", "pids"]
                        .iter()
                        .filter(|c| avail.split_whitespace().any(|a| a == **c))
                        .map(|c| format!("+{c}"))
                        .collect();
                    if !want.is_empty() {
                        write(&dir, "cgroup.subtree_control", &want.join(" "))?;
                    }
                    dir = dir.join(comp);
                    std::fs::create_dir_all(&dir)?;
                }
            }
        }
        if let Some(u) = &cg.unified {
            std::fs::create_dir_all(u)?;
        }
        cg.set(res)?;
        Ok(cg)
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match &self.hierarchy {
            Hierarchy::V1(root) => root.join(controller).join(&self.rel),
            Hierarchy::V2(root) => root.join(&self.rel),
        }
    }

    /// Applies limits (also to a running container).
    pub fn set(&self, res: &Resources) -> std::io::Result<()> {
        let shares = res
            .cpu_request_milli
            .map(|m| (m * 1024 / 1000).max(2))
            .unwrap_or(1024);
        let quota = res
            .cpu_limit_milli
            .map(|m| (m * CFS_PERIOD_US / 1000).max(1000));
        match &self.hierarchy {
            Hierarchy::V1(_) => {
                let cpu = self.dir("cpu");
                write(&cpu, "cpu.shares", &shares.to_string())?;
                write(&cpu, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                let q = quota.map_or("-1".to_string(), |q| q.to_string());
                write(&cpu, "cpu.cfs_quota_us", &q)?;
                let mem = self.dir("memory");
                let limit = res.memory_limit.map_or("-1".to_string(), |m| m.to_string());
                write(&mem, "memory.limit_in_bytes", &limit)?;
                let pids = res.pids_limit.map_or("max".to_string(), |p| p.to_string());
                write(&self.dir("pids"), "pids.max", &pids)?;
            }
            Hierarchy::V2(_) => {
                let d = self.dir("");
                let weight = 1 + (shares.saturating_sub(2)) * 9999 / 262_142;
                if d.join("cpu.weight").exists() {
                    write(&d, "cpu.weight", &weight.to_string())?;
                    let q = quota.map_or("max".to_string(), |q| q.to_string());
                    write(&d, "cpu.max", &format!("{q} {CFS_PERIOD_US}"))?;
                }
                if d.join("memory.max").exists() {
                    let m = res
                        .memory_limit
                        .map_or("max".to_string(), |m| m.to_string());
                    write(&d, "memory.max", &m)?;
                    // Kubernetes' behaviour: an OOM kill takes the whole container.
                    let _ = write(&d, "memory.oom.group", "1");
                }
                if d.join("pids.max").exists() {
                    let p = res.pids_limit.map_or("max".to_string(), |p| p.to_string());
                    write(&d, "pids.max", &p)?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes `0` into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = match &self.hierarchy {
            Hierarchy::V1(_) => V1_CONTROLLERS
                .iter()
                .map(|c| self.dir(c).join("cgroup.procs"))
                .collect(),
            Hierarchy::V2(_) => vec![self.dir("").join("cgroup.procs")],
        };
        if let Some(u) = &self.unified {
            v.push(u.join("cgroup.procs"));
        }
        v
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match &self.hierarchy {
            Hierarchy::V1(_) => ("memory.oom_control", "oom_kill"),
            Hierarchy::V2(_) => ("memory.events", "oom_kill"),
        };
        std::fs::read_to_string(self.dir("memory").join(file))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().ok())?
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// Memory in use, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        let file = match &self.hierarchy {
            Hierarchy::V1(_) => "memory.usage_in_bytes",
            Hierarchy::V2(_) => "memory.current",
        };
        std::fs::read_to_string(self.dir("memory").join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Pids of the processes still in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir("pids").join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills what is left and removes the directories (waiting up to `patience` for dying
    /// processes to leave).
    pub fn remove(&self, patience: Duration) -> std::io::Result<()> {
        let mut dirs: Vec<PathBuf> = match &self.hierarchy {
            Hierarchy::V1(root) => v1_hierarchies(root)
                .into_iter()
                .map(|h| h.join(&self.rel))
                .filter(|d| d.exists())
                .collect(),
            Hierarchy::V2(_) => vec![self.dir("")],
        };
        dirs.extend(self.unified.clone());
        let deadline = std::time::Instant::now() + patience;
        for pid in self.pids() {
            // SAFETY: kill with a pid read from our own cgroup; at worst ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for d in dirs {
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("removing cgroup {}: {e}", d.display()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Removes an empty cgroup directory tree (a pod's, after its containers' are gone) from
/// every controller.
pub fn remove_tree(hierarchy: &Hierarchy, rel: &Path, unified_base: Option<&Path>) {
    let mut roots: Vec<PathBuf> = match hierarchy {
        Hierarchy::V1(root) => v1_hierarchies(root),
        Hierarchy::V2(root) => vec![root.clone()],
    };
    roots.extend(unified_base.map(Path::to_path_buf));
    for root in roots {
        remove_children(&root.join(rel));
    }
}

/// Removes the parents of `rel` that are empty (`skiff/` once its last node is gone); a
/// parent still in use refuses, which is the point.
pub fn remove_empty_parents(hierarchy: &Hierarchy, rel: &Path) {
    let roots: Vec<PathBuf> = match hierarchy {
        Hierarchy::V1(root) => v1_hierarchies(root),
        Hierarchy::V2(root) => vec![root.clone()],
    };
    for root in roots {
        for parent in rel.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            let _ = std::fs::remove_dir(root.join(parent));
        }
    }
}

fn remove_children(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_children(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
