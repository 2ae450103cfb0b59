//! Resource requests as the scheduler counts them: a pod asks for the larger of the sum of
//! its containers' requests and its largest init container's, plus its overhead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_api::validation::parse_quantity;

/// CPU in millicores, memory and ephemeral storage in bytes, pods as a count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
}

/// What a container without requests counts as when spreading load (kube-scheduler's
/// non-zero defaults): 100m CPU, 200 MiB memory.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

impl Resources {
    /// Reads `cpu`, `memory`, `ephemeral-storage` and `pods` from a resource list.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            let Some(v) = parse_quantity(&q.0) else {
                continue;
            };
            match name.as_str() {
                "cpu" => r.milli_cpu = round_up(v * 1000.0),
                "memory" => r.memory = round_up(v),
                "ephemeral-storage" => r.ephemeral_storage = round_up(v),
                "pods" => r.pods = round_up(v),
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
    }

    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
    }
}

/// Rounds a parsed quantity up to a whole unit (as Kubernetes does with fractions of a
/// millicore), without letting float error turn "776m" into 777.
fn round_up(x: f64) -> i64 {
    let r = x.round();
    if (x - r).abs() < 1e-6 {
        r as i64
    } else {
        x.ceil() as i64
    }
}

fn container_requests(c: &Container, non_zero: bool) -> Resources {
    let res = c.resources.as_ref();
    // A container with limits but no requests requests its limits (API defaulting).
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let mut r = Resources::from_list(requests);
    let l = Resources::from_list(limits);
    let has = |name: &str| requests.is_some_and(|m| m.contains_key(name));
    if !has("cpu") {
        r.milli_cpu = l.milli_cpu;
    }
    if !has("memory") {
        r.memory = l.memory;
    }
    if non_zero {
        if r.milli_cpu == 0 && !has("cpu") {
            r.milli_cpu = DEFAULT_MILLI_CPU;
        }
        if r.memory == 0 && !has("memory") {
            r.memory = DEFAULT_MEMORY;
        }
    }
    r
}

/// A pod's requests (`pods` = 1). With `non_zero`, containers that name no CPU or memory
/// count with the defaults above (for scoring only, as kube-scheduler does).
pub fn pod_requests(spec: &PodSpec, non_zero: bool) -> Resources {
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c, non_zero));
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, non_zero);
        if c.restart_policy.as_deref() == Some("Always") {
            // A sidecar runs alongside the app containers.
            sum.add(&r);
        } else {
            sum.max(&r);
        }
    }
    sum.add(&Resources::from_list(spec.overhead.as_ref()));
    sum.pods = 1;
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    fn ctr(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        let list = |v: &[(&str, &str)]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|(k, q)| (k.to_string(), Quantity(q.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: list(req),
                limits: list(lim),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sums_containers_and_takes_the_largest_init_container() {
        let spec = PodSpec {
            containers: vec![
                ctr(&[("cpu", "250m"), ("memory", "64Mi")], &[]),
                ctr(&[("cpu", "0.5")], &[]),
            ],
            init_containers: Some(vec![ctr(&[("cpu", "2")], &[])]),
            ..Default::default()
        };
        let r = pod_requests(&spec, false);
        assert_eq!(r.milli_cpu, 2000);
        assert_eq!(r.memory, 64 << 20);
        assert_eq!(r.pods, 1);
    }

    #[test]
    fn quantities_are_exact() {
        let spec = PodSpec {
            containers: vec![ctr(&[("cpu", "776m"), ("memory", "798Mi")], &[])],
            ..Default::default()
        };
        let r = pod_requests(&spec, false);
        assert_eq!((r.milli_cpu, r.memory), (776, 798 << 20));
        let tiny = pod_requests(
            &PodSpec {
                containers: vec![ctr(&[("cpu", "0.0001")], &[])],
                ..Default::default()
            },
            false,
        );
        assert_eq!(tiny.milli_cpu, 1, "a fraction of a millicore counts as one");
    }

    #[test]
    fn limits_stand_in_for_missing_requests_and_non_zero_defaults_apply() {
        let spec = PodSpec {
            containers: vec![ctr(&[], &[("memory", "1Gi")]), ctr(&[], &[])],
            ..Default::default()
        };
        let r = pod_requests(&spec, false);
        assert_eq!((r.milli_cpu, r.memory), (0, 1 << 30));
        let n = pod_requests(&spec, true);
        assert_eq!(n.milli_cpu, 2 * DEFAULT_MILLI_CPU);
        assert_eq!(n.memory, (1 << 30) + DEFAULT_MEMORY);
    }
}
