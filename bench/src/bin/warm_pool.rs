//! Create-to-SSH from the warm pool against a cold create, in the same run,
//! same daemon (its VMs in its own network namespace). Target: pool <= 0.1
//! x cold.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use banger_bench::{machine, median, quick, round3, runs};
use banger_tests::{poll, test_image, TestDaemon, TestNetns};
use serde_json::json;

fn create_to_ssh(d: &TestDaemon, name: &str, extra: &[&str]) -> f64 {
    let t0 = Instant::now();
    let mut args = vec!["vm", "create", name];
    args.extend_from_slice(extra);
    let out = d.banger(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d
        .banger(&["vm", "ssh", name, "--", "true"])
        .status
        .success());
    t0.elapsed().as_secs_f64()
}

fn main() {
    let n = if quick() { 1 } else { runs(3) };
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    // Cold: a size no pool keeps (1 cpu).
    let mut cold = Vec::new();
    for i in 0..n {
        cold.push(create_to_ssh(&d, &format!("cold{i}"), &["--cpus", "1"]));
        assert!(d
            .banger(&["vm", "rm", "--force", &format!("cold{i}")])
            .status
            .success());
    }
    assert!(d.banger(&["pool", "set", "--size", "1"]).status.success());
    let mut warm = Vec::new();
    for i in 0..n {
        poll("a ready pool VM", Duration::from_secs(120), || {
            let l: banger_api::PoolList = d.banger_json(&["pool", "ls"]);
            (l.pools.iter().map(|p| p.ready).sum::<u32>() >= 1).then_some(())
        });
        warm.push(create_to_ssh(&d, &format!("warm{i}"), &[]));
        assert!(d
            .banger(&["vm", "rm", "--force", &format!("warm{i}")])
            .status
            .success());
    }
    assert!(d.banger(&["pool", "set", "--size", "0"]).status.success());
    let r = |v: &[f64]| v.iter().map(|x| round3(*x)).collect::<Vec<_>>();
    let out = json!({
        "bench": "create_to_ssh_warm_pool_vs_cold",
        "quick": quick(),
        "runs": n,
        "unit": "seconds",
        "from_pool": { "runs": r(&warm), "median": round3(median(&warm)) },
        "cold": { "runs": r(&cold), "median": round3(median(&cold)) },
        "ratio": round3(median(&warm) / median(&cold)),
        "target_ratio_max": 0.1,
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
