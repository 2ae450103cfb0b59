//! The resources Skiff serves: kind, group/version, plural, short names, scope. One table, so
//! the API server, the client and the CLI agree on every name a user may type.

/// Static description of one served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    pub kind: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Lower-case plural: the resource name in URLs and store keys.
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind qualified by group, as kube-apiserver names it in messages: `Deployment.apps`.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// Plural qualified by group: `deployments.apps`, `pods`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Store key prefix holding every object of this resource: `/registry/pods/`.
    pub fn key_prefix(&self) -> String {
        format!("/registry/{}/", self.plural)
    }

    /// Store key prefix of one namespace's objects (or of all, for cluster-scoped resources).
    pub fn namespace_prefix(&self, namespace: &str) -> String {
        if self.namespaced && !namespace.is_empty() {
            format!("/registry/{}/{}/", self.plural, namespace)
        } else {
            self.key_prefix()
        }
    }

    /// Store key of one object: `/registry/<plural>/<namespace>/<name>`.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("/registry/{}/{}/{}", self.plural, namespace, name)
        } else {
            format!("/registry/{}/{}", self.plural, name)
        }
    }
}

const fn info(
    kind: &'static str,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        kind,
        group,
        version,
        plural,
        singular,
        short_names,
        namespaced,
    }
}

/// Every resource Skiff serves.
pub static RESOURCES: &[ResourceInfo] = &[
    info(
        "Namespace",
        "",
        "v1",
        "namespaces",
        "namespace",
        &["ns"],
        false,
    ),
    info("Node", "", "v1", "nodes", "node", &["no"], false),
    info("Pod", "", "v1", "pods", "pod", &["po"], true),
    info("Service", "", "v1", "services", "service", &["svc"], true),
    info(
        "ConfigMap",
        "",
        "v1",
        "configmaps",
        "configmap",
        &["cm"],
        true,
    ),
    info("Secret", "", "v1", "secrets", "secret", &[], true),
    info("Event", "", "v1", "events", "event", &["ev"], true),
    info(
        "EndpointSlice",
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        &["ep"],
        true,
    ),
    info(
        "ReplicaSet",
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        &["rs"],
        true,
    ),
    info(
        "Deployment",
        "apps",
        "v1",
        "deployments",
        "deployment",
        &["deploy"],
        true,
    ),
    info(
        "Lease",
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        &[],
        true,
    ),
];

/// Finds a resource by its plural (the name used on the wire).
pub fn by_plural(plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

/// Finds a resource by apiVersion and kind, as they appear in a manifest.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Finds a resource by any name kubectl accepts: plural, singular, short name or kind, in any
/// case, optionally qualified by group (`deployments.apps`, `deploy.apps`).
pub fn by_name(name: &str) -> Option<&'static ResourceInfo> {
    let name = name.to_ascii_lowercase();
    let (base, group) = match name.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (name.clone(), None),
    };
    RESOURCES.iter().find(|r| {
        let matches_name = r.plural == base
            || r.singular == base
            || r.kind.eq_ignore_ascii_case(&base)
            || r.short_names.contains(&base.as_str());
        let matches_group = match &group {
            None => true,
            Some(g) => r.group == g,
        };
        matches_name && matches_group
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_names_resolve() {
        for (name, plural) in [
            ("po", "pods"),
            ("pod", "pods"),
            ("Pods", "pods"),
            ("svc", "services"),
            ("deploy", "deployments"),
            ("deployments.apps", "deployments"),
            ("rs", "replicasets"),
            ("ns", "namespaces"),
            ("no", "nodes"),
            ("cm", "configmaps"),
            ("ep", "endpointslices"),
            ("endpointslices", "endpointslices"),
            ("Deployment", "deployments"),
        ] {
            assert_eq!(by_name(name).map(|r| r.plural), Some(plural), "{name}");
        }
        assert!(by_name("deployments.batch").is_none());
        assert!(by_name("widgets").is_none());
    }

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        let pods = by_plural("pods").expect("pods");
        assert_eq!(pods.key("default", "web"), "/registry/pods/default/web");
        let nodes = by_plural("nodes").expect("nodes");
        assert_eq!(nodes.key("", "n1"), "/registry/nodes/n1");
        assert_eq!(
            by_kind("apps/v1", "Deployment").map(|r| r.plural),
            Some("deployments")
        );
        assert!(by_kind("v1", "Deployment").is_none());
    }
}
