//! Guest sessions on a real guest (QEMU TCG), in a network namespace the
//! test makes. Needs root.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use banger_api::{Session, SessionList};
use banger_tests::{poll, stderr, stdout, test_image, TestDaemon, TestNetns};

fn session(d: &TestDaemon, name: &str) -> Session {
    d.banger_json(&["session", "show", name])
}

#[test]
fn guest_sessions_start_log_send_signal_survive_restart_and_are_lost_on_reboot() {
    let img = test_image();
    let ns = TestNetns::new();
    let mut d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    assert!(d.banger(&["vm", "create", "dev"]).status.success());

    // A command that prints, then ends with a code.
    let out = d.banger(&[
        "session",
        "start",
        "dev",
        "--name",
        "count",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2; exit 3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Bounded by hand so a timeout shows the daemon's view (it logs each
    // failed inspection of the session).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let s = session(&d, "count");
        if s.state == "exited" {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "count did not exit within 60 s ({s:?}); the daemon's log:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(
        stdout(&d.banger(&["session", "logs", "count"])),
        "line1\nline2\nline3\n"
    );
    assert_eq!(
        stdout(&d.banger(&["session", "logs", "count", "--stderr"])),
        "oops\n"
    );
    assert_eq!(
        stdout(&d.banger(&["session", "logs", "count", "--tail", "1"])),
        "line3\n"
    );

    // Following: `logs -f` streams (SSE) until the session ends.
    let out = d.banger(&[
        "session",
        "start",
        "dev",
        "--name",
        "ticker",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4; do echo tick$i; sleep 0.3; done",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let followed = d.banger(&["session", "logs", "-f", "ticker"]);
    assert!(followed.status.success(), "{}", stderr(&followed));
    assert_eq!(stdout(&followed), "tick1\ntick2\ntick3\ntick4\n");
    assert!(d.banger(&["session", "rm", "ticker"]).status.success());

    // A cat-like session: input goes in, comes back out.
    let out = d.banger(&[
        "session",
        "start",
        "dev",
        "--name",
        "echoer",
        "--env",
        "X=$(not run)",
        "--",
        "cat",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d
        .banger(&["session", "send", "echoer", "hello 'quoted' $(and) ✓"])
        .status
        .success());
    poll("the echo", Duration::from_secs(20), || {
        (stdout(&d.banger(&["session", "logs", "echoer"])) == "hello 'quoted' $(and) ✓\n")
            .then_some(())
    });
    let list: SessionList = d.banger_json(&["session", "ls", "dev"]);
    assert_eq!(list.sessions.len(), 2);

    // The daemon restarts; the session is still running and reachable.
    d.kill9();
    d.spawn();
    let s = session(&d, "echoer");
    assert_eq!(s.state, "running");
    assert!(d
        .banger(&["session", "send", "echoer", "again"])
        .status
        .success());
    poll("the second echo", Duration::from_secs(20), || {
        stdout(&d.banger(&["session", "logs", "echoer"]))
            .ends_with("again\n")
            .then_some(())
    });

    // Signals reach it; the exit code says which.
    let out = d.banger(&["session", "signal", "echoer", "TERM"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = poll("echoer to exit", Duration::from_secs(20), || {
        let s = session(&d, "echoer");
        (s.state == "exited").then_some(s)
    });
    assert_eq!(s.exit_code, Some(128 + 15));
    let out = d.banger(&["session", "send", "echoer", "late"]);
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));

    // SIGINT reaches the command (Ctrl-C on a dev server): it stops.
    let out = d.banger(&[
        "session",
        "start",
        "dev",
        "--name",
        "web",
        "--",
        "python3",
        "-m",
        "http.server",
        "8124",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll("the server to listen", Duration::from_secs(30), || {
        let l: banger_api::VmPortList = d.banger_json(&["vm", "ports", "dev"]);
        l.ports.iter().any(|p| p.port == 8124).then_some(())
    });
    let out = d.banger(&["session", "signal", "web", "INT"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = poll("the server to stop on INT", Duration::from_secs(20), || {
        let s = session(&d, "web");
        (s.state == "exited").then_some(s)
    });
    assert!(s.exit_code.is_some(), "{s:?}");
    // An attached session shows stderr beside stdout (stdin closed: it
    // follows until the end).
    let out = d.banger(&[
        "session",
        "start",
        "dev",
        "--name",
        "both",
        "--",
        "sh",
        "-c",
        "sleep 1; echo to-out; echo to-err >&2; sleep 1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let att = d.banger(&["session", "attach", "both"]);
    assert!(stdout(&att).contains("to-out"), "{}", stdout(&att));
    assert!(stderr(&att).contains("to-err"), "{}", stderr(&att));
    assert!(d.banger(&["session", "rm", "web"]).status.success());
    assert!(d.banger(&["session", "rm", "both"]).status.success());

    // A reboot of the VM loses a running session.
    assert!(d
        .banger(&["session", "start", "dev", "--name", "sleeper", "--", "sleep", "1000"])
        .status
        .success());
    assert!(d.banger(&["vm", "restart", "dev"]).status.success());
    assert_eq!(session(&d, "sleeper").state, "lost");
    assert!(d.banger(&["session", "rm", "sleeper"]).status.success());
    assert!(d.banger(&["session", "rm", "count"]).status.success());
    let list: SessionList = d.banger_json(&["session", "ls"]);
    assert_eq!(
        list.sessions
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["echoer"]
    );
}

#[test]
fn guest_session_bad_input_is_a_clear_error_and_leaves_nothing() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    assert!(d.banger(&["vm", "create", "dev"]).status.success());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "session",
                "start",
                "dev",
                "--cwd",
                "/no/such/dir",
                "--",
                "true",
            ],
            "does not exist in the guest",
        ),
        (
            vec![
                "session",
                "start",
                "dev",
                "--require",
                "no-such-tool",
                "--",
                "true",
            ],
            "Required command \"no-such-tool\"",
        ),
        (
            vec!["session", "start", "ghost", "--", "true"],
            "No VM named",
        ),
        (
            vec![
                "session", "start", "dev", "--name", "Bad Name", "--", "true",
            ],
            "Invalid session name",
        ),
        (
            vec!["session", "start", "dev", "--env", "NOEQUALS", "--", "true"],
            "is not KEY=VALUE",
        ),
        (vec!["session", "show", "nope"], "No session named"),
        (vec!["session", "logs", "nope"], "No session named"),
        (
            vec!["session", "signal", "nope", "TERM"],
            "No session named",
        ),
    ];
    for (args, needle) in cases {
        let out = d.banger(&args);
        // A malformed flag is a usage error (exit 2), found by the CLI.
        let code = if args.contains(&"NOEQUALS") { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // Nothing registered, nothing left in the guest.
    let list: SessionList = d.banger_json(&["session", "ls"]);
    assert!(list.sessions.is_empty());
    let out = d.banger(&[
        "vm",
        "ssh",
        "dev",
        "--",
        "ls -A /var/lib/banger/sessions 2>/dev/null | wc -l",
    ]);
    assert_eq!(stdout(&out).trim(), "0");
    // A stopped VM: a clear error.
    assert!(d.banger(&["vm", "stop", "dev"]).status.success());
    let out = d.banger(&["session", "start", "dev", "--", "true"]);
    assert!(
        stderr(&out).contains("only in a running VM"),
        "{}",
        stderr(&out)
    );
    // Duplicate names.
    assert!(d.banger(&["vm", "start", "dev"]).status.success());
    assert!(d
        .banger(&["session", "start", "dev", "--name", "one", "--", "sleep", "100"])
        .status
        .success());
    let out = d.banger(&["session", "start", "dev", "--name", "one", "--", "true"]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = d.banger(&["session", "rm", "one"]);
    assert!(stderr(&out).contains("pass --force"), "{}", stderr(&out));
    assert!(d
        .banger(&["session", "rm", "--force", "one"])
        .status
        .success());
}

/// Keys typed into `session attach` in a terminal (tmux), one step each:
/// a line of input, `stty size` as the terminal is resized, ^C.
struct Pane {
    sock: String,
}

impl Pane {
    fn tmux(&self, args: &[&str]) {
        let st = std::process::Command::new("tmux")
            .args(["-L", &self.sock])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "tmux {args:?}");
    }

    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-l", line]);
        self.tmux(&["send-keys", "Enter"]);
    }

    fn wait_for(&self, want: &str) -> String {
        poll(want, Duration::from_secs(60), || {
            let out = std::process::Command::new("tmux")
                .args(["-L", &self.sock, "capture-pane", "-p", "-S", "-100"])
                .output()
                .ok()?;
            let p = stdout(&out);
            p.contains(want).then_some(p)
        })
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.sock, "kill-server"])
            .status();
    }
}

#[test]
fn guest_session_on_a_terminal_attaches_as_a_real_terminal_and_long_logs_come_whole() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    assert!(d.banger(&["vm", "create", "dev"]).status.success());

    // A log longer than one read (1 MiB) comes whole.
    let out = d.banger(&[
        "session",
        "start",
        "dev",
        "--name",
        "big",
        "--",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero | tr '\\0' x",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll("big to end", Duration::from_secs(60), || {
        (session(&d, "big").state == "exited").then_some(())
    });
    let out = d.banger(&["session", "logs", "big"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|b| *b == b'x'));

    // An interactive shell on a terminal.
    let out = d.banger(&[
        "session",
        "start",
        "dev",
        "--tty",
        "--name",
        "sh1",
        "--",
        "bash",
        "--norc",
        "--noprofile",
        "-i",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(session(&d, "sh1").tty);
    let pane = Pane {
        sock: format!("banger-attach-{}", std::process::id()),
    };
    let cmd = format!(
        "{} --socket {} session attach sh1; echo ATTACH-''ENDED; sleep 60",
        banger_tests::bin("banger").display(),
        d.socket.display()
    );
    pane.tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        &cmd,
    ]);
    pane.wait_for("attached to sh1");
    // What is typed reaches the shell; it answers.
    pane.type_line("echo hi-$((6*7))");
    pane.wait_for("hi-42");
    // The terminal is this one's size, and follows it.
    pane.type_line("stty size");
    pane.wait_for("40 120");
    pane.tmux(&["resize-window", "-x", "100", "-y", "30"]);
    // Resizes reach it asynchronously: ask (every half second) until the
    // new size shows.
    let mut n = 0;
    poll("the new size", Duration::from_secs(30), || {
        if n % 25 == 0 {
            pane.type_line("stty size");
        }
        n += 1;
        let out = std::process::Command::new("tmux")
            .args(["-L", &pane.sock, "capture-pane", "-p"])
            .output()
            .ok()?;
        stdout(&out).contains("30 100").then_some(())
    });
    // ^C interrupts what runs in the foreground, not the shell.
    pane.type_line("sleep 300");
    let sleeping = || {
        let out = d.banger(&["vm", "exec", "dev", "--", "pgrep", "-x", "sleep"]);
        out.status.success()
    };
    poll("sleep to run", Duration::from_secs(30), || {
        sleeping().then_some(())
    });
    pane.tmux(&["send-keys", "C-c"]);
    pane.type_line("echo back-$((1+1))");
    pane.wait_for("back-2");
    assert!(!sleeping(), "^C ended the sleep");
    // ~. at the start of a line detaches; the session runs on.
    pane.tmux(&["send-keys", "Enter", "~", "."]);
    pane.wait_for("ATTACH-ENDED");
    let p = pane.wait_for("detached from sh1");
    assert!(p.contains("keeps running"), "{p}");
    assert_eq!(session(&d, "sh1").state, "running");
    let out = d.banger(&["session", "kill", "sh1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Where a daemon has no banger-agent to ship, guest commands go over SSH.
/// Nothing of them is an argument of the daemon's `ssh` (every local user
/// reads `/proc/PID/cmdline`): not a session's environment, not its
/// command; and a command past the kernel's 128 KiB argument limit runs.
#[test]
fn guest_commands_over_ssh_keep_secrets_and_big_scripts_off_command_lines() {
    use std::os::unix::fs::PermissionsExt;
    let img = test_image();
    let ns = TestNetns::new();
    // An ssh that writes down its arguments, then is the real one.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let argv_log = dir.path().join("ssh-argv");
    let real = banger_core::tools::require("ssh").unwrap();
    let wrapper = bin.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >> {}\nexec {} \"$@\"\n",
            argv_log.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let d = TestDaemon::start_in_with(
        &ns,
        "[vm]\nguest_agent = \"/nonexistent/banger-agent\"\n",
        &[("PATH", &path)],
    );
    d.import_test_image(&img, "default");
    assert!(d.banger(&["vm", "create", "plain"]).status.success());

    let secret = "s3cret-9f2e61d0";
    // Each under the kernel's limit for one string, together past it: the
    // session's script is over 200 KiB.
    let big = "z".repeat(100 << 10);
    let big2 = "w".repeat(100 << 10);
    let out = d.banger(&[
        "session",
        "start",
        "plain",
        "--name",
        "quiet",
        "--env",
        &format!("API_KEY={secret}"),
        "--env",
        &format!("BIG={big}"),
        "--env",
        &format!("BIG2={big2}"),
        "--",
        "sh",
        "-c",
        "echo \"key=$API_KEY big=${#BIG} ${#BIG2}\"",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll("the session's output", Duration::from_secs(60), || {
        let logs = stdout(&d.banger(&["session", "logs", "quiet"]));
        logs.contains("key=").then_some(logs)
    });
    let logs = stdout(&d.banger(&["session", "logs", "quiet"]));
    assert_eq!(
        logs,
        format!("key={secret} big={} {}\n", big.len(), big2.len())
    );
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(argv.contains("head -c"), "the daemon went over SSH: {argv}");
    assert!(!argv.contains(secret), "a secret on ssh's command line");
    assert!(!argv.contains("zzzz"), "the command on ssh's command line");
    assert!(
        !argv.contains("API_KEY"),
        "the environment on ssh's command line"
    );
}
