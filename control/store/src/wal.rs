//! The embedded store's write-ahead log: each committed batch is one record appended to the
//! current segment and made durable with one `fdatasync`, the cheapest durable write a file
//! system offers. redb holds checkpoints of the state; segments wholly covered by a
//! checkpoint are deleted.
//!
//! Record: `len: u32 | crc32(payload): u32 | payload`. Payload: the batch's revision, then
//! its entries (the final state of each key the batch touched). A crash can only tear the
//! last record of the last segment; replay stops there and cuts the segment back to its
//! last whole record. A bad record anywhere else is corruption and opening fails.
//!
//! A write that fails partway (a full disk) is cut off again, so the next record follows
//! the last whole one; if it cannot be, or an fdatasync fails, the log takes no more
//! records (the store refuses writes) until a restart replays it.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{KeyValue, Revision, StoreError};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// One key's state after a batch: a value, or gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Put(KeyValue),
    Delete(String),
}

/// Encodes a batch record's payload.
pub fn encode_batch<'a>(
    revision: Revision,
    entries: impl Iterator<Item = (&'a str, Option<&'a KeyValue>)>,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(256);
    encode_batch_into(&mut p, revision, entries);
    p
}

/// Appends a batch record's payload to `p`.
fn encode_batch_into<'a>(
    p: &mut Vec<u8>,
    revision: Revision,
    entries: impl Iterator<Item = (&'a str, Option<&'a KeyValue>)>,
) {
    p.extend_from_slice(&revision.to_le_bytes());
    for (key, kv) in entries {
        p.push(if kv.is_some() { 1 } else { 2 });
        p.extend_from_slice(&(key.len() as u32).to_le_bytes());
        p.extend_from_slice(key.as_bytes());
        if let Some(kv) = kv {
            p.extend_from_slice(&kv.create_revision.to_le_bytes());
            p.extend_from_slice(&kv.mod_revision.to_le_bytes());
            p.extend_from_slice(&kv.version.to_le_bytes());
            p.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
            p.extend_from_slice(&kv.value);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Decodes a batch payload: its revision and entries.
pub fn decode_batch(payload: &[u8]) -> Option<(Revision, Vec<Entry>)> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    let revision = r.i64()?;
    let mut entries = Vec::new();
    while r.at < payload.len() {
        let kind = r.take(1)?[0];
        let len = r.u32()? as usize;
        let key = String::from_utf8(r.take(len)?.to_vec()).ok()?;
        match kind {
            1 => {
                let create_revision = r.i64()?;
                let mod_revision = r.i64()?;
                let version = r.i64()?;
                let vlen = r.u32()? as usize;
                let value = Bytes::copy_from_slice(r.take(vlen)?);
                entries.push(Entry::Put(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision,
                    version,
                }));
            }
            2 => entries.push(Entry::Delete(key)),
            _ => return None,
        }
    }
    Some((revision, entries))
}

fn segment_name(first: Revision) -> String {
    format!("{first:020}.wal")
}

/// Segments in revision order: (first revision, path).
pub fn segments(dir: &Path) -> Result<Vec<(Revision, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("cannot list", dir, e)),
    };
    for entry in listing {
        let entry = entry.map_err(|e| io("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Replays every record after `after` (the checkpoint's revision), in order. Cuts a torn
/// tail off the last segment.
pub fn replay(
    dir: &Path,
    after: Revision,
    mut apply: impl FnMut(Revision, Vec<Entry>),
) -> Result<Revision, StoreError> {
    let segs = segments(dir)?;
    let mut last = after;
    for (i, (_, path)) in segs.iter().enumerate() {
        let data = fs::read(path).map_err(|e| io("cannot read", path, e))?;
        let mut at = 0usize;
        let good_end = loop {
            let header = data.get(at..at + 8);
            let Some(header) = header else { break at };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if len == 0 {
                break at;
            }
            let Some(payload) = data.get(at + 8..at + 8 + len) else {
                break at;
            };
            if crc32fast::hash(payload) != crc {
                break at;
            }
            let Some((rev, entries)) = decode_batch(payload) else {
                break at;
            };
            if rev > after {
                apply(rev, entries);
                last = last.max(rev);
            }
            at += 8 + len;
        };
        if good_end < data.len() {
            if i + 1 != segs.len() {
                return Err(StoreError::Backend(format!(
                    "write-ahead log {} is corrupt at byte {good_end}; refusing to start with a gap",
                    path.display()
                )));
            }
            // A write torn by a crash: never acknowledged, so drop it.
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io("cannot open", path, e))?;
            f.set_len(good_end as u64)
                .map_err(|e| io("cannot truncate", path, e))?;
            f.sync_all().map_err(|e| io("cannot sync", path, e))?;
        }
    }
    Ok(last)
}

/// The log being written.
pub struct Wal {
    dir: PathBuf,
    file: File,
    written: u64,
    /// The record being written, reused from batch to batch (a fresh buffer per batch
    /// costs page faults).
    record: Vec<u8>,
    /// Set when the log's end is unknown: a failed write that could not be cut off, or a
    /// failed fdatasync (after which the kernel may have dropped the pages it could not
    /// write). A record appended after a torn one would be lost on replay, so nothing more
    /// is; the store refuses writes until restarted, when replay finds the last whole record.
    broken: Option<StoreError>,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

impl Wal {
    /// Starts a new segment whose first record will have revision `next`.
    pub fn create(dir: &Path, next: Revision) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        let path = dir.join(segment_name(next));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io("cannot create", &path, e))?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            written: 0,
            record: Vec::new(),
            broken: None,
        })
    }

    /// Appends one batch record and makes it durable. `next` is the revision the following
    /// batch will start at (names the next segment when this one is full).
    pub fn append(&mut self, payload: &[u8], next: Revision) -> Result<(), StoreError> {
        self.record.clear();
        self.record.extend_from_slice(&[0; 8]);
        self.record.extend_from_slice(payload);
        self.finish_record(next)
    }

    /// Encodes a batch (the state of each key it changed) into the reused record buffer
    /// and appends it durably; returns the record's size.
    pub fn append_batch<'a>(
        &mut self,
        revision: Revision,
        entries: impl Iterator<Item = (&'a str, Option<&'a KeyValue>)>,
    ) -> Result<usize, StoreError> {
        self.record.clear();
        self.record.extend_from_slice(&[0; 8]);
        encode_batch_into(&mut self.record, revision, entries);
        let size = self.record.len();
        self.finish_record(revision + 1)?;
        Ok(size)
    }

    fn finish_record(&mut self, next: Revision) -> Result<(), StoreError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let payload_len = self.record.len() - 8;
        let crc = crc32fast::hash(&self.record[8..]);
        self.record[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.record[4..8].copy_from_slice(&crc.to_le_bytes());
        let path = &self.dir;
        if let Err(e) = self.file.write_all(&self.record) {
            let failed = io("cannot write the log in", path, e);
            // Cut off what part of the record was written (a full disk), so that the next
            // record follows the last whole one.
            let written = self.written;
            let undone = self
                .file
                .set_len(written)
                .and_then(|()| self.file.seek(SeekFrom::Start(written)));
            if let Err(e) = undone {
                self.broken = Some(io("cannot cut a failed write off the log in", path, e));
            }
            return Err(failed);
        }
        if let Err(e) = self.file.sync_data() {
            let failed = io("cannot sync the log in", path, e);
            self.broken = Some(failed.clone());
            return Err(failed);
        }
        self.written += self.record.len() as u64;
        if self.record.capacity() > 16 << 20 {
            // One huge batch inflated the buffer: do not keep it.
            self.record = Vec::new();
        }
        if self.written >= SEGMENT_BYTES {
            match Wal::create(&self.dir, next) {
                Ok(mut fresh) => {
                    fresh.record = std::mem::take(&mut self.record);
                    *self = fresh;
                }
                // The record is durable, so the write succeeded; the segment grows until a
                // later try (a full disk). A new segment left behind would come after this
                // one's later records and let a checkpoint delete them: remove it, or stop.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a new log segment");
                    let stray = self.dir.join(segment_name(next));
                    match fs::remove_file(&stray) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            self.broken = Some(io("cannot remove", &stray, e));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// Deletes segments whose every record is at or below `checkpoint`.
pub fn remove_covered(dir: &Path, checkpoint: Revision) -> Result<(), StoreError> {
    let segs = segments(dir)?;
    for pair in segs.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first - 1 <= checkpoint {
            fs::remove_file(path).map_err(|e| io("cannot remove", path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::from(format!("v{rev}")),
            create_revision: 1,
            mod_revision: rev,
            version: rev,
        }
    }

    #[test]
    fn records_replay_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::create(&wal_dir, 1).expect("create");
        let a = kv("/a", 1);
        wal.append(&encode_batch(1, [("/a", Some(&a))].into_iter()), 2)
            .expect("append");
        let b = kv("/b", 3);
        wal.append(
            &encode_batch(3, [("/a", None), ("/b", Some(&b))].into_iter()),
            4,
        )
        .expect("append");
        drop(wal);
        // A torn third record.
        let seg = &segments(&wal_dir).expect("segments")[0].1;
        let mut f = OpenOptions::new().append(true).open(seg).expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9])
            .expect("write");
        drop(f);

        let mut seen = Vec::new();
        let last = replay(&wal_dir, 0, |rev, entries| seen.push((rev, entries))).expect("replay");
        assert_eq!(last, 3);
        assert_eq!(
            seen,
            vec![
                (1, vec![Entry::Put(a.clone())]),
                (3, vec![Entry::Delete("/a".into()), Entry::Put(b.clone())]),
            ]
        );
        // The tail was cut: replaying again reads the same, and after a checkpoint at 1 only
        // the second batch is applied.
        let mut again = Vec::new();
        replay(&wal_dir, 1, |rev, _| again.push(rev)).expect("replay");
        assert_eq!(again, vec![3]);
    }

    #[test]
    fn corruption_before_the_last_segment_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::create(dir.path(), 1).expect("create");
        wal.append(
            &encode_batch(1, [("/a", Some(&kv("/a", 1)))].into_iter()),
            2,
        )
        .expect("append");
        let _second = Wal::create(dir.path(), 2).expect("create");
        let seg = &segments(dir.path()).expect("segments")[0].1;
        let mut data = fs::read(seg).expect("read");
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(seg, data).expect("write");
        assert!(replay(dir.path(), 0, |_, _| {}).is_err());
    }

    #[test]
    fn covered_segments_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for first in [1, 10, 20] {
            Wal::create(dir.path(), first).expect("create");
        }
        remove_covered(dir.path(), 15).expect("remove");
        let left: Vec<i64> = segments(dir.path())
            .expect("segments")
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(left, vec![10, 20]);
    }
}
