//! A daemon whose Firecracker is `fake-firecracker` (no Firecracker binary
//! can run a guest here), in a network namespace of its own: fast VMs for
//! the suites that test what surrounds a VM (the CLI, rollbacks, races).

use std::path::Path;

use banger_api::Vm;

use crate::{bin, stderr, test_image, TestDaemon, TestNetns};

/// The Firecracker backend, even against the fake, needs /dev/kvm present.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "the Firecracker backend (even against the fake) needs /dev/kvm present"
    );
}

/// A daemon in `ns` whose `firecracker.binary` is the fake, which logs each
/// request it takes to `log` (JSON lines); `extra_env` goes to the fake.
pub fn daemon(ns: &TestNetns, log: &Path, extra_env: &[(&str, &str)]) -> TestDaemon {
    let fake = bin("fake-firecracker");
    let log = log.to_str().expect("a UTF-8 path");
    let mut env = vec![("FAKE_FC_REQUEST_LOG", log)];
    env.extend_from_slice(extra_env);
    TestDaemon::start_in_with(
        ns,
        &format!("[firecracker]\nbinary = \"{}\"\n", fake.display()),
        &env,
    )
}

/// A daemon on the fake Firecracker in a namespace of its own, with the
/// test image as `default` and one running VM. Fields drop in order: the
/// daemon before its namespace.
pub struct FcVm {
    pub d: TestDaemon,
    pub dir: tempfile::TempDir,
    pub ns: TestNetns,
    pub vm: Vm,
}

/// [`FcVm`] with the VM `name`.
pub fn daemon_with_vm(name: &str) -> FcVm {
    daemon_with_vm_env(name, &[])
}

/// [`daemon_with_vm`], the fake Firecracker given `env`.
pub fn daemon_with_vm_env(name: &str, env: &[(&str, &str)]) -> FcVm {
    require_kvm();
    let img = test_image();
    let ns = TestNetns::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(&ns, &dir.path().join("requests.jsonl"), env);
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", name, "--backend", "firecracker"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let vm: Vm = d.banger_json(&["vm", "show", name]);
    FcVm { d, dir, ns, vm }
}
