//! Compiles `proto/skiff.proto` with protox (pure Rust, no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/skiff.proto");
    let fds = protox::compile(["proto/skiff.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".skiff.v1")
        .codec_path("crate::grpc_codec::SkiffCodec")
        // WatchBatch is hand-implemented so that pre-encoded events are written as they are.
        .extern_path(".skiff.v1.WatchBatch", "crate::watch_batch::WatchBatch")
        .compile_fds(fds)?;
    Ok(())
}
