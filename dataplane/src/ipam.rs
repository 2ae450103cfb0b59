//! Pod address allocation from a node's pod CIDR, kept in one table file.
//!
//! `ipam.table` holds a 64-byte slot per assignable address (the CIDR's hosts after the
//! first, which the node keeps): the owning pod's id, NUL-padded, or zeros when free. Every
//! operation holds an exclusive `flock` on the file while it reads the table and writes the
//! one slot it changes, so two processes sharing the directory never hand out one address
//! twice, and a restarted agent finds every allocation where it left it. A slot is written
//! with one `pwrite`, which a killed process either did or did not do. There is no fsync:
//! the allocations only have to outlive the agent, and after a crash of the machine no pod
//! network survives either.
//!
//! (Earlier versions kept a file per address in `ipam/`; such a directory is folded into
//! the table when it is opened. A file per address meant an inode created and freed per
//! pod, and on ext4 without a journal freed inodes slow every later allocation in their
//! block group for minutes.)

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

/// Bytes per address in the table; an owner id is at most `SLOT - 1` bytes.
const SLOT: usize = 64;

/// The allocation table of one pod CIDR.
pub struct Ipam {
    path: PathBuf,
    cidr: Ipv4Net,
    slots: usize,
    file: Mutex<File>,
}

/// Holds the table's `flock` until dropped.
struct Locked<'a>(&'a File);

impl<'a> Locked<'a> {
    fn new(f: &'a File) -> io::Result<Self> {
        // SAFETY: flock on a descriptor `f` keeps open for the guard's lifetime.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Locked(f))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `new`; unlocking cannot affect memory safety.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Ipam {
    /// Opens (or creates) the table of `cidr` in `dir`.
    pub fn open(dir: &Path, cidr: Ipv4Net) -> io::Result<Ipam> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("ipam.table");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // A /31 or /32 leaves nothing to hand out once the node has its address.
        let slots = if cidr.prefix_len() <= 30 {
            cidr.hosts().count().saturating_sub(1)
        } else {
            0
        };
        let ipam = Ipam {
            path,
            cidr,
            slots,
            file: Mutex::new(file),
        };
        {
            let f = ipam.lock_file();
            let _l = Locked::new(&f)?;
            let want = (slots * SLOT) as u64;
            if f.metadata()?.len() < want {
                f.set_len(want)?;
            }
            ipam.fold_in_old_directory(&f, &dir.join("ipam"))?;
        }
        Ok(ipam)
    }

    /// Where the table lives (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address of `id`: the one it already holds, or the first free one; `None` when
    /// the CIDR is exhausted.
    pub fn allocate(&self, id: &str) -> io::Result<Option<Ipv4Addr>> {
        if id.is_empty() || id.len() >= SLOT || id.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pod id {id:?}: must be 1 to {} bytes without NUL", SLOT - 1),
            ));
        }
        let f = self.lock_file();
        let _l = Locked::new(&f)?;
        let table = self.read(&f)?;
        let mut free = None;
        for (i, slot) in table.chunks_exact(SLOT).enumerate() {
            match owner(slot) {
                Some(o) if o == id.as_bytes() => return Ok(Some(self.address(i))),
                Some(_) => {}
                None => {
                    free.get_or_insert(i);
                }
            }
        }
        let Some(i) = free else {
            return Ok(None);
        };
        let mut slot = [0u8; SLOT];
        slot[..id.len()].copy_from_slice(id.as_bytes());
        f.write_all_at(&slot, (i * SLOT) as u64)?;
        Ok(Some(self.address(i)))
    }

    /// Frees every address `id` holds.
    pub fn release_owner(&self, id: &str) -> io::Result<()> {
        let f = self.lock_file();
        let _l = Locked::new(&f)?;
        let table = self.read(&f)?;
        for (i, slot) in table.chunks_exact(SLOT).enumerate() {
            if owner(slot) == Some(id.as_bytes()) {
                f.write_all_at(&[0u8; SLOT], (i * SLOT) as u64)?;
            }
        }
        Ok(())
    }

    /// Frees `ip` whoever holds it.
    pub fn release(&self, ip: Ipv4Addr) -> io::Result<()> {
        let Some(i) = self.index(ip) else {
            return Ok(());
        };
        let f = self.lock_file();
        let _l = Locked::new(&f)?;
        f.write_all_at(&[0u8; SLOT], (i * SLOT) as u64)
    }

    /// Every allocated address and its owner, in address order.
    pub fn allocations(&self) -> io::Result<Vec<(Ipv4Addr, String)>> {
        let f = self.lock_file();
        let _l = Locked::new(&f)?;
        let table = self.read(&f)?;
        Ok(table
            .chunks_exact(SLOT)
            .enumerate()
            .filter_map(|(i, slot)| {
                owner(slot).map(|o| (self.address(i), String::from_utf8_lossy(o).into_owned()))
            })
            .collect())
    }

    fn lock_file(&self) -> std::sync::MutexGuard<'_, File> {
        // A panic while holding it cannot leave the file inconsistent: slots are written
        // whole.
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, f: &File) -> io::Result<Vec<u8>> {
        let mut table = vec![0u8; self.slots * SLOT];
        f.read_exact_at(&mut table, 0)?;
        Ok(table)
    }

    /// Slot `i` is the (i+2)-th host address: .0 is the network, .1 the node's.
    fn address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 2 + i as u32)
    }

    fn index(&self, ip: Ipv4Addr) -> Option<usize> {
        let i = u32::from(ip).checked_sub(u32::from(self.cidr.network()) + 2)? as usize;
        (self.cidr.contains(&ip) && i < self.slots).then_some(i)
    }

    /// Moves the allocations of the older file-per-address layout into the table.
    fn fold_in_old_directory(&self, f: &File, old: &Path) -> io::Result<()> {
        let entries = match std::fs::read_dir(old) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let ip = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok());
            let id = std::fs::read(entry.path())?;
            if let Some(i) = ip.and_then(|ip| self.index(ip))
                && !id.is_empty()
                && id.len() < SLOT
            {
                let mut slot = [0u8; SLOT];
                slot[..id.len()].copy_from_slice(&id);
                f.write_all_at(&slot, (i * SLOT) as u64)?;
            }
        }
        std::fs::remove_dir_all(old)
    }
}

/// The owner id in a slot, or `None` if the slot is free.
fn owner(slot: &[u8]) -> Option<&[u8]> {
    let len = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
    (len > 0).then(|| &slot[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_in_order_reuses_freed_slots_and_folds_in_the_old_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cidr: Ipv4Net = "10.9.0.0/29".parse().expect("cidr");
        std::fs::create_dir_all(dir.path().join("ipam")).expect("old dir");
        std::fs::write(dir.path().join("ipam/10.9.0.3"), "old-pod").expect("old file");
        let ipam = Ipam::open(dir.path(), cidr).expect("open");
        assert!(!dir.path().join("ipam").exists(), "old layout folded in");
        let a = ipam.allocate("a").expect("a");
        assert_eq!(a, Some(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(ipam.allocate("a").expect("again"), a, "idempotent");
        assert_eq!(
            ipam.allocate("b").expect("b"),
            Some(Ipv4Addr::new(10, 9, 0, 4)),
            "10.9.0.3 is still the old pod's"
        );
        // .5 and .6 are left; .7 is the broadcast address.
        assert!(ipam.allocate("c").expect("c").is_some());
        assert!(ipam.allocate("d").expect("d").is_some());
        assert_eq!(ipam.allocate("e").expect("e"), None, "exhausted");
        ipam.release_owner("old-pod").expect("release");
        assert_eq!(
            ipam.allocate("e").expect("e"),
            Some(Ipv4Addr::new(10, 9, 0, 3))
        );
        ipam.release(Ipv4Addr::new(10, 9, 0, 2))
            .expect("release ip");
        drop(ipam);
        let ipam = Ipam::open(dir.path(), cidr).expect("reopen");
        let got: Vec<String> = ipam
            .allocations()
            .expect("allocations")
            .into_iter()
            .map(|(ip, o)| format!("{ip}={o}"))
            .collect();
        assert_eq!(
            got,
            ["10.9.0.3=e", "10.9.0.4=b", "10.9.0.5=c", "10.9.0.6=d"]
        );
        assert!(ipam.allocate(&"x".repeat(64)).is_err(), "id too long");
        assert!(ipam.allocate("").is_err(), "empty id");
    }
}
