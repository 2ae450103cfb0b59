//! `skiff exec`'s side of a command's input and output: our stdin read on a thread of its
//! own (a blocking read must not hold a runtime thread), and with `-t` the local terminal in
//! raw mode for the call (restored however the call ends) and its size sent whenever it
//! changes (SIGWINCH), as kubectl does.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use futures::StreamExt;
use nix::sys::termios::{self, SetArg, Termios};
use skiff_api::proto::{ExecInput, PodExecRequest, TerminalSize};
use skiff_client::{Client, ExecInputStream};

/// Runs `req`'s command (on a terminal with `tty`, when our stdin is one), writes its output
/// to our stdout and stderr as it comes, and returns its exit code.
pub async fn exec(client: &Client, mut req: PodExecRequest, tty: bool) -> anyhow::Result<i32> {
    req.tty = tty && std::io::stdin().is_terminal();
    if tty && !req.tty {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let _raw = if req.tty {
        req.size = size();
        Some(RawMode::enter()?)
    } else {
        None
    };
    let input = (req.stdin || req.tty).then(|| input(req.stdin, req.tty));
    let mut output = client
        .pod_exec_stream(req, input)
        .await
        .map_err(|e| anyhow::anyhow!(super::server_error(&e)))?;
    // Each chunk as the command writes it, to our stdout or stderr as it wrote it.
    while let Some(msg) = output.next().await {
        let msg = msg.map_err(|e| anyhow::anyhow!(super::server_error(&e)))?;
        if msg.done {
            return Ok(msg.exit_code);
        }
        if msg.stream == 2 {
            std::io::stderr().write_all(&msg.output)?;
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&msg.output)?;
            out.flush()?;
        }
    }
    anyhow::bail!("the node closed the exec stream without an exit code")
}

/// The call's input: our stdin as chunks (with `stdin`; its end ends the input unless a
/// terminal is followed) and the terminal's size whenever it changes (with `tty`).
fn input(stdin: bool, tty: bool) -> ExecInputStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ExecInput>(16);
    if stdin {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let chunk = ExecInput {
                            stdin: bytes::Bytes::copy_from_slice(&buf[..n]),
                            ..Default::default()
                        };
                        if tx.blocking_send(chunk).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut winch) = signal(SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                let resize = ExecInput {
                    resize: size(),
                    ..Default::default()
                };
                if tx.send(resize).await.is_err() {
                    return;
                }
            }
        });
    }
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Our terminal's size (stdin's), if it has one.
fn size() -> Option<TerminalSize> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
    if unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) } != 0 {
        return None;
    }
    Some(TerminalSize {
        width: ws.ws_col.into(),
        height: ws.ws_row.into(),
    })
}

/// Our terminal in raw mode (every key goes to the command as typed: ^C, ^D, arrows), put
/// back as it was when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}
