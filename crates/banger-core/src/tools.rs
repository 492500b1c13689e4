//! Locating and running the external programs banger relies on.
//!
//! Every program banger shells out to is listed in [`PACKAGES`] with the
//! Debian package that ships it, so a missing one is reported with the exact
//! install command. [`run`] captures output and turns a non-zero exit into an
//! error that carries the program's stderr.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use thiserror::Error;

/// Program name -> Debian package that ships it.
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("nice", "coreutils"),
    ("renice", "bsdutils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("resize2fs", "e2fsprogs"),
    ("mmdebstrap", "mmdebstrap"),
    ("debootstrap", "debootstrap"),
    ("nft", "nftables"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("dmsetup", "dmsetup"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("ip", "iproute2"),
    ("cp", "coreutils"),
    ("git", "git"),
    ("nsenter", "util-linux"),
];

/// Directories searched after `$PATH` (root's tools live in sbin, which a
/// user's PATH may lack).
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

#[derive(Debug, Error)]
pub enum ToolError {
    #[error("`{program}` is not installed")]
    Missing { program: String },
    #[error("Cannot run `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{program}` printed output banger cannot parse: {detail}")]
    BadOutput { program: String, detail: String },
}

impl crate::ToApiError for ToolError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            ToolError::Missing { .. } => banger_api::ErrorCode::Unavailable,
            _ => banger_api::ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            ToolError::Missing { program } => Some(install_hint(program)),
            _ => None,
        }
    }
}

/// The Debian package that ships `program`, if banger knows it.
pub fn package_for(program: &str) -> Option<&'static str> {
    PACKAGES
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, pkg)| *pkg)
}

/// "Install it with: apt-get install PKG".
pub fn install_hint(program: &str) -> String {
    match package_for(program) {
        Some(pkg) => format!("Install it with: sudo apt-get install {pkg}"),
        None => format!("Install `{program}` and make sure it is on PATH"),
    }
}

/// Finds `program` on `$PATH` or in the usual sbin/bin directories.
pub fn find(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

/// Like [`find`], but missing is an error.
pub fn require(program: &str) -> Result<PathBuf, ToolError> {
    find(program).ok_or_else(|| ToolError::Missing {
        program: program.into(),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `program args...` to completion; a non-zero exit is an error with
/// the program's stderr.
pub fn run<I, S>(program: &Path, args: I) -> Result<Output, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = std::process::Command::new(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            command: command_line(program, &args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

fn command_line(program: &Path, args: &[std::ffi::OsString]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Makes an ed25519 key pair without a passphrase at `path` (and `path.pub`).
pub fn ssh_keygen(path: &Path, comment: &str) -> Result<(), ToolError> {
    let kg = require("ssh-keygen")?;
    run(
        &kg,
        [
            "-q".as_ref(),
            "-t".as_ref(),
            "ed25519".as_ref(),
            "-N".as_ref(),
            "".as_ref(),
            "-C".as_ref(),
            comment.as_ref(),
            "-f".as_ref(),
            path.as_os_str(),
        ],
    )
    .map(|_| ())
}

/// Kills a whole process group when dropped, unless disarmed: a cancelled
/// step drops its future, and with it every process the tool started.
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs a command in its own process group, calling `on_line` for every
/// line it prints (stdout and stderr). A non-zero exit is an error carrying
/// the last lines. Dropping the future kills the whole group.
pub async fn run_streaming(
    mut cmd: tokio::process::Command,
    name: &str,
    mut on_line: impl FnMut(&str),
) -> Result<(), ToolError> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ToolError::Spawn {
        program: name.into(),
        source,
    })?;
    let mut guard = GroupGuard {
        pgid: child.id().and_then(|p| i32::try_from(p).ok()),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [
        stdout.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        stderr.map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            // Read to the end whatever it writes: a line that is not UTF-8
            // is shown lossily (ending the read there made the tool's next
            // write fail), and a line is kept to MAX_LINE bytes.
            let mut r = tokio::io::BufReader::new(stream);
            let mut line = Vec::new();
            while let Ok(true) = next_line(&mut r, &mut line, MAX_LINE).await {
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            }
        });
    }
    drop(tx);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    while let Some(line) = rx.recv().await {
        on_line(&line);
        tail.push_back(line);
        if tail.len() > 15 {
            tail.pop_front();
        }
    }
    let status = child.wait().await.map_err(|source| ToolError::Spawn {
        program: name.into(),
        source,
    })?;
    guard.pgid = None;
    if !status.success() {
        return Err(ToolError::Failed {
            command: name.into(),
            status: status.to_string(),
            stderr: tail.into_iter().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

/// Waits, without holding a thread, until our child process exits, and
/// reaps it: a pidfd becomes readable at the exit (polling every 250 ms
/// where pidfds are missing). Dropping the future leaves the child running
/// and unreaped, which is what a shutting-down daemon wants of its VMMs.
pub async fn wait_exit(child: &mut std::process::Child) -> String {
    let pid = rustix::process::Pid::from_child(child);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    // `AsyncFd::new` is deprecated for handles that may not own their fd;
    // an `OwnedFd` does, for the AsyncFd's whole life (the safe way here,
    // as the crate forbids `unsafe`).
    #[allow(deprecated)]
    let pidfd = pidfd.and_then(|fd| tokio::io::unix::AsyncFd::new(fd).ok());
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) => {}
            Err(e) => return e.to_string(),
        }
        match &pidfd {
            Some(fd) => match fd.readable().await {
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            },
            None => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// The most of one output line of a tool that is kept.
const MAX_LINE: usize = 8 << 10;

/// Reads the next `\n`-ended line of `r` into `line` (without the newline),
/// keeping at most `max` bytes of it and skipping the rest. False at the
/// end of the stream with nothing read.
async fn next_line<R>(r: &mut R, line: &mut Vec<u8>, max: usize) -> std::io::Result<bool>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    line.clear();
    let mut any = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wait_exit_reaps_and_its_drop_leaves_the_child_alone() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut quick = std::process::Command::new("true").spawn().expect("true");
        let status = rt.block_on(wait_exit(&mut quick));
        assert_eq!(status, "exit status: 0");
        // A runtime shut down while a task waits on a long-lived child
        // returns at once, and the child keeps running.
        let mut long = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = long.id();
        rt.spawn(async move {
            let _ = wait_exit(&mut long).await;
        });
        drop(rt);
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }

    use super::*;

    #[test]
    fn lines_are_read_lossily_and_bounded_to_the_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let input: &[u8] = b"ok\n\xff\xfebad\nlong-line\nlast";
            let mut r = tokio::io::BufReader::with_capacity(3, input);
            let mut line = Vec::new();
            let mut got = Vec::new();
            while next_line(&mut r, &mut line, 4).await.expect("read") {
                got.push(String::from_utf8_lossy(&line).into_owned());
            }
            assert_eq!(got, ["ok", "\u{fffd}\u{fffd}ba", "long", "last"]);
        });
    }

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find("sh").is_some());
        assert!(find("definitely-not-a-program-banger").is_none());
        let err = require("definitely-not-a-program-banger").expect_err("missing");
        assert!(err.to_string().contains("not installed"));
    }

    #[test]
    fn hints_name_the_package() {
        assert_eq!(
            install_hint("mkfs.ext4"),
            "Install it with: sudo apt-get install e2fsprogs"
        );
        assert!(install_hint("frobnicate").contains("frobnicate"));
    }

    #[test]
    fn failure_carries_stderr() {
        let sh = require("sh").expect("sh");
        let err = run(&sh, ["-c", "echo nope >&2; exit 3"]).expect_err("fails");
        let msg = err.to_string();
        assert!(msg.contains("nope") && msg.contains('3'), "{msg}");
        let out = run(&sh, ["-c", "echo yes"]).expect("runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    }
}
