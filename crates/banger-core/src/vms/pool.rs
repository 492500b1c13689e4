//! The warm pool: VMs booted ahead of time, per image and size, so that
//! `vm create` can hand one out at once. A pool VM is an ordinary VM row
//! marked `pool` (hidden from `vm ls`), with its own id, address, MAC, SSH
//! host key and machine-id from the start; claiming it renames it and
//! re-applies the name (hostname, /etc/hosts, the environment, and the
//! config disk for later boots) over its already-open SSH connection. The
//! pool refills itself within `pool.memory_budget`.

use banger_api::{Operation, PoolSetRequest, PoolStatus, VmCreateRequest, VmResources};
use rusqlite::{params, OptionalExtension};

use super::resolve::VmSpec;
use super::{blocking, VmError, Vms};
use crate::names::validate_name;
use crate::ops::{OpHandle, StepSpec};
use crate::resources::{Floor, ResourceError, Resources};
use crate::shell::quote;
use banger_api::VmState;

/// The warm pool's verbs (`pool ls|set`, the refill after a daemon
/// start): what the daemon's handlers call. Claims happen inside
/// [`Vms::start_create`]. Cheap to clone.
#[derive(Clone)]
pub struct WarmPool {
    vms: Vms,
}

impl WarmPool {
    pub fn new(vms: Vms) -> WarmPool {
        WarmPool { vms }
    }

    /// Pool sizes with their ready and booting counts.
    pub fn list(&self) -> Result<banger_api::PoolList, VmError> {
        self.vms.pool_list()
    }

    /// Sets how many VMs of an image and size to keep ready (0 removes the
    /// entry and its pool VMs); refills in the background.
    pub fn set(&self, req: &PoolSetRequest) -> Result<PoolStatus, VmError> {
        self.vms.pool_set(req)
    }

    /// Starts creates for missing pool VMs and removes unwanted ones.
    pub fn refill(&self) {
        self.vms.refill_pools()
    }
}

/// One pool entry's image and size, as stored in `pools`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    image: String,
    cpus: u32,
    memory_mib: u32,
    work_bytes: u64,
}

impl Entry {
    /// Whether a pool VM is of this entry's image and size. Pure.
    fn fits(&self, vm: &banger_api::Vm) -> bool {
        vm.image == self.image
            && vm.cpus == self.cpus
            && vm.memory_mib == self.memory_mib
            && vm.work_disk_bytes == self.work_bytes
    }
}

/// The entry a `pool set` acts on: the resources it gives over a base,
/// where the base is the image's one existing entry when it has exactly
/// one that agrees with every resource given (so `pool set --size 0`
/// after `pool set --size 2 --cpus 1` empties that pool), else the
/// daemon's defaults. Two or more that agree: the request is ambiguous.
/// Pure.
fn pool_entry(
    image: &str,
    req: &VmResources,
    defaults: Resources,
    existing: &[Entry],
) -> Result<Entry, VmError> {
    if req.disk_size.is_some() {
        return Err(ResourceError::NotHere {
            what: "disk size",
            why: "pool VMs have the image's root disk",
        }
        .into());
    }
    let floor = Floor::New { image_root: 0 };
    let given = defaults.update(req, floor)?;
    let agrees = |e: &&Entry| {
        e.image == image
            && (req.cpus.is_none() || e.cpus == given.cpus)
            && (req.memory.is_none() || e.memory_mib == given.memory_mib)
            && (req.work_disk_size.is_none() || e.work_bytes == given.work_bytes)
    };
    let matching: Vec<&Entry> = existing.iter().filter(agrees).collect();
    let r = match matching.as_slice() {
        [] => given,
        [one] => Resources {
            cpus: one.cpus,
            memory_mib: one.memory_mib,
            work_bytes: one.work_bytes,
            root_bytes: None,
        }
        .update(req, floor)?,
        many => {
            let sizes: Vec<String> = many
                .iter()
                .map(|e| format!("--cpus {} --memory {}M", e.cpus, e.memory_mib))
                .collect();
            return Err(VmError::Invalid {
                what: "pool",
                reason: format!(
                    "image {image:?} has {} pool entries ({}); give --cpus, --memory or \
                     --work-disk-size to say which",
                    many.len(),
                    sizes.join("; ")
                ),
            });
        }
    };
    Ok(Entry {
        image: image.to_string(),
        cpus: r.cpus,
        memory_mib: r.memory_mib,
        work_bytes: r.work_bytes,
    })
}

/// A pool of `size` VMs of `memory_mib` each: at most 64, within the
/// pool's memory budget. Pure.
fn check_pool_size(size: u32, memory_mib: u32, budget_mib: u64) -> Result<(), VmError> {
    if size > 64 {
        return Err(VmError::Invalid {
            what: "pool size",
            reason: format!("{size} is more than 64"),
        });
    }
    if u64::from(size) * u64::from(memory_mib) > budget_mib {
        return Err(VmError::Invalid {
            what: "pool size",
            reason: format!(
                "{size} VMs of {memory_mib} MiB exceed the pool's memory budget of \
                 {budget_mib} MiB (pool.memory_budget)"
            ),
        });
    }
    Ok(())
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
    /// Claims a running pool VM that fits the spec, renamed to the spec's
    /// name, and returns the operation that personalizes it; `None` when
    /// none fits.
    pub(super) fn claim_pool_vm(&self, spec: &VmSpec) -> Result<Option<Operation>, VmError> {
        let Some(id) = self.claim_row(spec)? else {
            return Ok(None);
        };
        let vm = self.get_by_id(&id)?;
        tracing::info!(vm = %vm.name, id = %vm.id, "claimed a warm pool VM");
        let steps = vec![
            StepSpec::new("claim", "Take a VM from the warm pool"),
            StepSpec::new("personalize", "Give it its name (hostname, config disk)"),
        ];
        let this = self.clone();
        let target = vm.name.clone();
        let op = self
            .inner
            .ops
            .spawn("vm.create", &target, steps, move |h| async move {
                let lock = this.lock_for(&vm.name);
                let _held = lock.lock().await;
                let r = this.personalize(&h, &vm).await;
                let refill = this.clone();
                tokio::spawn(async move { refill.refill_pools() });
                r?;
                Ok::<_, VmError>(serde_json::json!({
                    "vm": vm.name, "ip": vm.ip, "state": "running", "from_pool": true
                }))
            })?;
        Ok(Some(op))
    }

    /// In one transaction: the name is free, a running pool VM of the
    /// spec's image, size and backend exists; it takes the name and the
    /// spec's settings. Returns its id.
    fn claim_row(&self, spec: &VmSpec) -> Result<Option<String>, VmError> {
        let now = chrono::Utc::now().to_rfc3339();
        let r = &spec.resources;
        self.inner
            .store
            .write(|tx| -> Result<Option<String>, VmError> {
                let taken = tx
                    .query_row(
                        "SELECT 1 FROM vms WHERE name = ?1",
                        [&spec.name],
                        |_| Ok(()),
                    )
                    .optional()?;
                if taken.is_some() {
                    return Err(VmError::Exists(spec.name.clone()));
                }
                let id: Option<String> = tx
                    .query_row(
                        "SELECT id FROM vms WHERE pool = 1 AND state = 'running' AND \
                        image = ?1 AND cpus = ?2 AND memory_mib = ?3 AND work_bytes = \
                        ?4 AND backend = ?5 ORDER BY created_at LIMIT 1",
                        params![
                            spec.image.name,
                            r.cpus,
                            r.memory_mib,
                            r.work_bytes as i64,
                            spec.backend.as_str()
                        ],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = &id {
                    tx.execute(
                        "UPDATE vms SET name = ?2, pool = 0, created_at = ?3, started_at \
                        = ?3, agent = ?4, isolated = ?5, egress = ?6 WHERE id = ?1",
                        params![
                            id,
                            spec.name,
                            now,
                            spec.agent,
                            i64::from(spec.isolated),
                            spec.egress
                        ],
                    )?;
                }
                Ok(id)
            })
    }

    /// The steps of a claim: the VM, booted in the background at the
    /// lowest priority, is lifted to normal priority; the guest takes its
    /// name while the host rewrites the config disk and the firewall.
    async fn personalize(&self, h: &OpHandle, vm: &banger_api::Vm) -> Result<(), VmError> {
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
        h.step("personalize", async {
            let rename = self.agent_rename(vm);
            let (this, v2) = (self.clone(), vm.clone());
            let host = blocking(move || {
                this.write_config_disk(&v2)?;
                if this.network_active() {
                    this.sync_firewall()?;
                }
                Ok(())
            });
            let (a, b) = tokio::join!(rename, host);
            a.and(b)
        })
        .await
    }

    /// The memory the pool may use.
    fn pool_budget_mib(&self) -> u64 {
        self.inner.config.pool_memory_budget >> 20
    }

    /// Pool sizes with their ready and booting counts.
    pub(super) fn pool_list(&self) -> Result<banger_api::PoolList, VmError> {
        Ok(self.pool_state()?.0)
    }

    /// The pool entries with their wanted sizes.
    fn pool_entries(&self) -> Result<Vec<(Entry, u32)>, VmError> {
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
        Ok(rows
            .into_iter()
            .map(|(image, cpus, memory_mib, work, size)| {
                let work_bytes = u64::try_from(work).unwrap_or(0);
                let e = Entry {
                    image,
                    cpus,
                    memory_mib,
                    work_bytes,
                };
                (e, size)
            })
            .collect())
    }

    /// The pools, and the pool VMs they were counted from.
    fn pool_state(&self) -> Result<(banger_api::PoolList, Vec<banger_api::Vm>), VmError> {
        let members = self.list_where("pool = 1")?;
        let used: u64 = members.iter().map(|m| u64::from(m.memory_mib)).sum();
        let pools = self
            .pool_entries()?
            .into_iter()
            .map(|(e, size)| {
                let of = |st: &[VmState]| {
                    let n = members
                        .iter()
                        .filter(|m| e.fits(m) && st.contains(&m.state))
                        .count();
                    u32::try_from(n).unwrap_or(u32::MAX)
                };
                PoolStatus {
                    ready: of(&[VmState::Running]),
                    booting: of(&[VmState::Creating, VmState::Starting]),
                    image: e.image,
                    cpus: e.cpus,
                    memory_mib: e.memory_mib,
                    work_disk_bytes: e.work_bytes,
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
    pub(super) fn pool_set(&self, req: &PoolSetRequest) -> Result<PoolStatus, VmError> {
        let image = req
            .image
            .clone()
            .unwrap_or_else(|| self.inner.config.default_image.clone());
        validate_name("image", &image)?;
        self.inner.images.get(&image)?;
        let existing: Vec<Entry> = self.pool_entries()?.into_iter().map(|(e, _)| e).collect();
        let e = pool_entry(&image, &req.resources, self.defaults(), &existing)?;
        check_pool_size(req.size, e.memory_mib, self.pool_budget_mib())?;
        self.inner.store.write(|tx| -> Result<(), VmError> {
            if req.size == 0 {
                tx.execute(
                    "DELETE FROM pools WHERE image = ?1 AND cpus = ?2 AND memory_mib \
                    = ?3 AND work_bytes = ?4",
                    params![e.image, e.cpus, e.memory_mib, e.work_bytes as i64],
                )?;
            } else {
                tx.execute(
                    "INSERT OR REPLACE INTO pools (image, cpus, memory_mib, \
                    work_bytes, size) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![e.image, e.cpus, e.memory_mib, e.work_bytes as i64, req.size],
                )?;
            }
            Ok(())
        })?;
        tracing::info!(image = %e.image, cpus = e.cpus, memory_mib = e.memory_mib,
            work = e.work_bytes, size = req.size, "pool size set");
        self.refill_pools();
        Ok(PoolStatus {
            image: e.image,
            cpus: e.cpus,
            memory_mib: e.memory_mib,
            work_disk_bytes: e.work_bytes,
            size: req.size,
            ready: 0,
            booting: 0,
        })
    }

    /// Starts creates for missing pool VMs (within the budget) and removes
    /// pool VMs no pool wants or that stopped.
    pub(super) fn refill_pools(&self) {
        let (list, members) = match self.pool_state() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pools");
                return;
            }
        };
        // Pool VMs that stopped, or that no pool wants any more.
        for m in &members {
            let wanted = list.pools.iter().any(|p| {
                let e = Entry {
                    image: p.image.clone(),
                    cpus: p.cpus,
                    memory_mib: p.memory_mib,
                    work_bytes: p.work_disk_bytes,
                };
                e.fits(m)
            });
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
                if let Err(e) = self.start_pool_vm(p) {
                    tracing::warn!(image = %p.image, error = %e, "cannot start a pool VM");
                    return;
                }
            }
        }
    }

    /// Creates one VM of a pool entry.
    fn start_pool_vm(&self, p: &PoolStatus) -> Result<Operation, VmError> {
        let req = VmCreateRequest {
            name: pool_vm_name(),
            image: Some(p.image.clone()),
            resources: VmResources {
                cpus: Some(p.cpus),
                memory: Some(format!("{}M", p.memory_mib)),
                work_disk_size: Some(format!("{}M", p.work_disk_bytes >> 20)),
                disk_size: None,
            },
            ..VmCreateRequest::default()
        };
        let spec = self.plan_create(&req)?;
        self.start_planned(spec, true)
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

    fn entry(cpus: u32, memory_mib: u32) -> Entry {
        Entry {
            image: "img".into(),
            cpus,
            memory_mib,
            work_bytes: 4 << 30,
        }
    }

    const DEFAULTS: Resources = Resources {
        cpus: 2,
        memory_mib: 1024,
        work_bytes: 4 << 30,
        root_bytes: None,
    };

    #[test]
    fn pool_set_without_sizes_acts_on_the_image_s_one_entry() {
        let none = VmResources::default();
        // No entry yet: the defaults.
        let e = pool_entry("img", &none, DEFAULTS, &[]).expect("defaults");
        assert_eq!(e, entry(2, 1024));
        // One entry of another size: that one (`pool set --size 0` empties it).
        let one = [entry(1, 512)];
        assert_eq!(
            pool_entry("img", &none, DEFAULTS, &one).expect("one"),
            entry(1, 512)
        );
        // Given sizes that disagree with it: a new entry.
        let cpus4 = VmResources {
            cpus: Some(4),
            ..VmResources::default()
        };
        assert_eq!(
            pool_entry("img", &cpus4, DEFAULTS, &one).expect("new"),
            entry(4, 1024)
        );
        // Two entries: the request must say which.
        let two = [entry(1, 512), entry(2, 2048)];
        let e = pool_entry("img", &none, DEFAULTS, &two);
        assert!(e.is_err_and(|e| e.to_string().contains("2 pool entries")));
        let mem = VmResources {
            memory: Some("2G".into()),
            ..VmResources::default()
        };
        assert_eq!(
            pool_entry("img", &mem, DEFAULTS, &two).expect("which"),
            entry(2, 2048)
        );
        // Another image's entries do not count; a root disk size is refused.
        assert_eq!(
            pool_entry("other", &none, DEFAULTS, &two)
                .map(|e| e.cpus)
                .ok(),
            Some(2)
        );
        let disk = VmResources {
            disk_size: Some("8G".into()),
            ..VmResources::default()
        };
        assert!(pool_entry("img", &disk, DEFAULTS, &[]).is_err());
        assert!(check_pool_size(65, 128, 1 << 20).is_err());
        assert!(check_pool_size(4, 1024, 2048).is_err_and(|e| e.to_string().contains("budget")));
        assert!(check_pool_size(2, 1024, 2048).is_ok());
    }
}
