//! The guest agent against SSH, in the same run, same daemon, same VM:
//! `vm exec NAME -- true` vs `vm ssh NAME -- true` vs OpenSSH over an
//! already-open ControlMaster connection (per command, 100 in a row, 8 at
//! once); a 100 MiB file in with `vm cp` vs `scp`; create to the first
//! exec's output from the warm pool vs cold; the agent's idle RSS in the
//! guest and its binary size.
//!
//! Targets: exec <= 0.05 x vm ssh and <= 0.3 x ControlMaster; vm cp >= 1.0 x
//! scp (throughput); pool to first output <= 0.1 x cold; RSS <= 8 MiB.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use banger_bench::{machine, median, quick, round3, runs};
use banger_tests::{poll, stdout, test_image, TestDaemon, TestNetns};
use serde_json::json;

/// OpenSSH with the config `vm ssh-config` writes and one master
/// connection kept open.
struct Ssh {
    config: std::path::PathBuf,
    control: std::path::PathBuf,
}

impl Ssh {
    fn new(d: &TestDaemon, dir: &Path) -> Ssh {
        let config = dir.join("ssh_config");
        let out = d.banger(&["vm", "ssh-config", "--write", config.to_str().unwrap()]);
        assert!(out.status.success(), "{}", banger_tests::stderr(&out));
        let s = Ssh {
            config,
            control: dir.join("cm"),
        };
        // The master: ssh -fN returns once it is up.
        let st = s.cmd("ssh").args(["-fN", "bench.vm"]).status().unwrap();
        assert!(st.success(), "the ControlMaster connection");
        s
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-F").arg(&self.config).args([
            "-o",
            "ControlMaster=auto",
            "-o",
            &format!("ControlPath={}", self.control.display()),
            "-o",
            "ControlPersist=600",
        ]);
        c
    }

    fn run(&self, command: &str) -> Output {
        self.cmd("ssh")
            .args(["bench.vm", command])
            .output()
            .unwrap()
    }

    fn stop(&self) {
        let _ = self.cmd("ssh").args(["-O", "exit", "bench.vm"]).output();
    }
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        banger_tests::stderr(&out)
    );
    out
}

fn exec(d: &TestDaemon, vm: &str, argv: &[&str]) -> Output {
    let mut a = vec!["vm", "exec", vm, "--"];
    a.extend_from_slice(argv);
    ok(d.banger(&a), "vm exec")
}

/// Seconds each of `n` runs of `f` took.
fn each(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// Seconds for `n` runs of `f` started at once, all finished.
fn concurrent(n: usize, f: impl Fn() + Sync) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(&f);
        }
    });
    t.elapsed().as_secs_f64()
}

/// Seconds from `vm create` to the first `vm exec -- echo` output.
fn create_to_exec(d: &TestDaemon, name: &str, extra: &[&str]) -> f64 {
    let t = Instant::now();
    let mut args = vec!["vm", "create", name];
    args.extend_from_slice(extra);
    ok(d.banger(&args), "vm create");
    poll("the first exec", Duration::from_secs(120), || {
        let out = d.banger(&["vm", "exec", name, "--", "echo", "up"]);
        (stdout(&out) == "up\n").then_some(())
    });
    let s = t.elapsed().as_secs_f64();
    ok(d.banger(&["vm", "rm", "--force", name]), "vm rm");
    s
}

fn pool_ready(d: &TestDaemon) {
    poll("a ready pool VM", Duration::from_secs(180), || {
        let l: banger_api::PoolList = d.banger_json(&["pool", "ls"]);
        (l.pools.iter().map(|p| p.ready).sum::<u32>() >= 1).then_some(())
    });
}

/// The resident memory of VM `name`'s VMM process, KiB.
fn vmm_rss_kib(d: &TestDaemon, name: &str) -> u64 {
    let vm: banger_api::Vm = d.banger_json(&["vm", "show", name]);
    let pid = vm.pid.expect("a running VM has a VMM pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn stats(v: &[f64]) -> serde_json::Value {
    json!({
        "runs": v.len(),
        "median": round3(median(v)),
        "min": round3(v.iter().copied().fold(f64::INFINITY, f64::min)),
        "max": round3(v.iter().copied().fold(0.0, f64::max)),
    })
}

fn main() {
    let q = quick();
    let n = if q { 5 } else { runs(20) };
    let row = if q { 10 } else { 100 };
    let ssh_n = if q { 2 } else { 20 };
    let mib: usize = if q { 16 } else { 100 };
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    let dir = tempfile::tempdir().unwrap();
    ok(d.banger(&["vm", "create", "bench"]), "vm create");
    poll("the agent", Duration::from_secs(60), || {
        let out = d.banger(&["vm", "exec", "bench", "--", "true"]);
        out.status.success().then_some(())
    });
    let ssh = Ssh::new(&d, dir.path());

    // Per command.
    let ex = each(n, || drop(exec(&d, "bench", &["true"])));
    // QEMU's memory across the vm ssh series (each SSH login runs new
    // guest code through TCG's translation cache, bounded at 128 MiB).
    let rss_before = vmm_rss_kib(&d, "bench");
    let vs = each(ssh_n, || {
        drop(ok(
            d.banger(&["vm", "ssh", "bench", "--", "true"]),
            "vm ssh",
        ))
    });
    let rss_after = vmm_rss_kib(&d, "bench");
    let cm = each(n, || drop(ok(ssh.run("true"), "ssh")));
    // What an exec is made of: one round trip to the agent (a stat, no
    // process) and the guest's own cost of starting a program, measured
    // inside it.
    let c = d.client();
    let rt = each(n, || {
        let r: Result<serde_json::Value, _> =
            banger_tests::block_on(c.get("/v1/vms/bench/files/stat?path=/"));
        assert!(r.is_ok(), "files/stat: {r:?}");
    });
    let spawn = exec(
        &d,
        "bench",
        &[
            "sh",
            "-c",
            "a=$(date +%s%N); for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; \
             echo $(( ($(date +%s%N) - a) / 10000 ))",
        ],
    );
    let spawn_s = stdout(&spawn).trim().parse::<f64>().unwrap() / 1e6;
    // In a row.
    let ex_row: f64 = each(row, || drop(exec(&d, "bench", &["true"])))
        .iter()
        .sum();
    let cm_row: f64 = each(row, || drop(ok(ssh.run("true"), "ssh"))).iter().sum();
    // At once.
    let ex_8 = concurrent(8, || drop(exec(&d, "bench", &["true"])));
    let cm_8 = concurrent(8, || drop(ok(ssh.run("true"), "ssh")));

    // A file in: vm cp against scp over the open master.
    let file = dir.path().join("payload.bin");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(&file, &data).unwrap();
    let f = file.to_str().unwrap();
    let t = Instant::now();
    ok(d.banger(&["vm", "cp", f, "bench:/var/tmp/cp.bin"]), "vm cp");
    let cp_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = ssh
        .cmd("scp")
        .args(["-q", f, "bench.vm:/var/tmp/scp.bin"])
        .output()
        .unwrap();
    let scp_s = t.elapsed().as_secs_f64();
    ok(out, "scp");
    let sums = exec(
        &d,
        "bench",
        &[
            "sh",
            "-c",
            "cmp /var/tmp/cp.bin /var/tmp/scp.bin && echo same",
        ],
    );
    assert_eq!(stdout(&sums), "same\n", "both copies arrived whole");
    exec(
        &d,
        "bench",
        &["rm", "-f", "/var/tmp/cp.bin", "/var/tmp/scp.bin"],
    );

    // The agent at rest (read over SSH, so no exec is in flight) and its size.
    let rss = ok(ssh.run("ps -o rss= -C banger-agent"), "ps");
    let rss_kib: u64 = stdout(&rss)
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap())
        .sum();
    let size = exec(
        &d,
        "bench",
        &["stat", "-c", "%s", "/run/banger/banger-agent"],
    );
    let size: u64 = stdout(&size).trim().parse().unwrap();
    ssh.stop();
    ok(d.banger(&["vm", "rm", "--force", "bench"]), "vm rm");

    // Create to the first exec's output: cold (a size no pool keeps), then
    // from the pool.
    let pool_n = if q { 1 } else { 3 };
    let cold: Vec<f64> = (0..pool_n)
        .map(|i| create_to_exec(&d, &format!("cold{i}"), &["--cpus", "1"]))
        .collect();
    ok(d.banger(&["pool", "set", "--size", "1"]), "pool set");
    let warm: Vec<f64> = (0..pool_n)
        .map(|i| {
            pool_ready(&d);
            create_to_exec(&d, &format!("warm{i}"), &[])
        })
        .collect();
    ok(d.banger(&["pool", "set", "--size", "0"]), "pool set");

    let mbps = |s: f64| round3(mib as f64 / s);
    let out = json!({
        "bench": "guest_agent_vs_ssh",
        "quick": q,
        "unit": "seconds",
        "exec": stats(&ex),
        "vm_ssh": stats(&vs),
        "ssh_controlmaster": stats(&cm),
        "ratio_exec_over_vm_ssh": round3(median(&ex) / median(&vs)),
        "ratio_exec_over_controlmaster": round3(median(&ex) / median(&cm)),
        "agent_round_trip": stats(&rt),
        "guest_program_start_s": round3(spawn_s),
        "in_a_row": { "commands": row, "exec_s": round3(ex_row), "controlmaster_s": round3(cm_row),
                      "ratio": round3(ex_row / cm_row) },
        "concurrent_8": { "exec_s": round3(ex_8), "controlmaster_s": round3(cm_8),
                          "ratio": round3(ex_8 / cm_8) },
        "copy_in": { "mib": mib, "vm_cp_s": round3(cp_s), "scp_s": round3(scp_s),
                     "vm_cp_mib_s": mbps(cp_s), "scp_mib_s": mbps(scp_s),
                     "ratio_throughput": round3(scp_s / cp_s) },
        "create_to_first_exec": { "from_pool": stats(&warm), "cold": stats(&cold),
                                  "ratio": round3(median(&warm) / median(&cold)) },
        "agent": { "rss_kib_idle": rss_kib, "binary_bytes": size },
        "vmm_rss_over_vm_ssh": { "commands": ssh_n, "before_kib": rss_before,
                                 "after_kib": rss_after,
                                 "growth_kib": rss_after.saturating_sub(rss_before),
                                 "tcg_tb_mib": banger_core::vms::vmm::qemu::TCG_TB_MIB },
        "targets": { "exec_over_vm_ssh_max": 0.05, "exec_over_controlmaster_max": 0.3,
                     "copy_throughput_ratio_min": 1.0, "pool_ratio_max": 0.1,
                     "agent_rss_kib_max": 8192,
                     "vmm_growth_kib_max": (banger_core::vms::vmm::qemu::TCG_TB_MIB + 32) * 1024 },
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
