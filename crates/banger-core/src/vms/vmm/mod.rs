//! The VMM trait and its two backends.
//!
//! A backend starts one VMM process for a VM, configures it until the guest
//! boots, and asks the guest to power off. Everything else (disks, network,
//! readiness, state) is the same for both and lives in `vms`.
//!
//! - [`QemuVmm`]: everything on the command line; QMP for power-off.
//! - [`FirecrackerVmm`]: `firecracker --api-sock S --id banger-vm-ID`, then the
//!   configure sequence over the API (logger, metrics, machine-config,
//!   boot-source, drives, network-interfaces, InstanceStart); power-off with
//!   SendCtrlAltDel. Its serial console is its stdout, sent to the console log.

mod firecracker;
mod jailer;
pub mod qemu;

pub use firecracker::{FirecrackerVmm, FC_MEMORY, FC_STATE};
pub use jailer::{Jailer, JAILED_API_SOCKET};
pub use qemu::{QemuVmm, QEMU_STATE};

use banger_api::Backend;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use thiserror::Error;

use crate::guest::{GUEST_INIT, KERNEL_CMDLINE};
pub use crate::guest_agent::legacy::{AgentLink, GuestAgentError};
use qemu::Accel;

#[derive(Debug, Error)]
pub enum VmmError {
    #[error("Cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited during start-up: {stderr}")]
    EarlyExit { program: String, stderr: String },
    #[error("Firecracker did not open its API socket {0} within 5 s")]
    NoSocket(PathBuf),
    #[error("Configuring Firecracker failed")]
    Api(#[from] firecracker_api::ClientError),
    #[error("QEMU control failed")]
    Qmp(#[from] qemu::QmpError),
    #[error("The guest agent failed")]
    Agent(#[from] GuestAgentError),
    #[error("{0}")]
    Unsupported(String),
    #[error("VM file I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::ToApiError for VmmError {
    fn hint(&self) -> Option<String> {
        match self {
            VmmError::Api(_) | VmmError::EarlyExit { .. } | VmmError::NoSocket(_) => Some(
                "See the VM's console and VMM log (`banger vm logs NAME`) and check the host with \
                 `banger doctor`"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// What a backend needs to start a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub vm_id: String,
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    /// bzImage (QEMU) or ELF vmlinux (Firecracker).
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub root_disk: PathBuf,
    pub config_disk: PathBuf,
    pub work_disk: PathBuf,
    pub tap: String,
    pub mac: String,
    pub console_log: PathBuf,
    pub stderr_log: PathBuf,
    /// Per-VM runtime dir (sockets, pid file).
    pub run_dir: PathBuf,
    /// Run the VMM at the lowest CPU priority (nice 19): a warm pool VM
    /// boots in the background without slowing the VMs in use (under TCG a
    /// booting guest takes every core it can). [`set_priority`] lifts it
    /// when the VM is claimed.
    pub background: bool,
}

/// Sets the CPU priority (nice value) of every thread of process `pid`
/// (Linux applies nice per thread) with `renice`. Errors are logged only:
/// a thread may end meanwhile, and the priority is a preference.
pub fn set_priority(pid: u32, nice: i32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    let tids: Vec<String> = tasks
        .filter_map(Result::ok)
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .filter(|t| t.chars().all(|c| c.is_ascii_digit()))
        .collect();
    let result = crate::tools::require("renice").and_then(|renice| {
        crate::tools::run(
            &renice,
            ["-n".to_string(), nice.to_string(), "-p".to_string()]
                .into_iter()
                .chain(tids),
        )
    });
    if let Err(e) = result {
        tracing::warn!(pid, error = %e, "cannot change the VMM's CPU priority");
    }
}

impl LaunchSpec {
    pub fn boot_args(&self) -> String {
        format!("{KERNEL_CMDLINE} root=/dev/vda init={GUEST_INIT}")
    }
}

/// One VMM backend.
pub trait Vmm: Send + Sync {
    fn backend(&self) -> Backend;
    /// The image artifact it boots (`kernel`: a bzImage; `vmlinux`: an ELF).
    fn kernel_artifact(&self) -> &'static str;
    /// The root disk's file in the VM's directory.
    fn root_disk_file(&self) -> &'static str;
    /// Whether a grown root disk's filesystem is grown by the guest at its
    /// next boot (else the host grows it before the boot).
    fn guest_grows_root(&self) -> bool;
    /// The owner its TAP must have (a jailed VMM opens it as the jail's user).
    fn tap_owner(&self) -> Option<(u32, u32)> {
        None
    }
    /// The files [`Vmm::save_state`] writes.
    fn state_files(&self) -> &'static [&'static str];
    /// Starts the VMM and configures it until the guest is booting. Blocking.
    /// On error nothing of the process is left running.
    fn launch(&self, spec: &LaunchSpec) -> Result<Child, VmmError>;
    /// Asks the guest to power off. Blocking.
    fn request_poweroff(&self, spec: &LaunchSpec) -> Result<(), VmmError>;
    /// Removes what the backend made for the VM outside its directories
    /// (a jail). Called after the VMM exited; idempotent.
    fn cleanup(&self, _vm_id: &str) {}
    /// How the daemon talks to the VM's guest agent.
    fn agent(&self, spec: &LaunchSpec) -> AgentLink;
    /// The VMM's own log files on the host, for the report when it dies.
    fn logs(&self, spec: &LaunchSpec) -> Vec<PathBuf> {
        vec![spec.stderr_log.clone()]
    }
    /// Pauses the VM and writes its device and memory state into `dir`
    /// ([`Vmm::state_files`]); the VM stays paused, its disks consistent
    /// with the state, until [`Vmm::resume`]. Blocking.
    fn save_state(&self, spec: &LaunchSpec, dir: &Path) -> Result<(), VmmError>;
    /// Resumes a paused VM.
    fn resume(&self, spec: &LaunchSpec) -> Result<(), VmmError>;
    /// Starts a VMM that loads the state in `dir` instead of booting; the
    /// guest runs when this returns. `spec` must have the devices of the
    /// saved VM; its disks, TAP and sockets are this VM's own. Blocking.
    fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<Child, VmmError>;
}

/// The files [`Vmm::save_state`] writes, per backend.
pub fn state_files(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Firecracker => &[FC_STATE, FC_MEMORY],
        Backend::Qemu => &[QEMU_STATE],
    }
}

fn spawn(
    program: &PathBuf,
    args: &[String],
    spec: &LaunchSpec,
    stdout_to_console: bool,
    cwd: Option<&Path>,
) -> Result<Child, VmmError> {
    let io = |path: &PathBuf| {
        let p = path.clone();
        move |source| VmmError::Io { path: p, source }
    };
    std::fs::create_dir_all(&spec.run_dir).map_err(io(&spec.run_dir))?;
    let _ = std::fs::remove_file(&spec.console_log);
    let _ = std::fs::remove_file(super::console::rotated(&spec.console_log));
    let stderr = std::fs::File::create(&spec.stderr_log).map_err(io(&spec.stderr_log))?;
    let stdout = if stdout_to_console {
        let f = super::console::create_for_append(&spec.console_log);
        Stdio::from(f.map_err(io(&spec.console_log))?)
    } else {
        Stdio::null()
    };
    // Background VMMs start under `nice -n 19` (their threads inherit it).
    let mut cmd = if spec.background {
        let nice = crate::tools::require("nice").map_err(|e| VmmError::EarlyExit {
            program: "nice".into(),
            stderr: e.to_string(),
        })?;
        let mut c = Command::new(nice);
        c.args(["-n", "19"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group: signals to bangerd do not reach it, and it
        // outlives the daemon.
        .process_group(0)
        .spawn()
        .map_err(|source| VmmError::Spawn {
            program: program.display().to_string(),
            source,
        })
}
