//! Shared bits of the benchmarks: machine description, statistics, flags.
//!
//! Every benchmark prints one JSON object with its figures, the baseline it
//! measured in the same run, the ratio, and the machine it ran on. `--quick`
//! (used by CI so the benchmarks cannot rot) runs the smallest N.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

/// `--quick` on the command line, or BANGER_BENCH_QUICK=1.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
        || std::env::var("BANGER_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// `--runs N` (default `default`).
pub fn runs(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let kvm_module = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": (mem_kb as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0,
        "kernel": kernel,
        "kvm_module": kvm_module,
    })
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// (seconds until `vm create` returns, seconds until a first `vm ssh -- true`
/// has run: a new SSH connection from the client, about a second under TCG).
pub fn create_to_ssh(d: &banger_tests::TestDaemon, name: &str, extra: &[&str]) -> (f64, f64) {
    let t0 = std::time::Instant::now();
    let mut args = vec!["vm", "create", name];
    args.extend_from_slice(extra);
    let out = d.banger(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = t0.elapsed().as_secs_f64();
    let ssh = d.banger(&["vm", "ssh", name, "--", "true"]);
    assert!(
        ssh.status.success(),
        "the first vm ssh to {name} failed ({}): {}",
        ssh.status,
        String::from_utf8_lossy(&ssh.stderr)
    );
    (created, t0.elapsed().as_secs_f64())
}

/// Seconds per step of an operation.
pub fn step_seconds(op: &banger_api::Operation) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for s in &op.steps {
        if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
            m.insert(
                s.name.clone(),
                serde_json::json!(round3((b - a).num_microseconds().unwrap_or(0) as f64 / 1e6)),
            );
        }
    }
    serde_json::Value::Object(m)
}

/// Runs an operation-starting command with `--wait none`; returns the
/// seconds until it finished and the finished operation.
pub fn timed_op(d: &banger_tests::TestDaemon, args: &[&str]) -> (f64, banger_api::Operation) {
    let t0 = std::time::Instant::now();
    let mut a = args.to_vec();
    a.extend(["--wait", "none"]);
    let op: banger_api::Operation = d.banger_json(&a);
    let op = banger_tests::wait_op(d, &op.id);
    assert_eq!(op.state, banger_api::OpState::Succeeded, "{args:?}: {op:?}");
    (t0.elapsed().as_secs_f64(), op)
}
