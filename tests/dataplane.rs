//! `skiff dataplane` as a process: it programs Services from the API server, sockets of its
//! cgroup reach them, `skiff dataplane stats` reads its counters, and stopping it leaves
//! nothing behind (cgroup, bpffs, programs).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_dataplane::cgroup2::{self, Cgroup2};
use skiff_dataplane::netlink::Netlink;
use skiff_dataplane::netns::Netns;
use support::{SKIFF, Server};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 198.19.7.7
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- port: 8080
endpoints:
- addresses: ["127.0.0.2"]
"#;

/// The data plane process, stopped with SIGTERM even when the test fails half-way.
struct DataPlaneProcess(std::process::Child);

impl DataPlaneProcess {
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        self.0.wait().expect("wait")
    }
}

impl Drop for DataPlaneProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

#[test]
fn the_data_plane_process_serves_services_reports_counters_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let out = server.skiff(&["apply", "-f", "-"], Some(MANIFEST));
    assert!(out.status.success(), "{out:?}");

    // The pod: a namespace of its own (only `lo`: a missed translation cannot leave it),
    // with the backend on 127.0.0.2:8080.
    let pod = Netns::create().expect("netns");
    pod.block_on(async { Netlink::open()?.set_up("lo").await })
        .expect("ns")
        .expect("lo up");
    let listener = pod
        .run(|| TcpListener::bind("127.0.0.2:8080"))
        .expect("ns")
        .expect("bind");
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            let _ = c.write_all(b"ok");
        }
    });

    let node = format!("test-{}", std::process::id());
    let cgroup_path = std::path::Path::new(cgroup2::MOUNT).join(format!("skiff-{node}"));
    let dp = Command::new(SKIFF)
        .args(["--server", &server.address, "dataplane", "--node", &node])
        .args([
            "--node-ip",
            "198.18.0.10",
            "--pod-cidr",
            "198.18.1.0/24",
            "--cgroup",
        ])
        .arg(&cgroup_path)
        .env("SKIFF_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff dataplane");
    let mut dp = DataPlaneProcess(dp);
    let mut lines = BufReader::new(dp.0.stderr.take().expect("stderr")).lines();
    loop {
        let line = lines.next().expect("dataplane output").expect("utf8");
        if line.starts_with("data plane of node") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});

    // Sockets of the node's cgroup reach the Service's VIP.
    let cgroup = Cgroup2::create(&cgroup_path).expect("cgroup exists");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = 0;
    while connected < 5 {
        let r = cgroup
            .run_as_member(|| {
                pod.run(|| TcpStream::connect(SocketAddrV4::new(Ipv4Addr::new(198, 19, 7, 7), 80)))
            })
            .expect("cgroup")
            .expect("ns");
        match r {
            Ok(mut s) => {
                let mut buf = [0u8; 2];
                s.read_exact(&mut buf).expect("read");
                assert_eq!(&buf, b"ok");
                connected += 1;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never programmed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    let out = server.skiff(&["dataplane", "stats", "--node", &node], None);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("default/web"))
        .unwrap_or_else(|| panic!("no row for the service:\n{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "198.19.7.7:80/TCP", "{text}");
    assert_eq!(cols.last(), Some(&"5"), "5 connections counted:\n{text}");

    // SIGTERM: the data plane detaches, unmounts its bpffs and removes its cgroup.
    let status = dp.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!cgroup_path.exists(), "cgroup left behind");
    assert!(
        !skiff_dataplane::stats::pin_dir(&node).exists(),
        "bpffs left behind"
    );
    let out = server.skiff(&["dataplane", "stats", "--node", &node], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no data plane is running"),
        "{out:?}"
    );
}
