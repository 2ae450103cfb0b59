//! Skiff's object model: the Kubernetes kinds Skiff serves (as `k8s-openapi` types), their
//! validation and defaulting, manifest decoding, label/field selectors, Kubernetes-shaped
//! errors, and the gRPC protocol every component speaks.
//!
//! Objects travel as Kubernetes JSON; this crate is where JSON meets types. Nothing here opens
//! a file or a socket; `coalesce` shapes how a connection's writes reach its socket.

pub mod coalesce;
pub mod codec;
pub mod defaults;
pub mod error;
pub mod exec;
pub mod grpc_codec;
pub mod local;
pub mod object;
pub mod raw;
pub mod resource;
pub mod selector;
pub mod validation;
pub mod watch_batch;

/// Generated gRPC messages and services (`proto/skiff.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("skiff.v1");
}

pub use error::{ApiError, Cause, Reason};
pub use resource::ResourceInfo;

/// Largest object the API accepts, as in Kubernetes (1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024 / 2;

/// Annotation on the bookmark that ends the initial events of a watch (KEP-3157).
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
