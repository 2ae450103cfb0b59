//! The API served in-process ([`skiff_api::local::LocalApi`]): the scheduler and the
//! controller manager inside `skiff server` call the registry directly. Same verbs, same
//! checks and errors as the gRPC service; lists and watches hand out the stored bytes
//! ([`RawObject`]) instead of copies with the version spliced in.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use skiff_api::ApiError;
use skiff_api::local::{
    DeleteParams, ExecInputStream, ExecStream, ListParams, LocalApi, LogStream, ObjectWatch,
    RawList,
};
use skiff_api::proto::api_server::Api;
use skiff_api::proto::{BindRequest, PodExecRequest, PodLogsRequest};
use skiff_api::raw::RawObject;
use tonic::Request;

use crate::grpc::ApiService;
use crate::registry::{DeleteOptions, Registry};

/// The API of `registry`'s server, in-process: give it to `skiff_client::Client::local`.
pub fn api(registry: Arc<Registry>) -> Arc<dyn LocalApi> {
    Arc::new(ApiService::new(registry))
}

#[tonic::async_trait]
impl LocalApi for ApiService {
    async fn version(&self) -> Result<(String, String, i64), ApiError> {
        let v = Api::version(self, Request::new(Default::default()))
            .await
            .map_err(|s| ApiError::from_grpc(&s))?
            .into_inner();
        Ok((v.version, v.store, v.revision))
    }

    async fn create(
        &self,
        resource: &str,
        namespace: &str,
        object: Bytes,
    ) -> Result<Bytes, ApiError> {
        self.registry.create(resource, namespace, &object).await
    }

    async fn create_event(
        &self,
        namespace: &str,
        event: k8s_openapi::api::core::v1::Event,
    ) -> Result<Bytes, ApiError> {
        self.registry.create_event(namespace, event).await
    }

    async fn get(&self, resource: &str, namespace: &str, name: &str) -> Result<Bytes, ApiError> {
        self.registry.get(resource, namespace, name).await
    }

    async fn list(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
    ) -> Result<RawList<RawObject>, ApiError> {
        let info = Registry::info(resource)?;
        let filter = Registry::filter(
            info,
            namespace,
            &params.label_selector,
            &params.field_selector,
        )?;
        let list = self
            .registry
            .list(
                resource,
                filter,
                params.limit,
                &params.continue_token,
                &params.resource_version,
            )
            .await?;
        Ok(RawList {
            items: list.items,
            resource_version: list.resource_version.to_string(),
            continue_token: list.continue_token,
        })
    }

    async fn update(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        object: Bytes,
        subresource: &str,
    ) -> Result<Bytes, ApiError> {
        self.registry
            .update(resource, namespace, name, &object, subresource)
            .await
    }

    async fn patch(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        patch: Bytes,
        subresource: &str,
    ) -> Result<Bytes, ApiError> {
        self.registry
            .patch(resource, namespace, name, &patch, subresource)
            .await
    }

    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<(Bytes, bool), ApiError> {
        let options = DeleteOptions {
            grace_period_seconds: params.grace_period_seconds,
            precondition_uid: params.precondition_uid.clone(),
            precondition_resource_version: params.precondition_resource_version.clone(),
            propagation_policy: params.propagation_policy.clone(),
        };
        self.registry
            .delete(resource, namespace, name, options)
            .await
    }

    async fn bind(&self, b: BindRequest) -> Result<Bytes, ApiError> {
        self.registry.bind(&b.namespace, &b.name, &b.binding).await
    }

    async fn bind_batch(&self, bindings: Vec<BindRequest>) -> Vec<Result<(), ApiError>> {
        self.bind_all(bindings).await
    }

    async fn watch(
        &self,
        resource: &str,
        namespace: &str,
        params: &ListParams,
        resource_version: &str,
        send_initial_events: bool,
    ) -> Result<ObjectWatch, ApiError> {
        let info = Registry::info(resource)?;
        let filter = Registry::filter(
            info,
            namespace,
            &params.label_selector,
            &params.field_selector,
        )?;
        let watcher = self
            .registry
            .watch(
                resource,
                filter,
                resource_version,
                true,
                send_initial_events,
            )
            .await?;
        let batches = futures::stream::unfold(watcher, |mut w| async move {
            w.next_objects().await.map(|events| (events, w))
        });
        Ok(Box::pin(batches.flat_map(futures::stream::iter)))
    }

    async fn pod_logs(&self, req: PodLogsRequest) -> Result<LogStream, ApiError> {
        let stream = Api::pod_logs(self, Request::new(req))
            .await
            .map_err(|s| ApiError::from_grpc(&s))?
            .into_inner();
        Ok(Box::pin(stream.map(|c| {
            c.map(|c| c.data).map_err(|s| ApiError::from_grpc(&s))
        })))
    }

    async fn pod_exec(
        &self,
        req: PodExecRequest,
        input: ExecInputStream,
    ) -> Result<ExecStream, ApiError> {
        let stream = self
            .exec_on_node(req, input)
            .await
            .map_err(|s| ApiError::from_grpc(&s))?;
        Ok(Box::pin(
            stream.map(|m| m.map_err(|s| ApiError::from_grpc(&s))),
        ))
    }

    async fn dataplane_stats(
        &self,
        node: &str,
    ) -> Result<Vec<skiff_api::proto::FrontendCounters>, ApiError> {
        let req = skiff_api::proto::DataplaneStatsRequest { node: node.into() };
        Api::dataplane_stats(self, Request::new(req))
            .await
            .map(|r| r.into_inner().frontends)
            .map_err(|s| ApiError::from_grpc(&s))
    }
}
