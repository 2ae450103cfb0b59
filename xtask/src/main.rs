//! `cargo xtask setup|test|up|bench`: the project's entry points on a fresh Debian machine.
//!
//! - `setup` installs the Debian packages Skiff needs (quiet when they are present).
//! - `test` runs setup, then every test of the workspace, privileged ones included.
//! - `up` runs setup, builds the release binary and starts a local cluster with the demo.
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

fn setup() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let sudo = if running_as_root() {
        vec![]
    } else {
        vec!["sudo"]
    };
    let apt = |args: &[&str]| {
        let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(apt(&["update", "-qq"]).stdin(std::process::Stdio::null()))?;
    let mut install = apt(&["install", "-y", "-qq"]);
    install.args(&missing).stdin(std::process::Stdio::null());
    run(&mut install)
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
    setup()?;
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
    setup()?;
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
