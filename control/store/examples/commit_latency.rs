//! Sequential commit latency of the embedded store (one writer, so no batching): how much
//! of a single client's write time the store itself takes.
//! `cargo run --release -p skiff-store --example commit_latency [DIR]`

use std::time::Instant;

use bytes::Bytes;
use skiff_store::Store;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("skiff-commit-{}", std::process::id()))
        });
    let store = EmbeddedStore::open(&dir, EmbeddedOptions::default())?;
    let value = Bytes::from(vec![b'x'; 1024]);
    let n = 2000;
    let start = Instant::now();
    for i in 0..n {
        store.create(&format!("/bench/{i}"), value.clone()).await?;
    }
    let per = start.elapsed() / n;
    println!("{per:?} per sequential create ({n} creates, 1 KiB values)");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
