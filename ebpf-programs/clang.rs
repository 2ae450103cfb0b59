// Shared by the build scripts that compile BPF objects (`dataplane/build.rs`,
// `perf/build.rs`), pulled in with `include!`: only stable Rust is available, so the
// programs are C, compiled with clang-19 (or SKIFF_CLANG).

/// Compiles `src` for the BPF target into `out`, with `include` on the header path;
/// panics with a message that names `cargo xtask setup` when clang is missing.
fn compile_bpf(src: &std::path::Path, include: &std::path::Path, out: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=SKIFF_CLANG");
    let clang = std::env::var("SKIFF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    let status = std::process::Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-I")
        .arg(include)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(out)
        .status();
    let shown = src
        .canonicalize()
        .unwrap_or_else(|_| src.to_path_buf())
        .display()
        .to_string();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {shown} ({s})"),
        Err(e) => panic!(
            "cannot run `{clang}` to compile {shown}: {e}. Install clang-19 and libbpf-dev \
             with `cargo xtask setup` (or set SKIFF_CLANG)."
        ),
    }
}
