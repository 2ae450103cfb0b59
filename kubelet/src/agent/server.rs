//! The node agent's own API (`skiff.v1.Node`, the kubelet's /containerLogs and /exec),
//! served on core 0 and reached through the API server, which finds the node of a pod
//! and connects to its InternalIP and daemon endpoint port.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use skiff_api::proto::node_server::Node;
use skiff_api::proto::{
    DataplaneStatsRequest, DataplaneStatsResponse, ExecInput, ExecOutput, LogChunk, PodLogsRequest,
    TerminalSize,
};
use skiff_client::informer::Reader;
use tonic::{Request, Response, Status};

use super::CoreMsg;
use super::logs;

/// Where an exec's output goes, in order: chunks as the command writes them, then the
/// message that carries its exit code; an error first instead when it could not run.
pub type ExecReply = tokio::sync::mpsc::Sender<Result<ExecOutput, String>>;
/// An exec's input as it comes (stdin chunks, terminal sizes); the channel's end closes
/// its stdin.
pub type ExecInputRx = tokio::sync::mpsc::Receiver<ExecInput>;

/// What an exec runs and what it is attached to.
#[derive(Debug)]
pub struct ExecCall {
    pub command: Vec<String>,
    /// Stdin chunks (when `stdin`) and terminal sizes (when `tty`); None when neither.
    pub input: Option<ExecInputRx>,
    pub stdin: bool,
    /// Run on a pseudo-terminal of this first size (0 x 0: the kernel's default).
    pub tty: Option<TerminalSize>,
}

pub struct NodeService {
    pub(crate) shared: std::sync::Arc<super::Shared>,
    pub(crate) log_dir: PathBuf,
    pub(crate) pods: Reader<Pod>,
    pub(crate) cores: Vec<super::inbox::Mailer<CoreMsg>>,
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, Status>> + Send>>;

impl NodeService {
    fn pod(&self, ns: &str, name: &str) -> Result<std::sync::Arc<Pod>, Status> {
        self.pods
            .get(&format!("{ns}/{name}"))
            .ok_or_else(|| Status::not_found(format!("pods \"{name}\" not found on this node")))
    }

    /// The container a request means: the named one, or the pod's only one.
    fn container(pod: &Pod, asked: &str) -> Result<String, Status> {
        let spec = pod.spec.clone().unwrap_or_default();
        let names: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|c| c.name.clone())
            .collect();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if asked.is_empty() {
            if spec.containers.len() == 1 {
                return Ok(spec.containers[0].name.clone());
            }
            return Err(Status::invalid_argument(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
        if names.iter().any(|n| n == asked) {
            Ok(asked.to_string())
        } else {
            Err(Status::invalid_argument(format!(
                "container {asked} is not valid for pod {name}"
            )))
        }
    }
}

/// The log files of a container, oldest run first.
fn runs(dir: &std::path::Path) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let n = name.strip_suffix(".log")?.parse::<u32>().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Renders CRI entries as the container wrote them (optionally with timestamps); returns
/// the text and how many bytes of `raw` were whole lines.
fn render(raw: &[u8], timestamps: bool) -> (String, usize) {
    let mut out = String::new();
    let mut used = 0;
    let text = String::from_utf8_lossy(raw);
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        used += line.len();
        if let Some(e) = logs::parse(line.trim_end_matches('\n')) {
            if timestamps {
                out.push_str(&e.time);
                out.push(' ');
            }
            out.push_str(&e.message);
            if !e.partial {
                out.push('\n');
            }
        }
    }
    (out, used)
}

fn tail(text: String, lines: i64) -> String {
    if lines < 0 {
        return text;
    }
    let all: Vec<&str> = text.split_inclusive('\n').collect();
    let start = all.len().saturating_sub(lines as usize);
    all[start..].concat()
}

#[tonic::async_trait]
impl Node for NodeService {
    type ContainerLogsStream = LogStream;
    type ExecStream = ExecStream;

    async fn container_logs(
        &self,
        req: Request<PodLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = req.into_inner();
        let pod = self.pod(&r.namespace, &r.name)?;
        let container = Self::container(&pod, &r.container)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = logs::pod_log_dir(&self.log_dir, &r.namespace, &r.name, &uid).join(&container);
        let all = runs(&dir);
        let pick = if r.previous {
            all.len().checked_sub(2).map(|i| all[i].clone())
        } else {
            all.last().cloned()
        };
        let Some((run, path)) = pick else {
            return Err(Status::invalid_argument(if r.previous {
                format!(
                    "previous terminated container \"{container}\" in pod \"{}\" not found",
                    r.name
                )
            } else {
                format!(
                    "container \"{container}\" in pod \"{}\" is waiting to start",
                    r.name
                )
            }));
        };
        let raw = std::fs::read(&path).map_err(|e| Status::internal(e.to_string()))?;
        let (text, used) = render(&raw, r.timestamps);
        let first = tail(text, r.tail_lines);
        let follow = r.follow && !r.previous;
        let timestamps = r.timestamps;
        let stream = async_stream(first, follow, path, used as u64, dir, run, timestamps);
        Ok(Response::new(stream))
    }

    async fn dataplane_stats(
        &self,
        _req: Request<DataplaneStatsRequest>,
    ) -> Result<Response<DataplaneStatsResponse>, Status> {
        let dp = self.shared.dataplane.as_ref().ok_or_else(|| {
            Status::not_found(format!(
                "node {} runs no data plane (skiff node --dataplane)",
                self.shared.cfg.node_name
            ))
        })?;
        let rows = dp.counters().map_err(Status::internal)?;
        Ok(Response::new(DataplaneStatsResponse {
            frontends: rows
                .iter()
                .map(|(f, c)| skiff_dataplane::stats::to_proto(f, c))
                .collect(),
        }))
    }

    async fn exec(
        &self,
        req: Request<tonic::Streaming<ExecInput>>,
    ) -> Result<Response<ExecStream>, Status> {
        let mut input = req.into_inner();
        let r = skiff_api::exec::first_request(&mut input).await?;
        // stdin and terminal sizes: the call's further messages, through a bounded channel
        // (a command that does not read holds the caller back); the call's end closes stdin.
        let channel = (r.stdin || r.tty).then(|| {
            let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(16);
            let mut chunks = skiff_api::exec::input_of(input);
            tokio::spawn(async move {
                while let Some(chunk) = chunks.next().await {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
            });
            rx
        });
        if r.command.is_empty() {
            return Err(Status::invalid_argument(
                "you must specify at least one command",
            ));
        }
        let pod = self.pod(&r.namespace, &r.name)?;
        let container = Self::container(&pod, &r.container)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // A few chunks in flight: a client that stops reading stops the command's writes.
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let core = super::shard(&uid, self.cores.len());
        self.cores[core]
            .send(CoreMsg::Exec {
                uid,
                container,
                call: ExecCall {
                    command: r.command,
                    input: channel,
                    stdin: r.stdin,
                    tty: r.tty.then(|| r.size.unwrap_or_default()),
                },
                reply: tx,
            })
            .map_err(|_| Status::unavailable("the node agent is stopping"))?;
        // A command that cannot run is the call's error; after its first message, the rest
        // streams.
        let first = rx
            .recv()
            .await
            .ok_or_else(|| Status::unavailable("the pod is gone"))?
            .map_err(Status::invalid_argument)?;
        let rest =
            tokio_stream::wrappers::ReceiverStream::new(rx).map(|m| m.map_err(Status::internal));
        Ok(Response::new(Box::pin(
            futures::stream::iter([Ok(first)]).chain(rest),
        )))
    }
}

/// The first chunk, then (when following) what the file gains until the container runs
/// again (a newer log file appears) or its logs go with the pod. The follower sleeps on
/// inotify events of the log directory (writes, new files, its removal) and reads only what
/// was appended; without inotify (no instance left) it looks every 100 ms instead.
fn async_stream(
    first: String,
    follow: bool,
    path: PathBuf,
    offset: u64,
    dir: PathBuf,
    run: u32,
    timestamps: bool,
) -> LogStream {
    let head = futures::stream::iter([Ok(LogChunk {
        data: first.into_bytes().into(),
    })]);
    if !follow {
        return Box::pin(head);
    }
    // Watching before the first read: nothing written from here on goes unnoticed.
    let changes = watch_dir(&dir);
    let rest = futures::stream::unfold((offset, changes), move |(mut offset, mut changes)| {
        let (path, dir) = (path.clone(), dir.clone());
        async move {
            loop {
                let (raw, len) = match appended(&path, offset) {
                    Ok(r) => r,
                    Err(_) => return None,
                };
                if len < offset {
                    // Rotated: start over on the new file.
                    offset = 0;
                    continue;
                }
                let (text, used) = render(&raw, timestamps);
                offset += used as u64;
                if !text.is_empty() {
                    let chunk = LogChunk {
                        data: text.into_bytes().into(),
                    };
                    return Some((Ok(chunk), (offset, changes)));
                }
                if runs(&dir).last().is_some_and(|(n, _)| *n > run) {
                    return None;
                }
                match changes.as_mut() {
                    // A long quiet spell still looks again (an event lost to a full queue).
                    Some(events) => {
                        let next = tokio::time::timeout(Duration::from_secs(5), events.next());
                        // The stream ended or failed: look by polling from now on.
                        if let Ok(None | Some(Err(_))) = next.await {
                            changes = None;
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    });
    Box::pin(head.chain(rest))
}

type DirEvents = inotify::EventStream<[u8; 1024]>;

/// Changes to the files of `dir` (and its own removal), or None without inotify.
fn watch_dir(dir: &std::path::Path) -> Option<DirEvents> {
    use inotify::{Inotify, WatchMask};
    let watch = || -> std::io::Result<DirEvents> {
        let inotify = Inotify::init()?;
        inotify.watches().add(
            dir,
            WatchMask::MODIFY
                | WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )?;
        inotify.into_event_stream([0u8; 1024])
    };
    watch()
        .inspect_err(
            |e| tracing::debug!(dir = %dir.display(), error = %e, "no inotify; polling the log"),
        )
        .ok()
}

/// What `path` holds past `offset`, and the file's length (shorter than `offset` when it
/// was rotated).
fn appended(path: &std::path::Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut raw = Vec::new();
    if len > offset {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut raw)?;
    }
    Ok((raw, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_joins_partial_entries_and_keeps_incomplete_lines_for_later() {
        let raw = b"2024-01-01T00:00:00Z stdout F one\n2024-01-01T00:00:01Z stderr P tw\n2024-01-01T00:00:02Z stdout F o\n2024-01-01T00:00:03Z std";
        let (text, used) = render(raw, false);
        assert_eq!(text, "one\ntwo\n");
        assert_eq!(used, raw.len() - "2024-01-01T00:00:03Z std".len());
        let (text, _) = render(raw, true);
        assert!(text.starts_with("2024-01-01T00:00:00Z one\n"), "{text}");
        assert_eq!(tail("a\nb\nc\n".into(), 2), "b\nc\n");
        assert_eq!(tail("a\nb\n".into(), -1), "a\nb\n");
    }

    #[tokio::test]
    async fn following_reads_appends_starts_over_on_rotation_and_ends_on_a_new_run() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let line = |t: &str| format!("2026-11-26T00:00:00Z stdout F {t}\n");
        std::fs::write(&path, line("first")).expect("write");
        let offset = std::fs::metadata(&path).expect("stat").len();
        assert!(watch_dir(dir.path()).is_some(), "inotify is available here");
        let mut s = async_stream(
            "first\n".into(),
            true,
            path.clone(),
            offset,
            dir.path().to_path_buf(),
            0,
            false,
        );
        let mut next = async || {
            let c = tokio::time::timeout(Duration::from_secs(20), s.next())
                .await
                .expect("a chunk before the deadline");
            c.map(|c| String::from_utf8(c.expect("chunk").data.to_vec()).expect("utf-8"))
        };
        assert_eq!(next().await.as_deref(), Some("first\n"));
        // An append, written in two pieces: only whole lines come out.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let second = line("second");
        f.write_all(&second.as_bytes()[..10]).expect("write");
        f.flush().expect("flush");
        f.write_all(&second.as_bytes()[10..]).expect("write");
        assert_eq!(next().await.as_deref(), Some("second\n"));
        // Rotated (truncated and rewritten shorter): read again from the start.
        std::fs::write(&path, line("r")).expect("rotate");
        assert_eq!(next().await.as_deref(), Some("r\n"));
        // The container ran again: the follower ends.
        std::fs::write(dir.path().join("1.log"), line("next run")).expect("write");
        assert_eq!(next().await, None);
    }
}
