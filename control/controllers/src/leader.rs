//! Leader election through a coordination.k8s.io Lease, as client-go's: the holder renews
//! `renewTime` every renew period; anyone may take the Lease once `renewTime +
//! leaseDurationSeconds` has passed (an optimistic-concurrency update, so two candidates
//! cannot both win). A holder that cannot renew within the lease duration steps down.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use skiff_api::Reason;
use skiff_client::events::micro_now;
use skiff_client::{Api, Client};

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn millis(t: &MicroTime) -> i64 {
    t.0.as_millisecond()
}

fn now_millis() -> i64 {
    micro_now().0.as_millisecond()
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        Elector {
            api: client.api::<Lease>(namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// One attempt to take or renew the Lease: true when this candidate holds it.
    pub async fn try_acquire(&self) -> bool {
        let secs = self.duration.as_secs().max(1) as i32;
        let current = match self.api.get_opt(&self.name).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "leader lease unreadable");
                return false;
            }
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return self.api.create(&lease).await.is_ok();
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() {
            let expires = spec.renew_time.as_ref().map_or(0, millis)
                + spec.lease_duration_seconds.unwrap_or(secs) as i64 * 1000;
            if expires > now_millis() {
                return false;
            }
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(micro_now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(micro_now());
        match self.api.update(&lease).await {
            Ok(_) => true,
            Err(e) => {
                if e.reason != Reason::Conflict {
                    tracing::debug!(error = %e, "leader lease update failed");
                }
                false
            }
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self, retry: Duration) {
        while !self.try_acquire().await {
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the Lease every `period`; returns when it could not be renewed for the
    /// lease duration (leadership lost).
    pub async fn hold(&self, period: Duration) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            if self.try_acquire().await {
                last = Instant::now();
            } else if last.elapsed() >= self.duration {
                return;
            }
        }
    }
}
