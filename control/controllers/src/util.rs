//! What every controller asks of pods and owners.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use skiff_client::informer::Reader;

/// The index of pods (and other namespaced objects) by namespace.
pub const BY_NAMESPACE: &str = "namespace";
/// The index of objects by the uid of their controlling owner.
pub const BY_CONTROLLER: &str = "controller";
/// The index of objects by each of their labels, as `namespace/key=value`.
pub const BY_LABEL: &str = "label";

pub fn label_index<K: Metadata<Ty = ObjectMeta>>(o: &K) -> Vec<String> {
    let m = o.metadata();
    let ns = m.namespace.as_deref().unwrap_or_default();
    m.labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{ns}/{k}={v}"))
        .collect()
}

pub fn namespace_index<K: Metadata<Ty = ObjectMeta>>(o: &K) -> Vec<String> {
    vec![o.metadata().namespace.clone().unwrap_or_default()]
}

pub fn controller_index<K: Metadata<Ty = ObjectMeta>>(o: &K) -> Vec<String> {
    controller_of(o.metadata())
        .map(|r| vec![r.uid.clone()])
        .unwrap_or_default()
}

/// The owner reference with `controller: true`.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to `owner`.
pub fn owner_ref<K: Resource + Metadata<Ty = ObjectMeta>>(owner: &K) -> OwnerReference {
    let m = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.into(),
        kind: K::KIND.into(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// `namespace/name` of an object.
pub fn key<K: Metadata<Ty = ObjectMeta>>(o: &K) -> String {
    skiff_client::informer::key_of(o)
}

/// Splits `namespace/name`.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// Not finished and not being deleted.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !is_terminal(p)
}

pub fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn ready_condition(p: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
}

pub fn is_ready(p: &Pod) -> bool {
    ready_condition(p).is_some_and(|c| c.status == "True")
}

/// Seconds since the pod became Ready (None when not ready).
pub fn ready_for(p: &Pod) -> Option<i64> {
    let c = ready_condition(p).filter(|c| c.status == "True")?;
    let since = c.last_transition_time.as_ref()?.0.as_second();
    Some(now_seconds() - since)
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(p: &Pod, min_ready_seconds: i32) -> bool {
    if min_ready_seconds <= 0 {
        return is_ready(p);
    }
    ready_for(p).is_some_and(|s| s >= min_ready_seconds as i64)
}

pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Objects of a namespace from a reader indexed by namespace.
pub fn in_namespace<K: skiff_client::ApiObject>(reader: &Reader<K>, ns: &str) -> Vec<Arc<K>> {
    reader.by_index(BY_NAMESPACE, ns)
}

/// A merge patch that replaces `metadata.ownerReferences`.
pub fn owners_patch(refs: &[OwnerReference], resource_version: Option<&str>) -> serde_json::Value {
    let mut meta = serde_json::json!({ "ownerReferences": refs });
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = rv.into();
    }
    serde_json::json!({ "metadata": meta })
}

/// Objects of `ns` a selector may select: those carrying one of its required labels (from
/// the `BY_LABEL` index), or the whole namespace when it requires none.
pub fn candidates<K: skiff_client::ApiObject>(
    reader: &Reader<K>,
    ns: &str,
    selector: &skiff_api::selector::LabelSelector,
) -> Vec<Arc<K>> {
    let pair = selector.requirements.iter().find_map(|r| match r {
        skiff_api::selector::Requirement::Equals(k, v) => Some(format!("{ns}/{k}={v}")),
        _ => None,
    });
    match pair {
        Some(p) => reader.by_index(BY_LABEL, &p),
        None => in_namespace(reader, ns),
    }
}

/// The result of a write that may find its object gone: NotFound is success (there is
/// nothing left to do).
pub fn unless_gone<T>(r: Result<T, skiff_api::ApiError>) -> Result<(), skiff_api::ApiError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.reason == skiff_api::Reason::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// As `unless_gone`, and a Conflict (the object changed meanwhile; its next event brings
/// it back) is success too.
pub fn unless_gone_or_changed<T>(
    r: Result<T, skiff_api::ApiError>,
) -> Result<(), skiff_api::ApiError> {
    match r {
        Err(e) if e.reason == skiff_api::Reason::Conflict => Ok(()),
        r => unless_gone(r),
    }
}
