//! The quick mode of every benchmark, so none of them rots. Figures from here are not
//! published; `cargo xtask bench` produces those.

use skiff_perf::{Mode, control};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_quick() {
    let m = control::durable_writes(Mode::Quick, 64)
        .await
        .expect("benchmark runs");
    assert!(m.skiff > 0.0 && m.peer > 0.0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_latency_quick() {
    let ms = control::api_latency(Mode::Quick)
        .await
        .expect("benchmark runs");
    assert!(ms.iter().all(|m| m.skiff > 0.0 && m.peer > 0.0), "{ms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fanout_quick() {
    let ms = control::watch_fanout(Mode::Quick)
        .await
        .expect("benchmark runs");
    assert!(ms[0].skiff > 0.0 && ms[0].peer > 0.0, "{ms:?}");
    assert!(
        ms[0].note.is_empty(),
        "every event delivered: {}",
        ms[0].note
    );
}

#[test]
fn service_programming_and_connect_latency_quick() {
    let ms = skiff_perf::dataplane::services(Mode::Quick).expect("benchmark runs");
    assert_eq!(ms.len(), 6, "{ms:?}");
    assert!(ms.iter().all(|m| m.skiff > 0.0 && m.peer > 0.0), "{ms:?}");
}

#[test]
fn nodeport_udp_quick() {
    let ms = skiff_perf::dataplane::nodeport_udp(Mode::Quick).expect("benchmark runs");
    assert!(ms.iter().all(|m| m.skiff > 0.0 && m.peer > 0.0), "{ms:?}");
}

#[test]
fn memory_quick() {
    let ms = skiff_perf::dataplane::memory(Mode::Quick).expect("benchmark runs");
    assert!(ms.iter().all(|m| m.skiff > 0.0 && m.peer > 0.0), "{ms:?}");
}

/// The container benchmark forks its spawner before any thread exists, which a libtest
/// binary cannot promise: it runs as the bench binary's own process.
#[test]
fn container_create_start_delete_quick() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff-bench"))
        .args(["--quick", "--no-readme", "containers"])
        .output()
        .expect("skiff-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for peer in ["crun run", "runc run"] {
        assert!(
            stdout.contains("| container create+start+delete p50 (/bin/true, 10 sequential)")
                && stdout.contains(peer),
            "{stdout}"
        );
    }
}

#[test]
fn pod_start_and_agent_memory_quick() {
    let ms = skiff_perf::pods::pod_start(Mode::Quick).expect("benchmark runs");
    assert_eq!(ms.len(), 8, "{ms:?}");
    assert!(ms.iter().all(|m| m.skiff > 0.0 && m.peer > 0.0), "{ms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_throughput_quick() {
    let ms = skiff_perf::scheduling::throughput(Mode::Quick)
        .await
        .expect("benchmark runs and every placement checks out");
    // Four workloads with the scheduler in the API server's process, basic again with it
    // in its own process.
    assert_eq!(ms.len(), 5, "{ms:?}");
    assert!(ms.iter().all(|m| m.skiff > 0.0), "{ms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_startup_on_a_local_cluster_quick() {
    let ms = skiff_perf::cluster::pod_startup(Mode::Quick)
        .await
        .expect("benchmark runs");
    assert!(ms.iter().all(|m| m.skiff > 0.0), "{ms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_at_scale_quick() {
    let ms = skiff_perf::cluster::at_scale(Mode::Quick)
        .await
        .expect("benchmark runs");
    assert_eq!(ms.len(), 3, "{ms:?}");
    assert!(ms.iter().all(|m| m.skiff > 0.0), "{ms:?}");
}
