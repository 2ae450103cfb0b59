//! The etcd backend: the [`Store`] operations as etcd transactions, the way kube-apiserver
//! uses etcd (Txn comparing mod_revision, range by prefix, watch by prefix with prev_kv).

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use crate::{
    Event, EventKind, KeyValue, RangeResult, Result, Revision, Store, StoreError, WatchResponse,
    WatchStream, prefix_end,
};

/// A store backed by an etcd cluster.
pub struct EtcdStore {
    client: Client,
}

fn kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    }
}

fn map_err(e: etcd_client::Error, requested: Revision) -> StoreError {
    let text = e.to_string();
    if text.contains("required revision has been compacted") {
        StoreError::Compacted {
            requested,
            compacted: 0,
        }
    } else if text.contains("required revision is a future revision") {
        StoreError::FutureRevision {
            requested,
            current: 0,
        }
    } else {
        StoreError::Backend(format!("etcd: {text}"))
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map(|h| h.revision()).unwrap_or_default()
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://host:port` or `host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| {
                StoreError::Backend(format!("cannot connect to etcd {endpoints:?}: {e}"))
            })?;
        let store = EtcdStore { client };
        store.current_revision().await?;
        Ok(store)
    }

    /// Why a guarded update or delete failed, from its else branch's read of the key.
    fn guard_failed(key: &str, responses: Vec<TxnOpResponse>) -> StoreError {
        match Self::else_kv(responses) {
            Some(cur) => StoreError::Conflict {
                key: key.to_string(),
                current: Some(Box::new(cur)),
            },
            None => StoreError::NotFound(key.to_string()),
        }
    }

    /// The current value of `key`, read inside a failed transaction's else branch.
    fn else_kv(responses: Vec<TxnOpResponse>) -> Option<KeyValue> {
        responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(kv),
            _ => None,
        })
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>> {
        let resp = self
            .client
            .kv_client()
            .get(key, Some(GetOptions::new().with_revision(revision)))
            .await
            .map_err(|e| map_err(e, revision))?;
        Ok(resp.kvs().first().map(kv))
    }

    async fn range(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        revision: Revision,
    ) -> Result<RangeResult> {
        let from = if start.is_empty() || start < prefix {
            prefix
        } else {
            start
        };
        let options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit as i64)
            .with_revision(revision);
        let resp = self
            .client
            .kv_client()
            .get(from, Some(options))
            .await
            .map_err(|e| map_err(e, revision))?;
        Ok(RangeResult {
            kvs: resp.kvs().iter().map(kv).collect(),
            more: resp.more(),
            revision: if revision > 0 {
                revision
            } else {
                header_revision(resp.header())
            },
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_err(e, 0))?;
        if resp.succeeded() {
            let rev = header_revision(resp.header());
            return Ok(KeyValue {
                key: key.to_string(),
                value,
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            });
        }
        match Self::else_kv(resp.op_responses()) {
            Some(cur) => Err(StoreError::AlreadyExists(Box::new(cur))),
            // Created and deleted again in between: report the conflict.
            None => Err(StoreError::Conflict {
                key: key.to_string(),
                current: None,
            }),
        }
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        if expected <= 0 {
            return Err(StoreError::Backend(format!(
                "update of {key} needs the mod revision it replaces"
            )));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_err(e, 0))?;
        let rev = header_revision(resp.header());
        let succeeded = resp.succeeded();
        let responses = resp.op_responses();
        if succeeded {
            let prev = responses.iter().find_map(|r| match r {
                TxnOpResponse::Put(p) => p.prev_key().map(kv),
                _ => None,
            });
            let (create_revision, version) = prev
                .map(|p| (p.create_revision, p.version + 1))
                .unwrap_or((rev, 1));
            return Ok(KeyValue {
                key: key.to_string(),
                value,
                create_revision,
                mod_revision: rev,
                version,
            });
        }
        Err(Self::guard_failed(key, responses))
    }

    async fn delete(&self, key: &str, expected: Revision) -> Result<KeyValue> {
        let del = TxnOp::delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()));
        let txn = if expected > 0 {
            Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
                .and_then([del])
                .or_else([TxnOp::get(key, None)])
        } else {
            Txn::new()
                .when([Compare::create_revision(key, CompareOp::Greater, 0)])
                .and_then([del])
                .or_else([TxnOp::get(key, None)])
        };
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_err(e, 0))?;
        let rev = header_revision(resp.header());
        let succeeded = resp.succeeded();
        let responses = resp.op_responses();
        if succeeded {
            let prev = responses.iter().find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(kv),
                _ => None,
            });
            return match prev {
                Some(p) => Ok(KeyValue {
                    mod_revision: rev,
                    ..p
                }),
                None => Err(StoreError::NotFound(key.to_string())),
            };
        }
        Err(Self::guard_failed(key, responses))
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        let mut options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify();
        if start > 0 {
            // etcd reports a compacted start only after the watch is created, in a later
            // message; a count-only read at that revision tells now.
            let probe = self
                .client
                .kv_client()
                .get(
                    prefix,
                    Some(GetOptions::new().with_revision(start).with_count_only()),
                )
                .await
                .map_err(|e| map_err(e, start));
            match probe {
                Ok(_) | Err(StoreError::FutureRevision { .. }) => {}
                Err(e) => return Err(e),
            }
            options = options.with_start_revision(start);
        }
        let stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(|e| map_err(e, start))?;
        let (mut sender, mut responses) = stream.split();
        // The first message confirms creation (or reports a compacted start).
        let created = responses
            .message()
            .await
            .map_err(|e| map_err(e, start))?
            .ok_or_else(|| StoreError::Backend("etcd closed the watch".into()))?;
        if created.compact_revision() > 0 {
            return Err(StoreError::Compacted {
                requested: start,
                compacted: created.compact_revision(),
            });
        }
        if created.canceled() {
            return Err(StoreError::Backend(format!(
                "etcd cancelled the watch: {}",
                created.cancel_reason()
            )));
        }
        let first_revision = header_revision(created.header());
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream = async_stream_like(move |tx| async move {
            // With a start revision the first progress comes from etcd; without, we are
            // current to the creation header.
            if start <= 0
                && tx
                    .send(Ok(WatchResponse {
                        events: Vec::new(),
                        revision: first_revision,
                    }))
                    .await
                    .is_err()
            {
                return;
            }
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if sender.request_progress().await.is_err() {
                            let _ = tx.send(Err(StoreError::Backend("etcd watch closed".into()))).await;
                            return;
                        }
                    }
                    msg = responses.message() => {
                        let resp = match msg {
                            Ok(Some(resp)) => resp,
                            Ok(None) => {
                                let _ = tx.send(Err(StoreError::Backend("etcd watch closed".into()))).await;
                                return;
                            }
                            Err(e) => {
                                let _ = tx.send(Err(map_err(e, start))).await;
                                return;
                            }
                        };
                        if resp.compact_revision() > 0 {
                            let _ = tx.send(Err(StoreError::Compacted {
                                requested: start,
                                compacted: resp.compact_revision(),
                            })).await;
                            return;
                        }
                        if resp.canceled() {
                            let _ = tx.send(Err(StoreError::Backend(format!(
                                "etcd cancelled the watch: {}", resp.cancel_reason())))).await;
                            return;
                        }
                        let events: Vec<Event> = resp
                            .events()
                            .iter()
                            .filter_map(|e| {
                                let k = kv(e.kv()?);
                                let prev = e.prev_kv().map(kv);
                                Some(match e.event_type() {
                                    EventType::Put => Event { kind: EventKind::Put, kv: k, prev },
                                    EventType::Delete => Event { kind: EventKind::Delete, kv: k, prev },
                                })
                            })
                            .collect();
                        let revision = match events.last() {
                            Some(e) => e.revision(),
                            None => header_revision(resp.header()),
                        };
                        if tx.send(Ok(WatchResponse { events, revision })).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(stream)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| map_err(e, revision))?;
        Ok(())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .client
            .kv_client()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| map_err(e, 0))?;
        Ok(header_revision(resp.header()))
    }
}

/// Runs `body` as a task feeding a bounded channel, and returns the channel as a stream.
fn async_stream_like<F, Fut>(body: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<WatchResponse>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
