//! The node's content-addressed layer store: each layer unpacked once, by digest.
//!
//! `<root>/sha256/<hex>` holds the unpacked layer whose compressed blob has that digest.
//! A layer is unpacked into a private temporary directory while its blob is hashed; only
//! if the digest matches is it renamed into place, so a directory under `sha256/` is
//! always complete and verified, and two agents (or two pods) unpacking the same layer at
//! once both end with the one copy.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layer::{self, LayerError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("layer store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("digest {0}: only sha256:<64 hex digits> is supported")]
    BadDigest(String),
    #[error("layer {expected}: the blob's digest is {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: LayerError,
    },
}

/// Unpacked layers by digest.
pub struct LayerStore {
    root: PathBuf,
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl LayerStore {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in [root.join("sha256"), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        Ok(LayerStore {
            root: root.to_path_buf(),
        })
    }

    /// Where the layer `digest` is (or would be) unpacked.
    pub fn path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("sha256").join(hex_of(digest)?))
    }

    /// Whether the layer is already unpacked.
    pub fn has(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.path(digest)?.is_dir())
    }

    /// The unpacked layer `digest`: unpacked from `blob` unless it already is (then `blob`
    /// is not read at all).
    pub fn unpack(&self, digest: &str, blob: impl Read) -> Result<PathBuf, StoreError> {
        let target = self.path(digest)?;
        if target.is_dir() {
            return Ok(target);
        }
        let hex = hex_of(digest)?;
        let tmp = self.root.join("tmp").join(format!(
            "{hex}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let mut reader = HashingReader {
            inner: blob,
            hasher: Sha256::new(),
        };
        let unpacked = layer::unpack(&mut reader, &tmp).and_then(|_| {
            // Hash the rest too (a tar's trailing padding): the digest covers the blob.
            std::io::copy(&mut reader, &mut std::io::sink())?;
            Ok(())
        });
        if let Err(source) = unpacked {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(StoreError::Layer {
                digest: digest.to_string(),
                source,
            });
        }
        let actual = format!("sha256:{:x}", reader.hasher.finalize());
        if actual != digest {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(StoreError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        match std::fs::rename(&tmp, &target) {
            Ok(()) => Ok(target),
            // Someone else finished the same layer first: theirs is as good.
            Err(_) if target.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(target)
            }
            Err(source) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(StoreError::Io {
                    path: target,
                    source,
                })
            }
        }
    }
}

fn hex_of(digest: &str) -> Result<&str, StoreError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| StoreError::BadDigest(digest.to_string()))
}
