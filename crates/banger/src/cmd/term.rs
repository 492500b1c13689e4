//! The local terminal: its size, raw mode, and stdin read in chunks (what
//! `vm exec -t` and `session attach` share).

use banger_api::TermSize;
use bytes::Bytes;

pub fn term_size() -> Option<TermSize> {
    terminal_size().map(|(rows, cols)| TermSize { rows, cols })
}

/// The controlling terminal's rows and columns, from `stty size`.
fn terminal_size() -> Option<(u16, u16)> {
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The terminal in raw mode for as long as this lives.
pub struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    pub fn enter() -> RawMode {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Stdin in chunks on a channel (read on a thread of its own: a terminal's
/// stdin cannot be read asynchronously everywhere); `None` at its end.
pub fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Option<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 32 << 10];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx
                        .blocking_send(Some(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    rx
}
