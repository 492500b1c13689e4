//! The official E2B Python SDK (`e2b` from PyPI, pinned, unmodified)
//! against a real bangerd with its E2B listener on, and a real QEMU guest.
//! Needs root, QEMU and PyPI (the SDK's venv is made once per machine in
//! the test cache).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use banger_api::VmList;
use banger_tests::{free_port, stderr, stdout, test_image, TestDaemon, TestNetns, TEST_CACHE};

/// The SDK version under test (the newest when this was written).
const E2B_SDK: &str = "2.63.0";

/// A venv with the pinned SDK, made once.
fn sdk_python() -> PathBuf {
    let dir = PathBuf::from(TEST_CACHE).join(format!("e2b-py-{E2B_SDK}"));
    let python = dir.join("bin/python");
    if python.exists() {
        return python;
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let st = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "python3 -m venv failed (python3-venv: scripts/deps.sh --test)"
    );
    let out = Command::new(tmp.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("e2b=={E2B_SDK}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install e2b=={E2B_SDK}: {}",
        stderr(&out)
    );
    std::fs::rename(&tmp, &dir).unwrap();
    python
}

/// Runs `script` with the SDK pointed at `url` with `key`.
fn run_sdk(url: &str, key: &str, script: &str) -> Output {
    Command::new(sdk_python())
        .args(["-c", script])
        .env("E2B_API_URL", url)
        .env("E2B_SANDBOX_URL", url)
        .env("E2B_API_KEY", key)
        .output()
        .unwrap()
}

const QUICKSTART: &str = r#"
import json, os
from e2b import Sandbox
sbx = Sandbox.create(timeout=600, metadata={"suite": "e2b"})
r = sbx.commands.run("echo hello $FOO; whoami; echo oops >&2", envs={"FOO": "bar"})
listed = [s.sandbox_id for s in Sandbox.list().next_items()]
out = {"id": sbx.sandbox_id, "stdout": r.stdout, "stderr": r.stderr,
       "exit": r.exit_code, "listed": listed}
# Files: text and binary, relative to the user's home, then the tree ops.
sbx.files.write("notes/a.txt", "hi there")
out["read"] = sbx.files.read("notes/a.txt")
blob = bytes(range(256)) * 4
sbx.files.write("/tmp/blob.bin", blob)
out["binary_ok"] = sbx.files.read("/tmp/blob.bin", format="bytes") == bytes(blob)
big = os.urandom(10 << 20)
sbx.files.write("/tmp/big.bin", big)
out["big_ok"] = bytes(sbx.files.read("/tmp/big.bin", format="bytes")) == big
out["owner"] = sbx.commands.run("stat -c %U /home/user/notes/a.txt").stdout.strip()
out["exists"] = [sbx.files.exists("notes/a.txt"), sbx.files.exists("notes/nope")]
out["mkdir"] = sbx.files.make_dir("notes/sub")
sbx.files.rename("notes/a.txt", "notes/sub/b.txt")
out["list"] = sorted(e.name for e in sbx.files.list("notes/sub"))
sbx.files.remove("notes/sub")
out["gone"] = sbx.files.exists("notes/sub")
# Processes: stdin to a background command, list, kill.
h = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "hello\n")
out["stdin"] = h.wait().stdout
h2 = sbx.commands.run("sleep 300", background=True)
out["listed_proc"] = any(p.pid == h2.pid for p in sbx.commands.list())
out["killed"] = h2.kill()
try:
    h2.wait()
    out["kill_wait"] = "exited 0"
except Exception as e:
    out["kill_wait"] = type(e).__name__
# A PTY, resized, typed into.
from e2b import PtySize
got = bytearray()
t = sbx.pty.create(PtySize(rows=24, cols=80))
sbx.pty.resize(t.pid, PtySize(rows=30, cols=100))
sbx.pty.send_stdin(t.pid, b"stty size; exit\n")
t.wait(on_pty=lambda d: got.extend(d))
out["pty"] = "30 100" in got.decode(errors="replace")
# Pause and resume: a file and a process survive, under the same id.
sbx.files.write("/home/user/keep.txt", "kept")
sbx.commands.run("setsid nohup sleep 1000 >/dev/null 2>&1 &")
out["paused"] = sbx.pause()
out["paused_again"] = Sandbox.pause(sbx.sandbox_id)
out["state"] = [str(s.state) for s in Sandbox.list().next_items() if s.sandbox_id == sbx.sandbox_id]
same = Sandbox.connect(sbx.sandbox_id)
out["same_id"] = same.sandbox_id == sbx.sandbox_id
out["kept"] = same.files.read("/home/user/keep.txt")
out["alive"] = same.commands.run("pgrep -x sleep >/dev/null && echo alive").stdout.strip()
print(json.dumps(out))
sbx.kill()
"#;

const BAD_KEY: &str = r#"
from e2b import Sandbox
try:
    Sandbox.create()
    print("created")
except Exception as e:
    print(type(e).__name__, e)
"#;

/// Create, a command with env vars as E2B's default user, list; files
/// (text, binary, 10 MiB both ways, exists, make_dir, rename, list,
/// remove); stdin to a background command, listing and killing one; a
/// PTY resized and typed into; pause and connect (a file and a process
/// survive, same id); kill; a wrong key is refused in E2B's shape. The SDK is used
/// as its docs say.
#[test]
fn guest_e2b_python_sdk_drives_a_sandbox_commands_files_pause_and_kill() {
    let img = test_image();
    let python = sdk_python();
    assert!(python.exists());
    let ns = TestNetns::new();
    let port = free_port();
    let d = TestDaemon::start_in_with(&ns, &format!("[e2b]\nlisten = \"127.0.0.1:{port}\"\n"), &[]);
    d.import_test_image(&img, "default");
    let key = d.banger(&["e2b", "key", "create", "suite"]);
    assert!(key.status.success(), "{}", stderr(&key));
    let key = stdout(&key).trim().to_string();
    assert!(key.starts_with("e2b_"), "{key}");
    let env = d.banger(&["e2b", "env", "--key", &key]);
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        stdout(&env).contains(&format!("export E2B_API_URL={url}")),
        "{}",
        stdout(&env)
    );

    let out = run_sdk(&url, &key, QUICKSTART);
    assert!(
        out.status.success(),
        "the SDK failed:\n{}\n{}",
        stderr(&out),
        d.stderr()
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["stdout"], "hello bar\nuser\n", "{v}");
    assert_eq!(v["stderr"], "oops\n", "{v}");
    assert_eq!(v["exit"], 0);
    assert_eq!(v["read"], "hi there", "{v}");
    assert_eq!(v["binary_ok"], true, "{v}");
    assert_eq!(v["big_ok"], true, "10 MiB both ways: {v}");
    assert_eq!(v["owner"], "user", "{v}");
    assert_eq!(v["exists"], serde_json::json!([true, false]), "{v}");
    assert_eq!(v["mkdir"], true, "{v}");
    assert_eq!(v["list"], serde_json::json!(["b.txt"]), "{v}");
    assert_eq!(v["gone"], false, "{v}");
    assert_eq!(v["stdin"], "got:hello\n", "{v}");
    assert_eq!(v["listed_proc"], true, "{v}");
    assert_eq!(v["killed"], true, "{v}");
    assert_eq!(v["kill_wait"], "CommandExitException", "{v}");
    assert_eq!(v["pty"], true, "a PTY resized to 30x100: {v}");
    assert_eq!(v["paused"], true, "{v}");
    assert_eq!(v["paused_again"], false, "already paused: {v}");
    assert!(v["state"].to_string().contains("paused"), "{v}");
    assert_eq!(v["same_id"], true, "{v}");
    assert_eq!(v["kept"], "kept", "a file survives pause and resume: {v}");
    assert_eq!(
        v["alive"], "alive",
        "a process survives pause and resume: {v}"
    );
    let id = v["id"].as_str().unwrap();
    assert!(
        v["listed"].as_array().unwrap().iter().any(|l| l == id),
        "{v}"
    );
    // Killed: the VM is gone.
    let l: VmList = d.banger_json(&["vm", "ls"]);
    assert!(!l.vms.iter().any(|vm| vm.name == id), "{l:?}");

    raw_protocol_checks(&d, &url, &key);

    let out = run_sdk(&url, "e2b_wrong", BAD_KEY);
    assert!(
        stdout(&out).starts_with("AuthenticationException"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// `curl` to the listener: (status, body).
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// What the SDKs never send: bad input, another user's key, envd without
/// the access token; and a sandbox's timeout is enforced.
fn raw_protocol_checks(d: &TestDaemon, url: &str, key: &str) {
    let k = format!("X-API-KEY: {key}");
    let json = "Content-Type: application/json";
    // Bad input, each in E2B's error shape.
    for (body, want) in [
        (r#"{"templateID":"no-such-template"}"#, 404),
        (r#"{"templateID":"base","timeout":0}"#, 400),
        ("{not json", 400),
    ] {
        let (status, text) = curl(
            &format!("{url}/sandboxes"),
            &["-X", "POST", "-H", &k, "-H", json, "-d", body],
        );
        assert_eq!(status, want, "{body}: {text}");
        let e: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["code"], want, "{text}");
    }
    let (status, _) = curl(&format!("{url}/sandboxes/e2b-nosuchbox00"), &["-H", &k]);
    assert_eq!(status, 404);
    let (status, text) = curl(&format!("{url}/sandboxes"), &[]);
    assert_eq!(status, 401, "no key: {text}");
    // A sandbox, for the checks that need one.
    let (status, text) = curl(
        &format!("{url}/sandboxes"),
        &[
            "-X",
            "POST",
            "-H",
            &k,
            "-H",
            json,
            "-d",
            r#"{"templateID":"base","timeout":600}"#,
        ],
    );
    assert_eq!(status, 201, "{text}");
    let sbx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = sbx["sandboxID"].as_str().unwrap().to_string();
    let token = sbx["envdAccessToken"].as_str().unwrap().to_string();
    // envd without the token, with a wrong one, then with it.
    let list = format!("{url}/process.Process/List");
    let sid = format!("E2b-Sandbox-Id: {id}");
    for (extra, want) in [(None, 401), (Some("X-Access-Token: ea_wrong"), 401)] {
        let mut args = vec!["-X", "POST", "-H", &sid, "-H", json, "-d", "{}"];
        if let Some(h) = extra {
            args.extend(["-H", h]);
        }
        let (status, text) = curl(&list, &args);
        assert_eq!(status, want, "{text}");
        assert!(text.contains("unauthenticated"), "{text}");
    }
    let tok = format!("X-Access-Token: {token}");
    let (status, text) = curl(
        &list,
        &["-X", "POST", "-H", &sid, "-H", &tok, "-H", json, "-d", "{}"],
    );
    assert_eq!(status, 200, "{text}");
    // A bad Start envelope is a Connect error, not a hang.
    let (status, text) = curl(
        &format!("{url}/process.Process/Start"),
        &[
            "-X",
            "POST",
            "-H",
            &sid,
            "-H",
            &tok,
            "-H",
            "Content-Type: application/connect+json",
            "-d",
            "xx",
        ],
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("invalid_argument"), "{text}");
    // A browser page cannot use the listener.
    let (status, _) = curl(
        &format!("{url}/sandboxes"),
        &["-H", &k, "-H", "Origin: http://evil.example"],
    );
    assert_eq!(status, 403);
    // Another user's key sees nothing of it.
    let other = d.banger_as(65534, &["e2b", "key", "create", "other"]);
    assert!(other.status.success(), "{}", stderr(&other));
    let ok = format!("X-API-KEY: {}", stdout(&other).trim());
    let (status, text) = curl(&format!("{url}/sandboxes"), &["-H", &ok]);
    assert_eq!((status, text.trim()), (200, "[]"), "another user's list");
    let (status, _) = curl(&format!("{url}/sandboxes/{id}"), &["-H", &ok]);
    assert_eq!(status, 404, "another user's get");
    let (status, _) = curl(
        &format!("{url}/sandboxes/{id}"),
        &["-X", "DELETE", "-H", &ok],
    );
    assert_eq!(status, 404, "another user's kill");
    // Its timeout is enforced: 2 s from now, the daemon kills it.
    let (status, text) = curl(
        &format!("{url}/sandboxes/{id}/timeout"),
        &["-X", "POST", "-H", &k, "-H", json, "-d", r#"{"timeout":2}"#],
    );
    assert_eq!(status, 204, "{text}");
    banger_tests::poll(
        "the timed-out sandbox to be killed",
        std::time::Duration::from_secs(60),
        || {
            let l: VmList = d.banger_json(&["vm", "ls"]);
            (!l.vms.iter().any(|v| v.name == id)).then_some(())
        },
    );
}
