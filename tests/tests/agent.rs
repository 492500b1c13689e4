//! banger-agent against the daemon's client, without a VM: the real agent
//! binary serves a Unix socket on this host, and `guest_agent::AgentConn`
//! (what bangerd uses) drives it. Exec keeps argv verbatim, streams stdin,
//! stdout and stderr apart, reports exit codes and signals, kills the whole
//! process group on a timeout, runs on a PTY of the asked size and follows a
//! resize; files round-trip byte-exact; watch, ports and metrics answer;
//! many execs run at once. Stand-in guests that flood, lie or send junk
//! are cut off without hurting the daemon. Needs root (it runs a program
//! as another user).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use banger_agent_proto::frame::{Frame, Kind};
use banger_agent_proto::msg::{Control, ExecRequest, Reply, Request, TermSize};
use banger_core::guest_agent::{AgentConn, AgentConnError};
use banger_tests::{bin, block_on, poll};
use futures::{SinkExt, StreamExt};

struct Agent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new(bin("banger-agent"))
        .arg("--channel")
        .arg(format!("unix:{}", sock.display()))
        .spawn()
        .unwrap();
    // The file appears at bind(), before listen(): wait for a connection.
    poll("the agent's socket", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&sock)
            .ok()
            .map(drop)
    });
    Agent {
        child,
        sock,
        _dir: dir,
    }
}

async fn conn(a: &Agent) -> AgentConn {
    let s = tokio::net::UnixStream::connect(&a.sock).await.unwrap();
    AgentConn::start(s, Duration::from_secs(5), "test".into())
        .await
        .unwrap()
}

fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..ExecRequest::default()
    }
}

const T: Duration = Duration::from_secs(20);

#[test]
fn exec_is_argv_exact_with_separate_streams_codes_and_signals() {
    let a = agent();
    block_on(async {
        let c = conn(&a).await;
        assert_eq!(c.hello.protocol, banger_agent_proto::PROTOCOL);
        let argv = [
            "printf",
            "%s|",
            "a  b",
            "x;y",
            "$(id)",
            "new\nline",
            "ünïcödé",
            "",
        ];
        let out = c.exec_collect(exec(&argv), None, 1 << 20, T).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a  b|x;y|$(id)|new\nline|ünïcödé||"
        );
        assert!(out.success());
        let out = c
            .exec_collect(
                exec(&["sh", "-c", "cat; echo err >&2; exit 7"]),
                Some(b"in\x00put"),
                1 << 20,
                T,
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, b"in\x00put");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.code, Some(7));
        let out = c
            .exec_collect(exec(&["sh", "-c", "kill -TERM $$"]), None, 1024, T)
            .await
            .unwrap();
        assert_eq!((out.code, out.signal), (None, Some(15)));
        let e = c
            .exec_collect(exec(&["no-such-program"]), None, 1024, T)
            .await;
        assert!(matches!(e, Err(AgentConnError::Refused { .. })), "{e:?}");
        // Output beyond the limit is counted, not kept.
        let out = c
            .exec_collect(exec(&["head", "-c", "100000", "/dev/zero"]), None, 1000, T)
            .await
            .unwrap();
        assert_eq!((out.stdout.len(), out.dropped.0), (1000, 99_000));
        // As another user, in its home, with the environment asked for.
        let mut req = exec(&["sh", "-c", "echo $(id -un) $HOME $PWD $GREETING"]);
        req.user = Some("nobody".into());
        req.cwd = Some("/".into());
        req.env.insert("GREETING".into(), "hi".into());
        let out = c.exec_collect(req, None, 1024, T).await.unwrap();
        let home = String::from_utf8_lossy(&out.stdout);
        assert!(
            home.starts_with("nobody ") && home.trim_end().ends_with("/ hi"),
            "{home}"
        );
    });
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn a_timeout_kills_the_whole_process_group_and_many_execs_run_at_once() {
    let a = agent();
    block_on(async {
        let c = conn(&a).await;
        let script = "sleep 300 & echo $!; sleep 300";
        let out = c
            .exec_collect(
                exec(&["sh", "-c", script]),
                None,
                1024,
                Duration::from_millis(800),
            )
            .await
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.signal, Some(9));
        let bg: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        poll(
            "the background child to die",
            Duration::from_secs(5),
            || (!alive(bg)).then_some(()),
        );
        let runs = (0..8).map(|i| {
            let c = c.clone();
            async move {
                let script = format!("sleep 0.3; echo {i}");
                c.exec_collect(exec(&["sh", "-c", &script]), None, 64, T)
                    .await
            }
        });
        let t0 = std::time::Instant::now();
        let outs = futures::future::join_all(runs).await;
        for (i, o) in outs.into_iter().enumerate() {
            assert_eq!(o.unwrap().stdout, format!("{i}\n").into_bytes());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "they ran side by side"
        );
    });
}

#[test]
fn a_pty_has_the_asked_size_and_follows_a_resize() {
    let a = agent();
    block_on(async {
        let c = conn(&a).await;
        let mut req = exec(&["sh", "-c", "stty size; read x; stty size"]);
        req.pty = Some(TermSize {
            rows: 30,
            cols: 100,
        });
        req.stdin = true;
        let mut f = c.open(&Request::Exec(req)).await.unwrap();
        let mut seen = String::new();
        let mut resized = false;
        while let Some(fr) = f.next().await {
            let fr = fr.unwrap();
            match fr.kind {
                Kind::Out => {
                    seen.push_str(&String::from_utf8_lossy(&fr.payload));
                    if seen.contains("30 100") && !resized {
                        resized = true;
                        let r = Control::Resize(TermSize {
                            rows: 40,
                            cols: 120,
                        });
                        f.send(Frame::json(&r).unwrap()).await.unwrap();
                        f.send(Frame::data(Kind::In, "go\n".into())).await.unwrap();
                    }
                }
                Kind::Json => {
                    if let Reply::Exit { code, .. } = fr.parse::<Reply>().unwrap() {
                        assert_eq!(code, Some(0));
                        break;
                    }
                }
                _ => {}
            }
        }
        assert!(
            seen.contains("30 100") && seen.contains("40 120"),
            "{seen:?}"
        );
    });
}

#[test]
fn files_round_trip_and_watch_ports_and_metrics_answer() {
    let a = agent();
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let c = conn(&a).await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join("a dir/with spaces.bin");
        let p = path.to_str().unwrap();
        let st = c.write_file(p, &data, Some(0o640), true).await.unwrap();
        assert_eq!((st.size, st.mode), (data.len() as u64, 0o640));
        let (st2, back) = c.read_file(p, 10 << 20).await.unwrap();
        assert_eq!(st2.size, data.len() as u64);
        assert!(back == data, "the bytes differ");
        let (st3, head) = c.read_file(p, 10).await.unwrap();
        assert_eq!(
            (st3.size, &head[..]),
            (data.len() as u64, &data[..10]),
            "a limit reads the head"
        );
        let no_tmp = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(no_tmp, 1, "no temporary file is left");
        let list = Request::List {
            path: dir.path().display().to_string(),
            depth: 2,
        };
        let mut f = c.open(&list).await.unwrap();
        let mut names = vec![];
        loop {
            match banger_core::guest_agent::next_reply(&mut f).await.unwrap() {
                Reply::Entries { entries } => names.extend(entries.into_iter().map(|e| e.path)),
                Reply::Ok => break,
                r => panic!("{r:?}"),
            }
        }
        assert_eq!(names.len(), 2, "{names:?}");
        let w = Request::Watch {
            path: dir.path().display().to_string(),
            recursive: true,
        };
        let mut f = c.open(&w).await.unwrap();
        assert_eq!(
            banger_core::guest_agent::next_reply(&mut f).await.unwrap(),
            Reply::Ok
        );
        std::fs::write(path.parent().unwrap().join("new.txt"), "x").unwrap();
        let ev = tokio::time::timeout(T, banger_core::guest_agent::next_reply(&mut f))
            .await
            .unwrap()
            .unwrap();
        match ev {
            Reply::Event(e) => assert!(e.event == "create" && e.path.ends_with("new.txt"), "{e:?}"),
            r => panic!("{r:?}"),
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        match c.call(&Request::Ports, T).await.unwrap() {
            Reply::Ports { ports } => assert!(
                ports.iter().any(|p| p.port == port && p.proto == "tcp"),
                "{port} in {ports:?}"
            ),
            r => panic!("{r:?}"),
        }
        match c.call(&Request::Metrics, T).await.unwrap() {
            Reply::Metrics(m) => assert!(m.mem_total_bytes > 0 && m.root_total_bytes > 0),
            r => panic!("{r:?}"),
        }
    });
}

/// A stand-in guest on a Unix socket that answers with `script`.
fn stand_in(
    path: &Path,
    script: fn(std::os::unix::net::UnixStream),
) -> std::thread::JoinHandle<()> {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            script(s);
        }
    })
}

fn read_hello(s: &mut std::os::unix::net::UnixStream) -> String {
    use std::io::Read;
    let mut line = vec![];
    let mut b = [0u8];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line)
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn hostile_guests_are_cut_off_and_bounded() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let start = |p: &Path| {
        let p = p.to_path_buf();
        block_on(async move {
            let s = tokio::net::UnixStream::connect(&p).await.unwrap();
            AgentConn::start(s, Duration::from_secs(5), "hostile".into()).await
        })
    };
    // Endless junk without an answer: refused after a bounded read.
    let p = dir.path().join("flood.sock");
    let t = stand_in(&p, |mut s| {
        let junk = vec![b'x'; 64 << 10];
        while s.write_all(&junk).is_ok() {}
    });
    assert!(matches!(start(&p), Err(AgentConnError::Garbled(_))));
    t.join().unwrap();
    // The shell agent of old images: recognised.
    let p = dir.path().join("legacy.sock");
    let t = stand_in(&p, |mut s| {
        read_hello(&mut s);
        let _ = s.write_all(b"err HELLO unknown request\n");
        std::thread::sleep(Duration::from_millis(200));
    });
    assert!(matches!(start(&p), Err(AgentConnError::Legacy)));
    t.join().unwrap();
    // A valid answer, then a frame that announces 4 GiB: the session ends,
    // the caller gets an error, nothing is buffered.
    let p = dir.path().join("liar.sock");
    let t = stand_in(&p, |mut s| {
        let nonce = read_hello(&mut s);
        let _ = s.write_all(format!("BANGER-AGENT OK {nonce} 1 0.0.0\n").as_bytes());
        let _ = s.write_all(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        let _ = s.write_all(&[0xff; 4096]);
        std::thread::sleep(Duration::from_millis(500));
    });
    let c = start(&p).unwrap();
    let r = block_on(c.call(&Request::Ping, Duration::from_secs(5)));
    assert!(r.is_err(), "{r:?}");
    poll("the connection to close", Duration::from_secs(5), || {
        c.is_closed().then_some(())
    });
    t.join().unwrap();
}
