//! A VM's guest agent: its connection (one per VM, kept while it works and
//! opened again when it does not), the requests the lifecycle makes of it
//! (ping, rename, reload), with the shell agent of older images as the
//! fallback, and moving a VM of an older image onto banger-agent.

use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::msg::Request;
use banger_api::{Vm, VmState};

use crate::guest_agent::{legacy, link, AgentConn, AgentConnError};

use super::{blocking, VmError, Vms};

/// How long opening a connection (the link and the handshake) may take.
const CONNECT: Duration = Duration::from_secs(5);
/// A connection unused for longer is pinged before it is reused.
const IDLE_CHECK: Duration = Duration::from_secs(2);
/// How long a one-reply request may take.
const CALL: Duration = Duration::from_secs(20);

/// One VM's connection slot: connects are serialised per VM (QEMU's
/// chardev takes one client at a time), never across VMs.
pub(super) type Slot = Arc<tokio::sync::Mutex<Option<AgentConn>>>;

impl Vms {
    fn agent_slot(&self, id: &str) -> Slot {
        let mut slots = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(id.to_string()).or_default().clone()
    }

    /// Drops a VM's agent connection (its VMM is gone).
    pub(super) fn forget_agent(&self, id: &str) {
        let mut slots = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(id);
    }

    /// The running VM's banger-agent: the open connection, else a new one.
    pub(crate) async fn agent(&self, vm: &Vm) -> Result<AgentConn, VmError> {
        if vm.state != VmState::Running {
            return Err(VmError::WrongState {
                name: vm.name.clone(),
                state: vm.state.as_str(),
                what: "commands run only in a running VM",
            });
        }
        self.connect_agent(vm).await
    }

    /// [`Vms::agent`] whatever the row's state says (a VM still booting).
    pub(super) async fn connect_agent(&self, vm: &Vm) -> Result<AgentConn, VmError> {
        let slot = self.agent_slot(&vm.id);
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            // Used a moment ago: alive. Idle for longer: asked first (the
            // agent may have died and come back).
            if c.idle() < IDLE_CHECK || c.alive(Duration::from_secs(2)).await {
                return Ok(c.clone());
            }
            tracing::info!(vm = %vm.name, "the guest agent's session went stale; connecting again");
        }
        let spec = self.launch_spec(vm)?;
        let agent_link = self.vmm(vm.backend).agent(&spec);
        let io = link::connect(&agent_link, CONNECT)
            .await
            .map_err(AgentConnError::from)?;
        let c = AgentConn::start(io, CONNECT, vm.name.clone()).await?;
        tracing::debug!(vm = %vm.name, version = %c.hello.version, "guest agent connected");
        *held = Some(c.clone());
        Ok(c)
    }

    /// After a boot: banger-agent answers; or, for a VM of an image made
    /// before it (its shell agent answers, or nothing does), banger-agent
    /// is put in place over SSH and answers then. Without it the VM still
    /// works over SSH, so a failure is logged, not returned.
    pub(super) async fn settle_agent(&self, vm: &Vm) {
        if self.inner.config.agent_binary.is_none() {
            return;
        }
        let first = self.connect_agent(vm).await;
        let Err(e) = first else { return };
        tracing::info!(vm = %vm.name, error = %crate::error::error_chain(&e),
            "no banger-agent answers; moving the guest onto it over SSH");
        if let Err(e) = self.bootstrap_agent(vm).await {
            tracing::warn!(vm = %vm.name, error = %crate::error::error_chain(&e),
                "the guest stays on SSH only");
        }
    }

    /// Puts the launcher of banger-agent in the guest's root disk (the
    /// shell agent kept aside) and restarts the agent, then waits (at most
    /// 30 s) for banger-agent to answer.
    async fn bootstrap_agent(&self, vm: &Vm) -> Result<(), VmError> {
        let script = crate::guest::bootstrap_script(crate::guest::InitMode::Light);
        let out = self
            .guest(vm)?
            .run("sh -s", Some(script.into_bytes()))
            .await?;
        if !out.status.success() {
            return Err(VmError::Internal {
                what: "guest agent",
                reason: format!(
                    "installing banger-agent in the guest failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.connect_agent(vm).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Whether the guest answers (banger-agent, else its shell agent).
    pub(super) async fn agent_ping(&self, vm: &Vm) -> Result<(), VmError> {
        match self.connect_agent(vm).await {
            Ok(c) => {
                c.call(&Request::Ping, Duration::from_secs(5)).await?;
                Ok(())
            }
            Err(e) if is_legacy(&e) => self.legacy(vm, "ping", vec![], 5).await,
            Err(e) => Err(e),
        }
    }

    /// A claimed pool VM's guest takes its new name: through banger-agent,
    /// the shell agent of older images, or SSH.
    pub(super) async fn agent_rename(&self, vm: &Vm) -> Result<(), VmError> {
        let by_agent = match self.connect_agent(vm).await {
            Ok(c) => {
                let req = Request::Rename {
                    name: vm.name.clone(),
                };
                c.call(&req, CALL).await.map(|_| ()).map_err(VmError::from)
            }
            Err(e) if is_legacy(&e) => self.legacy(vm, "rename", vec![vm.name.clone()], 3).await,
            Err(e) => Err(e),
        };
        let Err(e) = by_agent else { return Ok(()) };
        tracing::info!(vm = %vm.name, error = %crate::error::error_chain(&e), "renaming over SSH");
        let script = super::pool::rename_script(&vm.name);
        let out = self.guest(vm)?.run(&script, None).await?;
        if !out.status.success() {
            return Err(VmError::Internal {
                what: "pool VM",
                reason: format!(
                    "renaming it in the guest failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// A guest restored from a snapshot re-reads its config disk (its own
    /// name, address, MAC, host key, machine-id) and takes the host's clock
    /// and fresh randomness.
    pub(super) async fn agent_reload(&self, vm: &Vm) -> Result<(), VmError> {
        let epoch = chrono::Utc::now().timestamp();
        let mut seed = [0u8; 32];
        super::boot::getrandom_fill(&mut seed);
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let r = match self.connect_agent(vm).await {
            Ok(c) => {
                let req = Request::Reload {
                    epoch,
                    seed: hex.clone(),
                };
                c.call(&req, CALL).await.map(|_| ()).map_err(VmError::from)
            }
            Err(e) if is_legacy(&e) => {
                self.legacy(vm, "reload", vec![epoch.to_string(), hex], 20)
                    .await
            }
            Err(e) => Err(e),
        };
        r.map_err(|e| VmError::Internal {
            what: "restored guest",
            reason: format!(
                "re-applying its identity failed: {}",
                crate::error::error_chain(&e)
            ),
        })
    }

    /// A request to the shell agent of an older image.
    async fn legacy(
        &self,
        vm: &Vm,
        verb: &'static str,
        args: Vec<String>,
        secs: u64,
    ) -> Result<(), VmError> {
        let spec = self.launch_spec(vm)?;
        let link = self.vmm(vm.backend).agent(&spec);
        blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            legacy::request(&link, verb, &args, Duration::from_secs(secs)).map_err(|e| {
                VmError::Internal {
                    what: "guest agent",
                    reason: crate::error::error_chain(&e),
                }
            })
        })
        .await
    }
}

/// Whether a connection failed because the guest runs the shell agent of
/// an older image.
fn is_legacy(e: &VmError) -> bool {
    matches!(e, VmError::AgentConn(AgentConnError::Legacy))
}
