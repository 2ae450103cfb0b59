//! The Deployment controller: one ReplicaSet per pod template (named by a hash of the
//! template, `pod-template-hash` added to its selector and labels), rolled out with
//! kube-controller-manager's rules:
//!
//! - RollingUpdate: the new set grows while the total stays within `replicas + maxSurge`;
//!   old sets shrink only while at least `replicas - maxUnavailable` pods stay available
//!   (unhealthy old pods go first). Percentages: surge rounds up, unavailable down.
//! - Recreate: every old set to zero, and the new set only once their pods are gone.
//!
//! Each set carries its revision (`deployment.kubernetes.io/revision`); rolling back to an
//! old template reuses its set under a new revision; sets beyond `revisionHistoryLimit`
//! that are scaled to zero are deleted. Status reports replicas, updated, ready,
//! available, unavailable, and the Available and Progressing conditions.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use skiff_api::selector::LabelSelector;
use skiff_api::{ApiError, Reason};
use skiff_client::events::{Recorder, reference};
use skiff_client::informer::{Event, Reader};
use skiff_client::{Client, DeleteParams};

use crate::util::{
    BY_CONTROLLER, controller_of, in_namespace, key, owner_ref, owners_patch, split_key,
};
use crate::workqueue::WorkQueue;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const TEMPLATE_HASH: &str = "pod-template-hash";

pub struct DeploymentController {
    pub client: Client,
    pub deployments: Reader<Deployment>,
    pub sets: Reader<ReplicaSet>,
    pub pods: Reader<Pod>,
    pub queue: Arc<WorkQueue>,
    pub recorder: Recorder,
}

/// FNV-1a, 32 bits.
fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in data {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The template's hash as Kubernetes spells it (digits mapped to a vowel-free alphabet).
pub fn template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(TEMPLATE_HASH);
    }
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if collision_count > 0 {
        bytes.extend_from_slice(collision_count.to_string().as_bytes());
    }
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| SAFE[b as usize % SAFE.len()] as char)
        .collect()
}

/// Whether two templates are the same once `pod-template-hash` is ignored.
fn same_template(a: Option<&PodTemplateSpec>, b: Option<&PodTemplateSpec>) -> bool {
    let strip = |t: Option<&PodTemplateSpec>| {
        let mut t = t.cloned().unwrap_or_default();
        if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.remove(TEMPLATE_HASH);
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    strip(a) == strip(b)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// The pods a set may still have: a set just scaled down keeps its pods until its
/// ReplicaSet controller has deleted them (and counted them in its status), so the surge
/// room counts the larger of the two and new pods never start next to old ones that have
/// not yet been told to stop.
fn occupied(rs: &ReplicaSet) -> i32 {
    let counted = rs.status.as_ref().map_or(0, |s| s.replicas);
    spec_replicas(rs).max(counted)
}

fn status_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// The available pods a set will keep: its status may still count pods it is about to
/// delete after being scaled down, so no more than its replicas count.
fn available(rs: &ReplicaSet) -> i32 {
    status_available(rs).min(spec_replicas(rs))
}

/// An int-or-percent of `total`, rounded up or down.
pub fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let v = v.cloned().unwrap_or(IntOrString::String(default.into()));
    match v {
        IntOrString::Int(n) => n.max(0),
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * total as f64 / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// (maxSurge, maxUnavailable) of a deployment; both zero becomes unavailable 1.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), replicas, true, "25%");
    let mut unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        "25%",
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

impl DeploymentController {
    pub fn on_deployment(&self, e: &Event<Deployment>) {
        let (Event::Added(d) | Event::Updated { new: d, .. } | Event::Deleted(d)) = e;
        self.queue.add(&key(&**d));
    }

    fn owner_of_set(&self, rs: &ReplicaSet) -> Option<String> {
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        match controller_of(&rs.metadata) {
            Some(r) if r.kind == "Deployment" => Some(format!("{ns}/{}", r.name)),
            Some(_) => None,
            None => {
                // An orphan: the deployments that select it may adopt it.
                let l = rs.metadata.labels.clone().unwrap_or_default();
                in_namespace(&self.deployments, ns)
                    .into_iter()
                    .find(|d| {
                        d.spec
                            .as_ref()
                            .and_then(|s| LabelSelector::from_k8s(&s.selector).ok())
                            .is_some_and(|s| !s.is_empty() && s.matches(&l))
                    })
                    .map(|d| key(&*d))
            }
        }
    }

    pub fn on_set(&self, e: &Event<ReplicaSet>) {
        let (Event::Added(rs) | Event::Updated { new: rs, .. } | Event::Deleted(rs)) = e;
        if let Some(k) = self.owner_of_set(rs) {
            self.queue.add(&k);
        }
    }

    /// Pods matter to Recreate (wait for old pods to go).
    pub fn on_pod(&self, e: &Event<Pod>) {
        let Event::Deleted(p) = e else { return };
        let Some(r) = controller_of(&p.metadata).filter(|r| r.kind == "ReplicaSet") else {
            return;
        };
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(rs) = self.sets.get(&format!("{ns}/{}", r.name))
            && let Some(k) = self.owner_of_set(&rs)
        {
            self.queue.add(&k);
        }
    }

    pub async fn sync(self: Arc<Self>, key_: String) -> Result<(), ApiError> {
        let Some(d) = self.deployments.get(&key_) else {
            return Ok(());
        };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let (ns, name) = split_key(&key_);
        let spec = d.spec.clone().unwrap_or_default();
        let Ok(selector) = LabelSelector::from_k8s(&spec.selector) else {
            return Ok(());
        };
        if selector.is_empty() {
            return Ok(());
        }
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let rs_api = self.client.api::<ReplicaSet>(ns);
        // Claim sets: owned, and adopt matching orphans.
        let mut sets: Vec<ReplicaSet> = self
            .sets
            .by_index(BY_CONTROLLER, &uid)
            .into_iter()
            .map(|s| (*s).clone())
            .collect();
        for rs in crate::util::candidates(&self.sets, ns, &selector) {
            if controller_of(&rs.metadata).is_none()
                && rs.metadata.deletion_timestamp.is_none()
                && selector.matches(&rs.metadata.labels.clone().unwrap_or_default())
            {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(owner_ref(&*d));
                let rname = rs.metadata.name.clone().unwrap_or_default();
                match rs_api
                    .patch(
                        &rname,
                        &owners_patch(&refs, rs.metadata.resource_version.as_deref()),
                    )
                    .await
                {
                    Ok(adopted) => sets.push(adopted),
                    Err(ApiError {
                        reason: Reason::NotFound | Reason::Conflict,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        sets.retain(|s| s.metadata.deletion_timestamp.is_none());
        sets.sort_by_key(|s| {
            (
                revision(s),
                s.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
            )
        });
        let replicas = spec.replicas.unwrap_or(1);
        let template = spec.template.clone();
        let new_idx = sets.iter().position(|s| {
            same_template(
                s.spec.as_ref().and_then(|x| x.template.as_ref()),
                Some(&template),
            )
        });
        let max_revision = sets.iter().map(revision).max().unwrap_or(0);

        if spec.paused == Some(true) {
            return self.update_status(&d, ns, name, &sets, new_idx).await;
        }
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let (surge, unavailable) = surge_and_unavailable(&d);

        if recreate {
            let mut scaled = false;
            for (i, s) in sets.iter_mut().enumerate() {
                if Some(i) != new_idx && spec_replicas(s) > 0 {
                    self.scale(s, 0, replicas, surge).await?;
                    scaled = true;
                }
            }
            if scaled {
                return self.update_status(&d, ns, name, &sets, new_idx).await;
            }
            // Old pods must be gone before new ones start.
            let old_pods = sets.iter().enumerate().any(|(i, s)| {
                Some(i) != new_idx
                    && self
                        .pods
                        .by_index(BY_CONTROLLER, s.metadata.uid.as_deref().unwrap_or_default())
                        .iter()
                        .any(|p| !crate::util::is_terminal(p))
            });
            if old_pods {
                return self.update_status(&d, ns, name, &sets, new_idx).await;
            }
        }

        // The new set: create it, or bring a reused one to the newest revision.
        let new_idx = match new_idx {
            Some(i) => {
                if revision(&sets[i]) < max_revision {
                    let rname = sets[i].metadata.name.clone().unwrap_or_default();
                    let updated = rs_api
                        .patch(&rname, &json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}}))
                        .await?;
                    sets[i] = updated;
                }
                i
            }
            None => {
                let initial = if recreate {
                    replicas
                } else {
                    let total: i32 = sets.iter().map(occupied).sum();
                    (replicas + surge - total).clamp(0, replicas)
                };
                let created = self
                    .create_set(&d, ns, name, &template, max_revision + 1, initial, surge)
                    .await?;
                sets.push(created);
                sets.len() - 1
            }
        };
        self.annotate_revision(&d, ns, name, revision(&sets[new_idx]))
            .await?;

        if !recreate {
            // Scale the new set up within the surge.
            let total: i32 = sets.iter().map(occupied).sum();
            let new_now = spec_replicas(&sets[new_idx]);
            let target = if new_now > replicas {
                replicas
            } else {
                let room = (replicas + surge - total).max(0);
                new_now + room.min(replicas - new_now)
            };
            if target != new_now {
                self.scale(&mut sets[new_idx], target, replicas, surge)
                    .await?;
            }
            // Scale old sets down while enough stays available.
            let min_available = replicas - unavailable;
            let new_unavailable =
                (spec_replicas(&sets[new_idx]) - available(&sets[new_idx])).max(0);
            let all: i32 = sets.iter().map(spec_replicas).sum();
            let mut budget = all - min_available - new_unavailable;
            if budget > 0 {
                // Unhealthy old pods first: they are not serving anyway.
                for (i, s) in sets.iter_mut().enumerate() {
                    if i == new_idx || budget <= 0 {
                        continue;
                    }
                    let unhealthy = (spec_replicas(s) - available(s)).max(0);
                    let cut = unhealthy.min(budget);
                    if cut > 0 {
                        let to = spec_replicas(s) - cut;
                        self.scale(s, to, replicas, surge).await?;
                        budget -= cut;
                    }
                }
                let avail: i32 = sets.iter().map(available).sum();
                let mut more = (avail - min_available).max(0);
                for (i, s) in sets.iter_mut().enumerate() {
                    if i == new_idx || more <= 0 {
                        continue;
                    }
                    let cut = spec_replicas(s).min(more);
                    if cut > 0 {
                        let to = spec_replicas(s) - cut;
                        self.scale(s, to, replicas, surge).await?;
                        more -= cut;
                    }
                }
            }
        }
        self.cleanup(&d, ns, &sets, new_idx).await?;
        self.update_status(&d, ns, name, &sets, Some(new_idx)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_set(
        &self,
        d: &Deployment,
        ns: &str,
        name: &str,
        template: &PodTemplateSpec,
        revision: i64,
        replicas: i32,
        surge: i32,
    ) -> Result<ReplicaSet, ApiError> {
        let mut collision = d
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        loop {
            let hash = template_hash(template, collision);
            let mut t = template.clone();
            let tm = t.metadata.get_or_insert_with(Default::default);
            tm.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(TEMPLATE_HASH.into(), hash.clone());
            let mut selector = d
                .spec
                .as_ref()
                .map(|s| s.selector.clone())
                .unwrap_or_default();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(TEMPLATE_HASH.into(), hash.clone());
            let mut labels = tm.labels.clone().unwrap_or_default();
            labels.insert(TEMPLATE_HASH.into(), hash.clone());
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.into()),
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        (REVISION.to_string(), revision.to_string()),
                        (DESIRED_REPLICAS.to_string(), want.to_string()),
                        (MAX_REPLICAS.to_string(), (want + surge).to_string()),
                    ])),
                    owner_references: Some(vec![owner_ref(d)]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(replicas),
                    min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                    selector,
                    template: Some(t),
                }),
                status: None,
            };
            match self.client.api::<ReplicaSet>(ns).create(&rs).await {
                Ok(created) => {
                    self.recorder.record(
                        reference(d),
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {name}-{hash} from 0 to {replicas}"),
                    );
                    return Ok(created);
                }
                Err(e) if e.reason == Reason::AlreadyExists => {
                    // A set of that name with another template: a hash collision.
                    let existing = self
                        .client
                        .api::<ReplicaSet>(ns)
                        .get(&format!("{name}-{hash}"))
                        .await?;
                    if same_template(
                        existing.spec.as_ref().and_then(|s| s.template.as_ref()),
                        Some(template),
                    ) && controller_of(&existing.metadata)
                        .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref())
                    {
                        return Ok(existing);
                    }
                    collision += 1;
                    self.client
                        .api::<Deployment>(ns)
                        .patch_status(name, &json!({"status": {"collisionCount": collision}}))
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn scale(
        &self,
        rs: &mut ReplicaSet,
        to: i32,
        desired: i32,
        surge: i32,
    ) -> Result<(), ApiError> {
        let from = spec_replicas(rs);
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let rname = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: desired.to_string(), MAX_REPLICAS: (desired + surge).to_string()}},
            "spec": {"replicas": to},
        });
        *rs = self
            .client
            .api::<ReplicaSet>(&ns)
            .patch(&rname, &patch)
            .await?;
        if from != to
            && let Some(owner) = controller_of(&rs.metadata)
            && let Some(d) = self.deployments.get(&format!("{ns}/{}", owner.name))
        {
            let verb = if to > from { "up" } else { "down" };
            self.recorder.record(
                reference(&*d),
                "Normal",
                "ScalingReplicaSet",
                &format!("Scaled {verb} replica set {rname} from {from} to {to}"),
            );
        }
        Ok(())
    }

    async fn annotate_revision(
        &self,
        d: &Deployment,
        ns: &str,
        name: &str,
        rev: i64,
    ) -> Result<(), ApiError> {
        let current = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .cloned();
        if current.as_deref() == Some(rev.to_string().as_str()) {
            return Ok(());
        }
        self.client
            .api::<Deployment>(ns)
            .patch(
                name,
                &json!({"metadata": {"annotations": {REVISION: rev.to_string()}}}),
            )
            .await
            .map(|_| ())
    }

    /// Deletes old sets beyond the revision history limit (only those scaled to zero).
    async fn cleanup(
        &self,
        d: &Deployment,
        ns: &str,
        sets: &[ReplicaSet],
        new_idx: usize,
    ) -> Result<(), ApiError> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let old: Vec<&ReplicaSet> = sets
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                *i != new_idx
                    && spec_replicas(s) == 0
                    && s.status.as_ref().map_or(0, |st| st.replicas) == 0
            })
            .map(|(_, s)| s)
            .collect();
        if old.len() <= limit {
            return Ok(());
        }
        for s in &old[..old.len() - limit] {
            let rname = s.metadata.name.clone().unwrap_or_default();
            crate::util::unless_gone(
                self.client
                    .api::<ReplicaSet>(ns)
                    .delete(&rname, &DeleteParams::default())
                    .await,
            )?;
        }
        Ok(())
    }

    async fn update_status(
        &self,
        d: &Deployment,
        ns: &str,
        name: &str,
        sets: &[ReplicaSet],
        new_idx: Option<usize>,
    ) -> Result<(), ApiError> {
        let replicas_wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = |s: &ReplicaSet| s.status.clone().unwrap_or_default();
        let replicas: i32 = sets.iter().map(|s| st(s).replicas).sum();
        let updated = new_idx.map_or(0, |i| st(&sets[i]).replicas);
        let ready: i32 = sets.iter().map(|s| st(s).ready_replicas.unwrap_or(0)).sum();
        let avail: i32 = sets.iter().map(status_available).sum();
        let terminating: i32 = sets
            .iter()
            .map(|s| st(s).terminating_replicas.unwrap_or(0))
            .sum();
        let unavailable = (replicas_wanted.max(replicas) - avail).max(0);
        let (_, max_unavailable) = surge_and_unavailable(d);
        let is_available = avail >= replicas_wanted - max_unavailable;
        let complete =
            updated == replicas_wanted && replicas == replicas_wanted && avail == replicas_wanted;
        let now = skiff_client::events::now();
        let old_conditions = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let condition = |t: &str, status: bool, reason: &str, message: String| {
            let status = if status { "True" } else { "False" };
            let previous = old_conditions.iter().find(|c| c.type_ == t);
            let transition = previous
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(now.clone());
            let same =
                previous.is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason));
            let update = if same {
                previous
                    .and_then(|c| c.last_update_time.clone())
                    .unwrap_or(now.clone())
            } else {
                now.clone()
            };
            json!({"type": t, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": transition, "lastUpdateTime": update})
        };
        let new_name = new_idx
            .and_then(|i| sets[i].metadata.name.clone())
            .unwrap_or_default();
        let conditions = vec![
            condition(
                "Available",
                is_available,
                if is_available {
                    "MinimumReplicasAvailable"
                } else {
                    "MinimumReplicasUnavailable"
                },
                if is_available {
                    "Deployment has minimum availability.".into()
                } else {
                    "Deployment does not have minimum availability.".into()
                },
            ),
            condition(
                "Progressing",
                true,
                if complete {
                    "NewReplicaSetAvailable"
                } else {
                    "ReplicaSetUpdated"
                },
                if complete {
                    format!("ReplicaSet \"{new_name}\" has successfully progressed.")
                } else {
                    format!("ReplicaSet \"{new_name}\" is progressing.")
                },
            ),
        ];
        let generation = d.metadata.generation.unwrap_or(0);
        let old = d.status.clone().unwrap_or_default();
        let cond_key =
            |c: &serde_json::Value| (c["type"].clone(), c["status"].clone(), c["reason"].clone());
        let same_conditions = old_conditions.len() == conditions.len()
            && conditions.iter().all(|c| {
                old_conditions
                    .iter()
                    .any(|o| cond_key(c) == (json!(o.type_), json!(o.status), json!(o.reason)))
            });
        if old.replicas.unwrap_or(0) == replicas
            && old.updated_replicas.unwrap_or(0) == updated
            && old.ready_replicas.unwrap_or(0) == ready
            && old.available_replicas.unwrap_or(0) == avail
            && old.unavailable_replicas.unwrap_or(0) == unavailable
            && old.terminating_replicas.unwrap_or(0) == terminating
            && old.observed_generation.unwrap_or(0) == generation
            && same_conditions
        {
            return Ok(());
        }
        let patch = json!({"status": {
            "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
            "availableReplicas": avail, "unavailableReplicas": unavailable,
            "terminatingReplicas": terminating,
            "observedGeneration": generation, "conditions": conditions,
        }});
        crate::util::unless_gone(
            self.client
                .api::<Deployment>(ns)
                .patch_status(name, &patch)
                .await,
        )
    }
}

/// The ReplicaSets of a Deployment with their revisions, oldest first (`rollout history`).
pub async fn history(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<(Deployment, Vec<(i64, ReplicaSet)>), ApiError> {
    let d = client.api::<Deployment>(ns).get(name).await?;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let sets = client
        .api::<ReplicaSet>(ns)
        .list(&skiff_client::ListParams::default())
        .await?;
    let mut out: Vec<(i64, ReplicaSet)> = sets
        .items
        .into_iter()
        .filter(|s| controller_of(&s.metadata).is_some_and(|r| r.uid == uid))
        .map(|s| (revision(&s), s))
        .collect();
    out.sort_by_key(|(r, _)| *r);
    Ok((d, out))
}

/// `rollout undo`: puts the template of revision `to` (0: the one before the current)
/// back into the Deployment; the controller then rolls it out as a new revision. Returns
/// the revision rolled back to.
pub async fn rollback(client: &Client, ns: &str, name: &str, to: i64) -> Result<i64, ApiError> {
    // The controller writes the Deployment's status meanwhile: on a conflict, read again and
    // redo (client-go's RetryOnConflict).
    let mut attempt = 0;
    loop {
        match rollback_once(client, ns, name, to).await {
            Err(e) if e.reason == Reason::Conflict && attempt < 5 => attempt += 1,
            done => return done,
        }
    }
}

async fn rollback_once(client: &Client, ns: &str, name: &str, to: i64) -> Result<i64, ApiError> {
    let (d, sets) = history(client, ns, name).await?;
    let current = sets.last().map(|(r, _)| *r).unwrap_or(0);
    let target = if to == 0 {
        sets.iter().rev().map(|(r, _)| *r).find(|r| *r < current)
    } else {
        sets.iter().map(|(r, _)| *r).find(|r| *r == to)
    };
    let Some(target) = target else {
        return Err(ApiError::bad_request(if to == 0 {
            "no rollout history found for deployment \"".to_string() + name + "\""
        } else {
            format!("unable to find specified revision {to} in history")
        }));
    };
    let Some((_, rs)) = sets.iter().find(|(r, _)| *r == target) else {
        return Err(ApiError::internal("revision vanished"));
    };
    let mut template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(l) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(TEMPLATE_HASH);
    }
    if same_template(Some(&template), d.spec.as_ref().map(|s| &s.template)) {
        return Ok(target);
    }
    // A whole update (a merge patch could not remove fields the old template lacks);
    // the resourceVersion guards against a concurrent change.
    let mut next = d.clone();
    if let Some(spec) = next.spec.as_mut() {
        spec.template = template;
    }
    client.api::<Deployment>(ns).update(&next).await?;
    Ok(target)
}
