//! Guest networking on real guests (QEMU TCG): NAT to "the internet" (a
//! second namespace the test makes), isolation between VMs and from the
//! host, egress allow-lists, reconciliation of stale rules and TAPs, and
//! uninstalling. Everything happens in namespaces the test creates. Needs root.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use banger_api::Vm;
use banger_tests::{
    bin, in_netns, poll, stderr, stdout, test_image, Internet, TestDaemon, TestNetns,
    INTERNET_ADDR, INTERNET_HELLO,
};

fn ssh(d: &TestDaemon, vm: &str, cmd: &str) -> std::process::Output {
    d.banger(&["vm", "ssh", vm, "--", cmd])
}

/// Whether `vm` can open a TCP connection to ADDR:PORT (3 s).
fn reaches(d: &TestDaemon, vm: &str, addr: &str, port: u16) -> bool {
    ssh(
        d,
        vm,
        &format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null && echo open"),
    )
    .stdout
    .starts_with(b"open")
}

fn fetch(d: &TestDaemon, vm: &str) -> String {
    stdout(&ssh(
        d,
        vm,
        &format!("curl -s --max-time 4 http://{INTERNET_ADDR}/hello.txt || true"),
    ))
}

fn nft_list(ns: &TestNetns) -> String {
    stdout(&in_netns(ns, &["nft", "list", "ruleset"]))
}

#[test]
fn guest_network_nat_isolation_egress_reconcile_and_uninstall() {
    let img = test_image();
    let ns = TestNetns::new();
    let _inet = Internet::attach(&ns);
    // Somebody else's table: banger must never touch it.
    let o = in_netns(&ns, &["nft", "add", "table", "inet", "someone_else"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&in_netns(&ns, &["sysctl", "-n", "net.ipv4.ip_forward"])).trim(),
        "0"
    );

    let mut d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    for name in ["a", "b"] {
        let out = d.banger(&["vm", "create", name]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let a: Vm = d.banger_json(&["vm", "show", "a"]);
    let b: Vm = d.banger_json(&["vm", "show", "b"]);
    assert_eq!(
        stdout(&in_netns(&ns, &["sysctl", "-n", "net.ipv4.ip_forward"])).trim(),
        "1"
    );

    // The TAP pool: b (created after a) took a ready TAP; the pool is
    // refilled to 4 in the background.
    let pool_taps = |ns: &TestNetns| -> Vec<String> {
        ns.links()
            .into_iter()
            .filter(|l| l.starts_with("bgp-"))
            .collect()
    };
    let before = poll("the TAP pool to refill", Duration::from_secs(20), || {
        let p = pool_taps(&ns);
        (p.len() == 5).then_some(p)
    });

    // DNS on the bridge address: NAME.vm and reverse names, over UDP and
    // TCP, from the host side and from a guest.
    let dig = |args: &[&str]| {
        let mut a = vec!["dig", "+short", "+time=2", "+tries=1", "@172.30.0.1"];
        a.extend_from_slice(args);
        stdout(&in_netns(&ns, &a)).trim().to_string()
    };
    poll("the .vm DNS server", Duration::from_secs(10), || {
        (dig(&["a.vm"]) == a.ip).then_some(())
    });
    assert_eq!(dig(&["+tcp", "B.VM"]), b.ip);
    assert_eq!(dig(&["-x", &a.ip]), "a.vm.");
    let nx = stdout(&in_netns(
        &ns,
        &["dig", "+time=2", "+tries=1", "@172.30.0.1", "nope.vm"],
    ));
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert_eq!(
        stdout(&ssh(&d, "a", "getent hosts b.vm"))
            .split_whitespace()
            .next(),
        Some(b.ip.as_str())
    );
    let doctor: banger_api::DoctorReport = d.banger_json(&["doctor"]);
    let check = doctor.checks.iter().find(|c| c.id == "dns").unwrap();
    assert!(
        check.detail.starts_with("serving .vm on 172.30.0.1:53"),
        "{}",
        check.detail
    );

    // NAT: guests reach the internet; VMs reach each other.
    assert_eq!(fetch(&d, "a"), INTERNET_HELLO);
    assert!(reaches(&d, "a", &b.ip, 22));
    assert!(reaches(&d, "b", &a.ip, 22));
    // A service of the host (the daemon's namespace) on the gateway address.
    let gw = "172.30.0.1";
    let mut host_service = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            gw,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.dir.join("host-service.log")).unwrap())
        .spawn()
        .unwrap();
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        in_netns(
            &ns,
            &[
                "curl",
                "-sf",
                "--max-time",
                "1",
                &format!("http://{gw}:8080/"),
            ],
        )
        .status
        .success()
    });
    assert!(
        up,
        "the host service did not answer: {} / {}",
        std::fs::read_to_string(d.dir.join("host-service.log")).unwrap_or_default(),
        stderr(&in_netns(
            &ns,
            &[
                "curl",
                "-sv",
                "--max-time",
                "1",
                &format!("http://{gw}:8080/")
            ]
        ))
    );
    assert!(reaches(&d, "a", gw, 8080));

    // Isolation of a: no traffic to or from b, no host services; the
    // internet and the daemon's own SSH still work.
    let out = d.banger(&["vm", "set", "a", "--isolate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!reaches(&d, "a", &b.ip, 22), "isolated a reached b");
    assert!(!reaches(&d, "b", &a.ip, 22), "b reached isolated a");
    assert!(
        !reaches(&d, "a", gw, 8080),
        "isolated a reached a host service"
    );
    assert!(reaches(&d, "b", gw, 8080));
    assert_eq!(fetch(&d, "a"), INTERNET_HELLO);
    // A spoofed source address does not get around it.
    let spoof = ssh(&d, "a", &format!("ip addr add {}/32 dev eth0 2>/dev/null; timeout 3 curl -s --interface {} http://{gw}:8080/ && echo leaked; ip addr del {}/32 dev eth0", "172.30.0.200", "172.30.0.200", "172.30.0.200"));
    assert!(!stdout(&spoof).contains("leaked"), "{}", stdout(&spoof));

    // Egress allow-lists on b.
    let out = d.banger(&["vm", "set", "b", "--egress-allow", "198.51.100.0/24"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fetch(&d, "b"), "", "b reached a network not on its list");
    assert!(d
        .banger(&[
            "vm",
            "set",
            "b",
            "--egress-allow",
            &format!("{INTERNET_ADDR},10.0.0.0/8")
        ])
        .status
        .success());
    assert_eq!(fetch(&d, "b"), INTERNET_HELLO);
    assert!(d
        .banger(&["vm", "set", "b", "--no-egress"])
        .status
        .success());
    assert_eq!(fetch(&d, "b"), "");
    assert!(d
        .banger(&["vm", "set", "b", "--egress-all"])
        .status
        .success());
    assert_eq!(fetch(&d, "b"), INTERNET_HELLO);
    let bad = d.banger(&["vm", "set", "b", "--egress-allow", "10.1.2.3/8"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("10.0.0.0/8"), "{}", stderr(&bad));

    // vm ports: a server started in the guest shows up, with its URL.
    let out = d.banger(&[
        "session",
        "start",
        "b",
        "--name",
        "web",
        "--cwd",
        "/etc",
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let port: banger_api::VmPort = poll(
        "the guest's server in vm ports",
        Duration::from_secs(20),
        || {
            let l: banger_api::VmPortList = d.banger_json(&["vm", "ports", "b"]);
            l.ports
                .into_iter()
                .find(|p| p.port == 8000 && p.proto == "tcp" && p.process.is_some())
        },
    );
    assert_eq!(port.process.as_deref(), Some("python3"));
    // The daemon's VMs live in the test's namespace: the host reaches them
    // only through forwards, so no link is offered yet; sshd never gets one.
    assert_eq!(port.url, None, "no link the host cannot open");
    let table = stdout(&d.banger(&["vm", "ports", "b"]));
    assert!(
        table.contains("sshd") && !table.contains("http://"),
        "{table}"
    );

    // vm forward: the host's loopback (the test runs in the host's
    // namespace) to the guest's server, kept over a daemon restart.
    let f: banger_api::Forward = d.banger_json(&["vm", "forward", "b", "0:8000"]);
    assert_eq!(f.host_addr, "127.0.0.1");
    let url = format!("http://127.0.0.1:{}/hostname", f.host_port);
    let get = |url: &str| {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "5", url])
            .output()
            .unwrap();
        stdout(&o)
    };
    assert_eq!(get(&url), "b\n");
    // Now `vm ports` links the server through its forward.
    let l: banger_api::VmPortList = d.banger_json(&["vm", "ports", "b"]);
    let link = |p: u16| {
        l.ports
            .iter()
            .find(|x| x.port == p)
            .and_then(|x| x.url.clone())
    };
    let forwarded = format!("http://127.0.0.1:{}/", f.host_port);
    assert_eq!(link(8000), Some(forwarded));
    assert_eq!(link(22), None, "sshd is not an http link");
    let bad = d.banger(&["vm", "forward", "b", &format!("{}:8000", f.host_port)]);
    assert_eq!(bad.status.code(), Some(1), "a taken port is refused");
    assert!(stderr(&bad).contains("Cannot listen"), "{}", stderr(&bad));
    // Beyond loopback, a forward would publish the port unauthenticated.
    for spec in ["0.0.0.0:0:8000", "192.0.2.1:0:8000"] {
        let public = d.banger(&["vm", "forward", "b", spec]);
        assert_eq!(public.status.code(), Some(1), "{spec} is refused");
        let e = stderr(&public);
        assert!(
            e.contains("publish the VM's port") && e.contains("public_forwards"),
            "{e}"
        );
    }

    // Restart with stale state: a chain and a TAP of a VM that does not
    // exist are removed; the live VMs' rules are back.
    d.kill9();
    let o = in_netns(
        &ns,
        &["nft", "add", "chain", "ip", "banger", "egress-deadbeef0000"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ns
        .ip(&["tuntap", "add", "dev", "bg-deadbeef0000", "mode", "tap"])
        .status
        .success());
    d.spawn();
    d.assert_in(&ns);
    let rules = nft_list(&ns);
    assert!(!rules.contains("deadbeef"), "{rules}");
    assert!(!ns.links().iter().any(|l| l.contains("deadbeef")));
    assert!(
        rules.contains(&format!("\"{}\"", format_args!("bg-{}", &a.id[..12]))),
        "{rules}"
    );
    assert!(
        !reaches(&d, "a", &b.ip, 22),
        "isolation lost over a restart"
    );
    // The pool's idle TAPs of the old daemon are replaced; b keeps its own.
    let after = poll(
        "the TAP pool after a restart",
        Duration::from_secs(20),
        || {
            let p = pool_taps(&ns);
            (p.len() == 5 && p != before).then_some(p)
        },
    );
    assert_eq!(
        after.iter().filter(|t| before.contains(t)).count(),
        1,
        "{before:?} -> {after:?}"
    );
    assert!(
        reaches(&d, "b", gw, 8080),
        "b lost its network over a restart"
    );
    assert!(rules.contains("table inet someone_else"));
    assert_eq!(get(&url), "b\n", "the forward did not survive the restart");
    let out = d.banger(&["vm", "forward", "b", &f.host_port.to_string(), "--rm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(&url), "", "the forward is still there after --rm");

    // rm takes the VM's rules with it.
    assert!(d.banger(&["vm", "rm", "--force", "b"]).status.success());
    assert!(!nft_list(&ns).contains(&b.ip));
    assert_eq!(dig(&["b.vm"]), "", "DNS still answers for a removed VM");
    assert_eq!(dig(&["a.vm"]), a.ip);

    // Uninstall: the daemon stopped and no VM running.
    assert!(d.banger(&["vm", "stop", "--force", "a"]).status.success());
    d.terminate();
    let out = Command::new(bin("bangerd"))
        .arg("--config")
        .arg(&d.config)
        .arg("--uninstall-network")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rules = nft_list(&ns);
    assert!(!rules.contains("banger"), "{rules}");
    assert!(rules.contains("table inet someone_else"));
    assert!(!ns
        .links()
        .iter()
        .any(|l| l == "banger0" || l.starts_with("bg-")));
    assert_eq!(
        stdout(&in_netns(&ns, &["sysctl", "-n", "net.ipv4.ip_forward"])).trim(),
        "0"
    );
    let _ = host_service.kill();
    let _ = host_service.wait();
}
