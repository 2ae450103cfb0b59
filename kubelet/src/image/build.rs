//! Builds the small image the tests and the demo run: Debian's busybox-static as an OCI
//! image layout (one gzip layer: `/bin/busybox`, applet links, a minimal `/etc`).

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked in `/bin` (what the demo, probes and tests call).
const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "cut", "date", "dd", "echo", "env", "false", "grep", "head", "hostname",
    "httpd", "id", "kill", "ls", "mkdir", "mount", "nc", "ps", "pwd", "rm", "sleep", "tail",
    "test", "touch", "tr", "true", "uname", "unshare", "wc", "wget",
];

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// The image's only layer, gzip-compressed.
pub fn busybox_layer(busybox: &Path) -> std::io::Result<Vec<u8>> {
    let bin = std::fs::read(busybox)?;
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "var", "var/www"] {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        b.append_data(
            &mut header(tar::EntryType::Directory, mode, 0),
            d,
            std::io::empty(),
        )?;
    }
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, bin.len() as u64),
        "bin/busybox",
        &bin[..],
    )?;
    for applet in APPLETS {
        b.append_link(
            &mut header(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{applet}"),
            "busybox",
        )?;
    }
    for (path, body) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ("var/www/index.html", "<h1>Hello from Skiff</h1>\n"),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, body.len() as u64),
            path,
            body.as_bytes(),
        )?;
    }
    let tar = b.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    gz.finish()
}

/// Writes an OCI image layout of busybox into `dir`, tagged `reference`; returns the
/// manifest digest.
pub fn busybox_image(dir: &Path, reference: &str, busybox: &Path) -> std::io::Result<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = busybox_layer(busybox)?;
    let diff_id = {
        let mut tar = Vec::new();
        std::io::copy(&mut flate2::read::GzDecoder::new(&layer[..]), &mut tar)?;
        format!("sha256:{}", sha(&tar))
    };
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{}", sha(&layer)), "size": layer.len()}]
    }))?;
    for blob in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(sha(blob)), blob)?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let digest = format!("sha256:{}", sha(&manifest));
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": reference}}]
    });
    std::fs::write(dir.join("index.json"), index.to_string())?;
    Ok(digest)
}
