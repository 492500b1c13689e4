//! Device-mapper snapshot root disks (Firecracker boots raw block devices).
//!
//! The image's rootfs is attached read-only as the origin (a loop device),
//! a per-VM sparse file `root.cow` as the persistent exception store (a
//! second loop device), and `dmsetup create banger-ID` maps a snapshot of
//! the two: writes go to the COW file, the image is never touched, and the
//! clone costs nothing up front. The device is named after the VM so that
//! reconcile can find and remove stale ones; it exists only while the VM
//! runs (set up at start, removed at stop), the COW file persists.
//!
//! Tables and names are pure functions, unit-tested; the effects shell out
//! to `losetup` and `dmsetup`.

use std::path::{Path, PathBuf};

use crate::tools::{self, ToolError};

/// Chunk size of the snapshot in 512-byte sectors (4 KiB).
pub const CHUNK_SECTORS: u64 = 8;

/// The device-mapper name of a VM's root disk.
pub fn device_name(vm_id: &str) -> String {
    format!("banger-{vm_id}")
}

/// The VM id of a banger device-mapper name, if it is one.
pub fn vm_id_of(device: &str) -> Option<&str> {
    device
        .strip_prefix("banger-")
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The dmsetup table of a persistent snapshot. Pure.
pub fn snapshot_table(origin_dev: &str, cow_dev: &str, size_bytes: u64) -> String {
    format!(
        "0 {} snapshot {origin_dev} {cow_dev} P {CHUNK_SECTORS}",
        size_bytes / 512
    )
}

/// Device names from `dmsetup ls` output (`name\t(253:0)` lines). Pure.
pub fn parse_dmsetup_ls(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("No devices found"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Whether this host can make device-mapper snapshots: the tools exist and
/// the kernel driver answers (`dmsetup version`; the control node alone
/// proves nothing, dmsetup creates it even without a driver). Checked once.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Path::new("/dev/mapper/control").exists()
            && tools::find("losetup").is_some()
            && tools::find("dmsetup").is_some_and(|d| tools::run(&d, ["version"]).is_ok())
    })
}

pub fn device_path(vm_id: &str) -> PathBuf {
    Path::new("/dev/mapper").join(device_name(vm_id))
}

fn losetup(args: &[&std::ffi::OsStr]) -> Result<String, ToolError> {
    let l = tools::require("losetup")?;
    let out = tools::run(&l, args)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Maps the snapshot for a VM; returns the device path. Idempotent.
pub fn setup(vm_id: &str, origin: &Path, cow: &Path) -> Result<PathBuf, ToolError> {
    let dev = device_path(vm_id);
    if dev.exists() {
        return Ok(dev);
    }
    let size = std::fs::metadata(origin)
        .map_err(|source| ToolError::Spawn {
            program: format!("stat {}", origin.display()),
            source,
        })?
        .len();
    if !cow.exists() {
        let f = std::fs::File::create(cow).map_err(|source| ToolError::Spawn {
            program: format!("create {}", cow.display()),
            source,
        })?;
        f.set_len(size).map_err(|source| ToolError::Spawn {
            program: format!("truncate {}", cow.display()),
            source,
        })?;
    }
    let o = losetup(&[
        "--find".as_ref(),
        "--show".as_ref(),
        "--read-only".as_ref(),
        origin.as_os_str(),
    ])?;
    let c = match losetup(&["--find".as_ref(), "--show".as_ref(), cow.as_os_str()]) {
        Ok(c) => c,
        Err(e) => {
            let _ = losetup(&["-d".as_ref(), o.as_ref()]);
            return Err(e);
        }
    };
    let dmsetup = tools::require("dmsetup")?;
    if let Err(e) = tools::run(
        &dmsetup,
        [
            "create",
            &device_name(vm_id),
            "--table",
            &snapshot_table(&o, &c, size),
        ],
    ) {
        let _ = losetup(&["-d".as_ref(), o.as_ref()]);
        let _ = losetup(&["-d".as_ref(), c.as_ref()]);
        return Err(e);
    }
    Ok(dev)
}

/// Removes a VM's snapshot device and detaches its loop devices. A missing
/// device is fine.
pub fn teardown(vm_id: &str) {
    if !available() {
        return;
    }
    let Some(dmsetup) = tools::find("dmsetup") else {
        return;
    };
    let name = device_name(vm_id);
    // The table names the loop devices as major:minor.
    let loops: Vec<String> = tools::run(&dmsetup, ["table", &name])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .skip(3)
                .take(2)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let _ = tools::run(&dmsetup, ["remove", "--retry", &name]);
    for majmin in loops {
        if let Some(dev) = loop_for(&majmin) {
            let _ = losetup(&["-d".as_ref(), dev.as_ref()]);
        }
    }
}

/// The files behind a device's loop devices (origin, then COW).
pub fn backing_files(vm_id: &str) -> Vec<PathBuf> {
    let Some(dmsetup) = tools::find("dmsetup") else {
        return Vec::new();
    };
    let table = tools::run(&dmsetup, ["table", &device_name(vm_id)])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    table
        .split_whitespace()
        .skip(3)
        .take(2)
        .filter_map(|majmin| {
            let minor = majmin.strip_prefix("7:")?;
            let f = std::fs::read_to_string(format!("/sys/block/loop{minor}/loop/backing_file"));
            f.ok().map(|f| PathBuf::from(f.trim_end()))
        })
        .collect()
}

/// Whether the snapshot device of `vm_id` is over files under `dir` (this
/// daemon's VMs dir): another daemon's devices are not ours to remove.
pub fn is_under(vm_id: &str, dir: &Path) -> bool {
    backing_files(vm_id).iter().any(|f| f.starts_with(dir))
}

/// `7:3` or `/dev/loop3` -> `/dev/loop3`.
pub fn loop_for(spec: &str) -> Option<String> {
    if spec.starts_with("/dev/") {
        return Some(spec.to_string());
    }
    let (major, minor) = spec.split_once(':')?;
    (major == "7" && minor.chars().all(|c| c.is_ascii_digit())).then(|| format!("/dev/loop{minor}"))
}

/// banger snapshot devices present on the host.
pub fn list() -> Vec<String> {
    if !available() {
        return Vec::new();
    }
    let Some(dmsetup) = tools::find("dmsetup") else {
        return Vec::new();
    };
    tools::run(&dmsetup, ["ls"])
        .map(|o| parse_dmsetup_ls(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
        .into_iter()
        .filter(|n| vm_id_of(n).is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_names() {
        assert_eq!(
            snapshot_table("/dev/loop0", "/dev/loop1", 1 << 30),
            "0 2097152 snapshot /dev/loop0 /dev/loop1 P 8"
        );
        assert_eq!(device_name("0123abcd"), "banger-0123abcd");
        assert_eq!(vm_id_of("banger-0123abcd"), Some("0123abcd"));
        assert_eq!(vm_id_of("banger-"), None);
        assert_eq!(vm_id_of("other-0123"), None);
        assert_eq!(vm_id_of("banger-x;y"), None);
        assert_eq!(loop_for("7:3"), Some("/dev/loop3".into()));
        assert_eq!(loop_for("8:1"), None);
    }

    #[test]
    fn parses_dmsetup_ls() {
        assert_eq!(
            parse_dmsetup_ls("banger-01ab\t(253:0)\nvg-root\t(253:1)\n"),
            ["banger-01ab", "vg-root"]
        );
        assert!(parse_dmsetup_ls("No devices found\n").is_empty());
    }

    /// Real device-mapper: runs only where /dev/mapper/control exists (this
    /// project's machines have none) and says so otherwise.
    #[test]
    fn snapshot_device_end_to_end_where_device_mapper_exists() {
        if !available() || !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: device-mapper is not available here (/dev/mapper/control, dmsetup, losetup and root are needed)");
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let origin = dir.path().join("origin.img");
        std::fs::write(&origin, vec![7u8; 4 << 20]).expect("origin");
        let cow = dir.path().join("root.cow");
        let id = "ffff0000dead";
        let dev = setup(id, &origin, &cow).expect("setup");
        assert!(dev.exists());
        assert!(list().contains(&device_name(id)));
        std::fs::write(&dev, vec![1u8; 4096]).expect("write through the snapshot");
        assert_eq!(
            std::fs::read(&origin).expect("origin")[0],
            7,
            "the origin must not change"
        );
        teardown(id);
        assert!(!dev.exists());
        assert!(!list().contains(&device_name(id)));
    }
}
