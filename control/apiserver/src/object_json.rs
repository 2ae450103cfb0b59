//! Fast paths on stored object JSON, so the hot write and watch paths neither build a
//! `serde_json::Value` nor re-serialize one:
//!
//! - [`with_resource_version`]: objects are stored without `metadata.resourceVersion` (it is
//!   the store's mod revision); serving one means splicing it in, found by a small scanner
//!   that tracks JSON strings and nesting depth to locate the top-level `metadata` object.
//! - [`Selectable`]: the few fields the watch cache indexes (name, namespace, labels,
//!   deletion, field-selector fields), decoded while serde skips everything else.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use skiff_store::Revision;

/// The string token whose opening quote is at `open`: its bytes (escapes left as they are)
/// and the index of its closing quote, or None when it is not closed.
fn string_at(raw: &[u8], open: usize) -> Option<(&[u8], usize)> {
    // Jumps between quotes and backslashes (memchr): a ConfigMap's data is a few long
    // strings, which a byte-at-a-time loop walked one byte per step.
    let mut i = open + 1;
    while i < raw.len() {
        i += memchr::memchr2(b'"', b'\\', &raw[i..])?;
        match raw[i] {
            b'"' => return Some((&raw[open + 1..i], i)),
            _ => i += 2,
        }
    }
    None
}

/// Index just past the `{` that opens the top-level `metadata` object.
fn metadata_object_start(raw: &[u8]) -> Option<usize> {
    let n = raw.len();
    let mut depth = 0usize;
    let mut i = 0;
    while i < n {
        match raw[i] {
            b'"' => {
                let (token, close) = string_at(raw, i)?;
                i = close + 1;
                if depth == 1 && token == b"metadata" {
                    let mut j = i;
                    while j < n && raw[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if j < n && raw[j] == b':' {
                        j += 1;
                        while j < n && raw[j].is_ascii_whitespace() {
                            j += 1;
                        }
                        if j < n && raw[j] == b'{' {
                            return Some(j + 1);
                        }
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the JSON object whose body starts at `from` (just past its `{`) has `key` among
/// its own keys (not in nested objects, not as a value).
fn object_has_key(raw: &[u8], from: usize, key: &[u8]) -> bool {
    let n = raw.len();
    let mut depth = 0usize;
    let mut expect_key = true;
    let mut i = from;
    while i < n {
        match raw[i] {
            b'"' => {
                let Some((token, close)) = string_at(raw, i) else {
                    return false;
                };
                i = close;
                if depth == 0 && expect_key && token == key {
                    return true;
                }
                if depth == 0 {
                    expect_key = false;
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            b',' if depth == 0 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Where `metadata.resourceVersion` can be spliced into stored JSON: just inside the
/// top-level `metadata` object. None when there is no metadata object or it already carries a
/// resourceVersion (data written by others); [`with_resource_version`] then rewrites it.
pub fn splice_point(raw: &[u8]) -> Option<usize> {
    let at = metadata_object_start(raw)?;
    let carries = memchr::memmem::find(raw, b"\"resourceVersion\"").is_some()
        && object_has_key(raw, at, b"resourceVersion");
    (!carries).then_some(at)
}

pub use skiff_api::raw::splice_resource_version;

/// The stored JSON with `metadata.resourceVersion` set to `revision`.
pub fn with_resource_version(raw: &[u8], revision: Revision) -> Result<Vec<u8>, String> {
    // Spliced when the object's metadata carries no resourceVersion (objects Skiff stores);
    // otherwise (data written by others) decoded and rewritten.
    if let Some(at) = splice_point(raw) {
        return Ok(splice_resource_version(raw, at, revision));
    }
    let mut value: Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
    serde_json::to_vec(&value).map_err(|e| e.to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectableMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectableSpec {
    node_name: Option<String>,
    restart_policy: Option<String>,
    scheduler_name: Option<String>,
    service_account_name: Option<String>,
    host_network: Option<bool>,
    unschedulable: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectableStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    nominated_node_name: Option<String>,
    replicas: Option<i64>,
}

/// An Event's `involvedObject` (its field-selector fields).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectableRef {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    api_version: Option<String>,
    resource_version: Option<String>,
    field_path: Option<String>,
}

/// What the watch cache needs of an object; every other field is skipped unread.
#[derive(Debug, Default, Deserialize)]
pub struct Selectable {
    #[serde(default)]
    pub metadata: SelectableMeta,
    #[serde(default)]
    spec: Option<SelectableSpec>,
    #[serde(default)]
    status: Option<SelectableStatus>,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    // Events.
    #[serde(default, rename = "involvedObject")]
    involved_object: Option<SelectableRef>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, rename = "reportingComponent")]
    reporting_component: Option<String>,
    #[serde(default)]
    source: Option<Value>,
}

impl Selectable {
    /// Decodes an object; None when a field has an unexpected type (the caller then falls
    /// back to a full decode).
    pub fn decode(raw: &[u8]) -> Option<Self> {
        serde_json::from_slice(raw).ok()
    }

    /// The value of a selectable field, as `skiff_api::selector::field_value` renders it.
    /// None for fields this fast path does not cover.
    pub fn field(&self, field: &str) -> Option<String> {
        let s = |v: Option<&String>| v.cloned().unwrap_or_default();
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        Some(match field {
            "spec.nodeName" => s(spec.and_then(|x| x.node_name.as_ref())),
            "spec.restartPolicy" => s(spec.and_then(|x| x.restart_policy.as_ref())),
            "spec.schedulerName" => s(spec.and_then(|x| x.scheduler_name.as_ref())),
            "spec.serviceAccountName" => s(spec.and_then(|x| x.service_account_name.as_ref())),
            "spec.hostNetwork" => spec
                .and_then(|x| x.host_network)
                .unwrap_or(false)
                .to_string(),
            "spec.unschedulable" => spec
                .and_then(|x| x.unschedulable)
                .unwrap_or(false)
                .to_string(),
            "status.phase" => s(status.and_then(|x| x.phase.as_ref())),
            "status.podIP" => s(status.and_then(|x| x.pod_ip.as_ref())),
            "status.nominatedNodeName" => s(status.and_then(|x| x.nominated_node_name.as_ref())),
            "status.replicas" => status
                .and_then(|x| x.replicas)
                .map(|r| r.to_string())
                .unwrap_or_default(),
            "type" => s(self.type_.as_ref()),
            "reason" => s(self.reason.as_ref()),
            "reportingComponent" => s(self.reporting_component.as_ref()),
            "source" => match &self.source {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(v)) => v.clone(),
                Some(other) => other.to_string(),
            },
            f if f.starts_with("involvedObject.") => {
                let r = self.involved_object.as_ref();
                s(match &f["involvedObject.".len()..] {
                    "kind" => r.and_then(|x| x.kind.as_ref()),
                    "namespace" => r.and_then(|x| x.namespace.as_ref()),
                    "name" => r.and_then(|x| x.name.as_ref()),
                    "uid" => r.and_then(|x| x.uid.as_ref()),
                    "apiVersion" => r.and_then(|x| x.api_version.as_ref()),
                    "resourceVersion" => r.and_then(|x| x.resource_version.as_ref()),
                    "fieldPath" => r.and_then(|x| x.field_path.as_ref()),
                    _ => return None,
                })
            }
            _ => return None,
        })
    }
}

/// What binding a pod to a node comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Bind {
    /// The pod's new JSON: `spec.nodeName` set, the `PodScheduled` condition replaced.
    Bound(Vec<u8>),
    /// The pod is already on this node.
    Assigned(String),
    /// The pod is being deleted.
    Deleting,
}

type RawMap<'a> = BTreeMap<std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue>;

#[derive(Deserialize)]
struct DeletionOnly<'a> {
    #[serde(default, borrow, rename = "deletionTimestamp")]
    deletion_timestamp: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct ConditionType<'a> {
    #[serde(default, borrow, rename = "type")]
    type_: Option<std::borrow::Cow<'a, str>>,
}

/// Binds the stored pod `raw` to `node` without building a `serde_json::Value`: the object,
/// its `spec` and `status` are read as maps of raw JSON values, the two fields edited, and
/// written back in the same (sorted) key order a `Value` writes, so the result is the bytes
/// the `Value` edit gives. None when the JSON is not of the expected shape (the caller then
/// edits a `Value`).
pub fn bind_pod(raw: &[u8], node: &str, condition: &Value) -> Option<Bind> {
    use serde_json::value::RawValue;
    let mut top: RawMap = serde_json::from_slice(raw).ok()?;
    let mut spec: RawMap = match top.get("spec") {
        Some(s) => serde_json::from_str(s.get()).ok()?,
        None => RawMap::new(),
    };
    if let Some(n) = spec.get("nodeName") {
        let assigned: Option<String> = serde_json::from_str(n.get()).ok()?;
        if let Some(a) = assigned.filter(|a| !a.is_empty()) {
            return Some(Bind::Assigned(a));
        }
    }
    if let Some(m) = top.get("metadata") {
        let meta: DeletionOnly = serde_json::from_str(m.get()).ok()?;
        if meta.deletion_timestamp.is_some() {
            return Some(Bind::Deleting);
        }
    }
    let mut status: RawMap = match top.get("status").map(|s| s.get()) {
        None | Some("null") => RawMap::new(),
        Some(s) => serde_json::from_str(s).ok()?,
    };
    let mut conditions: Vec<&RawValue> = match status.get("conditions").map(|c| c.get()) {
        None | Some("null") => Vec::new(),
        Some(c) => serde_json::from_str(c).ok()?,
    };
    let mut kept = Vec::with_capacity(conditions.len() + 1);
    for c in conditions.drain(..) {
        let t: ConditionType = serde_json::from_str(c.get()).ok()?;
        if t.type_.as_deref() != Some("PodScheduled") {
            kept.push(c);
        }
    }
    let added = serde_json::value::to_raw_value(condition).ok()?;
    kept.push(&added);
    let conditions = serde_json::value::to_raw_value(&kept).ok()?;
    status.insert("conditions".into(), &conditions);
    let node = serde_json::value::to_raw_value(node).ok()?;
    spec.insert("nodeName".into(), &node);
    let spec = serde_json::value::to_raw_value(&spec).ok()?;
    let status = serde_json::value::to_raw_value(&status).ok()?;
    top.insert("spec".into(), &spec);
    top.insert("status".into(), &status);
    serde_json::to_vec(&top).ok().map(Bind::Bound)
}

/// [`bind_pod`] by way of a `serde_json::Value`: for any JSON object.
pub fn bind_pod_value(raw: &[u8], node: &str, condition: &Value) -> Result<Bind, String> {
    let mut v: Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    let assigned = v
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !assigned.is_empty() {
        return Ok(Bind::Assigned(assigned.to_string()));
    }
    if v.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(Bind::Deleting);
    }
    v["spec"]["nodeName"] = Value::String(node.to_string());
    if !v.get("status").is_some_and(Value::is_object) {
        v["status"] = Value::Object(Default::default());
    }
    let mut conditions: Vec<Value> = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
    conditions.push(condition.clone());
    v["status"]["conditions"] = Value::Array(conditions);
    serde_json::to_vec(&v)
        .map(Bind::Bound)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn via_value(raw: &[u8], rev: Revision) -> Value {
        let mut v: Value = serde_json::from_slice(raw).expect("json");
        v["metadata"]["resourceVersion"] = json!(rev.to_string());
        v
    }

    #[test]
    fn splices_into_the_top_level_metadata() {
        for obj in [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"template": {"metadata": {"x": 1}}}}),
            json!({"data": {"metadata": "{\"metadata\":{"}, "x": [{"metadata": {}}], "metadata": {}}),
            json!({"a": "quote \" and \\ backslash", "metadata": {"labels": {"k": "v"}}}),
        ] {
            let raw = serde_json::to_vec(&obj).expect("json");
            let out = with_resource_version(&raw, 42).expect("splice");
            assert_eq!(
                serde_json::from_slice::<Value>(&out).expect("valid json"),
                via_value(&raw, 42)
            );
        }
    }

    #[test]
    fn objects_with_a_resource_version_are_rewritten() {
        let raw = br#"{"involvedObject":{"resourceVersion":"3"},"metadata":{"name":"e"}}"#;
        let out: Value =
            serde_json::from_slice(&with_resource_version(raw, 9).expect("ok")).expect("json");
        assert_eq!(out["metadata"]["resourceVersion"], "9");
        assert_eq!(out["involvedObject"]["resourceVersion"], "3");
    }

    #[test]
    fn splice_point_looks_only_at_the_metadata_keys() {
        // An Event: its involvedObject, an annotation key, a label value and a metadata
        // value say "resourceVersion"; its metadata has none of its own.
        let event = br#"{"involvedObject":{"resourceVersion":"3"},"metadata":{"generateName":"resourceVersion","annotations":{"resourceVersion":"x"},"labels":{"a":"resourceVersion"},"name":"e"}}"#;
        assert!(splice_point(event).is_some());
        let own = br#"{"metadata":{"name":"e", "resourceVersion" :"5"}}"#;
        assert_eq!(splice_point(own), None);
        let out: Value =
            serde_json::from_slice(&with_resource_version(own, 9).expect("ok")).expect("json");
        assert_eq!(out["metadata"]["resourceVersion"], "9");
        assert_eq!(splice_point(br#"{"kind":"x"}"#), None);
    }

    proptest! {
        #[test]
        fn splice_equals_decode_and_set(
            name in "[a-z]{1,8}",
            labels in proptest::collection::btree_map("[a-z]{1,5}", "[a-z\"\\\\{}:]{0,6}", 0..4),
            data in proptest::collection::btree_map("[a-z]{1,5}", ".{0,12}", 0..4),
            rev in 1i64..1_000_000,
        ) {
            let obj = json!({"apiVersion": "v1", "data": data, "kind": "ConfigMap",
                "metadata": {"name": name, "labels": labels}});
            let raw = serde_json::to_vec(&obj).expect("json");
            let out = with_resource_version(&raw, rev).expect("splice");
            prop_assert_eq!(serde_json::from_slice::<Value>(&out).expect("valid"), via_value(&raw, rev));
        }

        #[test]
        fn event_fields_match_field_value(kind in "[A-Za-z]{0,6}", name in proptest::option::of("[a-z0-9-]{0,8}"), reason in "[A-Za-z]{0,8}", source in proptest::option::of("[a-z-]{0,8}"), typ in proptest::option::of("Normal|Warning")) {
            let mut obj = json!({"metadata": {"name": "e", "namespace": "default"},
                "involvedObject": {"kind": kind, "namespace": "default", "uid": "u-1", "apiVersion": "v1", "resourceVersion": "7", "fieldPath": ""},
                "reason": reason, "reportingComponent": "skiff-scheduler"});
            if let Some(n) = name { obj["involvedObject"]["name"] = json!(n); }
            if let Some(c) = source { obj["source"] = json!({"component": c}); }
            if let Some(t) = typ { obj["type"] = json!(t); }
            let raw = serde_json::to_vec(&obj).expect("json");
            let sel = Selectable::decode(&raw).expect("decodes");
            for f in skiff_api::selector::selectable_fields("events") {
                prop_assert_eq!(sel.field(f).expect("covered"), skiff_api::selector::field_value(&obj, f), "{}", f);
            }
        }

        #[test]
        fn selectable_fields_match_field_value(node in "[a-z0-9-]{0,8}", phase in "[A-Za-z]{0,8}", host in proptest::option::of(any::<bool>()), replicas in proptest::option::of(0i64..100)) {
            let mut obj = json!({"metadata": {"name": "p"}, "spec": {"nodeName": node}, "status": {"phase": phase}});
            if let Some(h) = host { obj["spec"]["hostNetwork"] = json!(h); }
            if let Some(r) = replicas { obj["status"]["replicas"] = json!(r); }
            let raw = serde_json::to_vec(&obj).expect("json");
            let sel = Selectable::decode(&raw).expect("decodes");
            for f in ["spec.nodeName", "status.phase", "spec.hostNetwork", "status.replicas", "spec.unschedulable", "status.podIP"] {
                prop_assert_eq!(sel.field(f).expect("covered"), skiff_api::selector::field_value(&obj, f));
            }
        }
    }

    #[test]
    fn bind_edit_writes_what_a_value_edit_writes() {
        let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-26T00:00:00Z"});
        for pod in [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"z": "1", "a": "2"}}, "spec": {"containers": [{"name": "c", "image": "i"}], "schedulerName": "default-scheduler"}}),
            json!({"metadata": {"name": "b"}, "spec": {"nodeName": ""}, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}, {"type": "Other", "status": "True"}]}}),
            json!({"metadata": {"name": "c"}, "spec": {"nodeName": null, "x\"y": 1.5e300}, "status": null}),
            json!({"metadata": {"name": "d"}, "spec": {"nodeName": "n1"}}),
            json!({"metadata": {"name": "e", "deletionTimestamp": "2026-11-26T00:00:00Z"}, "spec": {}}),
            json!({"metadata": {"name": "f"}, "spec": {"containers": []}, "status": {"conditions": null, "qosClass": "BestEffort"}}),
        ] {
            let raw = serde_json::to_vec(&pod).expect("json");
            let fast = bind_pod(&raw, "node-7", &cond).expect("fast path applies");
            assert_eq!(
                fast,
                bind_pod_value(&raw, "node-7", &cond).expect("json"),
                "{pod}"
            );
        }
        // Not an object where one is expected: no fast path.
        assert_eq!(bind_pod(br#"{"metadata":{},"spec":[]}"#, "n", &cond), None);
    }
}
