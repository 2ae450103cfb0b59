//! The second runtime backend: an OCI bundle handed to an external runtime binary (crun or
//! runc), selectable per node. The agent mounts the rootfs and writes the bundle's
//! `config.json` from the same [`ContainerSpec`] the native runtime uses; the spawner runs
//! `<runtime> create`, takes the container process over as its subreaper (so it is reaped
//! through `IORING_OP_WAITID` like a native container), `<runtime> start`s it, and
//! `<runtime> delete`s it once it has exited.

use std::path::Path;

use serde_json::{Value, json};

use super::ContainerSpec;

/// The OCI runtime configuration of `spec`, with its root at `rootfs` and its cgroups at
/// `cgroups_path` (relative to each hierarchy). Limits are already written by the agent
/// into those cgroups; the runtime only joins them.
pub fn config(spec: &ContainerSpec, rootfs: &Path, cgroups_path: &str) -> Value {
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    for (kind, path) in [
        ("network", &spec.netns),
        ("ipc", &spec.ipcns),
        ("uts", &spec.utsns),
    ] {
        match path {
            Some(p) => namespaces.push(json!({"type": kind, "path": p})),
            None => namespaces.push(json!({"type": kind})),
        }
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for m in &spec.mounts {
        if m.source.as_os_str().is_empty() {
            mounts.push(json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}));
        } else {
            let mode = if m.readonly { "ro" } else { "rw" };
            mounts.push(json!({"destination": m.target, "type": "bind", "source": m.source, "options": ["rbind", mode]}));
        }
    }
    let caps = &spec.capabilities;
    let denied: Vec<&str> = super::seccomp::DENIED.iter().map(|(n, _)| *n).collect();
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": format!("/{}", cgroups_path.trim_start_matches('/')),
        "maskedPaths": super::MASKED_PATHS,
        "readonlyPaths": super::READONLY_PATHS,
    });
    if spec.seccomp {
        linux["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        });
    }
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": spec.groups},
            "args": spec.argv,
            "env": spec.env,
            "cwd": if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": spec.readonly_rootfs},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": linux
    });
    // A joined UTS namespace keeps the pod's hostname; runtimes refuse to set one there.
    if spec.utsns.is_some() || spec.hostname.is_empty() {
        config.as_object_mut().map(|o| o.remove("hostname"));
    }
    config
}

/// Mounts the container's overlayfs rootfs on the host (an OCI runtime takes a directory).
pub fn mount_rootfs(spec: &ContainerSpec) -> std::io::Result<()> {
    super::mount_overlay(spec).map_err(std::io::Error::other)
}

/// Writes the bundle (`config.json` in `dir`) for `spec`, whose rootfs is mounted.
pub fn write_bundle(spec: &ContainerSpec, dir: &Path, cgroups_path: &str) -> std::io::Result<()> {
    let cfg = config(spec, &spec.rootfs, cgroups_path);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&cfg).map_err(std::io::Error::other)?,
    )
}

/// `<runtime> --root <root>` in a mount namespace of its own without the cgroup2 mount:
/// crun refuses "hybrid" cgroups (this machine's cgroup2 carries hugetlb), and both
/// runtimes then see plain v1, as the native runtime uses it.
pub fn command(bin: &Path, root: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--root").arg(root);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            );
            libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH);
            Ok(())
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_bundle_joins_pod_namespaces_and_keeps_the_pods_hostname() {
        let spec = ContainerSpec {
            argv: vec!["/bin/true".into()],
            netns: Some(PathBuf::from("/pods/x/ns-net")),
            ipcns: Some(PathBuf::from("/pods/x/ns-ipc")),
            utsns: Some(PathBuf::from("/pods/x/ns-uts")),
            hostname: "ignored".into(),
            seccomp: true,
            uid: 1000,
            ..Default::default()
        };
        let cfg = config(&spec, Path::new("/rootfs"), "skiff/n/pod1/c");
        let ns = cfg["linux"]["namespaces"].as_array().expect("namespaces");
        let path = |t: &str| {
            ns.iter()
                .find(|n| n["type"] == t)
                .map(|n| n["path"].clone())
        };
        assert_eq!(path("network"), Some(json!("/pods/x/ns-net")));
        assert_eq!(path("pid"), Some(Value::Null));
        assert!(
            cfg.get("hostname").is_none(),
            "a joined UTS namespace keeps its name"
        );
        assert_eq!(cfg["linux"]["cgroupsPath"], "/skiff/n/pod1/c");
        assert_eq!(cfg["process"]["user"]["uid"], 1000);
        assert!(
            cfg["linux"]["seccomp"]["syscalls"][0]["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|s| s == "unshare"))
        );
        let own = config(
            &ContainerSpec {
                hostname: "box".into(),
                ..Default::default()
            },
            Path::new("/r"),
            "c",
        );
        assert_eq!(own["hostname"], "box");
        assert!(own["linux"].get("seccomp").is_none());
    }
}
