//! `image.import`: bring your own rootfs (an ext4 file, a directory, or a
//! tarball such as `docker export` output), with an optional kernel/initrd.
//!
//! Nothing is mounted: an ext4 file is cloned, a directory is packed with
//! `mkfs.ext4 -d`, a tarball is unpacked into scratch space first. banger's
//! guest init is added when missing (written into the ext4 with `debugfs`).

use std::io::Read;
use std::path::{Path, PathBuf};

use banger_api::{Image, ImageImportRequest, Operation};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::build::{dir_size, install_guest_files, make_ext4};
use super::kernel;
use super::recipe::InitMode;
use super::{backends_for, describe_artifacts, io_err, ImageError, Images, TmpDir};
use crate::guest::files::guest_files;
use crate::names::validate_name;
use crate::ops::{blocking, OpHandle, StepSpec};
use crate::storage::clone_file;
use crate::tools;
use banger_api::units::parse_size;

/// What a `--rootfs` argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    Ext4,
    Dir,
    Tarball,
}

/// Classifies by content (and name for tarballs). Pure given the header.
pub fn classify(path: &str, is_dir: bool, header: &[u8]) -> Option<RootfsKind> {
    if is_dir {
        return Some(RootfsKind::Dir);
    }
    if header.len() >= 1082 && header[1080] == 0x53 && header[1081] == 0xef {
        return Some(RootfsKind::Ext4);
    }
    let tar_name = [
        ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.bz2",
    ]
    .iter()
    .any(|s| path.ends_with(s));
    let compressed = header.starts_with(&[0x1f, 0x8b])
        || header.starts_with(&[0xfd, b'7', b'z', b'X', b'Z'])
        || header.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || header.starts_with(b"BZh");
    let ustar = header.len() > 262 && &header[257..262] == b"ustar";
    (ustar || (tar_name && compressed)).then_some(RootfsKind::Tarball)
}

fn steps() -> Vec<StepSpec> {
    vec![
        StepSpec::new("inspect", "Inspect the inputs"),
        StepSpec::new("kernel", "Prepare kernel and initrd"),
        StepSpec::new("rootfs", "Make the root filesystem"),
        StepSpec::new("guest_init", "Add banger's guest init if missing"),
        StepSpec::new("finalize", "Check, hash and register the image"),
    ]
}

fn bad(path: &str, reason: impl Into<String>) -> ImageError {
    ImageError::BadInput {
        path: path.into(),
        reason: reason.into(),
    }
}

fn check_file(label: &str, p: &Option<String>) -> Result<Option<PathBuf>, ImageError> {
    let Some(p) = p else { return Ok(None) };
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(bad(p, format!("the {label} path must be absolute")));
    }
    if !path.is_file() {
        return Err(bad(p, format!("the {label} file does not exist")));
    }
    Ok(Some(path))
}

impl Images {
    /// Validates the request (everything checkable without work) and starts
    /// the import operation.
    pub fn start_import(&self, req: ImageImportRequest) -> Result<Operation, ImageError> {
        validate_name("image", &req.name)?;
        if self.exists(&req.name)? {
            return Err(ImageError::Exists(req.name.clone()));
        }
        let rootfs = PathBuf::from(&req.rootfs);
        if !rootfs.is_absolute() {
            return Err(bad(&req.rootfs, "the rootfs path must be absolute"));
        }
        let meta = std::fs::metadata(&rootfs)
            .map_err(|e| bad(&req.rootfs, format!("cannot read it: {e}")))?;
        let mut header = vec![0u8; 2048];
        if meta.is_file() {
            let mut f = std::fs::File::open(&rootfs)
                .map_err(|e| bad(&req.rootfs, format!("cannot open it: {e}")))?;
            let n = f
                .read(&mut header)
                .map_err(|e| bad(&req.rootfs, format!("cannot read it: {e}")))?;
            header.truncate(n);
        }
        let kind = classify(&req.rootfs, meta.is_dir(), &header).ok_or_else(|| {
            bad(
                &req.rootfs,
                "it is neither an ext4 image, a directory, nor a tarball",
            )
        })?;
        let kernel = check_file("kernel", &req.kernel)?;
        let initrd = check_file("initrd", &req.initrd)?;
        let vmlinux = check_file("vmlinux", &req.vmlinux)?;
        if initrd.is_some() && kernel.is_none() {
            return Err(bad(
                req.initrd.as_deref().unwrap_or(""),
                "an initrd needs its kernel (--kernel)",
            ));
        }
        let size = req
            .size
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| bad(&req.rootfs, e.to_string()))?;
        let this = self.clone();
        let name = req.name.clone();
        Ok(self.ops().spawn(
            "image.import",
            &name.clone(),
            steps(),
            move |h| async move {
                let _serial = this.inner.build_lock.lock().await;
                this.import(&h, &name, kind, rootfs, kernel, initrd, vmlinux, size)
                    .await
            },
        )?)
    }

    #[allow(clippy::too_many_arguments)]
    async fn import(
        &self,
        h: &OpHandle,
        name: &str,
        kind: RootfsKind,
        rootfs: PathBuf,
        kernel_in: Option<PathBuf>,
        initrd_in: Option<PathBuf>,
        vmlinux_in: Option<PathBuf>,
        size: Option<u64>,
    ) -> Result<serde_json::Value, ImageError> {
        let tmp = TmpDir(self.inner.layout.op_tmp(h.id()));
        let out = tmp.0.join("out");
        h.step::<_, ImageError, _>("inspect", async {
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            h.message(
                "inspect",
                format!("rootfs is {kind:?} at {}", rootfs.display()),
            );
            Ok(())
        })
        .await?;

        let (out2, cache) = (out.clone(), self.inner.layout.kernel_cache());
        let scratch = tmp.0.join("initrd");
        let (kernel_version, virtio_mmio) = h
            .step::<_, ImageError, _>(
                "kernel",
                blocking(move || {
                    let copy = |from: &Path, to: &str| -> Result<(), ImageError> {
                        std::fs::copy(from, out2.join(to))
                            .map(|_| ())
                            .map_err(io_err(from))
                    };
                    if let Some(k) = &kernel_in {
                        copy(k, "vmlinuz")?;
                        if let Some(i) = &initrd_in {
                            copy(i, "initrd.img")?;
                        }
                        match &vmlinux_in {
                            Some(v) => copy(v, "vmlinux")?,
                            None => {
                                let _ = kernel::extract_vmlinux(k, &out2.join("vmlinux"));
                            }
                        }
                        return Ok((None, vmlinux_in.is_some()));
                    }
                    let k = kernel::fetch("linux-image-cloud-amd64", &cache)?;
                    let mods = kernel::build_initrd(&k, &scratch, &out2.join("initrd.img"))?;
                    copy(&k.vmlinuz(), "vmlinuz")?;
                    match &vmlinux_in {
                        Some(v) => copy(v, "vmlinux")?,
                        None => {
                            let _ = kernel::extract_vmlinux(&k.vmlinuz(), &out2.join("vmlinux"));
                        }
                    }
                    Ok((
                        Some(k.version.clone()),
                        mods.iter().any(|m| m == "virtio_mmio"),
                    ))
                }),
            )
            .await?;

        let image_file = out.join("rootfs.ext4");
        let (img2, unpack) = (image_file.clone(), tmp.0.join("unpack"));
        let rootfs2 = rootfs.clone();
        h.step::<_, ImageError, _>(
            "rootfs",
            blocking(move || {
                let pad = |used: u64| size.unwrap_or(used + used / 2 + (256 << 20)).max(256 << 20);
                match kind {
                    RootfsKind::Ext4 => {
                        clone_file(&rootfs2, &img2)?;
                        let e2fsck = tools::require("e2fsck")?;
                        tools::run(&e2fsck, ["-fn".as_ref(), img2.as_os_str()]).map_err(|e| {
                            bad(
                                &rootfs2.display().to_string(),
                                format!("the ext4 image is damaged: {e}"),
                            )
                        })?;
                    }
                    RootfsKind::Dir => make_ext4(&rootfs2, &img2, pad(dir_size(&rootfs2)))?,
                    RootfsKind::Tarball => {
                        std::fs::create_dir_all(&unpack).map_err(io_err(&unpack))?;
                        let tar = tools::require("tar")?;
                        tools::run(
                            &tar,
                            [
                                "-x".as_ref(),
                                "--numeric-owner".as_ref(),
                                "-p".as_ref(),
                                "-f".as_ref(),
                                rootfs2.as_os_str(),
                                "-C".as_ref(),
                                unpack.as_os_str(),
                            ],
                        )
                        .map_err(|e| {
                            bad(
                                &rootfs2.display().to_string(),
                                format!("the tarball cannot be unpacked: {e}"),
                            )
                        })?;
                        install_guest_files(&unpack, InitMode::Light, None)?;
                        make_ext4(&unpack, &img2, pad(dir_size(&unpack)))?;
                        let _ = std::fs::remove_dir_all(&unpack);
                    }
                }
                Ok(())
            }),
        )
        .await?;

        let (img3, staging) = (image_file.clone(), tmp.0.join("guest"));
        let (added, has_sshd) = h
            .step::<_, ImageError, _>(
                "guest_init",
                blocking(move || {
                    let added = if debugfs_exists(&img3, "/usr/lib/banger/init")? {
                        false
                    } else {
                        inject_guest_files(&img3, &staging)?;
                        true
                    };
                    Ok((added, debugfs_exists(&img3, "/usr/sbin/sshd")?))
                }),
            )
            .await?;
        h.message(
            "guest_init",
            if added {
                "added banger's guest init"
            } else {
                "banger's guest init already present"
            },
        );
        if !has_sshd {
            h.message("guest_init", "warning: /usr/sbin/sshd is missing: VMs from this image cannot be reached over SSH");
        }

        h.step("finalize", async {
            let (out4, img4) = (out.clone(), image_file.clone());
            let artifacts = blocking(move || {
                let e2fsck = tools::require("e2fsck")?;
                tools::run(&e2fsck, ["-fn".as_ref(), img4.as_os_str()])?;
                describe_artifacts(&out4)
            })
            .await?;
            let mut hasher = Sha256::new();
            for a in &artifacts {
                hasher.update(format!("{}:{}\n", a.kind, a.sha256));
            }
            let digest = hex::encode(hasher.finalize());
            let image = Image {
                name: name.into(),
                digest: digest.clone(),
                source: "import".into(),
                created_at: chrono::Utc::now(),
                backends: backends_for(&artifacts, virtio_mmio),
                artifacts,
                kernel_version,
                init: "light".into(),
                packages: vec![],
                recipe: None,
                agent: None,
                used_by: vec![],
            };
            self.finish_dir(&out, &image)?;
            Ok(json!({ "image": name, "digest": digest, "guest_init_added": added, "sshd": has_sshd }))
        })
        .await
    }
}

/// Whether `path` exists inside the ext4 image (read-only debugfs).
fn debugfs_exists(image: &Path, path: &str) -> Result<bool, ImageError> {
    let debugfs = tools::require("debugfs")?;
    let out = std::process::Command::new(debugfs)
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err(image))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.contains("Inode:"))
}

/// Writes banger's guest files into the ext4 image with `debugfs -w`.
fn inject_guest_files(image: &Path, staging: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(staging).map_err(io_err(staging))?;
    let mut script =
        String::from("mkdir /usr\nmkdir /usr/lib\nmkdir /usr/lib/banger\ncd /usr/lib/banger\n");
    let mut files: Vec<(String, PathBuf, u32)> = guest_files(InitMode::Light)
        .into_iter()
        .filter_map(|(rel, contents, mode)| {
            let name = rel.strip_prefix("usr/lib/banger/")?.to_string();
            Some((name, contents, mode))
        })
        .map(|(name, contents, mode)| {
            let p = staging.join(&name);
            std::fs::write(&p, contents).map(|_| (name, p, mode))
        })
        .collect::<Result<_, _>>()
        .map_err(io_err(staging))?;
    let busybox = kernel::static_busybox().map_err(|e| bad("busybox", e.to_string()))?;
    files.push(("busybox".into(), busybox, 0o755));
    for (name, src, mode) in &files {
        script.push_str(&format!(
            "rm {name}\nwrite {} {name}\nsif {name} mode 0{:o}\nsif {name} uid 0\nsif {name} gid 0\n",
            src.display(),
            0o100000 | mode
        ));
    }
    let script_path = staging.join("debugfs.cmds");
    std::fs::write(&script_path, script).map_err(io_err(&script_path))?;
    let debugfs = tools::require("debugfs")?;
    tools::run(
        &debugfs,
        [
            "-w".as_ref(),
            "-f".as_ref(),
            script_path.as_os_str(),
            image.as_os_str(),
        ],
    )?;
    if !debugfs_exists(image, "/usr/lib/banger/init")? {
        return Err(bad(
            &image.display().to_string(),
            "debugfs could not add banger's guest init (is the filesystem full?)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_inputs() {
        let mut ext4 = vec![0u8; 2048];
        ext4[1080] = 0x53;
        ext4[1081] = 0xef;
        assert_eq!(
            classify("/x/root.img", false, &ext4),
            Some(RootfsKind::Ext4)
        );
        assert_eq!(classify("/x/dir", true, &[]), Some(RootfsKind::Dir));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(
            classify("/x/export", false, &tar),
            Some(RootfsKind::Tarball)
        );
        assert_eq!(
            classify("/x/a.tar.gz", false, &[0x1f, 0x8b, 8, 0]),
            Some(RootfsKind::Tarball)
        );
        assert_eq!(classify("/x/notes.txt", false, b"hello"), None);
        assert_eq!(classify("/x/a.tar.gz", false, b"not gzip"), None);
    }

    #[test]
    fn injects_guest_init_into_an_ext4_without_mounting() {
        if tools::find("debugfs").is_none() || tools::find("busybox").is_none() {
            panic!("needs e2fsprogs and busybox-static (scripts/deps.sh installs them)");
        }
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/hostname"), "x\n").expect("w");
        let img = dir.path().join("r.ext4");
        make_ext4(&root, &img, 64 << 20).expect("mkfs");
        assert!(!debugfs_exists(&img, "/usr/lib/banger/init").expect("stat"));
        inject_guest_files(&img, &dir.path().join("staging")).expect("inject");
        for f in [
            "/usr/lib/banger/init",
            "/usr/lib/banger/busybox",
            "/usr/lib/banger/inittab",
            "/usr/lib/banger/ready",
        ] {
            assert!(debugfs_exists(&img, f).expect("stat"), "{f} missing");
        }
        let out = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .output()
            .expect("e2fsck");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
