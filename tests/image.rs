//! `skiff image`: build the busybox image, import it, list it; a path that is no image is
//! refused with a non-zero exit and a message naming the path.

mod support;

use std::process::Command;

use support::SKIFF;

fn skiff(args: &[&str]) -> std::process::Output {
    Command::new(SKIFF)
        .args(args)
        .env("SKIFF_LOG", "error")
        .output()
        .expect("run skiff")
}

#[test]
fn build_import_and_list_the_busybox_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("busybox-oci");
    let store = dir.path().join("images");
    let store = store.to_str().expect("utf8");
    let out = skiff(&["image", "build-busybox", layout.to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");

    let out = skiff(&[
        "image",
        "--data-dir",
        store,
        "import",
        layout.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("imported docker.io/skiff/busybox:latest (sha256:"),
        "{text}"
    );

    let out = skiff(&["image", "--data-dir", store, "ls"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("IMAGE"), "{text}");
    assert!(
        lines[1].starts_with("docker.io/skiff/busybox:latest"),
        "{text}"
    );
    assert!(lines[1].trim_end().ends_with('1'), "one layer: {text}");

    let out = skiff(&["image", "--data-dir", store, "import", store]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("index.json") && err.contains(store), "{err}");
}
