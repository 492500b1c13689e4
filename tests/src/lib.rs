//! Test harness: runs a real `bangerd` on a private state dir, runtime dir
//! and socket, and drives it with the real `banger` binary.
//!
//! The binaries are taken from the cargo target dir next to the test
//! executable, so build them first (`cargo build --workspace`; the test
//! script does). These tests need root (the daemon does) and say so.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`bangerd`, `banger`, ...).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
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
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub child: Option<Child>,
}

impl TestDaemon {
    /// Starts a daemon with debug endpoints on.
    pub fn start() -> TestDaemon {
        TestDaemon::start_with("")
    }

    /// Starts a daemon; `extra` is appended to its config file.
    pub fn start_with(extra: &str) -> TestDaemon {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .expect("tempdir");
        // Let unprivileged test users reach the socket's directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let state_dir = dir.path().join("state");
        let socket = dir.path().join("run/bangerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nshutdown_grace_secs = 5\n[debug]\ntest_endpoints = true\n{extra}",
                state_dir.display(),
                dir.path().join("run").display()
            ),
        )
        .expect("write config");
        let mut d = TestDaemon {
            dir,
            config,
            socket,
            state_dir,
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts (or restarts) the daemon process on the same dirs.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("bangerd.stderr")).expect("log file");
        let child = Command::new(bin("bangerd"))
            .arg("--config")
            .arg(&self.config)
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
        std::fs::read_to_string(self.dir.path().join("bangerd.stderr")).unwrap_or_default()
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

/// Runs a future to completion on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
