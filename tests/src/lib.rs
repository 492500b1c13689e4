//! Test harness: runs a real `bangerd` on a private state dir, runtime dir
//! and socket, and drives it with the real `banger` binary.
//!
//! The binaries are taken from the cargo target dir next to the test
//! executable, so build them first (`cargo build --workspace`; the test
//! script does). These tests need root (the daemon does) and say so.

#![allow(clippy::unwrap_used)]

pub mod architecture;
pub mod audit;
pub mod fakefc;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use banger_core::guest::configdisk::{self, ConfigDisk};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`bangerd`, `banger`, ...).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests live in target/debug/deps/, benchmarks in target/debug/.
    let here = exe.parent().expect("exe dir");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target dir")
    } else {
        here
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// Fails the test (never skips it) when not root: CI runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it runs bangerd, which manages devices): run the suite with sudo, as CI does"
    );
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The gid of the group the sockets are given to.
pub fn banger_gid() -> u32 {
    nix::unistd::Group::from_name("banger")
        .ok()
        .flatten()
        .expect("group `banger` is missing: the test script creates it (groupadd --system banger)")
        .gid
        .as_raw()
}

pub struct TestDaemon {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub child: Option<Child>,
    /// Extra environment of the daemon process.
    pub env: Vec<(String, String)>,
}

impl TestDaemon {
    /// Starts a daemon with debug endpoints on.
    pub fn start() -> TestDaemon {
        TestDaemon::start_with("")
    }

    /// Starts a daemon; `extra` is appended to its config file.
    pub fn start_with(extra: &str) -> TestDaemon {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .expect("tempdir");
        let mut d = TestDaemon::at(tmp.path(), extra);
        d._tmp = Some(tmp);
        d.spawn();
        d
    }

    /// A daemon on a fixed directory that outlives the test (not started).
    pub fn at(dir: &Path, extra: &str) -> TestDaemon {
        require_root();
        std::fs::create_dir_all(dir).expect("mkdir");
        // Let unprivileged test users reach the socket's directory.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let state_dir = dir.join("state");
        let socket = dir.join("run/bangerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nshutdown_grace_secs = 5\n[debug]\ntest_endpoints = true\n{extra}",
                state_dir.display(),
                dir.join("run").display()
            ),
        )
        .expect("write config");
        TestDaemon {
            dir: dir.into(),
            _tmp: None,
            config,
            socket,
            state_dir,
            child: None,
            env: Vec::new(),
        }
    }

    /// Starts (or restarts) the daemon process on the same dirs.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("bangerd.stderr")).expect("log file");
        let child = Command::new(bin("bangerd"))
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bangerd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        poll(
            "bangerd to answer on its socket",
            Duration::from_secs(20),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("bangerd exited early ({status}): {}", self.stderr());
                    }
                }
                let out = Command::new(bin("banger"))
                    .arg("--socket")
                    .arg(&socket)
                    .arg("version")
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            },
        );
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("bangerd.stderr")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A `banger` command aimed at this daemon.
    pub fn banger_cmd(&self) -> Command {
        let mut c = Command::new(bin("banger"));
        c.arg("--socket")
            .arg(&self.socket)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs `banger ARGS` against this daemon.
    pub fn banger(&self, args: &[&str]) -> Output {
        self.banger_cmd().args(args).output().expect("run banger")
    }

    /// Runs `banger --json ARGS`, asserts success and parses stdout.
    pub fn banger_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self
            .banger_cmd()
            .arg("--json")
            .args(args)
            .output()
            .expect("run banger");
        assert!(
            out.status.success(),
            "banger {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "banger {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `banger ARGS` as the unprivileged `uid`, a member of the
    /// socket's group (setpriv).
    pub fn banger_as(&self, uid: u32, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg(format!("--groups={}", banger_gid()))
            .arg(bin("banger"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("HOME", "/tmp")
            .env("NO_COLOR", "1")
            .output()
            .expect("setpriv banger")
    }

    /// An API client for direct calls.
    pub fn client(&self) -> banger::client::Client {
        banger::client::Client::new(&self.socket)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        poll(
            "bangerd to exit after SIGTERM",
            Duration::from_secs(20),
            || c.try_wait().ok().flatten(),
        )
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Follows an operation to its end with `banger ops watch`; returns it.
pub fn wait_op(d: &TestDaemon, id: &str) -> banger_api::Operation {
    // Its exit code follows the op's state, which the caller checks.
    let _ = d.banger(&["ops", "watch", id]);
    d.banger_json(&["ops", "show", id])
}

/// Where tests keep what outlives one run (the built test image).
pub const TEST_CACHE: &str = "/var/cache/banger-test";

/// The test image's artifacts, built once per machine.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub name: String,
    pub digest: String,
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vmlinux: PathBuf,
}

/// Holds the builder lock: one test at a time uses the builder daemon.
pub struct BuilderLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

pub fn builder_lock() -> BuilderLock {
    std::fs::create_dir_all(TEST_CACHE).expect("mkdir test cache");
    let f = std::fs::File::create(Path::new(TEST_CACHE).join("builder.lock")).expect("lock file");
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    BuilderLock { _lock: lock }
}

/// The persistent daemon that builds test images (outside any namespace:
/// building needs the package mirror). Caller holds the builder lock. Its
/// state is per store schema, so checkouts of different versions on one
/// machine never migrate each other's database.
pub fn builder_daemon() -> TestDaemon {
    let dir = format!(
        "builder-s{}",
        banger_core::store::Store::latest_schema_version()
    );
    let mut d = TestDaemon::at(&Path::new(TEST_CACHE).join(dir), "");
    d.spawn();
    d
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

/// Builds (first time on this machine) or finds the test image, named by the
/// hash of `fixtures/test-image.toml`.
pub fn test_image() -> TestImage {
    let _lock = builder_lock();
    let recipe = fixture("test-image.toml");
    // Named by the fixture's hash, the builder version and the guest
    // files: a change to any builds a new test image.
    let name = format!(
        "test-{}-v{}-{}",
        &sha256_hex(&recipe)[..10],
        banger_core::images::recipe::BUILDER_VERSION,
        &banger_core::guest::files::guest_fingerprint()[..8]
    );
    let d = builder_daemon();
    let show = d
        .banger_cmd()
        .args(["--json", "image", "show", &name])
        .output()
        .expect("banger");
    if !show.status.success() {
        let started = Instant::now();
        let out = d
            .banger_cmd()
            .args(["image", "build", &name, "--from-file"])
            .arg(&recipe)
            .output()
            .expect("banger");
        assert!(
            out.status.success(),
            "building the test image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "built test image {name} in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    let image: banger_api::Image = d.banger_json(&["image", "show", &name]);
    let dir = d.state_dir.join("images").join(&image.digest);
    TestImage {
        name,
        digest: image.digest.clone(),
        rootfs: dir.join("rootfs.ext4"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        vmlinux: dir.join("vmlinux"),
    }
}

/// A QEMU guest booted straight from image artifacts (no daemon), with a
/// config disk and a loopback-only SSH forward.
pub struct DirectGuest {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for DirectGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to boot a [`DirectGuest`].
#[derive(Debug, Clone)]
pub struct BootOpts {
    /// The guest's init (default: banger's).
    pub init: String,
    /// Root disk to boot instead of a qcow2 overlay of the image (raw).
    pub raw_root: Option<PathBuf>,
    /// Attach the config and work disks.
    pub config_disk: bool,
    /// Wait for banger's readiness marker (else only for QEMU to start).
    pub wait_marker: bool,
    /// Use this client key (and its .pub) instead of a new one.
    pub client_key: Option<PathBuf>,
}

impl Default for BootOpts {
    fn default() -> Self {
        BootOpts {
            init: "/usr/lib/banger/init".into(),
            raw_root: None,
            config_disk: true,
            wait_marker: true,
            client_key: None,
        }
    }
}

/// Boots the image's artifacts under QEMU TCG with user networking
/// restricted to a loopback SSH forward. Returns the guest and the time to
/// the readiness marker (or to spawn, without `wait_marker`).
pub fn boot_direct(img: &TestImage, opts: BootOpts) -> (DirectGuest, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    if let Some(k) = &opts.client_key {
        std::fs::copy(k, p("key")).unwrap();
        std::fs::copy(k.with_extension("pub"), p("key.pub")).unwrap();
    }
    for (key, comment) in [("key", "client"), ("hostkey", "host")] {
        if p(key).exists() {
            continue;
        }
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(p(key))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let host_pub = std::fs::read_to_string(p("hostkey.pub")).unwrap();
    let disk = ConfigDisk {
        hostname: "imgtest".into(),
        address: Some("10.0.2.15/24".into()),
        gateway: Some("10.0.2.2".into()),
        mac: None,
        dns: vec![],
        authorized_keys: vec![std::fs::read_to_string(p("key.pub"))
            .unwrap()
            .trim()
            .to_string()],
        host_key: Some((
            std::fs::read_to_string(p("hostkey")).unwrap(),
            host_pub.clone(),
        )),
        env: vec![("BANGER_TEST".into(), "yes".into())],
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        work_mount: Some("/work".into()),
        grow_root: false,
        agent_binary: None,
    };
    let mut drives: Vec<String> = Vec::new();
    match &opts.raw_root {
        Some(raw) => drives.push(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            raw.display()
        )),
        None => {
            let st = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&img.rootfs)
                .arg(p("root.qcow2"))
                .status();
            assert!(st.unwrap().success());
            drives.push(format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                p("root.qcow2").display()
            ));
        }
    }
    if opts.config_disk {
        configdisk::write(&disk, &p("cfg.ext4"), &p("cfg.d")).unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "banger-work"])
            .arg(p("work.ext4"))
            .arg("64M")
            .output();
        assert!(st.unwrap().status.success());
        drives.push(format!(
            "file={},if=virtio,format=raw,readonly=on",
            p("cfg.ext4").display()
        ));
        drives.push(format!(
            "file={},if=virtio,format=raw",
            p("work.ext4").display()
        ));
    }
    let port = free_port();
    let started = Instant::now();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-M",
        "q35",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", p("console.log").display()))
    .arg("-kernel")
    .arg(&img.kernel)
    .arg("-initrd")
    .arg(&img.initrd)
    .arg("-append")
    .arg(format!(
        "{} root=/dev/vda init={}",
        banger_core::guest::KERNEL_CMDLINE,
        opts.init
    ));
    for d in &drives {
        cmd.arg("-drive").arg(d);
    }
    let child = cmd
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
        ))
        .args([
            "-device",
            "virtio-net-pci,netdev=n0",
            "-device",
            "virtio-rng-pci",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/deps.sh installs qemu-system-x86)");
    let mut guest = DirectGuest { child, dir, port };
    if !opts.wait_marker {
        return (guest, started.elapsed());
    }
    let console = guest.dir.path().join("console.log");
    let ready = poll(
        "the guest's readiness marker on the console",
        Duration::from_secs(120),
        || {
            if let Ok(Some(st)) = guest.child.try_wait() {
                panic!(
                    "qemu exited ({st}): {}",
                    std::fs::read_to_string(&console).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&console)
                .ok()
                .filter(|c| c.contains(banger_core::guest::READY_MARKER))
                .map(|_| started.elapsed())
        },
    );
    let kh = guest.dir.path().join("known_hosts");
    let pub_parts: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    std::fs::write(&kh, format!("[127.0.0.1]:{port} {}\n", pub_parts.join(" "))).unwrap();
    (guest, ready)
}

impl DirectGuest {
    /// Polls `ssh true` every 50 ms until it succeeds; returns when.
    pub fn wait_ssh(&self, since: Instant, timeout: Duration) -> Duration {
        poll("ssh to answer", timeout, || {
            let out = Command::new("ssh")
                .args([
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "ConnectTimeout=2",
                    "-o",
                    "LogLevel=ERROR",
                ])
                .arg("-i")
                .arg(self.dir.path().join("key"))
                .arg("-p")
                .arg(self.port.to_string())
                .args(["root@127.0.0.1", "true"])
                .stdin(Stdio::null())
                .output()
                .ok()?;
            if out.status.success() {
                Some(since.elapsed())
            } else {
                std::thread::sleep(Duration::from_millis(30));
                None
            }
        })
    }

    pub fn ssh(&self, cmd: &str) -> std::process::Output {
        Command::new("ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=20",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ))
            .arg("-i")
            .arg(self.dir.path().join("key"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("root@127.0.0.1")
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// A network namespace made for one test, deleted (with every process
/// still in it) when dropped. Daemons given its name run inside it, so
/// bridges, TAPs and guest addresses never touch the host's namespace.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new() -> TestNetns {
        require_root();
        let name = format!("bgt-{}", &uuid_like()[..8]);
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        TestNetns { name }
    }

    /// The namespace's inode, to check a process is in it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(Path::new("/run/netns").join(&self.name))
            .expect("netns file")
            .ino()
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("ip")
    }

    /// Interface names in the namespace.
    pub fn links(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.ip(&["-br", "link"]).stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|s| s.to_string())
            .collect()
    }
}

impl Default for TestNetns {
    fn default() -> Self {
        TestNetns::new()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn uuid_like() -> String {
    let out = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("uuid");
    out.trim().replace('-', "")
}

impl TestDaemon {
    /// Starts a daemon inside `ns`, and checks that it really is there.
    pub fn start_in(ns: &TestNetns) -> TestDaemon {
        TestDaemon::start_in_with(ns, "", &[])
    }

    /// Like [`TestDaemon::start_in`], with more config and environment.
    pub fn start_in_with(ns: &TestNetns, extra: &str, env: &[(&str, &str)]) -> TestDaemon {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .expect("tempdir");
        let mut d = TestDaemon::at(
            tmp.path(),
            &format!("[network]\nnetns = \"{}\"\n{extra}", ns.name),
        );
        d._tmp = Some(tmp);
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.spawn();
        d.assert_in(ns);
        d
    }

    /// Panics unless the daemon's network namespace is `ns`.
    pub fn assert_in(&self, ns: &TestNetns) {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/proc/{}/ns/net", self.pid()))
            .expect("ns of daemon")
            .ino();
        assert_eq!(
            ino,
            ns.inode(),
            "bangerd is not in the test's network namespace"
        );
    }

    /// Imports the test image under `name`.
    pub fn import_test_image(&self, img: &TestImage, name: &str) {
        let out = self
            .banger_cmd()
            .args(["image", "import", name, "--rootfs"])
            .arg(&img.rootfs)
            .arg("--kernel")
            .arg(&img.kernel)
            .arg("--initrd")
            .arg(&img.initrd)
            .arg("--vmlinux")
            .arg(&img.vmlinux)
            .output()
            .expect("banger");
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Pids of the VMM processes of VM `id` (QEMU or Firecracker, jailed or
/// not: their command lines name `banger-vm-` and the id's first 16 digits).
pub fn vmm_pids(id: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("banger-vm-{}", &id[..id.len().min(16)])])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a future to completion on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// "The internet" for a test: a second namespace joined to `ns` by a veth
/// pair on TEST-NET-1 (192.0.2.0/24), the route out of `ns`, and an HTTP
/// server on 192.0.2.1:80 serving `hello.txt`. No traffic leaves the two
/// namespaces. Dropped: the server dies with its namespace.
pub struct Internet {
    pub ns: TestNetns,
    server: Child,
    _www: tempfile::TempDir,
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The address of the HTTP server in [`Internet`].
pub const INTERNET_ADDR: &str = "192.0.2.1";
/// What `http://192.0.2.1/hello.txt` answers.
pub const INTERNET_HELLO: &str = "hello from the internet\n";

impl Internet {
    pub fn attach(to: &TestNetns) -> Internet {
        let inet = TestNetns::new();
        let (a, b) = ("veth-bgt-in", "veth-bgt-out");
        let ok = |o: Output, what: &str| assert!(o.status.success(), "{what}: {}", stderr(&o));
        ok(
            to.ip(&[
                "link", "add", a, "type", "veth", "peer", "name", b, "netns", &inet.name,
            ]),
            "veth",
        );
        ok(to.ip(&["addr", "add", "192.0.2.2/24", "dev", a]), "addr");
        ok(to.ip(&["link", "set", a, "up"]), "up");
        ok(to.ip(&["link", "set", "lo", "up"]), "lo up");
        ok(
            to.ip(&["route", "add", "default", "via", INTERNET_ADDR]),
            "route",
        );
        ok(
            inet.ip(&["addr", "add", &format!("{INTERNET_ADDR}/24"), "dev", b]),
            "addr",
        );
        ok(inet.ip(&["link", "set", b, "up"]), "up");
        ok(inet.ip(&["link", "set", "lo", "up"]), "lo up");
        let www = tempfile::tempdir().expect("tempdir");
        std::fs::write(www.path().join("hello.txt"), INTERNET_HELLO).expect("write");
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &inet.name,
                "python3",
                "-m",
                "http.server",
                "80",
                "--bind",
                INTERNET_ADDR,
                "--directory",
            ])
            .arg(www.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("http server");
        poll(
            "the internet's HTTP server",
            Duration::from_secs(10),
            || {
                Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &inet.name,
                        "curl",
                        "-sf",
                        "--max-time",
                        "1",
                        &format!("http://{INTERNET_ADDR}/hello.txt"),
                    ])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
            },
        );
        Internet {
            ns: inet,
            server,
            _www: www,
        }
    }
}

/// Runs a command inside namespace `ns`.
pub fn in_netns(ns: &TestNetns, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// Runs git in `dir` (as "Test Host" when it commits); asserts success,
/// returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test Host",
            "-c",
            "user.email=host@example.com",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}
