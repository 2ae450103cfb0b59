//! Compiles the benchmarks' own BPF object (`bpf/trafficgen.c`: the NodePort benchmark's
//! in-kernel traffic generator and sink) with clang-19, as the data plane's build does.

use std::path::PathBuf;

include!("../ebpf-programs/clang.rs");

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let src = manifest.join("bpf");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("trafficgen.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=../ebpf-programs/clang.rs");
    compile_bpf(&src.join("trafficgen.c"), &src, &out);
    println!("cargo:rustc-env=SKIFF_TRAFFICGEN_OBJECT={}", out.display());
}
