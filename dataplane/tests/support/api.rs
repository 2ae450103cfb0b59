//! A real API server for data-plane tests: embedded store in a temp dir, loopback port.

use std::sync::Arc;

use skiff_apiserver::{Config, LocalServer};
use skiff_client::Client;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

pub struct ApiServer {
    pub client: Client,
    _server: LocalServer,
    _dir: tempfile::TempDir,
}

pub async fn start() -> ApiServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("store");
    let server = LocalServer::start(Arc::new(store), Config::default())
        .await
        .expect("API server");
    ApiServer {
        client: Client::connect(&server.address).await.expect("connect"),
        _server: server,
        _dir: dir,
    }
}
