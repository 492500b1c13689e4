//! Foundation: a real bangerd driven through the real banger CLI.
//! Needs root (bangerd does); CI runs as root.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use banger_api::{
    Capabilities, CheckStatus, DebugOpRequest, DoctorReport, OpEvent, OpList, OpState, Operation,
    StepStatus,
};
use banger_tests::{banger_gid, bin, block_on, poll, stderr, TestDaemon};

fn start_op(d: &TestDaemon, steps: u32, step_ms: u64, fail_at: Option<u32>) -> Operation {
    block_on(d.client().post(
        "/v1/debug/ops",
        &DebugOpRequest {
            steps,
            step_ms,
            fail_at,
        },
    ))
    .expect("start debug op")
}

#[test]
fn version_reports_daemon_identity() {
    let d = TestDaemon::start();
    let v: serde_json::Value = d.banger_json(&["version"]);
    assert_eq!(v["client"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["daemon"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["daemon"]["api_version"], "v1");
    assert_eq!(v["daemon"]["pid"], d.pid());
    assert_eq!(v["daemon"]["state_dir"], d.state_dir.display().to_string());
    let human = d.banger(&["version"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("bangerd 0.1.0"));
}

#[test]
fn doctor_json_lists_every_check_and_exit_code_follows_ok() {
    let d = TestDaemon::start();
    let out = d.banger_cmd().args(["--json", "doctor"]).output().unwrap();
    let report: DoctorReport = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let ids: Vec<&str> = report.checks.iter().map(|c| c.id.as_str()).collect();
    for id in [
        "kvm",
        "qemu",
        "firecracker",
        "backend",
        "qemu_img",
        "tun",
        "nft",
        "ip_forward",
        "device_mapper",
        "reflink",
        "bootstrapper",
        "mkfs_ext4",
        "ssh",
        "disk",
    ] {
        assert!(ids.contains(&id), "doctor lacks check {id}: {ids:?}");
    }
    for c in &report.checks {
        assert!(!c.title.is_empty() && !c.detail.is_empty(), "{c:?}");
        if matches!(c.status, CheckStatus::Fail | CheckStatus::Warn) {
            assert!(
                c.hint.is_some(),
                "check {} is {:?} without a hint",
                c.id,
                c.status
            );
        }
    }
    let required_failed = report
        .checks
        .iter()
        .any(|c| c.required && c.status == CheckStatus::Fail);
    assert_eq!(report.ok, !required_failed);
    assert_eq!(out.status.code(), Some(if report.ok { 0 } else { 1 }));
    // The test script installs everything banger needs, so the host passes.
    assert!(report.ok, "doctor failed on the CI host: {report:#?}");
    // On this project's machines /dev/kvm comes from kvm_pvm: reported, not fatal.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        let kvm = report.checks.iter().find(|c| c.id == "kvm").unwrap();
        assert_eq!(kvm.status, CheckStatus::Warn);
        assert!(kvm.detail.contains("kvm_pvm"));
    }
    let caps: Capabilities = d.banger_json(&["capabilities"]);
    let qemu_ok = report
        .checks
        .iter()
        .any(|c| c.id == "qemu" && c.status == CheckStatus::Ok);
    assert_eq!(caps.backends.contains(&banger_api::Backend::Qemu), qemu_ok);
    assert_eq!(
        caps.clone_strategies.last().map(String::as_str),
        Some("sparse-copy")
    );
}

#[test]
fn daemon_down_exits_3_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("banger"))
        .arg("--socket")
        .arg(dir.path().join("nope.sock"))
        .arg("version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Cannot reach bangerd"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("systemctl start bangerd"),
        "{err}"
    );
}

#[test]
fn socket_is_0660_root_banger_and_non_members_are_refused() {
    let d = TestDaemon::start();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.gid(), banger_gid());

    let as_user = |groups: &str| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534"]);
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.arg(format!("--groups={groups}"));
        }
        c.arg(bin("banger"))
            .arg("--socket")
            .arg(&d.socket)
            .arg("version")
            .output()
            .unwrap()
    };
    // Not in the group: the socket's mode keeps it out.
    let out = as_user("");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("usermod -aG banger"),
        "{}",
        stderr(&out)
    );
    // In the group: allowed.
    let out = as_user(&banger_gid().to_string());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Mode loosened by someone: the daemon's own peer-credential check refuses.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user("");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("neither root nor in group"),
        "{}",
        stderr(&out)
    );
    let log = d.stderr();
    assert!(
        log.contains("request refused") && log.contains("uid=65534"),
        "refusal not logged: {log}"
    );
}

#[test]
fn second_daemon_on_the_same_state_dir_is_refused() {
    let d = TestDaemon::start();
    let out = std::process::Command::new(bin("bangerd"))
        .arg("--config")
        .arg(&d.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("already running") && err.contains(&d.pid().to_string()),
        "{err}"
    );
    // The first one still serves.
    assert!(d.banger(&["version"]).status.success());
}

#[test]
fn sigkill_keeps_committed_state_and_marks_running_ops_interrupted() {
    let mut d = TestDaemon::start();
    let done = start_op(&d, 1, 50, None);
    poll("first op to finish", Duration::from_secs(10), || {
        let op: Operation = d.banger_json(&["ops", "show", &done.id]);
        (op.state == OpState::Succeeded).then_some(())
    });
    let running = start_op(&d, 2, 600_000, None);
    poll(
        "second op's first step to run",
        Duration::from_secs(10),
        || {
            let op: Operation = d.banger_json(&["ops", "show", &running.id]);
            (op.steps[0].status == StepStatus::Running).then_some(())
        },
    );
    d.kill9();
    d.spawn();
    let op: Operation = d.banger_json(&["ops", "show", &done.id]);
    assert_eq!(op.state, OpState::Succeeded);
    assert_eq!(op.result, Some(serde_json::json!({"steps": 1})));
    let op: Operation = d.banger_json(&["ops", "show", &running.id]);
    assert_eq!(op.state, OpState::Interrupted);
    let err = op.error.expect("interrupted ops carry the reason");
    assert!(err.message.contains("bangerd stopped"), "{}", err.message);
    assert_eq!(op.steps[0].status, StepStatus::Failed);
    assert_eq!(op.steps[1].status, StepStatus::Skipped);
    let list: OpList = d.banger_json(&["ops", "ls"]);
    assert!(
        list.ops.is_empty(),
        "nothing should be running after restart: {list:?}"
    );
}

#[test]
fn sigterm_cancels_running_ops_and_exits_cleanly() {
    let mut d = TestDaemon::start();
    let op = start_op(&d, 1, 600_000, None);
    poll("op to run", Duration::from_secs(10), || {
        let o: Operation = d.banger_json(&["ops", "show", &op.id]);
        (o.steps[0].status == StepStatus::Running).then_some(())
    });
    let status = d.terminate();
    assert!(status.success(), "bangerd exit status {status}");
    assert!(!d.socket.exists(), "socket left behind");
    d.spawn();
    let o: Operation = d.banger_json(&["ops", "show", &op.id]);
    assert_eq!(o.state, OpState::Cancelled, "{o:?}");
    assert_eq!(o.steps[0].status, StepStatus::Cancelled);
}

#[test]
fn ops_watch_prints_one_plain_line_per_event_and_exit_code_follows_state() {
    let d = TestDaemon::start();
    let op = start_op(&d, 3, 100, None);
    let out = d.banger(&["ops", "watch", &op.id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.iter().all(|l| l.contains(&op.id)), "{err}");
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.ends_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {err}"))
    };
    assert!(pos("started debug.sleep debug") < pos("step1: started (Sleep step 1)"));
    assert!(pos("step1: done") < pos("step2: started (Sleep step 2)"));
    assert!(pos("step3: done") < pos("succeeded"));
    assert_eq!(
        lines.last().map(|l| l.ends_with("succeeded")),
        Some(true),
        "{err}"
    );

    let failing = start_op(&d, 2, 50, Some(2));
    let out = d.banger(&["ops", "watch", &failing.id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Step 2 failed as requested"),
        "{}",
        stderr(&out)
    );
    let o: Operation = d.banger_json(&["ops", "show", &failing.id]);
    assert_eq!(o.state, OpState::Failed);
    assert_eq!(
        [o.steps[0].status, o.steps[1].status],
        [StepStatus::Done, StepStatus::Failed]
    );
}

#[test]
fn ops_watch_json_streams_ordered_events() {
    let d = TestDaemon::start();
    let op = start_op(&d, 2, 100, None);
    let out = d
        .banger_cmd()
        .args(["--json", "ops", "watch", &op.id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let events: Vec<OpEvent> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON event"))
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gapless, ordered"
    );
    assert_eq!(events.first().map(|e| e.body.type_name()), Some("started"));
    assert_eq!(events.last().map(|e| e.body.type_name()), Some("finished"));
    // A late follower gets the same backlog.
    let out2 = d
        .banger_cmd()
        .args(["--json", "ops", "watch", &op.id])
        .output()
        .unwrap();
    assert_eq!(out.stdout, out2.stdout);
}

#[test]
fn ops_cancel_reaches_the_running_step() {
    let d = TestDaemon::start();
    let op = start_op(&d, 3, 600_000, None);
    poll("op to run", Duration::from_secs(10), || {
        let o: Operation = d.banger_json(&["ops", "show", &op.id]);
        (o.steps[0].status == StepStatus::Running).then_some(())
    });
    let running: OpList = d.banger_json(&["ops", "ls"]);
    assert!(running.ops.iter().any(|o| o.id == op.id));
    let out = d.banger(&["ops", "cancel", "--wait", &op.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o: Operation = d.banger_json(&["ops", "show", &op.id]);
    assert_eq!(o.state, OpState::Cancelled);
    assert!(o.cancel_requested);
    assert_eq!(
        o.steps.iter().map(|s| s.status).collect::<Vec<_>>(),
        [
            StepStatus::Cancelled,
            StepStatus::Skipped,
            StepStatus::Skipped
        ]
    );
    // Cancelling a finished op is a conflict.
    let out = d.banger(&["ops", "cancel", &op.id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already finished"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn api_errors_are_json_with_code_message_and_hint() {
    let d = TestDaemon::start();
    let (status, body) = block_on(d.client().get_text("/v1/nope")).unwrap();
    assert_eq!(status.as_u16(), 404);
    let e: banger_api::ApiError = serde_json::from_str(&body).expect("error JSON");
    assert_eq!(e.code, banger_api::ErrorCode::NotFound);
    assert!(e.hint.is_some());

    let err = block_on(d.client().post::<_, Operation>(
        "/v1/debug/ops",
        &serde_json::json!({"steps": 1, "stpe_ms": 1}),
    ))
    .expect_err("unknown field rejected");
    let msg = err.to_string();
    assert!(msg.contains("stpe_ms"), "{msg}");

    let out = d.banger(&["ops", "show", "op-doesnotexist"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("No operation with id"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("hint: List operations"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn served_openapi_matches_the_docs_copy() {
    let d = TestDaemon::start();
    let (status, body) = block_on(d.client().get_text("/v1/openapi.json")).unwrap();
    assert_eq!(status.as_u16(), 200);
    let kept =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap();
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(
        served, kept,
        "docs/openapi.json differs from what bangerd serves"
    );
    for path in [
        "/v1/version",
        "/v1/doctor",
        "/v1/capabilities",
        "/v1/ops",
        "/v1/ops/{id}/events",
        "/v1/ops/{id}/cancel",
    ] {
        assert!(
            served["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[test]
fn bad_config_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (text, key) in [
        ("[daemon]\nstate_dri = \"/x\"\n", "state_dri"),
        ("[daemon]\nlog_level = \"loud\"\n", "daemon.log_level"),
        ("[daemon\n", "line 1"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(bin("bangerd"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(stderr(&out).contains(key), "{text}: {}", stderr(&out));
    }
    let out = std::process::Command::new(bin("bangerd"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // A pipe whose reader is gone before banger writes (as after `| head`
    // has exited): its first write gets SIGPIPE.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = std::process::Command::new(bin("banger"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "ended by SIGPIPE like other Unix tools (a shell shows 141)"
    );
}

fn libc_sigpipe() -> i32 {
    nix::sys::signal::Signal::SIGPIPE as i32
}

#[test]
fn completions_are_generated_for_each_shell() {
    // Each shell's script calls back into this banger as you type.
    let me = bin("banger").display().to_string();
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(bin("banger"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("COMPLETE") && text.contains(&me),
            "{shell}: {text}"
        );
    }
    // The completer: subcommands (and, without a daemon, no names and no
    // failure).
    let out = std::process::Command::new(bin("banger"))
        .env("COMPLETE", "fish")
        .env("BANGER_SOCKET", "/nonexistent.sock")
        .args(["--", "banger", "ops", "w"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("watch\t"));
    let out = std::process::Command::new(bin("banger"))
        .env("COMPLETE", "fish")
        .env("BANGER_SOCKET", "/nonexistent.sock")
        .args(["--", "banger", "vm", "show", ""])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("doctor"));
    let out = std::process::Command::new(bin("banger"))
        .args(["frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

/// `curl` on the daemon's socket: (status, body).
fn curl(d: &TestDaemon, args: &[&str], path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&d.socket)
        .args(args)
        .arg(format!("http://banger{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// Every rejection is `{code, message, hint}` JSON with its own status: a
/// bad query (400), a body without a JSON content type (415), one past the
/// size limit (413), a path that is no endpoint (404). They were text, and
/// 413 and 415 were 400.
#[test]
fn rejections_are_json_with_their_own_status() {
    let d = TestDaemon::start();
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(3 << 20));
    let big_file = d.dir.join("big.json");
    std::fs::write(&big_file, big).unwrap();
    let at_big = format!("@{}", big_file.display());
    let cases: [(&[&str], &str, u16); 4] = [
        (&[], "/v1/ops?limit=many", 400),
        (
            &["-X", "POST", "-H", "Content-Type: text/plain", "-d", "{}"],
            "/v1/vms",
            415,
        ),
        (
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &at_big,
            ],
            "/v1/vms",
            413,
        ),
        (&[], "/v1/no-such-thing", 404),
    ];
    for (args, path, want) in cases {
        let (status, body) = curl(&d, args, path);
        assert_eq!(status, want, "{path}: {body}");
        let err: banger_api::ApiError = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: not an API error ({e}): {body}"));
        assert!(!err.message.is_empty());
    }
}

/// The runtime dir keeps the mode its admin gave it (0750 here) across
/// restarts; one others could write into is made 0755.
#[test]
fn the_runtime_dir_keeps_its_admin_s_mode_unless_it_is_loose() {
    let mut d = TestDaemon::start();
    let run = d.dir.join("run");
    d.kill9();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
    d.spawn();
    let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);
    d.kill9();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    d.spawn();
    let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert!(d.stderr().contains("writable by others"), "{}", d.stderr());
}
