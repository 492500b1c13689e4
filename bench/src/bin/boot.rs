//! Boot of banger's default (light-init) image to SSH under QEMU TCG, against
//! a baseline measured in the same run: the same kernel, initrd and rootfs
//! booted with the shared recipe's light init (a shell script that mounts
//! the API filesystems, sets the address and execs sshd as PID 1), with keys
//! written into the disk beforehand. Both are timed from QEMU's start to the
//! first successful `ssh true` (50 ms polls). Target: ratio <= 1.2.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use banger_bench::{machine, median, quick, round3, runs};
use banger_tests::{boot_direct, test_image, BootOpts};
use serde_json::json;

const BASELINE_INIT: &str = "#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/sshd /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
hostname guest; ip link set lo up
ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
exec /usr/sbin/sshd -D -e
";

fn main() {
    let n = if quick() { 1 } else { runs(3) };
    let img = test_image();
    let work = tempfile::tempdir().unwrap();
    let p = |s: &str| work.path().join(s);
    for k in ["key", "hostkey"] {
        assert!(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(p(k))
            .status()
            .unwrap()
            .success());
    }
    // The baseline disk: a raw copy with the light init and keys written in.
    let raw = p("baseline.ext4");
    assert!(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img.rootfs)
        .arg(&raw)
        .status()
        .unwrap()
        .success());
    std::fs::write(p("lightinit"), BASELINE_INIT).unwrap();
    let cmds = format!(
        "cd /usr/sbin\nwrite {li} lightinit\nsif lightinit mode 0100755\nmkdir /root/.ssh\ncd /root/.ssh\nwrite {kp} authorized_keys\nsif authorized_keys mode 0100600\ncd /etc/ssh\nwrite {hk} ssh_host_ed25519_key\nsif ssh_host_ed25519_key mode 0100600\nwrite {hkp} ssh_host_ed25519_key.pub\n",
        li = p("lightinit").display(),
        kp = p("key.pub").display(),
        hk = p("hostkey").display(),
        hkp = p("hostkey.pub").display()
    );
    std::fs::write(p("cmds"), cmds).unwrap();
    assert!(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(p("cmds"))
        .arg(&raw)
        .output()
        .unwrap()
        .status
        .success());

    let (mut banger, mut marker, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let (g, ready) = boot_direct(
            &img,
            BootOpts {
                client_key: Some(p("key")),
                ..BootOpts::default()
            },
        );
        banger.push(g.wait_ssh(t0, Duration::from_secs(120)).as_secs_f64());
        marker.push(ready.as_secs_f64());
        drop(g);
        let t0 = Instant::now();
        let opts = BootOpts {
            init: "/usr/sbin/lightinit".into(),
            raw_root: Some(raw.clone()),
            config_disk: false,
            wait_marker: false,
            client_key: Some(p("key")),
        };
        let (g, _) = boot_direct(&img, opts);
        baseline.push(g.wait_ssh(t0, Duration::from_secs(120)).as_secs_f64());
        drop(g);
    }
    let ratio = median(&banger) / median(&baseline);
    let out = json!({
        "bench": "boot_default_image_vs_light_init",
        "quick": quick(),
        "runs": n,
        "unit": "seconds from QEMU start to first successful `ssh true`",
        "banger_default_image": { "ssh_ready": banger.iter().map(|x| round3(*x)).collect::<Vec<_>>(), "median": round3(median(&banger)),
                                   "ready_marker": marker.iter().map(|x| round3(*x)).collect::<Vec<_>>() },
        "baseline_light_init": { "ssh_ready": baseline.iter().map(|x| round3(*x)).collect::<Vec<_>>(), "median": round3(median(&baseline)) },
        "ratio": round3(ratio),
        "target_ratio_max": 1.2,
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
