//! One conformance suite, run against both backends: the embedded store and a real etcd
//! server started for the test.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};
use skiff_store::etcd::EtcdStore;
use skiff_store::etcd_server::EtcdServer;
use skiff_store::{Event, EventKind, Store, StoreError, WatchStream};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Collects events from `watch` until `n` have arrived.
async fn collect(watch: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        let next = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("events arrive within 30 s")
            .expect("watch stays open")
            .expect("watch has no error");
        out.extend(next.events);
    }
    out
}

async fn crud(store: Arc<dyn Store>, p: &str) {
    let k = format!("{p}/a");
    let created = store.create(&k, b("1")).await.expect("create");
    assert_eq!(created.version, 1);
    assert_eq!(created.create_revision, created.mod_revision);
    assert!(matches!(
        store.create(&k, b("x")).await,
        Err(StoreError::AlreadyExists(cur)) if cur.value == b("1")
    ));
    let got = store.get(&k, 0).await.expect("get").expect("present");
    assert_eq!(got, created);

    let updated = store
        .update(&k, b("2"), created.mod_revision)
        .await
        .expect("update");
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.version, 2);
    // A stale guard fails and reports the current value.
    match store.update(&k, b("3"), created.mod_revision).await {
        Err(StoreError::Conflict {
            current: Some(cur), ..
        }) => assert_eq!(cur.value, b("2")),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert!(matches!(
        store.update(&format!("{p}/missing"), b("x"), 5).await,
        Err(StoreError::NotFound(_))
    ));
    // Reading at the old revision still sees the old value.
    let old = store
        .get(&k, created.mod_revision)
        .await
        .expect("get at revision")
        .expect("present then");
    assert_eq!(old.value, b("1"));

    assert!(matches!(
        store.delete(&k, created.mod_revision).await,
        Err(StoreError::Conflict { .. })
    ));
    let deleted = store
        .delete(&k, updated.mod_revision)
        .await
        .expect("delete");
    assert_eq!(deleted.value, b("2"));
    assert!(deleted.mod_revision > updated.mod_revision);
    assert_eq!(store.get(&k, 0).await.expect("get"), None);
    assert!(matches!(
        store.delete(&k, 0).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.current_revision().await.expect("revision"),
        deleted.mod_revision
    );
}

async fn range_and_pages(store: Arc<dyn Store>, p: &str) {
    for i in 0..25 {
        store
            .create(&format!("{p}/k{i:02}"), b(&i.to_string()))
            .await
            .expect("create");
    }
    store
        .create(&format!("{p}0"), b("outside"))
        .await
        .expect("create");
    let all = store
        .range(&format!("{p}/"), "", 0, 0)
        .await
        .expect("range");
    assert_eq!(all.kvs.len(), 25);
    assert!(!all.more);
    let snapshot = all.revision;

    // Writes after the snapshot must not show in pages read at it.
    store
        .create(&format!("{p}/k00a"), b("new"))
        .await
        .expect("create");
    store.delete(&format!("{p}/k03"), 0).await.expect("delete");
    let k05 = store
        .get(&format!("{p}/k05"), 0)
        .await
        .expect("get")
        .expect("k05");
    store
        .update(&format!("{p}/k05"), b("changed"), k05.mod_revision)
        .await
        .expect("update");

    let mut seen = Vec::new();
    let mut start = String::new();
    loop {
        let page = store
            .range(&format!("{p}/"), &start, 10, snapshot)
            .await
            .expect("page");
        assert_eq!(page.revision, snapshot);
        seen.extend(page.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())));
        if !page.more {
            break;
        }
        start = format!("{}\0", page.kvs.last().expect("non-empty page").key);
    }
    let expected: Vec<(String, Bytes)> = (0..25)
        .map(|i| (format!("{p}/k{i:02}"), b(&i.to_string())))
        .collect();
    assert_eq!(seen, expected);

    let now = store
        .range(&format!("{p}/"), "", 0, 0)
        .await
        .expect("range");
    assert_eq!(now.kvs.len(), 25);
    assert!(now.kvs.iter().any(|kv| kv.key.ends_with("k00a")));
    assert!(!now.kvs.iter().any(|kv| kv.key.ends_with("k03")));
}

async fn watch_semantics(store: Arc<dyn Store>, p: &str) {
    let start = store.current_revision().await.expect("revision") + 1;
    let a = store
        .create(&format!("{p}/a"), b("1"))
        .await
        .expect("create");
    store
        .create(&format!("{p}x/other"), b("1"))
        .await
        .expect("create");
    let a2 = store
        .update(&format!("{p}/a"), b("2"), a.mod_revision)
        .await
        .expect("update");
    let gone = store.delete(&format!("{p}/a"), 0).await.expect("delete");

    // From a past revision: exactly the events of the prefix, in order, with prev values.
    let mut w = store.watch(&format!("{p}/"), start).await.expect("watch");
    let events = collect(&mut w, 3).await;
    let kinds: Vec<(EventKind, i64)> = events.iter().map(|e| (e.kind, e.revision())).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, a.mod_revision),
            (EventKind::Put, a2.mod_revision),
            (EventKind::Delete, gone.mod_revision)
        ]
    );
    assert_eq!(
        events[1].prev.as_ref().map(|kv| kv.value.clone()),
        Some(b("1"))
    );
    assert_eq!(
        events[2].prev.as_ref().map(|kv| kv.value.clone()),
        Some(b("2"))
    );

    // Resuming from the middle replays exactly what follows.
    let mut w = store
        .watch(&format!("{p}/"), a2.mod_revision)
        .await
        .expect("watch");
    let events = collect(&mut w, 2).await;
    assert_eq!(events[0].revision(), a2.mod_revision);
    assert_eq!(events[1].kind, EventKind::Delete);

    // From now: only later changes.
    let mut w = store.watch(&format!("{p}/"), 0).await.expect("watch");
    let later = store
        .create(&format!("{p}/b"), b("3"))
        .await
        .expect("create");
    let events = collect(&mut w, 1).await;
    assert_eq!(events[0].kv.key, format!("{p}/b"));
    assert_eq!(events[0].revision(), later.mod_revision);
}

async fn compaction(store: Arc<dyn Store>, p: &str) {
    let first = store
        .create(&format!("{p}/a"), b("1"))
        .await
        .expect("create");
    let second = store
        .update(&format!("{p}/a"), b("2"), first.mod_revision)
        .await
        .expect("update");
    store.compact(second.mod_revision).await.expect("compact");
    assert!(matches!(
        store.get(&format!("{p}/a"), first.mod_revision).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.watch(&format!("{p}/"), first.mod_revision).await,
        Err(StoreError::Compacted { .. })
    ));
    // The latest value survives compaction.
    let cur = store
        .get(&format!("{p}/a"), 0)
        .await
        .expect("get")
        .expect("a");
    assert_eq!(cur.value, b("2"));
    let mut w = store
        .watch(&format!("{p}/"), second.mod_revision + 1)
        .await
        .expect("watch after the compacted revision");
    store
        .update(&format!("{p}/a"), b("3"), second.mod_revision)
        .await
        .expect("update");
    assert_eq!(collect(&mut w, 1).await[0].kv.value, b("3"));
}

/// 32 tasks increment one counter 25 times each by read-modify-compare-and-set: no update
/// may be lost.
async fn concurrent_cas(store: Arc<dyn Store>, p: &str) {
    let key = format!("{p}/counter");
    store.create(&key, b("0")).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for _ in 0..25 {
                loop {
                    let cur = store.get(&key, 0).await.expect("get").expect("counter");
                    let n: u64 = std::str::from_utf8(&cur.value)
                        .expect("utf8")
                        .parse()
                        .expect("number");
                    match store
                        .update(&key, b(&(n + 1).to_string()), cur.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => retries += 1,
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
            }
            retries
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let cur = store.get(&key, 0).await.expect("get").expect("counter");
    assert_eq!(cur.value, b("800"));
    assert_eq!(cur.version, 801);
}

/// Concurrent writers; a watch from before they start sees every write exactly once, in
/// revision order, and per key in version order.
async fn watch_under_concurrent_writers(store: Arc<dyn Store>, p: &str) {
    let start = store.current_revision().await.expect("revision") + 1;
    let mut w = store.watch(&format!("{p}/"), start).await.expect("watch");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        let p = p.to_string();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                let key = format!("{p}/t{t}/k{}", i % 5);
                let kv = match store.get(&key, 0).await.expect("get") {
                    None => store.create(&key, b(&i.to_string())).await.expect("create"),
                    Some(cur) => store
                        .update(&key, b(&i.to_string()), cur.mod_revision)
                        .await
                        .expect("update"),
                };
                revs.push(kv.mod_revision);
            }
            revs
        }));
    }
    let mut written = HashSet::new();
    for t in tasks {
        written.extend(t.await.expect("task"));
    }
    let events = collect(&mut w, 400).await;
    let revs: Vec<i64> = events.iter().map(Event::revision).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "ordered, no duplicates"
    );
    let seen: HashSet<i64> = revs.iter().copied().collect();
    assert_eq!(seen, written, "every acknowledged write is delivered");
    let mut last_version = std::collections::HashMap::new();
    for e in &events {
        let v = last_version.entry(e.kv.key.clone()).or_insert(0);
        assert!(e.kv.version > *v);
        *v = e.kv.version;
    }
}

async fn run_suite(store: Arc<dyn Store>, tag: &str) {
    crud(store.clone(), &format!("/{tag}/crud")).await;
    range_and_pages(store.clone(), &format!("/{tag}/range")).await;
    watch_semantics(store.clone(), &format!("/{tag}/watch")).await;
    concurrent_cas(store.clone(), &format!("/{tag}/cas")).await;
    watch_under_concurrent_writers(store.clone(), &format!("/{tag}/wcw")).await;
    compaction(store.clone(), &format!("/{tag}/compact")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
    run_suite(Arc::new(store), "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_conforms() {
    let server = EtcdServer::start().expect("start etcd (cargo xtask setup installs it)");
    let store = EtcdStore::connect(std::slice::from_ref(&server.endpoint))
        .await
        .expect("connect");
    run_suite(Arc::new(store), "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rev, kept) = {
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
        let a = store.create("/r/a", b("1")).await.expect("create");
        store.create("/r/b", b("2")).await.expect("create");
        store.delete("/r/b", 0).await.expect("delete");
        let a = store
            .update("/r/a", b("3"), a.mod_revision)
            .await
            .expect("update");
        (store.current_revision().await.expect("revision"), a)
    };
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), rev);
    assert_eq!(store.get("/r/a", 0).await.expect("get"), Some(kept));
    assert_eq!(store.get("/r/b", 0).await.expect("get"), None);
    // History from before the restart is gone: resuming there must say so.
    assert!(matches!(
        store.watch("/r/", 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let next = store.create("/r/c", b("4")).await.expect("create");
    assert_eq!(next.mod_revision, rev + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_history_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        history_limit: 100,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options).expect("open");
    let mut cur = store.create("/h/a", b("0")).await.expect("create");
    for i in 0..500 {
        cur = store
            .update("/h/a", b(&i.to_string()), cur.mod_revision)
            .await
            .expect("update");
    }
    // Background compaction runs after each batch.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.history_len() > 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        store.history_len() <= 100,
        "history {}",
        store.history_len()
    );
    assert!(matches!(
        store.watch("/h/", 2).await,
        Err(StoreError::Compacted { .. })
    ));
}

/// A burst of large writes compacts by memory, not only by count and age; the latest
/// revisions stay readable and watchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_history_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        history_bytes: 1 << 20,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options).expect("open");
    let big = Bytes::from(vec![b'x'; 64 << 10]);
    let mut cur = store.create("/h/a", big.clone()).await.expect("create");
    let first = cur.mod_revision;
    for _ in 0..100 {
        cur = store
            .update("/h/a", big.clone(), cur.mod_revision)
            .await
            .expect("update");
    }
    // 100 superseded values of 64 KiB are 6.4 MiB: at most ~16 fit in 1 MiB.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.history_len() > 16 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.history_len() <= 16, "history {}", store.history_len());
    assert!(
        store.history_len() >= 1,
        "the latest change stays in the history"
    );
    assert!(matches!(
        store.watch("/h/", first).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut w = store
        .watch("/h/", cur.mod_revision)
        .await
        .expect("watch latest");
    let got = tokio::time::timeout(Duration::from_secs(2), w.next())
        .await
        .expect("event")
        .expect("open")
        .expect("ok");
    assert_eq!(got.events[0].kv.mod_revision, cur.mod_revision);
}

/// Many concurrent writers share fsyncs: the batch count stays well below the write count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_group_commit_acknowledges_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Arc::new(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open"));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                store
                    .create(&format!("/g/{t}/{i}"), Bytes::from(vec![b'x'; 1024]))
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    drop(store);
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("reopen");
    let all = store.range("/g/", "", 0, 0).await.expect("range");
    assert_eq!(all.kvs.len(), 64 * 20);
}

/// Checkpoints move the log into redb and drop covered segments; reopening reads redb and
/// replays only the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_checkpoints_and_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        checkpoint_every: Duration::from_millis(50),
        ..EmbeddedOptions::default()
    };
    let segments = |dir: &std::path::Path| {
        skiff_store::wal::segments(&dir.join("wal"))
            .expect("segments")
            .len()
    };
    let (rev, kept) = {
        let store = EmbeddedStore::open(dir.path(), options.clone()).expect("open");
        let mut cur = store.create("/c/a", b("0")).await.expect("create");
        for i in 0..200 {
            cur = store
                .update("/c/a", b(&i.to_string()), cur.mod_revision)
                .await
                .expect("update");
            store
                .create(&format!("/c/k{i}"), b("x"))
                .await
                .expect("create");
        }
        store.delete("/c/k7", 0).await.expect("delete");
        // Let a checkpoint happen (the committer checks between batches and every second).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let after_checkpoint = store.create("/c/late", b("after")).await.expect("create");
        (after_checkpoint.mod_revision, cur)
    };
    assert!(segments(dir.path()) <= 2, "covered segments were removed");
    let store = EmbeddedStore::open(dir.path(), options).expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), rev);
    assert_eq!(store.get("/c/a", 0).await.expect("get"), Some(kept));
    assert_eq!(store.get("/c/k7", 0).await.expect("get"), None);
    assert_eq!(
        store
            .get("/c/late", 0)
            .await
            .expect("get")
            .map(|kv| kv.value),
        Some(b("after"))
    );
    assert_eq!(
        store
            .range("/c/k", "", 0, 0)
            .await
            .expect("range")
            .kvs
            .len(),
        199
    );
    assert_eq!(
        segments(dir.path()),
        1,
        "reopening checkpoints the replayed log"
    );
}
