//! Compiles the benchmarks' own BPF object (`bpf/trafficgen.c`: the NodePort benchmark's
//! in-kernel traffic generator and sink) with clang-19, as the data plane's build does.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let src = manifest.join("bpf/trafficgen.c");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("trafficgen.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=SKIFF_CLANG");
    let clang = std::env::var("SKIFF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {} ({s})", src.display()),
        Err(e) => panic!(
            "cannot run `{clang}` to compile {}: {e}. Install clang-19 and libbpf-dev with \
             `cargo xtask setup` (or set SKIFF_CLANG).",
            src.display()
        ),
    }
    println!("cargo:rustc-env=SKIFF_TRAFFICGEN_OBJECT={}", out.display());
}
