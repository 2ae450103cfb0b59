//! The API as a Rust trait, for components that run inside the API server's process
//! (`skiff server` runs the scheduler and the controller manager in-process): a
//! [`crate::Client::local`] calls it instead of sending gRPC over loopback, so nothing is
//! encoded or copied on the way, and lists and watches hand out the server's own bytes
//! ([`RawObject`]), which the informers' compact caches keep instead of a copy of every
//! object. The API server implements it; the semantics and errors are the gRPC API's.

use bytes::Bytes;
use skiff_api::ApiError;
use skiff_api::proto::{BindRequest, PodExecRequest, PodLogsRequest};
use skiff_api::raw::RawObject;

use crate::{DeleteParams, ExecStream, ListParams, LogStream, ObjectWatch, RawList};

/// Every call of `skiff.v1.Api`, in-process.
#[tonic::async_trait]
pub trait LocalApi: Send + Sync + 'static {
    /// (version, store backend, current revision).
    async fn version(&self) -> Result<(String, String, i64), ApiError>;
    async fn create(
        &self,
        resource: &str,
        namespace: &str,
        object: Bytes,
    ) -> Result<Bytes, ApiError>;
    async fn get(&self, resource: &str, namespace: &str, name: &str) -> Result<Bytes, ApiError>;
    async fn list(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
    ) -> Result<RawList<RawObject>, ApiError>;
    async fn update(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        object: Bytes,
        subresource: &str,
    ) -> Result<Bytes, ApiError>;
    async fn patch(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        patch: Bytes,
        subresource: &str,
    ) -> Result<Bytes, ApiError>;
    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<(Bytes, bool), ApiError>;
    async fn bind(&self, binding: BindRequest) -> Result<Bytes, ApiError>;
    /// One result per binding, in order.
    async fn bind_batch(&self, bindings: Vec<BindRequest>) -> Vec<Result<(), ApiError>>;
    async fn watch(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
        resource_version: &str,
        send_initial_events: bool,
    ) -> Result<ObjectWatch, ApiError>;
    async fn pod_logs(&self, req: PodLogsRequest) -> Result<LogStream, ApiError>;
    async fn pod_exec(&self, req: PodExecRequest) -> Result<ExecStream, ApiError>;
}
