//! Compiles the C eBPF programs in `ebpf-programs/` into one BPF object with clang-19.
//!
//! Only stable Rust is available, so the programs are C (see ARCHITECTURE.md). The object
//! lands in OUT_DIR; the crate embeds it and exposes its path for the layout test.

use std::path::PathBuf;

include!("../ebpf-programs/clang.rs");

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let src = manifest.join("../ebpf-programs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("skiff.bpf.o");
    println!("cargo:rerun-if-changed={}", src.display());
    compile_bpf(&src.join("skiff.bpf.c"), &src, &out);
    println!("cargo:rustc-env=SKIFF_BPF_OBJECT={}", out.display());
}
