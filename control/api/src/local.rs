//! What a client of the API speaks, independent of how it reaches the server: list and
//! delete options, raw lists and watch events, and [`LocalApi`], the API as a Rust trait for
//! components that run inside the API server's process (`skiff server` runs the scheduler
//! and the controller manager in-process). `skiff_client::Client::local` calls it instead
//! of sending gRPC over loopback, so nothing is encoded or copied on the way, and lists and
//! watches hand out the server's own bytes ([`RawObject`]), which the informers' compact
//! caches keep instead of a copy of every object. The API server implements it; the
//! semantics and errors are the gRPC API's. It lives here so that the API server and the
//! client both depend on it without depending on each other.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

use crate::ApiError;
use crate::proto::{BindRequest, PodExecRequest, PodLogsRequest};
use crate::raw::RawObject;

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub label_selector: String,
    pub field_selector: String,
    pub limit: i64,
    pub continue_token: String,
    pub resource_version: String,
}

impl ListParams {
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = selector.to_string();
        self
    }

    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = selector.to_string();
        self
    }
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteParams {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: String,
    pub precondition_resource_version: String,
    pub propagation_policy: String,
}

/// A list as JSON items (complete JSON, or [`RawObject`]s as the server holds them).
#[derive(Debug, Clone)]
pub struct RawList<O = Bytes> {
    pub items: Vec<O>,
    pub resource_version: String,
    pub continue_token: String,
}

/// One watch event as JSON (complete JSON, or a [`RawObject`] as the server holds it).
#[derive(Debug, Clone)]
pub enum RawEvent<O = Bytes> {
    Added(O),
    Modified(O),
    Deleted(O),
    /// A bookmark: the resourceVersion, and whether it ends the initial events.
    Bookmark(String, bool),
}

impl<O> RawEvent<O> {
    pub fn map<P>(self, f: impl FnOnce(O) -> P) -> RawEvent<P> {
        match self {
            RawEvent::Added(o) => RawEvent::Added(f(o)),
            RawEvent::Modified(o) => RawEvent::Modified(f(o)),
            RawEvent::Deleted(o) => RawEvent::Deleted(f(o)),
            RawEvent::Bookmark(rv, end) => RawEvent::Bookmark(rv, end),
        }
    }
}

/// A watch whose objects are [`RawObject`]s.
pub type ObjectWatch = Pin<Box<dyn Stream<Item = Result<RawEvent<RawObject>, ApiError>> + Send>>;
/// A container's log as chunks.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>> + Send>>;
/// An exec's input after its first message: stdin chunks and terminal sizes (`start`
/// unset); its end closes the command's stdin.
pub type ExecInputStream = Pin<Box<dyn Stream<Item = crate::proto::ExecInput> + Send>>;
/// A command's output as it runs, then its exit code.
pub type ExecStream =
    Pin<Box<dyn Stream<Item = Result<crate::proto::ExecOutput, ApiError>> + Send>>;

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
    /// `create` of an Event handed over typed (no JSON on the way in).
    async fn create_event(
        &self,
        namespace: &str,
        event: k8s_openapi::api::core::v1::Event,
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
    /// `input` feeds the command's stdin when `req.stdin` is set, and resizes its terminal
    /// when `req.tty` is.
    async fn pod_exec(
        &self,
        req: PodExecRequest,
        input: ExecInputStream,
    ) -> Result<ExecStream, ApiError>;
    /// Node `node`'s data plane counters, from its agent.
    async fn dataplane_stats(
        &self,
        node: &str,
    ) -> Result<Vec<crate::proto::FrontendCounters>, ApiError>;
}
