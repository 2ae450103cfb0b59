//! The client's connection: unary calls, a watch and a large object over one HTTP/2
//! connection; a server that goes away makes calls fail as Unavailable, and the same
//! client reopens its connection once the server is back on the same address.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::Reason;
use skiff_apiserver::registry::{Config, Registry};
use skiff_client::{Client, ListParams, RawEvent};
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

fn configmap(name: &str, payload: &str) -> Bytes {
    Bytes::from(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"v": payload}})
        .to_string(),
    )
}

/// Serves `registry` on `address` until the returned sender is dropped; the handle ends
/// once every connection has been closed.
async fn serve_on(
    registry: Arc<Registry>,
    address: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("bind the API address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        skiff_apiserver::serve(registry, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    (stop, task)
}

#[tokio::test]
async fn the_client_reopens_its_connection_after_the_server_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("store");
    let registry = Registry::new(Arc::new(store), Config::default())
        .await
        .expect("registry");
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("address").to_string()
    };
    let (stop, served) = serve_on(registry.clone(), &address).await;
    let client = Client::connect(&address).await.expect("connect");

    // Unary calls, concurrently, and one object larger than a flow-control window's
    // default frame (1 MiB), all on the one connection.
    let mut calls = Vec::new();
    for i in 0..32 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.create("configmaps", "default", configmap(&format!("c{i}"), "x"))
                .await
        }));
    }
    for call in calls {
        call.await.expect("task").expect("create");
    }
    let big = "y".repeat(1 << 20);
    let stored = client
        .create("configmaps", "default", configmap("big", &big))
        .await
        .expect("create a 1 MiB object");
    let stored: Value = serde_json::from_slice(&stored).expect("json");
    assert_eq!(stored["data"]["v"].as_str().map(str::len), Some(1 << 20));
    let list = client
        .list("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    assert_eq!(list.items.len(), 33);

    // A watch streams on the same connection.
    let mut watch = client
        .watch(
            "configmaps",
            "default",
            &ListParams::default(),
            &list.resource_version,
            false,
        )
        .await
        .expect("watch");
    client
        .create("configmaps", "default", configmap("seen", "z"))
        .await
        .expect("create");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("event");
    assert!(matches!(event, RawEvent::Added(_)), "{event:?}");

    // The server goes away (a graceful stop waits for open streams: the watch goes
    // first): calls fail as Unavailable.
    drop(watch);
    drop(stop);
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("the server stopped within 30 s")
        .expect("server task");
    let err = client
        .get("configmaps", "default", "c0")
        .await
        .expect_err("no server");
    assert_eq!(err.reason, Reason::ServiceUnavailable, "{err:?}");

    // Back on the same address: the same client opens a new connection.
    let (_stop, _served) = serve_on(registry, &address).await;
    let got = client
        .get("configmaps", "default", "c0")
        .await
        .expect("get once the server is back");
    let got: Value = serde_json::from_slice(&got).expect("json");
    assert_eq!(got["metadata"]["name"], "c0");
}
