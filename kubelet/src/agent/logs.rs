//! Container logs in the CRI format, written through io_uring.
//!
//! `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`, one entry per line:
//! `<RFC3339Nano> <stdout|stderr> <P|F> <message>` (`P` for a piece of a line longer than
//! the read buffer, `F` for the end of a line). The container's stdout and stderr pipes
//! are read and the log file written with tokio-uring operations on the pod's core; the
//! two streams share one file and one offset counter, so entries never overlap. A file
//! that grows past `max_bytes` is rotated to `<restart>.log.1`, `.2`, ... keeping
//! `max_files` in all (kubelet's containerLogMaxSize / containerLogMaxFiles).

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Largest piece read at once (and so the longest `F` entry; longer lines are split).
const CHUNK: usize = 16 * 1024;

/// Where a pod's container logs go.
pub fn pod_log_dir(root: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{pod}_{uid}"))
}

/// The file of one run of a container.
pub fn container_log(pod_dir: &Path, container: &str, restart: u32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart}.log"))
}

struct Inner {
    path: PathBuf,
    file: Rc<tokio_uring::fs::File>,
    offset: u64,
    max_bytes: u64,
    max_files: u32,
}

/// One run's log file, shared by its stdout and stderr pumps.
#[derive(Clone)]
pub struct LogFile {
    inner: Rc<RefCell<Inner>>,
}

impl LogFile {
    /// Creates (or appends to) the log file; needs a tokio-uring runtime.
    pub async fn open(path: &Path, max_bytes: u64, max_files: u32) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let std_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let offset = std_file.metadata()?.len();
        let file = tokio_uring::fs::File::from_std(std_file);
        Ok(LogFile {
            inner: Rc::new(RefCell::new(Inner {
                path: path.to_path_buf(),
                file: Rc::new(file),
                offset,
                max_bytes: max_bytes.max(CHUNK as u64 * 2),
                max_files: max_files.max(1),
            })),
        })
    }

    /// Appends entries; rotates first when the file is full.
    async fn write(&self, data: Vec<u8>) -> std::io::Result<()> {
        let (file, at) = {
            let mut inner = self.inner.borrow_mut();
            if inner.offset + data.len() as u64 > inner.max_bytes {
                inner.rotate()?;
            }
            let at = inner.offset;
            inner.offset += data.len() as u64;
            (inner.file.clone(), at)
        };
        let (res, _) = file.write_all_at(data, at).await;
        res
    }
}

impl Inner {
    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.max_files <= 1 {
            // Only the live file is kept: start it over.
            std::fs::File::create(&self.path)?;
        } else {
            let _ = std::fs::remove_file(name(self.max_files - 1));
            for i in (1..self.max_files - 1).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            std::fs::rename(&self.path, name(1))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = Rc::new(tokio_uring::fs::File::from_std(f));
        self.offset = 0;
        Ok(())
    }
}

/// Formats CRI entries for `data` (a read from `stream`); `pending` carries an incomplete
/// line between reads.
fn entries(stream: &str, data: &[u8], pending: &mut Vec<u8>, eof: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut push = |tag: &str, line: &[u8]| {
        out.extend_from_slice(now.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
    };
    pending.extend_from_slice(data);
    let mut start = 0;
    while let Some(nl) = memchr::memchr(b'\n', &pending[start..]) {
        push("F", &pending[start..start + nl]);
        start += nl + 1;
    }
    pending.drain(..start);
    if pending.len() >= CHUNK || (eof && !pending.is_empty()) {
        push(if eof { "F" } else { "P" }, pending);
        pending.clear();
    }
    out
}

/// Copies one stream of a container into its log until the pipe closes (or the terminal
/// hangs up).
pub async fn pump(pipe: OwnedFd, stream: &'static str, log: LogFile) -> std::io::Result<()> {
    let pipe = tokio_uring::fs::File::from_std(std::fs::File::from(pipe));
    let mut pending = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Offset 0 on a pipe: io_uring reads it like read(2) (pipes have no position).
        let (res, b) = pipe.read_at(buf, 0).await;
        buf = b;
        let n = match res {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A terminal's master reads EIO once its last far end is closed: its end.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
            Err(e) => return Err(e),
        };
        let out = entries(stream, &buf[..n], &mut pending, n == 0);
        if !out.is_empty() {
            log.write(out).await?;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// One parsed log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: String,
    pub stream: String,
    pub partial: bool,
    pub message: String,
}

/// Parses one CRI log line.
pub fn parse(line: &str) -> Option<Entry> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?.to_string();
    let stream = it.next()?.to_string();
    let partial = match it.next()? {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    Some(Entry {
        time,
        stream,
        partial,
        message: it.next().unwrap_or_default().to_string(),
    })
}

/// The text of a log file as the container wrote it (partial entries joined).
pub fn text(path: &Path) -> std::io::Result<String> {
    let raw = std::fs::read_to_string(path)?;
    let mut out = String::new();
    for e in raw.lines().filter_map(parse) {
        out.push_str(&e.message);
        if !e.partial {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_full_entries_and_long_ones_are_split() {
        let mut pending = Vec::new();
        let out = entries("stdout", b"one\ntw", &mut pending, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with(" stdout F one\n"), "{s}");
        assert_eq!(pending, b"tw");
        let out = entries("stdout", b"o\n", &mut pending, false);
        assert!(String::from_utf8(out).unwrap().ends_with(" stdout F two\n"));
        let long = vec![b'x'; CHUNK + 10];
        let out = String::from_utf8(entries("stderr", &long, &mut pending, false)).unwrap();
        assert!(out.contains(" stderr P xxx"), "{}", &out[..60]);
        let out = String::from_utf8(entries("stderr", b"", &mut pending, true)).unwrap();
        assert!(out.is_empty(), "{out}");
        let e = parse("2024-01-01T00:00:00.000000001Z stdout F hello world").unwrap();
        assert_eq!(e.message, "hello world");
        assert!(!e.partial);
        assert!(parse("garbage").is_none());
    }
}
