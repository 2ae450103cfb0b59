//! Unpacking one OCI layer into a directory that overlayfs can stack.
//!
//! OCI marks deletions inside a layer with whiteout files: `.wh.NAME` hides NAME of the
//! layers below, `.wh..wh..opq` hides everything below in its directory. overlayfs has its
//! own marks for the same things, so they are converted while unpacking: a whiteout
//! becomes a 0/0 character device named NAME, an opaque marker becomes the
//! `trusted.overlay.opaque=y` attribute on its directory. The layer directories can then be
//! mounted as overlay lower directories as they are, shared by every container.
//!
//! The compression is read from the blob's first bytes (gzip, zstd, or a plain tar), so a
//! wrong or missing media type does not matter. Entries that would land outside the
//! layer directory (absolute paths, `..`) are refused by the tar crate's `unpack_in`.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// OCI's whiteout prefix and opaque-directory marker.
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading the layer: {0}")]
    Io(#[from] std::io::Error),
    #[error("layer entry {path}: {source}")]
    Entry {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer entry {0}: path leaves the layer")]
    Escapes(String),
}

/// The compression of a layer blob, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Unpacks the layer read from `blob` into `dir` (which must exist and be empty),
/// converting OCI whiteouts to overlayfs ones. Returns the compression it found.
pub fn unpack(blob: impl Read, dir: &Path) -> Result<Compression, LayerError> {
    let mut reader = BufReader::new(blob);
    let compression = Compression::sniff(reader.fill_buf()?);
    let tar: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Compression::None => Box::new(reader),
    };
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let shown = path.display().to_string();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == OPAQUE_MARKER || name.starts_with(WHITEOUT_PREFIX) {
            let parent = inside(dir, path.parent().unwrap_or(Path::new("")))
                .ok_or_else(|| LayerError::Escapes(shown.clone()))?;
            std::fs::create_dir_all(&parent).map_err(|source| LayerError::Entry {
                path: shown.clone(),
                source,
            })?;
            let result = if name == OPAQUE_MARKER {
                set_opaque(&parent)
            } else {
                whiteout(&parent.join(&name[WHITEOUT_PREFIX.len()..]))
            };
            result.map_err(|source| LayerError::Entry {
                path: shown,
                source,
            })?;
            continue;
        }
        let unpacked = entry.unpack_in(dir).map_err(|source| LayerError::Entry {
            path: shown.clone(),
            source,
        })?;
        if !unpacked {
            return Err(LayerError::Escapes(shown));
        }
    }
    Ok(compression)
}

/// `rel` under `dir`, or None if `rel` is absolute or climbs out with `..`.
fn inside(dir: &Path, rel: &Path) -> Option<PathBuf> {
    let mut out = dir.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// An overlayfs whiteout: a character device 0/0.
fn whiteout(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let c = cstring(path)?;
    // SAFETY: a NUL-terminated path; mknod creates one device node.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Marks a directory opaque for overlayfs.
fn set_opaque(dir: &Path) -> std::io::Result<()> {
    let c = cstring(dir)?;
    // SAFETY: NUL-terminated name and path; a 1-byte value that outlives the call.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
