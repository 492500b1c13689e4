//! Request resolution: backend choice and request bounds.

use banger_api::{Backend, BackendChoice};

use crate::tools;
use crate::units::parse_size;

use super::error::VmError;
use super::Vms;

/// What the host offers a backend choice (probed by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HostBackends {
    pub(super) kvm: bool,
    /// A nested PVM host, where stock guest kernels die under KVM.
    pub(super) nested_pvm: bool,
    pub(super) firecracker: bool,
    pub(super) qemu: bool,
}

impl HostBackends {
    /// Probes this host; `firecracker_binary` is the configured binary.
    pub(super) fn probe(firecracker_binary: &str) -> HostBackends {
        HostBackends {
            kvm: std::path::Path::new("/dev/kvm").exists(),
            nested_pvm: std::path::Path::new("/sys/module/kvm_pvm").exists(),
            firecracker: tools::find(firecracker_binary).is_some(),
            qemu: tools::find("qemu-system-x86_64").is_some(),
        }
    }
}

/// Picks the backend for a create request, or says why it cannot run:
/// `auto` is Firecracker where KVM runs stock kernels and the image has a
/// vmlinux for it, else QEMU. Pure.
pub(super) fn choose_backend(
    requested: BackendChoice,
    image: &banger_api::Image,
    host: HostBackends,
    firecracker_binary: &str,
) -> Result<Backend, VmError> {
    let image_ok = |b: Backend| image.backends.contains(&b);
    let unavailable = |backend: Backend, reason: String| {
        Err(VmError::Backend {
            backend: backend.as_str().into(),
            reason,
        })
    };
    match requested {
        BackendChoice::Firecracker => {
            if !host.firecracker {
                return unavailable(
                    Backend::Firecracker,
                    format!(
                        "the binary {firecracker_binary:?} is not installed (doctor check \
                         `firecracker`)"
                    ),
                );
            }
            if !host.kvm {
                return unavailable(
                    Backend::Firecracker,
                    "/dev/kvm is missing (doctor check `kvm`)".into(),
                );
            }
            if !image_ok(Backend::Firecracker) {
                return unavailable(
                    Backend::Firecracker,
                    format!("image {:?} has no vmlinux with virtio-mmio", image.name),
                );
            }
            Ok(Backend::Firecracker)
        }
        BackendChoice::Qemu | BackendChoice::Auto => {
            if requested == BackendChoice::Auto
                && host.firecracker
                && host.kvm
                && !host.nested_pvm
                && image_ok(Backend::Firecracker)
            {
                return Ok(Backend::Firecracker);
            }
            if !host.qemu {
                return unavailable(
                    Backend::Qemu,
                    format!(
                        "qemu-system-x86_64 is not installed (doctor check `qemu`). {}",
                        tools::install_hint("qemu-system-x86_64")
                    ),
                );
            }
            if !image_ok(Backend::Qemu) {
                return unavailable(
                    Backend::Qemu,
                    format!("image {:?} has no kernel QEMU can boot", image.name),
                );
            }
            Ok(Backend::Qemu)
        }
    }
}

impl Vms {
    /// [`choose_backend`] on this host.
    pub(super) fn resolve_backend(
        &self,
        requested: Option<BackendChoice>,
        image: &banger_api::Image,
    ) -> Result<Backend, VmError> {
        let fc = &self.inner.config.firecracker_binary;
        choose_backend(
            requested.unwrap_or_default(),
            image,
            HostBackends::probe(fc),
            fc,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn image(backends: &[Backend]) -> banger_api::Image {
        banger_api::Image {
            name: "img".into(),
            digest: "d".into(),
            source: "build".into(),
            created_at: chrono::Utc::now(),
            artifacts: vec![],
            backends: backends.to_vec(),
            kernel_version: None,
            init: "light".into(),
            packages: vec![],
            recipe: None,
            agent: None,
            used_by: vec![],
        }
    }

    const ALL: HostBackends = HostBackends {
        kvm: true,
        nested_pvm: false,
        firecracker: true,
        qemu: true,
    };

    #[test]
    fn auto_prefers_firecracker_where_kvm_runs_stock_kernels() {
        let both = image(&Backend::ALL);
        let pick = |host| choose_backend(BackendChoice::Auto, &both, host, "fc").ok();
        assert_eq!(pick(ALL), Some(Backend::Firecracker));
        let pvm = HostBackends {
            nested_pvm: true,
            ..ALL
        };
        assert_eq!(pick(pvm), Some(Backend::Qemu));
        let no_kvm = HostBackends { kvm: false, ..ALL };
        assert_eq!(pick(no_kvm), Some(Backend::Qemu));
        let qemu_only = image(&[Backend::Qemu]);
        let r = choose_backend(BackendChoice::Auto, &qemu_only, ALL, "fc");
        assert_eq!(r.ok(), Some(Backend::Qemu));
    }

    #[test]
    fn an_explicit_backend_says_why_it_cannot_run() {
        let both = image(&Backend::ALL);
        let no_fc = HostBackends {
            firecracker: false,
            ..ALL
        };
        let e = choose_backend(BackendChoice::Firecracker, &both, no_fc, "/opt/fc");
        assert!(matches!(&e, Err(VmError::Backend { reason, .. }) if reason.contains("/opt/fc")));
        let no_kvm = HostBackends { kvm: false, ..ALL };
        let e = choose_backend(BackendChoice::Firecracker, &both, no_kvm, "fc");
        assert!(matches!(&e, Err(VmError::Backend { reason, .. }) if reason.contains("/dev/kvm")));
        let qemu_only = image(&[Backend::Qemu]);
        let e = choose_backend(BackendChoice::Firecracker, &qemu_only, ALL, "fc");
        assert!(matches!(&e, Err(VmError::Backend { reason, .. }) if reason.contains("vmlinux")));
        let no_qemu = HostBackends { qemu: false, ..ALL };
        let e = choose_backend(BackendChoice::Qemu, &both, no_qemu, "fc");
        assert!(matches!(&e, Err(VmError::Backend { backend, .. }) if backend == "qemu"));
    }
}
