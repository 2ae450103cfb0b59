//! The node agent end to end: a real API server, real agents (each test its own node and
//! node network namespace), real containers, cgroups, mounts and pod networking.
//!
//! Own `main` (libtest-mimic): the spawner is forked before any thread exists.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};
use skiff_apiserver::registry::{Config, Registry};
use skiff_client::skiff_api::proto::{ExecInput, TerminalSize};
use skiff_client::{Client, DeleteParams};
use skiff_dataplane::netns::Netns;
use skiff_kubelet::agent::{Agent, AgentConfig, purge};
use skiff_kubelet::image::ImageStore;
use skiff_kubelet::runtime::spawner;
use skiff_store::embedded::{EmbeddedOptions, EmbeddedStore};

const IMAGE: &str = "skiff.test/busybox:1";

struct Fixture {
    root: PathBuf,
    socket: PathBuf,
    api: String,
    layout: PathBuf,
    cgroup_parent: String,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fx() -> &'static Fixture {
    FIXTURE.get().expect("fixture")
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "node_registers_and_renews_its_lease",
            node_registers_and_renews_its_lease,
        ),
        Trial::test(
            "init_container_then_two_containers_share_localhost_and_an_empty_dir",
            init_then_two_containers_share_localhost_and_empty_dir,
        ),
        Trial::test(
            "crash_loop_backs_off_with_doubling_delays",
            crash_loop_backs_off_with_doubling_delays,
        ),
        Trial::test(
            "a_long_enough_run_resets_the_back_off",
            a_long_enough_run_resets_the_back_off,
        ),
        Trial::test(
            "memory_hog_is_reported_oom_killed",
            memory_hog_is_reported_oom_killed,
        ),
        Trial::test(
            "deletion_sends_sigterm_then_sigkill_on_time",
            deletion_sends_sigterm_then_sigkill_on_time,
        ),
        Trial::test(
            "restarted_agent_adopts_running_containers",
            restarted_agent_adopts_running_containers,
        ),
        Trial::test(
            "bad_pods_report_reasons_and_others_keep_running",
            bad_pods_report_reasons_and_others_keep_running,
        ),
        Trial::test(
            "probes_gate_readiness_and_restart_on_liveness_failure",
            probes_gate_readiness_and_restart_on_liveness_failure,
        ),
        Trial::test(
            "oci_runtimes_crun_and_runc_run_the_same_pods",
            oci_runtimes_crun_and_runc_run_the_same_pods,
        ),
        Trial::test(
            "volumes_env_and_secrets_reach_the_container",
            volumes_env_and_secrets_reach_the_container,
        ),
        Trial::test(
            "stdin_and_tty_containers_get_an_open_stdin_and_a_terminal",
            stdin_and_tty_containers_get_an_open_stdin_and_a_terminal,
        ),
        Trial::test(
            "startup_probe_gates_the_others_and_logs_rotate",
            startup_probe_gates_the_others_and_logs_rotate,
        ),
        Trial::test(
            "logs_and_exec_through_the_api_server",
            logs_and_exec_through_the_api_server,
        ),
        Trial::test(
            "a_pod_deleted_while_no_agent_ran_is_cleaned_up_by_the_next",
            a_pod_deleted_while_no_agent_ran_is_cleaned_up_by_the_next,
        ),
        Trial::test(
            "purge_removes_what_a_stopped_agent_left",
            purge_removes_what_a_stopped_agent_left,
        ),
    ];
    if args.list {
        return libtest_mimic::run(&args, tests).exit_code();
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = match tempfile::Builder::new().prefix("skiff-pods-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tempdir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = match spawner::start(&tmp.path().join("spawner")) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("spawner: {e}");
            return ExitCode::FAILURE;
        }
    };
    let layout = tmp.path().join("layout");
    if let Err(e) =
        skiff_kubelet::image::build::busybox_image(&layout, IMAGE, Path::new("/bin/busybox"))
    {
        eprintln!("image: {e}");
        return ExitCode::FAILURE;
    }
    // The API server runs for the whole binary on a runtime of its own.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let store_dir = tmp.path().join("store");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let store = EmbeddedStore::open(&store_dir, EmbeddedOptions::default()).expect("store");
            let registry = Registry::new(Arc::new(store), Config::default())
                .await
                .expect("registry");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let _ = addr_tx.send(listener.local_addr().expect("addr").to_string());
            let _ = skiff_apiserver::serve(registry, listener, std::future::pending()).await;
        });
    });
    let Ok(api) = addr_rx.recv() else {
        eprintln!("API server did not start");
        return ExitCode::FAILURE;
    };
    let cgroup_parent = format!("skiff-test-{}", std::process::id());
    let _ = FIXTURE.set(Fixture {
        root: tmp.path().to_path_buf(),
        socket: handle.socket().to_path_buf(),
        api,
        layout,
        cgroup_parent: cgroup_parent.clone(),
    });
    let conclusion = libtest_mimic::run(&args, tests);
    // Nothing may be left: mounts under the temp dir, cgroups under the test's parent.
    let mut leftovers = Vec::new();
    for m in purge::mounts_under(tmp.path()).unwrap_or_default() {
        leftovers.push(format!("mount: {m}"));
    }
    let hierarchies: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    for ctrl in &hierarchies {
        let p = Path::new("/sys/fs/cgroup").join(ctrl).join(&cgroup_parent);
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                leftovers.push(format!("cgroup: {}", e.path().display()));
            }
        }
    }
    if let Ok(h) = skiff_kubelet::runtime::cgroup::Hierarchy::detect() {
        skiff_kubelet::runtime::cgroup::remove_tree(&h, Path::new(&cgroup_parent), None);
    }
    drop(handle);
    if !leftovers.is_empty() {
        eprintln!("left behind:\n{}", leftovers.join("\n"));
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's node: its network namespace, data dir and agent; on drop every pod of the
/// test's namespace is force-deleted and the agent given time to tear them down.
struct TestNode {
    name: String,
    ns: String,
    netns: Netns,
    cfg: AgentConfig,
    agent: Option<Agent>,
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl TestNode {
    fn new(tune: impl FnOnce(&mut AgentConfig)) -> Result<TestNode, Failed> {
        let f = fx();
        let name = unique("node");
        // The node's own address (on lo: this node has no uplink).
        let netns = Netns::create_with_loopback_address(std::net::Ipv4Addr::new(198, 18, 0, 10))?;
        let data = f.root.join(&name);
        let store = ImageStore::open(&data.join("images"))?;
        store.import(&f.layout)?;
        let mut cfg = AgentConfig::new(&name, &f.api, &data);
        cfg.pod_network = true;
        cfg.node_netns = Some(PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            netns_fd(&netns)
        )));
        cfg.node_ip = "198.18.0.10".parse()?;
        cfg.pod_cidr = "198.18.1.0/24".parse()?;
        cfg.cgroup_parent = format!("{}/{name}", f.cgroup_parent);
        cfg.cores = 2;
        cfg.lease_period = Duration::from_millis(300);
        cfg.backoff_base = Duration::from_millis(1000);
        tune(&mut cfg);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(Client::connect(&f.api))?;
        let ns = unique("t");
        rt.block_on(
            client
                .api::<Namespace>("")
                .create(&serde_json::from_value(json!({"metadata": {"name": ns}}))?),
        )?;
        let agent = Agent::start(cfg.clone(), &f.socket)?;
        Ok(TestNode {
            name,
            ns,
            netns,
            cfg,
            agent: Some(agent),
            rt,
            client,
        })
    }

    fn restart_agent(&mut self) -> Result<(), Failed> {
        if let Some(a) = self.agent.take() {
            a.stop();
        }
        self.agent = Some(Agent::start(self.cfg.clone(), &fx().socket)?);
        Ok(())
    }

    fn create(&self, pod: Value) -> Result<Pod, Failed> {
        let mut pod = pod;
        pod["metadata"]["namespace"] = json!(self.ns);
        pod["spec"]["nodeName"] = json!(self.name);
        let p: Pod = serde_json::from_value(pod)?;
        Ok(self
            .rt
            .block_on(self.client.api::<Pod>(&self.ns).create(&p))?)
    }

    fn get(&self, name: &str) -> Result<Option<Pod>, Failed> {
        Ok(self
            .rt
            .block_on(self.client.api::<Pod>(&self.ns).get_opt(name))?)
    }

    /// Polls the pod's status (as JSON) until `ok` holds.
    fn wait(&self, name: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Result<Value, Failed> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(p) = self.get(name)? {
                last = serde_json::to_value(&p.status)?;
                if ok(&last) {
                    return Ok(last);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("pod {name}: condition not reached in {secs}s; status: {last:#}").into())
    }

    fn delete(&self, name: &str, grace: Option<i64>) -> Result<(), Failed> {
        let params = DeleteParams {
            grace_period_seconds: grace,
            ..Default::default()
        };
        self.rt
            .block_on(self.client.api::<Pod>(&self.ns).delete(name, &params))?;
        Ok(())
    }

    fn wait_gone(&self, name: &str, secs: u64) -> Result<Duration, Failed> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            if self.get(name)?.is_none() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!("pod {name} still exists after {secs}s").into())
    }

    fn log(&self, pod: &Pod, container: &str, restart: u32) -> String {
        let dir = skiff_kubelet::agent::logs::pod_log_dir(
            &self.cfg.log_dir,
            &self.ns,
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default(),
        );
        skiff_kubelet::agent::logs::text(&skiff_kubelet::agent::logs::container_log(
            &dir, container, restart,
        ))
        .unwrap_or_default()
    }
}

fn netns_fd(n: &Netns) -> i32 {
    // The agent opens the node namespace by path; this process holds it by descriptor.
    std::os::fd::AsFd::as_fd(n).as_raw_fd()
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let api = self.client.api::<Pod>(&self.ns);
        let _ = self.rt.block_on(async {
            let pods = api.list(&Default::default()).await?;
            for p in &pods.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                let _ = api
                    .delete(
                        &name,
                        &DeleteParams {
                            grace_period_seconds: Some(1),
                            ..Default::default()
                        },
                    )
                    .await;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if api.list(&Default::default()).await?.items.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The objects go before the agent has finished tearing force-deleted pods
            // down: wait for their directories to go too.
            let pods = self.cfg.data_dir.join("pods");
            while Instant::now() < deadline
                && std::fs::read_dir(&pods)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, skiff_client::skiff_api::ApiError>(())
        });
        if let Some(a) = self.agent.take() {
            a.stop();
        }
        if let Ok(h) = skiff_kubelet::runtime::cgroup::Hierarchy::detect() {
            skiff_kubelet::runtime::cgroup::remove_tree(
                &h,
                Path::new(&self.cfg.cgroup_parent),
                None,
            );
        }
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(what().into()) }
}

fn container<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn condition(status: &Value, kind: &str) -> String {
    status["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn node_registers_and_renews_its_lease() -> Result<(), Failed> {
    let n = TestNode::new(|_| {})?;
    let nodes = n.client.api::<Node>("");
    let deadline = Instant::now() + Duration::from_secs(10);
    let node = loop {
        if let Some(node) = n.rt.block_on(nodes.get_opt(&n.name))? {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                break node;
            }
        }
        check(Instant::now() < deadline, || {
            "node not registered Ready".into()
        })?;
        std::thread::sleep(Duration::from_millis(50));
    };
    let st = node.status.clone().unwrap_or_default();
    let cap = st.capacity.unwrap_or_default();
    check(cap.get("pods").map(|q| q.0.as_str()) == Some("110"), || {
        format!("{cap:?}")
    })?;
    check(
        cap.contains_key("cpu") && cap.contains_key("memory"),
        || format!("{cap:?}"),
    )?;
    check(
        node.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .as_deref()
            == Some("198.18.1.0/24"),
        || format!("{:?}", node.spec),
    )?;
    check(
        st.addresses
            .unwrap_or_default()
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "198.18.0.10"),
        || "InternalIP".into(),
    )?;
    let leases = n.client.api::<Lease>("kube-node-lease");
    let renew = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.clone())
            .map(|t| t.0.to_string())
    };
    let first = n.rt.block_on(leases.get(&n.name))?;
    std::thread::sleep(Duration::from_millis(900));
    let second = n.rt.block_on(leases.get(&n.name))?;
    check(
        renew(&first).is_some() && renew(&first) != renew(&second),
        || {
            format!(
                "lease not renewed: {:?} {:?}",
                renew(&first),
                renew(&second)
            )
        },
    )?;
    check(
        second
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .as_deref()
            == Some(n.name.as_str()),
        || "holder".into(),
    )
}

fn init_then_two_containers_share_localhost_and_empty_dir() -> Result<(), Failed> {
    let n = TestNode::new(|_| {})?;
    let pod = n.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [{
                "name": "init", "image": IMAGE,
                "command": ["sh", "-c", "echo prepared-by-init > /work/index.html"],
                "volumeMounts": [{"name": "shared", "mountPath": "/work"}]
            }],
            "containers": [
                {"name": "server", "image": IMAGE,
                 "command": ["httpd", "-f", "-p", "8080", "-h", "/work"],
                 "volumeMounts": [{"name": "shared", "mountPath": "/work"}]},
                {"name": "client", "image": IMAGE,
                 "command": ["sh", "-c", "until wget -q -O /data/fetched http://127.0.0.1:8080/index.html; do sleep 0.1; done; cat /data/fetched; hostname; sleep 1000"],
                 "volumeMounts": [{"name": "shared", "mountPath": "/data"}]}
            ]
        }
    }))?;
    let st = n.wait("web", 30, |s| condition(s, "Ready") == "True")?;
    check(st["phase"] == "Running", || format!("{st:#}"))?;
    check(condition(&st, "Initialized") == "True", || {
        format!("{st:#}")
    })?;
    let init = &st["initContainerStatuses"][0];
    check(init["state"]["terminated"]["reason"] == "Completed", || {
        format!("{init:#}")
    })?;
    check(init["state"]["terminated"]["exitCode"] == 0, || {
        format!("{init:#}")
    })?;
    let ip = st["podIP"].as_str().unwrap_or_default().to_string();
    check(ip.starts_with("198.18.1."), || format!("podIP {ip}"))?;
    // The client fetched the init container's file from the server over localhost.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = n.log(&pod, "client", 0);
        if log.contains("prepared-by-init\nweb\n") {
            break;
        }
        check(Instant::now() < deadline, || format!("client log: {log:?}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the node reaches the pod on its IP through the pod network.
    let body = n.netns.run(|| -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect((ip.as_str(), 8080))?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    check(body.contains("prepared-by-init"), || body.clone())?;
    n.delete("web", Some(1))?;
    n.wait_gone("web", 20)?;
    // The pod's veth is gone from the node.
    let links = n.netns.block_on(async {
        let nl = skiff_dataplane::netlink::Netlink::open()?;
        nl.links().await
    })??;
    check(links.iter().all(|name| name == "lo"), || {
        format!("links left: {links:?}")
    })?;
    // And its address is free again.
    let ipam = skiff_dataplane::ipam::Ipam::open(&n.cfg.data_dir, n.cfg.pod_cidr)?;
    let held = ipam.allocations()?;
    check(held.is_empty(), || {
        format!("addresses still allocated: {held:?}")
    })
}

fn crash_loop_backs_off_with_doubling_delays() -> Result<(), Failed> {
    let n = TestNode::new(|c| c.backoff_base = Duration::from_millis(1000))?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crash"},
        "spec": {"containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", "echo run; exit 3"]}]}
    }))?;
    // Record when each restart count is first seen.
    let start = Instant::now();
    let mut seen: BTreeMap<u64, Duration> = BTreeMap::new();
    let mut waiting_reason = String::new();
    while start.elapsed() < Duration::from_secs(20) && !seen.contains_key(&3) {
        if let Some(p) = n.get("crash")? {
            let st = serde_json::to_value(&p.status)?;
            let c = container(&st, "c");
            if let Some(rc) = c["restartCount"].as_u64() {
                seen.entry(rc).or_insert(start.elapsed());
            }
            if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
                waiting_reason = r.to_string();
                if r == "CrashLoopBackOff" {
                    let last = &c["lastState"]["terminated"];
                    check(last["exitCode"] == 3 && last["reason"] == "Error", || {
                        format!("{c:#}")
                    })?;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check(seen.contains_key(&3), || format!("restarts seen: {seen:?}"))?;
    check(waiting_reason == "CrashLoopBackOff", || {
        waiting_reason.clone()
    })?;
    // As the kubelet: first restart at once, then base, then 2 x base.
    let gap = |a: u64, b: u64| seen[&b].saturating_sub(seen[&a]);
    let (g12, g23) = (gap(1, 2), gap(2, 3));
    check(seen.contains_key(&1) && seen.contains_key(&2), || {
        format!("restarts seen: {seen:?}")
    })?;
    if let Some(t0) = seen.get(&0) {
        let g01 = seen[&1].saturating_sub(*t0);
        check(g01 < Duration::from_millis(900), || {
            format!("first restart not immediate: {seen:?}")
        })?;
    }
    check(
        g12 >= Duration::from_millis(900) && g12 < Duration::from_millis(1900),
        || format!("1->2 {g12:?}: {seen:?}"),
    )?;
    check(
        g23 >= Duration::from_millis(1900) && g23 < Duration::from_millis(3000),
        || format!("2->3 {g23:?}: {seen:?}"),
    )
}

fn memory_hog_is_reported_oom_killed() -> Result<(), Failed> {
    let n = TestNode::new(|_| {})?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hog"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "hog", "image": IMAGE, "command": ["tail", "/dev/zero"],
            "resources": {"limits": {"memory": "32Mi"}}
        }]}
    }))?;
    let st = n.wait("hog", 30, |s| s["phase"] == "Failed")?;
    let t = &container(&st, "hog")["state"]["terminated"];
    check(t["reason"] == "OOMKilled" && t["exitCode"] == 137, || {
        format!("{st:#}")
    })
}

fn deletion_sends_sigterm_then_sigkill_on_time() -> Result<(), Failed> {
    let n = TestNode::new(|_| {})?;
    let pod = n.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "term"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [
            {"name": "polite", "image": IMAGE,
             "command": ["sh", "-c", "trap 'echo got-term; exit 0' TERM; echo up; while true; do sleep 0.1; done"],
             "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop > /proc/1/fd/1"]}}}},
            {"name": "stubborn", "image": IMAGE,
             "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]}
        ]}
    }))?;
    n.wait("term", 30, |s| condition(s, "Ready") == "True")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !n.log(&pod, "polite", 0).contains("up") {
        check(Instant::now() < deadline, || "polite never logged".into())?;
        std::thread::sleep(Duration::from_millis(20));
    }
    n.delete("term", None)?;
    let start = Instant::now();
    // SIGTERM reaches the polite container at once.
    let mut got_term = None;
    let mut order = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        let log = n.log(&pod, "polite", 0);
        if got_term.is_none() && log.contains("got-term") {
            got_term = Some(start.elapsed());
            order = log;
        }
        if n.get("term")?.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = start.elapsed();
    let got_term = got_term.ok_or("polite never saw SIGTERM")?;
    // The preStop hook ran inside the container, before SIGTERM.
    let pre = order
        .find("prestop")
        .ok_or_else(|| format!("no preStop output in {order:?}"))?;
    let term = order.find("got-term").unwrap_or(0);
    check(pre < term, || format!("preStop after SIGTERM: {order:?}"))?;
    check(got_term < Duration::from_millis(1500), || {
        format!("SIGTERM after {got_term:?}")
    })?;
    // The stubborn one is killed when the 2 s grace period ends.
    check(
        gone >= Duration::from_millis(1900) && gone < Duration::from_millis(5000),
        || format!("pod removed after {gone:?}"),
    )
}

fn restarted_agent_adopts_running_containers() -> Result<(), Failed> {
    let mut n = TestNode::new(|_| {})?;
    let pod = n.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "steady"},
        "spec": {"containers": [{"name": "tick", "image": IMAGE,
            "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"]}]}
    }))?;
    let before = n.wait("steady", 30, |s| condition(s, "Ready") == "True")?;
    let id = container(&before, "tick")["containerID"].clone();
    n.restart_agent()?;
    // Give the new agent time to adopt and to publish.
    std::thread::sleep(Duration::from_millis(1500));
    let after = n.wait("steady", 10, |s| condition(s, "Ready") == "True")?;
    let c = container(&after, "tick");
    check(c["containerID"] == id, || {
        format!("container replaced: {id} -> {}", c["containerID"])
    })?;
    check(c["restartCount"] == 0, || format!("{c:#}"))?;
    // The spawner still holds the pod's namespaces: the new agent found them (same
    // address, no second sandbox).
    check(
        after["status"]["podIP"] == before["status"]["podIP"],
        || {
            format!(
                "pod IP {} -> {}",
                before["status"]["podIP"], after["status"]["podIP"]
            )
        },
    )?;
    // The log kept flowing through the restart: consecutive ticks, none lost.
    let log = n.log(&pod, "tick", 0);
    let ticks: Vec<u64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    check(ticks.len() > 10, || format!("{} ticks", ticks.len()))?;
    check(ticks.windows(2).all(|w| w[1] == w[0] + 1), || {
        format!("gap in ticks: {ticks:?}")
    })?;
    // And it is still managed: deletion works.
    n.delete("steady", Some(1))?;
    n.wait_gone("steady", 20)?;
    Ok(())
}

fn bad_pods_report_reasons_and_others_keep_running() -> Result<(), Failed> {
    let n = TestNode::new(|c| c.backoff_base = Duration::from_millis(500))?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "good"},
        "spec": {"containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "1000"]}]}
    }))?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "noimage"},
        "spec": {"containers": [{"name": "c", "image": "127.0.0.1:1/missing:1", "command": ["true"]}]}
    }))?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "badcmd"},
        "spec": {"containers": [{"name": "c", "image": IMAGE, "command": ["no-such-binary"]}]}
    }))?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nocm"},
        "spec": {
            "volumes": [{"name": "cfg", "configMap": {"name": "absent"}}],
            "containers": [{"name": "c", "image": IMAGE, "command": ["true"],
                            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]}
    }))?;
    let reason = |s: &Value| {
        container(s, "c")["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    n.wait("noimage", 20, |s| reason(s) == "ErrImagePull")?;
    n.wait("noimage", 20, |s| reason(s) == "ImagePullBackOff")?;
    let st = n.wait("badcmd", 20, |s| {
        reason(s) == "RunContainerError" || reason(s) == "CrashLoopBackOff"
    })?;
    let c = container(&st, "badcmd");
    let _ = c;
    let msg = serde_json::to_string(&st)?;
    check(msg.contains("executable file not found in $PATH"), || {
        msg.clone()
    })?;
    let st = n.wait("nocm", 20, |s| reason(s) == "CreateContainerConfigError")?;
    let msg = container(&st, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    check(msg.contains("configmap \"absent\" not found"), || {
        msg.clone()
    })?;
    // The good pod was never disturbed.
    let st = n.wait("good", 20, |s| condition(s, "Ready") == "True")?;
    check(container(&st, "c")["restartCount"] == 0, || {
        format!("{st:#}")
    })?;
    // Creating the ConfigMap lets the waiting pod start.
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "absent", "namespace": n.ns}, "data": {"k": "v"}}),
    )?;
    n.rt.block_on(n.client.api::<ConfigMap>(&n.ns).create(&cm))?;
    n.wait("nocm", 20, |s| {
        s["phase"] == "Running" || s["phase"] == "Succeeded"
    })?;
    Ok(())
}

fn purge_removes_what_a_stopped_agent_left() -> Result<(), Failed> {
    let mut n = TestNode::new(|_| {})?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "left"},
        "spec": {
            "volumes": [{"name": "mem", "emptyDir": {"medium": "Memory"}}],
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "1000"],
                            "volumeMounts": [{"name": "mem", "mountPath": "/mem"}]}]}
    }))?;
    n.wait("left", 30, |s| condition(s, "Ready") == "True")?;
    // The agent stops; its container, the spawner holding the sandbox and the tmpfs
    // volume stay (for adoption). Sandboxes are not mounts.
    if let Some(a) = n.agent.take() {
        a.stop();
    }
    let data = n.cfg.data_dir.clone();
    let mounted = || purge::mounts_under(&data).map_or(0, |m| m.len());
    check(mounted() == 1, || {
        format!("{} mounts before the purge", mounted())
    })?;
    let purged =
        skiff_kubelet::agent::purge::purge(&data, &n.cfg.cgroup_parent, n.cfg.cgroup2.as_deref())?;
    check(purged.processes >= 1 && purged.pods == 1, || {
        format!("{purged:?}")
    })?;
    check(mounted() == 0, || {
        format!("{} mounts after the purge", mounted())
    })?;
    check(!data.join("pods").exists(), || {
        "pod directories left".into()
    })?;
    let h = skiff_kubelet::runtime::cgroup::Hierarchy::detect()?;
    if let skiff_kubelet::runtime::cgroup::Hierarchy::V1(root) = h {
        let cg = root.join("memory").join(&n.cfg.cgroup_parent);
        check(!cg.exists(), || format!("{} left", cg.display()))?;
    }
    // The API still has the pod; a new agent finds nothing to adopt and starts it afresh.
    n.restart_agent()?;
    n.wait("left", 30, |s| condition(s, "Ready") == "True")?;
    Ok(())
}

fn a_pod_deleted_while_no_agent_ran_is_cleaned_up_by_the_next() -> Result<(), Failed> {
    let mut n = TestNode::new(|_| {})?;
    let pod = n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan"},
        "spec": {"containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "1000"]}]}
    }))?;
    n.wait("orphan", 30, |s| condition(s, "Ready") == "True")?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(a) = n.agent.take() {
        a.stop();
    }
    // Force-deleted while no agent watches.
    n.delete("orphan", Some(0))?;
    n.wait_gone("orphan", 10)?;
    let dir = n.cfg.data_dir.join("pods").join(&uid);
    check(dir.exists(), || {
        "the stopped agent already removed the pod".into()
    })?;
    n.restart_agent()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir.exists() {
        check(Instant::now() < deadline, || {
            "orphaned pod not cleaned up".into()
        })?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let mounts = purge::mounts_under(&n.cfg.data_dir)?.len();
    check(mounts == 0, || format!("{mounts} mounts left"))?;
    // Its container was killed: the pod's cgroup (which only an empty cgroup may leave)
    // is gone.
    if let skiff_kubelet::runtime::cgroup::Hierarchy::V1(root) =
        skiff_kubelet::runtime::cgroup::Hierarchy::detect()?
    {
        let cg = root
            .join("pids")
            .join(&n.cfg.cgroup_parent)
            .join(format!("pod{uid}"));
        check(!cg.exists(), || format!("{} left", cg.display()))?;
    }
    Ok(())
}

fn probes_gate_readiness_and_restart_on_liveness_failure() -> Result<(), Failed> {
    let n = TestNode::new(|_| {})?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "gated", "image": IMAGE,
             "command": ["sh", "-c", "sleep 2; touch /tmp/ready; httpd -f -p 8080 -h /tmp"],
             "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
             "livenessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "initialDelaySeconds": 3, "periodSeconds": 1}},
            {"name": "dead", "image": IMAGE, "command": ["sleep", "1000"],
             "livenessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1, "failureThreshold": 2}}
        ]}
    }))?;
    // Not ready until its probe passes, although running.
    let st = n.wait("probed", 20, |s| {
        container(s, "gated")["state"]["running"].is_object()
    })?;
    check(container(&st, "gated")["ready"] == false, || {
        format!("{st:#}")
    })?;
    check(condition(&st, "Ready") == "False", || format!("{st:#}"))?;
    n.wait("probed", 20, |s| container(s, "gated")["ready"] == true)?;
    // The liveness probe against a closed port restarts the other one.
    let st = n.wait("probed", 30, |s| {
        container(s, "dead")["restartCount"].as_u64().unwrap_or(0) >= 1
    })?;
    let last = &container(&st, "dead")["lastState"]["terminated"];
    check(last["exitCode"] == 137, || format!("{st:#}"))?;
    // The passing httpGet liveness probe never restarted the first.
    check(container(&st, "gated")["restartCount"] == 0, || {
        format!("{st:#}")
    })?;
    // And the kubelet's events say why.
    let events = n.rt.block_on(
        n.client
            .api::<k8s_openapi::api::core::v1::Event>(&n.ns)
            .list(&Default::default()),
    )?;
    let unhealthy = events.items.iter().any(|e| {
        e.reason.as_deref() == Some("Unhealthy")
            && e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Liveness probe failed"))
    });
    check(unhealthy, || "no Unhealthy event".into())?;
    let killing = events.items.iter().any(|e| {
        e.reason.as_deref() == Some("Killing")
            && e.message
                .as_deref()
                .is_some_and(|m| m.contains("failed liveness probe"))
    });
    check(killing, || "no Killing event".into())
}

fn logs_and_exec_through_the_api_server() -> Result<(), Failed> {
    use futures::StreamExt;
    use skiff_api::proto::{PodExecRequest, PodLogsRequest};
    let n = TestNode::new(|c| {
        // The API server (in this process's namespace) reaches the node API on loopback.
        c.node_ip = std::net::Ipv4Addr::LOCALHOST;
        c.serve_addr = Some("127.0.0.1:0".parse().expect("addr"));
        c.backoff_base = Duration::from_millis(300);
    })?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
        "spec": {"containers": [{"name": "c", "image": IMAGE,
            "command": ["sh", "-c", "echo one; echo two; echo three >&2; sleep 1; echo later; sleep 1000"]}]}
    }))?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "c", "image": IMAGE,
            "command": ["sh", "-c", "echo run; exit 1"]}]}
    }))?;
    n.wait("talker", 30, |s| condition(s, "Ready") == "True")?;
    let logs = |req: PodLogsRequest, chunks: usize| -> Result<String, Failed> {
        n.rt.block_on(async {
            let mut stream = n.client.pod_logs(req).await?;
            let mut out = String::new();
            let mut got = 0;
            while got < chunks {
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                    Ok(Some(c)) => {
                        out.push_str(&String::from_utf8_lossy(&c?));
                        got += 1;
                    }
                    _ => break,
                }
            }
            Ok::<_, Failed>(out)
        })
    };
    let req = |name: &str| PodLogsRequest {
        namespace: n.ns.clone(),
        name: name.into(),
        tail_lines: -1,
        ..Default::default()
    };
    let all = logs(req("talker"), 1)?;
    // stdout and stderr are two pipes: each keeps its order, not their interleaving (as
    // with CRI runtimes).
    let first: Vec<&str> = all.lines().take(3).collect();
    let at = |l: &str| first.iter().position(|x| *x == l);
    check(
        first.len() == 3 && at("three").is_some() && at("one") < at("two") && at("one").is_some(),
        || format!("{all:?}"),
    )?;
    let last = logs(
        PodLogsRequest {
            tail_lines: 1,
            ..req("talker")
        },
        1,
    )?;
    // The last line so far: the third of the first three (whichever pipe's line was
    // written last), or the later one.
    check(
        last == format!("{}\n", first[2]) || last == "later\n",
        || format!("{last:?}"),
    )?;
    // Following: the line written a second later arrives.
    let mut followed = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !followed.contains("later") && Instant::now() < deadline {
        followed = logs(
            PodLogsRequest {
                follow: true,
                ..req("talker")
            },
            2,
        )?;
    }
    check(followed.contains("later\n"), || format!("{followed:?}"))?;
    let stamped = logs(
        PodLogsRequest {
            timestamps: true,
            ..req("talker")
        },
        1,
    )?;
    check(
        stamped
            .split(' ')
            .next()
            .is_some_and(|t| t.ends_with('Z') && t.len() > 20),
        || stamped.clone(),
    )?;
    // --previous: the run before the current one.
    n.wait("crasher", 30, |s| {
        container(s, "c")["restartCount"].as_u64().unwrap_or(0) >= 1
    })?;
    let prev = logs(
        PodLogsRequest {
            previous: true,
            ..req("crasher")
        },
        1,
    )?;
    check(prev == "run\n", || format!("{prev:?}"))?;
    // Exec: output and exit code, inside the container.
    let (out, code) = n.rt.block_on(n.client.pod_exec(PodExecRequest {
        namespace: n.ns.clone(),
        name: "talker".into(),
        command: vec!["sh".into(), "-c".into(), "echo hi; hostname; exit 3".into()],
        ..Default::default()
    }))?;
    let out = String::from_utf8_lossy(&out).to_string();
    check(out == "hi\ntalker\n" && code == 3, || {
        format!("{out:?} {code}")
    })?;
    // Exec streams: the first line arrives while the command still runs (it waits for a
    // file a second exec creates), and stdout and stderr come apart.
    let exec = |command: &str| PodExecRequest {
        namespace: n.ns.clone(),
        name: "talker".into(),
        command: vec!["sh".into(), "-c".into(), command.into()],
        ..Default::default()
    };
    let (first, rest) = n.rt.block_on(async {
        let next = async |s: &mut skiff_client::skiff_api::local::ExecStream| {
            tokio::time::timeout(Duration::from_secs(20), s.next())
                .await
                .map_err(|_| "no exec output within 20 s")?
                .ok_or("the exec stream ended")?
                .map_err(|e| format!("{e}"))
        };
        let mut s = n
            .client
            .pod_exec_stream(
                exec("echo out; until [ -e /tmp/go ]; do sleep 0.05; done; echo err >&2; exit 4"),
                None,
            )
            .await?;
        let first = next(&mut s).await?;
        n.client.pod_exec(exec("touch /tmp/go")).await?;
        let mut rest = vec![next(&mut s).await?];
        while !rest.last().is_some_and(|m| m.done) {
            rest.push(next(&mut s).await?);
        }
        Ok::<_, Failed>((first, rest))
    })?;
    check(
        first.stream == 1 && &first.output[..] == b"out\n" && !first.done,
        || format!("{first:?}"),
    )?;
    check(
        rest.len() == 2
            && rest[0].stream == 2
            && &rest[0].output[..] == b"err\n"
            && rest[1].exit_code == 4,
        || format!("{rest:?}"),
    )?;
    // exec -i: the command reads what we send, and the end of our stream is its end of
    // file.
    let (out, code) = n.rt.block_on(async {
        let stdin: skiff_client::ExecInputStream = Box::pin(futures::stream::iter(
            [&b"hello\n"[..], b"world\n"].map(|b| ExecInput {
                stdin: bytes::Bytes::from_static(b),
                ..Default::default()
            }),
        ));
        let mut req = exec("cat; echo eof");
        req.stdin = true;
        let mut s = n.client.pod_exec_stream(req, Some(stdin)).await?;
        let mut out = Vec::new();
        while let Some(m) = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .map_err(|_| "exec -i: no output within 20 s")?
        {
            let m = m?;
            out.extend_from_slice(&m.output);
            if m.done {
                return Ok::<_, Failed>((out, m.exit_code));
            }
        }
        Err("exec -i: the stream ended without an exit code".into())
    })?;
    let out = String::from_utf8_lossy(&out).to_string();
    check(out == "hello\nworld\neof\n" && code == 0, || {
        format!("{out:?} {code}")
    })?;
    // exec -t: the command runs on a terminal of the size asked for (stdin and stdout are
    // terminals, its newlines come back as the terminal writes them), a resize reaches it,
    // and what we type is its input.
    let (out, code) = n.rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(4);
        let input: skiff_client::ExecInputStream =
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut req = exec("stty size; [ -t 0 ] && [ -t 1 ] && echo on-a-tty; read l; stty size; echo \"got $l\"; exit 5");
        req.stdin = true;
        req.tty = true;
        req.size = Some(TerminalSize { width: 100, height: 30 });
        let mut s = n.client.pod_exec_stream(req, Some(input)).await?;
        let mut out = Vec::new();
        let mut typed = false;
        while let Some(m) = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .map_err(|_| "exec -t: no output within 20 s")?
        {
            let m = m?;
            if m.done {
                return Ok::<_, Failed>((out, m.exit_code));
            }
            if m.stream != 1 {
                return Err(format!("exec -t: output on stream {}", m.stream).into());
            }
            out.extend_from_slice(&m.output);
            if !typed && String::from_utf8_lossy(&out).contains("on-a-tty\r\n") {
                typed = true;
                let resize = TerminalSize { width: 120, height: 40 };
                for m in [
                    ExecInput { resize: Some(resize), ..Default::default() },
                    ExecInput { stdin: bytes::Bytes::from_static(b"hello\n"), ..Default::default() },
                ] {
                    tx.send(m).await.map_err(|_| "exec -t: input closed")?;
                }
            }
        }
        Err("exec -t: the stream ended without an exit code".into())
    })?;
    let out = String::from_utf8_lossy(&out).to_string();
    check(
        code == 5
            && out.starts_with("30 100\r\non-a-tty\r\n")
            && out.contains("hello\r\n")
            && out.ends_with("40 120\r\ngot hello\r\n"),
        || format!("{out:?} {code}"),
    )?;
    // A pod that does not exist is the API server's NotFound.
    let err =
        n.rt.block_on(n.client.pod_logs(req("nope")))
            .err()
            .ok_or("logs of a missing pod")?;
    check(
        err.reason == skiff_client::skiff_api::Reason::NotFound,
        || format!("{err:?}"),
    )
}

fn oci_runtimes_crun_and_runc_run_the_same_pods() -> Result<(), Failed> {
    for rt in ["/usr/bin/crun", "/usr/sbin/runc"] {
        if !Path::new(rt).exists() {
            return Err(format!("{rt} is not installed (cargo xtask setup installs it)").into());
        }
        let n = TestNode::new(|c| c.oci_runtime = Some(PathBuf::from(rt)))?;
        let pod = n.create(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "shared", "emptyDir": {}}],
                "initContainers": [{
                    "name": "init", "image": IMAGE,
                    "command": ["sh", "-c", "echo prepared-by-init > /work/index.html"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/work"}]
                }],
                "containers": [
                    {"name": "server", "image": IMAGE,
                     "command": ["httpd", "-f", "-p", "8080", "-h", "/work"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/work"}],
                     "readinessProbe": {"exec": {"command": ["test", "-f", "/work/index.html"]}, "periodSeconds": 1}},
                    {"name": "client", "image": IMAGE,
                     "command": ["sh", "-c", "until wget -q -O /data/fetched http://127.0.0.1:8080/index.html; do sleep 0.1; done; cat /data/fetched; hostname; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; sleep 1000"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/data"}]}
                ]
            }
        }))?;
        let st = n
            .wait("web", 30, |s| condition(s, "Ready") == "True")
            .map_err(|e| format!("{rt}: {:?}", e.message()))?;
        check(
            st["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0,
            || format!("{rt}: {st:#}"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = n.log(&pod, "client", 0);
            if log.contains("Seccomp") || Instant::now() > deadline {
                break log;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for want in [
            "prepared-by-init\nweb\n",
            "CapEff:\t00000000a80425fb",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ] {
            check(log.contains(want), || {
                format!("{rt}: {want:?} missing from {log:?}")
            })?;
        }
        n.delete("web", None)?;
        n.wait_gone("web", 20)
            .map_err(|e| format!("{rt}: {:?}", e.message()))?;
        let mounts = purge::mounts_under(&n.cfg.data_dir)?.len();
        check(mounts == 0, || format!("{rt}: {mounts} mounts left"))?;
    }
    Ok(())
}

/// `stdin: true` keeps the container's stdin open (a shell reading it waits instead of
/// ending); `tty: true` runs it on a terminal (its controlling one) whose output is its
/// log; without either, stdin is at end of file.
fn stdin_and_tty_containers_get_an_open_stdin_and_a_terminal() -> Result<(), Failed> {
    let n = TestNode::new(|_| {})?;
    let pod = n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "interactive"},
        "spec": {"containers": [
            {"name": "shell", "image": IMAGE, "stdin": true,
                "command": ["sh", "-c", "echo waiting; read line; echo \"stdin ended: $line\""]},
            {"name": "term", "image": IMAGE, "tty": true, "stdin": true,
                "command": ["sh", "-c", "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo on-a-tty; echo ctty=$(cut -d' ' -f7 /proc/self/stat); sleep 1000"]},
            {"name": "plain", "image": IMAGE,
                "command": ["sh", "-c", "read line || echo stdin-at-eof; sleep 1000"]}
        ]}
    }))?;
    n.wait("interactive", 30, |s| condition(s, "Ready") == "True")?;
    std::thread::sleep(Duration::from_millis(1500));
    let st = n.wait("interactive", 5, |_| true)?;
    let shell = st["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "shell"))
        .cloned()
        .unwrap_or_default();
    check(
        shell["restartCount"] == 0 && shell["state"]["running"].is_object(),
        || format!("the stdin container should still wait on its stdin: {shell:#}"),
    )?;
    let shell_log = n.log(&pod, "shell", 0);
    check(shell_log == "waiting\n", || format!("{shell_log:?}"))?;
    let term = n.log(&pod, "term", 0);
    check(
        term.starts_with("on-a-tty\nctty=") && !term.contains("ctty=0\n"),
        || format!("{term:?}"),
    )?;
    let plain = n.log(&pod, "plain", 0);
    check(plain == "stdin-at-eof\n", || format!("{plain:?}"))
}

fn volumes_env_and_secrets_reach_the_container() -> Result<(), Failed> {
    let n = TestNode::new(|_| {})?;
    let host_dir = n.cfg.data_dir.join("host-path");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings", "namespace": n.ns},
        "data": {"color": "blue", "app.conf": "port=8080\n"}
    }))?;
    n.rt.block_on(n.client.api::<ConfigMap>(&n.ns).create(&cm))?;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds", "namespace": n.ns},
        "data": {"password": "czNjcjN0"}
    }))?;
    n.rt.block_on(
        n.client
            .api::<k8s_openapi::api::core::v1::Secret>(&n.ns)
            .create(&secret),
    )?;
    let pod = n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vols", "labels": {"tier": "db"}},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [
                {"name": "cfg", "configMap": {"name": "settings", "items": [{"key": "app.conf", "path": "conf/app.conf"}]}},
                {"name": "sec", "secret": {"secretName": "creds"}},
                {"name": "host", "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}},
                {"name": "mem", "emptyDir": {"medium": "Memory"}}
            ],
            "containers": [{
                "name": "c", "image": IMAGE,
                "command": ["sh", "-c", "cat /cfg/conf/app.conf; cat /sec/password; echo; echo $(COLOR) $PASSWORD $POD $TIER; echo from-pod > /host/out; grep ' /mem ' /proc/mounts | cut -d' ' -f3"],
                "env": [
                    {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}}
                ],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/cfg", "readOnly": true},
                    {"name": "sec", "mountPath": "/sec", "readOnly": true},
                    {"name": "host", "mountPath": "/host"},
                    {"name": "mem", "mountPath": "/mem"}
                ]
            }]
        }
    }))?;
    let st = n.wait("vols", 30, |s| {
        s["phase"] == "Succeeded" || s["phase"] == "Failed"
    })?;
    check(st["phase"] == "Succeeded", || format!("{st:#}"))?;
    let log = n.log(&pod, "c", 0);
    for want in [
        "port=8080\n",
        "s3cr3t\n",
        "blue s3cr3t vols db\n",
        "tmpfs\n",
    ] {
        check(log.contains(want), || {
            format!("{want:?} missing from {log:?}")
        })?;
    }
    check(
        std::fs::read_to_string(host_dir.join("out"))? == "from-pod\n",
        || "hostPath".into(),
    )?;
    // Secrets never touch the disk: their volume is a tmpfs on the node.
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let sec = n
        .cfg
        .data_dir
        .join("pods")
        .join(&uid)
        .join("volumes/secret/sec");
    let tmpfs = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == sec.to_str() && l.contains(" - tmpfs "));
    check(tmpfs, || format!("{} is not a tmpfs", sec.display()))
}

fn startup_probe_gates_the_others_and_logs_rotate() -> Result<(), Failed> {
    let n = TestNode::new(|c| {
        c.log_max_bytes = 64 * 1024;
        c.log_max_files = 3;
    })?;
    let pod = n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "slow"},
        "spec": {"containers": [{
            "name": "c", "image": IMAGE,
            "command": ["sh", "-c", "sleep 2; touch /tmp/started; i=0; while [ $i -lt 3000 ]; do echo line-$i-padding-padding-padding-padding-padding-padding; i=$((i+1)); done; sleep 1000"],
            "startupProbe": {"exec": {"command": ["test", "-f", "/tmp/started"]}, "periodSeconds": 1, "failureThreshold": 30},
            "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/started"]}, "periodSeconds": 1, "failureThreshold": 1}
        }]}
    }))?;
    // Running but not started: the liveness probe (which would fail) is held back.
    let st = n.wait("slow", 20, |s| {
        container(s, "c")["state"]["running"].is_object()
    })?;
    check(container(&st, "c")["started"] == false, || {
        format!("{st:#}")
    })?;
    let st = n.wait("slow", 20, |s| container(s, "c")["started"] == true)?;
    check(container(&st, "c")["restartCount"] == 0, || {
        format!("{st:#}")
    })?;
    check(
        condition(&st, "Ready") == "True" || container(&st, "c")["ready"] == true,
        || format!("{st:#}"),
    )?;
    // ~200 KiB of output in 64 KiB files, 3 kept: the live one and two rotated.
    let dir = skiff_kubelet::agent::logs::pod_log_dir(
        &n.cfg.log_dir,
        &n.ns,
        "slow",
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
    .join("c");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let live = std::fs::read_to_string(dir.join("0.log")).unwrap_or_default();
        if live.contains("line-2999-") {
            break;
        }
        check(Instant::now() < deadline, || {
            "the last line never reached the log".into()
        })?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    check(names == ["0.log", "0.log.1", "0.log.2"], || {
        format!("{names:?}")
    })?;
    for f in &names {
        let len = std::fs::metadata(dir.join(f))?.len();
        check(len <= 64 * 1024, || format!("{f} has {len} bytes"))?;
    }
    // The newest rotated file continues where the live one starts: nothing lost between.
    let rotated = skiff_kubelet::agent::logs::text(&dir.join("0.log.1"))?;
    let live = skiff_kubelet::agent::logs::text(&dir.join("0.log"))?;
    let last_rotated: u32 = rotated
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("line-")?.split('-').next()?.parse().ok())
        .ok_or("no line in the rotated file")?;
    let first_live: u32 = live
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("line-")?.split('-').next()?.parse().ok())
        .ok_or("no line in the live file")?;
    check(first_live == last_rotated + 1, || {
        format!("{last_rotated} then {first_live}")
    })
}

fn a_long_enough_run_resets_the_back_off() -> Result<(), Failed> {
    // Runs of 1.2 s against a 1 s reset period: every restart is immediate again, as after
    // 10 minutes of running in Kubernetes; a back-off of 5 s would otherwise show.
    let n = TestNode::new(|c| {
        c.backoff_base = Duration::from_secs(5);
        c.backoff_reset = Duration::from_secs(1);
    })?;
    n.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "steady-crash"},
        "spec": {"containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", "sleep 1.2; exit 1"]}]}
    }))?;
    let start = Instant::now();
    let mut backed_off = false;
    let mut restarts = 0;
    while start.elapsed() < Duration::from_secs(8) && restarts < 3 {
        if let Some(p) = n.get("steady-crash")? {
            let st = serde_json::to_value(&p.status)?;
            let c = container(&st, "c");
            restarts = c["restartCount"].as_u64().unwrap_or(0);
            backed_off |= c["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check(restarts >= 3, || {
        format!("{restarts} restarts in {:?}", start.elapsed())
    })?;
    check(!backed_off, || {
        "a back-off despite runs longer than the reset period".into()
    })
}
