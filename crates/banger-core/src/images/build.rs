//! `image.build`: a Debian (or experimental Ubuntu) image from a recipe.
//!
//! Steps: prepare (digest; reuse when already built) -> kernel (fetch and
//! extract the kernel package) -> initrd -> bootstrap (mmdebstrap in unshare
//! mode, so a killed build leaks no mounts; apt archives synced in and out of
//! the cache) -> guest_init (banger's init, busybox, sshd settings) -> mkfs
//! (`mkfs.ext4 -d`, no loop mount; then `e2fsck -fn`) -> finalize (hashes,
//! manifest, one rename, one insert).

use std::path::Path;

use banger_api::{Image, Operation};
use serde_json::json;

use super::inroot::{InRoot, InRootError};
use super::kernel::{self, ExtractedKernel};
use super::recipe::{Distro, InitMode, Recipe};
use super::{backends_for, describe_artifacts, io_err, ImageError, Images, TmpDir};
use crate::guest::files::guest_files;
use crate::names::validate_name;
use crate::ops::{blocking, OpHandle, StepSpec};
use crate::tools::{self, ToolError};

fn steps() -> Vec<StepSpec> {
    vec![
        StepSpec::new("prepare", "Resolve the recipe"),
        StepSpec::new("kernel", "Fetch the kernel package"),
        StepSpec::new("initrd", "Build the initrd and vmlinux"),
        StepSpec::new("bootstrap", "Bootstrap the root filesystem (mmdebstrap)"),
        StepSpec::new("guest_init", "Install banger's guest init"),
        StepSpec::new("mkfs", "Make the ext4 image"),
        StepSpec::new("finalize", "Hash and register the image"),
    ]
}

impl Images {
    /// Validates the request and starts the build operation.
    pub fn start_build(&self, name: &str, recipe: Recipe) -> Result<Operation, ImageError> {
        validate_name("image", name)?;
        if self.exists(name)? {
            return Err(ImageError::Exists(name.into()));
        }
        if recipe.distro == Distro::Debian || recipe.distro == Distro::Ubuntu {
            tools::require("mmdebstrap")?;
        }
        let this = self.clone();
        let name = name.to_string();
        Ok(self
            .ops()
            .spawn("image.build", &name.clone(), steps(), move |h| async move {
                let _serial = this.inner.build_lock.lock().await;
                this.build(&h, &name, recipe).await
            })?)
    }

    async fn build(
        &self,
        h: &OpHandle,
        name: &str,
        recipe: Recipe,
    ) -> Result<serde_json::Value, ImageError> {
        let layout = self.inner.layout.clone();
        let tmp = TmpDir(layout.op_tmp(h.id()));
        let out = tmp.0.join("out");
        let rootfs = tmp.0.join("rootfs");
        let digest = recipe.digest();

        let reuse = h
            .step::<_, ImageError, _>("prepare", async {
                std::fs::create_dir_all(&out).map_err(io_err(&out))?;
                h.message("prepare", format!("recipe digest {}", &digest[..16]));
                Ok(self.stored_manifest(&digest))
            })
            .await?;
        if let Some(existing) = reuse {
            for s in ["kernel", "initrd", "bootstrap", "guest_init", "mkfs"] {
                h.skip(s);
            }
            return h
                .step("finalize", async {
                    h.message(
                        "finalize",
                        "same recipe already built: reusing its artifacts",
                    );
                    let image = Image {
                        name: name.into(),
                        created_at: chrono::Utc::now(),
                        used_by: vec![],
                        ..existing
                    };
                    self.register(&image)?;
                    Ok(json!({ "image": name, "digest": digest, "reused": true }))
                })
                .await;
        }

        let kernel_cache = layout.kernel_cache();
        let pkg = recipe.kernel_package.clone();
        let k: ExtractedKernel = h
            .step(
                "kernel",
                blocking(move || Ok::<_, ImageError>(kernel::fetch(&pkg, &kernel_cache)?)),
            )
            .await?;
        h.message("kernel", format!("kernel {}", k.version));

        let (k2, out2, scratch) = (k.clone(), out.clone(), tmp.0.join("initrd"));
        let (modules, vmlinux_ok) = h
            .step::<_, ImageError, _>(
                "initrd",
                blocking(move || {
                    let mods = kernel::build_initrd(&k2, &scratch, &out2.join("initrd.img"))?;
                    std::fs::copy(k2.vmlinuz(), out2.join("vmlinuz"))
                        .map_err(io_err(&k2.vmlinuz()))?;
                    let vmlinux =
                        kernel::extract_vmlinux(&k2.vmlinuz(), &out2.join("vmlinux")).is_ok();
                    Ok((mods, vmlinux))
                }),
            )
            .await?;
        if !vmlinux_ok {
            h.message(
                "initrd",
                "no vmlinux could be extracted: the image will not boot on Firecracker",
            );
        }
        let virtio_mmio = k.config_has("CONFIG_VIRTIO_MMIO") == Some("y")
            || modules.iter().any(|m| m == "virtio_mmio");

        let pkg_list = tmp.0.join("packages.txt");
        h.step("bootstrap", self.bootstrap(h, &recipe, &rootfs, &pkg_list))
            .await?;

        let (r2, k3, rootfs2) = (recipe.clone(), k.clone(), rootfs.clone());
        h.step(
            "guest_init",
            blocking(move || {
                install_guest_files(
                    &rootfs2,
                    r2.init,
                    r2.kernel_modules_in_rootfs.then_some(&k3),
                )
            }),
        )
        .await?;

        let (rootfs3, out3, size) = (rootfs.clone(), out.clone(), recipe.size_bytes);
        h.step(
            "mkfs",
            blocking(move || make_ext4(&rootfs3, &out3.join("rootfs.ext4"), size)),
        )
        .await?;

        let packages: Vec<String> = std::fs::read_to_string(&pkg_list)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        h.step("finalize", async {
            let out4 = out.clone();
            let artifacts = blocking(move || describe_artifacts(&out4)).await?;
            let image = Image {
                name: name.into(),
                digest: digest.clone(),
                source: "build".into(),
                created_at: chrono::Utc::now(),
                backends: backends_for(&artifacts, virtio_mmio),
                artifacts,
                kernel_version: Some(k.version.clone()),
                init: match recipe.init {
                    InitMode::Light => "light".into(),
                    InitMode::Systemd => "systemd".into(),
                },
                packages,
                recipe: serde_json::to_value(&recipe).ok(),
                agent: recipe.agent.map(|a| a.as_str().to_string()),
                used_by: vec![],
            };
            self.finish_dir(&out, &image)?;
            Ok(json!({ "image": name, "digest": digest, "reused": false }))
        })
        .await
    }

    /// Writes the manifest, moves `out` to `images/DIGEST` and registers the name.
    pub(crate) fn finish_dir(&self, out: &Path, image: &Image) -> Result<(), ImageError> {
        let manifest = out.join("manifest.json");
        let text = serde_json::to_string_pretty(image).map_err(|e| ImageError::BadInput {
            path: image.name.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&manifest, text).map_err(io_err(&manifest))?;
        let dest = self.inner.layout.image_dir(&image.digest);
        std::fs::create_dir_all(self.inner.layout.images_dir()).map_err(io_err(&dest))?;
        if dest.exists() {
            // Same content already present (a concurrent build): keep it.
            std::fs::remove_dir_all(out).map_err(io_err(out))?;
        } else {
            std::fs::rename(out, &dest).map_err(io_err(&dest))?;
        }
        if let Err(e) = self.register(image) {
            let used: i64 = self
                .inner
                .store
                .read(|c| {
                    c.query_row(
                        "SELECT count(*) FROM images WHERE digest = ?1",
                        [&image.digest],
                        |r| r.get(0),
                    )
                })
                .unwrap_or(1);
            if used == 0 {
                let _ = std::fs::remove_dir_all(&dest);
            }
            return Err(e);
        }
        Ok(())
    }

    async fn bootstrap(
        &self,
        h: &OpHandle,
        recipe: &Recipe,
        rootfs: &Path,
        pkg_list: &Path,
    ) -> Result<(), ImageError> {
        let cache = self.inner.layout.apt_cache();
        std::fs::create_dir_all(&cache).map_err(io_err(&cache))?;
        let mmdebstrap = tools::require("mmdebstrap")?;
        let mut cmd = tokio::process::Command::from(crate::network::host_net_command(&mmdebstrap));
        cmd.arg("--mode=unshare")
            .arg("--variant=minbase")
            .arg(format!("--include={}", recipe.all_packages().join(",")))
            .arg(match recipe.distro {
                Distro::Debian => "--components=main",
                Distro::Ubuntu => "--components=main,universe",
            })
            .arg("--skip=essential/unlink")
            .arg("--aptopt=Acquire::Retries \"3\"")
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
            .arg(format!(
                "--setup-hook=sync-in {} /var/cache/apt/archives/",
                cache.display()
            ))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {}",
                cache.display()
            ));
        if recipe.host_ca_certificates
            && std::path::Path::new("/usr/local/share/ca-certificates").is_dir()
        {
            // Trust what the host trusts (e.g. a TLS-inspecting proxy's CA).
            cmd.arg("--customize-hook=mkdir -p \"$1\"/usr/local/share/ca-certificates && cp -a /usr/local/share/ca-certificates/. \"$1\"/usr/local/share/ca-certificates/ && chroot \"$1\" update-ca-certificates >/dev/null");
        }
        if let Some(agent) = recipe.agent {
            // Node has its own CA store: point it at the system's.
            cmd.arg(format!(
                "--customize-hook=chroot \"$1\" env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt npm install -g --no-fund --no-audit {}",
                agent.npm_package()
            ));
        }
        cmd.arg(format!(
            "--customize-hook=chroot \"$1\" dpkg-query -W -f='${{Package}}=${{Version}}\\n' > {}",
            crate::shell::quote(&pkg_list.display().to_string())
        ))
        .arg("--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*")
        .arg(&recipe.suite)
        .arg(rootfs)
        .arg(&recipe.mirror);
        let mut count = 0u64;
        tools::run_streaming(cmd, "mmdebstrap", |line| {
            count += 1;
            h.progress("bootstrap", count, None, Some("lines"));
            if line.starts_with("I: ") || line.starts_with("W: ") || line.starts_with("E: ") {
                h.message("bootstrap", line.to_string());
            }
        })
        .await
        .map_err(|source| ImageError::Bootstrap {
            source,
            mirror: recipe.mirror.clone(),
            suite: recipe.suite.clone(),
        })
    }
}

/// Installs banger's guest files (and the kernel's modules) into a rootfs
/// dir. Every path is resolved inside the rootfs ([`InRoot`]): the image's
/// symlinks are the guest's, and none of them leads a write onto the host.
pub fn install_guest_files(
    rootfs: &Path,
    init: InitMode,
    modules: Option<&ExtractedKernel>,
) -> Result<(), ImageError> {
    let busybox = kernel::static_busybox().map_err(|e| ImageError::BadInput {
        path: "busybox".into(),
        reason: e.to_string(),
    })?;
    let root = InRoot::open(rootfs)?;
    for (rel, contents, mode) in guest_files(init) {
        root.write(rel, contents.as_bytes(), mode)?;
    }
    root.copy_in(&busybox, "usr/lib/banger/busybox", 0o755)?;
    for unit in ["banger-ready.service", "banger-agent.service"] {
        root.symlink(
            &format!("/etc/systemd/system/{unit}"),
            &format!("etc/systemd/system/multi-user.target.wants/{unit}"),
        )?;
    }
    // Timers and waits that slow a VM's boot or wake it up for nothing.
    for unit in [
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "e2scrub_reap.service",
        "systemd-networkd-wait-online.service",
    ] {
        root.symlink("/dev/null", &format!("etc/systemd/system/{unit}"))?;
    }
    if let Some(k) = modules {
        // The resolved directory (inside the rootfs) is what cp is given;
        // an entry of the kernel's name there is replaced, not entered.
        let dest = root.create_dir_all("lib/modules")?;
        if let Some(name) = k.modules_dir().file_name() {
            root.remove(&format!("lib/modules/{}", name.to_string_lossy()))
                .or_else(|e| match e {
                    // A directory of that name: cp merges into it.
                    InRootError::Write { .. } => Ok(()),
                    e => Err(e),
                })?;
        }
        let cp = tools::require("cp")?;
        tools::run(
            &cp,
            ["-a".as_ref(), k.modules_dir().as_os_str(), dest.as_os_str()],
        )?;
    }
    Ok(())
}

/// `mkfs.ext4 -d` of a directory into a sparse image of `size` bytes, then
/// a read-only `e2fsck`. A too-small size is reported as such.
pub fn make_ext4(dir: &Path, out: &Path, size: u64) -> Result<(), ImageError> {
    let mkfs = tools::require("mkfs.ext4")?;
    let r = tools::run(
        &mkfs,
        [
            "-q".as_ref(),
            "-F".as_ref(),
            "-L".as_ref(),
            "banger-root".as_ref(),
            "-E".as_ref(),
            "lazy_itable_init=1,lazy_journal_init=1".as_ref(),
            "-d".as_ref(),
            dir.as_os_str(),
            out.as_os_str(),
            format!("{}k", size / 1024).as_ref(),
        ],
    );
    if let Err(ToolError::Failed { stderr, .. }) = &r {
        if stderr.contains("Could not allocate")
            || stderr.contains("No space")
            || stderr.contains("too small")
        {
            let used = dir_size(dir);
            let _ = std::fs::remove_file(out);
            return Err(ImageError::BadInput {
                path: out.display().to_string(),
                reason: format!(
                    "the size {} is too small for the root filesystem's {} of files; use a larger --size",
                    banger_api::units::format_size(size),
                    banger_api::units::format_size(used)
                ),
            });
        }
    }
    r?;
    let e2fsck = tools::require("e2fsck")?;
    tools::run(&e2fsck, ["-fn".as_ref(), out.as_os_str()])?;
    Ok(())
}

/// Bytes used by the files under `dir` (du -sb).
pub fn dir_size(dir: &Path) -> u64 {
    let Some(du) = tools::find("du") else {
        return 0;
    };
    tools::run(&du, ["-sb".as_ref(), dir.as_os_str()])
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
