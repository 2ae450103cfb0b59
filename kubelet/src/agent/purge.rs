//! Removing everything a node agent left on the machine, whatever state it stopped in:
//! container processes, the spawner, mounts (sandbox namespaces, memory volumes), pod
//! cgroups, pod directories. For `skiff down`, benchmarks and tests that must leave
//! nothing behind even when an agent was killed in the middle of its work.

use std::path::Path;
use std::time::Duration;

use crate::runtime::cgroup::{self, Hierarchy};

/// What was removed.
#[derive(Debug, Default)]
pub struct Purged {
    pub processes: usize,
    pub mounts: usize,
    pub pods: usize,
}

fn cgroup_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_pids(&e.path(), out);
            }
        }
    }
}

/// Kills every process in the cgroup tree `parent` (every pod of the node), stops the
/// spawner of `data_dir`, unmounts everything under `data_dir` and removes the cgroups and
/// pod directories; with `cgroup2` (the node's cgroup2 directory the data plane watches),
/// the pods' cgroups there too. Safe to run on a node that is already clean.
pub fn purge(
    data_dir: &Path,
    cgroup_parent: &str,
    cgroup2: Option<&Path>,
) -> std::io::Result<Purged> {
    let mut purged = Purged::default();
    if cgroup_parent.trim_matches('/').is_empty() {
        return Err(std::io::Error::other("refusing to purge the root cgroup"));
    }
    let hierarchy = Hierarchy::detect()?;
    let pids_root = match &hierarchy {
        Hierarchy::V1(root) => root.join("pids"),
        Hierarchy::V2(root) => root.clone(),
    };
    let tree = pids_root.join(cgroup_parent.trim_matches('/'));
    // The spawner first, so it cannot start anything new.
    if let Ok(pid) = std::fs::read_to_string(data_dir.join("spawner.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
        && is_spawner(pid, data_dir)
    {
        // SAFETY: kill with a pid we just checked belongs to this node's spawner.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        purged.processes += 1;
    }
    let mut killed = std::collections::HashSet::new();
    for _ in 0..50 {
        let mut pids = Vec::new();
        cgroup_pids(&tree, &mut pids);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: kill with pids read from this node's own cgroup tree.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            killed.insert(*pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    purged.processes += killed.len();
    purged.mounts = unmount_under(data_dir)?;
    let rel = Path::new(cgroup_parent.trim_matches('/'));
    cgroup::remove_tree(&hierarchy, rel, cgroup2);
    cgroup::remove_empty_parents(&hierarchy, rel);
    if let Some(base) = cgroup2 {
        // The parent's own directories below the node's cgroup2 directory.
        let mut dir = base.join(rel);
        while dir != base && dir.starts_with(base) {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
    let pods = data_dir.join("pods");
    if let Ok(rd) = std::fs::read_dir(&pods) {
        purged.pods = rd.count();
    }
    match std::fs::remove_dir_all(&pods) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(purged)
}

/// Whether `pid` is the spawner serving `data_dir` (its socket is in its open files).
fn is_spawner(pid: i32, data_dir: &Path) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "skiff-spawner" {
        return false;
    }
    let sock = crate::runtime::spawner::socket_path(data_dir);
    // A listening Unix socket shows in /proc/net/unix with its path.
    std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .map(|s| s.contains(&*sock.to_string_lossy()))
        .unwrap_or(false)
}

/// The mount points at or under `dir`, one entry per mount (a point with two mounts
/// stacked is listed twice).
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_string)
        .collect())
}

/// Unmounts every mount point under `dir` (deepest first); returns how many.
pub fn unmount_under(dir: &Path) -> std::io::Result<usize> {
    let mut points = mounts_under(dir)?;
    // Deepest first; a point listed twice has two mounts stacked and is unmounted twice.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    Ok(points.len())
}
