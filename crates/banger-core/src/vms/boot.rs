//! Booting a VM (network -> spawn -> boot), watching its VMM, `vm.start`.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use banger_api::{Backend, Operation, Vm, VmState};
use rusqlite::{params, OptionalExtension};

use super::blocking;
use crate::network;
use crate::ops::{OpHandle, StepSpec};
use crate::tools::{self};

use super::error::VmError;
use super::procs::{kill_vmm, pid_alive};
use super::{ready, vmm, Vms, BOOT_TIMEOUT, POLL};

impl Vms {
    /// network -> spawn -> boot; leaves the VM running or returns an error
    /// (the caller rolls back or marks it stopped).
    /// `restore`: a snapshot's directory to resume from instead of booting
    /// (then the guest agent re-applies the VM's identity).
    pub(super) async fn boot(
        &self,
        h: &OpHandle,
        vm: &Vm,
        restore: Option<PathBuf>,
    ) -> Result<f64, VmError> {
        h.step("network", self.attach_network(vm)).await?;
        let spec = self.launch_spec(vm)?;
        self.setup_dm_root(vm).await?;
        let started = Instant::now();
        let pid = h
            .step("spawn", self.spawn_vmm(h, vm, &spec, restore.clone()))
            .await?;
        let vmm = self.vmm(vm.backend);
        if restore.is_some() {
            // A restored guest is up already: it takes its own identity.
            h.step("boot", self.agent_reload(vm)).await?;
        } else {
            let console = self.paths(&vm.id).console();
            self.wait_ready(h, pid, &console, &vmm.logs(&spec)).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        self.set_state(&vm.id, VmState::Running, Some(pid), None)?;
        if restore.is_none() {
            // In the background: the VM is usable over SSH meanwhile, and a
            // guest of an older image may take a while to move onto
            // banger-agent.
            let (this, id) = (self.clone(), vm.id.clone());
            tokio::spawn(async move {
                if let Ok(vm) = this.get_by_id(&id) {
                    this.settle_agent(&vm).await;
                }
            });
        }
        Ok(secs)
    }

    /// The `network` step: the bridge, a TAP for the VM (from the pool, or
    /// a new one; a jailed Firecracker opens its TAP as the jail's user, so
    /// it needs one of its own) recorded in its row, and the firewall.
    fn attach_network(&self, vm: &Vm) -> impl Future<Output = Result<(), VmError>> {
        let vm_ip = vm.ip.clone();
        let tap_owner = self.vmm(vm.backend).tap_owner();
        let (bridge, subnet) = (self.inner.config.bridge.clone(), self.inner.config.subnet);
        let this = self.clone();
        let id = vm.id.clone();
        blocking(move || {
            this.own_network()?;
            network::ensure_bridge(&bridge, &subnet)?;
            network::flush_neighbor(&vm_ip, &bridge);
            let pooled = match tap_owner {
                None => this.inner.pool.take(),
                Some(_) => None,
            };
            crate::testhold::point_blocking("network.tap");
            let tap = match pooled {
                Some(t) => t,
                None => {
                    let t = network::tap_name(&id);
                    network::create_tap(&t, &bridge, tap_owner)?;
                    t
                }
            };
            this.inner.store.write(|tx| -> Result<(), VmError> {
                tx.execute("UPDATE vms SET tap = ?2 WHERE id = ?1", params![id, tap])?;
                Ok(())
            })?;
            this.sync_firewall()?;
            this.inner.net_up.send_replace(true);
            this.inner.pool.refill_later();
            Ok(())
        })
    }

    /// The device-mapper snapshot root of a Firecracker VM on a host
    /// without reflinks (the only VMs with a `root.cow`).
    async fn setup_dm_root(&self, vm: &Vm) -> Result<(), VmError> {
        let p = self.paths(&vm.id);
        if !p.root_cow().exists() {
            return Ok(());
        }
        let image = self.image_of(vm)?;
        let base = self
            .inner
            .images
            .artifact_path(&image, "rootfs")
            .ok_or_else(|| VmError::Internal {
                what: "image",
                reason: "it has no root filesystem".into(),
            })?;
        let (id, cow) = (vm.id.clone(), p.root_cow());
        blocking(move || {
            crate::storage::dm::setup(&id, &base, &cow)?;
            Ok(())
        })
        .await
    }

    /// The `spawn` step: the VMM launched (or restored from `restore`), its
    /// pid recorded (a `creating` row stays `creating`, rolled back after
    /// a crash, until booted), and its exit watched.
    async fn spawn_vmm(
        &self,
        h: &OpHandle,
        vm: &Vm,
        spec: &vmm::LaunchSpec,
        restore: Option<PathBuf>,
    ) -> Result<u32, VmError> {
        let (vmm, spec2) = (self.vmm(vm.backend), spec.clone());
        let child = blocking(move || {
            crate::testhold::point_blocking("vmm.launch");
            match &restore {
                Some(dir) => vmm.restore(&spec2, dir),
                None => vmm.launch(&spec2),
            }
            .map_err(VmError::from)
        })
        .await?;
        let pid = child.id();
        if vm.state == VmState::Creating {
            let id = vm.id.clone();
            self.inner.store.write(|tx| {
                tx.execute("UPDATE vms SET pid = ?2 WHERE id = ?1", params![id, pid])
                    .map(|_| ())
            })?;
        } else {
            self.set_state(&vm.id, VmState::Starting, Some(pid), None)?;
        }
        self.watch_child(vm.id.clone(), child);
        let what = format!("{} pid {pid} ({} accel)", vm.backend, vm.accel);
        h.message("spawn", what);
        Ok(pid)
    }

    /// The `boot` step of a cold boot: until the guest's readiness marker
    /// is on its console (or its VMM exits, or the boot times out).
    pub(super) async fn wait_ready(
        &self,
        h: &OpHandle,
        pid: u32,
        console: &std::path::Path,
        logs: &[PathBuf],
    ) -> Result<(), VmError> {
        h.step("boot", async {
            let deadline = Instant::now() + BOOT_TIMEOUT;
            let mut scan = ready::ReadyScan::default();
            loop {
                if scan.poll(console) {
                    return Ok(());
                }
                if !pid_alive(pid) {
                    return Err(VmError::VmmDied {
                        report: ready::tail_report(console, logs),
                    });
                }
                if Instant::now() > deadline {
                    return Err(VmError::BootTimeout {
                        secs: BOOT_TIMEOUT.as_secs(),
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await
    }

    /// Reaps our VMM child and records an unexpected exit. The wait holds
    /// no thread (a blocked `wait4` kept a SIGTERMed daemon alive, since
    /// the runtime waits for its blocking threads and VMMs outlive it).
    pub(super) fn watch_child(&self, id: String, mut child: std::process::Child) {
        let this = self.clone();
        tokio::spawn(async move {
            let status = tools::wait_exit(&mut child).await;
            let pid = child.id();
            // on_exit blocks on the per-VM lock: not on an async thread.
            let _ = tokio::task::spawn_blocking(move || this.on_exit(&id, pid, status)).await;
        });
    }

    /// Polls an adopted VMM (not our child) until it exits.
    pub(super) fn watch_adopted(&self, id: String, pid: u32) {
        let this = self.clone();
        tokio::spawn(async move {
            while pid_alive(pid) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // on_exit blocks on the per-VM lock: not on an async thread.
            let _ =
                tokio::task::spawn_blocking(move || this.on_exit(&id, pid, "exited".into())).await;
        });
    }

    /// Records that VMM `pid` of VM `id` exited. Blocking: it takes the
    /// per-VM lock, so it cannot interleave with a stop or start of the same
    /// VM (a late call for an old process then sees another pid and does
    /// nothing). Call from a blocking thread.
    pub(super) fn on_exit(&self, id: &str, pid: u32, status: String) {
        let name: Option<String> = self
            .inner
            .store
            .read(|c| {
                c.query_row("SELECT name FROM vms WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
            })
            .ok()
            .flatten();
        let Some(name) = name else { return };
        let lock = self.lock_for(&name);
        let _held = lock.blocking_lock();
        let row: Option<(String, Option<i64>, String)> = self
            .inner
            .store
            .read(|c| {
                c.query_row("SELECT state, pid, tap FROM vms WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .ok()
            .flatten();
        let Some((state, cur_pid, tap)) = row else {
            return;
        };
        if cur_pid != Some(i64::from(pid)) {
            return;
        }
        let reason = if state == "stopping" {
            "stopped by user".to_string()
        } else {
            format!("VMM exited ({status})")
        };
        if state != "creating" {
            let _ = self.set_state(id, VmState::Stopped, None, Some(&reason));
        }
        network::delete_tap(&tap);
        crate::storage::dm::teardown(id);
        self.vmm(Backend::Firecracker).cleanup(id);
        self.paths(id).remove_sockets();
        self.forget_agent(id);
        tracing::info!(vm = id, pid, reason, "VMM exited");
    }

    pub(super) fn launch_spec(&self, vm: &Vm) -> Result<vmm::LaunchSpec, VmError> {
        let p = self.paths(&vm.id);
        let image = self.image_of(vm)?;
        let vmm = self.vmm(vm.backend);
        let kernel_kind = vmm.kernel_artifact();
        let kernel = self
            .inner
            .images
            .artifact_path(&image, kernel_kind)
            .ok_or_else(|| VmError::Internal {
                what: "image",
                reason: format!("image {:?} has no {kernel_kind}", image.name),
            })?;
        Ok(vmm::LaunchSpec {
            vm_id: vm.id.clone(),
            name: vm.name.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            accel: vm.accel,
            kernel,
            initrd: self.inner.images.artifact_path(&image, "initrd"),
            root_disk: if p.root_cow().exists() {
                crate::storage::dm::device_path(&vm.id)
            } else {
                p.dir.join(vmm.root_disk_file())
            },
            config_disk: p.config(),
            work_disk: p.work(),
            tap: self.tap_of(&vm.id),
            mac: vm.mac.clone(),
            console_log: p.console(),
            stderr_log: p.dir.join("vmm.stderr"),
            run_dir: p.run.clone(),
            background: self.is_pool(&vm.id),
        })
    }

    /// `vm.start` of a stopped VM.
    pub fn start_start(&self, name: &str) -> Result<Operation, VmError> {
        let vm = self.get(name)?;
        if vm.state != VmState::Stopped {
            return Err(VmError::WrongState {
                name: name.into(),
                state: vm.state.as_str(),
                what: "only a stopped VM can be started",
            });
        }
        let steps = vec![
            StepSpec::new("network", "Set up bridge and TAP"),
            StepSpec::new("spawn", "Start the VMM"),
            StepSpec::new("boot", "Wait for the guest (sshd ready)"),
        ];
        let this = self.clone();
        Ok(self
            .inner
            .ops
            .spawn("vm.start", name, steps, move |h| async move {
                let lock = this.lock_for(&vm.name);
                let _held = lock.lock().await;
                let cur = this.get(&vm.name)?;
                if cur.state != VmState::Stopped {
                    return Err(VmError::WrongState {
                        name: vm.name.clone(),
                        state: cur.state.as_str(),
                        what: "only a stopped VM can be started",
                    });
                }
                // The daemon's current guest agent and script for this boot.
                let (t2, c2) = (this.clone(), cur.clone());
                blocking(move || t2.write_config_disk(&c2).map(|_| ())).await?;
                match this.boot(&h, &cur, None).await {
                    Ok(t) => Ok(
                        serde_json::json!({ "vm": vm.name, "state": "running", "boot_seconds": t }),
                    ),
                    Err(e) => {
                        let pid = this.get(&vm.name).ok().and_then(|v| v.pid);
                        let (t2, id) = (this.clone(), vm.id.clone());
                        let _ = blocking(move || {
                            if let Some(pid) = pid {
                                kill_vmm(pid, &id);
                            }
                            // A VMM launched but not recorded (cancelled).
                            super::procs::kill_vmms_of(&id);
                            network::delete_tap(&t2.tap_of(&id));
                            crate::storage::dm::teardown(&id);
                            t2.vmm(Backend::Firecracker).cleanup(&id);
                            t2.paths(&id).remove_sockets();
                            Ok(())
                        })
                        .await;
                        let _ = this.set_state(
                            &vm.id,
                            VmState::Stopped,
                            None,
                            Some(&format!("start failed: {}", crate::error::error_chain(&e))),
                        );
                        Err(e)
                    }
                }
            })?)
    }
}

/// Fills `buf` from the kernel's random source.
pub(super) fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}
