//! Service sync: Services and EndpointSlices from the API server, through informers, into
//! the node's `LoadBalancer`.
//!
//! Informer handlers only mark a Service dirty (its `namespace/name`); one task drains the
//! dirty set, computes what each marked Service should be (`desired`, a pure function of the
//! Service, its EndpointSlices and this node's address) and applies the difference. A burst
//! of changes to one Service is therefore applied once, and the maps are written from a
//! single place.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use parking_lot::Mutex;
use skiff_client::informer::{Event, Informer, InformerHandle, Reader, key_of};
use skiff_client::{Client, ListParams};
use tokio::sync::mpsc;

use crate::lb::{Endpoint, Frontend, LbError, LbService, LoadBalancer};
use crate::maps::{Proto, SVC_SCOPE_CLUSTER, SVC_SCOPE_NODEPORT};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const BY_SERVICE: &str = "service";

/// The name the data plane gives one service port: `namespace/name:port/PROTO`.
pub fn port_name(namespace: &str, name: &str, port: i32, proto: Proto) -> String {
    let proto = match proto {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    };
    format!("{namespace}/{name}:{port}/{proto}")
}

fn service_prefix(key: &str) -> String {
    format!("{key}:")
}

fn proto_of(p: Option<&str>) -> Option<Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        _ => None, // SCTP is not load-balanced here
    }
}

/// What the service ports of `svc` should be on a node whose address is `node_addr`.
pub fn desired(
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    node_addr: Option<Ipv4Addr>,
) -> BTreeMap<String, LbService> {
    let mut out = BTreeMap::new();
    let meta = &svc.metadata;
    let (Some(ns), Some(name), Some(spec)) = (&meta.namespace, &meta.name, &svc.spec) else {
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    for port in spec.ports.iter().flatten() {
        let Some(proto) = proto_of(port.protocol.as_deref()) else {
            continue;
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            continue;
        };
        let mut frontends = Vec::new();
        if let Some(ip) = cluster_ip {
            frontends.push(Frontend {
                addr: ip,
                port: svc_port,
                proto,
                scope: SVC_SCOPE_CLUSTER,
            });
        }
        if let (Some(node), Some(np)) = (node_addr, port.node_port)
            && let Ok(np) = u16::try_from(np)
        {
            frontends.push(Frontend {
                addr: node,
                port: np,
                proto,
                scope: SVC_SCOPE_NODEPORT,
            });
            // Pods and processes of the node reach node:NodePort through the socket hooks.
            frontends.push(Frontend {
                addr: node,
                port: np,
                proto,
                scope: SVC_SCOPE_CLUSTER,
            });
        }
        if frontends.is_empty() {
            continue;
        }
        let mut endpoints = BTreeSet::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            // The slice's port for this service port: same name (both may be unnamed).
            let Some(target) = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or("")
                    && proto_of(p.protocol.as_deref()) == Some(proto)
            }) else {
                continue;
            };
            let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for e in &slice.endpoints {
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                for a in &e.addresses {
                    if let Ok(addr) = a.parse::<Ipv4Addr>() {
                        endpoints.insert(Endpoint {
                            addr,
                            port: target_port,
                            ready,
                            serving,
                            terminating,
                        });
                    }
                }
            }
        }
        out.insert(
            port_name(ns, name, port.port, proto),
            LbService {
                frontends,
                endpoints: endpoints.into_iter().collect(),
                affinity_timeout,
            },
        );
    }
    out
}

/// A running service sync; stops when dropped.
pub struct ServiceSync {
    pub services: Reader<Service>,
    pub slices: Reader<EndpointSlice>,
    _informers: (InformerHandle<Service>, InformerHandle<EndpointSlice>),
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceSync {
    /// Starts watching Services and EndpointSlices of every namespace and programming `lb`.
    pub fn start(
        client: &Client,
        lb: Arc<Mutex<LoadBalancer>>,
        node_addr: Option<Ipv4Addr>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let svc_tx = tx.clone();
        let services = Informer::new(client.api::<Service>(""), ListParams::default())
            .on_event(move |e| {
                let obj = match e {
                    Event::Added(o) | Event::Deleted(o) | Event::Updated { new: o, .. } => o,
                };
                let _ = svc_tx.send(key_of(obj.as_ref()));
            })
            .start();
        let slices = Informer::new(client.api::<EndpointSlice>(""), ListParams::default())
            .index(BY_SERVICE, slice_service)
            .on_event(move |e| {
                let mut keys = Vec::new();
                match e {
                    Event::Added(o) | Event::Deleted(o) => keys.extend(slice_service(o)),
                    Event::Updated { old, new } => {
                        keys.extend(slice_service(old));
                        keys.extend(slice_service(new));
                    }
                }
                for k in keys {
                    let _ = tx.send(k);
                }
            })
            .start();
        let task = tokio::spawn(apply_loop(
            rx,
            services.reader.clone(),
            slices.reader.clone(),
            lb,
            node_addr,
        ));
        ServiceSync {
            services: services.reader.clone(),
            slices: slices.reader.clone(),
            _informers: (services, slices),
            task,
        }
    }
}

/// `namespace/service` of an EndpointSlice, from its service-name label.
fn slice_service(s: &EndpointSlice) -> Vec<String> {
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|svc| vec![format!("{ns}/{svc}")])
        .unwrap_or_default()
}

async fn apply_loop(
    mut rx: mpsc::UnboundedReceiver<String>,
    services: Reader<Service>,
    slices: Reader<EndpointSlice>,
    lb: Arc<Mutex<LoadBalancer>>,
    node_addr: Option<Ipv4Addr>,
) {
    services.wait_synced().await;
    slices.wait_synced().await;
    while let Some(first) = rx.recv().await {
        let mut dirty = HashSet::from([first]);
        while let Ok(k) = rx.try_recv() {
            dirty.insert(k);
        }
        let mut lb = lb.lock();
        for key in dirty {
            let want = services
                .get(&key)
                .map(|svc| desired(&svc, &slices.by_index(BY_SERVICE, &key), node_addr))
                .unwrap_or_default();
            if let Err(e) = apply_service(&mut lb, &key, &want) {
                tracing::error!(service = key, error = %e, "programming the data plane failed");
            }
        }
    }
}

/// Programs every port of one Service and removes its ports that are gone.
pub fn apply_service(
    lb: &mut LoadBalancer,
    key: &str,
    want: &BTreeMap<String, LbService>,
) -> Result<(), LbError> {
    let prefix = service_prefix(key);
    let stale: Vec<String> = lb
        .names()
        .filter(|n| n.starts_with(&prefix) && !want.contains_key(*n))
        .map(str::to_string)
        .collect();
    for name in stale {
        lb.remove(&name)?;
    }
    for (name, svc) in want {
        lb.apply(name, svc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).expect("slice"))
    }

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn each_service_port_gets_its_frontends_and_matching_endpoints() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": "NodePort", "clusterIP": "198.19.0.10",
                "sessionAffinity": "ClientIP",
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "sctp", "port": 9, "protocol": "SCTP"}
                ]
            }
        }));
        let slices = [slice(json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["198.18.1.10"]},
                {"addresses": ["198.18.1.11"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }))];
        let want = desired(&svc, &slices, Some(NODE));
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            ["default/web:53/UDP", "default/web:80/TCP"]
        );
        let http = &want["default/web:80/TCP"];
        assert_eq!(http.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(
            http.frontends
                .iter()
                .map(|f| (f.addr, f.port, f.scope))
                .collect::<Vec<_>>(),
            [
                (Ipv4Addr::new(198, 19, 0, 10), 80, SVC_SCOPE_CLUSTER),
                (NODE, 30080, SVC_SCOPE_NODEPORT),
                (NODE, 30080, SVC_SCOPE_CLUSTER),
            ]
        );
        assert_eq!(
            http.endpoints
                .iter()
                .map(|e| (e.addr, e.port, e.ready, e.serving, e.terminating))
                .collect::<Vec<_>>(),
            [
                (Ipv4Addr::new(198, 18, 1, 10), 8080, true, true, false),
                (Ipv4Addr::new(198, 18, 1, 11), 8080, false, true, true),
            ]
        );
        let dns = &want["default/web:53/UDP"];
        assert_eq!(dns.frontends.len(), 1, "no NodePort on that port");
        assert_eq!(dns.endpoints[0].port, 5353);
    }

    #[test]
    fn headless_and_external_name_services_program_nothing() {
        for spec in [
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ] {
            let svc = service(json!({
                "metadata": {"namespace": "default", "name": "h"},
                "spec": spec
            }));
            assert!(desired(&svc, &[], Some(NODE)).is_empty());
        }
    }
}
