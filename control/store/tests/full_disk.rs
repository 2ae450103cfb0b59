//! The embedded store on a disk that fills up (a small tmpfs mounted for the test, so the
//! kernel's own ENOSPC): the write that does not fit fails, and once there is room again
//! every acknowledged write, before and after the failure, survives a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use nix::mount::{MntFlags, MsFlags};
use skiff_store::Store;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

/// A tmpfs of `size` mounted on a fresh directory; unmounted when dropped.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size}").as_str()),
        )
        .expect("mount a tmpfs (the test needs root)");
        SmallDisk { _dir: dir, path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH);
    }
}

/// Options that keep redb out of the way: no checkpoint while the disk is full.
fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        checkpoint_bytes: 1 << 30,
        checkpoint_every: Duration::from_secs(3600),
        ..EmbeddedOptions::default()
    }
}

/// Fills the disk at `dir` with a file, leaving about `free` bytes.
fn fill(dir: &Path, free: u64) -> PathBuf {
    let stat = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    let filler = dir.join("filler");
    let size = available.saturating_sub(free) as usize;
    std::fs::write(&filler, vec![7u8; size]).expect("filler");
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_write_that_does_not_fit_and_loses_no_acknowledged_one() {
    let disk = SmallDisk::mount("8m");
    let data = disk.path.join("store");
    let value = |i: usize| Bytes::from(format!("{i:>6}").repeat(1000));
    let mut acknowledged = Vec::new();
    {
        let store = EmbeddedStore::open(&data, options()).expect("open");
        let filler = fill(&disk.path, 64 << 10);
        // ~6 KB records into ~64 KiB: one is torn by the full disk, partway written.
        let mut failed = None;
        for i in 0..100 {
            match store.create(&format!("/k/{i:03}"), value(i)).await {
                Ok(_) => acknowledged.push(i),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        let (at, error) = failed.expect("the disk never filled up");
        assert!(
            error.to_string().contains("No space left on device"),
            "unexpected error: {error}"
        );
        assert!(
            !acknowledged.is_empty(),
            "nothing fitted before the disk was full"
        );
        assert_eq!(
            store.get(&format!("/k/{at:03}"), 0).await.expect("get"),
            None
        );
        // Room again: writes go on, after the last whole record.
        std::fs::remove_file(filler).expect("remove filler");
        for i in 100..110 {
            store
                .create(&format!("/k/{i:03}"), value(i))
                .await
                .expect("a write once there is room again");
            acknowledged.push(i);
        }
    }
    let store = EmbeddedStore::open(&data, options()).expect("reopen");
    for i in &acknowledged {
        let kv = store
            .get(&format!("/k/{i:03}"), 0)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged write /k/{i:03} lost"));
        assert_eq!(kv.value, value(*i));
    }
    let all = store.range("/k/", "", 0, 0).await.expect("range");
    assert_eq!(all.kvs.len(), acknowledged.len());
}
