//! Guest images: build (real mmdebstrap, cached), import, boot under QEMU
//! TCG to SSH, bad input. Needs root; building needs the package mirror
//! (done outside any network namespace); booting uses user-mode networking
//! restricted to a loopback port forward, so no guest traffic leaves.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_api::{Image, ImageList, OpState, Operation, StepStatus};
use banger_tests::{
    boot_direct, builder_daemon, builder_lock, fixture, poll, stderr, test_image, wait_op,
    BootOpts, TestDaemon,
};

fn start_op(d: &TestDaemon, args: &[&str]) -> Operation {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    full.push("--detach");
    let out = d.banger_cmd().args(&full).output().unwrap();
    assert!(out.status.success(), "banger {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn debugfs_has(img: &Path, path: &str) -> bool {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("Inode:")
}

/// Nothing of an operation is left in the state dir's scratch space.
fn assert_no_scratch(d: &TestDaemon) {
    let tmp = d.state_dir.join("tmp");
    let left: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch space left behind: {left:?}");
}

fn image_dirs(d: &TestDaemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.state_dir.join("images"))
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn guest_built_image_is_valid_and_boots_to_ssh_with_its_config_disk() {
    let img = test_image();
    // The filesystem is clean and carries sshd and banger's guest init.
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img.rootfs)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    for f in [
        "/usr/sbin/sshd",
        "/usr/lib/banger/init",
        "/usr/lib/banger/busybox",
        "/usr/lib/banger/ready",
        "/usr/bin/git",
        "/usr/bin/python3",
    ] {
        assert!(debugfs_has(&img.rootfs, f), "{f} missing from the image");
    }
    assert!(
        !debugfs_has(&img.rootfs, "/etc/ssh/ssh_host_ed25519_key"),
        "images must not ship shared host keys"
    );
    for (p, magic) in [(&img.kernel, &b"MZ"[..]), (&img.vmlinux, &b"\x7fELF"[..])] {
        let head = std::fs::read(p).unwrap();
        assert!(
            head.starts_with(magic),
            "{} has the wrong format",
            p.display()
        );
    }
    assert!(std::fs::metadata(&img.initrd).unwrap().len() > 100_000);

    let (guest, ready) = boot_direct(&img, BootOpts::default());
    eprintln!(
        "test image ready (sshd listening) {:.2}s after qemu started",
        ready.as_secs_f64()
    );
    let out = guest.ssh("hostname; cat /proc/1/comm; findmnt -n -o SOURCE /work; cat /etc/machine-id; grep BANGER_TEST /etc/environment; ls /etc/ssh/ssh_host_*");
    assert!(out.status.success(), "ssh failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "imgtest");
    assert_eq!(lines[1], "busybox", "light init runs busybox init as PID 1");
    assert_eq!(lines[2], "/dev/vdc", "the work disk is mounted at /work");
    assert_eq!(lines[3], "0123456789abcdef0123456789abcdef");
    assert_eq!(lines[4], "BANGER_TEST=yes");
    assert!(text.contains("/etc/ssh/ssh_host_ed25519_key"), "{text}");
}

#[test]
fn image_build_reuses_the_same_recipe_and_rm_keeps_shared_artifacts() {
    let img = test_image();
    let _lock = builder_lock();
    let d = builder_daemon();
    let alias = "alias-of-test";
    let _ = d.banger(&["image", "rm", alias]);
    let started = Instant::now();
    let op = start_op(
        &d,
        &[
            "image",
            "build",
            alias,
            "--from-file",
            fixture("test-image.toml").to_str().unwrap(),
        ],
    );
    let op = wait_op(&d, &op.id);
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert_eq!(op.result.as_ref().unwrap()["reused"], true);
    for s in ["kernel", "initrd", "bootstrap", "guest_init", "mkfs"] {
        assert_eq!(
            op.steps.iter().find(|x| x.name == s).unwrap().status,
            StepStatus::Skipped,
            "{s}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a cached build took {:?}",
        started.elapsed()
    );
    let a: Image = d.banger_json(&["image", "show", alias]);
    assert_eq!(a.digest, img.digest);
    let rm: banger_api::ImageRemoved = d.banger_json(&["image", "rm", alias]);
    assert!(!rm.artifacts_deleted, "the test image still uses them");
    assert!(img.rootfs.exists());
}

#[test]
fn image_import_of_an_ext4_file_is_fast_and_rm_deletes_artifacts() {
    let img = test_image();
    let d = TestDaemon::start();
    let started = Instant::now();
    let op = start_op(
        &d,
        &[
            "image",
            "import",
            "base",
            "--rootfs",
            img.rootfs.to_str().unwrap(),
            "--kernel",
            img.kernel.to_str().unwrap(),
            "--initrd",
            img.initrd.to_str().unwrap(),
            "--vmlinux",
            img.vmlinux.to_str().unwrap(),
        ],
    );
    let op = wait_op(&d, &op.id);
    eprintln!(
        "import of the 1 GiB test image took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert_eq!(op.result.as_ref().unwrap()["guest_init_added"], false);
    let i: Image = d.banger_json(&["image", "show", "base"]);
    assert_eq!(i.source, "import");
    assert!(
        i.backends.contains(&banger_api::Backend::Qemu),
        "{:?}",
        i.backends
    );
    let rootfs = i.artifacts.iter().find(|a| a.kind == "rootfs").unwrap();
    assert_eq!(
        rootfs.sha256,
        sha256(&img.rootfs),
        "the imported rootfs is a faithful copy"
    );
    let on_disk = d
        .state_dir
        .join("images")
        .join(&i.digest)
        .join("rootfs.ext4");
    assert_eq!(sha256(&on_disk), rootfs.sha256);
    let list: ImageList = d.banger_json(&["image", "ls"]);
    assert_eq!(
        list.images
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["base"]
    );
    let rm: banger_api::ImageRemoved = d.banger_json(&["image", "rm", "base"]);
    assert!(rm.artifacts_deleted);
    assert!(image_dirs(&d).is_empty());
    assert_no_scratch(&d);
}

#[test]
fn image_import_of_a_directory_and_a_tarball_adds_the_guest_init() {
    let img = test_image();
    let d = TestDaemon::start();
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("root");
    for dir in ["etc", "bin", "usr/sbin"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("etc/hostname"), "tiny\n").unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let tarball = src.path().join("rootfs.tar.gz");
    assert!(Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let k = [
        "--kernel",
        img.kernel.to_str().unwrap(),
        "--initrd",
        img.initrd.to_str().unwrap(),
    ];
    for (name, path) in [
        ("fromdir", root.to_str().unwrap()),
        ("fromtar", tarball.to_str().unwrap()),
    ] {
        let mut args = vec!["image", "import", name, "--rootfs", path];
        args.extend_from_slice(&k);
        let op = wait_op(&d, &start_op(&d, &args).id);
        assert_eq!(op.state, OpState::Succeeded, "{name}: {op:?}");
        let r = op.result.unwrap();
        assert_eq!(r["sshd"], false, "{name}");
        let i: Image = d.banger_json(&["image", "show", name]);
        let f = d
            .state_dir
            .join("images")
            .join(&i.digest)
            .join("rootfs.ext4");
        assert!(
            debugfs_has(&f, "/usr/lib/banger/init"),
            "{name}: guest init not added"
        );
        assert!(debugfs_has(&f, "/etc/hostname"), "{name}: files lost");
        assert!(
            op.steps.iter().any(|s| s
                .message
                .as_deref()
                .is_some_and(|m| m.contains("sshd is missing"))),
            "{name}: no warning"
        );
    }
    assert_no_scratch(&d);
}

#[test]
fn image_bad_input_is_a_clear_error_and_changes_nothing() {
    let img = test_image();
    let d = TestDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, "not a filesystem").unwrap();
    let corrupt = dir.path().join("broken.tar.gz");
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend_from_slice(&[0x42; 200]);
    std::fs::write(&corrupt, bytes).unwrap();
    let rootfs = img.rootfs.to_str().unwrap();
    let long = "a".repeat(64);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["image", "import", "Bad Name", "--rootfs", rootfs],
            "Invalid image name",
        ),
        (
            vec!["image", "import", "x;rm", "--rootfs", rootfs],
            "Invalid image name",
        ),
        (
            vec!["image", "import", &long, "--rootfs", rootfs],
            "the limit is 63",
        ),
        (
            vec![
                "image",
                "import",
                "nofile",
                "--rootfs",
                "/nonexistent/rootfs.ext4",
            ],
            "cannot read it",
        ),
        (
            vec![
                "image",
                "import",
                "junk",
                "--rootfs",
                junk.to_str().unwrap(),
            ],
            "neither an ext4 image",
        ),
        (
            vec!["image", "build", "small", "--size", "100M"],
            "below the minimum",
        ),
        (
            vec!["image", "build", "badpkg", "--packages", "jq;reboot"],
            "Invalid package name",
        ),
        (vec!["image", "show", "nope"], "No image named"),
        (vec!["image", "rm", "nope"], "No image named"),
    ];
    for (args, needle) in cases {
        let out = d.banger(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // A corrupt tarball fails during the operation, with the reason.
    let op = wait_op(
        &d,
        &start_op(
            &d,
            &[
                "image",
                "import",
                "corrupt",
                "--rootfs",
                corrupt.to_str().unwrap(),
                "--kernel",
                img.kernel.to_str().unwrap(),
            ],
        )
        .id,
    );
    assert_eq!(op.state, OpState::Failed);
    assert!(
        op.error
            .as_ref()
            .unwrap()
            .message
            .contains("cannot be unpacked"),
        "{:?}",
        op.error
    );
    // A duplicate name is refused before any work.
    let ok = wait_op(
        &d,
        &start_op(
            &d,
            &[
                "image",
                "import",
                "dup",
                "--rootfs",
                rootfs,
                "--kernel",
                img.kernel.to_str().unwrap(),
                "--initrd",
                img.initrd.to_str().unwrap(),
            ],
        )
        .id,
    );
    assert_eq!(ok.state, OpState::Succeeded);
    let out = d.banger(&["image", "import", "dup", "--rootfs", rootfs]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    let list: ImageList = d.banger_json(&["image", "ls"]);
    assert_eq!(
        list.images
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["dup"]
    );
    assert_eq!(
        image_dirs(&d).len(),
        1,
        "only the one good import has artifacts"
    );
    assert_no_scratch(&d);
}

#[test]
fn image_build_too_small_or_cancelled_leaves_nothing() {
    let _img = test_image();
    let _lock = builder_lock();
    let d = builder_daemon();
    let before = image_dirs(&d);

    // Too small for the packages: mkfs fails and says so.
    let op = wait_op(
        &d,
        &start_op(&d, &["image", "build", "toosmall", "--size", "300M"]).id,
    );
    assert_eq!(op.state, OpState::Failed, "{op:?}");
    let msg = &op.error.as_ref().unwrap().message;
    assert!(msg.contains("too small"), "{msg}");
    assert_eq!(
        op.steps.iter().find(|s| s.name == "mkfs").unwrap().status,
        StepStatus::Failed
    );

    // Cancelled while mmdebstrap runs: its processes die and nothing stays.
    let op = start_op(&d, &["image", "build", "cancelled", "--packages", "jq"]);
    poll(
        "the bootstrap step to start",
        Duration::from_secs(120),
        || {
            let o: Operation = d.banger_json(&["ops", "show", &op.id]);
            assert_eq!(o.state, OpState::Running, "{o:?}");
            (o.steps
                .iter()
                .find(|s| s.name == "bootstrap")
                .unwrap()
                .status
                == StepStatus::Running)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(1500)); // let mmdebstrap get going
    assert!(d
        .banger(&["ops", "cancel", "--wait", &op.id])
        .status
        .success());
    let o: Operation = d.banger_json(&["ops", "show", &op.id]);
    assert_eq!(o.state, OpState::Cancelled);
    let scratch = d.state_dir.join("tmp").join(&op.id);
    poll("mmdebstrap to be gone", Duration::from_secs(10), || {
        let out = Command::new("pgrep")
            .args(["-f", scratch.to_str().unwrap()])
            .output()
            .unwrap();
        out.stdout.is_empty().then_some(())
    });
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(scratch.to_str().unwrap()),
        "mounts left behind"
    );
    assert_eq!(image_dirs(&d), before, "no new image artifacts");
    let list: ImageList = d.banger_json(&["image", "ls"]);
    assert!(!list
        .images
        .iter()
        .any(|i| i.name == "toosmall" || i.name == "cancelled"));
    assert_no_scratch(&d);
}
