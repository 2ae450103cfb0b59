//! The node agent's own API (`skiff.v1.Node`, the kubelet's /containerLogs and /exec),
//! served on core 0 and reached through the API server, which finds the node of a pod
//! and connects to its InternalIP and daemon endpoint port.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use skiff_api::proto::node_server::Node;
use skiff_api::proto::{ExecOutput, LogChunk, PodExecRequest, PodLogsRequest};
use skiff_client::informer::Reader;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::CoreMsg;
use super::logs;

/// Most output an exec returns.
pub const EXEC_OUTPUT_LIMIT: u64 = 1 << 20;

pub struct NodeService {
    pub(crate) log_dir: PathBuf,
    pub(crate) pods: Reader<Pod>,
    pub(crate) cores: Vec<UnboundedSender<CoreMsg>>,
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

    async fn exec(&self, req: Request<PodExecRequest>) -> Result<Response<ExecStream>, Status> {
        let r = req.into_inner();
        if r.command.is_empty() {
            return Err(Status::invalid_argument(
                "you must specify at least one command",
            ));
        }
        let pod = self.pod(&r.namespace, &r.name)?;
        let container = Self::container(&pod, &r.container)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        let core = super::shard(&uid, self.cores.len());
        self.cores[core]
            .send(CoreMsg::Exec {
                uid,
                container,
                command: r.command,
                reply: tx,
            })
            .map_err(|_| Status::unavailable("the node agent is stopping"))?;
        let (code, output) = rx
            .await
            .map_err(|_| Status::unavailable("the pod is gone"))?
            .map_err(Status::invalid_argument)?;
        let msg = ExecOutput {
            output: output.into_bytes().into(),
            done: true,
            exit_code: code,
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(msg)]))))
    }
}

/// The first chunk, then (when following) what the file gains until the container runs
/// again (a newer log file appears) or its logs go with the pod.
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
    let rest = futures::stream::unfold(offset, move |mut offset| {
        let (path, dir) = (path.clone(), dir.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let raw = match std::fs::read(&path) {
                    Ok(r) => r,
                    Err(_) => return None,
                };
                if (raw.len() as u64) < offset {
                    // Rotated: start over on the new file.
                    offset = 0;
                }
                let (text, used) = render(&raw[offset as usize..], timestamps);
                offset += used as u64;
                if !text.is_empty() {
                    return Some((
                        Ok(LogChunk {
                            data: text.into_bytes().into(),
                        }),
                        offset,
                    ));
                }
                if runs(&dir).last().is_some_and(|(n, _)| *n > run) {
                    return None;
                }
            }
        }
    });
    Box::pin(head.chain(rest))
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
}
