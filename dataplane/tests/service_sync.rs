//! Services and EndpointSlices created, changed and deleted through a real API server reach
//! the kernel's maps through the informers, and converge to exactly what the API says.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;
use skiff_client::{Client, DeleteParams, ListParams};
use skiff_dataplane::maps::SVC_SCOPE_CLUSTER;
use skiff_dataplane::{DataPlane, Frontend, LoadBalancer, Proto, ServiceSync};

const SERVICES: u32 = 10_000;

/// Backend address k (0..3) of service i: distinct for every (i, k), in 198.18.128.0/17.
fn backend(i: u32, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i * 3 + k)
}

fn slice(i: u32, endpoints: &[(u32, bool)]) -> Bytes {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|&(k, ready)| {
            json!({"addresses": [backend(i, k).to_string()],
                   "conditions": {"ready": ready, "serving": ready, "terminating": !ready}})
        })
        .collect();
    Bytes::from(
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc-{i}-x"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps
        })
        .to_string(),
    )
}

fn service(i: u32) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                     "selector": {"app": format!("a{i}")}}
        })
        .to_string(),
    )
}

/// Runs `f(i)` for every i in `ids`, 32 at a time.
async fn each<F, Fut>(ids: Vec<u32>, f: F)
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let ids = Arc::new(Mutex::new(ids));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (f, ids) = (f.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(i) = ids.lock().pop() else { return };
                f(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

async fn delete(c: &Client, resource: &str, name: &str) {
    c.delete(resource, "default", name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {resource}/{name}: {e}"));
}

type Dump = BTreeMap<Frontend, Vec<(Ipv4Addr, u16)>>;

/// What the maps must hold: every ClusterIP:80 -> the ready backends (all of them when
/// none is ready and the rest serve while terminating).
fn expected(
    cluster_ips: &BTreeMap<u32, Ipv4Addr>,
    slices: &BTreeMap<u32, Vec<(u32, bool)>>,
) -> Dump {
    let mut out = Dump::new();
    for (i, ip) in cluster_ips {
        let eps = slices.get(i).cloned().unwrap_or_default();
        let ready: Vec<u32> = eps.iter().filter(|e| e.1).map(|e| e.0).collect();
        let chosen = if ready.is_empty() {
            eps.iter().map(|e| e.0).collect()
        } else {
            ready
        };
        let mut backends: Vec<(Ipv4Addr, u16)> =
            chosen.iter().map(|&k| (backend(*i, k), 8080)).collect();
        backends.sort();
        out.insert(
            Frontend {
                addr: *ip,
                port: 80,
                proto: Proto::Tcp,
                scope: SVC_SCOPE_CLUSTER,
            },
            backends,
        );
    }
    out
}

async fn converge(lb: &Arc<Mutex<LoadBalancer>>, want: &Dump, what: &str) {
    let start = Instant::now();
    loop {
        let got = lb.lock().dump().expect("dump");
        if &got == want {
            eprintln!("{what}: converged in {:?}", start.elapsed());
            return;
        }
        if start.elapsed() > Duration::from_secs(240) {
            let missing = want.keys().filter(|k| !got.contains_key(k)).count();
            let extra = got.keys().filter(|k| !want.contains_key(k)).count();
            let differ = want
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
                .count();
            panic!("{what}: not converged: {missing} missing, {extra} extra, {differ} differ");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn cluster_ips(client: &Client) -> BTreeMap<u32, Ipv4Addr> {
    let list = client
        .api::<k8s_openapi::api::core::v1::Service>("default")
        .list(&ListParams::default())
        .await
        .expect("list");
    list.items
        .iter()
        .filter_map(|s| {
            let i = s
                .metadata
                .name
                .as_deref()?
                .strip_prefix("svc-")?
                .parse()
                .ok()?;
            let ip = s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok()?;
            Some((i, ip))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_converge_to_exactly_the_api_state() {
    let api = support::api::start().await;
    let mut dp = DataPlane::load().expect("load");
    let lb = Arc::new(Mutex::new(dp.load_balancer().expect("maps")));
    let _sync = ServiceSync::start(&api.client, lb.clone(), None);

    let mut slices: BTreeMap<u32, Vec<(u32, bool)>> = BTreeMap::new();
    let c = api.client.clone();
    each((0..SERVICES).collect(), move |i| {
        let c = c.clone();
        async move {
            c.create("services", "default", service(i))
                .await
                .expect("create service");
            c.create(
                "endpointslices",
                "default",
                slice(i, &[(0, true), (1, true), (2, true)]),
            )
            .await
            .expect("create slice");
        }
    })
    .await;
    for i in 0..SERVICES {
        slices.insert(i, vec![(0, true), (1, true), (2, true)]);
    }
    let ips = cluster_ips(&api.client).await;
    assert_eq!(ips.len(), SERVICES as usize);
    converge(&lb, &expected(&ips, &slices), "create").await;

    // A third lose a backend and get one terminating; a third are deleted.
    let c = api.client.clone();
    each((0..SERVICES).filter(|i| i % 3 != 2).collect(), move |i| {
        let c = c.clone();
        async move {
            if i % 3 == 0 {
                let body: serde_json::Value =
                    serde_json::from_slice(&slice(i, &[(0, true), (2, false)])).expect("json");
                let patch = json!({"endpoints": body["endpoints"]});
                c.patch(
                    "endpointslices",
                    "default",
                    &format!("svc-{i}-x"),
                    Bytes::from(patch.to_string()),
                    "",
                )
                .await
                .expect("patch slice");
            } else {
                delete(&c, "services", &format!("svc-{i}")).await;
                delete(&c, "endpointslices", &format!("svc-{i}-x")).await;
            }
        }
    })
    .await;
    for i in 0..SERVICES {
        match i % 3 {
            0 => {
                slices.insert(i, vec![(0, true), (2, false)]);
            }
            1 => {
                slices.remove(&i);
            }
            _ => {}
        }
    }
    let ips = cluster_ips(&api.client).await;
    assert_eq!(ips.len(), (0..SERVICES).filter(|i| i % 3 != 1).count());
    converge(&lb, &expected(&ips, &slices), "update").await;

    // Everything deleted: nothing left in the maps.
    let c = api.client.clone();
    each(ips.keys().copied().collect(), move |i| {
        let c = c.clone();
        async move {
            delete(&c, "services", &format!("svc-{i}")).await;
        }
    })
    .await;
    converge(&lb, &Dump::new(), "delete").await;
    let (services, slots, _) = lb.lock().entries().expect("entries");
    assert_eq!((services, slots), (0, 0));
}
