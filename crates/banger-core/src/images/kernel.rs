//! Kernel artifacts from a distribution kernel package, extracted (never
//! installed into the host's /boot): the bzImage for QEMU, an initrd with
//! the virtio modules, the module tree for the rootfs, and an uncompressed
//! ELF `vmlinux` for Firecracker.
//!
//! Downloads go through the host's apt (`apt-get download`) into a cache
//! keyed by the versioned package name, so rebuilds reuse them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::guest;
use crate::tools::{self, ToolError};

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("Cannot resolve kernel package {package}: apt knows no linux-image-* it depends on")]
    Unresolved { package: String },
    #[error("The kernel package {0} has no /boot/vmlinuz-*")]
    NoVmlinuz(String),
    #[error("No compressed kernel payload found in {0} that decompresses to an ELF vmlinux")]
    NoVmlinux(PathBuf),
    #[error("Kernel file I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

impl crate::ToApiError for KernelError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            KernelError::Tool(t) => t.code(),
            _ => banger_api::ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            KernelError::Tool(t) => t.hint(),
            KernelError::Unresolved { .. } => Some(
                "Run `sudo apt-get update`, or name another kernel_package in the recipe".into(),
            ),
            _ => None,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.into(),
        source,
    }
}

/// An extracted kernel package.
#[derive(Debug, Clone)]
pub struct ExtractedKernel {
    /// e.g. `6.1.0-56-cloud-amd64`
    pub version: String,
    /// The extracted package root (`boot/`, `lib/modules/`).
    pub root: PathBuf,
}

impl ExtractedKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.version))
    }
    pub fn config(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("config-{}", self.version))
    }
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
    /// Whether the kernel config sets `option` to `y` or `m`.
    pub fn config_has(&self, option: &str) -> Option<&'static str> {
        let text = std::fs::read_to_string(self.config()).ok()?;
        text.lines()
            .find_map(|l| match l.strip_prefix(option)?.strip_prefix('=')? {
                "y" => Some("y"),
                "m" => Some("m"),
                _ => None,
            })
    }
}

/// `linux-image-cloud-amd64` -> `linux-image-6.1.0-56-cloud-amd64` (the
/// meta package's versioned dependency); a versioned name is returned as is.
pub fn resolve_package(package: &str) -> Result<String, KernelError> {
    let apt_cache = tools::require("apt-cache")?;
    let out = tools::run(&apt_cache, ["depends", package])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let dep = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-") && d.chars().any(|c| c.is_ascii_digit()))
        .map(str::to_string);
    match dep {
        Some(d) => Ok(d),
        None if package.chars().nth(12).is_some_and(|c| c.is_ascii_digit()) => Ok(package.into()),
        None => Err(KernelError::Unresolved {
            package: package.into(),
        }),
    }
}

/// Downloads (cached) and extracts the kernel package into `cache/<versioned>/`.
pub fn fetch(package: &str, cache: &Path) -> Result<ExtractedKernel, KernelError> {
    let versioned = resolve_package(package)?;
    let version = versioned.trim_start_matches("linux-image-").to_string();
    let dir = cache.join(&versioned);
    let root = dir.join("x");
    let ready = dir.join(".extracted");
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let apt_get = tools::require("apt-get")?;
        let out = crate::network::host_net_command(&apt_get)
            .arg("download")
            .arg(&versioned)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ToolError::Spawn {
                program: "apt-get".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(ToolError::Failed {
                command: format!("apt-get download {versioned}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
            }
            .into());
        }
        let deb = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| KernelError::NoVmlinuz(versioned.clone()))?;
        let dpkg_deb = tools::require("dpkg-deb")?;
        tools::run(
            &dpkg_deb,
            ["-x".as_ref(), deb.as_os_str(), root.as_os_str()],
        )?;
        // The .deb ships no modules.dep.
        if let Ok(depmod) = tools::require("depmod") {
            tools::run(&depmod, ["-b".as_ref(), root.as_os_str(), version.as_ref()])?;
        }
        let _ = std::fs::remove_file(&deb);
        std::fs::write(&ready, b"").map_err(io(&ready))?;
    }
    let k = ExtractedKernel { version, root };
    if !k.vmlinuz().exists() {
        return Err(KernelError::NoVmlinuz(versioned));
    }
    Ok(k)
}

/// Builds the initrd (uncompressed newc cpio): static busybox, the virtio
/// modules, and [`guest::initrd_init`].
pub fn build_initrd(
    k: &ExtractedKernel,
    scratch: &Path,
    out: &Path,
) -> Result<Vec<String>, KernelError> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(scratch);
    for d in ["bin", "dev", "proc", "sys", "newroot", "mods"] {
        std::fs::create_dir_all(scratch.join(d)).map_err(io(scratch))?;
    }
    let busybox = static_busybox()?;
    std::fs::copy(&busybox, scratch.join("bin/busybox")).map_err(io(&busybox))?;
    let mut loaded = Vec::new();
    for m in guest::INITRD_MODULES {
        let stem = m.rsplit('/').next().unwrap_or(m);
        let src = k.modules_dir().join("kernel").join(format!("{m}.ko"));
        if src.exists() {
            std::fs::copy(&src, scratch.join("mods").join(format!("{stem}.ko")))
                .map_err(io(&src))?;
            loaded.push(stem.to_string());
        }
    }
    let init = scratch.join("init");
    std::fs::write(&init, guest::initrd_init()).map_err(io(&init))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).map_err(io(&init))?;
    tools::require("cpio")?;
    let sh = tools::require("sh")?;
    tools::run(
        &sh,
        [
            "-c".as_ref(),
            "cd \"$1\" && find . -print0 | LC_ALL=C sort -z | cpio --null --quiet -o -H newc -R 0:0 > \"$2\"".as_ref(),
            "sh".as_ref(),
            scratch.as_os_str(),
            out.as_os_str(),
        ],
    )?;
    let _ = std::fs::remove_dir_all(scratch);
    Ok(loaded)
}

/// The host's statically linked busybox (package busybox-static).
pub fn static_busybox() -> Result<PathBuf, KernelError> {
    let p = tools::require("busybox")?;
    let file = tools::find("file");
    if let Some(file) = file {
        if let Ok(out) = tools::run(&file, ["-L".as_ref(), p.as_os_str()]) {
            if String::from_utf8_lossy(&out.stdout).contains("dynamically linked") {
                return Err(ToolError::Missing {
                    program: "busybox".into(),
                }
                .into());
            }
        }
    }
    Ok(p)
}

/// Compressed-payload magics in a bzImage and the command that decompresses
/// each (as the kernel's scripts/extract-vmlinux does).
const PAYLOADS: &[(&[u8], &str, &[&str])] = &[
    (&[0x1f, 0x8b, 0x08], "gzip", &["-dc"]),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz", &["-dc"]),
    (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", &["-dc"]),
    (&[0x02, 0x21, 0x4c, 0x18], "lz4", &["-dc"]),
    (b"BZh", "bzip2", &["-dc"]),
    (&[0x5d, 0x00, 0x00, 0x00], "unlzma", &["-c"]),
];

/// Offsets of every candidate payload, in file order. Pure.
pub fn payload_candidates(image: &[u8]) -> Vec<(usize, &'static str, &'static [&'static str])> {
    let mut v = Vec::new();
    for (magic, tool, args) in PAYLOADS {
        let mut start = 0;
        while let Some(pos) = find(&image[start..], magic) {
            v.push((start + pos, *tool, *args));
            start += pos + 1;
            if v.len() > 64 {
                break;
            }
        }
    }
    v.sort_by_key(|(o, _, _)| *o);
    v
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Extracts the uncompressed ELF vmlinux from a bzImage.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), KernelError> {
    let image = std::fs::read(bzimage).map_err(io(bzimage))?;
    for (offset, tool, args) in payload_candidates(&image) {
        let Some(program) = tools::find(tool) else {
            continue;
        };
        let Ok(mut child) = Command::new(&program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            continue;
        };
        let payload = image[offset..].to_vec();
        let mut stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(&payload);
            }
        });
        let output = child.wait_with_output();
        let _ = writer.join();
        // Trailing data after the payload makes some decompressors exit
        // non-zero; what counts is an ELF image on stdout.
        if let Ok(o) = output {
            if o.stdout.starts_with(b"\x7fELF") {
                std::fs::write(out, &o.stdout).map_err(io(out))?;
                return Ok(());
            }
        }
    }
    Err(KernelError::NoVmlinux(bzimage.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_payload_magics_in_order() {
        let mut img = vec![0u8; 64];
        img[10..13].copy_from_slice(&[0x1f, 0x8b, 0x08]);
        img[30..34].copy_from_slice(&[0x02, 0x21, 0x4c, 0x18]);
        let c = payload_candidates(&img);
        let got: Vec<(usize, &str)> = c.iter().map(|(o, t, _)| (*o, *t)).collect();
        assert!(
            got.contains(&(10, "gzip")) && got.contains(&(30, "lz4")),
            "{got:?}"
        );
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn extracts_an_elf_from_a_gzip_payload() {
        let dir = tempfile::tempdir().expect("tmp");
        let elf = dir.path().join("elf");
        std::fs::write(&elf, b"\x7fELF fake kernel body").expect("write");
        let gz = std::process::Command::new("gzip")
            .arg("-c")
            .arg(&elf)
            .output()
            .expect("gzip");
        let mut bz = b"MZ bzImage header .....".to_vec();
        bz.extend_from_slice(&gz.stdout);
        bz.extend_from_slice(b"trailing");
        let bzp = dir.path().join("bzImage");
        std::fs::write(&bzp, &bz).expect("write");
        let out = dir.path().join("vmlinux");
        extract_vmlinux(&bzp, &out).expect("extracts");
        assert_eq!(
            std::fs::read(&out).expect("read"),
            b"\x7fELF fake kernel body"
        );
        std::fs::write(&bzp, b"no payload here").expect("write");
        assert!(extract_vmlinux(&bzp, &out).is_err());
    }
}
