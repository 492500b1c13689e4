//! The warm pool on real guests (QEMU TCG) in a network namespace the test
//! makes: a create takes a booted VM and it is indistinguishable from a
//! cold one; the pool refills; size 0 empties it; the budget is enforced.
//! Needs root.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use banger_api::{OpState, Operation, PoolList, Vm, VmList};
use banger_tests::{poll, stderr, stdout, test_image, wait_op, TestDaemon, TestNetns};

fn ready(d: &TestDaemon) -> u32 {
    let l: PoolList = d.banger_json(&["pool", "ls"]);
    l.pools.iter().map(|p| p.ready).sum()
}

fn pool_rows(d: &TestDaemon) -> u32 {
    let out = std::process::Command::new("sqlite3")
        .arg(d.state_dir.join("banger.db"))
        .arg("SELECT count(*) FROM vms WHERE pool = 1")
        .output()
        .unwrap();
    stdout(&out).trim().parse().unwrap()
}

/// The nice values of every thread of a process.
fn nice_of(pid: u32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| {
            // Fields after the command name (which may hold spaces): the
            // nice value is field 19, the 17th after ") ".
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(16).unwrap().parse().unwrap()
        })
        .collect()
}

fn pool_pid(d: &TestDaemon) -> u32 {
    let out = std::process::Command::new("sqlite3")
        .arg(d.state_dir.join("banger.db"))
        .arg("SELECT pid FROM vms WHERE pool = 1 AND state = 'running'")
        .output()
        .unwrap();
    stdout(&out).trim().parse().unwrap()
}

fn ssh(d: &TestDaemon, vm: &str, cmd: &str) -> String {
    let out = d.banger(&["vm", "ssh", vm, "--", cmd]);
    assert!(out.status.success(), "{cmd}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn guest_warm_pool_hands_out_booted_vms_that_look_cold() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in_with(&ns, "[pool]\nmemory_budget = \"2G\"\n", &[]);
    d.import_test_image(&img, "default");

    // Over the budget: refused, nothing set.
    let out = d.banger(&["pool", "set", "--size", "3", "--memory", "1G"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("memory budget"), "{}", stderr(&out));

    // A pool of another size than the defaults: `pool set --size 0` without
    // the size flags must still mean this one (at the end).
    let out = d.banger(&["pool", "set", "--size", "1", "--memory", "512M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll("a pool VM to boot", Duration::from_secs(120), || {
        (ready(&d) == 1).then_some(())
    });
    let vms: VmList = d.banger_json(&["vm", "ls"]);
    assert!(vms.vms.is_empty(), "pool VMs are hidden: {vms:?}");
    // A pool VM runs at the lowest CPU priority: booting it does not slow
    // the VMs in use.
    let pid = pool_pid(&d);
    let nice = nice_of(pid);
    assert!(nice.len() > 1 && nice.iter().all(|n| *n == 19), "{nice:?}");

    // A create that fits takes it.
    let t0 = Instant::now();
    let op: Operation =
        d.banger_json(&["vm", "create", "fast", "--memory", "512M", "--wait", "none"]);
    let op = wait_op(&d, &op.id);
    let took = t0.elapsed();
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert_eq!(op.result.as_ref().unwrap()["from_pool"], true, "{op:?}");
    eprintln!("create from the pool took {took:?}");
    let vm: Vm = d.banger_json(&["vm", "show", "fast"]);
    assert_eq!(vm.pid, Some(pid));
    let nice = nice_of(pid);
    assert!(
        nice.iter().all(|n| *n == 0),
        "claimed: normal priority {nice:?}"
    );
    // Indistinguishable from a cold one: its name everywhere, its own id.
    assert_eq!(ssh(&d, "fast", "hostname"), "fast");
    assert_eq!(ssh(&d, "fast", "cat /etc/hostname"), "fast");
    assert_eq!(
        ssh(&d, "fast", "grep ^BANGER_VM= /etc/environment"),
        "BANGER_VM=fast"
    );
    assert!(ssh(&d, "fast", "grep 127.0.1.1 /etc/hosts").ends_with("fast"));
    assert_eq!(ssh(&d, "fast", "cat /etc/machine-id"), vm.id);
    let vms: VmList = d.banger_json(&["vm", "ls"]);
    assert_eq!(
        vms.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["fast"]
    );
    assert!(vm.started_at.unwrap() > chrono::Utc::now() - chrono::Duration::seconds(60));

    // The pool refills itself.
    poll("the pool to refill", Duration::from_secs(120), || {
        (ready(&d) == 1).then_some(())
    });

    // The name holds over a reboot (the config disk was rewritten).
    assert!(d.banger(&["vm", "restart", "fast"]).status.success());
    assert_eq!(ssh(&d, "fast", "hostname"), "fast");

    // A create that does not fit boots cold.
    let op: Operation = d.banger_json(&["vm", "create", "cold", "--cpus", "1", "--wait", "none"]);
    let op = wait_op(&d, &op.id);
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert!(
        op.result.as_ref().unwrap().get("from_pool").is_none(),
        "{op:?}"
    );

    // Size 0, sizes left out: the image's one pool entry, and its VMs, go.
    let out = d.banger(&["pool", "set", "--size", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll("the pool to empty", Duration::from_secs(60), || {
        (pool_rows(&d) == 0).then_some(())
    });
    let l: PoolList = d.banger_json(&["pool", "ls"]);
    assert!(l.pools.is_empty());
    let vms: VmList = d.banger_json(&["vm", "ls"]);
    assert_eq!(vms.vms.len(), 2);
}
