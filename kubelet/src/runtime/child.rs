//! What runs in a new container process, between `clone3` and `execve`.
//!
//! This code runs in a child of the single-threaded spawner, so it may allocate. Any
//! failure is written to the error pipe as `C<message>` (the container could not be
//! created) or `E<message>` (the program could not be executed) and the child exits 127;
//! a successful `execve` closes the pipe (it is close-on-exec).

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode, SFlag, makedev, mknod, umask};
use nix::unistd::{Gid, Uid, chdir, pivot_root, sethostname, setresgid, setresuid, setsid};
use seccompiler::BpfProgram;

use super::{ContainerSpec, Mount};

type Failure = (u8, String);

fn create_err(what: impl std::fmt::Display) -> Failure {
    (b'C', what.to_string())
}

/// Runs in the new process; never returns.
pub(super) fn run(
    spec: &ContainerSpec,
    fds: &[RawFd],
    errpipe: RawFd,
    filters: &[BpfProgram],
) -> ! {
    let failure = match setup(spec, fds, filters, errpipe) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let mut msg = Vec::with_capacity(failure.1.len() + 1);
    msg.push(failure.0);
    msg.extend_from_slice(failure.1.as_bytes());
    // SAFETY: writing our own buffer to a descriptor we own, then leaving without running
    // any destructor of the (copied) spawner state.
    unsafe {
        libc::write(errpipe, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

enum Never {}

fn setup(
    spec: &ContainerSpec,
    fds: &[RawFd],
    filters: &[BpfProgram],
    errpipe: RawFd,
) -> Result<Never, Failure> {
    // The spawner ignores some signals; dispositions and the mask survive execve, so the
    // program must start from the defaults. The raw call reaches the two signals libc
    // keeps for itself (32, 33), which an ancestor may also have set to "ignore".
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: rt_sigaction with a valid struct and no old-action pointer.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
    }
    // SAFETY: clearing the signal mask of this single-threaded process.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    if let Some(target) = spec.exec_in {
        return exec_in(spec, target, fds, filters, errpipe);
    }
    // Accounting first: everything below is charged to the container.
    for procs in &spec.cgroup_procs {
        fs::write(procs, b"0")
            .map_err(|e| create_err(format!("joining cgroup {}: {e}", procs.display())))?;
    }
    for (path, kind, name) in [
        (&spec.netns, CloneFlags::CLONE_NEWNET, "network"),
        (&spec.ipcns, CloneFlags::CLONE_NEWIPC, "IPC"),
        (&spec.utsns, CloneFlags::CLONE_NEWUTS, "UTS"),
    ] {
        if let Some(path) = path {
            let f = fs::File::open(path).map_err(|e| {
                create_err(format!("opening {name} namespace {}: {e}", path.display()))
            })?;
            setns(&f, kind).map_err(|e| {
                create_err(format!("joining {name} namespace {}: {e}", path.display()))
            })?;
        }
    }
    if spec.utsns.is_none() && !spec.hostname.is_empty() {
        sethostname(&spec.hostname).map_err(|e| create_err(format!("sethostname: {e}")))?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| create_err(format!("making mounts private: {e}")))?;
    umask(Mode::from_bits_truncate(0o022));

    mount_rootfs(spec)?;
    let root = spec.rootfs.as_path();
    mount_kernel_fs(root)?;
    for m in &spec.mounts {
        bind(root, m)?;
    }

    chdir(root).map_err(|e| create_err(format!("chdir to rootfs: {e}")))?;
    pivot_root(".", ".").map_err(|e| create_err(format!("pivot_root: {e}")))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| create_err(format!("detaching old root: {e}")))?;
    chdir("/").map_err(|e| create_err(format!("chdir /: {e}")))?;
    mask_kernel_paths()?;
    if spec.readonly_rootfs {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| create_err(format!("read-only rootfs: {e}")))?;
    }

    setsid().map_err(|e| create_err(format!("setsid: {e}")))?;
    stdio(spec, fds)?;
    controlling_terminal(spec)?;
    // Every descriptor above stdio (the spawner's sockets and ring, the error pipe) goes
    // at execve.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks descriptors close-on-exec.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        return Err(create_err(format!(
            "close_range: {}",
            std::io::Error::last_os_error()
        )));
    }

    identity_and_caps(spec)?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(create_err(format!(
            "no_new_privs: {}",
            std::io::Error::last_os_error()
        )));
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    if let Err(e) = chdir(cwd) {
        if spec.cwd.is_empty() || e != nix::errno::Errno::ENOENT {
            return Err(create_err(format!("chdir to working dir {cwd}: {e}")));
        }
        // Kubernetes creates a missing workingDir.
        fs::DirBuilder::new()
            .recursive(true)
            .create(cwd)
            .and_then(|_| std::env::set_current_dir(cwd))
            .map_err(|e| create_err(format!("creating working dir {cwd}: {e}")))?;
    }
    if spec.seccomp {
        for f in filters {
            seccompiler::apply_filter(f).map_err(|e| create_err(format!("seccomp: {e}")))?;
        }
    }
    exec(spec)
}

/// A process inside a running container: its cgroups, all its namespaces (through a pidfd,
/// at once), then a fork so the program is in its pid namespace; this process waits for
/// it and exits with its status (128 + signal for a signalled one).
fn exec_in(
    spec: &ContainerSpec,
    target: i32,
    fds: &[RawFd],
    filters: &[BpfProgram],
    errpipe: RawFd,
) -> Result<Never, Failure> {
    for procs in &spec.cgroup_procs {
        fs::write(procs, b"0")
            .map_err(|e| create_err(format!("joining cgroup {}: {e}", procs.display())))?;
    }
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, target, 0) };
    if pidfd < 0 {
        return Err(create_err(format!(
            "container process {target}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let kinds = libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWCGROUP;
    // SAFETY: setns with a pidfd we just opened joins its namespaces (Linux >= 5.8).
    if unsafe { libc::setns(pidfd as i32, kinds) } != 0 {
        return Err(create_err(format!(
            "joining the container's namespaces: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(pidfd as i32) };
    // SAFETY: this process is single-threaded (a clone of the spawner).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // Only the program reports through the error pipe (or closes it by execve):
            // this waiter must not keep it open while the program runs.
            // SAFETY: closing our copy of the pipe.
            unsafe { libc::close(errpipe) };
            let code = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                _ => 127,
            };
            // SAFETY: leaving with the program's status; nothing to clean up.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => return Err(create_err(format!("fork into the container: {e}"))),
    }
    chdir("/").map_err(|e| create_err(format!("chdir /: {e}")))?;
    stdio(spec, fds)?;
    if spec.tty {
        setsid().map_err(|e| create_err(format!("setsid: {e}")))?;
        controlling_terminal(spec)?;
    }
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks descriptors close-on-exec.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    identity_and_caps(spec)?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(create_err(format!(
            "no_new_privs: {}",
            std::io::Error::last_os_error()
        )));
    }
    if !spec.cwd.is_empty() {
        chdir(spec.cwd.as_str())
            .map_err(|e| create_err(format!("chdir to working dir {}: {e}", spec.cwd)))?;
    }
    if spec.seccomp {
        for f in filters {
            seccompiler::apply_filter(f).map_err(|e| create_err(format!("seccomp: {e}")))?;
        }
    }
    exec(spec)
}

fn mount_rootfs(spec: &ContainerSpec) -> Result<(), Failure> {
    super::mount_overlay(spec).map_err(create_err)
}

fn mkdirs(path: &Path) -> Result<(), Failure> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| create_err(format!("creating {}: {e}", path.display())))
}

fn fs_mount(
    root: &Path,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<PathBuf, Failure> {
    let path = root.join(target.trim_start_matches('/'));
    mkdirs(&path)?;
    mount(Some(fstype), &path, Some(fstype), flags, data)
        .map_err(|e| create_err(format!("mounting {fstype} on {target}: {e}")))?;
    Ok(path)
}

fn mount_kernel_fs(root: &Path) -> Result<(), Failure> {
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    fs_mount(root, "/proc", "proc", hard, None)?;
    fs_mount(root, "/sys", "sysfs", hard | MsFlags::MS_RDONLY, None)?;
    let dev = fs_mount(
        root,
        "/dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| create_err(format!("mknod /dev/{name}: {e}")))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
            .map_err(|e| create_err(format!("chmod /dev/{name}: {e}")))?;
    }
    fs_mount(
        root,
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    fs_mount(
        root,
        "/dev/shm",
        "tmpfs",
        hard,
        Some("mode=1777,size=65536k"),
    )?;
    fs_mount(root, "/dev/mqueue", "mqueue", hard, None)?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .map_err(|e| create_err(format!("symlink /dev/{link}: {e}")))?;
    }
    Ok(())
}

fn bind(root: &Path, m: &Mount) -> Result<(), Failure> {
    if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
        return Err(create_err(format!(
            "mount target {:?} must be an absolute path without '..'",
            m.target
        )));
    }
    let target = root.join(m.target.trim_start_matches('/'));
    // The target is resolved inside the rootfs: refuse a symlink that would lead out.
    if let Ok(meta) = fs::symlink_metadata(&target)
        && meta.file_type().is_symlink()
    {
        return Err(create_err(format!(
            "mount target {} is a symlink in the image",
            m.target
        )));
    }
    if m.file {
        if let Some(parent) = target.parent() {
            mkdirs(parent)?;
        }
        if !target.exists() {
            fs::File::create(&target)
                .map_err(|e| create_err(format!("creating {}: {e}", m.target)))?;
        }
    } else {
        mkdirs(&target)?;
    }
    if m.source.as_os_str().is_empty() {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        return mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            flags,
            Some("mode=1777"),
        )
        .map_err(|e| create_err(format!("mounting tmpfs on {}: {e}", m.target)));
    }
    mount(
        Some(&m.source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        create_err(format!(
            "bind-mounting {} on {}: {e}",
            m.source.display(),
            m.target
        ))
    })?;
    if m.readonly {
        remount_readonly(&target)
            .map_err(|e| create_err(format!("read-only {}: {e}", m.target)))?;
    }
    Ok(())
}

fn remount_readonly(path: &Path) -> nix::Result<()> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )
}

/// Hides and freezes the kernel interfaces runc and containerd hide by default.
fn mask_kernel_paths() -> Result<(), Failure> {
    for p in super::MASKED_PATHS.iter().copied() {
        let Ok(meta) = fs::metadata(p) else { continue };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(|e| create_err(format!("masking {p}: {e}")))?;
    }
    for p in super::READONLY_PATHS.iter().copied() {
        if !Path::new(p).exists() {
            continue;
        }
        mount(
            Some(p),
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|_| remount_readonly(Path::new(p)))
        .map_err(|e| create_err(format!("read-only {p}: {e}")))?;
    }
    Ok(())
}

fn stdio(spec: &ContainerSpec, fds: &[RawFd]) -> Result<(), Failure> {
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| create_err(format!("/dev/null: {e}")))?;
    for (target, which) in [(0, spec.stdin), (1, spec.stdout), (2, spec.stderr)] {
        let src = match which {
            Some(i) => *fds
                .get(i)
                .ok_or_else(|| create_err(format!("stdio descriptor {i} was not sent")))?,
            None => null.as_raw_fd(),
        };
        // SAFETY: dup2 between descriptors this process owns.
        if unsafe { libc::dup2(src, target) } < 0 {
            return Err(create_err(format!(
                "dup2: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// With a terminal, stdin (the pseudo-terminal's far end) becomes the controlling terminal
/// of this process's session, so the shell gets job control and ^C.
fn controlling_terminal(spec: &ContainerSpec) -> Result<(), Failure> {
    if !spec.tty {
        return Ok(());
    }
    // SAFETY: TIOCSCTTY on descriptor 0 with argument 0 (take it only if no other session
    // has it) reads and writes no memory of ours.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(create_err(format!(
            "making stdin the controlling terminal: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn identity_and_caps(spec: &ContainerSpec) -> Result<(), Failure> {
    let mut keep = CapsHashSet::new();
    for name in &spec.capabilities {
        let cap: Capability = name
            .parse()
            .map_err(|_| create_err(format!("unknown capability {name}")))?;
        keep.insert(cap);
    }
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| create_err(format!("dropping {cap}: {e}")))?;
        }
    }
    caps::securebits::set_keepcaps(true).map_err(|e| create_err(format!("keepcaps: {e}")))?;
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| create_err(format!("setgroups: {e}")))?;
    let gid = Gid::from_raw(spec.gid);
    setresgid(gid, gid, gid).map_err(|e| create_err(format!("setgid {}: {e}", spec.gid)))?;
    let uid = Uid::from_raw(spec.uid);
    setresuid(uid, uid, uid).map_err(|e| create_err(format!("setuid {}: {e}", spec.uid)))?;
    // Effective first: it must stay a subset of permitted at every step.
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::set(None, set, &keep).map_err(|e| create_err(format!("capabilities: {e}")))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| create_err(format!("ambient caps: {e}")))?;
    Ok(())
}

fn exec(spec: &ContainerSpec) -> Result<Never, Failure> {
    let Some(program) = spec.argv.first() else {
        return Err(create_err("no command: the image has no entrypoint or cmd"));
    };
    let cstr =
        |s: &str| CString::new(s).map_err(|_| create_err(format!("{s:?} contains a NUL byte")));
    let argv = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|e| cstr(e))
        .collect::<Result<Vec<_>, _>>()?;
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.clone()]
    } else {
        let path = spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{d}/{program}"))
            .collect()
    };
    let mut last = nix::errno::Errno::ENOENT;
    for candidate in &candidates {
        let c = cstr(candidate)?;
        // Only an error returns.
        let err = nix::unistd::execve(&c, &argv, &env).unwrap_err();
        if err != nix::errno::Errno::ENOENT {
            last = err;
            if program.contains('/') || err != nix::errno::Errno::EACCES {
                break;
            }
        }
    }
    let msg = if last == nix::errno::Errno::ENOENT {
        if program.contains('/') {
            format!("exec: \"{program}\": no such file or directory")
        } else {
            format!("exec: \"{program}\": executable file not found in $PATH")
        }
    } else {
        format!("exec: \"{program}\": {}", last.desc())
    };
    Err((b'E', msg))
}
