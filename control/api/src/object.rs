//! The admission pipeline every object goes through on its way into the store: strict
//! decoding into its `k8s-openapi` type (type errors and unknown fields named by path),
//! defaulting, then validation. Objects stay `serde_json::Value` around it, so the API server
//! handles every kind with one code path.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::defaults;
use crate::error::{ApiError, Cause};
use crate::resource::ResourceInfo;
use crate::validation;

/// A built-in kind: its typed form, defaulting and validation.
pub trait Kind: DeserializeOwned + Serialize {
    fn apply_defaults(&mut self) {}
    fn validate(&self) -> Vec<Cause>;
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
}

kind!(Pod, validation::validate_pod, defaults::default_pod);
kind!(
    Deployment,
    validation::validate_deployment,
    defaults::default_deployment
);
kind!(
    ReplicaSet,
    validation::validate_replicaset,
    defaults::default_replicaset
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
pub fn decode_strict<K: DeserializeOwned + Serialize>(value: &Value) -> Result<K, Vec<Cause>> {
    let typed: K = serde_path_to_error::deserialize(value).map_err(|e| {
        vec![Cause {
            reason: "FieldValueTypeInvalid".into(),
            message: e.inner().to_string(),
            field: e.path().to_string(),
        }]
    })?;
    let round =
        serde_json::to_value(&typed).map_err(|e| vec![Cause::invalid("", "", &e.to_string())])?;
    let mut unknown = Vec::new();
    find_unknown_fields(value, &round, &mut unknown);
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

/// One step of a field path: an object key or an array index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.containers[0].name` for the steps taken.
fn render_path(steps: &[Step]) -> String {
    let mut p = String::new();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !p.is_empty() {
                    p.push('.');
                }
                p.push_str(k);
            }
            Step::Index(i) => p.push_str(&format!("[{i}]")),
        }
    }
    p
}

/// The fields of `original` that the round trip through the typed object dropped (unknown
/// fields), as paths; a path is written only for a field reported.
fn find_unknown_fields(original: &Value, round: &Value, out: &mut Vec<String>) {
    unknown_below(original, round, &mut Vec::new(), out);
}

fn unknown_below<'a>(
    original: &'a Value,
    round: &Value,
    steps: &mut Vec<Step<'a>>,
    out: &mut Vec<String>,
) {
    match (original, round) {
        (Value::Object(o), Value::Object(r)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                steps.push(Step::Key(k));
                match r.get(k) {
                    Some(rv) => unknown_below(v, rv, steps, out),
                    None => out.push(render_path(steps)),
                }
                steps.pop();
            }
        }
        (Value::Array(o), Value::Array(r)) => {
            for (i, (ov, rv)) in o.iter().zip(r).enumerate() {
                steps.push(Step::Index(i));
                unknown_below(ov, rv, steps, out);
                steps.pop();
            }
        }
        _ => {}
    }
}

fn admit_typed<K: Kind>(info: &ResourceInfo, value: Value) -> Result<Value, ApiError> {
    let name = object_name(&value);
    let invalid = |causes| ApiError::invalid(&info.qualified_kind(), &name, causes);
    let mut typed: K = serde_path_to_error::deserialize(&value).map_err(|e| {
        invalid(vec![Cause {
            reason: "FieldValueTypeInvalid".into(),
            message: e.inner().to_string(),
            field: e.path().to_string(),
        }])
    })?;
    // Defaulting only adds fields, so unknown fields can be found against the final form;
    // Secrets fold stringData into data, so they are checked before defaulting.
    let moves_fields = info.kind == "Secret";
    let unknown = |checked: &Value| {
        let mut found = Vec::new();
        find_unknown_fields(&value, checked, &mut found);
        found
            .into_iter()
            .map(|field| Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("unknown field \"{field}\""),
                field,
            })
            .collect::<Vec<_>>()
    };
    if moves_fields {
        let round = serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))?;
        let found = unknown(&round);
        if !found.is_empty() {
            return Err(invalid(found));
        }
    }
    typed.apply_defaults();
    let causes = typed.validate();
    let out = serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))?;
    if !moves_fields {
        let found = unknown(&out);
        if !found.is_empty() {
            return Err(invalid(found));
        }
    }
    if !causes.is_empty() {
        return Err(invalid(causes));
    }
    Ok(out)
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
