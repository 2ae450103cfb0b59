//! Watch guarantees checked on recorded histories: concurrent writers record the revision
//! of every acknowledged write; watchers must deliver each exactly once, in order, resume
//! from any revision in the window with exactly the missed events, get Expired beyond it,
//! and see bookmarks advance. A watcher that falls out of the window is closed with Expired
//! rather than buffered.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use skiff_api::Reason;
use skiff_apiserver::watch_cache::CacheOptions;
use skiff_client::{DeleteParams, ListParams, RawEvent, RawWatch};
use support::{body, configmap, parse, rv, start, start_with};

/// Reads events until every revision in `want` has been seen (or fails after 30 s).
async fn record(w: &mut RawWatch, want: &BTreeSet<i64>) -> (Vec<i64>, Vec<i64>) {
    let mut revs = Vec::new();
    let mut bookmarks = Vec::new();
    let last = *want.iter().next_back().expect("writes");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while revs.last().is_none_or(|r| *r < last) {
        let ev = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("events within 30 s")
            .expect("open")
            .expect("no error");
        match ev {
            RawEvent::Added(o) | RawEvent::Modified(o) | RawEvent::Deleted(o) => {
                revs.push(rv(&parse(&o)))
            }
            RawEvent::Bookmark(r, _) => bookmarks.push(r.parse().expect("rv")),
        }
    }
    (revs, bookmarks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_unique_gapless_and_resumable_under_concurrent_writers() {
    let s = start().await;
    let c = s.client.clone();
    let start_rv = c.version().await.expect("version").2;
    let mut early = c
        .watch(
            "configmaps",
            "default",
            &ListParams::default(),
            &start_rv.to_string(),
            false,
        )
        .await
        .expect("watch");

    let mut writers = Vec::new();
    for w in 0..6 {
        let c = c.clone();
        writers.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..60 {
                let name = format!("w{w}-{}", i % 7);
                let r = match i % 3 {
                    0 | 1 => match c.get("configmaps", "default", &name).await {
                        Ok(cur) => {
                            let mut cur = parse(&cur);
                            cur["data"]["k"] = json!(i.to_string());
                            c.update("configmaps", "default", &name, body(&cur), "")
                                .await
                        }
                        Err(_) => {
                            c.create("configmaps", "default", body(&configmap(&name, "0")))
                                .await
                        }
                    },
                    _ => c
                        .delete("configmaps", "default", &name, &DeleteParams::default())
                        .await
                        .map(|(o, _)| o),
                };
                if let Ok(o) = r {
                    revs.push(rv(&parse(&o)));
                }
            }
            revs
        }));
    }
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    assert!(written.len() > 200, "writes: {}", written.len());

    let (revs, bookmarks) = record(&mut early, &written).await;
    assert!(
        revs.windows(2).all(|p| p[0] < p[1]),
        "ordered without duplicates"
    );
    assert_eq!(
        revs.iter().copied().collect::<BTreeSet<_>>(),
        written,
        "no gaps, nothing extra"
    );
    assert!(
        bookmarks.windows(2).all(|p| p[0] <= p[1]),
        "bookmarks never go back"
    );

    // Resume from every 37th revision: exactly the suffix.
    let all: Vec<i64> = written.iter().copied().collect();
    for from in all.iter().step_by(37) {
        let mut w = c
            .watch(
                "configmaps",
                "default",
                &ListParams::default(),
                &from.to_string(),
                false,
            )
            .await
            .expect("resume");
        let want: BTreeSet<i64> = all.iter().copied().filter(|r| r > from).collect();
        if want.is_empty() {
            continue;
        }
        let (got, _) = record(&mut w, &want).await;
        assert_eq!(
            got,
            want.iter().copied().collect::<Vec<_>>(),
            "resume from {from}"
        );
    }
}

#[tokio::test]
async fn too_old_resource_version_is_expired() {
    let s = start_with(CacheOptions {
        max_events: 16,
        bookmark_interval: Duration::from_millis(200),
        ..CacheOptions::default()
    })
    .await;
    let c = &s.client;
    let first = parse(
        &c.create("configmaps", "default", body(&configmap("a", "0")))
            .await
            .expect("create"),
    );
    let mut cur = first.clone();
    for i in 0..40 {
        cur["data"]["k"] = json!(i.to_string());
        cur = parse(
            &c.update("configmaps", "default", "a", body(&cur), "")
                .await
                .expect("update"),
        );
    }
    let e = match c
        .watch(
            "configmaps",
            "default",
            &ListParams::default(),
            &rv(&first).to_string(),
            false,
        )
        .await
    {
        Err(e) => e,
        Ok(mut w) => w.next().await.expect("an event").expect_err("expired"),
    };
    assert_eq!(e.reason, Reason::Expired, "{e}");
    // Inside the window works.
    let recent = rv(&cur) - 3;
    let _recent = c
        .watch(
            "configmaps",
            "default",
            &ListParams::default(),
            &recent.to_string(),
            false,
        )
        .await
        .expect("recent");
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_closed_not_buffered() {
    let s = start_with(CacheOptions {
        max_events: 64,
        bookmark_interval: Duration::from_secs(60),
        ..CacheOptions::default()
    })
    .await;
    let c = &s.client;
    let from = c.version().await.expect("version").2;
    // Open, read nothing while ~9 MiB of events go by: more than HTTP/2 flow control lets
    // the transport hold (2 MiB per stream), so the server must stop and drop the watcher.
    let mut slow = c
        .watch(
            "configmaps",
            "default",
            &ListParams::default(),
            &from.to_string(),
            false,
        )
        .await
        .expect("watch");
    let mut cur = parse(
        &c.create("configmaps", "default", body(&configmap("a", "0")))
            .await
            .expect("create"),
    );
    let payload = "y".repeat(30_000);
    for _ in 0..300 {
        cur["data"]["k"] = json!(payload.clone() + &rv(&cur).to_string());
        cur = parse(
            &c.update("configmaps", "default", "a", body(&cur), "")
                .await
                .expect("update"),
        );
    }
    // It gets what was in flight, then Expired; never all 300 events.
    let mut delivered = 0;
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .expect("not stuck")
        {
            Some(Ok(RawEvent::Bookmark(..))) => {}
            Some(Ok(_)) => delivered += 1,
            Some(Err(e)) => break e,
            None => panic!("closed without a status"),
        }
    };
    assert_eq!(outcome.reason, Reason::Expired);
    assert!(delivered < 301, "delivered {delivered}");
}
