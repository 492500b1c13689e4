//! Host checks. [`HostFacts::probe`] gathers facts (effects); [`evaluate`]
//! and [`capabilities`] judge them (pure, unit-tested).
//!
//! Required checks are what images and VMs cannot do without: a VMM backend,
//! `/dev/net/tun`, e2fsprogs, an ssh client and free disk. The rest degrade
//! speed or features and are warnings.

use std::path::{Path, PathBuf};

use banger_api::doctor::ToolInfo;
use banger_api::{Capabilities, CheckStatus, DoctorCheck, DoctorReport};

use crate::tools;

/// Below this much free space in the state dir, image builds and VM disks
/// will not fit.
pub const MIN_FREE_BYTES: u64 = 4 << 30;

/// Everything the checks look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub kvm_device: bool,
    /// `kvm_pvm`, `kvm_intel` or `kvm_amd`, when loaded.
    pub kvm_module: Option<String>,
    pub qemu: Option<ToolInfo>,
    pub qemu_img: Option<PathBuf>,
    pub firecracker: Option<ToolInfo>,
    pub tun: bool,
    pub nft: Option<PathBuf>,
    /// Value of net.ipv4.ip_forward, when readable.
    pub ip_forward: Option<bool>,
    pub dm_control: bool,
    pub dmsetup: Option<PathBuf>,
    /// Whether a reflink copy worked in the state dir; `None` if untested.
    pub reflink: Option<bool>,
    pub mmdebstrap: Option<PathBuf>,
    pub debootstrap: Option<PathBuf>,
    pub mkfs_ext4: Option<PathBuf>,
    pub ssh: Option<PathBuf>,
    pub free_bytes: u64,
    pub state_dir: PathBuf,
    /// Real-kernel KVM probe verdicts of this boot: (kernel sha256, boots, detail).
    pub kvm_probes: Vec<(String, bool, String)>,
    /// The `.vm` DNS server's state (filled in by the daemon); `None`: not started.
    pub dns: Option<String>,
    /// Running VMs with a problem, as "NAME: problem" (filled in by the daemon).
    pub vm_problems: Vec<String>,
}

impl HostFacts {
    /// Probes the host. Runs external programs; call from a blocking context.
    pub fn probe(state_dir: &Path, firecracker_binary: &str) -> HostFacts {
        let kvm_module = ["kvm_pvm", "kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| Path::new("/sys/module").join(m).exists())
            .map(String::from);
        HostFacts {
            kvm_device: Path::new("/dev/kvm").exists(),
            kvm_module,
            qemu: tool_version("qemu-system-x86_64", parse_qemu_version),
            qemu_img: tools::find("qemu-img"),
            firecracker: tool_version(firecracker_binary, parse_firecracker_version),
            tun: Path::new("/dev/net/tun").exists(),
            nft: tools::find("nft"),
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .ok()
                .map(|s| s.trim() == "1"),
            dm_control: crate::storage::dm::available(),
            dmsetup: tools::find("dmsetup"),
            reflink: probe_reflink(state_dir),
            mmdebstrap: tools::find("mmdebstrap"),
            debootstrap: tools::find("debootstrap"),
            mkfs_ext4: tools::find("mkfs.ext4"),
            ssh: tools::find("ssh"),
            free_bytes: free_bytes(state_dir).unwrap_or(0),
            state_dir: state_dir.into(),
            kvm_probes: {
                let boot = crate::vms::kvm_probe::boot_id();
                crate::vms::kvm_probe::load_cache(state_dir)
                    .into_iter()
                    .filter(|v| v.boot_id == boot)
                    .map(|v| (v.kernel_sha256, v.kvm_boots_real_kernels, v.detail))
                    .collect()
            },
            dns: None,
            vm_problems: Vec::new(),
        }
    }
}

fn tool_version(program: &str, parse: fn(&str) -> Option<String>) -> Option<ToolInfo> {
    let path = tools::find(program)?;
    let version = tools::run(&path, ["--version"])
        .ok()
        .and_then(|o| parse(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| "unknown".into());
    Some(ToolInfo {
        path: path.display().to_string(),
        version,
    })
}

/// `QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)` -> `7.2.19`.
pub fn parse_qemu_version(out: &str) -> Option<String> {
    let rest = out.lines().next()?.strip_prefix("QEMU emulator version ")?;
    let v = rest.split_whitespace().next()?;
    v.chars()
        .all(|c| c.is_ascii_digit() || c == '.')
        .then(|| v.to_string())
}

/// `Firecracker v1.16.1` -> `1.16.1`.
pub fn parse_firecracker_version(out: &str) -> Option<String> {
    let rest = out.lines().next()?.trim().strip_prefix("Firecracker v")?;
    let v = rest.split_whitespace().next()?;
    (!v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
    .then(|| v.to_string())
}

fn probe_reflink(state_dir: &Path) -> Option<bool> {
    let cp = tools::find("cp")?;
    let dir = tempdir_in(state_dir)?;
    let src = dir.join("a");
    let dst = dir.join("b");
    let ok = std::fs::write(&src, b"banger reflink probe").is_ok()
        && tools::run(
            &cp,
            [
                std::ffi::OsStr::new("--reflink=always"),
                src.as_os_str(),
                dst.as_os_str(),
            ],
        )
        .is_ok();
    let _ = std::fs::remove_dir_all(&dir);
    Some(ok)
}

fn tempdir_in(parent: &Path) -> Option<PathBuf> {
    let d = parent.join(format!(".doctor-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).ok()?;
    Some(d)
}

fn free_bytes(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

struct Check {
    id: &'static str,
    title: &'static str,
    required: bool,
}

fn check(
    c: Check,
    status: CheckStatus,
    detail: impl Into<String>,
    hint: Option<String>,
) -> DoctorCheck {
    DoctorCheck {
        id: c.id.into(),
        title: c.title.into(),
        status,
        required: c.required,
        detail: detail.into(),
        hint,
    }
}

fn tool_check(
    c: Check,
    path: &Option<PathBuf>,
    program: &str,
    missing_status: CheckStatus,
) -> DoctorCheck {
    match path {
        Some(p) => check(c, CheckStatus::Ok, p.display().to_string(), None),
        None => check(
            c,
            missing_status,
            format!("`{program}` not found"),
            Some(tools::install_hint(program)),
        ),
    }
}

/// Judges the facts. Pure.
pub fn evaluate(f: &HostFacts) -> DoctorReport {
    let mut checks = Vec::new();

    let kvm = Check {
        id: "kvm",
        title: "KVM acceleration",
        required: false,
    };
    checks.push(match (f.kvm_device, f.kvm_module.as_deref()) {
        (false, _) => check(
            kvm,
            CheckStatus::Warn,
            "/dev/kvm is missing: QEMU will use TCG software emulation (slow but working); Firecracker cannot run",
            Some("Enable virtualization in the firmware and load kvm_intel or kvm_amd, or accept TCG".into()),
        ),
        (true, Some("kvm_pvm")) => check(
            kvm,
            CheckStatus::Warn,
            "/dev/kvm is served by kvm_pvm (a PVM host): KVM here runs only PVM-enabled guest kernels, for \
             Firecracker and QEMU+KVM alike; a stock kernel is emulated instruction by instruction and dies \
             (KVM_EXIT_INTERNAL_ERROR) within about 20-40 s. banger probes each kernel under QEMU+KVM and falls \
             back to TCG when it does not boot",
            Some(
                "Expect TCG speed with stock kernels; for Firecracker or QEMU+KVM guests, build images with a \
                 PVM-enabled guest kernel"
                    .into(),
            ),
        ),
        (true, m) => check(kvm, CheckStatus::Ok, format!("/dev/kvm present (module {})", m.unwrap_or("built in")), None),
    });

    let qemu = Check {
        id: "qemu",
        title: "QEMU backend (qemu-system-x86_64)",
        required: false,
    };
    let fc = Check {
        id: "firecracker",
        title: "Firecracker backend",
        required: false,
    };
    let have_backend = f.qemu.is_some() || (f.firecracker.is_some() && f.kvm_device);
    checks.push(match &f.qemu {
        Some(t) => check(
            qemu,
            CheckStatus::Ok,
            format!("{} (version {})", t.path, t.version),
            None,
        ),
        None => check(
            qemu,
            if have_backend {
                CheckStatus::Warn
            } else {
                CheckStatus::Fail
            },
            "qemu-system-x86_64 not found",
            Some(tools::install_hint("qemu-system-x86_64")),
        ),
    });
    let pvm = f.kvm_module.as_deref() == Some("kvm_pvm");
    checks.push(match (&f.firecracker, f.kvm_device) {
        (Some(t), true) if pvm => check(
            fc,
            CheckStatus::Warn,
            format!(
                "{} (version {}); this is a PVM host (kvm_pvm): Firecracker's API and devices work, but a \
                 stock guest kernel dies about 20-40 s after InstanceStart",
                t.path, t.version
            ),
            Some(
                "Use a PVM-enabled guest kernel for Firecracker VMs here, or the QEMU backend (TCG)"
                    .into(),
            ),
        ),
        (Some(t), true) => check(
            fc,
            CheckStatus::Ok,
            format!("{} (version {})", t.path, t.version),
            None,
        ),
        (Some(t), false) => check(
            fc,
            CheckStatus::Warn,
            format!(
                "{} (version {}) is installed but /dev/kvm is missing",
                t.path, t.version
            ),
            Some("Firecracker needs KVM; use the QEMU backend here".into()),
        ),
        (None, _) => check(
            fc,
            CheckStatus::Info,
            "firecracker not found; the QEMU backend is used",
            Some(
                "Install a firecracker release binary as /usr/local/bin/firecracker to use it"
                    .into(),
            ),
        ),
    });
    checks.push(check(
        Check {
            id: "backend",
            title: "A usable VMM backend",
            required: true,
        },
        if have_backend {
            CheckStatus::Ok
        } else {
            CheckStatus::Fail
        },
        if have_backend {
            "at least one backend can run VMs"
        } else {
            "no backend can run VMs"
        },
        (!have_backend).then(|| tools::install_hint("qemu-system-x86_64")),
    ));
    checks.push(tool_check(
        Check {
            id: "qemu_img",
            title: "qemu-img (qcow2 overlays)",
            required: false,
        },
        &f.qemu_img,
        "qemu-img",
        CheckStatus::Warn,
    ));

    let tun = Check {
        id: "tun",
        title: "/dev/net/tun (TAP devices)",
        required: true,
    };
    checks.push(if f.tun {
        check(tun, CheckStatus::Ok, "present", None)
    } else {
        check(
            tun,
            CheckStatus::Fail,
            "/dev/net/tun is missing",
            Some("Load the tun module: sudo modprobe tun".into()),
        )
    });
    checks.push(tool_check(
        Check {
            id: "nft",
            title: "nftables (NAT for guests)",
            required: false,
        },
        &f.nft,
        "nft",
        CheckStatus::Warn,
    ));
    let fwd = Check {
        id: "ip_forward",
        title: "IPv4 forwarding",
        required: false,
    };
    checks.push(match f.ip_forward {
        Some(true) => check(fwd, CheckStatus::Ok, "net.ipv4.ip_forward = 1", None),
        Some(false) => check(
            fwd,
            CheckStatus::Info,
            "net.ipv4.ip_forward = 0; banger enables it in its network namespace when guests need outbound access",
            None,
        ),
        None => check(fwd, CheckStatus::Info, "cannot read /proc/sys/net/ipv4/ip_forward", None),
    });
    let dns = Check {
        id: "dns",
        title: ".vm DNS",
        required: false,
    };
    checks.push(match &f.dns {
        Some(s) if s.starts_with("serving") => check(dns, CheckStatus::Ok, s.clone(), None),
        Some(s) => check(
            dns,
            CheckStatus::Warn,
            s.clone(),
            Some("Is something else listening on port 53 of the bridge address? (ss -lunp)".into()),
        ),
        None => check(
            dns,
            CheckStatus::Info,
            "starts with the first VM (on the bridge address)",
            None,
        ),
    });

    let vms = Check {
        id: "vm_health",
        title: "Running VMs",
        required: false,
    };
    checks.push(if f.vm_problems.is_empty() {
        check(
            vms,
            CheckStatus::Ok,
            "no running VM has a known problem",
            None,
        )
    } else {
        check(
            vms,
            CheckStatus::Fail,
            f.vm_problems.join("; "),
            Some("Each problem says what to do; `banger vm show NAME` repeats it".into()),
        )
    });

    let dm = Check {
        id: "device_mapper",
        title: "device-mapper (snapshot clones)",
        required: false,
    };
    checks.push(match (f.dm_control, &f.dmsetup) {
        (true, Some(p)) => check(
            dm,
            CheckStatus::Ok,
            format!("/dev/mapper/control and {}", p.display()),
            None,
        ),
        (false, _) => check(
            dm,
            CheckStatus::Info,
            "no working device-mapper (the kernel driver does not answer `dmsetup version`): the dm-snapshot clone strategy is unavailable",
            Some(
                "Load dm_mod (sudo modprobe dm_mod) to enable it; other strategies work without it"
                    .into(),
            ),
        ),
        (true, None) => check(
            dm,
            CheckStatus::Info,
            "dmsetup not found",
            Some(tools::install_hint("dmsetup")),
        ),
    });
    let reflink = Check {
        id: "reflink",
        title: "Reflink copies in the state dir",
        required: false,
    };
    checks.push(match f.reflink {
        Some(true) => check(reflink, CheckStatus::Ok, format!("{} supports reflink", f.state_dir.display()), None),
        _ => check(
            reflink,
            CheckStatus::Info,
            format!(
                "{} does not support reflink; root disks use qcow2 overlays (QEMU) or sparse copies",
                f.state_dir.display()
            ),
            Some("Put the state dir on btrfs or xfs for instant raw-disk clones".into()),
        ),
    });
    let boot = Check {
        id: "bootstrapper",
        title: "Image bootstrapper (mmdebstrap/debootstrap)",
        required: false,
    };
    checks.push(match (&f.mmdebstrap, &f.debootstrap) {
        (Some(p), _) | (None, Some(p)) => check(boot, CheckStatus::Ok, p.display().to_string(), None),
        (None, None) => check(
            boot,
            CheckStatus::Warn,
            "neither mmdebstrap nor debootstrap found: `banger image build` cannot run (image import still works)",
            Some(tools::install_hint("mmdebstrap")),
        ),
    });
    checks.push(tool_check(
        Check {
            id: "mkfs_ext4",
            title: "mkfs.ext4 (e2fsprogs)",
            required: true,
        },
        &f.mkfs_ext4,
        "mkfs.ext4",
        CheckStatus::Fail,
    ));
    checks.push(tool_check(
        Check {
            id: "ssh",
            title: "ssh client",
            required: true,
        },
        &f.ssh,
        "ssh",
        CheckStatus::Fail,
    ));
    let disk = Check {
        id: "disk",
        title: "Free disk in the state dir",
        required: true,
    };
    let gib = f.free_bytes as f64 / (1u64 << 30) as f64;
    checks.push(if f.free_bytes >= MIN_FREE_BYTES {
        check(
            disk,
            CheckStatus::Ok,
            format!("{gib:.1} GiB free in {}", f.state_dir.display()),
            None,
        )
    } else {
        check(
            disk,
            CheckStatus::Fail,
            format!(
                "only {gib:.1} GiB free in {} (need 4 GiB)",
                f.state_dir.display()
            ),
            Some("Free some space, or move the state dir (--state-dir or daemon.state_dir)".into()),
        )
    });

    if let Some(kvm) = checks.iter_mut().find(|c| c.id == "kvm") {
        if f.kvm_probes.is_empty() {
            kvm.detail.push_str("; real-kernel probe: not run yet (runs at the first QEMU VM create with accel = auto)");
        }
        for (sha, ok, detail) in &f.kvm_probes {
            let verdict = if *ok {
                "boots it, QEMU uses KVM"
            } else {
                "does not boot it, QEMU uses TCG"
            };
            kvm.detail.push_str(&format!(
                "; real-kernel probe of kernel {}: KVM {verdict} ({detail})",
                &sha[..sha.len().min(12)]
            ));
        }
    }

    let ok = !checks
        .iter()
        .any(|c| c.required && c.status == CheckStatus::Fail);
    DoctorReport { ok, checks }
}

/// The facts as data for clients. Pure.
pub fn capabilities(f: &HostFacts) -> Capabilities {
    let mut backends = Vec::new();
    if f.firecracker.is_some() && f.kvm_device {
        backends.push(banger_api::Backend::Firecracker);
    }
    if f.qemu.is_some() {
        backends.push(banger_api::Backend::Qemu);
    }
    let mut clone_strategies = Vec::new();
    if f.reflink == Some(true) {
        clone_strategies.push("reflink".to_string());
    }
    if f.qemu_img.is_some() && f.qemu.is_some() {
        clone_strategies.push("qcow2".to_string());
    }
    if f.dm_control && f.dmsetup.is_some() {
        clone_strategies.push("dm-snapshot".to_string());
    }
    clone_strategies.push("sparse-copy".to_string());
    Capabilities {
        kvm_device: f.kvm_device,
        kvm_module: f.kvm_module.clone(),
        qemu: f.qemu.clone(),
        firecracker: f.firecracker.clone(),
        backends,
        tun: f.tun,
        nftables: f.nft.is_some(),
        device_mapper: f.dm_control && f.dmsetup.is_some(),
        reflink: f.reflink == Some(true),
        clone_strategies,
        bootstrapper: f
            .mmdebstrap
            .as_ref()
            .map(|_| "mmdebstrap".to_string())
            .or_else(|| f.debootstrap.as_ref().map(|_| "debootstrap".to_string())),
        state_dir_free_bytes: f.free_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HostFacts {
        HostFacts {
            kvm_device: true,
            kvm_module: Some("kvm_intel".into()),
            qemu: Some(ToolInfo {
                path: "/usr/bin/qemu-system-x86_64".into(),
                version: "7.2.19".into(),
            }),
            qemu_img: Some("/usr/bin/qemu-img".into()),
            firecracker: None,
            tun: true,
            nft: Some("/usr/sbin/nft".into()),
            ip_forward: Some(false),
            dm_control: false,
            dmsetup: None,
            reflink: Some(false),
            mmdebstrap: Some("/usr/bin/mmdebstrap".into()),
            debootstrap: None,
            mkfs_ext4: Some("/usr/sbin/mkfs.ext4".into()),
            ssh: Some("/usr/bin/ssh".into()),
            free_bytes: 100 << 30,
            state_dir: "/var/lib/banger".into(),
            kvm_probes: vec![],
            dns: None,
            vm_problems: Vec::new(),
        }
    }

    fn status(r: &DoctorReport, id: &str) -> CheckStatus {
        r.checks
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.status)
            .unwrap_or_else(|| panic!("no check {id}"))
    }

    #[test]
    fn healthy_host_is_ok() {
        let r = evaluate(&good());
        assert!(r.ok, "{r:#?}");
        assert_eq!(status(&r, "kvm"), CheckStatus::Ok);
        assert_eq!(status(&r, "backend"), CheckStatus::Ok);
    }

    #[test]
    fn kvm_pvm_is_a_warning_that_names_it() {
        let f = HostFacts {
            kvm_module: Some("kvm_pvm".into()),
            ..good()
        };
        let r = evaluate(&f);
        assert!(r.ok);
        let c = r.checks.iter().find(|c| c.id == "kvm").expect("kvm check");
        assert_eq!(c.status, CheckStatus::Warn);
        assert!(c.detail.contains("kvm_pvm"));
        assert!(
            c.detail.contains("PVM-enabled guest kernels"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn firecracker_on_a_pvm_host_is_a_warning_with_its_version() {
        let fc = Some(ToolInfo {
            path: "/usr/local/bin/firecracker".into(),
            version: "1.17.0-dev".into(),
        });
        let f = HostFacts {
            kvm_module: Some("kvm_pvm".into()),
            firecracker: fc.clone(),
            ..good()
        };
        let r = evaluate(&f);
        let c = r
            .checks
            .iter()
            .find(|c| c.id == "firecracker")
            .expect("check");
        assert_eq!(c.status, CheckStatus::Warn);
        assert!(
            c.detail.contains("1.17.0-dev") && c.detail.contains("PVM"),
            "{}",
            c.detail
        );
        assert!(c
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("PVM-enabled"));
        let plain = evaluate(&HostFacts {
            firecracker: fc,
            ..good()
        });
        assert_eq!(status(&plain, "firecracker"), CheckStatus::Ok);
    }

    #[test]
    fn missing_required_tools_fail_with_install_hints() {
        let f = HostFacts {
            qemu: None,
            mkfs_ext4: None,
            tun: false,
            ..good()
        };
        let r = evaluate(&f);
        assert!(!r.ok);
        for id in ["backend", "mkfs_ext4", "tun", "qemu"] {
            assert_eq!(status(&r, id), CheckStatus::Fail, "{id}");
        }
        let mkfs = r
            .checks
            .iter()
            .find(|c| c.id == "mkfs_ext4")
            .expect("check");
        assert_eq!(
            mkfs.hint.as_deref(),
            Some("Install it with: sudo apt-get install e2fsprogs")
        );
    }

    #[test]
    fn kvm_check_reports_probe_verdicts() {
        let f = HostFacts {
            kvm_probes: vec![("abcdef0123456789".into(), false, "timed out".into())],
            ..good()
        };
        let r = evaluate(&f);
        let kvm = r.checks.iter().find(|c| c.id == "kvm").expect("kvm");
        assert!(
            kvm.detail
                .contains("kernel abcdef012345: KVM does not boot it, QEMU uses TCG (timed out)"),
            "{}",
            kvm.detail
        );
        let r = evaluate(&good());
        assert!(r
            .checks
            .iter()
            .any(|c| c.id == "kvm" && c.detail.contains("not run yet")));
    }

    #[test]
    fn low_disk_fails() {
        let r = evaluate(&HostFacts {
            free_bytes: 1 << 30,
            ..good()
        });
        assert!(!r.ok);
        assert_eq!(status(&r, "disk"), CheckStatus::Fail);
    }

    #[test]
    fn capabilities_list_backends_and_clone_strategies() {
        let c = capabilities(&good());
        assert_eq!(c.backends, [banger_api::Backend::Qemu]);
        assert_eq!(c.clone_strategies, ["qcow2", "sparse-copy"]);
        let c = capabilities(&HostFacts {
            reflink: Some(true),
            dm_control: true,
            dmsetup: Some("/sbin/dmsetup".into()),
            ..good()
        });
        assert_eq!(
            c.clone_strategies,
            ["reflink", "qcow2", "dm-snapshot", "sparse-copy"]
        );
        assert!(c.device_mapper);
    }

    #[test]
    fn version_parsers_are_strict() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright"
            ),
            Some("7.2.19".into())
        );
        assert_eq!(parse_qemu_version("qemu 7"), None);
        assert_eq!(
            parse_firecracker_version("Firecracker v1.16.1\n"),
            Some("1.16.1".into())
        );
        assert_eq!(parse_firecracker_version("Firecracker v\n"), None);
    }
}
