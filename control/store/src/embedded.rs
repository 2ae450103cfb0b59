//! The embedded backend: the whole current state in memory (a `BTreeMap`), made durable in a
//! redb file, with an in-memory event history for watches and reads at past revisions.
//!
//! Writes go through one committer thread. It takes every write waiting in its queue,
//! checks each against the state (plus the writes earlier in the same batch), gives each its
//! own revision, appends the batch to the write-ahead log as **one record with one
//! fdatasync** ([`crate::wal`]), and only then applies it to memory, publishes the events
//! and answers the writers. So many concurrent writers share one fsync (group commit), a
//! write is acknowledged only once it is durable, and readers never see a write that could
//! still be lost. A checkpointer thread writes the keys changed since the last checkpoint to
//! redb every few seconds and deletes the log segments that the checkpoint covers; opening
//! the store loads redb and replays the log after it.
//!
//! History is kept in memory only: after a restart, watches and reads resume from the
//! revision at start-up (older ones get `Compacted`, as kube-apiserver's watch cache does).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::wal;
use crate::{
    ByKey, Event, EventKind, KeyValue, RangeResult, Result, Revision, Store, StoreError,
    WatchResponse, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const HEADER: usize = 24;

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most events kept for watches and past reads.
    pub history_limit: usize,
    /// Events older than this are compacted away (Kubernetes compacts every 5 minutes).
    pub history_age: Duration,
    /// Most memory the history may hold beyond the current state (the values it alone
    /// keeps alive: those superseded since, plus its bookkeeping); a burst of writes
    /// compacts sooner rather than grow the server without bound.
    pub history_bytes: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// A checkpoint to redb starts when this much log was written since the last one...
    pub checkpoint_bytes: usize,
    /// ...or when this long passed with changes pending.
    pub checkpoint_every: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history_limit: 200_000,
            history_age: Duration::from_secs(300),
            history_bytes: 128 << 20,
            max_batch: 4096,
            checkpoint_bytes: 32 << 20,
            checkpoint_every: Duration::from_secs(5),
        }
    }
}

/// The current key-values.
#[derive(Default)]
struct Kvs(BTreeSet<ByKey<KeyValue>>);

impl Kvs {
    fn get(&self, key: &str) -> Option<&KeyValue> {
        self.0.get(key).map(|e| &e.0)
    }

    fn insert(&mut self, kv: KeyValue) {
        self.0.replace(ByKey(kv));
    }

    fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// Key-values from `from` on, in key order.
    fn from(&self, from: &str) -> impl Iterator<Item = &KeyValue> {
        self.0
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .map(|e| &e.0)
    }
}

struct State {
    kvs: Kvs,
    /// Every event with a revision at or above `oldest`, in revision order.
    history: VecDeque<Arc<Event>>,
    /// Sum of [`history_cost`] over `history`.
    history_bytes: usize,
    /// The first revision still held (etcd's compaction revision): watches may start there
    /// and reads may be served there.
    oldest: Revision,
    revision: Revision,
    /// (time, revision) samples used to compact by age.
    checkpoints: VecDeque<(Instant, Revision)>,
}

/// What the committer publishes after each durable batch.
struct Commit {
    events: Vec<Arc<Event>>,
    revision: Revision,
}

struct Shared {
    state: RwLock<State>,
    commits: broadcast::Sender<Arc<Commit>>,
}

enum Op {
    Create {
        key: String,
        value: Bytes,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Delete {
        key: String,
        expected: Revision,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The embedded store. Cheap to share behind an `Arc`; dropping the last handle stops the
/// committer and closes the database.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    ops: Option<mpsc::Sender<Op>>,
    committer: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue> {
    if raw.len() < HEADER {
        return Err(StoreError::Backend(format!("corrupt record for key {key}")));
    }
    let int = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
        i64::from_le_bytes(b)
    };
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: int(0),
        mod_revision: int(1),
        version: int(2),
        value: Bytes::copy_from_slice(&raw[HEADER..]),
    })
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("skiff.redb");
        // Reads are served from memory, so redb's page cache only needs what a commit
        // touches; its 1 GiB default would just grow the process.
        let db = Database::builder()
            .set_cache_size(32 << 20)
            .create(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        let mut kvs = Kvs::default();
        let mut revision = 0;
        {
            let txn = db.begin_read().map_err(backend)?;
            match txn.open_table(META) {
                Ok(meta) => {
                    if let Some(r) = meta.get("revision").map_err(backend)? {
                        revision = r.value();
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(backend(e)),
            }
            match txn.open_table(KV) {
                Ok(table) => {
                    for entry in table.iter().map_err(backend)? {
                        let (k, v) = entry.map_err(backend)?;
                        kvs.insert(decode(k.value(), v.value())?);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        // Replay what the log holds beyond the checkpoint, then checkpoint it at once so the
        // log does not grow across restarts.
        let wal_dir = dir.join("wal");
        let mut replayed: HashMap<String, Option<KeyValue>> = HashMap::new();
        let checkpointed = revision;
        revision = wal::replay(&wal_dir, checkpointed, |_, entries| {
            for e in entries {
                match e {
                    wal::Entry::Put(kv) => {
                        replayed.insert(kv.key.clone(), Some(kv.clone()));
                        kvs.insert(kv);
                    }
                    wal::Entry::Delete(key) => {
                        kvs.remove(&key);
                        replayed.insert(key, None);
                    }
                }
            }
        })?;
        if revision > checkpointed {
            checkpoint(&db, &replayed, revision)?;
            wal::remove_covered(&wal_dir, revision)?;
        }
        let log = wal::Wal::create(&wal_dir, revision + 1)?;
        wal::remove_covered(&wal_dir, revision)?;
        let (commits, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                kvs,
                history: VecDeque::new(),
                history_bytes: 0,
                oldest: revision + 1,
                revision,
                checkpoints: VecDeque::new(),
            }),
            commits,
        });
        let (jobs, job_rx) = mpsc::channel::<(HashMap<String, Option<KeyValue>>, Revision)>();
        let checkpointer = std::thread::Builder::new()
            .name("skiff-store-checkpoint".into())
            .spawn(move || run_checkpointer(db, wal_dir, job_rx))
            .map_err(backend)?;
        let (tx, rx) = mpsc::channel();
        let committer_shared = shared.clone();
        let committer = std::thread::Builder::new()
            .name("skiff-store-commit".into())
            .spawn(move || Committer::new(committer_shared, log, jobs, options).run(rx))
            .map_err(backend)?;
        Ok(EmbeddedStore {
            shared,
            ops: Some(tx),
            committer: Some(committer),
            checkpointer: Some(checkpointer),
        })
    }

    async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Number of events currently held for watches (for tests and metrics).
    pub fn history_len(&self) -> usize {
        self.shared.state.read().history.len()
    }

    /// The oldest revision still held; history below it is gone.
    pub fn oldest_revision(&self) -> Revision {
        self.shared.state.read().oldest
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.ops.take();
        // The committer owns the checkpointer's queue: once it is gone the checkpointer
        // finishes its last checkpoint and closes redb.
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
    }
}

struct Committer {
    shared: Arc<Shared>,
    log: wal::Wal,
    /// Keys changed since the last checkpoint was handed over, with their state now.
    dirty: HashMap<String, Option<KeyValue>>,
    dirty_bytes: usize,
    last_checkpoint: Instant,
    /// When the history was last trimmed (it takes the state's write lock, so not after
    /// every batch).
    last_trim: Instant,
    checkpoints: mpsc::Sender<(HashMap<String, Option<KeyValue>>, Revision)>,
    options: EmbeddedOptions,
}

/// Writes `changes` (the state of each changed key at `revision`) to redb, durably.
fn checkpoint(
    db: &Database,
    changes: &HashMap<String, Option<KeyValue>>,
    revision: Revision,
) -> Result<()> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut table = txn.open_table(KV).map_err(backend)?;
        // In key order: neighbouring inserts land on the same B-tree pages.
        let mut ordered: Vec<(&String, &Option<KeyValue>)> = changes.iter().collect();
        ordered.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (key, value) in ordered {
            match value {
                Some(kv) => {
                    table
                        .insert(key.as_str(), encode(kv).as_slice())
                        .map_err(backend)?;
                }
                None => {
                    table.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert("revision", revision).map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// The checkpointer thread: applies checkpoints in order. A failed one is kept and merged
/// with the next (never skipped: a later checkpoint must not drop log segments holding
/// changes that are not in redb yet).
fn run_checkpointer(
    db: Database,
    wal_dir: std::path::PathBuf,
    jobs: mpsc::Receiver<(HashMap<String, Option<KeyValue>>, Revision)>,
) {
    let mut pending: HashMap<String, Option<KeyValue>> = HashMap::new();
    while let Ok((changes, revision)) = jobs.recv() {
        pending.extend(changes);
        match checkpoint(&db, &pending, revision) {
            Ok(()) => {
                pending.clear();
                if let Err(e) = wal::remove_covered(&wal_dir, revision) {
                    tracing::warn!(error = %e, "cannot remove checkpointed log segments");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the log keeps every change and the next checkpoint retries")
            }
        }
    }
}

enum Reply {
    Kv(oneshot::Sender<Result<KeyValue>>, Result<KeyValue>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
}

impl Committer {
    fn new(
        shared: Arc<Shared>,
        log: wal::Wal,
        checkpoints: mpsc::Sender<(HashMap<String, Option<KeyValue>>, Revision)>,
        options: EmbeddedOptions,
    ) -> Self {
        Committer {
            shared,
            log,
            dirty: HashMap::new(),
            dirty_bytes: 0,
            last_checkpoint: Instant::now(),
            last_trim: Instant::now(),
            checkpoints,
            options,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.maintain();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
            self.maintain();
        }
    }

    fn commit(&mut self, batch: Vec<Op>) {
        let mut overlay: HashMap<String, Option<KeyValue>> = HashMap::new();
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut compactions = Vec::new();
        let start_revision;
        let mut rev;
        {
            let state = self.shared.state.read();
            start_revision = state.revision;
            rev = state.revision;
            let current =
                |overlay: &HashMap<String, Option<KeyValue>>, key: &str| match overlay.get(key) {
                    Some(v) => v.clone(),
                    None => state.kvs.get(key).cloned(),
                };
            for op in batch {
                match op {
                    Op::Create { key, value, reply } => {
                        if let Some(cur) = current(&overlay, &key) {
                            replies.push(Reply::Kv(
                                reply,
                                Err(StoreError::AlreadyExists(Box::new(cur))),
                            ));
                            continue;
                        }
                        rev += 1;
                        let kv = KeyValue {
                            key: key.clone(),
                            value,
                            create_revision: rev,
                            mod_revision: rev,
                            version: 1,
                        };
                        overlay.insert(key, Some(kv.clone()));
                        events.push(Arc::new(Event {
                            kind: EventKind::Put,
                            kv: kv.clone(),
                            prev: None,
                        }));
                        replies.push(Reply::Kv(reply, Ok(kv)));
                    }
                    Op::Update {
                        key,
                        value,
                        expected,
                        reply,
                    } => {
                        let cur = match guard(current(&overlay, &key), key.clone(), Some(expected))
                        {
                            Ok(cur) => cur,
                            Err(e) => {
                                replies.push(Reply::Kv(reply, Err(e)));
                                continue;
                            }
                        };
                        rev += 1;
                        let kv = KeyValue {
                            key: key.clone(),
                            value,
                            create_revision: cur.create_revision,
                            mod_revision: rev,
                            version: cur.version + 1,
                        };
                        overlay.insert(key, Some(kv.clone()));
                        events.push(Arc::new(Event {
                            kind: EventKind::Put,
                            kv: kv.clone(),
                            prev: Some(cur),
                        }));
                        replies.push(Reply::Kv(reply, Ok(kv)));
                    }
                    Op::Delete {
                        key,
                        expected,
                        reply,
                    } => {
                        let cur = match guard(
                            current(&overlay, &key),
                            key.clone(),
                            (expected != 0).then_some(expected),
                        ) {
                            Ok(cur) => cur,
                            Err(e) => {
                                replies.push(Reply::Kv(reply, Err(e)));
                                continue;
                            }
                        };
                        rev += 1;
                        overlay.insert(key.clone(), None);
                        let tombstone = KeyValue {
                            key,
                            value: Bytes::new(),
                            create_revision: cur.create_revision,
                            mod_revision: rev,
                            version: 0,
                        };
                        let removed = KeyValue {
                            value: cur.value.clone(),
                            mod_revision: rev,
                            ..tombstone.clone()
                        };
                        events.push(Arc::new(Event {
                            kind: EventKind::Delete,
                            kv: tombstone,
                            prev: Some(cur),
                        }));
                        replies.push(Reply::Kv(reply, Ok(removed)));
                    }
                    Op::Compact { revision, reply } => compactions.push((revision, reply)),
                }
            }
        }

        if rev != start_revision
            && let Err(e) = self.persist(&overlay, rev)
        {
            tracing::error!(error = %e, "store commit failed; writes of this batch are rejected");
            for r in replies {
                if let Reply::Kv(tx, Ok(_)) = r {
                    let _ = tx.send(Err(e.clone()));
                } else {
                    send(r);
                }
            }
            for (_, reply) in compactions {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }

        if rev != start_revision {
            for (key, value) in &overlay {
                self.dirty.insert(key.clone(), value.clone());
            }
            let mut state = self.shared.state.write();
            for (key, value) in overlay {
                match value {
                    Some(kv) => state.kvs.insert(kv),
                    None => state.kvs.remove(&key),
                }
            }
            state.history_bytes += events.iter().map(|e| history_cost(e)).sum::<usize>();
            state.history.extend(events.iter().cloned());
            state.revision = rev;
            drop(state);
            // No receiver is fine: nobody watches.
            let _ = self.shared.commits.send(Arc::new(Commit {
                events,
                revision: rev,
            }));
        }
        for r in replies {
            send(r);
        }
        for (revision, reply) in compactions {
            let result = self.compact(revision);
            replies_unit(reply, result);
        }
    }

    fn persist(
        &mut self,
        overlay: &HashMap<String, Option<KeyValue>>,
        rev: Revision,
    ) -> Result<()> {
        let size = self
            .log
            .append_batch(rev, overlay.iter().map(|(k, v)| (k.as_str(), v.as_ref())))?;
        self.dirty_bytes += size;
        Ok(())
    }

    /// Hands the changed keys to the checkpointer when enough log has piled up.
    fn maybe_checkpoint(&mut self) {
        if self.dirty.is_empty()
            || (self.dirty_bytes < self.options.checkpoint_bytes
                && self.last_checkpoint.elapsed() < self.options.checkpoint_every)
        {
            return;
        }
        let revision = self.shared.state.read().revision;
        let changes = std::mem::take(&mut self.dirty);
        self.dirty_bytes = 0;
        self.last_checkpoint = Instant::now();
        if self.checkpoints.send((changes, revision)).is_err() {
            tracing::error!("the checkpointer is gone; the log keeps growing");
        }
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.shared.state.write();
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        if revision < state.oldest {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: state.oldest,
            });
        }
        while state
            .history
            .front()
            .is_some_and(|e| e.revision() < revision)
        {
            if let Some(e) = state.history.pop_front() {
                state.history_bytes -= history_cost(&e);
            }
        }
        state.oldest = revision;
        Ok(())
    }

    /// Background work between batches: checkpoints, then compaction of the history
    /// (bounded in length and age).
    fn maintain(&mut self) {
        self.maybe_checkpoint();
        let now = Instant::now();
        if now.duration_since(self.last_trim) < Duration::from_millis(100) {
            return;
        }
        self.last_trim = now;
        let target =
            {
                let mut state = self.shared.state.write();
                let rev = state.revision;
                if state.checkpoints.back().is_none_or(|(t, r)| {
                    *r != rev && now.duration_since(*t) >= Duration::from_secs(1)
                }) {
                    state.checkpoints.push_back((now, rev));
                }
                let mut target = state.oldest;
                while let Some(&(t, r)) = state.checkpoints.front() {
                    if now.duration_since(t) < self.options.history_age {
                        break;
                    }
                    target = target.max(r);
                    state.checkpoints.pop_front();
                }
                let len = state.history.len();
                if len > self.options.history_limit {
                    target = target.max(state.history[len - self.options.history_limit].revision());
                }
                let mut excess = state
                    .history_bytes
                    .saturating_sub(self.options.history_bytes);
                for e in &state.history {
                    if excess == 0 {
                        target = target.max(e.revision());
                        break;
                    }
                    excess = excess.saturating_sub(history_cost(e));
                }
                target
            };
        let oldest = self.shared.state.read().oldest;
        if target > oldest {
            let _ = self.compact(target);
        }
    }
}

/// What one history event alone keeps in memory: the value it replaced (superseded, so held
/// by nothing else once the next event is gone too), its keys and its bookkeeping.
fn history_cost(e: &Event) -> usize {
    e.prev.as_ref().map_or(0, |p| p.value.len() + p.key.len()) + e.kv.key.len() + 256
}

/// The compare of a guarded update or delete: the key must exist and, when `expected` is
/// given, still be at that mod revision.
fn guard(current: Option<KeyValue>, key: String, expected: Option<Revision>) -> Result<KeyValue> {
    match current {
        None => Err(StoreError::NotFound(key)),
        Some(cur) if expected.is_some_and(|e| cur.mod_revision != e) => Err(StoreError::Conflict {
            key,
            current: Some(Box::new(cur)),
        }),
        Some(cur) => Ok(cur),
    }
}

fn send(r: Reply) {
    match r {
        Reply::Kv(tx, v) => {
            let _ = tx.send(v);
        }
        Reply::Unit(tx, v) => {
            let _ = tx.send(v);
        }
    }
}

fn replies_unit(tx: oneshot::Sender<Result<()>>, v: Result<()>) {
    send(Reply::Unit(tx, v));
}

fn check_read_revision(state: &State, revision: Revision) -> Result<Revision> {
    if revision == 0 || revision == state.revision {
        return Ok(state.revision);
    }
    if revision > state.revision {
        return Err(StoreError::FutureRevision {
            requested: revision,
            current: state.revision,
        });
    }
    if revision < state.oldest {
        return Err(StoreError::Compacted {
            requested: revision,
            compacted: state.oldest,
        });
    }
    Ok(revision)
}

/// Keys under `prefix` whose value at `revision` differs from now: key -> value then.
fn undo_since(
    state: &State,
    prefix: &str,
    revision: Revision,
) -> BTreeMap<String, Option<KeyValue>> {
    let mut fix = BTreeMap::new();
    for event in state.history.iter().rev() {
        if event.revision() <= revision {
            break;
        }
        if event.kv.key.starts_with(prefix) {
            // Walking backwards: the last write wins, i.e. the oldest event after `revision`.
            fix.insert(event.kv.key.clone(), event.prev.clone());
        }
    }
    fix
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>> {
        let state = self.shared.state.read();
        let at = check_read_revision(&state, revision)?;
        if at == state.revision {
            return Ok(state.kvs.get(key).cloned());
        }
        let fix = undo_since(&state, key, at);
        Ok(match fix.get(key) {
            Some(then) => then.clone(),
            None => state.kvs.get(key).cloned(),
        })
    }

    async fn range(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        revision: Revision,
    ) -> Result<RangeResult> {
        let state = self.shared.state.read();
        let at = check_read_revision(&state, revision)?;
        let from = if start.is_empty() || start < prefix {
            prefix
        } else {
            start
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        let fix = if at == state.revision {
            BTreeMap::new()
        } else {
            undo_since(&state, prefix, at)
        };
        let mut current = state
            .kvs
            .from(from)
            .take_while(|kv| kv.key.starts_with(prefix))
            .filter(|kv| !fix.contains_key(kv.key.as_str()))
            .peekable();
        let mut then = fix
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .filter_map(|(_, v)| v.as_ref())
            .peekable();
        let mut kvs = Vec::new();
        let mut more = false;
        loop {
            let next = match (current.peek(), then.peek()) {
                (None, None) => break,
                (Some(_), None) => current.next(),
                (None, Some(_)) => then.next(),
                (Some(a), Some(b)) => {
                    if a.key < b.key {
                        current.next()
                    } else {
                        then.next()
                    }
                }
            };
            let Some(kv) = next else { break };
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(kv.clone());
        }
        Ok(RangeResult {
            kvs,
            more,
            revision: at,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let key = key.to_string();
        self.submit(|reply| Op::Create { key, value, reply }).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let key = key.to_string();
        self.submit(|reply| Op::Update {
            key,
            value,
            expected,
            reply,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Revision) -> Result<KeyValue> {
        let key = key.to_string();
        self.submit(|reply| Op::Delete {
            key,
            expected,
            reply,
        })
        .await
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        let commits = self.shared.commits.subscribe();
        let (first, start, cursor) = {
            let state = self.shared.state.read();
            let start = if start <= 0 {
                state.revision + 1
            } else {
                start
            };
            if start < state.oldest {
                return Err(StoreError::Compacted {
                    requested: start,
                    compacted: state.oldest,
                });
            }
            let events: Vec<Event> = state
                .history
                .iter()
                .filter(|e| e.revision() >= start && e.kv.key.starts_with(prefix))
                .map(|e| (**e).clone())
                .collect();
            (events, start, state.revision)
        };
        let watch = EmbeddedWatch {
            shared: self.shared.clone(),
            prefix: prefix.to_string(),
            start,
            cursor,
            commits,
            first: Some(WatchResponse {
                events: first,
                revision: cursor,
            }),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            watch,
            |mut w| async move {
                let item = w.next().await?;
                Some((item, w))
            },
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(|reply| Op::Compact { revision, reply }).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.state.read().revision)
    }
}

struct EmbeddedWatch {
    shared: Arc<Shared>,
    prefix: String,
    start: Revision,
    /// Every event at or below this revision has been delivered.
    cursor: Revision,
    commits: broadcast::Receiver<Arc<Commit>>,
    first: Option<WatchResponse>,
    done: bool,
}

impl EmbeddedWatch {
    fn wanted(&self, e: &Event) -> bool {
        e.revision() > self.cursor
            && e.revision() >= self.start
            && e.kv.key.starts_with(&self.prefix)
    }

    async fn next(&mut self) -> Option<Result<WatchResponse>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        loop {
            match self.commits.recv().await {
                Ok(commit) => {
                    if commit.revision <= self.cursor {
                        continue;
                    }
                    let events = commit
                        .events
                        .iter()
                        .filter(|e| self.wanted(e))
                        .map(|e| (**e).clone())
                        .collect();
                    self.cursor = commit.revision;
                    return Some(Ok(WatchResponse {
                        events,
                        revision: self.cursor,
                    }));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the broadcast buffer: catch up from the history.
                    let state = self.shared.state.read();
                    if self.cursor + 1 < state.oldest {
                        self.done = true;
                        return Some(Err(StoreError::Compacted {
                            requested: self.cursor + 1,
                            compacted: state.oldest,
                        }));
                    }
                    let events = state
                        .history
                        .iter()
                        .filter(|e| self.wanted(e))
                        .map(|e| (**e).clone())
                        .collect();
                    self.cursor = state.revision;
                    return Some(Ok(WatchResponse {
                        events,
                        revision: self.cursor,
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(StoreError::Closed));
                }
            }
        }
    }
}
