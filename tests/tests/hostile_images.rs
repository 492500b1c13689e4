//! Hostile root filesystems: symlinks in an imported tarball (or a build's
//! rootfs) that point out of the image must never lead banger's writes of
//! its guest files onto the host. Each crafted tarball aims at a sentinel
//! directory outside the image (and one at the host's real `/etc`); the
//! sentinels, and the host's `/etc`, must be unchanged afterwards, the
//! import must fail with a clear error and leave no image or scratch
//! space. Needs root (the daemon).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_api::{ErrorCode, ImageList, OpState, Operation};
use banger_core::images::build::install_guest_files;
use banger_core::images::recipe::InitMode;
use banger_tests::{stderr, test_image, wait_op, TestDaemon};

/// Every file under `dir` with its content (the sentinel's fingerprint).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
                out.insert(p, b"<dir>".to_vec());
            } else if m.is_symlink() {
                out.insert(
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The host paths banger's guest files would land on through `etc ->
/// /etc` or `usr -> /usr`: none may exist after the test.
const HOST_TRAPS: [&str; 5] = [
    "/etc/ssh/sshd_config.d/banger.conf",
    "/etc/systemd/system/banger-ready.service",
    "/etc/systemd/system/multi-user.target.wants/banger-agent.service",
    "/usr/lib/banger/init",
    "/usr/lib/banger/busybox",
];

/// A sentinel "host" tree: etc/fstab, usr/lib/marker.
fn sentinel(dir: &Path) -> PathBuf {
    let s = dir.join("host");
    std::fs::create_dir_all(s.join("etc")).unwrap();
    std::fs::create_dir_all(s.join("usr/lib")).unwrap();
    std::fs::write(s.join("etc/fstab"), "sentinel fstab\n").unwrap();
    std::fs::write(s.join("usr/lib/marker"), "sentinel\n").unwrap();
    s
}

/// A minimal rootfs in `root`, with `links` (name, target) made in it.
fn rootfs(root: &Path, links: &[(&str, String)]) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for (name, target) in links {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, &p).unwrap();
    }
}

fn tarball(root: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("cf")
        .arg(out)
        .arg("-C")
        .arg(root)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

fn start_import(d: &TestDaemon, name: &str, tar: &Path, kernel: &Path) -> Operation {
    let out = d
        .banger_cmd()
        .args(["--json", "image", "import", name, "--rootfs"])
        .arg(tar)
        .arg("--kernel")
        .arg(kernel)
        .arg("--detach")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_tarball_whose_symlinks_leave_the_image_writes_nothing_outside_it() {
    let img = test_image();
    let d = TestDaemon::start();
    let t = tempfile::tempdir().unwrap();
    let s = sentinel(t.path());
    let host_etc_before = snapshot(Path::new("/etc/ssh"));
    let sent = |p: &str| s.join(p).display().to_string();
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("etc-abs", vec![("etc", sent("etc"))]),
        ("usr-abs", vec![("usr", sent("usr"))]),
        ("usrlib-abs", vec![("usr/lib", sent("usr/lib"))]),
        (
            "usrlib-rel",
            vec![(
                "usr/lib",
                format!("../../../../../../../..{}", sent("usr/lib")),
            )],
        ),
        (
            "chain",
            vec![
                ("etc", "a".into()),
                ("a", "b/c".into()),
                ("b", "/d".into()),
                ("d", sent("")),
            ],
        ),
        ("loop", vec![("etc", "etc2".into()), ("etc2", "etc".into())]),
        // Last: the reported trigger, aimed at the host's real /etc (the
        // sentinel cases above fail first should this ever regress).
        ("etc-host", vec![("etc", "/etc".into())]),
    ];
    let before = snapshot(&s);
    for (name, links) in &cases {
        let root = t.path().join(name);
        rootfs(&root, links);
        let tar = t.path().join(format!("{name}.tar"));
        tarball(&root, &tar);
        let op = wait_op(&d, &start_import(&d, name, &tar, &img.kernel).id);
        assert_eq!(op.state, OpState::Failed, "{name}: {op:?}");
        let err = op.error.unwrap();
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{name}: {err:?}");
        assert!(
            err.message.contains("inside the image's root filesystem"),
            "{name}: {}",
            err.message
        );
        assert!(err.hint.unwrap_or_default().contains("symlinks"), "{name}");
        assert_eq!(snapshot(&s), before, "{name}: the sentinel changed");
    }
    assert_eq!(snapshot(Path::new("/etc/ssh")), host_etc_before);
    for p in HOST_TRAPS {
        assert!(!Path::new(p).exists(), "{p} was written on the host");
    }
    let images: ImageList = d.banger_json(&["image", "ls"]);
    assert!(
        images.images.is_empty(),
        "nothing registered: {:?}",
        images.images
    );
    let scratch: Vec<_> = std::fs::read_dir(d.state_dir.join("tmp"))
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "scratch left: {scratch:?}");

    // The guest's own symlinks still work: merged /usr (relative), an
    // absolute link that stays inside the image.
    let root = t.path().join("good");
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::create_dir_all(root.join("real-etc")).unwrap();
    rootfs(
        &root,
        &[("lib", "usr/lib".into()), ("etc", "/real-etc".into())],
    );
    let tar = t.path().join("good.tar");
    tarball(&root, &tar);
    let op = wait_op(&d, &start_import(&d, "good", &tar, &img.kernel).id);
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
}

#[test]
fn guest_files_installed_into_a_hostile_build_rootfs_stay_inside_it() {
    banger_tests::require_root();
    let t = tempfile::tempdir().unwrap();
    let s = sentinel(t.path());
    let before = snapshot(&s);
    for (name, link, target) in [
        ("a", "etc", s.join("etc").display().to_string()),
        ("b", "usr", s.join("usr").display().to_string()),
        ("c", "etc/systemd", s.join("etc").display().to_string()),
    ] {
        let root = t.path().join(name);
        rootfs(&root, &[(link, target)]);
        let e = install_guest_files(&root, InitMode::Light, None).unwrap_err();
        assert!(
            e.to_string().contains("inside the image's root filesystem"),
            "{name}: {e}"
        );
        assert_eq!(snapshot(&s), before, "{name}: the sentinel changed");
    }
    // Where the rootfs has the path the symlink names, the files go there.
    let root = t.path().join("ok");
    std::fs::create_dir_all(root.join(s.strip_prefix("/").unwrap()).join("etc")).unwrap();
    rootfs(&root, &[("etc", s.join("etc").display().to_string())]);
    install_guest_files(&root, InitMode::Light, None).unwrap();
    let inside = root.join(s.strip_prefix("/").unwrap()).join("etc/fstab");
    assert!(std::fs::read_to_string(inside)
        .unwrap()
        .contains("/dev/vda"));
    assert_eq!(snapshot(&s), before);
}
