//! Importing images built here from Debian's busybox-static: an OCI layout (directory and
//! tar archive) and a legacy `docker save` archive, checked blob by blob, with a bad blob
//! refused.

use std::path::Path;

use serde_json::json;
use skiff_kubelet::image::{ImageStore, ImportError};

use skiff_kubelet::image::build::{BUSYBOX, busybox_image, busybox_layer};

/// The busybox OCI layout in `dir`; returns (manifest digest, layer digest).
fn oci_layout(dir: &Path, reference: &str) -> (String, String) {
    let manifest = busybox_image(dir, reference, Path::new(BUSYBOX))
        .expect("build the busybox image (cargo xtask setup installs busybox-static)");
    let raw = std::fs::read(
        dir.join("blobs/sha256")
            .join(manifest.trim_start_matches("sha256:")),
    )
    .expect("manifest blob");
    let m: serde_json::Value = serde_json::from_slice(&raw).expect("manifest json");
    let layer = m["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_string();
    (manifest, layer)
}

fn config() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f", "-p", "80"],
                   "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .expect("json")
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    b.append_dir_all(".", dir).expect("tar dir");
    b.finish().expect("finish");
}

#[test]
fn an_oci_layout_imports_from_a_directory_and_from_a_tar_archive() {
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let (manifest, layer) = oci_layout(&layout, "skiff/busybox:test");
    let store = ImageStore::open(&work.path().join("store")).expect("store");

    let images = store.import(&layout).expect("import directory");
    assert_eq!(images.len(), 1);
    let img = store
        .get("skiff/busybox:test")
        .expect("read")
        .expect("imported");
    assert_eq!(img.reference, "docker.io/skiff/busybox:test");
    assert_eq!(img.manifest, manifest);
    assert_eq!(img.layers, vec![layer.clone()]);
    assert!(img.config.entrypoint.is_empty());
    assert_eq!(img.config.cmd, ["sh"]);
    assert_eq!(img.config.env, ["PATH=/bin"]);
    let dirs = store.layer_dirs(&img).expect("dirs");
    let busybox = dirs[0].join("bin/busybox");
    assert_eq!(
        std::fs::read(&busybox).expect("unpacked"),
        std::fs::read(BUSYBOX).expect("original")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&busybox)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // The same image as a tar archive (`docker save` writes this form since Docker 25).
    let archive = work.path().join("image.tar");
    tar_dir(&layout, &archive);
    let again = ImageStore::open(&work.path().join("store2")).expect("store");
    assert_eq!(again.import(&archive).expect("import archive"), images);
    assert!(
        std::fs::read_dir(work.path().join("store2/import"))
            .expect("tmp")
            .next()
            .is_none(),
        "the unpacked archive is removed"
    );
}

#[test]
fn a_legacy_docker_save_archive_imports_with_all_its_tags() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("save");
    std::fs::create_dir_all(dir.join("abc")).expect("dir");
    let layer = busybox_layer(Path::new(BUSYBOX)).expect("layer");
    std::fs::write(dir.join("abc/layer.tar"), &layer).expect("layer");
    std::fs::write(dir.join("cfg.json"), config()).expect("config");
    let manifest = json!([{"Config": "cfg.json", "RepoTags": ["busybox:a", "busybox:b"],
                           "Layers": ["abc/layer.tar"]}]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).expect("manifest");
    let archive = work.path().join("save.tar");
    tar_dir(&dir, &archive);
    let store = ImageStore::open(&work.path().join("store")).expect("store");
    let images = store.import(&archive).expect("import");
    assert_eq!(
        images
            .iter()
            .map(|i| i.reference.as_str())
            .collect::<Vec<_>>(),
        ["docker.io/library/busybox:a", "docker.io/library/busybox:b"]
    );
    assert_eq!(
        images[0].layers, images[1].layers,
        "one layer, unpacked once"
    );
    let b = store.get("busybox:b").expect("read").expect("tagged");
    assert_eq!(b.config.cmd, ["httpd", "-f", "-p", "80"]);
    assert_eq!(b.config.entrypoint, ["/bin/busybox"]);
}

#[test]
fn a_corrupt_blob_or_an_unknown_layout_is_refused_and_nothing_is_recorded() {
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let (_, layer) = oci_layout(&layout, "broken:1");
    let blob = layout
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).expect("corrupt");
    let store = ImageStore::open(&work.path().join("store")).expect("store");
    match store.import(&layout) {
        Err(ImportError::Digest { expected, .. }) => assert_eq!(expected, layer),
        other => panic!("{other:?}"),
    }
    assert!(store.get("broken:1").expect("read").is_none());

    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let err = store.import(&empty).expect_err("not an image");
    assert!(err.to_string().contains("index.json"), "{err}");
}
