//! Defaulting as kube-apiserver applies it on create and update, so an object read back from
//! Skiff has the same fields filled in as one read back from Kubernetes.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, Namespace, NamespaceSpec, Pod, PodSpec, Probe, Secret, Service, Toleration,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn set<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(p: &mut Probe) {
    set(&mut p.timeout_seconds, 1);
    set(&mut p.period_seconds, 10);
    set(&mut p.success_threshold, 1);
    set(&mut p.failure_threshold, 3);
    if let Some(h) = &mut p.http_get {
        set(&mut h.path, "/".into());
        set(&mut h.scheme, "HTTP".into());
    }
}

fn default_container(c: &mut Container) {
    if let Some(image) = &c.image {
        let policy = default_pull_policy(image);
        set(&mut c.image_pull_policy, policy.into());
    }
    set(
        &mut c.termination_message_path,
        "/dev/termination-log".into(),
    );
    set(&mut c.termination_message_policy, "File".into());
    for p in c.ports.iter_mut().flatten() {
        set(&mut p.protocol, "TCP".into());
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        default_probe(probe);
    }
    // As in Kubernetes: limits without requests make requests equal to limits.
    if let Some(r) = &mut c.resources
        && let Some(limits) = r.limits.clone()
    {
        let requests = r.requests.get_or_insert_with(Default::default);
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
}

/// Defaults a pod spec (also the template of ReplicaSets and Deployments).
pub fn default_pod_spec(spec: &mut PodSpec) {
    set(&mut spec.restart_policy, "Always".into());
    set(&mut spec.termination_grace_period_seconds, 30);
    set(&mut spec.dns_policy, "ClusterFirst".into());
    set(&mut spec.scheduler_name, "default-scheduler".into());
    set(&mut spec.security_context, Default::default());
    set(&mut spec.enable_service_links, true);
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
    for c in &mut spec.containers {
        default_container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = &mut v.config_map {
            set(&mut cm.default_mode, 0o644);
        }
        if let Some(s) = &mut v.secret {
            set(&mut s.default_mode, 0o644);
        }
    }
}

/// A Pod's create edits: the status is the server's, and every Pod tolerates a node being
/// not ready or unreachable for a while (kube-apiserver's DefaultTolerationSeconds
/// admission), unless it already tolerates that.
pub fn create_pod(pod: &mut Pod, edits: &crate::object::CreateEdits) {
    pod.status = None;
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let k = t.key.as_deref().unwrap_or_default();
            let effect = t.effect.as_deref().unwrap_or_default();
            let exists = t.operator.as_deref() == Some("Exists");
            (k == key || (k.is_empty() && exists)) && (effect.is_empty() || effect == "NoExecute")
        });
        if !covered {
            list.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(edits.toleration_seconds),
                value: None,
            });
        }
    }
}

/// A Deployment's create edits: the status is the server's.
pub fn create_deployment(d: &mut Deployment, _: &crate::object::CreateEdits) {
    d.status = None;
}

/// A ReplicaSet's create edits: the status is the server's.
pub fn create_replicaset(rs: &mut ReplicaSet, _: &crate::object::CreateEdits) {
    rs.status = None;
}

pub fn default_pod(pod: &mut Pod) {
    if let Some(spec) = &mut pod.spec {
        default_pod_spec(spec);
    }
    let status = pod.status.get_or_insert_with(Default::default);
    set(&mut status.phase, "Pending".into());
}

pub fn default_deployment(d: &mut Deployment) {
    if let Some(spec) = &mut d.spec {
        set(&mut spec.replicas, 1);
        set(&mut spec.revision_history_limit, 10);
        set(&mut spec.progress_deadline_seconds, 600);
        let strategy = spec
            .strategy
            .get_or_insert_with(DeploymentStrategy::default);
        set(&mut strategy.type_, "RollingUpdate".into());
        if strategy.type_.as_deref() == Some("RollingUpdate") {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            set(&mut ru.max_surge, IntOrString::String("25%".into()));
            set(&mut ru.max_unavailable, IntOrString::String("25%".into()));
        }
        if let Some(ps) = &mut spec.template.spec {
            default_pod_spec(ps);
        }
    }
}

pub fn default_replicaset(rs: &mut ReplicaSet) {
    if let Some(spec) = &mut rs.spec {
        set(&mut spec.replicas, 1);
        if let Some(ps) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
            default_pod_spec(ps);
        }
    }
}

pub fn default_service(svc: &mut Service) {
    if let Some(spec) = &mut svc.spec {
        set(&mut spec.type_, "ClusterIP".into());
        set(&mut spec.session_affinity, "None".into());
        let type_ = spec.type_.clone().unwrap_or_default();
        if type_ != "ExternalName" {
            set(&mut spec.internal_traffic_policy, "Cluster".into());
            set(&mut spec.ip_families, vec!["IPv4".into()]);
            set(&mut spec.ip_family_policy, "SingleStack".into());
        }
        if type_ == "NodePort" || type_ == "LoadBalancer" {
            set(&mut spec.external_traffic_policy, "Cluster".into());
        }
        for p in spec.ports.iter_mut().flatten() {
            set(&mut p.protocol, "TCP".into());
            set(&mut p.target_port, IntOrString::Int(p.port));
        }
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let cfg = spec
                .session_affinity_config
                .get_or_insert_with(Default::default);
            let cip = cfg.client_ip.get_or_insert_with(Default::default);
            set(&mut cip.timeout_seconds, 10800);
        }
    }
    svc.status.get_or_insert_with(Default::default);
}

pub fn default_namespace(ns: &mut Namespace) {
    if let Some(name) = ns.metadata.name.clone() {
        ns.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("kubernetes.io/metadata.name".into(), name);
    }
    let spec = ns.spec.get_or_insert_with(NamespaceSpec::default);
    set(&mut spec.finalizers, vec!["kubernetes".into()]);
    let status = ns.status.get_or_insert_with(Default::default);
    set(&mut status.phase, "Active".into());
}

pub fn default_secret(s: &mut Secret) {
    set(&mut s.type_, "Opaque".into());
    // stringData is write-only: folded into data, as kube-apiserver does.
    if let Some(string_data) = s.string_data.take() {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in string_data {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
}

pub fn default_endpointslice(es: &mut EndpointSlice) {
    for p in es.ports.iter_mut().flatten() {
        set(&mut p.protocol, "TCP".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(
            default_pull_policy("localhost:5000/busybox:1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }
}
