//! The EndpointSlice controller: for every Service with a selector, the pods it selects
//! (with an IP, not finished) become endpoints in slices of at most 100, labelled
//! `kubernetes.io/service-name` and owned by the Service. Conditions as Kubernetes sets
//! them: `ready` (pod Ready and not terminating; always with publishNotReadyAddresses),
//! `serving` (pod Ready), `terminating` (pod being deleted). Pods that resolve a named
//! target port differently land in different slices (one port list per slice). A slice is
//! written only when its content changes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::selector::LabelSelector;
use skiff_api::{ApiError, Reason};
use skiff_client::informer::{Event, Reader};
use skiff_client::{Client, DeleteParams};

use crate::util::{is_ready, is_terminal, key, owner_ref, split_key};
use crate::workqueue::WorkQueue;

pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
pub const MAX_ENDPOINTS: usize = 100;
/// The index of slices by `namespace/service`.
pub const BY_SERVICE: &str = "service";
/// The index of services by each `namespace/key=value` of their selector.
pub const BY_SELECTOR: &str = "selector";

pub fn selector_index(s: &Service) -> Vec<String> {
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    s.spec
        .as_ref()
        .and_then(|sp| sp.selector.as_ref())
        .map(|sel| sel.iter().map(|(k, v)| format!("{ns}/{k}={v}")).collect())
        .unwrap_or_default()
}

pub struct EndpointSliceController {
    pub client: Client,
    pub services: Reader<Service>,
    pub pods: Reader<Pod>,
    pub slices: Reader<EndpointSlice>,
    pub queue: Arc<WorkQueue>,
    /// Writes not yet seen by the slice informer, per service: slice name -> the
    /// resourceVersion written (None: deleted). A service waits for its own writes before
    /// it is reconciled again, so a lagging watch never makes a duplicate slice.
    pub pending: parking_lot::Mutex<PendingWrites>,
}

pub fn service_index(s: &EndpointSlice) -> Vec<String> {
    let labels = s.metadata.labels.clone().unwrap_or_default();
    match labels.get(SERVICE_NAME) {
        Some(svc) => vec![format!(
            "{}/{svc}",
            s.metadata.namespace.as_deref().unwrap_or_default()
        )],
        None => Vec::new(),
    }
}

fn selector(svc: &Service) -> Option<LabelSelector> {
    let sel = svc.spec.as_ref()?.selector.as_ref()?;
    if sel.is_empty() {
        return None;
    }
    let text = sel
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    LabelSelector::parse(&text).ok()
}

/// The port a pod serves a service port on (a named target port looked up in its
/// containers), or None when the pod does not have it.
fn resolve(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.iter().flatten().find_map(|p| {
                    (p.name.as_deref() == Some(name)
                        && p.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

fn endpoint(pod: &Pod, publish_not_ready: bool) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = is_ready(pod);
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(publish_not_ready || (ready && !terminating)),
            serving: Some(publish_not_ready || ready),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

type PortList = Vec<(Option<String>, String, i32)>;
/// Service key -> slice name -> (resourceVersion written or None when deleted, when).
pub type PendingWrites =
    std::collections::HashMap<String, BTreeMap<String, (Option<u64>, std::time::Instant)>>;

impl EndpointSliceController {
    fn track(&self, service: &str, r: Result<EndpointSlice, ApiError>) -> Result<(), ApiError> {
        let s = r?;
        let rv = s
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok());
        if let Some(n) = s.metadata.name {
            self.pending
                .lock()
                .entry(service.to_string())
                .or_default()
                .insert(n, (rv, std::time::Instant::now()));
        }
        Ok(())
    }

    /// Whether the informer has caught up with this controller's writes for `service`.
    fn writes_seen(&self, service: &str) -> bool {
        let (ns, _) = split_key(service);
        let mut pending = self.pending.lock();
        let Some(p) = pending.get_mut(service) else {
            return true;
        };
        p.retain(|name, (rv, at)| {
            if at.elapsed() > std::time::Duration::from_secs(5) {
                return false; // changed by someone else meanwhile: stop waiting
            }
            let seen = self.slices.get(&format!("{ns}/{name}"));
            match (rv, seen) {
                (None, None) => false,
                (None, Some(_)) => true,
                (Some(_), None) => true,
                (Some(want), Some(s)) => s
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_none_or(|have| have < *want),
            }
        });
        let seen = p.is_empty();
        if seen {
            pending.remove(service);
        }
        seen
    }

    pub fn on_service(&self, e: &Event<Service>) {
        let (Event::Added(s) | Event::Updated { new: s, .. } | Event::Deleted(s)) = e;
        self.queue.add(&key(&**s));
    }

    /// The services whose selector matches `pod`: candidates from the selector index (a
    /// service is indexed under each of its `namespace/key=value` pairs, so only services
    /// sharing a label with the pod are looked at), then matched in full.
    fn services_selecting(&self, pod: &Pod) -> Vec<String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut out: Vec<String> = labels
            .iter()
            .flat_map(|(k, v)| {
                self.services
                    .by_index(BY_SELECTOR, &format!("{ns}/{k}={v}"))
            })
            .filter(|s| selector(s).is_some_and(|sel| sel.matches(&labels)))
            .map(|s| key(&*s))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn on_pod(&self, e: &Event<Pod>) {
        let mut keys: HashSet<String> = HashSet::new();
        match e {
            Event::Added(p) | Event::Deleted(p) => keys.extend(self.services_selecting(p)),
            Event::Updated { old, new } => {
                let relevant = old.metadata.labels != new.metadata.labels
                    || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
                    || old.status.as_ref().and_then(|s| s.pod_ip.clone())
                        != new.status.as_ref().and_then(|s| s.pod_ip.clone())
                    || is_ready(old) != is_ready(new)
                    || is_terminal(old) != is_terminal(new)
                    || old.spec.as_ref().and_then(|s| s.node_name.clone())
                        != new.spec.as_ref().and_then(|s| s.node_name.clone());
                if relevant {
                    keys.extend(self.services_selecting(old));
                    keys.extend(self.services_selecting(new));
                }
            }
        }
        for k in keys {
            self.queue.add(&k);
        }
    }

    pub fn on_slice(&self, e: &Event<EndpointSlice>) {
        let (Event::Added(s) | Event::Updated { new: s, .. } | Event::Deleted(s)) = e;
        let managed = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY))
            .is_some_and(|m| m == CONTROLLER_NAME);
        if managed {
            for k in service_index(s) {
                self.queue.add(&k);
            }
        }
    }

    pub async fn sync(self: Arc<Self>, key_: String) -> Result<(), ApiError> {
        let (ns, name) = split_key(&key_);
        let Some(svc) = self.services.get(&key_) else {
            return Ok(()); // its slices go with it (owner references)
        };
        let Some(sel) = selector(&svc) else {
            return Ok(()); // no selector: slices are the user's
        };
        if !self.writes_seen(&key_) {
            self.queue
                .add_after(&key_, std::time::Duration::from_millis(20));
            return Ok(());
        }
        let spec = svc.spec.clone().unwrap_or_default();
        let publish = spec.publish_not_ready_addresses.unwrap_or(false);
        let ports = spec.ports.clone().unwrap_or_default();
        // Group endpoints by their resolved port list.
        let mut groups: BTreeMap<PortList, Vec<Endpoint>> = BTreeMap::new();
        // Candidates: the pods carrying one of the selector's labels (index), then matched.
        let first = spec
            .selector
            .as_ref()
            .and_then(|s| s.iter().next())
            .map(|(k, v)| format!("{ns}/{k}={v}"))
            .unwrap_or_default();
        let mut pods: Vec<Arc<Pod>> = self
            .pods
            .by_index(crate::util::BY_LABEL, &first)
            .into_iter()
            .filter(|p| {
                !is_terminal(p) && sel.matches(&p.metadata.labels.clone().unwrap_or_default())
            })
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for p in pods {
            let Some(ep) = endpoint(&p, publish) else {
                continue;
            };
            let list: PortList = ports
                .iter()
                .filter_map(|sp| {
                    resolve(sp, &p).map(|n| {
                        (
                            sp.name.clone(),
                            sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            n,
                        )
                    })
                })
                .collect();
            groups.entry(list).or_default().push(ep);
        }
        let mut desired: Vec<(PortList, Vec<Endpoint>)> = Vec::new();
        for (list, eps) in groups {
            for chunk in eps.chunks(MAX_ENDPOINTS) {
                desired.push((list.clone(), chunk.to_vec()));
            }
        }
        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .by_index(BY_SERVICE, &key_)
            .into_iter()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MANAGED_BY))
                    .is_some_and(|m| m == CONTROLLER_NAME)
            })
            .collect();
        let api = self.client.api::<EndpointSlice>(ns);
        let to_ports = |list: &PortList| -> Vec<EndpointPort> {
            list.iter()
                .map(|(n, proto, port)| EndpointPort {
                    name: n.clone(),
                    protocol: Some(proto.clone()),
                    port: Some(*port),
                    app_protocol: None,
                })
                .collect()
        };
        let mut used = vec![false; existing.len()];
        let mut results = Vec::new();
        for (list, eps) in desired {
            let ports = to_ports(&list);
            // Reuse a slice with the same ports (unchanged ones are left alone).
            let same = |s: &EndpointSlice| s.ports.clone().unwrap_or_default() == ports;
            let exact = existing
                .iter()
                .enumerate()
                .position(|(i, s)| !used[i] && same(s) && s.endpoints == eps);
            if let Some(i) = exact {
                used[i] = true;
                continue;
            }
            let reuse = existing
                .iter()
                .enumerate()
                .position(|(i, s)| !used[i] && same(s))
                .or_else(|| existing.iter().enumerate().position(|(i, _)| !used[i]));
            let labels = BTreeMap::from([
                (SERVICE_NAME.to_string(), name.to_string()),
                (MANAGED_BY.to_string(), CONTROLLER_NAME.to_string()),
            ]);
            match reuse {
                Some(i) => {
                    used[i] = true;
                    let mut s = (*existing[i]).clone();
                    s.endpoints = eps;
                    s.ports = Some(ports);
                    results.push(self.track(&key_, api.update(&s).await));
                }
                None => {
                    let s = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{name}-")),
                            namespace: Some(ns.into()),
                            labels: Some(labels),
                            owner_references: Some(vec![owner_ref(&*svc)]),
                            ..Default::default()
                        },
                        address_type: "IPv4".into(),
                        endpoints: eps,
                        ports: Some(ports),
                    };
                    results.push(self.track(&key_, api.create(&s).await));
                }
            }
        }
        // Leftover slices: a service keeps one (possibly empty) slice, as Kubernetes does.
        let mut kept_one = used.iter().any(|u| *u);
        for (i, s) in existing.iter().enumerate() {
            if used[i] {
                continue;
            }
            if !kept_one {
                kept_one = true;
                if s.endpoints.is_empty() {
                    continue;
                }
                let mut s = (**s).clone();
                s.endpoints = Vec::new();
                results.push(self.track(&key_, api.update(&s).await));
                continue;
            }
            let sname = s.metadata.name.clone().unwrap_or_default();
            results.push(match api.delete(&sname, &DeleteParams::default()).await {
                Ok(_) => {
                    self.pending
                        .lock()
                        .entry(key_.clone())
                        .or_default()
                        .insert(sname, (None, std::time::Instant::now()));
                    Ok(())
                }
                Err(e) if e.reason == Reason::NotFound => Ok(()),
                Err(e) => Err(e),
            });
        }
        if !kept_one && existing.is_empty() && results.is_empty() {
            // A selector that selects nothing yet still gets its (empty) slice.
            let s = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.into()),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME.to_string(), name.to_string()),
                        (MANAGED_BY.to_string(), CONTROLLER_NAME.to_string()),
                    ])),
                    owner_references: Some(vec![owner_ref(&*svc)]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: Vec::new(),
                ports: Some(Vec::new()),
            };
            results.push(self.track(&key_, api.create(&s).await));
        }
        results.into_iter().collect()
    }
}
