//! Create-to-SSH with a warm TAP pool (`network.tap_pool = 4`) against
//! none (`tap_pool = 0`), in the same run, each daemon in its own network
//! namespace; also the `network` step of the create operation alone, which
//! is where the pool saves its time (under TCG the boot dominates the total).

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use banger_bench::{machine, median, quick, round3, runs};
use banger_tests::{poll, test_image, wait_op, TestDaemon, TestNetns};
use serde_json::json;

/// (create-to-SSH seconds, network step seconds) per run.
fn measure(pool: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in_with(&ns, &format!("tap_pool = {pool}\n"), &[]);
    d.import_test_image(&img, "default");
    // The first VM sets the network up (and starts filling the pool).
    assert!(d.banger(&["vm", "create", "warmup"]).status.success());
    let (mut total, mut step) = (Vec::new(), Vec::new());
    for i in 0..n {
        if pool > 0 {
            poll(
                "the TAP pool to fill",
                std::time::Duration::from_secs(20),
                || {
                    (ns.links().iter().filter(|l| l.starts_with("bgp-")).count() >= pool)
                        .then_some(())
                },
            );
        }
        let name = format!("bench{i}");
        let t0 = Instant::now();
        let op: banger_api::Operation = d.banger_json(&["vm", "create", &name, "--wait", "none"]);
        let op = wait_op(&d, &op.id);
        assert_eq!(op.state, banger_api::OpState::Succeeded, "{op:?}");
        assert!(d
            .banger(&["vm", "ssh", &name, "--", "true"])
            .status
            .success());
        total.push(t0.elapsed().as_secs_f64());
        let s = op.steps.iter().find(|s| s.name == "network").unwrap();
        let secs = (s.finished_at.unwrap() - s.started_at.unwrap())
            .num_microseconds()
            .unwrap() as f64
            / 1e6;
        step.push(secs);
        assert!(d.banger(&["vm", "rm", "--force", &name]).status.success());
    }
    (total, step)
}

fn main() {
    let n = if quick() { 1 } else { runs(3) };
    let (no_pool, no_pool_step) = measure(0, n);
    let (pool, pool_step) = measure(4, n);
    let r = |v: &[f64]| v.iter().map(|x| round3(*x)).collect::<Vec<_>>();
    let out = json!({
        "bench": "create_to_ssh_warm_tap_pool_vs_none",
        "quick": quick(),
        "runs": n,
        "unit": "seconds",
        "warm_pool": { "create_to_ssh": r(&pool), "median": round3(median(&pool)), "network_step": r(&pool_step), "network_step_median": round3(median(&pool_step)) },
        "no_pool": { "create_to_ssh": r(&no_pool), "median": round3(median(&no_pool)), "network_step": r(&no_pool_step), "network_step_median": round3(median(&no_pool_step)) },
        "ratio": round3(median(&pool) / median(&no_pool)),
        "network_step_ratio": round3(median(&pool_step) / median(&no_pool_step).max(1e-6)),
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
