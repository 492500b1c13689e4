//! Agent runs: a profile's files written into the guest, then a session
//! running the agent's command (in a workspace's directory when named).
//! Apart from the profiles (`agents.rs`), which `vms` reads at create.

use thiserror::Error;

use crate::agents::Agents;
use crate::names::validate_name;

/// The script every agent session runs first: loads the synced `env`
/// credentials, then execs the agent's command (its arguments).
pub const SESSION_LOADER: &str = "for f in /root/.config/banger/env/*; do if [ -r \"$f\" ]; then . \"$f\"; fi; done; exec \"$@\"";

#[derive(Debug, Error)]
pub enum AgentRunError {
    #[error("VM {0:?} has no agent: it was created without --agent from an image without one")]
    NoAgent(String),
    #[error("Agent {agent:?} needs {command:?}, which is not installed in the guest")]
    NotInstalled { agent: String, command: String },
    #[error("Writing the agent's file {path} into the guest failed: {stderr}")]
    File { path: String, stderr: String },
    #[error(transparent)]
    Agent(#[from] crate::agents::AgentError),
    #[error(transparent)]
    Session(Box<crate::sessions::SessionError>),
    #[error(transparent)]
    Workspace(Box<crate::workspaces::WorkspaceError>),
    #[error(transparent)]
    Vm(Box<crate::vms::VmError>),
    #[error(transparent)]
    Transport(#[from] crate::vms::GuestCmdError),
}

impl From<crate::sessions::SessionError> for AgentRunError {
    fn from(e: crate::sessions::SessionError) -> Self {
        AgentRunError::Session(Box::new(e))
    }
}
impl From<crate::workspaces::WorkspaceError> for AgentRunError {
    fn from(e: crate::workspaces::WorkspaceError) -> Self {
        AgentRunError::Workspace(Box::new(e))
    }
}
impl From<crate::vms::VmError> for AgentRunError {
    fn from(e: crate::vms::VmError) -> Self {
        AgentRunError::Vm(Box::new(e))
    }
}

impl crate::ToApiError for AgentRunError {
    fn code(&self) -> banger_api::ErrorCode {
        use banger_api::ErrorCode as C;
        match self {
            AgentRunError::NoAgent(_) | AgentRunError::NotInstalled { .. } => C::InvalidRequest,
            AgentRunError::File { .. } => C::Internal,
            AgentRunError::Agent(e) => e.code(),
            AgentRunError::Session(e) => e.code(),
            AgentRunError::Workspace(e) => e.code(),
            AgentRunError::Vm(e) => e.code(),
            AgentRunError::Transport(e) => e.code(),
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            AgentRunError::NoAgent(_) => Some("Pass --agent NAME (banger agent ls lists them)".into()),
            AgentRunError::NotInstalled { agent, .. } => Some(format!(
                "Use an image with the agent: banger image build NAME --agent {agent}, then banger vm create VM --image NAME; or install it in the guest"
            )),
            AgentRunError::Agent(e) => e.hint(),
            AgentRunError::Session(e) => e.hint(),
            AgentRunError::Workspace(e) => e.hint(),
            AgentRunError::Vm(e) => e.hint(),
            AgentRunError::Transport(e) => e.hint(),
            AgentRunError::File { .. } => None,
        }
    }
}

/// Starts agents as guest sessions.
#[derive(Clone)]
pub struct AgentRuns {
    agents: Agents,
    vms: crate::vms::Vms,
    sessions: crate::sessions::Sessions,
    workspaces: crate::workspaces::Workspaces,
}

impl AgentRuns {
    pub fn new(
        agents: Agents,
        vms: crate::vms::Vms,
        sessions: crate::sessions::Sessions,
        workspaces: crate::workspaces::Workspaces,
    ) -> AgentRuns {
        AgentRuns {
            agents,
            vms,
            sessions,
            workspaces,
        }
    }

    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    /// Writes the profile's files, then starts the agent on `prompt` as a
    /// session (in the workspace's directory when one is named).
    pub async fn run(
        &self,
        vm_name: &str,
        req: banger_api::AgentRunRequest,
    ) -> Result<banger_api::Session, AgentRunError> {
        use crate::credentials::{write_file_script, GUEST_HOME};
        let vm = self.vms.get(vm_name)?;
        let agent = req
            .agent
            .clone()
            .or(vm.agent.clone())
            .ok_or_else(|| AgentRunError::NoAgent(vm.name.clone()))?;
        validate_name("agent", &agent).map_err(crate::sessions::SessionError::from)?;
        let (profile, _) = self.agents.get(&agent)?;
        let cwd = match &req.workspace {
            Some(w) => Some(self.workspaces.get(vm_name, Some(w))?.dest),
            None => None,
        };
        for f in &profile.files {
            let path = format!("{GUEST_HOME}/{}", f.path);
            let script = format!(
                "if [ {o} = 1 ] || [ ! -e {p} ]; then {w}; fi",
                o = u8::from(f.overwrite),
                p = crate::shell::quote(&path),
                w = write_file_script(&path)
            );
            let out = self
                .vms
                .commands(&vm)
                .await?
                .run(&script, Some(f.content.clone().into_bytes()))
                .await?;
            if !out.status.success() {
                return Err(AgentRunError::File {
                    path,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
        let mut command = vec![
            "sh".to_string(),
            "-c".to_string(),
            SESSION_LOADER.to_string(),
            format!("banger-agent-{agent}"),
        ];
        command.extend(profile.argv(&req.prompt));
        let name = req.session.clone().unwrap_or_else(|| {
            format!(
                "{agent}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..4]
            )
        });
        let start = banger_api::SessionStartRequest {
            command,
            name: Some(name),
            cwd,
            env: profile.env.clone(),
            require: profile.require.clone(),
            tty: None,
        };
        match self.sessions.start(vm_name, start).await {
            Err(crate::sessions::SessionError::MissingCommand(command)) => {
                Err(AgentRunError::NotInstalled { agent, command })
            }
            other => Ok(other?),
        }
    }
}
