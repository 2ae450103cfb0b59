//! Pulling from a real OCI registry: Debian's docker-registry on a loopback port with its
//! own storage, the busybox image pushed to it, pulled into a node store; a second pull
//! downloads nothing; a missing image is an error naming it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use skiff_kubelet::image::ImageStore;
use skiff_kubelet::image::build::{BUSYBOX, busybox_image};

/// A docker-registry process, killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (cargo xtask setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes the busybox image (built from busybox-static) as `reference`.
async fn push_busybox(work: &Path, reference: &str) {
    let layout = work.join("layout");
    busybox_image(&layout, reference, Path::new(BUSYBOX)).expect("build image");
    let blobs = layout.join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("json");
    let blob = |digest: &str| {
        std::fs::read(blobs.join(digest.trim_start_matches("sha256:"))).expect("blob")
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(
        index["manifests"][0]["digest"].as_str().expect("digest"),
    ))
    .expect("manifest");
    let layer = blob(manifest["layers"][0]["digest"].as_str().expect("layer"));
    let config = blob(manifest["config"]["digest"].as_str().expect("config"));
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let r: Reference = reference.parse().expect("reference");
    client
        .push(
            &r,
            &[ImageLayer::oci_v1_gzip(layer, None)],
            Config::new(
                config,
                "application/vnd.oci.image.config.v1+json".into(),
                None,
            ),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push");
}

#[tokio::test]
async fn an_image_pulled_from_a_registry_lands_in_the_store_once() {
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(work.path());
    let reference = format!("{}/skiff/busybox:1", registry.addr);
    push_busybox(work.path(), &reference).await;

    let store = ImageStore::open(&work.path().join("node")).expect("store");
    let mut events = Vec::new();
    let (image, report) = store
        .pull_with_progress(&reference, |p| events.push((p.index, p.total, p.state)))
        .await
        .expect("pull");
    use skiff_kubelet::image::LayerState;
    assert_eq!(
        events,
        [
            (0, 1, LayerState::Downloading),
            (0, 1, LayerState::Unpacked)
        ],
        "progress per layer"
    );
    assert_eq!(image.reference, reference);
    assert_eq!(image.config.cmd, ["sh"]);
    assert_eq!((report.downloaded_layers, report.cached_layers), (1, 0));
    assert!(report.downloaded_bytes > 100_000, "{report:?}");
    let dirs = store.layer_dirs(&image).expect("dirs");
    assert_eq!(
        std::fs::read(dirs[0].join("bin/busybox")).expect("busybox"),
        std::fs::read(BUSYBOX).expect("original")
    );
    assert_eq!(store.get(&reference).expect("read"), Some(image.clone()));

    // Again: the layer is there already.
    let (again, report) = store.pull(&reference).await.expect("pull again");
    assert_eq!(again, image);
    assert_eq!((report.downloaded_layers, report.cached_layers), (1 - 1, 1));

    // A tag the registry does not have.
    let missing = format!("{}/skiff/busybox:nope", registry.addr);
    let err = store.pull(&missing).await.expect_err("missing image");
    assert!(err.to_string().contains("skiff/busybox:nope"), "{err}");
    assert!(store.get(&missing).expect("read").is_none());
}

#[tokio::test]
async fn pull_policies_decide_whether_the_registry_is_asked() {
    use skiff_kubelet::image::{ImageUnavailable, PullPolicy};
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(work.path());
    let reference = format!("{}/skiff/busybox:2", registry.addr);
    push_busybox(work.path(), &reference).await;
    let store = ImageStore::open(&work.path().join("node")).expect("store");

    // Never, and not on the node: ErrImageNeverPull, the registry is not asked.
    let err = store
        .ensure(&reference, PullPolicy::Never)
        .await
        .expect_err("never pull");
    assert_eq!(err.reason(), "ErrImageNeverPull");
    assert!(matches!(err, ImageUnavailable::NeverPull(_)));

    // IfNotPresent pulls once; then the image is used even with the registry gone.
    let img = store
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await
        .expect("pulled");
    drop(registry);
    assert_eq!(
        store
            .ensure(&reference, PullPolicy::IfNotPresent)
            .await
            .expect("present"),
        img
    );
    assert_eq!(
        store
            .ensure(&reference, PullPolicy::Never)
            .await
            .expect("present"),
        img
    );
    // Always asks the registry, which is gone: ErrImagePull.
    let err = store
        .ensure(&reference, PullPolicy::Always)
        .await
        .expect_err("registry gone");
    assert_eq!(err.reason(), "ErrImagePull");
}
