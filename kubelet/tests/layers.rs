//! Layers unpacked into the store and stacked by a real overlayfs mount: whiteouts and
//! opaque directories hide what they should, gzip and zstd give the same tree, a wrong
//! digest or an escaping path leaves nothing behind, and a layer is unpacked only once.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use skiff_kubelet::image::{LayerStore, StoreError};

enum E<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Link(&'a str, &'a str),
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::File(path, body) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, path, body.as_bytes()).expect("file");
            }
            E::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).expect("dir");
            }
            E::Link(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).expect("symlink");
            }
        }
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

fn digest(blob: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(blob))
}

/// A read-only overlay of `lowers` (top first), unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lowers: &[&Path], at: &Path) -> Overlay {
        std::fs::create_dir_all(at).expect("mountpoint");
        let opts = format!(
            "lowerdir={}",
            lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        );
        let target = CString::new(at.as_os_str().as_bytes()).expect("path");
        let data = CString::new(opts).expect("opts");
        // SAFETY: NUL-terminated strings alive for the call.
        let rc = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                libc::MS_RDONLY,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount overlay: {}", std::io::Error::last_os_error());
        Overlay(at.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).expect("path");
        // SAFETY: a path we mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn whiteouts_and_opaque_directories_hide_the_layers_below_in_a_real_overlay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LayerStore::open(&dir.path().join("layers")).expect("store");
    let base = gzip(&tar(&[
        E::Dir("a"),
        E::File("a/keep", "kept"),
        E::File("a/gone", "deleted above"),
        E::Dir("b"),
        E::File("b/old", "hidden by the opaque dir above"),
        E::Dir("etc"),
        E::File("etc/hostname", "base"),
        E::Link("etc/link", "hostname"),
    ]));
    let top = zstd(&tar(&[
        E::Dir("a"),
        E::File("a/.wh.gone", ""),
        E::Dir("b"),
        E::File("b/.wh..wh..opq", ""),
        E::File("b/new", "from the top layer"),
        E::File("etc/hostname", "top"),
    ]));
    let l1 = store.unpack(&digest(&base), &base[..]).expect("base layer");
    let l2 = store.unpack(&digest(&top), &top[..]).expect("top layer");

    // In the layer itself the whiteout is overlayfs': a 0/0 character device.
    let wh = std::fs::symlink_metadata(l2.join("a/gone")).expect("whiteout");
    assert!(wh.file_type().is_char_device());

    let root = Overlay::mount(&[&l2, &l1], &dir.path().join("rootfs"));
    let r = &root.0;
    assert_eq!(
        std::fs::read_to_string(r.join("a/keep")).expect("keep"),
        "kept"
    );
    assert!(!r.join("a/gone").exists(), "whiteout ignored");
    assert!(!r.join("b/old").exists(), "opaque directory ignored");
    assert_eq!(
        std::fs::read_to_string(r.join("b/new")).expect("new"),
        "from the top layer"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/hostname")).expect("h"),
        "top"
    );
    assert_eq!(
        std::fs::read_link(r.join("etc/link")).expect("symlink"),
        PathBuf::from("hostname")
    );
    let names: Vec<String> = std::fs::read_dir(r.join("b"))
        .expect("ls b")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["new"], "no OCI marker file shows through");
}

#[test]
fn gzip_zstd_and_plain_layers_unpack_to_the_same_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LayerStore::open(dir.path()).expect("store");
    let plain = tar(&[E::Dir("x"), E::File("x/y", "same")]);
    for blob in [plain.clone(), gzip(&plain), zstd(&plain)] {
        let p = store.unpack(&digest(&blob), &blob[..]).expect("unpack");
        assert_eq!(std::fs::read_to_string(p.join("x/y")).expect("y"), "same");
    }
}

#[test]
fn a_layer_is_unpacked_once_per_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LayerStore::open(dir.path()).expect("store");
    let blob = gzip(&tar(&[E::File("f", "x")]));
    let d = digest(&blob);
    let first = store.unpack(&d, &blob[..]).expect("unpack");
    struct MustNotRead;
    impl std::io::Read for MustNotRead {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("an unpacked layer was read again")
        }
    }
    assert_eq!(store.unpack(&d, MustNotRead).expect("cached"), first);
    assert!(store.has(&d).expect("digest"));
}

#[test]
fn a_wrong_digest_or_an_escaping_path_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LayerStore::open(&dir.path().join("store")).expect("store");
    let blob = gzip(&tar(&[E::File("f", "x")]));
    let wrong = digest(b"something else");
    match store.unpack(&wrong, &blob[..]) {
        Err(StoreError::DigestMismatch { actual, .. }) => assert_eq!(actual, digest(&blob)),
        other => panic!("{other:?}"),
    }
    assert!(!store.has(&wrong).expect("digest"));

    // A hand-made entry named ../evil (the tar crate refuses to write one).
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..7].copy_from_slice(b"../evil");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(b"x");
    raw.resize(1024, 0);
    raw.extend_from_slice(&[0u8; 1024]);
    let err = store
        .unpack(&digest(&raw), &raw[..])
        .expect_err("escaping path");
    assert!(err.to_string().contains("evil"), "{err}");
    assert!(!dir.path().join("evil").exists(), "wrote outside the layer");
    assert_eq!(
        std::fs::read_dir(dir.path().join("store/tmp"))
            .expect("tmp")
            .count(),
        0,
        "temporary directories left behind"
    );

    assert!(matches!(
        store.unpack("md5:abc", &blob[..]),
        Err(StoreError::BadDigest(_))
    ));
}
