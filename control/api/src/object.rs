//! The admission pipeline every object goes through on its way into the store: strict
//! decoding into its `k8s-openapi` type (type errors and unknown fields named by path),
//! defaulting, then validation. Objects stay `serde_json::Value` around it, so the API server
//! handles every kind with one code path; a create that edits nothing after admission takes
//! the typed object straight to the bytes it stores (`admit_created`), or, for a request
//! that needs nothing unusual, decodes it straight from its bytes (`admit_created_bytes`).

use k8s_openapi::Metadata;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::defaults;
use crate::error::{ApiError, Cause};
use crate::resource::ResourceInfo;
use crate::validation;

/// What a create's edits need beyond the object.
#[derive(Debug, Clone, Copy)]
pub struct CreateEdits {
    /// tolerationSeconds of the not-ready and unreachable tolerations every Pod gets.
    pub toleration_seconds: i64,
}

/// A built-in kind: its typed form, defaulting and validation.
pub trait Kind: DeserializeOwned + Serialize + Metadata<Ty = ObjectMeta> {
    fn apply_defaults(&mut self) {}
    fn validate(&self) -> Vec<Cause>;
    /// A create's edits of the kind's own fields, before defaulting (a status the server
    /// owns is dropped; Pods get their default tolerations).
    fn on_create(&mut self, _edits: &CreateEdits) {}
}

macro_rules! kind {
    ($ty:ty, $validate:path) => {
        impl Kind for $ty {
            fn validate(&self) -> Vec<Cause> {
                $validate(self)
            }
        }
    };
    ($ty:ty, $validate:path, $default:path) => {
        impl Kind for $ty {
            fn apply_defaults(&mut self) {
                $default(self)
            }
            fn validate(&self) -> Vec<Cause> {
                $validate(self)
            }
        }
    };
    ($ty:ty, $validate:path, $default:path, $create:path) => {
        impl Kind for $ty {
            fn apply_defaults(&mut self) {
                $default(self)
            }
            fn validate(&self) -> Vec<Cause> {
                $validate(self)
            }
            fn on_create(&mut self, edits: &CreateEdits) {
                $create(self, edits)
            }
        }
    };
}

kind!(
    Pod,
    validation::validate_pod,
    defaults::default_pod,
    defaults::create_pod
);
kind!(
    Deployment,
    validation::validate_deployment,
    defaults::default_deployment,
    defaults::create_deployment
);
kind!(
    ReplicaSet,
    validation::validate_replicaset,
    defaults::default_replicaset,
    defaults::create_replicaset
);
kind!(
    Service,
    validation::validate_service,
    defaults::default_service
);
kind!(
    Namespace,
    validation::validate_namespace,
    defaults::default_namespace
);
kind!(
    Secret,
    validation::validate_secret,
    defaults::default_secret
);
kind!(
    EndpointSlice,
    validation::validate_endpointslice,
    defaults::default_endpointslice
);
kind!(ConfigMap, validation::validate_configmap);
kind!(Node, validation::validate_node);
kind!(Lease, validation::validate_lease);
kind!(Event, validation::validate_event);

/// Calls `$f::<Type>(args)` for the Rust type of `$kind`.
#[macro_export]
macro_rules! dispatch_kind {
    ($kind:expr, $f:ident ( $($arg:expr),* ), $unknown:expr) => {{
        use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        match $kind {
            "Pod" => $f::<Pod>($($arg),*),
            "Deployment" => $f::<Deployment>($($arg),*),
            "ReplicaSet" => $f::<ReplicaSet>($($arg),*),
            "Service" => $f::<Service>($($arg),*),
            "Namespace" => $f::<Namespace>($($arg),*),
            "Secret" => $f::<Secret>($($arg),*),
            "EndpointSlice" => $f::<EndpointSlice>($($arg),*),
            "ConfigMap" => $f::<ConfigMap>($($arg),*),
            "Node" => $f::<Node>($($arg),*),
            "Lease" => $f::<Lease>($($arg),*),
            "Event" => $f::<Event>($($arg),*),
            _ => $unknown,
        }
    }};
}

/// Decodes `value` into `K`; a wrong type or an unknown field becomes a cause naming its path.
///
/// One pass: fields the typed object has no place for are reported as the decoder skips
/// them (`serde_ignored`), so nothing is encoded again to find them. A type error is rare
/// and decoded a second time to learn where it is.
pub fn decode_strict<K: DeserializeOwned>(value: &Value) -> Result<K, Vec<Cause>> {
    let mut unknown = Vec::new();
    let typed: Result<K, _> = serde_ignored::deserialize(value, |path| {
        unknown.push(render_path(&path));
    });
    let typed = match typed {
        Ok(t) => t,
        Err(plain) => {
            return Err(vec![
                match serde_path_to_error::deserialize::<_, K>(value) {
                    Err(e) => Cause {
                        reason: "FieldValueTypeInvalid".into(),
                        message: e.inner().to_string(),
                        field: e.path().to_string(),
                    },
                    // Not expected: the same input decoded without tracking the path.
                    Ok(_) => Cause {
                        reason: "FieldValueTypeInvalid".into(),
                        message: plain.to_string(),
                        field: String::new(),
                    },
                },
            ]);
        }
    };
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(unknown
            .into_iter()
            .map(|field| Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("unknown field \"{field}\""),
                field,
            })
            .collect())
    }
}

/// `spec.containers[0].name` for a path the decoder reports.
fn render_path(path: &serde_ignored::Path) -> String {
    let mut out = String::new();
    write_path(path, &mut out);
    out
}

fn write_path(path: &serde_ignored::Path, out: &mut String) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            write_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            write_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => write_path(parent, out),
    }
}

/// Decodes, defaults and validates `value` as `K` (with a create's edits when `create`).
fn admitted<K: Kind>(
    info: &ResourceInfo,
    value: &Value,
    create: Option<&CreateEdits>,
) -> Result<K, ApiError> {
    let invalid = |causes| ApiError::invalid(&info.qualified_kind(), &object_name(value), causes);
    let mut typed: K = decode_strict(value).map_err(invalid)?;
    if let Some(edits) = create {
        typed.on_create(edits);
    }
    typed.apply_defaults();
    let causes = typed.validate();
    if causes.is_empty() {
        Ok(typed)
    } else {
        Err(invalid(causes))
    }
}

fn admit_typed<K: Kind>(info: &ResourceInfo, value: Value) -> Result<Value, ApiError> {
    let typed: K = admitted(info, &value, None)?;
    serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))
}

fn admit_created_typed<K: Kind>(
    info: &ResourceInfo,
    value: Value,
    edits: &CreateEdits,
    size_hint: usize,
) -> Result<Vec<u8>, ApiError> {
    let typed: K = admitted(info, &value, Some(edits))?;
    drop(value);
    let mut out = Vec::with_capacity(size_hint);
    serde_json::to_writer(&mut out, &typed).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(out)
}

/// A create's admission straight from the request's bytes: decoded into the kind's type
/// with no tree in between, `meta` makes the server's edits of the metadata, then the
/// kind's create edits, defaults and validation, and the object is encoded once. None when
/// the body needs the general path (`admit_created`): it does not decode cleanly into the
/// type, has a field the type has no place for, `meta` refuses it, or it is invalid. That
/// path then says what is wrong, so every error is worded one way.
pub fn admit_created_bytes(
    info: &ResourceInfo,
    body: &[u8],
    edits: &CreateEdits,
    meta: &mut dyn FnMut(&mut ObjectMeta) -> bool,
) -> Option<Vec<u8>> {
    crate::dispatch_kind!(
        info.kind,
        admit_created_bytes_typed(body, edits, meta),
        None
    )
}

fn admit_created_bytes_typed<K: Kind>(
    body: &[u8],
    edits: &CreateEdits,
    meta: &mut dyn FnMut(&mut ObjectMeta) -> bool,
) -> Option<Vec<u8>> {
    let mut unknown = false;
    let mut decoder = serde_json::Deserializer::from_slice(body);
    let mut typed: K = serde_ignored::deserialize(&mut decoder, |_| unknown = true).ok()?;
    decoder.end().ok()?;
    if unknown || !meta(typed.metadata_mut()) {
        return None;
    }
    typed.on_create(edits);
    typed.apply_defaults();
    if !typed.validate().is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 256);
    serde_json::to_writer(&mut out, &typed).ok()?;
    Some(out)
}

/// The current time as Kubernetes writes timestamps (whole seconds on the wire).
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::new(n.as_secs() as i64, n.subsec_nanos() as i32)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Decodes, defaults and validates an object of `info`'s kind, returning it defaulted.
pub fn admit(info: &ResourceInfo, value: Value) -> Result<Value, ApiError> {
    crate::dispatch_kind!(
        info.kind,
        admit_typed(info, value),
        Err(ApiError::bad_request(format!(
            "no validation registered for kind {}",
            info.kind
        )))
    )
}

/// `admit` for a create, with the kind's create edits, answered as the JSON to store: the
/// typed object is encoded once, with no tree in between (the path of a create that edits
/// nothing after admission). `size_hint`: the expected length of the JSON (the request's,
/// plus what the server adds), so that the output is written into one allocation rather
/// than grown by doubling.
pub fn admit_created(
    info: &ResourceInfo,
    value: Value,
    edits: &CreateEdits,
    size_hint: usize,
) -> Result<Vec<u8>, ApiError> {
    crate::dispatch_kind!(
        info.kind,
        admit_created_typed(info, value, edits, size_hint),
        Err(ApiError::bad_request(format!(
            "no validation registered for kind {}",
            info.kind
        )))
    )
}

/// `metadata.name` of an object (or its generateName), "" if absent.
pub fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    meta.and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .or_else(|| {
            meta.and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
        })
        .unwrap_or_default()
        .to_string()
}

/// `metadata.namespace` of an object, "" if absent.
pub fn object_namespace(value: &Value) -> String {
    value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A string field under `metadata`, "" if absent.
pub fn meta_str<'a>(value: &'a Value, field: &str) -> &'a str {
    value
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::by_plural;
    use serde_json::json;

    fn deployments() -> &'static ResourceInfo {
        by_plural("deployments").expect("deployments")
    }

    #[test]
    fn defaults_are_applied() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                        "ports": [{"containerPort": 80}]}]}}
            }
        });
        let out = admit(deployments(), d).expect("valid");
        assert_eq!(out["spec"]["replicas"], 1);
        assert_eq!(out["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let pod = &out["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn invalid_objects_name_every_field() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "Web"},
            "spec": {
                "replicas": -1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "other"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}, {"name": "c"}]}}
            }
        });
        let err = admit(deployments(), d).expect_err("invalid");
        let fields: Vec<&str> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "spec.replicas",
                "spec.template.metadata.labels",
                "spec.template.spec.containers[1].image",
                "spec.template.spec.containers[1].name",
            ]
        );
        assert!(
            err.message
                .starts_with("Deployment.apps \"Web\" is invalid: ["),
            "{}",
            err.message
        );
    }

    /// A create's admission stores exactly the object the tree admission gives plus the
    /// kind's create edits, for every kind, and fails the same way; from the request's
    /// bytes it stores the very same bytes, and leaves a broken object to the general path.
    #[test]
    fn created_admission_matches_the_tree() {
        let pod_spec = json!({"containers": [{"name": "c", "image": "busybox:1.36",
            "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}],
            "tolerations": [{"key": "k", "operator": "Exists"}]});
        let objects = [
            (
                "deployments",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec}}}),
            ),
            (
                "replicasets",
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "web-1", "namespace": "default"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec}}}),
            ),
            (
                "pods",
                json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "default", "annotations": {"a": "b"}},
                "spec": pod_spec}),
            ),
            (
                "configmaps",
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "default"}, "data": {"k": "v"}}),
            ),
            (
                "secrets",
                json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s", "namespace": "default"},
                "stringData": {"password": "hunter2"}, "data": {"a": "eA=="}}),
            ),
            (
                "namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "team-a"}}),
            ),
            (
                "nodes",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1",
                "labels": {"kubernetes.io/hostname": "n1"}},
                "spec": {"podCIDR": "198.18.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
                "status": {"capacity": {"cpu": "2", "pods": "110"}}}),
            ),
            (
                "leases",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "n1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                    "renewTime": "2026-11-27T07:00:00.123456Z"}}),
            ),
            (
                "endpointslices",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-abc", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["198.19.0.5"],
                    "conditions": {"ready": true}}], "ports": [{"name": "http", "port": 80}]}),
            ),
            (
                "events",
                json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "e1", "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                "reason": "Scheduled", "message": "m", "type": "Normal", "count": 1}),
            ),
        ];
        let edits = CreateEdits {
            toleration_seconds: 300,
        };
        for (plural, obj) in objects {
            let info = by_plural(plural).expect("kind");
            let tree = admit(info, obj.clone()).expect("valid");
            let bytes = admit_created(info, obj.clone(), &edits, 0).expect("valid");
            let mut encoded: Value = serde_json::from_slice(&bytes).expect("json");
            if plural == "pods" {
                // The create edits: the default tolerations join the pod's own.
                let tolerations = encoded["spec"]["tolerations"]
                    .as_array_mut()
                    .expect("tolerations");
                assert_eq!(tolerations.len(), 3, "{tolerations:?}");
                assert_eq!(tolerations[1]["key"], "node.kubernetes.io/not-ready");
                assert_eq!(tolerations[2]["tolerationSeconds"], 300);
                tolerations.truncate(1);
            }
            assert_eq!(encoded, tree, "{plural}");
            let mut seen = None;
            let fast = admit_created_bytes(info, obj.to_string().as_bytes(), &edits, &mut |m| {
                seen = m.name.clone();
                true
            });
            assert_eq!(fast.as_deref(), Some(&bytes[..]), "{plural}");
            assert_eq!(seen.as_deref(), obj["metadata"]["name"].as_str());
            // Broken the same ways: an unknown field, a wrong type.
            let mut unknown = obj.clone();
            unknown["metadata"]["colour"] = json!("blue");
            let (a, b) = (
                admit(info, unknown.clone()).expect_err("unknown"),
                admit_created(info, unknown.clone(), &edits, 0).expect_err("unknown"),
            );
            assert_eq!(
                (a.message.clone(), a.causes.len()),
                (b.message, 1),
                "{plural}"
            );
            let general = |v: &Value| {
                admit_created_bytes(info, v.to_string().as_bytes(), &edits, &mut |_| true)
            };
            assert_eq!(general(&unknown), None, "{plural}");
            let mut wrong = obj.clone();
            wrong["metadata"]["labels"] = json!(["not", "a", "map"]);
            assert_eq!(general(&wrong), None, "{plural}");
            let b = admit_created(info, wrong, &edits, 0).expect_err("type");
            assert_eq!(b.causes[0].field, "metadata.labels", "{plural}");
            // Refused by the metadata edits, or trailing bytes: the general path too.
            let refused =
                admit_created_bytes(info, obj.to_string().as_bytes(), &edits, &mut |_| false);
            assert_eq!(refused, None, "{plural}");
            assert_eq!(general(&json!([obj])), None, "{plural}");
            let trailing = format!("{obj} {{}}");
            let trailing = admit_created_bytes(info, trailing.as_bytes(), &edits, &mut |_| true);
            assert_eq!(trailing, None, "{plural}");
        }
    }

    /// A Pod's create drops the status the client sent and does not add a toleration the
    /// pod already has.
    #[test]
    fn a_created_pod_loses_its_status_and_keeps_its_own_tolerations() {
        let info = by_plural("pods").expect("kind");
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}],
                "tolerations": [{"operator": "Exists"}]},
            "status": {"phase": "Running"}});
        let edits = CreateEdits {
            toleration_seconds: 60,
        };
        let bytes = admit_created(info, pod.clone(), &edits, 0).expect("valid");
        let stored: Value = serde_json::from_slice(&bytes).expect("json");
        // The client's status gone; the default one (Pending) in its place.
        assert_eq!(stored["status"], json!({"phase": "Pending"}));
        assert_eq!(
            stored["spec"]["tolerations"],
            json!([{"operator": "Exists"}])
        );
        let fast = admit_created_bytes(info, pod.to_string().as_bytes(), &edits, &mut |_| true);
        assert_eq!(fast, Some(bytes));
    }

    /// An unknown field set to null is still unknown; a known one set to null is absent.
    #[test]
    fn nulls_are_known_or_unknown_by_their_field() {
        let info = by_plural("configmaps").expect("kind");
        let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": null});
        assert_eq!(admit(info, ok).expect("valid").get("data"), None);
        let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "datta": null});
        let err = admit(info, bad).expect_err("unknown");
        assert_eq!(err.causes[0].field, "datta");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_named() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
            "spec": {"replicas": "three"}});
        let err = admit(deployments(), d).expect_err("type");
        assert_eq!(err.causes[0].field, "spec.replicas");
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
            "spec": {"replica": 3, "selector": {}, "template": {}}});
        let err = admit(deployments(), d).expect_err("unknown");
        assert_eq!(err.causes[0].message, "unknown field \"spec.replica\"");
        // Inside arrays, and more than one.
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                    {"name": "c", "image": "i"},
                    {"name": "d", "image": "i", "imagePullPolcy": "Always", "ports": [{"containerPort": 80, "proto": "TCP"}]}]}}}});
        let err = admit(deployments(), d).expect_err("unknown");
        let fields: Vec<&str> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.template.spec.containers[1].imagePullPolcy",
                "spec.template.spec.containers[1].ports[0].proto"
            ]
        );
    }
}
