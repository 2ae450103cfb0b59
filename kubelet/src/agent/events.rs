//! Kubernetes Events about pods (Started, Killing, BackOff, Unhealthy, ...) as the kubelet
//! reports them, written in the background. One recorder per core (a pod's events all
//! come from the core that runs it), so repeats are counted on one Event, as client-go's
//! recorder does for the kubelet ("Back-off restarting failed container" x12).

use std::cell::RefCell;

use k8s_openapi::api::core::v1::Pod;
use skiff_client::Client;
use skiff_client::events::{Recorder, reference};

thread_local! {
    /// This core's recorder and the node it reports for.
    static RECORDER: RefCell<Option<(String, Recorder)>> = const { RefCell::new(None) };
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
    let mut object = reference(pod);
    object.resource_version = None;
    object.field_path = field_path;
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        if r.as_ref().is_none_or(|(n, _)| n != node) {
            *r = Some((
                node.to_string(),
                Recorder::new(client.clone(), "kubelet", Some(node)),
            ));
        }
        if let Some((_, recorder)) = r.as_ref() {
            recorder.record(object, kind, reason, message);
        }
    });
}
