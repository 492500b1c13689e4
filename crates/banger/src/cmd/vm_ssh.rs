//! `banger vm ssh`, `vm exec`, `vm proxy`, `vm known-hosts`, `vm ssh-config`:
//! the system `ssh` with the daemon's key and the VM's pinned host key,
//! through `banger vm proxy` (so it works from any network namespace).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use banger::client::ClientError;
use banger::exit;
use clap::Subcommand;

use super::{local, CmdResult, Ctx};

#[derive(Debug, Subcommand)]
pub enum VmSshCommand {
    /// SSH into the VM (pinned host key). Extra arguments run as a command
    /// line in the guest's shell; `vm exec` keeps them as separate words.
    Ssh {
        /// The VM.
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Splice stdin/stdout to a TCP port of the VM (for ssh's ProxyCommand).
    /// NAME may carry the `.vm` suffix.
    Proxy {
        /// The VM.
        name: String,
        /// The guest's TCP port.
        port: u16,
    },
    /// Print the known_hosts line pinning the VM's host key (for ssh's
    /// KnownHostsCommand). NAME may carry the `.vm` suffix.
    KnownHosts {
        /// The VM.
        name: String,
    },
    /// Print (or --write) an ssh config block so that `ssh NAME.vm`, scp,
    /// rsync and editors' remote-SSH modes reach every VM, present and future.
    SshConfig {
        /// Write it to this file (e.g. ~/.ssh/config.d/banger) instead of stdout;
        /// add `Include` for it to your ~/.ssh/config once.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

/// One argument quoted for a POSIX shell (ssh hands the guest's shell one
/// command line). Pure.
pub fn sh_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command line that runs `argv` exactly in the guest. Pure.
pub fn exact_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(ctx: &Ctx, cmd: VmSshCommand) -> CmdResult {
    match cmd {
        VmSshCommand::Ssh { name, command } => ssh(ctx, &name, &command).await,
        VmSshCommand::KnownHosts { name } => {
            let name = name.strip_suffix(".vm").unwrap_or(&name);
            let info = ctx.client.vm_ssh(name).await?;
            let parts: Vec<&str> = info.host_key.split_whitespace().take(2).collect();
            println!("{} {}", info.host_alias, parts.join(" "));
            Ok(exit::OK)
        }
        VmSshCommand::SshConfig { write } => {
            let text = ssh_config(ctx).await?;
            match write {
                Some(path) => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| write_error("ssh config directory", e))?;
                    }
                    std::fs::write(&path, text).map_err(|e| write_error("ssh config", e))?;
                    eprintln!(
                        "wrote {p}; add this line to ~/.ssh/config once:\n  Include {p}",
                        p = path.display(),
                    );
                }
                None => print!("{text}"),
            }
            Ok(exit::OK)
        }
        VmSshCommand::Proxy { name, port } => {
            let name = name.strip_suffix(".vm").unwrap_or(&name);
            let mut io = ctx.client.vm_proxy(name, port).await?;
            let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
            let _ = tokio::io::copy_bidirectional(&mut io, &mut stdio).await;
            Ok(exit::OK)
        }
    }
}

fn write_error(what: &str, e: std::io::Error) -> ClientError {
    local(format!("Cannot write the {what}: {e}"), None)
}

/// Where the CLI keeps files per calling user (SSH keys, known_hosts).
pub fn user_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("banger")
}

/// Where the CLI keeps the SSH key it gets from the daemon (and the
/// dashboard's login page): a private directory of the calling user.
pub(super) fn key_dir() -> Result<PathBuf, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let base = user_dir();
    std::fs::create_dir_all(&base).map_err(|e| write_error("key directory", e))?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| write_error("key directory", e))?;
    Ok(base)
}

/// Writes the daemon's SSH key (the one every VM authorizes) to the key
/// directory, mode 0600; returns its path.
fn write_key(private_key: &str) -> Result<PathBuf, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let path = key_dir()?.join("id_ed25519");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, private_key).map_err(|e| write_error("key", e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| write_error("key", e))?;
    Ok(path)
}

/// This program and the socket it speaks to, for ssh's ProxyCommand.
fn me(ctx: &Ctx) -> Result<String, ClientError> {
    let me =
        std::env::current_exe().map_err(|e| local(format!("Cannot find banger: {e}"), None))?;
    Ok(format!(
        "{} --socket {}",
        me.display(),
        ctx.client.socket().display()
    ))
}

/// The `Host *.vm` block: the daemon's key, host keys pinned per VM by
/// KnownHostsCommand, and the daemon's proxy, so it needs no per-VM entries.
async fn ssh_config(ctx: &Ctx) -> Result<String, ClientError> {
    let key = ctx.client.ssh_client_key().await?;
    let path = write_key(&key.private_key)?;
    let banger = me(ctx)?;
    Ok(format!(
        "# banger: `ssh NAME.vm` for every VM (written by `banger vm ssh-config`).\n\
         Host *.vm\n\
         \x20   User {user}\n\
         \x20   IdentityFile {key}\n\
         \x20   IdentitiesOnly yes\n\
         \x20   KexAlgorithms {kex}\n\
         \x20   ProxyCommand {banger} vm proxy %n %p\n\
         \x20   KnownHostsCommand {banger} vm known-hosts %H\n\
         \x20   UserKnownHostsFile /dev/null\n\
         \x20   StrictHostKeyChecking yes\n\
         \x20   LogLevel ERROR\n",
        user = key.user,
        key = path.display(),
        kex = banger_api::vms::SSH_KEX_ALGORITHMS,
    ))
}

/// Runs the system ssh to a running VM (the daemon refuses one that is
/// not, with what to do), replacing this process.
pub async fn ssh_command(ctx: &Ctx, name: &str, command: &[String]) -> CmdResult {
    ssh(ctx, name, command).await
}

async fn ssh(ctx: &Ctx, name: &str, command: &[String]) -> CmdResult {
    let info = ctx.client.vm_ssh(name).await?;
    let key = write_key(&info.private_key)?;
    let known = key_dir()?.join(format!("{name}.known_hosts"));
    let parts: Vec<&str> = info.host_key.split_whitespace().take(2).collect();
    std::fs::write(&known, format!("{} {}\n", info.host_alias, parts.join(" ")))
        .map_err(|e| write_error("known_hosts", e))?;
    let proxy = format!("{} vm proxy {} 22", me(ctx)?, name);
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-i").arg(&key);
    for o in [
        "IdentitiesOnly=yes".to_string(),
        "StrictHostKeyChecking=yes".into(),
        "LogLevel=ERROR".into(),
        format!("KexAlgorithms={}", banger_api::vms::SSH_KEX_ALGORITHMS),
        format!("UserKnownHostsFile={}", known.display()),
        format!("HostKeyAlias={}", info.host_alias),
        format!("ProxyCommand={proxy}"),
    ] {
        cmd.arg("-o").arg(o);
    }
    cmd.arg(format!("{}@{}", info.user, info.host_alias));
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    let err = cmd.exec();
    Err(ClientError::Api(
        banger_api::ApiError::new(
            banger_api::ErrorCode::Unavailable,
            format!("Cannot run ssh: {err}"),
        )
        .with_hint("Install it with: sudo apt-get install openssh-client"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_keeps_every_argument_as_one_word() {
        let argv: Vec<String> = ["printf", "%s\\n", "a  b", "x;y", "it's", ""]
            .map(String::from)
            .to_vec();
        let line = exact_command(&argv);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("set -- {line}; printf '<%s>' \"$@\""))
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<printf><%s\\n><a  b><x;y><it's><>"
        );
    }
}
