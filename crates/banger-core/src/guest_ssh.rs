//! The guest transport: commands run in a VM over SSH from the daemon.
//!
//! One daemon key (made on first use) is authorized in every guest; each
//! guest's host key is pinned (`known_hosts` in the VM's directory), and a
//! control socket per VM lets one connection serve many commands. This
//! type knows nothing of VM rows or states: callers hand it a
//! [`GuestTarget`] (see `Vms::guest`), which is the seam a guest agent
//! transport plugs into.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use banger_api::ErrorCode;
use thiserror::Error;

use crate::paths::Layout;
use crate::tools::{self, ToolError};
use crate::ToApiError;

/// How long the default [`Guest::run`] may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum GuestSshError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("Guest SSH file I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The command in VM {vm:?} did not finish within {} s", limit.as_secs())]
    Timeout { vm: String, limit: Duration },
    #[error("`{command}` failed in VM {vm:?} ({status}): {stderr}")]
    Failed {
        vm: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("Writing the input of a command in VM {vm:?} failed")]
    Input {
        vm: String,
        #[source]
        source: std::io::Error,
    },
    #[error("A command in VM {vm:?} wrote more than {} MiB to one stream; it was killed", limit >> 20)]
    TooMuchOutput { vm: String, limit: usize },
    #[error("VM {vm:?} cannot be reached over SSH: {stderr}")]
    Unreachable { vm: String, stderr: String },
}

/// Whether ssh's exit 255 and stderr say it never reached the guest
/// (rather than the command exiting 255). Pure.
pub fn ssh_unreachable(code: Option<i32>, stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr);
    code == Some(255)
        && [
            "ssh: connect to host",
            "Connection refused",
            "Connection timed out",
            "No route to host",
            "Connection closed by",
            "Connection reset by",
            "kex_exchange_identification",
            "Could not resolve hostname",
        ]
        .iter()
        .any(|m| text.contains(m))
}

/// The most a command's stdout or stderr may bring into the daemon (the
/// guest is untrusted; banger-agent's path has the same bound).
pub const OUTPUT_LIMIT: usize = 64 << 20;

/// Reads `r` to its end, keeping at most `limit` bytes; true when it had
/// more (reading stops there).
async fn read_bounded<R>(r: Option<R>, limit: usize) -> std::io::Result<(Vec<u8>, bool)>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let Some(r) = r else {
        return Ok((buf, false));
    };
    r.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    let over = buf.len() > limit;
    buf.truncate(limit);
    Ok((buf, over))
}

impl ToApiError for GuestSshError {
    fn code(&self) -> ErrorCode {
        match self {
            GuestSshError::Tool(t) => t.code(),
            GuestSshError::Timeout { .. } | GuestSshError::Unreachable { .. } => {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            GuestSshError::Tool(t) => t.hint(),
            GuestSshError::Timeout { vm, .. } => Some(format!(
                "The guest may be overloaded or hung: see `banger vm stats {vm}` and \
                 `banger vm logs {vm}`"
            )),
            GuestSshError::Unreachable { vm, .. } => Some(format!(
                "Is it running and booted? See `banger vm show {vm}` and `banger vm logs {vm}`"
            )),
            _ => None,
        }
    }
}

/// The input of a guest command.
pub enum GuestInput {
    None,
    Bytes(Vec<u8>),
    Reader(Box<dyn tokio::io::AsyncRead + Send + Unpin>),
}

/// Where a command goes: a running VM's address and pinned host key.
#[derive(Debug, Clone)]
pub struct GuestTarget {
    pub id: String,
    pub name: String,
    pub ip: String,
    /// `TYPE KEY [COMMENT]`, as the VM's row records it.
    pub host_key: String,
}

/// The SSH transport. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GuestSsh {
    layout: Layout,
}

/// One target with its transport: what sessions, workspaces, credentials,
/// agents and the pool run guest commands through.
pub struct Guest {
    ssh: GuestSsh,
    target: GuestTarget,
}

impl GuestSsh {
    pub fn new(layout: Layout) -> GuestSsh {
        GuestSsh { layout }
    }

    /// A handle for commands in `target`.
    pub fn guest(&self, target: GuestTarget) -> Guest {
        Guest {
            ssh: self.clone(),
            target,
        }
    }

    /// The daemon's SSH client key, made on first use.
    pub fn client_key(&self) -> Result<PathBuf, GuestSshError> {
        // Creates run in parallel; the key is made once, atomically.
        static KEY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _held = KEY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.layout.ssh_key_dir();
        let key = dir.join("id_ed25519");
        if key.exists() {
            return Ok(key);
        }
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| GuestSshError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!("id_ed25519.tmp{}", std::process::id()));
        let tmp_pub = PathBuf::from(format!("{}.pub", tmp.display()));
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_pub);
        tools::ssh_keygen(&tmp, "bangerd")?;
        std::fs::rename(&tmp_pub, key.with_extension("pub")).map_err(io(&tmp_pub))?;
        std::fs::rename(&tmp, &key).map_err(io(&tmp))?;
        Ok(key)
    }

    /// The daemon's public key (what every guest authorizes).
    pub fn client_public_key(&self) -> Result<String, GuestSshError> {
        let p = self.client_key()?.with_extension("pub");
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|source| GuestSshError::Io { path: p, source })
    }

    /// The daemon's private key, for `banger vm ssh`.
    pub fn client_private_key(&self) -> Result<String, GuestSshError> {
        let p = self.client_key()?;
        std::fs::read_to_string(&p).map_err(|source| GuestSshError::Io { path: p, source })
    }

    /// SSH options for `t`: the daemon's key, the pinned host key, and a
    /// control socket; the last element is the destination.
    fn args(&self, t: &GuestTarget) -> Result<Vec<String>, GuestSshError> {
        let key = self.client_key()?;
        let kh = self.layout.vms_dir().join(&t.id).join("known_hosts");
        let line = known_hosts_line(&t.ip, &t.host_key);
        // Written when it changes, not on every command.
        if std::fs::read_to_string(&kh).ok().as_deref() != Some(line.as_str()) {
            std::fs::write(&kh, line).map_err(|source| GuestSshError::Io {
                path: kh.clone(),
                source,
            })?;
        }
        let ctl_dir = self.layout.ssh_control_dir();
        std::fs::create_dir_all(&ctl_dir).map_err(|source| GuestSshError::Io {
            path: ctl_dir.clone(),
            source,
        })?;
        let control = ctl_dir.join(&t.id[..t.id.len().min(16)]);
        Ok(ssh_options(&kh, &control, &key, &t.ip))
    }
}

/// The pinned host key line (`IP TYPE KEY`). Pure.
fn known_hosts_line(ip: &str, host_key: &str) -> String {
    let parts: Vec<&str> = host_key.split_whitespace().take(2).collect();
    format!("{ip} {}\n", parts.join(" "))
}

/// The options of every guest SSH command. Pure.
fn ssh_options(
    known_hosts: &std::path::Path,
    control: &std::path::Path,
    key: &std::path::Path,
    ip: &str,
) -> Vec<String> {
    let mut v = Vec::new();
    for o in [
        "BatchMode=yes".to_string(),
        "StrictHostKeyChecking=yes".into(),
        "ConnectTimeout=5".into(),
        "LogLevel=ERROR".into(),
        "IdentitiesOnly=yes".into(),
        format!("KexAlgorithms={}", banger_api::vms::SSH_KEX_ALGORITHMS),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        format!("ControlPath={}", control.display()),
    ] {
        v.push("-o".into());
        v.push(o);
    }
    v.push("-i".into());
    v.push(key.display().to_string());
    v.push(format!("root@{ip}"));
    v
}

/// What runs a guest script: bash when it starts with `#!/bin/bash`, else
/// sh. Pure.
pub fn interpreter(script: &str) -> &'static str {
    if script.starts_with("#!/bin/bash\n") {
        "bash"
    } else {
        "sh"
    }
}

/// The fixed command line that runs `script`: its [`interpreter`] reads
/// it, `len` bytes, from the front of its input (`head -c` reads no
/// further) and evaluates it, the rest of the input being the script's. So
/// a script, and the secrets in it, never is an argument, neither of the
/// daemon's `ssh` (every local user can read `/proc/PID/cmdline`) nor of a
/// process in the guest (where the kernel caps one at 128 KiB: E2BIG). Pure.
pub fn remote_command(script: &str) -> String {
    format!(
        "exec {} -c 'eval \"$(head -c {})\"'",
        interpreter(script),
        script.len()
    )
}

impl Guest {
    /// Runs `command` (a shell command line) over the VM's shared SSH
    /// connection (started on first use), with `stdin` as its input; at
    /// most [`RUN_LIMIT`].
    pub async fn run(
        &self,
        command: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<std::process::Output, GuestSshError> {
        let input = stdin.map_or(GuestInput::None, GuestInput::Bytes);
        self.exec(command, input, RUN_LIMIT).await
    }

    /// The VM's name.
    pub fn vm(&self) -> &str {
        &self.target.name
    }

    /// [`Guest::run`] that fails unless the command succeeds; its stdout.
    pub async fn stdout(&self, command: &str) -> Result<String, GuestSshError> {
        let out = self.run(command, None).await?;
        if !out.status.success() {
            return Err(GuestSshError::Failed {
                vm: self.target.name.clone(),
                command: command.into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `command` with any input (a stream, for large uploads) and a
    /// time limit of the caller's. The input is written while the output is
    /// read, so neither side can block the other.
    pub async fn exec(
        &self,
        command: &str,
        input: GuestInput,
        limit: Duration,
    ) -> Result<std::process::Output, GuestSshError> {
        let ssh = tools::require("ssh")?;
        let args = self.ssh.args(&self.target)?;
        let (opts, target) = args.split_at(args.len() - 1);
        self.ensure_master(&ssh, opts, target).await;
        let script = if command.trim().is_empty() {
            ":".to_string()
        } else {
            command.to_string()
        };
        let mut child = tokio::process::Command::new(&ssh)
            .args(opts)
            .args(["-o", "ControlMaster=no"])
            .args(target)
            .arg("--")
            .arg(remote_command(&script))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| GuestSshError::Io {
                path: ssh.clone(),
                source,
            })?;
        let writer = child.stdin.take().map(|mut sin| {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let r = match sin.write_all(script.as_bytes()).await {
                    Err(e) => Err(e),
                    Ok(()) => match input {
                        GuestInput::None => Ok(()),
                        GuestInput::Bytes(b) => sin.write_all(&b).await,
                        GuestInput::Reader(mut r) => {
                            tokio::io::copy(&mut r, &mut sin).await.map(|_| ())
                        }
                    },
                };
                let _ = sin.shutdown().await;
                r
            })
        });
        let (so, se) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let (o, e) = tokio::join!(
                read_bounded(so, OUTPUT_LIMIT),
                read_bounded(se, OUTPUT_LIMIT)
            );
            let ((stdout, o_over), (stderr, e_over)) = (o?, e?);
            if o_over || e_over {
                let _ = child.start_kill();
            }
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((
                std::process::Output {
                    status,
                    stdout,
                    stderr,
                },
                o_over || e_over,
            ))
        };
        let (out, over) = tokio::time::timeout(limit, run)
            .await
            .map_err(|_| GuestSshError::Timeout {
                vm: self.target.name.clone(),
                limit,
            })?
            .map_err(|source| GuestSshError::Io {
                path: ssh.clone(),
                source,
            })?;
        if over {
            return Err(GuestSshError::TooMuchOutput {
                vm: self.target.name.clone(),
                limit: OUTPUT_LIMIT,
            });
        }
        if out.stdout.is_empty() && ssh_unreachable(out.status.code(), &out.stderr) {
            return Err(GuestSshError::Unreachable {
                vm: self.target.name.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        if let Some(w) = writer {
            if let Ok(Err(source)) = w.await {
                if out.status.success() {
                    return Err(GuestSshError::Input {
                        vm: self.target.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Starts the VM's master connection unless one answers. The master is
    /// its own process with no pipes of ours, so no command waits on it.
    async fn ensure_master(&self, ssh: &std::path::Path, opts: &[String], target: &[String]) {
        let check = tokio::process::Command::new(ssh)
            .args(opts)
            .args(["-O", "check"])
            .args(target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if check.is_ok_and(|s| s.success()) {
            return;
        }
        let master = tokio::process::Command::new(ssh)
            .args(opts)
            .args([
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=3600",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=3",
                "-N",
                "-f",
            ])
            .args(target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), master).await;
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn unreachable_is_exit_255_with_ssh_s_own_words() {
        assert!(super::ssh_unreachable(
            Some(255),
            b"ssh: connect to host 1.2.3.4 port 22: Connection refused\r\n"
        ));
        assert!(!super::ssh_unreachable(Some(255), b"the command said so\n"));
        assert!(!super::ssh_unreachable(Some(1), b"Connection refused"));
    }

    /// A stream past the bound is cut there and flagged; one at the bound
    /// is whole (a guest's output never grows the daemon past it).
    #[test]
    fn output_is_read_up_to_the_bound_and_flagged_past_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let big = [7u8; 100];
            let (b, over) = super::read_bounded(Some(&big[..]), 10).await.expect("read");
            assert_eq!((b.len(), over), (10, true));
            let (b, over) = super::read_bounded(Some(&big[..]), 100)
                .await
                .expect("read");
            assert_eq!((b.len(), over), (100, false));
            let none: Option<&[u8]> = None;
            let (b, over) = super::read_bounded(none, 10).await.expect("read");
            assert!(b.is_empty() && !over);
        });
    }

    /// What ssh runs in the guest, run here by sh: the script comes from
    /// the input's front, and the rest of the input is the script's; a
    /// script far past the argument limit works.
    #[test]
    fn the_remote_command_runs_the_script_from_the_input_and_passes_the_rest_on() {
        use std::io::Write;
        let run = |script: &str, rest: &[u8]| {
            let mut c = std::process::Command::new("sh")
                .arg("-c")
                .arg(remote_command(script))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh");
            let mut sin = c.stdin.take().expect("stdin");
            sin.write_all(script.as_bytes()).expect("write");
            sin.write_all(rest).expect("write");
            drop(sin);
            c.wait_with_output().expect("wait").stdout
        };
        assert!(!remote_command("cat").contains("cat"));
        assert!(remote_command("echo").starts_with("exec sh -c"));
        assert!(remote_command("#!/bin/bash\necho").starts_with("exec bash -c"));
        assert_eq!(
            run("#!/bin/bash\n[[ -n $BASH_VERSION ]] && echo bash", b""),
            b"bash\n"
        );
        assert_eq!(run("tr a-z A-Z", b"secret input"), b"SECRET INPUT");
        let big = format!("X={}; echo ${{#X}}; wc -c", "y".repeat(300 << 10));
        assert_eq!(
            String::from_utf8_lossy(&run(&big, b"abc"))
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["307200", "3"]
        );
    }
    use super::*;

    #[test]
    fn known_hosts_pins_type_and_key_without_comment() {
        assert_eq!(
            known_hosts_line("172.30.0.2", "ssh-ed25519 AAAAC3 box.vm"),
            "172.30.0.2 ssh-ed25519 AAAAC3\n"
        );
    }

    #[test]
    fn options_pin_the_host_key_and_end_with_the_destination() {
        let o = ssh_options(
            "/s/kh".as_ref(),
            "/r/ssh/abc".as_ref(),
            "/s/ssh/id".as_ref(),
            "172.30.0.9",
        );
        assert_eq!(o.last().map(String::as_str), Some("root@172.30.0.9"));
        assert!(o.contains(&"StrictHostKeyChecking=yes".to_string()));
        assert!(o.contains(&"UserKnownHostsFile=/s/kh".to_string()));
        assert!(o.contains(&"ControlPath=/r/ssh/abc".to_string()));
        assert!(o.windows(2).any(|w| w[0] == "-i" && w[1] == "/s/ssh/id"));
    }
}
