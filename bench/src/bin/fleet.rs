//! Fleet-scale figures against the Firecracker backend's fake (real daemon,
//! real store, real network namespace; the VMM is the spec-checking fake):
//! - `vm ls` API latency with 1,000 VMs in the store vs 10;
//! - the daemon's RSS with 20 VMs running vs none;
//! - 8 concurrent creates vs 1 (wall time).
//!
//! Each baseline is measured in the same run. `--quick` shrinks the counts.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Instant;

use banger_bench::{machine, median, quick, round3};
use banger_tests::{bin, test_image, TestDaemon, TestNetns};
use serde_json::json;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Adds `n` stopped VMs straight into the store (the daemon stopped).
fn insert_vms(d: &TestDaemon, from: usize, n: usize) {
    let mut sql = String::from("BEGIN;");
    for i in from..from + n {
        let id = format!("{:032x}", 0xbe00_0000_u64 + i as u64);
        let ip = format!("10.77.{}.{}", (i + 2) / 250, (i + 2) % 250 + 2);
        sql.push_str(&format!(
            "INSERT INTO vms (id, name, image, image_digest, backend, accel, \
            cpus, memory_mib, work_bytes, ip, mac, tap, state, pid, \
            created_at, started_at, stop_reason, host_key) VALUES ('{id}', \
            'fleet{i}', 'default', 'x', 'firecracker', 'kvm', 1, 256, \
            1073741824, '{ip}', '52:54:00:00:00:01', 'bg-{}', 'stopped', \
            NULL, '2026-01-01T00:00:00Z', NULL, 'benchmark row', '');",
            &id[..12]
        ));
    }
    sql.push_str("COMMIT;");
    // On stdin: 1,000 rows are more than one argument may hold.
    let mut child = Command::new("sqlite3")
        .arg(d.state_dir.join("banger.db"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), sql.as_bytes()).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success());
}

/// Median latency (ms) of `GET /v1/vms` over `n` calls; checks the count.
fn ls_latency(d: &TestDaemon, n: usize, expect: usize) -> f64 {
    let c = d.client();
    banger_tests::block_on(async {
        let mut t = Vec::new();
        for _ in 0..n {
            let t0 = Instant::now();
            let l: banger_api::VmList = c.get("/v1/vms").await.unwrap();
            t.push(t0.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(l.vms.len(), expect);
        }
        median(&t)
    })
}

fn create(d: &TestDaemon, name: &str) -> std::process::Child {
    d.banger_cmd()
        .args(["vm", "create", name, "--backend", "firecracker"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_all(children: Vec<std::process::Child>) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn main() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "the Firecracker backend (even against the fake) needs /dev/kvm present"
    );
    let (big, running, concurrent): (usize, usize, usize) =
        if quick() { (200, 4, 4) } else { (1000, 20, 8) };
    let img = test_image();
    let dir = tempfile::tempdir().unwrap();
    let fake_log = dir.path().join("requests.jsonl");
    let ns = TestNetns::new();
    let extra = format!(
        "subnet = \"10.77.0.0/16\"\n[firecracker]\nbinary = \"{}\"\n",
        bin("fake-firecracker").display()
    );
    let mut d = TestDaemon::start_in_with(
        &ns,
        &extra,
        &[("FAKE_FC_REQUEST_LOG", fake_log.to_str().unwrap())],
    );
    d.import_test_image(&img, "default");

    // RSS: idle, then with VMs running.
    let idle_rss = rss_kib(d.pid());
    // The first create also sets up the network and the work-disk seed.
    wait_all(vec![create(&d, "warmup")]);
    let t0 = Instant::now();
    wait_all(vec![create(&d, "one")]);
    let one = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    wait_all(
        (0..concurrent)
            .map(|i| create(&d, &format!("par{i}")))
            .collect(),
    );
    let many = t0.elapsed().as_secs_f64();
    let more = running.saturating_sub(2 + concurrent);
    for i in 0..more {
        wait_all(vec![create(&d, &format!("more{i}"))]);
    }
    let vms_running = 2 + concurrent + more;
    let busy_rss = rss_kib(d.pid());
    for v in d.banger_json::<banger_api::VmList>(&["vm", "ls"]).vms {
        assert!(d.banger(&["vm", "rm", "--force", &v.name]).status.success());
    }

    // vm ls: 10 VMs in the store, then `big`.
    d.kill9();
    insert_vms(&d, 0, 10);
    d.spawn();
    let small_ms = ls_latency(&d, 50, 10);
    d.kill9();
    insert_vms(&d, 10, big - 10);
    d.spawn();
    let big_ms = ls_latency(&d, 50, big);

    let out = json!({
        "bench": "fleet_fake_firecracker",
        "quick": quick(),
        "runs": 50,
        "vm_ls_latency_ms": { "vms": big, "median": round3(big_ms), "baseline_vms": 10, "baseline_median": round3(small_ms), "ratio": round3(big_ms / small_ms) },
        "daemon_rss_kib": { "vms_running": vms_running, "rss": busy_rss, "baseline_idle": idle_rss, "ratio": round3(busy_rss as f64 / idle_rss.max(1) as f64) },
        "concurrent_creates_s": { "concurrent": concurrent, "wall": round3(many), "baseline_one": round3(one), "ratio": round3(many / one) },
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
