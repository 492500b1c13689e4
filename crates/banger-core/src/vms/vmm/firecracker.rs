//! The Firecracker backend: the API configure and restore sequences (pure,
//! validated against the spec in tests) and the process, jailed or not.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use banger_api::Backend;
use firecracker_api::model::{
    ActionType, BootSource, Drive, Logger, MachineConfiguration, MemoryBackend, Metrics,
    NetworkInterface, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    VmState as FcVmState, Vsock, VsockOverride,
};

use super::{spawn, state_files, AgentLink, Jailer, LaunchSpec, Vmm, VmmError, JAILED_API_SOCKET};

pub struct FirecrackerVmm {
    pub binary: PathBuf,
    pub jailer: Option<Jailer>,
}

impl FirecrackerVmm {
    pub fn api_socket(spec: &LaunchSpec) -> PathBuf {
        spec.run_dir.join("firecracker.sock")
    }

    /// The API socket's path on the host.
    fn host_api_socket(&self, spec: &LaunchSpec) -> PathBuf {
        match &self.jailer {
            Some(j) => j
                .jail_dir(&self.binary, &spec.vm_id)
                .join("root")
                .join(JAILED_API_SOCKET.trim_start_matches('/')),
            None => FirecrackerVmm::api_socket(spec),
        }
    }

    /// Puts the VM's files into the jail (hard links; device nodes are
    /// re-made; the VM's own disks are given to the jail's user) and returns
    /// the spec with the paths Firecracker sees inside it.
    fn prepare_jail(&self, j: &Jailer, spec: &LaunchSpec) -> Result<LaunchSpec, VmmError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let io = |p: &std::path::Path| {
            let p = p.to_path_buf();
            move |source| VmmError::Io { path: p, source }
        };
        let dir = j.jail_dir(&self.binary, &spec.vm_id);
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("run")).map_err(io(&root))?;
        std::os::unix::fs::chown(root.join("run"), Some(j.uid), Some(j.gid)).map_err(io(&root))?;
        let mut jailed = spec.clone();
        let put = |src: &PathBuf, name: &str, owned: bool| -> Result<PathBuf, VmmError> {
            let dst = root.join(name);
            let m = std::fs::metadata(src).map_err(io(src))?;
            if m.file_type().is_block_device() {
                let mknod = crate::tools::require("mknod").map_err(|e| VmmError::EarlyExit {
                    program: "mknod".into(),
                    stderr: e.to_string(),
                })?;
                let (major, minor) = (
                    nix::sys::stat::major(m.rdev()),
                    nix::sys::stat::minor(m.rdev()),
                );
                crate::tools::run(
                    &mknod,
                    [
                        dst.display().to_string(),
                        "b".into(),
                        major.to_string(),
                        minor.to_string(),
                    ],
                )
                .map_err(|e| VmmError::EarlyExit {
                    program: "mknod".into(),
                    stderr: e.to_string(),
                })?;
            } else if std::fs::hard_link(src, &dst).is_err() {
                // Another filesystem: copy (put firecracker.chroot_base on the state dir's to avoid it).
                std::fs::copy(src, &dst).map_err(io(&dst))?;
            }
            if owned {
                std::os::unix::fs::chown(&dst, Some(j.uid), Some(j.gid)).map_err(io(&dst))?;
            }
            Ok(PathBuf::from("/").join(name))
        };
        jailed.kernel = put(&spec.kernel, "vmlinux", false)?;
        if let Some(i) = &spec.initrd {
            jailed.initrd = Some(put(i, "initrd.img", false)?);
        }
        jailed.root_disk = put(&spec.root_disk, "root.raw", true)?;
        jailed.config_disk = put(&spec.config_disk, "config.ext4", true)?;
        jailed.work_disk = put(&spec.work_disk, "work.ext4", true)?;
        for f in ["firecracker.log", "firecracker.metrics"] {
            let p = root.join(f);
            std::fs::File::create(&p).map_err(io(&p))?;
            std::os::unix::fs::chown(&p, Some(j.uid), Some(j.gid)).map_err(io(&p))?;
        }
        jailed.run_dir = PathBuf::from("/");
        Ok(jailed)
    }

    /// The process arguments. Pure.
    pub fn args(spec: &LaunchSpec) -> Vec<String> {
        vec![
            "--api-sock".into(),
            FirecrackerVmm::api_socket(spec).display().to_string(),
            "--id".into(),
            format!("banger-vm-{}", spec.vm_id),
        ]
    }

    /// The configure sequence, in order (method, path, body). Pure; the
    /// tests check it against the spec and the fake's request log.
    pub fn configure_sequence(spec: &LaunchSpec) -> Vec<ApiCall> {
        let drive = |id: &str, path: &PathBuf, root: bool, ro: bool| Drive {
            drive_id: id.into(),
            is_root_device: root,
            path_on_host: path.display().to_string(),
            is_read_only: ro,
            cache_type: Some("Unsafe".into()),
        };
        let mut seq = logging_calls(spec);
        seq.push(put(
            "/machine-config",
            MachineConfiguration {
                vcpu_count: spec.cpus,
                mem_size_mib: spec.memory_mib,
                smt: Some(false),
                track_dirty_pages: None,
            },
        ));
        seq.push(put(
            "/boot-source",
            BootSource {
                kernel_image_path: spec.kernel.display().to_string(),
                initrd_path: spec.initrd.as_ref().map(|p| p.display().to_string()),
                boot_args: Some(spec.boot_args()),
            },
        ));
        for d in [
            drive("rootfs", &spec.root_disk, true, false),
            drive("config", &spec.config_disk, false, true),
            drive("work", &spec.work_disk, false, false),
        ] {
            seq.push(put(format!("/drives/{}", d.drive_id), d));
        }
        seq.push(put(
            "/network-interfaces/eth0",
            NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: spec.tap.clone(),
                guest_mac: Some(spec.mac.clone()),
            },
        ));
        seq.push(put(
            "/vsock",
            Vsock {
                guest_cid: 3,
                uds_path: spec.run_dir.join(FC_VSOCK).display().to_string(),
            },
        ));
        seq.push(put(
            "/actions",
            serde_json::json!({ "action_type": "InstanceStart" }),
        ));
        seq
    }
}

/// One Firecracker API call: method, path, JSON body.
pub type ApiCall = (&'static str, String, serde_json::Value);

/// A `PUT` of `body` (plain model structs, which always serialize).
fn put(path: impl Into<String>, body: impl serde::Serialize) -> ApiCall {
    let body = serde_json::to_value(body).unwrap_or_default();
    ("PUT", path.into(), body)
}

/// The logger and metrics calls every sequence starts with. Pure.
fn logging_calls(spec: &LaunchSpec) -> Vec<ApiCall> {
    let file = |name: &str| spec.run_dir.join(name).display().to_string();
    vec![
        put(
            "/logger",
            Logger {
                log_path: file("firecracker.log"),
                level: Some("Info".into()),
                show_level: Some(true),
            },
        ),
        put(
            "/metrics",
            Metrics {
                metrics_path: file("firecracker.metrics"),
            },
        ),
    ]
}

impl FirecrackerVmm {
    /// Starts firecracker (through the jailer when configured) and waits
    /// for its API socket. Returns the process and the spec as Firecracker
    /// sees it: paths inside the jail, or the VM's disks relative to its
    /// working directory (the VM's directory). Relative paths are what
    /// make a snapshot loadable by another VM: Firecracker cannot rename
    /// the drives it restores, and the snapshot records their paths.
    fn start_process(
        &self,
        spec: &LaunchSpec,
        extra_jail_files: &[(PathBuf, &str)],
    ) -> Result<(Child, LaunchSpec), VmmError> {
        let io = |p: &std::path::Path| {
            let p = p.to_path_buf();
            move |source| VmmError::Io { path: p, source }
        };
        let sock = self.host_api_socket(spec);
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(self.host_vsock(spec));
        let (program, args, api_spec, cwd) = match &self.jailer {
            Some(j) => {
                let jailed = self.prepare_jail(j, spec)?;
                let root = j.jail_dir(&self.binary, &spec.vm_id).join("root");
                for (src, name) in extra_jail_files {
                    let dst = root.join(name);
                    if std::fs::hard_link(src, &dst).is_err() {
                        std::fs::copy(src, &dst).map_err(io(&dst))?;
                    }
                    std::os::unix::fs::chown(&dst, Some(j.uid), Some(j.gid)).map_err(io(&dst))?;
                }
                (
                    j.binary.clone(),
                    j.args(&self.binary, &spec.vm_id),
                    jailed,
                    None,
                )
            }
            None => {
                std::fs::create_dir_all(&spec.run_dir).map_err(io(&spec.run_dir))?;
                for f in ["firecracker.log", "firecracker.metrics"] {
                    let p = spec.run_dir.join(f);
                    std::fs::File::create(&p).map_err(io(&p))?;
                }
                let (dir, relative) = relative_disks(spec)?;
                (
                    self.binary.clone(),
                    FirecrackerVmm::args(spec),
                    relative,
                    Some(dir),
                )
            }
        };
        let mut child = spawn(&program, &args, spec, true, cwd.as_deref())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        // The socket file appears at bind(), before listen(): wait for a
        // connection to succeed, not for the file.
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Ok(Some(_)) = child.try_wait() {
                self.cleanup(&spec.vm_id);
                return Err(VmmError::EarlyExit {
                    program: "firecracker".into(),
                    stderr: std::fs::read_to_string(&spec.stderr_log)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.cleanup(&spec.vm_id);
                return Err(VmmError::NoSocket(sock.clone()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((child, api_spec))
    }

    /// Sends `calls` in order; on a failure kills the process and removes
    /// the jail.
    fn run_calls(
        &self,
        mut child: Child,
        spec: &LaunchSpec,
        calls: Vec<(&'static str, String, serde_json::Value)>,
    ) -> Result<Child, VmmError> {
        let client = firecracker_api::Client::new(self.host_api_socket(spec));
        let result = (|| {
            for (method, path, body) in calls {
                let (status, text) = client.request(method, &path, Some(&body)).map_err(|e| {
                    // A dying VMM closes the connection before its exit is
                    // visible: give it a bounded moment to be reaped.
                    let deadline = Instant::now() + Duration::from_millis(500);
                    let mut exited = false;
                    while Instant::now() < deadline {
                        if let Ok(Some(_)) = child.try_wait() {
                            exited = true;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if exited {
                        VmmError::EarlyExit {
                            program: "firecracker".into(),
                            stderr: format!(
                                "while handling {method} {path}: {}",
                                std::fs::read_to_string(&spec.stderr_log)
                                    .unwrap_or_default()
                                    .trim()
                            ),
                        }
                    } else {
                        VmmError::Api(e)
                    }
                })?;
                firecracker_api::client::check(method, &path, status, &text)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                self.cleanup(&spec.vm_id);
                Err(e)
            }
        }
    }

    /// The vsock Unix socket on the host.
    fn host_vsock(&self, spec: &LaunchSpec) -> PathBuf {
        match &self.jailer {
            Some(j) => j
                .jail_dir(&self.binary, &spec.vm_id)
                .join("root")
                .join(FC_VSOCK),
            None => spec.run_dir.join(FC_VSOCK),
        }
    }

    /// The restore sequence (method, path, body). Pure; checked against
    /// the spec by the tests.
    pub fn restore_sequence(spec: &LaunchSpec, state: &str, memory: &str) -> Vec<ApiCall> {
        let mut seq = logging_calls(spec);
        let load = SnapshotLoadParams {
            snapshot_path: state.into(),
            mem_backend: MemoryBackend {
                backend_type: "File".into(),
                backend_path: memory.into(),
            },
            resume_vm: Some(true),
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: spec.tap.clone(),
            }],
            vsock_override: Some(VsockOverride {
                uds_path: spec.run_dir.join(FC_VSOCK).display().to_string(),
            }),
        };
        seq.push(put("/snapshot/load", load));
        seq
    }
}

/// The vsock socket's file name (in the run dir, or the jail's root).
const FC_VSOCK: &str = "agent.vsock";
/// Firecracker's snapshot files.
pub const FC_STATE: &str = "vmstate";
pub const FC_MEMORY: &str = "memory";

/// The spec with the disks relative to the VM's directory (the directory
/// of its config disk), and that directory. A disk elsewhere (a
/// device-mapper root) gets a symlink in the directory.
fn relative_disks(spec: &LaunchSpec) -> Result<(PathBuf, LaunchSpec), VmmError> {
    let dir = spec
        .config_disk
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut out = spec.clone();
    for (disk, link) in [
        (&mut out.root_disk, "root.dev"),
        (&mut out.config_disk, "config.dev"),
        (&mut out.work_disk, "work.dev"),
    ] {
        match disk.strip_prefix(&dir) {
            Ok(rel) => *disk = rel.to_path_buf(),
            Err(_) => {
                let l = dir.join(link);
                let _ = std::fs::remove_file(&l);
                std::os::unix::fs::symlink(&*disk, &l)
                    .map_err(|source| VmmError::Io { path: l, source })?;
                *disk = PathBuf::from(link);
            }
        }
    }
    Ok((dir, out))
}

impl Vmm for FirecrackerVmm {
    fn backend(&self) -> Backend {
        Backend::Firecracker
    }
    fn kernel_artifact(&self) -> &'static str {
        "vmlinux"
    }
    fn root_disk_file(&self) -> &'static str {
        "root.raw"
    }
    fn guest_grows_root(&self) -> bool {
        false
    }
    fn tap_owner(&self) -> Option<(u32, u32)> {
        self.jailer.as_ref().map(|j| (j.uid, j.gid))
    }
    fn state_files(&self) -> &'static [&'static str] {
        state_files(Backend::Firecracker)
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<Child, VmmError> {
        let (child, api_spec) = self.start_process(spec, &[])?;
        self.run_calls(child, spec, FirecrackerVmm::configure_sequence(&api_spec))
    }

    fn request_poweroff(&self, spec: &LaunchSpec) -> Result<(), VmmError> {
        Ok(firecracker_api::Client::new(self.host_api_socket(spec))
            .action(ActionType::SendCtrlAltDel)?)
    }

    fn cleanup(&self, vm_id: &str) {
        if let Some(j) = &self.jailer {
            let _ = std::fs::remove_dir_all(j.jail_dir(&self.binary, vm_id));
        }
    }

    fn logs(&self, spec: &LaunchSpec) -> Vec<PathBuf> {
        let log = match &self.jailer {
            Some(j) => j
                .jail_dir(&self.binary, &spec.vm_id)
                .join("root/firecracker.log"),
            None => spec.run_dir.join("firecracker.log"),
        };
        vec![spec.stderr_log.clone(), log]
    }

    fn agent(&self, spec: &LaunchSpec) -> AgentLink {
        AgentLink::Vsock {
            uds: self.host_vsock(spec),
            port: crate::guest::AGENT_VSOCK_PORT,
        }
    }

    fn save_state(&self, spec: &LaunchSpec, dir: &Path) -> Result<(), VmmError> {
        let client = firecracker_api::Client::new(self.host_api_socket(spec));
        client.patch_vm(FcVmState::Paused)?;
        let (state, memory) = match &self.jailer {
            Some(_) => (format!("/{FC_STATE}"), format!("/{FC_MEMORY}")),
            None => (
                dir.join(FC_STATE).display().to_string(),
                dir.join(FC_MEMORY).display().to_string(),
            ),
        };
        client.snapshot_create(&SnapshotCreateParams {
            snapshot_path: state,
            mem_file_path: memory,
            snapshot_type: Some("Full".into()),
        })?;
        if let Some(j) = &self.jailer {
            let root = j.jail_dir(&self.binary, &spec.vm_id).join("root");
            for f in [FC_STATE, FC_MEMORY] {
                take_from_jail(&root.join(f), &dir.join(f))?;
            }
        }
        Ok(())
    }

    fn resume(&self, spec: &LaunchSpec) -> Result<(), VmmError> {
        Ok(
            firecracker_api::Client::new(self.host_api_socket(spec))
                .patch_vm(FcVmState::Resumed)?,
        )
    }

    fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<Child, VmmError> {
        let files = [
            (dir.join(FC_STATE), FC_STATE),
            (dir.join(FC_MEMORY), FC_MEMORY),
        ];
        let jailed = self.jailer.is_some();
        let (child, api_spec) = self.start_process(spec, if jailed { &files } else { &[] })?;
        let (state, memory) = if jailed {
            (format!("/{FC_STATE}"), format!("/{FC_MEMORY}"))
        } else {
            (
                files[0].0.display().to_string(),
                files[1].0.display().to_string(),
            )
        };
        self.run_calls(
            child,
            spec,
            FirecrackerVmm::restore_sequence(&api_spec, &state, &memory),
        )
    }
}

/// Moves a file the jailed VMM wrote out of its jail into `dst`. The jail
/// is the VMM's to write: what is there may be a symlink or a hard link to
/// any host file, which must never be followed or copied. The entry is
/// moved first (rename does not follow links) and checked where the jail
/// cannot reach it; a copy across filesystems reads it through a
/// descriptor opened without following links.
fn take_from_jail(src: &Path, dst: &Path) -> Result<(), VmmError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmmError::Io { path, source }
    };
    let not_plain = |path: &Path| VmmError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the jailed VMM left something other than a plain file of its own \
             there (a link?); it was not taken",
        ),
    };
    let plain = |m: &std::fs::Metadata| m.file_type().is_file() && m.nlink() == 1;
    if std::fs::rename(src, dst).is_ok() {
        let m = std::fs::symlink_metadata(dst).map_err(io(dst))?;
        if !plain(&m) {
            let _ = std::fs::remove_file(dst);
            return Err(not_plain(src));
        }
        return Ok(());
    }
    let mut from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(src)
        .map_err(|_| not_plain(src))?;
    if !plain(&from.metadata().map_err(io(src))?) {
        return Err(not_plain(src));
    }
    let mut to = std::fs::File::create(dst).map_err(io(dst))?;
    std::io::copy(&mut from, &mut to).map_err(io(dst))?;
    let _ = std::fs::remove_file(src);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::Accel;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            vm_id: "0123abcd".into(),
            name: "dev".into(),
            cpus: 2,
            memory_mib: 1024,
            accel: Accel::Kvm,
            kernel: "/i/vmlinux".into(),
            initrd: Some("/i/initrd.img".into()),
            root_disk: "/v/root.raw".into(),
            config_disk: "/v/config.ext4".into(),
            work_disk: "/v/work.ext4".into(),
            tap: "bg-0123abcd".into(),
            mac: "52:54:00:00:00:01".into(),
            console_log: "/v/console.log".into(),
            stderr_log: "/v/vmm.stderr".into(),
            run_dir: "/r".into(),
            background: false,
        }
    }

    #[test]
    fn firecracker_configure_sequence_is_valid_against_the_spec_and_ordered() {
        let s = firecracker_api::Spec::load().expect("spec");
        let seq = FirecrackerVmm::configure_sequence(&spec());
        for (m, p, b) in &seq {
            s.validate_request(m, p, Some(b))
                .unwrap_or_else(|e| panic!("{m} {p}: {e}"));
        }
        let paths: Vec<&str> = seq.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/logger",
                "/metrics",
                "/machine-config",
                "/boot-source",
                "/drives/rootfs",
                "/drives/config",
                "/drives/work",
                "/network-interfaces/eth0",
                "/vsock",
                "/actions"
            ]
        );
        assert_eq!(seq[4].2["is_root_device"], true);
        assert_eq!(seq[5].2["is_read_only"], true);
        assert_eq!(
            FirecrackerVmm::args(&spec()),
            [
                "--api-sock",
                "/r/firecracker.sock",
                "--id",
                "banger-vm-0123abcd"
            ]
        );
    }

    #[test]
    fn firecracker_restore_sequence_is_valid_and_overrides_tap_and_vsock() {
        let s = firecracker_api::Spec::load().expect("spec");
        let seq = FirecrackerVmm::restore_sequence(&spec(), "/s/vmstate", "/s/memory");
        for (m, p, b) in &seq {
            s.validate_request(m, p, Some(b))
                .unwrap_or_else(|e| panic!("{m} {p}: {e}"));
        }
        let paths: Vec<&str> = seq.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/logger", "/metrics", "/snapshot/load"]);
        let load = &seq[2].2;
        assert_eq!(load["snapshot_path"], "/s/vmstate");
        assert_eq!(load["mem_backend"]["backend_path"], "/s/memory");
        assert_eq!(load["network_overrides"][0]["host_dev_name"], "bg-0123abcd");
        assert_eq!(load["vsock_override"]["uds_path"], "/r/agent.vsock");
        assert_eq!(load["resume_vm"], true);
    }

    #[test]
    fn firecracker_disks_are_relative_to_the_vm_dir() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut sp = spec();
        sp.config_disk = dir.path().join("config.ext4");
        sp.work_disk = dir.path().join("work.ext4");
        sp.root_disk = "/dev/mapper/banger-x".into();
        let (d, rel) = relative_disks(&sp).expect("relative");
        assert_eq!(d, dir.path());
        assert_eq!(rel.config_disk, PathBuf::from("config.ext4"));
        assert_eq!(rel.work_disk, PathBuf::from("work.ext4"));
        assert_eq!(rel.root_disk, PathBuf::from("root.dev"));
        assert_eq!(
            std::fs::read_link(dir.path().join("root.dev")).expect("link"),
            PathBuf::from("/dev/mapper/banger-x")
        );
    }
}
