//! The event recorder against a real server: repeats become a count on one Event, and past
//! nine distinct messages about one object and reason the rest are combined into one
//! counted Event, as client-go's correlator does.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use skiff_client::ListParams;
use skiff_client::events::Recorder;
use support::start;

fn object(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("ReplicaSet".into()),
        name: Some(name.into()),
        namespace: Some("default".into()),
        uid: Some(format!("uid-{name}")),
        ..Default::default()
    }
}

/// The events about `name`, once `done` holds for them (up to 15 s).
async fn events_about(
    c: &skiff_client::Client,
    name: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let events: Vec<Event> = c
            .api::<Event>("default")
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .collect();
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events about {name}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// All `total` recordings counted.
fn counted(total: i32) -> impl Fn(&[Event]) -> bool {
    move |events| events.iter().map(|e| e.count.unwrap_or(0)).sum::<i32>() == total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_are_counted_and_floods_combined() {
    let s = start().await;
    let recorder = Recorder::new(s.client.clone(), "replicaset-controller", None);
    for i in 0..15 {
        recorder.record(
            object("web"),
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: web-{i}"),
        );
    }
    for _ in 0..3 {
        recorder.clone().record(
            object("db"),
            "Warning",
            "FailedCreate",
            "Error creating: quota",
        );
    }
    let web = events_about(&s.client, "web", counted(15)).await;
    let (combined, single): (Vec<&Event>, Vec<&Event>) = web.iter().partition(|e| {
        e.message
            .as_deref()
            .is_some_and(|m| m.starts_with("(combined from similar events): "))
    });
    assert_eq!(
        single.len(),
        9,
        "nine distinct messages get events of their own"
    );
    assert!(single.iter().all(|e| e.count == Some(1)));
    assert_eq!(combined.len(), 1);
    assert_eq!(combined[0].count, Some(6));
    assert_eq!(
        combined[0].message.as_deref(),
        Some("(combined from similar events): Created pod: web-14")
    );
    assert!(combined[0].last_timestamp >= combined[0].first_timestamp);

    let db = events_about(&s.client, "db", counted(3)).await;
    assert_eq!(db.len(), 1, "repeats are one event");
    assert_eq!(db[0].count, Some(3));
    assert_eq!(db[0].reason.as_deref(), Some("FailedCreate"));
    assert_eq!(db[0].type_.as_deref(), Some("Warning"));

    // The Event is gone (a TTL, a namespace deletion): the next repeat creates it again.
    let name = db[0].metadata.name.clone().unwrap_or_default();
    s.client
        .api::<Event>("default")
        .delete(&name, &Default::default())
        .await
        .expect("delete");
    recorder.record(
        object("db"),
        "Warning",
        "FailedCreate",
        "Error creating: quota",
    );
    recorder.record(
        object("db"),
        "Warning",
        "FailedCreate",
        "Error creating: quota",
    );
    events_about(&s.client, "db", |events| {
        events.len() == 1 && events[0].count >= Some(5)
    })
    .await;
}
