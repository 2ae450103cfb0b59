//! The whole cluster end to end: `skiff up` starts a real 2-node cluster (node namespaces
//! on an underlay bridge, node agents with their own runtime and in-process eBPF data
//! plane, the API server with the scheduler and controllers), and then:
//! - the demo Deployment becomes available;
//! - a pod reaches a Service by ClusterIP and a client outside the cluster reaches it by
//!   NodePort through either node, and all 3 replicas answer;
//! - a deleted pod is replaced and the Service keeps answering;
//! - a rolling update under a steady request load completes with 0 failed requests;
//! - killing a node agent makes its Node NotReady, its pods are recreated on the other node
//!   and the Service's endpoints follow;
//! - `skiff down` leaves no namespace, mount, cgroup or process behind.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use skiff_client::{Client, DeleteParams, ListParams};
use skiff_dataplane::netns::Netns;
use support::SKIFF;

/// A cluster started by `skiff up`; `skiff down --purge` runs on drop (failures too).
struct LocalCluster {
    name: String,
    data: PathBuf,
    address: String,
    _dir: tempfile::TempDir,
}

impl LocalCluster {
    fn skiff(&self, args: &[&str]) -> Output {
        support::run_skiff(&self.address, None, args, None)
    }

    fn netns(&self, host: &str) -> PathBuf {
        PathBuf::from("/run/skiff/clusters")
            .join(&self.name)
            .join("netns")
            .join(host)
    }

    fn down(&self) -> Output {
        Command::new(SKIFF)
            .args(["down", "--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .arg("--purge")
            .stdin(Stdio::null())
            .output()
            .expect("run skiff down")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One HTTP/1.0 GET on a fresh connection from inside `netns`; the body.
fn get(netns: &Netns, to: SocketAddr) -> Result<String, String> {
    netns
        .run(|| -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .map_err(|e| format!("connect {to}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET /index.html HTTP/1.0\r\nHost: test\r\n\r\n")
                .map_err(|e| format!("write: {e}"))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)
                .map_err(|e| format!("read from {to}: {e}"))?;
            if !buf.starts_with("HTTP/1.") || !buf.contains(" 200 ") {
                return Err(format!("bad answer from {to}: {buf:?}"));
            }
            Ok(buf
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.trim().to_string())
                .unwrap_or_default())
        })
        .map_err(|e| e.to_string())?
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `who` app: every replica answers with its own pod name.
fn who() -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "who"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "who"}},
            "template": {
                "metadata": {"labels": {"app": "who"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "httpd", "image": "skiff.local/busybox:1.36",
                        "command": ["sh", "-c", "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/index.html", "port": "http"}, "periodSeconds": 1},
                        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "2"]}}},
                    }],
                },
            },
        },
    }))
    .expect("deployment")
}

async fn available(c: &Client, name: &str, replicas: i32) -> Deployment {
    eventually(
        &format!("deployment {name} available"),
        Duration::from_secs(90),
        async || {
            let d = c.api::<Deployment>("default").get(name).await.ok()?;
            let s = d.status.clone()?;
            (s.available_replicas == Some(replicas)
                && s.updated_replicas == Some(replicas)
                && s.replicas == Some(replicas)
                && s.observed_generation == d.metadata.generation)
                .then_some(d)
        },
    )
    .await
}

async fn pod_names(c: &Client, selector: &str) -> Vec<Pod> {
    c.api::<Pod>("default")
        .list(&ListParams::default().labels(selector))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Waits until only the 3 current `who` pods exist (terminating ones finished).
async fn old_pods_gone(c: &Client) {
    eventually("old pods gone", Duration::from_secs(30), async || {
        let all = c
            .api::<Pod>("default")
            .list(&ListParams::default().labels("app=who"))
            .await
            .ok()?;
        (all.items.len() == 3).then_some(())
    })
    .await;
}

/// Answers of `n` requests through `to` from the client namespace; panics on a failure.
fn answers(client: &Netns, to: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| get(client, to).unwrap_or_else(|e| panic!("request {i} to {to}: {e}")))
        .collect()
}

#[test]
fn a_two_node_cluster_serves_a_deployment_through_an_ebpf_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster {
        name: format!("e2e{}", std::process::id() % 100_000),
        data: dir.path().join("cluster"),
        address: format!("127.0.0.1:{}", free_port()),
        _dir: dir,
    };
    let up = Command::new(SKIFF)
        .args(["up", "--name", &cluster.name, "--data-dir"])
        .arg(&cluster.data)
        .args([
            "--listen",
            &cluster.address,
            "--no-write-config",
            "--node-monitor-grace-period",
            "3s",
            "--default-toleration-seconds",
            "2",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run skiff up");
    assert!(up.status.success(), "skiff up failed:\n{}", text(&up));
    let up_text = text(&up);
    assert!(up_text.contains("The demo is serving"), "{up_text}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(scenario(&cluster));
    drop(rt);

    // Down: nothing of the cluster is left.
    let out = cluster.down();
    assert!(out.status.success(), "skiff down failed:\n{}", text(&out));
    assert!(!cluster.netns("underlay").exists(), "namespace mounts left");
    let mounts = skiff_kubelet::agent::purge::mounts_under(&cluster.data).expect("mounts");
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cg = PathBuf::from("/sys/fs/cgroup/unified/skiff").join(&cluster.name);
    assert!(!cg.exists(), "cgroup2 directory left: {}", cg.display());
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroup root")
        .flatten()
    {
        let left = h
            .path()
            .join("skiff")
            .join(format!("{}-node-0", cluster.name));
        assert!(!left.exists(), "cgroup left: {}", left.display());
    }
}

async fn scenario(cluster: &LocalCluster) {
    let c = Client::connect(&cluster.address).await.expect("connect");
    // The demo is up (skiff up waited for it); its pods are spread over both nodes.
    available(&c, "web", 3).await;
    let nodes = c
        .api::<Node>("")
        .list(&ListParams::default())
        .await
        .expect("nodes");
    assert_eq!(nodes.items.len(), 2);
    let outside = Netns::open(&cluster.netns("client")).expect("client namespace");

    // The `who` app and its NodePort Service.
    c.api::<Deployment>("default")
        .create(&who())
        .await
        .expect("create who");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "who"}, "spec": {
        "type": "NodePort", "selector": {"app": "who"},
        "ports": [{"port": 80, "targetPort": "http"}]}}))
    .expect("service");
    let svc = c
        .api::<Service>("default")
        .create(&svc)
        .await
        .expect("create svc");
    let spec = svc.spec.expect("spec");
    let cluster_ip = spec.cluster_ip.expect("cluster ip");
    let node_port = spec.ports.expect("ports")[0].node_port.expect("node port") as u16;
    available(&c, "who", 3).await;
    let replicas = names(&pod_names(&c, "app=who").await);
    assert_eq!(replicas.len(), 3);

    // ClusterIP from inside a pod (socket-level load balancing in the pod's cgroup).
    let web = pod_names(&c, "app=web").await;
    let from_pod = web[0].metadata.name.clone().expect("name");
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let out = cluster.skiff(&[
            "exec",
            &from_pod,
            "--",
            "wget",
            "-qO-",
            &format!("http://{cluster_ip}/index.html"),
        ]);
        assert!(out.status.success(), "wget via ClusterIP: {}", text(&out));
        seen.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        if seen == replicas {
            break;
        }
    }
    assert_eq!(
        seen, replicas,
        "every replica answers through the ClusterIP"
    );

    // exec: stdout and stderr apart, the command's exit code; -i passes our stdin.
    let out = cluster.skiff(&[
        "exec",
        &from_pod,
        "--",
        "sh",
        "-c",
        "echo o; echo e >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "o\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("e\n"),
        "{}",
        text(&out)
    );
    let out = support::run_skiff(
        &cluster.address,
        None,
        &["exec", "-i", &from_pod, "--", "sh", "-c", "cat; echo eof"],
        Some("piped\n"),
    );
    assert!(out.status.success(), "exec -i: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\neof\n");
    // exec -t without a terminal to read: kubectl's warning, and the command runs without.
    let out = support::run_skiff(
        &cluster.address,
        None,
        &[
            "exec",
            "-it",
            &from_pod,
            "--",
            "sh",
            "-c",
            "[ -t 0 ] || cat",
        ],
        Some("no tty\n"),
    );
    assert!(out.status.success(), "exec -it, piped: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no tty\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unable to use a TTY"),
        "{}",
        text(&out)
    );
    // exec -it on a terminal: the command gets one of our terminal's size, reads what we
    // type (raw: our Enter is its newline), and our terminal is as it was afterwards.
    let (code, written, restored) = skiff_on_terminal(
        &cluster.address,
        &[
            "exec",
            "-it",
            &from_pod,
            "--",
            "sh",
            "-c",
            "stty size; read l; echo \"got $l\"; exit 7",
        ],
        "typed\r",
    );
    assert_eq!(code, Some(7), "exec -it: {written:?}");
    assert!(
        written.contains("24 80\r\n") && written.contains("got typed\r\n"),
        "exec -it: {written:?}"
    );
    assert!(restored, "exec -it left the terminal in raw mode");

    // NodePort from outside, through either node (XDP, Maglev, SNAT to the other node).
    for node in ["198.18.0.10", "198.18.0.11"] {
        let to: SocketAddr = format!("{node}:{node_port}").parse().expect("addr");
        let got = answers(&outside, to, 60);
        assert_eq!(
            got, replicas,
            "every replica answers through NodePort on {node}"
        );
    }
    // Each node agent serves its data plane's counters: the Service's ClusterIP and
    // NodePort frontends, with the connections just made counted.
    let mut connections = 0u64;
    for node in ["node-0", "node-1"] {
        let out = cluster.skiff(&["dataplane", "stats", "--node", node]);
        assert!(out.status.success(), "dataplane stats: {}", text(&out));
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<Vec<&str>> = table
            .lines()
            .filter(|l| l.starts_with("default/who "))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(
            rows.iter().any(|r| r[1] == format!("{cluster_ip}:80/TCP"))
                && rows
                    .iter()
                    .any(|r| r[1].ends_with(&format!(":{node_port}/TCP")) && r[2] == "(NodePort)"),
            "{node}: {table}"
        );
        connections += rows
            .iter()
            .filter_map(|r| r.last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    assert!(connections > 0, "no connection counted");

    // A deleted pod is replaced; the Service keeps answering meanwhile.
    let victim = replicas.iter().next().cloned().expect("a replica");
    c.api::<Pod>("default")
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("delete pod");
    let to: SocketAddr = format!("198.18.0.10:{node_port}").parse().expect("addr");
    let after = eventually("a replacement", Duration::from_secs(60), async || {
        let now = names(&pod_names(&c, "app=who").await);
        let ready = c
            .api::<Deployment>("default")
            .get("who")
            .await
            .ok()?
            .status?
            .available_replicas
            == Some(3);
        // Requests keep being answered while the replacement comes.
        get(&outside, to).expect("the Service answers during the replacement");
        (ready && now.len() == 3 && !now.contains(&victim)).then_some(now)
    })
    .await;
    assert_eq!(answers(&outside, to, 60), after);

    // A rolling update under a steady load: not one request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let ns = cluster.netns("client");
        std::thread::spawn(move || {
            let outside = Netns::open(&ns).expect("client namespace");
            let mut errors = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match get(&outside, to) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(format!("at {:?}: {e}", start.elapsed()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(10));
            }
            errors
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.api::<Deployment>("default")
        .patch(
            "who",
            &json!({"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}),
        )
        .await
        .expect("update the template");
    let rolled = available(&c, "who", 3).await;
    assert_eq!(
        rolled
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("2")
    );
    // Let the old pods finish terminating under load too.
    old_pods_gone(&c).await;
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().expect("load thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 50, "only {ok} requests during the rollout");
    if failed > 0 {
        // What the cluster saw meanwhile, to tell a late endpoint update from a hook
        // that failed (the load started 500 ms before the template changed).
        let events = cluster.skiff(&["get", "events"]);
        panic!(
            "{failed} of {} requests failed: {errors:?}\nevents:\n{}",
            ok + failed,
            text(&events)
        );
    }

    // The rollout verbs: history, undo back to revision 1's template, status.
    let out = cluster.skiff(&["rollout", "history", "deployment/who"]);
    assert!(out.status.success(), "{}", text(&out));
    let hist = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        hist.contains("REVISION") && hist.lines().any(|l| l.starts_with('2')),
        "{hist}"
    );
    let out = cluster.skiff(&["rollout", "undo", "deployment", "who"]);
    assert_eq!(text(&out).trim(), "deployment.apps/who rolled back");
    let out = cluster.skiff(&["rollout", "status", "deployment/who", "--timeout", "90s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("deployment \"who\" successfully rolled out"),
        "{}",
        text(&out)
    );
    let out = cluster.skiff(&["scale", "deployment/who", "--replicas", "3"]);
    assert_eq!(text(&out).trim(), "deployment.apps/who scaled");
    let out = cluster.skiff(&["scale", "service/who", "--replicas", "3"]);
    assert!(
        !out.status.success() && text(&out).contains("cannot scale services"),
        "{}",
        text(&out)
    );
    available(&c, "who", 3).await;
    old_pods_gone(&c).await;

    // Kill node-1's agent: the Node goes NotReady, its pods come back on node-0, and the
    // endpoints follow.
    let pid: i32 = std::fs::read_to_string(cluster.data.join("node-1.pid"))
        .expect("node-1 pid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill node-1's agent");
    eventually("node-1 NotReady", Duration::from_secs(30), async || {
        let n = c.api::<Node>("").get("node-1").await.ok()?;
        let ready = n
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.status == "Unknown").then_some(())
    })
    .await;
    let moved = eventually(
        "who pods on node-0 only",
        Duration::from_secs(90),
        async || {
            let live = pod_names(&c, "app=who").await;
            let ready = live
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count();
            let on_0 = live
                .iter()
                .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-0"));
            (live.len() == 3 && ready == 3 && on_0).then_some(live)
        },
    )
    .await;
    let ips: BTreeSet<String> = moved
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    eventually("endpoints on node-0", Duration::from_secs(30), async || {
        let slices = c
            .api::<EndpointSlice>("default")
            .list(&ListParams::default().labels("kubernetes.io/service-name=who"))
            .await
            .ok()?;
        let ready: BTreeSet<String> = slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        (ready == ips).then_some(())
    })
    .await;
    // The node's data plane follows the slices (its own watch, a moment later): every moved
    // replica answers through the NodePort, and only they do.
    let want = names(&moved);
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got != want && Instant::now() < deadline {
        got = answers(&outside, to, 60);
    }
    assert_eq!(got, want);
}

/// Runs skiff on a new pseudo-terminal of 24 rows and 80 columns (its stdin, stdout and
/// stderr), types `typed` once skiff has put it in raw mode, and returns skiff's exit code,
/// what it wrote, and whether it left the terminal's modes as they were.
fn skiff_on_terminal(address: &str, args: &[&str], typed: &str) -> (Option<i32>, String, bool) {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let before = tcgetattr(&pty.slave).expect("tcgetattr");
    let end = || Stdio::from(pty.slave.try_clone().expect("dup"));
    let mut child = Command::new(SKIFF)
        .arg("--server")
        .arg(address)
        .args(args)
        .env("SKIFF_LOG", "error")
        .stdin(end())
        .stdout(end())
        .stderr(end())
        .spawn()
        .expect("spawn skiff");
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().expect("dup");
    // Everything skiff writes, until the terminal's last far end closes (EIO).
    let output = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while tcgetattr(&pty.slave)
        .expect("tcgetattr")
        .local_flags
        .contains(LocalFlags::ICANON)
    {
        assert!(
            Instant::now() < deadline,
            "skiff never put the terminal in raw mode"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    master.write_all(typed.as_bytes()).expect("type");
    let status = child.wait().expect("wait for skiff");
    let after = tcgetattr(&pty.slave).expect("tcgetattr");
    drop(pty.slave);
    let written = String::from_utf8_lossy(&output.join().expect("reader")).into_owned();
    let restored = before.local_flags == after.local_flags
        && before.input_flags == after.input_flags
        && before.output_flags == after.output_flags;
    (status.code(), written, restored)
}
