//! Command lines in a running guest, over banger-agent when it answers and
//! over SSH otherwise: what sessions, workspaces, credentials and agent
//! runs use. A command line is run by `sh -c`, as SSH runs it, so both
//! transports give the same result.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Output};
use std::time::Duration;

use banger_agent_proto::msg::ExecRequest;
use banger_api::Vm;
use thiserror::Error;

use crate::guest_agent::{AgentConn, AgentConnError};
use crate::guest_ssh::{Guest, GuestInput, GuestSshError};

use super::{VmError, Vms};

/// The most output a command line keeps per stream (as over SSH).
const OUTPUT_LIMIT: usize = crate::guest_ssh::OUTPUT_LIMIT;
/// A command line's time limit when its caller gives none.
const RUN_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Error)]
pub enum GuestCmdError {
    #[error(transparent)]
    Ssh(#[from] GuestSshError),
    #[error(transparent)]
    Agent(#[from] AgentConnError),
    #[error("The command in VM {vm:?} did not finish within {secs} s (it was killed)")]
    Timeout { vm: String, secs: u64 },
    #[error("A command in VM {vm:?} wrote more than {} MiB to one stream", OUTPUT_LIMIT >> 20)]
    TooMuchOutput { vm: String },
    #[error("`{command}` failed in VM {vm:?} ({status}): {stderr}")]
    Failed {
        vm: String,
        command: String,
        status: String,
        stderr: String,
    },
}

impl crate::ToApiError for GuestCmdError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            GuestCmdError::Ssh(e) => e.code(),
            GuestCmdError::Agent(e) => e.code(),
            GuestCmdError::Timeout { .. } => banger_api::ErrorCode::Unavailable,
            GuestCmdError::Failed { .. } | GuestCmdError::TooMuchOutput { .. } => {
                banger_api::ErrorCode::Internal
            }
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            GuestCmdError::Ssh(e) => e.hint(),
            GuestCmdError::Agent(e) => e.hint(),
            GuestCmdError::Timeout { vm, .. } => Some(format!(
                "The guest may be overloaded or hung: see `banger vm stats {vm}` and \
                 `banger vm logs {vm}`"
            )),
            GuestCmdError::Failed { .. } | GuestCmdError::TooMuchOutput { .. } => None,
        }
    }
}

/// How command lines reach one guest.
pub enum GuestCmd {
    Agent { conn: AgentConn, vm: String },
    Ssh(Guest),
}

/// A program's end as a wait status. Pure.
fn status(code: Option<i32>, signal: Option<i32>) -> ExitStatus {
    match (code, signal) {
        (Some(c), _) => ExitStatus::from_raw((c & 0xff) << 8),
        (None, Some(s)) => ExitStatus::from_raw(s & 0x7f),
        (None, None) => ExitStatus::from_raw(0xff << 8),
    }
}

impl GuestCmd {
    /// `command` run by `sh -c` with `stdin` (at most ten minutes).
    pub async fn run(
        &self,
        command: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, GuestCmdError> {
        let input = stdin.map_or(GuestInput::None, GuestInput::Bytes);
        self.exec(command, input, RUN_LIMIT).await
    }

    /// [`GuestCmd::run`] that fails unless the command succeeds; its stdout.
    pub async fn stdout(&self, command: &str) -> Result<String, GuestCmdError> {
        let out = self.stdout_bytes(command).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `command` run by `sh -c`, its stdin from `input`, killed after
    /// `limit`.
    pub async fn exec(
        &self,
        command: &str,
        input: GuestInput,
        limit: Duration,
    ) -> Result<Output, GuestCmdError> {
        match self {
            GuestCmd::Ssh(g) => Ok(g.exec(command, input, limit).await?),
            GuestCmd::Agent { conn, vm } => {
                // The script goes in front of the input, as over SSH: no
                // argument of 128 KiB or more (E2BIG) in the guest.
                use tokio::io::AsyncReadExt as _;
                let script = std::io::Cursor::new(command.as_bytes().to_vec());
                let req = ExecRequest {
                    argv: vec![
                        crate::guest_ssh::interpreter(command).into(),
                        "-c".into(),
                        format!("eval \"$(head -c {})\"", command.len()),
                    ],
                    ..ExecRequest::default()
                };
                let input: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match input {
                    GuestInput::None => Box::new(script),
                    GuestInput::Bytes(b) => Box::new(script.chain(std::io::Cursor::new(b))),
                    GuestInput::Reader(r) => Box::new(script.chain(r)),
                };
                let input = Some(input);
                let out = conn.exec_input(req, input, OUTPUT_LIMIT, limit).await?;
                if out.timed_out {
                    return Err(GuestCmdError::Timeout {
                        vm: vm.clone(),
                        secs: limit.as_secs(),
                    });
                }
                if out.dropped != (0, 0) {
                    return Err(GuestCmdError::TooMuchOutput { vm: vm.clone() });
                }
                Ok(Output {
                    status: status(out.code, out.signal),
                    stdout: out.stdout,
                    stderr: out.stderr,
                })
            }
        }
    }

    /// At most `limit` bytes of a guest file from byte `offset` (none when
    /// it does not exist): the agent reads it itself, SSH through `tail`.
    pub async fn read_range(
        &self,
        path: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<u8>, GuestCmdError> {
        match self {
            GuestCmd::Agent { conn, .. } => match conn.read_range(path, offset, limit).await {
                Ok((_, data)) => Ok(data),
                Err(AgentConnError::Refused {
                    kind: banger_agent_proto::msg::ErrorKind::NotFound,
                    ..
                }) => Ok(Vec::new()),
                Err(e) => Err(e.into()),
            },
            GuestCmd::Ssh(_) => {
                let p = crate::shell::quote(path);
                let command = format!(
                    "[ -e {p} ] || exit 0; tail -c +{} -- {p} | head -c {limit}",
                    offset.saturating_add(1)
                );
                let out = self.stdout_bytes(&command).await?;
                Ok(out)
            }
        }
    }

    async fn stdout_bytes(&self, command: &str) -> Result<Vec<u8>, GuestCmdError> {
        let out = self.run(command, None).await?;
        if !out.status.success() {
            return Err(GuestCmdError::Failed {
                vm: self.vm().to_string(),
                command: command.into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    fn vm(&self) -> &str {
        match self {
            GuestCmd::Agent { vm, .. } => vm,
            GuestCmd::Ssh(g) => g.vm(),
        }
    }
}

impl Vms {
    /// How command lines reach a running VM: its banger-agent when it
    /// answers, else SSH.
    pub(crate) async fn commands(&self, vm: &Vm) -> Result<GuestCmd, VmError> {
        match self.agent(vm).await {
            Ok(conn) => Ok(GuestCmd::Agent {
                conn,
                vm: vm.name.clone(),
            }),
            Err(VmError::AgentConn(e)) => {
                tracing::debug!(vm = %vm.name, error = %e, "commands over SSH");
                Ok(GuestCmd::Ssh(self.guest(vm)?))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_become_wait_statuses() {
        assert_eq!(status(Some(0), None).code(), Some(0));
        assert_eq!(status(Some(3), None).code(), Some(3));
        assert_eq!(status(None, Some(9)).signal(), Some(9));
        assert!(!status(None, None).success());
    }
}
