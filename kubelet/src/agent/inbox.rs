//! Cross-core messages: a crossbeam channel per core, plus an eventfd that wakes the core's
//! io_uring executor when it has gone to sleep waiting for mail (the executor reads the
//! eventfd through io_uring). A sender writes the eventfd only when the receiver has said it
//! is about to sleep, so a burst of messages costs one wake-up, and a busy core none.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

struct Wake {
    eventfd: OwnedFd,
    /// The receiver found its channel empty and waits on the eventfd.
    sleeping: AtomicBool,
}

impl Wake {
    fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local array to an eventfd we own; a full counter
        // (EAGAIN) means a wake-up is pending anyway.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// The sending side of a core's inbox (cloneable, usable from any thread).
pub struct Mailer<T> {
    tx: Sender<T>,
    wake: Arc<Wake>,
}

impl<T> Clone for Mailer<T> {
    fn clone(&self) -> Self {
        Mailer {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> Mailer<T> {
    /// Queues `msg`; gives it back when the core is gone.
    pub fn send(&self, msg: T) -> Result<(), T> {
        self.tx.send(msg).map_err(|e| e.into_inner())?;
        if self.wake.sleeping.swap(false, Ordering::SeqCst) {
            self.wake.ring();
        }
        Ok(())
    }
}

impl<T> Drop for Mailer<T> {
    fn drop(&mut self) {
        // The last sender going away must wake a sleeping receiver so it sees the end.
        self.wake.ring();
    }
}

/// The receiving side, handed to the core's thread; [`Inbox::open`] there.
pub struct Inbox<T> {
    rx: Receiver<T>,
    wake: Arc<Wake>,
}

/// The receiving side opened on the core's io_uring executor.
pub struct OpenInbox<T> {
    rx: Receiver<T>,
    wake: Arc<Wake>,
    /// The eventfd as an io_uring file of this executor.
    file: tokio_uring::fs::File,
}

/// A core's inbox.
pub fn inbox<T>() -> std::io::Result<(Mailer<T>, Inbox<T>)> {
    // SAFETY: eventfd takes an initial value and flags; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor eventfd just returned, owned by nothing else.
    let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let wake = Arc::new(Wake {
        eventfd,
        sleeping: AtomicBool::new(false),
    });
    let (tx, rx) = crossbeam_channel::unbounded();
    Ok((
        Mailer {
            tx,
            wake: wake.clone(),
        },
        Inbox { rx, wake },
    ))
}

impl<T> Inbox<T> {
    /// Opens the inbox on the calling thread's io_uring executor.
    pub fn open(self) -> std::io::Result<OpenInbox<T>> {
        let dup = self.wake.eventfd.try_clone()?;
        Ok(OpenInbox {
            rx: self.rx,
            wake: self.wake,
            file: tokio_uring::fs::File::from_std(std::fs::File::from(dup)),
        })
    }
}

impl<T> OpenInbox<T> {
    /// The next message, waiting (on io_uring) while there is none; `None` once every
    /// [`Mailer`] is gone.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Some(m),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            // Say we sleep, then look once more: a message sent before the flag was seen
            // is found here; one sent after it rings the eventfd.
            self.wake.sleeping.store(true, Ordering::SeqCst);
            match self.rx.try_recv() {
                Ok(m) => {
                    self.wake.sleeping.store(false, Ordering::SeqCst);
                    return Some(m);
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let (res, _) = self.file.read_at(vec![0u8; 8], 0).await;
            if let Err(e) = res {
                tracing::error!(error = %e, "core inbox: reading its eventfd");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_across_threads_and_the_end_is_seen() {
        let (tx, rx) = inbox::<u32>().expect("inbox");
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        tx.send(t * 1000 + i).expect("send");
                        if i % 100 == 0 {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let got = tokio_uring::start(async move {
            let mut rx = rx.open().expect("open");
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                got.push(m);
            }
            got
        });
        for s in senders {
            s.join().expect("sender");
        }
        assert_eq!(got.len(), 4000);
        for t in 0..4 {
            let mine: Vec<u32> = got.iter().copied().filter(|m| m / 1000 == t).collect();
            assert_eq!(mine, (t * 1000..t * 1000 + 1000).collect::<Vec<_>>());
        }
    }
}
