//! The garbage collector: a graph of owner references over the kinds that own or are owned
//! (Deployments, ReplicaSets, Pods, Services, EndpointSlices, ConfigMaps, Secrets), fed by
//! the manager's informers.
//!
//! - Background (the default): once none of an object's owners exists any more, the
//!   object is deleted (and its own dependents follow the same way).
//! - Foreground: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted first (foreground too); the finalizer goes when the dependents
//!   that block owner deletion are gone, and then the owner itself.
//! - Orphan: an owner with the `orphan` finalizer has its reference removed from every
//!   dependent, then the finalizer goes; the dependents stay.
//!
//! An owner of a kind the graph does not track is looked up through the API.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use parking_lot::Mutex;
use serde_json::json;
use skiff_api::resource::RESOURCES;
use skiff_api::{ApiError, Reason};
use skiff_client::informer::Event;
use skiff_client::{Client, DeleteParams};

use crate::workqueue::WorkQueue;

/// One object of the graph. Compact, since every pod is one: the namespace and the owner
/// list are shared (the pods of a ReplicaSet have the same owners).
#[derive(Debug, Clone)]
struct Obj {
    plural: &'static str,
    namespace: Arc<str>,
    name: Box<str>,
    owners: Arc<[OwnerReference]>,
    deleting: bool,
    finalizers: Box<[String]>,
    /// The version this record describes: deletions are made on it, so a decision taken on
    /// a stale record (an owner reference removed since, by an orphaning) fails instead.
    resource_version: Box<str>,
}

#[derive(Default)]
struct Graph {
    objects: HashMap<Arc<str>, Obj>,
    dependents: HashMap<Arc<str>, HashSet<Arc<str>>>,
    namespaces: HashSet<Arc<str>>,
    /// Owner lists by their owners' uids.
    owner_lists: HashMap<String, Arc<[OwnerReference]>>,
}

impl Graph {
    fn namespace(&mut self, ns: &str) -> Arc<str> {
        if let Some(n) = self.namespaces.get(ns) {
            return n.clone();
        }
        let n: Arc<str> = ns.into();
        self.namespaces.insert(n.clone());
        n
    }

    fn owners(&mut self, owners: Vec<OwnerReference>) -> Arc<[OwnerReference]> {
        let key = owners
            .iter()
            .map(|o| o.uid.as_str())
            .collect::<Vec<_>>()
            .join(",");
        if let Some(shared) = self.owner_lists.get(&key)
            && **shared == *owners
        {
            return shared.clone();
        }
        let list: Arc<[OwnerReference]> = owners.into();
        if !list.is_empty() {
            self.owner_lists.insert(key, list.clone());
        }
        list
    }

    /// The uid as the graph holds it (shared by the object and its owners' dependents).
    fn uid(&self, uid: &str) -> Arc<str> {
        match self.objects.get_key_value(uid) {
            Some((k, _)) => k.clone(),
            None => self
                .dependents
                .get_key_value(uid)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| uid.into()),
        }
    }

    fn put(&mut self, uid: &str, obj: Obj) {
        self.remove(uid);
        let uid = self.uid(uid);
        for o in obj.owners.iter() {
            let owner = self.uid(&o.uid);
            self.dependents
                .entry(owner)
                .or_default()
                .insert(uid.clone());
        }
        self.objects.insert(uid, obj);
    }

    fn remove(&mut self, uid: &str) -> Option<Obj> {
        let obj = self.objects.remove(uid)?;
        for o in obj.owners.iter() {
            if let Some(d) = self.dependents.get_mut(o.uid.as_str()) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(o.uid.as_str());
                }
            }
        }
        // Held by the interner and this object alone: the last object with these owners.
        if Arc::strong_count(&obj.owners) <= 2 && !obj.owners.is_empty() {
            let key = obj
                .owners
                .iter()
                .map(|o| o.uid.as_str())
                .collect::<Vec<_>>()
                .join(",");
            if self
                .owner_lists
                .get(&key)
                .is_some_and(|l| Arc::ptr_eq(l, &obj.owners))
            {
                self.owner_lists.remove(&key);
            }
        }
        Some(obj)
    }
}

pub struct GarbageCollector {
    pub client: Client,
    pub queue: Arc<WorkQueue>,
    graph: Mutex<Graph>,
}

fn plural_of_kind(api_version: &str, kind: &str) -> Option<&'static str> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
        .map(|r| r.plural)
}

impl GarbageCollector {
    pub fn new(client: Client, queue: Arc<WorkQueue>) -> GarbageCollector {
        GarbageCollector {
            client,
            queue,
            graph: Mutex::default(),
        }
    }

    /// The informer handler of one tracked kind (`plural`).
    pub fn on_event<K>(&self, plural: &'static str, e: &Event<K>)
    where
        K: k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        match e {
            Event::Added(o) | Event::Updated { new: o, .. } => {
                let m = o.metadata();
                let uid = m.uid.clone().unwrap_or_default();
                let mut g = self.graph.lock();
                let obj = Obj {
                    plural,
                    namespace: g.namespace(m.namespace.as_deref().unwrap_or_default()),
                    name: m.name.as_deref().unwrap_or_default().into(),
                    owners: g.owners(m.owner_references.clone().unwrap_or_default()),
                    deleting: m.deletion_timestamp.is_some(),
                    finalizers: m.finalizers.clone().unwrap_or_default().into(),
                    resource_version: m.resource_version.as_deref().unwrap_or_default().into(),
                };
                let interesting = !obj.owners.is_empty()
                    || (obj.deleting
                        && obj
                            .finalizers
                            .iter()
                            .any(|f| f == "orphan" || f == "foregroundDeletion"));
                let owners: Vec<String> = obj.owners.iter().map(|o| o.uid.clone()).collect();
                g.put(&uid, obj);
                drop(g);
                if interesting {
                    self.queue.add(&uid);
                }
                // An owner waiting in foreground deletion re-checks as dependents change.
                for o in owners {
                    self.queue.add(&o);
                }
            }
            Event::Deleted(o) => {
                let uid = o.metadata().uid.clone().unwrap_or_default();
                let mut g = self.graph.lock();
                let removed = g.remove(&uid);
                let dependents: Vec<Arc<str>> = g
                    .dependents
                    .get(uid.as_str())
                    .map(|d| d.iter().cloned().collect())
                    .unwrap_or_default();
                drop(g);
                for d in dependents {
                    self.queue.add(&d);
                }
                for o in removed.iter().flat_map(|r| r.owners.iter()) {
                    self.queue.add(&o.uid);
                }
            }
        }
    }

    /// Whether `owner` (referenced from namespace `ns`) still exists: (exists, deleting in
    /// the foreground).
    async fn owner_state(
        &self,
        ns: &str,
        owner: &OwnerReference,
    ) -> Result<(bool, bool), ApiError> {
        if let Some(o) = self.graph.lock().objects.get(owner.uid.as_str()) {
            let fg = o.deleting && o.finalizers.iter().any(|f| f == "foregroundDeletion");
            return Ok((true, fg));
        }
        let Some(plural) = plural_of_kind(&owner.api_version, &owner.kind) else {
            return Ok((true, false)); // unknown kind: never assume it is gone
        };
        let info = RESOURCES.iter().find(|r| r.plural == plural);
        let ns = if info.is_some_and(|i| i.namespaced) {
            ns
        } else {
            ""
        };
        match self.client.get(plural, ns, &owner.name).await {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let same = v.pointer("/metadata/uid").and_then(|u| u.as_str()) == Some(&owner.uid);
                let fg = v
                    .pointer("/metadata/finalizers")
                    .and_then(|f| f.as_array())
                    .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"))
                    && v.pointer("/metadata/deletionTimestamp").is_some();
                Ok((same, same && fg))
            }
            Err(e) if e.reason == Reason::NotFound => Ok((false, false)),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, obj: &Obj, uid: &str, policy: &str) -> Result<(), ApiError> {
        match self
            .client
            .delete(
                obj.plural,
                &obj.namespace,
                &obj.name,
                &DeleteParams {
                    precondition_uid: uid.to_string(),
                    precondition_resource_version: obj.resource_version.to_string(),
                    propagation_policy: policy.into(),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_finalizer(&self, obj: &Obj, finalizer: &str) -> Result<(), ApiError> {
        let rest: Vec<&String> = obj.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": rest}});
        match self
            .client
            .patch(
                obj.plural,
                &obj.namespace,
                &obj.name,
                bytes::Bytes::from(patch.to_string()),
                "",
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.reason == Reason::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn sync(self: Arc<Self>, uid: String) -> Result<(), ApiError> {
        let (obj, dependents) = {
            let g = self.graph.lock();
            let Some(obj) = g.objects.get(uid.as_str()).cloned() else {
                return Ok(());
            };
            let deps: Vec<(Arc<str>, Obj)> = g
                .dependents
                .get(uid.as_str())
                .into_iter()
                .flatten()
                .filter_map(|d| g.objects.get(d).map(|o| (d.clone(), o.clone())))
                .collect();
            (obj, deps)
        };
        if obj.deleting && obj.finalizers.iter().any(|f| f == "orphan") {
            for (_, d) in &dependents {
                let refs: Vec<&OwnerReference> = d.owners.iter().filter(|o| o.uid != uid).collect();
                let patch = json!({"metadata": {"ownerReferences": refs}});
                crate::util::unless_gone(
                    self.client
                        .patch(
                            d.plural,
                            &d.namespace,
                            &d.name,
                            bytes::Bytes::from(patch.to_string()),
                            "",
                        )
                        .await,
                )?;
            }
            return self.remove_finalizer(&obj, "orphan").await;
        }
        if obj.deleting && obj.finalizers.iter().any(|f| f == "foregroundDeletion") {
            let mut blocking = 0;
            for (duid, d) in &dependents {
                let blocks = d
                    .owners
                    .iter()
                    .any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
                if blocks {
                    blocking += 1;
                }
                if !d.deleting {
                    self.delete(d, duid, "Foreground").await?;
                }
            }
            if blocking == 0 {
                return self.remove_finalizer(&obj, "foregroundDeletion").await;
            }
            return Ok(());
        }
        if obj.owners.is_empty() || obj.deleting {
            return Ok(());
        }
        let mut alive = false;
        let mut waiting_foreground = false;
        for o in obj.owners.iter() {
            let (exists, foreground) = self.owner_state(&obj.namespace, o).await?;
            if exists && !foreground {
                alive = true;
            }
            if foreground {
                waiting_foreground = true;
            }
        }
        if alive {
            return Ok(());
        }
        let policy = if waiting_foreground {
            "Foreground"
        } else {
            "Background"
        };
        self.delete(&obj, &uid, policy).await
    }
}
