//! Guest-side scripts of sessions (pure text generation and parsing).
//!
//! A session lives in the guest under `ROOT/ID/` (ROOT is
//! [`GUEST_SESSIONS_ROOT`] in a VM, a temp dir in tests):
//!
//! ```text
//! run.sh        the wrapper: starts the command, records its exit code
//! stdin         a FIFO; the wrapper holds it open read-write (fd 3), so the
//!               command never sees EOF and writers never block
//! stdout.log    the command's output (appended)
//! stderr.log
//! child         pid of the command (a session leader: signals reach its tree)
//! state         running | exited
//! tty           present when the command runs on a pseudo-terminal (held
//!               by util-linux `script`; both streams go to stdout.log)
//! exit_code     written when the command ends (128+N after signal N)
//! ```
//!
//! Every value reaches bash through [`crate::shell::quote`]. The launch
//! script checks its preflight (cwd, required commands) before creating
//! anything, and exits with a distinct code per failure.

use crate::shell::quote;

/// Where sessions live inside a guest.
pub const GUEST_SESSIONS_ROOT: &str = "/var/lib/banger/sessions";

/// Exit codes of the launch script.
pub const EXIT_MISSING_CWD: i32 = 64;
pub const EXIT_MISSING_COMMAND: i32 = 65;
pub const EXIT_EXISTS: i32 = 66;

/// Signals a session may be sent.
pub const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "TSTP", "WINCH",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("Invalid session id {0:?}")]
    BadId(String),
    #[error("Invalid environment variable name {0:?}: use letters, digits and '_', not starting with a digit")]
    BadEnvName(String),
    #[error("The command is empty")]
    EmptyCommand,
    #[error("A value contains a NUL byte, which no shell argument can carry")]
    Nul,
    #[error("Unknown signal {0:?} (one of {list})", list = SIGNALS.join(", "))]
    BadSignal(String),
    #[error("A terminal of {0} rows and {1} columns: each must be 1 to 1000")]
    BadSize(u16, u16),
}

fn check_id(id: &str) -> Result<(), ScriptError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ScriptError::BadId(id.into()));
    }
    Ok(())
}

fn no_nul<'a>(values: impl IntoIterator<Item = &'a String>) -> Result<(), ScriptError> {
    if values.into_iter().any(|v| v.contains('\0')) {
        return Err(ScriptError::Nul);
    }
    Ok(())
}

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub id: String,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub requires: Vec<String>,
    pub argv: Vec<String>,
    /// On a pseudo-terminal of (rows, cols).
    pub tty: Option<(u16, u16)>,
}

fn dir(root: &str, id: &str) -> String {
    quote(&format!("{root}/{id}"))
}

/// The wrapper that runs in the background (`run.sh`).
fn wrapper(root: &str, l: &Launch) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("D={}\n", dir(root, &l.id)));
    s.push_str("exec 3<>\"$D/stdin\"\n");
    if let Some(cwd) = &l.cwd {
        s.push_str(&format!("cd -- {} || {{ echo 127 > \"$D/exit_code\"; echo exited > \"$D/state\"; exit 127; }}\n", quote(cwd)));
    }
    for (k, v) in &l.env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    let argv: Vec<String> = l.argv.iter().map(|a| quote(a)).collect();
    // Job control: the command gets a process group of its own (a signal
    // to it reaches everything the command started, not this wrapper), and
    // SIGINT and SIGQUIT stay as they are by default: a non-interactive
    // shell would make a background command ignore both.
    s.push_str("set -m\n");
    let command = match l.tty {
        // `script` holds the terminal: the command is its session leader,
        // the terminal's size set before it starts.
        Some((rows, cols)) => {
            s.push_str(": > \"$D/tty\"\n");
            let inner = format!(
                "stty rows {rows} cols {cols} 2>/dev/null; exec {}",
                argv.join(" ")
            );
            format!("SHELL=/bin/sh script -qfec {} /dev/null", quote(&inner))
        }
        None => argv.join(" "),
    };
    s.push_str(&format!(
        "{command} <&3 >>\"$D/stdout.log\" 2>>\"$D/stderr.log\" &\n"
    ));
    s.push_str("child=$!\necho \"$child\" > \"$D/child\"\necho running > \"$D/state\"\n");
    s.push_str("wait \"$child\"\ncode=$?\n");
    s.push_str("echo \"$code\" > \"$D/exit_code.tmp\" && mv \"$D/exit_code.tmp\" \"$D/exit_code\"\necho exited > \"$D/state\"\n");
    s
}

/// The launch script: preflight, session dir, FIFO, wrapper started
/// detached (it outlives the SSH connection). Prints `started` when done.
pub fn launch_script(root: &str, l: &Launch) -> Result<String, ScriptError> {
    check_id(&l.id)?;
    if l.argv.is_empty() || l.argv[0].is_empty() {
        return Err(ScriptError::EmptyCommand);
    }
    for (k, _) in &l.env {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(ScriptError::BadEnvName(k.clone()));
        }
    }
    no_nul(
        l.argv
            .iter()
            .chain(l.requires.iter())
            .chain(l.cwd.iter())
            .chain(l.env.iter().map(|(_, v)| v)),
    )?;
    let mut s = String::from("set -u\n");
    s.push_str(&format!("D={}\n", dir(root, &l.id)));
    if let Some(cwd) = &l.cwd {
        s.push_str(&format!(
            "if [ ! -d {q} ]; then printf 'banger-preflight: missing-cwd %s\\n' {q} >&2; exit {EXIT_MISSING_CWD}; fi\n",
            q = quote(cwd)
        ));
    }
    let on_tty = ["script".to_string(), "stty".to_string()];
    let requires = l
        .requires
        .iter()
        .chain(l.tty.iter().flat_map(|_| on_tty.iter()));
    for c in requires {
        s.push_str(&format!(
            "command -v -- {q} >/dev/null 2>&1 || {{ printf 'banger-preflight: missing-command %s\\n' {q} >&2; exit {EXIT_MISSING_COMMAND}; }}\n",
            q = quote(c)
        ));
    }
    s.push_str(&format!(
        "if [ -e \"$D\" ]; then echo 'banger-preflight: exists' >&2; exit {EXIT_EXISTS}; fi\n"
    ));
    s.push_str("mkdir -p -- \"$D\" && mkfifo -- \"$D/stdin\" || exit 1\n");
    s.push_str(&format!(
        "printf '%s' {} > \"$D/run.sh\" || exit 1\n",
        quote(&wrapper(root, l))
    ));
    // Job control here too: the wrapper (and so the command) must not start
    // with SIGINT and SIGQUIT ignored, which no shell can undo.
    s.push_str("set -m\nsetsid bash \"$D/run.sh\" </dev/null >/dev/null 2>&1 &\n");
    // Return once the command runs (or has already ended), at 10 ms steps, at most 5 s.
    s.push_str("i=0; while [ ! -s \"$D/child\" ] && [ ! -e \"$D/exit_code\" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done\n");
    s.push_str("echo started\n");
    Ok(s)
}

/// Prints the session's facts as `key=value` lines (see [`parse_inspect`]).
pub fn inspect_script(root: &str, id: &str) -> Result<String, ScriptError> {
    check_id(id)?;
    Ok(format!(
        r#"D={d}
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
if [ ! -d "$D" ]; then echo exists=0; exit 0; fi
echo exists=1
child=$(cat "$D/child" 2>/dev/null)
alive=0
if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then alive=1; fi
echo "alive=$alive"
echo "child=$child"
echo "state=$(cat "$D/state" 2>/dev/null)"
echo "exit_code=$(cat "$D/exit_code" 2>/dev/null)"
echo "stdout_size=$(stat -c %s "$D/stdout.log" 2>/dev/null || echo 0)"
echo "stderr_size=$(stat -c %s "$D/stderr.log" 2>/dev/null || echo 0)"
"#,
        d = dir(root, id)
    ))
}

/// Shell lines that set `inner` to the pid of the program on a session's
/// terminal (the child of `script`), read from /proc.
const INNER: &str = "inner=$(cat /proc/\"$child\"/task/*/children 2>/dev/null | \
    tr ' ' '\\n' | sed -n 1p)\n";

/// Sends `signal` to the command's process group; on a terminal, to the
/// terminal's foreground process group (where a typed ^C would go).
pub fn signal_script(root: &str, id: &str, signal: &str) -> Result<String, ScriptError> {
    check_id(id)?;
    let upper = signal.to_ascii_uppercase();
    let sig = upper.trim_start_matches("SIG").to_string();
    if !SIGNALS.contains(&sig.as_str()) {
        return Err(ScriptError::BadSignal(signal.into()));
    }
    Ok(format!(
        "D={d}\nchild=$(cat \"$D/child\" 2>/dev/null)\n[ -n \"$child\" ] && kill -0 \"$child\" 2>/dev/null || {{ echo 'banger: not running' >&2; exit 3; }}\n\
         if [ -e \"$D/tty\" ]; then\n{INNER}\
         fg=$(sed 's/.*) //' /proc/\"$inner\"/stat 2>/dev/null | cut -d' ' -f6)\n\
         case $fg in ''|0|-*|*[!0-9]*) ;; *) kill -{sig} -- -\"$fg\"; exit ;; esac\nfi\n\
         kill -{sig} -- -\"$child\"\n",
        d = dir(root, id)
    ))
}

/// Exit code of [`resize_script`] for a session without a terminal.
pub const EXIT_NO_TTY: i32 = 4;

/// Sets the size of a session's terminal (its programs get SIGWINCH).
pub fn resize_script(root: &str, id: &str, rows: u16, cols: u16) -> Result<String, ScriptError> {
    check_id(id)?;
    Ok(format!(
        "D={d}\nchild=$(cat \"$D/child\" 2>/dev/null)\n[ -n \"$child\" ] && kill -0 \"$child\" 2>/dev/null || {{ echo 'banger: not running' >&2; exit 3; }}\n\
         [ -e \"$D/tty\" ] || {{ echo 'banger: not on a terminal' >&2; exit {EXIT_NO_TTY}; }}\n{INNER}\
         pts=$(readlink /proc/\"$inner\"/fd/0) && stty -F \"$pts\" rows {rows} cols {cols}\n",
        d = dir(root, id)
    ))
}

/// Writes the script's stdin to the session's stdin (bounded to 10 s).
pub fn send_script(root: &str, id: &str) -> Result<String, ScriptError> {
    check_id(id)?;
    Ok(format!(
        "D={d}\nchild=$(cat \"$D/child\" 2>/dev/null)\n[ -n \"$child\" ] && kill -0 \"$child\" 2>/dev/null || {{ echo 'banger: not running' >&2; exit 3; }}\ntimeout 10 cat > \"$D/stdin\"\n",
        d = dir(root, id)
    ))
}

/// Where a session's log is in the guest.
pub fn log_path(root: &str, id: &str, stderr: bool) -> Result<String, ScriptError> {
    check_id(id)?;
    let file = if stderr { "stderr.log" } else { "stdout.log" };
    Ok(format!("{root}/{id}/{file}"))
}

/// Removes a session's directory (refused while it runs).
pub fn remove_script(root: &str, id: &str) -> Result<String, ScriptError> {
    check_id(id)?;
    Ok(format!(
        "D={d}\nchild=$(cat \"$D/child\" 2>/dev/null)\nif [ -n \"$child\" ] && kill -0 \"$child\" 2>/dev/null; then echo 'banger: still running' >&2; exit 3; fi\nrm -rf -- \"$D\"\n",
        d = dir(root, id)
    ))
}

/// What [`inspect_script`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub boot_id: String,
    pub exists: bool,
    pub alive: bool,
    pub child: Option<u32>,
    pub state: Option<String>,
    pub exit_code: Option<i32>,
    pub stdout_size: u64,
    pub stderr_size: u64,
}

/// Parses the output of [`inspect_script`] strictly.
pub fn parse_inspect(text: &str) -> Result<Inspection, String> {
    let mut i = Inspection {
        boot_id: String::new(),
        exists: false,
        alive: false,
        child: None,
        state: None,
        exit_code: None,
        stdout_size: 0,
        stderr_size: 0,
    };
    let mut seen_exists = false;
    for line in text.lines() {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("bad {k}={v:?}: {e}"));
        match k {
            "boot_id" => i.boot_id = v.to_string(),
            "exists" => {
                seen_exists = true;
                i.exists = v == "1";
            }
            "alive" => i.alive = v == "1",
            "child" => {
                i.child = if v.is_empty() {
                    None
                } else {
                    Some(u32::try_from(num(v)?).map_err(|e| e.to_string())?)
                }
            }
            "state" => i.state = (!v.is_empty()).then(|| v.to_string()),
            "exit_code" => {
                i.exit_code = if v.is_empty() {
                    None
                } else {
                    Some(
                        v.parse::<i32>()
                            .map_err(|e| format!("bad exit_code {v:?}: {e}"))?,
                    )
                }
            }
            "stdout_size" => i.stdout_size = num(v)?,
            "stderr_size" => i.stderr_size = num(v)?,
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if !seen_exists {
        return Err("no exists= line".into());
    }
    Ok(i)
}

/// A session's state from an inspection, given the guest boot id recorded
/// at launch: `running`, `exited` (with a code), or `lost` (its process
/// vanished without an exit code, e.g. the guest rebooted).
pub fn derive_state(i: &Inspection, launched_boot_id: &str) -> (&'static str, Option<i32>) {
    if !i.exists {
        return ("lost", None);
    }
    if let Some(code) = i.exit_code {
        return ("exited", Some(code));
    }
    if i.alive && i.boot_id == launched_boot_id {
        return ("running", None);
    }
    ("lost", None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn bash(script: &str, stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut c = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash");
        let mut sin = c.stdin.take().expect("stdin");
        sin.write_all(stdin.as_bytes()).expect("write");
        drop(sin);
        c.wait_with_output().expect("wait")
    }

    fn launch(id: &str, argv: &[&str]) -> Launch {
        Launch {
            id: id.into(),
            cwd: None,
            env: vec![],
            requires: vec![],
            argv: argv.iter().map(|s| s.to_string()).collect(),
            tty: None,
        }
    }

    fn inspect(root: &str, id: &str) -> Inspection {
        let out = bash(&inspect_script(root, id).expect("script"), "");
        parse_inspect(&String::from_utf8_lossy(&out.stdout)).expect("parse")
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn launch_runs_detached_records_output_and_exit_code() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().to_str().expect("utf8");
        let mut l = launch(
            "s1",
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; echo \"$GREETING\"; exit 7",
            ],
        );
        l.env = vec![(
            "GREETING".into(),
            "hello $(rm -rf /) 'q' \"dq\"\nline2 ✓".into(),
        )];
        let out = bash(&launch_script(root, &l).expect("script"), "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for("exit code", || inspect(root, "s1").exit_code.is_some());
        let i = inspect(root, "s1");
        assert_eq!(
            (i.exit_code, i.state.as_deref(), i.alive),
            (Some(7), Some("exited"), false)
        );
        let stdout = std::fs::read_to_string(t.path().join("s1/stdout.log")).expect("log");
        assert_eq!(stdout, "out\nhello $(rm -rf /) 'q' \"dq\"\nline2 ✓\n");
        assert_eq!(
            std::fs::read_to_string(t.path().join("s1/stderr.log")).expect("log"),
            "err\n"
        );
        assert_eq!(derive_state(&i, &i.boot_id), ("exited", Some(7)));
        assert_eq!(
            log_path(root, "s1", true).expect("path"),
            format!("{root}/s1/stderr.log")
        );
        assert!(log_path(root, "../s1", true).is_err());
    }

    #[test]
    fn hostile_arguments_arrive_verbatim() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().to_str().expect("utf8");
        let hostile = [
            "$(rm -rf /)",
            "`id`",
            "a'b",
            "a\"b",
            "two\nlines",
            "ü 漢字 🙂",
            "-n",
            "*",
            ";",
            "\\",
        ];
        let mut argv = vec!["printf", "[%s]\\n"];
        argv.extend(hostile);
        let out = bash(
            &launch_script(root, &launch("h1", &argv)).expect("script"),
            "",
        );
        assert!(out.status.success());
        wait_for("exit", || inspect(root, "h1").exit_code.is_some());
        let got = std::fs::read_to_string(t.path().join("h1/stdout.log")).expect("log");
        let want: String = hostile.iter().map(|h| format!("[{h}]\n")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sigint_reaches_a_session_even_when_launched_from_a_background_shell() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().to_str().expect("utf8");
        // As from an SSH or agent command: the launching shell itself was
        // started in the background, with SIGINT and SIGQUIT ignored.
        let script = launch_script(root, &launch("i1", &["sleep", "300"])).expect("script");
        let wrapped = format!("( {script} ) & wait");
        let out = bash(&wrapped, "");
        assert!(out.status.success());
        wait_for("running", || inspect(root, "i1").alive);
        let child: u32 = std::fs::read_to_string(t.path().join("i1/child"))
            .expect("child")
            .trim()
            .parse()
            .expect("pid");
        let ign = std::fs::read_to_string(format!("/proc/{child}/status")).expect("status");
        let mask = ign
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|m| u64::from_str_radix(m.trim(), 16).expect("hex"))
            .expect("SigIgn");
        assert_eq!(
            mask & 0b110,
            0,
            "SIGINT and SIGQUIT are not ignored: {mask:x}"
        );
        let sent = bash(&signal_script(root, "i1", "INT").expect("script"), "");
        assert!(sent.status.success());
        wait_for("the INT to end it", || {
            inspect(root, "i1").exit_code.is_some()
        });
        assert_eq!(inspect(root, "i1").exit_code, Some(130));
    }

    #[test]
    fn send_reaches_stdin_signal_ends_it_and_remove_cleans_up() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().to_str().expect("utf8");
        let out = bash(
            &launch_script(root, &launch("c1", &["cat"])).expect("script"),
            "",
        );
        assert!(out.status.success());
        wait_for("running", || inspect(root, "c1").alive);
        let sent = bash(&send_script(root, "c1").expect("script"), "ping 'x' $(y)\n");
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
        wait_for("echo", || {
            std::fs::read_to_string(t.path().join("c1/stdout.log")).unwrap_or_default()
                == "ping 'x' $(y)\n"
        });
        let rm = bash(&remove_script(root, "c1").expect("script"), "");
        assert_eq!(
            rm.status.code(),
            Some(3),
            "removing a running session is refused"
        );
        let sig = bash(&signal_script(root, "c1", "TERM").expect("script"), "");
        assert!(sig.status.success());
        wait_for("exit", || inspect(root, "c1").exit_code.is_some());
        assert_eq!(inspect(root, "c1").exit_code, Some(128 + 15));
        assert_eq!(
            bash(&send_script(root, "c1").expect("script"), "late")
                .status
                .code(),
            Some(3)
        );
        assert!(bash(&remove_script(root, "c1").expect("script"), "")
            .status
            .success());
        assert!(!inspect(root, "c1").exists);
    }

    #[test]
    fn on_a_terminal_it_has_the_size_follows_a_resize_and_int_reaches_it() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().to_str().expect("utf8");
        let mut l = launch(
            "t1",
            &[
                "sh",
                "-c",
                "test -t 0 && echo on-a-tty; stty size; \
                 while [ \"$(stty size)\" = '30 100' ]; do sleep 0.05; done; \
                 stty size; trap 'echo got-int; exit 5' INT; while :; do sleep 0.05; done",
            ],
        );
        l.tty = Some((30, 100));
        let out = bash(&launch_script(root, &l).expect("script"), "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(t.path().join("t1/tty").exists());
        let log = || std::fs::read_to_string(t.path().join("t1/stdout.log")).unwrap_or_default();
        wait_for("the first size", || log().contains("30 100"));
        assert!(log().contains("on-a-tty"), "{}", log());
        let r = bash(&resize_script(root, "t1", 40, 120).expect("script"), "");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        wait_for("the new size", || log().contains("40 120"));
        let sent = bash(&signal_script(root, "t1", "INT").expect("script"), "");
        assert!(sent.status.success());
        wait_for("the INT to end it", || {
            inspect(root, "t1").exit_code.is_some()
        });
        assert!(log().contains("got-int"), "{}", log());
        assert_eq!(inspect(root, "t1").exit_code, Some(5));
        // Not on a terminal: resize says so.
        let out = bash(
            &launch_script(root, &launch("n1", &["sleep", "30"])).expect("script"),
            "",
        );
        assert!(out.status.success());
        wait_for("running", || inspect(root, "n1").alive);
        let r = bash(&resize_script(root, "n1", 40, 120).expect("script"), "");
        assert_eq!(r.status.code(), Some(EXIT_NO_TTY));
        let _ = bash(&signal_script(root, "n1", "KILL").expect("script"), "");
    }

    #[test]
    fn preflight_fails_before_creating_anything() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path().to_str().expect("utf8");
        let mut l = launch("p1", &["true"]);
        l.cwd = Some("/nonexistent/dir with space".into());
        let out = bash(&launch_script(root, &l).expect("script"), "");
        assert_eq!(out.status.code(), Some(EXIT_MISSING_CWD));
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("missing-cwd /nonexistent/dir with space"));
        let mut l = launch("p1", &["true"]);
        l.requires = vec!["sh".into(), "no-such-tool-banger".into()];
        let out = bash(&launch_script(root, &l).expect("script"), "");
        assert_eq!(out.status.code(), Some(EXIT_MISSING_COMMAND));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("missing-command no-such-tool-banger")
        );
        assert!(
            !t.path().join("p1").exists(),
            "a failed preflight leaves nothing"
        );
    }

    #[test]
    fn rejects_bad_input() {
        let l = |id: &str, argv: &[&str]| Launch {
            id: id.into(),
            cwd: None,
            env: vec![],
            requires: vec![],
            argv: argv.iter().map(|s| s.to_string()).collect(),
            tty: None,
        };
        assert!(launch_script("/r", &l("../x", &["true"])).is_err());
        assert!(launch_script("/r", &l("ok", &[])).is_err());
        assert!(launch_script("/r", &l("ok", &["a\0b"])).is_err());
        let mut bad_env = l("ok", &["true"]);
        bad_env.env = vec![("A B".into(), "x".into())];
        assert!(launch_script("/r", &bad_env).is_err());
        assert!(signal_script("/r", "ok", "BOOM").is_err());
        assert!(signal_script("/r", "ok", "sigterm").is_ok());
    }

    #[test]
    fn inspection_parsing_is_strict_and_states_follow() {
        let i = parse_inspect("boot_id=b1\nexists=1\nalive=1\nchild=42\nstate=running\nexit_code=\nstdout_size=10\nstderr_size=0\n").expect("parses");
        assert_eq!((i.alive, i.child, i.exit_code), (true, Some(42), None));
        assert_eq!(derive_state(&i, "b1"), ("running", None));
        assert_eq!(
            derive_state(&i, "b0"),
            ("lost", None),
            "a different boot: the process is gone"
        );
        assert!(parse_inspect("exists=1\nrm -rf /\n").is_err());
        assert!(parse_inspect("exists=1\nchild=abc\n").is_err());
        assert!(parse_inspect("boot_id=x\n").is_err());
        let gone = parse_inspect("boot_id=b1\nexists=0\n").expect("parses");
        assert_eq!(derive_state(&gone, "b1"), ("lost", None));
    }
}
