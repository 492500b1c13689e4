//! The CLI as a person meets it, with the real `banger` binary against a
//! real daemon (its VMs on the fake Firecracker, so they start in a
//! moment): help that describes every argument and shows the daemon's
//! defaults, global flags apart, usage errors exit 2, docker's and Lima's
//! verb habits, "did you mean", a stopped VM's `ssh`, actions that end in a
//! sentence or (with --json) their result object, completions of names in
//! a real bash, and coloured tables that stay aligned on a terminal (tmux).
//! Needs root.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use banger_api::{Vm, VmState};
use banger_tests::fakefc::daemon_with_vm;
use banger_tests::{bin, poll, stderr, stdout, TestDaemon};

/// The last line of stdout, parsed as `T`.
fn last_json<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> T {
    let text = stdout(out);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line {last:?}: {e}\n{text}"))
}

#[test]
fn help_describes_every_argument_and_shows_the_daemon_s_defaults() {
    let fc = daemon_with_vm("fc1");
    let d = &fc.d;
    let help = stdout(&d.banger(&["vm", "create", "--help"]));
    assert!(help.contains("The new VM's name"), "{help}");
    assert!(help.contains("vCPUs, 1..=32 [daemon default: 2"), "{help}");
    assert!(help.contains("[daemon default: 1.0 GiB]"), "{help}");
    assert!(
        help.contains("[daemon default: default]"),
        "the image: {help}"
    );
    // The global flags come after the command's own, under their heading.
    let global = help.find("Global options:").expect("a global heading");
    assert!(help.find("--socket").unwrap() > global, "{help}");
    assert!(help.find("--cpus").unwrap() < global, "{help}");
    // Every positional argument of every command says what it is.
    let tree = Command::new(bin("banger")).arg("--help").output().unwrap();
    assert!(tree.status.success());
    for verb in [
        "show", "start", "stop", "rm", "ssh", "exec", "logs", "stats", "ports",
    ] {
        let h = stdout(&d.banger(&["vm", verb, "--help"]));
        let args = h.split("Arguments:").nth(1).unwrap_or_default();
        let first = args.lines().nth(1).unwrap_or_default().trim();
        assert!(
            !first.is_empty() && !first.starts_with('-'),
            "vm {verb}: {h}"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_names_get_a_did_you_mean() {
    let fc = daemon_with_vm("fc1");
    let d = &fc.d;
    for args in [
        vec!["vm", "create", "x", "--cpus", "zero"],
        vec!["vm", "create", "x", "--cpus", "0"],
        vec!["vm", "create", "x", "--memory", "lots"],
        vec!["vm", "set", "fc1", "--work-disk-size", "10K"],
        vec!["vm", "forward", "fc1", "not-a-spec"],
        vec!["session", "start", "fc1", "--env", "NOVALUE", "--", "true"],
        vec!["pool", "set", "--size", "1", "--cpus", "99"],
    ] {
        let out = d.banger(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = d.banger(&["vm", "show", "fc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Did you mean fc1?"),
        "{}",
        stderr(&out)
    );
    let out = d.banger(&["vm", "show", "zzz"]);
    assert!(!stderr(&out).contains("Did you mean"), "{}", stderr(&out));
    // A name that is not a name reaches the daemon whole (and is refused),
    // never as another path or query.
    let out = d.banger(&["vm", "show", "fc1?x=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Invalid VM name"), "{}", stderr(&out));
    // The agent hint points at a page that exists.
    let out = d.banger(&[
        "agent",
        "run",
        "fc1",
        "--agent",
        "nope",
        "--no-workspace",
        "--",
        "x",
    ]);
    let e = stderr(&out);
    assert!(e.contains("docs/workspaces.md"), "{e}");
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/workspaces.md");
    assert!(std::fs::read_to_string(docs)
        .unwrap()
        .contains("Agent profiles"));
}

#[test]
fn docker_verbs_work_and_actions_end_in_a_sentence_or_their_result() {
    let fc = daemon_with_vm("fc1");
    let d = &fc.d;
    let listed: banger_api::VmList = d.banger_json(&["vm", "list"]);
    assert_eq!(listed.vms.len(), 1);
    assert!(d.banger(&["image", "list"]).status.success());
    // A stopped VM's ssh says so instead of ssh's key exchange error.
    assert!(d.banger(&["vm", "stop", "fc1"]).status.success());
    let out = d.banger(&["vm", "ssh", "fc1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("is stopped") && e.contains("banger vm start"),
        "{e}"
    );
    let out = d.banger(&["vm", "exec", "fc1", "--", "true"]);
    assert!(stderr(&out).contains("is stopped"), "{}", stderr(&out));
    // A person gets a sentence with the address and the next step.
    let out = d.banger(&["vm", "start", "fc1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vm: Vm = d.banger_json(&["vm", "show", "fc1"]);
    let said = stdout(&out);
    assert!(
        said.contains(&format!("fc1 is running at {} (booted in", vm.ip))
            && said.contains("Next: banger vm ssh fc1"),
        "{said}"
    );
    // A program gets the events, then the result object on the last line.
    let out = d.banger(&["--json", "vm", "restart", "fc1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vm: Vm = last_json(&out);
    assert_eq!((vm.name.as_str(), vm.state), ("fc1", VmState::Running));
    let out = d.banger(&["--json", "vm", "create", "fc2", "--backend", "firecracker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).lines().count() > 1, "events first");
    let vm: Vm = last_json(&out);
    assert_eq!(vm.name, "fc2");
    let out = d.banger(&["--json", "vm", "remove", "--force", "fc2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let removed: serde_json::Value = last_json(&out);
    assert_eq!(removed["removed"], true);
    assert_eq!(removed["vm"], "fc2");
    let out = d.banger(&["--json", "vm", "snapshot", "fc1", "s1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let snap: banger_api::Snapshot = last_json(&out);
    assert_eq!((snap.name.as_str(), snap.source_vm.as_str()), ("s1", "fc1"));
}

#[test]
fn completions_name_vms_images_and_snapshots_in_a_real_bash() {
    let fc = daemon_with_vm("fc1");
    let d = &fc.d;
    assert!(d
        .banger(&["vm", "snapshot", "fc1", "snap-a"])
        .status
        .success());
    let complete = |words: &[&str]| {
        let line = words.join(" ");
        let script = format!(
            "export BANGER_SOCKET={sock}; source <({me} completions bash); \
             COMP_WORDS=({line}); COMP_CWORD={cword}; COMP_TYPE=9; \
             _clap_complete_banger banger '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            sock = d.socket.display(),
            me = bin("banger").display(),
            cword = words.len() - 1,
            cur = words.last().unwrap(),
            prev = words[words.len() - 2],
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let got = complete(&["banger", "vm", "show", "f"]);
    assert_eq!(got.trim(), "fc1", "{got}");
    let got = complete(&["banger", "image", "show", "d"]);
    assert_eq!(got.trim(), "default", "{got}");
    let got = complete(&["banger", "snapshot", "rm", "s"]);
    assert_eq!(got.trim(), "snap-a", "{got}");
    let got = complete(&["banger", "vm", "create", "--from-snapshot", "sn"]);
    assert_eq!(got.trim(), "snap-a", "{got}");
    let got = complete(&["banger", "vm", "st"]);
    assert!(got.contains("start") && got.contains("stop"), "{got}");
}

/// A tmux server of this test's own, with one bash in a 160x40 terminal.
struct Tmux {
    socket: String,
    runs: std::cell::Cell<u32>,
}

impl Tmux {
    fn new(d: &TestDaemon) -> Tmux {
        let t = Tmux {
            socket: format!("banger-cli-{}", std::process::id()),
            runs: std::cell::Cell::new(0),
        };
        let st = Command::new("tmux")
            .args(["-L", &t.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "160", "-y", "40", "-e", "TERM=xterm-256color"])
            .args(["-e", &format!("BANGER_SOCKET={}", d.socket.display())])
            .args(["-e", "NO_COLOR="])
            .args(["bash", "--norc", "--noprofile"])
            .status()
            .unwrap();
        assert!(st.success(), "tmux starts");
        t
    }

    /// Types `cmd`, then waits (bounded) for it to end; returns the pane
    /// with its escape sequences. Each run has its own end marker, so the
    /// previous run's marker, still on the screen until `clear` runs, is
    /// not taken for this one's.
    fn run(&self, cmd: &str) -> String {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let marker = format!("END-OF-COMMAND-{n}");
        let typed = format!("clear; {cmd}; echo END-OF-''COMMAND-{n}");
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", &typed, "Enter"])
            .status()
            .unwrap();
        assert!(st.success());
        poll("the command in tmux", Duration::from_secs(30), || {
            let out = Command::new("tmux")
                .args(["-L", &self.socket, "capture-pane", "-p", "-e", "-J"])
                .output()
                .ok()?;
            let pane = stdout(&out);
            pane.lines()
                .any(|l| l.trim_start().starts_with(&marker))
                .then_some(pane)
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// `s` without ANSI escape sequences.
fn plain(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn on_a_terminal_tables_are_coloured_and_aligned_and_progress_is_drawn() {
    let fc = daemon_with_vm("fc1");
    let d = &fc.d;
    let out = d.banger(&[
        "vm",
        "create",
        "fc2",
        "--backend",
        "firecracker",
        "--no-start",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let me = bin("banger").display().to_string();
    let t = Tmux::new(d);
    let pane = t.run(&format!("{me} vm ls"));
    assert!(pane.contains("\x1b[32mrunning"), "coloured: {pane:?}");
    let text = plain(&pane);
    let header = text
        .lines()
        .find(|l| l.starts_with("NAME"))
        .expect("header");
    let col = |line: &str, word: &str| line.find(word).unwrap_or(usize::MAX);
    for (row, state) in [("fc1", "running"), ("fc2", "stopped")] {
        let line = text.lines().find(|l| l.starts_with(row)).expect("a row");
        assert_eq!(col(header, "STATE"), col(line, state), "{text}");
        assert_eq!(col(header, "BACKEND"), col(line, "firecracker"), "{text}");
        assert_eq!(col(header, "IMAGE"), col(line, "default"), "{text}");
    }
    // Progress on a terminal: each step ends with its mark, then the sentence.
    let pane = plain(&t.run(&format!("{me} vm start fc2")));
    assert!(pane.contains("✓ Start the VMM"), "{pane}");
    assert!(pane.contains("fc2 is running at"), "{pane}");
}
