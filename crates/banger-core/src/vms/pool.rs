//! The warm pool: VMs booted ahead of time, per image and size, so that
//! `vm create` can hand one out at once. A pool VM is an ordinary VM row
//! marked `pool` (hidden from `vm ls`), with its own id, address, MAC, SSH
//! host key and machine-id from the start; claiming it renames it and
//! re-applies the name (hostname, /etc/hosts, the environment, and the
//! config disk for later boots) over its already-open SSH connection. The
//! pool refills itself within `pool.memory_budget`.

use banger_api::{Operation, PoolSetRequest, PoolStatus, VmCreateRequest};
use rusqlite::{params, OptionalExtension};

use super::resolve::{check_cpus, opt_size};
use super::{blocking, VmError, Vms};
use crate::names::validate_name;
use crate::ops::StepSpec;
use crate::shell::quote;
use banger_api::VmState;

/// What a create asks for, resolved; a pool VM fits when all are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub work_bytes: u64,
    pub backend: banger_api::Backend,
}

/// Whether a pool VM is of this pool entry's image and size. Pure.
fn fits(vm: &banger_api::Vm, image: &str, cpus: u32, memory_mib: u32, work: u64) -> bool {
    vm.image == image
        && vm.cpus == cpus
        && vm.memory_mib == memory_mib
        && vm.work_disk_bytes == work
}

/// The guest script that takes on a new name. Pure.
pub fn rename_script(name: &str) -> String {
    format!(
        "set -e; h={h}; hostname \"$h\"; echo \"$h\" > /etc/hostname; \
         printf '127.0.0.1 localhost\\n127.0.1.1 %s\\n::1 localhost ip6-localhost ip6-loopback\\n' \"$h\" > /etc/hosts; \
         if [ -f /etc/environment ]; then sed -i \"s/^BANGER_VM=.*/BANGER_VM=$h/\" /etc/environment; fi",
        h = quote(name)
    )
}

/// A fresh pool VM name. Pure but for randomness.
pub fn pool_vm_name() -> String {
    format!("pool-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl Vms {
    /// Claims a running pool VM that fits, renamed to `req.name`, and
    /// returns the operation that personalizes it; `None` when none fits.
    pub(super) fn claim_pool_vm(
        &self,
        fit: &Fit,
        req: &VmCreateRequest,
        agent: Option<String>,
        egress: Option<String>,
    ) -> Result<Option<Operation>, VmError> {
        let name = req.name.clone();
        let now = chrono::Utc::now().to_rfc3339();
        let claimed: Option<String> =
            self.inner
                .store
                .write(|tx| -> Result<Option<String>, VmError> {
                    if tx
                        .query_row("SELECT 1 FROM vms WHERE name = ?1", [&name], |_| Ok(()))
                        .optional()?
                        .is_some()
                    {
                        return Err(VmError::Exists(name.clone()));
                    }
                    let id: Option<String> = tx
                        .query_row(
                            "SELECT id FROM vms WHERE pool = 1 AND state = 'running' AND \
                            image = ?1 AND cpus = ?2 AND memory_mib = ?3 AND work_bytes = \
                            ?4 AND backend = ?5 ORDER BY created_at LIMIT 1",
                            params![
                                fit.image,
                                fit.cpus,
                                fit.memory_mib,
                                fit.work_bytes as i64,
                                fit.backend.as_str()
                            ],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(id) = &id {
                        tx.execute(
                            "UPDATE vms SET name = ?2, pool = 0, created_at = ?3, started_at \
                            = ?3, agent = ?4, isolated = ?5, egress = ?6 WHERE id = ?1",
                            params![id, name, now, agent, i64::from(req.isolated), egress],
                        )?;
                    }
                    Ok(id)
                })?;
        let Some(id) = claimed else { return Ok(None) };
        let vm = self.get_by_id(&id)?;
        tracing::info!(vm = %vm.name, id = %vm.id, "claimed a warm pool VM");
        let steps = vec![
            StepSpec::new("claim", "Take a VM from the warm pool"),
            StepSpec::new("personalize", "Give it its name (hostname, config disk)"),
        ];
        let this = self.clone();
        let op =
            self.inner
                .ops
                .spawn("vm.create", &vm.name.clone(), steps, move |h| async move {
                    let lock = this.lock_for(&vm.name);
                    let _held = lock.lock().await;
                    // It booted in the background at the lowest priority; it is in
                    // use now.
                    let pid = vm.pid;
                    h.step(
                        "claim",
                        blocking(move || {
                            if let Some(pid) = pid {
                                super::vmm::set_priority(pid, 0);
                            }
                            Ok(())
                        }),
                    )
                    .await?;
                    let r = h
                        .step("personalize", async {
                            // The guest takes the name while the host rewrites the
                            // config disk.
                            let rename = this.rename_guest(&vm);
                            let (t2, v2) = (this.clone(), vm.clone());
                            let host = blocking(move || {
                                t2.write_config_disk(&v2, false)?;
                                if t2.network_active() {
                                    t2.sync_firewall()?;
                                }
                                Ok(())
                            });
                            let (a, b) = tokio::join!(rename, host);
                            a.and(b)
                        })
                        .await;
                    let refill = this.clone();
                    tokio::spawn(async move { refill.refill_pools() });
                    r?;
                    Ok::<_, VmError>(serde_json::json!({
                        "vm": vm.name, "ip": vm.ip, "state": "running", "from_pool": true
                    }))
                })?;
        Ok(Some(op))
    }

    /// A claimed pool VM's guest takes its new name: through its agent
    /// (one line on a channel that is already open), or over SSH for images
    /// built before the agent existed.
    async fn rename_guest(&self, vm: &banger_api::Vm) -> Result<(), VmError> {
        let spec = self.launch_spec(vm)?;
        let link = self.vmm(vm.backend).agent(&spec);
        let name = vm.name.clone();
        let by_agent = blocking(move || {
            super::agent::request(&link, "rename", &[&name], std::time::Duration::from_secs(3))
                .map_err(|e| VmError::Internal {
                    what: "pool VM",
                    reason: e.to_string(),
                })
        })
        .await;
        let Err(e) = by_agent else { return Ok(()) };
        tracing::info!(vm = %vm.name, error = %crate::error::error_chain(&e), "no guest agent; renaming over SSH");
        let out = self
            .guest(vm)?
            .run(&format!("sh -c {}", quote(&rename_script(&vm.name))), None)
            .await?;
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

    /// The memory the pool may use.
    fn pool_budget_mib(&self) -> u64 {
        self.inner.config.pool_memory_budget >> 20
    }

    /// Pool sizes with their ready and booting counts.
    pub fn pool_list(&self) -> Result<banger_api::PoolList, VmError> {
        Ok(self.pool_state()?.0)
    }

    /// The pools, and the pool VMs they were counted from.
    fn pool_state(&self) -> Result<(banger_api::PoolList, Vec<banger_api::Vm>), VmError> {
        let rows: Vec<(String, u32, u32, i64, u32)> = self.inner.store.read(|c| {
            let mut stmt = c.prepare(
                "SELECT image, cpus, memory_mib, work_bytes, size FROM pools \
                ORDER BY image, cpus, memory_mib, work_bytes",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()
        })?;
        let members = self.list_where("pool = 1")?;
        let used: u64 = members.iter().map(|m| u64::from(m.memory_mib)).sum();
        let pools = rows
            .into_iter()
            .map(|(image, cpus, memory_mib, work, size)| {
                let work = u64::try_from(work).unwrap_or(0);
                let of = |st: &[VmState]| {
                    let n = members
                        .iter()
                        .filter(|m| {
                            fits(m, &image, cpus, memory_mib, work) && st.contains(&m.state)
                        })
                        .count();
                    u32::try_from(n).unwrap_or(u32::MAX)
                };
                PoolStatus {
                    ready: of(&[VmState::Running]),
                    booting: of(&[VmState::Creating, VmState::Starting]),
                    image,
                    cpus,
                    memory_mib,
                    work_disk_bytes: work,
                    size,
                }
            })
            .collect();
        let list = banger_api::PoolList {
            pools,
            memory_budget_mib: self.pool_budget_mib(),
            memory_used_mib: used,
        };
        Ok((list, members))
    }

    /// Sets how many VMs of an image and size to keep ready (0 removes the
    /// entry and its pool VMs); refills in the background.
    pub fn pool_set(&self, req: &PoolSetRequest) -> Result<PoolStatus, VmError> {
        let cfg = &self.inner.config;
        let image = req
            .image
            .clone()
            .unwrap_or_else(|| cfg.default_image.clone());
        validate_name("image", &image)?;
        self.inner.images.get(&image)?;
        let cpus = req.cpus.unwrap_or(cfg.cpus);
        check_cpus(cpus)?;
        let size_of = |what: &'static str, s: &Option<String>, default: u64| {
            opt_size(what, s).map(|v| v.unwrap_or(default))
        };
        let memory_mib =
            u32::try_from(size_of("memory", &req.memory, u64::from(cfg.memory_mib) << 20)? >> 20)
                .unwrap_or(u32::MAX);
        if !(128..=65536).contains(&memory_mib) {
            return Err(VmError::Invalid {
                what: "memory",
                reason: format!("{memory_mib} MiB is not in 128 MiB..=64 GiB"),
            });
        }
        let work = size_of("work disk size", &req.work_disk_size, cfg.work_disk_bytes)?;
        if req.size > 64 {
            return Err(VmError::Invalid {
                what: "pool size",
                reason: format!("{} is more than 64", req.size),
            });
        }
        if u64::from(req.size) * u64::from(memory_mib) > self.pool_budget_mib() {
            return Err(VmError::Invalid {
                what: "pool size",
                reason: format!(
                    "{} VMs of {memory_mib} MiB exceed the pool's memory budget of {} MiB (pool.memory_budget)",
                    req.size,
                    self.pool_budget_mib()
                ),
            });
        }
        self.inner.store.write(|tx| -> Result<(), VmError> {
            if req.size == 0 {
                tx.execute(
                    "DELETE FROM pools WHERE image = ?1 AND cpus = ?2 AND memory_mib \
                    = ?3 AND work_bytes = ?4",
                    params![image, cpus, memory_mib, work as i64],
                )?;
            } else {
                tx.execute(
                    "INSERT OR REPLACE INTO pools (image, cpus, memory_mib, \
                    work_bytes, size) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![image, cpus, memory_mib, work as i64, req.size],
                )?;
            }
            Ok(())
        })?;
        tracing::info!(%image, cpus, memory_mib, work, size = req.size, "pool size set");
        self.refill_pools();
        Ok(PoolStatus {
            image,
            cpus,
            memory_mib,
            work_disk_bytes: work,
            size: req.size,
            ready: 0,
            booting: 0,
        })
    }

    /// Starts creates for missing pool VMs (within the budget) and removes
    /// pool VMs no pool wants or that stopped.
    pub fn refill_pools(&self) {
        let (list, members) = match self.pool_state() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pools");
                return;
            }
        };
        // Pool VMs that stopped, or that no pool wants any more.
        for m in &members {
            let wanted = list
                .pools
                .iter()
                .any(|p| fits(m, &p.image, p.cpus, p.memory_mib, p.work_disk_bytes));
            if !wanted || m.state == VmState::Stopped {
                let (this, name) = (self.clone(), m.name.clone());
                tokio::spawn(async move {
                    if let Err(e) = this.remove(&name, true).await {
                        tracing::warn!(vm = %name, error = %e, "cannot remove a pool VM");
                    }
                });
            }
        }
        let mut used = list.memory_used_mib;
        for p in &list.pools {
            let have = p.ready + p.booting;
            for _ in have..p.size {
                if used + u64::from(p.memory_mib) > list.memory_budget_mib {
                    tracing::info!(image = %p.image, "pool refill stops at the memory budget");
                    return;
                }
                used += u64::from(p.memory_mib);
                let req = VmCreateRequest {
                    name: pool_vm_name(),
                    image: Some(p.image.clone()),
                    cpus: Some(p.cpus),
                    memory: Some(format!("{}M", p.memory_mib)),
                    work_disk_size: Some(format!("{}M", p.work_disk_bytes >> 20)),
                    ..VmCreateRequest::default()
                };
                if let Err(e) = self.start_create_checked(req, true) {
                    tracing::warn!(image = %p.image, error = %e, "cannot start a pool VM");
                    return;
                }
            }
        }
    }

    /// After a pool VM booted: open its SSH connection now, so a claim
    /// costs one round trip instead of a handshake.
    pub(super) async fn warm_pool_connection(&self, vm: &banger_api::Vm) {
        let warmed = match self.guest(vm) {
            Ok(g) => g.run("true", None).await.map(|_| ()).map_err(VmError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = warmed {
            tracing::debug!(vm = %vm.name, error = %e, "cannot pre-open the pool VM's SSH connection");
        }
    }

    /// Whether this VM id is an unclaimed pool VM.
    pub(super) fn is_pool(&self, id: &str) -> bool {
        self.inner
            .store
            .read(|c| {
                c.query_row("SELECT pool FROM vms WHERE id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
            })
            .ok()
            .flatten()
            == Some(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_script_sets_the_name_and_survives_hostile_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = rename_script("web-1");
        assert!(s.contains("h=web-1") || s.contains("h='web-1'"), "{s}");
        // The hosts line it writes, run against a scratch copy.
        let script = s
            .replace("hostname \"$h\"; ", "")
            .replace("/etc/", &format!("{}/", dir.path().display()));
        std::fs::write(dir.path().join("environment"), "BANGER_VM=pool-1\nX=1\n").expect("write");
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .status()
            .expect("sh");
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).expect("read"),
            "web-1\n"
        );
        assert!(std::fs::read_to_string(dir.path().join("hosts"))
            .expect("read")
            .contains("127.0.1.1 web-1"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("environment")).expect("read"),
            "BANGER_VM=web-1\nX=1\n"
        );
        assert!(pool_vm_name().starts_with("pool-"));
        assert!(validate_name("VM", &pool_vm_name()).is_ok());
    }
}
