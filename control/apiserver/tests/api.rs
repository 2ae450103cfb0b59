//! API behaviour over real gRPC: server-set metadata, defaulting, every error reason,
//! sub-resources, graceful deletion, finalizers, namespaces, Service allocation, selectors,
//! pagination, and the garbage-on-the-port case.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::Reason;
use skiff_client::{DeleteParams, ListParams, RawEvent};
use support::{body, configmap, parse, pod, rv, start};

#[tokio::test]
async fn create_sets_server_metadata_and_defaults() {
    let s = start().await;
    let created = parse(
        &s.client
            .create("pods", "default", body(&pod("web")))
            .await
            .expect("create"),
    );
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["generation"], 1);
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(rv(&created) > 0);
    assert_eq!(created["spec"]["restartPolicy"], "Always");
    assert_eq!(
        created["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(created["status"]["phase"], "Pending");
    let got = parse(&s.client.get("pods", "default", "web").await.expect("get"));
    assert_eq!(got, created);

    // generateName
    let generated =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}});
    let made = parse(
        &s.client
            .create("configmaps", "default", body(&generated))
            .await
            .expect("create"),
    );
    let name = made["metadata"]["name"].as_str().expect("name");
    assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");
}

/// An update without a resourceVersion (unconditional) replaces the object and keeps what
/// the server set at its create; a create of a name that exists is AlreadyExists.
#[tokio::test]
async fn unconditional_update_replaces_and_a_second_create_conflicts() {
    let s = start().await;
    let created = parse(
        &s.client
            .create("configmaps", "default", body(&configmap("cfg", "one")))
            .await
            .expect("create"),
    );
    let again = s
        .client
        .create("configmaps", "default", body(&configmap("cfg", "two")))
        .await
        .expect_err("exists");
    assert_eq!(again.reason, Reason::AlreadyExists, "{again:?}");
    let updated = parse(
        &s.client
            .update(
                "configmaps",
                "default",
                "cfg",
                body(&configmap("cfg", "two")),
                "",
            )
            .await
            .expect("unconditional update"),
    );
    assert_eq!(updated["data"]["k"], "two");
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(
        updated["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
    assert!(rv(&updated) > rv(&created));
}

#[tokio::test]
async fn every_error_reason_is_reported() {
    let s = start().await;
    let c = &s.client;
    c.create("pods", "default", body(&pod("web")))
        .await
        .expect("create");

    let e = c
        .create("pods", "default", body(&pod("web")))
        .await
        .expect_err("dup");
    assert_eq!(
        (e.reason, e.message.as_str()),
        (Reason::AlreadyExists, "pods \"web\" already exists")
    );

    let e = c
        .get("deployments", "default", "nope")
        .await
        .expect_err("missing");
    assert_eq!(
        (e.reason, e.message.as_str()),
        (Reason::NotFound, "deployments.apps \"nope\" not found")
    );

    let e = c
        .create("pods", "nope", body(&pod("x")))
        .await
        .expect_err("no namespace");
    assert_eq!(
        (e.reason, e.message.as_str()),
        (Reason::NotFound, "namespaces \"nope\" not found")
    );

    let mut bad = pod("Bad_Name");
    bad["spec"]["containers"][0]["image"] = json!("");
    let e = c
        .create("pods", "default", body(&bad))
        .await
        .expect_err("invalid");
    assert_eq!(e.reason, Reason::Invalid);
    let fields: Vec<&str> = e.causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, vec!["metadata.name", "spec.containers[0].image"]);

    let current = parse(&c.get("pods", "default", "web").await.expect("get"));
    let mut stale = current.clone();
    stale["metadata"]["resourceVersion"] = json!((rv(&current) - 1).to_string());
    stale["spec"]["containers"][0]["image"] = json!("busybox:2");
    let e = c
        .update("pods", "default", "web", body(&stale), "")
        .await
        .expect_err("stale");
    assert_eq!(e.reason, Reason::Conflict);
    assert!(
        e.message.contains("the object has been modified"),
        "{}",
        e.message
    );

    let mut elsewhere = pod("x");
    elsewhere["metadata"]["namespace"] = json!("kube-system");
    let e = c
        .create("pods", "default", body(&elsewhere))
        .await
        .expect_err("ns mismatch");
    assert_eq!(e.reason, Reason::BadRequest);

    let e = c
        .create("pods", "default", Bytes::from_static(b"{not json"))
        .await
        .expect_err("garbage");
    assert_eq!(e.reason, Reason::BadRequest);

    let e = c
        .list("pods", "", &ListParams::default().labels("app in (a"))
        .await
        .expect_err("selector");
    assert_eq!(e.reason, Reason::BadRequest);

    let e = c
        .list(
            "services",
            "",
            &ListParams::default().fields("spec.nodeName=x"),
        )
        .await
        .expect_err("field");
    assert_eq!(
        (e.reason, e.message.as_str()),
        (
            Reason::BadRequest,
            "field label not supported: spec.nodeName"
        )
    );

    let big = configmap("big", &"x".repeat(1_600_000));
    let e = c
        .create("configmaps", "default", body(&big))
        .await
        .expect_err("too large");
    assert_eq!(e.reason, Reason::RequestEntityTooLarge);
    assert_eq!(
        c.get("configmaps", "default", "big")
            .await
            .expect_err("absent")
            .reason,
        Reason::NotFound
    );

    let e = c
        .get("widgets", "default", "x")
        .await
        .expect_err("unknown resource");
    assert_eq!(e.reason, Reason::NotFound);

    // Nothing above changed the pod.
    let after = parse(&c.get("pods", "default", "web").await.expect("get"));
    assert_eq!(after, current);
}

#[tokio::test]
async fn updates_respect_subresources_and_generation() {
    let s = start().await;
    let c = &s.client;
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}
    });
    let created = parse(
        &c.create("deployments", "default", body(&d))
            .await
            .expect("create"),
    );
    assert_eq!(created["metadata"]["generation"], 1);

    // Main resource: spec changes bump generation; status is ignored.
    let mut next = created.clone();
    next["spec"]["replicas"] = json!(3);
    next["status"] = json!({"replicas": 99});
    let updated = parse(
        &c.update("deployments", "default", "web", body(&next), "")
            .await
            .expect("update"),
    );
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["spec"]["replicas"], 3);
    assert!(updated["status"].get("replicas").is_none());

    // Status sub-resource: status changes, spec and generation do not.
    let mut st = updated.clone();
    st["status"] = json!({"replicas": 3, "observedGeneration": 2});
    st["spec"]["replicas"] = json!(10);
    let after = parse(
        &c.update("deployments", "default", "web", body(&st), "status")
            .await
            .expect("status"),
    );
    assert_eq!(after["status"]["replicas"], 3);
    assert_eq!(after["spec"]["replicas"], 3);
    assert_eq!(after["metadata"]["generation"], 2);

    // An identical update writes nothing.
    let same = parse(
        &c.update("deployments", "default", "web", body(&after), "")
            .await
            .expect("noop"),
    );
    assert_eq!(rv(&same), rv(&after));

    // Merge patch; the selector is immutable.
    let patched = parse(
        &c.patch(
            "deployments",
            "default",
            "web",
            body(&json!({"metadata": {"labels": {"tier": "front"}}})),
            "",
        )
        .await
        .expect("patch"),
    );
    assert_eq!(patched["metadata"]["labels"]["tier"], "front");
    assert_eq!(patched["metadata"]["generation"], 2);
    let e = c
        .patch(
            "deployments",
            "default",
            "web",
            body(&json!({"spec": {"selector": {"matchLabels": {"app": "x"}}}})),
            "",
        )
        .await
        .expect_err("immutable");
    assert_eq!(e.reason, Reason::Invalid);
}

#[tokio::test]
async fn pods_delete_gracefully_once_bound() {
    let s = start().await;
    let c = &s.client;
    c.create("pods", "default", body(&pod("unbound")))
        .await
        .expect("create");
    let (_, removed) = c
        .delete("pods", "default", "unbound", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(removed, "an unscheduled pod goes at once");

    c.create("pods", "default", body(&pod("web")))
        .await
        .expect("create");
    let bound = parse(&c.bind("default", "web", "node-1").await.expect("bind"));
    assert_eq!(bound["spec"]["nodeName"], "node-1");
    let cond = &bound["status"]["conditions"][0];
    assert_eq!(
        (cond["type"].as_str(), cond["status"].as_str()),
        (Some("PodScheduled"), Some("True"))
    );
    let e = c
        .bind("default", "web", "node-2")
        .await
        .expect_err("rebind");
    assert_eq!(e.reason, Reason::Conflict);

    let (obj, removed) = c
        .delete("pods", "default", "web", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(!removed);
    let obj = parse(&obj);
    assert!(obj["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(obj["metadata"]["deletionGracePeriodSeconds"], 30);
    c.get("pods", "default", "web")
        .await
        .expect("still there while terminating");
    let e = c
        .bind("default", "web", "node-2")
        .await
        .expect_err("terminating");
    assert_eq!(e.reason, Reason::Conflict);

    // The node agent confirms with grace 0.
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let (_, removed) = c
        .delete("pods", "default", "web", &now)
        .await
        .expect("delete");
    assert!(removed);
    assert_eq!(
        c.get("pods", "default", "web")
            .await
            .expect_err("gone")
            .reason,
        Reason::NotFound
    );
}

#[tokio::test]
async fn finalizers_and_preconditions() {
    let s = start().await;
    let c = &s.client;
    let mut cm = configmap("held", "v");
    cm["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let created = parse(
        &c.create("configmaps", "default", body(&cm))
            .await
            .expect("create"),
    );

    let wrong_uid = DeleteParams {
        precondition_uid: "nope".into(),
        ..Default::default()
    };
    let e = c
        .delete("configmaps", "default", "held", &wrong_uid)
        .await
        .expect_err("uid");
    assert_eq!(e.reason, Reason::Conflict);

    let uid = created["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let ok = DeleteParams {
        precondition_uid: uid,
        ..Default::default()
    };
    let (obj, removed) = c
        .delete("configmaps", "default", "held", &ok)
        .await
        .expect("delete");
    assert!(!removed, "a finalizer holds the object");
    assert!(parse(&obj)["metadata"]["deletionTimestamp"].is_string());

    let e = c
        .patch(
            "configmaps",
            "default",
            "held",
            body(&json!({"metadata": {"finalizers": ["example.com/hold", "new/one"]}})),
            "",
        )
        .await
        .expect_err("no new finalizers while deleting");
    assert_eq!(e.reason, Reason::Invalid);

    c.patch(
        "configmaps",
        "default",
        "held",
        body(&json!({"metadata": {"finalizers": null}})),
        "",
    )
    .await
    .expect("release");
    assert_eq!(
        c.get("configmaps", "default", "held")
            .await
            .expect_err("gone")
            .reason,
        Reason::NotFound
    );
}

#[tokio::test]
async fn namespaces_exist_and_terminate_until_finalized() {
    let s = start().await;
    let c = &s.client;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        c.get("namespaces", "", ns).await.expect("system namespace");
    }
    let e = c
        .delete("namespaces", "", "default", &DeleteParams::default())
        .await
        .expect_err("protected");
    assert_eq!(e.reason, Reason::Forbidden);

    c.create(
        "namespaces",
        "",
        body(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})),
    )
    .await
    .expect("create ns");
    c.create("configmaps", "team", body(&configmap("a", "1")))
        .await
        .expect("cm");
    c.create("pods", "team", body(&pod("p")))
        .await
        .expect("pod");
    let (obj, removed) = c
        .delete("namespaces", "", "team", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(!removed);
    assert_eq!(parse(&obj)["status"]["phase"], "Terminating");
    let e = c
        .create("configmaps", "team", body(&configmap("b", "1")))
        .await
        .expect_err("terminating");
    assert_eq!(e.reason, Reason::Forbidden);

    // The API server keeps a Terminating namespace until its `kubernetes` finalizer goes
    // (the namespace controller's last step, after it emptied the namespace; the
    // controller itself is tested with the controller manager).
    c.delete("configmaps", "team", "a", &DeleteParams::default())
        .await
        .expect("delete cm");
    c.delete("pods", "team", "p", &DeleteParams::default())
        .await
        .expect("delete unbound pod");
    c.get("namespaces", "", "team")
        .await
        .expect("still there while finalized by spec.finalizers");
    c.patch(
        "namespaces",
        "",
        "team",
        body(&json!({"spec": {"finalizers": []}})),
        "",
    )
    .await
    .expect("finalize");
    assert_eq!(
        c.get("namespaces", "", "team")
            .await
            .expect_err("removed once finalized")
            .reason,
        Reason::NotFound
    );
}

#[tokio::test]
async fn services_get_unique_cluster_ips_and_node_ports() {
    let s = start().await;
    let c = &s.client;
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for i in 0..40 {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}")},
            "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}
        });
        let made = parse(
            &c.create("services", "default", body(&svc))
                .await
                .expect("create"),
        );
        let ip: std::net::Ipv4Addr = made["spec"]["clusterIP"]
            .as_str()
            .expect("ip")
            .parse()
            .expect("ipv4");
        assert!(ip.octets()[0] == 198 && ip.octets()[1] == 19, "{ip}");
        assert!(ips.insert(ip));
        let np = made["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .expect("nodePort");
        assert!((30000..=32767).contains(&np));
        assert!(ports.insert(np));
        assert_eq!(made["spec"]["ports"][0]["targetPort"], 80);
    }
    let taken = ips.iter().next().expect("one ip").to_string();
    let clash = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "clash"},
        "spec": {"clusterIP": taken, "ports": [{"port": 80}]}});
    let e = c
        .create("services", "default", body(&clash))
        .await
        .expect_err("taken");
    assert_eq!(e.reason, Reason::Invalid);
    assert!(e.message.contains("already allocated"), "{}", e.message);

    // Deleting frees the address for reuse; updating keeps it.
    let s0 = parse(&c.get("services", "default", "s0").await.expect("get"));
    let ip0 = s0["spec"]["clusterIP"].as_str().expect("ip").to_string();
    let relabeled = parse(
        &c.patch(
            "services",
            "default",
            "s0",
            body(&json!({"metadata": {"labels": {"x": "y"}}})),
            "",
        )
        .await
        .expect("patch"),
    );
    assert_eq!(relabeled["spec"]["clusterIP"], ip0.as_str());
    c.delete("services", "default", "s0", &DeleteParams::default())
        .await
        .expect("delete");
    let reuse = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reuse"},
        "spec": {"clusterIP": ip0, "ports": [{"port": 80}]}});
    c.create("services", "default", body(&reuse))
        .await
        .expect("freed address can be claimed");
}

#[tokio::test]
async fn selectors_and_pagination() {
    let s = start().await;
    let c = &s.client;
    for i in 0..25 {
        let mut p = pod(&format!("p{i:02}"));
        p["metadata"]["labels"] = json!({"app": if i % 2 == 0 { "even" } else { "odd" }});
        c.create("pods", "default", body(&p)).await.expect("create");
        if i % 5 == 0 {
            c.bind("default", &format!("p{i:02}"), "n1")
                .await
                .expect("bind");
        }
    }
    let even = c
        .list("pods", "default", &ListParams::default().labels("app=even"))
        .await
        .expect("list");
    assert_eq!(even.items.len(), 13);
    let on_n1 = c
        .list(
            "pods",
            "",
            &ListParams::default().fields("spec.nodeName=n1"),
        )
        .await
        .expect("list");
    assert_eq!(on_n1.items.len(), 5);
    let both = c
        .list(
            "pods",
            "default",
            &ListParams::default()
                .labels("app=odd")
                .fields("spec.nodeName=n1"),
        )
        .await
        .expect("list");
    assert_eq!(both.items.len(), 2);

    // Pages are consistent at the first page's revision despite writes in between.
    let mut params = ListParams {
        limit: 10,
        ..Default::default()
    };
    let mut names = Vec::new();
    let mut first_rv = String::new();
    loop {
        let page = c.list("pods", "default", &params).await.expect("page");
        if first_rv.is_empty() {
            first_rv = page.resource_version.clone();
            c.create("pods", "default", body(&pod("p00a")))
                .await
                .expect("create during paging");
        }
        assert_eq!(page.resource_version, first_rv);
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
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn watch_streams_changes_with_selectors_and_initial_state() {
    let s = start().await;
    let c = &s.client;
    let created = parse(
        &c.create("pods", "default", body(&pod("a")))
            .await
            .expect("create"),
    );

    // Initial state then a bookmark that ends it.
    let mut w = c
        .watch("pods", "default", &ListParams::default(), "", true)
        .await
        .expect("watch");
    match w.next().await.expect("event").expect("ok") {
        RawEvent::Added(o) => assert_eq!(parse(&o)["metadata"]["name"], "a"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    match w.next().await.expect("event").expect("ok") {
        RawEvent::Bookmark(r, true) => assert_eq!(r, rv(&created).to_string()),
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }

    // Label-selected watch sees a pod leave its selection as DELETED.
    let mut sel = c
        .watch(
            "pods",
            "default",
            &ListParams::default().labels("app=web"),
            &rv(&created).to_string(),
            false,
        )
        .await
        .expect("watch");
    c.patch(
        "pods",
        "default",
        "a",
        body(&json!({"metadata": {"labels": {"app": "other"}}})),
        "",
    )
    .await
    .expect("relabel");
    loop {
        match sel.next().await.expect("event").expect("ok") {
            RawEvent::Bookmark(..) => continue,
            RawEvent::Deleted(o) => {
                assert_eq!(parse(&o)["metadata"]["labels"]["app"], "other");
                break;
            }
            other => panic!("expected DELETED, got {other:?}"),
        }
    }
    match w.next().await.expect("event").expect("ok") {
        RawEvent::Modified(o) => assert_eq!(parse(&o)["metadata"]["labels"]["app"], "other"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    // ...and one entering it as ADDED, carrying the new state and its resourceVersion.
    let back = parse(
        &c.patch(
            "pods",
            "default",
            "a",
            body(&json!({"metadata": {"labels": {"app": "web"}}})),
            "",
        )
        .await
        .expect("relabel back"),
    );
    loop {
        match sel.next().await.expect("event").expect("ok") {
            RawEvent::Bookmark(..) => continue,
            RawEvent::Added(o) => {
                let o = parse(&o);
                assert_eq!(o["metadata"]["labels"]["app"], "web");
                assert_eq!(
                    o["metadata"]["resourceVersion"],
                    back["metadata"]["resourceVersion"]
                );
                break;
            }
            other => panic!("expected ADDED, got {other:?}"),
        }
    }
    match w.next().await.expect("event").expect("ok") {
        RawEvent::Modified(o) => assert_eq!(parse(&o)["metadata"]["labels"]["app"], "web"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // Quiet watchers still get bookmarks that follow the store's revision.
    c.create("configmaps", "default", body(&configmap("elsewhere", "1")))
        .await
        .expect("cm");
    let target = c.version().await.expect("version").2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("bookmark in time");
        if let Some(Ok(RawEvent::Bookmark(r, false))) = ev
            && r.parse::<i64>().expect("rv") >= target
        {
            break;
        }
    }
}

#[tokio::test]
async fn garbage_on_the_grpc_port_is_harmless() {
    use tokio::io::AsyncWriteExt;
    let s = start().await;
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        let mut conn = tokio::net::TcpStream::connect(&s.address)
            .await
            .expect("connect");
        let _ = conn.write_all(junk).await;
        let _ = conn.shutdown().await;
    }
    s.client
        .create("configmaps", "default", body(&configmap("after", "1")))
        .await
        .expect("server still serves");
    let fresh = skiff_client::Client::connect(&s.address)
        .await
        .expect("new connection");
    fresh
        .get("configmaps", "default", "after")
        .await
        .expect("get");
}

#[tokio::test]
async fn object_json_round_trips_unchanged() {
    let s = start().await;
    let mut cm = configmap("rt", "v");
    cm["metadata"]["annotations"] = json!({"a": "b"});
    cm["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1234"}]);
    let made = parse(
        &s.client
            .create("configmaps", "default", body(&cm))
            .await
            .expect("create"),
    );
    assert_eq!(
        made["metadata"]["ownerReferences"],
        cm["metadata"]["ownerReferences"]
    );
    assert_eq!(
        made["metadata"]["annotations"],
        cm["metadata"]["annotations"]
    );
    let value: Value = made["data"].clone();
    assert_eq!(value, json!({"k": "v"}));
}
