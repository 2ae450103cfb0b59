//! Pulling images from an OCI registry (`oci-client`) into the node's image store.
//!
//! The manifest names the config and the layers; layers the store already has (by digest)
//! are not downloaded again; each new one is streamed to a temporary file and unpacked
//! from there (the store checks its digest). Registries on loopback are spoken to in plain
//! HTTP (tests run Debian's docker-registry on 127.0.0.1), every other one over HTTPS.

use std::path::PathBuf;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::ImageConfiguration;

use super::import::{Image, ImageStore, ImportError, config_of, normalize};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image reference {reference:?}: {message}")]
    Reference { reference: String, message: String },
    #[error("pulling {reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("pulling {reference}: {message}")]
    Config { reference: String, message: String },
    #[error("pulling {reference}: {source}")]
    Io {
        reference: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] ImportError),
}

/// Where a layer of a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    AlreadyPresent,
    Downloading,
    Unpacked,
}

/// One layer's progress during a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    pub index: usize,
    pub total: usize,
    pub digest: String,
    /// Compressed size, from the manifest.
    pub size: u64,
    pub state: LayerState,
}

/// What a pull did, for progress reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    pub downloaded_layers: usize,
    pub cached_layers: usize,
    pub downloaded_bytes: u64,
}

fn loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl ImageStore {
    /// Pulls `reference` (normalized as Kubernetes does) into the store.
    pub async fn pull(&self, reference: &str) -> Result<(Image, PullReport), PullError> {
        self.pull_with_progress(reference, |_| {}).await
    }

    /// `pull`, telling `progress` about each layer as it goes.
    pub async fn pull_with_progress(
        &self,
        reference: &str,
        mut progress: impl FnMut(&LayerProgress),
    ) -> Result<(Image, PullReport), PullError> {
        let normalized = normalize(reference);
        let r: Reference =
            normalized
                .parse()
                .map_err(|e: oci_client::ParseError| PullError::Reference {
                    reference: reference.to_string(),
                    message: e.to_string(),
                })?;
        let protocol = if loopback(r.registry()) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..ClientConfig::default()
        });
        let registry = |source| PullError::Registry {
            reference: normalized.clone(),
            source,
        };
        let (manifest, digest) = client
            .pull_image_manifest(&r, &RegistryAuth::Anonymous)
            .await
            .map_err(registry)?;
        let mut raw_config = Vec::new();
        client
            .pull_blob(&r, &manifest.config, &mut raw_config)
            .await
            .map_err(registry)?;
        let config =
            ImageConfiguration::from_reader(&raw_config[..]).map_err(|e| PullError::Config {
                reference: normalized.clone(),
                message: e.to_string(),
            })?;
        let mut report = PullReport::default();
        let mut layers = Vec::new();
        let total = manifest.layers.len();
        for (index, layer) in manifest.layers.iter().enumerate() {
            let d = layer.digest.clone();
            let mut event = LayerProgress {
                index,
                total,
                digest: d.clone(),
                size: u64::try_from(layer.size).unwrap_or(0),
                state: LayerState::Downloading,
            };
            if self.layers.has(&d).map_err(ImportError::from)? {
                report.cached_layers += 1;
                event.state = LayerState::AlreadyPresent;
                progress(&event);
            } else {
                progress(&event);
                let tmp = self.tmp_file(&d);
                let io = |source| PullError::Io {
                    reference: normalized.clone(),
                    source,
                };
                let file = tokio::fs::File::create(&tmp).await.map_err(io)?;
                let pulled = client.pull_blob(&r, layer, file).await;
                if let Err(e) = pulled {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(registry(e));
                }
                report.downloaded_bytes += std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
                let unpacked = std::fs::File::open(&tmp)
                    .map_err(io)
                    .and_then(|f| Ok(self.layers.unpack(&d, f).map_err(ImportError::from)?));
                let _ = std::fs::remove_file(&tmp);
                unpacked?;
                report.downloaded_layers += 1;
                event.state = LayerState::Unpacked;
                progress(&event);
            }
            layers.push(d);
        }
        let image = Image {
            reference: normalized,
            manifest: digest,
            layers,
            config: config_of(&config),
        };
        self.save(&image)?;
        Ok((image, report))
    }

    fn tmp_file(&self, digest: &str) -> PathBuf {
        self.tmp.join(format!(
            "pull-{}-{}",
            std::process::id(),
            digest.trim_start_matches("sha256:")
        ))
    }
}
