//! The cluster store: one [`Store`] trait with etcd's semantics and two backends that pass one
//! conformance suite.
//!
//! - [`embedded::EmbeddedStore`] (the default): durable on disk in redb, with group commit
//!   (every write waiting at the same moment shares one fsync) and an in-memory event history
//!   for watches and reads at past revisions.
//! - [`etcd::EtcdStore`]: the same operations against an etcd cluster, for clusters that
//!   outgrow one machine.
//!
//! Semantics shared by both: a global revision that every successful write increments; reads
//! at the latest or at a past revision (until it is compacted); create-if-absent; update and
//! delete guarded by the key's mod revision; watches of a key prefix from a revision, in
//! revision order, without gaps or duplicates; compaction. Only the API server uses a store.

pub mod embedded;
pub mod etcd;
pub mod etcd_server;
pub mod wal;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// A store revision. 0 means "the latest" where a revision is optional.
pub type Revision = i64;

/// Something found by a string key of its own.
pub trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for KeyValue {
    fn key(&self) -> &str {
        &self.key
    }
}

impl<T: Keyed + ?Sized> Keyed for std::sync::Arc<T> {
    fn key(&self) -> &str {
        (**self).key()
    }
}

/// A [`Keyed`] value in a `BTreeSet`, ordered and found (through `Borrow<str>`) by its own
/// key: a map from key to value would hold every key twice.
#[derive(Debug)]
pub struct ByKey<T>(pub T);

impl<T: Keyed> std::borrow::Borrow<str> for ByKey<T> {
    fn borrow(&self) -> &str {
        self.0.key()
    }
}

impl<T: Keyed> PartialEq for ByKey<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}

impl<T: Keyed> Eq for ByKey<T> {}

impl<T: Keyed> PartialOrd for ByKey<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Keyed> Ord for ByKey<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key().cmp(other.0.key())
    }
}

/// One key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// Number of changes since creation, starting at 1.
    pub version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// After a put, the new value. After a delete, the key with `mod_revision` set to the
    /// deletion's revision and an empty value.
    pub kv: KeyValue,
    /// The value before the change, if the key existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Result of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// True when keys beyond `limit` remain.
    pub more: bool,
    /// The revision the read was served at.
    pub revision: Revision,
}

/// One message of a watch: the events of some revisions, and the revision the watcher is
/// now current to (every event at or below it has been delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    pub events: Vec<Event>,
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key {} already exists", .0.key)]
    AlreadyExists(Box<KeyValue>),
    #[error("key {0} not found")]
    NotFound(String),
    /// The guard failed: the key changed (or vanished) since the given mod revision.
    #[error("key {key} was modified concurrently")]
    Conflict {
        key: String,
        current: Option<Box<KeyValue>>,
    },
    /// The revision is older than the history kept; `compacted` is the oldest one held
    /// (0 when the backend does not say).
    #[error("revision {requested} has been compacted (oldest available: {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is newer than the store's revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("the store is shut down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch responses; ends with an error if the watch cannot continue.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse>> + Send>>;

/// A key-value store with etcd's semantics.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name, for logs and `skiff version`.
    fn backend(&self) -> &'static str;

    /// The value of `key` at `revision` (0: latest).
    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix` and not below `start` (empty: from the first), in key
    /// order, at most `limit` (0: no limit), at `revision` (0: latest).
    async fn range(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        revision: Revision,
    ) -> Result<RangeResult>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces `key` if its mod revision is still `expected`; else [`StoreError::Conflict`]
    /// (or [`StoreError::NotFound`] if the key is gone).
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue>;

    /// Deletes `key` if its mod revision is `expected` (0: unconditionally). Returns the
    /// deleted value with `mod_revision` set to the deletion's revision.
    async fn delete(&self, key: &str, expected: Revision) -> Result<KeyValue>;

    /// Watches keys under `prefix`, starting with the events of revision `start` (0: only
    /// changes after now). Fails with [`StoreError::Compacted`] if `start` is compacted.
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream>;

    /// Discards history below `revision` (etcd's compaction: `revision` itself stays
    /// readable and watchable).
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The latest revision.
    async fn current_revision(&self) -> Result<Revision>;
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
