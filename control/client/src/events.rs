//! Kubernetes Events (Scheduled, FailedScheduling, SuccessfulCreate, Started, BackOff, ...),
//! written in the background by every component: an event that cannot be written is
//! logged, never waited for. Repeats and floods of similar events are counted on one Event,
//! as client-go's event correlator does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use parking_lot::Mutex;
use skiff_api::Reason;

use crate::Client;

/// The current time as a Kubernetes timestamp.
pub use skiff_api::object::now;

/// The current time as a Kubernetes MicroTime (Lease renew and acquire times).
pub fn micro_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now().0)
}

/// Distinct messages of one (object, reason): the first `MAX_SIMILAR - 1` are events of
/// their own, the rest are combined (client-go's `maxEvents`).
const MAX_SIMILAR: usize = 10;
/// client-go's aggregation window (`maxIntervalInSeconds`).
const SIMILAR_WINDOW: Duration = Duration::from_secs(600);
/// Most events a recorder remembers for counting (client-go's LRU size).
const MAX_REMEMBERED: usize = 4096;
/// Prefix of a combined event's message (client-go's wording).
const COMBINED: &str = "(combined from similar events): ";

/// One event the recorder has written or is writing.
struct Written {
    event: Event,
    /// The object exists on the server (else the next write creates it).
    created: bool,
    /// A write is under way; another change only marks it `dirty`.
    busy: bool,
    dirty: bool,
    seen: Instant,
}

/// Similar events of one object: the distinct messages that got events of their own.
struct Similar {
    messages: HashSet<String>,
    last: Instant,
}

/// client-go's event correlation: repeats of an event become a count on the first one,
/// and past [`MAX_SIMILAR`] distinct messages for the same object and reason within
/// [`SIMILAR_WINDOW`] the rest are combined into one counted event. `kubectl describe`'s
/// "x15 over 2m" comes from these counts; a ReplicaSet of 100 does not leave 100 events.
#[derive(Default)]
struct Correlator {
    similar: HashMap<String, Similar>,
    written: HashMap<String, Written>,
}

impl Correlator {
    /// Forgets what is old, then the oldest idle entries, to stay within bounds.
    fn trim(&mut self, now: Instant) {
        if self.similar.len() > MAX_REMEMBERED {
            self.similar
                .retain(|_, s| now.duration_since(s.last) < SIMILAR_WINDOW);
            if self.similar.len() > MAX_REMEMBERED {
                self.similar.clear();
            }
        }
        if self.written.len() > MAX_REMEMBERED {
            let mut idle: Vec<(Instant, String)> = self
                .written
                .iter()
                .filter(|(_, w)| !w.busy)
                .map(|(k, w)| (w.seen, k.clone()))
                .collect();
            idle.sort();
            let excess = self.written.len() - MAX_REMEMBERED / 2;
            for (_, k) in idle.into_iter().take(excess) {
                self.written.remove(&k);
            }
        }
    }
}

/// Who reports an event: the component (`kubelet`, `default-scheduler`,
/// `replicaset-controller`, ...) and, for node agents, its node. Clones share the
/// correlation state.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    state: Arc<Mutex<Correlator>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            host: host.map(str::to_string),
            state: Arc::default(),
        }
    }

    /// Records an event (`kind` is `Normal` or `Warning`) about `object`: a new Event, or
    /// (a repeat, or one too many similar ones) a higher count on an earlier one. Written
    /// in the background.
    pub fn record(&self, object: ObjectReference, kind: &str, reason: &str, message: &str) {
        let ns = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = object.name.clone().unwrap_or_default();
        let similar_key = [
            self.component.as_str(),
            self.host.as_deref().unwrap_or_default(),
            object.api_version.as_deref().unwrap_or_default(),
            object.kind.as_deref().unwrap_or_default(),
            &ns,
            &name,
            object.uid.as_deref().unwrap_or_default(),
            object.field_path.as_deref().unwrap_or_default(),
            kind,
            reason,
        ]
        .join("\u{0}");
        let now_instant = Instant::now();
        let mut state = self.state.lock();
        state.trim(now_instant);
        let similar = state
            .similar
            .entry(similar_key.clone())
            .or_insert_with(|| Similar {
                messages: HashSet::new(),
                last: now_instant,
            });
        if now_instant.duration_since(similar.last) > SIMILAR_WINDOW {
            similar.messages.clear();
        }
        similar.last = now_instant;
        let known = similar.messages.contains(message);
        if !known && similar.messages.len() + 1 < MAX_SIMILAR {
            similar.messages.insert(message.to_string());
        }
        let (key, message) = if known || similar.messages.contains(message) {
            (format!("{similar_key}\u{0}{message}"), message.to_string())
        } else {
            (similar_key, format!("{COMBINED}{message}"))
        };
        let stamp = now();
        match state.written.get_mut(&key) {
            Some(w) => {
                w.event.count = Some(w.event.count.unwrap_or(1) + 1);
                w.event.last_timestamp = Some(stamp);
                w.event.message = Some(message);
                w.seen = now_instant;
                w.dirty = true;
                if w.busy {
                    return;
                }
                w.busy = true;
            }
            None => {
                let unique = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}.{unique:x}")),
                        namespace: Some(ns),
                        ..Default::default()
                    },
                    involved_object: object,
                    reason: Some(reason.into()),
                    message: Some(message),
                    type_: Some(kind.into()),
                    source: Some(EventSource {
                        component: Some(self.component.clone()),
                        host: self.host.clone(),
                    }),
                    first_timestamp: Some(stamp.clone()),
                    last_timestamp: Some(stamp),
                    count: Some(1),
                    reporting_component: Some(self.component.clone()),
                    reporting_instance: Some(
                        self.host.clone().unwrap_or_else(|| self.component.clone()),
                    ),
                    ..Default::default()
                };
                state.written.insert(
                    key.clone(),
                    Written {
                        event,
                        created: false,
                        busy: true,
                        dirty: true,
                        seen: now_instant,
                    },
                );
            }
        }
        drop(state);
        tokio::spawn(self.clone().write(key));
    }

    /// Writes the event under `key` until it has no unwritten change: created the first
    /// time, then its count, time and message patched.
    async fn write(self, key: String) {
        loop {
            let (event, created) = {
                let mut state = self.state.lock();
                let Some(w) = state.written.get_mut(&key) else {
                    return;
                };
                if !w.dirty {
                    w.busy = false;
                    return;
                }
                w.dirty = false;
                (w.event.clone(), w.created)
            };
            let ns = event.metadata.namespace.clone().unwrap_or_default();
            let api = self.client.api::<Event>(&ns);
            let result = if created {
                let patch = serde_json::json!({
                    "count": event.count,
                    "lastTimestamp": event.last_timestamp,
                    "message": event.message,
                });
                let name = event.metadata.name.clone().unwrap_or_default();
                api.patch(&name, &patch).await.map(|_| ())
            } else {
                self.client.create_event(&ns, &event).await.map(|_| ())
            };
            let mut state = self.state.lock();
            let Some(w) = state.written.get_mut(&key) else {
                return;
            };
            match result {
                Ok(()) => w.created = true,
                // Someone removed it (a TTL, a namespace deletion): created again, count
                // and all; a create that finds it already there becomes a patch.
                Err(e) if e.reason == Reason::NotFound && created => {
                    w.created = false;
                    w.dirty = true;
                }
                Err(e) if e.reason == Reason::AlreadyExists && !created => {
                    w.created = true;
                    w.dirty = true;
                }
                Err(e) => tracing::debug!(error = %e, "cannot record event"),
            }
        }
    }
}

/// A reference to `obj` for an event's `involvedObject`.
pub fn reference<K>(obj: &K) -> ObjectReference
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let m = obj.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.into()),
        kind: Some(K::KIND.into()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}
