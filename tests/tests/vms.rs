//! VM lifecycle on the QEMU backend (TCG here), end to end. Every test that
//! boots a guest makes its own network namespace, runs bangerd inside it
//! (checked by namespace inode) and deletes it afterwards, so bridges, TAPs
//! and guest addresses never exist in the host's namespace. Needs root.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use banger_api::{OpState, Operation, StepStatus, Vm, VmList, VmState};
use banger_tests::{poll, stderr, stdout, test_image, vmm_pids, wait_op, TestDaemon, TestNetns};

fn ssh(d: &TestDaemon, vm: &str, cmd: &str) -> String {
    let out = d.banger(&["vm", "ssh", vm, "--", cmd]);
    assert!(out.status.success(), "ssh {vm} {cmd:?}: {}", stderr(&out));
    stdout(&out)
}

fn host_has_link(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn guest_vm_lifecycle_create_ssh_stop_start_rm_leaves_nothing() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");

    let out = d.banger(&["vm", "create", "dev"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let vm: Vm = d.banger_json(&["vm", "show", "dev"]);
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(vm.ip, "172.30.0.2");
    assert_eq!(vm.backend, banger_api::Backend::Qemu);
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // This project's machines: KVM cannot boot real kernels, the probe says so.
        assert_eq!(vm.accel, banger_api::Accel::Tcg);
        let report: banger_api::DoctorReport = serde_json::from_slice(
            &d.banger_cmd()
                .args(["--json", "doctor"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let kvm = report.checks.iter().find(|c| c.id == "kvm").unwrap();
        assert!(
            kvm.detail.contains("real-kernel probe of kernel")
                && kvm.detail.contains("QEMU uses TCG"),
            "{}",
            kvm.detail
        );
    }
    let tap = format!("bg-{}", &vm.id[..12]);
    assert!(ns.links().contains(&tap), "TAP missing: {:?}", ns.links());
    assert!(ns.links().contains(&"banger0".to_string()));
    assert!(
        !host_has_link("banger0") && !host_has_link(&tap),
        "network devices leaked into the host namespace"
    );

    let text = ssh(
        &d,
        "dev",
        "hostname; echo persisted > /work/file; sync; cat /etc/machine-id; ip -4 -o addr show eth0",
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "dev");
    assert_eq!(lines[1], vm.id, "machine-id is the VM id");
    assert!(lines[2].contains("172.30.0.2/24"), "{text}");

    // Plain OpenSSH through the generated config: ssh NAME.vm and scp.
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("ssh_config");
    let out = d
        .banger_cmd()
        .env("XDG_RUNTIME_DIR", home.path())
        .args(["vm", "ssh-config", "--write"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let plain_ssh = |args: &[&str]| {
        std::process::Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args(["-o", "BatchMode=yes"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = plain_ssh(&["dev.vm", "hostname"]);
    assert!(out.status.success(), "ssh dev.vm: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "dev");
    std::fs::write(home.path().join("payload"), "via scp\n").unwrap();
    let out = std::process::Command::new("scp")
        .arg("-F")
        .arg(&cfg)
        .args(["-o", "BatchMode=yes", "-q"])
        .arg(home.path().join("payload"))
        .arg("dev.vm:/tmp/payload")
        .output()
        .unwrap();
    assert!(out.status.success(), "scp: {}", stderr(&out));
    assert_eq!(ssh(&d, "dev", "cat /tmp/payload").trim(), "via scp");
    let out = plain_ssh(&["ghost.vm", "true"]);
    assert!(!out.status.success(), "an unknown VM must not be reachable");

    // Figures from the host and from inside the guest.
    let stats: banger_api::VmStats = d.banger_json(&["vm", "stats", "dev"]);
    assert_eq!(stats.host.pid, vm.pid);
    assert!(stats.host.rss_bytes.unwrap_or(0) > 50 << 20, "{stats:?}");
    assert!(stats.host.cpu_percent.is_some());
    let g = stats
        .guest
        .as_ref()
        .unwrap_or_else(|| panic!("no guest stats: {:?}", stats.guest_error));
    assert!(
        g.mem_total_bytes > 512 << 20 && g.mem_available_bytes > 0,
        "{g:?}"
    );
    assert!(g.work_total_bytes.unwrap_or(0) > 900 << 20, "{g:?}");
    let logs = d.banger(&["vm", "logs", "dev"]);
    assert!(
        stdout(&logs).contains("banger-ready"),
        "console log: {}",
        stdout(&logs)
    );
    // Resources change only while stopped.
    let out = d.banger(&["vm", "set", "dev", "--cpus", "1"]);
    assert!(
        stderr(&out).contains("only while it is stopped"),
        "{}",
        stderr(&out)
    );

    let stopped: Vm = d.banger_json(&["vm", "stop", "dev"]);
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(stopped.stop_reason.as_deref(), Some("stopped by user"));
    assert!(vmm_pids(&vm.id).is_empty(), "VMM still running after stop");
    assert!(!ns.links().contains(&tap), "TAP left after stop");

    let out = d.banger(&["vm", "set", "dev", "--work-disk-size", "512M"]);
    assert!(stderr(&out).contains("disks only grow"), "{}", stderr(&out));
    let set: Vm = d.banger_json(&[
        "vm",
        "set",
        "dev",
        "--cpus",
        "1",
        "--memory",
        "768M",
        "--disk-size",
        "2G",
        "--work-disk-size",
        "2G",
    ]);
    assert_eq!(
        (set.cpus, set.memory_mib, set.work_disk_bytes),
        (1, 768, 2 << 30)
    );
    let out = d.banger(&["vm", "start", "dev"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(
        ssh(&d, "dev", "cat /work/file").trim(),
        "persisted",
        "the work disk keeps its files across stop/start"
    );
    assert_eq!(ssh(&d, "dev", "nproc").trim(), "1");
    let work_kb: u64 = ssh(&d, "dev", "df -Pk /work | tail -1 | awk '{print $2}'")
        .trim()
        .parse()
        .unwrap();
    assert!(work_kb > 1900 * 1024, "work disk not grown: {work_kb} KiB");
    poll(
        "the guest to grow its root filesystem",
        Duration::from_secs(60),
        || {
            let kb: u64 = ssh(&d, "dev", "df -Pk / | tail -1 | awk '{print $2}'")
                .trim()
                .parse()
                .ok()?;
            (kb > 1800 * 1024).then_some(())
        },
    );

    let out = d.banger(&["vm", "rm", "dev"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("stop it first"), "{}", stderr(&out));
    let out = d.banger(&["vm", "rm", "--force", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: VmList = d.banger_json(&["vm", "ls"]);
    assert!(list.vms.is_empty());
    assert!(vmm_pids(&vm.id).is_empty(), "VMM left behind");
    assert!(
        !ns.links().iter().any(|l| l.starts_with("bg-")),
        "TAP left: {:?}",
        ns.links()
    );
    assert!(
        !d.state_dir.join("vms").join(&vm.id).exists(),
        "VM files left"
    );
    // The address went back to the pool.
    let out = d.banger(&["vm", "create", "again", "--no-start", "--disk-size", "3G"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again: Vm = d.banger_json(&["vm", "show", "again"]);
    assert_eq!(again.ip, "172.30.0.2");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(d.state_dir.join("vms").join(&again.id).join("root.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["virtual-size"],
        3u64 << 30,
        "the root disk has the requested size"
    );
    let out = d.banger(&["vm", "create", "tiny", "--disk-size", "100M"]);
    assert!(
        stderr(&out).contains("at least the image's root filesystem"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn guest_vm_is_adopted_after_daemon_sigkill_and_marked_stopped_when_its_vmm_died() {
    let img = test_image();
    let ns = TestNetns::new();
    let mut d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    assert!(d.banger(&["vm", "create", "keep"]).status.success());
    let vm: Vm = d.banger_json(&["vm", "show", "keep"]);
    let pid = vm.pid.unwrap();

    d.kill9();
    assert!(
        vmm_pids(&vm.id).contains(&pid.to_string()),
        "the VM must outlive the daemon"
    );
    d.spawn();
    d.assert_in(&ns);
    let adopted: Vm = d.banger_json(&["vm", "show", "keep"]);
    assert_eq!(adopted.state, VmState::Running);
    assert_eq!(adopted.pid, Some(pid));
    assert_eq!(ssh(&d, "keep", "hostname").trim(), "keep");

    // The VMM dies while no daemon runs: the next one marks it stopped.
    d.kill9();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    poll("the VMM to die", Duration::from_secs(10), || {
        vmm_pids(&vm.id).is_empty().then_some(())
    });
    d.spawn();
    let dead: Vm = d.banger_json(&["vm", "show", "keep"]);
    assert_eq!(dead.state, VmState::Stopped);
    assert!(
        dead.stop_reason
            .as_deref()
            .unwrap_or("")
            .contains("while bangerd was not running"),
        "{dead:?}"
    );
    assert!(
        !ns.links().iter().any(|l| l.starts_with("bg-")),
        "stale TAP not reconciled: {:?}",
        ns.links()
    );
    // And it starts again.
    assert!(d.banger(&["vm", "start", "keep"]).status.success());
    assert_eq!(ssh(&d, "keep", "hostname").trim(), "keep");

    // A daemon killed in the middle of `rm` (row gone, files and TAP still
    // there) leaves nothing once restarted.
    d.kill9();
    let db = d.state_dir.join("banger.db");
    // Its TAP: its own `bg-` one, or one it took from the TAP pool.
    let tap = String::from_utf8_lossy(
        &std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(format!("SELECT tap FROM vms WHERE id = '{}'", vm.id))
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    assert!(tap.starts_with("bg"), "{tap:?}");
    let _ = std::process::Command::new("kill")
        .args(["-9", &dead.pid.unwrap_or(pid).to_string()])
        .status();
    for p in vmm_pids(&vm.id) {
        let _ = std::process::Command::new("kill").args(["-9", &p]).status();
    }
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!("DELETE FROM vms WHERE id = '{}'", vm.id))
        .status()
        .unwrap();
    assert!(
        st.success(),
        "sqlite3 (Debian package sqlite3) is needed to simulate the crash"
    );
    assert!(d.state_dir.join("vms").join(&vm.id).exists());
    assert!(
        ns.links().contains(&tap),
        "the TAP of the running VM should still be there"
    );
    d.spawn();
    assert!(
        !d.state_dir.join("vms").join(&vm.id).exists(),
        "orphaned VM files not removed"
    );
    assert!(!ns.links().contains(&tap), "orphaned TAP not removed");
}

#[test]
fn guest_vm_create_interrupted_by_a_daemon_crash_is_rolled_back() {
    let img = test_image();
    let ns = TestNetns::new();
    let mut d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    let out = d
        .banger_cmd()
        .args(["--json", "vm", "create", "half", "--wait", "none"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let op: Operation = serde_json::from_slice(&out.stdout).unwrap();
    poll("the boot step", Duration::from_secs(60), || {
        let o: Operation = d.banger_json(&["ops", "show", &op.id]);
        (o.steps.iter().find(|s| s.name == "boot").unwrap().status == StepStatus::Running)
            .then_some(())
    });
    let vm: Vm = d.banger_json(&["vm", "show", "half"]);
    assert_eq!(vm.state, VmState::Creating);
    d.kill9();
    d.spawn();
    let o: Operation = d.banger_json(&["ops", "show", &op.id]);
    assert_eq!(o.state, OpState::Interrupted);
    let out = d.banger(&["vm", "show", "half"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the half-created VM must be gone"
    );
    poll(
        "the VMM of the rolled-back VM to be gone",
        Duration::from_secs(10),
        || vmm_pids(&vm.id).is_empty().then_some(()),
    );
    assert!(
        !ns.links().iter().any(|l| l.starts_with("bg-")),
        "TAP left: {:?}",
        ns.links()
    );
    assert!(!d.state_dir.join("vms").join(&vm.id).exists());
}

#[test]
fn vm_bad_input_is_refused_before_anything_changes() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    let long = "v".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["vm", "create", "Bad_Name"], "Invalid VM name"),
        (vec!["vm", "create", "a/../b"], "Invalid VM name"),
        (vec!["vm", "create", &long], "the limit is 63"),
        (
            vec!["vm", "create", "x", "--image", "nope"],
            "No image named",
        ),
        (vec!["vm", "create", "x", "--cpus", "0"], "not in 1..=32"),
        (vec!["vm", "create", "x", "--cpus", "64"], "not in 1..=32"),
        (
            vec!["vm", "create", "x", "--memory", "1M"],
            "not in 128 MiB",
        ),
        (
            vec!["vm", "create", "x", "--memory", "lots"],
            "Invalid size",
        ),
        (
            vec!["vm", "create", "x", "--work-disk-size", "1K"],
            "between 64 MiB",
        ),
        (
            vec!["vm", "create", "x", "--backend", "vmware"],
            "not auto, qemu or firecracker",
        ),
        (vec!["vm", "show", "ghost"], "No VM named"),
        (vec!["vm", "stop", "ghost"], "No VM named"),
        (vec!["vm", "rm", "ghost"], "No VM named"),
    ];
    for (args, needle) in cases {
        let out = d.banger(&args);
        // A bad flag value is a usage error (exit 2) the CLI finds before
        // the daemon is asked; names are checked by the daemon (exit 1).
        let usage = ["--backend", "--cpus", "--memory", "--work-disk-size"];
        let code = if args.iter().any(|a| usage.contains(a)) {
            2
        } else {
            1
        };
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let text = stderr(&out);
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    // A duplicate name.
    assert!(d
        .banger(&["vm", "create", "one", "--no-start"])
        .status
        .success());
    let out = d.banger(&["vm", "create", "one", "--no-start"]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // Stopping a stopped VM is a conflict.
    let out = d.banger(&["vm", "stop", "one"]);
    assert!(
        stderr(&out).contains("only a running VM can be stopped"),
        "{}",
        stderr(&out)
    );
    let list: VmList = d.banger_json(&["vm", "ls"]);
    assert_eq!(
        list.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["one"]
    );
    let dirs = std::fs::read_dir(d.state_dir.join("vms")).unwrap().count();
    assert_eq!(dirs, 1, "only the one VM has files");
    // The image is in use now.
    let out = d.banger(&["image", "rm", "default"]);
    assert!(
        stderr(&out).contains("is used by VM(s) one"),
        "{}",
        stderr(&out)
    );
    // A tampered image artifact (same size, other bytes) is refused.
    let image: banger_api::Image = d.banger_json(&["image", "show", "default"]);
    let initrd = d
        .state_dir
        .join("images")
        .join(&image.digest)
        .join("initrd.img");
    let mut bytes = std::fs::read(&initrd).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&initrd, bytes).unwrap();
    let out = d.banger(&["vm", "create", "tampered", "--no-start"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("changed on disk"), "{}", stderr(&out));
    let ops: banger_api::OpList = d.banger_json(&["ops", "ls", "--all"]);
    assert!(ops
        .ops
        .iter()
        .all(|o| o.kind != "vm.create" || o.state == OpState::Succeeded));
    let _ = wait_op;
}
