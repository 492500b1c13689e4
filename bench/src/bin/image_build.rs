//! Image build time with a cold cache (empty state dir: kernel package and
//! every .deb downloaded) against a warm one (the same recipe rebuilt after
//! `image rm`, with the kernel and apt caches kept), in one run.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use banger_api::{OpState, Operation};
use banger_bench::{machine, quick, round3};
use banger_tests::{fixture, wait_op, TestDaemon};
use serde_json::json;

fn build(d: &TestDaemon, name: &str) -> f64 {
    let t0 = Instant::now();
    let out = d
        .banger_cmd()
        .args(["--json", "image", "build", name, "--detach", "--from-file"])
        .arg(fixture("test-image.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let op: Operation = serde_json::from_slice(&out.stdout).unwrap();
    let op = wait_op(d, &op.id);
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert_eq!(
        op.result.as_ref().unwrap()["reused"],
        false,
        "the build must not be a digest hit"
    );
    t0.elapsed().as_secs_f64()
}

fn main() {
    let d = TestDaemon::start();
    let cold = build(&d, "cold");
    let rm = d.banger(&["image", "rm", "cold"]);
    assert!(rm.status.success());
    let warm = build(&d, "warm");
    let out = json!({
        "bench": "image_build_cold_vs_warm_cache",
        "quick": quick(),
        "unit": "seconds for `banger image build` of tests/fixtures/test-image.toml",
        "cold_s": round3(cold),
        "warm_s": round3(warm),
        "ratio_warm_over_cold": round3(warm / cold),
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
