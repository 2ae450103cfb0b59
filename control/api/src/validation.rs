//! Validation as kube-apiserver does it for the fields Skiff uses. Each check appends a
//! [`Cause`] naming the field path, so a user sees every problem of an object at once.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Event, Namespace, Node, Pod, PodSpec, PodTemplateSpec, Probe, Secret,
    Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::Cause;
use crate::selector::LabelSelector;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case \
    alphanumeric characters or '-', and must start and end with an alphanumeric character \
    (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
    (e.g. 'example.com', regex used for validation is \
    '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Why `s` is not a DNS-1123 label, if it is not one.
pub fn dns1123_label_error(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if is_label(s) {
        None
    } else {
        Some(DNS1123_LABEL_MSG.into())
    }
}

/// Why `s` is not a DNS-1123 subdomain, if it is not one.
pub fn dns1123_subdomain_error(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if !s.is_empty() && s.split('.').all(is_label) {
        None
    } else {
        Some(DNS1123_SUBDOMAIN_MSG.into())
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Why `key` is not a valid label/annotation key (`[prefix/]name`), if it is not one.
pub fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && let Some(e) = dns1123_subdomain_error(p)
    {
        return Some(format!("prefix part {e}"));
    }
    if !is_qualified_name_part(name) {
        return Some(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
             and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
             '123-abc', regex used for validation is \
             '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'), at most 63 characters"
                .into(),
        );
    }
    None
}

/// Why `value` is not a valid label value, if it is not one.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.is_empty() || is_qualified_name_part(value) {
        None
    } else {
        Some(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  \
             or 'my_value',  or '12345', regex used for validation is \
             '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?'), at most 63 characters"
                .into(),
        )
    }
}

/// How an object's name is checked.
#[derive(Clone, Copy)]
pub enum NameRule {
    Label,
    Subdomain,
}

fn check_name(name: &str, rule: NameRule, field: &str, causes: &mut Vec<Cause>) {
    let err = match rule {
        NameRule::Label => dns1123_label_error(name),
        NameRule::Subdomain => dns1123_subdomain_error(name),
    };
    if let Some(e) = err {
        causes.push(Cause::invalid(field, name, &e));
    }
}

/// Validates labels at `field`.
pub fn validate_labels(labels: &BTreeMap<String, String>, field: &str, causes: &mut Vec<Cause>) {
    for (k, v) in labels {
        if let Some(e) = label_key_error(k) {
            causes.push(Cause::invalid(field, k, &e));
        }
        if let Some(e) = label_value_error(v) {
            causes.push(Cause::invalid(format!("{field}[{k}]"), v, &e));
        }
    }
}

/// Validates the metadata common to every object.
pub fn validate_meta(meta: &ObjectMeta, namespaced: bool, rule: NameRule, causes: &mut Vec<Cause>) {
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) if !name.is_empty() => check_name(name, rule, "metadata.name", causes),
        (_, Some(g)) if !g.is_empty() => {}
        _ => causes.push(Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        }),
    }
    if namespaced {
        if let Some(ns) = meta.namespace.as_deref().filter(|n| !n.is_empty()) {
            check_name(ns, NameRule::Label, "metadata.namespace", causes);
        }
    } else if meta.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        causes.push(Cause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, "metadata.labels", causes);
    }
    if let Some(annotations) = &meta.annotations {
        let mut total = 0;
        for (k, v) in annotations {
            if let Some(e) = label_key_error(k) {
                causes.push(Cause::invalid("metadata.annotations", k, &e));
            }
            total += k.len() + v.len();
        }
        if total > 256 * 1024 {
            causes.push(Cause::too_long("metadata.annotations", 256 * 1024));
        }
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        if label_key_error(f).is_some() {
            causes.push(Cause::invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                "must be a qualified name",
            ));
        }
    }
    for (i, o) in meta.owner_references.iter().flatten().enumerate() {
        let p = format!("metadata.ownerReferences[{i}]");
        if o.api_version.is_empty() {
            causes.push(Cause::required(format!("{p}.apiVersion")));
        }
        if o.kind.is_empty() {
            causes.push(Cause::required(format!("{p}.kind")));
        }
        if o.name.is_empty() {
            causes.push(Cause::required(format!("{p}.name")));
        }
        if o.uid.is_empty() {
            causes.push(Cause::required(format!("{p}.uid")));
        }
    }
}

fn check_port(port: i32, field: String, causes: &mut Vec<Cause>) {
    if !(1..=65535).contains(&port) {
        causes.push(Cause::invalid(
            field,
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

fn check_protocol(proto: Option<&str>, field: String, causes: &mut Vec<Cause>) {
    if let Some(p) = proto
        && !["TCP", "UDP", "SCTP"].contains(&p)
    {
        causes.push(Cause::not_supported(field, p, &["SCTP", "TCP", "UDP"]));
    }
}

fn check_int_or_string_port(port: &IntOrString, field: String, causes: &mut Vec<Cause>) {
    match port {
        IntOrString::Int(n) => check_port(*n, field, causes),
        IntOrString::String(s) => {
            let valid = !s.is_empty()
                && s.len() <= 15
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && s.bytes().any(|b| b.is_ascii_lowercase())
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--");
            if !valid {
                causes.push(Cause::invalid(
                    field,
                    s,
                    "must be an IANA_SVC_NAME (at most 15 characters, matching regex \
                     [a-z0-9]([a-z0-9-]*[a-z0-9])*, it must contain at least one letter [a-z], \
                     and hyphens cannot be adjacent to other hyphens)",
                ));
            }
        }
    }
}

fn validate_probe(probe: &Probe, field: &str, causes: &mut Vec<Cause>) {
    let handlers = usize::from(probe.exec.is_some())
        + usize::from(probe.http_get.is_some())
        + usize::from(probe.tcp_socket.is_some())
        + usize::from(probe.grpc.is_some());
    if handlers == 0 {
        causes.push(Cause::required(format!(
            "{field}: must specify a handler type"
        )));
    } else if handlers > 1 {
        causes.push(Cause::forbidden(
            field,
            "may not specify more than 1 handler type",
        ));
    }
    if let Some(h) = &probe.http_get {
        check_int_or_string_port(&h.port, format!("{field}.httpGet.port"), causes);
    }
    if let Some(t) = &probe.tcp_socket {
        check_int_or_string_port(&t.port, format!("{field}.tcpSocket.port"), causes);
    }
    for (name, v) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("periodSeconds", probe.period_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = v
            && v < 0
        {
            causes.push(Cause::invalid(
                format!("{field}.{name}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn validate_container(
    c: &Container,
    field: &str,
    volumes: &HashSet<&str>,
    causes: &mut Vec<Cause>,
) {
    if c.name.is_empty() {
        causes.push(Cause::required(format!("{field}.name")));
    } else {
        check_name(&c.name, NameRule::Label, &format!("{field}.name"), causes);
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        causes.push(Cause::required(format!("{field}.image")));
    }
    if let Some(p) = c.image_pull_policy.as_deref()
        && !["Always", "IfNotPresent", "Never"].contains(&p)
    {
        causes.push(Cause::not_supported(
            format!("{field}.imagePullPolicy"),
            p,
            &["Always", "IfNotPresent", "Never"],
        ));
    }
    let mut port_names = HashSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        check_port(p.container_port, format!("{pf}.containerPort"), causes);
        if let Some(hp) = p.host_port
            && hp != 0
        {
            check_port(hp, format!("{pf}.hostPort"), causes);
        }
        check_protocol(p.protocol.as_deref(), format!("{pf}.protocol"), causes);
        if let Some(n) = &p.name {
            check_int_or_string_port(
                &IntOrString::String(n.clone()),
                format!("{pf}.name"),
                causes,
            );
            if !port_names.insert(n.as_str()) {
                causes.push(Cause::duplicate(format!("{pf}.name"), n));
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let valid = !e.name.is_empty() && e.name.bytes().all(|b| b.is_ascii_graphic() && b != b'=');
        if !valid {
            causes.push(Cause::invalid(
                format!("{field}.env[{i}].name"),
                &e.name,
                "a valid environment variable name must consist only of printable ASCII \
                 characters other than '='",
            ));
        }
        if e.value.is_some() && e.value_from.is_some() {
            causes.push(Cause::invalid(
                format!("{field}.env[{i}].valueFrom"),
                "",
                "may not be specified when `value` is not empty",
            ));
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mf = format!("{field}.volumeMounts[{i}]");
        if !volumes.contains(m.name.as_str()) {
            causes.push(Cause {
                reason: "FieldValueNotFound".into(),
                message: format!("Not found: \"{}\"", m.name),
                field: format!("{mf}.name"),
            });
        }
        if m.mount_path.is_empty() {
            causes.push(Cause::required(format!("{mf}.mountPath")));
        } else if !mount_paths.insert(m.mount_path.as_str()) {
            causes.push(Cause::invalid(
                format!("{mf}.mountPath"),
                &m.mount_path,
                "must be unique",
            ));
        }
    }
    if let Some(r) = &c.resources {
        for (name, limit) in r.limits.iter().flatten() {
            if let Some(req) = r.requests.as_ref().and_then(|q| q.get(name))
                && let (Some(l), Some(q)) = (parse_quantity(&limit.0), parse_quantity(&req.0))
                && q > l
            {
                causes.push(Cause::invalid(
                    format!("{field}.resources.requests[{name}]"),
                    &req.0,
                    &format!("must be less than or equal to {name} limit of {}", limit.0),
                ));
            }
        }
        for (kind, list) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, q) in list.iter().flatten() {
                match parse_quantity(&q.0) {
                    None => causes.push(Cause::invalid(
                        format!("{field}.resources.{kind}[{name}]"),
                        &q.0,
                        "quantities must match the regular expression \
                         '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                    )),
                    Some(v) if v < 0.0 => causes.push(Cause::invalid(
                        format!("{field}.resources.{kind}[{name}]"),
                        &q.0,
                        "must be greater than or equal to 0",
                    )),
                    _ => {}
                }
            }
        }
    }
    for (name, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            validate_probe(p, &format!("{field}.{name}"), causes);
        }
    }
}

/// Parses a Kubernetes quantity ("500m", "1Gi", "2", "1e3") into its value.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

/// Validates a pod spec at `field` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &PodSpec, field: &str, causes: &mut Vec<Cause>) {
    let mut volumes = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let vf = format!("{field}.volumes[{i}]");
        check_name(&v.name, NameRule::Label, &format!("{vf}.name"), causes);
        if !volumes.insert(v.name.as_str()) {
            causes.push(Cause::duplicate(format!("{vf}.name"), &v.name));
        }
        let sources = usize::from(v.empty_dir.is_some())
            + usize::from(v.host_path.is_some())
            + usize::from(v.config_map.is_some())
            + usize::from(v.secret.is_some())
            + usize::from(v.persistent_volume_claim.is_some())
            + usize::from(v.projected.is_some())
            + usize::from(v.downward_api.is_some());
        if sources > 1 {
            causes.push(Cause::forbidden(
                vf.clone(),
                "may not specify more than 1 volume type",
            ));
        }
        if let Some(hp) = &v.host_path
            && !hp.path.starts_with('/')
        {
            causes.push(Cause::invalid(
                format!("{vf}.hostPath.path"),
                &hp.path,
                "must be an absolute path",
            ));
        }
    }
    if spec.containers.is_empty() {
        causes.push(Cause::required(format!("{field}.containers")));
    }
    let mut names = HashSet::new();
    for (list, items) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in items.iter().enumerate() {
            let cf = format!("{field}.{list}[{i}]");
            validate_container(c, &cf, &volumes, causes);
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                causes.push(Cause::duplicate(format!("{cf}.name"), &c.name));
            }
        }
    }
    if let Some(p) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&p)
    {
        causes.push(Cause::not_supported(
            format!("{field}.restartPolicy"),
            p,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(p) = spec.dns_policy.as_deref()
        && !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&p)
    {
        causes.push(Cause::not_supported(
            format!("{field}.dnsPolicy"),
            p,
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        ));
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        causes.push(Cause::invalid(
            format!("{field}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(n) = &spec.node_name
        && !n.is_empty()
    {
        check_name(n, NameRule::Subdomain, &format!("{field}.nodeName"), causes);
    }
    if let Some(sel) = &spec.node_selector {
        validate_labels(sel, &format!("{field}.nodeSelector"), causes);
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        if let Some(op) = t.operator.as_deref()
            && !["Exists", "Equal"].contains(&op)
        {
            causes.push(Cause::not_supported(
                format!("{field}.tolerations[{i}].operator"),
                op,
                &["Equal", "Exists"],
            ));
        }
        if let Some(e) = t.effect.as_deref()
            && !e.is_empty()
            && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e)
        {
            causes.push(Cause::not_supported(
                format!("{field}.tolerations[{i}].effect"),
                e,
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            ));
        }
    }
}

pub fn validate_pod(pod: &Pod) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&pod.metadata, true, NameRule::Subdomain, &mut causes);
    match &pod.spec {
        Some(spec) => validate_pod_spec(spec, "spec", &mut causes),
        None => causes.push(Cause::required("spec")),
    }
    causes
}

fn validate_selector_and_template(
    selector: Option<&K8sSelector>,
    template: Option<&PodTemplateSpec>,
    causes: &mut Vec<Cause>,
) {
    let selector = match selector {
        None => {
            causes.push(Cause::required("spec.selector"));
            None
        }
        Some(s) => match LabelSelector::from_k8s(s) {
            Ok(sel) if sel.is_empty() => {
                causes.push(Cause::invalid(
                    "spec.selector",
                    "{}",
                    "empty selector is invalid for deployment",
                ));
                None
            }
            Ok(sel) => Some(sel),
            Err(e) => {
                causes.push(Cause::invalid("spec.selector", "", &e));
                None
            }
        },
    };
    if let Some(s) = selector {
        for (k, v) in s.requirements.iter().filter_map(|r| match r {
            crate::selector::Requirement::Equals(k, v) => Some((k, v)),
            _ => None,
        }) {
            validate_labels(
                &BTreeMap::from([(k.clone(), v.clone())]),
                "spec.selector.matchLabels",
                causes,
            );
        }
        let labels = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if !s.matches(&labels) {
            let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                format!("map[{}]", rendered.join(" ")),
                "`selector` does not match template `labels`",
            ));
        }
    }
    match template {
        None => causes.push(Cause::required("spec.template")),
        Some(t) => {
            if let Some(labels) = t.metadata.as_ref().and_then(|m| m.labels.as_ref()) {
                validate_labels(labels, "spec.template.metadata.labels", causes);
            }
            match &t.spec {
                None => causes.push(Cause::required("spec.template.spec")),
                Some(spec) => {
                    validate_pod_spec(spec, "spec.template.spec", causes);
                    if let Some(p) = spec.restart_policy.as_deref()
                        && p != "Always"
                    {
                        causes.push(Cause::not_supported(
                            "spec.template.spec.restartPolicy",
                            p,
                            &["Always"],
                        ));
                    }
                }
            }
        }
    }
}

fn check_replicas(replicas: Option<i32>, causes: &mut Vec<Cause>) {
    if let Some(r) = replicas
        && r < 0
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
}

fn int_or_percent(v: &IntOrString, field: &str, causes: &mut Vec<Cause>) -> Option<i64> {
    match v {
        IntOrString::Int(n) if *n < 0 => {
            causes.push(Cause::invalid(
                field,
                n,
                "must be greater than or equal to 0",
            ));
            None
        }
        IntOrString::Int(n) => Some(i64::from(*n)),
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(p) if (0..=100).contains(&p) => Some(p),
            Some(_) => {
                causes.push(Cause::invalid(field, s, "must not be greater than 100%"));
                None
            }
            None => {
                causes.push(Cause::invalid(
                    field,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%'",
                ));
                None
            }
        },
    }
}

pub fn validate_deployment(d: &Deployment) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&d.metadata, true, NameRule::Subdomain, &mut causes);
    let Some(spec) = &d.spec else {
        causes.push(Cause::required("spec"));
        return causes;
    };
    check_replicas(spec.replicas, &mut causes);
    validate_selector_and_template(Some(&spec.selector), Some(&spec.template), &mut causes);
    if let Some(strategy) = &spec.strategy {
        match strategy.type_.as_deref() {
            Some("Recreate") => {
                if strategy.rolling_update.is_some() {
                    causes.push(Cause::forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            Some("RollingUpdate") | None => {
                if let Some(ru) = &strategy.rolling_update {
                    let surge = ru.max_surge.as_ref().and_then(|v| {
                        int_or_percent(v, "spec.strategy.rollingUpdate.maxSurge", &mut causes)
                    });
                    let unavail = ru.max_unavailable.as_ref().and_then(|v| {
                        int_or_percent(v, "spec.strategy.rollingUpdate.maxUnavailable", &mut causes)
                    });
                    if surge == Some(0) && unavail == Some(0) {
                        causes.push(Cause::invalid(
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            0,
                            "may not be 0 when `maxSurge` is 0",
                        ));
                    }
                }
            }
            Some(other) => causes.push(Cause::not_supported(
                "spec.strategy.type",
                other,
                &["Recreate", "RollingUpdate"],
            )),
        }
    }
    if let Some(h) = spec.revision_history_limit
        && h < 0
    {
        causes.push(Cause::invalid(
            "spec.revisionHistoryLimit",
            h,
            "must be greater than or equal to 0",
        ));
    }
    causes
}

pub fn validate_replicaset(rs: &ReplicaSet) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&rs.metadata, true, NameRule::Subdomain, &mut causes);
    let Some(spec) = &rs.spec else {
        causes.push(Cause::required("spec"));
        return causes;
    };
    check_replicas(spec.replicas, &mut causes);
    validate_selector_and_template(Some(&spec.selector), spec.template.as_ref(), &mut causes);
    causes
}

pub fn validate_service(svc: &Service) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&svc.metadata, true, NameRule::Label, &mut causes);
    let Some(spec) = &svc.spec else {
        causes.push(Cause::required("spec"));
        return causes;
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&type_) {
        causes.push(Cause::not_supported(
            "spec.type",
            type_,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && type_ != "ExternalName" && spec.cluster_ip.as_deref() != Some("None") {
        causes.push(Cause::required("spec.ports"));
    }
    if type_ == "ExternalName" && spec.external_name.as_deref().is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.externalName"));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pf = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            Some(n) if !n.is_empty() => {
                check_name(n, NameRule::Label, &format!("{pf}.name"), &mut causes);
                if !names.insert(n) {
                    causes.push(Cause::duplicate(format!("{pf}.name"), n));
                }
            }
            _ if ports.len() > 1 => causes.push(Cause::required(format!("{pf}.name"))),
            _ => {}
        }
        check_port(p.port, format!("{pf}.port"), &mut causes);
        check_protocol(p.protocol.as_deref(), format!("{pf}.protocol"), &mut causes);
        if !seen.insert((p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()))) {
            causes.push(Cause::duplicate(
                pf.to_string(),
                format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
            ));
        }
        if let Some(t) = &p.target_port {
            check_int_or_string_port(t, format!("{pf}.targetPort"), &mut causes);
        }
        if let Some(np) = p.node_port
            && np != 0
        {
            if type_ == "ClusterIP" || type_ == "ExternalName" {
                causes.push(Cause::forbidden(
                    format!("{pf}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(30000..=32767).contains(&np) {
                causes.push(Cause::invalid(
                    format!("{pf}.nodePort"),
                    np,
                    "provided port is not in the valid range. The range of valid ports is \
                     30000-32767",
                ));
            }
        }
    }
    if let Some(ip) = spec.cluster_ip.as_deref()
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        causes.push(Cause::invalid(
            "spec.clusterIP",
            ip,
            "must be empty, 'None', or a valid IP address",
        ));
    }
    if let Some(sel) = &spec.selector {
        validate_labels(sel, "spec.selector", &mut causes);
    }
    if let Some(a) = spec.session_affinity.as_deref()
        && !["None", "ClientIP"].contains(&a)
    {
        causes.push(Cause::not_supported(
            "spec.sessionAffinity",
            a,
            &["ClientIP", "None"],
        ));
    }
    if let Some(p) = spec.external_traffic_policy.as_deref()
        && !["Cluster", "Local"].contains(&p)
    {
        causes.push(Cause::not_supported(
            "spec.externalTrafficPolicy",
            p,
            &["Cluster", "Local"],
        ));
    }
    causes
}

fn validate_data_keys<'a>(
    keys: impl Iterator<Item = (&'a String, usize)>,
    field: &str,
    causes: &mut Vec<Cause>,
) {
    let mut total = 0;
    for (k, len) in keys {
        let valid = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && k != "."
            && k != "..";
        if !valid {
            causes.push(Cause::invalid(
                format!("{field}[{k}]"),
                k,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                 (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
                 '[-._a-zA-Z0-9]+')",
            ));
        }
        total += len;
    }
    if total > 1024 * 1024 {
        causes.push(Cause::too_long(field, 1024 * 1024));
    }
}

pub fn validate_configmap(cm: &ConfigMap) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&cm.metadata, true, NameRule::Subdomain, &mut causes);
    validate_data_keys(
        cm.data.iter().flatten().map(|(k, v)| (k, v.len())),
        "data",
        &mut causes,
    );
    validate_data_keys(
        cm.binary_data.iter().flatten().map(|(k, v)| (k, v.0.len())),
        "binaryData",
        &mut causes,
    );
    for k in cm.data.iter().flatten().map(|(k, _)| k) {
        if cm.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
            causes.push(Cause::invalid(
                format!("data[{k}]"),
                k,
                "duplicate of key present in binaryData",
            ));
        }
    }
    causes
}

pub fn validate_secret(s: &Secret) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&s.metadata, true, NameRule::Subdomain, &mut causes);
    let mut keys: Vec<(&String, usize)> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.len()))
        .collect();
    keys.extend(s.string_data.iter().flatten().map(|(k, v)| (k, v.len())));
    validate_data_keys(keys.into_iter(), "data", &mut causes);
    causes
}

pub fn validate_namespace(ns: &Namespace) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&ns.metadata, false, NameRule::Label, &mut causes);
    causes
}

pub fn validate_node(n: &Node) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&n.metadata, false, NameRule::Subdomain, &mut causes);
    for (i, t) in n
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .enumerate()
    {
        if let Some(e) = label_key_error(&t.key) {
            causes.push(Cause::invalid(format!("spec.taints[{i}].key"), &t.key, &e));
        }
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
            causes.push(Cause::not_supported(
                format!("spec.taints[{i}].effect"),
                &t.effect,
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            ));
        }
    }
    causes
}

pub fn validate_endpointslice(es: &EndpointSlice) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&es.metadata, true, NameRule::Subdomain, &mut causes);
    if !["IPv4", "IPv6", "FQDN"].contains(&es.address_type.as_str()) {
        causes.push(Cause::not_supported(
            "addressType",
            &es.address_type,
            &["FQDN", "IPv4", "IPv6"],
        ));
    }
    if es.endpoints.len() > 1000 {
        causes.push(Cause {
            reason: "FieldValueTooMany".into(),
            message: "Too many: must have at most 1000 items".into(),
            field: "endpoints".into(),
        });
    }
    for (i, e) in es.endpoints.iter().enumerate() {
        if e.addresses.is_empty() {
            causes.push(Cause::required(format!("endpoints[{i}].addresses")));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let ok = match es.address_type.as_str() {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => dns1123_subdomain_error(a).is_none(),
            };
            if !ok {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    a,
                    &format!("must be a valid {} address", es.address_type),
                ));
            }
        }
    }
    for (i, p) in es.ports.iter().flatten().enumerate() {
        if let Some(port) = p.port {
            check_port(port, format!("ports[{i}].port"), &mut causes);
        }
        check_protocol(
            p.protocol.as_deref(),
            format!("ports[{i}].protocol"),
            &mut causes,
        );
    }
    causes
}

pub fn validate_lease(l: &Lease) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&l.metadata, true, NameRule::Subdomain, &mut causes);
    if let Some(d) = l.spec.as_ref().and_then(|s| s.lease_duration_seconds)
        && d <= 0
    {
        causes.push(Cause::invalid(
            "spec.leaseDurationSeconds",
            d,
            "must be greater than 0",
        ));
    }
    causes
}

pub fn validate_event(e: &Event) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(&e.metadata, true, NameRule::Subdomain, &mut causes);
    if let Some(t) = e.type_.as_deref()
        && !["Normal", "Warning"].contains(&t)
    {
        causes.push(Cause::not_supported("type", t, &["Normal", "Warning"]));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_label_error("web-1").is_none());
        assert!(dns1123_label_error("Web").is_some());
        assert!(dns1123_label_error("-web").is_some());
        assert!(dns1123_label_error(&"a".repeat(64)).is_some());
        assert!(dns1123_subdomain_error("a.b-c.d").is_none());
        assert!(dns1123_subdomain_error("a..b").is_some());
        assert!(label_key_error("app.kubernetes.io/name").is_none());
        assert!(label_key_error("Bad_Prefix/name").is_some());
        assert!(label_key_error("name_with.dots-1").is_none());
        assert!(label_value_error("").is_none());
        assert!(label_value_error("v1.2_x").is_none());
        assert!(label_value_error("-x").is_some());
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("12Qi"), None);
    }
}
