//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector,
//! adopting orphans that match and releasing owned pods that no longer do. Creations and
//! deletions are recorded as *expectations* and the set is not resized again until the
//! informer has seen them, so a slow watch never makes it create or delete twice (as
//! kube-controller-manager does). Pods are created in slow-start batches (1, 2, 4, ...),
//! so a template that cannot be admitted fails once, not `replicas` times. Surplus pods go
//! in kube-controller-manager's order: unscheduled, pending, not ready, most restarted,
//! youngest first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::Mutex;
use serde_json::json;
use skiff_api::selector::LabelSelector;
use skiff_api::{ApiError, Reason};
use skiff_client::events::{Recorder, reference};
use skiff_client::informer::{Event, Reader};
use skiff_client::{Client, DeleteParams};

use crate::util::{
    BY_CONTROLLER, candidates, controller_of, in_namespace, is_active, is_available, is_ready, key,
    owner_ref, owners_patch, split_key,
};
use crate::workqueue::WorkQueue;

/// Most pods created or deleted in one sync (kube-controller-manager's burstReplicas).
const BURST: usize = 500;
/// Expectations not met within this long are dropped (a lost event must not wedge a set).
const EXPECTATION_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expect {
    adds: i64,
    dels: HashSet<String>,
    at: Instant,
}

/// Pending creations and deletions per ReplicaSet key.
#[derive(Default)]
pub struct Expectations {
    map: Mutex<HashMap<String, Expect>>,
}

impl Expectations {
    fn expect(&self, key: &str, adds: i64, dels: HashSet<String>) {
        self.map.lock().insert(
            key.to_string(),
            Expect {
                adds,
                dels,
                at: Instant::now(),
            },
        );
    }

    fn satisfied(&self, key: &str) -> bool {
        match self.map.lock().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.dels.is_empty()) || e.at.elapsed() > EXPECTATION_TTL,
        }
    }

    fn created(&self, key: &str) {
        if let Some(e) = self.map.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    fn deleted(&self, key: &str, uid: &str) {
        if let Some(e) = self.map.lock().get_mut(key) {
            e.dels.remove(uid);
        }
    }

    fn forget(&self, key: &str) {
        self.map.lock().remove(key);
    }
}

pub struct ReplicaSetController {
    pub client: Client,
    pub sets: Reader<ReplicaSet>,
    pub pods: Reader<Pod>,
    pub queue: Arc<WorkQueue>,
    pub expectations: Expectations,
    pub recorder: Recorder,
}

fn selector_of(rs: &ReplicaSet) -> Result<LabelSelector, String> {
    let sel = rs
        .spec
        .as_ref()
        .map(|s| &s.selector)
        .cloned()
        .unwrap_or_default();
    let parsed = LabelSelector::from_k8s(&sel)?;
    if parsed.is_empty() {
        // An empty selector would select every pod of the namespace: select none.
        return Err("empty selector".into());
    }
    Ok(parsed)
}

fn labels(meta: &ObjectMeta) -> std::collections::BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// The sets in `pod`'s namespace that select it (for orphans).
fn matching_sets(sets: &Reader<ReplicaSet>, pod: &Pod) -> Vec<Arc<ReplicaSet>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let l = labels(&pod.metadata);
    in_namespace(sets, ns)
        .into_iter()
        .filter(|rs| selector_of(rs).is_ok_and(|s| s.matches(&l)))
        .collect()
}

/// Deletion order: the pod to delete first sorts first.
fn deletion_rank(p: &Pod) -> impl Ord {
    let assigned = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let restarts: i32 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    (
        assigned,
        phase,
        is_ready(p),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
    )
}

impl ReplicaSetController {
    /// Informer handler for ReplicaSets.
    pub fn on_set(&self, e: &Event<ReplicaSet>) {
        match e {
            Event::Added(rs) | Event::Updated { new: rs, .. } => self.queue.add(&key(&**rs)),
            Event::Deleted(rs) => {
                self.expectations.forget(&key(&**rs));
                self.queue.add(&key(&**rs));
            }
        }
    }

    fn owner_key(&self, pod: &Pod) -> Option<String> {
        let r = controller_of(&pod.metadata)?;
        if r.kind != "ReplicaSet" {
            return None;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        Some(format!("{ns}/{}", r.name))
    }

    /// Informer handler for pods.
    pub fn on_pod(&self, e: &Event<Pod>) {
        match e {
            Event::Added(p) => match self.owner_key(p) {
                Some(k) => {
                    self.expectations.created(&k);
                    if p.metadata.deletion_timestamp.is_some() {
                        self.expectations
                            .deleted(&k, p.metadata.uid.as_deref().unwrap_or_default());
                    }
                    self.queue.add(&k);
                }
                None => {
                    for rs in matching_sets(&self.sets, p) {
                        self.queue.add(&key(&*rs));
                    }
                }
            },
            Event::Updated { old, new } => {
                let (ok, nk) = (self.owner_key(old), self.owner_key(new));
                if new.metadata.deletion_timestamp.is_some()
                    && let Some(k) = &nk
                {
                    self.expectations
                        .deleted(k, new.metadata.uid.as_deref().unwrap_or_default());
                }
                if let Some(k) = &ok
                    && ok != nk
                {
                    self.queue.add(k);
                }
                match nk {
                    Some(k) => self.queue.add(&k),
                    None => {
                        if old.metadata.labels != new.metadata.labels || ok.is_some() {
                            for rs in matching_sets(&self.sets, new) {
                                self.queue.add(&key(&*rs));
                            }
                        }
                    }
                }
            }
            Event::Deleted(p) => {
                if let Some(k) = self.owner_key(p) {
                    self.expectations
                        .deleted(&k, p.metadata.uid.as_deref().unwrap_or_default());
                    self.queue.add(&k);
                }
            }
        }
    }

    /// Brings one ReplicaSet to its desired state.
    pub async fn sync(self: Arc<Self>, key_: String) -> Result<(), ApiError> {
        let Some(rs) = self.sets.get(&key_) else {
            self.expectations.forget(&key_);
            return Ok(());
        };
        let (ns, name) = split_key(&key_);
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let spec = rs.spec.clone().unwrap_or_default();
        let selector = match selector_of(&rs) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(rs = %key_, error = %e, "selector selects nothing");
                return Ok(());
            }
        };
        // Read before the pods: a creation observed between the two reads would otherwise
        // leave a pod list without it next to expectations that say it was seen, and the
        // set would create it twice (kube-controller-manager reads in this order too).
        let needs_sync = self.expectations.satisfied(&key_);
        let pods_api = self.client.api::<Pod>(ns);
        // Claim: owned pods that match stay, owned ones that do not are released, orphans
        // that match are adopted (unless the set is going away).
        let mut owned: Vec<Arc<Pod>> = Vec::new();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        for p in self.pods.by_index(BY_CONTROLLER, &uid) {
            if selector.matches(&labels(&p.metadata)) {
                owned.push(p);
            } else if p.metadata.deletion_timestamp.is_none() {
                let refs: Vec<_> = p
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect();
                let name = p.metadata.name.clone().unwrap_or_default();
                crate::util::unless_gone(
                    pods_api
                        .patch(
                            &name,
                            &owners_patch(&refs, p.metadata.resource_version.as_deref()),
                        )
                        .await,
                )?;
            }
        }
        if !deleting {
            for p in candidates(&self.pods, ns, &selector) {
                if controller_of(&p.metadata).is_some()
                    || !is_active(&p)
                    || !selector.matches(&labels(&p.metadata))
                {
                    continue;
                }
                let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
                refs.push(owner_ref(&*rs));
                let pname = p.metadata.name.clone().unwrap_or_default();
                match pods_api
                    .patch(
                        &pname,
                        &owners_patch(&refs, p.metadata.resource_version.as_deref()),
                    )
                    .await
                {
                    Ok(adopted) => owned.push(Arc::new(adopted)),
                    Err(ApiError {
                        reason: Reason::NotFound | Reason::Conflict,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
        let want = spec.replicas.unwrap_or(1).max(0) as usize;
        let mut result = Ok(());
        if !deleting && needs_sync {
            if active.len() < want {
                result = self.create_pods(&rs, ns, name, want - active.len()).await;
            } else if active.len() > want {
                result = self
                    .delete_pods(&key_, ns, &active, active.len() - want)
                    .await;
            }
        }
        self.update_status(&rs, ns, name, &owned).await?;
        result
    }

    async fn create_pods(
        &self,
        rs: &ReplicaSet,
        ns: &str,
        name: &str,
        count: usize,
    ) -> Result<(), ApiError> {
        let count = count.min(BURST);
        let key_ = format!("{ns}/{name}");
        self.expectations
            .expect(&key_, count as i64, HashSet::new());
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.to_string()),
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                finalizers: tmeta.finalizers,
                owner_references: Some(vec![owner_ref(rs)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let api = self.client.api::<Pod>(ns);
        let mut done = 0usize;
        let mut batch = 1usize;
        while done < count {
            let n = batch.min(count - done);
            let results = futures::future::join_all((0..n).map(|_| api.create(&pod))).await;
            let mut failed = None;
            for r in results {
                match r {
                    Ok(created) => self.recorder.record(
                        reference(rs),
                        "Normal",
                        "SuccessfulCreate",
                        &format!(
                            "Created pod: {}",
                            created.metadata.name.as_deref().unwrap_or_default()
                        ),
                    ),
                    Err(e) => {
                        self.expectations.created(&key_);
                        failed = Some(e);
                    }
                }
            }
            done += n;
            if let Some(e) = failed {
                // The creations not attempted will not be observed either.
                for _ in done..count {
                    self.expectations.created(&key_);
                }
                self.recorder.record(
                    reference(rs),
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {}", e.message),
                );
                return Err(e);
            }
            batch *= 2;
        }
        Ok(())
    }

    async fn delete_pods(
        &self,
        key_: &str,
        ns: &str,
        active: &[Arc<Pod>],
        count: usize,
    ) -> Result<(), ApiError> {
        let mut victims: Vec<&Arc<Pod>> = active.iter().collect();
        victims.sort_by_key(|p| deletion_rank(p));
        victims.truncate(count.min(BURST));
        let uids: HashSet<String> = victims
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.expectations.expect(key_, 0, uids);
        let api = self.client.api::<Pod>(ns);
        let results = futures::future::join_all(victims.iter().map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let api = api.clone();
            async move {
                let r = api
                    .delete(
                        &name,
                        &DeleteParams {
                            precondition_uid: uid.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
                (name, uid, r)
            }
        }))
        .await;
        let mut err = None;
        for (pname, uid, r) in results {
            match r {
                Ok(_) => {
                    if let Some(rs) = self.sets.get(key_) {
                        self.recorder.record(
                            reference(&*rs),
                            "Normal",
                            "SuccessfulDelete",
                            &format!("Deleted pod: {pname}"),
                        );
                    }
                }
                Err(e) => {
                    self.expectations.deleted(key_, &uid);
                    if e.reason != Reason::NotFound {
                        err = Some(e);
                    }
                }
            }
        }
        err.map_or(Ok(()), Err)
    }

    async fn update_status(
        &self,
        rs: &ReplicaSet,
        ns: &str,
        name: &str,
        owned: &[Arc<Pod>],
    ) -> Result<(), ApiError> {
        let spec = rs.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let template_labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
        let replicas = active.len() as i32;
        let fully_labeled = active
            .iter()
            .filter(|p| {
                let l = labels(&p.metadata);
                template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .count() as i32;
        let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
        let available = active.iter().filter(|p| is_available(p, min_ready)).count() as i32;
        let terminating = owned
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count() as i32;
        if ready > available {
            // Pods become available once ready long enough: look again then.
            self.queue_after(ns, name, Duration::from_secs(min_ready.max(1) as u64));
        }
        let status = rs.status.clone().unwrap_or_default();
        let generation = rs.metadata.generation.unwrap_or(0);
        if status.replicas == replicas
            && status.fully_labeled_replicas.unwrap_or(0) == fully_labeled
            && status.ready_replicas.unwrap_or(0) == ready
            && status.available_replicas.unwrap_or(0) == available
            && status.terminating_replicas.unwrap_or(0) == terminating
            && status.observed_generation.unwrap_or(0) == generation
        {
            return Ok(());
        }
        let patch = json!({"status": {
            "replicas": replicas, "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": ready, "availableReplicas": available,
            "terminatingReplicas": terminating,
            "observedGeneration": generation,
        }});
        crate::util::unless_gone(
            self.client
                .api::<ReplicaSet>(ns)
                .patch_status(name, &patch)
                .await,
        )
    }

    fn queue_after(&self, ns: &str, name: &str, d: Duration) {
        let (q, k) = (self.queue.clone(), format!("{ns}/{name}"));
        q.add_after(&k, d);
    }
}
