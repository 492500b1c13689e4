//! `banger vm exec` and `banger vm cp`: programs and files in a VM through
//! its guest agent (the daemon's exec stream and files endpoints). `exec`
//! falls back to SSH for a guest without banger-agent.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use banger::client::ClientError;
use banger::exit;
use banger_agent_proto::frame::{Frame, FrameCodec, Kind, MAX_PAYLOAD};
use banger_agent_proto::msg::{Control, Reply};
use banger_api::{TermSize, VmExecRequest};
use bytes::Bytes;
use clap::Args;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

use super::term::{stdin_chunks, term_size, RawMode};
use super::{local, parse_env, usage, CmdResult, Ctx};

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// The VM.
    pub name: String,
    /// Keep stdin open and pass it to the program.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run on a pseudo-terminal (your terminal in raw mode, resizes
    /// followed); stdout and stderr merge, as on any terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// KEY=VALUE added to the environment (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest (default: the user's home).
    #[arg(short, long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// A user in the guest (name or uid; default root).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Kill the program after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The program and its arguments, passed exactly (no shell).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// The exec request (the terminal's size given separately). Pure.
    pub fn request(&self, tty: Option<TermSize>) -> Result<VmExecRequest, ClientError> {
        Ok(VmExecRequest {
            argv: self.command.clone(),
            env: parse_env(&self.env)?,
            cwd: self.workdir.clone(),
            user: self.user.clone(),
            stdin: None,
            tty,
            timeout_secs: self.timeout,
        })
    }
}

/// The exit code a program's end maps to: its code, or 128 + the signal
/// that ended it; 124 for a timeout (as timeout(1)). Pure.
pub fn exit_code(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> u8 {
    if timed_out {
        return 124;
    }
    match (code, signal) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

pub async fn exec(ctx: &Ctx, a: ExecArgs) -> CmdResult {
    let tty = a.tty && std::io::stdin().is_terminal();
    let size = if a.tty {
        Some(term_size().unwrap_or(TermSize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let req = a.request(size)?;
    let io = match ctx.client.vm_exec_stream(&a.name, &req).await {
        Ok(io) => io,
        Err(ClientError::Api(e))
            if e.code == banger_api::ErrorCode::Unavailable
                && e.message.contains("banger-agent") =>
        {
            return exec_over_ssh(ctx, &a).await;
        }
        Err(e) => return Err(e),
    };
    let mut f = Framed::new(io, FrameCodec);
    match f.next().await {
        Some(Ok(fr)) if fr.kind == Kind::Json => match fr.parse::<Reply>() {
            Ok(Reply::Started { .. }) => {}
            Ok(Reply::Error { message, .. }) => return Err(local(message, None)),
            _ => return Err(ClientError::Protocol("no start from the guest".into())),
        },
        _ => {
            return Err(ClientError::Protocol(
                "the exec stream ended at once".into(),
            ))
        }
    }
    let _raw = tty.then(RawMode::enter);
    let mut stdin = (a.interactive || a.tty).then(stdin_chunks);
    if stdin.is_none() {
        f.send(Frame::eof(Kind::In)).await.map_err(proto)?;
    }
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let mut int = (!a.tty)
        .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok())
        .flatten();
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    loop {
        tokio::select! {
            fr = f.next() => {
                let Some(Ok(fr)) = fr else {
                    return Err(ClientError::Protocol("the exec stream broke off".into()));
                };
                match fr.kind {
                    Kind::Out => { let _ = out.write_all(&fr.payload).await; let _ = out.flush().await; }
                    Kind::Err => { let _ = err.write_all(&fr.payload).await; let _ = err.flush().await; }
                    Kind::Json => match fr.parse::<Reply>() {
                        Ok(Reply::Exit { code, signal, timed_out }) => {
                            if timed_out { eprintln!("banger: the program ran out of time and was killed"); }
                            return Ok(exit_code(code, signal, timed_out));
                        }
                        Ok(Reply::Error { message, .. }) => return Err(local(message, None)),
                        _ => {}
                    },
                    _ => {}
                }
            }
            chunk = async { match stdin.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match chunk.flatten() {
                    Some(b) => f.send(Frame::data(Kind::In, b)).await.map_err(proto)?,
                    None => { stdin = None; f.send(Frame::eof(Kind::In)).await.map_err(proto)?; }
                }
            }
            _ = async { match winch.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                if let (true, Some(sz)) = (a.tty, term_size()) {
                    let c = Control::Resize(banger_agent_proto::msg::TermSize { rows: sz.rows, cols: sz.cols });
                    f.send(Frame::json(&c).map_err(proto)?).await.map_err(proto)?;
                }
            }
            _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                let c = Control::Signal { signal: "INT".into() };
                f.send(Frame::json(&c).map_err(proto)?).await.map_err(proto)?;
            }
        }
    }
}

fn proto(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!("exec stream: {e}"))
}

/// `vm exec` for a guest without banger-agent: ssh with the argv quoted
/// word by word (the environment and directory in front).
async fn exec_over_ssh(ctx: &Ctx, a: &ExecArgs) -> CmdResult {
    if a.user.is_some() || a.tty {
        return Err(usage(
            "--user and --tty need banger-agent in the guest",
            "Restart the VM (banger vm restart NAME) so that it runs banger-agent",
        ));
    }
    let mut words: Vec<String> = Vec::new();
    if let Some(w) = &a.workdir {
        words.push(format!("cd {} &&", super::vm_ssh::sh_quote(w)));
    }
    let env: BTreeMap<String, String> = parse_env(&a.env)?;
    if !env.is_empty() {
        words.push("env".into());
        words.extend(
            env.iter()
                .map(|(k, v)| super::vm_ssh::sh_quote(&format!("{k}={v}"))),
        );
    }
    words.push(super::vm_ssh::exact_command(&a.command));
    super::vm_ssh::ssh_command(ctx, &a.name, &[words.join(" ")]).await
}

/// One side of `vm cp`: a VM's path, a host path, or `-` (a tar stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpEnd {
    Guest { vm: String, path: String },
    Host(PathBuf),
    Stdio,
}

/// `NAME:PATH`, `-`, or a host path (one with a `/` before any `:` is a
/// host path). Pure.
pub fn parse_cp_end(s: &str) -> CpEnd {
    if s == "-" {
        return CpEnd::Stdio;
    }
    match s.split_once(':') {
        Some((vm, path)) if !vm.is_empty() && !vm.contains('/') => CpEnd::Guest {
            vm: vm.to_string(),
            path: path.to_string(),
        },
        _ => CpEnd::Host(PathBuf::from(s)),
    }
}

/// `vm cp SRC DST` (docker's form): files and directories either way,
/// `-` for a tar stream.
pub async fn cp(ctx: &Ctx, src: &str, dst: &str) -> CmdResult {
    match (parse_cp_end(src), parse_cp_end(dst)) {
        (CpEnd::Host(from), CpEnd::Guest { vm, path }) => to_guest(ctx, &from, &vm, &path).await,
        (CpEnd::Guest { vm, path }, CpEnd::Host(to)) => from_guest(ctx, &vm, &path, &to).await,
        (CpEnd::Stdio, CpEnd::Guest { vm, path }) => tar_in(ctx, &vm, &path, None).await,
        (CpEnd::Guest { vm, path }, CpEnd::Stdio) => tar_out(ctx, &vm, &path, None).await,
        _ => Err(usage(
            "vm cp copies between the host and one VM",
            "Write banger vm cp SRC VM:DEST or banger vm cp VM:SRC DEST (- for a tar stream)",
        )),
    }
}

fn guest_dest(path: &str, name: &std::ffi::OsStr, is_dir: bool) -> String {
    if is_dir || path.ends_with('/') {
        format!("{}/{}", path.trim_end_matches('/'), name.to_string_lossy())
    } else {
        path.to_string()
    }
}

async fn to_guest(ctx: &Ctx, from: &Path, vm: &str, path: &str) -> CmdResult {
    let meta = std::fs::metadata(from).map_err(|e| {
        usage(
            format!("Cannot read {}: {e}", from.display()),
            "Give an existing host path",
        )
    })?;
    if meta.is_dir() {
        return tar_in(ctx, vm, path, Some(from)).await;
    }
    let into_dir = ctx
        .client
        .guest_stat(vm, path)
        .await
        .is_ok_and(|s| s.kind == "dir");
    if path.ends_with('/') && !into_dir {
        return Err(local(
            format!("{vm}:{path} is not a directory in the VM"),
            Some("Make it first (banger vm exec NAME -- mkdir -p DIR), or name the file"),
        ));
    }
    let name = from.file_name().unwrap_or_default();
    let dest = guest_dest(path, name, into_dir);
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    let st = ctx.client.guest_write(vm, &dest, Some(mode), from).await?;
    if !ctx.json {
        eprintln!("{} -> {vm}:{} ({} bytes)", from.display(), st.path, st.size);
    }
    Ok(exit::OK)
}

async fn from_guest(ctx: &Ctx, vm: &str, path: &str, to: &Path) -> CmdResult {
    let st = ctx.client.guest_stat(vm, path).await?;
    if st.kind == "dir" {
        return tar_out(ctx, vm, path, Some(to)).await;
    }
    let dest = if to.is_dir() {
        to.join(Path::new(path).file_name().unwrap_or_default())
    } else {
        to.to_path_buf()
    };
    let tmp = dest.with_extension("banger-cp.tmp");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| local(format!("Cannot write {}: {e}", tmp.display()), None))?;
    let n = ctx.client.guest_read(vm, path, &mut file).await;
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(st.mode & 0o777));
    std::fs::rename(&tmp, &dest)
        .map_err(|e| local(format!("Cannot write {}: {e}", dest.display()), None))?;
    if !ctx.json {
        eprintln!("{vm}:{path} -> {} ({n} bytes)", dest.display());
    }
    Ok(exit::OK)
}

/// A tar stream into the guest's `path` (made if missing): from the host
/// directory `from`, else from stdin.
async fn tar_in(ctx: &Ctx, vm: &str, path: &str, from: Option<&Path>) -> CmdResult {
    let into = match from {
        Some(dir) => {
            let into_dir = ctx
                .client
                .guest_stat(vm, path)
                .await
                .is_ok_and(|s| s.kind == "dir");
            guest_dest(path, dir.file_name().unwrap_or_default(), into_dir)
        }
        None => path.to_string(),
    };
    let script = format!(
        "mkdir -p {d} && tar -x -C {d} -f -",
        d = super::vm_ssh::sh_quote(&into)
    );
    let req = VmExecRequest {
        argv: vec!["sh".into(), "-c".into(), script],
        ..VmExecRequest::default()
    };
    let io = ctx.client.vm_exec_stream(vm, &req).await?;
    let mut f = Framed::new(io, FrameCodec);
    expect_started(&mut f).await?;
    match from {
        Some(dir) => {
            let (r, w) = tokio::io::duplex(1 << 20);
            let dir = dir.to_path_buf();
            let pack = tokio::task::spawn_blocking(move || {
                let w = tokio_util::io::SyncIoBridge::new(w);
                let mut t = tar::Builder::new(w);
                t.follow_symlinks(false);
                t.append_dir_all(".", &dir).and_then(|_| t.finish())
            });
            send_reader(&mut f, r).await?;
            pack.await
                .map_err(|e| local(format!("packing failed: {e}"), None))?
                .map_err(|e| local(format!("Cannot pack the directory: {e}"), None))?;
        }
        None => send_reader(&mut f, tokio::io::stdin()).await?,
    }
    finish_tar(ctx, f, &format!("{vm}:{into}")).await
}

/// The guest's `path` as a tar stream: unpacked into the host directory
/// `to` (made if missing), else written to stdout.
async fn tar_out(ctx: &Ctx, vm: &str, path: &str, to: Option<&Path>) -> CmdResult {
    let (dir, base) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((d, b)) => (if d.is_empty() { "/" } else { d }, b),
        None => ("/", path),
    };
    let argv = vec![
        "tar".into(),
        "-c".into(),
        "-C".into(),
        dir.into(),
        "-f".into(),
        "-".into(),
        base.into(),
    ];
    let req = VmExecRequest {
        argv,
        ..VmExecRequest::default()
    };
    let io = ctx.client.vm_exec_stream(vm, &req).await?;
    let mut f = Framed::new(io, FrameCodec);
    expect_started(&mut f).await?;
    f.send(Frame::eof(Kind::In)).await.map_err(proto)?;
    let (mut w, r) = tokio::io::duplex(1 << 20);
    let unpack = to.map(|dest| {
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dest)?;
            let r = tokio_util::io::SyncIoBridge::new(r);
            let mut t = tar::Archive::new(r);
            t.set_preserve_permissions(true);
            t.unpack(&dest)
        })
    });
    let mut stdout = tokio::io::stdout();
    let code = loop {
        let Some(Ok(fr)) = f.next().await else {
            return Err(ClientError::Protocol("the copy broke off".into()));
        };
        match fr.kind {
            Kind::Out if unpack.is_some() && w.write_all(&fr.payload).await.is_err() => break 1,
            Kind::Out if unpack.is_some() => {}
            Kind::Out => {
                let _ = stdout.write_all(&fr.payload).await;
            }
            Kind::Err => eprint!("{}", String::from_utf8_lossy(&fr.payload)),
            Kind::Json => {
                if let Ok(Reply::Exit {
                    code,
                    signal,
                    timed_out,
                }) = fr.parse::<Reply>()
                {
                    break exit_code(code, signal, timed_out);
                }
            }
            _ => {}
        }
    };
    drop(w);
    let _ = stdout.flush().await;
    if let Some(u) = unpack {
        u.await
            .map_err(|e| local(format!("unpacking failed: {e}"), None))?
            .map_err(|e| local(format!("Cannot unpack: {e}"), None))?;
    }
    Ok(code)
}

async fn expect_started<T>(f: &mut Framed<T, FrameCodec>) -> Result<(), ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match f.next().await {
        Some(Ok(fr)) if fr.kind == Kind::Json => match fr.parse::<Reply>() {
            Ok(Reply::Started { .. }) => Ok(()),
            Ok(Reply::Error { message, .. }) => Err(local(message, None)),
            _ => Err(ClientError::Protocol("no start from the guest".into())),
        },
        _ => Err(ClientError::Protocol(
            "the exec stream ended at once".into(),
        )),
    }
}

async fn send_reader<T, R>(f: &mut Framed<T, FrameCodec>, mut r: R) -> Result<(), ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| local(format!("Cannot read the input: {e}"), None))?;
        if n == 0 {
            break;
        }
        f.send(Frame::data(Kind::In, Bytes::copy_from_slice(&buf[..n])))
            .await
            .map_err(proto)?;
    }
    f.send(Frame::eof(Kind::In)).await.map_err(proto)
}

async fn finish_tar<T>(ctx: &Ctx, mut f: Framed<T, FrameCodec>, what: &str) -> CmdResult
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut errs = String::new();
    while let Some(Ok(fr)) = f.next().await {
        match fr.kind {
            Kind::Err => errs.push_str(&String::from_utf8_lossy(&fr.payload)),
            Kind::Json => {
                if let Ok(Reply::Exit {
                    code,
                    signal,
                    timed_out,
                }) = fr.parse::<Reply>()
                {
                    let c = exit_code(code, signal, timed_out);
                    if c != 0 {
                        return Err(local(
                            format!("Unpacking in the guest failed: {}", errs.trim()),
                            None,
                        ));
                    }
                    if !ctx.json {
                        eprintln!("copied into {what}");
                    }
                    return Ok(exit::OK);
                }
            }
            _ => {}
        }
    }
    Err(ClientError::Protocol("the copy broke off".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(Some(0), None, false), 0);
        assert_eq!(exit_code(Some(7), None, false), 7);
        assert_eq!(exit_code(None, Some(15), false), 143);
        assert_eq!(exit_code(None, Some(9), true), 124);
    }

    #[test]
    fn cp_ends_parse_as_docker_does() {
        assert_eq!(
            parse_cp_end("box:/etc/hosts"),
            CpEnd::Guest {
                vm: "box".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(parse_cp_end("./a:b"), CpEnd::Host("./a:b".into()));
        assert_eq!(parse_cp_end("/tmp/x"), CpEnd::Host("/tmp/x".into()));
        assert_eq!(parse_cp_end("-"), CpEnd::Stdio);
        assert_eq!(guest_dest("/work/", "f".as_ref(), false), "/work/f");
        assert_eq!(guest_dest("/work", "f".as_ref(), true), "/work/f");
        assert_eq!(guest_dest("/work/g", "f".as_ref(), false), "/work/g");
    }
}
