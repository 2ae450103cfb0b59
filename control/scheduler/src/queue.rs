//! The scheduling queue, as kube-scheduler's: an active heap ordered by priority then
//! arrival, a backoff queue (1 s doubling to 10 s per failed attempt), and unschedulable
//! pods parked until a cluster event (a node added or changed, a pod removed) or at most
//! `UNSCHEDULABLE_MAX` later, so a pod waits for room rather than spinning.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use parking_lot::{Condvar, Mutex};

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const UNSCHEDULABLE_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    InFlight,
}

struct Entry {
    pod: Arc<Pod>,
    place: Place,
    attempts: u32,
    /// The pod changed while in flight: requeue it when done.
    dirty: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// (priority, Reverse(seq)) -> key; stale entries skipped on pop.
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BTreeSet<(Instant, String)>,
    /// Unschedulable pods by when they were parked (the oldest go back on their own).
    parked: BTreeSet<(Instant, String)>,
    seq: u64,
    closed: bool,
}

/// How a scheduling attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Bound (or gone): forget the pod.
    Done,
    /// No node fits: park it until the cluster changes.
    Unschedulable,
    /// Something failed (binding, API): retry after backoff.
    Retry,
}

#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn backoff(attempts: u32) -> Duration {
    let d = INITIAL_BACKOFF.saturating_mul(1 << attempts.saturating_sub(1).min(8));
    d.min(MAX_BACKOFF)
}

impl State {
    fn push_active(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if let Place::Unschedulable(t) = e.place {
            self.parked.remove(&(t, key.to_string()));
        }
        e.place = Place::Active;
        self.seq += 1;
        self.active
            .push((priority(&e.pod), Reverse(self.seq), key.to_string()));
    }

    /// Moves to the active heap the pods of the backoff queue (or, `parked`, of the
    /// unschedulable pool) whose time `due` says has come, oldest first.
    fn wake_due(&mut self, parked: bool, due: impl Fn(Instant) -> bool) {
        loop {
            let set = if parked {
                &mut self.parked
            } else {
                &mut self.backoff
            };
            let Some((t, key)) = set.first().cloned() else {
                return;
            };
            if !due(t) {
                return;
            }
            set.pop_first();
            let waiting = match self.entries.get(&key).map(|e| e.place) {
                Some(Place::Backoff(_)) => !parked,
                Some(Place::Unschedulable(_)) => parked,
                _ => false,
            };
            if waiting {
                self.push_active(&key);
            }
        }
    }
}

impl Queue {
    pub fn new() -> Queue {
        Queue::default()
    }

    /// Adds or updates a pending pod.
    pub fn add(&self, key: &str, pod: Arc<Pod>) {
        let mut s = self.state.lock();
        match s.entries.get_mut(key) {
            Some(e) => {
                e.pod = pod;
                match e.place {
                    Place::InFlight => e.dirty = true,
                    // An updated unschedulable pod may fit now.
                    Place::Unschedulable(_) => {
                        s.push_active(key);
                        self.ready.notify_one();
                    }
                    Place::Active | Place::Backoff(_) => {}
                }
            }
            None => {
                s.entries.insert(
                    key.to_string(),
                    Entry {
                        pod,
                        place: Place::Active,
                        attempts: 0,
                        dirty: false,
                    },
                );
                s.push_active(key);
                self.ready.notify_one();
            }
        }
    }

    /// Forgets a pod (deleted, or bound by someone else).
    pub fn remove(&self, key: &str) {
        let mut s = self.state.lock();
        match s.entries.remove(key).map(|e| e.place) {
            Some(Place::Backoff(t)) => {
                s.backoff.remove(&(t, key.to_string()));
            }
            Some(Place::Unschedulable(t)) => {
                s.parked.remove(&(t, key.to_string()));
            }
            _ => {}
        }
    }

    /// A cluster event: unschedulable pods try again (after their backoff).
    pub fn move_all_to_active(&self) {
        let mut s = self.state.lock();
        for (_, key) in std::mem::take(&mut s.parked) {
            let Some(e) = s.entries.get_mut(&key) else {
                continue;
            };
            let due = Instant::now() + backoff(e.attempts) / 2;
            e.place = Place::Backoff(due);
            s.backoff.insert((due, key));
        }
        self.ready.notify_all();
    }

    /// Takes the next pod to schedule, waiting up to `timeout`. None on timeout or close.
    pub fn pop(&self, timeout: Duration) -> Option<(String, Arc<Pod>)> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        loop {
            if s.closed {
                return None;
            }
            let now = Instant::now();
            // Backoffs that ended, and parked pods past UNSCHEDULABLE_MAX.
            s.wake_due(false, |t| t <= now);
            s.wake_due(true, |t| now.duration_since(t) > UNSCHEDULABLE_MAX);
            while let Some((_, _, key)) = s.active.pop() {
                if let Some(e) = s.entries.get_mut(&key)
                    && e.place == Place::Active
                {
                    e.place = Place::InFlight;
                    e.attempts += 1;
                    return Some((key, e.pod.clone()));
                }
            }
            let mut wake = deadline;
            if let Some((t, _)) = s.backoff.first() {
                wake = wake.min(*t);
            }
            if now >= deadline {
                return None;
            }
            self.ready
                .wait_until(&mut s, wake.min(now + UNSCHEDULABLE_MAX));
        }
    }

    /// Ends an attempt at `key`.
    pub fn done(&self, key: &str, outcome: Outcome) {
        let mut s = self.state.lock();
        let Some(e) = s.entries.get_mut(key) else {
            return;
        };
        if e.place != Place::InFlight {
            return;
        }
        let dirty = std::mem::take(&mut e.dirty);
        match outcome {
            Outcome::Done => {
                s.entries.remove(key);
            }
            Outcome::Unschedulable if dirty => s.push_active(key),
            Outcome::Unschedulable => {
                let t = Instant::now();
                e.place = Place::Unschedulable(t);
                s.parked.insert((t, key.to_string()));
            }
            Outcome::Retry => {
                let due = Instant::now() + backoff(e.attempts);
                e.place = Place::Backoff(due);
                s.backoff.insert((due, key.to_string()));
            }
        }
        self.ready.notify_one();
    }

    /// Pods waiting in any queue (not in flight).
    pub fn pending(&self) -> usize {
        self.state
            .lock()
            .entries
            .values()
            .filter(|e| e.place != Place::InFlight)
            .count()
    }

    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(prio: i32) -> Arc<Pod> {
        Arc::new(Pod {
            spec: Some(PodSpec {
                priority: Some(prio),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let q = Queue::new();
        q.add("a", pod(0));
        q.add("b", pod(10));
        q.add("c", pod(0));
        let order: Vec<String> = (0..3)
            .map(|_| q.pop(Duration::ZERO).expect("pod").0)
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
        assert!(q.pop(Duration::ZERO).is_none());
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_event_and_retries_back_off() {
        let q = Queue::new();
        q.add("a", pod(0));
        let (k, _) = q.pop(Duration::ZERO).expect("pod");
        q.done(&k, Outcome::Unschedulable);
        assert!(q.pop(Duration::from_millis(50)).is_none(), "parked");
        q.move_all_to_active();
        // attempts = 1: half of the 1 s backoff.
        let t = Instant::now();
        let (k, _) = q
            .pop(Duration::from_secs(2))
            .expect("retried after the event");
        assert!(t.elapsed() >= Duration::from_millis(400));
        q.done(&k, Outcome::Retry);
        assert!(q.pop(Duration::from_millis(100)).is_none(), "backing off");
        q.done(&k, Outcome::Done);
        assert_eq!(
            q.pending(),
            1,
            "done on a pod not in flight changes nothing"
        );
        q.remove(&k);
        assert_eq!(q.pending(), 0);
        // A parked pod removed is gone from every queue; an event wakes only the rest.
        q.add("b", pod(0));
        q.add("c", pod(0));
        for _ in 0..2 {
            let (k, _) = q.pop(Duration::ZERO).expect("pod");
            q.done(&k, Outcome::Unschedulable);
        }
        q.remove("b");
        q.move_all_to_active();
        let (k, _) = q.pop(Duration::from_secs(2)).expect("c retried");
        assert_eq!(k, "c");
        q.done(&k, Outcome::Done);
        assert_eq!(q.pending(), 0);
        let s = q.state.lock();
        assert!(s.parked.is_empty() && s.backoff.is_empty());
    }

    #[test]
    fn an_update_while_in_flight_requeues_an_unschedulable_pod() {
        let q = Queue::new();
        q.add("a", pod(0));
        let (k, _) = q.pop(Duration::ZERO).expect("pod");
        q.add("a", pod(5));
        q.done(&k, Outcome::Unschedulable);
        let (_, p) = q.pop(Duration::ZERO).expect("requeued at once");
        assert_eq!(priority(&p), 5);
    }
}
