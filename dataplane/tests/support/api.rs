//! A real API server for data-plane tests: embedded store in a temp dir, loopback port.

use std::sync::Arc;

use skiff_apiserver::registry::{Config, Registry};
use skiff_client::Client;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

pub struct ApiServer {
    pub client: Client,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

pub async fn start() -> ApiServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("store");
    let registry = Registry::new(Arc::new(store), Config::default())
        .await
        .expect("registry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(skiff_apiserver::serve(registry, listener, async {
        let _ = rx.await;
    }));
    ApiServer {
        client: Client::connect(&address).await.expect("connect"),
        _dir: dir,
        _shutdown: tx,
    }
}
