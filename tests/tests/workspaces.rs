//! Workspaces, credential sync and agent runs on a real guest (QEMU TCG),
//! in a network namespace the test makes. Needs root. One guest serves the
//! whole story (booting one costs seconds under TCG).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use banger_api::{Session, Vm};
use banger_tests::{git, poll, stderr, stdout, test_image, TestDaemon, TestNetns};

const SECRET_FILE: &str = "s3cr3t-file-7f1c9a";
const SECRET_TOKEN: &str = "ghp_s3cr3tTOKEN42b7";

fn ssh(d: &TestDaemon, cmd: &str) -> String {
    let out = d.banger(&["vm", "ssh", "dev", "--", cmd]);
    assert!(out.status.success(), "{cmd}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// A banger command with the caller's HOME, git identity and token.
fn banger_as_user(d: &TestDaemon, home: &Path, args: &[&str]) -> Output {
    d.banger_cmd()
        .env("HOME", home)
        .env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"))
        .env("GH_TOKEN", SECRET_TOKEN)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn guest_workspace_push_export_auth_sync_and_agent_run() {
    let img = test_image();
    let ns = TestNetns::new();
    let agents = tempfile::tempdir().unwrap();
    std::fs::write(
        agents.path().join("stand-in.toml"),
        r#"description = "a stand-in agent for tests"
command = ["/usr/local/bin/stand-in-agent", "{prompt}"]
require = ["stand-in-agent"]
auth = ["git", "github"]
cpus = 1
memory = "512M"
[env]
AGENT_MODE = "test"
[[files]]
path = ".config/stand-in/config.json"
content = "{\"model\": \"none\"}\n"
"#,
    )
    .unwrap();
    let extra = format!(
        "[agents]\ndir = \"{}\"\n[auth]\nitems = [\n  {{ name = \"git\", kind = \"git-identity\" }},\n  {{ name = \"token-file\", kind = \"file\", source = \"~/.secret/token.json\", dest = \".config/tool/token.json\" }},\n  {{ name = \"absent\", kind = \"file\", source = \"~/nope.json\", dest = \"nope.json\" }},\n  {{ name = \"github\", kind = \"env\", source = \"GH_TOKEN\" }},\n]\n",
        agents.path().display()
    );
    let d = TestDaemon::start_in_with(&ns, &extra, &[]);
    d.import_test_image(&img, "default");
    let out = d.banger(&["vm", "create", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // --- auth sync -------------------------------------------------------
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".secret")).unwrap();
    std::fs::write(
        home.path().join(".secret/token.json"),
        format!("{{\"token\": \"{SECRET_FILE}\"}}\n"),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".gitconfig"),
        "[user]\n\tname = Dev Eloper\n\temail = dev@example.com\n",
    )
    .unwrap();
    let out = banger_as_user(&d, home.path(), &["--json", "auth", "sync", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let synced: Vec<&str> = report["synced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(synced, ["git", "token-file", "github"]);
    assert_eq!(report["skipped"][0]["name"], "absent");
    assert_eq!(
        ssh(&d, "stat -c '%a %U' /root/.config/tool/token.json /root/.config/banger/env/github /root/.gitconfig"),
        "600 root\n600 root\n600 root"
    );
    assert_eq!(
        ssh(&d, "cat /root/.config/tool/token.json"),
        format!("{{\"token\": \"{SECRET_FILE}\"}}")
    );
    assert_eq!(
        ssh(
            &d,
            ". /root/.config/banger/env/github; printf %s \"$GH_TOKEN\""
        ),
        SECRET_TOKEN
    );
    assert_eq!(ssh(&d, "git config --global user.email"), "dev@example.com");
    // --only a name that is not configured: refused, nothing written.
    let out = banger_as_user(
        &d,
        home.path(),
        &["auth", "sync", "dev", "--only", "nothing"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("No auth item named \"nothing\""),
        "{}",
        stderr(&out)
    );

    // --- workspace push --------------------------------------------------
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = repo_dir.path().join("my-project");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "hello\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    std::fs::write(repo.join("README.md"), "hello\ncommitted change\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "a committed change"]);
    std::fs::write(repo.join("staged.txt"), "staged\n").unwrap();
    git(&repo, &["add", "staged.txt"]);
    std::fs::write(repo.join("untracked.txt"), "untracked\n").unwrap();
    let base = git(&repo, &["rev-parse", "HEAD"]);
    let host_status = git(&repo, &["status", "--porcelain"]);

    let out = d.banger(&["workspace", "push", "dev", repo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "my-project");
    let g = "git -C /work/my-project";
    assert_eq!(ssh(&d, &format!("{g} rev-parse HEAD")), base);
    assert_eq!(ssh(&d, &format!("{g} symbolic-ref --short HEAD")), "main");
    assert_eq!(ssh(&d, &format!("{g} status --porcelain")), host_status);
    assert_eq!(ssh(&d, "cat /work/my-project/untracked.txt"), "untracked");
    // Pushing again without --force is refused.
    let out = d.banger(&["workspace", "push", "dev", repo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    // --- two guest commits, export -----------------------------------------
    ssh(&d, &format!("{g} add -A && {g} commit -qm 'guest: take the staged work' && echo more >> /work/my-project/README.md && {g} commit -qam 'guest: second'"));
    let out = d.banger(&["workspace", "export", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 new commit(s)"), "{}", stdout(&out));
    assert_eq!(
        git(
            &repo,
            &["log", "--format=%s", &format!("{base}..banger/dev")]
        ),
        "guest: second\nguest: take the staged work"
    );
    assert_eq!(git(&repo, &["merge-base", "banger/dev", "main"]), base);
    assert_eq!(
        git(&repo, &["log", "--format=%an", "-1", "banger/dev"]),
        "Dev Eloper",
        "guest commits carry the synced git identity"
    );
    // The host's working tree and branch are untouched.
    assert_eq!(git(&repo, &["status", "--porcelain"]), host_status);
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), base);
    assert_eq!(git(&repo, &["symbolic-ref", "--short", "HEAD"]), "main");
    // Nothing new: says so.
    let out = d.banger(&["workspace", "export", "dev"]);
    assert!(stdout(&out).contains("nothing new"), "{}", stdout(&out));

    // --- agent run with a stand-in agent -------------------------------------
    ssh(&d, "printf '%s\\n' '#!/bin/sh' 'set -e' 'echo \"$1\" > AGENT.md' 'git add AGENT.md' 'git commit -qm \"agent: $1\"' 'echo \"mode=$AGENT_MODE token=${GH_TOKEN:+set} cwd=$(pwd)\"' > /usr/local/bin/stand-in-agent && chmod +x /usr/local/bin/stand-in-agent");
    let out = banger_as_user(
        &d,
        home.path(),
        &[
            "agent",
            "run",
            "dev",
            "--agent",
            "stand-in",
            "--workspace",
            repo.to_str().unwrap(),
            "--name",
            "agent1",
            "--",
            "write",
            "the",
            "notes",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("using workspace my-project"),
        "{}",
        stderr(&out)
    );
    let s: Session = poll("the agent session to end", Duration::from_secs(30), || {
        let s: Session = d.banger_json(&["session", "show", "agent1"]);
        (s.state != "running").then_some(s)
    });
    assert_eq!(
        s.exit_code,
        Some(0),
        "{}",
        stdout(&d.banger(&["session", "logs", "agent1", "--stderr"]))
    );
    assert_eq!(
        stdout(&d.banger(&["session", "logs", "agent1"])).trim(),
        "mode=test token=set cwd=/work/my-project"
    );
    assert_eq!(
        ssh(&d, "cat /root/.config/stand-in/config.json"),
        "{\"model\": \"none\"}"
    );
    let out = d.banger(&["workspace", "export", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 new commit(s)"), "{}", stdout(&out));
    assert_eq!(
        git(&repo, &["log", "--format=%s", "-1", "banger/dev"]),
        "agent: write the notes"
    );
    assert_eq!(
        git(
            &repo,
            &["rev-list", "--count", &format!("{base}..banger/dev")]
        ),
        "3"
    );

    // --- bad input -----------------------------------------------------------
    let not_repo = tempfile::tempdir().unwrap();
    let out = d.banger(&[
        "workspace",
        "push",
        "dev",
        not_repo.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not inside a git repository"),
        "{}",
        stderr(&out)
    );
    let out = d.banger(&[
        "agent",
        "run",
        "dev",
        "--agent",
        "nope",
        "--no-workspace",
        "--",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Unknown agent \"nope\"") && stderr(&out).contains("stand-in"),
        "{}",
        stderr(&out)
    );
    let out = d.banger(&["vm", "create", "other", "--agent", "nope", "--no-start"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Unknown agent"), "{}", stderr(&out));
    // An agent's resources are the defaults of `vm create --agent`.
    let out = d.banger(&[
        "vm",
        "create",
        "agentvm",
        "--agent",
        "stand-in",
        "--no-start",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Vm = d.banger_json(&["vm", "show", "agentvm"]);
    assert_eq!(
        (v.agent.as_deref(), v.cpus, v.memory_mib),
        (Some("stand-in"), 1, 512)
    );
    assert!(d.banger(&["vm", "rm", "agentvm"]).status.success());
    // A detached guest HEAD: refused, the host branch unchanged.
    let tip = git(&repo, &["rev-parse", "banger/dev"]);
    ssh(&d, &format!("{g} checkout -q --detach && echo x > /work/my-project/x && {g} add x && {g} commit -qm detached"));
    let out = d.banger(&["workspace", "export", "dev"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("detached"), "{}", stderr(&out));
    // Rewritten guest history (the base is gone): refused, unchanged.
    ssh(
        &d,
        &format!("{g} checkout -q --orphan main2 && {g} commit -qm unrelated"),
    );
    let out = d.banger(&["workspace", "export", "dev"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no longer contains the base commit"),
        "{}",
        stderr(&out)
    );
    assert_eq!(git(&repo, &["rev-parse", "banger/dev"]), tip);
    assert_eq!(git(&repo, &["status", "--porcelain"]), host_status);

    // --- the secrets never reached a log or an API answer ---------------------
    let mut seen = d.stderr();
    for entry in std::fs::read_dir(d.state_dir.join("logs")).unwrap() {
        seen.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    for args in [
        &["vm", "show", "dev"][..],
        &["workspace", "ls"],
        &["auth", "ls"],
        &["ops", "ls", "--all"],
        &["session", "ls"],
        &["agent", "ls"],
    ] {
        let out = d.banger_cmd().arg("--json").args(args).output().unwrap();
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(seen.contains("credentials synced"), "the log has the sync");
    for secret in [SECRET_FILE, SECRET_TOKEN] {
        assert!(!seen.contains(secret), "secret {secret} leaked");
    }
}
