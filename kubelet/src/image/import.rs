//! Importing images: an OCI image layout (directory or tar archive, which is also what
//! `docker save` writes since Docker 25) or a legacy `docker save` archive
//! (`manifest.json` + `<id>/layer.tar`).
//!
//! Every blob is checked against its digest; layers go to the `LayerStore` (unpacked once
//! per digest); each image reference gets a record under `images/` naming its manifest,
//! its layers (bottom first) and the parts of its config a container needs. A record is
//! written only after all its layers are in place.

use std::fs::File;
use std::path::{Path, PathBuf};

use oci_spec::image::{ANNOTATION_REF_NAME, ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{LayerStore, StoreError};

/// What a container takes from its image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// An image on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalized reference: `registry/repository:tag`.
    pub reference: String,
    /// Digest of the manifest (or of the legacy archive's manifest entry).
    pub manifest: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: blob {expected} has digest {actual}")]
    Digest {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Images by reference, over a layer store.
pub struct ImageStore {
    images: PathBuf,
    pub(super) tmp: PathBuf,
    pub layers: LayerStore,
}

/// `busybox` -> `docker.io/library/busybox:latest`, as Kubernetes and Docker read it.
pub fn normalize(reference: &str) -> String {
    let (name, tag) = match reference.rsplit_once('@') {
        Some((n, d)) => (n.to_string(), format!("@{d}")),
        None => match reference.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
            _ => (reference.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let name = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{name}{tag}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { path, source }
}

fn format_err(path: &Path, message: impl Into<String>) -> ImportError {
    ImportError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn sha256_file(path: &Path) -> Result<String, ImportError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(format!("sha256:{:x}", h.finalize()))
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self, ImportError> {
        let images = root.join("images");
        let tmp = root.join("import");
        for d in [&images, &tmp] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        Ok(ImageStore {
            images,
            tmp,
            layers: LayerStore::open(&root.join("layers"))?,
        })
    }

    fn record(&self, reference: &str) -> PathBuf {
        // References contain '/' and ':': keep the file name flat and reversible.
        self.images.join(format!(
            "{}.json",
            reference.replace('/', "%2F").replace(':', "%3A")
        ))
    }

    /// The image `reference` (normalized), if the node has it.
    pub fn get(&self, reference: &str) -> Result<Option<Image>, ImportError> {
        let path = self.record(&normalize(reference));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format_err(&path, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every image on the node, by reference.
    pub fn list(&self) -> Result<Vec<Image>, ImportError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.images)
            .map_err(io(&self.images))?
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                out.push(
                    serde_json::from_slice::<Image>(&bytes)
                        .map_err(|e| format_err(&path, e.to_string()))?,
                );
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The unpacked layer directories of an image, top first (overlayfs' lowerdir order).
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImportError> {
        image
            .layers
            .iter()
            .rev()
            .map(|d| Ok(self.layers.path(d)?))
            .collect()
    }

    /// Imports every image in `path`: an OCI layout or `docker save` output, as a
    /// directory or a tar archive.
    pub fn import(&self, path: &Path) -> Result<Vec<Image>, ImportError> {
        if path.is_dir() {
            return self.import_dir(path);
        }
        let dir = self.tmp.join(format!(
            "{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let result = File::open(path)
            .map_err(io(path))
            .and_then(|f| tar::Archive::new(f).unpack(&dir).map_err(io(path)))
            .and_then(|()| self.import_dir(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn import_dir(&self, dir: &Path) -> Result<Vec<Image>, ImportError> {
        if dir.join("index.json").is_file() {
            self.import_oci(dir)
        } else if dir.join("manifest.json").is_file() {
            self.import_docker(dir)
        } else {
            Err(format_err(
                dir,
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            ))
        }
    }

    /// An OCI blob, checked against its digest.
    fn blob(&self, dir: &Path, digest: &str) -> Result<PathBuf, ImportError> {
        let (algo, hex) = digest
            .split_once(':')
            .ok_or_else(|| format_err(dir, format!("bad digest {digest}")))?;
        let path = dir.join("blobs").join(algo).join(hex);
        let actual = sha256_file(&path)?;
        if actual != digest {
            return Err(ImportError::Digest {
                path,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(path)
    }

    fn import_oci(&self, dir: &Path) -> Result<Vec<Image>, ImportError> {
        let index_path = dir.join("index.json");
        let index = ImageIndex::from_file(&index_path)
            .map_err(|e| format_err(&index_path, e.to_string()))?;
        let mut out = Vec::new();
        for m in index.manifests() {
            let digest = m.digest().to_string();
            let Some(name) = m.annotations().as_ref().and_then(|a| {
                a.get(ANNOTATION_REF_NAME)
                    .or_else(|| a.get("io.containerd.image.name"))
            }) else {
                continue; // an untagged manifest names no image
            };
            let manifest_path = self.blob(dir, &digest)?;
            let manifest = ImageManifest::from_file(&manifest_path)
                .map_err(|e| format_err(&manifest_path, e.to_string()))?;
            let config_path = self.blob(dir, manifest.config().digest().as_ref())?;
            let config = ImageConfiguration::from_file(&config_path)
                .map_err(|e| format_err(&config_path, e.to_string()))?;
            let mut layers = Vec::new();
            for l in manifest.layers() {
                let d = l.digest().to_string();
                let blob = self.blob(dir, &d)?;
                self.layers
                    .unpack(&d, File::open(&blob).map_err(io(&blob))?)?;
                layers.push(d);
            }
            let image = Image {
                reference: normalize(name),
                manifest: digest,
                layers,
                config: config_of(&config),
            };
            self.save(&image)?;
            out.push(image);
        }
        Ok(out)
    }

    fn import_docker(&self, dir: &Path) -> Result<Vec<Image>, ImportError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let manifest_path = dir.join("manifest.json");
        let raw = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&raw).map_err(|e| format_err(&manifest_path, e.to_string()))?;
        let mut out = Vec::new();
        for e in entries {
            let inside = |rel: &str| -> Result<PathBuf, ImportError> {
                let p = Path::new(rel);
                if p.is_absolute() || rel.split('/').any(|c| c == "..") {
                    return Err(format_err(
                        &manifest_path,
                        format!("path {rel} leaves the archive"),
                    ));
                }
                Ok(dir.join(p))
            };
            let config_path = inside(&e.config)?;
            let config = ImageConfiguration::from_file(&config_path)
                .map_err(|err| format_err(&config_path, err.to_string()))?;
            let mut layers = Vec::new();
            for rel in &e.layers {
                let blob = inside(rel)?;
                let d = sha256_file(&blob)?;
                self.layers
                    .unpack(&d, File::open(&blob).map_err(io(&blob))?)?;
                layers.push(d);
            }
            let manifest = format!(
                "sha256:{:x}",
                Sha256::digest(format!("{}{}", e.config, e.layers.join(",")).as_bytes())
            );
            for tag in &e.repo_tags {
                let image = Image {
                    reference: normalize(tag),
                    manifest: manifest.clone(),
                    layers: layers.clone(),
                    config: config_of(&config),
                };
                self.save(&image)?;
                out.push(image);
            }
        }
        Ok(out)
    }

    pub(super) fn save(&self, image: &Image) -> Result<(), ImportError> {
        let path = self.record(&image.reference);
        let tmp = path.with_extension("tmp");
        let bytes =
            serde_json::to_vec_pretty(image).map_err(|e| format_err(&path, e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }
}

pub(super) fn config_of(c: &ImageConfiguration) -> ImageConfig {
    let Some(cfg) = c.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        env: cfg.env().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().unwrap_or_default(),
        user: cfg.user().clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn references_normalize_as_kubernetes_reads_them() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("skiff/demo:v1", "docker.io/skiff/demo:v1"),
            ("127.0.0.1:5000/demo", "127.0.0.1:5000/demo:latest"),
            ("localhost/demo:2", "localhost/demo:2"),
            ("registry.local/a/b:3", "registry.local/a/b:3"),
        ] {
            assert_eq!(normalize(given), want, "{given}");
        }
    }
}
