//! Kubernetes Events about pods (Started, Killing, BackOff, Unhealthy, ...) as the kubelet
//! reports them, through the client's shared recorder (written in the background).

use k8s_openapi::api::core::v1::Pod;
use skiff_client::Client;
use skiff_client::events::{Recorder, reference};

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
    let mut object = reference(pod);
    object.resource_version = None;
    object.field_path = field_path;
    Recorder::new(client.clone(), "kubelet", Some(node)).record(object, kind, reason, message);
}
