//! Can this host boot *real* kernels under KVM? `/dev/kvm` existing is not
//! enough: on a nested PVM host (`kvm_pvm`) tiny guests run but stock Linux
//! kernels hang early, and `-cpu host` can abort. So the probe boots the
//! image's own kernel under KVM with a tiny busybox initrd that prints a
//! marker and powers off, with a timeout. The verdict is cached per kernel
//! (sha256 of the file) and host boot id, in `STATE_DIR/cache/kvm-probe.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::tools;

pub const PROBE_MARKER: &str = "BANGER-KVM-PROBE-OK";
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub kernel_sha256: String,
    pub boot_id: String,
    pub kvm_boots_real_kernels: bool,
    /// What happened (`booted in 0.8s`, `timed out after 5s`, `qemu exited: ...`).
    pub detail: String,
}

/// The host's boot id (the cache is only valid until the next reboot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cache/kvm-probe.json")
}

/// Cached verdicts, newest last.
pub fn load_cache(state_dir: &Path) -> Vec<Verdict> {
    std::fs::read_to_string(cache_path(state_dir))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The cached verdict for this kernel on this boot, if any. Pure over `cache`.
pub fn lookup<'a>(cache: &'a [Verdict], kernel_sha256: &str, boot_id: &str) -> Option<&'a Verdict> {
    cache
        .iter()
        .rev()
        .find(|v| v.kernel_sha256 == kernel_sha256 && v.boot_id == boot_id)
}

/// The `/init` of the probe initrd.
pub fn probe_init() -> String {
    format!("#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\necho {PROBE_MARKER} > /dev/ttyS0\n/bin/busybox poweroff -f\n")
}

/// Runs the probe (or returns the cached verdict). Blocking; takes up to
/// [`PROBE_TIMEOUT`] on a host where KVM cannot boot the kernel.
pub fn probe(state_dir: &Path, kernel: &Path, kernel_sha256: &str) -> Verdict {
    let boot = boot_id();
    let mut cache = load_cache(state_dir);
    if let Some(v) = lookup(&cache, kernel_sha256, &boot) {
        return v.clone();
    }
    let (ok, detail) = run_probe(state_dir, kernel);
    let v = Verdict {
        kernel_sha256: kernel_sha256.into(),
        boot_id: boot,
        kvm_boots_real_kernels: ok,
        detail,
    };
    tracing::info!(kernel = %kernel.display(), kvm = ok, detail = %v.detail, "KVM real-kernel probe");
    cache.push(v.clone());
    if cache.len() > 32 {
        cache.remove(0);
    }
    let p = cache_path(state_dir);
    if let Some(dir) = p.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&p, serde_json::to_string_pretty(&cache).unwrap_or_default());
    v
}

fn run_probe(state_dir: &Path, kernel: &Path) -> (bool, String) {
    if !Path::new("/dev/kvm").exists() {
        return (false, "/dev/kvm is missing".into());
    }
    let (Some(qemu), Ok(busybox)) = (
        tools::find("qemu-system-x86_64"),
        crate::images::kernel::static_busybox(),
    ) else {
        return (
            false,
            "qemu-system-x86_64 or busybox-static is missing".into(),
        );
    };
    let dir = state_dir.join(format!("tmp/kvm-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = probe_initrd(&dir, &busybox)
        .and_then(|initrd| boot_probe(&qemu, kernel, &initrd, &dir.join("console.log")));
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|e| (false, format!("probe failed: {e}")))
}

/// An initrd of busybox and the probe's /init, packed in `dir`.
fn probe_initrd(dir: &Path, busybox: &Path) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(root.join("dev")).map_err(|e| e.to_string())?;
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| e.to_string())?;
    let init = root.join("init");
    std::fs::write(&init, probe_init()).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let initrd = dir.join("initrd.img");
    let sh = tools::require("sh").map_err(|e| e.to_string())?;
    tools::run(
        &sh,
        [
            "-c".as_ref(),
            "cd \"$1\" && find . | cpio --quiet -o -H newc > \"$2\"".as_ref(),
            "sh".as_ref(),
            root.as_os_str(),
            initrd.as_os_str(),
        ],
    )
    .map_err(|e| e.to_string())?;
    Ok(initrd)
}

/// Boots `kernel` with the probe initrd under KVM until its marker is on
/// the console (true), QEMU exits, or the probe times out (false).
fn boot_probe(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    out: &Path,
) -> Result<(bool, String), String> {
    let mut child = Command::new(qemu)
        .args(["-accel", "kvm", "-M", "q35", "-cpu", "host", "-m", "256"])
        .args(["-smp", "1", "-display", "none", "-no-reboot"])
        .args(["-nodefaults", "-no-user-config"])
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    loop {
        if std::fs::read_to_string(out).is_ok_and(|t| t.contains(PROBE_MARKER)) {
            let _ = child.kill();
            let _ = child.wait();
            let took = t0.elapsed().as_secs_f64();
            return Ok((true, format!("booted to userspace in {took:.1}s")));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let why = format!("qemu exited ({status}) without booting: {}", err.trim());
            return Ok((false, why));
        }
        if t0.elapsed() > PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let why = format!(
                "the kernel did not reach userspace within {}s under KVM",
                PROBE_TIMEOUT.as_secs()
            );
            return Ok((false, why));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lookup_is_per_kernel_and_boot() {
        let v = |k: &str, b: &str, ok| Verdict {
            kernel_sha256: k.into(),
            boot_id: b.into(),
            kvm_boots_real_kernels: ok,
            detail: String::new(),
        };
        let cache = vec![
            v("k1", "b1", false),
            v("k2", "b1", true),
            v("k1", "b2", true),
        ];
        assert_eq!(
            lookup(&cache, "k1", "b1").map(|x| x.kvm_boots_real_kernels),
            Some(false)
        );
        assert_eq!(
            lookup(&cache, "k1", "b2").map(|x| x.kvm_boots_real_kernels),
            Some(true)
        );
        assert!(lookup(&cache, "k3", "b1").is_none());
    }

    #[test]
    fn probe_init_parses() {
        let body = probe_init();
        let body = body.split_once('\n').map(|x| x.1).unwrap_or_default();
        let st = Command::new("sh")
            .args(["-n", "-c", body])
            .status()
            .expect("sh");
        assert!(st.success());
        assert!(probe_init().contains(PROBE_MARKER));
    }
}
