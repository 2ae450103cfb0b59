//! Compiles the C eBPF programs in `ebpf-programs/` into one BPF object with clang-19.
//!
//! Only stable Rust is available, so the programs are C (see ARCHITECTURE.md). The object
//! lands in OUT_DIR; the crate embeds it and exposes its path for the layout test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let src = manifest.join("../ebpf-programs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("skiff.bpf.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=SKIFF_CLANG");
    let clang = std::env::var("SKIFF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-I")
        .arg(&src)
        .arg("-c")
        .arg(src.join("skiff.bpf.c"))
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile the eBPF programs ({s})"),
        Err(e) => panic!(
            "cannot run `{clang}` to compile the eBPF programs in {}: {e}. \
             Install clang-19 and libbpf-dev with `cargo xtask setup` (or set SKIFF_CLANG).",
            display(&src)
        ),
    }
    println!("cargo:rustc-env=SKIFF_BPF_OBJECT={}", out.display());
}

fn display(p: &Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}
