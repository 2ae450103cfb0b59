//! Runs every benchmark and writes the README table: `skiff-bench [--quick] [--no-readme]`.

use skiff_perf::{Mode, control, machine, report};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One result as it comes, on stderr (the table comes at the end).
fn progress(m: &skiff_perf::report::Measurement) {
    eprintln!(
        "{}: {:.2} vs {:.2} {} ({:.2}x) {}",
        m.name,
        m.skiff,
        m.peer,
        m.unit,
        m.ratio(),
        m.note
    );
}

fn main() -> anyhow::Result<()> {
    // As in the `skiff` binary: with no subscriber, every span of the HTTP/2 stack (both
    // peers' clients run it in this process) falls back to the `log` crate's checks.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = if args.iter().any(|a| a == "--quick") {
        Mode::Quick
    } else {
        Mode::Full
    };
    if mode == Mode::Full {
        skiff_perf::require_release_build();
    }
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    // The container benchmark's spawner is forked first, while this process has one thread.
    let spawner_dir =
        std::env::temp_dir().join(format!("skiff-bench-spawner-{}", std::process::id()));
    let spawner = if wanted("containers") {
        Some(skiff_kubelet::runtime::spawner::start(&spawner_dir)?)
    } else {
        None
    };
    // The container and pod benchmarks first, while this process is small: they fork
    // their peers (crun, runc) from it, and after the scheduling and scale runs (API
    // servers inside this process) every fork copied the page tables of a heap that had
    // held 150,000 pods, which made `crun run` 3-4x slower than on its own.
    let mut node_side = Vec::new();
    if let Some(sp) = &spawner {
        node_side.extend(skiff_perf::containers::create_start_delete(
            mode,
            sp.socket(),
        )?);
    }
    drop(spawner);
    if wanted("pods") {
        node_side.extend(skiff_perf::pods::pod_start(mode)?);
    }
    let _ = std::fs::remove_dir_all(&spawner_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    runtime.block_on(async {
        if wanted("writes") {
            for clients in [1, 64] {
                let m = control::durable_writes(mode, clients).await?;
                progress(&m);
                results.push(m);
            }
        }
        if wanted("latency") {
            for m in control::api_latency(mode).await? {
                progress(&m);
                results.push(m);
            }
        }
        if wanted("fanout") {
            for m in control::watch_fanout(mode).await? {
                progress(&m);
                results.push(m);
            }
        }
        if wanted("startup") {
            for m in skiff_perf::cluster::pod_startup(mode).await? {
                progress(&m);
                results.push(m);
            }
        }
        // Before the scale benchmark: the scheduling runs host the API server in this
        // process, which the scale run leaves with a heap that held 150,000 pods.
        if wanted("scheduling") {
            for m in skiff_perf::scheduling::throughput(mode).await? {
                progress(&m);
                results.push(m);
            }
        }
        if wanted("scale") {
            for m in skiff_perf::cluster::at_scale(mode).await? {
                progress(&m);
                results.push(m);
            }
        }
        anyhow::Ok(())
    })?;
    let mut shown = |ms: Vec<skiff_perf::report::Measurement>| {
        for m in ms {
            progress(&m);
            results.push(m);
        }
    };
    // In the table where they always stood.
    shown(node_side);
    if wanted("services") {
        results.extend(skiff_perf::dataplane::services(mode)?);
    }
    if wanted("memory") {
        results.extend(skiff_perf::dataplane::memory(mode)?);
    }
    if wanted("nodeport") {
        results.extend(skiff_perf::dataplane::nodeport_udp(mode)?);
    }
    let command = if mode == Mode::Quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let table = report::table(&results, &machine(), command);
    print!("{table}");
    if mode == Mode::Full && only.is_empty() && !args.iter().any(|a| a == "--no-readme") {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        report::write_readme(&readme, &table)?;
        eprintln!("wrote {}", readme.display());
    }
    Ok(())
}
