//! The namespace controller: a Terminating namespace has everything in it deleted (pods
//! gracefully, through their kubelets), and once nothing is left its `kubernetes`
//! finalizer is removed, which lets the API server remove the namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use skiff_api::resource::RESOURCES;
use skiff_api::{ApiError, Reason};
use skiff_client::informer::{Event, Reader};
use skiff_client::{Client, DeleteParams, ListParams};

use crate::workqueue::WorkQueue;

pub struct NamespaceController {
    pub client: Client,
    pub namespaces: Reader<Namespace>,
    pub queue: Arc<WorkQueue>,
}

impl NamespaceController {
    pub fn on_namespace(&self, e: &Event<Namespace>) {
        if let Event::Added(n) | Event::Updated { new: n, .. } = e
            && n.metadata.deletion_timestamp.is_some()
        {
            self.queue
                .add(n.metadata.name.as_deref().unwrap_or_default());
        }
    }

    pub async fn sync(self: Arc<Self>, name: String) -> Result<(), ApiError> {
        let Some(ns) = self.namespaces.get(&name) else {
            return Ok(());
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(());
        }
        let mut remaining = 0usize;
        for info in RESOURCES.iter().filter(|r| r.namespaced) {
            let list = self
                .client
                .list(info.plural, &name, &ListParams::default())
                .await?;
            for item in list.items {
                remaining += 1;
                let v: serde_json::Value =
                    serde_json::from_slice(&item).map_err(|e| ApiError::internal(e.to_string()))?;
                if v.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                let obj = v
                    .pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default();
                match self
                    .client
                    .delete(info.plural, &name, obj, &DeleteParams::default())
                    .await
                {
                    Ok((_, true)) => remaining -= 1,
                    Ok(_)
                    | Err(ApiError {
                        reason: Reason::NotFound,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if remaining > 0 {
            // Graceful deletions take their time: look again shortly.
            self.queue.add_after(&name, Duration::from_millis(500));
            return Ok(());
        }
        let finalizers: Vec<String> = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != "kubernetes")
            .collect();
        let patch = serde_json::json!({"spec": {"finalizers": finalizers}});
        crate::util::unless_gone(self.client.api::<Namespace>("").patch(&name, &patch).await)
    }
}
