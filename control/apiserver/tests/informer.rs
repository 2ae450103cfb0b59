//! The informer against a real server: initial list, events, indexers; a cut connection
//! resumes the watch; a resume that finds its revision expired relists and reports exactly
//! the difference.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use parking_lot::Mutex;
use skiff_apiserver::watch_cache::CacheOptions;
use skiff_client::informer::{Event, Informer};
use skiff_client::{Client, DeleteParams, ListParams};
use support::{body, configmap, eventually, log_events, start_with};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy whose connections can be cut, to break clients' streams on demand, and
/// which can turn new connections away for a while.
struct Proxy {
    address: String,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    held: Arc<std::sync::atomic::AtomicBool>,
    _accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (c, h) = (conns.clone(), held.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if h.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let upstream = upstream.clone();
                c.lock().push(tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Proxy {
            address,
            conns,
            held,
            _accept: accept,
        }
    }

    /// Turns new connections away until `release`.
    fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn release(&self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn cut(&self) {
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }
}

fn label(cm: &ConfigMap) -> Vec<String> {
    cm.metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| *k == "app")
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informer_lists_watches_resumes_and_relists() {
    lists_watches_resumes_and_relists(false).await;
}

/// The same with the cache holding JSON: every read decodes, every event still carries typed
/// objects (old ones included), and the indexes follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_informer_lists_watches_resumes_and_relists() {
    lists_watches_resumes_and_relists(true).await;
}

async fn lists_watches_resumes_and_relists(compact: bool) {
    let s = start_with(CacheOptions {
        max_events: 8,
        bookmark_interval: Duration::from_millis(100),
        ..CacheOptions::default()
    })
    .await;
    for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
        let mut cm = configmap(name, "0");
        cm["metadata"]["labels"] = serde_json::json!({"app": app});
        s.client
            .create("configmaps", "default", body(&cm))
            .await
            .expect("create");
    }
    let proxy = Proxy::start(s.address.clone()).await;
    let client = Client::connect_lazy(&proxy.address).expect("client");
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = log.clone();
    let informer = Informer::new(client.api::<ConfigMap>("default"), ListParams::default());
    let informer = if compact {
        informer.compact()
    } else {
        informer
    };
    let handle = informer.index("app", label).on_event(log_events(l)).start();
    let reader = handle.reader.clone();
    tokio::time::timeout(Duration::from_secs(10), reader.wait_synced())
        .await
        .expect("synced");
    assert_eq!(reader.len(), 3);
    assert_eq!(reader.by_index("app", "web").len(), 2);
    assert_eq!(*log.lock(), vec!["add a", "add b", "add c"]);

    // Live events.
    log.lock().clear();
    s.client
        .create("configmaps", "default", body(&configmap("d", "0")))
        .await
        .expect("create");
    s.client
        .patch(
            "configmaps",
            "default",
            "a",
            body(&serde_json::json!({"metadata": {"labels": {"app": "db"}}})),
            "",
        )
        .await
        .expect("patch");
    s.client
        .delete("configmaps", "default", "b", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("live events", || log.lock().len() == 3).await;
    assert_eq!(*log.lock(), vec!["add d", "update a", "delete b"]);
    assert_eq!(reader.by_index("app", "db").len(), 2);
    assert!(reader.by_index("app", "web").is_empty());

    // A cut connection: the watch resumes from its revision and misses nothing.
    log.lock().clear();
    proxy.cut();
    s.client
        .create("configmaps", "default", body(&configmap("e", "0")))
        .await
        .expect("create");
    eventually("resume after a cut", || log.lock().len() == 1).await;
    assert_eq!(*log.lock(), vec!["add e"]);

    // Cut again and write far more than the 8-event window while the informer cannot come
    // back: its resume is Expired, it relists, and reports the net difference.
    log.lock().clear();
    proxy.hold();
    proxy.cut();
    let registry = s.registry.clone();
    for i in 0..20 {
        registry
            .patch(
                "configmaps",
                "default",
                "c",
                &serde_json::to_vec(&serde_json::json!({"data": {"k": i.to_string()}}))
                    .expect("json"),
                "",
            )
            .await
            .expect("patch");
    }
    Arc::clone(&registry)
        .delete("configmaps", "default", "d", Default::default())
        .await
        .expect("delete");
    registry
        .create(
            "configmaps",
            "default",
            &serde_json::to_vec(&configmap("f", "0")).expect("json"),
        )
        .await
        .expect("create");
    proxy.release();
    eventually("relist after expiry", || {
        reader.get("default/f").is_some() && reader.get("default/d").is_none()
    })
    .await;
    eventually("relist events", || log.lock().len() == 3).await;
    let mut got = log.lock().clone();
    got.sort();
    assert_eq!(got, vec!["add f", "delete d", "update c"]);
    let c = reader.get("default/c").expect("c");
    assert_eq!(
        c.data.as_ref().and_then(|d| d.get("k")).map(String::as_str),
        Some("19")
    );
    let _ = Client::connect(&s.address).await.expect("server up");
}

/// A handler added to a running informer first gets the cache as Added, then every change,
/// exactly once; once removed it gets nothing more, while the other handlers go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_join_and_leave_a_running_informer() {
    let s = start_with(CacheOptions::default()).await;
    for name in ["a", "b"] {
        s.client
            .create("configmaps", "default", body(&configmap(name, "0")))
            .await
            .expect("create");
    }
    let client = Client::connect(&s.address).await.expect("client");
    let first: Arc<Mutex<Vec<String>>> = Arc::default();
    let f = first.clone();
    let handle = Informer::new(client.api::<ConfigMap>("default"), ListParams::default())
        .compact()
        .on_event(move |e| {
            if let Event::Added(o) = e {
                f.lock().push(o.metadata.name.clone().unwrap_or_default());
            }
        })
        .start();
    let reader = handle.reader.clone();
    tokio::time::timeout(Duration::from_secs(10), reader.wait_synced())
        .await
        .expect("synced");
    let late: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = late.clone();
    // Writes race with the join: each object must be seen exactly once either way.
    let writer = {
        let c = s.client.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                c.create(
                    "configmaps",
                    "default",
                    body(&configmap(&format!("w{i}"), "0")),
                )
                .await
                .expect("create");
            }
        })
    };
    let id = reader.add_handler(move |e| {
        if let Event::Added(o) = e {
            l.lock().push(o.metadata.name.clone().unwrap_or_default());
        }
    });
    writer.await.expect("writer");
    eventually("every object reaches the late handler", || {
        late.lock().len() >= 52
    })
    .await;
    let mut got = late.lock().clone();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 52, "each object exactly once");
    assert_eq!(late.lock().len(), 52, "no duplicates");

    reader.remove_handler(id);
    s.client
        .create("configmaps", "default", body(&configmap("after", "0")))
        .await
        .expect("create");
    eventually("the remaining handler sees the new object", || {
        first.lock().iter().any(|n| n == "after")
    })
    .await;
    assert!(!late.lock().iter().any(|n| n == "after"));
    assert_eq!(reader.len(), 53);
    let cm = reader.get("default/after").expect("cached");
    assert_eq!(cm.metadata.name.as_deref(), Some("after"));
}
