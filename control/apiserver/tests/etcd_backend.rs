//! The API server over etcd instead of the embedded store: the same verbs, the watch cache
//! fed by an etcd watch (bookmarks from etcd progress notifications), paginated lists at a
//! revision, optimistic concurrency through etcd transactions.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use skiff_api::Reason;
use skiff_client::{DeleteParams, ListParams, RawEvent};
use support::{body, configmap, parse, pod, rv, start_on_etcd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_etcd() {
    let s = start_on_etcd().await;
    let c = &s.client;
    assert_eq!(c.version().await.expect("version").1, "etcd");
    for ns in ["default", "kube-system"] {
        c.get("namespaces", "", ns)
            .await
            .expect("system namespaces exist");
    }

    // Create, conflict, update.
    let created = parse(
        &c.create("pods", "default", body(&pod("web")))
            .await
            .expect("create"),
    );
    assert_eq!(
        c.create("pods", "default", body(&pod("web")))
            .await
            .expect_err("dup")
            .reason,
        Reason::AlreadyExists
    );
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["spec"]["containers"][0]["image"] = json!("busybox:2");
    assert_eq!(
        c.update("pods", "default", "web", body(&stale), "")
            .await
            .expect_err("stale")
            .reason,
        Reason::Conflict
    );

    // A watch from the create sees the following changes, in order.
    let mut w = c
        .watch(
            "pods",
            "default",
            &ListParams::default(),
            &rv(&created).to_string(),
            false,
        )
        .await
        .expect("watch");
    let bound = parse(&c.bind("default", "web", "node-1").await.expect("bind"));
    let (_, removed) = c
        .delete(
            "pods",
            "default",
            "web",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete");
    assert!(removed);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("events")
            .expect("open")
            .expect("ok")
        {
            RawEvent::Modified(o) => seen.push(("MODIFIED", rv(&parse(&o)))),
            RawEvent::Deleted(o) => seen.push(("DELETED", rv(&parse(&o)))),
            RawEvent::Bookmark(..) => {}
            RawEvent::Added(o) => panic!("unexpected ADDED {:?}", parse(&o)),
        }
    }
    assert_eq!(seen[0], ("MODIFIED", rv(&bound)));
    assert_eq!(seen[1].0, "DELETED");
    assert!(seen[1].1 > rv(&bound));

    // Bookmarks advance with etcd's revision even when nothing of this resource changes.
    let later = parse(
        &c.create("configmaps", "default", body(&configmap("other", "1")))
            .await
            .expect("cm"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("a bookmark in time")
        {
            Some(Ok(RawEvent::Bookmark(r, _))) if r.parse::<i64>().expect("rv") >= rv(&later) => {
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("watch ended: {other:?}"),
        }
    }

    // Paginated lists are consistent at the first page's revision.
    for i in 0..12 {
        c.create(
            "configmaps",
            "default",
            body(&configmap(&format!("cm{i:02}"), "v")),
        )
        .await
        .expect("create");
    }
    let mut params = ListParams {
        limit: 5,
        ..Default::default()
    };
    let mut names = Vec::new();
    let mut first = String::new();
    loop {
        let page = c
            .list("configmaps", "default", &params)
            .await
            .expect("page");
        if first.is_empty() {
            first = page.resource_version.clone();
            c.delete("configmaps", "default", "cm11", &DeleteParams::default())
                .await
                .expect("delete during paging");
        }
        assert_eq!(page.resource_version, first);
        names.extend(page.items.iter().map(|i| {
            parse(i)["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }));
        if page.continue_token.is_empty() {
            break;
        }
        params.continue_token = page.continue_token;
    }
    let mut expected: Vec<String> = (0..12).map(|i| format!("cm{i:02}")).collect();
    expected.push("other".into());
    assert_eq!(names, expected);

    // Unpaginated lists come from the watch cache, current with etcd.
    let now = c
        .list("configmaps", "default", &ListParams::default())
        .await
        .expect("list");
    assert_eq!(now.items.len(), 12);
}
