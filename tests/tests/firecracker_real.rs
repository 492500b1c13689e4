//! Contract tests against the real Firecracker (`../shared/firecracker/`,
//! v1.17.0-dev built from the official source): what banger sends is what
//! Firecracker takes, and the fake the fast tests use answers as it does.
//!
//! - the wire and the faults: one list of requests, valid and invalid,
//!   sent to the real binary and to `fake-firecracker`; status, fault
//!   message and the bytes of a `204` must agree;
//! - banger's backend (`FirecrackerVmm`) driving the real binary, plain and
//!   under the real jailer: the configure sequence and `InstanceStart`, a
//!   pause, a snapshot, a load into a fresh process with network and vsock
//!   overrides, resume, `SendCtrlAltDel`, kill; a broken request refused
//!   with Firecracker's own words in banger's error;
//! - `banger vm create --backend firecracker` through a real daemon.
//!
//! On these machines `/dev/kvm` is `kvm_pvm`, which runs only PVM-enabled
//! guest kernels: a stock guest starts, then dies about 21 s after
//! `InstanceStart`. The backend tests pause the guest right after it starts
//! (a paused guest runs no instruction), and the daemon test expects the
//! death to be reported. The binary or `/dev/kvm` missing fails the test.
//! Needs root; every TAP is made inside a network namespace of the test.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_api::Accel;
use banger_core::vms::vmm::{FirecrackerVmm, Jailer, LaunchSpec, Vmm, FC_MEMORY, FC_STATE};
use banger_core::ToApiError;
use banger_tests::{bin, poll, require_root, stderr, test_image, TestDaemon, TestNetns};
use serde_json::Value;

/// The directory of the real binaries: `BANGER_FIRECRACKER_DIR`, else
/// `shared/firecracker` beside the project.
fn real_dir() -> PathBuf {
    let dir = std::env::var_os("BANGER_FIRECRACKER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/firecracker"));
    for b in ["firecracker", "jailer"] {
        assert!(
            dir.join(b).is_file(),
            "the real {b} binary is missing at {}: the contract tests need shared/firecracker/ beside \
             the project (or BANGER_FIRECRACKER_DIR naming a directory with firecracker and jailer)",
            dir.display()
        );
    }
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the real Firecracker needs KVM (these tests do not skip)"
    );
    dir
}

fn real_firecracker() -> PathBuf {
    real_dir().join("firecracker")
}

struct Proc {
    child: Child,
    sock: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program --api-sock DIR/NAME.sock` and waits until it listens.
fn start_api(program: &Path, dir: &Path, name: &str) -> Proc {
    let sock = dir.join(format!("{name}.sock"));
    let child = Command::new(program)
        .arg("--api-sock")
        .arg(&sock)
        .args(["--id", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll(&format!("{name} listening"), Duration::from_secs(5), || {
        UnixStream::connect(&sock).ok().map(|_| ())
    });
    Proc { child, sock }
}

/// One raw HTTP/1.1 exchange on `s`: the answer's head and body, framed by
/// its Content-Length (as the real server frames it).
fn exchange(s: &mut UnixStream, request: &[u8]) -> (String, String) {
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            if body.len() >= len {
                return (head.to_string(), body[..len].to_string());
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection after {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn request(method: &str, path: &str, body: Option<&str>, extra: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}");
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body.unwrap_or_default());
    r.into_bytes()
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The fault text of an answer body (`fault_message`, or micro-http's own
/// `error`), as banger's client reads it.
fn fault_of(body: &str) -> String {
    firecracker_api::client::fault_text(body)
}

/// How two answers must agree: exactly, or in status and the first words.
#[derive(Clone, Copy)]
enum Agree {
    Exactly,
    Prefix(&'static str),
}

#[test]
fn the_fake_answers_the_wire_and_the_faults_as_the_real_firecracker_does() {
    require_root();
    let real = real_firecracker();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("fc.log");
    std::fs::write(&log, "").unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"not a kernel yet").unwrap();
    let log_body = format!(r#"{{"log_path": "{}"}}"#, log.display());
    let deser = "An error occurred when deserializing the json body of a request: ";
    let cases: Vec<(&str, &str, Option<String>, Agree)> = vec![
        ("PUT", "/logger", Some(log_body), Agree::Exactly),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 0, "mem_size_mib": 128}"#.into()),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#.into()),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 3, "mem_size_mib": 128}"#.into()),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 128, "bogus": 1}"#.into()),
            Agree::Prefix(deser),
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2"#.into()),
            Agree::Prefix(deser),
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#.into()),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#.into()),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Reboot"}"#.into()),
            Agree::Prefix(deser),
        ),
        ("PUT", "/actions", None, Agree::Exactly),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                r#"{"drive_id": "other", "path_on_host": "/x", "is_root_device": true, "is_read_only": false}"#
                    .into(),
            ),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                r#"{"drive_id": "rootfs", "path_on_host": "/nonexistent/root", "is_root_device": true, "is_read_only": false}"#
                    .into(),
            ),
            Agree::Exactly,
        ),
        ("PUT", "/nope", Some("{}".into()), Agree::Exactly),
        ("GET", "/nope", None, Agree::Exactly),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Paused"}"#.into()),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#.into()),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/boot-source",
            Some(format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display())),
            Agree::Exactly,
        ),
        (
            "PUT",
            "/snapshot/load",
            Some(
                r#"{"snapshot_path": "/tmp/s", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/m"}}"#
                    .into(),
            ),
            Agree::Exactly,
        ),
    ];
    let real = start_api(&real, dir.path(), "real");
    let fake = start_api(&bin("fake-firecracker"), dir.path(), "fake");
    let mut rs = UnixStream::connect(&real.sock).unwrap();
    let mut fs = UnixStream::connect(&fake.sock).unwrap();
    let mut mismatches = Vec::new();
    for (method, path, body, agree) in &cases {
        let req = request(method, path, body.as_deref(), "");
        let (rh, rb) = exchange(&mut rs, &req);
        let (fh, fb) = exchange(&mut fs, &req);
        let (r, f) = (
            (status_of(&rh), fault_of(&rb)),
            (status_of(&fh), fault_of(&fb)),
        );
        let same = match agree {
            Agree::Exactly => r == f,
            Agree::Prefix(p) => r.0 == f.0 && r.1.starts_with(p) && f.1.starts_with(p),
        };
        if !same {
            mismatches.push(format!("{method} {path}: real {r:?}, fake {f:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "the fake disagrees with the real Firecracker:\n{}",
        mismatches.join("\n")
    );

    // The same bytes for a 204, and `Connection: close` ignored by both:
    // the connection stays open for the next request.
    let metrics = dir.path().join("m");
    std::fs::write(&metrics, "").unwrap();
    let put = request(
        "PUT",
        "/metrics",
        Some(&format!(r#"{{"metrics_path": "{}"}}"#, metrics.display())),
        "Connection: close\r\n",
    );
    let answers: Vec<(String, String)> = [&mut rs, &mut fs]
        .into_iter()
        .map(|s| {
            let a = exchange(s, &put);
            let (head, _) = exchange(s, &request("GET", "/version", None, ""));
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            a
        })
        .collect();
    assert_eq!(
        answers[0].0,
        "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive"
    );
    assert_eq!(answers[0], answers[1], "a 204, byte for byte");

    // A method micro-http does not take: its own error shape, from both.
    let post = request("POST", "/actions", Some("{}"), "");
    let (rh, rb) = exchange(&mut rs, &post);
    let (fh, fb) = exchange(&mut fs, &post);
    assert_eq!((status_of(&rh), rb.as_str()), (status_of(&fh), fb.as_str()));
    assert_eq!(
        fault_of(&rb),
        "Invalid HTTP Method: Unsupported HTTP method. All previous unanswered requests will be dropped."
    );

    // banger's client over the kept connection, against the real server.
    let c = firecracker_api::Client::new(&real.sock);
    let info = c.describe().unwrap();
    assert_eq!(
        (info.id.as_str(), info.state.as_str()),
        ("real", "Not started")
    );
    assert_eq!(c.version().unwrap().firecracker_version, "1.17.0-dev");
}

/// Moves this test's thread into `ns` (threads own their namespaces, and
/// the processes they start inherit them; nextest runs each test in a
/// process of its own), so TAPs and Firecracker live in it.
fn enter(ns: &TestNetns) {
    let f = std::fs::File::open(Path::new("/run/netns").join(&ns.name)).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// A TAP in the current namespace, owned by `owner` when given.
fn tap(name: &str, owner: Option<(u32, u32)>) {
    let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap"];
    let (u, g) = owner.map(|(u, g)| (u.to_string(), g.to_string())).unzip();
    if let (Some(u), Some(g)) = (u.as_deref(), g.as_deref()) {
        args.extend(["user", u, "group", g]);
    }
    let out = Command::new("ip").args(&args).output().unwrap();
    assert!(out.status.success(), "ip tuntap: {}", stderr(&out));
    let up = Command::new("ip")
        .args(["link", "set", name, "up"])
        .status();
    assert!(up.unwrap().success());
}

/// A VM's launch spec: the test image's vmlinux and initrd, three sparse
/// 64 MiB disks in the VM's own directory.
fn vm_spec(root: &Path, id: &str, tap: &str, kernel: &Path, initrd: &Path) -> LaunchSpec {
    let dir = root.join(id);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    for d in ["root.raw", "config.ext4", "work.ext4"] {
        let f = std::fs::File::create(dir.join(d)).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    LaunchSpec {
        vm_id: id.into(),
        name: id.into(),
        cpus: 1,
        memory_mib: 256,
        accel: Accel::Kvm,
        kernel: kernel.into(),
        initrd: Some(initrd.into()),
        root_disk: dir.join("root.raw"),
        config_disk: dir.join("config.ext4"),
        work_disk: dir.join("work.ext4"),
        tap: tap.into(),
        mac: "52:54:00:12:34:56".into(),
        console_log: dir.join("console.log"),
        stderr_log: dir.join("vmm.stderr"),
        run_dir: dir.join("run"),
        background: false,
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The whole backend against the real binary: configure and start, pause
/// and snapshot, resume and power off, load the snapshot into a fresh
/// process with another TAP and vsock socket, and a refused request.
fn backend_round_trip(jailed: bool) {
    require_root();
    let real = real_dir();
    let img = test_image();
    let ns = TestNetns::new();
    enter(&ns);
    let tmp = tempfile::Builder::new()
        .prefix("fcreal-")
        .tempdir()
        .unwrap();
    let (uid, gid) = (4242, 4343);
    let jailer = jailed.then(|| Jailer {
        binary: real.join("jailer"),
        chroot_base: tmp.path().join("jail"),
        uid,
        gid,
    });
    let vmm = FirecrackerVmm {
        binary: real.join("firecracker"),
        jailer: jailer.clone(),
    };
    let owner = jailed.then_some((uid, gid));
    let (id1, id2, id3) = if jailed {
        ("a1c0ffee00000001", "a1c0ffee00000002", "a1c0ffee00000003")
    } else {
        ("b2c0ffee00000001", "b2c0ffee00000002", "b2c0ffee00000003")
    };
    // Where the API socket and the vsock socket are on the host.
    let in_jail = |id: &str, file: &str| {
        let j = jailer.as_ref().unwrap();
        j.jail_dir(&vmm.binary, id).join("root").join(file)
    };
    let api = |spec: &LaunchSpec| match jailed {
        true => in_jail(&spec.vm_id, "run/firecracker.socket"),
        false => FirecrackerVmm::api_socket(spec),
    };
    let vsock = |spec: &LaunchSpec| match jailed {
        true => in_jail(&spec.vm_id, "agent.vsock"),
        false => spec.run_dir.join("agent.vsock"),
    };
    tap("fctap1", owner);
    tap("fctap2", owner);
    let spec1 = vm_spec(tmp.path(), id1, "fctap1", &img.vmlinux, &img.initrd);

    // Configure and InstanceStart: every call answered over one kept
    // connection (10 s a call with a client that waits for a close).
    let started = Instant::now();
    let child1 = vmm.launch(&spec1).unwrap_or_else(|e| {
        panic!("launch: {}", e.to_api_error().message);
    });
    let launch_time = started.elapsed();
    let c = firecracker_api::Client::new(api(&spec1));
    let state = |c: &firecracker_api::Client| c.describe().unwrap().state;
    assert_eq!(state(&c), "Running");
    // Pause at once: a paused guest runs no instruction, so it does not
    // die on this host while the test goes on.
    let snap = tmp.path().join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    vmm.save_state(&spec1, &snap).unwrap();
    let pause_time = started.elapsed();
    assert_eq!(state(&c), "Paused");
    eprintln!(
        "real firecracker (jailed: {jailed}): configure + InstanceStart {:.3} s, then paused and \
         snapshotted at {:.3} s",
        launch_time.as_secs_f64(),
        pause_time.as_secs_f64()
    );
    let mem = std::fs::metadata(snap.join(FC_MEMORY)).unwrap().len();
    assert_eq!(mem, 256 << 20, "the memory file is the guest's memory");
    assert!(std::fs::metadata(snap.join(FC_STATE)).unwrap().len() > 0);
    if jailed {
        assert!(!in_jail(id1, FC_STATE).exists(), "moved out of the jail");
    }
    vmm.resume(&spec1).unwrap();
    assert_eq!(state(&c), "Running");
    vmm.request_poweroff(&spec1)
        .expect("SendCtrlAltDel is accepted by the running VM");
    drop(c);
    kill(child1);
    vmm.cleanup(id1);

    // Load into a fresh process: this VM's own disks (relative paths from
    // its directory, or in its jail), TAP and vsock socket.
    let spec2 = vm_spec(tmp.path(), id2, "fctap2", &img.vmlinux, &img.initrd);
    let child2 = vmm
        .restore(&spec2, &snap)
        .unwrap_or_else(|e| panic!("restore: {}", e.to_api_error().message));
    let c = firecracker_api::Client::new(api(&spec2));
    assert_eq!(state(&c), "Running", "loaded and resumed");
    assert!(vsock(&spec2).exists(), "the vsock override's socket");
    let (status, cfg) = c.request("GET", "/vm/config", None).unwrap();
    assert_eq!(status, 200);
    let cfg: Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["network-interfaces"][0]["host_dev_name"], "fctap2",
        "the network override: {cfg}"
    );
    let uds = if jailed {
        "/agent.vsock".to_string()
    } else {
        vsock(&spec2).display().to_string()
    };
    assert_eq!(cfg["vsock"]["uds_path"], uds.as_str(), "the vsock override");
    let root = if jailed { "/root.raw" } else { "root.raw" };
    let drives = cfg["drives"].as_array().unwrap();
    assert!(
        drives.iter().any(|d| d["path_on_host"] == root),
        "the snapshot's drives open this VM's own disks: {cfg}"
    );
    c.patch_vm(firecracker_api::model::VmState::Paused).unwrap();
    drop(c);
    kill(child2);
    vmm.cleanup(id2);

    // A request the real binary refuses: its words reach banger's error,
    // and nothing of the process (or its jail) is left.
    let mut spec3 = vm_spec(tmp.path(), id3, "fctap1", &img.vmlinux, &img.initrd);
    spec3.cpus = 0;
    let e = vmm.launch(&spec3).expect_err("0 vCPUs is refused");
    let msg = e.to_api_error().message;
    assert!(
        msg.contains(
            "Firecracker refused PUT /machine-config (400): Machine config error: The number of \
             vCPUs must be greater than 0"
        ),
        "{msg}"
    );
    assert!(e.to_api_error().hint.is_some(), "a hint names what to do");
    if jailed {
        let j = jailer.as_ref().unwrap();
        assert!(
            !j.jail_dir(&vmm.binary, id3).exists(),
            "the jail is removed"
        );
    }
    let pids = Command::new("pgrep")
        .args(["-f", &format!("banger-vm-{id3}")])
        .output()
        .unwrap();
    assert!(pids.stdout.is_empty(), "the refused VMM was killed");
}

#[test]
fn guest_real_firecracker_backend_starts_snapshots_and_restores() {
    backend_round_trip(false);
}

#[test]
fn guest_real_firecracker_backend_under_the_real_jailer() {
    backend_round_trip(true);
}

/// `banger vm create --backend firecracker` through a real daemon and the
/// real binary: every configure call and `InstanceStart` go through, and on
/// a PVM host, where the stock guest kernel dies about 21 s later, the
/// create fails with the VMM's exit, the console's and Firecracker's last
/// lines, and leaves nothing behind. Elsewhere the guest boots.
#[test]
fn guest_real_firecracker_vm_create_through_the_daemon() {
    let real = real_firecracker();
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in_with(
        &ns,
        &format!("[firecracker]\nbinary = \"{}\"\n", real.display()),
        &[],
    );
    d.import_test_image(&img, "default");
    let doctor = d.banger(&["doctor"]);
    let report = banger_tests::stdout(&doctor);
    assert!(
        report.contains("1.17.0-dev"),
        "doctor names Firecracker's version: {report}"
    );
    let started = Instant::now();
    let out = d.banger(&["vm", "create", "fc1", "--backend", "firecracker"]);
    let took = started.elapsed();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let ops: banger_api::OpList = d.banger_json(&["ops", "ls", "--all"]);
    let create = ops.ops.iter().find(|o| o.kind == "vm.create").unwrap();
    let step = |name: &str| create.steps.iter().find(|s| s.name == name).unwrap();
    eprintln!(
        "vm create --backend firecracker: {:.1} s in all; steps: {}",
        took.as_secs_f64(),
        create
            .steps
            .iter()
            .map(|s| {
                let secs = match (s.started_at, s.finished_at) {
                    (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
                    _ => 0.0,
                };
                format!("{} {:?} {secs:.3} s", s.name, s.status)
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        step("spawn").status,
        banger_api::StepStatus::Done,
        "configure and InstanceStart went through: {}",
        stderr(&out)
    );
    if !pvm {
        assert!(out.status.success(), "create: {}", stderr(&out));
        assert!(d.banger(&["vm", "rm", "--force", "fc1"]).status.success());
        return;
    }
    assert_eq!(out.status.code(), Some(1), "the guest's death is a failure");
    let err = stderr(&out);
    eprintln!("what the user sees: {err}");
    assert!(
        err.contains("The VMM exited while the guest was booting"),
        "the death is reported as such: {err}"
    );
    assert!(
        err.contains("firecracker.log:") && err.contains("KVM_EXIT_INTERNAL_ERROR"),
        "with Firecracker's own words on why: {err}"
    );
    assert!(err.contains("banger doctor"), "and a hint: {err}");
    assert!(!err.contains("Resource temporarily unavailable"), "{err}");
    // Rolled back: no VM, no VMM process, no TAP.
    let vms: banger_api::VmList = d.banger_json(&["vm", "ls"]);
    assert!(vms.vms.is_empty(), "the failed create left {:?}", vms.vms);
    assert!(
        !ns.links().iter().any(|l| l.starts_with("bg-")),
        "no VM TAP is left: {:?}",
        ns.links()
    );
    // This daemon's VMMs name its runtime dir (other tests' VMMs, and any
    // installed daemon's, may run meanwhile).
    let mine = format!("{}/run/vms/", d.dir.display());
    let fc = Command::new("pgrep").args(["-f", &mine]).output().unwrap();
    assert!(
        fc.stdout.is_empty(),
        "no VMM is left: {}",
        banger_tests::stdout(&fc)
    );
}
