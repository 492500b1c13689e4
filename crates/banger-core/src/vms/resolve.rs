//! Request resolution: backend choice and request bounds.

use crate::tools::{self};
use crate::units::parse_size;

use super::error::VmError;
use super::Vms;

impl Vms {
    /// Picks the backend for a create request, or says why it cannot run.
    pub(super) fn resolve_backend(
        &self,
        requested: &str,
        image: &banger_api::Image,
    ) -> Result<String, VmError> {
        let kvm = std::path::Path::new("/dev/kvm").exists();
        let nested_pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        let fc = tools::find(&self.inner.config.firecracker_binary);
        let image_ok = |b: &str| image.backends.iter().any(|x| x == b);
        let unavailable = |backend: &str, reason: String| {
            Err(VmError::Backend {
                backend: backend.into(),
                reason,
            })
        };
        match requested {
            "firecracker" => {
                if fc.is_none() {
                    return unavailable(
                        "firecracker",
                        format!(
                            "the binary {:?} is not installed (doctor check `firecracker`)",
                            self.inner.config.firecracker_binary
                        ),
                    );
                }
                if !kvm {
                    return unavailable(
                        "firecracker",
                        "/dev/kvm is missing (doctor check `kvm`)".into(),
                    );
                }
                if !image_ok("firecracker") {
                    return unavailable(
                        "firecracker",
                        format!("image {:?} has no vmlinux with virtio-mmio", image.name),
                    );
                }
                Ok("firecracker".into())
            }
            "qemu" | "auto" => {
                if requested == "auto"
                    && fc.is_some()
                    && kvm
                    && !nested_pvm
                    && image_ok("firecracker")
                {
                    return Ok("firecracker".into());
                }
                if tools::find("qemu-system-x86_64").is_none() {
                    return unavailable(
                        "qemu",
                        format!(
                            "qemu-system-x86_64 is not installed (doctor check `qemu`). {}",
                            tools::install_hint("qemu-system-x86_64")
                        ),
                    );
                }
                if !image_ok("qemu") {
                    return unavailable(
                        "qemu",
                        format!("image {:?} has no kernel QEMU can boot", image.name),
                    );
                }
                Ok("qemu".into())
            }
            other => Err(VmError::Invalid {
                what: "backend",
                reason: format!("{other:?} is not auto, qemu or firecracker"),
            }),
        }
    }
}

/// A VM's CPU count must be 1..=32. Pure.
pub(super) fn check_cpus(cpus: u32) -> Result<(), VmError> {
    if (1..=32).contains(&cpus) {
        Ok(())
    } else {
        Err(VmError::Invalid {
            what: "cpus",
            reason: format!("{cpus} is not in 1..=32"),
        })
    }
}

/// An optional size from the API (`2G`, `512M`), parsed. Pure.
pub(super) fn opt_size(what: &'static str, s: &Option<String>) -> Result<Option<u64>, VmError> {
    s.as_deref()
        .map(|s| {
            parse_size(s).map_err(|e| VmError::Invalid {
                what,
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// An egress allow-list from the API, checked and normalized, as stored
/// (JSON); `None`: no list.
pub(super) fn parse_egress(list: Option<&[String]>) -> Result<Option<String>, VmError> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::new();
    for entry in list {
        let c = crate::firewall::Cidr::parse(entry).map_err(|e| VmError::Invalid {
            what: "egress allow-list",
            reason: e.to_string(),
        })?;
        out.push(c.to_string());
    }
    Ok(Some(
        serde_json::to_string(&out).unwrap_or_else(|_| "[]".into()),
    ))
}
