//! Crash safety: `kill -9` the server while 16 clients write; after a restart every write
//! that was acknowledged is there with the revision it was acknowledged at, and revisions
//! keep increasing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use acked::Acked;
use bytes::Bytes;
use skiff_client::Client;
use support::Server;

mod acked {
    /// (name, revision) of acknowledged creates, shared by the writer tasks.
    pub type Acked = std::sync::Arc<std::sync::Mutex<Vec<(String, i64)>>>;
}

fn rv_of(raw: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(raw).expect("json");
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked_total: Vec<(String, i64)> = Vec::new();
    for round in 0..3 {
        let mut server = Server::start(dir.path());
        let client = Client::connect(&server.address).await.expect("connect");

        // Everything acknowledged before the crash is there, at its revision.
        check_present(&client, &acked_total).await;
        let max_before = acked_total.iter().map(|(_, r)| *r).max().unwrap_or(0);
        let current = client.version().await.expect("version").2;
        assert!(
            current >= max_before,
            "revision went back: {current} < {max_before}"
        );

        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for t in 0..16 {
            let client = client.clone();
            let acked = acked.clone();
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let payload = "x".repeat(1024);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("r{round}-t{t}-{i}");
                    let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name}, "data": {"payload": payload}});
                    match client
                        .create("configmaps", "default", Bytes::from(body.to_string()))
                        .await
                    {
                        Ok(obj) => acked.lock().expect("lock").push((name, rv_of(&obj))),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("writer");
        }
        let round_acked = acked.lock().expect("lock").clone();
        assert!(
            round_acked.len() > 50,
            "round {round}: only {} writes acknowledged",
            round_acked.len()
        );
        let min_round = round_acked.iter().map(|(_, r)| *r).min().expect("writes");
        assert!(
            min_round > max_before,
            "revisions are monotonic across restarts"
        );
        acked_total.extend(round_acked);
    }
    let server = Server::start(dir.path());
    let client = Client::connect(&server.address).await.expect("connect");
    check_present(&client, &acked_total).await;
}

async fn check_present(client: &Client, acked: &[(String, i64)]) {
    let list = client
        .list("configmaps", "default", &Default::default())
        .await
        .expect("list");
    let stored: std::collections::HashMap<String, i64> = list
        .items
        .iter()
        .map(|raw| {
            let v: serde_json::Value = serde_json::from_slice(raw).expect("json");
            (
                v["metadata"]["name"].as_str().expect("name").to_string(),
                rv_of(raw),
            )
        })
        .collect();
    for (name, rev) in acked {
        assert_eq!(
            stored.get(name),
            Some(rev),
            "acknowledged write {name} survived at its revision"
        );
    }
}
