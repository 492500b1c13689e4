//! Create-to-SSH through banger (`banger vm create` then `banger vm ssh --
//! true`, daemon in its own network namespace) against a hand-run QEMU boot
//! of the same image to `ssh true` (user networking), in the same run.
//! Target: ratio <= 1.10. Also the root-disk clone (qcow2 overlay) of a
//! 4 GiB vs a 256 MiB image: target ratio <= 1.2.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use banger_bench::{create_to_ssh, machine, median, quick, round3, runs};
use banger_tests::{boot_direct, test_image, BootOpts, TestDaemon, TestNetns};
use serde_json::json;

fn clone_time(size: &str, dir: &std::path::Path) -> f64 {
    let base = dir.join(format!("base-{size}.raw"));
    assert!(Command::new("truncate")
        .arg("-s")
        .arg(size)
        .arg(&base)
        .status()
        .unwrap()
        .success());
    let mut times = Vec::new();
    for i in 0..5 {
        let out = dir.join(format!("ov-{size}-{i}.qcow2"));
        let t0 = Instant::now();
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&out)
            .status()
            .unwrap();
        times.push(t0.elapsed().as_secs_f64());
        assert!(st.success());
    }
    median(&times)
}

fn main() {
    let n = if quick() { 1 } else { runs(3) };
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    let (mut banger, mut direct) = (Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("bench{i}");
        banger.push(create_to_ssh(&d, &name, &[]).1);
        assert!(d.banger(&["vm", "rm", "--force", &name]).status.success());

        let t0 = Instant::now();
        let (g, _) = boot_direct(
            &img,
            BootOpts {
                wait_marker: false,
                ..BootOpts::default()
            },
        );
        direct.push(g.wait_ssh(t0, Duration::from_secs(120)).as_secs_f64());
        drop(g);
    }
    let tmp = tempfile::tempdir().unwrap();
    let (small, big) = (clone_time("256M", tmp.path()), clone_time("4G", tmp.path()));
    let out = json!({
        "bench": "vm_create_to_ssh_vs_hand_run_qemu",
        "quick": quick(),
        "runs": n,
        "unit": "seconds",
        "banger_create_to_ssh": { "runs": banger.iter().map(|x| round3(*x)).collect::<Vec<_>>(), "median": round3(median(&banger)) },
        "hand_run_qemu_to_ssh": { "runs": direct.iter().map(|x| round3(*x)).collect::<Vec<_>>(), "median": round3(median(&direct)) },
        "ratio": round3(median(&banger) / median(&direct)),
        "target_ratio_max": 1.10,
        "root_disk_clone": { "strategy": "qcow2", "image_256m_s": round3(small), "image_4g_s": round3(big), "ratio": round3(big / small), "target_ratio_max": 1.2 },
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
