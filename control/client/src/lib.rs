//! The client every Skiff component uses to reach the API server: a raw JSON client
//! ([`Client`]), typed access per kind ([`Api`]), and informers ([`informer`]) that keep a
//! local cache in sync with list+watch.
//!
//! Every error is a [`skiff_api::ApiError`], the Kubernetes Status the server sent (or one
//! describing why the server could not be reached), so callers match on `reason`.

pub mod events;
pub mod informer;
mod transport;

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_api::proto::api_client::ApiClient;
use skiff_api::proto::{
    BindBatchRequest, BindRequest, CreateRequest, DeleteRequest, EventType, GetRequest,
    ListRequest, PatchRequest, UpdateRequest, VersionRequest, WatchRequest,
};
use skiff_api::raw::RawObject;
use skiff_api::{ApiError, INITIAL_EVENTS_END, Reason};
use transport::Connection;

pub use skiff_api;
pub use skiff_api::local::{
    DeleteParams, ExecInputStream, ExecStream, ListParams, LocalApi, LogStream, ObjectWatch,
    RawEvent, RawList,
};

/// Default API server address.
pub const DEFAULT_SERVER: &str = "127.0.0.1:6443";

/// Largest message the client accepts (lists can be large).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// One typed watch event.
#[derive(Debug, Clone)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    Bookmark(String, bool),
}

pub type RawWatch = Pin<Box<dyn Stream<Item = Result<RawEvent, ApiError>> + Send>>;
/// How a client reaches the API.
#[derive(Clone)]
enum Transport {
    /// gRPC over a connection.
    Grpc(ApiClient<Connection>),
    /// Calls into an API server in the same process.
    Local(Arc<dyn LocalApi>),
}

/// A connection to the API server, speaking JSON objects. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    address: String,
}

fn grpc_error(status: tonic::Status, address: &str) -> ApiError {
    if status.code() == tonic::Code::Unavailable && status.details().is_empty() {
        return ApiError::new(
            Reason::ServiceUnavailable,
            format!(
                "The connection to the server {address} was refused - did you specify the right host or port? ({})",
                status.message()
            ),
        );
    }
    ApiError::from_grpc(&status)
}

fn decode_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("cannot decode the server's answer: {e}"))
}

impl Client {
    /// A client of `address` (`host:port`, or a URL with scheme http) and its connection,
    /// not opened yet.
    fn wrap_with(address: &str) -> Result<(Self, Connection), ApiError> {
        let invalid = |why: String| {
            ApiError::bad_request(format!("invalid server address {address:?}: {why}"))
        };
        let url = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("only http:// is supported".into()));
        }
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| invalid("no host".into()))?;
        let port = uri.port_u16().unwrap_or(80);
        let origin = tonic::codegen::http::Uri::builder()
            .scheme("http")
            .authority(uri.authority().map_or(host, |a| a.as_str()))
            .path_and_query("/")
            .build()
            .map_err(|e| invalid(format!("{e}")))?;
        let connection = Connection::new(host, port);
        let client = Client {
            transport: Transport::Grpc(
                ApiClient::with_origin(connection.clone(), origin)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ),
            address: address.to_string(),
        };
        Ok((client, connection))
    }

    /// A client of the API server running in this process (`address` names it in
    /// messages): no connection, no encoding, and lists and watches hand out the server's
    /// own bytes.
    pub fn local(api: Arc<dyn LocalApi>, address: &str) -> Self {
        Client {
            transport: Transport::Local(api),
            address: address.to_string(),
        }
    }

    /// The gRPC client, or None for an in-process client.
    fn grpc(&self) -> Result<ApiClient<Connection>, &Arc<dyn LocalApi>> {
        match &self.transport {
            Transport::Grpc(c) => Ok(c.clone()),
            Transport::Local(l) => Err(l),
        }
    }

    /// Connects now; fails with a clear message if the server is not there.
    pub async fn connect(address: &str) -> Result<Self, ApiError> {
        let (client, connection) = Self::wrap_with(address)?;
        connection.open().await.map_err(|e| {
                ApiError::new(
                    Reason::ServiceUnavailable,
                    format!(
                        "The connection to the server {address} was refused - did you specify the right host or port? ({e})"
                    ),
                )
            })?;
        Ok(client)
    }

    /// Connects on first use and reconnects as needed (for long-running components).
    pub fn connect_lazy(address: &str) -> Result<Self, ApiError> {
        Ok(Self::wrap_with(address)?.0)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The message of a unary answer, or the error as the API server reported it.
    fn answer<T>(&self, r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, ApiError> {
        r.map(tonic::Response::into_inner)
            .map_err(|s| grpc_error(s, &self.address))
    }

    /// A typed handle on `K` in `namespace` ("" for all namespaces or cluster-scoped kinds).
    pub fn api<K: k8s_openapi::Resource>(&self, namespace: &str) -> Api<K> {
        Api {
            client: self.clone(),
            namespace: namespace.to_string(),
            _kind: PhantomData,
        }
    }

    pub async fn version(&self) -> Result<(String, String, i64), ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return local.version().await,
        };
        let v = self.answer(c.version(VersionRequest {}).await)?;
        Ok((v.version, v.store, v.revision))
    }

    pub async fn create(
        &self,
        resource: &str,
        namespace: &str,
        object: Bytes,
    ) -> Result<Bytes, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return local.create(resource, namespace, object).await,
        };
        let req = CreateRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            object,
        };
        Ok(self.answer(c.create(req).await)?.object)
    }

    /// Creates an Event: handed over typed in process, else as JSON like any object.
    pub async fn create_event(
        &self,
        namespace: &str,
        event: &k8s_openapi::api::core::v1::Event,
    ) -> Result<Bytes, ApiError> {
        match &self.transport {
            Transport::Local(local) => local.create_event(namespace, event.clone()).await,
            _ => {
                let body = serde_json::to_vec(event)
                    .map_err(|e| ApiError::bad_request(format!("cannot encode the event: {e}")))?;
                self.create("events", namespace, Bytes::from(body)).await
            }
        }
    }

    pub async fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Bytes, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return local.get(resource, namespace, name).await,
        };
        let req = GetRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        Ok(self.answer(c.get(req).await)?.object)
    }

    pub async fn list(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
    ) -> Result<RawList, ApiError> {
        let list = self.list_objects(resource, namespace, params).await?;
        Ok(RawList {
            items: list.items.iter().map(RawObject::json).collect(),
            resource_version: list.resource_version,
            continue_token: list.continue_token,
        })
    }

    /// A list whose items are as the server holds them (an in-process client's share the
    /// server's bytes).
    pub async fn list_objects(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
    ) -> Result<RawList<RawObject>, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return local.list(resource, namespace, params).await,
        };
        let req = ListRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            limit: params.limit,
            continue_token: params.continue_token.clone(),
            resource_version: params.resource_version.clone(),
        };
        let resp = self.answer(c.list(req).await)?;
        Ok(RawList {
            items: resp.items.into_iter().map(RawObject::complete).collect(),
            resource_version: resp.resource_version,
            continue_token: resp.continue_token,
        })
    }

    pub async fn update(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        object: Bytes,
        subresource: &str,
    ) -> Result<Bytes, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => {
                return local
                    .update(resource, namespace, name, object, subresource)
                    .await;
            }
        };
        let req = UpdateRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            object,
            subresource: subresource.into(),
        };
        Ok(self.answer(c.update(req).await)?.object)
    }

    /// Applies a JSON merge patch (RFC 7386).
    pub async fn patch(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        patch: Bytes,
        subresource: &str,
    ) -> Result<Bytes, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => {
                return local
                    .patch(resource, namespace, name, patch, subresource)
                    .await;
            }
        };
        let req = PatchRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            patch,
            subresource: subresource.into(),
        };
        Ok(self.answer(c.patch(req).await)?.object)
    }

    /// Deletes; returns the object and whether it is gone already.
    pub async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<(Bytes, bool), ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return local.delete(resource, namespace, name, params).await,
        };
        let req = DeleteRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            grace_period_seconds: params.grace_period_seconds.unwrap_or(-1),
            precondition_uid: params.precondition_uid.clone(),
            precondition_resource_version: params.precondition_resource_version.clone(),
            propagation_policy: params.propagation_policy.clone(),
        };
        let resp = self.answer(c.delete(req).await)?;
        Ok((resp.object, resp.removed))
    }

    fn binding(namespace: &str, pod: &str, node: &str) -> Result<BindRequest, ApiError> {
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        Ok(BindRequest {
            namespace: namespace.into(),
            name: pod.into(),
            binding: Bytes::from(serde_json::to_vec(&binding).map_err(decode_error)?),
        })
    }

    /// Binds a pod to a node (the scheduler's write).
    pub async fn bind(&self, namespace: &str, pod: &str, node: &str) -> Result<Bytes, ApiError> {
        let req = Self::binding(namespace, pod, node)?;
        match self.grpc() {
            Ok(mut c) => Ok(self.answer(c.bind(req).await)?.object),
            Err(local) => local.bind(req).await,
        }
    }

    /// Binds many pods in one call: `(namespace, pod, node)` each; one result per binding,
    /// in order.
    pub async fn bind_batch(
        &self,
        bindings: &[(String, String, String)],
    ) -> Result<Vec<Result<(), ApiError>>, ApiError> {
        let reqs = bindings
            .iter()
            .map(|(ns, pod, node)| Self::binding(ns, pod, node))
            .collect::<Result<Vec<_>, _>>()?;
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return Ok(local.bind_batch(reqs).await),
        };
        let resp = self.answer(c.bind_batch(BindBatchRequest { bindings: reqs }).await)?;
        Ok(resp
            .results
            .into_iter()
            .map(|r| {
                if r.status.is_empty() {
                    return Ok(());
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&r.status).map_err(decode_error)?;
                Err(ApiError::from_status_json(&v)
                    .unwrap_or_else(|| ApiError::internal("binding failed")))
            })
            .collect())
    }

    /// A container's log, as chunks of text (ends with the log unless `follow`).
    pub async fn pod_logs(
        &self,
        req: skiff_api::proto::PodLogsRequest,
    ) -> Result<LogStream, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return local.pod_logs(req).await,
        };
        let address = self.address.clone();
        let stream = c
            .pod_logs(req)
            .await
            .map_err(|s| grpc_error(s, &address))?
            .into_inner();
        Ok(Box::pin(stream.map(move |c| {
            c.map(|c| c.data).map_err(|s| grpc_error(s, &address))
        })))
    }

    /// Node `node`'s data plane counters: every programmed frontend with its service
    /// port's packets, bytes and connections (served by the node's agent).
    pub async fn dataplane_stats(
        &self,
        node: &str,
    ) -> Result<Vec<skiff_api::proto::FrontendCounters>, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => return local.dataplane_stats(node).await,
        };
        let req = skiff_api::proto::DataplaneStatsRequest { node: node.into() };
        c.dataplane_stats(req)
            .await
            .map(|r| r.into_inner().frontends)
            .map_err(|s| grpc_error(s, &self.address))
    }

    /// Runs a command in a container; its stdout and stderr (combined, each in its order)
    /// and exit code once it ends.
    pub async fn pod_exec(
        &self,
        req: skiff_api::proto::PodExecRequest,
    ) -> Result<(Vec<u8>, i32), ApiError> {
        let mut stream = self.pod_exec_stream(req, None).await?;
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            out.extend_from_slice(&msg.output);
            if msg.done {
                return Ok((out, msg.exit_code));
            }
        }
        Err(ApiError::new(
            Reason::InternalError,
            "the node closed the exec stream without an exit code",
        ))
    }

    /// Runs a command in a container: what it writes (tagged stdout 1, stderr 2, or 1 for
    /// all on a terminal) as it writes it, then a message with `done` and its exit code.
    /// `input` carries stdin chunks (read by the command when `req.stdin`, `kubectl exec
    /// -i`; its end closes the command's stdin) and terminal sizes (when `req.tty`); without
    /// it the command's stdin is empty.
    pub async fn pod_exec_stream(
        &self,
        mut req: skiff_api::proto::PodExecRequest,
        input: Option<ExecInputStream>,
    ) -> Result<ExecStream, ApiError> {
        req.stdin &= input.is_some();
        let input: ExecInputStream = input.unwrap_or_else(|| Box::pin(futures::stream::empty()));
        Ok(match self.grpc() {
            Ok(mut c) => {
                let address = self.address.clone();
                let stream = c
                    .pod_exec(skiff_api::exec::CallInput::new(req, input))
                    .await
                    .map_err(|s| grpc_error(s, &address))?
                    .into_inner();
                Box::pin(stream.map(move |m| m.map_err(|s| grpc_error(s, &address))))
            }
            Err(local) => local.pod_exec(req, input).await?,
        })
    }

    /// Watches `resource`. An empty `resource_version` starts with the current state as
    /// ADDED events (closed by a bookmark when `send_initial_events`); otherwise only
    /// changes after it. A too-old version fails with `Reason::Expired`.
    pub async fn watch(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
        resource_version: &str,
        send_initial_events: bool,
    ) -> Result<RawWatch, ApiError> {
        let objects = self
            .watch_objects(
                resource,
                namespace,
                params,
                resource_version,
                send_initial_events,
            )
            .await?;
        Ok(Box::pin(
            objects.map(|e| e.map(|e| e.map(|o| RawObject::json(&o)))),
        ))
    }

    /// [`Client::watch`] whose objects are as the server holds them (an in-process
    /// client's share the server's bytes).
    pub async fn watch_objects(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
        resource_version: &str,
        send_initial_events: bool,
    ) -> Result<ObjectWatch, ApiError> {
        let mut c = match self.grpc() {
            Ok(c) => c,
            Err(local) => {
                return local
                    .watch(
                        resource,
                        namespace,
                        params,
                        resource_version,
                        send_initial_events,
                    )
                    .await;
            }
        };
        let req = WatchRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            resource_version: resource_version.into(),
            send_initial_events,
            allow_bookmarks: true,
        };
        let address = self.address.clone();
        let stream = c
            .watch(req)
            .await
            .map_err(|s| grpc_error(s, &address))?
            .into_inner();
        let events = stream.flat_map(move |batch| {
            let items: Vec<Result<RawEvent<RawObject>, ApiError>> = match batch {
                Err(status) => vec![Err(grpc_error(status, &address))],
                Ok(batch) => batch.events.into_iter().map(watch_event).collect(),
            };
            futures::stream::iter(items)
        });
        Ok(Box::pin(events))
    }
}

/// One event of a gRPC watch.
fn watch_event(e: skiff_api::proto::WatchEvent) -> Result<RawEvent<RawObject>, ApiError> {
    match EventType::try_from(e.r#type) {
        Ok(EventType::Added) => Ok(RawEvent::Added(RawObject::complete(e.object))),
        Ok(EventType::Modified) => Ok(RawEvent::Modified(RawObject::complete(e.object))),
        Ok(EventType::Deleted) => Ok(RawEvent::Deleted(RawObject::complete(e.object))),
        Ok(EventType::Bookmark) => {
            let v: serde_json::Value = serde_json::from_slice(&e.object).map_err(decode_error)?;
            let rv = v
                .pointer("/metadata/resourceVersion")
                .and_then(|r| r.as_str())
                .unwrap_or_default()
                .to_string();
            let end = v
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(INITIAL_EVENTS_END))
                .is_some();
            Ok(RawEvent::Bookmark(rv, end))
        }
        Ok(EventType::Error) => {
            let v: serde_json::Value = serde_json::from_slice(&e.object).map_err(decode_error)?;
            Err(ApiError::from_status_json(&v)
                .unwrap_or_else(|| ApiError::internal("watch failed")))
        }
        Err(_) => Err(decode_error(format!("unknown event type {}", e.r#type))),
    }
}

/// Typed access to one kind in one namespace.
pub struct Api<K> {
    client: Client,
    namespace: String,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            _kind: PhantomData,
        }
    }
}

/// A typed list.
#[derive(Debug, Clone)]
pub struct ObjectList<K> {
    pub items: Vec<K>,
    pub resource_version: String,
    pub continue_token: String,
}

/// A Kubernetes kind a typed [`Api`] and an informer can handle: every built-in kind of
/// `k8s-openapi`.
pub trait ApiObject:
    k8s_openapi::Resource
    + Metadata<Ty = ObjectMeta>
    + Default
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> ApiObject for K where
    K: k8s_openapi::Resource
        + Metadata<Ty = ObjectMeta>
        + Default
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The resourceVersion of an object.
pub fn resource_version<K: Metadata<Ty = ObjectMeta>>(obj: &K) -> &str {
    obj.metadata()
        .resource_version
        .as_deref()
        .unwrap_or_default()
}

impl<K: ApiObject> Api<K> {
    const PLURAL: &'static str = K::URL_PATH_SEGMENT;

    fn encode(obj: &K) -> Result<Bytes, ApiError> {
        serde_json::to_vec(obj)
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("cannot encode object: {e}")))
    }

    fn decode(raw: &[u8]) -> Result<K, ApiError> {
        serde_json::from_slice(raw).map_err(decode_error)
    }

    fn decode_raw(raw: &RawObject) -> Result<K, ApiError> {
        raw.decode().map_err(decode_error)
    }

    fn ns_of<'a>(&'a self, obj: &'a K) -> &'a str {
        obj.metadata()
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.namespace)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn create(&self, obj: &K) -> Result<K, ApiError> {
        Self::decode(&self.create_raw(obj).await?)
    }

    /// Creates `obj`; the server's JSON of it, undecoded (for callers that only need to
    /// know it was created).
    pub async fn create_raw(&self, obj: &K) -> Result<Bytes, ApiError> {
        self.client
            .create(Self::PLURAL, self.ns_of(obj), Self::encode(obj)?)
            .await
    }

    pub async fn get(&self, name: &str) -> Result<K, ApiError> {
        Self::decode(&self.client.get(Self::PLURAL, &self.namespace, name).await?)
    }

    /// The object, or None if it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>, ApiError> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.reason == Reason::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>, ApiError> {
        let raw = self
            .client
            .list_objects(Self::PLURAL, &self.namespace, params)
            .await?;
        Ok(ObjectList {
            items: raw
                .items
                .iter()
                .map(Self::decode_raw)
                .collect::<Result<_, _>>()?,
            resource_version: raw.resource_version,
            continue_token: raw.continue_token,
        })
    }

    fn name_of(obj: &K) -> Result<&str, ApiError> {
        obj.metadata()
            .name
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("metadata.name: Required value"))
    }

    pub async fn update(&self, obj: &K) -> Result<K, ApiError> {
        self.replace(obj, "").await
    }

    pub async fn update_status(&self, obj: &K) -> Result<K, ApiError> {
        self.replace(obj, "status").await
    }

    async fn replace(&self, obj: &K, subresource: &str) -> Result<K, ApiError> {
        let raw = self
            .client
            .update(
                Self::PLURAL,
                self.ns_of(obj),
                Self::name_of(obj)?,
                Self::encode(obj)?,
                subresource,
            )
            .await?;
        Self::decode(&raw)
    }

    pub async fn patch(&self, name: &str, patch: &serde_json::Value) -> Result<K, ApiError> {
        self.merge(name, patch, "").await
    }

    pub async fn patch_status(&self, name: &str, patch: &serde_json::Value) -> Result<K, ApiError> {
        self.merge(name, patch, "status").await
    }

    async fn merge(
        &self,
        name: &str,
        patch: &serde_json::Value,
        subresource: &str,
    ) -> Result<K, ApiError> {
        let body = Bytes::from(serde_json::to_vec(patch).map_err(decode_error)?);
        Self::decode(
            &self
                .client
                .patch(Self::PLURAL, &self.namespace, name, body, subresource)
                .await?,
        )
    }

    /// Deletes; returns the object and whether it is gone already.
    pub async fn delete(&self, name: &str, params: &DeleteParams) -> Result<(K, bool), ApiError> {
        let (raw, removed) = self
            .client
            .delete(Self::PLURAL, &self.namespace, name, params)
            .await?;
        Ok((Self::decode(&raw)?, removed))
    }

    /// Typed watch; see [`Client::watch`].
    pub async fn watch(
        &self,
        params: &ListParams,
        resource_version: &str,
        send_initial_events: bool,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<WatchEvent<K>, ApiError>> + Send>>, ApiError> {
        let raw = self
            .client
            .watch_objects(
                Self::PLURAL,
                &self.namespace,
                params,
                resource_version,
                send_initial_events,
            )
            .await?;
        Ok(Box::pin(raw.map(|e| {
            Ok(match e? {
                RawEvent::Added(o) => WatchEvent::Added(Self::decode_raw(&o)?),
                RawEvent::Modified(o) => WatchEvent::Modified(Self::decode_raw(&o)?),
                RawEvent::Deleted(o) => WatchEvent::Deleted(Self::decode_raw(&o)?),
                RawEvent::Bookmark(rv, end) => WatchEvent::Bookmark(rv, end),
            })
        })))
    }
}
