//! `skiff up` / `skiff down`: a local cluster on this machine. For now it is the control
//! plane (a `skiff server` running in the background over the embedded store) plus the demo
//! manifest; node agents join it once they exist.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skiff_client::Client;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the local cluster keeps its state and logs.
    #[arg(long, default_value = "/var/lib/skiff/local")]
    pub data_dir: PathBuf,
    /// Address of the API server.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// Do not apply the demo manifest.
    #[arg(long)]
    pub no_demo: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[arg(long, default_value = "/var/lib/skiff/local")]
    pub data_dir: PathBuf,
    /// Also delete the cluster's stored state.
    #[arg(long)]
    pub purge: bool,
}

const DEMO: &str = include_str!("../examples/demo.yaml");

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("server.pid")
}

fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    if running_pid(&args.data_dir).is_none() {
        let log = std::fs::File::create(args.data_dir.join("server.log"))
            .context("creating server.log")?;
        let exe = std::env::current_exe().context("locating the skiff binary")?;
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(exe)
                .arg("server")
                .arg("--data-dir")
                .arg(args.data_dir.join("store"))
                .arg("--listen")
                .arg(&args.listen)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            0,
        )
        .spawn()
        .context("starting skiff server")?;
        std::fs::write(pid_file(&args.data_dir), child.id().to_string())?;
        eprintln!(
            "started skiff server (pid {}), log: {}",
            child.id(),
            args.data_dir.join("server.log").display()
        );
    } else {
        eprintln!("skiff server already running");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        match Client::connect(&args.listen).await {
            Ok(c) if c.version().await.is_ok() => break c,
            _ if Instant::now() > deadline => {
                bail!(
                    "skiff server did not come up within 20 s; see {}",
                    args.data_dir.join("server.log").display()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    crate::config::save(&crate::config::ClientConfig {
        server: args.listen.clone(),
    })?;
    if !args.no_demo {
        let demo = args.data_dir.join("demo.yaml");
        std::fs::write(&demo, DEMO)?;
        crate::cli::apply(&client, &[demo.display().to_string()], "default", false).await?;
    }
    let (version, store, revision) = client.version().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!();
    println!(
        "Skiff {version} control plane is up at {} (store: {store}, revision {revision}).",
        args.listen
    );
    println!("Try:");
    println!("  skiff get deploy,svc,cm          # the demo objects");
    println!("  skiff describe svc web           # its ClusterIP and NodePort");
    println!("  skiff get pods -w                # watch (pods appear once nodes join)");
    println!("  skiff down                       # stop it");
    Ok(())
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    match running_pid(&args.data_dir) {
        Some(pid) => {
            Command::new("kill")
                .arg(pid.to_string())
                .status()
                .context("stopping skiff server")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()?;
            }
            println!("stopped skiff server (pid {pid})");
        }
        None => println!("no local skiff server is running"),
    }
    let _ = std::fs::remove_file(pid_file(&args.data_dir));
    if args.purge {
        std::fs::remove_dir_all(&args.data_dir).ok();
        println!("removed {}", args.data_dir.display());
    }
    Ok(())
}
