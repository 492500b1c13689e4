//! Create-to-SSH from the warm pool against a cold create, in the same run,
//! same daemon (its VMs in its own network namespace). Target: pool <= 0.1
//! x cold.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use banger_bench::{create_to_ssh, machine, median, quick, round3, runs, step_seconds, timed_op};
use banger_tests::{poll, test_image, TestDaemon, TestNetns};
use serde_json::json;

fn main() {
    let n = if quick() { 1 } else { runs(3) };
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    // A first create pays once-per-daemon costs (the KVM probe, the work
    // disk seed): not measured.
    create_to_ssh(&d, "warmup", &["--cpus", "1"]);
    assert!(d
        .banger(&["vm", "rm", "--force", "warmup"])
        .status
        .success());
    // Cold: a size no pool keeps (1 cpu).
    let (mut cold, mut cold_create) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (c, s) = create_to_ssh(&d, &format!("cold{i}"), &["--cpus", "1"]);
        cold_create.push(c);
        cold.push(s);
        assert!(d
            .banger(&["vm", "rm", "--force", &format!("cold{i}")])
            .status
            .success());
    }
    assert!(d.banger(&["pool", "set", "--size", "1"]).status.success());
    let (mut warm, mut warm_create) = (Vec::new(), Vec::new());
    for i in 0..n {
        poll("a ready pool VM", Duration::from_secs(120), || {
            let l: banger_api::PoolList = d.banger_json(&["pool", "ls"]);
            (l.pools.iter().map(|p| p.ready).sum::<u32>() >= 1).then_some(())
        });
        let (c, s) = create_to_ssh(&d, &format!("warm{i}"), &[]);
        warm_create.push(c);
        warm.push(s);
        assert!(d
            .banger(&["vm", "rm", "--force", &format!("warm{i}")])
            .status
            .success());
    }
    // One more, for where a claim's time goes.
    poll("a ready pool VM", Duration::from_secs(120), || {
        let l: banger_api::PoolList = d.banger_json(&["pool", "ls"]);
        (l.pools.iter().map(|p| p.ready).sum::<u32>() >= 1).then_some(())
    });
    let (_, op) = timed_op(&d, &["vm", "create", "steps"]);
    let steps = step_seconds(&op);
    assert!(d.banger(&["pool", "set", "--size", "0"]).status.success());
    let r = |v: &[f64]| v.iter().map(|x| round3(*x)).collect::<Vec<_>>();
    let out = json!({
        "bench": "create_to_ssh_warm_pool_vs_cold",
        "quick": quick(),
        "runs": n,
        "unit": "seconds",
        "from_pool": { "runs": r(&warm), "median": round3(median(&warm)), "create_returned": r(&warm_create), "create_returned_median": round3(median(&warm_create)), "steps_s": steps },
        "cold": { "runs": r(&cold), "median": round3(median(&cold)), "create_returned": r(&cold_create), "create_returned_median": round3(median(&cold_create)) },
        "ratio": round3(median(&warm) / median(&cold)),
        "ratio_create_returned": round3(median(&warm_create) / median(&cold_create)),
        "target_ratio_max": 0.1,
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
