//! `cargo xtask setup|test|up|bench`: the project's entry points on a fresh Debian machine.
//!
//! - `setup` installs the Debian packages Skiff and its tests need, and unpacks the kernel
//!   the cgroup v2 tests boot under qemu (quiet when all is present).
//! - `test` runs setup, then every test of the workspace, privileged ones included.
//! - `up` installs Skiff's packages, builds the release binary and starts a local cluster
//!   with the demo.
//! - `bench` runs the benchmarks in perf/ and writes the README's results table.

use std::process::{Command, ExitCode};

/// Debian packages the build, the tests and the local cluster need.
const PACKAGES: &[&str] = &[
    "clang-19",
    "llvm-19",
    "libbpf-dev",
    "bpftool",
    "busybox-static",
    "protobuf-compiler",
    "etcd-server",
    "iproute2",
    // The data-plane benchmark's peer: kube-proxy's rules, loaded with iptables-restore.
    "iptables",
    // The OCI registry the image-pull tests push to and pull from (on loopback).
    "docker-registry",
    // The container benchmark's peers (and the node agent's second runtime backend).
    "crun",
    "runc",
    // The node agent benchmark's memory peer (the runtime daemon a kubelet talks to).
    "containerd",
];

/// Debian packages only the tests need (installed without their recommendations): qemu
/// boots a Debian kernel whose cgroup2 has the cpu, memory and pids controllers, which
/// this machine's cgroup2 lacks (they are bound to v1 hierarchies).
const TEST_PACKAGES: &[&str] = &["qemu-system-x86"];

/// Where `setup` unpacks the kernel for the cgroup v2 tests (`vmlinuz`, the overlay
/// module, `version`); the tests read `SKIFF_VM_KERNEL` or this.
const VM_KERNEL_DIR: &str = "/var/cache/skiff/vm-kernel";

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt(args: &[&str]) -> Command {
    let mut c = if running_as_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    c.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null());
    c
}

/// Installs the missing packages of `packages`; `updated` says whether the package lists
/// were already refreshed in this run.
fn install(packages: &[&str], recommends: bool, updated: &mut bool) -> Result<(), String> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    if !*updated {
        run(&mut apt(&["update", "-qq"]))?;
        *updated = true;
    }
    let mut install = apt(&["install", "-y", "-qq"]);
    if !recommends {
        install.arg("--no-install-recommends");
    }
    run(install.args(&missing))
}

/// Skiff's own packages (build, local cluster, benchmarks).
fn packages() -> Result<(), String> {
    install(PACKAGES, true, &mut false)
}

/// Everything, tests included.
fn setup() -> Result<(), String> {
    let mut updated = false;
    install(PACKAGES, true, &mut updated)?;
    install(TEST_PACKAGES, false, &mut updated)?;
    vm_kernel(&mut updated)
}

/// Unpacks the newest Debian 6.x cloud kernel (6.7 or later: the spawner waits on
/// children with `IORING_OP_WAITID`) into [`VM_KERNEL_DIR`], unless it is there: the
/// package is downloaded, not installed (the machine's own kernel and boot loader are
/// left alone).
fn vm_kernel(updated: &mut bool) -> Result<(), String> {
    let dir = std::path::Path::new(VM_KERNEL_DIR);
    if ["vmlinuz", "overlay.ko.xz", "version"]
        .iter()
        .all(|f| dir.join(f).exists())
    {
        return Ok(());
    }
    let find = || -> Result<Option<(Vec<u32>, String)>, String> {
        let out = Command::new("apt-cache")
            .args([
                "search",
                "--names-only",
                "^linux-image-.*-cloud-amd64-unsigned$",
            ])
            .output()
            .map_err(|e| format!("cannot run apt-cache: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|name| {
                let ver = name
                    .strip_prefix("linux-image-")?
                    .split(['+', '-'])
                    .next()?;
                let v: Vec<u32> = ver
                    .split('.')
                    .map(|n| n.parse().ok())
                    .collect::<Option<_>>()?;
                (v.len() == 3 && v[..2] >= [6, 7][..]).then(|| (v, name.to_string()))
            })
            .max())
    };
    let mut found = find()?;
    if found.is_none() && !*updated {
        run(&mut apt(&["update", "-qq"]))?;
        *updated = true;
        found = find()?;
    }
    let Some((_, pkg)) = found else {
        return Err(
            "no linux-image-6.x-cloud-amd64-unsigned package of 6.7 or later in the \
                    package lists (the cgroup v2 tests boot it under qemu)"
                .into(),
        );
    };
    eprintln!("xtask: unpacking {pkg} into {VM_KERNEL_DIR} (for the cgroup v2 tests)");
    let work = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // `_apt` cannot write into a root-owned folder: download as root, without the warning.
    run(apt(&["-o", "APT::Sandbox::User=root", "download", "-qq", &pkg]).current_dir(&work))?;
    let deb = std::fs::read_dir(&work)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {pkg} left no .deb"))?;
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let pick = |sub: &str, prefix: &str| -> Result<std::path::PathBuf, String> {
        walk(&tree.join(sub))
            .into_iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .ok_or_else(|| format!("{pkg}: no {prefix}* under {sub}"))
    };
    let copy = |from: std::path::PathBuf, to: &str| {
        std::fs::copy(&from, work.join(to))
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", from.display()))
    };
    copy(pick("boot", "vmlinuz-")?, "vmlinuz")?;
    copy(pick("lib/modules", "overlay.ko")?, "overlay.ko.xz")?;
    std::fs::write(work.join("version"), format!("{pkg}\n")).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&deb);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Root check through `id -u` (no libc dependency needed).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn test(extra: &[String]) -> Result<(), String> {
    setup()?;
    if has_nextest() {
        run(cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(extra))?;
        // nextest does not run doctests.
        run(cargo().args(["test", "--workspace", "--doc", "--quiet"]))
    } else {
        // Without nextest every test of a binary shares one process. The data-plane tests
        // (and the benchmarks' quick runs) move their process between cgroups and
        // namespaces, so those run one at a time; the rest in parallel.
        let serial = ["skiff-dataplane", "skiff-perf"];
        let mut all = cargo();
        all.args(["test", "--workspace", "--no-fail-fast"]);
        for p in serial {
            all.args(["--exclude", p]);
        }
        run(all.args(extra))?;
        let mut one_by_one = cargo();
        one_by_one.args(["test", "--no-fail-fast"]);
        for p in serial {
            one_by_one.args(["-p", p]);
        }
        run(one_by_one.args(extra).args(["--", "--test-threads=1"]))
    }
}

fn up(extra: &[String]) -> Result<(), String> {
    packages()?;
    run(cargo().args(["build", "--release", "--bin", "skiff"]))?;
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| std::path::PathBuf::from(d).join(".."))
        .unwrap_or_else(|_| ".".into());
    let bin = root.join("target/release/skiff");
    let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
    run(Command::new(&bin).arg("up").args(extra))?;
    eprintln!(
        "\nThe skiff binary is {}; add it to PATH: export PATH=$PWD/target/release:$PATH",
        bin.display()
    );
    Ok(())
}

fn bench(extra: &[String]) -> Result<(), String> {
    packages()?;
    // The benchmarks run the release server binary as its own process, as etcd is.
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "skiff",
        "-p",
        "skiff-perf",
        "--bins",
    ]))?;
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| std::path::PathBuf::from(d).join(".."))
        .unwrap_or_else(|_| ".".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    run(Command::new(target.join("skiff-bench"))
        .args(extra)
        .env("SKIFF_BIN", target.join("skiff")))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match task {
        "setup" => setup(),
        "test" => test(rest),
        "up" => up(rest),
        "bench" => bench(rest),
        _ => {
            eprintln!("usage: cargo xtask <setup|test|up|bench>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
