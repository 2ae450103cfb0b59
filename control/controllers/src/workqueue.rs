//! client-go's work queue: a key is queued at most once, never handed to two workers at
//! once (a key added while it is being processed is queued again when its worker is done),
//! and failures retry with per-key exponential backoff (5 ms doubling to 5 min).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    shutdown: bool,
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
}

impl WorkQueue {
    pub fn new() -> Arc<WorkQueue> {
        Arc::default()
    }

    pub fn add(&self, key: &str) {
        let mut s = self.state.lock();
        if s.shutdown || !s.dirty.insert(key.to_string()) {
            return;
        }
        if !s.processing.contains(key) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let (q, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(&key);
        });
    }

    /// Retries `key` after its backoff.
    pub fn add_rate_limited(self: &Arc<Self>, key: &str) {
        let n = {
            let mut s = self.state.lock();
            let n = s.failures.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        let delay = BASE_DELAY
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(MAX_DELAY);
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure count.
    pub fn forget(&self, key: &str) {
        self.state.lock().failures.remove(key);
    }

    /// The next key; None once shut down.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock();
                if let Some(k) = s.queue.pop_front() {
                    s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    if !s.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(k);
                }
                if s.shutdown {
                    return None;
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &str) {
        let mut s = self.state.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.notify.notify_waiters();
    }
}

/// Runs `workers` tasks taking keys from `queue` into `sync`; an error retries the key with
/// backoff, success forgets its failures.
pub fn run_workers<F, Fut>(
    name: &'static str,
    queue: Arc<WorkQueue>,
    workers: usize,
    sync: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(String) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<(), skiff_api::ApiError>> + Send + 'static,
{
    (0..workers.max(1))
        .map(|_| {
            let (queue, sync) = (queue.clone(), sync.clone());
            tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    match sync(key.clone()).await {
                        Ok(()) => queue.forget(&key),
                        Err(e) => {
                            tracing::debug!(controller = name, %key, error = %e, "sync failed; retrying");
                            queue.add_rate_limited(&key);
                        }
                    }
                    queue.done(&key);
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_requeued_if_added_while_processed() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.get().await.expect("key");
        assert_eq!(k, "a");
        q.add("a");
        assert_eq!(q.len(), 1, "not queued while processing");
        q.done("a");
        assert_eq!(q.get().await.as_deref(), Some("b"));
        assert_eq!(q.get().await.as_deref(), Some("a"));
        q.shutdown();
        assert!(q.get().await.is_none());
    }
}
