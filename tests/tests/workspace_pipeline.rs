//! The workspace pipeline without a VM: the client's packing, the guest's
//! push, changes and bundle scripts (run by the local bash, against a
//! directory standing in for the guest) and the client's import, with real
//! git on both sides. Needs git and bash, not root.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use banger::workspace as ws;
use banger_core::workspaces::script;
use banger_tests::git;

fn bash(script: &str, stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sin = child.stdin.take().unwrap();
    // A script that refuses early does not read its input: EPIPE is fine.
    let _ = sin.write_all(stdin);
    drop(sin);
    child.wait_with_output().unwrap()
}

/// A host repository with a committed change, a staged change, a modified
/// file, a deleted file, an untracked file and an ignored file.
/// The export bundle of `base..head` in `dest`, as the daemon would read
/// it from the file the script writes (whose size it prints).
fn bundle_of(dest: &str, base: &str, head: &str) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().display().to_string();
    let out = bash(&script::bundle_script(dest, base, head, &path), b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = script::parse_bundle_size(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, size);
    bytes
}

fn host_repo(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("a.txt"), "one\n").unwrap();
    std::fs::write(dir.join("gone.txt"), "bye\n").unwrap();
    std::fs::write(dir.join(".gitignore"), "*.log\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "first"]);
    std::fs::write(dir.join("a.txt"), "one\ntwo\n").unwrap();
    git(dir, &["commit", "-q", "-am", "second"]);
    std::fs::write(dir.join("staged.txt"), "staged\n").unwrap();
    git(dir, &["add", "staged.txt"]);
    std::fs::write(dir.join("a.txt"), "one\ntwo\nthree (unstaged)\n").unwrap();
    std::fs::remove_file(dir.join("gone.txt")).unwrap();
    std::fs::create_dir(dir.join("new dir")).unwrap();
    std::fs::write(dir.join("new dir/untracked $(x).txt"), "fresh\n").unwrap();
    std::fs::write(dir.join("debug.log"), "ignored\n").unwrap();
}

#[test]
fn push_commit_export_and_export_again() {
    let host = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    host_repo(host.path());
    let status_before = git(host.path(), &["status", "--porcelain"]);
    let packed = ws::pack(host.path()).unwrap();
    assert_eq!(packed.branch.as_deref(), Some("main"));
    assert!(packed.staged);
    assert_eq!(packed.deleted, 1);
    let dest = guest.path().join("work/repo");
    let dest_s = dest.display().to_string();
    let tar = std::fs::read(packed.archive.path()).unwrap();

    let out = bash(
        &script::push_script(&dest_s, &packed.head, packed.branch.as_deref(), false),
        &tar,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Same commit and branch, the index has the staged change, the working
    // tree has everything but the ignored file.
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), packed.head);
    assert_eq!(git(&dest, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert_eq!(
        git(&dest, &["diff", "--cached", "--name-only"]),
        "staged.txt"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("a.txt")).unwrap(),
        "one\ntwo\nthree (unstaged)\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("new dir/untracked $(x).txt")).unwrap(),
        "fresh\n"
    );
    assert!(!dest.join("gone.txt").exists());
    assert!(!dest.join("debug.log").exists());
    assert_eq!(git(&dest, &["status", "--porcelain"]), status_before);
    // A second push without force is refused and changes nothing.
    let again = bash(
        &script::push_script(&dest_s, &packed.head, Some("main"), false),
        &tar,
    );
    assert_eq!(again.status.code(), Some(script::EXIT_EXISTS));
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), packed.head);

    // Two commits in the guest.
    git(&dest, &["add", "-A"]);
    git(&dest, &["commit", "-q", "-m", "guest one"]);
    std::fs::write(dest.join("b.txt"), "b\n").unwrap();
    git(&dest, &["add", "b.txt"]);
    git(&dest, &["commit", "-q", "-m", "guest two"]);

    let export = |exported: Option<&str>| {
        let out = bash(
            &script::changes_script(&dest_s, &packed.head, exported),
            b"",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = script::parse_changes(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let bundle = bundle_of(&dest_s, &packed.head, &c.head);
        ws::import_bundle(
            host.path(),
            &bundle,
            &c.head,
            &c.from,
            Some("banger/dev"),
            false,
            None,
        )
        .unwrap();
        c
    };
    let c = export(None);
    assert_eq!(c.commits.len(), 2);
    assert_eq!(c.commits[1].1, "guest two");
    assert_eq!(c.total, 2);
    assert_eq!(
        git(
            host.path(),
            &[
                "log",
                "--format=%s",
                &format!("{}..banger/dev", packed.head)
            ]
        ),
        "guest two\nguest one"
    );
    // The host's working tree and current branch are untouched.
    assert_eq!(git(host.path(), &["status", "--porcelain"]), status_before);
    assert_eq!(
        git(host.path(), &["symbolic-ref", "--short", "HEAD"]),
        "main"
    );
    assert_eq!(git(host.path(), &["rev-parse", "HEAD"]), packed.head);

    // One more guest commit: the next export brings only it.
    std::fs::write(dest.join("c.txt"), "c\n").unwrap();
    git(&dest, &["add", "c.txt"]);
    git(&dest, &["commit", "-q", "-m", "guest three"]);
    let c2 = export(Some(&c.head));
    assert_eq!(c2.commits.len(), 1);
    assert_eq!(c2.commits[0].1, "guest three");
    assert_eq!(c2.total, 3);
    assert_eq!(git(host.path(), &["rev-parse", "banger/dev"]), c2.head);

    // Patches of the new commits.
    let pdir = tempfile::tempdir().unwrap();
    let bundle = bundle_of(&dest_s, &packed.head, &c2.head);
    let written = ws::import_bundle(
        host.path(),
        &bundle,
        &c2.head,
        &c.head,
        None,
        false,
        Some(pdir.path()),
    )
    .unwrap();
    assert_eq!(written.len(), 1);
    assert!(std::fs::read_to_string(&written[0])
        .unwrap()
        .contains("guest three"));

    // Rewritten history: the base is gone.
    git(&dest, &["checkout", "-q", "--orphan", "other"]);
    git(&dest, &["commit", "-q", "-m", "unrelated"]);
    let out = bash(&script::changes_script(&dest_s, &packed.head, None), b"");
    assert_eq!(out.status.code(), Some(script::EXIT_BASE_GONE));
    // Missing directory.
    let out = bash(
        &script::changes_script("/nonexistent/banger-ws", &packed.head, None),
        b"",
    );
    assert_eq!(out.status.code(), Some(script::EXIT_MISSING));
}

#[test]
fn a_push_that_fails_leaves_nothing() {
    let host = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    host_repo(host.path());
    let packed = ws::pack(host.path()).unwrap();
    let dest = guest.path().join("work/repo");
    let tar = std::fs::read(packed.archive.path()).unwrap();
    // A base the bundle's HEAD is not.
    let wrong = "0".repeat(40);
    let out = bash(
        &script::push_script(&dest.display().to_string(), &wrong, Some("main"), false),
        &tar,
    );
    assert_eq!(out.status.code(), Some(script::EXIT_BASE_MISMATCH));
    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(guest.path().join("work"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Truncated input.
    let out = bash(
        &script::push_script(
            &dest.display().to_string(),
            &packed.head,
            Some("main"),
            false,
        ),
        &tar[..tar.len() / 3],
    );
    assert!(!out.status.success());
    assert!(!dest.exists());
}

#[test]
fn not_a_repo_and_no_commits_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = ws::repo_root(dir.path()).err().unwrap().to_string();
    assert!(err.contains("not inside a git repository"), "{err}");
    git(dir.path(), &["init", "-q"]);
    let err = ws::pack(dir.path()).err().unwrap().to_string();
    assert!(err.contains("no commits"), "{err}");
}

#[test]
fn detached_head_pushes_detached() {
    let host = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    host_repo(host.path());
    git(host.path(), &["stash", "-u", "-q"]);
    git(host.path(), &["checkout", "-q", "--detach", "HEAD~1"]);
    let packed = ws::pack(host.path()).unwrap();
    assert_eq!(packed.branch, None);
    let dest = guest.path().join("d");
    let out = bash(
        &script::push_script(&dest.display().to_string(), &packed.head, None, false),
        &std::fs::read(packed.archive.path()).unwrap(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), packed.head);
}
