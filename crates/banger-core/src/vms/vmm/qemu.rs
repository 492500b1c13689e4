//! The QEMU backend: the command line (pure, unit-tested) and a minimal QMP
//! client for graceful stop.
//!
//! Machine: q35 with `-cpu max` under TCG (`-M microvm` hangs under TCG),
//! `-cpu host` under KVM; virtio disks and net; serial console to a file the
//! daemon reads for the readiness marker; QMP on a Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::guest::{AGENT_PORT_NAME, GUEST_INIT, KERNEL_CMDLINE};
use crate::shell::quote;

use std::process::Child;
use std::time::Instant;

use banger_api::Backend;

use super::{spawn, state_files, AgentLink, LaunchSpec, Vmm, VmmError};

pub use banger_api::Accel;

/// Everything needed to start one VM under QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    pub vm_id: String,
    pub name: String,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub root_disk: PathBuf,
    pub root_format: &'static str,
    pub config_disk: PathBuf,
    pub work_disk: PathBuf,
    pub tap: String,
    pub mac: String,
    pub console_log: PathBuf,
    pub qmp_socket: PathBuf,
    pub pid_file: PathBuf,
    /// The host side of the guest's virtio-serial port [`AGENT_PORT_NAME`].
    pub agent: AgentChannel,
    /// Load this saved state (a migration stream) instead of booting.
    pub incoming: Option<PathBuf>,
}

/// The host side of the agent's virtio-serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChannel {
    /// A Unix socket QEMU listens on (one daemon connection at a time; the
    /// guest sees the port close when the daemon leaves).
    Socket(PathBuf),
    /// FIFOs `<this>.in` and `<this>.out`: how banger gave the channel to a
    /// guest before banger-agent, kept for restoring such guests' snapshots
    /// (their shell agent expects a port that never closes).
    Pipe(PathBuf),
}

/// Written into a snapshot of a guest whose channel is a socket.
pub const SOCKET_MARKER: &str = "agent-socket";

/// The channel of a VM started from `incoming` (a saved state) or booted:
/// a pipe only for states saved without [`SOCKET_MARKER`] beside them. Pure
/// but for the marker's existence.
pub fn agent_channel(run_dir: &Path, incoming: Option<&Path>) -> AgentChannel {
    let legacy = incoming
        .and_then(|s| s.parent())
        .is_some_and(|dir| !dir.join(SOCKET_MARKER).exists());
    if legacy {
        AgentChannel::Pipe(run_dir.join("agent"))
    } else {
        AgentChannel::Socket(run_dir.join("agent.sock"))
    }
}

/// The argv after the program name. Pure.
pub fn qemu_args(s: &QemuSpec) -> Vec<String> {
    let mut a = machine_args(s);
    a.extend(device_args(s));
    a
}

/// The TCG translation cache, MiB: what a guest's QEMU may spend on
/// translated code (measured: see docs/vms.md).
pub const TCG_TB_MIB: u32 = 128;

/// The machine, its control and log files, and the kernel. Pure.
fn machine_args(s: &QemuSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |x: &str| a.push(x.to_string());
    push("-name");
    push(&format!("banger-{},process=banger-vm-{}", s.name, s.vm_id));
    push("-accel");
    push(&match s.accel {
        Accel::Kvm => "kvm".to_string(),
        // QEMU's translation cache defaults to 1 GiB and fills as the guest
        // runs new code (each `vm ssh` grew QEMU by ~30 MB): bounded.
        Accel::Tcg => format!("tcg,tb-size={TCG_TB_MIB}"),
    });
    push("-M");
    push("q35");
    push("-cpu");
    push(match s.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    });
    push("-m");
    push(&s.memory_mib.to_string());
    push("-smp");
    push(&s.cpus.to_string());
    for x in [
        "-display",
        "none",
        "-no-reboot",
        "-nodefaults",
        "-no-user-config",
    ] {
        push(x);
    }
    // The console is appended to (O_APPEND), so the console keeper can
    // truncate it under QEMU (vms/console.rs).
    push("-chardev");
    push(&format!(
        "file,id=console,path={},append=on",
        s.console_log.display().to_string().replace(',', ",,")
    ));
    push("-serial");
    push("chardev:console");
    push("-qmp");
    push(&format!(
        "unix:{},server=on,wait=off",
        s.qmp_socket.display()
    ));
    push("-pidfile");
    push(&s.pid_file.display().to_string());
    push("-kernel");
    push(&s.kernel.display().to_string());
    if let Some(i) = &s.initrd {
        push("-initrd");
        push(&i.display().to_string());
    }
    push("-append");
    push(&format!("{KERNEL_CMDLINE} root=/dev/vda init={GUEST_INIT}"));
    a
}

/// The disks, the network, entropy, the agent's channel and, for a
/// restore, the saved state. Pure.
fn device_args(s: &QemuSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |x: &str| a.push(x.to_string());
    push("-drive");
    push(&format!(
        "file={},if=virtio,format={},cache=unsafe,discard=unmap",
        s.root_disk.display(),
        s.root_format
    ));
    push("-drive");
    push(&format!(
        "file={},if=virtio,format=raw,readonly=on",
        s.config_disk.display()
    ));
    push("-drive");
    push(&format!(
        "file={},if=virtio,format=raw,cache=unsafe,discard=unmap",
        s.work_disk.display()
    ));
    push("-netdev");
    push(&format!(
        "tap,id=n0,ifname={},script=no,downscript=no",
        s.tap
    ));
    push("-device");
    push(&format!("virtio-net-pci,netdev=n0,mac={}", s.mac));
    push("-device");
    push("virtio-rng-pci");
    // The guest agent's channel. Always present: a restore needs the same
    // devices as the VM its state was saved from.
    push("-chardev");
    push(&match &s.agent {
        AgentChannel::Socket(p) => {
            format!("socket,id=agent,path={},server=on,wait=off", p.display())
        }
        AgentChannel::Pipe(base) => format!("pipe,id=agent,path={}", base.display()),
    });
    push("-device");
    push("virtio-serial-pci,id=vser0");
    push("-device");
    push(&format!(
        "virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}"
    ));
    if let Some(state) = &s.incoming {
        push("-incoming");
        push(&format!("exec:cat {}", quote(&state.display().to_string())));
    }
    a
}

/// The QMP `migrate` URI that writes the state to `path`. Pure.
pub fn save_uri(path: &Path) -> String {
    format!("exec:cat > {}", quote(&path.display().to_string()))
}

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("Cannot talk to QMP at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP answered with an error: {0}")]
    Command(String),
}

/// A QMP session: one connection, capabilities negotiated once.
pub struct Qmp {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub fn connect(socket: &Path) -> Result<Qmp, QmpError> {
        let io = |source| QmpError::Io {
            path: socket.into(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io)?; // greeting
        let mut q = Qmp {
            path: socket.into(),
            writer,
            reader,
        };
        q.call("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    /// Runs one command; events in between are skipped.
    pub fn call(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, QmpError> {
        let path = self.path.clone();
        let io = |source| QmpError::Io { path, source };
        let cmd = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{cmd}").map_err(io.clone())?;
        loop {
            let mut l = String::new();
            if self.reader.read_line(&mut l).map_err(io.clone())? == 0 {
                return Err(QmpError::Command("connection closed".into()));
            }
            let v: serde_json::Value = serde_json::from_str(&l)
                .map_err(|e| QmpError::Command(format!("bad reply {l:?}: {e}")))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command(e.to_string()));
            }
            // An event: keep reading.
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, ...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.call("query-status", serde_json::json!({}))?;
        r.get("status")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .ok_or_else(|| QmpError::Command(format!("query-status answered {r}")))
    }
}

/// Runs one QMP command on a new session.
pub fn qmp(
    socket: &Path,
    command: &str,
    arguments: serde_json::Value,
) -> Result<serde_json::Value, QmpError> {
    Qmp::connect(socket)?.call(command, arguments)
}

/// Pauses the VM and writes its device and memory state to `path` (a
/// migration to a file); the VM stays paused (resume with `cont`). Its
/// disks are flushed and consistent with the state when this returns.
pub fn save_state(socket: &Path, path: &Path, timeout: Duration) -> Result<(), QmpError> {
    let mut q = Qmp::connect(socket)?;
    q.call("stop", serde_json::json!({}))?;
    // The default bandwidth cap (128 MiB/s) is for live migration over a
    // network; a file takes what the disk can.
    q.call(
        "migrate-set-parameters",
        serde_json::json!({"max-bandwidth": 16u64 << 30}),
    )?;
    q.call("migrate", serde_json::json!({"uri": save_uri(path)}))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let r = q.call("query-migrate", serde_json::json!({}))?;
        match r.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(QmpError::Command(format!(
                    "saving the state failed: {}",
                    r.get("error-desc")
                        .and_then(|e| e.as_str())
                        .unwrap_or("no reason given")
                )))
            }
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            let _ = q.call("migrate_cancel", serde_json::json!({}));
            return Err(QmpError::Command(format!(
                "saving the state did not finish within {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resumes a paused VM.
pub fn cont(socket: &Path) -> Result<(), QmpError> {
    qmp(socket, "cont", serde_json::json!({})).map(|_| ())
}

/// Asks the guest to power off: Ctrl-Alt-Del (banger's guest init powers off
/// on it), plus an ACPI power-button press for systemd guests.
pub fn request_poweroff(socket: &Path) -> Result<(), QmpError> {
    let keys = serde_json::json!({"keys": [
        {"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}
    ]});
    qmp(socket, "send-key", keys)?;
    let _ = qmp(socket, "system_powerdown", serde_json::json!({}));
    Ok(())
}

/// QEMU's saved state (a migration stream).
pub const QEMU_STATE: &str = "state.bin";

pub struct QemuVmm {
    pub binary: PathBuf,
}

impl QemuVmm {
    fn qmp(spec: &LaunchSpec) -> PathBuf {
        spec.run_dir.join("qmp.sock")
    }
}

impl QemuVmm {
    fn qemu_spec(spec: &LaunchSpec, incoming: Option<PathBuf>) -> QemuSpec {
        QemuSpec {
            vm_id: spec.vm_id.clone(),
            name: spec.name.clone(),
            accel: spec.accel,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            root_disk: spec.root_disk.clone(),
            root_format: "qcow2",
            config_disk: spec.config_disk.clone(),
            work_disk: spec.work_disk.clone(),
            tap: spec.tap.clone(),
            mac: spec.mac.clone(),
            console_log: spec.console_log.clone(),
            qmp_socket: QemuVmm::qmp(spec),
            pid_file: spec.run_dir.join("qemu.pid"),
            agent: agent_channel(&spec.run_dir, incoming.as_deref()),
            incoming,
        }
    }

    fn start(&self, spec: &LaunchSpec, incoming: Option<PathBuf>) -> Result<Child, VmmError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(|source| VmmError::Io {
            path: spec.run_dir.clone(),
            source,
        })?;
        let qs = QemuVmm::qemu_spec(spec, incoming);
        let base = spec.run_dir.join("agent");
        let (fifo_in, fifo_out) = crate::guest_agent::link::pipe_paths(&base);
        match &qs.agent {
            AgentChannel::Pipe(b) => crate::guest_agent::legacy::make_pipe(b)?,
            AgentChannel::Socket(p) => {
                for stale in [p, &fifo_in, &fifo_out] {
                    let _ = std::fs::remove_file(stale);
                }
            }
        }
        let _ = std::fs::remove_file(QemuVmm::qmp(spec));
        spawn(&self.binary, &qemu_args(&qs), spec, false, None)
    }
}

impl Vmm for QemuVmm {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }
    fn kernel_artifact(&self) -> &'static str {
        "kernel"
    }
    fn root_disk_file(&self) -> &'static str {
        "root.qcow2"
    }
    fn guest_grows_root(&self) -> bool {
        true
    }
    fn state_files(&self) -> &'static [&'static str] {
        state_files(Backend::Qemu)
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<Child, VmmError> {
        self.start(spec, None)
    }

    fn request_poweroff(&self, spec: &LaunchSpec) -> Result<(), VmmError> {
        Ok(request_poweroff(&QemuVmm::qmp(spec))?)
    }

    fn agent(&self, spec: &LaunchSpec) -> AgentLink {
        // The FIFOs exist only for a VM started with them.
        let base = spec.run_dir.join("agent");
        if crate::guest_agent::link::pipe_paths(&base).0.exists() {
            AgentLink::Pipe(base)
        } else {
            AgentLink::Socket(spec.run_dir.join("agent.sock"))
        }
    }

    fn save_state(&self, spec: &LaunchSpec, dir: &Path) -> Result<(), VmmError> {
        save_state(
            &QemuVmm::qmp(spec),
            &dir.join(QEMU_STATE),
            Duration::from_secs(300),
        )?;
        // Restored, the guest expects the channel it had.
        if let AgentLink::Socket(_) = self.agent(spec) {
            let marker = dir.join(SOCKET_MARKER);
            std::fs::write(&marker, b"1\n").map_err(|source| VmmError::Io {
                path: marker,
                source,
            })?;
        }
        Ok(())
    }

    fn resume(&self, spec: &LaunchSpec) -> Result<(), VmmError> {
        Ok(cont(&QemuVmm::qmp(spec))?)
    }

    fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<Child, VmmError> {
        let mut child = self.start(spec, Some(dir.join(QEMU_STATE)))?;
        let qmp = QemuVmm::qmp(spec);
        let result = (|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            // One QMP session from when QEMU listens until the state is loaded.
            let mut session: Option<Qmp> = None;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(VmmError::EarlyExit {
                        program: "qemu".into(),
                        stderr: format!(
                            "{status} while loading the saved state: {}",
                            std::fs::read_to_string(&spec.stderr_log)
                                .unwrap_or_default()
                                .trim()
                        ),
                    });
                }
                if session.is_none() {
                    // Until QEMU listens: not yet.
                    session = Qmp::connect(&qmp).ok();
                }
                if let Some(q) = session.as_mut() {
                    match q.status() {
                        Ok(s) if s == "paused" || s == "postmigrate" => {
                            q.call("cont", serde_json::json!({}))?;
                            return Ok(());
                        }
                        Ok(s) if s == "running" => return Ok(()),
                        // Still loading.
                        Ok(_) => {}
                        Err(_) => session = None,
                    }
                }
                if Instant::now() > deadline {
                    return Err(VmmError::Unsupported(
                        "QEMU did not finish loading the saved state within 120 s".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })();
        match result {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> QemuSpec {
        QemuSpec {
            vm_id: "abc123".into(),
            name: "dev".into(),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            kernel: "/i/vmlinuz".into(),
            initrd: Some("/i/initrd.img".into()),
            root_disk: "/v/root.qcow2".into(),
            root_format: "qcow2",
            config_disk: "/v/config.ext4".into(),
            work_disk: "/v/work.ext4".into(),
            tap: "bg-abc123".into(),
            mac: "52:54:00:00:00:01".into(),
            console_log: "/v/console.log".into(),
            qmp_socket: "/r/qmp.sock".into(),
            pid_file: "/r/qemu.pid".into(),
            agent: AgentChannel::Socket("/r/agent.sock".into()),
            incoming: None,
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_command_line() {
        let a = qemu_args(&spec());
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=128"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert_eq!(after(&a, "-M"), ["q35"]);
        assert_eq!(after(&a, "-name"), ["banger-dev,process=banger-vm-abc123"]);
        let drives = after(&a, "-drive");
        assert_eq!(drives.len(), 3);
        assert!(drives[0].starts_with("file=/v/root.qcow2,if=virtio,format=qcow2"));
        assert!(drives[1].contains("readonly=on"));
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=n0,ifname=bg-abc123,script=no,downscript=no"]
        );
        assert!(after(&a, "-append")[0].contains("init=/usr/lib/banger/init"));
        assert_eq!(after(&a, "-serial"), ["chardev:console"]);
        assert_eq!(
            after(&a, "-chardev"),
            [
                "file,id=console,path=/v/console.log,append=on",
                "socket,id=agent,path=/r/agent.sock,server=on,wait=off"
            ]
        );
        assert!(after(&a, "-device")
            .contains(&"virtserialport,bus=vser0.0,chardev=agent,name=org.banger.agent"));
        assert!(!a.iter().any(|x| x == "-incoming"));
    }

    #[test]
    fn a_restore_loads_the_state_with_the_same_devices() {
        let boot = qemu_args(&spec());
        let restore = qemu_args(&QemuSpec {
            incoming: Some("/s/it's/state.bin".into()),
            ..spec()
        });
        assert_eq!(
            after(&restore, "-incoming"),
            ["exec:cat '/s/it'\\''s/state.bin'"]
        );
        assert_eq!(after(&boot, "-device"), after(&restore, "-device"));
        assert_eq!(
            save_uri(Path::new("/s/a b/state.bin")),
            "exec:cat > '/s/a b/state.bin'"
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let a = qemu_args(&QemuSpec {
            accel: Accel::Kvm,
            initrd: None,
            ..spec()
        });
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert!(!a.iter().any(|x| x == "-initrd"));
    }
}
