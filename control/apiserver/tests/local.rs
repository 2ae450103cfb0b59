//! The API in-process (`skiff_apiserver::local`), as `skiff server`'s scheduler and
//! controllers use it: the same answers and errors as over gRPC, watches with the same
//! events, and lists, watches and compact informer caches holding the server's own bytes
//! rather than copies.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use parking_lot::Mutex;
use skiff_api::Reason;
use skiff_apiserver::watch_cache::CacheOptions;
use skiff_client::informer::Informer;
use skiff_client::{Client, DeleteParams, ListParams, RawEvent};
use support::{body, configmap, eventually, log_events, parse, pod, rv, start_with};

fn local(s: &support::TestServer) -> Client {
    Client::local(skiff_apiserver::local::api(s.registry.clone()), &s.address)
}

/// Every verb answers in-process as it does over gRPC, errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_client_answers_as_the_grpc_one_does() {
    let s = start_with(CacheOptions::default()).await;
    let local = local(&s);
    let (version, store, revision) = local.version().await.expect("version");
    let remote = s.client.version().await.expect("version");
    assert_eq!(
        (version.as_str(), store.as_str()),
        (remote.0.as_str(), remote.1.as_str())
    );
    assert!(revision > 0);

    let created = parse(
        &local
            .create("configmaps", "default", body(&configmap("a", "1")))
            .await
            .expect("create"),
    );
    let got = parse(
        &s.client
            .get("configmaps", "default", "a")
            .await
            .expect("get"),
    );
    assert_eq!(created, got);
    assert_eq!(
        parse(&local.get("configmaps", "default", "a").await.expect("get")),
        got
    );
    let err = local
        .create("configmaps", "default", body(&configmap("a", "1")))
        .await
        .expect_err("duplicate");
    assert_eq!(err.reason, Reason::AlreadyExists);
    let err = local
        .get("configmaps", "default", "missing")
        .await
        .expect_err("missing");
    assert_eq!(err.reason, Reason::NotFound);
    let mut bad = configmap("Bad_Name", "1");
    bad["metadata"]["name"] = "Bad_Name".into();
    let err = local
        .create("configmaps", "default", body(&bad))
        .await
        .expect_err("invalid");
    assert_eq!(err.reason, Reason::Invalid);
    assert!(err.message.contains("metadata.name"), "{}", err.message);

    // Update with a stale version conflicts; a current one goes through.
    let mut stale = created.clone();
    stale["data"]["k"] = "2".into();
    local
        .update("configmaps", "default", "a", body(&stale), "")
        .await
        .expect("update");
    let err = local
        .update("configmaps", "default", "a", body(&stale), "")
        .await
        .expect_err("stale");
    assert_eq!(err.reason, Reason::Conflict);
    let patched = parse(
        &local
            .patch(
                "configmaps",
                "default",
                "a",
                body(&serde_json::json!({"data": {"k": "3"}})),
                "",
            )
            .await
            .expect("patch"),
    );
    assert_eq!(patched["data"]["k"], "3");

    // Lists: the same items and resourceVersion as over gRPC.
    local
        .create("configmaps", "default", body(&configmap("b", "1")))
        .await
        .expect("create");
    let a = local
        .list("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    let b = s
        .client
        .list("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    assert_eq!(a.resource_version, b.resource_version);
    let items = |l: &skiff_client::RawList| l.items.iter().map(|i| parse(i)).collect::<Vec<_>>();
    assert_eq!(items(&a), items(&b));
    // Paginated lists come from the store, with the same continue protocol.
    let page = local
        .list(
            "configmaps",
            "default",
            &ListParams {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(page.items.len(), 1);
    assert!(!page.continue_token.is_empty());

    // Binding, single and batched, with per-binding errors.
    for name in ["p", "q"] {
        local
            .create("pods", "default", body(&pod(name)))
            .await
            .expect("create pod");
    }
    local.bind("default", "p", "node-1").await.expect("bind");
    let results = local
        .bind_batch(&[
            ("default".into(), "q".into(), "node-2".into()),
            ("default".into(), "p".into(), "node-2".into()),
            ("default".into(), "nope".into(), "node-2".into()),
        ])
        .await
        .expect("batch");
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().map_err(|e| e.reason),
        Err(Reason::Conflict)
    );
    assert_eq!(
        results[2].as_ref().map_err(|e| e.reason),
        Err(Reason::NotFound)
    );
    let q: Pod = s.client.api("default").get("q").await.expect("q");
    assert_eq!(q.spec.and_then(|s| s.node_name).as_deref(), Some("node-2"));

    // Delete, and deleting again.
    let (_, removed) = local
        .delete("configmaps", "default", "b", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(removed);
    let err = local
        .delete("configmaps", "default", "b", &DeleteParams::default())
        .await
        .expect_err("gone");
    assert_eq!(err.reason, Reason::NotFound);

    // Logs of a pod on a node that serves none: the API server's own error.
    let err = match local
        .pod_logs(skiff_api::proto::PodLogsRequest {
            namespace: "default".into(),
            name: "a-pod-not-there".into(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => panic!("logs of a missing pod"),
        Err(e) => e,
    };
    assert_eq!(err.reason, Reason::NotFound);
}

/// In-process watches: the same events and versions as a gRPC watch of the same
/// selection, objects entering and leaving the selection retyped, initial events ended by a
/// bookmark, and a version older than the window Expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_watch_matches_the_grpc_watch() {
    let s = start_with(CacheOptions {
        max_events: 16,
        bookmark_interval: Duration::from_millis(100),
        ..CacheOptions::default()
    })
    .await;
    let local = local(&s);
    let mut labelled = configmap("a", "0");
    labelled["metadata"]["labels"] = serde_json::json!({"app": "web"});
    let first = parse(
        &s.client
            .create("configmaps", "default", body(&labelled))
            .await
            .expect("create"),
    );
    let from = rv(&first).to_string();
    let params = ListParams::default().labels("app=web");
    let mut over_grpc = s
        .client
        .watch("configmaps", "default", &params, &from, false)
        .await
        .expect("watch");
    let mut in_process = local
        .watch("configmaps", "default", &params, &from, false)
        .await
        .expect("watch");
    let writes = [
        serde_json::json!({"data": {"k": "1"}}),
        serde_json::json!({"metadata": {"labels": {"app": "db"}}}),
        serde_json::json!({"metadata": {"labels": {"app": "web"}}}),
    ];
    for p in &writes {
        s.client
            .patch("configmaps", "default", "a", body(p), "")
            .await
            .expect("patch");
    }
    s.client
        .delete("configmaps", "default", "a", &DeleteParams::default())
        .await
        .expect("delete");
    async fn take(w: &mut skiff_client::RawWatch, n: usize) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .expect("event in time")
                .expect("open")
                .expect("event");
            match e {
                RawEvent::Added(o) => out.push(("ADDED".into(), parse(&o))),
                RawEvent::Modified(o) => out.push(("MODIFIED".into(), parse(&o))),
                RawEvent::Deleted(o) => out.push(("DELETED".into(), parse(&o))),
                RawEvent::Bookmark(..) => {}
            }
        }
        out
    }
    let a = take(&mut in_process, 4).await;
    let b = take(&mut over_grpc, 4).await;
    assert_eq!(a, b);
    let kinds: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["MODIFIED", "DELETED", "ADDED", "DELETED"]);

    // Initial events, then the bookmark that ends them.
    s.client
        .create("configmaps", "default", body(&configmap("b", "0")))
        .await
        .expect("create");
    let mut initial = local
        .watch("configmaps", "default", &ListParams::default(), "", true)
        .await
        .expect("watch");
    match initial.next().await.expect("event").expect("ok") {
        RawEvent::Added(o) => assert_eq!(parse(&o)["metadata"]["name"], "b"),
        e => panic!("expected ADDED, got {e:?}"),
    }
    match initial.next().await.expect("event").expect("ok") {
        RawEvent::Bookmark(_, end) => assert!(end, "the bookmark ends the initial events"),
        e => panic!("expected the initial-events bookmark, got {e:?}"),
    }

    // Far more writes than the window: the first version is too old.
    for i in 0..40 {
        s.client
            .patch(
                "configmaps",
                "default",
                "b",
                body(&serde_json::json!({"data": {"k": i.to_string()}})),
                "",
            )
            .await
            .expect("patch");
    }
    let err = match local
        .watch(
            "configmaps",
            "default",
            &ListParams::default(),
            &from,
            false,
        )
        .await
    {
        Ok(_) => panic!("a version older than the window must expire"),
        Err(e) => e,
    };
    assert_eq!(err.reason, Reason::Expired);
}

/// In-process lists and watches hand out the bytes the server holds, not copies, and a
/// compact informer keeps those: the scheduler and the controllers inside `skiff server` add
/// no copy of any object. The typed objects carry the same resourceVersion as over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_caches_share_the_servers_bytes() {
    let s = start_with(CacheOptions::default()).await;
    let local = local(&s);
    for name in ["a", "b"] {
        local
            .create("configmaps", "default", body(&configmap(name, "0")))
            .await
            .expect("create");
    }
    let one = local
        .list_objects("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    let two = local
        .list_objects("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    assert_eq!(one.items.len(), 2);
    for (x, y) in one.items.iter().zip(&two.items) {
        assert_eq!(x.stored().as_ptr(), y.stored().as_ptr(), "one copy, shared");
    }
    let grpc = s
        .client
        .list_objects("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    for (x, y) in one.items.iter().zip(&grpc.items) {
        assert_ne!(x.stored().as_ptr(), y.stored().as_ptr());
        assert_eq!(parse(&x.json()), parse(&y.json()));
    }

    // A watch event's object is the one later lists hand out.
    let mut watch = local
        .watch_objects(
            "configmaps",
            "default",
            &ListParams::default(),
            &one.resource_version,
            false,
        )
        .await
        .expect("watch");
    local
        .patch(
            "configmaps",
            "default",
            "a",
            body(&serde_json::json!({"data": {"k": "1"}})),
            "",
        )
        .await
        .expect("patch");
    let event = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("event")
        {
            RawEvent::Modified(o) => break o,
            RawEvent::Bookmark(..) => continue,
            e => panic!("expected MODIFIED, got {e:?}"),
        }
    };
    let after = local
        .list_objects("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    assert_eq!(after.items[0].stored().as_ptr(), event.stored().as_ptr());
    let typed: ConfigMap = event.decode().expect("decode");
    let remote: ConfigMap = s.client.api("default").get("a").await.expect("get");
    assert_eq!(typed, remote, "same object, resourceVersion included");

    // A compact informer in-process: events and reads carry typed objects with versions.
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = log.clone();
    let handle = Informer::new(local.api::<ConfigMap>("default"), ListParams::default())
        .compact()
        .on_event(log_events(l))
        .start();
    let reader = handle.reader.clone();
    tokio::time::timeout(Duration::from_secs(10), reader.wait_synced())
        .await
        .expect("synced");
    local
        .patch(
            "configmaps",
            "default",
            "b",
            body(&serde_json::json!({"data": {"k": "2"}})),
            "",
        )
        .await
        .expect("patch");
    local
        .delete("configmaps", "default", "a", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("informer events", || log.lock().len() == 4).await;
    assert_eq!(*log.lock(), ["add a", "add b", "update b", "delete a"]);
    let b = reader.get("default/b").expect("cached");
    let remote: ConfigMap = s.client.api("default").get("b").await.expect("get");
    assert_eq!(*b, remote);
}

/// An Event handed over typed in process is admitted as one sent as JSON: the same stored
/// object but for what the server makes up, the same errors for what it rejects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_are_admitted_as_json_ones_are() {
    use k8s_openapi::api::core::v1::{Event, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let s = start_with(CacheOptions::default()).await;
    let local = local(&s);
    let event = |name: &str| Event {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some("client-made".into()),
            generation: Some(7),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            name: Some("web-1".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        reason: Some("Scheduled".into()),
        message: Some("Successfully assigned default/web-1 to n1".into()),
        type_: Some("Normal".into()),
        count: Some(1),
        ..Default::default()
    };
    let typed = parse(
        &local
            .create_event("default", &event("typed"))
            .await
            .expect("typed create"),
    );
    let json = parse(
        &local
            .create(
                "events",
                "default",
                Bytes::from(serde_json::to_vec(&event("json")).expect("encode")),
            )
            .await
            .expect("json create"),
    );
    let stored = parse(
        &s.client
            .get("events", "default", "typed")
            .await
            .expect("get"),
    );
    assert_eq!(typed, stored);
    let made_up = |mut v: serde_json::Value| {
        let m = v["metadata"].as_object_mut().expect("metadata");
        for f in ["name", "uid", "resourceVersion", "creationTimestamp"] {
            assert!(m.remove(f).is_some(), "{f} set");
        }
        v
    };
    assert_ne!(typed["metadata"]["uid"], "client-made");
    assert_eq!(typed["metadata"]["generation"], 1);
    assert_eq!(made_up(typed.clone()), made_up(json));

    // Rejected alike: a namespace that disagrees, a name taken, no such namespace, an
    // invalid field (named), a resourceVersion on create.
    for (ns, mut e, reason) in [
        ("other", event("x"), Reason::BadRequest),
        ("default", event("typed"), Reason::AlreadyExists),
        ("missing", event("y"), Reason::NotFound),
        ("default", event("Not_A_Name"), Reason::Invalid),
    ] {
        if ns == "other" {
            e.metadata.namespace = Some("default".into());
        }
        let err = local.create_event(ns, &e).await.expect_err("rejected");
        assert_eq!(err.reason, reason, "{err}");
        let body = Bytes::from(serde_json::to_vec(&e).expect("encode"));
        let same = local
            .create("events", ns, body)
            .await
            .expect_err("rejected");
        assert_eq!(same.reason, err.reason);
        assert_eq!(same.to_string(), err.to_string());
    }
    let mut versioned = event("z");
    versioned.metadata.resource_version = Some("5".into());
    let err = local
        .create_event("default", &versioned)
        .await
        .expect_err("resourceVersion");
    assert_eq!(err.reason, Reason::BadRequest);
    assert!(local.get("events", "default", "z").await.is_err());
}
