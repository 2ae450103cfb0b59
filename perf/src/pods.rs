//! Pod start latency and node agent memory, on the real path: the release `skiff server`
//! and `skiff node` processes in a network namespace of the benchmark's own (pods get
//! veths, addresses and routes from the agent's pod network), pods created through the
//! API with `spec.nodeName` set, image present.
//!
//! Two instants per pod: its status says the container is running (seen by an informer,
//! as any controller would see it), and the container's first action (it creates a file
//! in a hostPath directory, seen through inotify: an upper bound of its first
//! instruction). Sequential: one pod at a time; burst: all at once.
//!
//! Peers: pod start is compared with `crun run` of the same container alone (no API, no
//! agent, no network: the floor a kubelet + containerd + crun stack sits on); agent memory
//! with an idle containerd (the runtime daemon alone, before any kubelet).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use skiff_client::Client;
use skiff_client::informer::{Event, Informer};
use skiff_dataplane::netns::Netns;

use crate::report::Measurement;
use crate::{Mode, rss_bytes, skiff_bin, tempdir};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `skiff ARGS` inside `netns`; returns it with its stderr lines.
fn spawn_in(
    netns: &Netns,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Proc, std::io::Lines<BufReader<std::process::ChildStderr>>)> {
    let fd = netns.as_fd().as_raw_fd();
    let mut cmd = Command::new(skiff_bin()?);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: only setns (async-signal-safe) runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting skiff")?;
    let stderr = child.stderr.take().context("stderr")?;
    Ok((Proc(child), BufReader::new(stderr).lines()))
}

/// Records when files appear in a directory.
fn watch_dir(dir: &Path) -> anyhow::Result<Arc<Mutex<HashMap<String, Instant>>>> {
    // SAFETY: inotify_init1 takes flags only.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        bail!("inotify: {}", std::io::Error::last_os_error());
    }
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid inotify descriptor and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE) } < 0 {
        bail!("inotify_add_watch: {}", std::io::Error::last_os_error());
    }
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into our buffer from our descriptor.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            let now = Instant::now();
            let mut off = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while off + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read the header unaligned.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let name_bytes = &buf[off + header..off + header + ev.len as usize];
                let name = String::from_utf8_lossy(name_bytes)
                    .trim_end_matches('\0')
                    .to_string();
                if let Ok(mut m) = out.lock() {
                    m.entry(name).or_insert(now);
                }
                off += header + ev.len as usize;
            }
        }
    });
    Ok(seen)
}

fn pod(name: &str, node: &str, signal: &Path) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "volumes": [{"name": "signal", "hostPath": {"path": signal}}],
            "containers": [{
                "name": "c", "image": "skiff/busybox:latest", "imagePullPolicy": "Never",
                "command": ["sh", "-c", format!("touch /signal/{name}; exec sleep 3600")],
                "volumeMounts": [{"name": "signal", "mountPath": "/signal"}]
            }]
        }
    }))?)
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() {
        return 0.0;
    }
    xs[(((xs.len() - 1) as f64) * p).round() as usize]
}

struct Timings {
    running: Vec<f64>,
    first: Vec<f64>,
    total: Duration,
}

async fn start_pods(
    client: &Client,
    node: &str,
    signal: &Path,
    names: &[String],
    running: &Arc<Mutex<HashMap<String, Instant>>>,
    first: &Arc<Mutex<HashMap<String, Instant>>>,
    concurrent: bool,
) -> anyhow::Result<Timings> {
    let api = client.api::<Pod>("default");
    let mut created: HashMap<String, Instant> = HashMap::new();
    let t0 = Instant::now();
    let wait_for = |name: &String| {
        let (running, first) = (running.clone(), first.clone());
        let name = name.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let r = running.lock().ok().and_then(|m| m.get(&name).copied());
                let f = first.lock().ok().and_then(|m| m.get(&name).copied());
                if let (Some(r), Some(f)) = (r, f) {
                    return Ok((r, f));
                }
                if Instant::now() > deadline {
                    bail!("pod {name} did not start in 120 s");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    };
    let mut out = Timings {
        running: Vec::new(),
        first: Vec::new(),
        total: Duration::ZERO,
    };
    if concurrent {
        let mut set = tokio::task::JoinSet::new();
        for name in names {
            let p = pod(name, node, signal)?;
            let api = api.clone();
            let name = name.clone();
            set.spawn(async move {
                let t = Instant::now();
                api.create(&p).await.map(|_| (name, t))
            });
        }
        while let Some(r) = set.join_next().await {
            let (name, t) = r??;
            created.insert(name, t);
        }
        for name in names {
            let (r, f) = wait_for(name).await?;
            out.running.push((r - created[name]).as_secs_f64() * 1e3);
            out.first
                .push(f.saturating_duration_since(created[name]).as_secs_f64() * 1e3);
        }
    } else {
        for name in names {
            let t = Instant::now();
            api.create(&pod(name, node, signal)?).await?;
            let (r, f) = wait_for(name).await?;
            out.running.push((r - t).as_secs_f64() * 1e3);
            out.first
                .push(f.saturating_duration_since(t).as_secs_f64() * 1e3);
        }
    }
    let last = names
        .iter()
        .filter_map(|n| running.lock().ok()?.get(n).copied())
        .max()
        .unwrap_or(t0);
    out.total = last - t0;
    Ok(out)
}

/// Deletes the pods and waits until the agent has torn every one down (its pod
/// directories are the last thing it removes).
async fn delete_all(client: &Client, names: &[String], pods_dir: &Path) -> anyhow::Result<()> {
    let api = client.api::<Pod>("default");
    for n in names {
        let _ = api
            .delete(
                n,
                &skiff_client::DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api.list(&Default::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("pods not removed in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while std::fs::read_dir(pods_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            bail!("the agent did not tear the pods down in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// containerd's idle resident memory (its own config in a temp dir, no CRI client).
fn containerd_idle_rss(dir: &Path) -> anyhow::Result<u64> {
    let Some(bin) = ["/usr/bin/containerd", "/usr/sbin/containerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        bail!("containerd is not installed (cargo xtask setup installs it)");
    };
    let root = dir.join("containerd");
    std::fs::create_dir_all(&root)?;
    let config = format!(
        "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n[grpc]\n  address = \"{r}/containerd.sock\"\n[ttrpc]\n  address = \"{r}/containerd.sock.ttrpc\"\n",
        r = root.display()
    );
    std::fs::write(root.join("config.toml"), config)?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(root.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.join("containerd.sock").exists() {
        if Instant::now() > deadline {
            bail!("containerd did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    Ok(rss_bytes(p.0.id()))
}

/// The peer: `crun run` of the same container alone (p50 and p99 of `n` runs, in ms), and
/// `burst` of them started at once (each one's time to its exit, in ms).
fn crun_peer(dir: &Path, n: usize, burst: usize) -> anyhow::Result<(f64, f64, Vec<f64>)> {
    let rootfs = crate::containers::busybox_rootfs(dir)?;
    let ms = crate::containers::crun_run_times(&rootfs, dir, n)?;
    let at_once = crate::containers::crun_burst_times(&rootfs, dir, burst)?;
    Ok((percentile(ms.clone(), 0.5), percentile(ms, 0.99), at_once))
}

pub fn pod_start(mode: Mode) -> anyhow::Result<Vec<Measurement>> {
    let (sequential, burst) = match mode {
        Mode::Quick => (5, 10),
        Mode::Full => (100, 500),
    };
    let dir =
        tempdir::Dir(std::env::temp_dir().join(format!("skiff-bench-pods-{}", std::process::id())));
    let signal = dir.0.join("signal");
    std::fs::create_dir_all(&signal)?;
    // The peers first, on a quiet machine (tearing down hundreds of pods leaves the kernel
    // busy freeing namespaces for a while).
    let (crun50, crun99, crun_burst) = crun_peer(&dir.0.join("crun"), 20, burst)?;
    let crun_burst_all = crun_burst.iter().copied().fold(0.0, f64::max);
    let containerd = containerd_idle_rss(&dir.0)?;
    // The node's own address (on lo: this node has no uplink).
    let netns = Netns::create_with_loopback_address(std::net::Ipv4Addr::new(198, 18, 0, 10))?;
    // The image, present on the node.
    let node_dir = dir.0.join("node");
    let layout = dir.0.join("layout");
    skiff_kubelet::image::build::busybox_image(
        &layout,
        "skiff/busybox:latest",
        Path::new("/bin/busybox"),
    )?;
    skiff_kubelet::image::ImageStore::open(&node_dir.join("images"))?.import(&layout)?;

    let server_dir = dir.0.join("server");
    let server_dir_s = server_dir.to_string_lossy().to_string();
    let (_server, mut lines) = spawn_in(
        &netns,
        &[
            "server",
            "--no-write-config",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &server_dir_s,
        ],
        &[("SKIFF_LOG", "warn")],
    )?;
    let address = crate::server_address(&mut lines)?;
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let node_dir_s = node_dir.to_string_lossy().to_string();
    let (node, node_lines) = spawn_in(
        &netns,
        &[
            "-s",
            &address,
            "node",
            "--name",
            "bench",
            "--data-dir",
            &node_dir_s,
            "--pod-network",
            "--pod-cidr",
            "198.18.4.0/22",
            "--node-ip",
            "198.18.0.10",
        ],
        &[(
            "SKIFF_LOG",
            &std::env::var("SKIFF_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )],
    )?;
    std::thread::spawn(move || {
        for l in node_lines.map_while(Result::ok) {
            eprintln!("skiff node: {l}");
        }
    });
    let node_pid = node.0.id();
    let first = watch_dir(&signal)?;
    let signal_c = signal.clone();
    let pods_dir = node_dir.join("pods");
    let result = netns.block_on(async move {
        let client = Client::connect(&address).await?;
        // The node registers; the agent is idle.
        let nodes = client.api::<k8s_openapi::api::core::v1::Node>("");
        let deadline = Instant::now() + Duration::from_secs(30);
        while nodes.get_opt("bench").await?.is_none() {
            if Instant::now() > deadline {
                bail!("the node did not register");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss = rss_bytes(node_pid);
        let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let rec = running.clone();
        let _inf = Informer::new(client.api::<Pod>("default"), Default::default())
            .on_event(move |ev| {
                if let Event::Added(p) | Event::Updated { new: p, .. } = ev {
                    let st = p.status.as_ref();
                    let up = st
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| {
                            !cs.is_empty()
                                && cs
                                    .iter()
                                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                        });
                    if up && let (Some(n), Ok(mut m)) = (p.metadata.name.clone(), rec.lock()) {
                        m.entry(n).or_insert_with(Instant::now);
                    }
                }
            })
            .start();
        let seq: Vec<String> = (0..sequential).map(|i| format!("seq-{i}")).collect();
        let s = start_pods(&client, "bench", &signal_c, &seq, &running, &first, false).await?;
        let busy_rss = rss_bytes(node_pid);
        delete_all(&client, &seq, &pods_dir).await?;
        let many: Vec<String> = (0..burst).map(|i| format!("burst-{i}")).collect();
        let b = start_pods(&client, "bench", &signal_c, &many, &running, &first, true).await?;
        delete_all(&client, &many, &pods_dir).await?;
        anyhow::Ok((s, b, idle_rss, busy_rss))
    });
    // Whatever happened, nothing of the node may stay: stop it, then purge what it left.
    drop(node);
    let purged = skiff_kubelet::agent::purge::purge(&node_dir, "skiff/bench", None);
    let (s, b, idle_rss, busy_rss) = result??;
    purged?;
    let mut out = vec![
        Measurement::lower_better(
            &format!("pod start p50, API create -> status Running ({sequential} sequential)"),
            percentile(s.running.clone(), 0.5),
            crun50,
            "ms",
            "crun run /bin/true p50",
            "",
        ),
        Measurement::lower_better(
            &format!("pod start p99, API create -> status Running ({sequential} sequential)"),
            percentile(s.running.clone(), 0.99),
            crun99,
            "ms",
            "crun run /bin/true p99",
            "p99 <= 50 ms",
        ),
        Measurement::lower_better(
            &format!(
                "pod start p99, API create -> container's first action ({sequential} sequential)"
            ),
            percentile(s.first.clone(), 0.99),
            crun99,
            "ms",
            "crun run /bin/true p99",
            "",
        ),
        Measurement::lower_better(
            &format!("pod start p50, API create -> status Running ({burst} at once)"),
            percentile(b.running.clone(), 0.5),
            percentile(crun_burst.clone(), 0.5),
            "ms",
            &format!("{burst} x crun run /bin/true at once, start -> exit p50"),
            "",
        ),
        Measurement::lower_better(
            &format!("pod start p99, API create -> status Running ({burst} at once)"),
            percentile(b.running.clone(), 0.99),
            percentile(crun_burst, 0.99),
            "ms",
            &format!("{burst} x crun run /bin/true at once, start -> exit p99"),
            "",
        ),
        Measurement::lower_better(
            &format!("{burst} pods at once: all Running"),
            b.total.as_secs_f64() * 1e3,
            crun_burst_all,
            "ms",
            &format!("{burst} x crun run /bin/true at once: all exited"),
            "<= 5 s",
        ),
        Measurement::lower_better(
            "node agent RSS, idle",
            idle_rss as f64 / (1 << 20) as f64,
            containerd as f64 / (1 << 20) as f64,
            "MiB",
            "containerd idle",
            "<= 30 MiB",
        ),
    ];
    let mut m = Measurement::lower_better(
        &format!("node agent RSS with {sequential} pods"),
        busy_rss as f64 / (1 << 20) as f64,
        containerd as f64 / (1 << 20) as f64,
        "MiB",
        "containerd idle (no pods)",
        "",
    );
    m.note = "the agent alone; containers are separate processes".into();
    out.push(m);
    Ok(out)
}
