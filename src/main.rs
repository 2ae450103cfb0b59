//! The `skiff` binary: the daemons (`server`, `up`) and kubectl-style verbs. It parses flags
//! and wires the library crates together; the logic lives in the crates.

mod cli;
mod config;
mod dataplane;
mod image;
mod node;
mod server;
mod signal;
mod up;

use clap::{Parser, Subcommand};
use skiff_client::Client;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: a Kubernetes-style orchestrator built for speed"
)]
struct Cli {
    /// API server address (default: $SKIFF_SERVER, then the config file, then 127.0.0.1:6443).
    #[arg(long, short = 's', global = true)]
    server: Option<String>,
    /// Namespace.
    #[arg(long, short = 'n', global = true, default_value = "default")]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (with the scheduler and the controller manager, unless told not to).
    Server(server::ServerArgs),
    /// Run the scheduler against an API server.
    Scheduler,
    /// Run the controller manager against an API server (leader-elected).
    ControllerManager(server::ControllerArgs),
    /// Start a local cluster and apply the demo.
    Up(up::UpArgs),
    /// Stop the local cluster.
    Down(up::DownArgs),
    /// The node's images: import, list, build the busybox image.
    Image(image::ImageCmd),
    /// Run the node agent: pods bound to this node, their containers and status.
    Node(node::NodeArgs),
    /// Run one node's eBPF data plane (service load balancing) on its own.
    Dataplane(dataplane::DataplaneCmd),
    /// Create or update objects from manifests.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Create objects from manifests, or a namespace.
    Create {
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        /// `namespace NAME`
        args: Vec<String>,
    },
    /// Display objects.
    Get {
        args: Vec<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'l', long = "selector", default_value = "")]
        selector: String,
        #[arg(long = "field-selector", default_value = "")]
        field_selector: String,
        #[arg(short = 'o', long = "output", default_value = "")]
        output: cli::Output,
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show details of objects.
    Describe { args: Vec<String> },
    /// Delete objects.
    Delete {
        args: Vec<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(short = 'l', long = "selector", default_value = "")]
        selector: String,
        #[arg(long)]
        grace_period: Option<i64>,
        /// Same as --grace-period=0.
        #[arg(long)]
        now: bool,
        #[arg(long)]
        ignore_not_found: bool,
    },
    /// Print the logs of a container in a pod.
    Logs {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        /// The previous run of the container.
        #[arg(short = 'p', long)]
        previous: bool,
        #[arg(long, default_value_t = -1)]
        tail: i64,
        #[arg(long)]
        timestamps: bool,
    },
    /// Run a command in a container; its output streams back.
    Exec {
        pod: String,
        /// Pass our stdin to the command (its end closes the command's stdin).
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Run the command on a terminal (our stdin must be one): raw input, its size
        /// followed, stdout and stderr as one.
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Set the number of replicas of a Deployment or ReplicaSet.
    Scale {
        /// TYPE NAME or TYPE/NAME.
        args: Vec<String>,
        #[arg(long)]
        replicas: i32,
    },
    /// Manage the rollout of a Deployment.
    Rollout {
        #[command(subcommand)]
        command: RolloutCmd,
    },
    /// Run hollow nodes (KWOK-like): Nodes with Leases whose pods are reported Running
    /// without containers, for scale tests of the control plane.
    HollowNodes {
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Node names are <prefix><i>.
        #[arg(long, default_value = "hollow-")]
        prefix: String,
        #[arg(long, default_value = "10s", value_parser = server::parse_duration)]
        lease_period: std::time::Duration,
        #[arg(long, default_value_t = 110)]
        max_pods: u32,
    },
    /// List the resource types the server serves.
    ApiResources,
    /// Client and server versions.
    Version,
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Watch a rollout until it completes.
    Status {
        args: Vec<String>,
        /// Give up after this long (e.g. 2m).
        #[arg(long, value_parser = server::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// The revisions of a Deployment.
    History { args: Vec<String> },
    /// Roll back to the previous revision (or --to-revision).
    Undo {
        args: Vec<String>,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Restart every pod of a Deployment through a rollout.
    Restart { args: Vec<String> },
}

async fn connect(flag: Option<&str>) -> anyhow::Result<Client> {
    let address = config::server(flag);
    Client::connect(&address)
        .await
        .map_err(|e| anyhow::anyhow!(cli::server_error(&e)))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = cli.server.as_deref();
    let ns = cli.namespace.as_str();
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Scheduler => server::scheduler(connect(server).await?).await,
        Command::ControllerManager(args) => {
            server::controller_manager(connect(server).await?, args).await
        }
        Command::Scale { args, replicas } => {
            cli::rollout::scale(&connect(server).await?, &args, ns, replicas).await
        }
        Command::Rollout { command } => {
            let client = connect(server).await?;
            match command {
                RolloutCmd::Status { args, timeout } => {
                    cli::rollout::status(&client, &args, ns, timeout).await
                }
                RolloutCmd::History { args } => cli::rollout::history(&client, &args, ns).await,
                RolloutCmd::Undo { args, to_revision } => {
                    cli::rollout::undo(&client, &args, ns, to_revision).await
                }
                RolloutCmd::Restart { args } => cli::rollout::restart(&client, &args, ns).await,
            }
        }
        Command::HollowNodes {
            count,
            prefix,
            lease_period,
            max_pods,
        } => {
            let client = connect(server).await?;
            let nodes = skiff_hollow::HollowNodes::start(
                &client,
                skiff_hollow::HollowConfig {
                    prefix,
                    count,
                    pods: max_pods,
                    lease_period,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!(cli::server_error(&e)))?;
            eprintln!(
                "{} hollow node(s) registered; renewing their leases every {lease_period:?}; Ctrl-C stops them",
                nodes.names.len()
            );
            signal::shutdown().await;
            Ok(())
        }
        Command::Up(args) => up::up(args).await,
        Command::Down(_) => anyhow::bail!("down runs outside the async runtime"),
        Command::Image(cmd) => image::run(cmd).await,
        Command::Dataplane(args) => dataplane::run(args, connect(server).await?).await,
        Command::Node(_) => anyhow::bail!("the node agent runs outside the async runtime"),
        Command::Logs {
            pod,
            container,
            follow,
            previous,
            tail,
            timestamps,
        } => {
            use futures::StreamExt;
            use std::io::Write;
            let client = connect(server).await?;
            let pod = pod.strip_prefix("pod/").unwrap_or(&pod).to_string();
            let mut stream = client
                .pod_logs(skiff_api::proto::PodLogsRequest {
                    namespace: ns.to_string(),
                    name: pod,
                    container: container.unwrap_or_default(),
                    follow,
                    previous,
                    tail_lines: tail,
                    timestamps,
                })
                .await
                .map_err(|e| anyhow::anyhow!(cli::server_error(&e)))?;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| anyhow::anyhow!(cli::server_error(&e)))?;
                out.write_all(&chunk)?;
                out.flush()?;
            }
            Ok(())
        }
        Command::Exec {
            pod,
            stdin,
            tty,
            container,
            command,
        } => {
            let client = connect(server).await?;
            let pod = pod.strip_prefix("pod/").unwrap_or(&pod).to_string();
            let req = skiff_api::proto::PodExecRequest {
                namespace: ns.to_string(),
                name: pod,
                container: container.unwrap_or_default(),
                command,
                stdin,
                ..Default::default()
            };
            let code = cli::terminal::exec(&client, req, tty).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Apply { files } => cli::apply(&connect(server).await?, &files, ns, false).await,
        Command::Create { files, args } => {
            let client = connect(server).await?;
            match (files.is_empty(), args.as_slice()) {
                (false, []) => cli::apply(&client, &files, ns, true).await,
                (true, [kind, name]) if kind == "namespace" || kind == "ns" => {
                    cli::create_namespace(&client, name).await
                }
                _ => anyhow::bail!("usage: skiff create -f FILE | skiff create namespace NAME"),
            }
        }
        Command::Get {
            args,
            all_namespaces,
            selector,
            field_selector,
            output,
            watch,
        } => {
            let client = connect(server).await?;
            cli::get(
                &client,
                cli::GetArgs {
                    args: &args,
                    namespace: ns,
                    all_namespaces,
                    labels: &selector,
                    fields: &field_selector,
                    output,
                    watch,
                },
            )
            .await
        }
        Command::Describe { args } => cli::describe(&connect(server).await?, &args, ns).await,
        Command::Delete {
            args,
            files,
            all,
            selector,
            grace_period,
            now,
            ignore_not_found,
        } => {
            let client = connect(server).await?;
            cli::delete(
                &client,
                cli::DeleteArgs {
                    args: &args,
                    files: &files,
                    namespace: ns,
                    all,
                    labels: &selector,
                    grace_period: if now { Some(0) } else { grace_period },
                    ignore_not_found,
                },
            )
            .await
        }
        Command::ApiResources => {
            let mut rows = vec![vec![
                "NAME".to_string(),
                "SHORTNAMES".into(),
                "APIVERSION".into(),
                "NAMESPACED".into(),
                "KIND".into(),
            ]];
            for r in skiff_api::resource::RESOURCES {
                rows.push(vec![
                    r.plural.into(),
                    r.short_names.join(","),
                    r.api_version(),
                    r.namespaced.to_string(),
                    r.kind.into(),
                ]);
            }
            print!("{}", cli::table::render(&rows));
            Ok(())
        }
        Command::Version => {
            println!("Client Version: {}", env!("CARGO_PKG_VERSION"));
            let client = connect(server).await?;
            let (v, store, rev) = client
                .version()
                .await
                .map_err(|e| anyhow::anyhow!(cli::server_error(&e)))?;
            println!("Server Version: {v} (store: {store}, revision {rev})");
            Ok(())
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "warn,skiff=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The node agent forks its container spawner before any thread exists.
    if let Command::Node(args) = cli.command {
        if let Err(e) = node::main(args, &config::server(cli.server.as_deref())) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    // `down` needs no runtime of ours (namespace work runs on threads of its own).
    if let Command::Down(args) = cli.command {
        if let Err(e) = up::down(args) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        if e.downcast_ref::<cli::Reported>().is_none() {
            let text = e.to_string();
            if text.starts_with("Error from server") || text.starts_with("The connection") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {e:#}");
            }
        }
        std::process::exit(1);
    }
}
