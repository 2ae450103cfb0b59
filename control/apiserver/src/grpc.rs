//! The gRPC face of the registry: translates `skiff.v1.Api` requests into registry calls and
//! registry errors into gRPC statuses carrying a Kubernetes Status.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use skiff_api::proto::api_server::Api;
use skiff_api::proto::{
    BindRequest, CreateRequest, DeleteRequest, DeleteResponse, GetRequest, ListRequest,
    ListResponse, ObjectResponse, PatchRequest, UpdateRequest, VersionRequest, VersionResponse,
    WatchRequest,
};
use skiff_api::watch_batch::WatchBatch;
use tonic::{Request, Response, Status};

use crate::registry::{DeleteOptions, Registry};

/// The `skiff.v1.Api` service.
pub struct ApiService {
    registry: Arc<Registry>,
}

impl ApiService {
    pub fn new(registry: Arc<Registry>) -> Self {
        ApiService { registry }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, Status>> + Send>>;

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
            items: list.items,
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

    type WatchStream = WatchStream;

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
        let stream = futures::stream::unfold(watcher, |mut w| async move {
            w.next_batch().await.map(|batch| (Ok(batch), w))
        });
        Ok(Response::new(Box::pin(stream)))
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
