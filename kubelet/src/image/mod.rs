//! Images on the node: imported from OCI layouts and `docker save` archives (`import`),
//! their layers unpacked once per digest into a content-addressed store in the form
//! overlayfs stacks (`layer`, `store`).

pub mod build;
pub mod import;
pub mod layer;
pub mod policy;
pub mod pull;
pub mod store;

pub use import::{Image, ImageConfig, ImageStore, ImportError, normalize};
pub use layer::{Compression, LayerError};
pub use policy::{ImageUnavailable, PullPolicy};
pub use pull::{LayerProgress, LayerState, PullError, PullReport};
pub use store::{LayerStore, StoreError};
