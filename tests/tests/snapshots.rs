//! Snapshots, restores and forks on real guests (QEMU TCG) in a network
//! namespace the test makes. Needs root.
//!
//! A running VM with a file on its work disk, a file in memory (tmpfs) and a
//! process is forked: the fork has all three, its own name, address, MAC,
//! SSH host key and machine-id, and both keep working (they reach each
//! other). A snapshot restores the same way; a stopped VM's snapshot boots
//! from its disks. Bad input changes nothing.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use banger_api::{OpState, Operation, SnapshotList, Vm, VmList, VmSshInfo};
use banger_tests::{block_on, git, stderr, stdout, test_image, wait_op, TestDaemon, TestNetns};

fn ssh(d: &TestDaemon, vm: &str, cmd: &str) -> String {
    let out = d.banger(&["vm", "ssh", vm, "--", cmd]);
    assert!(out.status.success(), "{vm}: {cmd}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn op(d: &TestDaemon, args: &[&str]) -> Operation {
    let mut a = args.to_vec();
    a.extend(["--wait", "none"]);
    let op: Operation = d.banger_json(&a);
    let op = wait_op(d, &op.id);
    assert_eq!(op.state, OpState::Succeeded, "{args:?}: {op:?}");
    op
}

/// What makes a guest itself, read from inside it.
fn identity(d: &TestDaemon, vm: &str) -> [String; 5] {
    [
        ssh(d, vm, "hostname"),
        ssh(d, vm, "cat /etc/machine-id"),
        ssh(d, vm, "ip -4 -o addr show eth0 | awk '{print $4}'"),
        ssh(d, vm, "cat /sys/class/net/eth0/address"),
        ssh(d, vm, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub"),
    ]
}

fn expected(d: &TestDaemon, vm: &str) -> [String; 5] {
    let v: Vm = d.banger_json(&["vm", "show", vm]);
    let info: VmSshInfo = block_on(d.client().get(&format!("/v1/vms/{vm}/ssh"))).unwrap();
    let key: Vec<&str> = info.host_key.split_whitespace().take(2).collect();
    [
        v.name.clone(),
        v.id.clone(),
        format!("{}/24", v.ip),
        v.mac.clone(),
        key.join(" "),
    ]
}

#[test]
fn guest_fork_and_snapshot_restore_give_running_copies_their_own_identity() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    op(&d, &["vm", "create", "src"]);
    ssh(&d, "src", "echo on-disk > /work/data.txt && sync");
    ssh(&d, "src", "echo in-memory > /dev/shm/mem.txt");
    ssh(
        &d,
        "src",
        "setsid sleep 4242 </dev/null >/dev/null 2>&1 & echo started",
    );
    // A workspace pushed into the source: the fork holds it too.
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = repo_dir.path().join("proj");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "hello\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    let out = d.banger(&["workspace", "push", "src", repo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // banger-agent as it runs under Firecracker (listening on vsock), tried
    // in this guest over vsock's loopback transport: it answers the
    // handshake.
    let answer = ssh(
        &d,
        "src",
        "modprobe vsock_loopback && test -c /dev/vsock && \
         (/run/banger/banger-agent --channel vsock:1025 2>/dev/null & \
          i=0; until ss -l --vsock | grep -q ':1025'; do i=$((i+1)); [ $i -lt 100 ] || exit 9; sleep 0.1; done; \
          printf 'BANGER-AGENT HELLO abcdef0123456789\\n' | timeout 10 socat -t 5 - VSOCK-CONNECT:1:1025 \
            | grep -a '^BANGER-AGENT OK'; kill %1)",
    );
    assert!(
        answer.starts_with("BANGER-AGENT OK abcdef0123456789 1 "),
        "{answer}"
    );
    let src_before = identity(&d, "src");
    assert_eq!(src_before, expected(&d, "src"));

    // Fork.
    let t = Instant::now();
    let fork = op(&d, &["vm", "fork", "src", "child"]);
    eprintln!("fork took {:?}: {:?}", t.elapsed(), fork.result);
    assert_eq!(fork.result.as_ref().unwrap()["restored"], true);
    let child: Vm = d.banger_json(&["vm", "show", "child"]);
    assert_eq!(child.state.as_str(), "running");
    // Its own identity, everywhere the guest keeps it (`vm ssh` pins the
    // host key the daemon made for it, so it answers with the new key).
    let child_id = identity(&d, "child");
    assert_eq!(child_id, expected(&d, "child"));
    for i in 0..5 {
        assert_ne!(
            child_id[i], src_before[i],
            "field {i} differs from the source"
        );
    }
    assert!(ssh(&d, "child", "cat /etc/hosts").contains("child"));
    assert_eq!(
        ssh(&d, "child", "grep ^BANGER_VM= /etc/environment"),
        "BANGER_VM=child"
    );
    // What it inherited: disk, memory, processes.
    assert_eq!(ssh(&d, "child", "cat /work/data.txt"), "on-disk");
    assert_eq!(ssh(&d, "child", "cat /dev/shm/mem.txt"), "in-memory");
    // (`^`: not the shell running this pgrep, whose command line has it too.)
    assert!(!ssh(&d, "child", "pgrep -f '^sleep 4242'").is_empty());
    // The source is untouched and both work, with their own disks, and
    // reach each other by address.
    assert_eq!(identity(&d, "src"), src_before);
    assert!(!ssh(&d, "src", "pgrep -f '^sleep 4242'").is_empty());
    // The source writes to both its disks after being paused and saved
    // (QEMU hands the disks back to it when it resumes).
    assert_eq!(
        ssh(
            &d,
            "src",
            "echo after > /work/after.txt && echo after > /root/after.txt && sync && cat /work/after.txt /root/after.txt"
        ),
        "after\nafter"
    );
    ssh(&d, "child", "echo child-only > /work/child.txt");
    assert_eq!(
        ssh(&d, "src", "cat /work/child.txt 2>/dev/null || echo absent"),
        "absent"
    );
    ssh(
        &d,
        "src",
        &format!("/usr/lib/banger/busybox ping -c 1 -W 5 {}", child.ip),
    );
    let src: Vm = d.banger_json(&["vm", "show", "src"]);
    ssh(
        &d,
        "child",
        &format!("/usr/lib/banger/busybox ping -c 1 -W 5 {}", src.ip),
    );
    // The fork's workspace: a commit made in it exports to banger/child.
    ssh(
        &d,
        "child",
        "git -C /work/proj -c user.name=Fork -c user.email=f@example.com commit -q --allow-empty -m 'made in the fork'",
    );
    let out = d.banger(&["workspace", "export", "child"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        git(&repo, &["log", "--format=%s", "-1", "banger/child"]),
        "made in the fork"
    );
    // The fork's own snapshot is gone.
    let l: SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert!(l.snapshots.is_empty(), "{l:?}");
    assert_eq!(
        std::fs::read_dir(d.state_dir.join("snapshots"))
            .unwrap()
            .count(),
        0
    );

    // Snapshot, then a VM from it.
    let s = op(&d, &["vm", "snapshot", "src", "snap1"]);
    assert_eq!(s.result.as_ref().unwrap()["with_memory"], true);
    let l: SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert_eq!(l.snapshots.len(), 1);
    assert_eq!(l.snapshots[0].name, "snap1");
    assert_eq!(l.snapshots[0].source_vm, "src");
    assert!(l.snapshots[0].with_memory);
    assert!(l.snapshots[0].size_bytes > 0);
    assert_eq!(ssh(&d, "src", "hostname"), "src", "the source resumed");
    let t = Instant::now();
    op(
        &d,
        &["vm", "create", "restored", "--from-snapshot", "snap1"],
    );
    eprintln!("restore took {:?}", t.elapsed());
    assert_eq!(identity(&d, "restored"), expected(&d, "restored"));
    assert_eq!(ssh(&d, "restored", "cat /dev/shm/mem.txt"), "in-memory");
    assert_eq!(ssh(&d, "restored", "cat /work/data.txt"), "on-disk");

    // A stopped VM's snapshot: disks only, boots cold.
    let out = d.banger(&["vm", "stop", "child"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = op(&d, &["vm", "snapshot", "child", "cold1"]);
    assert_eq!(s.result.as_ref().unwrap()["with_memory"], false);
    op(
        &d,
        &["vm", "create", "fromcold", "--from-snapshot", "cold1"],
    );
    assert_eq!(ssh(&d, "fromcold", "cat /work/child.txt"), "child-only");
    assert_eq!(
        ssh(
            &d,
            "fromcold",
            "cat /dev/shm/mem.txt 2>/dev/null || echo absent"
        ),
        "absent"
    );
    assert_eq!(identity(&d, "fromcold"), expected(&d, "fromcold"));

    // Bad input: clear errors, nothing changes.
    let before: VmList = d.banger_json(&["vm", "ls"]);
    let out = d.banger(&["vm", "create", "x", "--from-snapshot", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("No snapshot named"),
        "{}",
        stderr(&out)
    );
    let out = d.banger(&["vm", "fork", "src", "restored"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = d.banger(&["vm", "fork", "child", "y"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only a running VM"),
        "{}",
        stderr(&out)
    );
    let out = d.banger(&["vm", "snapshot", "src", "snap1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = d.banger(&["vm", "snapshot", "src", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(1));
    let out = d.banger(&[
        "vm",
        "create",
        "x",
        "--from-snapshot",
        "snap1",
        "--cpus",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap refuses the combination");
    let after: VmList = d.banger_json(&["vm", "ls"]);
    assert_eq!(before, after);
    let l: SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert_eq!(l.snapshots.len(), 2);

    // Removing a snapshot removes its files.
    let out = d.banger(&["snapshot", "rm", "snap1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.banger(&["snapshot", "rm", "cold1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let l: SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert!(l.snapshots.is_empty());
    assert_eq!(
        std::fs::read_dir(d.state_dir.join("snapshots"))
            .unwrap()
            .count(),
        0
    );
}
