//! Create-to-SSH from a snapshot (a restore) and by fork, against a cold
//! create, in the same run, same daemon (its VMs in its own network
//! namespace). Target: restore <= 0.25 x cold. Also: how long taking a
//! snapshot pauses the VM, the snapshot's size, and where a restore's time
//! goes (its operation's steps).

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use banger_bench::{create_to_ssh, machine, median, quick, round3, runs, step_seconds, timed_op};
use banger_tests::{test_image, TestDaemon, TestNetns};
use serde_json::json;

fn rm(d: &TestDaemon, name: &str) {
    assert!(d.banger(&["vm", "rm", "--force", name]).status.success());
}

fn main() {
    let n = if quick() { 1 } else { runs(3) };
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    let r = |v: &[f64]| v.iter().map(|x| round3(*x)).collect::<Vec<_>>();

    // A first create pays once-per-daemon costs (the KVM probe, the work
    // disk seed): not measured.
    create_to_ssh(&d, "warmup", &[]);
    rm(&d, "warmup");
    let (mut cold, mut cold_create) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (c, s) = create_to_ssh(&d, &format!("cold{i}"), &[]);
        cold_create.push(c);
        cold.push(s);
        rm(&d, &format!("cold{i}"));
    }

    // The VM to snapshot and fork: booted, a little used.
    create_to_ssh(&d, "src", &[]);
    assert!(d
        .banger(&["vm", "ssh", "src", "--", "echo hi > /work/hi"])
        .status
        .success());
    let (take_s, take_op) = timed_op(&d, &["vm", "snapshot", "src", "snap"]);
    let l: banger_api::SnapshotList = d.banger_json(&["snapshot", "ls"]);
    let size = l.snapshots[0].size_bytes;

    let (mut restore, mut restore_create, mut restore_steps) = (Vec::new(), Vec::new(), None);
    for i in 0..n {
        let name = format!("restored{i}");
        let t0 = Instant::now();
        let (c, op) = timed_op(&d, &["vm", "create", &name, "--from-snapshot", "snap"]);
        let ssh = d.banger(&["vm", "ssh", &name, "--", "true"]);
        assert!(ssh.status.success());
        restore.push(t0.elapsed().as_secs_f64());
        restore_create.push(c);
        restore_steps = Some(step_seconds(&op));
        rm(&d, &name);
    }

    let (mut fork, mut fork_ssh, mut fork_steps) = (Vec::new(), Vec::new(), None);
    for i in 0..n {
        let name = format!("fork{i}");
        let t0 = Instant::now();
        let (c, op) = timed_op(&d, &["vm", "fork", "src", &name]);
        let ssh = d.banger(&["vm", "ssh", &name, "--", "true"]);
        assert!(ssh.status.success());
        fork_ssh.push(t0.elapsed().as_secs_f64());
        fork.push(c);
        fork_steps = Some(step_seconds(&op));
        rm(&d, &name);
    }

    let out = json!({
        "bench": "create_to_ssh_snapshot_restore_and_fork_vs_cold",
        "quick": quick(),
        "runs": n,
        "unit": "seconds",
        "cold": { "runs": r(&cold), "median": round3(median(&cold)), "create_returned": r(&cold_create), "create_returned_median": round3(median(&cold_create)) },
        "from_snapshot": { "runs": r(&restore), "median": round3(median(&restore)), "create_returned": r(&restore_create), "create_returned_median": round3(median(&restore_create)), "steps_s": restore_steps },
        "fork": { "returned": r(&fork), "returned_median": round3(median(&fork)), "to_ssh": r(&fork_ssh), "to_ssh_median": round3(median(&fork_ssh)), "steps_s": fork_steps },
        "snapshot_take": { "seconds": round3(take_s), "steps_s": step_seconds(&take_op), "size_bytes": size },
        "ratio": round3(median(&restore) / median(&cold)),
        "ratio_create_returned": round3(median(&restore_create) / median(&cold_create)),
        "fork_over_cold": round3(median(&fork_ssh) / median(&cold)),
        "target_ratio_max": 0.25,
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
