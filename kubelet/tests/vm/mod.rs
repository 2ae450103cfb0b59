//! The container tests again on cgroup v2, in a virtual machine.
//!
//! This machine's cgroup2 mount has no cpu, memory or pids controller (they are bound to
//! the v1 hierarchies every other test uses), so the v2 path of the runtime cannot run
//! here beside them. The host side of this module boots a Debian kernel (`cargo xtask
//! setup` unpacks it) under qemu with an initramfs made of this very test binary, its
//! shared libraries, busybox and the overlay module. In the guest the binary is `init`:
//! it mounts cgroup2 alone at `/sys/fs/cgroup` (controllers enabled), runs the same
//! trials through a real spawner, prints one result line on the serial console and powers
//! the machine off. The host reads that line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

/// Set on the guest kernel's command line (the kernel hands it to init's environment).
const GUEST_ENV: &str = "SKIFF_VM_GUEST";
/// The guest's result line starts with this.
const RESULT: &str = "SKIFF-VM-RESULT";
/// Where `cargo xtask setup` unpacks the kernel, unless `SKIFF_VM_KERNEL` says otherwise.
const KERNEL_DIR: &str = "/var/cache/skiff/vm-kernel";
/// The test binary's path inside the guest.
const GUEST_EXE: &str = "/skiff-test";

/// Whether this process is the guest's init.
pub fn is_guest() -> bool {
    std::env::var_os(GUEST_ENV).is_some() && std::process::id() == 1
}

// ---- guest ---------------------------------------------------------------------------

/// Makes the guest usable as a container host: kernel filesystems, cgroup2 alone with its
/// controllers, a tmpfs for the tests' directories, the overlay module.
pub fn guest_boot() -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    let none: Option<&str> = None;
    for (fs, dir) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/tmp"),
        ("cgroup2", "/sys/fs/cgroup"),
    ] {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
        mount(Some(fs), dir, Some(fs), MsFlags::empty(), none)
            .map_err(|e| format!("mounting {fs} on {dir}: {e}"))?;
    }
    let module =
        std::fs::File::open("/overlay.ko.xz").map_err(|e| format!("overlay.ko.xz: {e}"))?;
    // SAFETY: finit_module with an open module file, empty parameters and the flag that
    // lets the kernel decompress it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&module),
            c"".as_ptr(),
            4, // MODULE_INIT_COMPRESSED_FILE
        )
    };
    if r != 0 {
        return Err(format!(
            "loading the overlay module: {}",
            std::io::Error::last_os_error()
        ));
    }
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .map_err(|e| format!("cgroup.controllers: {e}"))?;
    for c in ["cpu", "memory", "pids"] {
        if !controllers.split_whitespace().any(|x| x == c) {
            return Err(format!("the guest's cgroup2 lacks {c}: {controllers}"));
        }
    }
    println!(
        "cgroup2 alone at /sys/fs/cgroup, controllers: {}",
        controllers.trim()
    );
    Ok(())
}

/// Reports the trials' outcome on the console, for the host.
pub fn guest_report(passed: u64, failed: u64) {
    println!("{RESULT} passed={passed} failed={failed}");
}

/// Ends the guest (init must never return).
pub fn guest_power_off(setup_error: Option<&str>) -> ! {
    if let Some(e) = setup_error {
        println!("{RESULT} setup-failed: {e}");
    }
    let _ = std::io::stdout().flush();
    nix::unistd::sync();
    loop {
        // SAFETY: reboot(2) with the power-off command; this process is the guest's init.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
        std::thread::sleep(Duration::from_secs(1));
    }
}

// ---- host ----------------------------------------------------------------------------

/// Boots the guest and checks that all `expected` trials passed there.
pub fn run_in_vm(expected: usize) -> Result<(), Failed> {
    let kernel = std::env::var_os("SKIFF_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KERNEL_DIR));
    for f in ["vmlinuz", "overlay.ko.xz"] {
        if !kernel.join(f).exists() {
            return Err(format!(
                "{} is missing: `cargo xtask setup` unpacks the kernel for the cgroup v2 tests",
                kernel.join(f).display()
            )
            .into());
        }
    }
    let tmp = tempfile::Builder::new().prefix("skiff-vm-").tempdir()?;
    let initrd = tmp.path().join("initrd.cpio");
    initramfs(&initrd, &kernel.join("overlay.ko.xz"))?;
    // Software emulation: KVM on this (itself virtual) machine cannot run the guest
    // kernel (its instruction emulator stops at the first VEX-encoded instruction). One
    // host thread runs both virtual CPUs: with a thread per CPU, qemu 7.2 let one CPU run
    // kernel text another was patching (an oops at an int3 the kernel had already removed).
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "2048",
            "-smp",
            "2",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet {GUEST_ENV}=1"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("qemu-system-x86_64: {e} (`cargo xtask setup` installs qemu-system-x86)")
        })?;
    let stdout = child.stdout.take().ok_or("qemu's stdout")?;
    let stderr = child.stderr.take().ok_or("qemu's stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut console = Vec::new();
    let mut result = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                if let Some(r) = line.strip_prefix(RESULT) {
                    result = Some(r.trim().to_string());
                }
                console.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    // The guest's console, for the record (the harness shows it with --no-capture).
    for line in &console {
        println!("guest| {line}");
    }
    let qemu_err = err_reader.join().unwrap_or_default();
    let tail = || {
        let from = console.len().saturating_sub(200);
        format!(
            "qemu {status}; stderr: {qemu_err}\nlast console lines:\n{}",
            console[from..].join("\n")
        )
    };
    let Some(result) = result else {
        return Err(format!("the guest reported no result within 900 s; {}", tail()).into());
    };
    let field = |k: &str| -> Option<usize> {
        result
            .split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    match (field("passed"), field("failed")) {
        (Some(p), Some(0)) if p == expected => Ok(()),
        _ => Err(format!(
            "the guest reported {result:?}, {expected} passed expected; {}",
            tail()
        )
        .into()),
    }
}

/// Writes the guest's initramfs: `/init` (a busybox script that moves everything onto a
/// tmpfs and switches root to it: containers `pivot_root`, which the initramfs root does
/// not allow), this test binary, its shared libraries, busybox and the overlay module.
fn initramfs(out: &Path, overlay: &Path) -> Result<(), Failed> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let mut files: Vec<(String, PathBuf, u32)> = vec![
        (GUEST_EXE.into(), exe.clone(), 0o755),
        ("/bin/busybox".into(), PathBuf::from("/bin/busybox"), 0o755),
        ("/overlay.ko.xz".into(), overlay.to_path_buf(), 0o644),
    ];
    for lib in shared_libraries(&exe)? {
        files.push((lib.to_string_lossy().into_owned(), lib, 0o755));
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         B=/bin/busybox\n\
         $B mkdir -p /newroot\n\
         $B mount -t tmpfs -o size=1800m tmpfs /newroot\n\
         for f in /bin /lib /lib64 /usr /overlay.ko.xz; do [ -e $f ] && $B cp -a $f /newroot/; done\n\
         $B mv {GUEST_EXE} /newroot{GUEST_EXE}\n\
         exec $B switch_root /newroot {GUEST_EXE}\n"
    );
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in &files {
        let mut p = Path::new(path).parent();
        while let Some(d) = p {
            if d != Path::new("/") {
                dirs.insert(d.to_string_lossy().trim_start_matches('/').to_string());
            }
            p = d.parent();
        }
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut ino = 1;
    let mut next = || {
        ino += 1;
        ino
    };
    for d in &dirs {
        w = cpio::newc::Builder::new(d)
            .ino(next())
            .mode(0o040755)
            .nlink(2)
            .write(w, 0)
            .finish()?;
    }
    w = {
        let mut f = cpio::newc::Builder::new("init")
            .ino(next())
            .mode(0o100755)
            .nlink(1)
            .write(w, init.len() as u32);
        f.write_all(init.as_bytes())?;
        f.finish()?
    };
    for (path, src, mode) in &files {
        let mut from = std::fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
        let len = from.metadata()?.len();
        let mut f = cpio::newc::Builder::new(path.trim_start_matches('/'))
            .ino(next())
            .mode(0o100000 | mode)
            .nlink(1)
            .write(w, u32::try_from(len)?);
        std::io::copy(&mut from, &mut f)?;
        w = f.finish()?;
    }
    cpio::newc::trailer(w)?.flush()?;
    Ok(())
}

/// The shared libraries `exe` loads (the dynamic loader's own list, through `ldd`).
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, Failed> {
    let out = Command::new("ldd").arg(exe).output()?;
    if !out.status.success() {
        return Err(format!(
            "ldd {}: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
