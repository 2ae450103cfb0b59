//! Informers: list+watch of one kind into a local cache, with indexers and event handlers,
//! as client-go's shared informers do. A watch that breaks resumes from the last
//! resourceVersion seen (bookmarks keep it fresh); a watch that expires (410) relists and
//! reports the difference as events, so handlers never miss a change.
//!
//! Handlers can be added to a running informer (they first get every cached object as
//! `Added`, as client-go's shared informers do) and removed again, so the components of one
//! process (scheduler, controllers) share one cache per kind. A [`Informer::compact`] cache
//! keeps each object as its JSON and decodes it on read: a typed `Pod` takes ~10 KB in
//! memory against ~2 KB of JSON, which matters at 150,000 pods; the objects it received
//! or decoded last (a bounded number) stay decoded too, so controllers reading the same
//! objects over and over decode each once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::{Mutex, RwLock};
use skiff_api::Reason;
use tokio::sync::watch;

use skiff_api::raw::RawObject;

use crate::{Api, ApiObject, ListParams, RawEvent, resource_version};

/// What changed in the cache.
pub enum Event<K> {
    Added(Arc<K>),
    /// `old`: the object the update replaced, decoded when first read.
    Updated {
        old: Prior<K>,
        new: Arc<K>,
    },
    /// The object as the watch delivered its deletion (its last state), or as the cache
    /// held it when a relist found it gone.
    Deleted(Arc<K>),
}

impl<K: ApiObject + std::fmt::Debug> std::fmt::Debug for Event<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Added(o) => f.debug_tuple("Added").field(o).finish(),
            Event::Updated { old, new } => f
                .debug_struct("Updated")
                .field("old", old)
                .field("new", new)
                .finish(),
            Event::Deleted(o) => f.debug_tuple("Deleted").field(o).finish(),
        }
    }
}

/// The object an update replaced, decoded when first read: a compact cache keeps it as
/// JSON, and many handlers never look at it (the scheduler's do not; decoding a pod takes
/// ~10 us). Reads as the object itself (`old.metadata`, `&*old`).
pub struct Prior<K> {
    json: Option<RawObject>,
    typed: OnceLock<Arc<K>>,
}

impl<K: ApiObject> Prior<K> {
    fn of(stored: Stored<K>) -> Self {
        match stored {
            Stored::Typed(o) => Prior {
                json: None,
                typed: OnceLock::from(o),
            },
            Stored::Json(json, decoded) => Prior {
                json: Some(json),
                typed: decoded.into_inner().map(OnceLock::from).unwrap_or_default(),
            },
        }
    }

    /// The old object, decoded now if it was not yet.
    pub fn get(&self) -> &Arc<K> {
        self.typed.get_or_init(|| {
            self.json
                .as_ref()
                .and_then(decode_cached)
                .unwrap_or_default()
        })
    }
}

/// A compact cache entry's object, decoded; None (logged) if it no longer decodes.
fn decode_cached<K: ApiObject>(json: &RawObject) -> Option<Arc<K>> {
    match json.decode::<K>() {
        Ok(o) => Some(Arc::new(o)),
        Err(e) => {
            // It decoded when it arrived, and these are the bytes it arrived as.
            tracing::error!(kind = K::KIND, error = %e, "cached object no longer decodes");
            None
        }
    }
}

impl<K: ApiObject> std::ops::Deref for Prior<K> {
    type Target = K;

    fn deref(&self) -> &K {
        self.get()
    }
}

impl<K: ApiObject + std::fmt::Debug> std::fmt::Debug for Prior<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;
type Handler<K> = Box<dyn Fn(&Event<K>) + Send + Sync>;

/// Names a handler added with [`Reader::add_handler`], to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerId(u64);
/// An index: its function and value -> keys.
/// Keys are shared (`Arc<str>`) between the object map and every index.
type Index<K> = (IndexFn<K>, HashMap<String, BTreeSet<Arc<str>>>);

/// The cache key of an object: `namespace/name`, or `name` when cluster-scoped.
pub fn key_of<K: Metadata<Ty = ObjectMeta>>(obj: &K) -> String {
    let m = obj.metadata();
    let name = m.name.as_deref().unwrap_or_default();
    match m.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

struct Shared<K> {
    objects: RwLock<Cache<K>>,
    /// Held while the cache changes and its handlers run, so a handler added meanwhile sees
    /// every change exactly once: in its replay or as an event.
    handlers: Mutex<Vec<(u64, Handler<K>)>>,
    next_handler: std::sync::atomic::AtomicU64,
    synced: watch::Sender<bool>,
}

/// One cached object: typed, or (compact caches) its JSON: the server's own bytes when
/// the server runs in this process, with the object decoded while it is among the last
/// [`DECODED_KEPT`] the cache decoded or received.
enum Stored<K> {
    Typed(Arc<K>),
    Json(RawObject, Mutex<Option<Arc<K>>>),
}

/// Decoded objects a compact cache keeps beside their JSON, the most recently received or
/// read ones: a controller reading the same objects again and again (a ReplicaSet's sync
/// reads all its pods after each change of one) decodes each once instead of every time
/// (~10 us for a pod), while a cache of 150,000 pods stays JSON but for these.
const DECODED_KEPT: usize = 2048;

struct Cache<K> {
    objects: BTreeMap<Arc<str>, Stored<K>>,
    indexes: HashMap<String, Index<K>>,
    resource_version: String,
    compact: bool,
    /// Keys of the compact entries holding their decoded object, oldest first (a key may
    /// stand twice; dropping its first mention early costs a decode, nothing else).
    decoded: Mutex<VecDeque<Arc<str>>>,
}

impl<K: ApiObject> Cache<K> {
    fn store(&self, key: &Arc<str>, obj: &Arc<K>, raw: &RawObject) -> Stored<K> {
        if self.compact {
            self.kept(key);
            return Stored::Json(raw.detached(), Mutex::new(Some(obj.clone())));
        }
        Stored::Typed(obj.clone())
    }

    /// Notes that the entry at `key` holds its decoded object; past [`DECODED_KEPT`] such
    /// entries, the oldest one lets go of its.
    fn kept(&self, key: &Arc<str>) {
        let mut kept = self.decoded.lock();
        kept.push_back(key.clone());
        if kept.len() > DECODED_KEPT
            && let Some(oldest) = kept.pop_front()
            && let Some(Stored::Json(_, decoded)) = self.objects.get(&oldest)
        {
            decoded.lock().take();
        }
    }

    /// The object of the entry `key` -> `stored`, decoded (and kept) if need be: a read of
    /// one object or of an index's few.
    fn load(&self, key: &Arc<str>, stored: &Stored<K>) -> Option<Arc<K>> {
        let (json, decoded) = match stored {
            Stored::Typed(o) => return Some(o.clone()),
            Stored::Json(json, decoded) => (json, decoded),
        };
        if let Some(o) = decoded.lock().clone() {
            return Some(o);
        }
        let o = decode_cached::<K>(json)?;
        *decoded.lock() = Some(o.clone());
        self.kept(key);
        Some(o)
    }

    /// Like `load`, without keeping what it decodes: a walk over the whole cache (a list,
    /// a new index) would otherwise push out the objects kept for being recent.
    fn peek(stored: &Stored<K>) -> Option<Arc<K>> {
        match stored {
            Stored::Typed(o) => Some(o.clone()),
            Stored::Json(json, decoded) => decoded.lock().clone().or_else(|| decode_cached(json)),
        }
    }

    fn unindex(&mut self, key: &str, obj: &K) {
        for (f, index) in self.indexes.values_mut() {
            for value in f(obj) {
                if let Some(keys) = index.get_mut(&value) {
                    keys.remove(key);
                    if keys.is_empty() {
                        index.remove(&value);
                    }
                }
            }
        }
    }

    fn index(&mut self, key: &Arc<str>, obj: &K) {
        for (f, index) in self.indexes.values_mut() {
            for value in f(obj) {
                index.entry(value).or_default().insert(key.clone());
            }
        }
    }

    /// Caches `obj`; returns what it replaced (decoded here only to unindex it).
    fn put(&mut self, key: String, obj: Arc<K>, raw: &RawObject) -> Option<Prior<K>> {
        let key: Arc<str> = key.into();
        let stored = self.store(&key, &obj, raw);
        let old = self.objects.insert(key.clone(), stored).map(Prior::of);
        if let Some(o) = &old
            && !self.indexes.is_empty()
        {
            self.unindex(&key, o.get());
        }
        self.index(&key, &obj);
        old
    }

    /// Drops the object at `key`; returns it (decoded here only to unindex it).
    fn remove(&mut self, key: &str) -> Option<Prior<K>> {
        let old = self.objects.remove(key).map(Prior::of);
        if let Some(o) = &old
            && !self.indexes.is_empty()
        {
            self.unindex(key, o.get());
        }
        old
    }
}

/// Read access to an informer's cache. Cheap to clone.
pub struct Reader<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Reader<K> {
    fn clone(&self) -> Self {
        Reader {
            shared: self.shared.clone(),
        }
    }
}

impl<K: ApiObject> Reader<K> {
    /// The object at `namespace/name` (or `name`).
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        let cache = self.shared.objects.read();
        let (key, stored) = cache.objects.get_key_value(key)?;
        cache.load(key, stored)
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        let cache = self.shared.objects.read();
        cache.objects.values().filter_map(Cache::peek).collect()
    }

    /// Adds a handler to this (possibly running) informer: it first gets every cached
    /// object as `Added`, then every change. A handler must not add or remove handlers.
    pub fn add_handler(&self, f: impl Fn(&Event<K>) + Send + Sync + 'static) -> HandlerId {
        let mut handlers = self.shared.handlers.lock();
        let current = self.list();
        for obj in current {
            f(&Event::Added(obj));
        }
        let id = self
            .shared
            .next_handler
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        handlers.push((id, Box::new(f)));
        HandlerId(id)
    }

    /// Removes a handler added with [`Reader::add_handler`]; it gets no event after this.
    pub fn remove_handler(&self, id: HandlerId) {
        self.shared.handlers.lock().retain(|(i, _)| *i != id.0);
    }

    pub fn len(&self) -> usize {
        self.shared.objects.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects whose indexer `index` produced `value`.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let cache = self.shared.objects.read();
        let Some((_, idx)) = cache.indexes.get(index) else {
            return Vec::new();
        };
        idx.get(value)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| cache.objects.get(k).and_then(|o| cache.load(k, o)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The resourceVersion the cache is current to.
    pub fn resource_version(&self) -> String {
        self.shared.objects.read().resource_version.clone()
    }

    pub fn has_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits for the first list to land in the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.shared.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// A handler on an informer, removed when this is dropped (with the informer itself when
/// the subscriber started its own).
pub struct Subscription<K: ApiObject> {
    reader: Reader<K>,
    id: HandlerId,
    _own: Option<InformerHandle<K>>,
}

impl<K: ApiObject> Subscription<K> {
    pub fn reader(&self) -> &Reader<K> {
        &self.reader
    }
}

impl<K: ApiObject> Drop for Subscription<K> {
    fn drop(&mut self) {
        self.reader.remove_handler(self.id);
    }
}

/// A component's view of one kind: the process's shared informer when there is one, else
/// its own, started here. Components hold its reader, then subscribe their handler (which
/// first gets the cache as `Added`, so starting before subscribing loses nothing).
pub struct Feed<K: ApiObject> {
    pub reader: Reader<K>,
    own: Option<InformerHandle<K>>,
}

impl<K: ApiObject> Feed<K> {
    pub fn new(shared: Option<&Reader<K>>, own: impl FnOnce() -> Informer<K>) -> Self {
        match shared {
            Some(r) => Feed {
                reader: r.clone(),
                own: None,
            },
            None => {
                let handle = own().start();
                Feed {
                    reader: handle.reader.clone(),
                    own: Some(handle),
                }
            }
        }
    }

    /// Adds `f`; the returned subscription keeps it (and an own informer) alive.
    pub fn subscribe(self, f: impl Fn(&Event<K>) + Send + Sync + 'static) -> Subscription<K> {
        let id = self.reader.add_handler(f);
        Subscription {
            reader: self.reader,
            id,
            _own: self.own,
        }
    }
}

/// Informers one process shares between its components (client-go's shared informer
/// factory, for the kinds both the scheduler and the controllers watch). The pod informer
/// must carry the controllers' indexes: build it with `skiff_controllers::pod_informer`.
#[derive(Clone, Default)]
pub struct SharedInformers {
    pub pods: Option<Reader<k8s_openapi::api::core::v1::Pod>>,
    pub nodes: Option<Reader<k8s_openapi::api::core::v1::Node>>,
}

/// Builder of an informer.
pub struct Informer<K> {
    api: Api<K>,
    params: ListParams,
    shared: Arc<Shared<K>>,
}

/// A running informer; stops when dropped.
pub struct InformerHandle<K> {
    pub reader: Reader<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Drop for InformerHandle<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K> Informer<K>
where
    K: ApiObject,
{
    pub fn new(api: Api<K>, params: ListParams) -> Self {
        let (synced, _) = watch::channel(false);
        Informer {
            api,
            params,
            shared: Arc::new(Shared {
                objects: RwLock::new(Cache {
                    objects: BTreeMap::new(),
                    indexes: HashMap::new(),
                    resource_version: String::new(),
                    compact: false,
                    decoded: Mutex::default(),
                }),
                handlers: Mutex::new(Vec::new()),
                next_handler: std::sync::atomic::AtomicU64::new(0),
                synced,
            }),
        }
    }

    /// Keeps each object as JSON, decoded on every read: a fraction of the memory of typed
    /// objects, for a decode per read (and per update, to hand handlers the old object).
    pub fn compact(self) -> Self {
        self.shared.objects.write().compact = true;
        self
    }

    /// A reader of the cache, usable before the informer starts (empty and not synced
    /// until then), so handlers and the components they feed can be wired up first.
    pub fn reader(&self) -> Reader<K> {
        Reader {
            shared: self.shared.clone(),
        }
    }

    /// Adds an indexer: `f` gives the index values of an object.
    pub fn index(self, name: &str, f: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) -> Self {
        let f: IndexFn<K> = Arc::new(f);
        let mut cache = self.shared.objects.write();
        let mut index = HashMap::new();
        for (key, obj) in &cache.objects {
            let Some(obj) = Cache::peek(obj) else {
                continue;
            };
            for value in f(&obj) {
                index
                    .entry(value)
                    .or_insert_with(BTreeSet::new)
                    .insert(key.clone());
            }
        }
        cache.indexes.insert(name.to_string(), (f, index));
        drop(cache);
        self
    }

    /// Adds a handler, called in order for every change of the cache.
    pub fn on_event(self, f: impl Fn(&Event<K>) + Send + Sync + 'static) -> Self {
        self.reader().add_handler(f);
        self
    }

    /// Starts listing and watching.
    pub fn start(self) -> InformerHandle<K> {
        let shared = self.shared;
        let reader = Reader {
            shared: shared.clone(),
        };
        let task = tokio::spawn(run(self.api, self.params, shared));
        InformerHandle { reader, task }
    }
}

fn emit<K>(handlers: &[(u64, Handler<K>)], event: Event<K>) {
    for (_, h) in handlers {
        h(&event);
    }
}

/// The typed object of a raw one, or None (logged) when it does not decode.
fn typed<K: ApiObject>(raw: &RawObject) -> Option<Arc<K>> {
    match raw.decode::<K>() {
        Ok(o) => Some(Arc::new(o)),
        Err(e) => {
            tracing::warn!(kind = K::KIND, error = %e, "informer skips an object it cannot decode");
            None
        }
    }
}

async fn run<K>(api: Api<K>, params: ListParams, shared: Arc<Shared<K>>)
where
    K: ApiObject,
{
    let plural = K::URL_PATH_SEGMENT;
    let mut backoff = Duration::from_millis(200);
    loop {
        // List, and report the difference with what the cache held.
        let list = match api
            .client
            .list_objects(
                plural,
                &api.namespace,
                &ListParams {
                    resource_version: String::new(),
                    limit: 0,
                    continue_token: String::new(),
                    ..params.clone()
                },
            )
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(kind = K::KIND, error = %e, "informer list failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let mut rv = list.resource_version.clone();
        {
            let mut events = Vec::new();
            let handlers = shared.handlers.lock();
            let mut cache = shared.objects.write();
            let mut fresh: BTreeMap<String, (Arc<K>, RawObject)> = BTreeMap::new();
            for raw in list.items {
                if let Some(obj) = typed::<K>(&raw) {
                    fresh.insert(key_of(&*obj), (obj, raw));
                }
            }
            let stale: Vec<Arc<str>> = cache
                .objects
                .keys()
                .filter(|k| !fresh.contains_key(&***k))
                .cloned()
                .collect();
            for key in stale {
                if let Some(old) = cache.remove(&key) {
                    events.push(Event::Deleted(old.get().clone()));
                }
            }
            for (key, (obj, raw)) in fresh {
                match cache.put(key, obj.clone(), &raw) {
                    None => events.push(Event::Added(obj)),
                    Some(old) if resource_version(&**old.get()) != resource_version(&*obj) => {
                        events.push(Event::Updated { old, new: obj })
                    }
                    Some(_) => {}
                }
            }
            cache.resource_version = rv.clone();
            drop(cache);
            for e in events {
                emit(&handlers, e);
            }
            drop(handlers);
        }
        shared.synced.send_replace(true);

        // Watch from the list's revision until the watch expires.
        'watch: loop {
            let mut stream = match api
                .client
                .watch_objects(plural, &api.namespace, &params, &rv, false)
                .await
            {
                Ok(s) => s,
                Err(e) if e.reason == Reason::Expired => break 'watch,
                Err(e) => {
                    tracing::debug!(kind = K::KIND, error = %e, "informer watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            while let Some(item) = stream.next().await {
                backoff = Duration::from_millis(200);
                let event = match item {
                    Ok(ev) => ev,
                    Err(e) if e.reason == Reason::Expired => break 'watch,
                    Err(e) => {
                        tracing::debug!(kind = K::KIND, error = %e, "informer watch broke; resuming");
                        break;
                    }
                };
                // Decoded before taking the locks: readers and handlers wait on them.
                let event = match event {
                    RawEvent::Bookmark(r, end) => RawEvent::Bookmark(r, end),
                    RawEvent::Added(raw) => match typed::<K>(&raw) {
                        Some(obj) => RawEvent::Added((obj, raw)),
                        None => continue,
                    },
                    RawEvent::Modified(raw) => match typed::<K>(&raw) {
                        Some(obj) => RawEvent::Modified((obj, raw)),
                        None => continue,
                    },
                    RawEvent::Deleted(raw) => match typed::<K>(&raw) {
                        Some(obj) => RawEvent::Deleted((obj, raw)),
                        None => continue,
                    },
                };
                let handlers = shared.handlers.lock();
                let mut cache = shared.objects.write();
                let out = match event {
                    RawEvent::Added((obj, raw)) | RawEvent::Modified((obj, raw)) => {
                        rv = resource_version(&*obj).to_string();
                        match cache.put(key_of(&*obj), obj.clone(), &raw) {
                            None => Some(Event::Added(obj)),
                            Some(old) => Some(Event::Updated { old, new: obj }),
                        }
                    }
                    RawEvent::Deleted((obj, _)) => {
                        // Handlers get the object as the watch last saw it, as client-go's do.
                        rv = resource_version(&*obj).to_string();
                        cache.remove(&key_of(&*obj)).map(|_| Event::Deleted(obj))
                    }
                    RawEvent::Bookmark(r, _) => {
                        rv = r;
                        None
                    }
                };
                cache.resource_version = rv.clone();
                drop(cache);
                if let Some(e) = out {
                    emit(&handlers, e);
                }
                drop(handlers);
            }
            tokio::time::sleep(backoff).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cache(compact: bool) -> Cache<ConfigMap> {
        Cache {
            objects: BTreeMap::new(),
            indexes: HashMap::new(),
            resource_version: String::new(),
            compact,
            decoded: Mutex::default(),
        }
    }

    fn config_map(rv: &str, value: &str) -> (Arc<ConfigMap>, RawObject) {
        let json = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "default", "resourceVersion": rv},
            "data": {"k": value}});
        let raw = RawObject::complete(serde_json::to_vec(&json).expect("json").into());
        (Arc::new(raw.decode().expect("decodes")), raw)
    }

    fn named(name: &str, rv: &str) -> (Arc<ConfigMap>, RawObject) {
        let json = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv}});
        let raw = RawObject::complete(serde_json::to_vec(&json).expect("json").into());
        (Arc::new(raw.decode().expect("decodes")), raw)
    }

    fn holds_decoded(c: &Cache<ConfigMap>, key: &str) -> bool {
        matches!(c.objects.get(key), Some(Stored::Json(_, d)) if d.lock().is_some())
    }

    #[test]
    fn a_compact_cache_keeps_only_recent_objects_decoded() {
        let mut c = cache(true);
        let (one, raw) = config_map("1", "x");
        c.put("default/a".into(), one.clone(), &raw);
        assert!(holds_decoded(&c, "default/a"));
        for i in 0..DECODED_KEPT {
            let (o, raw) = named(&format!("n{i}"), "1");
            c.put(format!("default/n{i}"), o, &raw);
        }
        assert!(!holds_decoded(&c, "default/a"), "the oldest lets go");
        assert!(holds_decoded(&c, &format!("default/n{}", DECODED_KEPT - 1)));
        assert_eq!(
            c.objects
                .values()
                .filter(|o| matches!(o, Stored::Json(_, d) if d.lock().is_some()))
                .count(),
            DECODED_KEPT
        );
        // A read decodes it, and keeps it again.
        let key: Arc<str> = "default/a".into();
        let read = c.load(&key, &c.objects[&key]).expect("decodes");
        assert_eq!(*read, *one);
        assert!(holds_decoded(&c, "default/a"));
        assert!(!holds_decoded(&c, "default/n0"));
    }

    #[test]
    fn walking_the_whole_cache_keeps_nothing_new() {
        let mut c = cache(true);
        for i in 0..=DECODED_KEPT {
            let (o, raw) = named(&format!("n{i}"), "1");
            c.put(format!("default/n{i}"), o, &raw);
        }
        assert!(!holds_decoded(&c, "default/n0"));
        let all: Vec<_> = c.objects.values().filter_map(Cache::peek).collect();
        assert_eq!(all.len(), DECODED_KEPT + 1);
        assert!(
            !holds_decoded(&c, "default/n0"),
            "a walk kept what it decoded"
        );
        assert!(
            holds_decoded(&c, "default/n1"),
            "a walk pushed out a recent object"
        );
    }

    #[test]
    fn a_replaced_object_no_longer_kept_is_decoded_only_when_read() {
        let mut c = cache(true);
        let (one, raw) = config_map("1", "x");
        c.put("default/a".into(), one.clone(), &raw);
        for i in 0..DECODED_KEPT {
            let (o, raw) = named(&format!("n{i}"), "1");
            c.put(format!("default/n{i}"), o, &raw);
        }
        let (two, raw) = config_map("2", "y");
        let old = c.put("default/a".into(), two, &raw).expect("replaced");
        assert!(old.typed.get().is_none(), "decoded before anyone read it");
        assert_eq!(**old.get(), *one);
        assert_eq!(old.metadata.resource_version.as_deref(), Some("1"));
        // A replaced object still kept is handed over decoded.
        let (three, raw) = config_map("3", "z");
        let old = c.put("default/a".into(), three, &raw).expect("replaced");
        assert_eq!(
            old.typed.get().map(|o| o.metadata.resource_version.clone()),
            Some(Some("2".into()))
        );
    }

    #[test]
    fn an_indexed_cache_decodes_the_replaced_object_to_unindex_it() {
        let mut c = cache(true);
        let by_value: IndexFn<ConfigMap> =
            Arc::new(|m: &ConfigMap| m.data.iter().flat_map(|d| d.values().cloned()).collect());
        c.indexes.insert("value".into(), (by_value, HashMap::new()));
        let (one, raw) = config_map("1", "x");
        c.put("default/a".into(), one, &raw);
        let (two, raw) = config_map("2", "y");
        let old = c.put("default/a".into(), two, &raw).expect("replaced");
        assert!(old.typed.get().is_some());
        let index = &c.indexes["value"].1;
        assert!(!index.contains_key("x"), "{index:?}");
        assert!(index.contains_key("y"), "{index:?}");
        let gone = c.remove("default/a").expect("removed");
        assert_eq!(gone.metadata.resource_version.as_deref(), Some("2"));
        assert!(c.indexes["value"].1.is_empty());
    }
}
