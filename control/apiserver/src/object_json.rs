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
    let mut i = open + 1;
    while i < raw.len() {
        match raw[i] {
            b'\\' => i += 2,
            b'"' => return Some((&raw[open + 1..i], i)),
            _ => i += 1,
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
            _ => return None,
        })
    }
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
}
