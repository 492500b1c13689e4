//! Request resolution: a create request, the daemon's defaults, the agent
//! profile and the image become one [`VmSpec`] before anything is touched
//! (`resolve_create`, pure); the backend choice (`choose_backend`, pure);
//! the egress allow-list. The bounds themselves are [`crate::resources`].

use banger_api::{Backend, BackendChoice, Image, VmCreateRequest, VmResources};

use crate::agents::{Agents, Profile};
use crate::names::validate_name;
use crate::resources::{Floor, Resources};
use crate::tools;

use super::error::VmError;
use super::Vms;

/// A create request, resolved: what the VM will be. Nothing was touched
/// to make it.
#[derive(Debug, Clone)]
pub(super) struct VmSpec {
    pub(super) name: String,
    pub(super) image: Image,
    pub(super) backend: Backend,
    /// The agent profile it is set up for.
    pub(super) agent: Option<String>,
    pub(super) resources: Resources,
    pub(super) isolated: bool,
    /// The egress allow-list as stored (JSON); `None`: anywhere.
    pub(super) egress: Option<String>,
    pub(super) no_start: bool,
}

/// What a create request is resolved against.
#[derive(Debug, Clone, Copy)]
pub(super) struct CreateContext<'a> {
    /// The daemon's `vm.*` defaults.
    pub(super) defaults: Resources,
    /// The agent picked by [`pick_agent`], and its profile.
    pub(super) agent: Option<(&'a str, &'a Profile)>,
    pub(super) image: &'a Image,
    pub(super) host: HostBackends,
    pub(super) firecracker_binary: &'a str,
}

/// The size of an image's root filesystem (a new root disk's floor).
pub(super) fn image_root_bytes(image: &Image) -> u64 {
    image
        .artifacts
        .iter()
        .find(|a| a.kind == "rootfs")
        .map(|a| a.size)
        .unwrap_or(0)
}

/// Resolves a create request: the request's resources over the agent
/// profile's over the daemon's defaults, every bound checked once, the
/// backend chosen, the egress list normalized. Pure.
pub(super) fn resolve_create(
    req: &VmCreateRequest,
    cx: CreateContext<'_>,
) -> Result<VmSpec, VmError> {
    validate_name("VM", &req.name)?;
    let floor = Floor::New {
        image_root: image_root_bytes(cx.image),
    };
    let base = match cx.agent {
        Some((_, p)) => cx.defaults.update(
            &VmResources {
                cpus: p.cpus,
                memory: p.memory.clone(),
                ..VmResources::default()
            },
            floor,
        )?,
        None => cx.defaults,
    };
    let resources = base.update(&req.resources, floor)?;
    let backend = choose_backend(
        req.backend.unwrap_or_default(),
        cx.image,
        cx.host,
        cx.firecracker_binary,
    )?;
    Ok(VmSpec {
        name: req.name.clone(),
        image: cx.image.clone(),
        backend,
        agent: cx.agent.map(|(a, _)| a.to_string()),
        resources,
        isolated: req.isolated,
        egress: parse_egress(req.egress_allow.as_deref())?,
        no_start: req.no_start,
    })
}

/// The agent a VM is set up for: the one asked for (it must exist), else
/// the image's when a profile of that name exists.
pub(super) fn pick_agent(
    agents: &Agents,
    asked: Option<&str>,
    image_agent: Option<&str>,
) -> Result<Option<(String, Profile)>, VmError> {
    match (asked, image_agent) {
        (Some(a), _) => {
            validate_name("agent", a)?;
            Ok(Some((a.to_string(), agents.get(a)?.0)))
        }
        (None, Some(a)) => Ok(agents.get(a).ok().map(|(p, _)| (a.to_string(), p))),
        (None, None) => Ok(None),
    }
}

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
    /// The daemon's `vm.*` defaults.
    pub(super) fn defaults(&self) -> Resources {
        let c = &self.inner.config;
        Resources {
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            work_bytes: c.work_disk_bytes,
            root_bytes: None,
        }
    }

    /// What a create takes for what its request leaves out.
    pub fn create_defaults(&self) -> banger_api::VmDefaults {
        let c = &self.inner.config;
        banger_api::VmDefaults {
            image: c.default_image.clone(),
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            work_disk_bytes: c.work_disk_bytes,
            accel: c.accel.clone(),
        }
    }

    /// Looks up what a create request names (its image, its agent profile,
    /// the host's backends) and resolves it with [`resolve_create`].
    pub(super) fn plan_create(&self, req: &VmCreateRequest) -> Result<VmSpec, VmError> {
        validate_name("VM", &req.name)?;
        let cfg = &self.inner.config;
        let image_name = req.image.as_deref().unwrap_or(&cfg.default_image);
        let image = self.inner.images.get(image_name)?;
        let agent = pick_agent(&cfg.agents, req.agent.as_deref(), image.agent.as_deref())?;
        let fc = &cfg.firecracker_binary;
        resolve_create(
            req,
            CreateContext {
                defaults: self.defaults(),
                agent: agent.as_ref().map(|(n, p)| (n.as_str(), p)),
                image: &image,
                host: HostBackends::probe(fc),
                firecracker_binary: fc,
            },
        )
    }
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

    fn profile(cpus: Option<u32>, memory: Option<&str>) -> Profile {
        Profile {
            description: "test".into(),
            command: vec!["true".into()],
            require: vec![],
            auth: vec![],
            cpus,
            memory: memory.map(String::from),
            env: Default::default(),
            files: vec![],
        }
    }

    fn sized(backends: &[Backend], rootfs: u64) -> Image {
        let mut i = image(backends);
        i.artifacts.push(banger_api::Artifact {
            kind: "rootfs".into(),
            file: "rootfs.ext4".into(),
            size: rootfs,
            sha256: "x".into(),
        });
        i
    }

    const DEFAULTS: Resources = Resources {
        cpus: 2,
        memory_mib: 1024,
        work_bytes: 4 << 30,
        root_bytes: None,
    };

    fn cx<'a>(img: &'a Image, agent: Option<(&'a str, &'a Profile)>) -> CreateContext<'a> {
        CreateContext {
            defaults: DEFAULTS,
            agent,
            image: img,
            host: ALL,
            firecracker_binary: "fc",
        }
    }

    fn req(name: &str, res: VmResources) -> VmCreateRequest {
        VmCreateRequest {
            name: name.into(),
            resources: res,
            ..VmCreateRequest::default()
        }
    }

    #[test]
    fn a_create_takes_the_request_over_the_profile_over_the_defaults() {
        let img = sized(&[Backend::Qemu], 1 << 30);
        let spec =
            resolve_create(&req("a", VmResources::default()), cx(&img, None)).expect("defaults");
        assert_eq!(spec.resources, DEFAULTS);
        assert_eq!((spec.backend, spec.agent.as_deref()), (Backend::Qemu, None));
        let p = profile(Some(4), Some("2G"));
        let spec = resolve_create(
            &req("a", VmResources::default()),
            cx(&img, Some(("oc", &p))),
        )
        .expect("profile");
        assert_eq!((spec.resources.cpus, spec.resources.memory_mib), (4, 2048));
        assert_eq!(spec.agent.as_deref(), Some("oc"));
        let r = VmResources {
            cpus: Some(1),
            disk_size: Some("2G".into()),
            ..VmResources::default()
        };
        let spec = resolve_create(&req("a", r), cx(&img, Some(("oc", &p)))).expect("request");
        assert_eq!(
            spec.resources,
            Resources {
                cpus: 1,
                memory_mib: 2048,
                work_bytes: 4 << 30,
                root_bytes: Some(2 << 30),
            }
        );
    }

    #[test]
    fn a_create_is_refused_whole_on_any_bad_field() {
        let img = sized(&[Backend::Qemu], 1 << 30);
        let bad = |r: VmCreateRequest| resolve_create(&r, cx(&img, None)).is_err();
        assert!(bad(req("Bad Name", VmResources::default())));
        let small_root = VmResources {
            disk_size: Some("512M".into()),
            ..VmResources::default()
        };
        assert!(bad(req("a", small_root)));
        let mut r = req("a", VmResources::default());
        r.egress_allow = Some(vec!["not-a-cidr".into()]);
        assert!(bad(r));
        let mut r = req("a", VmResources::default());
        r.backend = Some(BackendChoice::Firecracker);
        assert!(bad(r), "the image has no vmlinux");
        let mut r = req("a", VmResources::default());
        r.egress_allow = Some(vec!["10.0.0.1".into()]);
        let spec = resolve_create(&r, cx(&img, None)).expect("valid");
        assert_eq!(spec.egress.as_deref(), Some(r#"["10.0.0.1"]"#));
    }
}
