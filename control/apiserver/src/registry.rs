//! The API's verbs on stored objects: what kube-apiserver's generic registry and the
//! per-kind strategies do for the kinds Skiff serves. Server-set metadata, admission,
//! optimistic concurrency on resourceVersion, graceful pod deletion, finalizers, namespace
//! lifecycle, Service IP/port allocation and pod binding all live here; the gRPC layer only
//! translates requests.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipnet::Ipv4Net;
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use skiff_api::object::{
    CreateEdits, admit, admit_created, admit_created_bytes, meta_str, object_name,
};
use skiff_api::resource::{self, RESOURCES, ResourceInfo};
use skiff_api::selector::{FieldSelector, LabelSelector};
use skiff_api::{ApiError, Cause, MAX_OBJECT_BYTES, Reason};
use skiff_store::{KeyValue, Revision, Store, StoreError};

use crate::allocator::{IpAllocator, PortAllocator};
use crate::object_json::with_resource_version;
use crate::watch_cache::{CacheOptions, Filter, WatchCache, Watcher};

/// API server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// ClusterIPs come from here.
    pub service_cidr: Ipv4Net,
    /// NodePorts come from here (inclusive).
    pub node_port_range: (u16, u16),
    pub cache: CacheOptions,
    /// The DefaultTolerationSeconds admission step: pods that do not tolerate the
    /// `not-ready` / `unreachable` NoExecute taints get tolerations for this long
    /// (kube-apiserver's --default-not-ready/unreachable-toleration-seconds, 300).
    pub default_toleration_seconds: i64,
    /// Which Node address to dial a node agent at (logs, exec), in order of preference
    /// (kube-apiserver's --kubelet-preferred-address-types).
    pub kubelet_address_types: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            service_cidr: "198.19.0.0/16".parse().expect("valid default CIDR"),
            node_port_range: (30000, 32767),
            cache: CacheOptions::default(),
            default_toleration_seconds: 300,
            kubelet_address_types: vec![
                "InternalIP".into(),
                "Hostname".into(),
                "ExternalIP".into(),
            ],
        }
    }
}

/// Namespaces that exist from the start and cannot be deleted (as in Kubernetes).
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How to delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// None: the object's own grace period.
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: String,
    pub precondition_resource_version: String,
    /// "", "Background", "Foreground" or "Orphan".
    pub propagation_policy: String,
}

/// A list result: the objects as held (stored bytes and their versions).
pub struct ListResult {
    pub items: Vec<skiff_api::raw::RawObject>,
    pub resource_version: Revision,
    pub continue_token: String,
}

/// The registry of every served resource over one store.
pub struct Registry {
    store: Arc<dyn Store>,
    caches: HashMap<&'static str, Arc<WatchCache>>,
    cluster_ips: Mutex<IpAllocator>,
    node_ports: Mutex<PortAllocator>,
    default_toleration_seconds: i64,
    kubelet_address_types: Vec<String>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn store_error(e: StoreError, info: &ResourceInfo, name: &str) -> ApiError {
    match e {
        StoreError::AlreadyExists(_) => ApiError::already_exists(&info.qualified_plural(), name),
        StoreError::NotFound(_) => ApiError::not_found(&info.qualified_plural(), name),
        StoreError::Conflict { .. } => ApiError::conflict(&info.qualified_plural(), name),
        StoreError::Compacted { requested, .. } => {
            ApiError::expired(format!("too old resource version: {requested}"))
        }
        StoreError::FutureRevision { requested, current } => ApiError::new(
            Reason::Timeout,
            format!("Too large resource version: {requested}, current: {current}"),
        ),
        StoreError::Closed => ApiError::new(Reason::ServiceUnavailable, "the store is shut down"),
        StoreError::Backend(m) => ApiError::internal(m),
    }
}

fn check_size(len: usize) -> Result<(), ApiError> {
    if len > MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            Reason::RequestEntityTooLarge,
            format!(
                "Request entity too large: the object is {len} bytes; the limit is {MAX_OBJECT_BYTES} bytes (1.5 MiB)"
            ),
        ));
    }
    Ok(())
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    check_size(body.len())?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the object could not be decoded: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    Ok(value)
}

fn parse_revision(rv: &str) -> Result<Option<Revision>, ApiError> {
    if rv.is_empty() {
        return Ok(None);
    }
    rv.parse::<Revision>()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// Kinds whose status is a sub-resource: the main resource cannot change it, and the status
/// sub-resource can change nothing else.
fn has_status_subresource(info: &ResourceInfo) -> bool {
    matches!(
        info.kind,
        "Pod" | "Deployment" | "ReplicaSet" | "Service" | "Node" | "Namespace"
    )
}

/// The part of an object whose change bumps metadata.generation.
fn spec_of(info: &ResourceInfo, obj: &Value) -> Value {
    if obj.get("spec").is_some() || has_status_subresource(info) {
        obj.get("spec").cloned().unwrap_or(Value::Null)
    } else {
        let mut rest = obj.clone();
        if let Some(m) = rest.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        rest
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(|f| serde_json::from_value(f.clone()).ok())
        .unwrap_or_default()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Allocations made for one Service write: undone if the write fails.
#[derive(Default)]
struct Allocation {
    claimed_ips: Vec<Ipv4Addr>,
    claimed_ports: Vec<u16>,
    freed_ips: Vec<Ipv4Addr>,
    freed_ports: Vec<u16>,
}

fn service_ports(obj: &Value) -> Vec<(String, i64, String, Option<u16>)> {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    (
                        p.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        p.get("port").and_then(Value::as_i64).unwrap_or_default(),
                        p.get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .to_string(),
                        p.get("nodePort")
                            .and_then(Value::as_u64)
                            .filter(|n| *n != 0)
                            .and_then(|n| u16::try_from(n).ok()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn service_cluster_ip(obj: &Value) -> Option<Ipv4Addr> {
    obj.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

impl Registry {
    /// Starts a watch cache per resource, rebuilds the allocation tables and makes sure the
    /// system namespaces exist.
    pub async fn new(store: Arc<dyn Store>, config: Config) -> Result<Arc<Self>, ApiError> {
        let mut caches = HashMap::new();
        for info in RESOURCES {
            let cache = WatchCache::start(info, store.clone(), config.cache.clone())
                .await
                .map_err(|e| store_error(e, info, ""))?;
            caches.insert(info.plural, cache);
        }
        let registry = Arc::new(Registry {
            store,
            caches,
            cluster_ips: Mutex::new(IpAllocator::new(config.service_cidr)),
            node_ports: Mutex::new(PortAllocator::new(
                config.node_port_range.0,
                config.node_port_range.1,
            )),
            default_toleration_seconds: config.default_toleration_seconds,
            kubelet_address_types: config.kubelet_address_types.clone(),
        });
        registry.rebuild_allocations()?;
        for ns in SYSTEM_NAMESPACES {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match registry
                .create(
                    "namespaces",
                    "",
                    &serde_json::to_vec(&body).unwrap_or_default(),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(registry)
    }

    /// Node address types to dial node agents at, in order of preference.
    pub fn kubelet_address_types(&self) -> &[String] {
        &self.kubelet_address_types
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn rebuild_allocations(&self) -> Result<(), ApiError> {
        let (services, _) = self.cache("services")?.list(&Filter::default());
        let mut ips = self.cluster_ips.lock();
        let mut ports = self.node_ports.lock();
        for svc in services {
            let Ok(v) = serde_json::from_slice::<Value>(&svc.json()) else {
                continue;
            };
            if let Some(ip) = service_cluster_ip(&v) {
                let _ = ips.claim(ip);
            }
            for (_, _, _, np) in service_ports(&v) {
                if let Some(np) = np {
                    let _ = ports.claim(np);
                }
            }
        }
        Ok(())
    }

    pub fn info(plural: &str) -> Result<&'static ResourceInfo, ApiError> {
        resource::by_plural(plural).ok_or_else(|| {
            ApiError::new(
                Reason::NotFound,
                format!("the server could not find the requested resource ({plural})"),
            )
        })
    }

    pub fn cache(&self, plural: &str) -> Result<&Arc<WatchCache>, ApiError> {
        self.caches.get(plural).ok_or_else(|| {
            ApiError::new(
                Reason::NotFound,
                format!("the server could not find the requested resource ({plural})"),
            )
        })
    }

    fn check_type(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
        let api_version = info.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            None => {
                obj["apiVersion"] = Value::String(api_version.clone());
            }
            Some(v) if v != api_version => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => {}
        }
        match obj.get("kind").and_then(Value::as_str) {
            None => {
                obj["kind"] = Value::String(info.kind.into());
            }
            Some(k) if k != info.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    info.kind
                )));
            }
            _ => {}
        }
        Ok(())
    }

    fn resolve_namespace(
        info: &ResourceInfo,
        namespace: &str,
        obj: &mut Value,
    ) -> Result<String, ApiError> {
        let body_ns = meta_str(obj, "namespace").to_string();
        if !info.namespaced {
            if !body_ns.is_empty() {
                meta_mut(obj).remove("namespace");
            }
            return Ok(String::new());
        }
        let ns = Self::pick_namespace(namespace, body_ns)?;
        meta_mut(obj).insert("namespace".into(), Value::String(ns.clone()));
        Ok(ns)
    }

    /// A namespaced object's namespace from the request's and the body's.
    fn pick_namespace(request: &str, body: String) -> Result<String, ApiError> {
        Ok(match (request.is_empty(), body.is_empty()) {
            (true, true) => "default".to_string(),
            (true, false) => body,
            (false, true) => request.to_string(),
            (false, false) if body == request => body,
            (false, false) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        })
    }

    async fn ensure_namespace_active(&self, ns: &str) -> Result<(), ApiError> {
        let info = Self::info("namespaces")?;
        // The cache answers almost always; a namespace it has not seen yet (created a moment
        // ago) is read from the store.
        if let Some(cached) = self.cache("namespaces")?.get(&info.key("", ns)) {
            if cached.meta.terminating {
                return Err(ApiError {
                    name: ns.into(),
                    kind: "namespaces".into(),
                    ..ApiError::new(
                        Reason::Forbidden,
                        format!(
                            "unable to create new content in namespace {ns} because it is being terminated"
                        ),
                    )
                });
            }
            return Ok(());
        }
        let kv = self
            .store
            .get(&info.key("", ns), 0)
            .await
            .map_err(|e| store_error(e, info, ns))?
            .ok_or_else(|| ApiError::not_found("namespaces", ns))?;
        let obj: Value =
            serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError {
                name: ns.into(),
                kind: "namespaces".into(),
                ..ApiError::new(
                    Reason::Forbidden,
                    format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ),
                )
            });
        }
        Ok(())
    }

    fn respond(kv: &KeyValue) -> Result<Bytes, ApiError> {
        Self::respond_raw(&kv.value, kv.mod_revision)
    }

    fn respond_raw(raw: &[u8], revision: Revision) -> Result<Bytes, ApiError> {
        with_resource_version(raw, revision)
            .map(Bytes::from)
            .map_err(ApiError::internal)
    }

    fn respond_value(obj: &Value, revision: Revision) -> Result<Bytes, ApiError> {
        let mut obj = obj.clone();
        meta_mut(&mut obj).insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
        serde_json::to_vec(&obj)
            .map(Bytes::from)
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    // ---- create -------------------------------------------------------------------------

    pub async fn create(
        &self,
        plural: &str,
        namespace: &str,
        body: &[u8],
    ) -> Result<Bytes, ApiError> {
        let info = Self::info(plural)?;
        check_size(body.len())?;
        let edits = self.create_edits();
        if info.kind != "Service" {
            // The usual request: decoded straight into its type and edited there. Anything
            // unusual (and every error) takes the general path below.
            let mut target = None;
            let fast = admit_created_bytes(info, body, &edits, &mut |m| {
                Self::created_meta(m, info.namespaced, namespace)
                    .map(|t| target = Some(t))
                    .is_ok()
            });
            if let (Some(bytes), Some((ns, name))) = (fast, target) {
                if info.namespaced {
                    self.ensure_namespace_active(&ns).await?;
                }
                return self
                    .store_created(info, &ns, &name, Bytes::from(bytes), Allocation::default())
                    .await;
            }
        }
        let mut obj = parse_object(body)?;
        Self::check_type(info, &mut obj)?;
        let ns = Self::resolve_namespace(info, namespace, &mut obj)?;
        if !meta_str(&obj, "resourceVersion").is_empty() {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if meta_str(&obj, "name").is_empty() && !meta_str(&obj, "generateName").is_empty() {
            let name = format!("{}{}", meta_str(&obj, "generateName"), random_suffix());
            meta_mut(&mut obj).insert("name".into(), Value::String(name));
        }
        {
            let meta = meta_mut(&mut obj);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                meta.remove(f);
            }
        }
        let stamp = |obj: &mut Value| {
            let meta = meta_mut(obj);
            meta.insert(
                "uid".into(),
                Value::String(uuid::Uuid::new_v4().to_string()),
            );
            meta.insert("creationTimestamp".into(), Value::String(now()));
            meta.insert("generation".into(), json!(1));
        };
        let name = object_name(&obj);
        let (bytes, alloc) = if info.kind == "Service" {
            // Allocation reads the defaulted spec and edits it: on the tree.
            let mut obj = admit(info, obj)?;
            if info.namespaced {
                self.ensure_namespace_active(&ns).await?;
            }
            stamp(&mut obj);
            let alloc = self.allocate_service(&mut obj, None)?;
            match serde_json::to_vec(&obj) {
                Ok(bytes) => (bytes, alloc),
                Err(e) => {
                    self.settle(alloc, false);
                    return Err(ApiError::internal(e.to_string()));
                }
            }
        } else {
            // Every server edit made before admission: the typed object is encoded once.
            stamp(&mut obj);
            // The stored JSON is the request's plus uid, timestamp, generation and defaults.
            let bytes = admit_created(info, obj, &edits, body.len() + 256)?;
            if info.namespaced {
                self.ensure_namespace_active(&ns).await?;
            }
            (bytes, Allocation::default())
        };
        self.store_created(info, &ns, &name, Bytes::from(bytes), alloc)
            .await
    }

    /// Creates an Event handed over in process (the recorders of the scheduler and the
    /// controllers inside `skiff server`): `create`'s admission (namespace, server-set
    /// metadata, defaults, validation) on the typed object, which is then encoded once,
    /// where `create` parses JSON into a tree, decodes, re-encodes and compares trees.
    pub async fn create_event(
        &self,
        namespace: &str,
        mut event: k8s_openapi::api::core::v1::Event,
    ) -> Result<Bytes, ApiError> {
        use skiff_api::object::Kind;
        let info = Self::info("events")?;
        let (ns, name) = Self::created_meta(&mut event.metadata, true, namespace)?;
        event.apply_defaults();
        let causes = event.validate();
        if !causes.is_empty() {
            return Err(ApiError::invalid(&info.qualified_kind(), &name, causes));
        }
        self.ensure_namespace_active(&ns).await?;
        let bytes =
            Bytes::from(serde_json::to_vec(&event).map_err(|e| ApiError::internal(e.to_string()))?);
        check_size(bytes.len())?;
        self.store_created(info, &ns, &name, bytes, Allocation::default())
            .await
    }

    /// Writes a created object if its key is free, settles its allocations by the outcome
    /// and answers with the stored object.
    async fn store_created(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        bytes: Bytes,
        alloc: Allocation,
    ) -> Result<Bytes, ApiError> {
        let written = self.store.create(&info.key(ns, name), bytes.clone()).await;
        self.finish_write(written, &bytes, alloc, info, name)
    }

    /// What a create's kind edits need of the server's configuration.
    fn create_edits(&self) -> CreateEdits {
        CreateEdits {
            toleration_seconds: self.default_toleration_seconds,
        }
    }

    /// A create's edits of a typed object's metadata: its namespace (from the request's
    /// and its own), a name from generateName, the server's fields cleared and set (uid,
    /// creationTimestamp, generation). Refuses a resourceVersion or two namespaces that
    /// differ. Answers the namespace ("" when cluster-scoped) and the name.
    fn created_meta(
        m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        namespaced: bool,
        namespace: &str,
    ) -> Result<(String, String), ApiError> {
        let ns = if namespaced {
            Self::pick_namespace(namespace, m.namespace.take().unwrap_or_default())?
        } else {
            String::new()
        };
        m.namespace = namespaced.then(|| ns.clone());
        if m.resource_version.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if m.name.as_deref().unwrap_or_default().is_empty()
            && let Some(prefix) = m.generate_name.as_deref().filter(|p| !p.is_empty())
        {
            m.name = Some(format!("{prefix}{}", random_suffix()));
        }
        m.deletion_timestamp = None;
        m.deletion_grace_period_seconds = None;
        m.uid = Some(uuid::Uuid::new_v4().to_string());
        m.creation_timestamp = Some(skiff_api::object::now());
        m.generation = Some(1);
        Ok((ns, m.name.clone().unwrap_or_default()))
    }

    /// Settles a write's allocations by its outcome and answers with the stored object.
    fn finish_write(
        &self,
        written: Result<KeyValue, StoreError>,
        bytes: &Bytes,
        alloc: Allocation,
        info: &ResourceInfo,
        name: &str,
    ) -> Result<Bytes, ApiError> {
        self.settle(alloc, written.is_ok());
        let kv = written.map_err(|e| store_error(e, info, name))?;
        Self::respond_raw(bytes, kv.mod_revision)
    }

    // ---- Service allocations ------------------------------------------------------------

    fn allocate_service(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Allocation, ApiError> {
        let mut alloc = Allocation::default();
        let result = self.allocate_service_inner(obj, old, &mut alloc);
        if result.is_err() {
            self.settle(alloc, false);
            result.map(|_| Allocation::default())
        } else {
            Ok(alloc)
        }
    }

    fn allocate_service_inner(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        alloc: &mut Allocation,
    ) -> Result<(), ApiError> {
        let name = object_name(obj);
        let invalid = |cause: Cause| ApiError::invalid("Service", &name, vec![cause]);
        let type_ = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let requested = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let old_ip = old.and_then(service_cluster_ip);
        let old_headless = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            == Some("None");

        if type_ == "ExternalName" {
            if let Some(ip) = old_ip {
                alloc.freed_ips.push(ip);
            }
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else if requested == "None" || (requested.is_empty() && old_headless) {
            if old.is_some() && !old_headless {
                return Err(invalid(Cause::invalid(
                    "spec.clusterIP",
                    "None",
                    "field is immutable",
                )));
            }
            obj["spec"]["clusterIP"] = json!("None");
            obj["spec"]["clusterIPs"] = json!(["None"]);
        } else {
            let ip = match (old_ip, requested.as_str()) {
                (Some(old), "") => old,
                (Some(old), r) if r == old.to_string() => old,
                (Some(_), r) => {
                    return Err(invalid(Cause::invalid(
                        "spec.clusterIP",
                        r,
                        "field is immutable",
                    )));
                }
                (None, "") => {
                    let ip = self.cluster_ips.lock().allocate().ok_or_else(|| {
                        ApiError::internal("failed to allocate a serviceIP: range is full")
                    })?;
                    alloc.claimed_ips.push(ip);
                    ip
                }
                (None, r) => {
                    let ip: Ipv4Addr = r.parse().map_err(|_| {
                        invalid(Cause::invalid(
                            "spec.clusterIP",
                            r,
                            "must be a valid IPv4 address",
                        ))
                    })?;
                    self.cluster_ips
                        .lock()
                        .claim(ip)
                        .map_err(|e| invalid(Cause::invalid("spec.clusterIP", r, &e)))?;
                    alloc.claimed_ips.push(ip);
                    ip
                }
            };
            obj["spec"]["clusterIP"] = json!(ip.to_string());
            obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
        }

        let old_ports = old.map(service_ports).unwrap_or_default();
        let wants_node_ports = type_ == "NodePort" || type_ == "LoadBalancer";
        let mut kept = Vec::new();
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let port = p.get("port").and_then(Value::as_i64).unwrap_or_default();
                let proto = p
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_string();
                let asked = p
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .filter(|n| *n != 0);
                if !wants_node_ports {
                    if let Some(m) = p.as_object_mut() {
                        m.remove("nodePort");
                    }
                    continue;
                }
                let previous = old_ports
                    .iter()
                    .find(|(n, pt, pr, _)| {
                        (!n.is_empty() && *n == name) || (*pt == port && *pr == proto)
                    })
                    .and_then(|(_, _, _, np)| *np);
                let np = match (asked, previous) {
                    (None, Some(prev)) => prev,
                    (Some(a), Some(prev)) if a == u64::from(prev) => prev,
                    (None, None) => {
                        let np = self.node_ports.lock().allocate().ok_or_else(|| {
                            ApiError::internal("failed to allocate a nodePort: range is full")
                        })?;
                        alloc.claimed_ports.push(np);
                        np
                    }
                    (Some(a), _) => {
                        let np = u16::try_from(a).map_err(|_| {
                            invalid(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                a,
                                "out of range",
                            ))
                        })?;
                        self.node_ports.lock().claim(np).map_err(|e| {
                            invalid(Cause::invalid(format!("spec.ports[{i}].nodePort"), a, &e))
                        })?;
                        alloc.claimed_ports.push(np);
                        np
                    }
                };
                kept.push(np);
                p["nodePort"] = json!(np);
            }
        }
        for (_, _, _, np) in old_ports {
            if let Some(np) = np
                && !kept.contains(&np)
            {
                alloc.freed_ports.push(np);
            }
        }
        Ok(())
    }

    /// Applies or undoes an allocation once the write it belongs to has succeeded or failed.
    fn settle(&self, alloc: Allocation, committed: bool) {
        let mut ips = self.cluster_ips.lock();
        let mut ports = self.node_ports.lock();
        if committed {
            alloc.freed_ips.iter().for_each(|ip| ips.release(*ip));
            alloc.freed_ports.iter().for_each(|p| ports.release(*p));
        } else {
            alloc.claimed_ips.iter().for_each(|ip| ips.release(*ip));
            alloc.claimed_ports.iter().for_each(|p| ports.release(*p));
        }
    }

    // ---- get / list ---------------------------------------------------------------------

    pub async fn get(&self, plural: &str, namespace: &str, name: &str) -> Result<Bytes, ApiError> {
        let info = Self::info(plural)?;
        let ns = if info.namespaced && namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        let kv = self
            .store
            .get(&info.key(ns, name), 0)
            .await
            .map_err(|e| store_error(e, info, name))?
            .ok_or_else(|| ApiError::not_found(&info.qualified_plural(), name))?;
        Self::respond(&kv)
    }

    pub fn filter(
        info: &ResourceInfo,
        namespace: &str,
        labels: &str,
        fields: &str,
    ) -> Result<Filter, ApiError> {
        Ok(Filter {
            namespace: if info.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            labels: LabelSelector::parse(labels)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            fields: FieldSelector::parse(fields, info.plural).map_err(ApiError::bad_request)?,
        })
    }

    pub async fn list(
        &self,
        plural: &str,
        filter: Filter,
        limit: i64,
        continue_token: &str,
        resource_version: &str,
    ) -> Result<ListResult, ApiError> {
        let info = Self::info(plural)?;
        if limit > 0 || !continue_token.is_empty() {
            return self
                .list_from_store(info, filter, limit, continue_token)
                .await;
        }
        let cache = self.cache(plural)?;
        match resource_version {
            "0" => {}
            "" => {
                let rev = self
                    .store
                    .current_revision()
                    .await
                    .map_err(|e| store_error(e, info, ""))?;
                cache.wait_for(rev, Duration::from_secs(3)).await?;
            }
            rv => {
                let rev = parse_revision(rv)?.unwrap_or_default();
                cache.wait_for(rev, Duration::from_secs(3)).await?;
            }
        }
        let (objects, revision) = cache.list(&filter);
        Ok(ListResult {
            items: objects.iter().map(|o| o.raw()).collect(),
            resource_version: revision,
            continue_token: String::new(),
        })
    }

    async fn list_from_store(
        &self,
        info: &'static ResourceInfo,
        filter: Filter,
        limit: i64,
        continue_token: &str,
    ) -> Result<ListResult, ApiError> {
        let (mut revision, mut start) = if continue_token.is_empty() {
            (0, String::new())
        } else {
            let token: Value = serde_json::from_str(continue_token)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            (
                token.get("rv").and_then(Value::as_i64).unwrap_or_default(),
                token
                    .get("start")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        let limit = if limit <= 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let prefix = info.namespace_prefix(&filter.namespace);
        let cache = self.cache(info.plural)?;
        let mut items = Vec::new();
        let mut more;
        loop {
            let page = self
                .store
                .range(
                    &prefix,
                    &start,
                    limit.saturating_sub(items.len()).max(1),
                    revision,
                )
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list \
                         result. You can start a new list without the continue parameter.",
                    ),
                    e => store_error(e, info, ""),
                })?;
            revision = page.revision;
            more = page.more;
            for kv in &page.kvs {
                start = format!("{}\0", kv.key);
                let object = cache
                    .decode_object(&kv.key, &kv.value, kv.mod_revision)
                    .map_err(ApiError::internal)?;
                if filter.matches(info.plural, &object.meta) {
                    items.push(object.raw());
                }
            }
            if items.len() >= limit || !more {
                break;
            }
        }
        let continue_token = if more {
            json!({"rv": revision, "start": start}).to_string()
        } else {
            String::new()
        };
        Ok(ListResult {
            items,
            resource_version: revision,
            continue_token,
        })
    }

    // ---- watch --------------------------------------------------------------------------

    pub async fn watch(
        &self,
        plural: &str,
        filter: Filter,
        resource_version: &str,
        bookmarks: bool,
        send_initial_events: bool,
    ) -> Result<Watcher, ApiError> {
        let info = Self::info(plural)?;
        let cache = self.cache(plural)?;
        let from = match resource_version {
            "" | "0" => {
                if resource_version.is_empty() {
                    let rev = self
                        .store
                        .current_revision()
                        .await
                        .map_err(|e| store_error(e, info, ""))?;
                    cache.wait_for(rev, Duration::from_secs(3)).await?;
                }
                None
            }
            rv => {
                let rev = parse_revision(rv)?.unwrap_or_default();
                let current = self
                    .store
                    .current_revision()
                    .await
                    .map_err(|e| store_error(e, info, ""))?;
                if rev > current {
                    return Err(ApiError::new(
                        Reason::Timeout,
                        format!("Too large resource version: {rev}, current: {current}"),
                    ));
                }
                cache.wait_for(rev, Duration::from_secs(3)).await?;
                Some(rev)
            }
        };
        if send_initial_events && from.is_some() {
            return Err(ApiError::bad_request(
                "sendInitialEvents is only supported with an empty or \"0\" resourceVersion",
            ));
        }
        cache.watch(filter, from, bookmarks, send_initial_events && bookmarks)
    }

    // ---- update / patch -----------------------------------------------------------------

    /// Builds the object to store from the current one and the requested one.
    fn prepare_update(
        &self,
        info: &'static ResourceInfo,
        current: &Value,
        mut requested: Value,
        subresource: &str,
    ) -> Result<Value, ApiError> {
        let name = meta_str(current, "name").to_string();
        let mut next = match subresource {
            "status" => {
                let mut next = current.clone();
                match requested.get("status") {
                    Some(s) => next["status"] = s.clone(),
                    None => {
                        next.as_object_mut().map(|o| o.remove("status"));
                    }
                }
                next
            }
            "" => {
                if has_status_subresource(info) {
                    match current.get("status") {
                        Some(s) => requested["status"] = s.clone(),
                        None => {
                            requested.as_object_mut().map(|o| o.remove("status"));
                        }
                    }
                }
                requested
            }
            other => {
                return Err(ApiError::new(
                    Reason::NotFound,
                    format!(
                        "the server could not find the requested resource ({}/{other})",
                        info.plural
                    ),
                ));
            }
        };
        {
            let cur_meta = current.get("metadata").cloned().unwrap_or(json!({}));
            let meta = meta_mut(&mut next);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match cur_meta.get(f) {
                    Some(v) => meta.insert(f.into(), v.clone()),
                    None => meta.remove(f),
                };
            }
            meta.remove("resourceVersion");
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            let old = finalizers(current);
            let added: Vec<String> = finalizers(&next)
                .into_iter()
                .filter(|f| !old.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &info.qualified_kind(),
                    &name,
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        let next = admit(info, next)?;
        self.check_immutable(info, current, &next, &name)?;
        Ok(next)
    }

    fn check_immutable(
        &self,
        info: &ResourceInfo,
        current: &Value,
        next: &Value,
        name: &str,
    ) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        match info.kind {
            "Deployment" | "ReplicaSet"
                if current.pointer("/spec/selector") != next.pointer("/spec/selector") =>
            {
                causes.push(Cause::invalid("spec.selector", "", "field is immutable"));
            }
            "Pod" => {
                // Only images, activeDeadlineSeconds and added tolerations may change; the
                // scheduler sets nodeName through the binding sub-resource.
                let strip = |v: &Value| {
                    let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                    for list in ["containers", "initContainers"] {
                        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                            for c in cs {
                                c.as_object_mut().map(|c| c.remove("image"));
                            }
                        }
                    }
                    if let Some(m) = s.as_object_mut() {
                        m.remove("activeDeadlineSeconds");
                        m.remove("tolerations");
                    }
                    s
                };
                if strip(current) != strip(next) {
                    causes.push(Cause::forbidden(
                        "spec",
                        "pod updates may not change fields other than `spec.containers[*].image`, \
                         `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or \
                         `spec.tolerations` (only additions to existing tolerations)",
                    ));
                }
            }
            _ => {}
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&info.qualified_kind(), name, causes))
        }
    }

    /// Writes `next` over `current` (mod revision `cur.mod_revision`); deletes the object
    /// instead when its last finalizer went away during deletion.
    async fn write_update(
        &self,
        info: &'static ResourceInfo,
        cur: &KeyValue,
        current: &Value,
        mut next: Value,
    ) -> Result<Bytes, ApiError> {
        let name = meta_str(current, "name").to_string();
        // Allocate first: an update that restates the allocated IP and ports implicitly
        // (as `apply` does) is then recognized as a no-op.
        let alloc =
            if info.kind == "Service" && next.pointer("/metadata/deletionTimestamp").is_none() {
                self.allocate_service(&mut next, Some(current))?
            } else {
                Allocation::default()
            };
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if spec_of(info, current) != spec_of(info, &next) {
            generation + 1
        } else {
            generation
        };
        meta_mut(&mut next).insert("generation".into(), json!(generation));
        if next == *current {
            self.settle(alloc, false);
            return Self::respond(cur);
        }
        // A Namespace goes once the namespace controller removed its `kubernetes`
        // finalizer (spec.finalizers) after emptying it.
        let namespace_done = info.kind != "Namespace"
            || next
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
        let deleting = next.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers(&next).is_empty()
            && next
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0
            && namespace_done;
        if deleting {
            self.settle(alloc, false);
            let removed = self
                .store
                .delete(&cur.key, cur.mod_revision)
                .await
                .map_err(|e| store_error(e, info, &name))?;
            self.after_delete(info, current);
            return Self::respond_value(&next, removed.mod_revision);
        }
        let bytes =
            Bytes::from(serde_json::to_vec(&next).map_err(|e| ApiError::internal(e.to_string()))?);
        let written = self
            .store
            .update(&cur.key, bytes.clone(), cur.mod_revision)
            .await;
        self.finish_write(written, &bytes, alloc, info, &name)
    }

    async fn read_current(
        &self,
        info: &'static ResourceInfo,
        key: &str,
        name: &str,
    ) -> Result<(KeyValue, Value), ApiError> {
        let cur = self
            .store
            .get(key, 0)
            .await
            .map_err(|e| store_error(e, info, name))?
            .ok_or_else(|| ApiError::not_found(&info.qualified_plural(), name))?;
        let value =
            serde_json::from_slice(&cur.value).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((cur, value))
    }

    pub async fn update(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
        body: &[u8],
        subresource: &str,
    ) -> Result<Bytes, ApiError> {
        let info = Self::info(plural)?;
        let mut obj = parse_object(body)?;
        Self::check_type(info, &mut obj)?;
        let ns = Self::resolve_namespace(info, namespace, &mut obj)?;
        let body_name = meta_str(&obj, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let expected = parse_revision(meta_str(&obj, "resourceVersion"))?;
        let key = info.key(&ns, name);
        for _ in 0..16 {
            let (cur, current) = self.read_current(info, &key, name).await?;
            if expected.is_some_and(|rv| rv != cur.mod_revision) {
                return Err(ApiError::conflict(&info.qualified_plural(), name));
            }
            let next = self.prepare_update(info, &current, obj.clone(), subresource)?;
            match self.write_update(info, &cur, &current, next).await {
                Err(e) if e.reason == Reason::Conflict && expected.is_none() => continue,
                result => return result,
            }
        }
        Err(ApiError::conflict(&info.qualified_plural(), name))
    }

    pub async fn patch(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
        patch: &[u8],
        subresource: &str,
    ) -> Result<Bytes, ApiError> {
        let info = Self::info(plural)?;
        let patch: Value = serde_json::from_slice(patch)
            .map_err(|e| ApiError::bad_request(format!("the patch could not be decoded: {e}")))?;
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        let expected = parse_revision(
            patch
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )?;
        let ns = if info.namespaced && namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        let key = info.key(ns, name);
        for _ in 0..16 {
            let (cur, current) = self.read_current(info, &key, name).await?;
            if expected.is_some_and(|rv| rv != cur.mod_revision) {
                return Err(ApiError::conflict(&info.qualified_plural(), name));
            }
            let mut patched = current.clone();
            json_patch::merge(&mut patched, &patch);
            if serde_json::to_vec(&patched).map(|b| b.len()).unwrap_or(0) > MAX_OBJECT_BYTES {
                return Err(ApiError::new(
                    Reason::RequestEntityTooLarge,
                    "Request entity too large: the patched object exceeds 1.5 MiB",
                ));
            }
            Self::check_type(info, &mut patched)?;
            if meta_str(&patched, "name") != name
                || (info.namespaced && meta_str(&patched, "namespace") != ns)
            {
                return Err(ApiError::bad_request(
                    "a patch may not change metadata.name or metadata.namespace",
                ));
            }
            let next = self.prepare_update(info, &current, patched, subresource)?;
            match self.write_update(info, &cur, &current, next).await {
                Err(e) if e.reason == Reason::Conflict && expected.is_none() => continue,
                result => return result,
            }
        }
        Err(ApiError::conflict(&info.qualified_plural(), name))
    }

    // ---- delete -------------------------------------------------------------------------

    fn after_delete(&self, info: &ResourceInfo, obj: &Value) {
        if info.kind == "Service" {
            let mut alloc = Allocation::default();
            if let Some(ip) = service_cluster_ip(obj) {
                alloc.freed_ips.push(ip);
            }
            alloc.freed_ports = service_ports(obj).into_iter().filter_map(|p| p.3).collect();
            self.settle(alloc, true);
        }
    }

    /// Deletes an object; returns it and whether it is gone (false: deletion is pending on a
    /// grace period or finalizers).
    pub async fn delete(
        self: &Arc<Self>,
        plural: &str,
        namespace: &str,
        name: &str,
        options: DeleteOptions,
    ) -> Result<(Bytes, bool), ApiError> {
        let info = Self::info(plural)?;
        let ns = if info.namespaced && namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        if info.kind == "Namespace" && SYSTEM_NAMESPACES[..3].contains(&name) {
            return Err(ApiError {
                name: name.into(),
                kind: "namespaces".into(),
                ..ApiError::new(
                    Reason::Forbidden,
                    format!("namespace \"{name}\" is forbidden: this namespace may not be deleted"),
                )
            });
        }
        let key = info.key(ns, name);
        for _ in 0..16 {
            let (cur, current) = self.read_current(info, &key, name).await?;
            if !options.precondition_uid.is_empty()
                && options.precondition_uid != meta_str(&current, "uid")
            {
                return Err(ApiError {
                    name: name.into(),
                    kind: info.qualified_plural(),
                    ..ApiError::new(
                        Reason::Conflict,
                        format!(
                            "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                            options.precondition_uid,
                            meta_str(&current, "uid")
                        ),
                    )
                });
            }
            if let Some(rv) = parse_revision(&options.precondition_resource_version)?
                && rv != cur.mod_revision
            {
                return Err(ApiError {
                    name: name.into(),
                    kind: info.qualified_plural(),
                    ..ApiError::new(
                        Reason::Conflict,
                        format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            cur.mod_revision
                        ),
                    )
                });
            }
            let mut fins = finalizers(&current);
            match options.propagation_policy.as_str() {
                "Foreground" if !fins.iter().any(|f| f == "foregroundDeletion") => {
                    fins.push("foregroundDeletion".into())
                }
                "Orphan" if !fins.iter().any(|f| f == "orphan") => fins.push("orphan".into()),
                "" | "Background" | "Foreground" | "Orphan" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported propagationPolicy {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
                    )));
                }
            }
            let grace = self.grace_period(info, &current, options.grace_period_seconds);
            let terminating = current.pointer("/metadata/deletionTimestamp").is_some();
            if info.kind == "Namespace" {
                if terminating {
                    return Ok((Self::respond(&cur)?, false));
                }
                let mut next = current.clone();
                meta_mut(&mut next).insert("deletionTimestamp".into(), json!(now()));
                next["status"] = json!({"phase": "Terminating"});
                let bytes = Bytes::from(
                    serde_json::to_vec(&next).map_err(|e| ApiError::internal(e.to_string()))?,
                );
                match self
                    .store
                    .update(&key, bytes.clone(), cur.mod_revision)
                    .await
                {
                    Ok(kv) => return Ok((Self::respond_raw(&bytes, kv.mod_revision)?, false)),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_error(e, info, name)),
                }
            }
            if fins.is_empty() && grace == 0 {
                match self.store.delete(&key, cur.mod_revision).await {
                    Ok(kv) => {
                        self.after_delete(info, &current);
                        return Ok((Self::respond_raw(&cur.value, kv.mod_revision)?, true));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_error(e, info, name)),
                }
            }
            if terminating && fins == finalizers(&current) {
                // Already being deleted: only a shorter grace period changes anything.
                let remaining = current
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if grace >= remaining {
                    return Ok((Self::respond(&cur)?, false));
                }
            }
            let mut next = current.clone();
            let deadline = chrono::Utc::now() + chrono::Duration::seconds(grace);
            let meta = meta_mut(&mut next);
            meta.insert(
                "deletionTimestamp".into(),
                json!(deadline.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if !fins.is_empty() {
                meta.insert("finalizers".into(), json!(fins));
            }
            let bytes = Bytes::from(
                serde_json::to_vec(&next).map_err(|e| ApiError::internal(e.to_string()))?,
            );
            match self
                .store
                .update(&key, bytes.clone(), cur.mod_revision)
                .await
            {
                Ok(kv) => return Ok((Self::respond_raw(&bytes, kv.mod_revision)?, false)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e, info, name)),
            }
        }
        Err(ApiError::conflict(&info.qualified_plural(), name))
    }

    /// Pods bound to a node terminate gracefully; everything else goes at once.
    fn grace_period(&self, info: &ResourceInfo, obj: &Value, requested: Option<i64>) -> i64 {
        if info.kind != "Pod" {
            return 0;
        }
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase = obj
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bound || phase == "Succeeded" || phase == "Failed" {
            return 0;
        }
        requested
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0)
    }

    // ---- binding ------------------------------------------------------------------------

    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        binding: &[u8],
    ) -> Result<Bytes, ApiError> {
        let info = Self::info("pods")?;
        let binding = parse_object(binding)?;
        let target = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if target.is_empty() {
            return Err(ApiError::invalid(
                "Binding",
                name,
                vec![Cause::required("target.name")],
            ));
        }
        let bname = meta_str(&binding, "name");
        if !bname.is_empty() && bname != name {
            return Err(ApiError::bad_request(format!(
                "the name of the binding ({bname}) does not match the name of the pod ({name})"
            )));
        }
        let ns = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        let key = info.key(ns, name);
        for _ in 0..16 {
            let cur = self
                .store
                .get(&key, 0)
                .await
                .map_err(|e| store_error(e, info, name))?
                .ok_or_else(|| ApiError::not_found(&info.qualified_plural(), name))?;
            let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()});
            use crate::object_json::{Bind, bind_pod, bind_pod_value};
            let bound = match bind_pod(&cur.value, &target, &condition) {
                Some(b) => b,
                None => {
                    bind_pod_value(&cur.value, &target, &condition).map_err(ApiError::internal)?
                }
            };
            let bytes = match bound {
                Bind::Bound(b) => Bytes::from(b),
                Bind::Assigned(assigned) => return Err(Self::already_assigned(name, &assigned)),
                Bind::Deleting => return Err(Self::bind_deleting(name)),
            };
            match self
                .store
                .update(&key, bytes.clone(), cur.mod_revision)
                .await
            {
                Ok(kv) => return Self::respond_raw(&bytes, kv.mod_revision),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e, info, name)),
            }
        }
        Err(ApiError::conflict("pods/binding", name))
    }

    fn already_assigned(name: &str, assigned: &str) -> ApiError {
        ApiError {
            name: name.into(),
            kind: "pods/binding".into(),
            ..ApiError::new(
                Reason::Conflict,
                format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{assigned}\""
                ),
            )
        }
    }

    fn bind_deleting(name: &str) -> ApiError {
        ApiError::new(
            Reason::Conflict,
            format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host"
            ),
        )
    }
}
