//! A VM's resources (vCPUs, memory, root and work disk): their bounds and
//! the one step that merges a request over a base and checks every bound,
//! in the manner of Firecracker's `MachineConfig::update`: each field comes
//! from the update or the base, every bound is checked once, and nothing
//! changes until it succeeds. `vm create` (base: the daemon's defaults and
//! the agent profile), `vm set` (base: the VM as it is) and the warm pool
//! all go through [`Resources::update`]; the daemon's config and agent
//! profiles use the same bound checks. Pure.

use banger_api::vms::limits;
use banger_api::VmResources;
use thiserror::Error;

use banger_api::units::{format_size, parse_size, SizeError};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("Invalid cpus: {0} is not in 1..=32")]
    Cpus(u32),
    #[error("Invalid memory: {mib} MiB is not in 128 MiB..=64 GiB")]
    Memory { mib: u64 },
    #[error("Invalid work disk size: {} is not between 64 MiB and 16 TiB", format_size(*.bytes))]
    WorkDisk { bytes: u64 },
    #[error(
        "Invalid disk size: it must be at least the image's root filesystem ({}) and at most \
         16 TiB",
        format_size(*.floor)
    )]
    RootDisk { floor: u64 },
    #[error("Invalid {what}: disks only grow: it is {} now", format_size(*.now))]
    Shrink { what: &'static str, now: u64 },
    #[error("Invalid {what}: {source}")]
    Size {
        what: &'static str,
        #[source]
        source: SizeError,
    },
    #[error("Invalid {what}: {why}")]
    NotHere {
        what: &'static str,
        why: &'static str,
    },
}

/// A VM's resources, every bound checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cpus: u32,
    pub memory_mib: u32,
    pub work_bytes: u64,
    /// The root disk; `None`: the image's size.
    pub root_bytes: Option<u64>,
}

/// What an update is measured against besides the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// A new VM: its root disk is at least the image's root filesystem.
    New { image_root: u64 },
    /// A VM that exists: disks only grow (`root`: its root disk now).
    Existing { root: u64 },
}

impl Resources {
    /// `u` over `self`: each field from `u` when given, else from `self`;
    /// every bound checked. Pure.
    pub fn update(&self, u: &VmResources, floor: Floor) -> Result<Resources, ResourceError> {
        let cpus = check_cpus(u.cpus.unwrap_or(self.cpus))?;
        let memory_mib = match &u.memory {
            Some(m) => memory_mib(size("memory", m)?)?,
            None => memory_mib(u64::from(self.memory_mib) << 20)?,
        };
        let work_bytes = match &u.work_disk_size {
            Some(s) => check_work_bytes(size("work disk size", s)?)?,
            None => self.work_bytes,
        };
        let root_bytes = match (&u.disk_size, floor) {
            (None, _) => self.root_bytes,
            (Some(s), Floor::New { image_root }) => {
                let b = size("disk size", s)?;
                if b < image_root || b > limits::ROOT_DISK_MAX_BYTES {
                    return Err(ResourceError::RootDisk { floor: image_root });
                }
                Some(b)
            }
            (Some(s), Floor::Existing { root }) => {
                let b = size("disk size", s)?;
                if b < root {
                    return Err(ResourceError::Shrink {
                        what: "disk size",
                        now: root,
                    });
                }
                if b > limits::ROOT_DISK_MAX_BYTES {
                    return Err(ResourceError::RootDisk { floor: root });
                }
                Some(b)
            }
        };
        if matches!(floor, Floor::Existing { .. }) && work_bytes < self.work_bytes {
            return Err(ResourceError::Shrink {
                what: "work disk size",
                now: self.work_bytes,
            });
        }
        Ok(Resources {
            cpus,
            memory_mib,
            work_bytes,
            root_bytes,
        })
    }
}

fn size(what: &'static str, s: &str) -> Result<u64, ResourceError> {
    parse_size(s).map_err(|source| ResourceError::Size { what, source })
}

/// A vCPU count within [`limits::CPUS`].
pub fn check_cpus(cpus: u32) -> Result<u32, ResourceError> {
    if limits::CPUS.contains(&cpus) {
        Ok(cpus)
    } else {
        Err(ResourceError::Cpus(cpus))
    }
}

/// Memory in bytes as whole MiB within [`limits::MEMORY_MIB`].
pub fn memory_mib(bytes: u64) -> Result<u32, ResourceError> {
    let mib = bytes >> 20;
    match u32::try_from(mib) {
        Ok(m) if limits::MEMORY_MIB.contains(&mib) => Ok(m),
        _ => Err(ResourceError::Memory { mib }),
    }
}

/// A work disk size within [`limits::WORK_DISK_BYTES`].
pub fn check_work_bytes(bytes: u64) -> Result<u64, ResourceError> {
    if limits::WORK_DISK_BYTES.contains(&bytes) {
        Ok(bytes)
    } else {
        Err(ResourceError::WorkDisk { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Resources = Resources {
        cpus: 2,
        memory_mib: 1024,
        work_bytes: 4 << 30,
        root_bytes: None,
    };
    const NEW: Floor = Floor::New {
        image_root: 1 << 30,
    };

    fn upd(
        cpus: Option<u32>,
        mem: Option<&str>,
        disk: Option<&str>,
        work: Option<&str>,
    ) -> VmResources {
        VmResources {
            cpus,
            memory: mem.map(String::from),
            disk_size: disk.map(String::from),
            work_disk_size: work.map(String::from),
        }
    }

    #[test]
    fn fields_left_out_keep_the_base() {
        assert_eq!(BASE.update(&VmResources::default(), NEW), Ok(BASE));
        let r = BASE
            .update(&upd(Some(4), Some("2G"), Some("8G"), Some("1G")), NEW)
            .expect("valid");
        assert_eq!(
            r,
            Resources {
                cpus: 4,
                memory_mib: 2048,
                work_bytes: 1 << 30,
                root_bytes: Some(8 << 30),
            }
        );
    }

    #[test]
    fn every_bound_is_checked_at_both_ends() {
        let ok = |u: VmResources| BASE.update(&u, NEW).is_ok();
        assert!(ok(upd(Some(1), None, None, None)));
        assert!(ok(upd(Some(32), None, None, None)));
        assert_eq!(
            BASE.update(&upd(Some(0), None, None, None), NEW),
            Err(ResourceError::Cpus(0))
        );
        assert!(!ok(upd(Some(33), None, None, None)));
        assert!(ok(upd(None, Some("128M"), None, None)));
        assert!(ok(upd(None, Some("64G"), None, None)));
        assert!(!ok(upd(None, Some("127M"), None, None)));
        assert!(!ok(upd(None, Some("65537M"), None, None)));
        assert!(ok(upd(None, None, None, Some("64M"))));
        assert!(ok(upd(None, None, None, Some("16T"))));
        assert!(!ok(upd(None, None, None, Some("63M"))));
        assert!(!ok(upd(None, None, None, Some("17T"))));
        assert!(ok(upd(None, None, Some("1G"), None)));
        assert!(ok(upd(None, None, Some("16T"), None)));
        assert_eq!(
            BASE.update(&upd(None, None, Some("512M"), None), NEW),
            Err(ResourceError::RootDisk { floor: 1 << 30 })
        );
        assert!(!ok(upd(None, None, Some("17T"), None)));
        let e = BASE.update(&upd(None, Some("lots"), None, None), NEW);
        assert!(matches!(e, Err(ResourceError::Size { what: "memory", .. })));
        let msg = BASE
            .update(&upd(None, Some("100M"), None, None), NEW)
            .map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err("Invalid memory: 100 MiB is not in 128 MiB..=64 GiB".into())
        );
    }

    #[test]
    fn an_existing_vm_s_disks_only_grow() {
        let now = Floor::Existing { root: 2 << 30 };
        let e = BASE.update(&upd(None, None, Some("1G"), None), now);
        assert_eq!(
            e,
            Err(ResourceError::Shrink {
                what: "disk size",
                now: 2 << 30
            })
        );
        let e = BASE.update(&upd(None, None, None, Some("1G")), now);
        assert!(e.is_err_and(|e| e.to_string().contains("disks only grow: it is 4 GiB now")));
        let r = BASE.update(&upd(None, None, Some("2G"), Some("8G")), now);
        assert_eq!(
            r.map(|r| (r.root_bytes, r.work_bytes)),
            Ok((Some(2 << 30), 8 << 30))
        );
        // A new VM's work disk may be smaller than the default.
        assert!(BASE.update(&upd(None, None, None, Some("1G")), NEW).is_ok());
    }
}
