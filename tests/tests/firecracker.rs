//! The Firecracker backend, end to end against `fake-firecracker` (no
//! Firecracker binary can run here): the daemon spawns the fake as its
//! `firecracker.binary`, and the fake validates every request against the
//! vendored spec and logs it. Each test runs the daemon in its own network
//! namespace (the backend still creates a bridge and a TAP). Needs root.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{OpState, Operation, Vm, VmList, VmState};
use banger_tests::audit::assert_no_leaks;
use banger_tests::fakefc::{daemon, daemon_with_vm, daemon_with_vm_env, require_kvm};
use banger_tests::{bin, poll, stderr, stdout, test_image, vmm_pids, TestDaemon, TestNetns};
use serde_json::Value;

fn requests(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn calls(reqs: &[Value]) -> Vec<String> {
    reqs.iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect()
}

const CONFIGURE: [&str; 10] = [
    "PUT /logger",
    "PUT /metrics",
    "PUT /machine-config",
    "PUT /boot-source",
    "PUT /drives/rootfs",
    "PUT /drives/config",
    "PUT /drives/work",
    "PUT /network-interfaces/eth0",
    "PUT /vsock",
    "PUT /actions",
];

#[test]
fn firecracker_backend_lifecycle_sends_the_exact_configure_sequence() {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let d = daemon(&ns, &log, &[]);
    d.import_test_image(&img, "default");

    let out = d.banger(&[
        "vm",
        "create",
        "fc1",
        "--backend",
        "firecracker",
        "--cpus",
        "2",
        "--memory",
        "512M",
    ]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let vm: Vm = d.banger_json(&["vm", "show", "fc1"]);
    assert_eq!(
        (vm.state, vm.backend.as_str()),
        (VmState::Running, "firecracker")
    );
    let reqs = requests(&log);
    assert_eq!(calls(&reqs), CONFIGURE, "the configure sequence");
    let body = |i: usize| &reqs[i]["body"];
    assert_eq!(body(2)["vcpu_count"], 2);
    assert_eq!(body(2)["mem_size_mib"], 512);
    assert!(body(3)["kernel_image_path"]
        .as_str()
        .unwrap()
        .ends_with("/vmlinux"));
    assert!(body(3)["boot_args"]
        .as_str()
        .unwrap()
        .contains("init=/usr/lib/banger/init"));
    assert_eq!(
        (
            body(4)["is_root_device"].as_bool(),
            body(4)["is_read_only"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert_eq!(
        body(4)["path_on_host"], "root.raw",
        "Firecracker boots a raw root disk, named relative to the VM's directory (its working directory), so that a snapshot of it restores with another VM's disks"
    );
    assert_eq!(
        body(5)["is_read_only"],
        true,
        "the config disk is read-only"
    );
    assert_eq!(
        body(7)["host_dev_name"].as_str().unwrap(),
        format!("bg-{}", &vm.id[..12])
    );
    assert_eq!(body(7)["guest_mac"].as_str().unwrap(), vm.mac);
    assert_eq!(body(8)["guest_cid"], 3);
    assert!(body(8)["uds_path"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/{}/agent.vsock", vm.id)));
    assert_eq!(body(9)["action_type"], "InstanceStart");
    assert!(ns.links().contains(&format!("bg-{}", &vm.id[..12])));

    // Graceful stop: SendCtrlAltDel, and the process goes away.
    let stopped: Vm = d.banger_json(&["vm", "stop", "fc1"]);
    assert_eq!(stopped.state, VmState::Stopped);
    let reqs = requests(&log);
    assert_eq!(
        reqs.last().unwrap()["body"]["action_type"],
        "SendCtrlAltDel"
    );
    assert!(vmm_pids(&vm.id).is_empty(), "firecracker still running");
    assert!(!ns.links().iter().any(|l| l.starts_with("bg-")));

    // Start again: a fresh process, the same sequence.
    let before = requests(&log).len();
    let out = d.banger(&["vm", "start", "fc1"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(calls(&requests(&log)[before..]), CONFIGURE);
    assert!(d.banger(&["vm", "rm", "--force", "fc1"]).status.success());
    let list: VmList = d.banger_json(&["vm", "ls"]);
    assert!(list.vms.is_empty());
    assert!(vmm_pids(&vm.id).is_empty());
    assert!(!d.state_dir.join("vms").join(&vm.id).exists());
}

#[test]
fn firecracker_backend_rolls_back_when_a_call_fails_or_the_vmm_dies() {
    require_kvm();
    let img = test_image();
    for (knob, value, expect) in [
        (
            "FAKE_FC_FAIL",
            "PUT /drives/work",
            "Injected failure of PUT /drives/work",
        ),
        (
            "FAKE_FC_DIE_ON",
            "PUT /network-interfaces/eth0",
            "exited during start-up",
        ),
    ] {
        let ns = TestNetns::new();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let d = daemon(&ns, &log, &[(knob, value)]);
        d.import_test_image(&img, "default");
        let out = d
            .banger_cmd()
            .args([
                "--json",
                "vm",
                "create",
                "bad",
                "--backend",
                "firecracker",
                "--wait",
                "none",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let op: Operation = serde_json::from_slice(&out.stdout).unwrap();
        let op = banger_tests::wait_op(&d, &op.id);
        assert_eq!(op.state, OpState::Failed, "{knob}: {op:?}");
        let msg = &op.error.as_ref().unwrap().message;
        assert!(msg.contains(expect), "{knob}: {msg}");
        assert!(
            calls(&requests(&log)).contains(&value.to_string()),
            "{knob}: the fake never saw {value}"
        );
        // Rolled back: no VM, no files, no TAP, no process.
        let out = d.banger(&["vm", "show", "bad"]);
        assert_eq!(out.status.code(), Some(1), "{knob}: VM left behind");
        poll("no firecracker left", Duration::from_secs(10), || {
            let out = std::process::Command::new("pgrep")
                .args(["-f", "fake-firecracker"])
                .output()
                .unwrap();
            // Other tests may run a fake too; only ours live in this namespace.
            let ours = std::process::Command::new("ip")
                .args(["netns", "pids", &ns.name])
                .output()
                .unwrap();
            let ours: Vec<String> = String::from_utf8_lossy(&ours.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            let fakes: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            (!fakes.iter().any(|p| ours.contains(p))).then_some(())
        });
        assert!(
            !ns.links().iter().any(|l| l.starts_with("bg-")),
            "{knob}: TAP left: {:?}",
            ns.links()
        );
        let vms_dir = d.state_dir.join("vms");
        assert_eq!(
            std::fs::read_dir(&vms_dir).map(|r| r.count()).unwrap_or(0),
            0,
            "{knob}: files left"
        );
    }
}

#[test]
fn firecracker_backend_unavailable_is_a_clear_error() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in_with(
        &ns,
        "[firecracker]\nbinary = \"/nonexistent/firecracker\"\n",
        &[],
    );
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "x", "--backend", "firecracker"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("not usable here")
            && e.contains("doctor check `firecracker`")
            && e.contains("banger doctor"),
        "{e}"
    );
    let list: VmList = d.banger_json(&["vm", "ls"]);
    assert!(list.vms.is_empty());
}

#[test]
fn four_concurrent_creates_get_distinct_addresses_and_taps() {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&ns, &dir.path().join("requests.jsonl"), &[]);
    d.import_test_image(&img, "default");
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..4)
        .map(|i| {
            d.banger_cmd()
                .args([
                    "vm",
                    "create",
                    &format!("par{i}"),
                    "--backend",
                    "firecracker",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent create failed: {}",
            stderr(&out)
        );
    }
    eprintln!(
        "4 concurrent creates took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let list: VmList = d.banger_json(&["vm", "ls"]);
    assert_eq!(list.vms.len(), 4);
    assert!(list.vms.iter().all(|v| v.state == VmState::Running));
    let mut ips: Vec<&str> = list.vms.iter().map(|v| v.ip.as_str()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "addresses must be distinct: {ips:?}");
    // Each VM has its own TAP (its own `bg-` one, or one from the pool).
    let out = std::process::Command::new("sqlite3")
        .arg(d.state_dir.join("banger.db"))
        .arg("SELECT DISTINCT tap FROM vms")
        .output()
        .unwrap();
    let taps: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(taps.len(), 4, "{taps:?}");
    let links = ns.links();
    assert!(
        taps.iter().all(|t| links.contains(t)),
        "{taps:?} not all in {links:?}"
    );
    for v in &list.vms {
        assert!(d.banger(&["vm", "rm", "--force", &v.name]).status.success());
    }
    assert!(!ns.links().iter().any(|l| l.starts_with("bg-")));
}

#[test]
fn firecracker_backend_through_the_jailer_uses_chroot_paths_and_cleans_the_jail() {
    use std::os::unix::fs::MetadataExt;
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let (log, jlog) = (
        dir.path().join("requests.jsonl"),
        dir.path().join("jailer.jsonl"),
    );
    let d = jailed_daemon(
        &ns,
        &[
            ("FAKE_FC_REQUEST_LOG", log.to_str().unwrap()),
            ("FAKE_JAILER_LOG", jlog.to_str().unwrap()),
        ],
    );
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "jailed", "--backend", "firecracker"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let vm: Vm = d.banger_json(&["vm", "show", "jailed"]);

    let jargs: Vec<String> = serde_json::from_str(
        std::fs::read_to_string(&jlog)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let chroot_base = d.state_dir.join("jail");
    let fake = bin("fake-firecracker");
    assert_eq!(
        jargs,
        [
            "--id",
            &format!("banger-vm-{}", &vm.id[..16]),
            "--exec-file",
            fake.to_str().unwrap(),
            "--uid",
            "4242",
            "--gid",
            "4343",
            "--chroot-base-dir",
            chroot_base.to_str().unwrap(),
            "--",
            "--api-sock",
            "/run/firecracker.socket",
        ]
    );
    // Firecracker saw paths inside its jail.
    let reqs = requests(&log);
    assert_eq!(calls(&reqs), CONFIGURE);
    assert_eq!(reqs[3]["body"]["kernel_image_path"], "/vmlinux");
    assert_eq!(reqs[4]["body"]["path_on_host"], "/root.raw");
    assert_eq!(reqs[6]["body"]["path_on_host"], "/work.ext4");
    // The VM's disks are hard links given to the jail's user; the image is not.
    let root = chroot_base
        .join("fake-firecracker")
        .join(format!("banger-vm-{}", &vm.id[..16]))
        .join("root");
    let vm_dir = d.state_dir.join("vms").join(&vm.id);
    for (inside, outside) in [("root.raw", "root.raw"), ("work.ext4", "work.ext4")] {
        let (a, b) = (
            std::fs::metadata(root.join(inside)).unwrap(),
            std::fs::metadata(vm_dir.join(outside)).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "{inside} is a hard link");
        assert_eq!(
            (a.uid(), a.gid()),
            (4242, 4343),
            "{inside} belongs to the jail's user"
        );
    }
    let tap = ns.ip(&["-d", "link", "show", &format!("bg-{}", &vm.id[..12])]);
    assert!(
        String::from_utf8_lossy(&tap.stdout).contains("user 4242"),
        "TAP owner: {}",
        String::from_utf8_lossy(&tap.stdout)
    );
    // Stop removes the jail; start makes it again; rm leaves nothing.
    assert!(d.banger(&["vm", "stop", "jailed"]).status.success());
    assert!(!root.exists(), "jail left after stop");
    assert!(d.banger(&["vm", "start", "jailed"]).status.success());
    assert!(root.exists());
    // A fork: the snapshot is written inside the jail and moved out, and
    // loaded in the new VM's jail from paths inside it.
    let before = requests(&log).len();
    let out = d.banger(&["vm", "fork", "jailed", "jailed2"]);
    assert!(out.status.success(), "fork: {}", stderr(&out));
    let reqs = requests(&log)[before..].to_vec();
    assert_eq!(reqs[1]["body"]["snapshot_path"], "/vmstate");
    assert_eq!(reqs[5]["path"], "/snapshot/load");
    assert_eq!(reqs[5]["body"]["snapshot_path"], "/vmstate");
    assert_eq!(reqs[5]["body"]["mem_backend"]["backend_path"], "/memory");
    assert_eq!(
        reqs[5]["body"]["vsock_override"]["uds_path"],
        "/agent.vsock"
    );
    let vm2: Vm = d.banger_json(&["vm", "show", "jailed2"]);
    assert_eq!(vm2.state, VmState::Running);
    assert!(
        !root.join("vmstate").exists(),
        "moved out of the source's jail"
    );
    assert!(d
        .banger(&["vm", "rm", "--force", "jailed2"])
        .status
        .success());
    assert!(d
        .banger(&["vm", "rm", "--force", "jailed"])
        .status
        .success());
    assert!(!root.exists(), "jail left after rm");
}

/// A jailed VMM that leaves a symlink to a host file where its snapshot's
/// memory should be (the jail is the VMM's to write) gets no host file
/// copied out: the snapshot fails naming the file, and neither the
/// snapshot dir nor any jail holds the host file's content.
#[test]
fn a_jailed_vmm_s_symlinked_snapshot_file_is_not_followed() {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, "host secret 7d1c\n").unwrap();
    let log = dir.path().join("requests.jsonl");
    let d = jailed_daemon(
        &ns,
        &[
            ("FAKE_FC_REQUEST_LOG", log.to_str().unwrap()),
            ("FAKE_FC_HOSTILE_SNAPSHOT", secret.to_str().unwrap()),
        ],
    );
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "j1", "--backend", "firecracker"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let out = d.banger(&["vm", "snapshot", "j1", "s1"]);
    assert!(!out.status.success(), "a linked memory file was taken");
    assert!(stderr(&out).contains("plain file"), "{}", stderr(&out));
    let found = std::process::Command::new("grep")
        .args(["-rl", "host secret 7d1c"])
        .arg(&d.state_dir)
        .output()
        .unwrap();
    assert!(
        stdout(&found).trim().is_empty(),
        "the host file was copied: {}",
        stdout(&found)
    );
    let l: banger_api::SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert!(l.snapshots.is_empty());
    let vm: Vm = d.banger_json(&["vm", "show", "j1"]);
    assert_eq!(vm.state, VmState::Running, "resumed after the refusal");
    assert_no_leaks(&d, &ns, "a refused snapshot");
}

/// A daemon in `ns` on the fake Firecracker through the fake jailer (uid
/// 4242, gid 4343); `env` goes to the daemon (and so to both fakes).
fn jailed_daemon(ns: &TestNetns, env: &[(&str, &str)]) -> TestDaemon {
    TestDaemon::start_in_with(
        ns,
        &format!(
            "[firecracker]\nbinary = \"{}\"\njailer = \"{}\"\nuid = 4242\ngid = 4343\n",
            bin("fake-firecracker").display(),
            bin("fake-jailer").display()
        ),
        env,
    )
}

fn config_file(d: &TestDaemon, vm: &Vm, file: &str) -> String {
    let disk = d.state_dir.join("vms").join(&vm.id).join("config.ext4");
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat /{file}")])
        .arg(&disk)
        .output()
        .unwrap();
    stdout(&out)
}

#[test]
fn firecracker_snapshot_restore_and_fork_use_the_snapshot_api_with_overrides() {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let (log, agent_log) = (
        dir.path().join("requests.jsonl"),
        dir.path().join("agent.log"),
    );
    let d = daemon(
        &ns,
        &log,
        &[("FAKE_FC_AGENT_LOG", agent_log.to_str().unwrap())],
    );
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "fc1", "--backend", "firecracker"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let fc1: Vm = d.banger_json(&["vm", "show", "fc1"]);

    // Snapshot: pause, snapshot/create into the snapshot's directory, resume.
    let before = requests(&log).len();
    let out = d.banger(&["vm", "snapshot", "fc1", "s1"]);
    assert!(out.status.success(), "snapshot: {}", stderr(&out));
    let reqs = requests(&log)[before..].to_vec();
    assert_eq!(
        calls(&reqs),
        ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]
    );
    assert_eq!(reqs[0]["body"]["state"], "Paused");
    assert_eq!(reqs[1]["body"]["snapshot_type"], "Full");
    let state_path = reqs[1]["body"]["snapshot_path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(state_path.starts_with(d.state_dir.join("snapshots").to_str().unwrap()));
    assert!(state_path.ends_with("/vmstate"));
    assert_eq!(reqs[2]["body"]["state"], "Resumed");
    let agent_lines = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        agent_lines.starts_with("ping "),
        "the agent is asked first: {agent_lines}"
    );
    let l: banger_api::SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert_eq!(l.snapshots.len(), 1);
    assert!(l.snapshots[0].with_memory);
    assert_eq!(l.snapshots[0].backend, banger_api::Backend::Firecracker);

    // Restore: a fresh process, logger + metrics, then snapshot/load with
    // the new VM's TAP and vsock socket; the agent re-applies the identity.
    let before = requests(&log).len();
    let out = d.banger(&["vm", "create", "fc2", "--from-snapshot", "s1"]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let fc2: Vm = d.banger_json(&["vm", "show", "fc2"]);
    assert_eq!(fc2.state, VmState::Running);
    assert_eq!(fc2.backend, banger_api::Backend::Firecracker);
    assert_ne!(fc2.ip, fc1.ip);
    let reqs = requests(&log)[before..].to_vec();
    assert_eq!(
        calls(&reqs),
        ["PUT /logger", "PUT /metrics", "PUT /snapshot/load"]
    );
    let load = &reqs[2]["body"];
    assert_eq!(load["snapshot_path"], state_path);
    assert_eq!(load["mem_backend"]["backend_type"], "File");
    assert_eq!(load["resume_vm"], true);
    assert_eq!(load["network_overrides"][0]["iface_id"], "eth0");
    let fc1_tap = requests(&log)
        .iter()
        .find(|r| r["path"] == "/network-interfaces/eth0")
        .unwrap()["body"]["host_dev_name"]
        .as_str()
        .unwrap()
        .to_string();
    let fc2_tap = load["network_overrides"][0]["host_dev_name"]
        .as_str()
        .unwrap();
    assert_ne!(fc2_tap, fc1_tap, "the restored VM has its own TAP");
    assert!(ns.links().iter().any(|l| l == fc2_tap), "{fc2_tap} exists");
    assert!(load["vsock_override"]["uds_path"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/{}/agent.vsock", fc2.id)));
    assert!(
        std::fs::read_to_string(&agent_log)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("reload ")),
        "the identity was re-applied"
    );
    // The identity the guest re-reads is the new VM's.
    assert_eq!(config_file(&d, &fc2, "hostname").trim(), "fc2");
    let net = config_file(&d, &fc2, "network");
    assert!(net.contains(&format!("ADDRESS='{}/24'", fc2.ip)), "{net}");
    assert!(net.contains(&format!("MAC='{}'", fc2.mac)), "{net}");
    assert_eq!(config_file(&d, &fc2, "machine-id").trim(), fc2.id);

    // Fork: both sequences in one operation; the fork's snapshot is gone.
    let before = requests(&log).len();
    let out = d.banger(&["vm", "fork", "fc1", "fc3"]);
    assert!(out.status.success(), "fork: {}", stderr(&out));
    assert_eq!(
        calls(&requests(&log)[before..]),
        [
            "PATCH /vm",
            "PUT /snapshot/create",
            "PATCH /vm",
            "PUT /logger",
            "PUT /metrics",
            "PUT /snapshot/load"
        ]
    );
    let fc3: Vm = d.banger_json(&["vm", "show", "fc3"]);
    assert_eq!(fc3.state, VmState::Running);
    let l: banger_api::SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert_eq!(l.snapshots.len(), 1);
    assert_eq!(
        std::fs::read_dir(d.state_dir.join("snapshots"))
            .unwrap()
            .count(),
        1
    );

    // A snapshot Firecracker cannot load: the create fails with its words
    // and leaves nothing (row, TAP, files).
    let snap_dir = Path::new(&state_path).parent().unwrap().to_path_buf();
    std::fs::write(snap_dir.join("vmstate"), "garbage").unwrap();
    let vm_taps = || -> Vec<String> {
        let mut v: Vec<String> = ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("bg-"))
            .collect();
        v.sort();
        v
    };
    let taps_before = vm_taps();
    let out = d.banger(&["vm", "create", "fc4", "--from-snapshot", "s1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a snapshot state file"),
        "{}",
        stderr(&out)
    );
    let list: VmList = d.banger_json(&["vm", "ls"]);
    assert_eq!(
        list.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["fc1", "fc2", "fc3"]
    );
    assert_eq!(vm_taps(), taps_before, "no TAP left by the failed restore");
    assert!(d.banger(&["snapshot", "rm", "s1"]).status.success());
    assert!(!snap_dir.exists());
    for vm in ["fc1", "fc2", "fc3"] {
        assert!(d.banger(&["vm", "rm", "--force", vm]).status.success());
    }
}

#[test]
fn a_snapshot_cancelled_or_cut_by_a_daemon_crash_while_the_vm_is_paused_resumes_it_and_leaves_nothing(
) {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let mut d = daemon(&ns, &log, &[("FAKE_FC_DELAY", "PUT /snapshot/create=3000")]);
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "fc1", "--backend", "firecracker"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    // Cancelled while the VM is paused: the snapshot finishes its pause
    // (the VM is resumed), then the operation ends cancelled and the
    // snapshot is dropped.
    let before = requests(&log).len();
    let op: Operation = d.banger_json(&["vm", "snapshot", "fc1", "s0", "--wait", "none"]);
    poll("the snapshot call", Duration::from_secs(10), || {
        calls(&requests(&log)[before..])
            .contains(&"PUT /snapshot/create".to_string())
            .then_some(())
    });
    let out = d.banger(&["ops", "cancel", &op.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let op = banger_tests::wait_op(&d, &op.id);
    assert_eq!(op.state, banger_api::OpState::Cancelled, "{op:?}");
    let reqs = requests(&log);
    assert_eq!(
        calls(&reqs[before..]),
        ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]
    );
    assert_eq!(reqs[before + 2]["body"]["state"], "Resumed");
    let l: banger_api::SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert!(l.snapshots.is_empty(), "{l:?}");

    let before = requests(&log).len();
    let _: Operation = d.banger_json(&["vm", "snapshot", "fc1", "s1", "--wait", "none"]);
    poll("the snapshot call", Duration::from_secs(10), || {
        calls(&requests(&log)[before..])
            .contains(&"PUT /snapshot/create".to_string())
            .then_some(())
    });
    // The VM is paused now; the daemon dies.
    d.kill9();
    d.spawn();
    let reqs = requests(&log);
    let after: Vec<String> = calls(&reqs[before..]);
    assert_eq!(
        after[..3],
        ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"],
        "{after:?}"
    );
    assert_eq!(
        reqs[before + 2]["body"]["state"],
        "Resumed",
        "resumed at restart"
    );
    let l: banger_api::SnapshotList = d.banger_json(&["snapshot", "ls"]);
    assert!(l.snapshots.is_empty(), "{l:?}");
    poll(
        "the snapshot's files to go",
        Duration::from_secs(10),
        || {
            (std::fs::read_dir(d.state_dir.join("snapshots"))
                .map(|r| r.count())
                .unwrap_or(0)
                == 0)
                .then_some(())
        },
    );
    let vm: Vm = d.banger_json(&["vm", "show", "fc1"]);
    assert_eq!(vm.state, VmState::Running, "adopted, still running");
    assert_no_leaks(&d, &ns, "SIGKILL while a VM was paused for a snapshot");
    // Snapshots work again.
    let out = d.banger(&["vm", "snapshot", "fc1", "s2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.banger(&["vm", "rm", "--force", "fc1"]).status.success());
}

/// SIGTERM ends the daemon within its grace period even while it watches a
/// VMM it started (its child, which keeps running by design: a blocked
/// `wait4` on it once kept the process alive forever), and the next daemon
/// adopts the VM.
#[test]
fn sigterm_with_a_running_vm_exits_in_the_grace_period_and_the_vm_is_adopted() {
    let mut fc = daemon_with_vm("term1");
    let before = fc.vm.clone();
    let d = &mut fc.d;
    // The test config's grace period is 5 s; `terminate` waits up to 20 s.
    let status = d.terminate();
    assert!(status.success(), "bangerd exited with {status}");
    assert!(
        !vmm_pids(&before.id).is_empty(),
        "the VMM outlives the daemon"
    );
    d.spawn();
    let after: Vm = d.banger_json(&["vm", "show", "term1"]);
    assert_eq!(after.state, VmState::Running, "adopted: {after:?}");
    assert_eq!(after.pid, before.pid, "the same VMM process");
    assert_no_leaks(d, &fc.ns, "SIGTERM with a running VM");
    let stopped: Vm = d.banger_json(&["vm", "stop", "term1"]);
    assert_eq!(stopped.state, VmState::Stopped);
}

/// A guest (here: a client inside the VMs' network namespace) that opens
/// 1,100 TCP connections to the `.vm` DNS server and holds them: the daemon
/// keeps its descriptors bounded, its API answers, and DNS over UDP still
/// answers. (Each held connection cost the daemon a descriptor for 10 s,
/// without limit; at 1,024 the API failed.)
#[test]
fn a_dns_tcp_connection_flood_from_the_vm_network_is_bounded() {
    let fc = daemon_with_vm("dns1");
    let (d, ns, vm) = (&fc.d, &fc.ns, &fc.vm);
    let dig = || {
        let o = banger_tests::in_netns(
            ns,
            &[
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                "@172.30.0.1",
                "dns1.vm",
            ],
        );
        stdout(&o).trim().to_string()
    };
    poll("the DNS server", Duration::from_secs(10), || {
        (dig() == vm.ip).then_some(())
    });
    // The flood, from a thread inside the namespace (its connections stay
    // in it: 172.30.0.1 is the namespace's own bridge address).
    let ns_file = std::fs::File::open(Path::new("/run/netns").join(&ns.name)).unwrap();
    let flood = std::thread::spawn(move || {
        nix::sched::setns(ns_file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut held = Vec::new();
        for _ in 0..1100 {
            let addr = std::net::SocketAddr::from(([172, 30, 0, 1], 53));
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        held
    });
    let held = flood.join().unwrap();
    assert!(!held.is_empty(), "the flood connected at all");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count();
    assert!(
        fds < 400,
        "the daemon holds {fds} descriptors with {} connections open at it",
        held.len()
    );
    let ls = d.banger(&["vm", "ls"]);
    assert!(ls.status.success(), "the API answers: {}", stderr(&ls));
    assert_eq!(dig(), vm.ip, "DNS over UDP still answers");
    drop(held);
}

/// A stored pid that is not the VM's VMM any more (after a host reboot or a
/// pid reuse it is anyone's) is never killed: here a `creating` row left by
/// a dead daemon names an unrelated process; the restarted daemon rolls the
/// row back and leaves that process alone.
#[test]
fn a_stale_pid_in_the_store_is_not_killed_at_rollback() {
    let mut fc = daemon_with_vm("stale1");
    let vm = fc.vm.clone();
    let d = &mut fc.d;
    d.kill9();
    for pid in vmm_pids(&vm.id) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
    }
    let mut bystander = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let sql = format!(
        "UPDATE vms SET state = 'creating', pid = {} WHERE id = '{}'",
        bystander.id(),
        vm.id
    );
    let st = std::process::Command::new("sqlite3")
        .arg(d.state_dir.join("banger.db"))
        .arg(&sql)
        .status()
        .unwrap();
    assert!(st.success());
    d.spawn();
    let list: VmList = d.banger_json(&["vm", "ls"]);
    assert!(list.vms.is_empty(), "the creating row is rolled back");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the process that reused the pid is alive"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// `image rm --force` under a running VM removes the name only: the VM
/// keeps its image files (a QEMU VM's qcow2 root is an overlay of them), can
/// be stopped and started, across a daemon restart too; the files go once
/// the last VM using them is gone. (It stuck the VM in `stopping`, and the
/// next daemon start deleted the files the VM still used.)
#[test]
fn image_rm_force_under_a_running_vm_keeps_its_files_until_the_vm_goes() {
    let mut fc = daemon_with_vm("keep1");
    let d = &mut fc.d;
    let image: banger_api::Image = d.banger_json(&["image", "show", "default"]);
    let files = d.state_dir.join("images").join(&image.digest);
    let refused = d.banger(&["image", "rm", "default"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "in use: refused without --force"
    );
    let rm = d.banger(&["image", "rm", "--force", "default"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(files.exists(), "the running VM's image files stay");
    let stopped: Vm = d.banger_json(&["vm", "stop", "keep1"]);
    assert_eq!(stopped.state, VmState::Stopped);
    d.kill9();
    d.spawn();
    assert!(files.exists(), "a restart keeps files a VM uses");
    let start = d.banger(&["vm", "start", "keep1"]);
    assert!(start.status.success(), "start: {}", stderr(&start));
    let started: Vm = d.banger_json(&["vm", "show", "keep1"]);
    assert_eq!(started.state, VmState::Running);
    assert!(d.banger(&["vm", "rm", "--force", "keep1"]).status.success());
    d.kill9();
    d.spawn();
    assert!(!files.exists(), "with no name and no VM, the files go");
}

/// The VMM processes and TAPs no VM row owns: none may exist after a race.
fn assert_no_orphans(d: &TestDaemon, ns: &TestNetns, id: &str, tap: &str) {
    let rows = std::process::Command::new("sqlite3")
        .arg(d.state_dir.join("banger.db"))
        .arg(format!("SELECT count(*) FROM vms WHERE id = '{id}'"))
        .output()
        .unwrap();
    if stdout(&rows).trim() == "0" {
        poll("no VMM without a row", Duration::from_secs(10), || {
            vmm_pids(id).is_empty().then_some(())
        });
        assert!(!ns.links().contains(&tap.to_string()), "TAP {tap} left");
    }
}

/// `vm start --wait none` then `vm rm`, and `vm rm --force` during a
/// create: the removal sees the state under the VM's lock, so no VMM or
/// TAP is left without a row (both left a running VMM, and rm deleted a
/// pool TAP by the wrong name). The fake's InstanceStart is slowed to
/// widen the window.
#[test]
fn rm_racing_start_or_create_leaves_no_vmm_without_a_row() {
    let fc = daemon_with_vm_env("race1", &[("FAKE_FC_DELAY", "PUT /actions=1500")]);
    let (d, ns, vm) = (&fc.d, &fc.ns, &fc.vm);
    let tap = stdout(
        &std::process::Command::new("sqlite3")
            .arg(d.state_dir.join("banger.db"))
            .arg(format!("SELECT tap FROM vms WHERE id = '{}'", vm.id))
            .output()
            .unwrap(),
    )
    .trim()
    .to_string();
    assert!(d.banger(&["vm", "stop", "race1"]).status.success());
    for _ in 0..2 {
        let st = d.banger(&["vm", "start", "race1", "--wait", "none"]);
        assert!(st.status.success(), "start: {}", stderr(&st));
        let _ = d.banger(&["vm", "rm", "race1"]);
        assert_no_orphans(d, ns, &vm.id, &tap);
        let list: VmList = d.banger_json(&["vm", "ls"]);
        if let Some(v) = list.vms.iter().find(|v| v.name == "race1") {
            poll("the start to finish", Duration::from_secs(20), || {
                let v: Vm = d.banger_json(&["vm", "show", "race1"]);
                (v.state == VmState::Running).then_some(())
            });
            assert!(
                !vmm_pids(&v.id).is_empty(),
                "a listed running VM has its VMM"
            );
            assert!(d.banger(&["vm", "stop", "race1"]).status.success());
        }
    }
    let _ = d.banger(&["vm", "rm", "--force", "race1"]);
    assert_no_orphans(d, ns, &vm.id, &tap);
    // rm --force while a create runs.
    let out = d
        .banger_cmd()
        .args([
            "--json",
            "vm",
            "create",
            "race2",
            "--backend",
            "firecracker",
            "--wait",
            "none",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let op: Operation = serde_json::from_slice(&out.stdout).unwrap();
    // Remove it while its VMM starts (the fake holds InstanceStart 1.5 s).
    poll("the create's spawn step", Duration::from_secs(20), || {
        let now: Operation = d.banger_json(&["ops", "show", &op.id]);
        let spawn = now.steps.iter().find(|s| s.name == "spawn")?;
        (spawn.status != banger_api::StepStatus::Pending).then_some(())
    });
    let _ = d.banger(&["vm", "rm", "--force", "race2"]);
    let _ = banger_tests::wait_op(d, &op.id);
    let list: VmList = d.banger_json(&["vm", "ls"]);
    match list.vms.iter().find(|v| v.name == "race2") {
        Some(v) => {
            assert!(!vmm_pids(&v.id).is_empty(), "a listed VM has its VMM");
            assert!(d.banger(&["vm", "rm", "--force", "race2"]).status.success());
            assert_no_orphans(d, ns, &v.id, "");
        }
        None => {
            // This daemon's VMMs name its runtime dir in their arguments.
            let left = std::process::Command::new("pgrep")
                .args(["-f", &format!("{}/run/vms/", d.dir.display())])
                .output()
                .unwrap();
            assert!(
                stdout(&left).trim().is_empty(),
                "a VMM is left with no VM: {}",
                stdout(&left)
            );
        }
    }
    assert_no_leaks(d, ns, "rm racing start and create");
}

/// A daemon on the fake Firecracker in a namespace of its own, with a
/// running VM for each of `names`; its request log's path. Bound in this
/// order (`let (ns, log, dir, d)`), the daemon drops first and the
/// namespace last.
fn daemon_with_vms(names: &[&str]) -> (TestNetns, PathBuf, tempfile::TempDir, TestDaemon) {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let d = daemon(&ns, &log, &[]);
    d.import_test_image(&img, "default");
    for name in names {
        let out = d.banger(&["vm", "create", name, "--backend", "firecracker"]);
        assert!(out.status.success(), "create {name}: {}", stderr(&out));
    }
    (ns, log, dir, d)
}

/// A guest whose agent starts sending junk mid-session (the fake's
/// `<vsock>.junk` switch) has its channel closed, with a log line naming
/// it and a clear error for the caller; another VM keeps working, and the
/// bad one is reconnected once it behaves.
#[test]
fn a_guest_sending_junk_is_cut_off_and_logged_and_others_are_unaffected() {
    let (_ns, log, _dir, d) = daemon_with_vms(&["bad", "good"]);
    let bad: Vm = d.banger_json(&["vm", "show", "bad"]);
    let vsock = requests(&log)
        .iter()
        .filter_map(|r| r["body"]["uds_path"].as_str().map(String::from))
        .find(|p| p.ends_with(&format!("/{}/agent.vsock", bad.id)))
        .expect("bad's vsock device");
    let junk = format!("{vsock}.junk");
    std::fs::write(&junk, "").unwrap();

    let req = banger_api::VmExecRequest {
        argv: vec!["true".into()],
        ..Default::default()
    };
    let r: Result<banger_api::VmExecResult, _> =
        banger_tests::block_on(d.client().post("/v1/vms/bad/exec", &req));
    let e = r.expect_err("junk from the guest is not an answer");
    let msg = e.to_string();
    assert!(msg.contains("agent"), "the error says what failed: {msg}");
    if let banger::client::ClientError::Api(api) = &e {
        assert_ne!(
            api.code,
            banger_api::ErrorCode::InvalidRequest,
            "a guest's junk is not the caller's bad request: {msg}"
        );
    }
    poll("the log line", Duration::from_secs(10), || {
        let log = d.stderr();
        log.lines()
            .any(|l| l.contains("guest agent session ended") && l.contains("vm=bad"))
            .then_some(())
    });
    // The other VM's channel is untouched: its snapshot pings it first.
    let out = d.banger(&["vm", "snapshot", "good", "g1"]);
    assert!(out.status.success(), "good: {}", stderr(&out));
    // The bad one, behaving again, is reconnected.
    std::fs::remove_file(&junk).unwrap();
    let out = d.banger(&["vm", "snapshot", "bad", "b1"]);
    assert!(out.status.success(), "bad, reformed: {}", stderr(&out));
}

/// The last line number a flooding fake guest wrote to `console`.
fn last_flood_line(console: &Path) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(console) else {
        return 0;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64)));
    let mut tail = String::new();
    let _ = f.read_to_string(&mut tail);
    tail.lines()
        .filter(|l| l.starts_with("flood "))
        .filter_map(|l| l[6..].parse().ok())
        .next_back()
        .unwrap_or(0)
}

#[test]
fn a_guest_flooding_its_console_stays_under_the_log_limit() {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let fake = bin("fake-firecracker");
    let config = format!(
        "[firecracker]\nbinary = \"{}\"\n[vm]\nconsole_log_size = \"64K\"\n",
        fake.display()
    );
    // About 1 MiB a second of console lines.
    let d = TestDaemon::start_in_with(&ns, &config, &[("FAKE_FC_CONSOLE_FLOOD", "1048576")]);
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "noisy", "--backend", "firecracker"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let vm: Vm = d.banger_json(&["vm", "show", "noisy"]);
    let console = d.state_dir.join("vms").join(&vm.id).join("console.log");
    let older = d.state_dir.join("vms").join(&vm.id).join("console.log.1");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    // Until the guest has written some 8 MiB (600,000 lines), the log and
    // its rotated part together stay within 64K x 2 plus what 2 s of
    // flooding between two looks adds.
    let bound = (64 << 10) * 2 + (3 << 20);
    let mut most = 0;
    poll("the guest to write 8 MiB", Duration::from_secs(90), || {
        let total = size(&console) + size(&older);
        most = most.max(total);
        assert!(total <= bound, "the console takes {total} bytes");
        (last_flood_line(&console) >= 600_000).then_some(())
    });
    assert_eq!(size(&older), 64 << 10, "the rotated part is the limit");
    eprintln!("largest console seen: {most} bytes");
    // The newest lines are still there for vm logs.
    let out = d.banger(&["vm", "logs", "noisy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("flood "), "vm logs shows the console");
    assert!(d.stderr().contains("console log rotated"));
    let out = d.banger(&["vm", "rm", "--force", "noisy"]);
    assert!(out.status.success(), "rm: {}", stderr(&out));
}

#[test]
fn a_guest_port_sends_only_ipv4_and_arp_and_the_vm_network_has_no_ipv6() {
    let (ns, log, _dir, d) = daemon_with_vms(&["a", "b"]);
    let a: Vm = d.banger_json(&["vm", "show", "a"]);
    let b: Vm = d.banger_json(&["vm", "show", "b"]);
    let (tap_a, tap_b) = (tap_in(&log, &a.mac), tap_in(&log, &b.mac));

    // No IPv6 address on the bridge or a TAP (lo keeps ::1).
    let v6 = stdout(&ns.ip(&["-6", "-br", "addr"]));
    let v6: Vec<&str> = v6.lines().filter(|l| !l.starts_with("lo ")).collect();
    assert!(v6.is_empty(), "IPv6 on the VM network: {v6:?}");

    // A router advert, a VLAN-tagged frame and a spoofed IPv6 packet from
    // a's port do not reach b; a's ARP (sent last) does.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tap-frames.py");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", script])
        .args([&tap_a, &tap_b, &a.mac, &a.ip, &b.mac])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let seen: Vec<&str> = seen["seen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        seen.contains(&"0x806"),
        "the control frame got through: {seen:?}"
    );
    assert_eq!(seen, ["0x806"], "only ARP from a reached b");
}

/// The TAP the fake Firecracker was given for the VM with `mac`.
fn tap_in(log: &Path, mac: &str) -> String {
    requests(log)
        .iter()
        .filter(|r| r["path"] == "/network-interfaces/eth0")
        .filter(|r| r["body"]["guest_mac"] == mac)
        .filter_map(|r| r["body"]["host_dev_name"].as_str().map(String::from))
        .next_back()
        .expect("the VM's TAP")
}

#[test]
fn a_second_daemon_in_the_namespace_leaves_the_first_one_s_network_alone() {
    let mut fc = daemon_with_vm("first");
    let log_a = fc.dir.path().join("requests.jsonl");
    let tap_a = tap_in(&log_a, &fc.vm.mac);
    let rules = |ns: &TestNetns| {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "nft", "list", "table", "bridge", "banger",
            ])
            .output()
            .unwrap();
        stdout(&out)
    };
    let before = rules(&fc.ns);
    assert!(before.contains(&tap_a), "{before}");
    let pid_a = fc.d.pid();

    // Another daemon (its own state dir) in the same namespace starts, as
    // it has no VMs, and touches nothing of the first one's.
    let dir_b = tempfile::tempdir().unwrap();
    let b = daemon(&fc.ns, &dir_b.path().join("requests.jsonl"), &[]);
    assert!(
        fc.ns.links().contains(&tap_a),
        "the first daemon's TAP is kept"
    );
    assert_eq!(rules(&fc.ns), before, "the first daemon's rules are kept");
    // Its first VM needs the network: refused, naming the owner.
    b.import_test_image(&test_image(), "default");
    let out = b.banger(&["vm", "create", "second", "--backend", "firecracker"]);
    assert!(!out.status.success(), "a second owner was let in");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "Another bangerd (pid {pid_a}, state dir {}",
            fc.d.state_dir.display()
        )),
        "{err}"
    );
    assert!(err.contains("network.netns"), "the hint: {err}");
    assert!(fc.ns.links().contains(&tap_a));
    assert_eq!(rules(&fc.ns), before);
    let first: Vm = fc.d.banger_json(&["vm", "show", "first"]);
    assert_eq!(first.state, VmState::Running);

    // The first daemon stops (its VM runs on); the second takes the
    // network for a VM of its own; the first, back, refuses to start.
    assert!(fc.d.terminate().success());
    let out = b.banger(&["vm", "create", "second", "--backend", "firecracker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fc.ns.links().contains(&tap_a), "not taken for a stray");
    let mut again = std::process::Command::new(bin("bangerd"))
        .arg("--config")
        .arg(&fc.d.config)
        .envs(fc.d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = poll(
        "the first daemon to refuse",
        Duration::from_secs(20),
        || again.try_wait().ok().flatten(),
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut again.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "it started: {err}");
    assert!(
        err.contains(&format!("Another bangerd (pid {}", b.pid())),
        "{err}"
    );
    assert!(fc.ns.links().contains(&tap_a));
    // Its VM is still there for it once the other is gone.
    drop(b);
    fc.d.spawn();
    let first: Vm = fc.d.banger_json(&["vm", "show", "first"]);
    assert_eq!(first.state, VmState::Running, "adopted");
}

/// A VMM of this daemon that no row owns (here: its row deleted while the
/// daemon was down, as a crash between rm's steps leaves it) is killed at
/// the next start; another daemon's VMMs are not.
#[test]
fn a_vmm_no_row_owns_is_killed_at_start_and_others_are_left() {
    let (_ns2, _log2, _dir2, other) = daemon_with_vms(&["kept"]);
    let kept: Vm = other.banger_json(&["vm", "show", "kept"]);
    let (ns, _log, _dir, mut d) = daemon_with_vms(&["lost"]);
    let lost: Vm = d.banger_json(&["vm", "show", "lost"]);
    d.kill9();
    assert!(
        !vmm_pids(&lost.id).is_empty(),
        "the VMM outlives the daemon"
    );
    let store = banger_core::store::Store::open(&d.state_dir.join("banger.db")).unwrap();
    store
        .write(|tx| tx.execute("DELETE FROM vms WHERE id = ?1", [&lost.id]))
        .unwrap();
    drop(store);
    let kept_devices = || {
        let out = std::process::Command::new("dmsetup")
            .arg("ls")
            .output()
            .unwrap();
        stdout(&out)
            .lines()
            .filter(|l| l.contains(&kept.id))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let before = kept_devices();
    d.spawn();
    assert_eq!(
        kept_devices(),
        before,
        "another daemon's snapshot devices are left"
    );
    poll("the orphan VMM to go", Duration::from_secs(10), || {
        vmm_pids(&lost.id).is_empty().then_some(())
    });
    assert!(d.stderr().contains("killing a VMM that no VM owns"));
    assert_no_leaks(&d, &ns, "a restart with a VMM no row owns");
    assert!(
        !vmm_pids(&kept.id).is_empty(),
        "another daemon's VMM is left"
    );
}

/// A work disk larger than the host can hold is refused at create and at
/// `vm set`, changing nothing (it is sparse, but once the guest filled it
/// the host's filesystem, every VM's disks with it, would be full).
#[test]
fn a_work_disk_the_host_cannot_hold_is_refused() {
    let fc = daemon_with_vm("small");
    let d = &fc.d;
    let out = d.banger(&[
        "vm",
        "create",
        "huge",
        "--backend",
        "firecracker",
        "--work-disk-size",
        "16T",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("free in the state dir"),
        "{}",
        stderr(&out)
    );
    assert!(d.banger(&["vm", "show", "huge"]).status.code() == Some(1));
    let out = d.banger(&["vm", "stop", "small"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.banger(&["vm", "set", "small", "--work-disk-size", "16T"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("free in the state dir"),
        "{}",
        stderr(&out)
    );
    let small: Vm = d.banger_json(&["vm", "show", "small"]);
    assert_eq!(small.work_disk_bytes, fc.vm.work_disk_bytes, "unchanged");
}

/// A running VM whose TAP disappears (deleted behind the daemon's back) is
/// noticed: `vm show` gives the problem with what to do, `doctor` fails its
/// VM check, and a stop and start give it a TAP again.
#[test]
fn a_running_vm_whose_tap_is_deleted_is_reported_until_restarted() {
    let fc = daemon_with_vm("lost");
    let (d, ns) = (&fc.d, &fc.ns);
    let tap = banger_tests::audit::tap_of(d, &fc.vm.id);
    assert!(ns.links().contains(&tap));
    let del = ns.ip(&["link", "del", &tap]);
    assert!(del.status.success(), "{}", stderr(&del));
    let vm = poll(
        "the lost TAP to be noticed",
        Duration::from_secs(20),
        || {
            let v: Vm = d.banger_json(&["vm", "show", "lost"]);
            v.problem.is_some().then_some(v)
        },
    );
    let problem = vm.problem.unwrap();
    assert!(
        problem.contains(&tap) && problem.contains("vm start lost"),
        "{problem}"
    );
    let out = d.banger(&["vm", "show", "lost"]);
    assert!(stdout(&out).contains("problem:"), "{}", stdout(&out));
    let report: banger_api::DoctorReport = d.banger_json(&["doctor"]);
    let check = report.checks.iter().find(|c| c.id == "vm_health").unwrap();
    assert_eq!(check.status, banger_api::CheckStatus::Fail, "{check:?}");
    assert!(check.detail.starts_with("lost: "), "{}", check.detail);
    assert!(d.banger(&["vm", "stop", "lost"]).status.success());
    assert!(d.banger(&["vm", "start", "lost"]).status.success());
    let v: Vm = d.banger_json(&["vm", "show", "lost"]);
    assert!(v.problem.is_none(), "{v:?}");
    assert!(ns
        .links()
        .contains(&banger_tests::audit::tap_of(d, &fc.vm.id)));
    assert_no_leaks(d, ns, "a restart after a lost TAP");
}

/// With `access.confine_users`, a group member reaches only the VMs (and
/// their snapshots) they made: others' are "not found" by name and left
/// out of every list, the dashboard is refused, and root sees everything.
#[test]
fn confined_users_reach_only_their_own_vms_and_snapshots() {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in_with(
        &ns,
        &format!(
            "[firecracker]\nbinary = \"{}\"\n[access]\nconfine_users = true\n",
            bin("fake-firecracker").display()
        ),
        &[],
    );
    d.import_test_image(&img, "default");
    let (alice, bob) = (65534, 65533);
    for (uid, name) in [(alice, "a1"), (bob, "b1")] {
        let out = d.banger_as(uid, &["vm", "create", name, "--backend", "firecracker"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    let list = d.banger_as(alice, &["--json", "vm", "ls"]);
    let list: VmList = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = list.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a1"]);
    for args in [
        &["vm", "show", "b1"][..],
        &["vm", "stop", "b1"],
        &["vm", "rm", "--force", "b1"],
        &["vm", "logs", "b1"],
    ] {
        let out = d.banger_as(alice, args);
        assert!(!out.status.success(), "{args:?} worked for another's VM");
        assert!(
            stderr(&out).contains("No VM named \"b1\""),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let root: VmList = d.banger_json(&["vm", "ls"]);
    assert_eq!(root.vms.len(), 2, "root sees every VM");
    let b1: Vm = d.banger_json(&["vm", "show", "b1"]);
    assert_eq!(b1.state, VmState::Running, "bob's VM was left alone");
    // Snapshots follow their VM's owner.
    let out = d.banger_as(alice, &["vm", "snapshot", "a1", "sa"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps = d.banger_as(bob, &["--json", "snapshot", "ls"]);
    let snaps: banger_api::SnapshotList = serde_json::from_slice(&snaps.stdout).unwrap();
    assert!(snaps.snapshots.is_empty(), "{snaps:?}");
    let out = d.banger_as(bob, &["vm", "create", "bx", "--from-snapshot", "sa"]);
    assert!(
        stderr(&out).contains("No snapshot named"),
        "{}",
        stderr(&out)
    );
    let out = d.banger_as(bob, &["snapshot", "rm", "sa"]);
    assert!(!out.status.success(), "bob removed alice's snapshot");
    // The dashboard shows every VM: not for confined users.
    let out = d.banger_as(alice, &["ui"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("confine"), "{}", stderr(&out));
    assert_no_leaks(&d, &ns, "confined users");
}
