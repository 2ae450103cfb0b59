//! One pod's worker: a task on the core its UID hashes to, owning everything about the
//! pod (sandbox, network, volumes, containers, status) so no lock is taken on the pod
//! path.
//!
//! The worker loops: apply the latest spec (start what should run: init containers one by
//! one, then the main containers; restart per `restartPolicy` with the kubelet's
//! CrashLoopBackOff: the first restart at once, then 10 s doubling to 300 s, reset once a
//! run lasted 10 minutes), publish the status if it changed, then wait for the next event
//! (a spec update, a container exit, a back-off ending). Deletion runs graceful
//! termination (SIGTERM; SIGKILL when the grace period ends), tears everything down and
//! removes the pod object. What the worker knows is also written to `state.json` in the
//! pod's directory, so a restarted agent adopts running containers instead of killing
//! them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Container as K8sContainer, Pod, Probe, Secret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skiff_api::Reason;
use skiff_client::DeleteParams;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::Core;
use super::logs::{self, LogFile};
use super::probe;
use super::volumes::{PodVolumes, VolumeError};
use crate::image::{ImageUnavailable, PullPolicy};
use crate::runtime::cgroup::{self, Cgroup, Resources};
use crate::runtime::client::Container;
use crate::runtime::sandbox::Sandbox;
use crate::runtime::{ContainerSpec, DEFAULT_CAPABILITIES, ExitStatus, Mount};

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    fn kind(self) -> &'static str {
        match self {
            Source::ConfigMap => "ConfigMap",
            Source::Secret => "Secret",
        }
    }
}

/// What a pod worker is told.
#[derive(Debug)]
pub enum PodMsg {
    Update(Arc<Pod>),
    /// The pod object is gone (force-deleted): stop everything now.
    Gone,
    Exited {
        idx: usize,
        run: u32,
        status: ExitStatus,
    },
    /// The agent is stopping: leave containers running (a new agent adopts them).
    Detach,
    /// Run a command in a container (the node API's exec).
    Exec {
        container: String,
        call: super::server::ExecCall,
        reply: super::server::ExecReply,
    },
    /// One probe result.
    Probe {
        idx: usize,
        run: u32,
        kind: probe::Kind,
        result: Result<(), String>,
    },
}

/// A finished run of a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Term {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    container_id: String,
}

struct Running {
    proc: Container,
    cgroup: Cgroup,
    started_at: DateTime<Utc>,
    id: String,
    /// Identity, env and cgroups for commands run inside it (probes, hooks).
    exec: ContainerSpec,
    /// The startup probe passed (or there is none).
    started: bool,
    /// The startup probe has passed (liveness and readiness probes run from then on).
    startup_passed: bool,
    /// The readiness probe says ready (or there is none).
    ready: bool,
    /// Consecutive successes and failures per probe kind.
    counts: HashMap<&'static str, (u32, u32)>,
    probes: Vec<tokio::task::JoinHandle<()>>,
    /// A liveness or startup failure asked for a restart.
    killing: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        for p in &self.probes {
            p.abort();
        }
    }
}

struct Ctr {
    name: String,
    init: bool,
    restart_count: u32,
    /// Run number of the current/last process (for matching exit messages).
    run: u32,
    running: Option<Running>,
    waiting: Option<(String, String)>,
    terminated: Option<Term>,
    last: Option<Term>,
    /// Current CrashLoopBackOff step (None: the next restart is immediate).
    backoff: Option<Duration>,
    not_before: Option<Instant>,
    image: String,
    image_id: String,
    ever_started: bool,
}

/// What survives an agent restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    ip: Option<Ipv4Addr>,
    init_done: bool,
    start_time: Option<DateTime<Utc>>,
    containers: Vec<PersistedCtr>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedCtr {
    name: String,
    restart_count: u32,
    run: u32,
    running: Option<(String, DateTime<Utc>)>,
    terminated: Option<Term>,
    last: Option<Term>,
    image_id: String,
    ever_started: bool,
    #[serde(default)]
    exec: Option<ContainerSpec>,
}

pub struct PodWorker {
    core: Rc<Core>,
    pod: Arc<Pod>,
    uid: String,
    ns: String,
    name: String,
    dir: PathBuf,
    log_dir: PathBuf,
    tx: UnboundedSender<PodMsg>,
    ip: Option<Ipv4Addr>,
    /// The pod's network is set up (`ip` stays None on a node without pod networking).
    net_ready: bool,
    sandbox: Option<Sandbox>,
    volumes: Option<PodVolumes>,
    setup_error: Option<VolumeError>,
    setup_retry: Option<Instant>,
    init_done: bool,
    ctrs: Vec<Ctr>,
    start_time: DateTime<Utc>,
    last_status: Option<Value>,
    /// The last `state.json` written.
    persisted: Option<Vec<u8>>,
    transitions: HashMap<String, (String, String)>,
    terminating: bool,
}

fn meta_str(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

/// Kubernetes' `$(VAR)` expansion (`$$` escapes; unknown references stay as written).
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Millicores and bytes of a container's resources.
fn resources(c: &K8sContainer) -> Resources {
    let get =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(|q| skiff_api::validation::parse_quantity(&q.0))
        };
    let r = c.resources.as_ref();
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    Resources {
        cpu_request_milli: get(requests, "cpu")
            .or(get(limits, "cpu"))
            .map(|v| (v * 1000.0).round() as u64),
        cpu_limit_milli: get(limits, "cpu").map(|v| (v * 1000.0).round() as u64),
        memory_limit: get(limits, "memory").map(|v| v as u64),
        pids_limit: None,
    }
}

impl PodWorker {
    pub fn new(core: Rc<Core>, pod: Arc<Pod>, tx: UnboundedSender<PodMsg>) -> PodWorker {
        let uid = meta_str(&pod.metadata.uid);
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = meta_str(&pod.metadata.name);
        let dir = core.shared.cfg.data_dir.join("pods").join(&uid);
        let log_dir = logs::pod_log_dir(&core.shared.cfg.log_dir, &ns, &name, &uid);
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ctrs = Vec::new();
        for (init, list) in [
            (true, spec.init_containers.unwrap_or_default()),
            (false, spec.containers),
        ] {
            for c in list {
                ctrs.push(Ctr {
                    name: c.name.clone(),
                    init,
                    restart_count: 0,
                    run: 0,
                    running: None,
                    waiting: Some(("ContainerCreating".into(), String::new())),
                    terminated: None,
                    last: None,
                    backoff: None,
                    not_before: None,
                    image: c.image.clone().unwrap_or_default(),
                    image_id: String::new(),
                    ever_started: false,
                });
            }
        }
        let init_done = !ctrs.iter().any(|c| c.init);
        PodWorker {
            core,
            pod,
            uid,
            ns,
            name,
            dir,
            log_dir,
            tx,
            ip: None,
            net_ready: false,
            sandbox: None,
            volumes: None,
            setup_error: None,
            setup_retry: None,
            init_done,
            ctrs,
            start_time: Utc::now(),
            last_status: None,
            persisted: None,
            transitions: HashMap::new(),
            terminating: false,
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn k8s_container(&self, idx: usize) -> Option<K8sContainer> {
        let spec = self.pod.spec.as_ref()?;
        let c = &self.ctrs[idx];
        let list = if c.init {
            spec.init_containers.as_ref()?
        } else {
            &spec.containers
        };
        list.iter().find(|k| k.name == c.name).cloned()
    }

    /// Runs the worker until the pod is gone (or the agent detaches).
    pub async fn run(mut self, mut rx: UnboundedReceiver<PodMsg>) {
        if let Err(e) = self.restore().await {
            tracing::warn!(pod = %self.name, error = %e, "cannot restore pod state");
        }
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&mut rx).await;
                self.teardown().await;
                self.final_delete().await;
                return;
            }
            self.sync().await;
            self.persist();
            if !self.publish().await {
                // The pod object is gone.
                self.kill_now(&mut rx).await;
                self.teardown().await;
                return;
            }
            let wake = self.next_wake();
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(wake) => continue,
            };
            match msg {
                Some(PodMsg::Update(p)) => self.pod = p,
                Some(PodMsg::Exited { idx, run, status }) => self.on_exit(idx, run, status).await,
                Some(PodMsg::Probe {
                    idx,
                    run,
                    kind,
                    result,
                }) => self.on_probe(idx, run, kind, result),
                Some(PodMsg::Exec {
                    container,
                    call,
                    reply,
                }) => self.exec(&container, call, reply),
                Some(PodMsg::Detach) => {
                    self.persist();
                    return;
                }
                Some(PodMsg::Gone) | None => {
                    self.kill_now(&mut rx).await;
                    self.teardown().await;
                    return;
                }
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        self.ctrs
            .iter()
            .filter(|c| c.running.is_none())
            .filter_map(|c| c.not_before)
            .chain(self.setup_retry)
            .min()
            .unwrap_or(far)
            .max(Instant::now())
    }

    // ---- sandbox, network, volumes -------------------------------------------------

    async fn setup(&mut self) -> Result<(), VolumeError> {
        let err = |m: String| VolumeError {
            reason: "CreatePodSandboxError",
            message: m,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| err(e.to_string()))?;
        let t = std::time::Instant::now();
        let hostname = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone());
        let host_network = self.host_network();
        if self.sandbox.is_none() {
            let paths = self
                .core
                .runtime
                .sandbox(&self.uid, &hostname, false)
                .await
                .map_err(|e| err(format!("sandbox: {e}")))?
                .ok_or_else(|| err("sandbox: the spawner made none".into()))?;
            self.sandbox = Some(Sandbox::held(paths));
        }
        tracing::debug!(pod = %self.name, us = t.elapsed().as_micros() as u64, "sandbox ready");
        if !self.net_ready {
            let shared = self.core.shared.clone();
            let net_path = self.sandbox.as_ref().map(|s| s.net.clone());
            let uid = self.uid.clone();
            let ip = tokio::task::spawn_blocking(move || -> Result<Option<Ipv4Addr>, String> {
                let Some(path) = net_path else {
                    return Ok(None);
                };
                let netns =
                    skiff_dataplane::netns::Netns::open(&path).map_err(|e| e.to_string())?;
                match (&shared.podnet, host_network) {
                    (_, true) => Ok(Some(shared.cfg.node_ip)),
                    (Some(pn), false) => {
                        let iface = pn.add_blocking(&uid, &netns).map_err(|e| e.to_string())?;
                        if let Some(dp) = &shared.dataplane {
                            dp.attach_pod(&uid, &iface)
                                .map_err(|e| format!("pod program on {}: {e}", iface.host_veth))?;
                        }
                        Ok(Some(iface.ip))
                    }
                    (None, false) => {
                        // No pod network on this node: loopback only.
                        netns
                            .block_on(async {
                                let nl = skiff_dataplane::netlink::Netlink::open()?;
                                nl.set_up("lo").await
                            })
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())?;
                        Ok(None)
                    }
                }
            })
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(format!("pod network: {e}")))?;
            self.ip = ip;
            self.net_ready = true;
        }
        tracing::debug!(pod = %self.name, us = t.elapsed().as_micros() as u64, "network ready");
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| err(e.to_string()))?;
        let mut hosts = "# Kubernetes-managed hosts file (Skiff).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string();
        if let Some(ip) = self.ip {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        let resolv = match &self.core.shared.cfg.cluster_dns {
            Some(dns) => format!(
                "search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {dns}\noptions ndots:5\n",
                ns = self.ns
            ),
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        for (f, body) in [
            ("hosts", hosts),
            ("resolv.conf", resolv),
            ("hostname", format!("{hostname}\n")),
        ] {
            std::fs::write(etc.join(f), body).map_err(|e| err(e.to_string()))?;
        }
        if self.volumes.is_none() {
            let v = PodVolumes::prepare(&self.pod, &self.dir, &self.core.client).await?;
            self.volumes = Some(v);
        }
        tracing::debug!(pod = %self.name, us = t.elapsed().as_micros() as u64, "volumes ready");
        Ok(())
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    // ---- the sync step ------------------------------------------------------------

    async fn sync(&mut self) {
        if self.volumes.is_none() {
            if self.setup_retry.is_some_and(|t| t > Instant::now()) {
                return;
            }
            match self.setup().await {
                Ok(()) => {
                    self.setup_error = None;
                    self.setup_retry = None;
                }
                Err(e) => {
                    tracing::info!(pod = %self.name, reason = e.reason, error = %e.message, "pod setup failed");
                    for c in &mut self.ctrs {
                        c.waiting = Some((e.reason.to_string(), e.message.clone()));
                    }
                    self.setup_error = Some(e);
                    self.setup_retry = Some(Instant::now() + Duration::from_secs(2));
                    return;
                }
            }
        }
        let policy = self.restart_policy();
        let now = Instant::now();
        if !self.init_done {
            let inits: Vec<usize> = (0..self.ctrs.len())
                .filter(|i| self.ctrs[*i].init)
                .collect();
            for i in inits {
                let c = &self.ctrs[i];
                if c.running.is_some() {
                    return;
                }
                match &c.terminated {
                    Some(t) if t.exit_code == 0 => continue,
                    Some(_) if policy == "Never" => return,
                    _ => {}
                }
                if c.not_before.is_none_or(|t| t <= now) {
                    self.start(i).await;
                }
                return;
            }
            self.init_done = true;
        }
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if c.init || c.running.is_some() {
                continue;
            }
            let wanted = match &c.terminated {
                None => true,
                Some(t) => match policy.as_str() {
                    "Always" => true,
                    "OnFailure" => t.exit_code != 0,
                    _ => false,
                },
            };
            if wanted && c.not_before.is_none_or(|t| t <= now) {
                self.start(i).await;
            }
        }
    }

    fn env_for(
        &self,
        c: &K8sContainer,
        image_env: &[String],
    ) -> impl Future<Output = Result<Vec<String>, VolumeError>> + '_ {
        let c = c.clone();
        let image_env = image_env.to_vec();
        async move {
            let mut env: BTreeMap<String, String> = BTreeMap::new();
            let mut order: Vec<String> = Vec::new();
            let mut set = |env: &mut BTreeMap<String, String>, k: String, v: String| {
                if !env.contains_key(&k) {
                    order.push(k.clone());
                }
                env.insert(k, v);
            };
            for e in &image_env {
                if let Some((k, v)) = e.split_once('=') {
                    set(&mut env, k.to_string(), v.to_string());
                }
            }
            let cfg_err = |m: String| VolumeError {
                reason: "CreateContainerConfigError",
                message: m,
            };
            for from in c.env_from.iter().flatten() {
                let prefix = from.prefix.clone().unwrap_or_default();
                let sources = [
                    from.config_map_ref
                        .as_ref()
                        .map(|r| (Source::ConfigMap, &r.name, r.optional)),
                    from.secret_ref
                        .as_ref()
                        .map(|r| (Source::Secret, &r.name, r.optional)),
                ];
                for (kind, name, optional) in sources.into_iter().flatten() {
                    if let Some(data) = self.data_of(kind, name, optional == Some(true)).await? {
                        for (k, v) in data {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                }
            }
            for e in c.env.iter().flatten() {
                let value = if let Some(v) = &e.value {
                    expand(v, &env)
                } else if let Some(from) = &e.value_from {
                    if let Some(f) = &from.field_ref {
                        self.field_value(&f.field_path)
                    } else if let Some((kind, name, key, optional)) = from
                        .config_map_key_ref
                        .as_ref()
                        .map(|r| (Source::ConfigMap, &r.name, &r.key, r.optional))
                        .or(from
                            .secret_key_ref
                            .as_ref()
                            .map(|r| (Source::Secret, &r.name, &r.key, r.optional)))
                    {
                        let optional = optional == Some(true);
                        match self
                            .data_of(kind, name, optional)
                            .await?
                            .map(|d| d.get(key).cloned())
                        {
                            Some(Some(v)) => v,
                            None => continue,
                            Some(None) if optional => continue,
                            Some(None) => {
                                return Err(cfg_err(format!(
                                    "couldn't find key {key} in {} {}/{name}",
                                    kind.kind(),
                                    self.ns
                                )));
                            }
                        }
                    } else if let Some(r) = &from.resource_field_ref {
                        let res = resources(&c);
                        match r.resource.as_str() {
                            "limits.cpu" => res.cpu_limit_milli.map_or_else(
                                || {
                                    std::thread::available_parallelism()
                                        .map_or(1, |n| n.get())
                                        .to_string()
                                },
                                |m| m.div_ceil(1000).to_string(),
                            ),
                            "limits.memory" => res.memory_limit.map_or_else(
                                || {
                                    super::node::capacity()
                                        .get("memory")
                                        .map(|q| q.0.clone())
                                        .unwrap_or_default()
                                },
                                |m| m.to_string(),
                            ),
                            "requests.cpu" => res
                                .cpu_request_milli
                                .unwrap_or(0)
                                .div_ceil(1000)
                                .to_string(),
                            _ => String::new(),
                        }
                    } else {
                        String::new()
                    }
                } else {
                    String::new()
                };
                set(&mut env, e.name.clone(), value);
            }
            Ok(order
                .into_iter()
                .map(|k| format!("{k}={}", env[&k]))
                .collect())
        }
    }

    /// The data of a ConfigMap or Secret of the pod's namespace (`None`: absent and
    /// optional); a missing required one is the pod's CreateContainerConfigError.
    async fn data_of(
        &self,
        kind: Source,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, String>>, VolumeError> {
        let err = |m: String| VolumeError {
            reason: "CreateContainerConfigError",
            message: m,
        };
        let data = match kind {
            Source::ConfigMap => self
                .core
                .client
                .api::<ConfigMap>(&self.ns)
                .get_opt(name)
                .await
                .map(|o| o.map(|cm| cm.data.unwrap_or_default())),
            Source::Secret => self
                .core
                .client
                .api::<Secret>(&self.ns)
                .get_opt(name)
                .await
                .map(|o| {
                    o.map(|s| {
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .collect()
                    })
                }),
        }
        .map_err(|e| err(e.to_string()))?;
        match data {
            Some(d) => Ok(Some(d)),
            None if optional => Ok(None),
            None => Err(err(format!(
                "{} \"{name}\" not found",
                kind.kind().to_lowercase()
            ))),
        }
    }

    fn field_value(&self, path: &str) -> String {
        let m = &self.pod.metadata;
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.core.shared.cfg.node_name.clone(),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            "status.hostIP" | "status.hostIPs" => self.core.shared.cfg.node_ip.to_string(),
            "status.podIP" | "status.podIPs" => self.ip.map(|i| i.to_string()).unwrap_or_default(),
            p => {
                let lookup = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
                    let key = p.strip_prefix(prefix)?.strip_suffix("']")?;
                    map.as_ref()?.get(key).cloned()
                };
                lookup(&m.labels, "metadata.labels['")
                    .or_else(|| lookup(&m.annotations, "metadata.annotations['"))
                    .unwrap_or_default()
            }
        }
    }

    /// Starts one run of container `idx`.
    async fn start(&mut self, idx: usize) {
        let Some(kc) = self.k8s_container(idx) else {
            return;
        };
        let shared = self.core.shared.clone();
        let t = std::time::Instant::now();
        // Image.
        let image_ref = kc.image.clone().unwrap_or_default();
        let policy = PullPolicy::resolve(kc.image_pull_policy.as_deref(), &image_ref);
        let image = match shared.images.ensure(&image_ref, policy).await {
            Ok(i) => i,
            Err(e) => {
                let c = &mut self.ctrs[idx];
                // A repeated pull failure is reported as the back-off it is.
                let reason = match (&e, c.waiting.as_ref()) {
                    (ImageUnavailable::Pull(_), Some((r, _)))
                        if r == "ErrImagePull" || r == "ImagePullBackOff" =>
                    {
                        "ImagePullBackOff"
                    }
                    _ => e.reason(),
                };
                let message = match reason {
                    "ImagePullBackOff" => format!("Back-off pulling image \"{image_ref}\""),
                    _ => e.to_string(),
                };
                self.fail_start(idx, reason, message);
                return;
            }
        };
        tracing::debug!(pod = %self.name, us = t.elapsed().as_micros() as u64, "image ready");
        let layers = match shared.images.layer_dirs(&image) {
            Ok(l) => l,
            Err(e) => {
                self.fail_start(idx, "CreateContainerError", e.to_string());
                return;
            }
        };
        let env = match self.env_for(&kc, &image.config.env).await {
            Ok(e) => e,
            Err(e) => {
                self.fail_start(idx, e.reason, e.message);
                return;
            }
        };
        let env_map: BTreeMap<String, String> = env
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let command = kc.command.clone().unwrap_or_default();
        let args = kc.args.clone().unwrap_or_default();
        let argv: Vec<String> = if !command.is_empty() {
            command
                .iter()
                .chain(args.iter())
                .map(|s| expand(s, &env_map))
                .collect()
        } else {
            let tail = if kc.args.is_some() {
                args.iter().map(|s| expand(s, &env_map)).collect()
            } else {
                image.config.cmd.clone()
            };
            image
                .config
                .entrypoint
                .iter()
                .cloned()
                .chain(tail)
                .collect()
        };
        // Identity and security.
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let sc = kc.security_context.clone().unwrap_or_default();
        let (img_uid, img_gid) = {
            let u = image.config.user.split(':').collect::<Vec<_>>();
            (
                u.first().and_then(|s| s.parse::<u32>().ok()),
                u.get(1).and_then(|s| s.parse::<u32>().ok()),
            )
        };
        let uid = sc
            .run_as_user
            .or(pod_sc.run_as_user)
            .map(|u| u as u32)
            .or(img_uid)
            .unwrap_or(0);
        let gid = sc
            .run_as_group
            .or(pod_sc.run_as_group)
            .map(|g| g as u32)
            .or(img_gid)
            .unwrap_or(0);
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true) && uid == 0 {
            self.fail_start(
                idx,
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root".into(),
            );
            return;
        }
        let mut groups: Vec<u32> = vec![gid];
        groups.extend(
            pod_sc
                .supplemental_groups
                .iter()
                .flatten()
                .map(|g| *g as u32),
        );
        groups.extend(pod_sc.fs_group.map(|g| g as u32));
        groups.dedup();
        let privileged = sc.privileged == Some(true);
        let mut caps: Vec<String> = if privileged {
            caps::all().iter().map(|c| c.to_string()).collect()
        } else {
            DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
        };
        if let Some(cs) = &sc.capabilities {
            let norm = |s: &String| {
                let u = s.to_uppercase();
                if u.starts_with("CAP_") {
                    u
                } else {
                    format!("CAP_{u}")
                }
            };
            for d in cs.drop.iter().flatten() {
                let d = norm(d);
                if d == "CAP_ALL" {
                    caps.clear();
                } else {
                    caps.retain(|c| *c != d);
                }
            }
            for a in cs.add.iter().flatten() {
                let a = norm(a);
                if a == "CAP_ALL" {
                    caps = caps::all().iter().map(|c| c.to_string()).collect();
                } else if !caps.contains(&a) {
                    caps.push(a);
                }
            }
        }
        let seccomp = !privileged
            && sc
                .seccomp_profile
                .as_ref()
                .or(pod_sc.seccomp_profile.as_ref())
                .is_none_or(|p| p.type_ != "Unconfined");
        // Mounts.
        let c = &self.ctrs[idx];
        let run = if c.ever_started {
            c.restart_count + 1
        } else {
            0
        };
        let run_id = format!("{}-{}-{}", &self.uid[..self.uid.len().min(8)], c.name, run);
        let run_dir = self
            .dir
            .join("containers")
            .join(format!("{}-{run}", c.name));
        let etc = self.dir.join("etc");
        let mut mounts = vec![
            Mount {
                source: etc.join("hosts"),
                target: "/etc/hosts".into(),
                readonly: false,
                file: true,
            },
            Mount {
                source: etc.join("resolv.conf"),
                target: "/etc/resolv.conf".into(),
                readonly: false,
                file: true,
            },
            Mount {
                source: etc.join("hostname"),
                target: "/etc/hostname".into(),
                readonly: false,
                file: true,
            },
        ];
        let term_path = kc
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let term_file = run_dir.join("termination-log");
        if let Some(vols) = &self.volumes {
            for vm in kc.volume_mounts.iter().flatten() {
                match vols.mount_for(vm) {
                    Ok(m) => mounts.push(m),
                    Err(e) => {
                        self.fail_start(idx, e.reason, e.message);
                        return;
                    }
                }
            }
        }
        let prepare = || -> std::io::Result<()> {
            // A failed earlier attempt of this run may have left its rootfs mounted (OCI
            // runtimes mount it on the host). Only then is the mount table read: it grows
            // with the node's pods.
            if run_dir.exists() {
                let _ = super::purge::unmount_under(&run_dir);
                let _ = std::fs::remove_dir_all(&run_dir);
            }
            for d in ["upper", "work", "rootfs"] {
                std::fs::create_dir_all(run_dir.join(d))?;
            }
            std::fs::write(&term_file, b"")?;
            // Any container user may write its termination message.
            std::os::unix::fs::PermissionsExt::set_mode(
                &mut std::fs::metadata(&term_file)?.permissions(),
                0o666,
            );
            std::fs::set_permissions(
                &term_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o666),
            )
        };
        if let Err(e) = prepare() {
            self.fail_start(
                idx,
                "CreateContainerError",
                format!("container directories: {e}"),
            );
            return;
        }
        mounts.push(Mount {
            source: term_file,
            target: term_path,
            readonly: false,
            file: true,
        });
        let rel = PathBuf::from(&shared.cfg.cgroup_parent)
            .join(format!("pod{}", self.uid))
            .join(&run_id);
        let cgroup = match Cgroup::create(
            &shared.hierarchy,
            &rel,
            shared.cfg.cgroup2.as_deref(),
            &resources(&kc),
        ) {
            Ok(c) => c,
            Err(e) => {
                self.fail_start(idx, "CreateContainerError", format!("cgroup: {e}"));
                return;
            }
        };
        tracing::debug!(pod = %self.name, us = t.elapsed().as_micros() as u64, "cgroup ready");
        let sandbox = self.sandbox.clone();
        let host_network = self.host_network();
        let spec = ContainerSpec {
            id: run_id.clone(),
            layers,
            upper: run_dir.join("upper"),
            work: run_dir.join("work"),
            rootfs: run_dir.join("rootfs"),
            argv,
            env,
            cwd: kc
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| image.config.working_dir.clone()),
            uid,
            gid,
            groups,
            capabilities: caps,
            hostname: String::new(),
            netns: if host_network {
                Some(
                    shared
                        .cfg
                        .node_netns
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net")),
                )
            } else {
                sandbox.as_ref().map(|s| s.net.clone())
            },
            ipcns: sandbox.as_ref().map(|s| s.ipc.clone()),
            utsns: sandbox.as_ref().map(|s| s.uts.clone()),
            cgroup_procs: cgroup.procs_files(),
            mounts,
            readonly_rootfs: sc.read_only_root_filesystem == Some(true),
            seccomp,
            // Stdio (descriptors, terminal, what the spawner keeps): `Stdio::new` below.
            stdin: None,
            stdout: None,
            stderr: None,
            tty: false,
            keep: Vec::new(),
            exec_in: None,
            oci_runtime: None,
            oci_bundle: None,
        };
        let mut spec = spec;
        if let Some(rt) = &shared.cfg.oci_runtime {
            let bundle = (|| -> std::io::Result<()> {
                crate::runtime::oci::mount_rootfs(&spec)?;
                crate::runtime::oci::write_bundle(&spec, &run_dir, &rel.to_string_lossy())
            })();
            if let Err(e) = bundle {
                self.fail_start(idx, "CreateContainerError", format!("OCI bundle: {e}"));
                let _ = nix::mount::umount2(&spec.rootfs, nix::mount::MntFlags::MNT_DETACH);
                let _ = cgroup.remove(Duration::from_millis(100));
                return;
            }
            spec.oci_runtime = Some(rt.clone());
            spec.oci_bundle = Some(run_dir.clone());
        }
        let exec_template = ContainerSpec {
            layers: Vec::new(),
            mounts: Vec::new(),
            keep: Vec::new(),
            oci_runtime: None,
            oci_bundle: None,
            ..spec.clone()
        };
        let log_path = logs::container_log(&self.log_dir, &self.ctrs[idx].name, run);
        let Ok(stdio) = Stdio::new(&mut spec, kc.stdin == Some(true), kc.tty == Some(true)) else {
            self.fail_start(
                idx,
                "CreateContainerError",
                "cannot create the container's stdio".into(),
            );
            let _ = cgroup.remove(Duration::from_millis(100));
            return;
        };
        let created = self.core.runtime.create(&spec, &stdio.sent()).await;
        let (out_r, err_r) = stdio.into_log_sources();
        let mut proc = match created {
            Ok(p) => p,
            Err(e) => {
                self.fail_start(idx, e.reason(), e.to_string());
                if shared.cfg.oci_runtime.is_some() {
                    let _ = nix::mount::umount2(
                        &run_dir.join("rootfs"),
                        nix::mount::MntFlags::MNT_DETACH,
                    );
                }
                let _ = cgroup.remove(Duration::from_millis(100));
                return;
            }
        };
        tracing::debug!(pod = %self.name, us = t.elapsed().as_micros() as u64, "process created");
        let log_cfg = (shared.cfg.log_max_bytes, shared.cfg.log_max_files);
        if let Some(out_r) = out_r {
            spawn_log_pumps(out_r, err_r, log_path, log_cfg);
        }
        let started = proc.started().await;
        tracing::debug!(pod = %self.name, us = t.elapsed().as_micros() as u64, "program executed");
        let c = &mut self.ctrs[idx];
        c.run = run;
        if c.ever_started {
            c.restart_count += 1;
        }
        c.ever_started = true;
        c.image_id = image.manifest.clone();
        c.image = image_ref.clone();
        if let Err(e) = started {
            // The process exists but never ran the program: it exits 127 at once.
            let _ = proc.wait().await;
            let _ = cgroup.remove(Duration::from_millis(500));
            let reason = e.reason();
            let now = Utc::now();
            c.last = c.terminated.take().or(c.last.take());
            c.terminated = Some(Term {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(e.to_string()),
                started_at: now,
                finished_at: now,
                container_id: run_id,
            });
            self.fail_start(idx, reason, e.to_string());
            return;
        }
        let exit = proc.take_exit();
        let tx = self.tx.clone();
        if let Some(exit) = exit {
            tokio::spawn(async move {
                if let Ok(status) = exit.await {
                    let _ = tx.send(PodMsg::Exited { idx, run, status });
                }
            });
        }
        if c.terminated.is_some() {
            c.last = c.terminated.take();
        }
        c.waiting = None;
        c.running = Some(Running {
            proc,
            cgroup,
            started_at: Utc::now(),
            id: run_id,
            exec: exec_template,
            started: true,
            startup_passed: false,
            ready: true,
            counts: HashMap::new(),
            probes: Vec::new(),
            killing: false,
        });
        let name = c.name.clone();
        self.event(
            "Normal",
            "Started",
            &format!("Started container {name}"),
            Some(idx),
        );
        self.start_probes(idx, &kc);
        tracing::debug!(pod = %self.name, container = %self.ctrs[idx].name, "container started");
    }

    /// Where probes and hooks of container `idx` run.
    fn target(&self, idx: usize, kc: &K8sContainer) -> Option<probe::Target> {
        let r = self.ctrs.get(idx)?.running.as_ref()?;
        Some(probe::Target {
            runtime: self.core.runtime.clone(),
            pid: r.proc.pid,
            exec_template: r.exec.clone(),
            pod_ip: self.ip.filter(|_| !self.host_network()),
            netns: self.sandbox.as_ref().map(|s| s.net.clone()),
            node_netns: self.core.shared.cfg.node_netns.clone(),
            container: kc.clone(),
        })
    }

    /// Starts the startup probe, or (without one) the liveness and readiness probes.
    fn start_probes(&mut self, idx: usize, kc: &K8sContainer) {
        let Some(target) = self.target(idx, kc) else {
            return;
        };
        let run = self.ctrs[idx].run;
        let startup_done = self.ctrs[idx]
            .running
            .as_ref()
            .is_some_and(|r| r.startup_passed);
        let kinds: Vec<(probe::Kind, Probe)> = if let Some(p) = &kc.startup_probe
            && !startup_done
        {
            vec![(probe::Kind::Startup, p.clone())]
        } else {
            let mut v = Vec::new();
            if let Some(p) = &kc.liveness_probe {
                v.push((probe::Kind::Liveness, p.clone()));
            }
            if let Some(p) = &kc.readiness_probe {
                v.push((probe::Kind::Readiness, p.clone()));
            }
            v
        };
        let Some(r) = self.ctrs[idx].running.as_mut() else {
            return;
        };
        if kc.startup_probe.is_some() && !r.startup_passed {
            r.started = false;
        }
        if kc.readiness_probe.is_some() {
            r.ready = false;
        }
        for (kind, p) in kinds {
            let tx = self.tx.clone();
            let target = target.clone();
            r.probes.push(tokio::task::spawn_local(async move {
                let t = probe::timing(&p);
                let Some(handler) = probe::probe_handler(&p) else {
                    return;
                };
                tokio::time::sleep(t.initial_delay).await;
                loop {
                    let result = probe::run(&target, &handler, t.timeout).await;
                    if tx
                        .send(PodMsg::Probe {
                            idx,
                            run,
                            kind,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(t.period).await;
                }
            }));
        }
    }

    fn on_probe(&mut self, idx: usize, run: u32, kind: probe::Kind, result: Result<(), String>) {
        let Some(kc) = self.k8s_container(idx) else {
            return;
        };
        let Some(c) = self.ctrs.get_mut(idx) else {
            return;
        };
        if c.run != run {
            return;
        }
        let name = c.name.clone();
        let Some(r) = c.running.as_mut() else { return };
        if r.killing {
            return;
        }
        let spec = match kind {
            probe::Kind::Startup => kc.startup_probe.clone(),
            probe::Kind::Liveness => kc.liveness_probe.clone(),
            probe::Kind::Readiness => kc.readiness_probe.clone(),
        };
        let Some(spec) = spec else { return };
        let t = probe::timing(&spec);
        let entry = r.counts.entry(kind.name()).or_insert((0, 0));
        match &result {
            Ok(()) => *entry = (entry.0 + 1, 0),
            Err(_) => *entry = (0, entry.1 + 1),
        }
        let (succ, fail) = *entry;
        tracing::debug!(pod = %self.name, container = %name, kind = kind.name(), ok = result.is_ok(), succ, fail, "probe");
        let mut restart = false;
        match (kind, &result) {
            (probe::Kind::Startup, Ok(())) => {
                r.started = true;
                r.startup_passed = true;
                for p in r.probes.drain(..) {
                    p.abort();
                }
                self.start_probes(idx, &kc);
                return;
            }
            (probe::Kind::Readiness, Ok(())) if succ >= t.success_threshold => r.ready = true,
            (probe::Kind::Readiness, Err(_)) if fail >= t.failure_threshold => r.ready = false,
            (probe::Kind::Liveness | probe::Kind::Startup, Err(_))
                if fail >= t.failure_threshold =>
            {
                restart = true;
                r.killing = true;
            }
            _ => {}
        }
        if let Err(msg) = &result {
            self.event(
                "Warning",
                "Unhealthy",
                &format!("{} probe failed: {msg}", kind.name()),
                Some(idx),
            );
        }
        if restart {
            let how = if kind == probe::Kind::Liveness {
                "liveness"
            } else {
                "startup"
            };
            self.event(
                "Normal",
                "Killing",
                &format!("Container {name} failed {how} probe, will be restarted"),
                Some(idx),
            );
            let grace = self.grace_seconds(spec.termination_grace_period_seconds);
            if let Some(r) = self.ctrs[idx].running.as_ref() {
                let _ = r.proc.signal(libc::SIGTERM);
                let pidfd = r.proc.pidfd().try_clone_to_owned().ok();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(Duration::from_secs(grace)).await;
                    if let Some(fd) = pidfd {
                        // SAFETY: pidfd_send_signal on a pidfd we own; at worst ESRCH.
                        unsafe {
                            libc::syscall(
                                libc::SYS_pidfd_send_signal,
                                std::os::fd::AsRawFd::as_raw_fd(&fd),
                                libc::SIGKILL,
                                std::ptr::null::<libc::siginfo_t>(),
                                0,
                            )
                        };
                    }
                });
            }
        }
    }

    /// The grace period in seconds: `first` if set, else the pod's
    /// terminationGracePeriodSeconds, else Kubernetes' 30.
    fn grace_seconds(&self, first: Option<i64>) -> u64 {
        first
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64
    }

    /// Runs a command in a running container; the reply carries its exit code and output.
    fn exec(
        &self,
        container: &str,
        call: super::server::ExecCall,
        reply: super::server::ExecReply,
    ) {
        let Some(idx) = self.ctrs.iter().position(|c| c.name == container) else {
            let _ = reply.try_send(Err(format!("container {container} not found")));
            return;
        };
        let target = self.k8s_container(idx).and_then(|kc| self.target(idx, &kc));
        let Some(target) = target else {
            let _ = reply.try_send(Err(format!("container {container} is not running")));
            return;
        };
        tokio::task::spawn_local(async move {
            probe::exec_streaming(&target, call, reply).await;
        });
    }

    /// Records a Kubernetes Event about this pod (or one of its containers).
    fn event(&self, kind: &str, reason: &str, message: &str, idx: Option<usize>) {
        let field = idx.and_then(|i| self.ctrs.get(i)).map(|c| {
            if c.init {
                format!("spec.initContainers{{{}}}", c.name)
            } else {
                format!("spec.containers{{{}}}", c.name)
            }
        });
        super::events::record(
            &self.core.client,
            &self.core.shared.cfg.node_name,
            &self.pod,
            kind,
            reason,
            message,
            field,
        );
    }

    /// Records a failed start: the container waits with `reason` and backs off.
    fn fail_start(&mut self, idx: usize, reason: &str, message: String) {
        tracing::info!(pod = %self.name, container = %self.ctrs[idx].name, reason, %message, "container not started");
        let base = self.core.shared.cfg.backoff_base;
        let max = self.core.shared.cfg.backoff_max;
        let c = &mut self.ctrs[idx];
        let delay = c.backoff.unwrap_or(base);
        c.backoff = Some((delay * 2).min(max));
        c.not_before = Some(Instant::now() + delay);
        c.waiting = Some((reason.to_string(), message));
    }

    async fn on_exit(&mut self, idx: usize, run: u32, status: ExitStatus) {
        let Some(c) = self.ctrs.get_mut(idx) else {
            return;
        };
        if c.run != run || c.running.is_none() {
            return;
        }
        let Some(r) = c.running.take() else { return };
        let oom = r.cgroup.oom_killed();
        let cg = r.cgroup.clone();
        // Dying descendants may keep the cgroup busy a moment: remove it off the core.
        tokio::task::spawn_blocking(move || cg.remove(Duration::from_secs(2)));
        let (started_at, id) = (r.started_at, r.id.clone());
        drop(r);
        self.finish(idx, status, started_at, id, oom);
    }

    /// Records the end of a run and decides when (and whether) the next one starts.
    fn finish(
        &mut self,
        idx: usize,
        status: ExitStatus,
        started_at: DateTime<Utc>,
        id: String,
        oom: bool,
    ) {
        let c = &mut self.ctrs[idx];
        let run = c.run;
        let finished = Utc::now();
        let code = status.code();
        let reason = if oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let run_dir = self
            .dir
            .join("containers")
            .join(format!("{}-{run}", c.name));
        let message = std::fs::read(run_dir.join("termination-log"))
            .ok()
            .filter(|m| !m.is_empty())
            .map(|m| String::from_utf8_lossy(&m[..m.len().min(4096)]).into_owned());
        c.terminated = Some(Term {
            exit_code: code,
            signal: match status {
                ExitStatus::Signaled(s) => Some(s),
                ExitStatus::Exited(_) => None,
            },
            reason: reason.into(),
            message,
            started_at,
            finished_at: finished,
            container_id: id,
        });
        tracing::info!(pod = %self.name, container = %c.name, code, reason, "container exited");
        if self.terminating {
            return;
        }
        let policy = self.restart_policy();
        let c = &mut self.ctrs[idx];
        let restart = match policy.as_str() {
            "Always" => !c.init || code != 0,
            "OnFailure" => code != 0,
            _ => false,
        };
        if !restart {
            c.waiting = None;
            return;
        }
        let cfg = &self.core.shared.cfg;
        // A run that lasted the reset period starts the back-off over.
        if (finished - started_at).to_std().unwrap_or_default() >= cfg.backoff_reset {
            c.backoff = None;
        }
        match c.backoff {
            None => {
                c.not_before = None;
                c.backoff = Some(cfg.backoff_base);
                c.waiting = None;
            }
            Some(d) => {
                let msg = format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name, self.name, self.ns, self.uid
                );
                super::events::record(
                    &self.core.client,
                    &cfg.node_name,
                    &self.pod,
                    "Warning",
                    "BackOff",
                    &msg,
                    Some(format!("spec.containers{{{}}}", c.name)),
                );
                c.not_before = Some(Instant::now() + d);
                c.backoff = Some((d * 2).min(cfg.backoff_max));
                c.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        d.as_secs(),
                        c.name,
                        self.name,
                        self.ns,
                        self.uid
                    ),
                ));
            }
        }
    }

    // ---- status -------------------------------------------------------------------

    fn phase(&self) -> &'static str {
        let policy = self.restart_policy();
        if !self.init_done {
            let failed = self
                .ctrs
                .iter()
                .any(|c| c.init && c.terminated.as_ref().is_some_and(|t| t.exit_code != 0));
            return if failed && policy == "Never" {
                "Failed"
            } else {
                "Pending"
            };
        }
        let main: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        if main.iter().any(|c| !c.ever_started && c.running.is_none()) {
            return "Pending";
        }
        if main.iter().any(|c| c.running.is_some()) {
            return "Running";
        }
        if policy == "Always" {
            return "Running";
        }
        let all_ok = main
            .iter()
            .all(|c| c.terminated.as_ref().is_some_and(|t| t.exit_code == 0));
        if all_ok {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    }

    fn state_json(c: &Ctr) -> (Value, Value) {
        let term = |t: &Term| {
            let mut v = json!({
                "exitCode": t.exit_code,
                "reason": t.reason,
                "startedAt": t.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "finishedAt": t.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "containerID": format!("skiff://{}", t.container_id),
            });
            if let Some(s) = t.signal {
                v["signal"] = json!(s);
            }
            if let Some(m) = &t.message {
                v["message"] = json!(m);
            }
            json!({ "terminated": v })
        };
        let state = if let Some(r) = &c.running {
            json!({"running": {"startedAt": r.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}})
        } else if let Some((reason, message)) = &c.waiting {
            let mut w = json!({ "reason": reason });
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({ "waiting": w })
        } else if let Some(t) = &c.terminated {
            term(t)
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        // While waiting to restart, the last run is `lastState`; once running again too.
        let last = if c.running.is_some() || c.waiting.is_some() {
            c.terminated.as_ref().or(c.last.as_ref()).map(term)
        } else {
            c.last.as_ref().map(term)
        };
        (state, last.unwrap_or_else(|| json!({})))
    }

    fn condition(&mut self, kind: &str, ok: bool, reason: &str, message: &str) -> Value {
        let status = if ok { "True" } else { "False" };
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let entry = self
            .transitions
            .entry(kind.to_string())
            .or_insert_with(|| (status.to_string(), now.clone()));
        if entry.0 != status {
            *entry = (status.to_string(), now);
        }
        let mut v = json!({"type": kind, "status": status, "lastTransitionTime": entry.1, "lastProbeTime": null});
        if !ok && !reason.is_empty() {
            v["reason"] = json!(reason);
            v["message"] = json!(message);
        }
        v
    }

    fn status(&mut self) -> Value {
        let statuses = |init: bool, ctrs: &[Ctr]| -> Vec<Value> {
            ctrs.iter()
                .filter(|c| c.init == init)
                .map(|c| {
                    let (state, last) = Self::state_json(c);
                    let mut v = json!({
                        "name": c.name,
                        "image": c.image,
                        "imageID": c.image_id,
                        "ready": !c.init && c.running.as_ref().is_some_and(|r| r.ready && r.started),
                        "started": c.running.as_ref().is_some_and(|r| r.started),
                        "restartCount": c.restart_count,
                        "state": state,
                        "lastState": last,
                    });
                    if let Some(id) = c
                        .running
                        .as_ref()
                        .map(|r| r.id.clone())
                        .or(c.terminated.as_ref().map(|t| t.container_id.clone()))
                    {
                        v["containerID"] = json!(format!("skiff://{id}"));
                    }
                    v
                })
                .collect()
        };
        let unready: Vec<String> = self
            .ctrs
            .iter()
            .filter(|c| !c.init && !c.running.as_ref().is_some_and(|r| r.ready && r.started))
            .map(|c| c.name.clone())
            .collect();
        let pending_init: Vec<String> = self
            .ctrs
            .iter()
            .filter(|c| c.init && c.terminated.as_ref().is_none_or(|t| t.exit_code != 0))
            .map(|c| c.name.clone())
            .collect();
        let ready = unready.is_empty() && self.init_done;
        let unready_msg = format!("containers with unready status: [{}]", unready.join(" "));
        let conditions = vec![
            self.condition("PodReadyToStartContainers", self.volumes.is_some(), "", ""),
            self.condition(
                "Initialized",
                self.init_done,
                "ContainersNotInitialized",
                &format!(
                    "containers with incomplete status: [{}]",
                    pending_init.join(" ")
                ),
            ),
            self.condition("Ready", ready, "ContainersNotReady", &unready_msg),
            self.condition("ContainersReady", ready, "ContainersNotReady", &unready_msg),
            self.condition("PodScheduled", true, "", ""),
        ];
        let host_ip = self.core.shared.cfg.node_ip.to_string();
        let mut status = json!({
            "phase": self.phase(),
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.start_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "containerStatuses": statuses(false, &self.ctrs),
        });
        let inits = statuses(true, &self.ctrs);
        if !inits.is_empty() {
            status["initContainerStatuses"] = json!(inits);
        }
        if let Some(ip) = self.ip.filter(|_| self.volumes.is_some()) {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{"ip": ip.to_string()}]);
        }
        status
    }

    /// Writes the status if it changed; false when the pod object is gone.
    async fn publish(&mut self) -> bool {
        let status = self.status();
        if self.last_status.as_ref() == Some(&status) {
            return true;
        }
        let api = self.core.client.api::<Pod>(&self.ns);
        match api
            .patch_status(&self.name, &json!({ "status": status }))
            .await
        {
            Ok(_) => {
                self.last_status = Some(status);
                true
            }
            Err(e) if e.reason == Reason::NotFound => false,
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "cannot write pod status");
                true
            }
        }
    }

    // ---- termination --------------------------------------------------------------

    fn signal_all(&self, sig: i32) {
        for c in &self.ctrs {
            if let Some(r) = &c.running {
                let _ = r.proc.signal(sig);
            }
        }
    }

    async fn wait_all(&mut self, rx: &mut UnboundedReceiver<PodMsg>, deadline: Instant) {
        while self.ctrs.iter().any(|c| c.running.is_some()) {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(deadline) => return,
            };
            match msg {
                Some(PodMsg::Exited { idx, run, status }) => self.on_exit(idx, run, status).await,
                Some(PodMsg::Update(p)) => self.pod = p,
                Some(PodMsg::Exec { reply, .. }) => {
                    let _ = reply.try_send(Err("the pod is terminating".into()));
                }
                Some(PodMsg::Detach | PodMsg::Gone | PodMsg::Probe { .. }) | None => {}
            }
        }
    }

    /// Graceful termination: SIGTERM, then SIGKILL when the grace period ends.
    async fn terminate(&mut self, rx: &mut UnboundedReceiver<PodMsg>) {
        self.terminating = true;
        let grace = self.grace_seconds(self.pod.metadata.deletion_grace_period_seconds);
        let deadline = Instant::now() + Duration::from_secs(grace);
        // preStop hooks first; their time counts against the grace period.
        let mut hooks = Vec::new();
        for idx in 0..self.ctrs.len() {
            let Some(kc) = self.k8s_container(idx) else {
                continue;
            };
            if self.ctrs[idx].running.is_none() {
                continue;
            }
            let name = self.ctrs[idx].name.clone();
            self.event(
                "Normal",
                "Killing",
                &format!("Stopping container {name}"),
                Some(idx),
            );
            let Some(pre) = kc.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) else {
                continue;
            };
            let Some(target) = self.target(idx, &kc) else {
                continue;
            };
            hooks.push(async move {
                let handler = if let Some(e) = &pre.exec {
                    Some(probe::Handler::Exec(e))
                } else if let Some(h) = &pre.http_get {
                    Some(probe::Handler::Http(h))
                } else {
                    pre.tcp_socket.as_ref().map(probe::Handler::Tcp)
                };
                if let Some(secs) = pre.sleep.as_ref().map(|s| s.seconds) {
                    tokio::time::sleep(Duration::from_secs(secs.max(0) as u64)).await;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let r = match handler {
                    Some(h) => probe::run(&target, &h, left.max(Duration::from_millis(1))).await,
                    None => Ok(()),
                };
                (name, r)
            });
        }
        let results = tokio::time::timeout_at(deadline, futures::future::join_all(hooks)).await;
        for (name, r) in results.unwrap_or_default() {
            if let Err(e) = r {
                let msg = format!("PreStopHook failed for container {name}: {e}");
                super::events::record(
                    &self.core.client,
                    &self.core.shared.cfg.node_name,
                    &self.pod,
                    "Warning",
                    "FailedPreStopHook",
                    &msg,
                    None,
                );
            }
        }
        self.signal_all(libc::SIGTERM);
        self.wait_all(rx, deadline).await;
        if self.ctrs.iter().any(|c| c.running.is_some()) {
            tracing::info!(pod = %self.name, grace, "grace period over: SIGKILL");
            self.signal_all(libc::SIGKILL);
            self.wait_all(rx, Instant::now() + Duration::from_secs(10))
                .await;
        }
        let _ = self.publish().await;
    }

    async fn kill_now(&mut self, rx: &mut UnboundedReceiver<PodMsg>) {
        self.terminating = true;
        self.signal_all(libc::SIGKILL);
        self.wait_all(rx, Instant::now() + Duration::from_secs(10))
            .await;
    }

    async fn teardown(&mut self) {
        let shared = self.core.shared.clone();
        let dir = self.dir.clone();
        let log_dir = self.log_dir.clone();
        let uid = self.uid.clone();
        let sandbox = self.sandbox.take().or_else(|| Sandbox::existing(&dir));
        let ip = self.ip.take();
        let host_network = self.host_network();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let rel = PathBuf::from(&shared.cfg.cgroup_parent).join(format!("pod{uid}"));
            cgroup::remove_tree(&shared.hierarchy, &rel, shared.cfg.cgroup2.as_deref());
            PodVolumes::teardown(&dir).map_err(|e| format!("volumes: {e}"))?;
            // OCI runtime rootfs mounts of containers that never reported an exit.
            let _ = super::purge::unmount_under(&dir.join("containers"));
            if let (Some(pn), Some(_), false) = (&shared.podnet, ip, host_network) {
                if let Some(dp) = &shared.dataplane {
                    dp.detach_pod(&uid);
                }
                pn.remove(&uid).map_err(|e| format!("pod network: {e}"))?;
            }
            if let Some(sb) = sandbox {
                sb.remove().map_err(|e| format!("sandbox: {e}"))?;
            }
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(&log_dir);
            Ok(())
        })
        .await;
        // Whatever this worker knew, the spawner lets go of any namespaces it holds for
        // the pod. Only now: the pod's network namespace ends with it, and its veth with
        // the namespace, while the pod network removes that veth itself above.
        if let Err(e) = self.core.runtime.release_sandbox(&self.uid).await {
            tracing::warn!(pod = %self.name, error = %e, "cannot release the sandbox");
        }
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(pod = %self.name, error = %e, "teardown incomplete"),
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "teardown panicked"),
        }
    }

    async fn final_delete(&self) {
        let api = self.core.client.api::<Pod>(&self.ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            precondition_uid: self.uid.clone(),
            ..Default::default()
        };
        match api.delete(&self.name, &params).await {
            Ok(_) => {}
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => {}
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "cannot remove the pod object"),
        }
    }

    // ---- persistence and adoption -------------------------------------------------

    /// Writes `state.json` when what it holds changed (not on every probe result).
    fn persist(&mut self) {
        let p = Persisted {
            ip: self.ip,
            init_done: self.init_done,
            start_time: Some(self.start_time),
            containers: self
                .ctrs
                .iter()
                .map(|c| PersistedCtr {
                    name: c.name.clone(),
                    restart_count: c.restart_count,
                    run: c.run,
                    running: c.running.as_ref().map(|r| (r.id.clone(), r.started_at)),
                    exec: c.running.as_ref().map(|r| r.exec.clone()),
                    terminated: c.terminated.clone(),
                    last: c.last.clone(),
                    image_id: c.image_id.clone(),
                    ever_started: c.ever_started,
                })
                .collect(),
        };
        if !self.dir.exists() {
            return;
        }
        let Ok(body) = serde_json::to_vec(&p) else {
            return;
        };
        if self.persisted.as_deref() == Some(body.as_slice()) {
            return;
        }
        if overwrite_padded(&self.dir.join("state.json"), &body).is_ok() {
            self.persisted = Some(body);
        }
    }

    /// Picks up where a previous agent left this pod: running containers are adopted.
    async fn restore(&mut self) -> Result<(), String> {
        let Ok(body) = std::fs::read(self.dir.join("state.json")) else {
            return Ok(());
        };
        let p: Persisted = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        self.init_done = p.init_done || self.init_done;
        if let Some(t) = p.start_time {
            self.start_time = t;
        }
        self.sandbox = match self.core.runtime.sandbox(&self.uid, "", true).await {
            Ok(Some(paths)) => Some(Sandbox::held(paths)),
            Ok(None) => Sandbox::existing(&self.dir),
            Err(e) => return Err(format!("sandbox: {e}")),
        };
        if self.sandbox.is_some() {
            self.ip = p.ip;
            self.net_ready = p.ip.is_some() || self.core.shared.podnet.is_none();
            // The previous agent's pod program and registration went with its process:
            // attach and register again (the interface as the kernel has it).
            if let (Some(dp), Some(pn), Some(sandbox), Some(_), false) = (
                &self.core.shared.dataplane,
                &self.core.shared.podnet,
                &self.sandbox,
                p.ip,
                self.host_network(),
            ) {
                let iface = skiff_dataplane::netns::Netns::open(&sandbox.net)
                    .map_err(|e| e.to_string())
                    .and_then(|ns| pn.interface(&self.uid, &ns).map_err(|e| e.to_string()));
                let attached = match iface {
                    Ok(Some(iface)) => dp.attach_pod(&self.uid, &iface),
                    Ok(None) => Err("the pod holds no address".to_string()),
                    Err(e) => Err(e),
                };
                if let Err(e) = attached {
                    tracing::warn!(pod = %self.name, error = %e, "cannot re-attach the pod program");
                }
            }
        }
        let mut ids = Vec::new();
        for pc in &p.containers {
            if let Some(c) = self.ctrs.iter_mut().find(|c| c.name == pc.name) {
                c.restart_count = pc.restart_count;
                c.run = pc.run;
                c.terminated = pc.terminated.clone();
                c.last = pc.last.clone();
                c.image_id = pc.image_id.clone();
                c.ever_started = pc.ever_started;
                if let Some((id, _)) = &pc.running {
                    ids.push(id.clone());
                }
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let (live, exited) = self
            .core
            .runtime
            .adopt(ids)
            .await
            .map_err(|e| e.to_string())?;
        let shared = self.core.shared.clone();
        for mut proc in live {
            let Some(pc) = p
                .containers
                .iter()
                .find(|pc| pc.running.as_ref().is_some_and(|(id, _)| *id == proc.id))
            else {
                continue;
            };
            let Some(idx) = self.ctrs.iter().position(|c| c.name == pc.name) else {
                continue;
            };
            let Some(kc) = self.k8s_container(idx) else {
                continue;
            };
            let rel = PathBuf::from(&shared.cfg.cgroup_parent)
                .join(format!("pod{}", self.uid))
                .join(&proc.id);
            let cgroup = Cgroup::create(
                &shared.hierarchy,
                &rel,
                shared.cfg.cgroup2.as_deref(),
                &resources(&kc),
            )
            .map_err(|e| e.to_string())?;
            let (out_r, err_r) = Stdio::kept_log_sources(proc.take_kept(), kc.tty == Some(true));
            if let Some(out_r) = out_r {
                let log_path = logs::container_log(&self.log_dir, &pc.name, pc.run);
                spawn_log_pumps(
                    out_r,
                    err_r,
                    log_path,
                    (shared.cfg.log_max_bytes, shared.cfg.log_max_files),
                );
            }
            let run = pc.run;
            if let Some(exit) = proc.take_exit() {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Ok(status) = exit.await {
                        let _ = tx.send(PodMsg::Exited { idx, run, status });
                    }
                });
            }
            let started_at = pc
                .running
                .as_ref()
                .map(|(_, t)| *t)
                .unwrap_or_else(Utc::now);
            let c = &mut self.ctrs[idx];
            c.waiting = None;
            let exec = pc.exec.clone().unwrap_or_default();
            c.running = Some(Running {
                id: proc.id.clone(),
                proc,
                cgroup,
                started_at,
                exec,
                started: true,
                startup_passed: true,
                ready: true,
                counts: HashMap::new(),
                probes: Vec::new(),
                killing: false,
            });
            tracing::info!(pod = %self.name, container = %c.name, "adopted running container");
            self.start_probes(idx, &kc);
        }
        // Volumes are still in place: describe them again without touching their content.
        if self.sandbox.is_some() {
            self.volumes = PodVolumes::prepare(&self.pod, &self.dir, &self.core.client)
                .await
                .ok();
        }
        for (id, status) in exited {
            let Some(pc) = p
                .containers
                .iter()
                .find(|pc| pc.running.as_ref().is_some_and(|(rid, _)| *rid == id))
            else {
                continue;
            };
            let Some(idx) = self.ctrs.iter().position(|c| c.name == pc.name) else {
                continue;
            };
            let started_at = pc
                .running
                .as_ref()
                .map(|(_, t)| *t)
                .unwrap_or_else(Utc::now);
            // Exited while no agent watched: record it as if seen, then restart per policy.
            let rel = PathBuf::from(&shared.cfg.cgroup_parent)
                .join(format!("pod{}", self.uid))
                .join(&id);
            let mut oom = false;
            if let Ok(cg) = Cgroup::create(
                &shared.hierarchy,
                &rel,
                shared.cfg.cgroup2.as_deref(),
                &Resources::default(),
            ) {
                oom = cg.oom_killed();
                let _ = cg.remove(Duration::from_millis(500));
            }
            self.ctrs[idx].run = pc.run;
            self.finish(idx, status, started_at, id, oom);
        }
        Ok(())
    }
}

/// A container's stdio (`spec`'s descriptors): stdout and stderr through a pipe each, or
/// with `tty` one pseudo-terminal for all three (the container's controlling terminal, its
/// output logged as stdout); with `stdin` (and no terminal) a pipe that stays open for as
/// long as the container lives (the spawner holds its write end), as Kubernetes keeps a
/// `stdin: true` container's stdin open.
struct Stdio {
    /// The container's ends, then the ends the spawner keeps, in `spec`'s index order.
    fds: Vec<OwnedFd>,
    /// Where in `fds` the logs' sources are: stdout (the terminal with a tty) and stderr.
    out: usize,
    err: Option<usize>,
}

impl Stdio {
    fn new(spec: &mut ContainerSpec, stdin: bool, tty: bool) -> std::io::Result<Stdio> {
        let pipe = || -> std::io::Result<(OwnedFd, OwnedFd)> {
            Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
        };
        if tty {
            let (master, slave) = crate::runtime::pty(None)?;
            (spec.stdin, spec.stdout, spec.stderr) = (Some(0), Some(0), Some(0));
            spec.tty = true;
            spec.keep = vec![1];
            return Ok(Stdio {
                fds: vec![slave, master],
                out: 1,
                err: None,
            });
        }
        let ((out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?);
        spec.tty = false;
        (spec.stdout, spec.stderr) = (Some(0), Some(1));
        if stdin {
            let (in_r, in_w) = pipe()?;
            (spec.stdin, spec.keep) = (Some(2), vec![3, 4, 5]);
            return Ok(Stdio {
                fds: vec![out_w, err_w, in_r, out_r, err_r, in_w],
                out: 3,
                err: Some(4),
            });
        }
        (spec.stdin, spec.keep) = (None, vec![2, 3]);
        Ok(Stdio {
            fds: vec![out_w, err_w, out_r, err_r],
            out: 2,
            err: Some(3),
        })
    }

    fn sent(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.fds.iter().map(|f| f.as_fd()).collect()
    }

    /// What the logs read (stdout's or the terminal's source, and stderr's); every other
    /// descriptor closes here: the container's ends, and a stdin pipe's write end, which
    /// the spawner holds.
    fn into_log_sources(self) -> (Option<OwnedFd>, Option<OwnedFd>) {
        let mut fds: Vec<Option<OwnedFd>> = self.fds.into_iter().map(Some).collect();
        let out = fds.get_mut(self.out).and_then(Option::take);
        let err = self.err.and_then(|i| fds.get_mut(i).and_then(Option::take));
        (out, err)
    }

    /// The log sources among what the spawner kept for a container (an adopting agent's
    /// view of the same layout): the terminal's master alone with `tty`, else stdout's and
    /// stderr's read ends; a stdin pipe's write end after them stays the spawner's.
    fn kept_log_sources(kept: Vec<OwnedFd>, tty: bool) -> (Option<OwnedFd>, Option<OwnedFd>) {
        let mut kept = kept.into_iter();
        let out = kept.next();
        let err = if tty { None } else { kept.next() };
        (out, err)
    }
}

/// Starts the stdout (or terminal) and stderr pumps of one run on this core.
fn spawn_log_pumps(
    out_r: OwnedFd,
    err_r: Option<OwnedFd>,
    path: PathBuf,
    (max_bytes, max_files): (u64, u32),
) {
    tokio_uring::spawn(async move {
        let log = match LogFile::open(&path, max_bytes, max_files).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open container log");
                return;
            }
        };
        let a = logs::pump(out_r, "stdout", log.clone());
        let b = async move {
            match err_r {
                Some(err_r) => logs::pump(err_r, "stderr", log).await,
                None => Ok(()),
            }
        };
        let (ra, rb) = futures::join!(a, b);
        for r in [ra, rb] {
            if let Err(e) = r {
                tracing::warn!(path = %path.display(), error = %e, "container log");
            }
        }
    });
}

/// Rewrites a small state file in place with one write, padded with spaces (which JSON
/// ignores) to the length it had, so that no state ever needs a new file: each
/// write-a-temp-then-rename left a freed inode behind, and on ext4 without a journal every
/// later inode allocation in that block group walks past the inodes freed in the last
/// 30 s (`recently_deleted`), which made the node's file creation grow with its pod churn.
/// One `pwrite` of a regular file is whole or not done at all if the agent is killed (the
/// state only has to survive the agent, not the machine: a reboot ends the containers).
fn overwrite_padded(path: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let old = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
    if old <= body.len() {
        return f.write_all_at(body, 0);
    }
    let mut padded = Vec::with_capacity(old);
    padded.extend_from_slice(body);
    padded.resize(old, b' ');
    f.write_all_at(&padded, 0)
}

#[cfg(test)]
mod tests {
    use super::{expand, overwrite_padded};
    use std::collections::BTreeMap;

    #[test]
    fn state_is_rewritten_in_place_and_still_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        overwrite_padded(&path, br#"{"a":[1,2,3,4,5,6]}"#).expect("first");
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("stat"));
        overwrite_padded(&path, br#"{"a":1}"#).expect("shorter");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), ino, "same file");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("parses");
        assert_eq!(v, serde_json::json!({"a": 1}));
        overwrite_padded(&path, br#"{"a":[1,2,3,4,5,6,7,8,9,10,11]}"#).expect("longer");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("parses");
        assert_eq!(v["a"][10], 11);
    }

    #[test]
    fn variable_references_expand_as_kubernetes_does() {
        let env: BTreeMap<String, String> = [("A", "1"), ("B", "two")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(expand("$(A)-$(B)", &env), "1-two");
        // Unknown references stay as written; $$ escapes a reference.
        assert_eq!(expand("$(C) $$(A) $A", &env), "$(C) $(A) $A");
        assert_eq!(expand("no refs", &env), "no refs");
        assert_eq!(expand("$(A", &env), "$(A");
    }
}
