//! Kubernetes Events (Scheduled, FailedScheduling, SuccessfulCreate, Started, BackOff, ...),
//! written in the background by every component: an event that cannot be written is
//! logged, never waited for.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::Client;

/// The current time as a Kubernetes timestamp.
pub fn now() -> Time {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(
        k8s_openapi::jiff::Timestamp::new(n.as_secs() as i64, n.subsec_nanos() as i32)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The current time as a Kubernetes MicroTime (Lease renew and acquire times).
pub fn micro_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now().0)
}

/// Who reports an event: the component (`kubelet`, `default-scheduler`,
/// `replicaset-controller`, ...) and, for node agents, its node.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
}

impl Recorder {
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            host: host.map(str::to_string),
        }
    }

    /// Records an event (`kind` is `Normal` or `Warning`) about `object`.
    pub fn record(&self, object: ObjectReference, kind: &str, reason: &str, message: &str) {
        let ns = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = object.name.clone().unwrap_or_default();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{stamp:x}")),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            first_timestamp: Some(now()),
            last_timestamp: Some(now()),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            ..Default::default()
        };
        let api = self.client.api::<Event>(&ns);
        tokio::spawn(async move {
            if let Err(e) = api.create(&event).await {
                tracing::debug!(error = %e, "cannot record event");
            }
        });
    }
}

/// A reference to `obj` for an event's `involvedObject`.
pub fn reference<K>(obj: &K) -> ObjectReference
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let m = obj.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.into()),
        kind: Some(K::KIND.into()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}
