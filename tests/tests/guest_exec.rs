//! banger-agent in a real guest (QEMU TCG), through the daemon's API and
//! the real `banger` binary: exec keeps argv verbatim, streams stdin and
//! stderr apart, passes exit codes and signals, kills on a timeout, runs on
//! a terminal of the user's size; `vm cp` round-trips files and
//! directories byte-exact; `vm ports` sees a port the guest opens; the
//! agent killed in the guest comes back; a guest still on the shell agent
//! of an older image is moved onto banger-agent at its next boot. Needs root.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use banger_api::{VmExecRequest, VmExecResult};
use banger_tests::{block_on, poll, stderr, stdout, test_image, TestDaemon, TestNetns};

fn exec(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    let mut a = vec!["vm", "exec", "dev", "--"];
    a.extend_from_slice(args);
    d.banger(&a)
}

#[test]
fn guest_exec_files_ports_and_the_agent_coming_back() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // argv arrives verbatim: quotes, ;, $(), newlines, unicode, empty.
    let out = exec(
        &d,
        &[
            "printf",
            "%s|",
            "a  b",
            "x;y",
            "$(id)",
            "new\nline",
            "ünï",
            "",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "a  b|x;y|$(id)|new\nline|ünï||");
    // At rest the agent waits: it makes no system calls (a virtio-serial
    // port that once reported a hangup made it spin on reads). Read over
    // SSH, so no request to the agent is in flight.
    let out = d.banger(&[
        "vm",
        "ssh",
        "dev",
        "--",
        "p=$(pidof banger-agent); a=$(sed -n 's/^syscr: //p' /proc/$p/io); \
         sleep 2; echo $(( $(sed -n 's/^syscr: //p' /proc/$p/io) - a ))",
    ]);
    let reads: u64 = stdout(&out).trim().parse().expect("a count of reads");
    assert!(reads < 1000, "the idle agent made {reads} reads in 2 s");
    // Exit codes, signals, separate stderr, stdin with -i.
    let out = exec(&d, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        (stdout(&out), stderr(&out)),
        ("out\n".into(), "err\n".into())
    );
    let out = exec(&d, &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143));
    let mut child = d
        .banger_cmd()
        .args([
            "vm",
            "exec",
            "-i",
            "dev",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "HELLO\ndone\n");
    // A timeout kills the whole process group.
    let t0 = std::time::Instant::now();
    let out = d.banger(&[
        "vm",
        "exec",
        "--timeout",
        "2",
        "dev",
        "--",
        "sh",
        "-c",
        "sleep 100 & sleep 100",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(30));
    // The background sleep dies too (SIGKILL is asynchronous: a bounded
    // wait, not counting zombies init has yet to reap).
    poll("the group's end", Duration::from_secs(10), || {
        let left = exec(
            &d,
            &[
                "sh",
                "-c",
                "ps -eo stat=,comm= | grep -v '^Z' | grep -c ' sleep$'",
            ],
        );
        (stdout(&left).trim() == "0").then_some(())
    });
    // As another user, in a directory, with the environment asked for.
    let out = d.banger(&[
        "vm",
        "exec",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "-e",
        "GREETING=hi",
        "dev",
        "--",
        "sh",
        "-c",
        "echo $(id -un) $PWD $GREETING",
    ]);
    assert_eq!(stdout(&out), "nobody /tmp hi\n", "{}", stderr(&out));
    // The one-shot API form.
    let req = VmExecRequest {
        argv: vec!["sh".into(), "-c".into(), "cat; printf '\\377'".into()],
        stdin: Some("piped".into()),
        ..VmExecRequest::default()
    };
    let r: VmExecResult = block_on(d.client().post("/v1/vms/dev/exec", &req)).unwrap();
    assert_eq!((r.exit_code, r.via.as_str()), (Some(0), "agent"));
    assert_eq!(
        r.stdout_base64.as_deref(),
        Some("cGlwZWT/"),
        "exact bytes: {r:?}"
    );

    // vm cp: a file with spaces in its name, and a directory, both ways.
    let dir = tempfile::tempdir().unwrap();
    // 100 MiB, every byte value, in a pattern that does not repeat soon.
    let data: Vec<u8> = (0..100u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    let f = dir.path().join("with space.bin");
    std::fs::write(&f, &data).unwrap();
    let out = d.banger(&["vm", "cp", f.to_str().unwrap(), "dev:/work/in dir/"]);
    assert!(
        !out.status.success(),
        "a missing guest directory is refused: {} {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(exec(&d, &["mkdir", "-p", "/work/in dir"]).status.success());
    let out = d.banger(&["vm", "cp", f.to_str().unwrap(), "dev:/work/in dir/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let back = dir.path().join("back.bin");
    let out = d.banger(&[
        "vm",
        "cp",
        "dev:/work/in dir/with space.bin",
        back.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&back).unwrap() == data, "the bytes differ");
    let sum = exec(&d, &["sha256sum", "/work/in dir/with space.bin"]);
    assert!(stdout(&sum).starts_with(&sha256(&data)), "{}", stdout(&sum));
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a.txt"), "a").unwrap();
    std::fs::write(tree.join("b.txt"), "b").unwrap();
    let out = d.banger(&["vm", "cp", tree.to_str().unwrap(), "dev:/work/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&exec(&d, &["cat", "/work/tree/sub/a.txt"])), "a");
    let copy = dir.path().join("copy");
    let out = d.banger(&["vm", "cp", "dev:/work/tree", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(copy.join("tree/b.txt")).unwrap(),
        "b"
    );

    // A watch sees a file created, written and deleted.
    watch_sees_create_modify_delete(&d);

    // A port the guest opens shows up (from /proc/net, through the agent),
    // in `vm ports` and as events to a watcher; closing it is an event too.
    let watcher = PortWatcher::start(&d);
    watcher.wait_for("the sockets open at the start", |e| {
        e.event == "open" && e.port.port == 22
    });
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
        "8123",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll("port 8123 in vm ports", Duration::from_secs(20), || {
        let l: banger_api::VmPortList = d.banger_json(&["vm", "ports", "dev"]);
        l.ports
            .iter()
            .any(|p| p.port == 8123 && p.process.as_deref() == Some("python3"))
            .then_some(())
    });
    watcher.wait_for("8123 opened", |e| e.event == "open" && e.port.port == 8123);
    assert!(d.banger(&["session", "kill", "web"]).status.success());
    watcher.wait_for("8123 closed", |e| e.event == "close" && e.port.port == 8123);
    drop(watcher);

    // The agent killed in the guest is started again; the next exec works.
    let out = d.banger(&["vm", "ssh", "dev", "--", "pkill -x banger-agent"]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll(
        "exec after the agent was killed",
        Duration::from_secs(30),
        || exec(&d, &["true"]).status.success().then_some(()),
    );
}

/// Follows `files/watch` on a guest directory in a thread while files
/// change there: first probes until the watch is seen to be live, then a
/// file created, appended to and removed.
fn watch_sees_create_modify_delete(d: &TestDaemon) {
    use std::sync::{Arc, Mutex};
    assert!(exec(d, &["mkdir", "-p", "/work/w"]).status.success());
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (client, seen2) = (d.client(), seen.clone());
    std::thread::spawn(move || {
        let _ = block_on(
            client.follow_sse("/v1/vms/dev/files/watch?path=/work/w", |v| {
                let ev = v["event"].as_str().unwrap_or("").to_string();
                let path = v["path"].as_str().unwrap_or("").to_string();
                let mut s = seen2.lock().unwrap();
                s.push((ev, path));
                s.len() < 1000
            }),
        );
    });
    let mut i = 0;
    poll("the watch to be live", Duration::from_secs(30), || {
        i += 1;
        let _ = exec(d, &["touch", &format!("/work/w/probe{i}")]);
        (!seen.lock().unwrap().is_empty()).then_some(())
    });
    let out = exec(
        d,
        &[
            "sh",
            "-c",
            "echo a > /work/w/f; echo b >> /work/w/f; rm /work/w/f",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    poll(
        "create, modify, delete of f",
        Duration::from_secs(10),
        || {
            let s = seen.lock().unwrap();
            let of_f: Vec<&str> = s
                .iter()
                .filter(|(_, p)| p == "/work/w/f" || p == "f")
                .map(|(e, _)| e.as_str())
                .collect();
            let order = ["create", "modify", "delete"]
                .iter()
                .map(|want| of_f.iter().position(|e| e == want))
                .collect::<Option<Vec<usize>>>()?;
            order.windows(2).all(|w| w[0] < w[1]).then_some(())
        },
    );
}

/// `vm ports NAME --watch --json` running, its events collected.
struct PortWatcher {
    child: std::process::Child,
    events: std::sync::Arc<std::sync::Mutex<Vec<banger_api::VmPortEvent>>>,
}

impl PortWatcher {
    fn start(d: &TestDaemon) -> PortWatcher {
        use std::io::BufRead;
        let mut child = d
            .banger_cmd()
            .args(["--json", "vm", "ports", "dev", "--watch"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let events = std::sync::Arc::<std::sync::Mutex<Vec<banger_api::VmPortEvent>>>::default();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let e = serde_json::from_str(&line).expect("a port event per line");
                sink.lock().unwrap().push(e);
            }
        });
        PortWatcher { child, events }
    }

    fn wait_for(&self, what: &str, f: impl Fn(&banger_api::VmPortEvent) -> bool) {
        poll(what, Duration::from_secs(30), || {
            self.events.lock().unwrap().iter().any(&f).then_some(())
        });
    }
}

impl Drop for PortWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A guest that still runs the shell agent of an image made before
/// banger-agent (put back by hand here) is moved onto banger-agent when it
/// boots, and exec works through it.
#[test]
fn guest_of_an_older_image_moves_onto_banger_agent() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    assert!(d.banger(&["vm", "create", "old"]).status.success());
    // The image of before: /usr/lib/banger/agent is the shell agent.
    let out = d.banger(&[
        "vm",
        "ssh",
        "old",
        "--",
        "cp /usr/lib/banger/agent-sh /usr/lib/banger/agent && rm /usr/lib/banger/agent-sh && sync",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.banger(&["vm", "restart", "old"]).status.success());
    let out = d.banger(&["vm", "exec", "old", "--", "cat", "/usr/lib/banger/agent"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("banger-agent"),
        "the launcher is back: {}",
        stdout(&out)
    );
    let req = VmExecRequest {
        argv: vec!["true".into()],
        ..VmExecRequest::default()
    };
    let r: VmExecResult = block_on(d.client().post("/v1/vms/old/exec", &req)).unwrap();
    assert_eq!(r.via, "agent");
}

/// On a terminal, `vm exec -t` gives the program one of the same size,
/// and follows when it is resized.
#[test]
fn guest_exec_on_a_terminal_has_the_terminal_s_size() {
    let img = test_image();
    let ns = TestNetns::new();
    let d = TestDaemon::start_in(&ns);
    d.import_test_image(&img, "default");
    assert!(d.banger(&["vm", "create", "tty"]).status.success());
    let sock = format!("banger-tty-{}", std::process::id());
    let me = banger_tests::bin("banger");
    let cmd = format!(
        "{} --socket {} vm exec -t tty -- sh -c 'stty size; \
         while [ \"$(stty size)\" = \"41 123\" ]; do sleep 0.1; done; \
         echo now $(stty size); echo END-OF-''RUN'; sleep 30",
        me.display(),
        d.socket.display()
    );
    let st = Command::new("tmux")
        .args([
            "-L",
            &sock,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "123",
            "-y",
            "41",
            &cmd,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let pane = |want: &str| {
        poll(want, Duration::from_secs(60), || {
            let out = Command::new("tmux")
                .args(["-L", &sock, "capture-pane", "-p"])
                .output()
                .ok()?;
            let p = stdout(&out);
            p.contains(want).then_some(p)
        })
    };
    pane("41 123");
    // The terminal changes size: the program's follows.
    let st = Command::new("tmux")
        .args(["-L", &sock, "resize-window", "-x", "100", "-y", "30"])
        .status()
        .unwrap();
    assert!(st.success());
    let end = pane("END-OF-RUN");
    let _ = Command::new("tmux")
        .args(["-L", &sock, "kill-server"])
        .status();
    assert!(end.contains("now 30 100"), "{end}");
}
