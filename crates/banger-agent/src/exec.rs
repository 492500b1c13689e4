//! `exec`: a program with its argv as given (no shell), in a session and
//! process group of its own (so a signal, a timeout or a hangup reaches
//! every process it started), as a chosen user, with stdin streamed in and
//! stdout and stderr streamed out separately, or on a pseudo-terminal.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use banger_agent_proto::frame::{Frame, Kind, MAX_PAYLOAD};
use banger_agent_proto::msg::{Control, ErrorKind, ExecRequest, Reply, TermSize};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::reply::{error, reply, Frames};
use crate::users::{self, User};

/// How long the output of a program that has exited may still come (its
/// children may hold the pipes open: they are not waited for).
const DRAIN: Duration = Duration::from_secs(1);

/// The environment of a program: a login-like base, /etc/environment,
/// then the request's own. Pure.
pub fn build_env(
    user: &User,
    etc_environment: &str,
    asked: &BTreeMap<String, String>,
    pty: bool,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let path = if user.uid == 0 {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    } else {
        "/usr/local/bin:/usr/bin:/bin"
    };
    env.insert("PATH".into(), path.into());
    env.insert("HOME".into(), user.home.clone());
    env.insert("USER".into(), user.name.clone());
    env.insert("LOGNAME".into(), user.name.clone());
    env.insert("SHELL".into(), user.shell.clone());
    env.insert("LANG".into(), "C.UTF-8".into());
    if pty {
        env.insert("TERM".into(), "xterm-256color".into());
    }
    for line in etc_environment.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim_matches('"').trim_matches('\'');
            if is_name(k) {
                env.insert(k.to_string(), v.to_string());
            }
        }
    }
    for (k, v) in asked {
        env.insert(k.clone(), v.clone());
    }
    env
}

fn is_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A signal by name (`INT`, `SIGINT`) or number. Pure.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse().ok()
}

pub async fn run(f: &mut Frames, req: ExecRequest) -> Result<(), Reply> {
    let Some(program) = req.argv.first().filter(|p| !p.is_empty()) else {
        return Err(error(ErrorKind::Invalid, "argv is empty"));
    };
    let user = users::load(req.user.as_deref()).map_err(|e| error(ErrorKind::NotFound, e))?;
    let cwd = match &req.cwd {
        Some(c) if std::path::Path::new(c).is_dir() => c.clone(),
        Some(c) => {
            return Err(error(
                ErrorKind::NotFound,
                format!("the working directory {c:?} does not exist in the guest"),
            ))
        }
        None if std::path::Path::new(&user.home).is_dir() => user.home.clone(),
        None => "/".into(),
    };
    let etc = std::fs::read_to_string("/etc/environment").unwrap_or_default();
    let env = build_env(&user, &etc, &req.env, req.pty.is_some());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(&env)
        .current_dir(&cwd)
        .kill_on_drop(false);
    let pty = match req.pty {
        Some(size) => Some(open_pty(&mut cmd, size)?),
        None => {
            let stdin = if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            };
            cmd.stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    become_user(&mut cmd, &user, pty.is_some());
    let mut child = cmd.spawn().map_err(|e| {
        let mut r = crate::reply::io_error(&format!("cannot run {program:?}"), &e);
        if let Reply::Error { kind, .. } = &mut r {
            if e.kind() == std::io::ErrorKind::NotFound {
                *kind = ErrorKind::NotFound;
            }
        }
        r
    })?;
    let pid = child.id().unwrap_or(0);
    reply(f, Reply::Started { pid }).await?;
    let (out_tx, out_rx) = mpsc::channel::<Frame>(8);
    let io = match pty {
        Some(master) => {
            let fd = master.raw();
            let (r, w) = tokio::io::split(master);
            tokio::spawn(pump(r, Kind::Out, out_tx));
            Input::Pty(w, fd)
        }
        None => {
            if let Some(o) = child.stdout.take() {
                tokio::spawn(pump(o, Kind::Out, out_tx.clone()));
            }
            if let Some(e) = child.stderr.take() {
                tokio::spawn(pump(e, Kind::Err, out_tx));
            }
            match child.stdin.take() {
                Some(i) => Input::Pipe(Some(i)),
                None => Input::None,
            }
        }
    };
    let exit = supervise(f, &mut child, pid, io, out_rx, req.timeout_ms).await;
    reply(f, exit).await
}

/// A PTY of `size` as the program's stdin, stdout and stderr; returns the
/// master side.
fn open_pty(
    cmd: &mut tokio::process::Command,
    size: TermSize,
) -> Result<crate::fdio::FdStream, Reply> {
    let ws = winsize(size);
    let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| {
        error(
            ErrorKind::Failed,
            format!("cannot open a pseudo-terminal: {e}"),
        )
    })?;
    let slave: OwnedFd = pty.slave;
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map(Stdio::from).map_err(|e| {
            error(
                ErrorKind::Failed,
                format!("cannot use the pseudo-terminal: {e}"),
            )
        })
    };
    cmd.stdin(dup(&slave)?)
        .stdout(dup(&slave)?)
        .stderr(Stdio::from(slave));
    crate::fdio::FdStream::new(pty.master).map_err(|e| {
        error(
            ErrorKind::Failed,
            format!("cannot use the pseudo-terminal: {e}"),
        )
    })
}

fn winsize(s: TermSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: s.rows,
        ws_col: s.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, nix::pty::Winsize);

/// In the child, before the program: a session and process group of its
/// own (with the PTY as its controlling terminal), then the user's groups,
/// group and user.
#[allow(unsafe_code)]
fn become_user(cmd: &mut tokio::process::Command, user: &User, pty: bool) {
    let (uid, gid) = (user.uid, user.gid);
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setsid, ioctl, setgroups,
    // setgid, setuid); it allocates nothing (the groups were collected
    // before the fork).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if pty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
}

/// Copies a program's output into frames until its end.
async fn pump(mut r: impl AsyncRead + Unpin, kind: Kind, tx: mpsc::Sender<Frame>) {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let frame = Frame::data(kind, Bytes::copy_from_slice(&buf[..n]));
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Frame::eof(kind)).await;
}

/// Where the daemon's `In` bytes go.
enum Input {
    None,
    Pipe(Option<tokio::process::ChildStdin>),
    /// The master's write half, and its descriptor (for resizes).
    Pty(tokio::io::WriteHalf<crate::fdio::FdStream>, i32),
}

impl Input {
    async fn write(&mut self, b: &[u8]) {
        let _ = match self {
            Input::None => Ok(()),
            Input::Pipe(Some(i)) => i.write_all(b).await,
            Input::Pipe(None) => Ok(()),
            Input::Pty(w, _) => w.write_all(b).await,
        };
    }

    /// The end of stdin: the pipe closed; on a terminal, an end-of-file
    /// character, as a person would type.
    async fn close(&mut self) {
        match self {
            Input::Pipe(i) => *i = None,
            Input::Pty(w, _) => {
                let _ = w.write_all(&[4]).await;
            }
            Input::None => {}
        }
    }
}

/// Forwards output and input until the program has exited and its output
/// is drained (or [`DRAIN`] passed); kills its process group on a timeout
/// or when the daemon goes away. Returns the exit reply.
async fn supervise(
    f: &mut Frames,
    child: &mut tokio::process::Child,
    pid: u32,
    mut input: Input,
    mut out: mpsc::Receiver<Frame>,
    timeout_ms: Option<u64>,
) -> Reply {
    let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let kill = |sig| {
        let _ = killpg(group, sig);
    };
    let deadline = timeout_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let far = tokio::time::Instant::now() + Duration::from_secs(u64::from(u32::MAX));
    let (mut status, mut timed_out, mut host_open, mut outputs) = (None, false, true, 2u8);
    let mut drained_by = far;
    let (mut sink, mut stream) = StreamExt::split(f);
    loop {
        tokio::select! {
            frame = out.recv() => match frame {
                Some(fr) => {
                    if fr.kind == Kind::Eof {
                        outputs = outputs.saturating_sub(1);
                    }
                    if sink.send(fr).await.is_err() {
                        host_open = false;
                        kill(Signal::SIGKILL);
                    }
                }
                None => outputs = 0,
            },
            msg = stream.next(), if host_open => match msg {
                Some(Ok(fr)) => match fr.kind {
                    Kind::In => input.write(&fr.payload).await,
                    Kind::Eof => input.close().await,
                    Kind::Json => control(&fr, group, &input),
                    _ => {}
                },
                // The daemon hung up: nobody will read this program's output.
                _ => {
                    host_open = false;
                    kill(Signal::SIGKILL);
                }
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                drained_by = tokio::time::Instant::now() + DRAIN;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && !timed_out => {
                timed_out = true;
                kill(Signal::SIGKILL);
            }
            _ = tokio::time::sleep_until(drained_by), if status.is_some() => break,
        }
        if status.is_some() && outputs == 0 {
            break;
        }
    }
    match status {
        Some(Ok(st)) => Reply::Exit {
            code: st.code(),
            signal: st.signal(),
            timed_out,
        },
        _ => error(ErrorKind::Failed, "cannot wait for the program"),
    }
}

/// A control message on an exec stream: resize the terminal, or signal
/// the process group.
fn control(fr: &Frame, group: Pid, input: &Input) {
    match fr.parse::<Control>() {
        Ok(Control::Resize(size)) => resize(input, size),
        Ok(Control::Signal { signal }) => {
            if let Some(sig) = parse_signal(&signal) {
                let _ = killpg(group, sig);
            }
        }
        Err(e) => eprintln!("banger-agent: bad control message: {e}"),
    }
}

fn resize(input: &Input, size: TermSize) {
    let Input::Pty(_, fd) = input else { return };
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points
    // at a live local; the descriptor is the PTY master this exec owns,
    // kept open by the write half beside it.
    #[allow(unsafe_code)]
    let _ = unsafe { set_winsize(*fd, &ws) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_login_like_and_the_request_wins() {
        let u = users::lookup("dev", "dev:x:1000:1000::/home/dev:/bin/zsh\n", "").expect("dev");
        let etc = "# comment\nBANGER_VM=box\nQUOTED=\"a b\"\n1BAD=x\n";
        let mut asked = BTreeMap::new();
        asked.insert("BANGER_VM".to_string(), "override".to_string());
        let env = build_env(&u, etc, &asked, true);
        assert_eq!(env["HOME"], "/home/dev");
        assert_eq!(env["USER"], "dev");
        assert_eq!(env["PATH"], "/usr/local/bin:/usr/bin:/bin");
        assert_eq!(env["TERM"], "xterm-256color");
        assert_eq!(env["QUOTED"], "a b");
        assert_eq!(env["BANGER_VM"], "override");
        assert!(!env.contains_key("1BAD"));
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("INT"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("sigterm"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
    }
}
