//! SIGKILL of the daemon at every step of create, start, stop, rm,
//! snapshot, fork and restore, and a cancel while a VMM launch runs; after
//! each, the restarted daemon is audited for leaks (tests/src/audit.rs)
//! and must have none. The daemon waits at each named point (testhold.rs)
//! until the test kills it there. Needs root; uses the fake Firecracker in
//! a network namespace of its own.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use banger_api::{Operation, Vm, VmState};
use banger_tests::audit::assert_no_leaks;
use banger_tests::fakefc::{daemon, require_kvm};
use banger_tests::{poll, stderr, test_image, vmm_pids, TestDaemon, TestNetns};

/// Every point the daemon holds at in this suite.
const POINTS: &[&str] = &[
    "op:vm.create:disks",
    "op:vm.create:config",
    "op:vm.create:network",
    "network.tap",
    "vmm.launch",
    "op:vm.create:spawn",
    "op:vm.create:boot",
    "op:vm.start:network",
    "op:vm.start:spawn",
    "op:vm.start:boot",
    "vm.stop:stopping",
    "vm.stop:killed",
    "vm.rm:row",
    "vm.rm:tap",
    "vm.set:grow",
    "op:vm.snapshot:save",
    "op:vm.snapshot:copy",
    "op:vm.snapshot:resume",
    "op:vm.fork:save",
    "op:vm.fork:copy",
    "op:vm.fork:resume",
    "op:vm.fork:disks",
    "op:vm.fork:config",
    "op:vm.fork:network",
    "op:vm.fork:spawn",
    "op:vm.fork:boot",
];

fn marker(point: &str) -> String {
    point.replace([':', '/'], "_")
}

struct Crashes {
    d: TestDaemon,
    holds: PathBuf,
    _dir: tempfile::TempDir,
    ns: TestNetns,
}

impl Crashes {
    fn new() -> Crashes {
        require_kvm();
        let img = test_image();
        let ns = TestNetns::new();
        let dir = tempfile::tempdir().unwrap();
        let holds = dir.path().join("holds");
        std::fs::create_dir_all(&holds).unwrap();
        let mut d = daemon(&ns, &dir.path().join("requests.jsonl"), &[]);
        d.import_test_image(&img, "default");
        // From now on the daemon holds at every point of the suite.
        d.env.push(("BANGER_TEST_HOLD".into(), POINTS.join(",")));
        d.env
            .push(("BANGER_TEST_HOLD_DIR".into(), holds.display().to_string()));
        d.kill9();
        d.spawn();
        Crashes {
            d,
            holds,
            _dir: dir,
            ns,
        }
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.d
            .banger_cmd()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `banger ARGS` to its end, letting it pass every hold.
    fn run(&self, args: &[&str]) {
        let mut child = self.spawn(args);
        let status = loop {
            self.release_all();
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "banger {args:?}: {err}");
    }

    fn release_all(&self) {
        for e in std::fs::read_dir(&self.holds).unwrap().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }

    /// Runs `banger ARGS`, passing earlier holds, until the daemon holds at
    /// `point`; SIGKILLs it there, restarts it and audits for leaks.
    fn crash_at(&mut self, args: &[&str], point: &str) {
        let mut child = self.spawn(args);
        let want = self.holds.join(marker(point));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if want.exists() {
                break;
            }
            for e in std::fs::read_dir(&self.holds).unwrap().flatten() {
                if e.path() != want {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("banger {args:?} ended ({st}) before holding at {point}");
            }
            assert!(Instant::now() < deadline, "{point} was never reached");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.d.kill9();
        let _ = child.kill();
        let _ = child.wait();
        self.release_all();
        self.d.spawn();
        assert_no_leaks(&self.d, &self.ns, &format!("SIGKILL at {point}"));
    }

    fn vm(&self, name: &str) -> Option<Vm> {
        let out = self.d.banger(&["--json", "vm", "show", name]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Makes sure `name` exists and runs (or is stopped).
    fn ensure(&self, name: &str, running: bool) {
        match self.vm(name) {
            None => self.run(&["vm", "create", name, "--backend", "firecracker"]),
            Some(v) if v.state == VmState::Running => {}
            Some(_) => self.run(&["vm", "start", name]),
        }
        if !running {
            self.run(&["vm", "stop", name, "--force"]);
        }
    }
}

#[test]
fn sigkill_at_every_step_of_every_vm_operation_leaves_nothing_behind() {
    let mut c = Crashes::new();
    for point in POINTS.iter().filter(|p| p.starts_with("op:vm.create:")) {
        c.crash_at(&["vm", "create", "c1", "--backend", "firecracker"], point);
        assert!(c.vm("c1").is_none(), "the killed create of c1 was undone");
    }
    c.crash_at(
        &["vm", "create", "c1", "--backend", "firecracker"],
        "vmm.launch",
    );
    for point in POINTS.iter().filter(|p| p.starts_with("op:vm.start:")) {
        c.ensure("s1", false);
        c.crash_at(&["vm", "start", "s1"], point);
    }
    for point in ["vm.stop:stopping", "vm.stop:killed"] {
        c.ensure("s1", true);
        c.crash_at(&["vm", "stop", "s1"], point);
    }
    for point in ["vm.rm:row", "vm.rm:tap"] {
        c.ensure("r1", false);
        c.crash_at(&["vm", "rm", "r1"], point);
        assert!(c.vm("r1").is_none(), "rm killed after the row went");
    }
    c.ensure("src", true);
    for point in POINTS.iter().filter(|p| p.starts_with("op:vm.snapshot:")) {
        c.crash_at(&["vm", "snapshot", "src", "snap1"], point);
        // The source VM runs again (resumed, or adopted) after each.
        c.ensure("src", true);
        let _ = c.d.banger(&["snapshot", "rm", "snap1"]);
    }
    for point in POINTS.iter().filter(|p| p.starts_with("op:vm.fork:")) {
        c.crash_at(&["vm", "fork", "src", "f1"], point);
        c.ensure("src", true);
        let _ = c.d.banger(&["vm", "rm", "--force", "f1"]);
    }
    // Restore from a snapshot is a create with the restore steps.
    c.run(&["vm", "snapshot", "src", "keep"]);
    for step in ["disks", "config", "network", "spawn", "boot"] {
        let point = format!("op:vm.create:{step}");
        c.crash_at(&["vm", "create", "r2", "--from-snapshot", "keep"], &point);
        assert!(c.vm("r2").is_none(), "the killed restore was undone");
    }
}

/// A create cancelled while its blocking work runs (held making the TAP,
/// or in the VMM launch): the cancelled step waits for that work to end,
/// so the rollback finds and removes what it made (before, the TAP was
/// made after the rollback deleted it, and kept).
#[test]
fn a_create_cancelled_during_blocking_work_leaves_nothing() {
    let c = Crashes::new();
    for (i, point) in ["network.tap", "vmm.launch"].iter().enumerate() {
        let name = format!("k{i}");
        let out =
            c.d.banger_cmd()
                .args(["--json", "vm", "create", &name])
                .args(["--backend", "firecracker", "--wait", "none"])
                .output()
                .unwrap();
        let op: Operation = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("create ({e}): {}", stderr(&out)));
        let want = c.holds.join(marker(point));
        poll(
            &format!("the create to hold at {point}"),
            Duration::from_secs(60),
            || {
                if !want.exists() {
                    c.release_all();
                }
                want.exists().then_some(())
            },
        );
        let vm: Vm = c.d.banger_json(&["vm", "show", &name]);
        let cancel = c.d.banger(&["ops", "cancel", &op.id]);
        assert!(cancel.status.success(), "cancel: {}", stderr(&cancel));
        c.release_all();
        let done = banger_tests::wait_op(&c.d, &op.id);
        assert_eq!(done.state, banger_api::OpState::Cancelled);
        poll(
            "no VMM of the cancelled VM",
            Duration::from_secs(10),
            || vmm_pids(&vm.id).is_empty().then_some(()),
        );
        assert!(c.vm(&name).is_none(), "the cancelled create was undone");
        assert_no_leaks(&c.d, &c.ns, &format!("a cancel at {point}"));
    }
}

/// Two `vm set --work-disk-size` held inside their disk work (where
/// e2fsck and resize2fs run) do not stall the API: that work runs on the
/// blocking pool, not on the daemon's async threads (as many as cores,
/// two here, which two held resizes used to fill).
#[test]
fn disk_work_of_vm_set_never_stalls_other_api_calls() {
    let c = Crashes::new();
    for name in ["g1", "g2"] {
        c.ensure(name, false);
    }
    let sets: Vec<Child> = ["g1", "g2"]
        .iter()
        .map(|n| c.spawn(&["vm", "set", n, "--work-disk-size", "9G"]))
        .collect();
    poll("both resizes to hold", Duration::from_secs(30), || {
        let held = c.d.stderr().matches("point=\"vm.set:grow\"").count();
        (held == 2).then_some(())
    });
    // The holds stay until released: `vm ls` must answer meanwhile.
    let mut ls = c.spawn(&["vm", "ls"]);
    let st = poll(
        "vm ls while two resizes hold",
        Duration::from_secs(20),
        || ls.try_wait().unwrap(),
    );
    assert!(st.success(), "vm ls failed");
    c.release_all();
    for mut s in sets {
        let st = s.wait().unwrap();
        assert!(st.success(), "vm set failed");
    }
    let g1: Vm = c.d.banger_json(&["vm", "show", "g1"]);
    assert_eq!(g1.work_disk_bytes, 9 << 30);
}
