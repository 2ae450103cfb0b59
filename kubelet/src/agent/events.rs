//! Kubernetes Events about pods (Started, Killing, BackOff, Unhealthy, ...), written in
//! the background: an event that cannot be written is logged, never waited for.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use skiff_client::Client;

fn now() -> Time {
    let n = chrono::Utc::now();
    Time(
        k8s_openapi::jiff::Timestamp::new(n.timestamp(), n.timestamp_subsec_nanos() as i32)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Records an event (`kind` is `Normal` or `Warning`) about `pod`, or one of its
/// containers when `field_path` names it.
pub fn record(
    client: &Client,
    node: &str,
    pod: &Pod,
    kind: &str,
    reason: &str,
    message: &str,
    field_path: Option<String>,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{stamp:x}")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            field_path,
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(kind.into()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(node.into()),
        }),
        first_timestamp: Some(now()),
        last_timestamp: Some(now()),
        count: Some(1),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.into()),
        ..Default::default()
    };
    let api = client.api::<Event>(&ns);
    tokio::spawn(async move {
        if let Err(e) = api.create(&event).await {
            tracing::debug!(error = %e, "cannot record event");
        }
    });
}
