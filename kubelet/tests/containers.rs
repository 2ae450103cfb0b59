//! Real containers from the busybox image: namespaces, identity, capabilities, seccomp,
//! mounts, cgroups and exit statuses, through the spawner process.
//!
//! This test binary has its own `main` (libtest-mimic): the spawner is forked there,
//! before the test threads exist, as `skiff node` does. The same binary is the init of a
//! virtual machine whose cgroup2 has its controllers (`vm`): there it runs these trials
//! again on cgroup v2.

mod vm;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use skiff_kubelet::image::ImageStore;
use skiff_kubelet::runtime::cgroup::{Cgroup, Hierarchy, Resources};
use skiff_kubelet::runtime::client::Runtime;
use skiff_kubelet::runtime::spawner::{self, SpawnerHandle};
use skiff_kubelet::runtime::{
    ContainerSpec, DEFAULT_CAPABILITIES, ExitStatus, Mount, RuntimeError,
};

struct Fixture {
    root: PathBuf,
    socket: PathBuf,
    layers: Vec<PathBuf>,
    hierarchy: Hierarchy,
    /// Per-run cgroup parent, so two runs never collide.
    cgroup_base: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get().expect("fixture set up in main")
}

fn main() -> ExitCode {
    let guest = vm::is_guest();
    if guest && let Err(e) = vm::guest_boot() {
        vm::guest_power_off(Some(&e));
    }
    let args = if guest {
        Arguments {
            test_threads: Some(2),
            ..Arguments::default()
        }
    } else {
        Arguments::from_args()
    };
    let mut tests = vec![
        Trial::test(
            "namespaces_identity_and_confinement",
            namespaces_identity_and_confinement,
        ),
        Trial::test(
            "run_as_user_has_no_capabilities",
            run_as_user_has_no_capabilities,
        ),
        Trial::test("exit_codes_and_signals", exit_codes_and_signals),
        Trial::test("bad_command_and_bad_rootfs", bad_command_and_bad_rootfs),
        Trial::test(
            "filesystem_layers_mounts_and_masks",
            filesystem_layers_mounts_and_masks,
        ),
        Trial::test("memory_hog_is_oom_killed", memory_hog_is_oom_killed),
        Trial::test(
            "seccomp_profile_refuses_namespaces",
            seccomp_profile_refuses_namespaces,
        ),
        Trial::test("fifty_containers_at_once", fifty_containers_at_once),
        Trial::test(
            "exec_runs_inside_a_running_container",
            exec_runs_inside_a_running_container,
        ),
        Trial::test(
            "cpu_and_pids_limits_are_enforced",
            cpu_and_pids_limits_are_enforced,
        ),
    ];
    if guest {
        let code = match run_all(&args, tests) {
            Ok(c) => {
                vm::guest_report(c.num_passed, c.num_failed);
                None
            }
            Err(e) => Some(e),
        };
        vm::guest_power_off(code.as_deref());
    }
    // The same trials on cgroup v2, in the virtual machine (no OCI runtime there).
    let in_vm = tests.len();
    tests.push(Trial::test(
        "oci_container_is_adopted_with_its_own_pidfd",
        oci_container_is_adopted_with_its_own_pidfd,
    ));
    tests.push(Trial::test(
        "the_same_trials_on_cgroup_v2_in_a_vm",
        move || vm::run_in_vm(in_vm),
    ));
    if args.list {
        return libtest_mimic::run(&args, tests).exit_code();
    }
    match run_all(&args, tests) {
        Ok(c) => c.exit_code(),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the spawner and builds the image, runs `tests`, and checks that nothing stayed
/// mounted.
fn run_all(args: &Arguments, tests: Vec<Trial>) -> Result<libtest_mimic::Conclusion, String> {
    let tmp = tempfile::Builder::new()
        .prefix("skiff-ctr-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    // First, while this process has one thread.
    let handle: SpawnerHandle = spawner::start(&tmp.path().join("state"))
        .map_err(|e| format!("starting the spawner: {e}"))?;
    let layers = busybox_layers(tmp.path()).map_err(|e| format!("busybox image: {e}"))?;
    let hierarchy = Hierarchy::detect().map_err(|e| format!("cgroup hierarchy: {e}"))?;
    let cgroup_base = PathBuf::from(format!("skiff-test-{}", std::process::id()));
    let _ = FIXTURE.set(Fixture {
        root: tmp.path().to_path_buf(),
        socket: handle.socket().to_path_buf(),
        layers,
        hierarchy: hierarchy.clone(),
        cgroup_base: cgroup_base.clone(),
    });
    let conclusion = libtest_mimic::run(args, tests);
    skiff_kubelet::runtime::cgroup::remove_tree(&hierarchy, &cgroup_base, None);
    let leftover =
        skiff_kubelet::agent::purge::mounts_under(tmp.path()).map_or(true, |m| !m.is_empty());
    drop(handle);
    if leftover {
        return Err(format!(
            "a mount under {} was left behind",
            tmp.path().display()
        ));
    }
    Ok(conclusion)
}

fn busybox_layers(root: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let layout = root.join("layout");
    skiff_kubelet::image::build::busybox_image(
        &layout,
        "skiff.test/busybox:1",
        Path::new("/bin/busybox"),
    )?;
    let store = ImageStore::open(&root.join("images"))?;
    let images = store.import(&layout)?;
    Ok(store.layer_dirs(&images[0])?)
}

/// One container's directories and cgroup; removed on drop (also when a test fails).
struct Slot {
    spec: ContainerSpec,
    cgroup: Cgroup,
    dir: PathBuf,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Mounted on the host only for an OCI runtime (a native container mounts it in
        // its own namespace); not mounted, this fails harmlessly.
        let _ = nix::mount::umount2(&self.spec.rootfs, nix::mount::MntFlags::MNT_DETACH);
        let _ = self.cgroup.remove(Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn slot(name: &str, argv: &[&str], res: Resources) -> Slot {
    let f = fixture();
    let id = format!("{name}-{}", uuid_like());
    let dir = f.root.join("containers").join(&id);
    for d in ["upper", "work", "rootfs"] {
        std::fs::create_dir_all(dir.join(d)).expect("container dirs");
    }
    let cgroup =
        Cgroup::create(&f.hierarchy, &f.cgroup_base.join(&id), None, &res).expect("cgroup");
    let spec = ContainerSpec {
        id,
        layers: f.layers.clone(),
        upper: dir.join("upper"),
        work: dir.join("work"),
        rootfs: dir.join("rootfs"),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into(), "HOME=/".into()],
        capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        hostname: name.chars().take(60).collect(),
        cgroup_procs: cgroup.procs_files(),
        seccomp: true,
        stdout: Some(0),
        stderr: Some(1),
        ..Default::default()
    };
    Slot { spec, cgroup, dir }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

struct Outcome {
    started: Result<(), RuntimeError>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

async fn read_all(fd: OwnedFd) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s);
        s
    })
    .await
    .unwrap_or_default()
}

/// Runs a container to its end (killing it after 30 s) and collects its output.
async fn run(rt: &Runtime, spec: &ContainerSpec) -> Result<Outcome, Failed> {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let mut c = rt
        .create(spec, &[out_w.as_fd(), err_w.as_fd()])
        .await
        .map_err(|e| format!("create: {e}"))?;
    drop((out_w, err_w));
    let stdout = tokio::spawn(read_all(out_r));
    let stderr = tokio::spawn(read_all(err_r));
    let started = c.started().await;
    let status = match tokio::time::timeout(Duration::from_secs(30), c.wait()).await {
        Ok(s) => s.map_err(|e| format!("wait: {e}"))?,
        Err(_) => {
            let _ = c.signal(libc::SIGKILL);
            return Err("container still running after 30 s".into());
        }
    };
    Ok(Outcome {
        started,
        status,
        stdout: stdout.await.unwrap_or_default(),
        stderr: stderr.await.unwrap_or_default(),
    })
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(what().into()) }
}

fn namespaces_identity_and_confinement() -> Result<(), Failed> {
    let mut s = slot(
        "box1",
        &[
            "sh",
            "-c",
            "echo pid=$$; hostname; echo env=$FOO; pwd; id -u; \
             grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp|Seccomp_filters|SigIgn|SigBlk):' /proc/self/status; \
             echo procs=$(ls /proc | grep -c '^[0-9]'); \
             echo netdevs=$(cat /proc/net/dev | grep -c :)",
        ],
        Resources::default(),
    );
    s.spec.env.push("FOO=bar".into());
    s.spec.cwd = "/tmp".into();
    let rt_ = rt();
    rt_.block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let o = run(&r, &s.spec).await?;
        o.started.map_err(|e| format!("start: {e}"))?;
        check(o.status == ExitStatus::Exited(0), || {
            format!("status {:?}: {}", o.status, o.stderr)
        })?;
        let out = o.stdout;
        for want in [
            "pid=1\n",
            "box1\n",
            "env=bar\n",
            "/tmp\n",
            "\n0\n",
            "CapEff:\t00000000a80425fb\n",
            "CapBnd:\t00000000a80425fb\n",
            "NoNewPrivs:\t1\n",
            "Seccomp:\t2\n",
            "Seccomp_filters:\t2\n",
            // Nothing ignored or blocked is inherited from the spawner.
            "SigIgn:\t0000000000000000\n",
            "SigBlk:\t0000000000000000\n",
            // A new network namespace has only lo.
            "netdevs=1\n",
        ] {
            check(out.contains(want), || {
                format!("{want:?} missing from:\n{out}")
            })?;
        }
        // Its own pid namespace: only the shell and the pipeline's processes.
        let procs: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("procs="))
            .and_then(|n| n.parse().ok())
            .ok_or("no procs line")?;
        check(procs <= 4, || format!("{procs} processes visible:\n{out}"))
    })
}

fn run_as_user_has_no_capabilities() -> Result<(), Failed> {
    let mut s = slot(
        "user",
        &[
            "sh",
            "-c",
            "id; grep -E '^Cap(Eff|Prm):' /proc/self/status; touch /etc/x || echo denied",
        ],
        Resources::default(),
    );
    s.spec.uid = 1000;
    s.spec.gid = 1000;
    s.spec.groups = vec![1000, 2000];
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let o = run(&r, &s.spec).await?;
        o.started.map_err(|e| format!("start: {e}"))?;
        let out = o.stdout;
        for want in [
            "uid=1000 gid=1000 groups=1000,2000",
            "CapEff:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "denied",
        ] {
            check(out.contains(want), || {
                format!("{want:?} missing from:\n{out}")
            })?;
        }
        Ok(())
    })
}

fn exit_codes_and_signals() -> Result<(), Failed> {
    let three = slot("three", &["sh", "-c", "exit 3"], Resources::default());
    let mut sleeper = slot("sleeper", &["sleep", "1000"], Resources::default());
    (sleeper.spec.stdout, sleeper.spec.stderr) = (None, None);
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let o = run(&r, &three.spec).await?;
        check(o.status == ExitStatus::Exited(3), || {
            format!("{:?}", o.status)
        })?;
        check(o.status.code() == 3, || "code".into())?;

        let mut c = r.create(&sleeper.spec, &[]).await?;
        c.started().await?;
        // `sleep` is pid 1 of its namespace without a handler: SIGTERM does nothing
        // (Kubernetes then escalates to SIGKILL after the grace period).
        c.signal(libc::SIGTERM)?;
        let early = tokio::time::timeout(Duration::from_millis(300), c.wait()).await;
        check(early.is_err(), || {
            "pid 1 died of an unhandled SIGTERM".into()
        })?;
        c.signal(libc::SIGKILL)?;
        let st = tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .map_err(|_| "SIGKILL did not end it")??;
        check(st == ExitStatus::Signaled(libc::SIGKILL), || {
            format!("{st:?}")
        })?;
        check(st.code() == 137, || "code".into())?;
        // Signalling a reaped container through its pidfd is harmless.
        c.signal(libc::SIGKILL)?;
        Ok(())
    })
}

fn bad_command_and_bad_rootfs() -> Result<(), Failed> {
    let missing = slot("missing", &["no-such-program", "x"], Resources::default());
    let mut abs = slot("abs", &["/bin/nope"], Resources::default());
    abs.spec.argv = vec!["/bin/nope".into()];
    let mut layerless = slot("nolayer", &["true"], Resources::default());
    layerless.spec.layers = vec![fixture().root.join("no-such-layer")];
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let o = run(&r, &missing.spec).await?;
        let e = o.started.expect_err("should not start");
        check(e.reason() == "RunContainerError", || format!("{e:?}"))?;
        check(
            e.to_string() == "exec: \"no-such-program\": executable file not found in $PATH",
            || e.to_string(),
        )?;
        check(o.status == ExitStatus::Exited(127), || {
            format!("{:?}", o.status)
        })?;

        let o = run(&r, &abs.spec).await?;
        let e = o.started.expect_err("should not start");
        check(e.to_string().contains("no such file or directory"), || {
            e.to_string()
        })?;

        let o = run(&r, &layerless.spec).await?;
        let e = o.started.expect_err("should not start");
        check(e.reason() == "CreateContainerError", || format!("{e:?}"))?;
        check(e.to_string().contains("mounting rootfs"), || e.to_string())?;

        // The spawner keeps serving after failures.
        let ok = slot("after", &["true"], Resources::default());
        let o = run(&r, &ok.spec).await?;
        o.started.map_err(|e| format!("start: {e}"))?;
        check(o.status == ExitStatus::Exited(0), || {
            format!("{:?}", o.status)
        })
    })
}

fn filesystem_layers_mounts_and_masks() -> Result<(), Failed> {
    let f = fixture();
    let vol = f.root.join(format!("vol-{}", uuid_like()));
    let ro = f.root.join(format!("ro-{}", uuid_like()));
    std::fs::create_dir_all(&vol)?;
    std::fs::create_dir_all(&ro)?;
    std::fs::write(ro.join("config"), "from-host\n")?;
    let hosts = f.root.join(format!("hosts-{}", uuid_like()));
    std::fs::write(&hosts, "127.0.0.1 localhost\n198.18.1.5 box\n")?;
    let mut s = slot(
        "fs",
        &[
            "sh",
            "-c",
            "echo layer > /written-in-container; \
             echo vol > /data/out; cat /config/config; \
             (echo x > /config/new) 2>/dev/null || echo ro-refused; \
             (touch /sys/kernel/x) 2>/dev/null || echo sys-ro; \
             echo timer_list=$(wc -c < /proc/timer_list); echo firmware=$(ls /sys/firmware | wc -l); \
             (echo 1 > /proc/sys/kernel/domainname) 2>/dev/null || echo procsys-ro; \
             echo shm > /dev/shm/s && cat /dev/shm/s; \
             echo discard > /dev/null && echo null-ok; \
             cat /etc/hosts; \
             test -e /old_root || echo no-old-root",
        ],
        Resources::default(),
    );
    s.spec.mounts = vec![
        Mount {
            source: vol.clone(),
            target: "/data".into(),
            ..Default::default()
        },
        Mount {
            source: ro.clone(),
            target: "/config".into(),
            readonly: true,
            ..Default::default()
        },
        Mount {
            source: hosts,
            target: "/etc/hosts".into(),
            readonly: true,
            file: true,
        },
    ];
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .count();
    rt().block_on(async {
        let r = Runtime::connect(&f.socket)?;
        let o = run(&r, &s.spec).await?;
        o.started.map_err(|e| format!("start: {e}"))?;
        check(o.status == ExitStatus::Exited(0), || {
            format!("{:?}: {}", o.status, o.stderr)
        })?;
        let out = o.stdout;
        for want in [
            "from-host\n",
            "ro-refused\n",
            "sys-ro\n",
            "timer_list=0\n",
            "firmware=0\n",
            "procsys-ro\n",
            "shm\n",
            "null-ok\n",
            "198.18.1.5 box\n",
            "no-old-root\n",
        ] {
            check(out.contains(want), || {
                format!("{want:?} missing from:\n{out}")
            })?;
        }
        Ok::<_, Failed>(())
    })?;
    // Writes to the rootfs land in the container's upper layer, never in the image.
    check(
        std::fs::read_to_string(s.spec.upper.join("written-in-container"))? == "layer\n",
        || "upper layer".into(),
    )?;
    check(
        !f.layers
            .iter()
            .any(|l| l.join("written-in-container").exists()),
        || "an image layer was written".into(),
    )?;
    check(std::fs::read_to_string(vol.join("out"))? == "vol\n", || {
        "volume".into()
    })?;
    check(!ro.join("new").exists(), || {
        "read-only volume written".into()
    })?;
    // The rootfs and every mount lived in the container's mount namespace only.
    check(std::fs::read_dir(&s.spec.rootfs)?.next().is_none(), || {
        "rootfs mount point not empty on the host".into()
    })?;
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .count();
    check(mounts_after == mounts_before, || {
        format!("host mounts {mounts_before} -> {mounts_after}")
    })
}

fn memory_hog_is_oom_killed() -> Result<(), Failed> {
    // `tail` keeps an unterminated line in memory: /dev/zero never ends one.
    let s = slot(
        "hog",
        &["tail", "/dev/zero"],
        Resources {
            memory_limit: Some(32 << 20),
            ..Default::default()
        },
    );
    let calm = slot(
        "calm",
        &["sh", "-c", "head -c 1000000 /dev/zero | wc -c"],
        Resources {
            memory_limit: Some(32 << 20),
            cpu_limit_milli: Some(500),
            cpu_request_milli: Some(250),
            pids_limit: Some(64),
        },
    );
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let o = run(&r, &s.spec).await?;
        o.started.map_err(|e| format!("start: {e}"))?;
        check(o.status == ExitStatus::Signaled(libc::SIGKILL), || {
            format!("{:?}", o.status)
        })?;
        check(s.cgroup.oom_killed(), || {
            "the cgroup recorded no OOM kill".into()
        })?;
        let o = run(&r, &calm.spec).await?;
        check(o.status == ExitStatus::Exited(0), || {
            format!("{:?} {}", o.status, o.stderr)
        })?;
        check(o.stdout.trim() == "1000000", || o.stdout.clone())?;
        check(!calm.cgroup.oom_killed(), || {
            "calm container OOM-killed".into()
        })
    })
}

/// The path of a control file of `cg` (in whichever of its directories has it).
fn control_file(cg: &Cgroup, file: &str) -> Result<PathBuf, Failed> {
    cg.procs_files()
        .iter()
        .filter_map(|p| p.parent())
        .map(|d| d.join(file))
        .find(|p| p.exists())
        .ok_or_else(|| format!("no {file} in {:?}", cg.procs_files()).into())
}

fn read_control(cg: &Cgroup, file: &str) -> Result<String, Failed> {
    Ok(std::fs::read_to_string(control_file(cg, file)?)?
        .trim()
        .to_string())
}

/// A `key value` line of a flat-keyed control file (`cpu.stat`, `pids.events`).
fn stat_value(cg: &Cgroup, file: &str, key: &str) -> Result<u64, Failed> {
    let body = read_control(cg, file)?;
    body.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no {key} in {file}: {body:?}").into())
}

/// Kubernetes' conversions land in the control files of either cgroup version, and the
/// kernel enforces them: a CPU limit of 200m holds a busy loop to ~20% of a CPU (it gets
/// throttled), a pids limit makes the fork past it fail.
fn cpu_and_pids_limits_are_enforced() -> Result<(), Failed> {
    let mut spin = slot(
        "spin",
        &["sh", "-c", "while :; do :; done"],
        Resources {
            cpu_request_milli: Some(250),
            cpu_limit_milli: Some(200),
            memory_limit: Some(64 << 20),
            pids_limit: None,
        },
    );
    let forks = slot(
        "forks",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done; echo all-forked",
        ],
        Resources {
            pids_limit: Some(6),
            ..Default::default()
        },
    );
    (spin.spec.stdout, spin.spec.stderr) = (None, None);
    let v2 = matches!(fixture().hierarchy, Hierarchy::V2(_));
    // 250m is 256 shares; on v2 that is weight 1 + 254 * 9999 / 262142 = 10.
    let expected: &[(&str, &str)] = if v2 {
        &[
            ("cpu.weight", "10"),
            ("cpu.max", "20000 100000"),
            ("memory.max", "67108864"),
            ("memory.oom.group", "1"),
            ("pids.max", "max"),
        ]
    } else {
        &[
            ("cpu.shares", "256"),
            ("cpu.cfs_quota_us", "20000"),
            ("cpu.cfs_period_us", "100000"),
            ("memory.limit_in_bytes", "67108864"),
            ("pids.max", "max"),
        ]
    };
    for (file, want) in expected {
        let got = read_control(&spin.cgroup, file)?;
        check(got == *want, || {
            format!("{file}: {got:?}, expected {want:?}")
        })?;
    }
    check(read_control(&forks.cgroup, "pids.max")? == "6", || {
        "pids.max not 6".into()
    })?;
    // CPU time in microseconds.
    let usage = |cg: &Cgroup| -> Result<u64, Failed> {
        if v2 {
            stat_value(cg, "cpu.stat", "usage_usec")
        } else {
            Ok(read_control(cg, "cpuacct.usage")?.parse::<u64>()? / 1000)
        }
    };
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let began = std::time::Instant::now();
        let mut c = r.create(&spin.spec, &[]).await?;
        c.started().await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let used = usage(&spin.cgroup)?;
        let wall = began.elapsed().as_micros() as u64;
        let throttled = stat_value(&spin.cgroup, "cpu.stat", "nr_throttled")?;
        c.signal(libc::SIGKILL)?;
        c.wait().await?;
        check(used > 0 && used * 10 <= wall * 4, || {
            format!("a 200m container used {used} us of CPU in {wall} us")
        })?;
        check(throttled > 0, || "the busy loop was never throttled".into())?;
        let o = run(&r, &forks.spec).await?;
        check(
            o.status != ExitStatus::Exited(0) && o.stderr.contains("can't fork"),
            || format!("{:?} {:?} {:?}", o.status, o.stdout, o.stderr),
        )?;
        check(!o.stdout.contains("all-forked"), || o.stdout.clone())?;
        check(stat_value(&forks.cgroup, "pids.events", "max")? > 0, || {
            "pids.events counted no refused fork".into()
        })
    })
}

fn seccomp_profile_refuses_namespaces() -> Result<(), Failed> {
    // With CAP_SYS_ADMIN the capability check passes: only the profile stands in the way.
    let mut with = slot("scmp", &["unshare", "-n", "true"], Resources::default());
    with.spec.capabilities.push("CAP_SYS_ADMIN".into());
    let mut without = slot("noscmp", &["unshare", "-n", "true"], Resources::default());
    without.spec.capabilities.push("CAP_SYS_ADMIN".into());
    without.spec.seccomp = false;
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let o = run(&r, &with.spec).await?;
        check(o.status != ExitStatus::Exited(0), || {
            "unshare allowed under the profile".into()
        })?;
        check(o.stderr.contains("Operation not permitted"), || {
            o.stderr.clone()
        })?;
        let o = run(&r, &without.spec).await?;
        check(o.status == ExitStatus::Exited(0), || {
            format!("{:?}: {}", o.status, o.stderr)
        })
    })
}

fn fifty_containers_at_once() -> Result<(), Failed> {
    let slots: Vec<Slot> = (0..50)
        .map(|i| {
            slot(
                &format!("many{i}"),
                &["sh", "-c", &format!("exit {i}")],
                Resources::default(),
            )
        })
        .collect();
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let mut set = tokio::task::JoinSet::new();
        for (i, s) in slots.iter().enumerate() {
            let r = r.clone();
            let mut spec = s.spec.clone();
            (spec.stdout, spec.stderr) = (None, None);
            set.spawn(async move {
                let mut c = r.create(&spec, &[]).await?;
                c.started().await?;
                Ok::<_, RuntimeError>((i, c.wait().await?))
            });
        }
        let mut seen = 0;
        while let Some(res) = set.join_next().await {
            let (i, st) = res.map_err(|e| e.to_string())??;
            check(st == ExitStatus::Exited(i as i32), || {
                format!("container {i}: {st:?}")
            })?;
            seen += 1;
        }
        check(seen == 50, || format!("{seen} exits"))
    })
}

fn exec_runs_inside_a_running_container() -> Result<(), Failed> {
    let mut main = slot(
        "execbox",
        &["sh", "-c", "echo inside > /marker; exec sleep 1000"],
        Resources::default(),
    );
    (main.spec.stdout, main.spec.stderr) = (None, None);
    rt().block_on(async {
        let r = Runtime::connect(&fixture().socket)?;
        let mut c = r.create(&main.spec, &[]).await?;
        c.started().await?;
        let exec_spec = |argv: &[&str]| ContainerSpec {
            id: format!("{}-exec-{}", main.spec.id, uuid_like()),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            cgroup_procs: main.spec.cgroup_procs.clone(),
            seccomp: true,
            stdout: Some(0),
            stderr: Some(1),
            exec_in: Some(c.pid),
            ..Default::default()
        };
        // The marker may take a moment to be written.
        let mut out = String::new();
        for _ in 0..50 {
            let o = run(
                &r,
                &exec_spec(&["sh", "-c", "cat /marker; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; echo procs=$(ls /proc | grep -c '^[0-9]')"]),
            )
            .await?;
            o.started.map_err(|e| format!("exec: {e}"))?;
            check(o.status == ExitStatus::Exited(0), || format!("{:?}: {}", o.status, o.stderr))?;
            out = o.stdout;
            if out.contains("inside") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for want in ["inside\n", "execbox\n", "sleep 1000 \n"] {
            check(out.contains(want), || format!("{want:?} missing from:\n{out}"))?;
        }
        // Its own pid namespace view: the container's processes, not the host's.
        let procs: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("procs="))
            .and_then(|n| n.parse().ok())
            .ok_or("no procs line")?;
        check(procs <= 6, || format!("{procs} processes visible:\n{out}"))?;
        let o = run(&r, &exec_spec(&["sh", "-c", "exit 7"])).await?;
        check(o.status == ExitStatus::Exited(7), || format!("{:?}", o.status))?;
        let o = run(&r, &exec_spec(&["no-such-tool"])).await?;
        let e = o.started.expect_err("should not run");
        check(e.reason() == "RunContainerError", || format!("{e:?}"))?;
        c.signal(libc::SIGKILL)?;
        c.wait().await?;
        Ok(())
    })
}

/// The pid a pidfd refers to, from its fdinfo.
fn pidfd_pid(fd: std::os::fd::BorrowedFd<'_>) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// A container started through crun outlives its agent's connection; the agent that
/// adopts it gets a pidfd of the container process (not of `crun run`, which the spawner
/// waits on), so its signals reach the container: SIGKILL through the adopted pidfd ends
/// it, and the runtime's exit is reported to the adopter.
fn oci_container_is_adopted_with_its_own_pidfd() -> Result<(), Failed> {
    let crun = PathBuf::from("/usr/bin/crun");
    if !crun.exists() {
        return Err("/usr/bin/crun is not installed (cargo xtask setup installs it)".into());
    }
    let mut s = slot("ocibox", &["sleep", "1000"], Resources::default());
    (s.spec.stdout, s.spec.stderr) = (None, None);
    let rel = fixture().cgroup_base.join(&s.spec.id);
    skiff_kubelet::runtime::oci::mount_rootfs(&s.spec)?;
    skiff_kubelet::runtime::oci::write_bundle(&s.spec, &s.dir, &rel.to_string_lossy())?;
    s.spec.oci_runtime = Some(crun);
    s.spec.oci_bundle = Some(s.dir.clone());
    rt().block_on(async {
        let pid = {
            let first = Runtime::connect(&fixture().socket)?;
            let mut c = first.create(&s.spec, &[]).await?;
            c.started().await?;
            let pid = c.pid;
            check(pidfd_pid(c.pidfd()) == Some(pid), || {
                format!(
                    "first pidfd is of {:?}, container is {pid}",
                    pidfd_pid(c.pidfd())
                )
            })?;
            pid
            // The connection closes here: the container waits for adoption.
        };
        // crun starts the process asynchronously (an OCI container has no error pipe to
        // wait on): its exec of `sleep` may still be under way for a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let cmdline = loop {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"sleep\0") || std::time::Instant::now() > deadline {
                break cmdline;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        check(cmdline.starts_with(b"sleep\0"), || {
            format!("pid {pid} runs {:?}", String::from_utf8_lossy(&cmdline))
        })?;
        let second = Runtime::connect(&fixture().socket)?;
        let (mut live, exited) = second.adopt(vec![s.spec.id.clone()]).await?;
        check(live.len() == 1 && exited.is_empty(), || {
            format!("adopted {live:?}, exited {exited:?}")
        })?;
        let mut c = live.remove(0);
        let held = pidfd_pid(c.pidfd());
        check(c.pid == pid && held == Some(pid), || {
            format!(
                "adopted pid {} with a pidfd of {held:?}; container is {pid}",
                c.pid
            )
        })?;
        c.signal(libc::SIGKILL)?;
        let st = tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .map_err(|_| "no exit within 10 s of SIGKILL")??;
        check(
            matches!(st, ExitStatus::Exited(137) | ExitStatus::Signaled(9)),
            || format!("{st:?}"),
        )?;
        check(!Path::new(&format!("/proc/{pid}")).exists(), || {
            format!("{pid} still exists")
        })
    })
}
