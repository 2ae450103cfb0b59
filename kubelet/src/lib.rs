//! Skiff's node agent (`skiff node`). Built up issue by issue; so far: the image layer store
//! (`image`): OCI layers unpacked once per digest, whiteouts converted for overlayfs.

pub mod agent;
pub mod image;
pub mod runtime;
