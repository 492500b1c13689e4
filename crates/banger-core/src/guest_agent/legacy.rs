//! The line protocol of the shell agent that images made before
//! banger-agent run (the guest side is [`crate::guest::agent_script`]): one
//! request line, one answer line, over the channel the backend gives the
//! guest. Used for guests that still run it: a VM of such an image until
//! banger-agent is installed in it, or one restored from an old snapshot.
//!
//! - QEMU: a virtio-serial port whose host side is a pair of FIFOs
//!   (`agent.in` to the guest, `agent.out` from it). QEMU keeps both open,
//!   so the guest's reads block instead of seeing end-of-file while no one
//!   talks to it, and answers left unread by an earlier caller are skipped by
//!   their nonce.
//! - Firecracker: vsock through its Unix socket (`CONNECT <port>` first).
//!
//! Requests: `ping NONCE`, `reload NONCE EPOCH SEED`; answers `ok NONCE` or
//! `err NONCE REASON`.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use super::link::AgentLink;

#[derive(Debug, Error)]
pub enum GuestAgentError {
    #[error("Cannot reach the guest agent through {path} (is the VMM running?)")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The guest agent did not answer within {0} s")]
    Timeout(u64),
    #[error("The guest agent could not do it: {0}")]
    Refused(String),
    #[error("The vsock device did not connect to the guest agent: {0:?}")]
    Connect(String),
    #[error("The guest agent sent a line over {0} bytes; the answer was dropped")]
    Oversized(usize),
}

/// One request line. Pure.
pub fn request_line(verb: &str, nonce: &str, args: &[&str]) -> String {
    let mut l = format!("{verb} {nonce}");
    for a in args {
        l.push(' ');
        l.push_str(a);
    }
    l.push('\n');
    l
}

/// What an answer line says about request `nonce`: `None` when it answers
/// another (an earlier caller's) request or is not an answer. Pure.
pub fn parse_answer(line: &str, nonce: &str) -> Option<Result<(), String>> {
    let mut it = line.trim_end().splitn(3, ' ');
    let (kind, n, rest) = (it.next()?, it.next()?, it.next().unwrap_or(""));
    if n != nonce {
        return None;
    }
    match kind {
        "ok" => Some(Ok(())),
        "err" => Some(Err(rest.to_string())),
        _ => None,
    }
}

/// Sends `verb` with `args` and waits for its answer.
pub fn request(
    link: &AgentLink,
    verb: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<(), GuestAgentError> {
    let nonce = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let line = request_line(verb, &nonce, args);
    let deadline = Instant::now() + timeout;
    let answer = match link {
        AgentLink::Pipe(base) => via_pipe(base, &line, &nonce, deadline),
        AgentLink::Vsock { uds, port } => via_vsock(uds, Some(*port), &line, &nonce, deadline),
        AgentLink::Socket(path) => via_vsock(path, None, &line, &nonce, deadline),
    }
    .map_err(|e| match e {
        // The transports do not know the caller's timeout.
        GuestAgentError::Timeout(_) => GuestAgentError::Timeout(timeout.as_secs()),
        e => {
            if matches!(e, GuestAgentError::Oversized(_)) {
                tracing::warn!(verb, error = %e, "the guest agent misbehaved; its answer was dropped");
            }
            e
        }
    })?;
    answer.map_err(GuestAgentError::Refused)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GuestAgentError + '_ {
    move |source| GuestAgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The longest answer line the daemon takes from a guest (answers are a
/// word, a nonce and a short reason).
pub const MAX_ANSWER: usize = 4096;

/// Splits a guest's byte stream into lines, holding at most
/// [`MAX_ANSWER`] bytes of an unfinished one: the guest is untrusted, and a
/// line without end must not grow the daemon. Pure.
#[derive(Debug, Default)]
pub struct AnswerLines {
    pending: Vec<u8>,
}

impl AnswerLines {
    /// Takes more bytes; the answer for `nonce` once a line gives it, or
    /// an error for an oversized line.
    pub fn push(
        &mut self,
        bytes: &[u8],
        nonce: &str,
    ) -> Result<Option<Result<(), String>>, GuestAgentError> {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.pending.extend_from_slice(chunk);
            if self.pending.len() > MAX_ANSWER {
                self.pending.clear();
                return Err(GuestAgentError::Oversized(MAX_ANSWER));
            }
            if chunk.ends_with(b"\n") {
                let line = std::mem::take(&mut self.pending);
                if let Some(a) = parse_answer(&String::from_utf8_lossy(&line), nonce) {
                    return Ok(Some(a));
                }
            }
        }
        Ok(None)
    }
}

fn via_pipe(
    base: &Path,
    line: &str,
    nonce: &str,
    deadline: Instant,
) -> Result<Result<(), String>, GuestAgentError> {
    let (inp, out) = (
        PathBuf::from(format!("{}.in", base.display())),
        PathBuf::from(format!("{}.out", base.display())),
    );
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nonblock())
        .open(&out)
        .map_err(io(&out))?;
    // Answers nobody read (an earlier caller gave up): drop them, for no
    // longer than the caller waits (a guest may write without end).
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 || Instant::now() > deadline {
            break;
        }
    }
    // Non-blocking: fails at once (ENXIO) when no VMM holds the FIFO.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc_nonblock())
        .open(&inp)
        .map_err(io(&inp))?;
    writer.write_all(line.as_bytes()).map_err(io(&inp))?;
    let mut lines = AnswerLines::default();
    loop {
        match reader.read(&mut buf) {
            Ok(n) if n > 0 => {
                if let Some(a) = lines.push(&buf[..n], nonce)? {
                    return Ok(a);
                }
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(io(&out)(e)),
        }
        if Instant::now() > deadline {
            return Err(GuestAgentError::Timeout(0));
        }
    }
}

/// Reads from `stream` until `deadline` at the latest (each read waits only
/// for what is left of it, so a guest trickling bytes cannot stretch it).
fn read_until(
    stream: &mut std::os::unix::net::UnixStream,
    buf: &mut [u8],
    deadline: Instant,
    uds: &Path,
) -> Result<usize, GuestAgentError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(GuestAgentError::Timeout(0));
    }
    stream.set_read_timeout(Some(left)).map_err(io(uds))?;
    stream.read(buf).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            GuestAgentError::Timeout(0)
        } else {
            io(uds)(e)
        }
    })
}

/// Over a Unix socket: Firecracker's vsock one (`port`: after `CONNECT`),
/// or QEMU's chardev socket (no `CONNECT`).
fn via_vsock(
    uds: &Path,
    port: Option<u32>,
    line: &str,
    nonce: &str,
    deadline: Instant,
) -> Result<Result<(), String>, GuestAgentError> {
    let mut stream = loop {
        // The guest's listener may not be up yet right after a resume.
        match std::os::unix::net::UnixStream::connect(uds) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(io(uds)(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if let Some(port) = port {
        vsock_connect(&mut stream, port, uds, deadline)?;
    }
    stream.write_all(line.as_bytes()).map_err(io(uds))?;
    let mut lines = AnswerLines::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = read_until(&mut stream, &mut buf, deadline, uds)?;
        if n == 0 {
            return Err(GuestAgentError::Connect(
                "the guest closed the connection".into(),
            ));
        }
        if let Some(a) = lines.push(&buf[..n], nonce)? {
            return Ok(a);
        }
    }
}

fn vsock_connect(
    stream: &mut std::os::unix::net::UnixStream,
    port: u32,
    uds: &Path,
    deadline: Instant,
) -> Result<(), GuestAgentError> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io(uds))?;
    // Firecracker's answer to CONNECT: `OK <host port>\n`, read byte by
    // byte so nothing of the guest's stream is consumed with it.
    let mut hello = Vec::new();
    let mut byte = [0u8; 1];
    while !hello.ends_with(b"\n") {
        if read_until(stream, &mut byte, deadline, uds)? == 0 || hello.len() > 64 {
            return Err(GuestAgentError::Connect(
                String::from_utf8_lossy(&hello).trim().to_string(),
            ));
        }
        hello.push(byte[0]);
    }
    if !hello.starts_with(b"OK ") {
        return Err(GuestAgentError::Connect(
            String::from_utf8_lossy(&hello).trim().to_string(),
        ));
    }
    Ok(())
}

/// How long the daemon waits for an agent's answer.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(20);

fn libc_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

/// Makes the two FIFOs of a [`AgentLink::Pipe`] (before the VMM starts).
pub fn make_pipe(base: &Path) -> Result<(), GuestAgentError> {
    for ext in ["in", "out"] {
        let p = PathBuf::from(format!("{}.{ext}", base.display()));
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| {
            GuestAgentError::Io {
                path: p.clone(),
                source: std::io::Error::from(e),
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_answers() {
        assert_eq!(
            request_line("reload", "ab12", &["1700000000", "ff00"]),
            "reload ab12 1700000000 ff00\n"
        );
        assert_eq!(request_line("ping", "ab12", &[]), "ping ab12\n");
        assert_eq!(parse_answer("ok ab12\n", "ab12"), Some(Ok(())));
        assert_eq!(
            parse_answer("err ab12 reload failed: no disk\n", "ab12"),
            Some(Err("reload failed: no disk".into()))
        );
        assert_eq!(parse_answer("ok 9999\n", "ab12"), None, "another request");
        assert_eq!(parse_answer("garbage\n", "ab12"), None);
        assert_eq!(parse_answer("", "ab12"), None);
    }

    /// The FIFO transport against a stand-in guest (a thread playing QEMU
    /// and the agent): a stale answer is skipped, the right one returned.
    #[test]
    fn pipe_transport_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().join("agent");
        make_pipe(&base).expect("fifos");
        let (inp, out) = (dir.path().join("agent.in"), dir.path().join("agent.out"));
        // Like QEMU: both ends held open read-write.
        let mut from_host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&inp)
            .expect("in");
        let mut to_host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&out)
            .expect("out");
        to_host.write_all(b"ok stale\n").expect("stale");
        let guest = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(&mut from_host);
            let mut l = String::new();
            std::io::BufRead::read_line(&mut r, &mut l).expect("read");
            let nonce = l.split(' ').nth(1).expect("nonce").trim().to_string();
            to_host
                .write_all(format!("ok other\nerr {nonce} no such thing\n").as_bytes())
                .expect("answer");
        });
        let r = request(
            &AgentLink::Pipe(base.clone()),
            "ping",
            &[],
            Duration::from_secs(5),
        );
        guest.join().expect("guest");
        assert!(
            matches!(r, Err(GuestAgentError::Refused(ref m)) if m == "no such thing"),
            "{r:?}"
        );
    }

    /// A stand-in guest on a vsock-like Unix socket that answers CONNECT,
    /// then plays `misbehave` with the request's nonce.
    fn hostile_guest(
        misbehave: fn(&mut std::os::unix::net::UnixStream, &str),
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let uds = dir.path().join("agent.vsock");
        let l = std::os::unix::net::UnixListener::bind(&uds).expect("bind");
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut r, &mut line);
            let _ = s.write_all(b"OK 1073741824\n");
            line.clear();
            let _ = std::io::BufRead::read_line(&mut r, &mut line);
            let nonce = line
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_string();
            misbehave(&mut s, &nonce);
        });
        (dir, uds)
    }

    fn ask(uds: &Path, timeout: Duration) -> (Result<(), GuestAgentError>, Duration) {
        let link = AgentLink::Vsock {
            uds: uds.into(),
            port: 1024,
        };
        let t = Instant::now();
        (request(&link, "ping", &[], timeout), t.elapsed())
    }

    #[test]
    fn a_flooding_or_lying_or_stalling_guest_is_bounded() {
        // One endless line: refused after MAX_ANSWER bytes, not buffered.
        let (_d, uds) = hostile_guest(|s, _| {
            let junk = vec![b'x'; 1 << 20];
            for _ in 0..128 {
                if s.write_all(&junk).is_err() {
                    return;
                }
            }
        });
        let (r, _) = ask(&uds, Duration::from_secs(5));
        assert!(
            matches!(r, Err(GuestAgentError::Oversized(MAX_ANSWER))),
            "{r:?}"
        );
        // Answers to other nonces without end: the caller's timeout holds.
        let (_d, uds) = hostile_guest(|s, _| loop {
            if s.write_all(b"ok someoneelse\n").is_err() {
                return;
            }
        });
        let (r, took) = ask(&uds, Duration::from_millis(500));
        assert!(matches!(r, Err(GuestAgentError::Timeout(_))), "{r:?}");
        assert!(
            took < Duration::from_secs(3),
            "bounded by the timeout: {took:?}"
        );
        // A byte at a time, never a line: no read resets the deadline.
        let (_d, uds) = hostile_guest(|s, _| loop {
            std::thread::sleep(Duration::from_millis(50));
            if s.write_all(b"o").is_err() {
                return;
            }
        });
        let (r, took) = ask(&uds, Duration::from_millis(500));
        assert!(matches!(r, Err(GuestAgentError::Timeout(_))), "{r:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // And an honest one still answers.
        let (_d, uds) = hostile_guest(|s, nonce| {
            let _ = s.write_all(format!("ok other\nok {nonce}\n").as_bytes());
        });
        assert!(ask(&uds, Duration::from_secs(5)).0.is_ok());
    }

    #[test]
    fn answer_lines_are_bounded() {
        let mut l = AnswerLines::default();
        assert_eq!(l.push(b"ok ab", "ab12").expect("ok"), None);
        assert_eq!(l.push(b"12\n", "ab12").expect("ok"), Some(Ok(())));
        let mut l = AnswerLines::default();
        assert!(l.push(&vec![b'a'; MAX_ANSWER + 1], "x").is_err());
        assert!(l.pending.is_empty());
    }

    #[test]
    fn a_pipe_without_a_vmm_fails_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().join("agent");
        make_pipe(&base).expect("fifos");
        let t = Instant::now();
        let r = request(&AgentLink::Pipe(base), "ping", &[], Duration::from_secs(5));
        assert!(matches!(r, Err(GuestAgentError::Io { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
