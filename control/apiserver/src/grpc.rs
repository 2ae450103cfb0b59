//! The gRPC face of the registry: translates `skiff.v1.Api` requests into registry calls and
//! registry errors into gRPC statuses carrying a Kubernetes Status.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use skiff_api::ApiError;
use skiff_api::proto::api_server::Api;
use skiff_api::proto::node_client::NodeClient;
use skiff_api::proto::{
    BindBatchRequest, BindBatchResponse, BindRequest, BindResult, CreateRequest,
    DataplaneStatsRequest, DataplaneStatsResponse, DeleteRequest, DeleteResponse, ExecInput,
    ExecOutput, GetRequest, ListRequest, ListResponse, LogChunk, ObjectResponse, PatchRequest,
    PodExecRequest, PodLogsRequest, UpdateRequest, VersionRequest, VersionResponse, WatchRequest,
};
use skiff_api::raw::RawObject;
use skiff_api::watch_batch::WatchBatch;
use tonic::{Request, Response, Status};

use crate::registry::{DeleteOptions, Registry};

/// The `skiff.v1.Api` service (also served in-process: [`crate::local`]).
pub struct ApiService {
    pub(crate) registry: Arc<Registry>,
}

impl ApiService {
    pub fn new(registry: Arc<Registry>) -> Self {
        ApiService { registry }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

/// A Kubernetes ServiceUnavailable status (with details, so clients do not mistake it for
/// an unreachable API server).
fn unavailable(msg: String) -> Status {
    skiff_api::ApiError::new(skiff_api::Reason::ServiceUnavailable, msg).into()
}

/// A node's error as the API server's own (a Kubernetes Status in the details).
fn from_node(s: Status) -> Status {
    skiff_api::ApiError::from_grpc(&s).into()
}

impl ApiService {
    /// Binds every pod of `bindings` at once (the store's group commit writes them
    /// together); one result per binding, in order.
    pub(crate) async fn bind_all(&self, bindings: Vec<BindRequest>) -> Vec<Result<(), ApiError>> {
        futures::future::join_all(bindings.into_iter().map(|b| async move {
            self.registry
                .bind(&b.namespace, &b.name, &b.binding)
                .await
                .map(|_| ())
        }))
        .await
    }

    /// Runs an exec on the node of its pod: the request, then its input (stdin, terminal
    /// sizes; when asked for) as the node's call's further messages; the node's output back.
    pub(crate) async fn exec_on_node(
        &self,
        start: PodExecRequest,
        input: skiff_api::local::ExecInputStream,
    ) -> Result<ExecStream, Status> {
        let mut node = self.node_of(&start.namespace, &start.name).await?;
        let stream = node
            .exec(skiff_api::exec::CallInput::new(start, input))
            .await
            .map_err(from_node)?
            .into_inner();
        Ok(Box::pin(stream.map(|r| r.map_err(from_node))))
    }

    /// A connection to the node agent running pod `ns/name` (kube-apiserver's proxy to the
    /// kubelet): the pod's node, then the node's InternalIP and daemon endpoint port.
    pub(crate) async fn node_of(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<NodeClient<tonic::transport::Channel>, Status> {
        let pod = self.registry.get("pods", ns, name).await?;
        let pod: serde_json::Value =
            serde_json::from_slice(&pod).map_err(|e| Status::internal(e.to_string()))?;
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(serde_json::Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Status::from(skiff_api::ApiError::bad_request(format!(
                    "pod {name} is not scheduled to a node yet"
                )))
            })?
            .to_string();
        self.node_client(&node).await
    }

    /// A connection to node `node`'s agent: its InternalIP (or the preferred address
    /// type) and daemon endpoint port.
    pub(crate) async fn node_client(
        &self,
        node: &str,
    ) -> Result<NodeClient<tonic::transport::Channel>, Status> {
        let obj = self.registry.get("nodes", "", node).await?;
        let obj: serde_json::Value =
            serde_json::from_slice(&obj).map_err(|e| Status::internal(e.to_string()))?;
        let addresses = obj
            .pointer("/status/addresses")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let types = self.registry.kubelet_address_types();
        let ip = types
            .iter()
            .find_map(|t| {
                addresses
                    .iter()
                    .find(|x| x["type"] == t.as_str())
                    .and_then(|x| x["address"].as_str())
            })
            .ok_or_else(|| {
                unavailable(format!(
                    "node {node} has no address of the types {}",
                    types.join(", ")
                ))
            })?
            .to_string();
        let port = obj
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(serde_json::Value::as_i64)
            .filter(|p| *p > 0)
            .ok_or_else(|| unavailable(format!("node {node} serves no daemon endpoint")))?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{port}"))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| unavailable(format!("node {node} ({ip}:{port}): {e}")))?;
        Ok(NodeClient::new(channel))
    }
}

#[tonic::async_trait]
impl Api for ApiService {
    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let r = req.into_inner();
        let object = self
            .registry
            .create(&r.resource, &r.namespace, &r.object)
            .await?;
        Ok(Response::new(ObjectResponse { object }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<ObjectResponse>, Status> {
        let r = req.into_inner();
        let object = self
            .registry
            .get(&r.resource, &r.namespace, &r.name)
            .await?;
        Ok(Response::new(ObjectResponse { object }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let r = req.into_inner();
        let info = Registry::info(&r.resource)?;
        let filter = Registry::filter(info, &r.namespace, &r.label_selector, &r.field_selector)?;
        let list = self
            .registry
            .list(
                &r.resource,
                filter,
                r.limit,
                &r.continue_token,
                &r.resource_version,
            )
            .await?;
        Ok(Response::new(ListResponse {
            resource_version: list.resource_version.to_string(),
            continue_token: list.continue_token,
            remaining_item_count: 0,
            items: list.items.iter().map(RawObject::json).collect(),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let r = req.into_inner();
        let object = self
            .registry
            .update(
                &r.resource,
                &r.namespace,
                &r.name,
                &r.object,
                &r.subresource,
            )
            .await?;
        Ok(Response::new(ObjectResponse { object }))
    }

    async fn patch(&self, req: Request<PatchRequest>) -> Result<Response<ObjectResponse>, Status> {
        let r = req.into_inner();
        let object = self
            .registry
            .patch(&r.resource, &r.namespace, &r.name, &r.patch, &r.subresource)
            .await?;
        Ok(Response::new(ObjectResponse { object }))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let options = DeleteOptions {
            grace_period_seconds: (r.grace_period_seconds >= 0).then_some(r.grace_period_seconds),
            precondition_uid: r.precondition_uid,
            precondition_resource_version: r.precondition_resource_version,
            propagation_policy: r.propagation_policy,
        };
        let (object, removed) = self
            .registry
            .delete(&r.resource, &r.namespace, &r.name, options)
            .await?;
        Ok(Response::new(DeleteResponse { object, removed }))
    }

    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<ObjectResponse>, Status> {
        let r = req.into_inner();
        let object = self
            .registry
            .bind(&r.namespace, &r.name, &r.binding)
            .await?;
        Ok(Response::new(ObjectResponse { object }))
    }

    async fn bind_batch(
        &self,
        req: Request<BindBatchRequest>,
    ) -> Result<Response<BindBatchResponse>, Status> {
        let results = self
            .bind_all(req.into_inner().bindings)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(()) => BindResult::default(),
                Err(e) => BindResult {
                    status: bytes::Bytes::from(e.to_status_json().to_string()),
                },
            })
            .collect();
        Ok(Response::new(BindBatchResponse { results }))
    }

    type WatchStream = WatchStream;
    type PodLogsStream = LogStream;
    type PodExecStream = ExecStream;

    async fn pod_logs(&self, req: Request<PodLogsRequest>) -> Result<Response<LogStream>, Status> {
        let r = req.into_inner();
        let mut node = self.node_of(&r.namespace, &r.name).await?;
        let stream = node
            .container_logs(r)
            .await
            .map_err(from_node)?
            .into_inner();
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map_err(from_node)),
        )))
    }

    async fn pod_exec(
        &self,
        req: Request<tonic::Streaming<ExecInput>>,
    ) -> Result<Response<ExecStream>, Status> {
        let mut input = req.into_inner();
        let start = skiff_api::exec::first_request(&mut input).await?;
        self.exec_on_node(start, skiff_api::exec::input_of(input))
            .await
            .map(Response::new)
    }

    async fn dataplane_stats(
        &self,
        req: Request<DataplaneStatsRequest>,
    ) -> Result<Response<DataplaneStatsResponse>, Status> {
        let r = req.into_inner();
        let mut node = self.node_client(&r.node).await?;
        node.dataplane_stats(r).await.map_err(from_node)
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let r = req.into_inner();
        let info = Registry::info(&r.resource)?;
        let filter = Registry::filter(info, &r.namespace, &r.label_selector, &r.field_selector)?;
        let watcher = self
            .registry
            .watch(
                &r.resource,
                filter,
                &r.resource_version,
                r.allow_bookmarks,
                r.send_initial_events,
            )
            .await?;
        Ok(Response::new(Box::pin(watcher.into_batches())))
    }

    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        let store = self.registry.store();
        let revision = store
            .current_revision()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            store: store.backend().to_string(),
            revision,
        }))
    }
}
