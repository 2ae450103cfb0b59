//! A real API server on a loopback port over an embedded store in a temp dir.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use skiff_apiserver::registry::{Config, Registry};
use skiff_apiserver::watch_cache::CacheOptions;
use skiff_client::Client;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

pub struct TestServer {
    pub client: Client,
    pub address: String,
    pub registry: Arc<Registry>,
    _dir: tempfile::TempDir,
    _etcd: Option<skiff_store::etcd_server::EtcdServer>,
    /// Stops serving when dropped (before the store's directory and etcd go).
    server: Option<skiff_apiserver::LocalServer>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.take();
    }
}

pub async fn start_with(cache: CacheOptions) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open store");
    serve(Arc::new(store), cache, dir, None).await
}

/// The API server over a real etcd started for the test.
pub async fn start_on_etcd() -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = skiff_store::etcd_server::EtcdServer::start()
        .expect("start etcd (cargo xtask setup installs it)");
    let store = skiff_store::etcd::EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .expect("connect to etcd");
    let cache = CacheOptions {
        bookmark_interval: Duration::from_millis(200),
        ..CacheOptions::default()
    };
    serve(Arc::new(store), cache, dir, Some(etcd)).await
}

async fn serve(
    store: Arc<dyn skiff_store::Store>,
    cache: CacheOptions,
    dir: tempfile::TempDir,
    etcd: Option<skiff_store::etcd_server::EtcdServer>,
) -> TestServer {
    let config = Config {
        cache,
        ..Config::default()
    };
    let server = skiff_apiserver::LocalServer::start(store, config)
        .await
        .expect("API server");
    let client = Client::connect(&server.address).await.expect("connect");
    TestServer {
        client,
        address: server.address.clone(),
        registry: server.registry.clone(),
        _dir: dir,
        _etcd: etcd,
        server: Some(server),
    }
}

pub async fn start() -> TestServer {
    start_with(CacheOptions {
        bookmark_interval: Duration::from_millis(200),
        ..CacheOptions::default()
    })
    .await
}

pub fn body(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("json"))
}

pub fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("json object")
}

pub fn rv(v: &Value) -> i64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

pub fn pod(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    })
}

pub fn configmap(name: &str, value: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"k": value}
    })
}

/// Waits up to 15 s for `f` to hold.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An informer handler that logs "add a", "update a", "delete a" into `log`, checking an
/// update's old object is the same object at an earlier version.
pub fn log_events(
    log: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
) -> impl Fn(&skiff_client::informer::Event<k8s_openapi::api::core::v1::ConfigMap>) {
    use skiff_client::informer::Event;
    move |e| {
        let entry = match e {
            Event::Added(o) => format!("add {}", o.metadata.name.as_deref().unwrap_or("")),
            Event::Updated { old, new } => {
                assert_eq!(old.metadata.name, new.metadata.name);
                assert_ne!(old.metadata.resource_version, new.metadata.resource_version);
                format!("update {}", new.metadata.name.as_deref().unwrap_or(""))
            }
            Event::Deleted(o) => format!("delete {}", o.metadata.name.as_deref().unwrap_or("")),
        };
        log.lock().push(entry);
    }
}
