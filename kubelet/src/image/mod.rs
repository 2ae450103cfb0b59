//! Images on the node: layers unpacked once per digest into a content-addressed store, in
//! the form overlayfs stacks (`layer`, `store`).

pub mod layer;
pub mod store;

pub use layer::{Compression, LayerError};
pub use store::{LayerStore, StoreError};
